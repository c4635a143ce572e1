//! Gradient accumulation: optax's `MultiSteps` fixtures, the running mean, layouts,
//! checkpoints and errors.

use std::collections::BTreeMap;

use ndarray::{Array1, ArrayD, IxDyn, array};
use ndarray_optim::{
    Adam, Clip, Element, Error, MultiStepOutcome, MultiSteps, NonFinite, Optimizer, ParamGrad, Sgd,
};
use serde::Deserialize;

use crate::common::{bits, values};
use crate::layouts::{LAYOUTS, Layout, Stored};

#[derive(Deserialize)]
struct Fixtures {
    multi_steps: Vec<MultiStepsCase>,
}

#[derive(Deserialize)]
struct MultiStepsCase {
    name: String,
    dtype: String,
    every_k: u64,
    adam: AdamSpec,
    micro_steps: usize,
    params: Vec<Param>,
    /// Per tensor, its values after every micro-step.
    trajectory: BTreeMap<String, Vec<Vec<f64>>>,
}

#[derive(Deserialize)]
struct AdamSpec {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

/// A tensor whose micro-batch j has the gradient `a * θ − b[j]`.
#[derive(Deserialize)]
struct Param {
    name: String,
    shape: Vec<usize>,
    init: Vec<f64>,
    a: Vec<f64>,
    b: Vec<Vec<f64>>,
}

fn fixtures() -> Fixtures {
    let path = format!("{}/tests/reference/averaging.json", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&json).unwrap()
}

fn tensor<A: Element>(shape: &[usize], values: &[f64]) -> ArrayD<A> {
    ArrayD::from_shape_vec(IxDyn(shape), values.iter().map(|&x| A::from_f64(x)).collect()).unwrap()
}

/// Runs a fixture case with its parameters stored in `layout`, through `step_all` or, with
/// `one_by_one`, through `step` for each tensor; returns every tensor after every micro-step.
fn run<A: Element>(
    case: &MultiStepsCase,
    layout: Layout,
    one_by_one: bool,
) -> BTreeMap<String, Vec<Vec<f64>>> {
    let adam = Adam {
        lr: case.adam.lr,
        beta1: case.adam.beta1,
        beta2: case.adam.beta2,
        eps: case.adam.eps,
        ..Adam::default()
    };
    let mut opt = MultiSteps::new(Optimizer::<Adam, A>::new(adam).unwrap(), case.every_k).unwrap();
    let mut params: Vec<Stored<A, IxDyn>> = case
        .params
        .iter()
        .map(|p| Stored::new(IxDyn(&p.shape), layout, &tensor(&p.shape, &p.init)))
        .collect();
    let mut out: BTreeMap<String, Vec<Vec<f64>>> = BTreeMap::new();
    for j in 0..case.micro_steps {
        let grads: Vec<ArrayD<A>> = case
            .params
            .iter()
            .zip(params.iter_mut())
            .map(|(p, stored)| {
                // a * θ − b, two roundings, as optax's side computes it.
                let (a, b) = (tensor::<A>(&p.shape, &p.a), tensor::<A>(&p.shape, &p.b[j]));
                &a * &stored.view() - &b
            })
            .collect();
        let stepped = if one_by_one {
            let mut stepped = Vec::new();
            for ((p, stored), grad) in case.params.iter().zip(params.iter_mut()).zip(&grads) {
                stepped.push(opt.step(&p.name, &mut stored.view(), grad).unwrap().stepped());
            }
            assert!(stepped.iter().all(|&s| s == stepped[0]));
            stepped[0]
        } else {
            let mut views: Vec<_> = params.iter_mut().map(Stored::view).collect();
            let mut batch: Vec<ParamGrad<'_, A>> = case
                .params
                .iter()
                .zip(views.iter_mut())
                .zip(&grads)
                .map(|((p, view), grad)| ParamGrad::new(&p.name, view, grad))
                .collect();
            opt.step_all(&mut batch).unwrap().stepped()
        };
        assert_eq!(
            stepped,
            (j as u64 + 1).is_multiple_of(case.every_k),
            "{}: micro-step {j}",
            case.name
        );
        for (p, stored) in case.params.iter().zip(params.iter_mut()) {
            let row = stored.view().iter().map(|x| x.into_f64()).collect();
            out.entry(p.name.clone()).or_default().push(row);
        }
    }
    assert_eq!(
        opt.optimizer().step_count(&case.params[0].name),
        Some(case.micro_steps as u64 / case.every_k)
    );
    out
}

fn check_case<A: Element>(case: &MultiStepsCase) {
    let reference = run::<A>(case, Layout::RowMajor, false);
    for &layout in &LAYOUTS {
        for one_by_one in [false, true] {
            assert!(
                run::<A>(case, layout, one_by_one) == reference,
                "{}: {layout:?} (one by one: {one_by_one}) differs",
                case.name
            );
        }
    }
    // optax's adam and this crate's round differently (η m̂ / (√v̂ + ε) against PyTorch's
    // arrangement of the same terms): CONFORMANCE's tolerance.
    let (absolute, relative) = if A::NAME == "f32" { (1e-6, 1e-4) } else { (1e-12, 1e-9) };
    for (name, expected) in &case.trajectory {
        for (j, (row, reference)) in reference[name].iter().zip(expected).enumerate() {
            for (index, (&x, &r)) in row.iter().zip(reference).enumerate() {
                assert!(
                    (x - r).abs() <= absolute + relative * r.abs(),
                    "{}: `{name}`[{index}] after micro-step {}: {x} vs optax {r}",
                    case.name,
                    j + 1
                );
            }
        }
    }
}

#[test]
fn matches_optax_multi_steps_around_adam() {
    let cases = fixtures().multi_steps;
    for dtype in ["f32", "f64"] {
        assert!(cases.iter().any(|c| c.dtype == dtype && c.every_k == 4 && c.micro_steps >= 48));
    }
    for case in &cases {
        match case.dtype.as_str() {
            "f64" => check_case::<f64>(case),
            "f32" => check_case::<f32>(case),
            other => panic!("{}: dtype {other}", case.name),
        }
    }
}

/// The gradient of micro-batch `j` for a tensor of `shape`.
fn micro_grad<A: Element>(shape: &[usize], j: u64) -> ArrayD<A> {
    values(shape, 17 * j + 3)
}

/// The optimizer steps with optax's running mean `m + (g − m)/n`, to the bit, and with k = 1
/// with the gradient itself.
#[test]
fn the_step_uses_optaxs_running_mean() {
    fn check<A: Element>(k: u64) {
        let rule = Adam { lr: 0.01, ..Adam::default() };
        let mut multi = MultiSteps::new(Optimizer::new(rule).unwrap(), k).unwrap();
        let mut plain = Optimizer::new(rule).unwrap();
        let (mut w, mut expected) = (values::<A>(&[3, 5], 1), values::<A>(&[3, 5], 1));
        let mut mean = ArrayD::<A>::zeros(IxDyn(&[3, 5]));
        for j in 0..4 * k {
            let grad = micro_grad::<A>(&[3, 5], j);
            let n = A::from_f64((j % k + 1) as f64);
            mean.zip_mut_with(&grad, |m, &g| *m = *m + (g - *m) / n);
            multi.step("w", &mut w, &grad).unwrap();
            if (j + 1).is_multiple_of(k) {
                plain.step("w", &mut expected, &mean).unwrap();
                mean.fill(A::zero());
            }
            assert_eq!(bits(w.iter()), bits(expected.iter()), "k {k}, micro-step {j}");
        }
        assert_eq!(multi.optimizer(), &plain);
    }
    for k in [1, 3, 4] {
        check::<f32>(k);
        check::<f64>(k);
    }
}

/// Two tensors through `step_all`, micro-batches `range`.
fn train<A: Element>(
    opt: &mut MultiSteps<Adam, A>,
    w: &mut ArrayD<A>,
    b: &mut ArrayD<A>,
    range: std::ops::Range<u64>,
) {
    for j in range {
        let (gw, gb) = (micro_grad::<A>(w.shape(), j), micro_grad::<A>(b.shape(), 100 + j));
        opt.step_all(&mut [ParamGrad::new("w", w, &gw), ParamGrad::new("b", b, &gb)]).unwrap();
    }
}

#[test]
fn a_checkpoint_between_optimizer_steps_resumes_bit_for_bit() {
    fn check<A: Element + serde::Serialize + serde::de::DeserializeOwned>() {
        let new = || MultiSteps::new(Optimizer::new(Adam::default()).unwrap(), 4).unwrap();
        let (w0, b0) = (values::<A>(&[2, 3], 5), values::<A>(&[], 6));
        let (mut w_all, mut b_all) = (w0.clone(), b0.clone());
        train(&mut new(), &mut w_all, &mut b_all, 0..14);
        for saved_at in [6, 8] {
            let mut opt = new();
            let (mut w, mut b) = (w0.clone(), b0.clone());
            train(&mut opt, &mut w, &mut b, 0..saved_at);
            assert_eq!(opt.pending().len(), if saved_at.is_multiple_of(4) { 0 } else { 2 });
            let json: MultiSteps<Adam, A> =
                serde_json::from_str(&serde_json::to_string(&opt).unwrap()).unwrap();
            let postcard: MultiSteps<Adam, A> =
                postcard::from_bytes(&postcard::to_stdvec(&opt).unwrap()).unwrap();
            for mut resumed in [json, postcard] {
                assert_eq!(resumed.micro_steps("w"), saved_at % 4);
                let (mut w, mut b) = (w.clone(), b.clone());
                train(&mut resumed, &mut w, &mut b, saved_at..14);
                assert_eq!(bits(w.iter()), bits(w_all.iter()), "{} saved at {saved_at}", A::NAME);
                assert_eq!(bits(b.iter()), bits(b_all.iter()));
                assert_eq!(resumed.optimizer().step_count("w"), Some(3));
            }
        }
    }
    check::<f32>();
    check::<f64>();
}

#[test]
fn a_training_state_file_between_optimizer_steps_resumes_bit_for_bit() {
    use ndarray_optim::checkpoint::Encoding;

    let dir = std::env::temp_dir().join(format!("multi-steps-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let new = || MultiSteps::new(Optimizer::new(Adam::default()).unwrap(), 4).unwrap();
    let (w0, b0) = (values::<f32>(&[2, 3], 5), values::<f32>(&[], 6));
    let (mut w_all, mut b_all) = (w0.clone(), b0.clone());
    train(&mut new(), &mut w_all, &mut b_all, 0..14);
    for encoding in [Encoding::Json, Encoding::Postcard] {
        let path = dir.join(format!("{encoding:?}.ckpt"));
        let mut opt = new();
        let (mut w, mut b) = (w0.clone(), b0.clone());
        train(&mut opt, &mut w, &mut b, 0..7);
        opt.save_with(&path, encoding, &(w.clone(), b.clone())).unwrap();
        let (mut resumed, (mut w, mut b)): (MultiSteps<Adam, f32>, (ArrayD<f32>, ArrayD<f32>)) =
            MultiSteps::load_with(&path).unwrap();
        assert!(resumed == opt, "{encoding:?}");
        assert_eq!(resumed.pending(), ["b", "w"]);
        train(&mut resumed, &mut w, &mut b, 7..14);
        assert_eq!(bits(w.iter()), bits(w_all.iter()), "{encoding:?}");
        assert_eq!(bits(b.iter()), bits(b_all.iter()), "{encoding:?}");
    }
    // A mean that JSON cannot hold is refused, and the file is not written.
    let mut opt = new();
    opt.optimizer_mut().set_non_finite(NonFinite::Ignore);
    let (mut w, grad) = (array![1.0_f32], array![f32::INFINITY]);
    opt.step("w", &mut w, &grad).unwrap();
    let path = dir.join("infinite.ckpt");
    let err = opt.save_with(&path, Encoding::Json, &()).unwrap_err();
    assert!(matches!(err, Error::Encode { .. }), "{err:?}");
    assert!(!path.exists());
    opt.save_with(&path, Encoding::Postcard, &()).unwrap();
    let (restored, ()): (MultiSteps<Adam, f32>, ()) = MultiSteps::load_with(&path).unwrap();
    assert!(restored == opt);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn micro_batches_out_of_step_are_refused_and_change_nothing() {
    let mut opt = MultiSteps::new(Optimizer::new(Sgd::default()).unwrap(), 3).unwrap();
    let (mut w, mut b, mut c) = (array![1.0_f64, 2.0], array![3.0_f64], array![4.0_f64]);
    let (gw, gb, gc) = (array![0.5, 0.5], array![1.0], array![1.0]);
    let outcome =
        opt.step_all(&mut [ParamGrad::new("w", &mut w, &gw), ParamGrad::new("b", &mut b, &gb)]);
    assert_eq!(outcome.unwrap(), MultiStepOutcome::Accumulated { micro_steps: 1 });
    let before = (opt.clone(), w.clone(), b.clone());
    // `b` missing from the second micro-batch.
    let err = opt.step_all(&mut [ParamGrad::new("w", &mut w, &gw)]).unwrap_err();
    assert_eq!(
        err,
        Error::MicroBatchMismatch { param: "b".to_owned(), accumulated: 1, others: None }
    );
    assert!(err.to_string().contains("`b` has accumulated 1 micro-batches"), "{err}");
    // `c` new in the second micro-batch.
    let err = opt
        .step_all(&mut [
            ParamGrad::new("w", &mut w, &gw),
            ParamGrad::new("c", &mut c, &gc),
            ParamGrad::new("b", &mut b, &gb),
        ])
        .unwrap_err();
    assert_eq!(
        err,
        Error::MicroBatchMismatch { param: "c".to_owned(), accumulated: 0, others: Some(1) }
    );
    // A new micro-batch of other tensors while `w` and `b` are in flight.
    let err = opt.step_all(&mut [ParamGrad::new("c", &mut c, &gc)]).unwrap_err();
    assert!(matches!(err, Error::MicroBatchMismatch { others: None, accumulated: 1, .. }), "{err}");
    // Another shape, and a name given twice.
    let (mut w3, gw3) = (array![1.0, 2.0, 3.0], array![0.0, 0.0, 0.0]);
    let err = opt
        .step_all(&mut [ParamGrad::new("w", &mut w3, &gw3), ParamGrad::new("b", &mut b, &gb)])
        .unwrap_err();
    assert!(matches!(err, Error::ShapeChanged { .. }), "{err}");
    let (mut w_again, gw_again) = (w.clone(), gw.clone());
    let err = opt
        .step_all(&mut [
            ParamGrad::new("w", &mut w, &gw),
            ParamGrad::new("w", &mut w_again, &gw_again),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateParam { .. }), "{err}");
    let gradient_of_another_shape = array![1.0, 2.0];
    let err = opt.step("b", &mut b, &gradient_of_another_shape).unwrap_err();
    assert!(matches!(err, Error::GradientShape { .. }), "{err}");
    assert!((opt.clone(), w.clone(), b.clone()) == before);
    assert_eq!(opt.pending(), ["b", "w"]);

    // The right micro-batches go on: the third steps.
    for expected in [2, 3] {
        let outcome = opt
            .step_all(&mut [ParamGrad::new("b", &mut b, &gb), ParamGrad::new("w", &mut w, &gw)])
            .unwrap();
        assert_eq!(outcome.stepped(), expected == 3);
    }
    assert!(opt.pending().is_empty());
    assert_eq!(w, array![1.0 - 0.01 * 0.5, 2.0 - 0.01 * 0.5]);
    // `c` may start a cycle of its own now that no tensor is in flight.
    opt.step_all(&mut [ParamGrad::new("c", &mut c, &gc)]).unwrap();
    assert_eq!(opt.micro_steps("c"), 1);
}

#[test]
fn tensors_stepped_one_by_one_count_their_own_micro_batches() {
    let mut opt =
        MultiSteps::new(Optimizer::new(Sgd { lr: 1.0, ..Sgd::default() }).unwrap(), 2).unwrap();
    let (mut w, mut b) = (array![0.0_f32], array![0.0_f32]);
    opt.step("w", &mut w, &array![1.0]).unwrap();
    assert!(opt.step("w", &mut w, &array![3.0]).unwrap().stepped());
    assert_eq!(w, array![-2.0]);
    assert!(!opt.step("b", &mut b, &array![1.0]).unwrap().stepped());
    assert_eq!(opt.pending(), ["b"]);
    // Global-norm clipping needs every gradient of a step, which `step` does not have.
    opt.optimizer_mut().set_clip(Some(Clip::GlobalNorm { max_norm: 1.0 })).unwrap();
    assert_eq!(opt.step("b", &mut b, &array![1.0]).unwrap_err(), Error::GlobalClipNeedsBatch);
    assert_eq!(opt.micro_steps("b"), 1);
}

#[test]
fn clipping_applies_to_the_mean() {
    let mut opt =
        MultiSteps::new(Optimizer::new(Sgd { lr: 1.0, ..Sgd::default() }).unwrap(), 2).unwrap();
    opt.optimizer_mut().set_clip(Some(Clip::GlobalNorm { max_norm: 1.0 })).unwrap();
    let (mut w, mut b) = (array![0.0_f64], array![0.0_f64]);
    let step = |opt: &mut MultiSteps<Sgd, f64>, w: &mut Array1<f64>, b: &mut Array1<f64>, g| {
        let (gw, gb) = (array![g], array![0.0]);
        opt.step_all(&mut [ParamGrad::new("w", w, &gw), ParamGrad::new("b", b, &gb)]).unwrap()
    };
    step(&mut opt, &mut w, &mut b, 4.0);
    // The mean is 3 (norm 3), clipped to norm 1: not each micro-batch's gradient.
    let outcome = step(&mut opt, &mut w, &mut b, 2.0);
    assert_eq!(outcome, MultiStepOutcome::Stepped { grad_norm: Some(3.0) });
    assert!((w[0] + 1.0).abs() < 1e-6);
}

#[test]
fn non_finite_gradients_follow_the_optimizers_policy() {
    for policy in [NonFinite::Refuse, NonFinite::Skip] {
        let mut inner = Optimizer::new(Sgd { lr: 1.0, ..Sgd::default() }).unwrap();
        inner.set_non_finite(policy);
        let mut opt = MultiSteps::new(inner, 2).unwrap();
        let mut w = array![0.0_f32, 0.0];
        opt.step("w", &mut w, &array![f32::MAX, 1.0]).unwrap();
        let before = (opt.clone(), w.clone());
        // A non-finite micro-batch gradient, and a finite one whose mean with the first
        // overflows.
        for grad in [array![f32::NAN, 1.0], array![-f32::MAX, 1.0]] {
            match (policy, opt.step("w", &mut w, &grad)) {
                (NonFinite::Refuse, Err(Error::NonFiniteGradient { param })) => {
                    assert_eq!(param, "w")
                }
                (NonFinite::Skip, Ok(MultiStepOutcome::Skipped { index: 0 })) => {}
                (_, other) => panic!("{policy:?} {grad}: {other:?}"),
            }
            assert!((opt.clone(), w.clone()) == before, "{policy:?} {grad}: something changed");
        }
        assert!(opt.step("w", &mut w, &array![f32::MAX, 1.0]).unwrap().stepped());
        assert_eq!(w, array![-f32::MAX, -1.0]);
    }
}

#[test]
fn every_k_must_be_positive() {
    let err = MultiSteps::new(Optimizer::<Sgd, f32>::new(Sgd::default()).unwrap(), 0).unwrap_err();
    assert!(matches!(err, Error::InvalidHyperparameter { key: "every_k", .. }), "{err}");
}

#[test]
fn bad_checkpoints_are_refused() {
    let mut opt = MultiSteps::new(Optimizer::new(Sgd::default()).unwrap(), 3).unwrap();
    let (mut w, gw) = (array![1.0_f64, 2.0], array![0.5, 0.5]);
    for _ in 0..4 {
        opt.step("w", &mut w, &gw).unwrap();
    }
    let good = serde_json::to_value(&opt).unwrap();
    assert_eq!(good["means"][0]["micro_steps"], 1);
    let refused = |edit: &dyn Fn(&mut serde_json::Value), needle: &str| {
        let mut json = good.clone();
        edit(&mut json);
        let err = serde_json::from_value::<MultiSteps<Sgd, f64>>(json).unwrap_err().to_string();
        assert!(err.contains(needle), "{err} does not mention {needle}");
    };
    refused(&|j| j["every_k"] = 0.into(), "every_k");
    refused(&|j| j["means"][0]["micro_steps"] = 3.into(), "micro-batches");
    refused(&|j| j["means"][0]["micro_steps"] = 0.into(), "micro-batches");
    refused(&|j| j["means"][0]["values"] = serde_json::json!([1.0]), "1 values");
    refused(&|j| j["means"][0]["shape"] = serde_json::json!([1, 2]), "optimizer state");
    refused(
        &|j| {
            let mean = j["means"][0].clone();
            j["means"].as_array_mut().unwrap().push(mean);
        },
        "more than once",
    );
    refused(&|j| j["optimizer"]["dtype"] = "f32".into(), "dtype");
    let restored: MultiSteps<Sgd, f64> = serde_json::from_value(good).unwrap();
    assert_eq!(restored, opt);
}

/// A batch large enough to be spread over threads steps with the means, with the bits of one
/// thread.
#[cfg(feature = "rayon")]
#[test]
fn large_batches_step_on_threads_with_the_same_bits() {
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut opt = MultiSteps::new(Optimizer::new(Adam::default()).unwrap(), 2).unwrap();
            let (mut w, mut b) = (values::<f32>(&[300, 300], 1), values::<f32>(&[300, 200], 2));
            train(&mut opt, &mut w, &mut b, 0..6);
            assert_eq!(opt.optimizer().step_count("b"), Some(3));
            (bits(w.iter()), bits(b.iter()))
        })
    };
    assert!(run(2) == run(1));
}
