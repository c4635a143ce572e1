//! Every error variant, and that the failing call changed nothing.

use ndarray::{Array1, Array2, ArrayD, IxDyn, array};
use ndarray_optim::{
    Adadelta, Adafactor, Adagrad, Adam, AdamW, EpsPlacement, Error, Lamb, Momentum, Muon, Nesterov,
    Optimizer, RmsProp, Rprop, Rule, Sgd, UpdateRule,
};

/// An Adam optimizer with two groups and two stepped tensors.
fn trained() -> (Optimizer<Adam, f64>, Array2<f64>) {
    let mut opt = Optimizer::new(Adam::default()).unwrap();
    opt.add_group("head", Adam { lr: 0.01, ..Adam::default() }).unwrap();
    opt.assign("head.w", "head").unwrap();
    let mut w = Array2::from_elem((2, 3), 0.5);
    let mut b = array![0.25];
    for _ in 0..3 {
        opt.step("head.w", &mut w, &Array2::from_elem((2, 3), 0.1)).unwrap();
        opt.step("b", &mut b, &array![-1.0]).unwrap();
    }
    (opt, w)
}

#[test]
fn gradient_of_another_shape() {
    let (mut opt, mut w) = trained();
    let (before, w_before) = (opt.clone(), w.clone());
    let err = opt.step("head.w", &mut w, &Array2::zeros((3, 2))).unwrap_err();
    assert_eq!(
        err,
        Error::GradientShape {
            param: "head.w".into(),
            param_shape: vec![2, 3],
            grad_shape: vec![3, 2]
        }
    );
    assert!(err.to_string().contains("head.w") && err.to_string().contains("[3, 2]"));
    assert_eq!(opt, before);
    assert_eq!(w, w_before);
    // A new name with a bad gradient is not registered either.
    let mut fresh = Array1::<f64>::zeros(4);
    assert!(opt.step("fresh", &mut fresh, &Array1::zeros(5)).is_err());
    assert_eq!(opt, before);
    assert_eq!(opt.group_of("fresh"), None);
}

#[test]
fn registered_name_with_another_shape() {
    let (mut opt, _) = trained();
    let before = opt.clone();
    let mut other = Array1::from_elem(6, 0.5);
    let other_before = other.clone();
    let err = opt.step("head.w", &mut other, &Array1::zeros(6)).unwrap_err();
    assert_eq!(
        err,
        Error::ShapeChanged { param: "head.w".into(), registered: vec![2, 3], given: vec![6] }
    );
    assert_eq!(opt, before);
    assert_eq!(other, other_before);
    assert_eq!(opt.step_count("head.w"), Some(3));
}

fn assert_invalid<R: UpdateRule + Default>(rule: R, key: &str) {
    match Optimizer::<R, f32>::new(rule.clone()) {
        Err(Error::InvalidHyperparameter { key: k, rule: name, .. }) => {
            assert_eq!((k, name), (key, R::NAME), "{rule:?}")
        }
        other => panic!("{rule:?} was accepted: {other:?}"),
    }
    // Refused by add_group and set_hyper too, leaving the optimizer as it was.
    let mut opt = Optimizer::<R, f32>::new(R::default()).unwrap();
    let before = opt.clone();
    assert!(opt.add_group("g", rule.clone()).is_err());
    assert!(opt.set_hyper(ndarray_optim::DEFAULT_GROUP, rule).is_err());
    assert_eq!(opt, before);
}

