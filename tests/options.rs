//! PyTorch's options and the rules beyond the seed: ranges, buffers that follow the options,
//! scalar state in checkpoints, and identities that hold bit for bit.

use ndarray::{Array1, ArrayD, array};
use ndarray_optim::checkpoint::ScalarRecord;
use ndarray_optim::{
    Adadelta, Adagrad, Adam, AdamW, Adamax, Asgd, Element, Error, Lion, Momentum, NAdam, Nesterov,
    Optimizer, RAdam, RmsProp, Rprop, Sgd, UpdateRule,
};

use crate::common::{bits, values};

fn invalid<R: UpdateRule>(rule: R, key: &str) {
    match Optimizer::<R, f64>::new(rule.clone()) {
        Err(Error::InvalidHyperparameter { key: k, rule: name, .. }) => {
            assert_eq!((k, name), (key, R::NAME), "{rule:?}")
        }
        other => panic!("{rule:?} was accepted: {other:?}"),
    }
}

#[test]
fn option_ranges() {
    for bad in [-0.1, f64::NAN, f64::INFINITY] {
        invalid(Sgd { weight_decay: bad, ..Sgd::default() }, "weight_decay");
        invalid(Momentum { weight_decay: bad, ..Momentum::default() }, "weight_decay");
        invalid(Nesterov { weight_decay: bad, ..Nesterov::default() }, "weight_decay");
        invalid(Adagrad { weight_decay: bad, ..Adagrad::default() }, "weight_decay");
        invalid(Adagrad { lr_decay: bad, ..Adagrad::default() }, "lr_decay");
        invalid(
            Adagrad { initial_accumulator_value: bad, ..Adagrad::default() },
            "initial_accumulator_value",
        );
        invalid(Adadelta { weight_decay: bad, ..Adadelta::default() }, "weight_decay");
        invalid(RmsProp { weight_decay: bad, ..RmsProp::default() }, "weight_decay");
        invalid(Adam { weight_decay: bad, ..Adam::default() }, "weight_decay");
        invalid(AdamW { weight_decay: bad, ..AdamW::default() }, "weight_decay");
        invalid(Adamax { weight_decay: bad, ..Adamax::default() }, "weight_decay");
        invalid(NAdam { weight_decay: bad, ..NAdam::default() }, "weight_decay");
        invalid(NAdam { momentum_decay: bad, ..NAdam::default() }, "momentum_decay");
        invalid(RAdam { weight_decay: bad, ..RAdam::default() }, "weight_decay");
    }
    for bad in [-0.1, 1.1, f64::NAN] {
        invalid(Momentum { dampening: bad, ..Momentum::default() }, "dampening");
    }
    for bad in [-0.1, 1.0, f64::NAN] {
        invalid(RmsProp { momentum: bad, ..RmsProp::default() }, "momentum");
        invalid(AdamW { beta1: bad, ..AdamW::default() }, "beta1");
        invalid(Adamax { beta2: bad, ..Adamax::default() }, "beta2");
        invalid(NAdam { beta2: bad, ..NAdam::default() }, "beta2");
        invalid(RAdam { beta1: bad, ..RAdam::default() }, "beta1");
    }
    invalid(AdamW { lr: -1e-3, ..AdamW::default() }, "lr");
    invalid(Adamax { eps: -1.0, ..Adamax::default() }, "eps");
    invalid(NAdam { lr: f64::NAN, ..NAdam::default() }, "lr");
    invalid(RAdam { eps: f64::INFINITY, ..RAdam::default() }, "eps");
    // The edges are accepted: full dampening.
    assert!(Optimizer::<_, f32>::new(Momentum { dampening: 1.0, ..Momentum::default() }).is_ok());
}

