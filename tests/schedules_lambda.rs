//! LambdaLR, MultiplicativeLR and a schedule per group against PyTorch
//! (`tests/reference/lambda.json`): rates bit for bit, alone and inside sequences and chains;
//! checkpoints whose closures are given again; the refusals of a missing closure, of factors
//! out of range and of groups that do not fit.

use std::collections::BTreeMap;

use ndarray::array;
use ndarray_optim::schedule::{GroupSchedule, Lambda, LrScheduler, OneCycle, Schedule};
use ndarray_optim::{DEFAULT_GROUP, Error, Momentum, Optimizer, Sgd};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::case::ScheduleSpec;

const FIXTURES: &str = "lambda.json";

#[derive(Deserialize)]
struct Fixtures {
    /// Each lambda's Python source, by name.
    lambdas: BTreeMap<String, Value>,
    schedules: Vec<Sequence>,
    per_group: Vec<PerGroupSequence>,
}

/// PyTorch's rates of every group after construction and after each step.
#[derive(Deserialize)]
struct Sequence {
    name: String,
    schedule: ScheduleSpec,
    base_lrs: Vec<f64>,
    lrs: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct GroupEntry {
    group: String,
    schedule: ScheduleSpec,
}

/// Each group's rate and momentum, each listed group's computed by PyTorch on an optimizer
/// with that group alone.
#[derive(Deserialize)]
struct PerGroupSequence {
    name: String,
    groups: Vec<GroupEntry>,
    base_lrs: Vec<f64>,
    lrs: Vec<Vec<f64>>,
    momenta: Vec<Vec<f64>>,
}

fn fixtures() -> Fixtures {
    let path = format!("{}/tests/reference/{FIXTURES}", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&json).unwrap()
}

/// The lambdas of the fixtures, written as their Python sources compute them (`**` is
/// `powf`, `/` of integers a division of their exact doubles).
fn lambda(name: &str) -> Lambda {
    let exp95 = |step: u64| 0.95_f64.powf(step as f64);
    let warmup10 = |step: u64| ((step + 1) as f64 / 10.0).min(1.0);
    let inverse = |step: u64| 1.0 / (1.0 + 0.1 * step as f64);
    let stairs = |step: u64| (step / 30) as f64;
    let halve10 = |step: u64| if step.is_multiple_of(10) { 0.5 } else { 1.0 };
    let harmonic = |step: u64| (step + 1) as f64 / (step + 2) as f64;
    match name {
        "exp95" => Lambda::new(name, move |step, _| exp95(step)),
        "warmup10" => Lambda::new(name, move |step, _| warmup10(step)),
        "inverse" => Lambda::new(name, move |step, _| inverse(step)),
        "stairs" => Lambda::new(name, move |step, _| stairs(step)),
        "each" => Lambda::new(name, move |step, group| match group {
            0 => exp95(step),
            1 => warmup10(step),
            _ => inverse(step),
        }),
        "const95" => Lambda::new(name, |_, _| 0.95),
        "halve10" => Lambda::new(name, move |step, _| halve10(step)),
        "harmonic" => Lambda::new(name, move |step, _| harmonic(step)),
        "each_mult" => Lambda::new(name, move |step, group| match group {
            0 => 0.9,
            1 => halve10(step),
            _ => harmonic(step),
        }),
        other => panic!("no lambda {other}"),
    }
}

const NAMES: [&str; 9] = [
    "exp95",
    "warmup10",
    "inverse",
    "stairs",
    "each",
    "const95",
    "halve10",
    "harmonic",
    "each_mult",
];

/// `schedule` with its lambda's closure (a fixture's schedule, read from JSON, has none).
fn bound(schedule: &Schedule) -> Schedule {
    match schedule {
        Schedule::Lambda(named) => Schedule::Lambda(lambda(named.name())),
        Schedule::Multiplicative(named) => Schedule::Multiplicative(lambda(named.name())),
        other => other.clone(),
    }
}

fn schedules(spec: &ScheduleSpec) -> Vec<&Schedule> {
    match spec {
        ScheduleSpec::Single(schedule) => vec![schedule],
        ScheduleSpec::Sequential { schedules, .. } | ScheduleSpec::Chained { schedules } => {
            schedules.iter().collect()
        }
    }
}

fn group_schedule(spec: &ScheduleSpec) -> GroupSchedule {
    let all = |schedules: &[Schedule]| schedules.iter().map(bound).collect();
    match spec {
        ScheduleSpec::Single(schedule) => GroupSchedule::Single(bound(schedule)),
        ScheduleSpec::Sequential { schedules, milestones } => {
            GroupSchedule::Sequential { schedules: all(schedules), milestones: milestones.clone() }
        }
        ScheduleSpec::Chained { schedules } => GroupSchedule::Chained(all(schedules)),
    }
}

/// The names of the lambdas that `specs` use.
fn lambda_names<'a>(specs: impl IntoIterator<Item = &'a ScheduleSpec>) -> Vec<&'a str> {
    let mut names: Vec<&str> = specs
        .into_iter()
        .flat_map(schedules)
        .filter_map(|schedule| match schedule {
            Schedule::Lambda(named) | Schedule::Multiplicative(named) => Some(named.name()),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

type Opt = Optimizer<Momentum, f64>;

/// An optimizer with one group per base rate (SGD with momentum 0.9): `default`, `g1`, …
fn optimizer(base_lrs: &[f64]) -> Opt {
    let rule = |lr| Momentum { lr, momentum: 0.9, ..Momentum::default() };
    let mut opt = Optimizer::new(rule(base_lrs[0])).unwrap();
    for (index, &lr) in base_lrs.iter().enumerate().skip(1) {
        opt.add_group(&format!("g{index}"), rule(lr)).unwrap();
    }
    opt
}

/// Every group's rate and momentum, as bits.
type State = (Vec<u64>, Vec<u64>);

fn state(opt: &Opt) -> State {
    let groups = opt.groups();
    (
        groups.iter().map(|group| group.lr().to_bits()).collect(),
        groups.iter().map(|group| group.hyper().momentum.to_bits()).collect(),
    )
}

fn to_bits(rows: &[Vec<f64>]) -> Vec<Vec<u64>> {
    rows.iter().map(|row| row.iter().map(|x| x.to_bits()).collect()).collect()
}

/// A scheduler of a fixture, and the lambdas it needs given again once restored.
trait Run {
    fn name(&self) -> &str;
    fn base_lrs(&self) -> &[f64];
    fn start(&self, opt: &mut Opt) -> LrScheduler;
    fn lambdas(&self) -> Vec<&str>;
}

impl Run for Sequence {
    fn name(&self) -> &str {
        &self.name
    }
    fn base_lrs(&self) -> &[f64] {
        &self.base_lrs
    }
    fn start(&self, opt: &mut Opt) -> LrScheduler {
        match group_schedule(&self.schedule) {
            GroupSchedule::Single(schedule) => LrScheduler::new(opt, schedule),
            GroupSchedule::Chained(schedules) => LrScheduler::chained(opt, schedules),
            GroupSchedule::Sequential { schedules, milestones } => {
                LrScheduler::sequential(opt, schedules, milestones)
            }
        }
        .unwrap()
    }
    fn lambdas(&self) -> Vec<&str> {
        lambda_names([&self.schedule])
    }
}

impl Run for PerGroupSequence {
    fn name(&self) -> &str {
        &self.name
    }
    fn base_lrs(&self) -> &[f64] {
        &self.base_lrs
    }
    fn start(&self, opt: &mut Opt) -> LrScheduler {
        let groups =
            self.groups.iter().map(|entry| (&entry.group, group_schedule(&entry.schedule)));
        LrScheduler::per_group(opt, groups).unwrap()
    }
    fn lambdas(&self) -> Vec<&str> {
        lambda_names(self.groups.iter().map(|entry| &entry.schedule))
    }
}

/// The rates and momenta after construction and after each of `steps` steps, and the
/// optimizer and scheduler at the end.
fn run(fixture: &dyn Run, steps: usize) -> (Opt, LrScheduler, Vec<State>) {
    let mut opt = optimizer(fixture.base_lrs());
    let mut scheduler = fixture.start(&mut opt);
    let mut seen = vec![state(&opt)];
    let mut w = array![1.0_f64];
    for _ in 0..steps {
        opt.step("w", &mut w, &array![0.5]).unwrap();
        scheduler.step(&mut opt).unwrap();
        seen.push(state(&opt));
    }
    (opt, scheduler, seen)
}

/// The fixtures have every lambda of the Rust table; they cover both kinds alone, entering
/// a sequence at a milestone and in chains, a list of one lambda per group, and per-group
/// schedules with a group left alone, sequences and chains as a group's schedule and
/// momentum cycling; three groups, 64 steps.
#[test]
fn fixtures_cover_both_kinds_and_per_group_schedules() {
    let fixtures = fixtures();
    assert_eq!(fixtures.lambdas.keys().map(String::as_str).collect::<Vec<_>>(), {
        let mut names = NAMES.to_vec();
        names.sort_unstable();
        names
    });
    for name in NAMES {
        lambda(name);
    }
    for sequence in &fixtures.schedules {
        assert!(sequence.base_lrs.len() == 3 && sequence.lrs.len() == 65, "{}", sequence.name);
    }
    for kind in ["lambda", "multiplicative"] {
        let is = |schedule: &&Schedule| schedule.name() == kind;
        let any = |test: &dyn Fn(&ScheduleSpec) -> bool| {
            fixtures.schedules.iter().any(|sequence| test(&sequence.schedule))
        };
        assert!(any(&|spec| matches!(spec, ScheduleSpec::Single(s) if is(&s))), "{kind}");
        assert!(any(&|spec| match spec {
            ScheduleSpec::Chained { schedules } => schedules.iter().any(|s| is(&s)),
            _ => false,
        }));
        // Entering a sequence at a milestone (not only as its first phase).
        assert!(any(&|spec| match spec {
            ScheduleSpec::Sequential { schedules, .. } => schedules[1..].iter().any(|s| is(&s)),
            _ => false,
        }));
    }
    for each in ["each", "each_mult"] {
        assert!(fixtures.lambdas[each].is_array());
        assert!(fixtures.schedules.iter().any(|s| s.lambdas().contains(&each)), "{each}");
    }
    let per_group = &fixtures.per_group;
    assert!(per_group.iter().any(|p| p.groups.len() < p.base_lrs.len()));
    assert!(per_group.iter().any(|p| p.groups.len() == 1));
    for kind in ["lambda", "multiplicative"] {
        assert!(per_group.iter().any(|p| {
            p.groups.iter().any(|g| schedules(&g.schedule).iter().any(|s| s.name() == kind))
        }));
    }
    let specs = || per_group.iter().flat_map(|p| &p.groups).map(|g| &g.schedule);
    assert!(specs().any(|spec| matches!(spec, ScheduleSpec::Sequential { .. })));
    assert!(specs().any(|spec| matches!(spec, ScheduleSpec::Chained { .. })));
    assert!(per_group.iter().any(|p| p.momenta.iter().any(|row| row != &p.momenta[0])));
}

/// Every group's rate at every step is PyTorch's, bit for bit, with the closures written as
/// the Python lambdas are; nothing touches the momentum.
#[test]
fn lambda_and_multiplicative_rates_match_pytorch_bit_for_bit() {
    for sequence in fixtures().schedules {
        let (_, _, seen) = run(&sequence, sequence.lrs.len() - 1);
        let expected = to_bits(&sequence.lrs);
        for (step, (lrs, momenta)) in seen.iter().enumerate() {
            assert_eq!(lrs, &expected[step], "{}: rates of step {step}", sequence.name);
            assert_eq!(momenta, &seen[0].1, "{}: momenta of step {step}", sequence.name);
        }
    }
}

/// Each listed group's rate (and cycled momentum) is the one PyTorch gives when that
/// group's scheduler runs on an optimizer with that group alone, bit for bit; the groups
/// not listed keep their rates.
#[test]
fn per_group_rates_match_each_group_run_alone_bit_for_bit() {
    for sequence in fixtures().per_group {
        let (_, _, seen) = run(&sequence, sequence.lrs.len() - 1);
        let (lrs, momenta) = (to_bits(&sequence.lrs), to_bits(&sequence.momenta));
        for (step, seen) in seen.iter().enumerate() {
            assert_eq!(
                seen,
                &(lrs[step].clone(), momenta[step].clone()),
                "{} step {step}",
                sequence.name
            );
        }
    }
}

fn save(encoding: &str, opt: &Opt, scheduler: &LrScheduler) -> (Opt, LrScheduler) {
    match encoding {
        "json" => serde_json::from_str(&serde_json::to_string(&(opt, scheduler)).unwrap()).unwrap(),
        _ => postcard::from_bytes(&postcard::to_stdvec(&(opt, scheduler)).unwrap()).unwrap(),
    }
}

/// A run checkpointed mid-schedule (JSON and postcard) refuses to step until its closures
/// are given again, changing nothing; given them, it continues bit for bit as the
/// uninterrupted run. MultiplicativeLR's current rate is the group's, in the optimizer's
/// checkpoint.
#[test]
fn a_checkpoint_mid_run_continues_once_the_closures_are_given_again() {
    let fixtures = fixtures();
    let runs = fixtures.schedules.iter().map(|s| s as &dyn Run);
    for fixture in runs.chain(fixtures.per_group.iter().map(|s| s as &dyn Run)) {
        let steps = 64;
        let (_, _, straight) = run(fixture, steps);
        for (encoding, at) in [("json", 23), ("postcard", 41), ("json", 5)] {
            let (opt, scheduler, _) = run(fixture, at);
            let (mut opt, mut scheduler) = save(encoding, &opt, &scheduler);
            assert_eq!(scheduler.steps(), at as u64);
            let names = fixture.lambdas();
            if !names.is_empty() {
                let before = (opt.clone(), scheduler.clone());
                let err = scheduler.step(&mut opt).unwrap_err();
                let Error::LambdaMissing { ref name, .. } = err else { panic!("{err}") };
                assert!(names.contains(&name.as_str()), "{err}");
                assert_eq!((&opt, &scheduler), (&before.0, &before.1));
            }
            for name in names {
                scheduler.set_lambda(lambda(name)).unwrap();
            }
            let mut w = array![1.0_f64];
            let mut seen = vec![state(&opt)];
            for _ in at..steps {
                opt.step("w", &mut w, &array![0.5]).unwrap();
                scheduler.step(&mut opt).unwrap();
                seen.push(state(&opt));
            }
            assert_eq!(seen, straight[at..], "{} resumed from {encoding} at {at}", fixture.name());
        }
    }
}

fn sgd(lrs: &[f64]) -> Optimizer<Sgd, f64> {
    let mut opt = Optimizer::new(Sgd { lr: lrs[0], ..Sgd::default() }).unwrap();
    for (index, &lr) in lrs.iter().enumerate().skip(1) {
        opt.add_group(&format!("g{index}"), Sgd { lr, ..Sgd::default() }).unwrap();
    }
    opt
}

fn lr(opt: &Optimizer<Sgd, f64>, group: &str) -> f64 {
    opt.group(group).unwrap().lr()
}

/// A lambda without its closure — deserialized, alone or as a later phase of a sequence —
/// refuses with `LambdaMissing`, naming the schedule, at the first step and at building;
/// `set_lambda` refuses a name no phase has and a lambda without a closure. Nothing changes
/// on any refusal.
#[test]
fn a_missing_closure_is_a_typed_error_until_given() {
    let decay = || Lambda::new("decay", |_, _| 0.5);
    let mut opt = sgd(&[1.0, 0.1]);
    let warm_up = Schedule::Lambda(Lambda::new("warmup", |step, _| (step + 1) as f64 / 4.0));
    let schedules = vec![warm_up, Schedule::Multiplicative(decay())];
    let scheduler = LrScheduler::sequential(&mut opt, schedules, vec![4]).unwrap();
    let json = serde_json::to_value(&scheduler).unwrap();
    assert_eq!(json["phases"][0]["schedule"], json!({"kind": "lambda", "name": "warmup"}));
    assert_eq!(json["phases"][1]["schedule"], json!({"kind": "multiplicative", "name": "decay"}));
    let mut restored: LrScheduler = serde_json::from_value(json).unwrap();
    assert_ne!(restored, scheduler);
    assert!(format!("{restored:?}").contains("<missing>"));
    assert!(format!("{scheduler:?}").contains("<closure>"));

    // Refused at the first step, though the multiplicative phase starts at step 4 only.
    restored.set_lambda(Lambda::new("warmup", |step, _| (step + 1) as f64 / 4.0)).unwrap();
    let before = (opt.clone(), restored.clone());
    let err = restored.step(&mut opt).unwrap_err();
    assert_eq!(err, Error::LambdaMissing { schedule: "multiplicative", name: "decay".to_owned() });
    assert!(err.to_string().contains("set_lambda"), "{err}");
    assert_eq!((&opt, &restored), (&before.0, &before.1));

    let err = restored.set_lambda(Lambda::new("dekay", |_, _| 0.5)).unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule { ref reason } if reason.contains("dekay")));
    let unbound: Schedule =
        serde_json::from_str(r#"{"kind": "multiplicative", "name": "decay"}"#).unwrap();
    let Schedule::Multiplicative(unbound_decay) = &unbound else { panic!("{unbound:?}") };
    assert!(!unbound_decay.has_closure());
    let err = restored.set_lambda(unbound_decay.clone()).unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule { .. }), "{err}");
    assert_eq!((&opt, &restored), (&before.0, &before.1));

    restored.set_lambda(decay()).unwrap();
    for _ in 0..5 {
        restored.step(&mut opt).unwrap();
    }
    // Warm-up to step 3, then halved at steps 4 (entering: λ(0)) and 5.
    assert_eq!(lr(&opt, "g1"), 0.1 * 0.25);

    // Building from a deserialized schedule is refused the same way.
    let mut fresh = sgd(&[1.0]);
    let err = LrScheduler::new(&mut fresh, unbound.clone()).unwrap_err();
    assert!(matches!(err, Error::LambdaMissing { schedule: "multiplicative", .. }), "{err}");
    let err = LrScheduler::per_group(&mut fresh, [(DEFAULT_GROUP, unbound)]).unwrap_err();
    assert!(matches!(err, Error::LambdaMissing { .. }), "{err}");
    assert_eq!(fresh, sgd(&[1.0]));

    // Clones share the closure, and compare equal.
    assert_eq!(scheduler.clone(), scheduler);
    assert_ne!(Schedule::Lambda(decay()), Schedule::Lambda(decay()));
}