const BAD_LR: [f64; 4] = [-0.1, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
const BAD_DECAY: [f64; 5] = [-0.1, 1.0, 1.5, f64::NAN, f64::INFINITY];
const BAD_EPS: [f64; 4] = [-1e-8, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];

#[test]
fn invalid_hyperparameters() {
    for lr in BAD_LR {
        assert_invalid(Sgd { lr, ..Sgd::default() }, "lr");
        assert_invalid(Momentum { lr, ..Momentum::default() }, "lr");
        assert_invalid(Nesterov { lr, ..Nesterov::default() }, "lr");
        assert_invalid(Adagrad { lr, ..Adagrad::default() }, "lr");
        assert_invalid(Adadelta { lr, ..Adadelta::default() }, "lr");
        assert_invalid(RmsProp { lr, ..RmsProp::default() }, "lr");
        assert_invalid(Adam { lr, ..Adam::default() }, "lr");
    }
    for decay in BAD_DECAY {
        assert_invalid(Momentum { momentum: decay, ..Momentum::default() }, "momentum");
        assert_invalid(Nesterov { momentum: decay, ..Nesterov::default() }, "momentum");
        assert_invalid(Adadelta { rho: decay, ..Adadelta::default() }, "rho");
        assert_invalid(RmsProp { rho: decay, ..RmsProp::default() }, "rho");
        assert_invalid(Adam { beta1: decay, ..Adam::default() }, "beta1");
        assert_invalid(Adam { beta2: decay, ..Adam::default() }, "beta2");
    }
    for eps in BAD_EPS {
        for eps_placement in [EpsPlacement::Inside, EpsPlacement::Outside] {
            assert_invalid(Adagrad { eps, eps_placement, ..Adagrad::default() }, "eps");
            assert_invalid(RmsProp { eps, eps_placement, ..RmsProp::default() }, "eps");
        }
        assert_invalid(Adadelta { eps, ..Adadelta::default() }, "eps");
        assert_invalid(Adam { eps, ..Adam::default() }, "eps");
    }
    // The edges of the ranges are accepted: zero momentum, decay and ε.
    assert!(Optimizer::<_, f32>::new(Momentum { momentum: 0.0, ..Momentum::default() }).is_ok());
    assert!(
        Optimizer::<_, f32>::new(Adam {
            beta1: 0.0,
            beta2: 0.0,
            eps: 0.0,
            lr: 1.0,
            ..Adam::default()
        })
        .is_ok()
    );
}

/// Lamb checks its own weight decay (the driver sees none), Adafactor its exponent, floors
/// and clipping threshold with PyTorch's ranges.
#[test]
fn invalid_hyperparameters_of_lamb_and_adafactor() {
    for lr in BAD_LR {
        assert_invalid(Lamb { lr, ..Lamb::default() }, "lr");
        assert_invalid(Adafactor { lr, ..Adafactor::default() }, "lr");
    }
    for decay in BAD_DECAY {
        assert_invalid(Lamb { beta1: decay, ..Lamb::default() }, "beta1");
        assert_invalid(Lamb { beta2: decay, ..Lamb::default() }, "beta2");
    }
    for eps in BAD_EPS {
        assert_invalid(Lamb { eps, ..Lamb::default() }, "eps");
        assert_invalid(Lamb { eps_root: eps, ..Lamb::default() }, "eps_root");
        assert_invalid(Lamb { weight_decay: eps, ..Lamb::default() }, "weight_decay");
        assert_invalid(Adafactor { eps1: Some(eps), ..Adafactor::default() }, "eps1");
        assert_invalid(Adafactor { eps2: eps, ..Adafactor::default() }, "eps2");
        assert_invalid(Adafactor { weight_decay: eps, ..Adafactor::default() }, "weight_decay");
    }
    for beta2_decay in [0.1, f64::NAN, f64::NEG_INFINITY] {
        assert_invalid(Adafactor { beta2_decay, ..Adafactor::default() }, "beta2_decay");
    }
    for d in [0.5, 0.0, f64::NAN, f64::INFINITY] {
        assert_invalid(Adafactor { d, ..Adafactor::default() }, "d");
    }
    // The edges: β₂ decay 0 (a constant weight of 1), d 1, ε₁ 0.
    let edges = Adafactor { beta2_decay: 0.0, d: 1.0, eps1: Some(0.0), ..Adafactor::default() };
    assert!(Optimizer::<_, f32>::new(edges).is_ok());
}

#[test]
fn invalid_learning_rate_from_a_schedule() {
    let (mut opt, _) = trained();
    let before = opt.clone();
    let err = opt.set_lr("head", -1.0).unwrap_err();
    assert!(matches!(err, Error::InvalidHyperparameter { key: "lr", rule: "adam", .. }));
    assert!(err.to_string().contains("lr"));
    assert_eq!(opt, before);
    opt.set_lr("head", 0.5).unwrap();
    assert_eq!(opt.group("head").unwrap().hyper().lr, 0.5);
}

#[test]
fn unknown_group() {
    let (mut opt, _) = trained();
    let before = opt.clone();
    let unknown = Error::UnknownGroup { group: "tail".into() };
    assert_eq!(opt.assign("b", "tail").unwrap_err(), unknown);
    assert_eq!(opt.set_hyper("tail", Adam::default()).unwrap_err(), unknown);
    assert_eq!(opt.set_lr("tail", 0.1).unwrap_err(), unknown);
    assert_eq!(opt.group("tail").unwrap_err(), unknown);
    assert!(unknown.to_string().contains("`tail`"));
    assert_eq!(opt, before);
}

#[test]
fn duplicate_group() {
    let (mut opt, _) = trained();
    let before = opt.clone();
    for name in ["head", ndarray_optim::DEFAULT_GROUP] {
        let err = opt.add_group(name, Adam::default()).unwrap_err();
        assert_eq!(err, Error::DuplicateGroup { group: name.into() });
    }
    assert_eq!(opt, before);
}

/// Every variant's message names what is wrong, in words a user can act on, and survives
/// conversion into a boxed `std::error::Error` (what `?` does in an application).
#[test]
fn every_error_message_names_what_is_wrong() {
    let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
    let io_message = io.to_string();
    let io_needles = ["run/opt.ckpt", io_message.as_str()];
    let cases: Vec<(Error, &[&str])> = vec![
        (
            Error::GradientShape { param: "w".into(), param_shape: vec![2], grad_shape: vec![3] },
            &["`w`", "[3]", "[2]"],
        ),
        (
            Error::ShapeChanged { param: "w".into(), registered: vec![2], given: vec![4] },
            &["`w`", "[2]", "[4]"],
        ),
        (
            Error::InvalidHyperparameter {
                rule: "adam",
                key: "beta1",
                value: 1.5,
                requirement: "in [0, 1)",
            },
            &["adam", "`beta1`", "1.5", "in [0, 1)"],
        ),
        (Error::UnknownGroup { group: "g".into() }, &["`g`"]),
        (Error::DuplicateGroup { group: "g".into() }, &["`g`", "exists"]),
        (
            Error::StateBuffersChange {
                param: "w".into(),
                current: &["exp_avg"],
                requested: &["exp_avg", "max_exp_avg_sq"],
            },
            &["`w`", "max_exp_avg_sq"],
        ),
        (Error::UnsupportedCheckpoint { format: "x".into(), version: 9, newest: 1 }, &["`x`", "9"]),
        (
            Error::CheckpointMismatch { field: "rule", expected: "adam", found: "sgd".into() },
            &["rule", "`sgd`", "`adam`"],
        ),
        (Error::InvalidSharding { reason: "rank 2 missing".into() }, &["rank 2 missing"]),
        (Error::DuplicateParam { param: "w".into(), in_what: "batch" }, &["batch", "`w`"]),
        (
            Error::InvalidTensorState { param: "w".into(), reason: "exp_avg_sq < 0".into() },
            &["`w`", "exp_avg_sq < 0"],
        ),
        (Error::CorruptCheckpoint { reason: "checksum".into() }, &["corrupt", "checksum"]),
        (Error::Encode { reason: "NaN in `lr`".into() }, &["NaN in `lr`"]),
        (
            Error::Io { path: "run/opt.ckpt".into(), kind: io.kind(), message: io.to_string() },
            &io_needles,
        ),
        (Error::NonFiniteGradient { param: "w".into() }, &["`w`", "NaN"]),
        (Error::GlobalClipNeedsBatch, &["step_all"]),
        (Error::ScheduleFinished { total_steps: 7 }, &["7"]),
        (Error::InvalidSchedule { reason: "pct_start".into() }, &["pct_start"]),
        (Error::StepCountOverflow { param: "w".into() }, &["`w`"]),
        (Error::UnknownParam { param: "w0".into(), closest: Some("w".into()) }, &["`w0`", "`w`"]),
        (Error::ParamExists { param: "head.bias".into() }, &["`head.bias`", "already"]),
        (
            Error::ScheduleInProgress { group: "head".into(), current: 0.5, first: 0.1 },
            &["`head`", "0.5", "0.1"],
        ),
        (
            Error::GroupPatterns { unmatched: vec!["a".into()], ambiguous: vec!["b".into()] },
            &["\"a\"", "\"b\""],
        ),
    ];
    for (error, needles) in cases {
        let boxed: Box<dyn std::error::Error + Send + Sync> = error.clone().into();
        let message = boxed.to_string();
        assert_eq!(message, error.to_string());
        for needle in needles {
            assert!(message.contains(needle), "{error:?}: `{message}` does not name {needle}");
        }
        assert_eq!(boxed.downcast_ref::<Error>(), Some(&error));
    }
}

/// A rule whose buffer count depends on a hyperparameter, as PyTorch's `amsgrad` does.
#[derive(Clone, Debug, PartialEq)]
struct MaybeMomentum {
    momentum: bool,
}

impl UpdateRule for MaybeMomentum {
    const NAME: &'static str = "maybe_momentum";

    fn state_names(&self) -> &'static [&'static str] {
        if self.momentum { &["momentum_buffer"] } else { &[] }
    }

    fn options(&self) -> ndarray_optim::rule::Options {
        ndarray_optim::rule::Options::lr(1.0)
    }

    fn lr_mut(&mut self) -> &mut f64 {
        unimplemented!("not scheduled in these tests")
    }

    fn step<A: ndarray_optim::Element>(&self, tensor: ndarray_optim::TensorStep<'_, A>) {
        if self.momentum {
            tensor.apply(|p, g, [b]: &mut [A; 1]| {
                *b = *b + g;
                *p = *p - *b;
            });
        } else {
            tensor.apply(|p, g, _: &mut [A; 0]| *p = *p - g);
        }
    }
}

