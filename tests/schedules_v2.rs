//! The schedules of "Rules v2" against PyTorch (`tests/reference/schedules_v2.json`):
//! MultiStepLR, ConstantLR, PolynomialLR, CyclicLR, the complete OneCycleLR, SWALR, momentum
//! cycling, and combinations of them in sequence and chained; their checkpoints, and their
//! failure modes.

use ndarray::array;
use ndarray_optim::schedule::{
    AnnealStrategy, Cyclic, CyclicMode, LrScheduler, OneCycle, PerGroup, Schedule,
};
use ndarray_optim::{
    Adagrad, Adam, DEFAULT_GROUP, Error, Momentum, Optimizer, Rule, Sgd, UpdateRule,
};
use serde::Deserialize;

use crate::case::ScheduleSpec;
use crate::reference::{Fixture, assert_matches, bits, load, replay};

const FIXTURES: &str = "schedules_v2.json";

#[derive(Deserialize)]
struct Sequences {
    schedules: Vec<Sequence>,
}

/// PyTorch's rates (and momenta, where a schedule cycles them) of every group after
/// construction and after each step.
#[derive(Deserialize)]
struct Sequence {
    name: String,
    /// `"momentum"` (SGD with momentum 0.9) or `"adam"` (β₁ 0.9).
    rule: String,
    schedule: ScheduleSpec,
    base_lrs: Vec<f64>,
    lrs: Vec<Vec<f64>>,
    #[serde(default)]
    momenta: Option<Vec<Vec<f64>>>,
}

