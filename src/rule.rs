//! The [`UpdateRule`] trait: what every optimizer rule provides to the shared kernel.

use core::fmt::Debug;

use crate::element::Element;
use crate::error::{Error, Result};
use crate::kernel::TensorStep;
use ndarray::Dimension;

/// An elementwise optimizer update rule, such as [`Adam`](crate::Adam).
///
/// A value of the implementing type is the rule's hyperparameters. Every rule here is
/// elementwise: for each element it reads the parameter `p`, the gradient `g` and one value
/// per state buffer, and writes `p` and the state. [`step`](Self::step) computes the scalars
/// that do not depend on the element (bias corrections, the learning rate in the element type)
/// once per tensor, then hands the per-element arithmetic to [`TensorStep::apply`], which owns
/// the loops. So a rule gets every memory layout, the named registry and checkpoints without
/// code of its own, and its number of state buffers may depend on its hyperparameters (as
/// PyTorch's `amsgrad` or `centered` options do).
///
/// Hyperparameters are `f64` whatever the element type, converted once per step.
///
/// # Example: a rule of your own
///
/// ```
/// use ndarray::{Dimension, array};
/// use ndarray_optim::{Element, Optimizer, Result, TensorStep, UpdateRule};
///
/// /// Sign descent: θ ← θ − η·sign(g).
/// #[derive(Clone, Debug, PartialEq)]
/// struct SignSgd { lr: f64 }
///
/// impl UpdateRule for SignSgd {
///     const NAME: &'static str = "sign_sgd";
///
///     fn state_names(&self) -> &'static [&'static str] { &[] }
///     fn validate(&self) -> Result<()> {
///         ndarray_optim::rule::check_lr(Self::NAME, self.lr)
///     }
///     fn lr(&self) -> f64 { self.lr }
///     fn lr_mut(&mut self) -> &mut f64 { &mut self.lr }
///     fn step<A: Element, D: Dimension>(&self, _step: u64, tensor: TensorStep<'_, A, D>) {
///         let lr = A::from_f64(self.lr);
///         tensor.apply(move |p, g, _: &mut [A; 0]| *p = *p - lr * g.signum());
///     }
/// }
///
/// let mut opt = Optimizer::new(SignSgd { lr: 0.5 })?;
/// let mut w = array![1.0_f64, -1.0];
/// opt.step("w", &mut w, &array![3.0, -0.1])?;
/// assert_eq!(w, array![0.5, -0.5]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
pub trait UpdateRule: Clone + Debug + PartialEq + Send + Sync + 'static {
    /// The rule's name in checkpoints, errors and replay cases, e.g. `"adam"`.
    const NAME: &'static str;

    /// The names of the per-element state buffers these hyperparameters need, in the order
    /// the update sees them, e.g. `["exp_avg", "exp_avg_sq"]` for Adam (PyTorch's names).
    fn state_names(&self) -> &'static [&'static str];

    /// The names of the per-tensor scalar states these hyperparameters need, e.g.
    /// `["mu_product"]` for [`NAdam`](crate::NAdam): values that change every step but are
    /// the same for all elements of a tensor. They are `f64` whatever the element type, kept
    /// and checkpointed by name next to the buffers, and reached in
    /// [`step`](Self::step) through [`TensorStep::scalars`]. None by default.
    fn scalar_names(&self) -> &'static [&'static str] {
        &[]
    }

    /// The value that the state named `name` (every element of a buffer of
    /// [`state_names`](Self::state_names), or a scalar of
    /// [`scalar_names`](Self::scalar_names)) holds before a tensor's first step. Zero by
    /// default; e.g. Adagrad's `initial_accumulator_value` for `sum`.
    fn initial_value(&self, name: &str) -> f64 {
        let _ = name;
        0.0
    }

    /// The state buffers (of [`state_names`](Self::state_names)) whose values no run makes
    /// negative, e.g. second moments and accumulated squares. A checkpoint holding a negative
    /// value in one is refused on loading. None by default.
    fn non_negative_state(&self) -> &'static [&'static str] {
        &[]
    }

    /// Checks a value of the per-tensor scalar `name` (of [`scalar_names`](Self::scalar_names))
    /// that a checkpoint holds; a value no run can produce is refused on loading.
    ///
    /// # Errors
    /// What the value must be, e.g. `"finite"`. The default requires it finite.
    fn check_scalar(&self, name: &str, value: f64) -> Result<(), &'static str> {
        let _ = name;
        if value.is_finite() { Ok(()) } else { Err("finite") }
    }

    /// Checks every hyperparameter's range; called whenever hyperparameters enter an
    /// optimizer, so that stepping never has to.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] naming the first hyperparameter out of range.
    fn validate(&self) -> Result<()>;

    /// The learning rate η.
    fn lr(&self) -> f64;

    /// The learning rate η, for schedules that change it between steps.
    fn lr_mut(&mut self) -> &mut f64;

    /// Applies step number `step` (1 for a tensor's first step) to one tensor: computes the
    /// step's scalars and calls [`TensorStep::apply`] with the per-element update, whose
    /// state has one value per name in [`state_names`](Self::state_names).
    fn step<A: Element, D: Dimension>(&self, step: u64, tensor: TensorStep<'_, A, D>);
}