/// A factor that is not finite and ≥ 0 is refused with `InvalidLambdaFactor` naming the
/// schedule, the step and the group, when building or stepping; a rate that grows past
/// `f64::MAX` is refused like any other. Nothing changes then. A factor of 0 is a rate of 0.
#[test]
fn factors_out_of_range_are_refused() {
    for bad in [-0.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        // LambdaLR calls its closure when it is built.
        let mut opt = sgd(&[1.0, 0.1, 0.5]);
        let schedule = Schedule::Lambda(Lambda::new(
            "bad",
            move |_, group| if group == 2 { bad } else { 1.0 },
        ));
        let err = LrScheduler::new(&mut opt, schedule).unwrap_err();
        assert!(
            matches!(err, Error::InvalidLambdaFactor { schedule: "lambda", step: 0, group: 2, .. }),
            "{err}"
        );
        assert_eq!(opt, sgd(&[1.0, 0.1, 0.5]));

        // MultiplicativeLR first calls it at step 1; here it goes wrong at step 3.
        let factor = move |step, _| if step == 3 { bad } else { 0.9 };
        let schedule = Schedule::Multiplicative(Lambda::new("late", factor));
        let mut scheduler = LrScheduler::new(&mut opt, schedule).unwrap();
        scheduler.step(&mut opt).unwrap();
        scheduler.step(&mut opt).unwrap();
        let before = (opt.clone(), scheduler.clone());
        let err = scheduler.step(&mut opt).unwrap_err();
        let expected = Error::InvalidLambdaFactor {
            schedule: "multiplicative",
            name: "late".to_owned(),
            step: 3,
            group: 0,
            factor: bad,
        };
        if bad.is_nan() {
            assert!(
                matches!(err, Error::InvalidLambdaFactor { step: 3, factor, .. } if factor.is_nan())
            );
        } else {
            assert_eq!(err, expected);
        }
        assert_eq!((&opt, &scheduler), (&before.0, &before.1));
        assert_eq!(scheduler.steps(), 2);
    }
    let mut opt = sgd(&[1.0]);
    let grow = Schedule::Multiplicative(Lambda::new("grow", |_, _| 1e300));
    let mut scheduler = LrScheduler::new(&mut opt, grow).unwrap();
    scheduler.step(&mut opt).unwrap();
    let err = scheduler.step(&mut opt).unwrap_err();
    assert!(matches!(err, Error::InvalidHyperparameter { rule: "schedule", key: "lr", .. }));
    assert_eq!(lr(&opt, DEFAULT_GROUP), 1e300);

    let mut opt = sgd(&[1.0]);
    LrScheduler::new(&mut opt, Schedule::Lambda(Lambda::new("zero", |_, _| 0.0))).unwrap();
    assert_eq!(lr(&opt, DEFAULT_GROUP), 0.0);
}

