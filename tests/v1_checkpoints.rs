//! Checkpoints written by format version 1 keep loading, with the same values.
//!
//! `tests/reference/checkpoints/v1/` holds files written by version 1 of the checkpoint format
//! (this crate at 0.1.0): the state after three steps of each scenario below, for Adam, NAdam,
//! Momentum and Adagrad, in f32 and f64, each three ways: `Optimizer::save` in JSON
//! (`*.json.ckpt`) and in postcard (`*.postcard.ckpt`), and bare `serde_json` of the
//! optimizer (`*.serde.json`, as the replay harness's `checkpoint_every` writes it). The files
//! are the contract: every later version of the crate must keep loading them, and they are
//! never rewritten (a new format version gets a folder of its own).
//!
//! Nothing here writes a checkpoint. Each test loads the files of one scenario; compares every
//! loaded optimizer with the hyperparameters, clip and policy written out below, with a fresh
//! optimizer taken through the same three steps (same bits), and with buffer values computed
//! by hand from the rule's formulas; then steps the loaded optimizer and the fresh one once
//! more and requires the same bits in parameters and state.

use std::path::PathBuf;

use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use ndarray_optim::{
    Adagrad, Adam, Clip, Element, EpsPlacement, Momentum, NAdam, NonFinite, Optimizer, ParamGrad,
    UpdateRule,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::assert_folder_holds;

/// The folder of the version 1 files.
fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/checkpoints/v1")
}

/// One stepped tensor of the model: its values before the first step and the gradients of
/// steps 1 to 4, all in row-major order. Every value is exact in f32.
struct Tensor {
    name: &'static str,
    group: &'static str,
    shape: &'static [usize],
    /// Whether the parameter is stored column-major (F layout).
    f_layout: bool,
    init: &'static [f64],
    grads: [&'static [f64]; 4],
}

/// The model, in the order every step goes through it. The checkpoints were written after
/// step 3; step 4 is the step after loading.
const TENSORS: [Tensor; 4] = [
    Tensor {
        name: "body.w",
        group: "default",
        shape: &[2, 3],
        f_layout: false,
        init: &[0.5, -0.25, 1.0, -1.0, 0.75, 0.125],
        grads: [
            &[0.5, -1.0, 0.25, 2.0, -0.75, 1.5],
            &[-0.25, 0.5, 1.0, -1.5, 0.125, 0.75],
            &[1.0, 0.25, -0.5, 0.5, -2.0, -0.125],
            &[0.75, -0.5, 0.375, -1.0, 1.25, 0.5],
        ],
    },
    Tensor {
        name: "body.b",
        group: "default",
        shape: &[4],
        f_layout: false,
        init: &[0.0, 0.25, -0.5, 1.0],
        grads: [
            &[0.5, -0.5, 1.0, -1.0],
            &[0.25, 0.75, -0.25, 1.5],
            &[-1.0, 0.125, 0.5, -0.375],
            &[0.625, -0.25, -0.75, 1.0],
        ],
    },
    Tensor {
        name: "head.w",
        group: "head",
        shape: &[2, 3],
        f_layout: true,
        init: &[-0.5, 1.0, 0.25, 0.75, -1.25, 0.5],
        grads: [
            &[1.5, -2.5, 0.75, 3.0, -0.5, 2.25],
            &[-0.5, 1.25, -1.75, 0.25, 2.0, -1.0],
            &[0.875, 0.5, -0.25, -1.5, 1.0, 0.75],
            &[-1.25, 0.375, 1.5, -0.625, 0.25, -2.0],
        ],
    },
    Tensor {
        name: "head.scale",
        group: "head",
        shape: &[],
        f_layout: false,
        init: &[1.0],
        grads: [&[0.5], &[-0.25], &[1.25], &[-0.75]],
    },
];

/// Assigned to the group `head` before the first step, never stepped: a tensor without state.
const UNSTEPPED: &str = "head.unused";

/// Every name a checkpoint holds, sorted.
const ALL_NAMES: [&str; 5] = ["body.b", "body.w", "head.scale", "head.unused", "head.w"];

/// The steps taken before the files were written.
const SAVED_AFTER: u64 = 3;

fn tensor(name: &str) -> &'static Tensor {
    TENSORS.iter().find(|tensor| tensor.name == name).expect("a tensor of the model")
}

