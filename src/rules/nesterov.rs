use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, WeightDecay, check_decay};
use crate::rules::Momentum;

/// Nesterov accelerated gradient (seed eq. 3–4), in look-ahead form.
///
/// The seed evaluates the gradient at the look-ahead point `$\theta - \gamma v_{t-1}$`. An
/// optimizer that is handed gradients keeps that point itself as the parameter,
/// `$\Theta = \theta - \gamma v$`, so the caller's gradient at the stored parameter is exactly
/// the seed's look-ahead gradient. Substituting into eq. 3–4 gives
/// `$\Theta \leftarrow \Theta - (\gamma v_t + \eta g_t)$`; with PyTorch's buffer `$b = v / \eta$`:
///
/// ```math
/// b_t = \gamma\, b_{t-1} + g_t, \qquad \Theta \leftarrow \Theta - \eta\,(g_t + \gamma\, b_t).
/// ```
///
/// The stored parameter after step `$t$` is the seed's `$\theta_t - \gamma v_t$`; once training
/// stops, `$\theta = \Theta + \gamma\eta b$` recovers the seed's iterate (the two agree as the
/// velocity vanishes). This is PyTorch's `SGD(lr, momentum, nesterov=True, weight_decay,
/// maximize)`: `$g_t$` is the gradient, negated when `maximize`, plus `$\lambda\Theta$` when
/// `weight_decay` λ is not 0. PyTorch refuses dampening with Nesterov, so there is none.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.01 | common practice; PyTorch's `SGD` uses 0.001 |
/// | `$\gamma$` | `momentum` | 0.9 | the seed |
/// | `$\lambda$` | `weight_decay` | 0 | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// State: `momentum_buffer` (`$b$`).
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Nesterov, Optimizer};
///
/// let mut opt = Optimizer::new(Nesterov { lr: 0.5, momentum: 0.5, ..Nesterov::default() })?;
/// let mut w = array![1.0_f64];
/// opt.step("w", &mut w, &array![1.0])?; // b = 1, w = 1 - 0.5 * (1 + 0.5)
/// assert_eq!(w, array![0.25]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Nesterov {
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// Momentum γ, in [0, 1).
    pub momentum: f64,
    /// L2 weight decay λ added to the gradient as λΘ (finite, ≥ 0).
    pub weight_decay: f64,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for Nesterov {
    fn default() -> Self {
        let Momentum { lr, momentum, weight_decay, maximize, .. } = Momentum::default();
        Nesterov { lr, momentum, weight_decay, maximize }
    }
}

impl UpdateRule for Nesterov {
    const NAME: &'static str = "nesterov";

    fn options(&self) -> Options {
        let weight_decay = WeightDecay::L2(self.weight_decay);
        Options { lr: self.lr, weight_decay, maximize: self.maximize }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn cycled_momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.momentum)
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["momentum_buffer"]
    }

    fn validate(&self) -> Result<()> {
        check_decay(Self::NAME, "momentum", self.momentum)
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let (lr, momentum) = (A::from_f64(tensor.lr()), A::from_f64(self.momentum));
        tensor.apply(move |p, g, [b]: &mut [A; 1]| {
            *b = momentum * *b + g;
            *p = *p - lr * (g + momentum * *b);
        });
    }
}
