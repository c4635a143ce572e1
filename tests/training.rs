//! The training loop around the rules: schedules, clipping and non-finite gradients against
//! PyTorch (`tests/reference/pytorch_training.json`), resuming, and their failure modes.

use ndarray::{Array1, Array2, array};
use ndarray_optim::schedule::{
    LrScheduler, OneCycle, PlateauMode, ReduceLrOnPlateau, Schedule, ThresholdMode,
};
use ndarray_optim::{
    Adam, Clip, DEFAULT_GROUP, Error, Momentum, NonFinite, Optimizer, ParamGrad, Sgd, StepOutcome,
};
use serde::Deserialize;
use serde_json::Value;

use crate::reference::{assert_matches, bits, load, replay};

const FIXTURES: &str = "pytorch_training.json";

#[test]
fn schedules_and_clipping_match_pytorch() {
    let fixtures = load(FIXTURES);
    for kind in ["step", "exponential", "cosine", "cosine_restarts", "linear", "one_cycle"] {
        for dtype in ["f32", "f64"] {
            assert!(
                fixtures.iter().any(|f| f.case["schedule"]["kind"] == kind
                    && f.case["dtype"] == dtype
                    && f.case["steps"].as_u64() >= Some(50)),
                "no {kind} {dtype} fixture of 50 steps or more"
            );
        }
    }
    for kind in ["value", "norm", "global_norm"] {
        for dtype in ["f32", "f64"] {
            assert!(
                fixtures.iter().any(|f| f.case["clip"]["kind"] == kind
                    && f.case["dtype"] == dtype
                    && f.case["steps"].as_u64() >= Some(50)),
                "no {kind} clip {dtype} fixture of 50 steps or more"
            );
        }
    }
    fixtures.iter().for_each(assert_matches);
}

/// The schedule's position and the clip survive checkpoints: replaying with a checkpoint
/// every step, or every 7, gives the same bits.
#[test]
fn checkpoints_keep_schedule_and_clip_exactly() {
    for fixture in load(FIXTURES) {
        let plain = bits(&replay(&fixture.case));
        for every in [1, 7] {
            let mut case = fixture.case.clone();
            case["checkpoint_every"] = every.into();
            assert_eq!(bits(&replay(&case)), plain, "{} checkpoint_every {every}", case["name"]);
        }
    }
}

#[derive(Deserialize)]
struct Sequences {
    schedules: Vec<Sequence>,
}

#[derive(Deserialize)]
struct Sequence {
    name: String,
    plan: String,
    #[serde(default)]
    schedules: Vec<Schedule>,
    #[serde(default)]
    milestones: Vec<u64>,
    #[serde(default)]
    plateau: Value,
    #[serde(default)]
    metrics: Vec<f64>,
    base_lrs: Vec<f64>,
    lrs: Vec<Vec<f64>>,
}

