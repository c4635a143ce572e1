use crate::element::Element;
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, WeightDecay};
use crate::rules::adam::{self, Betas};
use crate::rules::{Ema, bias_correction, maximum};

/// Adamax (Kingma & Ba 2015, §7.1): Adam with the infinity norm in place of the second
/// moment.
///
/// ```math
/// \begin{aligned}
/// m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
/// u_t &= \max(\beta_2 u_{t-1},\ |g_t| + \epsilon), \\
/// \theta &\leftarrow \theta - \frac{\eta}{1 - \beta_1^t}\, \frac{m_t}{u_t}.
/// \end{aligned}
/// ```
///
/// `$g_t$` is the gradient, negated when `maximize`, plus `$\lambda\theta$` when `weight_decay`
/// λ is not 0. ε sits inside the maximum, where PyTorch puts it; `max` is NaN when either
/// side is, as `torch.maximum` is.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.002 | the paper and PyTorch |
/// | `$\beta_1$` | `beta1` | 0.9 | the paper and PyTorch |
/// | `$\beta_2$` | `beta2` | 0.999 | the paper and PyTorch |
/// | `$\epsilon$` | `eps` | 1e-8 | PyTorch |
/// | `$\lambda$` | `weight_decay` | 0 | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// State: `exp_avg` (`$m$`) and `exp_inf` (`$u$`), zero before the first step. Matches
/// PyTorch's `Adamax(lr, betas=(beta1, beta2), eps, weight_decay, maximize=maximize)`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Adamax, Optimizer};
///
/// let mut opt = Optimizer::new(Adamax { lr: 0.1, eps: 0.0, ..Adamax::default() })?;
/// let mut w = array![1.0_f64, 1.0];
/// // The first step moves every element by lr against the sign of its gradient.
/// opt.step("w", &mut w, &array![5.0, -0.25])?;
/// assert!((w[0] - 0.9).abs() < 1e-15 && (w[1] - 1.1).abs() < 1e-15);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Adamax {
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// Decay β₁ of the first moment, in [0, 1).
    pub beta1: f64,
    /// Decay β₂ of the infinity norm, in [0, 1).
    pub beta2: f64,
    /// Smoothing term ε added to `$|g|$` (finite, ≥ 0).
    pub eps: f64,
    /// L2 weight decay λ added to the gradient as λθ (finite, ≥ 0).
    pub weight_decay: f64,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for Adamax {
    fn default() -> Self {
        Adamax {
            lr: 0.002,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl UpdateRule for Adamax {
    const NAME: &'static str = "adamax";

    fn options(&self) -> Options {
        let weight_decay = WeightDecay::L2(self.weight_decay);
        Options { lr: self.lr, weight_decay, maximize: self.maximize }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn cycled_momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.beta1)
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_inf"]
    }

    fn non_negative_state(&self) -> &'static [&'static str] {
        &["exp_inf"]
    }

    fn validate(&self) -> crate::Result<()> {
        adam::validate(Self::NAME, Betas(self.beta1, self.beta2), self.eps)
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let step_size = A::from_f64(tensor.lr() / bias_correction(self.beta1, tensor.step()));
        let (beta1, beta2, eps) =
            (Ema::new(self.beta1), A::from_f64(self.beta2), A::from_f64(self.eps));
        tensor.apply(move |p, g, [m, u]: &mut [A; 2]| {
            *m = beta1.average(*m, g);
            *u = maximum(beta2 * *u, g.abs() + eps);
            *p = *p - step_size * (*m / *u);
        });
    }
}