#[test]
fn hyperparameters_that_change_the_state_buffers() {
    let mut opt = Optimizer::<_, f64>::new(MaybeMomentum { momentum: true }).unwrap();
    opt.add_group("plain", MaybeMomentum { momentum: false }).unwrap();
    // Before a tensor has state, anything goes.
    opt.assign("w", "plain").unwrap();
    opt.assign("w", ndarray_optim::DEFAULT_GROUP).unwrap();
    let mut w = array![1.0, 2.0];
    opt.step("w", &mut w, &array![1.0, 1.0]).unwrap();
    opt.step("w", &mut w, &array![1.0, 1.0]).unwrap();
    assert_eq!(w, array![-2.0, -1.0]);

    let before = opt.clone();
    let expected = Error::StateBuffersChange {
        param: "w".into(),
        current: &["momentum_buffer"],
        requested: &[],
    };
    assert_eq!(opt.assign("w", "plain").unwrap_err(), expected);
    let err =
        opt.set_hyper(ndarray_optim::DEFAULT_GROUP, MaybeMomentum { momentum: false }).unwrap_err();
    assert_eq!(err, expected);
    assert!(err.to_string().contains("momentum_buffer"));
    assert_eq!(opt, before);
    // The group without stepped members can change freely.
    opt.set_hyper("plain", MaybeMomentum { momentum: true }).unwrap();
}