fn array<A: Element>(shape: &[usize], values: &[f64]) -> ArrayD<A> {
    let values = values.iter().map(|&value| A::from_f64(value)).collect();
    ArrayD::from_shape_vec(IxDyn(shape), values).unwrap()
}

/// The model's parameters before the first step, in the order of [`TENSORS`].
fn initial_params<A: Element>() -> Vec<ArrayD<A>> {
    TENSORS
        .iter()
        .map(|tensor| {
            let values = array::<A>(tensor.shape, tensor.init);
            if !tensor.f_layout {
                return values;
            }
            let mut param = ArrayD::zeros(IxDyn(tensor.shape).f());
            param.assign(&values);
            assert!(!param.is_standard_layout());
            param
        })
        .collect()
}

/// What one file was written from: the groups' hyperparameters, the optimizer's settings and
/// how it steps.
struct Scenario<R> {
    /// The rule's part of the file names.
    stem: &'static str,
    defaults: R,
    head: R,
    clip: Option<Clip>,
    non_finite: NonFinite,
    /// One `step_all` of the whole model per step, instead of one `step` per tensor.
    batched: bool,
    /// After the first step, every group's current learning rate is set to half its base rate
    /// (as a schedule would), so the checkpoint holds scheduled rates.
    halve_lrs: bool,
    /// The current learning rates of `default` and `head` after that.
    current_lrs: [f64; 2],
}

fn adam() -> Scenario<Adam> {
    Scenario {
        stem: "adam",
        defaults: Adam {
            lr: 0.01,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.01,
            amsgrad: true,
            maximize: false,
        },
        head: Adam {
            lr: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
        },
        clip: Some(Clip::Norm { max_norm: 2.0 }),
        non_finite: NonFinite::Refuse,
        batched: false,
        halve_lrs: false,
        current_lrs: [0.01, 0.05],
    }
}

fn nadam() -> Scenario<NAdam> {
    Scenario {
        stem: "nadam",
        defaults: NAdam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 0.004,
            decoupled_weight_decay: false,
            maximize: false,
        },
        head: NAdam {
            lr: 0.02,
            beta1: 0.85,
            beta2: 0.995,
            eps: 1e-7,
            weight_decay: 0.1,
            momentum_decay: 0.01,
            decoupled_weight_decay: true,
            maximize: false,
        },
        clip: Some(Clip::GlobalNorm { max_norm: 1.5 }),
        non_finite: NonFinite::Skip,
        batched: true,
        halve_lrs: false,
        current_lrs: [0.01, 0.02],
    }
}

fn momentum() -> Scenario<Momentum> {
    Scenario {
        stem: "momentum",
        defaults: Momentum {
            lr: 0.05,
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 0.0,
            maximize: false,
        },
        head: Momentum {
            lr: 0.1,
            momentum: 0.5,
            dampening: 0.0,
            weight_decay: 0.0,
            maximize: true,
        },
        clip: Some(Clip::Value { clip_value: 1.0 }),
        non_finite: NonFinite::Ignore,
        batched: false,
        halve_lrs: true,
        current_lrs: [0.025, 0.05],
    }
}

fn adagrad() -> Scenario<Adagrad> {
    Scenario {
        stem: "adagrad",
        defaults: Adagrad {
            lr: 0.1,
            eps: 1e-8,
            eps_placement: EpsPlacement::Inside,
            weight_decay: 0.0,
            lr_decay: 0.01,
            initial_accumulator_value: 0.1,
            maximize: false,
        },
        head: Adagrad {
            lr: 0.05,
            eps: 1e-10,
            eps_placement: EpsPlacement::Outside,
            weight_decay: 0.0,
            lr_decay: 0.0,
            initial_accumulator_value: 0.0,
            maximize: false,
        },
        clip: None,
        non_finite: NonFinite::Refuse,
        batched: true,
        halve_lrs: false,
        current_lrs: [0.1, 0.05],
    }
}

impl<R: UpdateRule> Scenario<R> {
    /// A fresh optimizer set up as the scenario's was before its first step.
    fn fresh<A: Element>(&self) -> Optimizer<R, A> {
        let mut opt = Optimizer::new(self.defaults.clone()).unwrap();
        opt.add_group("head", self.head.clone()).unwrap();
        for tensor in TENSORS.iter().filter(|tensor| tensor.group == "head") {
            opt.assign(tensor.name, "head").unwrap();
        }
        opt.assign(UNSTEPPED, "head").unwrap();
        opt.set_clip(self.clip).unwrap();
        opt.set_non_finite(self.non_finite);
        opt
    }

