//! Schedule-Free AdamW and SGD: trajectories and averages against `schedulefree` 1.4.1
//! (`tests/reference/schedule_free.json`), the train/eval switch, its errors, checkpoints in
//! either mode, and every memory layout.

use std::collections::BTreeMap;

use ndarray::{Array1, ArrayD, IxDyn, Zip};
use ndarray_optim::schedule_free::Mode;
use ndarray_optim::{
    Adam, Element, Error, Optimizer, ParamGrad, Rule, ScheduleFreeAdamW, ScheduleFreeSgd,
    UpdateRule,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::common::{bits, values};
use crate::layouts::{LAYOUTS, Stored};
use crate::reference::{Fixture, assert_covers, assert_matches_v2, load};

const RULES: [&str; 2] = ["schedule_free_adamw", "schedule_free_sgd"];

fn fixtures(rule: &str) -> Vec<Fixture> {
    load("schedule_free.json").into_iter().filter(|f| f.case["optimizer"] == rule).collect()
}

/// The trajectory of y against `schedulefree`, within CONFORMANCE.md's tolerance, and bit
/// for bit the same with checkpoints every few steps and in either memory order.
#[test]
fn adamw_matches_schedulefree() {
    let fixtures = fixtures("schedule_free_adamw");
    assert_covers(&fixtures, &["schedule_free_adamw"], 50);
    fixtures.iter().for_each(assert_matches_v2);
}

#[test]
fn sgd_matches_schedulefree() {
    let fixtures = fixtures("schedule_free_sgd");
    assert_covers(&fixtures, &["schedule_free_sgd"], 50);
    fixtures.iter().for_each(assert_matches_v2);
}

/// The parts of a fixture this module reads beyond the replay case.
#[derive(Deserialize)]
struct EvalFixture {
    case: Value,
    eval: Evals,
}

#[derive(Deserialize)]
struct Evals {
    steps: Vec<u64>,
    x: BTreeMap<String, Vec<Vec<f64>>>,
}

#[derive(Deserialize)]
struct EvalFile {
    cases: Vec<EvalFixture>,
}

/// The rule of a case's group: the case's keys, then the group's.
fn rule_of(case: &Value, group: Option<&Value>) -> Rule {
    let mut keys = Map::new();
    keys.insert("rule".into(), case["optimizer"].clone());
    keys.extend(case["hyper"].as_object().unwrap().clone());
    if let Some(group) = group {
        keys.extend(group["hyper"].as_object().unwrap().clone());
    }
    serde_json::from_value(Value::Object(keys)).unwrap()
}

/// A fixture's case run by the test itself: an `Optimizer<Rule, A>` over a model (a map
/// of the case's tensors), so that it can be cloned and switched at any step.
struct Run<A: Element> {
    opt: Optimizer<Rule, A>,
    model: BTreeMap<String, ArrayD<A>>,
    case: Value,
}

impl<A: Element + DeserializeOwned> Run<A> {
    fn new(case: &Value) -> Self {
        let mut opt = Optimizer::new(rule_of(case, None)).unwrap();
        for group in case["groups"].as_array().into_iter().flatten() {
            opt.add_group(group["name"].as_str().unwrap(), rule_of(case, Some(group))).unwrap();
        }
        let mut model = BTreeMap::new();
        for param in case["params"].as_array().unwrap() {
            let name = param["name"].as_str().unwrap();
            if let Some(group) = param["group"].as_str() {
                opt.assign(name, group).unwrap();
            }
            model.insert(name.to_owned(), Self::array(param, &param["init"]));
        }
        Run { opt, model, case: case.clone() }
    }

    fn array(param: &Value, values: &Value) -> ArrayD<A> {
        let shape: Vec<usize> = serde_json::from_value(param["shape"].clone()).unwrap();
        let values: Vec<f64> = serde_json::from_value(values.clone()).unwrap();
        ArrayD::from_shape_vec(IxDyn(&shape), values.into_iter().map(A::from_f64).collect())
            .unwrap()
    }

    /// The gradients of step `step` (from 1) at the current parameters, as the replay
    /// harness computes them.
    fn grads(&self, step: usize) -> BTreeMap<String, ArrayD<A>> {
        let mut grads = BTreeMap::new();
        for param in self.case["params"].as_array().unwrap() {
            let name = param["name"].as_str().unwrap();
            let objective = &param["objective"];
            let grad = match objective["kind"].as_str().unwrap() {
                "quadratic" => {
                    let (a, b) =
                        (Self::array(param, &objective["a"]), Self::array(param, &objective["b"]));
                    let mut grad = self.model[name].clone();
                    Zip::from(&mut grad).and(&a).and(&b).for_each(|g, &a, &b| *g = a * *g - b);
                    grad
                }
                "sequence" => Self::array(param, &objective["grads"][step - 1]),
                kind => panic!("objective {kind}"),
            };
            grads.insert(name.to_owned(), grad);
        }
        grads
    }

    fn step(&mut self, step: usize) {
        let grads = self.grads(step);
        self.opt.step_model(&mut self.model, &grads).unwrap();
    }
}

fn assert_close(got: &ArrayD<impl Element>, reference: &[f64], dtype: &str, what: &str) {
    let (absolute, relative) = if dtype == "f32" { (1e-6, 1e-4) } else { (1e-12, 1e-9) };
    for (index, (x, &r)) in got.iter().zip(reference).enumerate() {
        let x = x.into_f64();
        assert!((x - r).abs() <= absolute + relative * r.abs(), "{what}[{index}]: {x} vs {r}");
    }
}

fn check_evals<A: Element + DeserializeOwned>(fixture: &EvalFixture) {
    let name = fixture.case["name"].as_str().unwrap();
    let mut run = Run::<A>::new(&fixture.case);
    let steps = fixture.case["steps"].as_u64().unwrap() as usize;
    let mut points = 0;
    for step in 1..=steps {
        run.step(step);
        let Some(point) = fixture.eval.steps.iter().position(|&s| s == step as u64) else {
            continue;
        };
        let (mut opt, mut model) = (run.opt.clone(), run.model.clone());
        opt.eval(&mut model).unwrap();
        for (param, rows) in &fixture.eval.x {
            let what = format!("{name}: x of `{param}` after step {step}");
            assert_close(&model[param], &rows[point], A::NAME, &what);
            assert_eq!(opt.mode(param), Some(Mode::Eval), "{what}");
        }
        points += 1;
    }
    assert_eq!(points, fixture.eval.steps.len(), "{name}: eval points");
}

/// `eval` gives `schedulefree`'s x at several points of every case, within CONFORMANCE.md's
/// tolerance.
#[test]
fn eval_matches_schedulefree() {
    let path = format!("{}/tests/reference/schedule_free.json", env!("CARGO_MANIFEST_DIR"));
    let file: EvalFile = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for rule in RULES {
        for dtype in ["f32", "f64"] {
            assert!(
                file.cases.iter().any(|f| f.case["optimizer"] == rule && f.case["dtype"] == dtype),
                "no {rule} {dtype} fixture"
            );
        }
    }
    for fixture in &file.cases {
        match fixture.case["dtype"].as_str().unwrap() {
            "f32" => check_evals::<f32>(fixture),
            _ => check_evals::<f64>(fixture),
        }
    }
}

/// The group-level values of `schedulefree` (`lr_max`, `weight_sum`, `k`) are per-tensor
/// scalars here: every tensor of a group stepped at every step holds the same values.
#[test]
fn per_tensor_scalars_are_the_groups_values() {
    let fixture = load("schedule_free.json")
        .into_iter()
        .find(|f| f.case["name"] == "schedulefree-adamw-custom-f64")
        .unwrap();
    let mut run = Run::<f64>::new(&fixture.case);
    for step in 1..=30 {
        run.step(step);
    }
    for group in run.opt.groups() {
        let members = run.opt.members(group.name()).unwrap();
        assert!(members.len() >= 2 || group.name() == "frozen", "group {}", group.name());
        let scalars = |name: &str| -> Vec<(&str, u64)> {
            let view = run.opt.state_of(name).unwrap();
            view.scalars().map(|(key, value)| (key, value.to_bits())).collect()
        };
        for name in &members {
            assert_eq!(scalars(name), scalars(members[0]), "{name} in {}", group.name());
            assert_eq!(run.opt.step_count(name), Some(30));
        }
    }
}

fn model<A: Element>() -> BTreeMap<String, ArrayD<A>> {
    BTreeMap::from([
        ("b".to_owned(), values(&[3], 1)),
        ("s".to_owned(), values(&[], 2)),
        ("w".to_owned(), values(&[2, 3], 3)),
    ])
}

fn grads<A: Element>(step: u64) -> BTreeMap<String, ArrayD<A>> {
    let (half, shift) = (A::from_f64(0.5), A::from_f64(step as f64 * 0.1));
    model::<A>().into_iter().map(|(name, p)| (name, p.mapv(|v| v * half - shift))).collect()
}

fn trained<R: UpdateRule, A: Element>(
    rule: R,
    steps: u64,
) -> (Optimizer<R, A>, BTreeMap<String, ArrayD<A>>) {
    let mut opt = Optimizer::new(rule).unwrap();
    let mut model = model::<A>();
    for step in 1..=steps {
        opt.step_model(&mut model, &grads(step)).unwrap();
    }
    (opt, model)
}

fn model_bits<A: Element>(model: &BTreeMap<String, ArrayD<A>>) -> Vec<Vec<u64>> {
    model.values().map(|p| bits(p.iter())).collect()
}

const ADAMW: ScheduleFreeAdamW = ScheduleFreeAdamW {
    lr: 0.05,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.01,
    warmup_steps: 2,
    r: 0.0,
    weight_lr_power: 2.0,
};
const SGD: ScheduleFreeSgd = ScheduleFreeSgd {
    lr: 0.1,
    momentum: 0.9,
    weight_decay: 0.0,
    warmup_steps: 0,
    r: 0.0,
    weight_lr_power: 2.0,
};

/// `eval` then `train` returns to y up to rounding; switching to the mode a tensor is in
/// changes nothing; the mode follows the calls.
#[test]
fn eval_and_train_round_trip() {
    fn check<R: ndarray_optim::schedule_free::ScheduleFree, A: Element>(rule: R) {
        let (mut opt, mut model) = trained::<R, A>(rule, 12);
        let y = model.clone();
        assert_eq!(opt.mode("w"), Some(Mode::Train));
        opt.train(&mut model).unwrap();
        assert_eq!(model_bits(&model), model_bits(&y), "train in train mode changes nothing");
        opt.eval(&mut model).unwrap();
        assert_eq!(opt.mode("w"), Some(Mode::Eval));
        assert_ne!(model_bits(&model), model_bits(&y), "x differs from y");
        let x = model.clone();
        opt.eval(&mut model).unwrap();
        assert_eq!(model_bits(&model), model_bits(&x), "eval in eval mode changes nothing");
        opt.check_mode(&model, Mode::Eval).unwrap();
        opt.train(&mut model).unwrap();
        assert_eq!(opt.mode("w"), Some(Mode::Train));
        let tolerance = if A::NAME == "f32" { 1e-6 } else { 1e-14 };
        for (name, back) in &model {
            for (a, b) in back.iter().zip(y[name].iter()) {
                let (a, b) = (a.into_f64(), b.into_f64());
                assert!((a - b).abs() <= tolerance * (1.0 + b.abs()), "{name}: {a} vs {b}");
            }
        }
        // By name: the same arithmetic as through the model.
        let (mut by_name, mut through_model) = (opt.clone(), opt.clone());
        let mut single = model.clone();
        for (name, param) in &mut single {
            by_name.eval_tensor(name, param).unwrap();
        }
        through_model.eval(&mut model).unwrap();
        assert_eq!(model_bits(&single), model_bits(&model));
        assert_eq!(by_name.mode("b"), Some(Mode::Eval));
    }
    check::<_, f32>(ADAMW);
    check::<_, f64>(ADAMW);
    check::<_, f32>(SGD);
    check::<_, f64>(SGD);
    check::<_, f64>(Rule::from(SGD));
}

/// Stepping in eval mode, checking the mode, and switching a model that does not fit fail
/// with typed errors naming the tensor, and change nothing.
#[test]
fn wrong_modes_and_bad_models_are_errors() {
    let (mut opt, mut model) = trained::<_, f64>(ADAMW, 5);
    let err = opt.check_mode(&model, Mode::Eval).unwrap_err();
    assert!(matches!(err, Error::WrongMode { ref param, mode: Mode::Train } if param == "b"));
    opt.eval(&mut model).unwrap();
    let (before, saved) = (model_bits(&model), opt.clone());
    let err = opt.step_model(&mut model, &grads(6)).unwrap_err();
    assert!(
        matches!(err, Error::WrongMode { ref param, mode: Mode::Eval } if param == "b"),
        "{err}"
    );
    assert!(err.to_string().contains("call `train` first"), "{err}");
    let w = model.get_mut("w").unwrap();
    let err = opt.step("w", w, &grads::<f64>(6)["w"]).unwrap_err();
    assert!(matches!(err, Error::WrongMode { ref param, mode: Mode::Eval } if param == "w"));
    let err = opt.check_mode(&model, Mode::Train).unwrap_err();
    assert!(matches!(err, Error::WrongMode { mode: Mode::Eval, .. }));
    assert_eq!(model_bits(&model), before);
    assert_eq!(opt, saved);

    // A model whose last tensor does not fit switches none.
    let mut wrong = model.clone();
    wrong.insert("w".to_owned(), ArrayD::zeros(IxDyn(&[3, 2])));
    let err = opt.train(&mut wrong).unwrap_err();
    assert!(matches!(err, Error::ShapeChanged { ref param, .. } if param == "w"));
    assert_eq!(bits(wrong["b"].iter()), bits(model["b"].iter()));
    assert_eq!(opt, saved);
    // A name given twice would be switched twice.
    let mut twice =
        vec![("b".to_owned(), model["b"].clone()), ("b".to_owned(), model["b"].clone())];
    let err = opt.train(&mut twice).unwrap_err();
    assert!(matches!(err, Error::DuplicateParam { ref param, .. } if param == "b"));
    let err = opt.train_tensor("bb", &mut Array1::<f64>::zeros(3)).unwrap_err();
    assert!(
        matches!(err, Error::UnknownParam { ref closest, .. } if closest.as_deref() == Some("b"))
    );
    let err = opt.train_tensor("b", &mut Array1::<f64>::zeros(4)).unwrap_err();
    assert!(matches!(err, Error::ShapeChanged { .. }));
    assert_eq!(opt, saved);

    opt.train(&mut model).unwrap();
    opt.step_model(&mut model, &grads(6)).unwrap();
}

/// Hyperparameters outside the ranges the switch and the weights need.
#[test]
fn invalid_hyperparameters_are_refused() {
    let invalid = |rule: Rule, key: &str| {
        let err = Optimizer::<_, f32>::new(rule).unwrap_err();
        assert!(matches!(err, Error::InvalidHyperparameter { key: k, .. } if k == key), "{err}");
    };
    for beta1 in [0.0, 1.0, -0.5, f64::NAN] {
        invalid(ScheduleFreeAdamW { beta1, ..ADAMW }.into(), "beta1");
    }
    invalid(ScheduleFreeAdamW { beta2: 1.0, ..ADAMW }.into(), "beta2");
    invalid(ScheduleFreeAdamW { eps: -1.0, ..ADAMW }.into(), "eps");
    invalid(ScheduleFreeAdamW { weight_decay: -1.0, ..ADAMW }.into(), "weight_decay");
    invalid(ScheduleFreeAdamW { lr: f64::INFINITY, ..ADAMW }.into(), "lr");
    for momentum in [0.0, 1.0, f64::NAN] {
        invalid(ScheduleFreeSgd { momentum, ..SGD }.into(), "momentum");
    }
    invalid(ScheduleFreeSgd { r: f64::NAN, ..SGD }.into(), "r");
    invalid(ScheduleFreeSgd { weight_lr_power: -1.0, ..SGD }.into(), "weight_lr_power");
    invalid(ScheduleFreeSgd { weight_decay: -1.0, ..SGD }.into(), "weight_decay");
}

/// A way to take an optimizer through a checkpoint.
type Resume<R, A> = dyn Fn(&Optimizer<R, A>) -> Optimizer<R, A>;

/// A run checkpointed in either mode and resumed (JSON and postcard) is bit for bit the run
/// without the checkpoint; the mode comes back with the state.
#[test]
fn checkpoints_resume_bit_for_bit_in_either_mode() {
    fn check<
        R: ndarray_optim::schedule_free::ScheduleFree + serde::Serialize + DeserializeOwned,
        A: Element + serde::Serialize + DeserializeOwned,
    >(
        rule: R,
    ) {
        let run = |resume: &Resume<R, A>| {
            let (mut opt, mut model) = trained::<R, A>(rule.clone(), 7);
            opt.eval(&mut model).unwrap();
            opt = resume(&opt);
            assert_eq!(opt.mode("w"), Some(Mode::Eval));
            assert!(matches!(opt.step_model(&mut model, &grads(8)), Err(Error::WrongMode { .. })));
            opt.train(&mut model).unwrap();
            for step in 8..=10 {
                opt.step_model(&mut model, &grads(step)).unwrap();
            }
            opt = resume(&opt);
            assert_eq!(opt.mode("w"), Some(Mode::Train));
            for step in 11..=13 {
                opt.step_model(&mut model, &grads(step)).unwrap();
            }
            opt.eval(&mut model).unwrap();
            model_bits(&model)
        };
        let plain = run(&|opt| opt.clone());
        let json = run(&|opt| serde_json::from_slice(&serde_json::to_vec(opt).unwrap()).unwrap());
        let postcard =
            run(&|opt| postcard::from_bytes(&postcard::to_allocvec(opt).unwrap()).unwrap());
        assert_eq!(json, plain, "{rule:?} {} json", A::NAME);
        assert_eq!(postcard, plain, "{rule:?} {} postcard", A::NAME);
    }
    check::<_, f32>(ADAMW);
    check::<_, f64>(ADAMW);
    check::<_, f32>(SGD);
    check::<_, f64>(Rule::from(SGD));
}

/// A checkpoint holding a mode no run writes is refused on loading.
#[test]
fn invalid_modes_in_checkpoints_are_refused() {
    let (opt, _) = trained::<_, f64>(SGD, 3);
    let json = serde_json::to_string(&opt).unwrap();
    let mut value: Value = serde_json::from_str(&json).unwrap();
    let mut replaced = 0;
    replace_scalar(&mut value, "train_mode", 0.5, &mut replaced);
    assert!(replaced > 0, "no train_mode in {json}");
    let err = serde_json::from_value::<Optimizer<ScheduleFreeSgd, f64>>(value).unwrap_err();
    assert!(err.to_string().contains("train_mode"), "{err}");
}

/// Sets every scalar record `name` in a serialized optimizer to `value`.
fn replace_scalar(value: &mut Value, name: &str, new: f64, replaced: &mut usize) {
    match value {
        Value::Object(map) => {
            if map.get("name").is_some_and(|n| n == name) && map.contains_key("value") {
                map.insert("value".into(), new.into());
                *replaced += 1;
            }
            map.values_mut().for_each(|v| replace_scalar(v, name, new, replaced));
        }
        Value::Array(items) => {
            items.iter_mut().for_each(|v| replace_scalar(v, name, new, replaced))
        }
        _ => {}
    }
}

/// Tensors of groups with other rules, and tensors never stepped, are left alone.
#[test]
fn other_rules_and_unstepped_tensors_are_left_alone() {
    let mut opt = Optimizer::<Rule, f64>::new(Rule::from(ADAMW)).unwrap();
    opt.add_group("adam", Adam::default()).unwrap();
    opt.assign("b", "adam").unwrap();
    let mut model = model::<f64>();
    opt.step_model(&mut model, &grads(1)).unwrap();
    let mut bigger = model.clone();
    bigger.insert("new".to_owned(), values(&[2], 9));
    let before = model_bits(&bigger);
    opt.eval(&mut bigger).unwrap();
    let after = model_bits(&bigger);
    assert_eq!(after[0], before[0], "the Adam tensor");
    assert_eq!(after[1], before[1], "the never-stepped tensor");
    assert_eq!((opt.mode("b"), opt.mode("new"), opt.mode("w")), (None, None, Some(Mode::Eval)));
    opt.check_mode(&bigger, Mode::Eval).unwrap();
}

/// The switch gives the same bits in every memory layout of parameter and state.
#[test]
fn every_layout_switches_alike() {
    fn run<A: Element>(layout: crate::layouts::Layout, rule: Rule) -> (Vec<u64>, Vec<u64>) {
        let mut opt = Optimizer::<Rule, A>::new(rule).unwrap();
        let logical = values::<A>(&[3, 4, 2], 5);
        let mut param = Stored::new(IxDyn(&[3, 4, 2]), layout, &logical);
        for step in 1..=4 {
            let grad = values::<A>(&[3, 4, 2], 10 + step);
            opt.step_all(&mut [ParamGrad::new("p", &mut param.view(), &grad)]).unwrap();
        }
        opt.eval_tensor("p", &mut param.view()).unwrap();
        let x = bits(param.view().iter());
        opt.train_tensor("p", &mut param.view()).unwrap();
        (x, bits(param.view().iter()))
    }
    for rule in [Rule::from(ADAMW), Rule::from(SGD)] {
        let plain = run::<f64>(crate::layouts::Layout::RowMajor, rule);
        let plain32 = run::<f32>(crate::layouts::Layout::RowMajor, rule);
        for layout in LAYOUTS {
            assert_eq!(run::<f64>(layout, rule), plain, "{rule:?} {layout:?}");
            assert_eq!(run::<f32>(layout, rule), plain32, "{rule:?} {layout:?}");
        }
    }
}
