use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, WeightDecay, check_decay, check_unit};
use crate::rules::Ema;

/// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): a step of the
/// same size η for every element, in the direction of the sign of an interpolation between
/// the momentum and the gradient.
///
/// ```math
/// \begin{aligned}
/// c_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
/// m_t &= \beta_2 m_{t-1} + (1 - \beta_2)\, g_t, \\
/// \theta &\leftarrow \theta(1 - \eta\lambda) - \eta\, \operatorname{sign}(c_t).
/// \end{aligned}
/// ```
///
/// `$\operatorname{sign}(0) = 0$` (and NaN stays NaN), as `jnp.sign`. The momentum is updated
/// with β₂ only after `$c_t$` has read it with β₁. Weight decay λ is decoupled: optax computes
/// `$\theta - \eta(\operatorname{sign}(c_t) + \lambda\theta)$`, which is the same up to
/// rounding.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 1e-4 | 10 times below AdamW's, as the paper advises (optax has no default) |
/// | `$\beta_1$` | `beta1` | 0.9 | the paper and optax |
/// | `$\beta_2$` | `beta2` | 0.99 | the paper and optax |
/// | `$\lambda$` | `weight_decay` | 1e-3 | optax |
///
/// State: `exp_avg` (`$m$`, optax's `mu`), zero before the first step. Matches optax 0.2.8's
/// `lion(lr, b1=beta1, b2=beta2, weight_decay=weight_decay)`, which has no `maximize`
/// (negate the gradient to ascend).
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Lion, Optimizer};
///
/// let mut opt = Optimizer::new(Lion { lr: 0.5, weight_decay: 0.0, ..Lion::default() })?;
/// let mut w = array![1.0_f64, 1.0, 1.0];
/// // Every element moves by lr against the sign of its gradient; a zero gradient, not at all.
/// opt.step("w", &mut w, &array![5.0, -0.25, 0.0])?;
/// assert_eq!(w, array![0.5, 1.5, 1.0]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Lion {
    /// Learning rate η, the size of every element's step (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// Weight β₁ of the momentum in the direction of the step, in [0, 1] (1: the momentum
    /// alone).
    pub beta1: f64,
    /// Decay β₂ of the momentum, in [0, 1).
    pub beta2: f64,
    /// Decoupled weight decay λ: θ scaled by 1 − ηλ before the update (finite, ≥ 0).
    pub weight_decay: f64,
}

impl Default for Lion {
    fn default() -> Self {
        Lion { lr: 1e-4, beta1: 0.9, beta2: 0.99, weight_decay: 1e-3 }
    }
}

/// `jnp.sign`: ±1, and the value itself for ±0 and NaN.
#[inline(always)]
fn sign<A: Element>(x: A) -> A {
    if x > A::zero() {
        A::one()
    } else if x < A::zero() {
        -A::one()
    } else {
        x
    }
}

impl UpdateRule for Lion {
    const NAME: &'static str = "lion";

    fn options(&self) -> Options {
        let weight_decay = WeightDecay::Decoupled(self.weight_decay);
        Options { lr: self.lr, weight_decay, maximize: false }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg"]
    }

    fn validate(&self) -> Result<()> {
        check_unit(Self::NAME, "beta1", self.beta1)?;
        check_decay(Self::NAME, "beta2", self.beta2)
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let lr = A::from_f64(tensor.lr());
        let (beta1, beta2) = (Ema::new(self.beta1), Ema::new(self.beta2));
        tensor.apply(move |p, g, [m]: &mut [A; 1]| {
            let direction = sign(beta1.average(*m, g));
            *m = beta2.average(*m, g);
            *p = *p - lr * direction;
        });
    }
}