/// Lion, ASGD and Rprop refuse what their references refuse (Rprop's etas as PyTorch
/// checks them), and what no run can use: a NaN t0, step-size bounds out of order.
#[test]
fn lion_asgd_rprop_ranges() {
    for bad in [-0.1, f64::NAN, f64::INFINITY] {
        invalid(Lion { weight_decay: bad, ..Lion::default() }, "weight_decay");
        invalid(Asgd { lambd: bad, ..Asgd::default() }, "lambd");
        invalid(Asgd { alpha: bad, ..Asgd::default() }, "alpha");
        invalid(Asgd { weight_decay: bad, ..Asgd::default() }, "weight_decay");
        invalid(Rprop { lr: bad, ..Rprop::default() }, "lr");
        invalid(Rprop { step_size_min: bad, ..Rprop::default() }, "step_size_min");
    }
    for bad in [-0.1, 1.1, f64::NAN] {
        invalid(Lion { beta1: bad, ..Lion::default() }, "beta1");
    }
    for bad in [-0.1, 1.0, f64::NAN] {
        invalid(Lion { beta2: bad, ..Lion::default() }, "beta2");
    }
    invalid(Asgd { t0: f64::NAN, ..Asgd::default() }, "t0");
    for bad in [0.0, 1.0, -0.5, f64::NAN] {
        invalid(Rprop { etaminus: bad, ..Rprop::default() }, "etaminus");
    }
    for bad in [1.0, 0.5, f64::INFINITY, f64::NAN] {
        invalid(Rprop { etaplus: bad, ..Rprop::default() }, "etaplus");
    }
    for bad in [1e-7, f64::INFINITY, f64::NAN] {
        invalid(
            Rprop { step_size_min: 1e-6, step_size_max: bad, ..Rprop::default() },
            "step_size_max",
        );
    }
    // The edges are accepted: β₁ = 1 (the momentum's sign alone), an infinite t0 (never
    // average), equal step-size bounds (a fixed step).
    assert!(Optimizer::<_, f32>::new(Lion { beta1: 1.0, ..Lion::default() }).is_ok());
    assert!(Optimizer::<_, f32>::new(Asgd { t0: f64::INFINITY, ..Asgd::default() }).is_ok());
    let fixed = Rprop { step_size_min: 0.1, step_size_max: 0.1, ..Rprop::default() };
    assert!(Optimizer::<_, f32>::new(fixed).is_ok());
}

/// Every default of every rule is PyTorch's, read from torch's own constructor signatures
/// (`tests/reference/pytorch_defaults.json`), except the seed's defaults, which are listed
/// here with their source; every PyTorch option is a field of the rule or named as offered
/// another way.
#[test]
fn defaults_are_pytorchs() {
    use serde_json::Value;

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/pytorch_defaults.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    /// A rule's defaults against those of its torch class.
    struct Expect {
        class: &'static str,
        ours: Value,
        /// torch key -> field, where the names differ.
        renames: &'static [(&'static str, &'static str)],
        /// The seed's defaults, where they differ from torch's.
        seed: &'static [(&'static str, f64)],
        /// torch options this crate offers as another rule.
        elsewhere: &'static [&'static str],
    }
    let expect = |class, ours: Value, renames, seed, elsewhere| Expect {
        class,
        ours,
        renames,
        seed,
        elsewhere,
    };
    let momentum_seed: &[(&str, f64)] = &[("lr", 0.01), ("momentum", 0.9)];
    let rules = [
        expect(
            "SGD",
            json(Sgd::default()),
            &[],
            &[("lr", 0.01)],
            &["momentum", "dampening", "nesterov"],
        ),
        expect("SGD", json(Momentum::default()), &[], momentum_seed, &["nesterov"]),
        expect("SGD", json(Nesterov::default()), &[], momentum_seed, &["dampening", "nesterov"]),
        expect("Adagrad", json(Adagrad::default()), &[], &[("eps", 1e-8)], &[]),
        expect("Adadelta", json(Adadelta::default()), &[], &[], &[]),
        expect(
            "RMSprop",
            json(RmsProp::default()),
            &[("alpha", "rho")],
            &[("lr", 0.001), ("rho", 0.9)],
            &[],
        ),
        expect("Adam", json(Adam::default()), &[], &[], &["decoupled_weight_decay"]),
        expect("AdamW", json(AdamW::default()), &[], &[], &[]),
        expect("Adamax", json(Adamax::default()), &[], &[], &[]),
        expect("NAdam", json(NAdam::default()), &[], &[], &[]),
        expect("RAdam", json(RAdam::default()), &[], &[], &[]),
    ];
    for Expect { class, ours, renames, seed, elsewhere } in rules {
        let torch = fixture["defaults"][class].as_object().unwrap();
        assert!(!torch.is_empty(), "{class}");
        for (key, torch_default) in torch {
            if elsewhere.contains(&key.as_str()) {
                continue;
            }
            let field = renames.iter().find(|(k, _)| k == key).map_or(key.as_str(), |(_, f)| f);
            let ours = ours.get(field).unwrap_or_else(|| panic!("{class}: no field for `{key}`"));
            let expected = match seed.iter().find(|(f, _)| *f == field) {
                Some(&(_, value)) => Value::from(value),
                None => torch_default.clone(),
            };
            match expected {
                Value::Bool(_) => assert_eq!(*ours, expected, "{class}.{key}"),
                _ => assert_eq!(ours.as_f64(), expected.as_f64(), "{class}.{key}"),
            }
        }
    }
}

