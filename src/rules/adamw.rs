use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, WeightDecay};
use crate::rules::adam::{self, Adam, Betas};

/// AdamW (Loshchilov & Hutter 2019): [`Adam`] with decoupled weight decay.
///
/// Before the Adam update the parameter shrinks by the decay, instead of the decay entering
/// the gradient and so the moments:
///
/// ```math
/// \theta \leftarrow \theta\,(1 - \eta\lambda), \qquad
///   \theta \leftarrow \theta - \frac{\eta}{1 - \beta_1^t}\,
///   \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon},
/// ```
///
/// with `$m_t$`, `$v_t$` the moments of the raw gradient `$g_t$` (negated when `maximize`), and
/// `$v_t$` replaced by its running maximum with `amsgrad`, exactly as in [`Adam`]. With λ = 0
/// this is [`Adam`] bit for bit.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.001 | PyTorch |
/// | `$\beta_1$` | `beta1` | 0.9 | the paper and PyTorch |
/// | `$\beta_2$` | `beta2` | 0.999 | the paper and PyTorch |
/// | `$\epsilon$` | `eps` | 1e-8 | the paper and PyTorch |
/// | `$\lambda$` | `weight_decay` | 0.01 | PyTorch |
/// | | `amsgrad` | `false` | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// State: `exp_avg`, `exp_avg_sq`, and `max_exp_avg_sq` with `amsgrad`. Matches PyTorch's
/// `AdamW(lr, betas=(beta1, beta2), eps, weight_decay, amsgrad, maximize=maximize)`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{AdamW, Optimizer};
///
/// let mut opt = Optimizer::new(AdamW { lr: 0.1, weight_decay: 0.5, eps: 0.0, ..AdamW::default() })?;
/// let mut w = array![2.0_f64];
/// // Decay first, 2 · (1 − 0.1 · 0.5) = 1.9, then Adam's first step of size lr.
/// opt.step("w", &mut w, &array![3.0])?;
/// assert!((w[0] - 1.8).abs() < 1e-15);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct AdamW {
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// Decay β₁ of the first moment, in [0, 1).
    pub beta1: f64,
    /// Decay β₂ of the second moment, in [0, 1).
    pub beta2: f64,
    /// Smoothing term ε added to `$\sqrt{\hat v}$` (finite, ≥ 0).
    pub eps: f64,
    /// Decoupled weight decay λ: θ shrinks by the factor 1 − ηλ each step (finite, ≥ 0).
    pub weight_decay: f64,
    /// Divide by the running maximum of the second moment (AMSGrad).
    pub amsgrad: bool,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { weight_decay: 0.01, ..AdamW::from(Adam::default()) }
    }
}

impl From<Adam> for AdamW {
    /// The same hyperparameters, with the weight decay decoupled.
    fn from(adam: Adam) -> Self {
        let Adam { lr, beta1, beta2, eps, weight_decay, amsgrad, maximize } = adam;
        AdamW { lr, beta1, beta2, eps, weight_decay, amsgrad, maximize }
    }
}

impl From<AdamW> for Adam {
    /// The same hyperparameters, with the weight decay as L2 regularisation.
    fn from(adamw: AdamW) -> Self {
        let AdamW { lr, beta1, beta2, eps, weight_decay, amsgrad, maximize } = adamw;
        Adam { lr, beta1, beta2, eps, weight_decay, amsgrad, maximize }
    }
}

impl UpdateRule for AdamW {
    const NAME: &'static str = "adamw";

    fn options(&self) -> Options {
        let weight_decay = WeightDecay::Decoupled(self.weight_decay);
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
        adam::state_names(self.amsgrad)
    }

    fn non_negative_state(&self) -> &'static [&'static str] {
        &["exp_avg_sq", "max_exp_avg_sq"]
    }

    fn validate(&self) -> Result<()> {
        adam::validate(Self::NAME, Betas(self.beta1, self.beta2), self.eps)
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        Adam::from(*self).step(tensor);
    }
}
