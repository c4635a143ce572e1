//! L-BFGS against PyTorch's `torch.optim.LBFGS` (`tests/reference/lbfgs.json`): trajectories
//! within CONFORMANCE.md's tolerance and the closure's evaluations per step exactly; bit for
//! bit the same with checkpoints (JSON and postcard) and in either memory order; its errors.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn, array};
use ndarray_optim::{Error, Lbfgs, LbfgsOptions, LineSearch};
use serde::Deserialize;
use serde_json::Value;

use crate::case::{self, Case};
use crate::reference::{Fixture, bits, load, replay};

#[derive(Deserialize)]
struct Evaluations {
    cases: Vec<CaseEvaluations>,
}

#[derive(Deserialize)]
struct CaseEvaluations {
    case: Value,
    evaluations: Vec<u64>,
    losses: Vec<f64>,
}

fn fixtures() -> Vec<Fixture> {
    load("lbfgs.json")
}

/// Each fixture within tolerance, and bit for bit the same with checkpoints every 7 steps
/// and in either memory order; the largest deviations are printed (`--nocapture`).
#[test]
fn matches_pytorch() {
    let fixtures = fixtures();
    for dtype in ["f32", "f64"] {
        let of = |f: &&Fixture| f.case["dtype"] == dtype && f.case["steps"].as_u64() >= Some(20);
        let hyper = |f: &Fixture, key: &str| f.case["hyper"].get(key).cloned();
        let covered = |what: &str, test: &dyn Fn(&Fixture) -> bool| {
            assert!(fixtures.iter().filter(of).any(test), "no {dtype} fixture {what}");
        };
        covered("without line search", &|f| hyper(f, "line_search_fn").is_none());
        covered("with strong Wolfe", &|f| hyper(f, "line_search_fn").is_some());
        covered("of history_size 3", &|f| hyper(f, "history_size") == Some(3.into()));
        covered("of default history", &|f| hyper(f, "history_size").is_none());
        covered("of max_iter 1", &|f| hyper(f, "max_iter") == Some(1.into()));
        covered("of max_iter 20", &|f| hyper(f, "max_iter").is_none());
        covered("with tolerances", &|f| hyper(f, "tolerance_change").is_some());
        for objective in ["quadratic", "rosenbrock"] {
            covered(objective, &|f| f.case["params"][0]["objective"]["kind"] == objective);
        }
    }
    let mut worst: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut outside = Vec::new();
    for fixture in &fixtures {
        let got = replay(&fixture.case);
        let (absolute, relative) = if got.dtype == "f32" { (1e-6, 1e-4) } else { (1e-12, 1e-9) };
        let entry = worst.entry(got.dtype.clone()).or_default();
        let mut ratio: f64 = 0.0;
        for (param, rows) in &got.tensors {
            let expected: Vec<Vec<f64>> =
                serde_json::from_value(fixture.trajectory[param].clone()).unwrap();
            assert_eq!(rows.len(), expected.len(), "{}", got.name);
            for (row, reference) in rows.iter().zip(&expected) {
                for (&x, &r) in row.iter().zip(reference) {
                    entry.0 = entry.0.max((x - r).abs());
                    entry.1 = entry.1.max((x - r).abs() / r.abs().max(1e-300));
                    ratio = ratio.max((x - r).abs() / (absolute + relative * r.abs()));
                }
            }
        }
        if ratio.is_nan() || ratio > 1.0 {
            outside.push(format!("{} ({ratio:.2} x tolerance)", got.name));
        }
        // Checkpoints and memory layouts change no bit.
        let plain = bits(&got);
        let mut case = fixture.case.clone();
        case["checkpoint_every"] = 7.into();
        assert_eq!(bits(&replay(&case)), plain, "{} checkpoint_every 7", got.name);
        for layout in ["c", "f"] {
            let mut case = fixture.case.clone();
            for param in case["params"].as_array_mut().unwrap() {
                param["layout"] = layout.into();
            }
            assert_eq!(bits(&replay(&case)), plain, "{} layout {layout}", got.name);
        }
    }
    for (dtype, (absolute, relative)) in worst {
        println!("lbfgs {dtype}: max |x - ref| {absolute:.3e}, max relative {relative:.3e}");
    }
    assert!(outside.is_empty(), "outside the tolerance: {outside:?}");
}

