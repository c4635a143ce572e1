use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, WeightDecay, check_decay, check_eps};
use crate::rules::{Ema, bias_correction, maximum};

/// Adam (seed eq. 18–22, Kingma & Ba 2015): bias-corrected first and second moments.
///
/// ```math
/// \begin{aligned}
/// m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
/// v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2, \\
/// \hat m_t &= \frac{m_t}{1 - \beta_1^t}, &
/// \hat v_t &= \frac{v_t}{1 - \beta_2^t}, \\
/// \theta &\leftarrow \theta - \eta\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}.
/// \end{aligned}
/// ```
///
/// The step count `$t$` is kept per tensor and starts at 1. The bias corrections are computed
/// once per tensor per step in `f64`; the element loop computes
///
/// ```math
/// \theta - \frac{\eta}{1-\beta_1^t} \cdot \frac{m_t}{\sqrt{v_t} / \sqrt{1-\beta_2^t} + \epsilon},
/// ```
///
/// the order of operations PyTorch's `Adam` uses.
///
/// PyTorch's options: `$g_t$` is the gradient, negated when `maximize`, plus `$\lambda\theta$`
/// when `weight_decay` λ is not 0 (L2 decay through the moments; for decoupled decay see
/// [`AdamW`](crate::AdamW)). `amsgrad` (Reddi et al. 2018) divides by the root of the
/// running maximum `$\hat v^{\max}_t = \max(\hat v^{\max}_{t-1}, v_t)$` instead of `$v_t$`.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.001 | the paper, the seed and PyTorch |
/// | `$\beta_1$` | `beta1` | 0.9 | the paper and PyTorch |
/// | `$\beta_2$` | `beta2` | 0.999 | the paper and PyTorch |
/// | `$\epsilon$` | `eps` | 1e-8 | the paper and PyTorch |
/// | `$\lambda$` | `weight_decay` | 0 | PyTorch |
/// | | `amsgrad` | `false` | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// State: `exp_avg` (`$m$`) and `exp_avg_sq` (`$v$`), then `max_exp_avg_sq` with `amsgrad`, zero
/// before the first step. Matches PyTorch's `Adam(lr, betas=(beta1, beta2), eps,
/// weight_decay, amsgrad, maximize=maximize)`.
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
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// Decay β₁ of the first moment, in [0, 1).
    pub beta1: f64,
    /// Decay β₂ of the second moment, in [0, 1).
    pub beta2: f64,
    /// Smoothing term ε added to `$\sqrt{\hat v}$` (finite, ≥ 0).
    pub eps: f64,
    /// L2 weight decay λ added to the gradient as λθ (finite, ≥ 0).
    pub weight_decay: f64,
    /// Divide by the running maximum of the second moment (AMSGrad).
    pub amsgrad: bool,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            lr: 0.001,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
        }
    }
}

/// The buffers of Adam and AdamW, which differ only in how weight decay enters.
pub(crate) fn state_names(amsgrad: bool) -> &'static [&'static str] {
    if amsgrad { &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"] } else { &["exp_avg", "exp_avg_sq"] }
}

/// The two decays β₁, β₂ of the Adam family's moments.
pub(crate) struct Betas(pub(crate) f64, pub(crate) f64);

/// Checks the hyperparameters the Adam family shares: β₁, β₂ in [0, 1), ε finite and ≥ 0.
pub(crate) fn validate(rule: &'static str, Betas(beta1, beta2): Betas, eps: f64) -> Result<()> {
    check_decay(rule, "beta1", beta1)?;
    check_decay(rule, "beta2", beta2)?;
    check_eps(rule, "eps", eps)
}

impl UpdateRule for Adam {
    const NAME: &'static str = "adam";

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
        state_names(self.amsgrad)
    }

    fn non_negative_state(&self) -> &'static [&'static str] {
        &["exp_avg_sq", "max_exp_avg_sq"]
    }

    fn validate(&self) -> Result<()> {
        validate(Self::NAME, Betas(self.beta1, self.beta2), self.eps)
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let step_size = A::from_f64(tensor.lr() / bias_correction(self.beta1, tensor.step()));
        let bias_correction2_sqrt = A::from_f64(bias_correction(self.beta2, tensor.step()).sqrt());
        let (beta1, beta2, eps) =
            (Ema::new(self.beta1), Ema::new(self.beta2), A::from_f64(self.eps));
        // `max_v` is there with AMSGrad only, so each case compiles to its own loop.
        let update = move |p: &mut A, g: A, m: &mut A, v: &mut A, max_v: Option<&mut A>| {
            *m = beta1.average(*m, g);
            *v = beta2.average(*v, g * g);
            let v = match max_v {
                Some(max_v) => {
                    *max_v = maximum(*max_v, *v);
                    *max_v
                }
                None => *v,
            };
            let denom = v.sqrt() / bias_correction2_sqrt + eps;
            *p = *p - step_size * (*m / denom);
        };
        if self.amsgrad {
            tensor.apply(move |p, g, [m, v, max_v]: &mut [A; 3]| update(p, g, m, v, Some(max_v)));
        } else {
            tensor.apply(move |p, g, [m, v]: &mut [A; 2]| update(p, g, m, v, None));
        }
    }
}
