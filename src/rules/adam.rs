use ndarray::Dimension;

use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{UpdateRule, check_decay, check_eps, check_lr};

/// Adam (seed eq. 18–22, Kingma & Ba 2015): bias-corrected first and second moments.
///
/// $$\begin{aligned}
/// m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
/// v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2, \\
/// \hat m_t &= \frac{m_t}{1 - \beta_1^t}, &
/// \hat v_t &= \frac{v_t}{1 - \beta_2^t}, \\
/// \theta &\leftarrow \theta - \eta\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}.
/// \end{aligned}$$
///
/// The step count $t$ is kept per tensor and starts at 1. The bias corrections are computed
/// once per tensor per step in `f64`; the element loop computes
/// $\theta - \frac{\eta}{1-\beta_1^t} \cdot m_t / (\sqrt{v_t} / \sqrt{1-\beta_2^t} + \epsilon)$,
/// the order of operations PyTorch's `Adam` uses.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | $\eta$ | `lr` | 0.001 | the paper, the seed and PyTorch |
/// | $\beta_1$ | `beta1` | 0.9 | the paper and PyTorch |
/// | $\beta_2$ | `beta2` | 0.999 | the paper and PyTorch |
/// | $\epsilon$ | `eps` | 1e-8 | the paper and PyTorch |
///
/// State: `exp_avg` ($m$) and `exp_avg_sq` ($v$), zero before the first step. Matches
/// PyTorch's `Adam(lr, betas=(beta1, beta2), eps)`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Adam, Optimizer};
///
/// let mut opt = Optimizer::new(Adam { lr: 0.1, eps: 0.0, ..Adam::default() })?;
/// let mut w = array![1.0_f64, 1.0];
/// // The first step moves every element by lr against the sign of its gradient.
/// opt.step("w", &mut w, &array![5.0, -0.25])?;
/// assert!((w[0] - 0.9).abs() < 1e-15 && (w[1] - 1.1).abs() < 1e-15);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Adam {
    /// Learning rate η (finite, > 0).
    pub lr: f64,
    /// Decay β₁ of the first moment, in [0, 1).
    pub beta1: f64,
    /// Decay β₂ of the second moment, in [0, 1).
    pub beta2: f64,
    /// Smoothing term ε added to $\sqrt{\hat v}$ (finite, ≥ 0).
    pub eps: f64,
}

impl Default for Adam {
    fn default() -> Self {
        Adam { lr: 0.001, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

impl UpdateRule for Adam {
    const NAME: &'static str = "adam";

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
    }

    fn validate(&self) -> Result<()> {
        check_lr(Self::NAME, self.lr)?;
        check_decay(Self::NAME, "beta1", self.beta1)?;
        check_decay(Self::NAME, "beta2", self.beta2)?;
        check_eps(Self::NAME, "eps", self.eps)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn step<A: Element, D: Dimension>(&self, step: u64, tensor: TensorStep<'_, A, D>) {
        // `powf` on the step as a float, like PyTorch's `beta ** step`.
        let t = step as f64;
        let bias_correction1 = 1.0 - self.beta1.powf(t);
        let bias_correction2 = 1.0 - self.beta2.powf(t);
        let (beta1, one_minus_beta1) = (A::from_f64(self.beta1), A::from_f64(1.0 - self.beta1));
        let (beta2, one_minus_beta2) = (A::from_f64(self.beta2), A::from_f64(1.0 - self.beta2));
        let step_size = A::from_f64(self.lr / bias_correction1);
        let bias_correction2_sqrt = A::from_f64(bias_correction2.sqrt());
        let eps = A::from_f64(self.eps);
        tensor.apply(move |p, g, [m, v]: &mut [A; 2]| {
            *m = beta1 * *m + one_minus_beta1 * g;
            *v = beta2 * *v + one_minus_beta2 * (g * g);
            let denom = v.sqrt() / bias_correction2_sqrt + eps;
            *p = *p - step_size * (*m / denom);
        });
    }
}
