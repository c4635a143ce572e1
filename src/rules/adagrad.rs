use ndarray::Dimension;

use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{EpsPlacement, UpdateRule, check_eps, check_lr};

/// Adagrad (seed eq. 7): a per-element rate that shrinks with the sum of past squared
/// gradients.
///
/// $$G_t = G_{t-1} + g_t^2, \qquad
///   \theta \leftarrow \theta - \eta\,\frac{g_t}{\sqrt{G_t + \epsilon}}$$
///
/// With [`EpsPlacement::Outside`] the denominator is $\sqrt{G_t} + \epsilon$, as in PyTorch.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | $\eta$ | `lr` | 0.01 | the seed ("most implementations use 0.01"); PyTorch's too |
/// | $\epsilon$ | `eps` | 1e-8 | the seed; PyTorch uses 1e-10 |
/// | | `eps_placement` | [`EpsPlacement::Inside`] | the seed; PyTorch is `Outside` |
///
/// State: `sum` ($G$, zero before the first step). `Adagrad { eps: 1e-10, eps_placement:
/// EpsPlacement::Outside, ..}` matches PyTorch's `Adagrad(lr)`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Adagrad, EpsPlacement, Optimizer};
///
/// let rule = Adagrad { lr: 0.1, eps: 0.0, eps_placement: EpsPlacement::Inside };
/// let mut opt = Optimizer::new(rule)?;
/// let mut w = array![1.0_f64];
/// opt.step("w", &mut w, &array![3.0])?; // G = 9, w = 1 - 0.1 * 3 / 3
/// assert_eq!(w, array![0.9]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Adagrad {
    /// Learning rate η (finite, > 0).
    pub lr: f64,
    /// Smoothing term ε (finite, ≥ 0).
    pub eps: f64,
    /// Whether ε goes inside or outside the square root.
    pub eps_placement: EpsPlacement,
}

impl Default for Adagrad {
    fn default() -> Self {
        Adagrad { lr: 0.01, eps: 1e-8, eps_placement: EpsPlacement::Inside }
    }
}

impl UpdateRule for Adagrad {
    const NAME: &'static str = "adagrad";

    fn state_names(&self) -> &'static [&'static str] {
        &["sum"]
    }

    fn validate(&self) -> Result<()> {
        check_lr(Self::NAME, self.lr)?;
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
        let (eps_inside, eps_outside) = self.eps_placement.split::<A>(self.eps);
        tensor.apply(move |p, g, [sum]: &mut [A; 1]| {
            *sum = *sum + g * g;
            *p = *p - lr * (g / ((*sum + eps_inside).sqrt() + eps_outside));
        });
    }
}