fn json(rule: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(rule).unwrap()
}

#[test]
fn buffers_follow_the_options() {
    let rms = RmsProp::default();
    assert_eq!(rms.state_names(), ["square_avg"]);
    assert_eq!(RmsProp { momentum: 0.9, ..rms }.state_names(), ["square_avg", "momentum_buffer"]);
    assert_eq!(RmsProp { centered: true, ..rms }.state_names(), ["square_avg", "grad_avg"]);
    assert_eq!(
        RmsProp { momentum: 0.9, centered: true, ..rms }.state_names(),
        ["square_avg", "momentum_buffer", "grad_avg"]
    );
    let amsgrad = Adam { amsgrad: true, ..Adam::default() };
    assert_eq!(amsgrad.state_names(), ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]);
    assert_eq!(NAdam::default().scalar_names(), ["mu_product"]);
    assert!(Adam::default().scalar_names().is_empty());

    // Switching AMSGrad on for a group with stepped tensors would need a buffer they lack.
    let mut opt = Optimizer::<Adam, f64>::new(Adam::default()).unwrap();
    let mut w = array![1.0, 2.0];
    opt.step("w", &mut w, &array![0.5, -0.5]).unwrap();
    let before = opt.clone();
    let err = opt.set_hyper(ndarray_optim::DEFAULT_GROUP, amsgrad).unwrap_err();
    assert!(matches!(err, Error::StateBuffersChange { ref param, .. } if param == "w"), "{err}");
    assert_eq!(opt, before);
    // A group of its own can have it from the start.
    opt.add_group("ams", amsgrad).unwrap();
    opt.assign("v", "ams").unwrap();
    let mut v = array![1.0];
    opt.step("v", &mut v, &array![1.0]).unwrap();
    let names = |c: &ndarray_optim::Checkpoint<Adam, f64>, t: &str| -> Vec<String> {
        let record = c.tensors.iter().find(|r| r.name == t).unwrap();
        record.state.as_ref().unwrap().buffers.iter().map(|b| b.name.clone()).collect()
    };
    let c = opt.checkpoint();
    assert_eq!(names(&c, "v"), ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]);
    assert_eq!(names(&c, "w"), ["exp_avg", "exp_avg_sq"]);
}

fn run<R: UpdateRule, A: Element>(rule: R, steps: u64) -> Vec<u64> {
    let mut opt = Optimizer::<R, A>::new(rule).unwrap();
    let mut w: ArrayD<A> = values(&[3, 4], 1);
    for step in 0..steps {
        opt.step("w", &mut w, &values(&[3, 4], 10 + step)).unwrap();
    }
    bits(w.iter())
}

#[test]
fn adamw_without_decay_is_adam_bit_for_bit() {
    for amsgrad in [false, true] {
        let adamw = AdamW { weight_decay: 0.0, amsgrad, ..AdamW::default() };
        let adam = Adam::from(adamw);
        assert_eq!(run::<_, f32>(adamw, 20), run::<_, f32>(adam, 20));
        assert_eq!(run::<_, f64>(adamw, 20), run::<_, f64>(adam, 20));
    }
}

#[test]
fn options_at_their_defaults_change_nothing() {
    // Written out at their defaults, the options give the seed rule's numbers exactly.
    let sgd = Sgd { lr: 0.1, weight_decay: 0.0, maximize: false };
    let mut w = array![1.0_f64, -2.0];
    let mut opt = Optimizer::new(sgd).unwrap();
    opt.step("w", &mut w, &array![0.5, 0.25]).unwrap();
    assert_eq!(w, array![1.0 - 0.1 * 0.5, -2.0 - 0.1 * 0.25]);
    // An infinite parameter stays infinite: no `0 · θ` term is evaluated without decay.
    let mut w = array![f64::INFINITY];
    opt.step("inf", &mut w, &array![1.0]).unwrap();
    assert_eq!(w[0], f64::INFINITY);
}