fn sequences() -> Vec<Sequence> {
    let path = format!("{}/tests/reference/{FIXTURES}", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str::<Sequences>(&json).unwrap().schedules
}

fn optimizer_with(base_lrs: &[f64]) -> Optimizer<Sgd, f64> {
    let mut opt = Optimizer::new(Sgd { lr: base_lrs[0], ..Sgd::default() }).unwrap();
    for (index, &lr) in base_lrs.iter().enumerate().skip(1) {
        opt.add_group(&format!("g{index}"), Sgd { lr, ..Sgd::default() }).unwrap();
    }
    opt
}

fn rates(opt: &Optimizer<Sgd, f64>) -> Vec<f64> {
    opt.groups().iter().map(|group| group.lr()).collect()
}

fn plateau_from(settings: &Value) -> ReduceLrOnPlateau {
    let mode = match settings["mode"].as_str() {
        Some("max") => PlateauMode::Max,
        _ => PlateauMode::Min,
    };
    let mut plateau = ReduceLrOnPlateau::new(mode);
    let number = |key: &str, default: f64| settings[key].as_f64().unwrap_or(default);
    plateau.factor = number("factor", plateau.factor);
    plateau.patience = number("patience", plateau.patience as f64) as u64;
    plateau.threshold = number("threshold", plateau.threshold);
    plateau.cooldown = number("cooldown", plateau.cooldown as f64) as u64;
    plateau.min_lr = number("min_lr", plateau.min_lr);
    if settings["threshold_mode"] == "abs" {
        plateau.threshold_mode = ThresholdMode::Abs;
    }
    plateau
}

/// The learning rates of every group, step by step, are the ones PyTorch's schedulers
/// printed (to 1e-13 relative; in practice the recursions agree to the last bit or two).
#[test]
fn learning_rates_match_pytorch_schedulers() {
    let sequences = sequences();
    assert!(sequences.len() >= 16);
    for sequence in sequences {
        let mut opt = optimizer_with(&sequence.base_lrs);
        let mut got = vec![];
        if sequence.plan == "plateau" {
            let mut plateau = plateau_from(&sequence.plateau);
            got.push(rates(&opt));
            for &metric in &sequence.metrics {
                plateau.step(&mut opt, metric).unwrap();
                got.push(rates(&opt));
            }
        } else {
            let schedules = sequence.schedules.clone();
            let mut scheduler = match sequence.plan.as_str() {
                "single" => LrScheduler::new(&mut opt, schedules[0].clone()),
                "chained" => LrScheduler::chained(&mut opt, schedules),
                _ => LrScheduler::sequential(&mut opt, schedules, sequence.milestones.clone()),
            }
            .unwrap();
            got.push(rates(&opt));
            for _ in 1..sequence.lrs.len() {
                scheduler.step(&mut opt).unwrap();
                got.push(rates(&opt));
            }
        }
        assert_eq!(got.len(), sequence.lrs.len(), "{}", sequence.name);
        for (step, (row, expected)) in got.iter().zip(&sequence.lrs).enumerate() {
            for (&x, &r) in row.iter().zip(expected) {
                assert!(
                    (x - r).abs() <= 1e-13 * r.abs(),
                    "{}: step {}: {x} vs PyTorch {r}",
                    sequence.name,
                    step + 1
                );
            }
        }
    }
}

/// A small training loop: two tensors, global-norm clipping, warm-up then cosine.
struct Run {
    opt: Optimizer<Momentum, f64>,
    scheduler: LrScheduler,
    w: Array2<f64>,
    b: Array1<f64>,
}

impl Run {
    fn new() -> Self {
        let mut opt =
            Optimizer::new(Momentum { lr: 0.1, momentum: 0.9, ..Momentum::default() }).unwrap();
        opt.add_group("bias", Momentum { lr: 0.02, momentum: 0.5, ..Momentum::default() }).unwrap();
        opt.assign("b", "bias").unwrap();
        opt.set_clip(Some(Clip::GlobalNorm { max_norm: 1.5 })).unwrap();
        let scheduler = LrScheduler::sequential(
            &mut opt,
            vec![
                Schedule::Linear { start_factor: 0.2, end_factor: 1.0, total_iters: 4 },
                Schedule::Cosine { t_max: 12, eta_min: 0.0 },
            ],
            vec![4],
        )
        .unwrap();
        Run { opt, scheduler, w: array![[1.0, -2.0], [0.5, 3.0]], b: array![0.25, -0.75] }
    }

    fn train(&mut self, steps: usize) {
        for _ in 0..steps {
            let gw = self.w.mapv(|x| 2.0 * x - 0.3);
            let gb = self.b.mapv(|x| x.powi(3));
            self.opt
                .step_all(&mut [
                    ParamGrad::new("w", &mut self.w, &gw),
                    ParamGrad::new("b", &mut self.b, &gb),
                ])
                .unwrap();
            self.scheduler.step(&mut self.opt).unwrap();
        }
    }
}

#[test]
fn resuming_continues_the_schedule_exactly() {
    let mut straight = Run::new();
    straight.train(20);
    let mut first = Run::new();
    first.train(9);
    let saved = serde_json::to_string(&(&first.opt, &first.scheduler)).unwrap();
    let (opt, scheduler) = serde_json::from_str(&saved).unwrap();
    let mut resumed = Run { opt, scheduler, w: first.w.clone(), b: first.b.clone() };
    assert_eq!(resumed.opt.clip(), Some(Clip::GlobalNorm { max_norm: 1.5 }));
    assert_eq!(resumed.scheduler.steps(), 9);
    resumed.train(11);
    assert_eq!(resumed.scheduler, straight.scheduler);
    assert_eq!(resumed.opt, straight.opt);
    let bits = |a: &Array2<f64>, b: &Array1<f64>| -> Vec<u64> {
        a.iter().chain(b).map(|v| v.to_bits()).collect()
    };
    assert_eq!(bits(&resumed.w, &resumed.b), bits(&straight.w, &straight.b));
    // The cosine ran through zero at step 4 + 12 and the rate 0 was checkpointed fine.
    assert!(straight.opt.group(DEFAULT_GROUP).unwrap().lr() > 0.0);
}

#[test]
fn a_rate_of_zero_survives_a_checkpoint() {
    let mut opt = Optimizer::<Sgd, f32>::new(Sgd { lr: 0.5, ..Sgd::default() }).unwrap();
    let mut scheduler =
        LrScheduler::new(&mut opt, Schedule::Cosine { t_max: 2, eta_min: 0.0 }).unwrap();
    scheduler.step(&mut opt).unwrap();
    scheduler.step(&mut opt).unwrap();
    assert_eq!(opt.group(DEFAULT_GROUP).unwrap().lr(), 0.0);
    let restored: Optimizer<Sgd, f32> =
        serde_json::from_str(&serde_json::to_string(&opt).unwrap()).unwrap();
    assert_eq!(restored, opt);
    let mut w = array![1.0_f32];
    opt.step("w", &mut w, &array![3.0]).unwrap();
    assert_eq!(w, array![1.0]);
    // set_lr replaces the scheduled rate; the base rate is still the one given.
    assert_eq!(opt.group(DEFAULT_GROUP).unwrap().hyper().lr, 0.5);
    opt.set_lr(DEFAULT_GROUP, 0.25).unwrap();
    assert_eq!(opt.group(DEFAULT_GROUP).unwrap().lr(), 0.25);
}

fn snapshot(opt: &Optimizer<Adam, f64>) -> String {
    serde_json::to_string(&(&opt.checkpoint().groups, &opt.checkpoint().tensors)).unwrap()
}

#[test]
fn non_finite_gradients_are_refused_or_skipped_changing_nothing() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut opt = Optimizer::new(Adam::default()).unwrap();
        let (mut w, mut b) = (array![1.0, 2.0], array![3.0]);
        opt.step_all(&mut [
            ParamGrad::new("w", &mut w, &array![0.5, 0.5]),
            ParamGrad::new("b", &mut b, &array![0.5]),
        ])
        .unwrap();
        let (w0, b0, state) = (w.clone(), b.clone(), snapshot(&opt));
        let (gw, gb) = (array![0.1, 0.2], array![bad]);

        opt.set_non_finite(NonFinite::Refuse);
        let err = opt
            .step_all(&mut [ParamGrad::new("w", &mut w, &gw), ParamGrad::new("b", &mut b, &gb)])
            .unwrap_err();
        assert_eq!(err, Error::NonFiniteGradient { param: "b".into() });
        assert!(err.to_string().contains("`b`"));
        assert_eq!(opt.step("b", &mut b, &gb).unwrap_err(), err);
        assert_eq!((&w, &b, snapshot(&opt)), (&w0, &b0, state.clone()));

        opt.set_non_finite(NonFinite::Skip);
        let outcome = opt
            .step_all(&mut [ParamGrad::new("w", &mut w, &gw), ParamGrad::new("b", &mut b, &gb)])
            .unwrap();
        assert_eq!(outcome, StepOutcome::Skipped { index: 1 });
        assert_eq!(opt.step("b", &mut b, &gb).unwrap(), StepOutcome::Skipped { index: 0 });
        assert_eq!((&w, &b, snapshot(&opt)), (&w0, &b0, state));
        assert_eq!(opt.step_count("w"), Some(1));

        // The default is PyTorch's: no check, the NaN goes in.
        opt.set_non_finite(NonFinite::Ignore);
        opt.step("b", &mut b, &gb).unwrap();
        assert!(!b[0].is_finite());
    }
}

