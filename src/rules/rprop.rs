use crate::element::Element;
use crate::error::{Error, Result};
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, check_non_negative};

/// Rprop (Riedmiller & Braun 1993, resilient backpropagation): every element moves by its own
/// step size in the direction of the sign of its gradient; the step size grows while the
/// gradient keeps its sign and shrinks when the sign flips.
///
/// ```math
/// \begin{aligned}
/// s &= \operatorname{sign}(g_t\, g_{t-1}), \qquad
/// f = \begin{cases} \eta_+ & s > 0 \\ \eta_- & s < 0 \\ 1 & s = 0 \end{cases}, \qquad
/// \delta_t = \operatorname{clamp}(\delta_{t-1} f,\ \delta_{\min},\ \delta_{\max}), \\
/// g_t &\leftarrow 0 \text{ where } s < 0, \qquad
/// \theta \leftarrow \theta - \operatorname{sign}(g_t)\, \delta_t,
/// \end{aligned}
/// ```
///
/// with `$g_t$` (zeroed where the sign flipped) kept as the next step's `$g_{t-1}$` and
/// `$\operatorname{sign}(0) = \operatorname{sign}(\text{NaN}) = 0$`, as `torch.sign`. `$g_t$` is
/// the gradient, negated when `maximize`. A flip thus shrinks the step and skips the move,
/// and the next step counts as neither a flip nor a continuation. There is no weight decay.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\delta_0$` | `lr` | 0.01 | PyTorch |
/// | `$\eta_-$` | `etaminus` | 0.5 | the paper and PyTorch |
/// | `$\eta_+$` | `etaplus` | 1.2 | the paper and PyTorch |
/// | `$\delta_{\min}$` | `step_size_min` | 1e-6 | the paper and PyTorch |
/// | `$\delta_{\max}$` | `step_size_max` | 50 | the paper and PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// The learning rate is only the initial step size `$\delta_0$`, read from the `lr` field when
/// a tensor first steps: a changed `lr` affects only tensors that have not stepped yet, and a
/// schedule's rate nothing at all (PyTorch takes the group's rate at a tensor's first step,
/// which differs only when a schedule's first rate is not `lr`). As in PyTorch, `lr` 0 does
/// not freeze a tensor: its step size is clamped up to `$\delta_{\min}$`.
///
/// State: `prev` (`$g_{t-1}$`, zero before the first step) and `step_size` (`$\delta$`, `lr`
/// before the first step). Matches PyTorch's `Rprop(lr, etas=(etaminus, etaplus),
/// step_sizes=(step_size_min, step_size_max), maximize=maximize)`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Optimizer, Rprop};
///
/// let mut opt = Optimizer::new(Rprop { lr: 0.25, ..Rprop::default() })?;
/// let mut w = array![1.0_f64, 1.0];
/// opt.step("w", &mut w, &array![3.0, -1.0])?; // δ = 0.25: 0.75, 1.25
/// opt.step("w", &mut w, &array![2.0, 1.0])?; // the same sign: δ = 0.3; a flip: no move
/// assert_eq!(w, array![0.45, 1.25]);
/// let state = opt.state_of("w").unwrap();
/// assert_eq!(state.buffer("step_size").unwrap(), array![0.3, 0.125].into_dyn());
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Rprop {
    /// The initial step size `$\delta_0$` of every element (finite, ≥ 0).
    pub lr: f64,
    /// Factor `$\eta_-$` that shrinks the step size when the gradient flips sign, in (0, 1).
    pub etaminus: f64,
    /// Factor `$\eta_+$` that grows the step size while the gradient keeps its sign (finite,
    /// > 1).
    pub etaplus: f64,
    /// The smallest step size `$\delta_{\min}$` (finite, ≥ 0).
    pub step_size_min: f64,
    /// The largest step size `$\delta_{\max}$` (finite, ≥ `step_size_min`).
    pub step_size_max: f64,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for Rprop {
    fn default() -> Self {
        Rprop {
            lr: 0.01,
            etaminus: 0.5,
            etaplus: 1.2,
            step_size_min: 1e-6,
            step_size_max: 50.0,
            maximize: false,
        }
    }
}

/// `torch.sign`: ±1, and 0 for ±0 and NaN.
#[inline(always)]
fn sign<A: Element>(x: A) -> A {
    if x > A::zero() {
        A::one()
    } else if x < A::zero() {
        -A::one()
    } else {
        A::zero()
    }
}

/// `clamp_(min, max)`: by comparisons, so that NaN stays NaN (`f64::max` would drop it).
#[inline(always)]
fn clamp<A: Element>(x: A, min: A, max: A) -> A {
    if x < min {
        min
    } else if x > max {
        max
    } else {
        x
    }
}

impl UpdateRule for Rprop {
    const NAME: &'static str = "rprop";

    fn options(&self) -> Options {
        // Rprop has no weight decay (PyTorch's neither).
        Options { maximize: self.maximize, ..Options::lr(self.lr) }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["prev", "step_size"]
    }

    fn initial_value(&self, name: &str) -> f64 {
        if name == "step_size" { self.lr } else { 0.0 }
    }

    fn non_negative_state(&self) -> &'static [&'static str] {
        &["step_size"]
    }

    fn validate(&self) -> Result<()> {
        let invalid = |key, value, requirement| {
            Err(Error::InvalidHyperparameter { rule: Self::NAME, key, value, requirement })
        };
        if !(self.etaminus > 0.0 && self.etaminus < 1.0) {
            return invalid("etaminus", self.etaminus, "in (0, 1)");
        }
        if !(self.etaplus > 1.0 && self.etaplus.is_finite()) {
            return invalid("etaplus", self.etaplus, "finite and > 1");
        }
        check_non_negative(Self::NAME, "step_size_min", self.step_size_min)?;
        if !(self.step_size_max >= self.step_size_min && self.step_size_max.is_finite()) {
            return invalid("step_size_max", self.step_size_max, "finite and >= step_size_min");
        }
        Ok(())
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let (etaminus, etaplus) = (A::from_f64(self.etaminus), A::from_f64(self.etaplus));
        let (min, max) = (A::from_f64(self.step_size_min), A::from_f64(self.step_size_max));
        tensor.apply(move |p, g, [prev, step_size]: &mut [A; 2]| {
            let agreement = sign(g * *prev);
            let (factor, g) = if agreement > A::zero() {
                (etaplus, g)
            } else if agreement < A::zero() {
                (etaminus, A::zero())
            } else {
                (A::one(), g)
            };
            *step_size = clamp(*step_size * factor, min, max);
            *p = *p - sign(g) * *step_size;
            *prev = g;
        });
    }
}