/// `per_group` refuses a group the optimizer lacks, a group listed twice, no groups, a
/// per-group list with more than the one value of a group alone, and a listed group whose
/// rate another schedule set; a restored per-group scheduler refuses an optimizer without
/// its group. Nothing changes then. Groups not listed are free for another scheduler.
#[test]
fn per_group_refuses_groups_that_do_not_fit() {
    let fresh = || sgd(&[0.1, 1.0]);
    let cosine = || Schedule::Cosine { t_max: 10, eta_min: 0.0 };
    let mut opt = fresh();
    let err = LrScheduler::per_group(&mut opt, [("g1", cosine()), ("head", cosine())]).unwrap_err();
    assert!(matches!(err, Error::UnknownGroup { ref group } if group == "head"), "{err}");
    let err = LrScheduler::per_group(&mut opt, [("g1", cosine()), ("g1", cosine())]).unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule { ref reason } if reason.contains("g1")), "{err}");
    let none: [(&str, Schedule); 0] = [];
    assert!(matches!(LrScheduler::per_group(&mut opt, none), Err(Error::InvalidSchedule { .. })));
    let both = Schedule::OneCycle(OneCycle::new(vec![0.1, 1.0], 10));
    let err = LrScheduler::per_group(&mut opt, [("g1", both)]).unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule { ref reason } if reason.contains("max_lr")));
    assert_eq!(opt, fresh());

    // Two per-group schedulers may drive different groups; not the same one.
    let mut body = LrScheduler::per_group(&mut opt, [(DEFAULT_GROUP, cosine())]).unwrap();
    body.step(&mut opt).unwrap();
    let decay = Schedule::Exponential { gamma: 0.5 };
    let mut head = LrScheduler::per_group(&mut opt, [("g1", decay.clone())]).unwrap();
    head.step(&mut opt).unwrap();
    assert_eq!(lr(&opt, "g1"), 0.5);
    let before = opt.clone();
    let err = LrScheduler::per_group(&mut opt, [(DEFAULT_GROUP, decay)]).unwrap_err();
    assert!(matches!(err, Error::ScheduleInProgress { ref group, .. } if group == DEFAULT_GROUP));
    assert_eq!(opt, before);

    let restored: LrScheduler =
        serde_json::from_str(&serde_json::to_string(&head).unwrap()).unwrap();
    let mut other = sgd(&[0.1]);
    let mut restored_head = restored.clone();
    let err = restored_head.step(&mut other).unwrap_err();
    assert!(matches!(err, Error::UnknownGroup { ref group } if group == "g1"), "{err}");
    assert_eq!((other, restored_head), (sgd(&[0.1]), restored));
}

