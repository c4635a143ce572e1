//! Schedule-Free learning (Defazio et al. 2024), as the `schedulefree` package (1.4) computes
//! it: [`ScheduleFreeAdamW`] and [`ScheduleFreeSgd`], which share the averaging weights of
//! this module and the train/eval switch below.
//!
//! Both rules keep three sequences: the base iterate `$z$` (state `z`), the average `$x$` at
//! which the model is evaluated, and the interpolation `$y = (1 - \beta)\,z + \beta\,x$` at
//! which gradients are taken, with `$\beta$` the rule's β₁ or momentum. While training, the
//! parameter tensor holds `$y$`; [`Optimizer::eval`](crate::Optimizer::eval) turns it into
//! `$x$` in place and [`Optimizer::train`](crate::Optimizer::train) back into `$y$`.
//!
//! # The train/eval switch
//!
//! As `schedulefree`'s `optimizer.eval()` and `optimizer.train()`.
//!
//! While training, each tensor holds `$y$`, where gradients are taken; the model is to be
//! evaluated at the average `$x$`. [`eval`](crate::Optimizer::eval) sets every stepped tensor of the model
//! to `$x = \operatorname{lerp}(y, z, 1 - 1/\beta)$` and [`train`](crate::Optimizer::train) back to `$y =
//! \operatorname{lerp}(x, z, 1 - \beta)$`, in place (torch's `lerp`; the round trip is exact
//! up to rounding, not bit for bit). Each tensor's mode is part of its state:
//!
//! - a step of a tensor in eval mode fails with [`Error::WrongMode`](crate::Error::WrongMode) naming it, so a
//!   forgotten `train` cannot train from `$x$`;
//! - [`check_mode`](crate::Optimizer::check_mode) fails the same way for a tensor not in the mode asked,
//!   before evaluating (or saving the model's weights);
//! - switching a tensor to the mode it is in changes nothing, as in `schedulefree`, so
//!   `eval` and `train` may be called whenever the loop evaluates or trains;
//! - checkpoints record the mode and restore it: an optimizer saved in eval mode (as
//!   `schedulefree` recommends, so that the saved weights are `$x$`) comes back in eval mode,
//!   and needs `train` on the restored weights before it steps again.
//!
//! A tensor that has not been stepped has no state and holds `$x = y = z$`: switching leaves
//! it alone, and its first step starts it in train mode. Tensors of groups of other rules (in
//! an `Optimizer<Rule, A>`) are left alone too. Changing β between `eval` and `train`
//! (with [`set_hyper`](crate::Optimizer::set_hyper)) would return to another `$y$`: switch back first.
//!
//! ```
//! use std::collections::BTreeMap;
//!
//! use ndarray::{ArrayD, IxDyn};
//! use ndarray_optim::schedule_free::Mode;
//! use ndarray_optim::{Error, Optimizer, ScheduleFreeAdamW};
//!
//! let tensor = |value| ArrayD::<f32>::from_elem(IxDyn(&[3]), value);
//! let mut model = BTreeMap::from([("w", tensor(1.0))]);
//! let grads = BTreeMap::from([("w", tensor(0.5))]);
//! let mut opt = Optimizer::new(ScheduleFreeAdamW::default())?;
//! for _ in 0..5 {
//!     opt.step_model(&mut model, &grads)?;
//! }
//! opt.eval(&mut model)?; // the model holds x: evaluate it
//! opt.check_mode(&model, Mode::Eval)?;
//! let err = opt.step_model(&mut model, &grads).unwrap_err();
//! assert!(matches!(err, Error::WrongMode { ref param, mode: Mode::Eval, .. } if param == "w"));
//! opt.train(&mut model)?; // back to y
//! opt.step_model(&mut model, &grads)?;
//! # Ok::<(), ndarray_optim::Error>(())
//! ```

mod adamw;
mod sgd;
mod switch;

pub use adamw::ScheduleFreeAdamW;
pub use sgd::ScheduleFreeSgd;
pub(crate) use switch::wrong_mode;
pub use switch::{Mode, ScheduleFree};

use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{check_non_negative, require};
use crate::rules::Lerp;

/// The per-tensor scalars of both rules, in this order: the largest learning rate so far
/// (`lr_max`), the sum of the averaging weights (`weight_sum`) and the mode (`train_mode`, 1
/// while the parameter holds `$y$`, 0 while it holds `$x$`).
const SCALARS: &[&str] = &["lr_max", "weight_sum", "train_mode"];
/// The index of `train_mode` in [`SCALARS`].
const TRAIN_MODE: usize = 2;

/// The averaging settings both rules share: warmup and the weights of the average.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Weighting {
    warmup_steps: u64,
    r: f64,
    weight_lr_power: f64,
}