#[test]
fn clipping_by_value_and_norm() {
    // Value: clamp to [-c, c], NaN passes (PyTorch's clamp_).
    let mut opt = Optimizer::new(Sgd { lr: 1.0, ..Sgd::default() }).unwrap();
    opt.set_clip(Some(Clip::Value { clip_value: 0.5 })).unwrap();
    let mut w = array![0.0_f64, 0.0, 0.0, 0.0];
    let outcome = opt.step("w", &mut w, &array![2.0, -3.0, 0.25, f64::NAN]).unwrap();
    assert_eq!(outcome, StepOutcome::Stepped { grad_norm: None });
    assert_eq!(&w.as_slice().unwrap()[..3], &[-0.5, 0.5, -0.25]);
    assert!(w[3].is_nan());

    // Norm per tensor: each tensor scaled to its own bound; the reported norm is over all.
    opt.set_clip(Some(Clip::Norm { max_norm: 1.0 })).unwrap();
    let (mut a, mut b) = (array![0.0_f64, 0.0], array![0.0_f64]);
    let (ga, gb) = (array![3.0, 4.0], array![0.5]);
    let outcome = opt
        .step_all(&mut [ParamGrad::new("a", &mut a, &ga), ParamGrad::new("b", &mut b, &gb)])
        .unwrap();
    assert_eq!(outcome, StepOutcome::Stepped { grad_norm: Some(25.25_f64.sqrt()) });
    let coefficient = 1.0 / (5.0 + 1e-6);
    assert_eq!(a, array![-3.0 * coefficient, -4.0 * coefficient]);
    assert_eq!(b, array![-0.5]); // within bound: untouched

    // Global norm: one coefficient for all, and not through `step`.
    opt.set_clip(Some(Clip::GlobalNorm { max_norm: 1.0 })).unwrap();
    assert_eq!(opt.step("b", &mut b, &gb).unwrap_err(), Error::GlobalClipNeedsBatch);
    let (mut a, mut b) = (array![0.0_f32, 0.0], array![0.0_f32]);
    let (ga, gb) = (array![3.0_f32, 0.0], array![4.0_f32]);
    let mut opt32 = Optimizer::new(Sgd { lr: 1.0, ..Sgd::default() }).unwrap();
    opt32.set_clip(Some(Clip::GlobalNorm { max_norm: 1.0 })).unwrap();
    let outcome = opt32
        .step_all(&mut [ParamGrad::new("a", &mut a, &ga), ParamGrad::new("b", &mut b, &gb)])
        .unwrap();
    assert_eq!(outcome, StepOutcome::Stepped { grad_norm: Some(5.0) });
    let coefficient = 1.0_f32 / (5.0_f32 + 1e-6_f32);
    assert_eq!((a[0], b[0]), (-3.0 * coefficient, -4.0 * coefficient));

    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = opt.set_clip(Some(Clip::Norm { max_norm: bad })).unwrap_err();
        assert!(matches!(err, Error::InvalidHyperparameter { rule: "clip", key: "max_norm", .. }));
    }
    assert_eq!(opt.clip(), Some(Clip::GlobalNorm { max_norm: 1.0 }));
}

