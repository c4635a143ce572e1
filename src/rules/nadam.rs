use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, WeightDecay, check_non_negative};
use crate::rules::adam::{self, Betas};
use crate::rules::{Ema, bias_correction};

/// NAdam (Dozat 2016): Adam with Nesterov momentum and a momentum schedule.
///
/// ```math
/// \begin{aligned}
/// \mu_t &= \beta_1 \left(1 - \tfrac12\, 0.96^{t\psi}\right), &
/// \Pi_t &= \textstyle\prod_{i \le t} \mu_i, \\
/// m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
/// v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2, \\
/// d_t &= \sqrt{v_t / (1 - \beta_2^t)} + \epsilon, \\
/// \theta &\leftarrow \theta - \frac{\eta\,(1 - \mu_t)}{1 - \Pi_t}\,\frac{g_t}{d_t} -
///   \frac{\eta\,\mu_{t+1}}{1 - \Pi_t\,\mu_{t+1}}\,\frac{m_t}{d_t}.
/// \end{aligned}
/// ```
///
/// `$g_t$` is the gradient, negated when `maximize`; a `weight_decay` λ ≠ 0 adds
/// `$\lambda\theta$` to it, or, with `decoupled_weight_decay` (NAdamW), scales θ by
/// `$1 - \eta\lambda$` before the update. The two parameter updates are applied one after the
/// other, as PyTorch does.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.002 | the paper and PyTorch |
/// | `$\beta_1$` | `beta1` | 0.9 | PyTorch |
/// | `$\beta_2$` | `beta2` | 0.999 | PyTorch |
/// | `$\epsilon$` | `eps` | 1e-8 | PyTorch |
/// | `$\lambda$` | `weight_decay` | 0 | PyTorch |
/// | `$\psi$` | `momentum_decay` | 0.004 | the paper and PyTorch |
/// | | `decoupled_weight_decay` | `false` | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// State: `exp_avg` (`$m$`) and `exp_avg_sq` (`$v$`), zero before the first step, and the
/// per-tensor scalar `mu_product` (`$\Pi$`, 1 before the first step, kept in `f64`). Matches
/// PyTorch's `NAdam(lr, betas=(beta1, beta2), eps, weight_decay, momentum_decay,
/// decoupled_weight_decay, maximize=maximize)` (whose `mu_product` is an `f64` when the
/// default dtype is).
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{NAdam, Optimizer};
///
/// let mut opt = Optimizer::new(NAdam::default())?;
/// let mut w = array![1.0_f64, 1.0];
/// opt.step("w", &mut w, &array![5.0, -0.25])?;
/// // Every element moves against its gradient by about lr on the first step.
/// assert!(w[0] < 1.0 && w[1] > 1.0 && (1.0 - w[0] - (w[1] - 1.0)).abs() < 1e-9);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct NAdam {
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// Decay β₁ of the first moment, in [0, 1).
    pub beta1: f64,
    /// Decay β₂ of the second moment, in [0, 1).
    pub beta2: f64,
    /// Smoothing term ε added to the root of the second moment (finite, ≥ 0).
    pub eps: f64,
    /// Weight decay λ (finite, ≥ 0): L2 on the gradient, or decoupled.
    pub weight_decay: f64,
    /// Rate ψ of the momentum schedule (finite, ≥ 0).
    pub momentum_decay: f64,
    /// Scale θ by 1 − ηλ before the update (NAdamW) instead of adding λθ to the gradient.
    pub decoupled_weight_decay: bool,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for NAdam {
    fn default() -> Self {
        NAdam {
            lr: 0.002,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 0.004,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

impl NAdam {
    /// The momentum coefficient μ of step `step`.
    fn mu(&self, step: f64) -> f64 {
        self.beta1 * (1.0 - 0.5 * 0.96_f64.powf(step * self.momentum_decay))
    }
}

impl UpdateRule for NAdam {
    const NAME: &'static str = "nadam";

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

    fn scalar_names(&self) -> &'static [&'static str] {
        &["mu_product"]
    }

    fn initial_value(&self, name: &str) -> f64 {
        if name == "mu_product" { 1.0 } else { 0.0 }
    }

    fn check_scalar(&self, name: &str, value: f64) -> Result<(), &'static str> {
        // A product of momentum factors in [0, 1), starting from 1; it may underflow to 0.
        if name == "mu_product" && !(0.0..=1.0).contains(&value) {
            return Err("in [0, 1] (a product of momentum factors, starting from 1)");
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        adam::validate(Self::NAME, Betas(self.beta1, self.beta2), self.eps)?;
        check_non_negative(Self::NAME, "momentum_decay", self.momentum_decay)
    }

    fn step<A: Element>(&self, mut tensor: TensorStep<'_, A>) {
        let (t, lr) = (tensor.step() as f64, tensor.lr());
        let bias_correction2 = A::from_f64(bias_correction(self.beta2, tensor.step()));
        let (mu, mu_next) = (self.mu(t), self.mu(t + 1.0));
        let [mu_product] = tensor.scalars() else {
            unreachable!("the registry keeps one value per scalar name")
        };
        *mu_product *= mu;
        let mu_product_next = *mu_product * mu_next;
        let grad_size = A::from_f64(-lr * (1.0 - mu) / (1.0 - *mu_product));
        let momentum_size = A::from_f64(-lr * mu_next / (1.0 - mu_product_next));
        let (beta1, beta2, eps) =
            (Ema::new(self.beta1), Ema::new(self.beta2), A::from_f64(self.eps));
        tensor.apply(move |p, g, [m, v]: &mut [A; 2]| {
            *m = beta1.average(*m, g);
            *v = beta2.average(*v, g * g);
            let denom = (*v / bias_correction2).sqrt() + eps;
            *p = *p + grad_size * (g / denom);
            *p = *p + momentum_size * (*m / denom);
        });
    }
}
