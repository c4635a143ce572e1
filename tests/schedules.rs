//! Learning-rate schedules at their edges: counts that overflow, phases of length zero,
//! rates that round below zero, plateaus in `max` mode, and the order in which an optimizer
//! and its scheduler are built and restored.

use ndarray::array;
use ndarray_optim::checkpoint::LoadMode;
use ndarray_optim::schedule::{
    AnnealStrategy, Cyclic, CyclicMode, LrScheduler, OneCycle, PerGroup, PlateauMode,
    ReduceLrOnPlateau, Schedule,
};
use ndarray_optim::{DEFAULT_GROUP, Error, Momentum, Optimizer, Sgd};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn sgd(lr: f64) -> Optimizer<Sgd, f64> {
    Optimizer::new(Sgd { lr, ..Sgd::default() }).unwrap()
}

fn rate(opt: &Optimizer<Sgd, f64>, group: &str) -> f64 {
    opt.group(group).unwrap().lr()
}

fn rates(opt: &Optimizer<Sgd, f64>) -> Vec<u64> {
    opt.groups().iter().map(|group| group.lr().to_bits()).collect()
}

fn is_validation_error(err: &Error, schedule: &Schedule) -> bool {
    matches!(err, Error::InvalidHyperparameter { rule, .. } if *rule == schedule.name())
}

/// `Cosine { t_max: 2^63 }` took a remainder by zero on its first step; such periods are now
/// refused, built or deserialized.
#[test]
fn huge_cosine_periods_are_refused_built_or_deserialized() {
    for t_max in [1 << 63, u64::MAX, 1 << 62, 1 << 40, 1_000_000_000] {
        let schedule = Schedule::Cosine { t_max, eta_min: 0.0 };
        let mut opt = sgd(0.1);
        let err = LrScheduler::new(&mut opt, schedule).unwrap_err();
        assert!(matches!(err, Error::InvalidHyperparameter { key: "t_max", .. }), "{err}");
        assert_eq!(opt, sgd(0.1));

        let json = format!(
            r#"{{"plan":"chained","phases":[{{"schedule":{{"kind":"cosine","t_max":{t_max}}},
                "last_epoch":0,"t_i":0,"t_cur":0}}]}}"#
        );
        assert!(serde_json::from_str::<LrScheduler>(&json).is_err(), "t_max {t_max}");
    }
    // The longest periods allowed step through their trough without dividing by zero.
    for t_max in [100_000_000, 200_000_000] {
        let mut opt = sgd(0.1);
        let schedule = Schedule::Cosine { t_max, eta_min: 0.0 };
        let json = serde_json::to_string(&LrScheduler::new(&mut opt, schedule).unwrap()).unwrap();
        let mut json: Value = serde_json::from_str(&json).unwrap();
        json["phases"][0]["last_epoch"] = (t_max - 3).into();
        let mut scheduler: LrScheduler = serde_json::from_value(json).unwrap();
        for _ in 0..6 {
            scheduler.step(&mut opt).unwrap();
            assert!(rate(&opt, DEFAULT_GROUP).is_finite());
        }
    }
}

/// `t_0 3, t_mult 2^64/3 + 1` wrapped to a second period of 2 steps (and panicked in debug
/// builds); the period now stays longer than any run, so the rate stays at the base rate.
#[test]
fn warm_restart_periods_do_not_wrap() {
    let mut opt = sgd(0.5);
    let t_mult = u64::MAX / 3 + 1;
    let schedule = Schedule::CosineRestarts { t_0: 3, t_mult, eta_min: 0.0 };
    let mut scheduler = LrScheduler::new(&mut opt, schedule).unwrap();
    for step in 1..=12 {
        scheduler.step(&mut opt).unwrap();
        if step >= 3 {
            assert_eq!(rate(&opt, DEFAULT_GROUP), 0.5, "step {step}");
        }
    }
    // The position survives serde, and is checked on the way in.
    let json = serde_json::to_string(&scheduler).unwrap();
    assert_eq!(serde_json::from_str::<LrScheduler>(&json).unwrap(), scheduler);
    let mut value: Value = serde_json::from_str(&json).unwrap();
    value["phases"][0]["t_i"] = 2.into();
    assert!(serde_json::from_value::<LrScheduler>(value).is_err());
}