#[test]
fn a_failing_batch_steps_nothing() {
    let (mut opt, mut w) = trained();
    let before = (opt.clone(), w.clone());
    let mut fresh = Array1::<f64>::zeros(3);
    let (gw, g_fresh) = (Array2::from_elem((2, 3), 0.5), Array1::from_elem(3, 1.0));
    let mut wrong = Array1::<f64>::zeros(6);
    let g_wrong = Array1::zeros(6);
    let err = opt
        .step_all(&mut [
            ndarray_optim::ParamGrad::new("head.w", &mut w, &gw),
            ndarray_optim::ParamGrad::new("fresh", &mut fresh, &g_fresh),
            ndarray_optim::ParamGrad::new("b", &mut wrong, &g_wrong),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::ShapeChanged { param, .. } if param == "b"));
    assert_eq!((opt.clone(), w.clone()), before);
    assert_eq!(fresh, Array1::<f64>::zeros(3));
    // The same batch without the bad entry steps like two single steps.
    let mut single = before.0.clone();
    let (mut w2, mut fresh2) = (before.1.clone(), Array1::<f64>::zeros(3));
    single.step("head.w", &mut w2, &gw).unwrap();
    single.step("fresh", &mut fresh2, &g_fresh).unwrap();
    opt.step_all(&mut [
        ndarray_optim::ParamGrad::new("head.w", &mut w, &gw),
        ndarray_optim::ParamGrad::new("fresh", &mut fresh, &g_fresh),
    ])
    .unwrap();
    assert_eq!((opt, w, fresh), (single, w2, fresh2));
}