/// Where a rule adds ε to the root of its second-moment estimate `s`.
///
/// The seed formulas put it inside the square root, $\eta / \sqrt{s + \epsilon}$; PyTorch's
/// `Adagrad` and `RMSprop` put it outside, $\eta / (\sqrt{s} + \epsilon)$. The two differ
/// noticeably only while `s` is of the order of ε.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum EpsPlacement {
    /// $\sqrt{s + \epsilon}$, as the seed formulas write it (the default).
    #[default]
    Inside,
    /// $\sqrt{s} + \epsilon$, as PyTorch's `Adagrad` and `RMSprop` compute it.
    Outside,
}

impl EpsPlacement {
    /// The denominator $\sqrt{s + \epsilon_{in}} + \epsilon_{out}$, with ε split by placement.
    ///
    /// Adding an exact zero leaves a non-negative value unchanged, so one branch-free
    /// expression gives both placements bit for bit and keeps the element loop vectorisable.
    #[inline]
    pub(crate) fn split<A: Element>(self, eps: f64) -> (A, A) {
        let eps = A::from_f64(eps);
        match self {
            EpsPlacement::Inside => (eps, A::zero()),
            EpsPlacement::Outside => (A::zero(), eps),
        }
    }
}

fn invalid(rule: &'static str, key: &'static str, value: f64, requirement: &'static str) -> Error {
    Error::InvalidHyperparameter { rule, key, value, requirement }
}

/// Checks a learning rate: finite and ≥ 0. A rate of 0 freezes a group, as in PyTorch.
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with key `lr`.
pub fn check_lr(rule: &'static str, lr: f64) -> Result<()> {
    check_non_negative(rule, "lr", lr)
}

/// Checks a decay factor (β, ρ, momentum): in [0, 1).
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given key.
pub fn check_decay(rule: &'static str, key: &'static str, value: f64) -> Result<()> {
    if (0.0..1.0).contains(&value) { Ok(()) } else { Err(invalid(rule, key, value, "in [0, 1)")) }
}

/// Checks a coefficient that must be finite and ≥ 0, such as a weight decay.
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given key.
pub fn check_non_negative(rule: &'static str, key: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(rule, key, value, "finite and >= 0"))
    }
}

/// Checks a fraction such as SGD's dampening: in [0, 1].
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given key.
pub fn check_unit(rule: &'static str, key: &'static str, value: f64) -> Result<()> {
    if (0.0..=1.0).contains(&value) { Ok(()) } else { Err(invalid(rule, key, value, "in [0, 1]")) }
}

/// Checks a smoothing term ε: finite and ≥ 0.
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given key.
pub fn check_eps(rule: &'static str, key: &'static str, value: f64) -> Result<()> {
    check_non_negative(rule, key, value)
}