    /// Step `number` (1 to 4) of the whole model.
    fn step<A: Element>(&self, opt: &mut Optimizer<R, A>, params: &mut [ArrayD<A>], number: u64) {
        let grads: Vec<ArrayD<A>> = TENSORS
            .iter()
            .map(|tensor| array(tensor.shape, tensor.grads[number as usize - 1]))
            .collect();
        if self.batched {
            let mut batch: Vec<ParamGrad<'_, A>> = TENSORS
                .iter()
                .zip(params.iter_mut())
                .zip(&grads)
                .map(|((tensor, param), grad)| ParamGrad::new(tensor.name, param, grad))
                .collect();
            opt.step_all(&mut batch).unwrap();
        } else {
            for ((tensor, param), grad) in TENSORS.iter().zip(params.iter_mut()).zip(&grads) {
                opt.step(tensor.name, param, grad).unwrap();
            }
        }
        if self.halve_lrs && number == 1 {
            opt.set_lrs_with(|base, _| base * 0.5).unwrap();
        }
    }

    /// A fresh optimizer and model after the steps before the save.
    fn rerun<A: Element>(&self) -> (Optimizer<R, A>, Vec<ArrayD<A>>) {
        let (mut opt, mut params) = (self.fresh(), initial_params());
        for number in 1..=SAVED_AFTER {
            self.step(&mut opt, &mut params, number);
        }
        (opt, params)
    }

    /// The scenario's files for element type `dtype`, loaded: label and optimizer.
    fn load<A>(&self, dtype: &str) -> Vec<(String, Optimizer<R, A>)>
    where
        R: Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        let mut loaded = Vec::new();
        for encoding in ["json", "postcard"] {
            let name = format!("{}-{dtype}.{encoding}.ckpt", self.stem);
            let opt = Optimizer::load(folder().join(&name))
                .unwrap_or_else(|err| panic!("{name} does not load: {err}"));
            loaded.push((name, opt));
        }
        let name = format!("{}-{dtype}.serde.json", self.stem);
        let bytes = std::fs::read(folder().join(&name)).unwrap();
        let opt = serde_json::from_slice(&bytes)
            .unwrap_or_else(|err| panic!("{name} does not deserialize: {err}"));
        loaded.push((name, opt));
        loaded
    }

    /// The settings written out in the scenario, which no run computes: groups, their
    /// hyperparameters and current rates, the clip, the policy, every tensor's group and step
    /// count.
    fn assert_settings<A: Element>(&self, label: &str, opt: &Optimizer<R, A>) {
        let groups: Vec<&str> = opt.groups().iter().map(|group| group.name()).collect();
        assert_eq!(groups, ["default", "head"], "{label}: groups");
        let groups = [("default", &self.defaults), ("head", &self.head)];
        for ((name, hyper), current) in groups.into_iter().zip(self.current_lrs) {
            let group = opt.group(name).unwrap();
            assert_eq!(group.hyper(), hyper, "{label}: hyperparameters of `{name}`");
            assert_eq!(group.lr(), current, "{label}: current rate of `{name}`");
        }
        assert_eq!(opt.clip(), self.clip, "{label}: clip");
        assert_eq!(opt.non_finite(), self.non_finite, "{label}: non-finite policy");
        let names: Vec<&str> = opt.state().map(|tensor| tensor.name()).collect();
        assert_eq!(names, ALL_NAMES, "{label}: tensors");
        for tensor in &TENSORS {
            let view = opt.state_of(tensor.name).unwrap();
            assert_eq!(view.group(), tensor.group, "{label}: group of `{}`", tensor.name);
            assert_eq!(view.step(), Some(SAVED_AFTER), "{label}: step of `{}`", tensor.name);
            assert_eq!(view.shape(), Some(tensor.shape), "{label}: shape of `{}`", tensor.name);
            assert_eq!(opt.step_count(tensor.name), Some(SAVED_AFTER));
        }
        let unstepped = opt.state_of(UNSTEPPED).unwrap();
        assert_eq!(unstepped.group(), "head", "{label}: group of `{UNSTEPPED}`");
        assert_eq!((unstepped.step(), unstepped.shape()), (None, None), "{label}");
        assert_eq!(unstepped.buffers().len() + unstepped.scalars().len(), 0, "{label}");
        assert_eq!(opt.step_count(UNSTEPPED), None, "{label}");
    }

    /// The whole check of one element type. `by_hand` is given each loaded optimizer as
    /// loaded and the parameters after the step after loading, to compare with values
    /// computed from the rule's formulas.
    fn check<A>(&self, dtype: &str, by_hand: impl Fn(&str, &Optimizer<R, A>, &[ArrayD<A>]))
    where
        R: Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        let (expected, params) = self.rerun::<A>();
        self.assert_settings("the fresh run", &expected);
        for (label, mut opt) in self.load::<A>(dtype) {
            self.assert_settings(&label, &opt);
            assert_same_state(&label, &opt, &expected);
            // The model's weights are saved beside the optimizer: the fresh run's.
            let (mut resumed, mut reference) = (params.clone(), params.clone());
            for (tensor, param) in TENSORS.iter().zip(&resumed) {
                let layout = (param.is_standard_layout(), param.t().is_standard_layout());
                let f_only = (false, true);
                assert!(tensor.f_layout == (layout == f_only), "{label}");
            }
            let mut reference_opt = expected.clone();
            let saved = opt.clone();
            self.step(&mut opt, &mut resumed, SAVED_AFTER + 1);
            self.step(&mut reference_opt, &mut reference, SAVED_AFTER + 1);
            for (tensor, (got, want)) in TENSORS.iter().zip(resumed.iter().zip(&reference)) {
                assert_eq!(bits(got.iter()), bits(want.iter()), "{label}: `{}`", tensor.name);
            }
            assert_same_state(&format!("{label}, one step later"), &opt, &reference_opt);
            for tensor in &TENSORS {
                assert_eq!(opt.step_count(tensor.name), Some(SAVED_AFTER + 1), "{label}");
            }
            by_hand(&label, &saved, &resumed);
        }
    }
}