use ndarray_optim::{NAdam, ParamGrad, TensorStep};

/// A name twice in one batch is refused before anything is stepped, registered or not, with
/// the same or another element count or shape; before, such batches hung, stepped two
/// tensors against one state, or panicked.
#[test]
fn a_name_twice_in_one_batch() {
    fn refused(opt: &mut Optimizer<impl UpdateRule, f64>, shapes: [&[usize]; 2]) {
        let before = opt.clone();
        let mut a = ndarray::ArrayD::<f64>::ones(shapes[0]);
        let mut b = ndarray::ArrayD::<f64>::ones(shapes[1]);
        let (ga, gb) = (a.clone(), b.clone());
        let err = opt
            .step_all(&mut [ParamGrad::new("w", &mut a, &ga), ParamGrad::new("w", &mut b, &gb)])
            .unwrap_err();
        assert!(matches!(err, Error::DuplicateParam { ref param, .. } if param == "w"), "{err}");
        assert_eq!(*opt, before);
        assert!(a.iter().chain(&b).all(|&x| x == 1.0), "nothing stepped");
    }
    for shapes in [[&[2][..], &[3][..]], [&[2, 3], &[3, 2]], [&[4], &[4]], [&[0], &[0]], [&[], &[]]]
    {
        refused(&mut Optimizer::new(Adam::default()).unwrap(), shapes);
        refused(&mut Optimizer::new(NAdam::default()).unwrap(), shapes);
        refused(&mut Optimizer::new(ScalarOnly).unwrap(), shapes);
        // Registered first, in the shape of the first entry.
        let mut opt = Optimizer::new(NAdam::default()).unwrap();
        let mut w = ndarray::ArrayD::<f64>::ones(shapes[0]);
        let g = w.clone();
        opt.step("w", &mut w, &g).unwrap();
        if shapes[0] == shapes[1] {
            refused(&mut opt, shapes);
        }
    }
}

/// A rule with no buffers and one per-tensor scalar, which counts its steps.
#[derive(Clone, Debug, PartialEq)]
struct ScalarOnly;

impl UpdateRule for ScalarOnly {
    const NAME: &'static str = "scalar_only";

    fn state_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn scalar_names(&self) -> &'static [&'static str] {
        &["count"]
    }

    fn options(&self) -> ndarray_optim::rule::Options {
        ndarray_optim::rule::Options::lr(1.0)
    }

    fn lr_mut(&mut self) -> &mut f64 {
        unimplemented!("not scheduled in these tests")
    }

    fn step<A: ndarray_optim::Element>(&self, mut tensor: TensorStep<'_, A>) {
        tensor.scalars()[0] += 1.0;
        tensor.apply(|_, _, _: &mut [A; 0]| {});
    }
}

/// The scalar of a buffer-free rule survives batch steps of empty and non-empty tensors.
#[test]
fn batch_steps_keep_scalars_of_rules_without_buffers() {
    let mut opt = Optimizer::<_, f64>::new(ScalarOnly).unwrap();
    let (mut empty, mut full) = (Array1::<f64>::zeros(0), Array1::<f64>::zeros(3));
    let (g_empty, g_full) = (empty.clone(), full.clone());
    for _ in 0..3 {
        opt.step_all(&mut [
            ParamGrad::new("empty", &mut empty, &g_empty),
            ParamGrad::new("full", &mut full, &g_full),
        ])
        .unwrap();
    }
    for name in ["empty", "full"] {
        let view = opt.state_of(name).unwrap();
        assert_eq!(view.scalars().collect::<Vec<_>>(), [("count", 3.0)], "{name}");
    }
}

/// A step count at its limit refuses the next step instead of wrapping to 0 (which made
/// Adam's bias corrections divide by zero) or panicking; nothing changes.
#[test]
fn step_count_at_its_limit() {
    let mut opt = Optimizer::<_, f64>::new(Adam::default()).unwrap();
    let mut w = array![1.0, 2.0];
    opt.step("w", &mut w, &array![0.5, 0.5]).unwrap();
    let mut checkpoint = opt.checkpoint();
    checkpoint.tensors[0].state.as_mut().unwrap().step = u64::MAX - 1;
    let mut opt = Optimizer::from_checkpoint(checkpoint).unwrap();
    opt.step("w", &mut w, &array![0.5, 0.5]).unwrap();
    assert_eq!(opt.step_count("w"), Some(u64::MAX));
    let before = (opt.clone(), w.clone());
    let expected = Error::StepCountOverflow { param: "w".into() };
    assert_eq!(opt.step("w", &mut w, &array![0.5, 0.5]).unwrap_err(), expected);
    let g = array![0.5, 0.5];
    let err = opt.step_all(&mut [ParamGrad::new("w", &mut w, &g)]).unwrap_err();
    assert_eq!(err, expected);
    assert!(err.to_string().contains("`w`"));
    assert_eq!((opt, w), before);
}

