//! Restoring against a model that changed between runs: the load report, strict and lenient.

use ndarray::ArrayD;
use ndarray_optim::checkpoint::{LoadMode, LoadReport, ShapeMismatch};
use ndarray_optim::{Adam, Error, Optimizer};

use crate::common::{bits, values};

const LAYERS: [(&str, &[usize]); 4] =
    [("encoder.w", &[4, 3]), ("head.w", &[3, 2]), ("head.b", &[2]), ("old.layer", &[5])];

/// The next run: a wider head, `old.layer` renamed to `new.layer`, and an extra tensor.
const CHANGED: [(&str, &[usize]); 5] = [
    ("encoder.w", &[4, 3]),
    ("head.w", &[3, 4]),
    ("head.b", &[2]),
    ("new.layer", &[5]),
    ("extra", &[1]),
];

const HEAD: Adam = Adam {
    lr: 0.01,
    beta1: 0.8,
    beta2: 0.99,
    eps: 1e-8,
    weight_decay: 0.0,
    amsgrad: false,
    maximize: false,
};

/// Steps every tensor of `model` with deterministic gradients for `steps`.
fn train(opt: &mut Optimizer<Adam, f64>, model: &mut [(&str, ArrayD<f64>)], steps: u64) {
    for step in 0..steps {
        for (index, (name, param)) in model.iter_mut().enumerate() {
            let grad = values::<f64>(param.shape(), 50 * step + index as u64);
            opt.step(name, param, &grad).unwrap();
        }
    }
}

fn model(layers: &[(&'static str, &[usize])]) -> Vec<(&'static str, ArrayD<f64>)> {
    layers.iter().map(|&(name, shape)| (name, values(shape, 7))).collect()
}

fn trained() -> Optimizer<Adam, f64> {
    let mut opt = Optimizer::new(Adam::default()).unwrap();
    opt.add_group("head", HEAD).unwrap();
    opt.assign("head.w", "head").unwrap();
    opt.assign("head.b", "head").unwrap();
    train(&mut opt, &mut model(&LAYERS), 3);
    opt
}

fn expected_report() -> LoadReport {
    LoadReport {
        restored: vec!["encoder.w".into(), "head.b".into()],
        missing: vec!["extra".into(), "new.layer".into()],
        unexpected: vec!["old.layer".into()],
        mismatched: vec![ShapeMismatch {
            name: "head.w".into(),
            checkpoint: vec![3, 2],
            model: vec![3, 4],
        }],
    }
}

#[test]
fn strict_refuses_a_changed_model_and_names_every_difference() {
    let saved = trained();
    let mut opt = Optimizer::new(Adam::default()).unwrap();
    let before = opt.clone();
    let err = opt.load_state(saved.checkpoint(), CHANGED, LoadMode::Strict).unwrap_err();
    assert_eq!(err, Error::ModelMismatch { report: Box::new(expected_report()) });
    let message = err.to_string();
    for part in [
        "2 restored",
        "missing from the checkpoint: extra, new.layer",
        "not in the model: old.layer",
        "`head.w` has shape [3, 2] in the checkpoint, [3, 4] in the model",
    ] {
        assert!(message.contains(part), "{message}");
    }
    assert_eq!(opt, before);
}

#[test]
fn strict_accepts_the_same_model() {
    let saved = trained();
    let mut opt = Optimizer::new(Adam::default()).unwrap();
    let report = opt.load_state(saved.checkpoint(), LAYERS, LoadMode::Strict).unwrap();
    assert!(report.is_exact());
    assert_eq!(report.restored, ["encoder.w", "head.b", "head.w", "old.layer"]);
    assert_eq!(opt.checkpoint(), saved.checkpoint());
}

#[test]
fn lenient_restores_what_matches_and_leaves_the_rest_fresh() {
    let saved = trained();
    let mut opt = Optimizer::new(Adam { lr: 0.5, ..Adam::default() }).unwrap();
    let report = opt.load_state(saved.checkpoint(), CHANGED, LoadMode::Lenient).unwrap();
    assert_eq!(report, expected_report());

    // Groups and hyperparameters come from the checkpoint.
    assert_eq!(opt.groups(), saved.groups());
    assert_eq!(opt.step_count("encoder.w"), Some(3));
    assert_eq!(opt.step_count("head.b"), Some(3));
    // A mismatched tensor keeps its group, with fresh state; the unexpected one is dropped.
    assert_eq!((opt.group_of("head.w"), opt.step_count("head.w")), (Some("head"), None));
    assert_eq!(opt.group_of("old.layer"), None);
    assert_eq!(opt.group_of("new.layer"), None);

    // Matched tensors continue exactly as without the reload; the others start at step 1
    // exactly as in an optimizer that never saw them.
    let mut uninterrupted = saved.clone();
    let mut fresh = Optimizer::new(Adam::default()).unwrap();
    fresh.add_group("head", HEAD).unwrap();
    fresh.assign("head.w", "head").unwrap();
    for (name, shape) in CHANGED {
        let (mut a, mut b) = (values::<f64>(shape, 3), values::<f64>(shape, 3));
        let grad = values::<f64>(shape, 4);
        opt.step(name, &mut a, &grad).unwrap();
        let reference =
            if report.restored.iter().any(|r| r == name) { &mut uninterrupted } else { &mut fresh };
        reference.step(name, &mut b, &grad).unwrap();
        assert_eq!(bits(a.iter()), bits(b.iter()), "{name}");
    }
    assert_eq!(opt.step_count("encoder.w"), Some(4));
    assert_eq!(opt.step_count("head.w"), Some(1));
}

#[test]
fn model_tensors_listed_twice_with_different_shapes_are_refused() {
    let saved = trained();
    let mut opt = Optimizer::new(Adam::default()).unwrap();
    let model = [("encoder.w", vec![4, 3]), ("head.b", vec![2]), ("encoder.w", vec![3, 4])];
    let err = opt.load_state(saved.checkpoint(), model, LoadMode::Lenient).unwrap_err();
    assert_eq!(
        err,
        Error::DuplicateParam { param: "encoder.w".into(), in_what: "model's tensors" }
    );
    assert_eq!(err.to_string(), "the model's tensors lists the tensor `encoder.w` more than once");
    assert_eq!(opt.state().len(), 0);
    // The same name twice with one shape is harmless, e.g. tied weights.
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        LAYERS.iter().map(|&(name, shape)| (name.to_owned(), shape.to_vec())).collect();
    let (name, shape) = ("head.b".to_owned(), vec![2]);
    let tied = shapes.iter().chain([(&name, &shape)]);
    assert!(opt.load_state(saved.checkpoint(), tied, LoadMode::Strict).unwrap().is_exact());
}