/// The bits of every value in row-major order.
fn bits<'a, A: Element>(values: impl IntoIterator<Item = &'a A>) -> Vec<u64> {
    values.into_iter().map(|value| value.into_f64().to_bits()).collect()
}

/// Same names, groups, step counts, shapes, buffers and scalars, to the bit.
fn assert_same_state<R: UpdateRule, A: Element>(
    label: &str,
    got: &Optimizer<R, A>,
    want: &Optimizer<R, A>,
) {
    for name in ALL_NAMES {
        let (got, want) = (got.state_of(name).unwrap(), want.state_of(name).unwrap());
        assert_eq!(got.group(), want.group(), "{label}: group of `{name}`");
        assert_eq!(got.step(), want.step(), "{label}: step of `{name}`");
        assert_eq!(got.shape(), want.shape(), "{label}: shape of `{name}`");
        let buffers = |view: ndarray_optim::TensorView<'_, A>| {
            view.buffers().map(|(buffer, values)| (buffer, bits(values.iter()))).collect::<Vec<_>>()
        };
        assert_eq!(buffers(got), buffers(want), "{label}: buffers of `{name}`");
        let scalars = |view: ndarray_optim::TensorView<'_, A>| {
            view.scalars().map(|(scalar, value)| (scalar, value.to_bits())).collect::<Vec<_>>()
        };
        assert_eq!(scalars(got), scalars(want), "{label}: scalars of `{name}`");
    }
}

/// The values of buffer `buffer` of `name`, in row-major order.
fn buffer<R: UpdateRule, A: Element>(opt: &Optimizer<R, A>, name: &str, buffer: &str) -> Vec<f64> {
    let view = opt.state_of(name).unwrap();
    let values = view.buffer(buffer).unwrap_or_else(|| panic!("`{name}` has no `{buffer}`"));
    values.iter().map(|value| value.into_f64()).collect()
}

fn scalar<R: UpdateRule, A: Element>(opt: &Optimizer<R, A>, name: &str, scalar: &str) -> f64 {
    let view = opt.state_of(name).unwrap();
    view.scalars().find(|&(found, _)| found == scalar).map(|(_, value)| value).unwrap()
}

/// `got` is `want` within the rounding of element type `A` over a few steps.
fn assert_close<A: Element>(label: &str, what: &str, got: &[f64], want: &[f64]) {
    let (absolute, relative) = if size_of::<A>() == 4 { (1e-6, 1e-5) } else { (1e-14, 1e-12) };
    assert_eq!(got.len(), want.len(), "{label}: {what}");
    for (index, (&got, &want)) in got.iter().zip(want).enumerate() {
        assert!(
            (got - want).abs() <= absolute + relative * want.abs(),
            "{label}: {what}[{index}] is {got}, by hand {want}"
        );
    }
}