/// The model of a case, its gradients, and the closure's objective, as the harness builds them.
struct Problem {
    case: Case,
}

type Model = Vec<(String, ArrayD<f64>)>;

impl Problem {
    fn new(case: &Value) -> Problem {
        Problem { case: serde_json::from_value(case.clone()).unwrap() }
    }

    fn options(&self) -> LbfgsOptions {
        serde_json::from_value(Value::Object(self.case.hyper.clone())).unwrap()
    }

    fn model(&self) -> Model {
        self.case
            .params
            .iter()
            .map(|p| {
                let value = ArrayD::from_shape_vec(IxDyn(&p.shape), p.init.clone()).unwrap();
                (p.name.clone(), value)
            })
            .collect()
    }

    /// Quadratic objectives only: J = Σ (a θ² / 2 − b θ), g = a θ − b.
    fn step(&self, opt: &mut Lbfgs<f64>, model: &mut Model, grads: &mut Model) -> (f64, u64) {
        let before = opt.func_evals();
        let loss = opt
            .step(model, grads, |model, grads| {
                let mut loss = 0.0;
                for ((spec, (_, p)), (_, g)) in self.case.params.iter().zip(model).zip(grads) {
                    let case::Objective::Quadratic { a, b } = &spec.objective else { panic!() };
                    for (((g, &p), &a), &b) in g.iter_mut().zip(p.iter()).zip(a).zip(b) {
                        *g = a * p - b;
                        loss += a * p * p / 2.0 - b * p;
                    }
                }
                Ok::<_, Error>(loss)
            })
            .unwrap();
        (loss, opt.func_evals() - before)
    }
}

fn quadratic_f64(tag: &str) -> Value {
    let name = format!("lbfgs-{tag}-f64");
    fixtures().into_iter().find(|f| f.case["name"] == name.as_str()).unwrap().case
}

fn values(model: &Model) -> Vec<u64> {
    model.iter().flat_map(|(_, p)| p.iter().map(|v| v.to_bits())).collect()
}

/// The evaluations PyTorch counts per step (`func_evals`), exactly, for every fixture
/// whose trajectory the replay follows.
#[test]
fn evaluations_per_step_match_pytorch() {
    let path = format!("{}/tests/reference/lbfgs.json", env!("CARGO_MANIFEST_DIR"));
    let file: Evaluations = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for entry in file.cases.iter().filter(|c| {
        c.case["dtype"] == "f64" && c.case["params"][0]["objective"]["kind"] == "quadratic"
    }) {
        let problem = Problem::new(&entry.case);
        let mut opt = Lbfgs::new(problem.options()).unwrap();
        let (mut model, mut grads) = (problem.model(), problem.model());
        for (step, (&evals, &loss)) in entry.evaluations.iter().zip(&entry.losses).enumerate() {
            let (got_loss, got_evals) = problem.step(&mut opt, &mut model, &mut grads);
            assert_eq!(got_evals, evals, "{} step {}", problem.case.name, step + 1);
            assert!((got_loss - loss).abs() <= 1e-12 + 1e-9 * loss.abs(), "{}", problem.case.name);
        }
        checked += 1;
    }
    assert!(checked >= 4);
}

/// A run saved after k steps and restored (JSON, postcard) continues bit for bit.
#[test]
fn resume_is_bit_identical() {
    for tag in ["quad-wolfe-h3", "quad-fixed-defaults", "quad-wolfe-defaults"] {
        let problem = Problem::new(&quadratic_f64(tag));
        let run = |split: Option<(usize, bool)>| {
            let mut opt = Lbfgs::new(problem.options()).unwrap();
            let (mut model, mut grads) = (problem.model(), problem.model());
            for step in 1..=12 {
                problem.step(&mut opt, &mut model, &mut grads);
                if split.is_some_and(|(at, _)| at == step) {
                    opt = if split.unwrap().1 {
                        postcard::from_bytes(&postcard::to_allocvec(&opt).unwrap()).unwrap()
                    } else {
                        serde_json::from_slice(&serde_json::to_vec(&opt).unwrap()).unwrap()
                    };
                }
            }
            (values(&model), opt.func_evals(), opt.n_iter())
        };
        let plain = run(None);
        for at in [1, 4, 5] {
            for postcard in [false, true] {
                assert_eq!(run(Some((at, postcard))), plain, "{tag} saved at {at}");
            }
        }
    }
}

