use ndarray::Zip;

use crate::element::Element;
use crate::error::Result;
use crate::kernel::{Split, TensorStep, sum_in_order};
use crate::rule::{Options, UpdateRule, WeightDecay, check_eps, check_non_negative};
use crate::rules::Ema;
use crate::rules::adam::{Betas, validate};

/// LAMB (You et al. 2020): Adam's direction plus weight decay, rescaled per tensor by the
/// trust ratio `$\lVert\theta\rVert / \lVert u\rVert$`, exactly as `optax.lamb` (0.2.8).
///
/// ```math
/// \begin{aligned}
/// m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
/// v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2, \\
/// \hat m_t &= \frac{m_t}{1 - \beta_1^t}, &
/// \hat v_t &= \frac{v_t}{1 - \beta_2^t}, \\
/// u_t &= \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{\text{root}}} + \epsilon} + \lambda\theta, &
/// r_t &= \begin{cases} 1 & \text{if } \lVert\theta\rVert = 0 \text{ or } \lVert u_t\rVert = 0, \\
///   \lVert\theta\rVert / \lVert u_t\rVert & \text{otherwise,} \end{cases} \\
/// \theta &\leftarrow \theta - \eta\, r_t\, u_t,
/// \end{aligned}
/// ```
///
/// with Euclidean norms over the whole tensor and θ before the update. optax computes the
/// bias corrections `$1 - \beta^t$` in the element type, and so does this rule.
///
/// Weight decay is the rule's own: it enters the direction `$u_t$` *before* the trust ratio,
/// so it is neither L2 decay (which would pass through the moments) nor decoupled decay
/// (which would not be rescaled). The rule therefore reports no decay to the driver
/// ([`options`](UpdateRule::options) has `weight_decay` 0) and adds `$\lambda\theta$` itself.
///
/// Not elementwise: a step makes three passes over the tensor (moments; both norms, in
/// logical order with [`sum_in_order`], so that they are the same for every memory layout
/// and thread count; the update, recomputing `$u_t$` from the moments), and needs no memory
/// beyond its state.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.001 | optax (which has none) and the paper's examples |
/// | `$\beta_1$` | `beta1` | 0.9 | optax |
/// | `$\beta_2$` | `beta2` | 0.999 | optax |
/// | `$\epsilon$` | `eps` | 1e-6 | optax |
/// | `$\epsilon_{\text{root}}$` | `eps_root` | 0 | optax |
/// | `$\lambda$` | `weight_decay` | 0 | optax |
///
/// State: `exp_avg` (`$m$`, optax's `mu`) and `exp_avg_sq` (`$v$`, optax's `nu`), zero before
/// the first step. Matches `optax.lamb(lr, b1=beta1, b2=beta2, eps, eps_root, weight_decay)`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Lamb, Optimizer};
///
/// let mut opt = Optimizer::new(Lamb { lr: 0.1, eps: 0.0, ..Lamb::default() })?;
/// let mut w = array![3.0_f64, -4.0];
/// // The first direction is sign(g) (norm √2); the trust ratio scales it to ‖θ‖ = 5, so
/// // the step moves θ by lr · 5 / √2 per element against the gradient's sign.
/// opt.step("w", &mut w, &array![0.5, 2.0])?;
/// let moved = 0.1 * 5.0 / 2.0_f64.sqrt();
/// assert!((w[0] - (3.0 - moved)).abs() < 1e-14 && (w[1] - (-4.0 - moved)).abs() < 1e-14);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Lamb {
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// Decay β₁ of the first moment, in [0, 1).
    pub beta1: f64,
    /// Decay β₂ of the second moment, in [0, 1).
    pub beta2: f64,
    /// Smoothing term ε added to `$\sqrt{\hat v + \epsilon_{\text{root}}}$` (finite, ≥ 0).
    pub eps: f64,
    /// Smoothing term `$\epsilon_{\text{root}}$` added to `$\hat v$` inside the root (finite, ≥ 0).
    pub eps_root: f64,
    /// Weight decay λ, added to the direction as λθ before the trust ratio (finite, ≥ 0).
    pub weight_decay: f64,
}

impl Default for Lamb {
    fn default() -> Self {
        Lamb { lr: 0.001, beta1: 0.9, beta2: 0.999, eps: 1e-6, eps_root: 0.0, weight_decay: 0.0 }
    }
}

impl UpdateRule for Lamb {
    const NAME: &'static str = "lamb";

    fn options(&self) -> Options {
        // The decay is applied by the rule, inside the trust ratio (see the type's docs).
        Options { lr: self.lr, weight_decay: WeightDecay::L2(0.0), maximize: false }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
    }

    fn non_negative_state(&self) -> &'static [&'static str] {
        &["exp_avg_sq"]
    }

    fn validate(&self) -> Result<()> {
        validate(Self::NAME, Betas(self.beta1, self.beta2), self.eps)?;
        check_eps(Self::NAME, "eps_root", self.eps_root)?;
        check_non_negative(Self::NAME, "weight_decay", self.weight_decay)
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let t = A::from_f64(tensor.step() as f64);
        let bias_correction1 = A::one() - A::from_f64(self.beta1).powf(t);
        let bias_correction2 = A::one() - A::from_f64(self.beta2).powf(t);
        let (beta1, beta2) = (Ema::new(self.beta1), Ema::new(self.beta2));
        let (eps, eps_root) = (A::from_f64(self.eps), A::from_f64(self.eps_root));
        let (decays, weight_decay) = (self.weight_decay != 0.0, A::from_f64(self.weight_decay));
        let neg_lr = A::from_f64(-tensor.lr());
        let direction = move |p: A, m: A, v: A| {
            let u = (m / bias_correction1) / ((v / bias_correction2 + eps_root).sqrt() + eps);
            if decays { u + weight_decay * p } else { u }
        };

        let Split { mut param, grad, buffers: [mut m, mut v], stage, .. } = tensor.split::<2>();
        Zip::from(&param).and(&grad).and(&mut m).and(&mut v).for_each(|&p, &g, m, v| {
            let g = stage.grad(g, p);
            *m = beta1.average(*m, g);
            *v = beta2.average(*v, g * g);
        });

        let square = |x: A| x.into_f64() * x.into_f64();
        let param_norm = A::from_f64(sum_in_order(param.iter().map(|&p| square(p))).sqrt());
        let directions = param.iter().zip(&m).zip(&v).map(|((&p, &m), &v)| direction(p, m, v));
        let update_norm = A::from_f64(sum_in_order(directions.map(square)).sqrt());
        let zero = A::zero();
        let ratio = if param_norm == zero || update_norm == zero {
            A::one()
        } else {
            param_norm / update_norm
        };

        Zip::from(&mut param).and(&m).and(&v).for_each(|p, &m, &v| {
            let u = direction(*p, m, v);
            *p = stage.decay(*p) + neg_lr * (u * ratio);
        });
    }
}