fn sequences() -> Vec<Sequence> {
    let path = format!("{}/tests/reference/{FIXTURES}", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str::<Sequences>(&json).unwrap().schedules
}

fn rule(name: &str, lr: f64) -> Rule {
    match name {
        "momentum" => Momentum { lr, momentum: 0.9, ..Momentum::default() }.into(),
        "adam" => Adam { lr, ..Adam::default() }.into(),
        other => panic!("no rule {other}"),
    }
}

/// An optimizer with one group per base rate, the default group first.
fn optimizer(sequence: &Sequence) -> Optimizer<Rule, f64> {
    let mut opt = Optimizer::new(rule(&sequence.rule, sequence.base_lrs[0])).unwrap();
    for (index, &lr) in sequence.base_lrs.iter().enumerate().skip(1) {
        opt.add_group(&format!("g{index}"), rule(&sequence.rule, lr)).unwrap();
    }
    opt
}

/// Every group's rate and cycled momentum (β₁ for Adam), as bits.
type State = (Vec<u64>, Vec<u64>);

fn state(opt: &Optimizer<Rule, f64>) -> State {
    let momentum = |hyper: &Rule| {
        let mut hyper = *hyper;
        *hyper.cycled_momentum_mut().unwrap()
    };
    let groups = opt.groups();
    (
        groups.iter().map(|group| group.lr().to_bits()).collect(),
        groups.iter().map(|group| momentum(group.hyper()).to_bits()).collect(),
    )
}

fn to_bits(rows: &[Vec<f64>]) -> Vec<Vec<u64>> {
    rows.iter().map(|row| row.iter().map(|x| x.to_bits()).collect()).collect()
}

/// The schedule of `spec` that the whole run uses, for the checks of its coverage.
fn kinds(spec: &ScheduleSpec) -> Vec<&Schedule> {
    match spec {
        ScheduleSpec::Single(schedule) => vec![schedule],
        ScheduleSpec::Sequential { schedules, .. } | ScheduleSpec::Chained { schedules } => {
            schedules.iter().collect()
        }
    }
}

/// An optimizer and its scheduler after some steps, with the rates and momenta after
/// construction and after each step.
struct Run {
    opt: Optimizer<Rule, f64>,
    scheduler: LrScheduler,
    seen: Vec<State>,
}

/// Runs `sequence` for `steps` steps.
fn run(sequence: &Sequence, steps: usize) -> Run {
    let mut opt = optimizer(sequence);
    let mut scheduler = sequence.schedule.start(&mut opt).unwrap();
    let mut seen = vec![state(&opt)];
    let mut w = array![1.0_f64];
    for _ in 0..steps {
        opt.step("w", &mut w, &array![0.5]).unwrap();
        scheduler.step(&mut opt).unwrap();
        seen.push(state(&opt));
    }
    Run { opt, scheduler, seen }
}

/// The fixtures cover every new kind with settings away from their defaults, every CyclicLR
/// mode, OneCycleLR with cosine and linear annealing, three phases, per-group peaks and
/// momentum cycling on SGD's momentum and on Adam's β₁, SWALR, and a sequence and a chain
/// that include new kinds, over three groups and at least 60 steps.
#[test]
fn fixtures_cover_every_kind() {
    let sequences = sequences();
    for sequence in &sequences {
        assert!(sequence.base_lrs.len() >= 3 && sequence.lrs.len() > 60, "{}", sequence.name);
    }
    let any = |test: &dyn Fn(&Sequence, &Schedule) -> bool| {
        sequences.iter().any(|seq| kinds(&seq.schedule).into_iter().any(|s| test(seq, s)))
    };
    for kind in ["multistep", "constant", "polynomial", "cyclic", "one_cycle", "swa"] {
        assert!(any(&|_, s| s.name() == kind), "no {kind} fixture");
    }
    for mode in [CyclicMode::Triangular, CyclicMode::Triangular2, CyclicMode::ExpRange] {
        assert!(any(&|_, s| matches!(s, Schedule::Cyclic(c) if c.mode == mode)), "{mode:?}");
    }
    for strategy in [AnnealStrategy::Cos, AnnealStrategy::Linear] {
        assert!(any(&|_, s| matches!(s, Schedule::OneCycle(o) if o.anneal_strategy == strategy)));
        assert!(any(
            &|_, s| matches!(s, Schedule::Swa { anneal_strategy, .. } if *anneal_strategy == strategy)
        ));
    }
    assert!(any(&|_, s| matches!(s, Schedule::OneCycle(o) if o.three_phase)));
    assert!(any(
        &|_, s| matches!(s, Schedule::OneCycle(o) if matches!(o.max_lr, PerGroup::Each(_)))
    ));
    for rule in ["momentum", "adam"] {
        for kind in ["cyclic", "one_cycle"] {
            let cycles = |s: &Schedule| match s {
                Schedule::Cyclic(c) => c.cycle_momentum,
                Schedule::OneCycle(o) => o.cycle_momentum,
                _ => false,
            };
            assert!(
                any(&|seq, s| seq.rule == rule && s.name() == kind && cycles(s)),
                "{rule} {kind}"
            );
        }
    }
    let new = ["multistep", "constant", "polynomial", "cyclic", "swa"];
    let combined_with_new = |sequential: bool| {
        sequences.iter().any(|seq| match &seq.schedule {
            ScheduleSpec::Sequential { schedules, .. } if sequential => {
                schedules.iter().any(|s| new.contains(&s.name()))
            }
            ScheduleSpec::Chained { schedules } if !sequential => {
                schedules.iter().any(|s| new.contains(&s.name()))
            }
            _ => false,
        })
    };
    assert!(combined_with_new(true) && combined_with_new(false));
}

/// The final rate of a linear one-cycle, where PyTorch extrapolates past the cycle's end.
fn linear_one_cycle_end(sequence: &Sequence) -> Option<(usize, &OneCycle)> {
    match &sequence.schedule {
        ScheduleSpec::Single(Schedule::OneCycle(one_cycle))
            if one_cycle.anneal_strategy == AnnealStrategy::Linear =>
        {
            Some((one_cycle.total_steps as usize, one_cycle))
        }
        _ => None,
    }
}

/// Every group's rate and cycled momentum at every step is PyTorch's, bit for bit: the
/// crate computes PyTorch's recursions operation for operation. The one exception is the
/// step after a linear one-cycle, which no optimizer step of the cycle uses: PyTorch
/// extrapolates it (to a negative rate in the fixture); the crate stops at the final rate.
#[test]
fn rates_and_momenta_match_pytorch_bit_for_bit() {
    for sequence in sequences() {
        let steps = sequence.lrs.len() - 1;
        let seen = run(&sequence, steps).seen;
        let expected_lrs = to_bits(&sequence.lrs);
        let expected_momenta = sequence.momenta.as_deref().map(to_bits);
        for (step, (lrs, momenta)) in seen.iter().enumerate() {
            match linear_one_cycle_end(&sequence) {
                Some((end, one_cycle)) if step == end => {
                    for (group, &lr) in lrs.iter().enumerate() {
                        let max = match &one_cycle.max_lr {
                            PerGroup::All(max) => *max,
                            PerGroup::Each(maxima) => maxima[group],
                        };
                        // The final rate, up to the rounding of the interpolation from the
                        // larger rate the last phase starts at.
                        let initial = max / one_cycle.div_factor;
                        let last = initial / one_cycle.final_div_factor;
                        let lr = f64::from_bits(lr);
                        let close = (lr - last).abs() <= 4.0 * f64::EPSILON * initial;
                        assert!(close && lr >= 0.0, "{}: {lr}", sequence.name);
                        assert!(sequence.lrs[step][group] < 0.0);
                    }
                }
                _ => assert_eq!(
                    lrs, &expected_lrs[step],
                    "{}: rates of step {}",
                    sequence.name, step
                ),
            }
            match &expected_momenta {
                Some(expected) => {
                    assert_eq!(
                        momenta, &expected[step],
                        "{}: momenta of step {step}",
                        sequence.name
                    )
                }
                // Nothing touches the momentum of a schedule that does not cycle it.
                None => {
                    assert_eq!(momenta, &seen[0].1, "{}: momenta of step {step}", sequence.name)
                }
            }
        }
    }
}

/// A run checkpointed mid-schedule, optimizer and scheduler through serde (JSON and
/// postcard), continues bit for bit as the uninterrupted one, cycled momenta included (they
/// are the groups' hyperparameters, which the optimizer's checkpoint holds).
#[test]
fn a_checkpoint_mid_schedule_continues_identically() {
    for sequence in sequences() {
        let steps = sequence.lrs.len() - 1;
        let straight = run(&sequence, steps).seen;
        for (encoding, at) in [("json", 23), ("postcard", 41)] {
            let Run { opt, scheduler, .. } = run(&sequence, at);
            let (mut opt, mut scheduler): (Optimizer<Rule, f64>, LrScheduler) = match encoding {
                "json" => {
                    let saved = serde_json::to_string(&(&opt, &scheduler)).unwrap();
                    serde_json::from_str(&saved).unwrap()
                }
                _ => {
                    let saved = postcard::to_stdvec(&(&opt, &scheduler)).unwrap();
                    postcard::from_bytes(&saved).unwrap()
                }
            };
            assert_eq!(scheduler.steps(), at as u64);
            let mut w = array![1.0_f64];
            let mut seen = vec![state(&opt)];
            for _ in at..steps {
                opt.step("w", &mut w, &array![0.5]).unwrap();
                scheduler.step(&mut opt).unwrap();
                seen.push(state(&opt));
            }
            assert_eq!(seen, straight[at..], "{} resumed from {encoding} at {at}", sequence.name);
        }
    }
}

fn v2_cases() -> Vec<Fixture> {
    load(FIXTURES)
}

/// Replay cases whose `schedule` cycles momentum or combines schedules match PyTorch's
/// trajectories, and are bit for bit the same with checkpoints every step or every 7.
#[test]
fn replayed_cases_match_pytorch() {
    let fixtures = v2_cases();
    assert!(fixtures.len() >= 8);
    for kind in ["sequential", "chained"] {
        assert!(fixtures.iter().any(|f| f.case["schedule"]["kind"] == kind), "{kind}");
    }
    for rule in ["momentum", "adam"] {
        assert!(
            fixtures.iter().any(
                |f| f.case["optimizer"] == rule && f.case["schedule"]["cycle_momentum"] == true
            ),
            "{rule}"
        );
    }
    for fixture in &fixtures {
        assert_matches(fixture);
        let plain = bits(&replay(&fixture.case));
        for every in [1, 7] {
            let mut case = fixture.case.clone();
            case["checkpoint_every"] = every.into();
            assert_eq!(bits(&replay(&case)), plain, "{} checkpoint_every {every}", case["name"]);
        }
    }
}

/// Cycling momentum on a rule that has none (plain SGD, Adagrad) is a typed error, as PyTorch
/// raises; so is a cycled momentum that the rule refuses, and a per-group list that does not
/// fit the groups, when the scheduler starts or after a group is added. Nothing changes then.
#[test]
fn momentum_cycling_and_per_group_lists_fail_typed() {
    let cycling = Schedule::Cyclic(Cyclic { cycle_momentum: true, ..Cyclic::new(0.01, 0.1) });

    let mut sgd = Optimizer::<Sgd, f64>::new(Sgd::default()).unwrap();
    let fresh = sgd.clone();
    let err = LrScheduler::new(&mut sgd, cycling.clone()).unwrap_err();
    assert!(matches!(err, Error::NoMomentumToCycle { rule: "sgd", .. }), "{err}");
    assert_eq!(sgd, fresh);

    let mut any = Optimizer::<Rule, f64>::new(Momentum::default().into()).unwrap();
    any.add_group("sparse", Adagrad::default()).unwrap();
    let fresh = any.clone();
    let err = LrScheduler::new(&mut any, cycling.clone()).unwrap_err();
    assert!(
        matches!(err, Error::NoMomentumToCycle { ref group, rule: "adagrad" } if group == "sparse"),
        "{err}"
    );
    assert_eq!(any, fresh);
    // A sequence whose later phase cycles momentum is refused as well: PyTorch's constructor
    // of that phase sets the momentum.
    let warm_up = Schedule::Constant { factor: 0.5, total_iters: 3 };
    let err = LrScheduler::sequential(&mut any, vec![warm_up, cycling.clone()], vec![3]);
    assert!(matches!(err, Err(Error::NoMomentumToCycle { .. })));
    assert_eq!(any, fresh);

    // β₁ = 1 is out of Adam's range: refused when the cycle would set it.
    let mut adam = Optimizer::<Adam, f64>::new(Adam::default()).unwrap();
    let fresh = adam.clone();
    let beyond =
        Cyclic { cycle_momentum: true, max_momentum: 1.0.into(), ..Cyclic::new(0.01, 0.1) };
    let err = LrScheduler::new(&mut adam, Schedule::Cyclic(beyond)).unwrap_err();
    assert!(
        matches!(err, Error::InvalidHyperparameter { rule: "adam", key: "beta1", .. }),
        "{err}"
    );
    assert_eq!(adam, fresh);

    // One value per group, or one for all.
    let mut opt = Optimizer::<Momentum, f64>::new(Momentum::default()).unwrap();
    opt.add_group("head", Momentum::default()).unwrap();
    let fresh = opt.clone();
    let three = Schedule::OneCycle(OneCycle::new(vec![0.1, 0.2, 0.3], 10));
    let err = LrScheduler::new(&mut opt, three).unwrap_err();
    assert!(
        matches!(err, Error::InvalidSchedule { ref reason } if reason.contains("max_lr")),
        "{err}"
    );
    assert_eq!(opt, fresh);
    let two = Schedule::OneCycle(OneCycle {
        cycle_momentum: true,
        base_momentum: vec![0.8, 0.85].into(),
        ..OneCycle::new(vec![0.1, 0.2], 10)
    });
    let mut scheduler = LrScheduler::new(&mut opt, two).unwrap();
    scheduler.step(&mut opt).unwrap();
    opt.add_group("late", Momentum::default()).unwrap();
    let before = (scheduler.clone(), opt.clone());
    let err = scheduler.step(&mut opt).unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule { .. }), "{err}");
    assert_eq!((scheduler, opt), before);

    // An empty list is refused when the schedule is checked.
    let empty = Schedule::Swa {
        swa_lr: PerGroup::Each(vec![]),
        anneal_epochs: 3,
        anneal_strategy: AnnealStrategy::Cos,
    };
    assert!(matches!(empty.validate(), Err(Error::InvalidHyperparameter { key: "swa_lr", .. })));
}