/// A per-group scheduler serializes as its tracks under the plan `per_group`; a scheduler
/// for every group keeps its form. Malformed per-group forms are refused.
#[test]
fn per_group_schedulers_serialize_as_their_tracks() {
    let mut opt = sgd(&[0.1, 1.0]);
    let warm_up = GroupSchedule::Sequential {
        schedules: vec![
            Schedule::Lambda(Lambda::new("warmup", |step, _| (step + 1) as f64 / 3.0)),
            Schedule::Step { step_size: 2, gamma: 0.5 },
        ],
        milestones: vec![3],
    };
    let mut scheduler = LrScheduler::per_group(&mut opt, [("g1", warm_up)]).unwrap();
    scheduler.step(&mut opt).unwrap();
    let json = serde_json::to_value(&scheduler).unwrap();
    assert_eq!(json["phases"], json!([]));
    let tracks = &json["plan"]["per_group"];
    assert_eq!(tracks[0]["group"], "g1");
    assert_eq!(tracks[0]["plan"], json!({"sequential": {"milestones": [3], "last_epoch": 1}}));
    assert_eq!(tracks[0]["phases"][0]["schedule"], json!({"kind": "lambda", "name": "warmup"}));

    let mut restored: LrScheduler = serde_json::from_value(json.clone()).unwrap();
    let mut again: LrScheduler =
        postcard::from_bytes(&postcard::to_stdvec(&scheduler).unwrap()).unwrap();
    assert_eq!(restored, again);
    for scheduler in [&mut restored, &mut again] {
        scheduler.set_lambda(Lambda::new("warmup", |step, _| (step + 1) as f64 / 3.0)).unwrap();
        let mut copy = opt.clone();
        scheduler.step(&mut copy).unwrap();
        assert_eq!(lr(&copy, "g1"), 1.0);
        assert_eq!(lr(&copy, DEFAULT_GROUP), 0.1);
    }

    let bad = |edit: &dyn Fn(&mut Value)| {
        let mut json = json.clone();
        edit(&mut json);
        serde_json::from_value::<LrScheduler>(json).unwrap_err().to_string()
    };
    let phase = json["plan"]["per_group"][0]["phases"][1].clone();
    assert!(bad(&|json| json["phases"] = json!([phase.clone()])).contains("phases"));
    let track = json["plan"]["per_group"][0].clone();
    let two = json!([track.clone(), track.clone()]);
    assert!(bad(&|json| json["plan"]["per_group"] = two.clone()).contains("g1"));
    assert!(bad(&|json| json["plan"]["per_group"] = json!([])).contains("no schedules"));
    let mut later = track.clone();
    later["group"] = DEFAULT_GROUP.into();
    later["plan"]["sequential"]["last_epoch"] = 2.into();
    later["phases"][0]["last_epoch"] = 2.into();
    let apart = json!([track.clone(), later]);
    assert!(bad(&|json| json["plan"]["per_group"] = apart.clone()).contains("position"));
    let mut whole = track.clone();
    whole["group"] = Value::Null;
    let whole = json!([whole]);
    assert!(bad(&|json| json["plan"]["per_group"] = whole.clone()).contains("names its group"));
    // A per-group track's plan is never itself per-group.
    assert!(
        bad(&|json| json["plan"]["per_group"][0]["plan"] = json!({"per_group": []}))
            .contains("per_group")
    );

    // A scheduler for every group keeps the form it has always had.
    let mut opt = sgd(&[0.1]);
    let scheduler = LrScheduler::new(&mut opt, Schedule::Exponential { gamma: 0.5 }).unwrap();
    assert_eq!(
        serde_json::to_value(&scheduler).unwrap(),
        json!({"plan": "chained", "phases": [
            {"schedule": {"kind": "exponential", "gamma": 0.5}, "last_epoch": 0, "t_i": 0, "t_cur": 0}
        ]})
    );
}