fn with_position(
    scheduler: &LrScheduler,
    edit: impl Fn(&mut Value),
) -> serde_json::Result<LrScheduler> {
    let mut value = serde_json::to_value(scheduler).unwrap();
    edit(&mut value);
    serde_json::from_value(value)
}

/// Positions whose next step would overflow (`last_epoch` of `i64::MAX`, a sequence at
/// `u64::MAX`) or that no run reaches are refused when deserialized; a run that does reach
/// the last countable step gets a typed error, not a panic.
#[test]
fn positions_that_cannot_be_stepped_are_refused() {
    let mut opt = sgd(0.1);
    let exponential = Schedule::Exponential { gamma: 1.0 };
    let chained = LrScheduler::new(&mut opt, exponential.clone()).unwrap();
    // (A fresh optimizer is brought into phase by replaying the schedule, which is refused,
    // changing nothing, that far in.)
    let far = with_position(&chained, |v| v["phases"][0]["last_epoch"] = (1_u64 << 40).into());
    let (mut far, mut fresh) = (far.unwrap(), sgd(0.1));
    let err = far.step(&mut fresh).unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule { .. }), "{err}");
    assert_eq!((far.steps(), fresh), (1 << 40, sgd(0.1)));
    for epoch in [Value::from(i64::MAX), Value::from(u64::MAX), Value::from(-2)] {
        let epoch2 = epoch.clone();
        assert!(
            with_position(&chained, |v| v["phases"][0]["last_epoch"] = epoch2.clone()).is_err()
        );
    }
    let two = LrScheduler::chained(&mut sgd(0.1), vec![exponential.clone(), exponential.clone()])
        .unwrap();
    assert!(with_position(&two, |v| v["phases"][1]["last_epoch"] = 5.into()).is_err());

    let cosine = Schedule::Cosine { t_max: 10, eta_min: 0.0 };
    let sequential =
        LrScheduler::sequential(&mut sgd(0.1), vec![exponential, cosine], vec![3]).unwrap();
    for epoch in [u64::MAX, i64::MAX as u64] {
        let edit = |v: &mut Value| {
            v["plan"]["sequential"]["last_epoch"] = epoch.into();
            v["phases"][1]["last_epoch"] = (epoch - 3).into();
        };
        assert!(with_position(&sequential, edit).is_err(), "{epoch}");
    }
    // Inconsistent: the sequence is at step 5, its cosine phase says 0.
    assert!(
        with_position(&sequential, |v| v["plan"]["sequential"]["last_epoch"] = 5.into()).is_err()
    );

    // The last countable step is taken; the one after is a typed error changing nothing.
    let mut scheduler = with_position(&chained, |v| {
        v["phases"][0]["last_epoch"] = (i64::MAX - 1).into();
    })
    .unwrap();
    scheduler.step(&mut opt).unwrap();
    assert_eq!(scheduler.steps(), i64::MAX as u64);
    let (before, opt_before) = (scheduler.clone(), opt.clone());
    let err = scheduler.step(&mut opt).unwrap_err();
    assert!(matches!(err, Error::ScheduleFinished { .. }), "{err}");
    assert_eq!((scheduler, opt), (before, opt_before));
}

/// `OneCycle { total_steps: 2, pct_start: 0.5 }` passed validation and gave NaN (a phase of
/// length 0); it is refused now, as is `pct_start = 1` (NaN on the last step), and with three
/// phases a last phase of length 0 that a step reaches.
#[test]
fn one_cycle_phases_of_length_zero_are_refused() {
    let cases = [
        (2, 0.5, false),
        (1, 1.0, false),
        (10, 1.0, false),
        (4, 0.25, false),
        (10, 0.1, false),
        (10, 0.1, true),
        (10, 0.55, true),
    ];
    for (total_steps, pct_start, three_phase) in cases {
        let schedule = Schedule::OneCycle(OneCycle {
            pct_start,
            three_phase,
            ..OneCycle::new(1.0, total_steps)
        });
        let mut opt = sgd(0.1);
        let err = LrScheduler::new(&mut opt, schedule).unwrap_err();
        assert!(matches!(err, Error::InvalidHyperparameter { key: "pct_start", .. }), "{err}");
        assert_eq!(opt, sgd(0.1));
        let json = format!(
            r#"{{"kind":"one_cycle","max_lr":1,"total_steps":{total_steps},"pct_start":{pct_start},
                "three_phase":{three_phase}}}"#
        );
        let schedule: Schedule = serde_json::from_str(&json).unwrap();
        assert!(schedule.validate().is_err());
    }
    // Three phases whose last one no step reaches (the second ends past the cycle): PyTorch
    // steps through the second to the end.
    let schedule = OneCycle { pct_start: 0.6, three_phase: true, ..OneCycle::new(1.0, 10) };
    let mut opt = sgd(0.1);
    let mut scheduler = LrScheduler::new(&mut opt, Schedule::OneCycle(schedule)).unwrap();
    for _ in 0..10 {
        scheduler.step(&mut opt).unwrap();
    }
    assert_eq!(rate(&opt, DEFAULT_GROUP), 1.0 / 25.0);
}

