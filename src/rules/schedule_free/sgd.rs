use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, WeightDecay, require};
use crate::rules::schedule_free::{self, SCALARS, Weighting, interpolation};

/// Schedule-Free SGD (Defazio et al. 2024): SGD with momentum through averaging, without a
/// learning-rate schedule.
///
/// With `$t$` the tensor's step (from 1), `$\beta$` the momentum, `$g_t$` the gradient plus
/// `$\lambda y_t$`:
///
/// ```math
/// \begin{aligned}
/// \gamma_t &= \eta \min(1, t / T_w), &
/// \gamma_{\max} &\leftarrow \max(\gamma_{\max}, \gamma_t), \\
/// w_t &= t^r\, \gamma_{\max}^{p}, &
/// W &\leftarrow W + w_t, \quad c_{t+1} = w_t / W, \\
/// y_{t+1} &= \operatorname{lerp}(y_t, z_t, c_{t+1}) + \gamma_t\bigl(\beta(1 - c_{t+1}) - 1\bigr)\, g_t, &
/// z_{t+1} &= z_t - \gamma_t\, g_t,
/// \end{aligned}
/// ```
///
/// where the parameter holds `$y$` (train mode) and `$z$` starts at the parameter. This is
/// `$z_{t+1} = z_t - \gamma_t g_t$`, `$x_{t+1} = (1 - c_{t+1})\, x_t + c_{t+1} z_{t+1}$` and
/// `$y = (1 - \beta)\, z + \beta x$` without keeping `$x$`:
/// [`Optimizer::eval`](crate::Optimizer::eval) computes it in place as `$x =
/// \operatorname{lerp}(y, z, 1 - 1/\beta)$`, and [`Optimizer::train`](crate::Optimizer::train)
/// restores `$y = \operatorname{lerp}(x, z, 1 - \beta)$`.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 1.0 | `schedulefree` |
/// | `$\beta$` | `momentum` | 0.9 | `schedulefree` |
/// | `$\lambda$` | `weight_decay` | 0 | `schedulefree` |
/// | `$T_w$` | `warmup_steps` | 0 | `schedulefree` |
/// | `$r$` | `r` | 0 | `schedulefree` |
/// | `$p$` | `weight_lr_power` | 2 | `schedulefree` |
///
/// State: `z`, and the per-tensor scalars `lr_max`, `weight_sum` and `train_mode` (see
/// [`ScheduleFreeAdamW`](crate::ScheduleFreeAdamW) on keeping them per tensor). Matches
/// `schedulefree.SGDScheduleFree(lr, momentum, weight_decay, warmup_steps, r,
/// weight_lr_power)` in train mode.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Optimizer, ScheduleFreeSgd};
///
/// let mut opt = Optimizer::new(ScheduleFreeSgd { lr: 0.5, ..ScheduleFreeSgd::default() })?;
/// let mut w = array![1.0_f64];
/// opt.step("w", &mut w, &array![1.0])?;
/// // The first average is z itself, so y takes a plain SGD step.
/// assert_eq!(w[0], 0.5);
/// opt.eval_tensor("w", &mut w)?; // x, where the model is evaluated
/// assert_eq!(w[0], 0.5);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ScheduleFreeSgd {
    /// Learning rate η (finite, ≥ 0), reached after warmup.
    pub lr: f64,
    /// Interpolation β between the average and the base iterate, in (0, 1).
    pub momentum: f64,
    /// L2 weight decay λ added to the gradient as λy (finite, ≥ 0).
    pub weight_decay: f64,
    /// Steps of linear warmup: step `$t \le T_w$` uses the rate `$\eta\, t / T_w$`.
    pub warmup_steps: u64,
    /// Power `$r$` of the polynomial weighting `$t^r$` of the average (finite).
    pub r: f64,
    /// Power `$p$` of the largest rate so far in the weights of the average (finite, ≥ 0;
    /// 0 weighs every step alike).
    pub weight_lr_power: f64,
}

impl Default for ScheduleFreeSgd {
    fn default() -> Self {
        ScheduleFreeSgd {
            lr: 1.0,
            momentum: 0.9,
            weight_decay: 0.0,
            warmup_steps: 0,
            r: 0.0,
            weight_lr_power: 2.0,
        }
    }
}

impl ScheduleFreeSgd {
    fn weighting(&self) -> Weighting {
        let ScheduleFreeSgd { warmup_steps, r, weight_lr_power, .. } = *self;
        Weighting { warmup_steps, r, weight_lr_power }
    }
}

impl UpdateRule for ScheduleFreeSgd {
    const NAME: &'static str = "schedule_free_sgd";

    fn options(&self) -> Options {
        Options { weight_decay: WeightDecay::L2(self.weight_decay), ..Options::lr(self.lr) }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn validate(&self) -> Result<()> {
        let momentum = self.momentum;
        // As `schedulefree` requires; x = lerp(y, z, 1 − 1/β) needs β > 0.
        require(momentum > 0.0 && momentum < 1.0, Self::NAME, "momentum", momentum, "in (0, 1)")?;
        self.weighting().validate(Self::NAME)
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["z"]
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
        let interpolation = interpolation::<A>(self.weighting(), self.momentum, &mut tensor);
        tensor.apply(move |y, g, [z]: &mut [A; 1]| {
            interpolation.start(*y, z);
            interpolation.update(y, z, g);
        });
    }
}