#[test]
fn maximize_negates_the_gradient_before_the_decay() {
    // Without decay, maximizing with g is minimizing with −g, bit for bit.
    let grads = [array![0.5_f64, -1.5, 2.0], array![-0.25, 1.0, 0.125]];
    let mut up = array![1.0_f64, 2.0, -3.0];
    let mut down = up.clone();
    let rule = RmsProp { momentum: 0.5, centered: true, ..RmsProp::default() };
    let mut max = Optimizer::new(RmsProp { maximize: true, ..rule }).unwrap();
    let mut min = Optimizer::new(rule).unwrap();
    for g in &grads {
        max.step("w", &mut up, g).unwrap();
        min.step("w", &mut down, &-g).unwrap();
    }
    assert_eq!(bits(up.iter()), bits(down.iter()));
    // With L2 decay λ: θ − η(−g + λθ). θ = 2, g = 1, η = 0.5, λ = 0.25: 2 − 0.5·(−0.5).
    let mut w = array![2.0_f64];
    let rule = Sgd { lr: 0.5, weight_decay: 0.25, maximize: true };
    Optimizer::new(rule).unwrap().step("w", &mut w, &array![1.0]).unwrap();
    assert_eq!(w[0], 2.25);
}

#[test]
fn dampening_spares_the_first_step() {
    // PyTorch: b₁ = g₁, then b = γb + (1 − τ)g. γ = 0.5, τ = 0.5, η = 1, g = 1, 1:
    // b₁ = 1, θ = −1; b₂ = 0.5 + 0.5 = 1, θ = −2.
    let rule = Momentum { lr: 1.0, momentum: 0.5, dampening: 0.5, ..Momentum::default() };
    let mut opt = Optimizer::new(rule).unwrap();
    let mut w = array![0.0_f64];
    opt.step("w", &mut w, &array![1.0]).unwrap();
    assert_eq!(w[0], -1.0);
    opt.step("w", &mut w, &array![1.0]).unwrap();
    assert_eq!(w[0], -2.0);
}

#[test]
fn adagrad_accumulator_starts_at_each_groups_value() {
    // G₀ = 7, g = 3: G = 16, θ = −η · 3 / √(16 + 0) with ε = 0; the group starts at 0.
    let rule = Adagrad { lr: 1.0, eps: 0.0, initial_accumulator_value: 7.0, ..Adagrad::default() };
    let mut opt = Optimizer::new(rule).unwrap();
    opt.add_group("zero", Adagrad { initial_accumulator_value: 0.0, ..rule }).unwrap();
    opt.assign("z", "zero").unwrap();
    let (mut w, mut z) = (array![0.0_f64], array![0.0_f64]);
    opt.step("w", &mut w, &array![3.0]).unwrap();
    opt.step("z", &mut z, &array![3.0]).unwrap();
    assert_eq!((w[0], z[0]), (-0.75, -1.0));
    // lr_decay κ: step t uses η / (1 + (t − 1)κ); with G₀ = 0 and g constant the step is
    // η / (1 + κ) / √2 on the second step.
    let rule = Adagrad { lr: 1.0, eps: 0.0, lr_decay: 1.0, ..Adagrad::default() };
    let mut opt = Optimizer::new(rule).unwrap();
    let mut w = array![0.0_f64];
    opt.step("w", &mut w, &array![2.0]).unwrap();
    opt.step("w", &mut w, &array![2.0]).unwrap();
    assert!((w[0] - (-1.0 - 0.5 * 2.0 / 8f64.sqrt())).abs() < 1e-15);
}