fn rosenbrock(
    model: &BTreeMap<String, ArrayD<f64>>,
    grads: &mut BTreeMap<String, ArrayD<f64>>,
) -> f64 {
    let (x, y) = (model["xy"][0], model["xy"][1]);
    let g = grads.get_mut("xy").unwrap();
    g[0] = -2.0 * (1.0 - x) - 400.0 * x * (y - x * x);
    g[1] = 200.0 * (y - x * x);
    (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2)
}

fn rosen_model() -> BTreeMap<String, ArrayD<f64>> {
    BTreeMap::from([("xy".to_owned(), array![-1.5, 2.0].into_dyn())])
}

#[test]
fn invalid_options_are_refused() {
    let bad = [
        LbfgsOptions { lr: -1.0, ..Default::default() },
        LbfgsOptions { lr: f64::NAN, ..Default::default() },
        LbfgsOptions { max_iter: 0, ..Default::default() },
        LbfgsOptions { max_eval: Some(0), ..Default::default() },
        LbfgsOptions { history_size: 0, ..Default::default() },
        LbfgsOptions { tolerance_grad: -1e-7, ..Default::default() },
        LbfgsOptions { tolerance_change: f64::INFINITY, ..Default::default() },
    ];
    for options in bad {
        let error = Lbfgs::<f64>::new(options).unwrap_err();
        assert!(matches!(error, Error::InvalidHyperparameter { rule: "lbfgs", .. }), "{error}");
    }
    assert_eq!(LbfgsOptions::default().max_eval(), 25);
    assert_eq!(LbfgsOptions { max_iter: 1, ..Default::default() }.max_eval(), 1);
    assert_eq!(LbfgsOptions { max_iter: 7, ..Default::default() }.max_eval(), 8);
}

/// Mismatched gradients, a changed model and a failing closure are errors that change
/// nothing, the closure's own error type passing through.
#[test]
fn errors_change_nothing() {
    let options =
        LbfgsOptions { line_search_fn: Some(LineSearch::StrongWolfe), ..Default::default() };
    let mut opt = Lbfgs::new(options).unwrap();
    let mut model = rosen_model();
    let mut grads = rosen_model();
    opt.step(&mut model, &mut grads, |m, g| Ok::<_, Error>(rosenbrock(m, g))).unwrap();
    let saved = serde_json::to_string(&opt).unwrap();
    let after = model.clone();

    // Gradients without the model's tensor, with another one, or of another shape.
    let mut missing = BTreeMap::new();
    let error = opt.step(&mut model, &mut missing, |_, _| Ok::<_, Error>(1.0)).unwrap_err();
    assert!(matches!(error, Error::MissingGradient { ref param } if param == "xy"), "{error}");
    let mut other = BTreeMap::from([("zz".to_owned(), array![0.0, 0.0].into_dyn())]);
    let error = opt.step(&mut model, &mut other, |_, _| Ok::<_, Error>(1.0)).unwrap_err();
    assert!(matches!(error, Error::UnexpectedGradient { ref param } if param == "zz"), "{error}");
    let mut wide = BTreeMap::from([("xy".to_owned(), array![0.0, 0.0, 0.0].into_dyn())]);
    let error = opt.step(&mut model, &mut wide, |_, _| Ok::<_, Error>(1.0)).unwrap_err();
    assert!(matches!(error, Error::GradientShape { .. }), "{error}");

    // The closure's error, of its own type.
    #[derive(Debug, PartialEq)]
    enum Mine {
        Failed,
        Optim(Error),
    }
    impl From<Error> for Mine {
        fn from(error: Error) -> Mine {
            Mine::Optim(error)
        }
    }
    let error = opt.step(&mut model, &mut grads, |_, _| Err(Mine::Failed)).unwrap_err();
    assert_eq!(error, Mine::Failed);

    // Another model than the history's, directly and after a restore.
    let mut bigger = BTreeMap::from([("xy".to_owned(), array![1.0, 2.0, 3.0].into_dyn())]);
    let mut bigger_grads = bigger.clone();
    let error = opt.step(&mut bigger, &mut bigger_grads, |_, _| Ok::<_, Error>(1.0)).unwrap_err();
    assert!(matches!(error, Error::ModelMismatch { .. }), "{error}");
    let restored: Lbfgs<f64> = serde_json::from_str(&saved).unwrap();
    assert!(matches!(restored.check_model(&bigger), Err(Error::ModelMismatch { .. })));
    restored.check_model(&model).unwrap();

    assert_eq!(model, after);
    assert_eq!(serde_json::to_string(&opt).unwrap(), saved);

    // State that does not fit its tensors does not load.
    let mut value: Value = serde_json::from_str(&saved).unwrap();
    value["state"]["d"] = serde_json::json!([1.0]);
    let error = serde_json::from_value::<Lbfgs<f64>>(value).unwrap_err();
    assert!(error.to_string().contains("prev_flat_grad"), "{error}");
}