/// A few configurations of every kind, extreme ones among them.
fn random_schedule(rng: &mut StdRng) -> Schedule {
    let count = |rng: &mut StdRng| -> u64 {
        match rng.random_range(0..6) {
            0 => rng.random_range(0..4),
            1 => rng.random_range(1..40),
            2 => u64::MAX - rng.random_range(0..3),
            3 => (1 << rng.random_range(0..64)) + rng.random_range(0..2),
            4 => (u64::MAX / rng.random_range(1..10)).saturating_add(rng.random_range(0..2)),
            _ => rng.random_range(0..1_000_000_000),
        }
    };
    let real = |rng: &mut StdRng| -> f64 {
        match rng.random_range(0..8) {
            0 => 0.0,
            1 => 1.0,
            2 => rng.random::<f64>(),
            3 => f64::MAX,
            4 => f64::MIN_POSITIVE / 4.0,
            5 => 10f64.powi(rng.random_range(-300..300)),
            6 => 1.0 + rng.random::<f64>() * 0.5,
            _ => [0.5, 0.25, 0.1, f64::EPSILON, 1e300, 1e-300][rng.random_range(0..6)],
        }
    };
    match rng.random_range(0..12) {
        0 => Schedule::Step { step_size: count(rng), gamma: real(rng) },
        6 => {
            // Mostly steps that a run of 200 reaches, repeats among them.
            let milestones = (0..rng.random_range(0..6))
                .map(|_| if rng.random_bool(0.8) { rng.random_range(0..40) } else { count(rng) })
                .collect();
            Schedule::MultiStep { milestones, gamma: real(rng) }
        }
        7 => Schedule::Constant { factor: real(rng), total_iters: count(rng) },
        8 => Schedule::Polynomial { total_iters: count(rng), power: real(rng) },
        1 => Schedule::Exponential { gamma: real(rng) },
        2 => Schedule::Cosine { t_max: count(rng), eta_min: real(rng) },
        3 => Schedule::CosineRestarts { t_0: count(rng), t_mult: count(rng), eta_min: real(rng) },
        4 => Schedule::Linear {
            start_factor: real(rng),
            end_factor: real(rng),
            total_iters: count(rng),
        },
        9 => Schedule::Cyclic(Cyclic {
            base_lr: per_group(rng),
            max_lr: per_group(rng),
            step_size_up: count(rng),
            step_size_down: rng.random_bool(0.5).then(|| count(rng)),
            mode: [CyclicMode::Triangular, CyclicMode::Triangular2, CyclicMode::ExpRange]
                [rng.random_range(0..3)],
            gamma: real(rng),
            cycle_momentum: rng.random_bool(0.5),
            base_momentum: momentum(rng),
            max_momentum: momentum(rng),
        }),
        10 => Schedule::OneCycle(OneCycle {
            max_lr: per_group(rng),
            total_steps: count(rng),
            pct_start: real(rng),
            anneal_strategy: strategy(rng),
            div_factor: real(rng),
            final_div_factor: real(rng),
            three_phase: rng.random_bool(0.5),
            cycle_momentum: rng.random_bool(0.5),
            base_momentum: momentum(rng),
            max_momentum: momentum(rng),
        }),
        _ => Schedule::Swa {
            swa_lr: per_group(rng),
            anneal_epochs: count(rng),
            anneal_strategy: strategy(rng),
        },
    }
}