/// One step's coefficients from [`Weighting::advance`].
struct Averaging {
    /// The learning rate after warmup, `$\gamma_t$`.
    lr: f64,
    /// The weight `$c_{t+1}$` of `$z$` in the new average.
    ckp1: f64,
}

impl Weighting {
    /// Checks `r` (finite) and `weight_lr_power` (finite and ≥ 0, since the weight of a step
    /// at rate 0 is `$0^p$`).
    fn validate(self, rule: &'static str) -> Result<()> {
        require(self.r.is_finite(), rule, "r", self.r, "finite")?;
        check_non_negative(rule, "weight_lr_power", self.weight_lr_power)
    }

    /// Advances the tensor's averaging scalars to step `step` (from 1) at the group's rate
    /// `lr`, as `schedulefree`'s `step` does per group:
    ///
    /// ```math
    /// \gamma_t = \eta \min(1, t / T_w), \quad
    /// \gamma_{\max} \leftarrow \max(\gamma_{\max}, \gamma_t), \quad
    /// w_t = t^r\, \gamma_{\max}^{p}, \quad
    /// W \leftarrow W + w_t, \quad c_{t+1} = w_t / W
    /// ```
    ///
    /// (`$c_{t+1} = 0$` while `$W = 0$`), all in `f64` with Python's order of operations.
    fn advance(self, lr: f64, step: u64, scalars: &mut [f64]) -> Averaging {
        let [lr_max, weight_sum, _] = scalars else {
            unreachable!("the registry keeps one value per scalar name")
        };
        let sched =
            if step - 1 < self.warmup_steps { step as f64 / self.warmup_steps as f64 } else { 1.0 };
        let lr = lr * sched;
        *lr_max = lr.max(*lr_max);
        let weight = (step as f64).powf(self.r) * lr_max.powf(self.weight_lr_power);
        *weight_sum += weight;
        let ckp1 = if *weight_sum == 0.0 { 0.0 } else { weight / *weight_sum };
        Averaging { lr, ckp1 }
    }
}

/// Checks a checkpoint's value of one of [`SCALARS`].
fn check_scalar(name: &str, value: f64) -> Result<(), &'static str> {
    match name {
        "train_mode" if value != 0.0 && value != 1.0 => Err("0 (eval) or 1 (train)"),
        "lr_max" | "weight_sum" if !(value.is_finite() && value >= 0.0) => Err("finite and >= 0"),
        _ => Ok(()),
    }
}

/// The initial value of the state `name`: train mode; `lr_max` below every rate, as
/// `schedulefree`'s −1.
fn initial_value(name: &str) -> f64 {
    match name {
        "train_mode" => 1.0,
        "lr_max" => -1.0,
        _ => 0.0,
    }
}

/// Whether the tensor's scalars say it holds `$x$`.
fn in_eval_mode(scalars: &[f64]) -> bool {
    scalars.get(TRAIN_MODE) == Some(&0.0)
}

/// The update of `$y$` and `$z$` both rules end with, from the (preconditioned) gradient
/// `$d$` of the step:
///
/// ```math
/// y \leftarrow \operatorname{lerp}(y, z, c_{t+1}) + \gamma_t\bigl(\beta(1 - c_{t+1}) - 1\bigr)\, d,
/// \qquad z \leftarrow z - \gamma_t\, d,
/// ```
///
/// with `$z$` starting at the parameter on a tensor's first step.
#[derive(Clone, Copy)]
struct Interpolation<A> {
    towards_z: Lerp<A>,
    y_step: A,
    z_step: A,
    first: bool,
}

impl<A: Element> Interpolation<A> {
    fn new(Averaging { lr, ckp1 }: Averaging, beta: f64, step: u64) -> Self {
        Interpolation {
            towards_z: Lerp::new(ckp1),
            y_step: A::from_f64(lr * (beta * (1.0 - ckp1) - 1.0)),
            z_step: A::from_f64(lr),
            first: step == 1,
        }
    }

    /// `schedulefree` clones the parameter into `z` when it creates the state.
    #[inline(always)]
    fn start(self, y: A, z: &mut A) {
        if self.first {
            *z = y;
        }
    }

    #[inline(always)]
    fn update(self, y: &mut A, z: &mut A, d: A) {
        *y = self.towards_z.at(*y, *z);
        *y = *y + self.y_step * d;
        *z = *z - self.z_step * d;
    }
}

/// The coefficients of a step of `tensor` with averaging `weighting` and momentum `beta`,
/// after advancing the tensor's scalars.
fn interpolation<A: Element>(
    weighting: Weighting,
    beta: f64,
    tensor: &mut TensorStep<'_, A>,
) -> Interpolation<A> {
    let (lr, step) = (tensor.lr(), tensor.step());
    let averaging = weighting.advance(lr, step, tensor.scalars());
    Interpolation::new(averaging, beta, step)
}