/// Momenta that do not cycle are still kept and saved, so they are checked like those that
/// do: a non-finite one would not survive a JSON round trip (JSON writes it as null), and a
/// stored scheduler holding one is refused as it is read.
#[test]
fn momenta_are_checked_even_when_they_do_not_cycle() {
    const MARK: f64 = 0.123_456_789;
    let cyclic = |momentum: f64| {
        Schedule::Cyclic(Cyclic { base_momentum: momentum.into(), ..Cyclic::new(0.01, 0.1) })
    };
    let one_cycle = |momentum: f64| {
        Schedule::OneCycle(OneCycle { max_momentum: momentum.into(), ..OneCycle::new(0.1, 10) })
    };
    for (schedule, key) in
        [(cyclic as fn(f64) -> Schedule, "base_momentum"), (one_cycle, "max_momentum")]
    {
        let mut opt = Optimizer::<Momentum, f64>::new(Momentum::default()).unwrap();
        for bad in [f64::NAN, f64::INFINITY, -0.5] {
            let err = schedule(bad).validate().unwrap_err();
            assert!(
                matches!(err, Error::InvalidHyperparameter { key: k, .. } if k == key),
                "{err}"
            );
            let fresh = opt.clone();
            assert!(LrScheduler::new(&mut opt, schedule(bad)).is_err(), "{key} = {bad}");
            assert_eq!(opt, fresh);
        }
        // A valid scheduler reads back the same from JSON; stored with the value replaced, it
        // is refused, in postcard (NaN) as in JSON (a negative value).
        let scheduler = LrScheduler::new(&mut opt, schedule(MARK)).unwrap();
        let json = serde_json::to_string(&scheduler).unwrap();
        assert_eq!(serde_json::from_str::<LrScheduler>(&json).unwrap(), scheduler);
        let negative = json.replace(&MARK.to_string(), "-0.5");
        assert_ne!(negative, json);
        assert!(serde_json::from_str::<LrScheduler>(&negative).is_err(), "{key}");
        let stored = postcard::to_stdvec(&scheduler).unwrap();
        let at = stored.windows(8).position(|w| w == MARK.to_le_bytes()).expect("the mark");
        let mut nan = stored.clone();
        nan[at..at + 8].copy_from_slice(&f64::NAN.to_le_bytes());
        assert!(postcard::from_bytes::<LrScheduler>(&stored).is_ok());
        assert!(postcard::from_bytes::<LrScheduler>(&nan).is_err(), "{key}");
    }
}