fn strategy(rng: &mut StdRng) -> AnnealStrategy {
    if rng.random_bool(0.5) { AnnealStrategy::Cos } else { AnnealStrategy::Linear }
}

/// A cycled momentum for the three groups: mostly in [0, 1), sometimes past the rule's range.
fn momentum(rng: &mut StdRng) -> PerGroup {
    let value = |rng: &mut StdRng| match rng.random_range(0..8) {
        0 => 0.0,
        1 => 1.0,
        2 => 1e300,
        _ => rng.random::<f64>(),
    };
    if rng.random_bool(0.5) {
        PerGroup::All(value(rng))
    } else {
        PerGroup::Each((0..3).map(|_| value(rng)).collect())
    }
}

/// A per-group setting for the three groups of `every_schedule_steps_finite_or_is_refused`:
/// one value, three, or (rarely) a list that does not fit.
fn per_group(rng: &mut StdRng) -> PerGroup {
    let real = |rng: &mut StdRng| match rng.random_range(0..4) {
        0 => 0.0,
        1 => f64::MAX,
        2 => 10f64.powi(rng.random_range(-300..300)),
        _ => rng.random::<f64>(),
    };
    match rng.random_range(0..10) {
        0..5 => PerGroup::All(real(rng)),
        9 => PerGroup::Each((0..rng.random_range(0..5)).map(|_| real(rng)).collect()),
        _ => PerGroup::Each((0..3).map(|_| real(rng)).collect()),
    }
}

/// Whether `err` is the momentum rule refusing a momentum that one of `schedules` cycles
/// out of its range [0, 1).
fn is_cycled_momentum_error(err: &Error, schedules: &[Schedule]) -> bool {
    let cycles = |schedule: &Schedule| match schedule {
        Schedule::Cyclic(cyclic) => cyclic.cycle_momentum,
        Schedule::OneCycle(one_cycle) => one_cycle.cycle_momentum,
        _ => false,
    };
    schedules.iter().any(cycles)
        && matches!(err, Error::InvalidHyperparameter { rule: "momentum", key: "momentum", .. })
}