/// PyTorch's `clip_grad_norm_` coefficient for gradients of L2 norm `norm`.
fn clip_coefficient(max_norm: f64, norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

fn l2_norm(values: &[f64]) -> f64 {
    values.iter().map(|g| g * g).sum::<f64>().sqrt()
}

/// The hyperparameters of the group `tensor` belongs to in `scenario`.
fn hyper_of<'s, R>(scenario: &'s Scenario<R>, tensor: &Tensor) -> &'s R {
    if tensor.group == "head" { &scenario.head } else { &scenario.defaults }
}

fn values<A: Element>(param: &ArrayD<A>) -> Vec<f64> {
    param.iter().map(|value| value.into_f64()).collect()
}

/// Adam by hand, element by element: each step's gradient clipped to norm `max_norm` (the
/// tensor's own), plus λθ, then m = β₁m + (1 − β₁)g, v = β₂v + (1 − β₂)g²,
/// v̂ = max(v̂, v) (AMSGrad), θ ← θ − η/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε) (v̂ for v with
/// AMSGrad). Returns θ, m, v and v̂ after `steps` steps.
fn adam_by_hand(hyper: &Adam, max_norm: f64, tensor: &Tensor, steps: usize) -> [Vec<f64>; 4] {
    let n = tensor.init.len();
    let mut p = tensor.init.to_vec();
    let (mut m, mut v, mut max_v) = (vec![0.0_f64; n], vec![0.0_f64; n], vec![0.0_f64; n]);
    for (index, grad) in tensor.grads[..steps].iter().enumerate() {
        let t = (index + 1) as f64;
        let coefficient = clip_coefficient(max_norm, l2_norm(grad));
        for i in 0..n {
            let g = grad[i] * coefficient + hyper.weight_decay * p[i];
            m[i] = hyper.beta1 * m[i] + (1.0 - hyper.beta1) * g;
            v[i] = hyper.beta2 * v[i] + (1.0 - hyper.beta2) * g * g;
            max_v[i] = max_v[i].max(v[i]);
            let second = if hyper.amsgrad { max_v[i] } else { v[i] };
            let denom = second.sqrt() / (1.0 - hyper.beta2.powf(t)).sqrt() + hyper.eps;
            p[i] -= hyper.lr / (1.0 - hyper.beta1.powf(t)) * m[i] / denom;
        }
    }
    [p, m, v, max_v]
}

fn check_adam<A: Element + Serialize + DeserializeOwned>(dtype: &str) {
    let scenario = adam();
    scenario.check::<A>(dtype, |label, opt, resumed| {
        // Written out for the 0-D `head.scale`: β₁ = 0.9, β₂ = 0.999, no decay, gradients
        // 0.5, −0.25 and 1.25, within the clip.
        let m1 = 0.1 * 0.5;
        let m2 = 0.9 * m1 + 0.1 * -0.25;
        let m3 = 0.9 * m2 + 0.1 * 1.25;
        let v1 = 0.001 * (0.5 * 0.5);
        let v2 = 0.999 * v1 + 0.001 * (-0.25 * -0.25);
        let v3 = 0.999 * v2 + 0.001 * (1.25 * 1.25);
        let exp_avg = buffer(opt, "head.scale", "exp_avg");
        assert_close::<A>(label, "head.scale exp_avg", &exp_avg, &[m3]);
        let exp_avg_sq = buffer(opt, "head.scale", "exp_avg_sq");
        assert_close::<A>(label, "head.scale exp_avg_sq", &exp_avg_sq, &[v3]);
        // Every tensor: the state as loaded (after three steps), the parameters after the
        // fourth step. `head` keeps two buffers, the AMSGrad default group three.
        for (tensor, param) in TENSORS.iter().zip(resumed) {
            let (name, hyper) = (tensor.name, hyper_of(&scenario, tensor));
            let view = opt.state_of(name).unwrap();
            let buffers: Vec<&str> = view.buffers().map(|(buffer, _)| buffer).collect();
            let kept: &[&str] = if hyper.amsgrad {
                &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
            } else {
                &["exp_avg", "exp_avg_sq"]
            };
            assert_eq!(buffers, kept, "{label}: buffers of `{name}`");
            let [_, m, v, max_v] = adam_by_hand(hyper, 2.0, tensor, 3);
            assert_close::<A>(label, &format!("{name} exp_avg"), &buffer(opt, name, "exp_avg"), &m);
            let exp_avg_sq = buffer(opt, name, "exp_avg_sq");
            assert_close::<A>(label, &format!("{name} exp_avg_sq"), &exp_avg_sq, &v);
            if hyper.amsgrad {
                let max_exp_avg_sq = buffer(opt, name, "max_exp_avg_sq");
                assert_close::<A>(
                    label,
                    &format!("{name} max_exp_avg_sq"),
                    &max_exp_avg_sq,
                    &max_v,
                );
            }
            let [p, ..] = adam_by_hand(hyper, 2.0, tensor, 4);
            assert_close::<A>(label, &format!("{name} after step 4"), &values(param), &p);
        }
    });
}