/// A loss or gradient that turns NaN ends the step within `max_eval` evaluations, without a
/// panic, as PyTorch's comparisons do.
#[test]
fn non_finite_values_end_the_step() {
    for line_search_fn in [None, Some(LineSearch::StrongWolfe)] {
        let options = LbfgsOptions { line_search_fn, ..Default::default() };
        let mut opt = Lbfgs::new(options).unwrap();
        let (mut model, mut grads) = (rosen_model(), rosen_model());
        let mut calls = 0;
        opt.step(&mut model, &mut grads, |m, g| {
            calls += 1;
            let loss = rosenbrock(m, g);
            if calls > 1 {
                g.get_mut("xy").unwrap().fill(f64::NAN);
                return Ok::<_, Error>(f64::NAN);
            }
            Ok(loss)
        })
        .unwrap();
        // PyTorch's bound: the line search may evaluate max_eval times after the first.
        assert!(calls <= 26, "{calls} evaluations");
    }
}

/// The replay harness refuses what L-BFGS cannot replay.
#[test]
fn harness_refuses_what_lbfgs_cannot_replay() {
    let base = quadratic_f64("quad-wolfe-h3");
    let refuse = |edit: &dyn Fn(&mut Value), expect: &str| {
        let mut case = base.clone();
        edit(&mut case);
        let error = case::run_json(&case.to_string()).unwrap_err();
        assert!(error.contains(expect), "{error}");
    };
    refuse(&|c| c["groups"] = serde_json::json!([{"name": "g", "hyper": {}}]), "groups");
    refuse(&|c| c["clip"] = serde_json::json!({"kind": "value", "clip_value": 1.0}), "clipping");
    refuse(
        &|c| c["schedule"] = serde_json::json!({"kind": "exponential", "gamma": 0.5}),
        "schedules",
    );
    refuse(&|c| c["hyper"]["momentum"] = 0.9.into(), "momentum");
    refuse(&|c| c["hyper"]["history_size"] = 0.into(), "history_size");
    refuse(
        &|c| c["params"][1]["objective"] = serde_json::json!({"kind": "sequence", "grads": []}),
        "quadratic and rosenbrock",
    );
    let trajectory = replay(&base);
    let again = replay(&base);
    assert_eq!(bits(&trajectory), bits(&again));
}

/// A model of the same tensors in another order does not fit the flat history, and the error
/// says so rather than listing no difference.
#[test]
fn a_model_in_another_order_is_refused_by_name() {
    let mut opt = Lbfgs::new(LbfgsOptions::default()).unwrap();
    let pair = |first: &str, second: &str| -> Vec<(String, ArrayD<f64>)> {
        vec![(first.into(), array![1.0, 2.0].into_dyn()), (second.into(), array![3.0].into_dyn())]
    };
    let mut model = pair("a", "b");
    let mut grads = model.clone();
    let loss = |m: &Vec<(String, ArrayD<f64>)>, g: &mut Vec<(String, ArrayD<f64>)>| {
        for ((_, p), (_, g)) in m.iter().zip(g.iter_mut()) {
            g.assign(p);
        }
        Ok::<_, Error>(m.iter().map(|(_, p)| p.mapv(|x| x * x).sum() / 2.0).sum())
    };
    opt.step(&mut model, &mut grads, loss).unwrap();
    let swapped = vec![model[1].clone(), model[0].clone()];
    let error = opt.check_model(&swapped).unwrap_err();
    assert!(matches!(&error, Error::ModelMismatch { report } if report.is_exact()), "{error}");
    assert!(error.to_string().contains("in another order"), "{error}");
    let other = pair("a", "c");
    let error = opt.check_model(&other).unwrap_err();
    assert!(error.to_string().contains("does not match"), "{error}");
}
