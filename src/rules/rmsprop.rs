use ndarray::Dimension;

use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{EpsPlacement, UpdateRule, check_decay, check_eps, check_lr};

/// RMSprop (seed eq. 16–17): Adagrad with a decaying average of squared gradients.
///
/// $$E[g^2]_t = \rho\, E[g^2]_{t-1} + (1 - \rho)\, g_t^2, \qquad
///   \theta \leftarrow \theta - \eta\,\frac{g_t}{\sqrt{E[g^2]_t + \epsilon}}$$
///
/// With [`EpsPlacement::Outside`] the denominator is $\sqrt{E[g^2]_t} + \epsilon$, as in
/// PyTorch. The seed calls the decay γ; PyTorch calls it `alpha`.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | $\eta$ | `lr` | 0.001 | the seed (Hinton's suggestion); PyTorch uses 0.01 |
/// | $\rho$ | `rho` | 0.9 | the seed; PyTorch's `alpha` is 0.99 |
/// | $\epsilon$ | `eps` | 1e-8 | the seed and PyTorch |
/// | | `eps_placement` | [`EpsPlacement::Inside`] | the seed; PyTorch is `Outside` |
///
/// State: `square_avg` ($E[g^2]$, zero before the first step). `RmsProp { lr: 0.01, rho:
/// 0.99, eps: 1e-8, eps_placement: EpsPlacement::Outside }` matches PyTorch's `RMSprop()`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{EpsPlacement, Optimizer, RmsProp};
///
/// let rule = RmsProp { lr: 0.1, rho: 0.75, eps: 0.0, eps_placement: EpsPlacement::Inside };
/// let mut opt = Optimizer::new(rule)?;
/// let mut w = array![1.0_f64];
/// opt.step("w", &mut w, &array![2.0])?; // E = 0.25 * 4 = 1, w = 1 - 0.1 * 2 / 1
/// assert_eq!(w, array![0.8]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct RmsProp {
    /// Learning rate η (finite, > 0).
    pub lr: f64,
    /// Decay ρ of the squared-gradient average, in [0, 1).
    pub rho: f64,
    /// Smoothing term ε (finite, ≥ 0).
    pub eps: f64,
    /// Whether ε goes inside or outside the square root.
    pub eps_placement: EpsPlacement,
}

impl Default for RmsProp {
    fn default() -> Self {
        RmsProp { lr: 0.001, rho: 0.9, eps: 1e-8, eps_placement: EpsPlacement::Inside }
    }
}

impl UpdateRule for RmsProp {
    const NAME: &'static str = "rmsprop";

    fn state_names(&self) -> &'static [&'static str] {
        &["square_avg"]
    }

    fn validate(&self) -> Result<()> {
        check_lr(Self::NAME, self.lr)?;
        check_decay(Self::NAME, "rho", self.rho)?;
        check_eps(Self::NAME, "eps", self.eps)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn step<A: Element, D: Dimension>(&self, _step: u64, tensor: TensorStep<'_, A, D>) {
        let lr = A::from_f64(self.lr);
        let (rho, one_minus_rho) = (A::from_f64(self.rho), A::from_f64(1.0 - self.rho));
        let (eps_inside, eps_outside) = self.eps_placement.split::<A>(self.eps);
        tensor.apply(move |p, g, [avg]: &mut [A; 1]| {
            *avg = rho * *avg + one_minus_rho * (g * g);
            *p = *p - lr * (g / ((*avg + eps_inside).sqrt() + eps_outside));
        });
    }
}
