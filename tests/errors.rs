//! Every error variant, and that the failing call changed nothing.

use ndarray::{Array1, Array2, array};
use ndarray_optim::{
    Adadelta, Adagrad, Adam, EpsPlacement, Error, Momentum, Nesterov, Optimizer, RmsProp, Sgd,
    UpdateRule,
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

const BAD_LR: [f64; 5] = [0.0, -0.1, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
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

#[test]
fn errors_are_std_errors() {
    fn takes(_: &dyn std::error::Error) {}
    takes(&Error::UnknownGroup { group: "g".into() });
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

    fn validate(&self) -> ndarray_optim::Result<()> {
        Ok(())
    }

    fn lr(&self) -> f64 {
        1.0
    }

    fn lr_mut(&mut self) -> &mut f64 {
        unimplemented!("not scheduled in these tests")
    }

    fn step<A: ndarray_optim::Element, D: ndarray::Dimension>(
        &self,
        _step: u64,
        tensor: ndarray_optim::TensorStep<'_, A, D>,
    ) {
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