fn check_nadam<A: Element + Serialize + DeserializeOwned>(dtype: &str) {
    let scenario = nadam();
    scenario.check::<A>(dtype, |label, opt, _| {
        // μₜ = β₁(1 − ½·0.96^(tψ)), and `mu_product` = μ₁μ₂μ₃ (kept in f64 for both types).
        for tensor in &TENSORS {
            let (name, hyper) = (tensor.name, hyper_of(&scenario, tensor));
            let mu = |t: f64| hyper.beta1 * (1.0 - 0.5 * 0.96_f64.powf(t * hyper.momentum_decay));
            let product = mu(1.0) * mu(2.0) * mu(3.0);
            let mu_product = scalar(opt, name, "mu_product");
            assert_close::<f64>(label, &format!("{name} mu_product"), &[mu_product], &[product]);
        }
        // The moments of `head.scale` (β₁ = 0.85, β₂ = 0.995, decay decoupled, so outside the
        // moments), each step's gradient clipped by the norm of the whole model's gradients.
        let (mut m, mut v) = (0.0, 0.0);
        for step in 0..3 {
            let squares: f64 =
                TENSORS.iter().map(|tensor| l2_norm(tensor.grads[step]).powi(2)).sum();
            let g = tensor("head.scale").grads[step][0] * clip_coefficient(1.5, squares.sqrt());
            m = 0.85 * m + 0.15 * g;
            v = 0.995 * v + 0.005 * g * g;
        }
        let exp_avg = buffer(opt, "head.scale", "exp_avg");
        assert_close::<A>(label, "head.scale exp_avg", &exp_avg, &[m]);
        let exp_avg_sq = buffer(opt, "head.scale", "exp_avg_sq");
        assert_close::<A>(label, "head.scale exp_avg_sq", &exp_avg_sq, &[v]);
    });
}

/// Momentum by hand: g clamped to [−1, 1] and negated with `maximize`; b = g on the first
/// step, then b = γb + (1 − τ)g; θ ← θ − ηb, at the base rate η on the first step and half
/// of it (the scheduled rate) after. Returns θ and b after `steps` steps.
fn momentum_by_hand(hyper: &Momentum, tensor: &Tensor, steps: usize) -> [Vec<f64>; 2] {
    let mut p = tensor.init.to_vec();
    let mut b = vec![0.0; p.len()];
    let sign = if hyper.maximize { -1.0 } else { 1.0 };
    for (index, grad) in tensor.grads[..steps].iter().enumerate() {
        let lr = if index == 0 { hyper.lr } else { hyper.lr * 0.5 };
        for i in 0..p.len() {
            let g = sign * grad[i].clamp(-1.0, 1.0);
            b[i] = if index == 0 { g } else { hyper.momentum * b[i] + (1.0 - hyper.dampening) * g };
            p[i] -= lr * b[i];
        }
    }
    [p, b]
}

fn check_momentum<A: Element + Serialize + DeserializeOwned>(dtype: &str) {
    let scenario = momentum();
    scenario.check::<A>(dtype, |label, opt, resumed| {
        // `head.scale`: γ = 0.5, maximize, gradients 0.5, −0.25 and 1.25 clamped to 1:
        // b = −0.5, then 0.5 · (−0.5) + 0.25 = 0, then 0.5 · 0 − 1 = −1.
        assert_eq!(buffer(opt, "head.scale", "momentum_buffer"), [-1.0], "{label}");
        for (tensor, param) in TENSORS.iter().zip(resumed) {
            let (name, hyper) = (tensor.name, hyper_of(&scenario, tensor));
            let [_, b] = momentum_by_hand(hyper, tensor, 3);
            let momentum_buffer = buffer(opt, name, "momentum_buffer");
            assert_close::<A>(label, &format!("{name} momentum_buffer"), &momentum_buffer, &b);
            let [p, _] = momentum_by_hand(hyper, tensor, 4);
            assert_close::<A>(label, &format!("{name} after step 4"), &values(param), &p);
        }
    });
}

