//! The [`UpdateRule`] trait: what every optimizer rule provides to the shared kernel.

use core::fmt::Debug;

use crate::element::Element;
use crate::error::{Error, Result};
use crate::kernel::StateSlots;

/// An elementwise optimizer update rule, such as [`Adam`](crate::Adam).
///
/// A value of the implementing type is the rule's hyperparameters. Every rule here is
/// elementwise: for each element it reads the parameter `p`, the gradient `g` and
/// [`STATE_NAMES`](Self::STATE_NAMES)`.len()` state values, and writes `p` and the state. The
/// scalars that do not depend on the element (bias corrections, the learning rate in the
/// element type) are computed once per tensor per step by
/// [`coefficients`](Self::coefficients); [`update`](Self::update) is the per-element
/// arithmetic. The crate's kernel owns the loops, so a rule gets every memory layout, the
/// named registry and checkpoints without code of its own.
///
/// Hyperparameters are `f64` whatever the element type, converted once per step.
///
/// # Example: a rule of your own
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Element, Optimizer, Result, UpdateRule};
///
/// /// Sign descent: θ ← θ − η·sign(g).
/// #[derive(Clone, Debug, PartialEq)]
/// struct SignSgd { lr: f64 }
///
/// impl UpdateRule for SignSgd {
///     const NAME: &'static str = "sign_sgd";
///     const STATE_NAMES: &'static [&'static str] = &[];
///     type State<A: Element> = [A; 0];
///     type Coefficients<A: Element> = A;
///
///     fn validate(&self) -> Result<()> {
///         ndarray_optim::rule::check_lr(Self::NAME, self.lr)
///     }
///     fn lr(&self) -> f64 { self.lr }
///     fn lr_mut(&mut self) -> &mut f64 { &mut self.lr }
///     fn coefficients<A: Element>(&self, _step: u64) -> A { A::from_f64(self.lr) }
///     fn update<A: Element>(lr: &A, p: &mut A, g: A, _state: &mut [A; 0]) {
///         *p = *p - *lr * g.signum();
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

    /// The names of the per-element state buffers, in the order of [`State`](Self::State),
    /// e.g. `["exp_avg", "exp_avg_sq"]` for Adam (PyTorch's names where it has the buffer).
    const STATE_NAMES: &'static [&'static str];

    /// The state values of one element: `[A; STATE_NAMES.len()]`.
    type State<A: Element>: StateSlots<A>;

    /// The scalars of one step of one tensor, shared by all its elements.
    type Coefficients<A: Element>: Copy + Send + Sync;

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

    /// The coefficients of step `step` (1 for a tensor's first step) in the element type.
    fn coefficients<A: Element>(&self, step: u64) -> Self::Coefficients<A>;

    /// Updates one element: parameter `param`, gradient `grad` and its `state` values.
    fn update<A: Element>(
        coefficients: &Self::Coefficients<A>,
        param: &mut A,
        grad: A,
        state: &mut Self::State<A>,
    );
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

/// Checks a learning rate: finite and > 0.
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with key `lr`.
pub fn check_lr(rule: &'static str, lr: f64) -> Result<()> {
    if lr.is_finite() && lr > 0.0 { Ok(()) } else { Err(invalid(rule, "lr", lr, "finite and > 0")) }
}

/// Checks a decay factor (β, ρ, momentum): in [0, 1).
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given key.
pub fn check_decay(rule: &'static str, key: &'static str, value: f64) -> Result<()> {
    if (0.0..1.0).contains(&value) { Ok(()) } else { Err(invalid(rule, key, value, "in [0, 1)")) }
}

/// Checks a smoothing term ε: finite and ≥ 0.
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given key.
pub fn check_eps(rule: &'static str, key: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(rule, key, value, "finite and >= 0"))
    }
}
