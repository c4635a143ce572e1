use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, WeightDecay, check_decay, check_eps};
use crate::rules::Ema;

/// Adadelta (seed eq. 8–15, Zeiler 2012): step sizes in the units of the parameter.
///
/// ```math
/// \begin{aligned}
/// E[g^2]_t &= \rho\, E[g^2]_{t-1} + (1 - \rho)\, g_t^2 \\
/// \Delta\theta_t &= -\frac{\sqrt{E[\Delta\theta^2]_{t-1} + \epsilon}}
///                        {\sqrt{E[g^2]_t + \epsilon}}\, g_t \\
/// E[\Delta\theta^2]_t &= \rho\, E[\Delta\theta^2]_{t-1} + (1 - \rho)\, \Delta\theta_t^2 \\
/// \theta &\leftarrow \theta + \eta\, \Delta\theta_t
/// \end{aligned}
/// ```
///
/// The second average is over the squared *update* `$\Delta\theta^2$`, as in Zeiler's paper
/// (the seed's eq. 11 prints `$\theta_t^2$`, a typo). The optional rate η scales the step after
/// both averages are updated, as PyTorch does; η = 1 is the seed exactly. PyTorch's options:
/// `$g_t$` is the gradient, negated when `maximize`, plus `$\lambda\theta$` when `weight_decay`
/// λ is not 0.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 1.0 | the seed (no rate); PyTorch's too |
/// | `$\rho$` | `rho` | 0.9 | the seed and PyTorch |
/// | `$\epsilon$` | `eps` | 1e-6 | PyTorch (Zeiler's paper uses 1e-6 too) |
/// | `$\lambda$` | `weight_decay` | 0 | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// State: `square_avg` (`$E[g^2]$`) and `acc_delta` (`$E[\Delta\theta^2]$`), both zero before
/// the first step. Matches PyTorch's `Adadelta(lr, rho, eps, weight_decay, maximize=maximize)`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Adadelta, Optimizer};
///
/// let mut opt = Optimizer::new(Adadelta { lr: 1.0, rho: 0.0, eps: 1.0, ..Adadelta::default() })?;
/// let mut w = array![1.0_f64];
/// // E[g²] = 9, Δθ = -√(0 + 1) / √(9 + 1) · 3
/// opt.step("w", &mut w, &array![3.0])?;
/// assert!((w[0] - (1.0 - 3.0 / 10f64.sqrt())).abs() < 1e-15);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Adadelta {
    /// Rate η that scales the update (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// Decay ρ of both running averages, in [0, 1).
    pub rho: f64,
    /// Smoothing term ε inside both square roots (finite, ≥ 0).
    pub eps: f64,
    /// L2 weight decay λ added to the gradient as λθ (finite, ≥ 0).
    pub weight_decay: f64,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for Adadelta {
    fn default() -> Self {
        Adadelta { lr: 1.0, rho: 0.9, eps: 1e-6, weight_decay: 0.0, maximize: false }
    }
}

impl UpdateRule for Adadelta {
    const NAME: &'static str = "adadelta";

    fn options(&self) -> Options {
        let weight_decay = WeightDecay::L2(self.weight_decay);
        Options { lr: self.lr, weight_decay, maximize: self.maximize }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["square_avg", "acc_delta"]
    }

    fn non_negative_state(&self) -> &'static [&'static str] {
        &["square_avg", "acc_delta"]
    }

    fn validate(&self) -> Result<()> {
        check_decay(Self::NAME, "rho", self.rho)?;
        check_eps(Self::NAME, "eps", self.eps)
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let (lr, eps, rho) = (A::from_f64(tensor.lr()), A::from_f64(self.eps), Ema::new(self.rho));
        tensor.apply(move |p, g, [square_avg, acc_delta]: &mut [A; 2]| {
            *square_avg = rho.average(*square_avg, g * g);
            // `delta` is −Δθ: the step the parameter moves against.
            let delta = (*acc_delta + eps).sqrt() / (*square_avg + eps).sqrt() * g;
            *acc_delta = rho.average(*acc_delta, delta * delta);
            *p = *p - lr * delta;
        });
    }
}