/// A listed group without a scheduled rate (given a new base rate) is brought into phase by
/// replaying its own schedule, closures included; a group added later and not listed
/// keeps its rate.
#[test]
fn per_group_brings_a_listed_group_into_phase() {
    let decay =
        || Schedule::Multiplicative(Lambda::new("decay", |step, _| 1.0 - 0.1 * (step % 3) as f64));
    let mut opt = sgd(&[0.1, 1.0]);
    let mut scheduler = LrScheduler::per_group(&mut opt, [("g1", decay())]).unwrap();
    for _ in 0..5 {
        scheduler.step(&mut opt).unwrap();
    }
    opt.set_lr("g1", 2.0).unwrap();
    opt.add_group("late", Sgd { lr: 0.3, ..Sgd::default() }).unwrap();
    scheduler.step(&mut opt).unwrap();

    let mut alone = sgd(&[2.0]);
    let mut reference = LrScheduler::new(&mut alone, decay()).unwrap();
    for _ in 0..6 {
        reference.step(&mut alone).unwrap();
    }
    assert_eq!(lr(&opt, "g1").to_bits(), lr(&alone, DEFAULT_GROUP).to_bits());
    assert_eq!((lr(&opt, DEFAULT_GROUP), lr(&opt, "late")), (0.1, 0.3));
}