/// With the model's tensors declared, a misspelt name is an error that names the real one,
/// for assign, step and step_all alike; nothing changes.
#[test]
fn a_misspelt_name_of_a_declared_model() {
    let mut opt = Optimizer::<_, f64>::new(Adam::default()).unwrap();
    opt.add_group("head", Adam { lr: 0.01, ..Adam::default() }).unwrap();
    opt.declare(["head.weight", "head.bias", "body.weight"]).unwrap();
    let before = opt.clone();
    let expected =
        Error::UnknownParam { param: "head.weigth".into(), closest: Some("head.weight".into()) };
    assert_eq!(opt.assign("head.weigth", "head").unwrap_err(), expected);
    assert!(expected.to_string().contains("did you mean `head.weight`"), "{expected}");
    let (mut w, g) = (Array1::<f64>::zeros(2), Array1::<f64>::ones(2));
    assert_eq!(opt.step("head.weigth", &mut w, &g).unwrap_err(), expected);
    let mut b = Array1::<f64>::zeros(2);
    let err = opt
        .step_all(&mut [
            ParamGrad::new("head.bias", &mut b, &g),
            ParamGrad::new("head.weigth", &mut w, &g),
        ])
        .unwrap_err();
    assert_eq!(err, expected);
    assert_eq!(opt, before);
    assert!(w.iter().chain(&b).all(|&x| x == 0.0));
    // A name far from every declared one gets no suggestion.
    let err = opt.assign("optimizer", "head").unwrap_err();
    assert_eq!(err, Error::UnknownParam { param: "optimizer".into(), closest: None });
    // Declared names step; the report lists the ones never stepped.
    opt.assign("head.weight", "head").unwrap();
    opt.step("head.weight", &mut w, &g).unwrap();
    assert_eq!(opt.unstepped(), ["body.weight", "head.bias"]);
    assert_eq!(opt.group_of("head.weight"), Some("head"));
    // Declaring a name twice in one list is refused, and changes nothing.
    let before = opt.clone();
    let err = opt.declare(["extra", "extra"]).unwrap_err();
    assert!(matches!(err, Error::DuplicateParam { ref param, .. } if param == "extra"));
    assert_eq!(opt, before);
}

/// Without a declaration, names are open, but a misspelt assignment shows in the report of
/// names never stepped.
#[test]
fn an_assignment_never_stepped_is_reported() {
    let mut opt = Optimizer::<_, f64>::new(Adam::default()).unwrap();
    opt.add_group("head", Adam { lr: 0.01, ..Adam::default() }).unwrap();
    opt.assign("head.weigth", "head").unwrap();
    let (mut w, g) = (Array1::<f64>::zeros(2), Array1::<f64>::ones(2));
    opt.step("head.weight", &mut w, &g).unwrap();
    assert_eq!(opt.unstepped(), ["head.weigth"]);
    assert_eq!(opt.group_of("head.weight"), Some(ndarray_optim::DEFAULT_GROUP));
}