/// Any schedule, single, chained or in a sequence, either is refused by validation, or
/// steps with every rate finite and ≥ 0 (and every cycled momentum in the rule's range) —
/// except for a typed error that changes nothing where the schedule itself ends (a finished
/// one-cycle), a rate (or the recursion's intermediate value, with rates near `f64::MAX`)
/// overflows to infinity, or a cycled momentum leaves the rule's range. No panic, no NaN, in
/// debug and release builds.
#[test]
fn every_schedule_steps_finite_or_is_refused() {
    let mut rng = StdRng::seed_from_u64(0x5eed_5c4e);
    let (mut refused, mut ran) = (0, 0);
    for case in 0..3000 {
        let len = if case % 3 == 0 { 1 } else { rng.random_range(1..4) };
        let schedules: Vec<Schedule> = (0..len).map(|_| random_schedule(&mut rng)).collect();
        let rule = |lr| Momentum { lr, ..Momentum::default() };
        let mut opt = Optimizer::<Momentum, f64>::new(rule(0.1)).unwrap();
        opt.add_group("big", rule(1e300)).unwrap();
        opt.add_group("tiny", rule(1e-300)).unwrap();
        let fresh = opt.clone();
        let built = match case % 3 {
            0 => LrScheduler::new(&mut opt, schedules[0].clone()),
            1 => LrScheduler::chained(&mut opt, schedules.clone()),
            _ => {
                let mut milestones: Vec<u64> = (1..len as u64).map(|i| i * 7).collect();
                if rng.random_range(0..4) == 0 {
                    milestones.iter_mut().for_each(|m| *m = u64::MAX - 10 + *m / 7);
                }
                LrScheduler::sequential(&mut opt, schedules.clone(), milestones)
            }
        };
        let mut scheduler = match built {
            Ok(scheduler) => scheduler,
            Err(err) => {
                let valid = schedules.iter().all(|s| s.validate().is_ok());
                let overflow = matches!(
                    err,
                    Error::InvalidHyperparameter { rule: "schedule", value, .. }
                        if value.is_infinite()
                );
                let momentum = is_cycled_momentum_error(&err, &schedules);
                assert!(
                    overflow
                        || momentum
                        || matches!(err, Error::InvalidSchedule { .. })
                        || schedules.iter().any(|s| is_validation_error(&err, s)),
                    "{schedules:?}: {err}"
                );
                let typed = overflow || momentum || matches!(err, Error::InvalidSchedule { .. });
                assert!(!valid || typed);
                assert_eq!(opt, fresh);
                refused += 1;
                continue;
            }
        };
        ran += 1;
        for step in 0..200 {
            for group in opt.groups() {
                let lr = group.lr();
                assert!(lr.is_finite() && lr >= 0.0, "{schedules:?} step {step}: {lr}");
                let momentum = group.hyper().momentum;
                assert!((0.0..1.0).contains(&momentum), "{schedules:?} step {step}: {momentum}");
            }
            if step == 100 {
                let json = serde_json::to_string(&scheduler).unwrap();
                let restored: LrScheduler = serde_json::from_str(&json)
                    .unwrap_or_else(|e| panic!("{schedules:?} step {step}: {e}"));
                assert_eq!(restored, scheduler);
            }
            let before = (scheduler.clone(), opt.clone());
            match scheduler.step(&mut opt) {
                Ok(()) => {}
                Err(err) => {
                    let finished = matches!(err, Error::ScheduleFinished { .. })
                        && matches!(schedules[..], [Schedule::OneCycle(_)]);
                    let overflow = matches!(
                        err,
                        Error::InvalidHyperparameter { rule: "schedule", value, .. }
                            if value.is_infinite()
                    );
                    // PyTorch's ChainedScheduler feeds one recursion the rate of another, e.g.
                    // a cosine rising towards its `eta_min` from a rate the phase before set
                    // below it, which can go truly negative: that step is refused.
                    let chain = case % 3 == 1
                        && schedules.len() > 1
                        && matches!(err, Error::InvalidHyperparameter { rule: "schedule", .. });
                    let momentum = is_cycled_momentum_error(&err, &schedules);
                    assert!(
                        finished || overflow || chain || momentum,
                        "{schedules:?} step {step}: {err}"
                    );
                    assert_eq!((scheduler.clone(), opt.clone()), before);
                    break;
                }
            }
        }
    }
    assert!(refused > 100 && ran > 1000, "refused {refused}, ran {ran}");
}

/// A linear decay to 0 ends at about −1.5e-19 through PyTorch's recursion (LinearLR's
/// `lr · (1 + (b − a) / (n a + (t − 1)(b − a)))`); PyTorch keeps stepping with that rate, and
/// so does the crate, at exactly 0, where it used to stop with an error.
#[test]
fn linear_decay_to_zero_runs_past_its_end() {
    let (base, a, n) = (0.01, 1.0 / 3.0, 5);
    // PyTorch's recursion, in f64 as Python computes it.
    let mut pytorch = vec![base * a];
    for t in 1..=n {
        let lr = pytorch[t - 1];
        let t = t as f64;
        pytorch.push(lr * (1.0 + (0.0 - a) / (n as f64 * a + (t - 1.0) * (0.0 - a))));
    }
    assert!(pytorch[n] < 0.0 && pytorch[n] > -1e-18, "{}", pytorch[n]);

    let mut opt = sgd(base);
    let schedule = Schedule::Linear { start_factor: a, end_factor: 0.0, total_iters: n as u64 };
    let mut scheduler = LrScheduler::new(&mut opt, schedule).unwrap();
    let mut w = array![1.0_f64, -2.0];
    for step in 0..3 * n {
        let expected = pytorch.get(step).copied().filter(|_| step < n).unwrap_or(0.0);
        assert_eq!(rate(&opt, DEFAULT_GROUP).to_bits(), expected.to_bits(), "step {step}");
        opt.step("w", &mut w, &array![0.5, 0.5]).unwrap();
        scheduler.step(&mut opt).unwrap();
    }
    assert_eq!(rate(&opt, DEFAULT_GROUP), 0.0);
    let before = w.clone();
    opt.step("w", &mut w, &array![0.5, 0.5]).unwrap();
    assert_eq!(w, before);
}

