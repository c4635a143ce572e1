use crate::element::Element;
use crate::error::{Error, Result};
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, WeightDecay, check_non_negative};

/// Averaged SGD (Polyak & Juditsky 1992, with the decaying rate of Bottou 2012): SGD whose
/// rate decays with the step number, and which keeps the running average of the iterates.
///
/// ```math
/// \begin{aligned}
/// \theta &\leftarrow \theta\,(1 - \lambda_d\, \eta_{t-1}) - \eta_{t-1}\, g_t, \\
/// \bar\theta &\leftarrow \bar\theta + \mu_{t-1}\,(\theta - \bar\theta)
///   \quad (\bar\theta \leftarrow \theta \text{ while } \mu_{t-1} = 1), \\
/// \eta_t &= \frac{\eta}{(1 + \lambda_d\, \eta\, t)^{\alpha}}, \qquad
/// \mu_t = \frac{1}{\max(1,\ t - t_0)},
/// \end{aligned}
/// ```
///
/// from `$\eta_0 = \eta$` and `$\mu_0 = 1$`. `$g_t$` is the gradient, negated when `maximize`,
/// plus `$\lambda\theta$` when `weight_decay` λ is not 0. The average `$\bar\theta$` starts
/// moving only after step `$t_0$`; until then it is the parameter itself. The optimizer steps
/// the parameter θ; `$\bar\theta$` is state, for the caller to read.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.01 | PyTorch |
/// | `$\lambda_d$` | `lambd` | 1e-4 | PyTorch |
/// | `$\alpha$` | `alpha` | 0.75 | PyTorch |
/// | `$t_0$` | `t0` | 1e6 | PyTorch |
/// | `$\lambda$` | `weight_decay` | 0 | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// State: `ax` (`$\bar\theta$`, zero before the first step) and the per-tensor scalars `eta`
/// (`$\eta_t$`) and `mu` (`$\mu_t$`), kept in `f64` and rounded to the element type where they
/// are used, as PyTorch keeps them as 0-D tensors of the default dtype. Matches PyTorch's
/// `ASGD(lr, lambd, alpha, t0, weight_decay, maximize=maximize)` with the default dtype equal
/// to the element type. `$\eta_t$` follows the group's current rate η (a schedule's); its start
/// `$\eta_0$` is the `lr` field, where PyTorch takes the rate of the tensor's first step, so
/// they differ only when a schedule sets a first rate other than `lr`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Asgd, Optimizer};
///
/// // No rate decay (λ_d = 0), and the average moves from step t0 + 2 on (μ₁ = 1, μ₂ = 1/2).
/// let mut opt = Optimizer::new(Asgd { lr: 0.5, lambd: 0.0, t0: 0.0, ..Asgd::default() })?;
/// let mut w = array![1.0_f64];
/// for _ in 0..3 {
///     opt.step("w", &mut w, &array![1.0])?;
/// }
/// assert_eq!(w, array![-0.5]); // 1, 0.5, 0, -0.5
/// let state = opt.state_of("w").unwrap();
/// assert_eq!(state.buffer("ax").unwrap()[[0]], -0.25); // the mean of 0 and -0.5
/// assert_eq!(state.scalars().collect::<Vec<_>>(), [("eta", 0.5), ("mu", 1.0 / 3.0)]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Asgd {
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors), and the first step's `$\eta_0$`.
    pub lr: f64,
    /// Decay term `$\lambda_d$` of the rate, which also shrinks θ by `$1 - \lambda_d\eta_{t-1}$`
    /// (finite, ≥ 0).
    pub lambd: f64,
    /// Power α of the rate's decay (finite, ≥ 0).
    pub alpha: f64,
    /// The step `$t_0$` after which the average starts to move (not NaN).
    pub t0: f64,
    /// L2 weight decay λ added to the gradient as λθ (finite, ≥ 0).
    pub weight_decay: f64,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for Asgd {
    fn default() -> Self {
        Asgd { lr: 0.01, lambd: 1e-4, alpha: 0.75, t0: 1e6, weight_decay: 0.0, maximize: false }
    }
}

impl UpdateRule for Asgd {
    const NAME: &'static str = "asgd";

    fn options(&self) -> Options {
        let weight_decay = WeightDecay::L2(self.weight_decay);
        Options { lr: self.lr, weight_decay, maximize: self.maximize }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["ax"]
    }

    fn scalar_names(&self) -> &'static [&'static str] {
        &["eta", "mu"]
    }

    fn initial_value(&self, name: &str) -> f64 {
        match name {
            // The rule has no access to the current (scheduled) rate here: see the docs.
            "eta" => self.lr,
            "mu" => 1.0,
            _ => 0.0,
        }
    }

    fn check_scalar(&self, name: &str, value: f64) -> Result<(), &'static str> {
        match name {
            "eta" if !(value.is_finite() && value >= 0.0) => Err("finite and >= 0 (a rate)"),
            // 0 with t0 = −∞.
            "mu" if !(0.0..=1.0).contains(&value) => Err("in [0, 1] (1 / max(1, t - t0))"),
            _ => Ok(()),
        }
    }

    fn validate(&self) -> Result<()> {
        check_non_negative(Self::NAME, "lambd", self.lambd)?;
        check_non_negative(Self::NAME, "alpha", self.alpha)?;
        if self.t0.is_nan() {
            let requirement = "a number (any, infinite included)";
            return Err(Error::InvalidHyperparameter {
                rule: Self::NAME,
                key: "t0",
                value: self.t0,
                requirement,
            });
        }
        Ok(())
    }

    fn step<A: Element>(&self, mut tensor: TensorStep<'_, A>) {
        let (t, lr) = (tensor.step() as f64, tensor.lr());
        let [eta, mu] = tensor.scalars() else {
            unreachable!("the registry keeps one value per scalar name")
        };
        // PyTorch reads η and μ from 0-D tensors of the element type and computes the
        // shrink factor from η in f64.
        let (eta_now, mu_now) = (A::from_f64(*eta), A::from_f64(*mu));
        let shrink = A::from_f64(1.0 - self.lambd * eta_now.into_f64());
        *eta = lr / (1.0 + self.lambd * lr * t).powf(self.alpha);
        let since_t0 = t - self.t0;
        *mu = 1.0 / if since_t0 > 1.0 { since_t0 } else { 1.0 };
        // PyTorch copies θ while μ is 1 rather than compute θ̄ + (θ − θ̄), which may differ.
        let copy = mu_now == A::one();
        tensor.apply(move |p, g, [ax]: &mut [A; 1]| {
            *p = *p * shrink;
            *p = *p - eta_now * g;
            *ax = if copy { *p } else { *ax + (*p - *ax) * mu_now };
        });
    }
}
