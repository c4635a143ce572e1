use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, WeightDecay};
use crate::rules::adam::{self, Betas};
use crate::rules::{Ema, bias_correction};

/// RAdam (Liu et al. 2020): Adam whose adaptive rate is switched on, and rectified, once
/// the variance of the second moment is tractable.
///
/// ```math
/// \begin{aligned}
/// m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
/// v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2, \\
/// \rho_\infty &= \frac{2}{1 - \beta_2} - 1, &
/// \rho_t &= \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t}, \\
/// r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\,\rho_\infty}
///                   {(\rho_\infty - 4)(\rho_\infty - 2)\,\rho_t}},
/// \end{aligned}
/// ```
///
/// ```math
/// \theta \leftarrow \begin{cases}
///   \theta - \eta\,\dfrac{m_t}{1 - \beta_1^t}\,
///     \dfrac{\sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon}\, r_t & \text{if } \rho_t > 5, \\[2ex]
///   \theta - \eta\,\dfrac{m_t}{1 - \beta_1^t} & \text{otherwise.}
/// \end{cases}
/// ```
///
/// `$g_t$` is the gradient, negated when `maximize`; a `weight_decay` λ ≠ 0 adds
/// `$\lambda\theta$` to it, or, with `decoupled_weight_decay` (RAdamW), scales θ by
/// `$1 - \eta\lambda$` before the update. The test `$\rho_t > 5$` is made once per tensor and
/// step, in `f64`, as PyTorch makes it.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.001 | the paper and PyTorch |
/// | `$\beta_1$` | `beta1` | 0.9 | the paper and PyTorch |
/// | `$\beta_2$` | `beta2` | 0.999 | the paper and PyTorch |
/// | `$\epsilon$` | `eps` | 1e-8 | PyTorch |
/// | `$\lambda$` | `weight_decay` | 0 | PyTorch |
/// | | `decoupled_weight_decay` | `false` | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// State: `exp_avg` (`$m$`) and `exp_avg_sq` (`$v$`), zero before the first step. Matches
/// PyTorch's `RAdam(lr, betas=(beta1, beta2), eps, weight_decay, decoupled_weight_decay,
/// maximize=maximize)`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Optimizer, RAdam};
///
/// let mut opt = Optimizer::new(RAdam { lr: 0.1, ..RAdam::default() })?;
/// let mut w = array![1.0_f64];
/// // ρ₁ = 1 ≤ 5: the first step is momentum SGD with the bias-corrected m₁ = g₁.
/// opt.step("w", &mut w, &array![2.0])?;
/// assert!((w[0] - 0.8).abs() < 1e-15);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct RAdam {
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// Decay β₁ of the first moment, in [0, 1).
    pub beta1: f64,
    /// Decay β₂ of the second moment, in [0, 1).
    pub beta2: f64,
    /// Smoothing term ε added to `$\sqrt{v}$` (finite, ≥ 0).
    pub eps: f64,
    /// Weight decay λ (finite, ≥ 0): L2 on the gradient, or decoupled.
    pub weight_decay: f64,
    /// Scale θ by 1 − ηλ before the update (RAdamW) instead of adding λθ to the gradient.
    pub decoupled_weight_decay: bool,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for RAdam {
    fn default() -> Self {
        RAdam {
            lr: 0.001,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

impl UpdateRule for RAdam {
    const NAME: &'static str = "radam";

    fn options(&self) -> Options {
        let weight_decay = WeightDecay::new(self.weight_decay, self.decoupled_weight_decay);
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
        &["exp_avg", "exp_avg_sq"]
    }

    fn non_negative_state(&self) -> &'static [&'static str] {
        &["exp_avg_sq"]
    }

    fn validate(&self) -> Result<()> {
        adam::validate(Self::NAME, Betas(self.beta1, self.beta2), self.eps)
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let t = tensor.step() as f64;
        let bias_correction1 = bias_correction(self.beta1, tensor.step());
        let bias_correction2 = bias_correction(self.beta2, tensor.step());
        let rho_inf = 2.0 / (1.0 - self.beta2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * self.beta2.powf(t) / bias_correction2;
        let (beta1, beta2) = (Ema::new(self.beta1), Ema::new(self.beta2));
        let (lr, bias_correction1) = (A::from_f64(tensor.lr()), A::from_f64(bias_correction1));
        let moments = move |g: A, m: &mut A, v: &mut A| {
            *m = beta1.average(*m, g);
            *v = beta2.average(*v, g * g);
            *m / bias_correction1 * lr
        };
        if rho_t > 5.0 {
            let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .sqrt();
            let rect = A::from_f64(rect);
            let bias_correction2_sqrt = A::from_f64(bias_correction2.sqrt());
            let eps = A::from_f64(self.eps);
            tensor.apply(move |p, g, [m, v]: &mut [A; 2]| {
                let corrected = moments(g, m, v);
                let adaptive = bias_correction2_sqrt / (v.sqrt() + eps);
                *p = *p - corrected * adaptive * rect;
            });
        } else {
            tensor.apply(move |p, g, [m, v]: &mut [A; 2]| *p = *p - moments(g, m, v));
        }
    }
}