/// Adagrad by hand: G = G₀ + Σg², θ ← θ − η/(1 + (t − 1)κ) · g / √(G + ε) (ε inside) or
/// g / (√G + ε) (outside). Returns θ and G after `steps` steps.
fn adagrad_by_hand(hyper: &Adagrad, tensor: &Tensor, steps: usize) -> [Vec<f64>; 2] {
    let mut p = tensor.init.to_vec();
    let mut sum = vec![hyper.initial_accumulator_value; p.len()];
    for (index, grad) in tensor.grads[..steps].iter().enumerate() {
        let lr = hyper.lr / (1.0 + index as f64 * hyper.lr_decay);
        for i in 0..p.len() {
            let g = grad[i];
            sum[i] += g * g;
            let denom = match hyper.eps_placement {
                EpsPlacement::Inside => (sum[i] + hyper.eps).sqrt(),
                EpsPlacement::Outside => sum[i].sqrt() + hyper.eps,
            };
            p[i] -= lr * g / denom;
        }
    }
    [p, sum]
}

fn check_adagrad<A: Element + Serialize + DeserializeOwned>(dtype: &str) {
    let scenario = adagrad();
    scenario.check::<A>(dtype, |label, opt, resumed| {
        // `head.scale`: 0.5² + 0.25² + 1.25² = 1.875, from G₀ = 0.
        assert_eq!(buffer(opt, "head.scale", "sum"), [1.875], "{label}");
        for (tensor, param) in TENSORS.iter().zip(resumed) {
            let (name, hyper) = (tensor.name, hyper_of(&scenario, tensor));
            let [_, sum] = adagrad_by_hand(hyper, tensor, 3);
            assert_close::<A>(label, &format!("{name} sum"), &buffer(opt, name, "sum"), &sum);
            let [p, _] = adagrad_by_hand(hyper, tensor, 4);
            assert_close::<A>(label, &format!("{name} after step 4"), &values(param), &p);
        }
    });
}

#[test]
fn adam_v1_files_load_and_resume() {
    check_adam::<f32>("f32");
    check_adam::<f64>("f64");
}

#[test]
fn nadam_v1_files_load_and_resume() {
    check_nadam::<f32>("f32");
    check_nadam::<f64>("f64");
}

#[test]
fn momentum_v1_files_load_and_resume() {
    check_momentum::<f32>("f32");
    check_momentum::<f64>("f64");
}

#[test]
fn adagrad_v1_files_load_and_resume() {
    check_adagrad::<f32>("f32");
    check_adagrad::<f64>("f64");
}

/// The folder holds the files the tests above load and nothing else, and each is of format
/// version 1, by its own bytes: the header line of a file, the fields of bare JSON.
#[test]
fn the_v1_folder_holds_version_1_files() {
    let mut expected = Vec::new();
    for stem in ["adagrad", "adam", "momentum", "nadam"] {
        for dtype in ["f32", "f64"] {
            for (kind, encoding) in [("json.ckpt", "json"), ("postcard.ckpt", "postcard")] {
                let name = format!("{stem}-{dtype}.{kind}");
                let bytes = std::fs::read(folder().join(&name)).unwrap();
                let line = bytes.split(|&byte| byte == b'\n').next().unwrap();
                let header = std::str::from_utf8(line).unwrap();
                let fields: Vec<&str> = header.split(' ').collect();
                assert_eq!(fields.len(), 7, "{name}: {header}");
                assert_eq!(fields[..5], ["ndarray-optim", "1", encoding, stem, dtype], "{name}");
                expected.push(name);
            }
            let name = format!("{stem}-{dtype}.serde.json");
            let bytes = std::fs::read(folder().join(&name)).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["format"], "ndarray-optim", "{name}");
            assert_eq!(json["version"], 1, "{name}");
            assert_eq!((json["rule"].as_str(), json["dtype"].as_str()), (Some(stem), Some(dtype)));
            expected.push(name);
        }
    }
    assert_folder_holds(&folder(), expected);
}