/// The new kinds read from PyTorch-style configuration: per-group settings as numbers or
/// lists, keys left out at PyTorch's defaults (with `cycle_momentum` off), and the keys the
/// first one-cycle schedules had.
#[test]
fn new_kinds_read_from_json_with_pytorch_defaults() {
    let read = |json: &str| serde_json::from_str::<Schedule>(json).unwrap();
    assert_eq!(
        read(r#"{"kind":"one_cycle","max_lr":1,"total_steps":20,"pct_start":0.25}"#),
        Schedule::OneCycle(OneCycle { pct_start: 0.25, ..OneCycle::new(1.0, 20) })
    );
    assert_eq!(
        read(r#"{"kind":"cyclic","base_lr":[0.1,0.2],"max_lr":1}"#),
        Schedule::Cyclic(Cyclic::new(vec![0.1, 0.2], 1.0))
    );
    assert_eq!(
        read(
            r#"{"kind":"cyclic","base_lr":0.1,"max_lr":1,"mode":"exp_range","gamma":0.99,"step_size_down":null}"#
        ),
        Schedule::Cyclic(Cyclic {
            mode: CyclicMode::ExpRange,
            gamma: 0.99,
            ..Cyclic::new(0.1, 1.0)
        })
    );
    assert_eq!(
        read(r#"{"kind":"swa","swa_lr":0.05}"#),
        Schedule::Swa {
            swa_lr: 0.05.into(),
            anneal_epochs: 10,
            anneal_strategy: AnnealStrategy::Cos
        }
    );
    assert_eq!(
        read(r#"{"kind":"multistep","milestones":[30,80]}"#),
        Schedule::MultiStep { milestones: vec![30, 80], gamma: 0.1 }
    );
    assert_eq!(
        read(r#"{"kind":"constant"}"#),
        Schedule::Constant { factor: 1.0 / 3.0, total_iters: 5 }
    );
    assert_eq!(
        read(r#"{"kind":"polynomial"}"#),
        Schedule::Polynomial { total_iters: 5, power: 1.0 }
    );
    for bad in [
        r#"{"kind":"cyclic","base_lr":0.1}"#,
        r#"{"kind":"cyclic","base_lr":0.1,"max_lr":1,"mode":"square"}"#,
        r#"{"kind":"one_cycle","max_lr":"high","total_steps":5}"#,
        r#"{"kind":"swa","swa_lr":0.1,"anneal":"cos"}"#,
    ] {
        assert!(serde_json::from_str::<Schedule>(bad).is_err(), "{bad}");
    }
    // Written back in the same form.
    let schedule = Schedule::OneCycle(OneCycle::new(vec![0.5, 0.25], 9));
    let json = serde_json::to_value(&schedule).unwrap();
    assert_eq!(json["max_lr"], serde_json::json!([0.5, 0.25]));
    assert_eq!(serde_json::from_value::<Schedule>(json).unwrap(), schedule);
}

/// SWALR entering a sequence starts from the rate the phase before left (it has no closed
/// form), and with `anneal_epochs` 0 it sets `swa_lr` at once.
#[test]
fn swa_starts_from_the_rate_before_it() {
    let mut opt = Optimizer::<Sgd, f64>::new(Sgd { lr: 1.0, ..Sgd::default() }).unwrap();
    let swa = Schedule::Swa {
        swa_lr: 0.1.into(),
        anneal_epochs: 4,
        anneal_strategy: AnnealStrategy::Linear,
    };
    let halve = Schedule::Step { step_size: 1, gamma: 0.5 };
    let mut scheduler = LrScheduler::sequential(&mut opt, vec![halve, swa], vec![3]).unwrap();
    let mut rates = vec![opt.group(DEFAULT_GROUP).unwrap().lr()];
    for _ in 0..8 {
        scheduler.step(&mut opt).unwrap();
        rates.push(opt.group(DEFAULT_GROUP).unwrap().lr());
    }
    // 1, 0.5, 0.25, then SWALR from 0.25 to 0.1 over 4 steps: 0.25 · (1 − t/4) + 0.1 · t/4.
    let expected = [1.0, 0.5, 0.25, 0.25, 0.2125, 0.175, 0.1375, 0.1, 0.1];
    for (rate, expected) in rates.iter().zip(expected) {
        assert!((rate - expected).abs() < 1e-15, "{rates:?}");
    }
    let mut opt = Optimizer::<Sgd, f64>::new(Sgd { lr: 1.0, ..Sgd::default() }).unwrap();
    let at_once = Schedule::Swa {
        swa_lr: 0.1.into(),
        anneal_epochs: 0,
        anneal_strategy: AnnealStrategy::Cos,
    };
    LrScheduler::new(&mut opt, at_once).unwrap();
    assert_eq!(opt.group(DEFAULT_GROUP).unwrap().lr(), 0.1);
}