/// `ReduceLrOnPlateau { mode: Max, ..Default::default() }` and `{"mode":"max"}` started from
/// a best of +∞ and cut the rate while the metric rose; there is no best now until the first
/// metric.
#[test]
fn plateau_in_max_mode_follows_a_rising_metric() {
    let taught = ReduceLrOnPlateau { mode: PlateauMode::Max, patience: 0, ..Default::default() };
    let config: ReduceLrOnPlateau = serde_json::from_str(r#"{"mode":"max","patience":0}"#).unwrap();
    assert_eq!(config, taught);
    assert_eq!(
        ReduceLrOnPlateau { patience: 0, ..ReduceLrOnPlateau::new(PlateauMode::Max) },
        taught
    );
    for mut plateau in [taught, config] {
        let mut opt = sgd(1.0);
        for accuracy in [0.1, 0.2, 0.5, 0.9] {
            plateau.step(&mut opt, accuracy).unwrap();
            assert_eq!(rate(&opt, DEFAULT_GROUP), 1.0, "accuracy {accuracy}");
        }
        assert_eq!(plateau.best, Some(0.9));
        plateau.step(&mut opt, 0.8).unwrap();
        assert_eq!(rate(&opt, DEFAULT_GROUP), 0.1);
    }
    // In min mode as before: the first loss is the best so far.
    let mut plateau = ReduceLrOnPlateau { patience: 0, ..Default::default() };
    let mut opt = sgd(1.0);
    for loss in [3.0, 2.0, 1.0] {
        plateau.step(&mut opt, loss).unwrap();
    }
    assert_eq!((plateau.best, rate(&opt, DEFAULT_GROUP)), (Some(1.0), 1.0));
    // A position out of range is refused, changing nothing.
    for bad in [
        ReduceLrOnPlateau { best: Some(f64::NAN), ..Default::default() },
        ReduceLrOnPlateau { num_bad_epochs: 11, ..Default::default() },
        ReduceLrOnPlateau { cooldown_counter: 1, ..Default::default() },
    ] {
        let mut plateau = bad;
        assert!(plateau.step(&mut opt, 1.0).is_err());
        assert_eq!(plateau.num_bad_epochs, bad.num_bad_epochs);
    }
}

/// An infinite best metric (a first loss of +∞, or a loss of −∞) survives JSON: JSON writes
/// infinities as `null`, which read back as "no metric yet", and the resumed plateau then
/// took a next +∞ for an improvement where the uninterrupted one counted a bad call.
#[test]
fn an_infinite_best_metric_survives_json() {
    for first in [f64::INFINITY, f64::NEG_INFINITY] {
        let mut straight = ReduceLrOnPlateau { patience: 0, ..Default::default() };
        let mut opt = sgd(1.0);
        straight.step(&mut opt, first).unwrap();
        assert_eq!(straight.best, Some(first));
        let json = serde_json::to_string(&straight).unwrap();
        let mut resumed: ReduceLrOnPlateau = serde_json::from_str(&json).unwrap();
        assert_eq!(resumed, straight, "{json}");
        let mut resumed_opt = opt.clone();
        for loss in [f64::INFINITY, 2.0, f64::INFINITY] {
            straight.step(&mut opt, loss).unwrap();
            resumed.step(&mut resumed_opt, loss).unwrap();
            assert_eq!(resumed, straight);
            assert_eq!(rates(&resumed_opt), rates(&opt));
        }
        let back: ReduceLrOnPlateau =
            postcard::from_bytes(&postcard::to_stdvec(&resumed).unwrap()).unwrap();
        assert_eq!(back, resumed);
    }
    // Finite and absent bests read as before; other names are refused.
    let read = |best: &str| {
        serde_json::from_str::<ReduceLrOnPlateau>(&format!(r#"{{"best":{best}}}"#)).map(|p| p.best)
    };
    assert_eq!(read("1.5").unwrap(), Some(1.5));
    assert_eq!(read("null").unwrap(), None);
    assert_eq!(read(r#""-inf""#).unwrap(), Some(f64::NEG_INFINITY));
    assert!(read(r#""nan""#).is_err());
}

/// A model with two groups under warm-up then cosine, trained `steps` steps.
fn run(steps: usize) -> (Optimizer<Sgd, f64>, LrScheduler) {
    let mut opt = sgd(0.8);
    opt.add_group("head", Sgd { lr: 0.3, ..Sgd::default() }).unwrap();
    let mut scheduler = LrScheduler::sequential(&mut opt, schedules(), vec![4]).unwrap();
    for _ in 0..steps {
        scheduler.step(&mut opt).unwrap();
    }
    (opt, scheduler)
}

fn schedules() -> Vec<Schedule> {
    vec![
        Schedule::Linear { start_factor: 0.1, end_factor: 1.0, total_iters: 4 },
        Schedule::Cosine { t_max: 20, eta_min: 0.0 },
    ]
}

/// The rates of every step from `steps` on, to the end of the run.
fn continue_run(opt: &mut Optimizer<Sgd, f64>, scheduler: &mut LrScheduler) -> Vec<Vec<u64>> {
    let mut got = vec![rates(opt)];
    while scheduler.steps() < 30 {
        scheduler.step(opt).unwrap();
        got.push(rates(opt));
    }
    got
}

/// Building a scheduler on an optimizer restored from a checkpoint overwrote the restored
/// rates, and a scheduler state restored afterwards continued from the wrong ones (0.093
/// instead of 0.794 in one run). Building now refuses to replace a schedule's rates; every
/// order of restoring that gives the scheduler its saved state continues exactly.
#[test]
fn restoring_in_any_order_continues_the_schedule() {
    let (mut straight_opt, mut straight) = run(9);
    let expected = continue_run(&mut straight_opt, &mut straight);
    let (opt, scheduler) = run(9);
    let saved_opt = serde_json::to_string(&opt).unwrap();
    let saved_scheduler = serde_json::to_string(&scheduler).unwrap();
    let restore_opt = || serde_json::from_str::<Optimizer<Sgd, f64>>(&saved_opt).unwrap();
    let restore_scheduler = || serde_json::from_str::<LrScheduler>(&saved_scheduler).unwrap();

    // Restore the optimizer, then build a scheduler: refused, changing nothing.
    let mut opt = restore_opt();
    let err = LrScheduler::sequential(&mut opt, schedules(), vec![4]).unwrap_err();
    assert!(
        matches!(err, Error::ScheduleInProgress { ref group, .. } if group == DEFAULT_GROUP),
        "{err}"
    );
    assert_eq!(opt, restore_opt());
    // … then restore the scheduler's state, as the error says.
    let mut scheduler = restore_scheduler();
    assert_eq!(continue_run(&mut opt, &mut scheduler), expected);

    // PyTorch's order: build both, then load both states.
    let mut opt = sgd(0.8);
    opt.add_group("head", Sgd { lr: 0.3, ..Sgd::default() }).unwrap();
    let _fresh = LrScheduler::sequential(&mut opt, schedules(), vec![4]).unwrap();
    let model: [(&str, &[usize]); 0] = [];
    opt.load_state(restore_opt().checkpoint(), model, LoadMode::Strict).unwrap();
    let mut scheduler = restore_scheduler();
    assert_eq!(continue_run(&mut opt, &mut scheduler), expected);

    // A fresh optimizer with the saved scheduler: its groups are brought into phase.
    let mut opt = sgd(0.8);
    opt.add_group("head", Sgd { lr: 0.3, ..Sgd::default() }).unwrap();
    let mut scheduler = restore_scheduler();
    let got = continue_run(&mut opt, &mut scheduler);
    assert_eq!(got[1..], expected[1..]);

    // Starting a new schedule on purpose: clear the scheduled rates first.
    let mut opt = restore_opt();
    opt.clear_scheduled_lrs();
    let mut scheduler = LrScheduler::sequential(&mut opt, schedules(), vec![4]).unwrap();
    let (mut fresh_opt, mut fresh) = run(0);
    assert_eq!(continue_run(&mut opt, &mut scheduler), continue_run(&mut fresh_opt, &mut fresh));
}

/// A group added after the schedule started was out of phase (stepped from its base rate as
/// if that were the current one); it now joins at the rate it would have had from the start.
#[test]
fn a_group_added_mid_schedule_joins_in_phase() {
    for (plan, added_at) in
        [("sequential", 0), ("sequential", 2), ("sequential", 11), ("chained", 6)]
    {
        let build = |opt: &mut Optimizer<Sgd, f64>| match plan {
            "sequential" => LrScheduler::sequential(opt, schedules(), vec![4]).unwrap(),
            _ => LrScheduler::chained(
                opt,
                vec![
                    Schedule::Linear { start_factor: 0.25, end_factor: 1.0, total_iters: 3 },
                    Schedule::Step { step_size: 2, gamma: 0.7 },
                ],
            )
            .unwrap(),
        };
        let mut reference = sgd(0.8);
        reference.add_group("late", Sgd { lr: 0.35, ..Sgd::default() }).unwrap();
        let mut reference_scheduler = build(&mut reference);
        let mut opt = sgd(0.8);
        let mut scheduler = build(&mut opt);
        for step in 0..20 {
            if step == added_at {
                opt.add_group("late", Sgd { lr: 0.35, ..Sgd::default() }).unwrap();
            }
            scheduler.step(&mut opt).unwrap();
            reference_scheduler.step(&mut reference).unwrap();
            if step >= added_at {
                assert_eq!(
                    rates(&opt),
                    rates(&reference),
                    "{plan} added at {added_at}, step {step}"
                );
            }
        }
    }
}

/// A scheduler written in postcard could not be read back: schedules were tagged by a `kind`
/// key, which postcard cannot read. Every kind, alone, chained and in a sequence, now reads
/// back in postcard and continues as the original; JSON keeps its `kind` form.
#[test]
fn schedulers_read_back_in_postcard() {
    let schedules = [
        Schedule::Step { step_size: 3, gamma: 0.5 },
        Schedule::Exponential { gamma: 0.9 },
        Schedule::Cosine { t_max: 10, eta_min: 0.001 },
        Schedule::CosineRestarts { t_0: 2, t_mult: 3, eta_min: 0.0 },
        Schedule::Linear { start_factor: 0.25, end_factor: 1.0, total_iters: 4 },
        Schedule::MultiStep { milestones: vec![4, 2, 4], gamma: 0.5 },
        Schedule::Constant { factor: 0.25, total_iters: 3 },
        Schedule::Polynomial { total_iters: 6, power: 2.0 },
        Schedule::Cyclic(Cyclic {
            step_size_up: 3,
            mode: CyclicMode::ExpRange,
            gamma: 0.9,
            ..Cyclic::new(vec![0.01], 0.1)
        }),
        Schedule::Swa {
            swa_lr: PerGroup::Each(vec![0.02]),
            anneal_epochs: 4,
            anneal_strategy: AnnealStrategy::Linear,
        },
        Schedule::OneCycle(OneCycle::new(1.0, 20)),
        Schedule::OneCycle(OneCycle {
            anneal_strategy: AnnealStrategy::Linear,
            three_phase: true,
            ..OneCycle::new(vec![0.5], 20)
        }),
    ];
    type Build = fn(&mut Optimizer<Sgd, f64>, Schedule) -> ndarray_optim::Result<LrScheduler>;
    let builds: [Build; 3] = [
        |opt, schedule| LrScheduler::new(opt, schedule),
        |opt, schedule| {
            LrScheduler::chained(opt, vec![schedule, Schedule::Exponential { gamma: 0.5 }])
        },
        |opt, schedule| {
            let warm_up = Schedule::Linear { start_factor: 0.5, end_factor: 1.0, total_iters: 2 };
            LrScheduler::sequential(opt, vec![warm_up, schedule], vec![2])
        },
    ];
    for schedule in schedules {
        let bytes = postcard::to_stdvec(&schedule).unwrap();
        assert_eq!(postcard::from_bytes::<Schedule>(&bytes).unwrap(), schedule);
        let json: Value = serde_json::to_value(&schedule).unwrap();
        assert_eq!(json["kind"], schedule.name());
        for build in builds {
            let mut opt = sgd(0.1);
            let Ok(mut scheduler) = build(&mut opt, schedule.clone()) else { continue };
            for _ in 0..3 {
                scheduler.step(&mut opt).unwrap();
            }
            let bytes = postcard::to_stdvec(&scheduler).unwrap();
            let mut restored: LrScheduler = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(restored, scheduler);
            let mut twin = opt.clone();
            for _ in 0..5 {
                scheduler.step(&mut opt).unwrap();
                restored.step(&mut twin).unwrap();
                assert_eq!(rates(&opt), rates(&twin));
            }
        }
    }
}