/// Without clipping, a step is bit-for-bit the step of an optimizer that never heard of it,
/// and clipping with a bound above the norm changes nothing either.
#[test]
fn clipping_within_bounds_changes_no_bit() {
    let grad = array![[0.3, -0.2], [0.1, 0.05]];
    let run = |clip: Option<Clip>| {
        let mut opt = Optimizer::new(Adam::default()).unwrap();
        opt.set_clip(clip).unwrap();
        let mut w = array![[1.0_f64, 2.0], [3.0, 4.0]];
        for _ in 0..5 {
            opt.step_all(&mut [ParamGrad::new("w", &mut w, &grad)]).unwrap();
        }
        w.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let plain = run(None);
    assert_eq!(run(Some(Clip::Norm { max_norm: 10.0 })), plain);
    assert_eq!(run(Some(Clip::GlobalNorm { max_norm: 10.0 })), plain);
    assert_eq!(run(Some(Clip::Value { clip_value: 1.0 })), plain);
    assert_ne!(run(Some(Clip::Value { clip_value: 0.1 })), plain);
}

#[test]
fn bad_schedules_are_typed_errors_and_change_nothing() {
    let mut opt = Optimizer::<Sgd, f64>::new(Sgd { lr: 0.1, ..Sgd::default() }).unwrap();
    let invalid = [
        (Schedule::Step { step_size: 0, gamma: 0.5 }, "step_size"),
        (Schedule::Exponential { gamma: f64::NAN }, "gamma"),
        (Schedule::Cosine { t_max: 0, eta_min: 0.0 }, "t_max"),
        (Schedule::Cosine { t_max: 5, eta_min: -1.0 }, "eta_min"),
        (Schedule::CosineRestarts { t_0: 3, t_mult: 0, eta_min: 0.0 }, "t_mult"),
        (Schedule::Linear { start_factor: 0.0, end_factor: 1.0, total_iters: 5 }, "start_factor"),
        (Schedule::Linear { start_factor: 0.5, end_factor: 1.5, total_iters: 5 }, "end_factor"),
        (Schedule::MultiStep { milestones: vec![2, 4], gamma: 0.0 }, "gamma"),
        // γ² overflows: the closed form after both milestones would be infinite.
        (Schedule::MultiStep { milestones: vec![2, 4], gamma: 1e200 }, "gamma"),
        (Schedule::Constant { factor: 0.0, total_iters: 5 }, "factor"),
        (Schedule::Constant { factor: 1.5, total_iters: 5 }, "factor"),
        (Schedule::Polynomial { total_iters: 0, power: 1.0 }, "total_iters"),
        (Schedule::Polynomial { total_iters: 5, power: -1.0 }, "power"),
    ];
    for (schedule, key) in invalid {
        let err = LrScheduler::new(&mut opt, schedule.clone()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidHyperparameter { key: k, .. } if k == key),
            "{schedule:?}: {err}"
        );
        assert_eq!(opt.group(DEFAULT_GROUP).unwrap().lr(), 0.1);
    }
    let linear = Schedule::Linear { start_factor: 0.5, end_factor: 1.0, total_iters: 2 };
    let cosine = Schedule::Cosine { t_max: 5, eta_min: 0.0 };
    for milestones in [vec![], vec![0], vec![3, 3]] {
        let schedules = vec![linear.clone(), cosine.clone(), cosine.clone()];
        let err = LrScheduler::sequential(&mut opt, schedules, milestones).unwrap_err();
        assert!(matches!(err, Error::InvalidSchedule { .. }), "{err}");
    }
    let one_cycle = Schedule::OneCycle(OneCycle {
        pct_start: 0.5,
        div_factor: 4.0,
        final_div_factor: 2.0,
        ..OneCycle::new(1.0, 4)
    });
    let err = LrScheduler::chained(&mut opt, vec![one_cycle.clone(), cosine]).unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule { .. }));
    assert!(matches!(LrScheduler::chained(&mut opt, vec![]), Err(Error::InvalidSchedule { .. })));

    // One-cycle: as in PyTorch, stepping past the last step is an error that changes nothing.
    let mut scheduler = LrScheduler::new(&mut opt, one_cycle.clone()).unwrap();
    assert_eq!(opt.group(DEFAULT_GROUP).unwrap().lr(), 0.25);
    for _ in 0..4 {
        scheduler.step(&mut opt).unwrap();
    }
    let (before, rate) = (scheduler.clone(), opt.group(DEFAULT_GROUP).unwrap().lr());
    assert_eq!(scheduler.step(&mut opt).unwrap_err(), Error::ScheduleFinished { total_steps: 4 });
    assert_eq!((scheduler, opt.group(DEFAULT_GROUP).unwrap().lr()), (before, rate));

    // A scheduler position that does not fit its schedules is refused on the way in.
    let json = r#"{"plan":{"sequential":{"milestones":[],"last_epoch":0}},"phases":[]}"#;
    assert!(serde_json::from_str::<LrScheduler>(json).is_err());
}