/// A learning rate of 0 is valid for every rule, as in PyTorch: the parameter stays where it
/// is (whatever the rule's options, decoupled decay included) while the state advances.
/// Except in Rprop, whose `lr` is only the initial step size: PyTorch clamps it up to
/// `step_size_min`, so the parameter moves.
#[test]
fn learning_rate_zero_freezes_every_rule_but_rprop() {
    struct Frozen;
    impl crate::common::RuleCheck for Frozen {
        fn check<R, A>(&mut self, mut rule: R)
        where
            R: UpdateRule + serde::Serialize + serde::de::DeserializeOwned,
            A: ndarray_optim::Element + serde::Serialize + serde::de::DeserializeOwned,
        {
            *rule.lr_mut() = 0.0;
            let mut opt = Optimizer::<R, A>::new(rule.clone()).unwrap();
            let initial = crate::common::values::<A>(&[3, 4], 0);
            let mut w = initial.clone();
            for step in 1..=3 {
                opt.step("w", &mut w, &crate::common::values::<A>(&[3, 4], step)).unwrap();
            }
            if R::NAME == Rprop::NAME {
                assert_ne!(w, initial, "{rule:?}");
            } else {
                assert_eq!(w, initial, "{rule:?}");
            }
            assert_eq!(opt.step_count("w"), Some(3));
        }
    }
    crate::common::for_each_rule(&mut Frozen);
    let (mut opt, _) = trained();
    opt.set_lr("head", 0.0).unwrap();
    assert_eq!(opt.group("head").unwrap().lr(), 0.0);
}

#[test]
fn invalid_muon_hyperparameters() {
    for lr in BAD_LR {
        assert_invalid(Muon { lr, ..Muon::default() }, "lr");
    }
    for weight_decay in [-0.1, f64::NAN, f64::INFINITY] {
        assert_invalid(Muon { weight_decay, ..Muon::default() }, "weight_decay");
    }
    for momentum in BAD_DECAY {
        assert_invalid(Muon { momentum, ..Muon::default() }, "momentum");
    }
    for eps in BAD_EPS {
        assert_invalid(Muon { eps, ..Muon::default() }, "eps");
    }
    for ns_steps in [0, 100, u32::MAX] {
        assert_invalid(Muon { ns_steps, ..Muon::default() }, "ns_steps");
    }
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for index in 0..3 {
            let mut ns_coefficients = Muon::default().ns_coefficients;
            ns_coefficients[index] = bad;
            assert_invalid(Muon { ns_coefficients, ..Muon::default() }, "ns_coefficients");
        }
    }
    // The edges of the ranges are accepted.
    for ns_steps in [1, 99] {
        let edges = Muon { momentum: 0.0, eps: 0.0, ns_steps, ..Muon::default() };
        assert!(Optimizer::<_, f32>::new(edges).is_ok());
    }
}

/// Muon steps matrices only: a vector, a scalar or a 3-D tensor in its group is refused
/// before anything changes, alone or in a batch, and the message sends it to a group of
/// another rule, where it steps.
#[test]
fn muon_refuses_tensors_that_are_not_matrices() {
    let mut opt = Optimizer::<Rule, f64>::new(AdamW::default().into()).unwrap();
    opt.add_group("hidden", Muon::default()).unwrap();
    let (mut w, g_w) = (Array2::from_elem((2, 3), 0.5), Array2::from_elem((2, 3), 0.25));
    opt.assign("w", "hidden").unwrap();
    opt.step("w", &mut w, &g_w).unwrap();
    for shape in [vec![3], vec![], vec![2, 1, 2]] {
        let name = format!("odd{}", shape.len());
        let name = name.as_str();
        opt.assign(name, "hidden").unwrap();
        let before = (opt.clone(), w.clone());
        let mut odd = ArrayD::from_elem(IxDyn(&shape), 1.0);
        let g_odd = ArrayD::from_elem(IxDyn(&shape), 0.5);
        let expected = Error::UnsupportedShape {
            param: name.into(),
            rule: "muon",
            shape: shape.clone(),
            requirement: "only 2-D (matrix)",
        };
        assert_eq!(opt.step(name, &mut odd, &g_odd).unwrap_err(), expected);
        let message = expected.to_string();
        assert!(
            message.contains("2-D") && message.contains("group with another rule"),
            "{message}"
        );
        let err = opt
            .step_all(&mut [
                ParamGrad::new("w", &mut w, &g_w),
                ParamGrad::new(name, &mut odd, &g_odd),
            ])
            .unwrap_err();
        assert_eq!(err, expected);
        assert_eq!((opt.clone(), w.clone()), before);
        assert_eq!(odd, ArrayD::from_elem(IxDyn(&shape), 1.0));
        assert_eq!(opt.step_count(name), None);
        // In the default group's AdamW it steps.
        opt.assign(name, ndarray_optim::DEFAULT_GROUP).unwrap();
        opt.step(name, &mut odd, &g_odd).unwrap();
        assert!(odd.iter().all(|&x| x < 1.0));
    }
}
