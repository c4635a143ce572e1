use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, check_decay, check_eps, check_non_negative, require};
use crate::rules::bias_correction;
use crate::rules::schedule_free::{self, SCALARS, Weighting, interpolation};

/// Schedule-Free AdamW (Defazio et al. 2024): AdamW without a learning-rate schedule, whose
/// model is evaluated at an average of its iterates.
///
/// With `$k$` the tensor's step count before the step, `$t = k + 1$`, the step's rate
/// `$\gamma_t$` after linear warmup and the averaging weight `$c_{t+1}$` (see
/// [`ScheduleFreeSgd`](crate::ScheduleFreeSgd) for both):
///
/// ```math
/// \begin{aligned}
/// v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2, &
/// d_t &= \frac{g_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon} + \lambda\, y_t, \\
/// y_{t+1} &= \operatorname{lerp}(y_t, z_t, c_{t+1}) + \gamma_t\bigl(\beta_1(1 - c_{t+1}) - 1\bigr)\, d_t, &
/// z_{t+1} &= z_t - \gamma_t\, d_t,
/// \end{aligned}
/// ```
///
/// where the parameter holds `$y$` (train mode) and `$z$` starts at the parameter. The
/// average `$x$` is not kept: [`Optimizer::eval`](crate::Optimizer::eval) computes it in place
/// as `$x = \operatorname{lerp}(y, z, 1 - 1/\beta_1)$`, and
/// [`Optimizer::train`](crate::Optimizer::train) restores `$y = \operatorname{lerp}(x, z, 1 -
/// \beta_1)$`. Weight decay λ is taken at `$y$` and added after the normalisation, as in
/// `schedulefree`.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.0025 | `schedulefree` |
/// | `$\beta_1$` | `beta1` | 0.9 | `schedulefree` |
/// | `$\beta_2$` | `beta2` | 0.999 | `schedulefree` |
/// | `$\epsilon$` | `eps` | 1e-8 | `schedulefree` |
/// | `$\lambda$` | `weight_decay` | 0 | `schedulefree` |
/// | `$T_w$` | `warmup_steps` | 0 | `schedulefree` |
/// | `$r$` | `r` | 0 | `schedulefree` |
/// | `$p$` | `weight_lr_power` | 2 | `schedulefree` |
///
/// State: `z` and `exp_avg_sq` (`$v$`), and the per-tensor scalars `lr_max`, `weight_sum` and
/// `train_mode`. `schedulefree` keeps `k`, `lr_max` and `weight_sum` per parameter group;
/// here the step count is the tensor's and the two sums are the tensor's scalars, which are
/// the group's values whenever every tensor of the group is stepped at every step (as
/// `schedulefree` steps them). Matches `schedulefree.AdamWScheduleFree(lr, betas=(beta1,
/// beta2), eps, weight_decay, warmup_steps, r, weight_lr_power)` in train mode.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Optimizer, ScheduleFreeAdamW};
///
/// let mut opt = Optimizer::new(ScheduleFreeAdamW { lr: 0.1, ..ScheduleFreeAdamW::default() })?;
/// let mut w = array![1.0_f64, -1.0];
/// opt.step("w", &mut w, &array![2.0, -0.5])?;
/// // The first average is z itself: y moves with z, by lr against the gradient's sign.
/// assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] + 0.9).abs() < 1e-6);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ScheduleFreeAdamW {
    /// Learning rate η (finite, ≥ 0), reached after warmup.
    pub lr: f64,
    /// Interpolation β₁ between the average and the base iterate, in (0, 1).
    pub beta1: f64,
    /// Decay β₂ of the second moment, in [0, 1).
    pub beta2: f64,
    /// Smoothing term ε added to `$\sqrt{\hat v}$` (finite, ≥ 0).
    pub eps: f64,
    /// Weight decay λ, taken at `$y$` and added to the normalised gradient (finite, ≥ 0).
    pub weight_decay: f64,
    /// Steps of linear warmup: step `$t \le T_w$` uses the rate `$\eta\, t / T_w$`.
    pub warmup_steps: u64,
    /// Power `$r$` of the polynomial weighting `$t^r$` of the average (finite).
    pub r: f64,
    /// Power `$p$` of the largest rate so far in the weights of the average (finite, ≥ 0;
    /// 0 weighs every step alike).
    pub weight_lr_power: f64,
}

impl Default for ScheduleFreeAdamW {
    fn default() -> Self {
        ScheduleFreeAdamW {
            lr: 0.0025,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            r: 0.0,
            weight_lr_power: 2.0,
        }
    }
}

impl ScheduleFreeAdamW {
    fn weighting(&self) -> Weighting {
        let ScheduleFreeAdamW { warmup_steps, r, weight_lr_power, .. } = *self;
        Weighting { warmup_steps, r, weight_lr_power }
    }
}

impl UpdateRule for ScheduleFreeAdamW {
    const NAME: &'static str = "schedule_free_adamw";

    fn options(&self) -> Options {
        // Weight decay enters after the normalisation, inside the rule's own update.
        Options::lr(self.lr)
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn validate(&self) -> Result<()> {
        let beta1 = self.beta1;
        // x = lerp(y, z, 1 − 1/β₁) needs β₁ > 0.
        require(beta1 > 0.0 && beta1 < 1.0, Self::NAME, "beta1", beta1, "in (0, 1)")?;
        check_decay(Self::NAME, "beta2", self.beta2)?;
        check_eps(Self::NAME, "eps", self.eps)?;
        check_non_negative(Self::NAME, "weight_decay", self.weight_decay)?;
        self.weighting().validate(Self::NAME)
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["z", "exp_avg_sq"]
    }

    fn non_negative_state(&self) -> &'static [&'static str] {
        &["exp_avg_sq"]
    }

    fn scalar_names(&self) -> &'static [&'static str] {
        SCALARS
    }

    fn initial_value(&self, name: &str) -> f64 {
        schedule_free::initial_value(name)
    }

    fn check_scalar(&self, name: &str, value: f64) -> Result<(), &'static str> {
        schedule_free::check_scalar(name, value)
    }

    fn in_eval_mode(&self, scalars: &[f64]) -> bool {
        schedule_free::in_eval_mode(scalars)
    }

    fn step<A: Element>(&self, mut tensor: TensorStep<'_, A>) {
        let interpolation = interpolation::<A>(self.weighting(), self.beta1, &mut tensor);
        let bias_correction2 = A::from_f64(bias_correction(self.beta2, tensor.step()));
        let (beta2, one_minus_beta2) = (A::from_f64(self.beta2), A::from_f64(1.0 - self.beta2));
        let (eps, decay) = (A::from_f64(self.eps), A::from_f64(self.weight_decay));
        // Without decay, no λ·y term: an infinite y must not turn into NaN.
        let decays = self.weight_decay != 0.0;
        tensor.apply(move |y, g, [z, v]: &mut [A; 2]| {
            interpolation.start(*y, z);
            // PyTorch's `mul_(β₂).addcmul_(g, g, value=1 − β₂)`: the scalar multiplies first.
            *v = *v * beta2 + one_minus_beta2 * g * g;
            let denom = (*v / bias_correction2).sqrt() + eps;
            let mut d = g / denom;
            if decays {
                d = d + decay * *y;
            }
            interpolation.update(y, z, d);
        });
    }
}