#[test]
fn nadam_mu_product_is_checkpointed_by_name() {
    let rule = NAdam::default();
    let mut opt = Optimizer::<NAdam, f64>::new(rule).unwrap();
    let mut w = Array1::from_elem(3, 1.0);
    for _ in 0..3 {
        opt.step("w", &mut w, &Array1::from_elem(3, 0.5)).unwrap();
    }
    let mut c = opt.checkpoint();
    let state = c.tensors[0].state.as_mut().unwrap();
    // μ_t = β₁(1 − ½·0.96^{tψ}), the product over three steps, computed here on its own.
    let mu = |t: f64| 0.9 * (1.0 - 0.5 * 0.96_f64.powf(t * 0.004));
    let expected = mu(1.0) * mu(2.0) * mu(3.0);
    assert_eq!(state.scalars.len(), 1);
    assert_eq!(state.scalars[0].name, "mu_product");
    assert!((state.scalars[0].value - expected).abs() < 1e-15);
    let json = serde_json::to_string(&opt).unwrap();
    assert!(json.contains("\"mu_product\""), "{json}");
    // Rules without scalars write an empty list (postcard has no optional fields), and JSON
    // that leaves the field out reads as having none.
    let mut plain = Optimizer::<Adam, f64>::new(Adam::default()).unwrap();
    plain.step("w", &mut w.clone(), &Array1::from_elem(3, 0.5)).unwrap();
    let json = serde_json::to_string(&plain).unwrap();
    assert!(json.contains("\"scalars\":[]"), "{json}");
    let without: Optimizer<Adam, f64> =
        serde_json::from_str(&json.replace(",\"scalars\":[]", "")).unwrap();
    assert_eq!(without, plain);

    let mut missing = c.clone();
    missing.tensors[0].state.as_mut().unwrap().scalars.clear();
    let err = Optimizer::from_checkpoint(missing).unwrap_err();
    assert!(matches!(err, Error::InvalidTensorState { .. }), "{err}");
    assert!(err.to_string().contains("mu_product"), "{err}");
    let mut renamed = c.clone();
    renamed.tensors[0].state.as_mut().unwrap().scalars[0] =
        ScalarRecord { name: "mu".into(), value: 0.5 };
    assert!(Optimizer::from_checkpoint(renamed).is_err());
    assert!(Optimizer::from_checkpoint(c).is_ok());
}

/// ASGD's rate η and averaging weight μ are checkpointed by name, and a checkpoint holding
/// values no run produces is refused.
#[test]
fn asgd_scalars_are_checkpointed_and_checked() {
    let rule = Asgd { lr: 0.1, lambd: 0.5, alpha: 1.0, t0: 1.0, ..Asgd::default() };
    let mut opt = Optimizer::<Asgd, f64>::new(rule).unwrap();
    let mut w = Array1::from_elem(3, 1.0);
    for _ in 0..3 {
        opt.step("w", &mut w, &Array1::from_elem(3, 0.5)).unwrap();
    }
    let c = opt.checkpoint();
    let scalars = &c.tensors[0].state.as_ref().unwrap().scalars;
    let names: Vec<&str> = scalars.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["eta", "mu"]);
    // η₃ = η / (1 + λ_d η 3)^α and μ₃ = 1 / max(1, 3 − t0), written out here.
    assert_eq!(scalars[0].value, 0.1 / (1.0 + 0.5 * 0.1 * 3.0));
    assert_eq!(scalars[1].value, 0.5);
    for (index, bad) in [(0, -0.1), (0, f64::INFINITY), (1, -0.1), (1, 1.5), (1, f64::NAN)] {
        let mut broken = c.clone();
        broken.tensors[0].state.as_mut().unwrap().scalars[index].value = bad;
        let err = Optimizer::from_checkpoint(broken).unwrap_err();
        assert!(matches!(err, Error::InvalidTensorState { .. }), "{err}");
    }
    assert!(Optimizer::from_checkpoint(c).is_ok());
}

/// PyTorch's SGD keeps no momentum buffer at momentum 0, and its dampening then changes
/// nothing: `Momentum` at γ = 0 is `Sgd` to the bit, with any dampening, and keeps no state.
#[test]
fn momentum_zero_is_plain_sgd_whatever_the_dampening() {
    for dampening in [0.0, 0.5, 1.0] {
        for (weight_decay, maximize) in [(0.0, false), (0.05, true)] {
            let momentum = Momentum { lr: 0.1, momentum: 0.0, dampening, weight_decay, maximize };
            let mut with_momentum = Optimizer::<_, f64>::new(momentum).unwrap();
            let mut sgd =
                Optimizer::<_, f64>::new(Sgd { lr: 0.1, weight_decay, maximize }).unwrap();
            let (mut a, mut b) = (array![1.0, -2.0, 0.5], array![1.0, -2.0, 0.5]);
            for step in 1..=5 {
                let g = array![0.3, -0.7, 1.1] * f64::from(step);
                with_momentum.step("w", &mut a, &g).unwrap();
                sgd.step("w", &mut b, &g).unwrap();
            }
            assert_eq!(a, b, "dampening {dampening}");
            assert_eq!(with_momentum.state_bytes(), 0, "no buffer at momentum 0");
        }
    }
}
