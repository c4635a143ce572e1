use ndarray::{ArrayView, ArrayViewMut, IxDyn, Zip};

use crate::element::Element;
use crate::error::Result;
use crate::kernel::{Split, Stage, TensorStep};
use crate::rule::{
    Options, Reduction, ReductionSums, UpdateRule, WeightDecay, check_decay, check_non_negative,
    check_positive, check_unit,
};

/// Prodigy (Mishchenko & Defazio 2024): Adam whose step size `$d$` estimates the distance
/// to the solution from the gradients seen so far, exactly as `prodigyopt.Prodigy` (1.1.2).
///
/// One estimate `$d$` serves the whole optimizer. Step `$k$` (from 0) with the gradient
/// `$g$` of every tensor, its initial value `$\theta_0$` and `$\eta$` the largest current
/// learning rate of the Prodigy groups:
///
/// ```math
/// \begin{aligned}
/// \hat\eta &= d_k\, \eta\, b_k, \qquad b_k = \frac{\sqrt{1 - \beta_2^{k+1}}}{1 - \beta_1^{k+1}}
///   \text{ with bias correction, else } 1, \\
/// m &\leftarrow \beta_1 m + d_k (1 - \beta_1)\, g, \qquad
/// v \leftarrow \beta_2 v + d_k^2 (1 - \beta_2)\, g^2, \\
/// s &\leftarrow \beta_3 s + \frac{d_k}{d_0}\, \hat\eta\, g
///   \quad (\tfrac{d_k}{d_0} d_k\, g \text{ with safeguard\_warmup}), \\
/// r_{k+1} &= \beta_3 r_k + \frac{d_k}{d_0}\, \hat\eta \sum_{\text{tensors}} \langle g, \theta_0 - \theta\rangle,
/// \qquad \hat d = d_{\text{coef}}\, \frac{r_{k+1}}{\sum_{\text{tensors}} \lVert s \rVert_1}, \\
/// d_{\max} &\leftarrow \max(d_{\max}, \hat d), \qquad
/// d_{k+1} = \min\bigl(d_{\max},\ \gamma\, d_k'\bigr),
///   \quad d_k' = \max(d_k, \hat d) \text{ while } d_k = d_0, \text{ else } d_k, \\
/// \theta &\leftarrow \theta - \hat\eta\, \frac{m}{\sqrt{v} + d_{k+1}\,\epsilon}
///   \qquad \Bigl(\theta - \hat\eta\, d_{k+1} \frac{g}{\sqrt{v} + d_{k+1}\,\epsilon}
///   \text{ when } \beta_1 = 0\Bigr),
/// \end{aligned}
/// ```
///
/// with `$\gamma$` the `growth_rate`. Weight decay λ is added to the gradient
/// (`$g + \lambda\theta$`) or, with `decouple`, applied as
/// `$\theta \leftarrow \theta - \lambda\hat\eta\,\theta$` before the update. When every
/// `$s$` is zero (`$\sum \lVert s\rVert_1 = 0$`, e.g. zero gradients) nothing moves and the
/// shared values stay, as prodigyopt returns early (the moments and `$s$` are updated all
/// the same). A group at learning rate 0 updates neither its moments nor `$s$` nor the sums,
/// but its parameters still take the second pass with `$\hat\eta$`, as in prodigyopt.
///
/// The step needs every tensor before any moves, so Prodigy is the first rule with a
/// [reduction](UpdateRule::reduction): it steps through [`Optimizer::step_all`] and
/// [`Optimizer::step_model`] (and [`MultiSteps`](crate::MultiSteps)); a single-tensor
/// [`Optimizer::step`] refuses with [`Error::ReductionNeedsBatch`](crate::Error::ReductionNeedsBatch).
/// Tensors of frozen groups are left out, as prodigyopt leaves out tensors without
/// gradients. The sums over elements are in `f64`, in blocks of 256 in logical order,
/// added exactly ([`ReductionSums`]), so they do not depend on the order of the tensors,
/// memory layout or thread count, and a [sharded step](crate::ShardedOptimizer) gives one
/// process's bits on any number of ranks. The shared scalars `d`, `d_max`, `d_numerator` (`$r$`) and
/// `k` are the optimizer's, kept in `f64` and checkpointed by name.
///
/// Groups: as in prodigyopt, `$d$` and its update use the first Prodigy group's settings,
/// and every Prodigy group must be at the largest of their current rates or at 0
/// ([`Error::UnequalGroupLr`](crate::Error::UnequalGroupLr)). Groups may differ in
/// `weight_decay`, `eps` and `safeguard_warmup`; prodigyopt reads the other settings from its
/// first group for all, so a group that differs in one of them is refused
/// ([`Error::ReductionSettingDiffers`](crate::Error::ReductionSettingDiffers)) rather than
/// stepped with a value it was not given.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 1.0 | prodigyopt |
/// | `$\beta_1$` | `beta1` | 0.9 | prodigyopt |
/// | `$\beta_2$` | `beta2` | 0.999 | prodigyopt |
/// | `$\beta_3$` | `beta3` | `None`: `$\sqrt{\beta_2}$` | prodigyopt |
/// | `$\epsilon$` | `eps` | 1e-8 | prodigyopt |
/// | `$\lambda$` | `weight_decay` | 0 | prodigyopt |
/// | | `decouple` | `true` | prodigyopt |
/// | | `use_bias_correction` | `false` | prodigyopt |
/// | | `safeguard_warmup` | `false` | prodigyopt |
/// | `$d_0$` | `d0` | 1e-6 | prodigyopt |
/// | `$d_{\text{coef}}$` | `d_coef` | 1.0 | prodigyopt |
/// | `$\gamma$` | `growth_rate` | `None`: ∞ | prodigyopt |
///
/// State per tensor: `s`, `p0` (`$\theta_0$`, the parameter at its first step), `exp_avg`
/// (`$m$`, not kept when β₁ = 0) and `exp_avg_sq` (`$v$`), prodigyopt's names. Matches
/// `prodigyopt.Prodigy(lr, betas=(beta1, beta2), beta3, eps, weight_decay, decouple,
/// use_bias_correction, safeguard_warmup, d0, d_coef, growth_rate)` with `slice_p=1` and no
/// FSDP.
///
/// [`Optimizer::step`]: crate::Optimizer::step
/// [`Optimizer::step_all`]: crate::Optimizer::step_all
/// [`Optimizer::step_model`]: crate::Optimizer::step_model
///
/// ```
/// use ndarray::{Array1, array};
/// use ndarray_optim::{Optimizer, ParamGrad, Prodigy};
///
/// // Minimise ½‖w − 3‖² without choosing a step size.
/// let mut opt = Optimizer::new(Prodigy::default())?;
/// let mut w = array![0.0_f64, 1.0];
/// for _ in 0..200 {
///     let grad: Array1<f64> = &w - 3.0;
///     opt.step_all(&mut [ParamGrad::new("w", &mut w, &grad)])?;
/// }
/// assert!(w.iter().all(|&x| (x - 3.0).abs() < 0.1));
/// assert!(opt.shared("d").unwrap() > 1e-3); // d grew from 1e-6
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Prodigy {
    /// Learning rate η, a factor on the estimated step size (finite, ≥ 0).
    pub lr: f64,
    /// Decay β₁ of the first moment, in [0, 1); 0 keeps no first moment.
    pub beta1: f64,
    /// Decay β₂ of the second moment, in [0, 1).
    pub beta2: f64,
    /// Decay β₃ of the running sums of the estimate, in [0, 1]; `None` for `$\sqrt{\beta_2}$`.
    pub beta3: Option<f64>,
    /// ε, times the current `$d$`, added to `$\sqrt{v}$` (finite, > 0).
    pub eps: f64,
    /// Weight decay λ (finite, ≥ 0).
    pub weight_decay: f64,
    /// Apply weight decay to the parameter (AdamW style) rather than to the gradient.
    pub decouple: bool,
    /// Adam's bias correction of the step size.
    pub use_bias_correction: bool,
    /// Leave the learning rate out of `$s$`, against instability during warm-up.
    pub safeguard_warmup: bool,
    /// The initial estimate `$d_0$` (finite, > 0).
    pub d0: f64,
    /// Factor on the estimate (finite, > 0).
    pub d_coef: f64,
    /// The largest factor by which `$d$` grows per step (finite, > 0); `None` for no limit.
    pub growth_rate: Option<f64>,
}

impl Default for Prodigy {
    fn default() -> Self {
        Prodigy {
            lr: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            beta3: None,
            eps: 1e-8,
            weight_decay: 0.0,
            decouple: true,
            use_bias_correction: false,
            safeguard_warmup: false,
            d0: 1e-6,
            d_coef: 1.0,
            growth_rate: None,
        }
    }
}

/// The shared scalars, in the order of [`Reduction::shared`].
const SHARED: &[&str] = &["d", "d_max", "d_numerator", "k"];
/// The partial sums: the weighted `$\langle g, \theta_0 - \theta\rangle$` and `$\lVert s\rVert_1$`.
const SUMS: usize = 2;

/// Python's `max(a, b)` and `min(a, b)`: the first argument unless the second compares
/// greater (smaller), so that a NaN second argument is dropped as prodigyopt drops it.
fn py_max(a: f64, b: f64) -> f64 {
    if b > a { b } else { a }
}

fn py_min(a: f64, b: f64) -> f64 {
    if b < a { b } else { a }
}

impl Prodigy {
    fn beta3(&self) -> f64 {
        self.beta3.unwrap_or_else(|| self.beta2.sqrt())
    }

    /// `$\hat\eta = d\,\eta\,b_k$` of the step with shared scalars `shared` (before the
    /// combination) and largest rate `lr`.
    fn dlr(&self, shared: &[f64], lr: f64) -> f64 {
        let (d, k) = (shared[0], shared[3]);
        let bias_correction = if self.use_bias_correction {
            (1.0 - self.beta2.powf(k + 1.0)).powf(0.5) / (1.0 - self.beta1.powf(k + 1.0))
        } else {
            1.0
        };
        d * lr * bias_correction
    }

    /// The gradient of the update: the stage's, plus λθ for coupled decay.
    fn grad<A: Element>(&self, stage: Stage<A>) -> impl Fn(A, A) -> A + Copy {
        let coupled = self.weight_decay != 0.0 && !self.decouple;
        let decay = A::from_f64(self.weight_decay);
        move |g, p| {
            let g = stage.grad(g, p);
            if coupled { g + decay * p } else { g }
        }
    }
}

/// The first pass over one tensor, its buffers taken apart (`exp_avg` only with β₁ > 0).
struct FirstPass<'a, A> {
    param: ArrayViewMut<'a, A, IxDyn>,
    grad: ArrayView<'a, A, IxDyn>,
    s: ArrayViewMut<'a, A, IxDyn>,
    p0: ArrayViewMut<'a, A, IxDyn>,
    exp_avg: Option<ArrayViewMut<'a, A, IxDyn>>,
    exp_avg_sq: ArrayViewMut<'a, A, IxDyn>,
    stage: Stage<A>,
}

impl UpdateRule for Prodigy {
    const NAME: &'static str = "prodigy";

    fn options(&self) -> Options {
        // Decay scales with the estimated step size, so the rule applies it (see above).
        Options { lr: self.lr, weight_decay: WeightDecay::L2(0.0), maximize: false }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn cycled_momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.beta1)
    }

    fn validate(&self) -> Result<()> {
        check_decay(Self::NAME, "beta1", self.beta1)?;
        check_decay(Self::NAME, "beta2", self.beta2)?;
        if let Some(beta3) = self.beta3 {
            check_unit(Self::NAME, "beta3", beta3)?;
        }
        check_positive(Self::NAME, "eps", self.eps)?;
        check_non_negative(Self::NAME, "weight_decay", self.weight_decay)?;
        check_positive(Self::NAME, "d0", self.d0)?;
        check_positive(Self::NAME, "d_coef", self.d_coef)?;
        if let Some(growth_rate) = self.growth_rate {
            check_positive(Self::NAME, "growth_rate", growth_rate)?;
        }
        Ok(())
    }

    fn state_names(&self) -> &'static [&'static str] {
        if self.beta1 > 0.0 {
            &["s", "p0", "exp_avg", "exp_avg_sq"]
        } else {
            &["s", "p0", "exp_avg_sq"]
        }
    }

    fn non_negative_state(&self) -> &'static [&'static str] {
        &["exp_avg_sq"]
    }

    fn initial_value(&self, name: &str) -> f64 {
        match name {
            "d" | "d_max" => self.d0,
            _ => 0.0,
        }
    }

    fn reduction(&self) -> Option<Reduction> {
        Some(Reduction { shared: SHARED, sums: SUMS })
    }

    /// prodigyopt reads the betas, `decouple`, `use_bias_correction`, `d_coef` and
    /// `growth_rate` from its first group for every group, and compares `d` with the last
    /// group's `d0`; each group keeps its own `lr` (see [`Error::UnequalGroupLr`](crate::Error::UnequalGroupLr)),
    /// `weight_decay`, `eps` and `safeguard_warmup`.
    fn reduction_mismatch(&self, first: &Self) -> Option<&'static str> {
        let bits = |value: f64| value.to_bits();
        [
            ("beta1", bits(self.beta1) != bits(first.beta1)),
            ("beta2", bits(self.beta2) != bits(first.beta2)),
            ("beta3", self.beta3.map(bits) != first.beta3.map(bits)),
            ("decouple", self.decouple != first.decouple),
            ("use_bias_correction", self.use_bias_correction != first.use_bias_correction),
            ("d0", bits(self.d0) != bits(first.d0)),
            ("d_coef", bits(self.d_coef) != bits(first.d_coef)),
            ("growth_rate", self.growth_rate.map(bits) != first.growth_rate.map(bits)),
        ]
        .into_iter()
        .find_map(|(key, differs)| differs.then_some(key))
    }

    fn check_shared(&self, name: &str, value: f64) -> Result<(), &'static str> {
        let valid = match name {
            "d" | "d_max" => value.is_finite() && value > 0.0,
            "k" => value.is_finite() && value >= 0.0 && value.fract() == 0.0,
            _ => value.is_finite(),
        };
        if valid {
            Ok(())
        } else if name == "k" {
            Err("a whole number >= 0")
        } else if name == "d_numerator" {
            Err("finite")
        } else {
            Err("finite and > 0")
        }
    }

    fn reduce<A: Element>(&self, tensor: TensorStep<'_, A>, sums: &mut ReductionSums) {
        let shared = tensor.shared();
        let (d, first_step, moves) = (shared[0], tensor.step() == 1, tensor.lr() > 0.0);
        let dlr = self.dlr(shared, tensor.reduction_lr());
        let pass = if self.beta1 > 0.0 {
            let Split { param, grad, buffers: [s, p0, m, v], stage, .. } = tensor.split::<4>();
            FirstPass { param, grad, s, p0, exp_avg: Some(m), exp_avg_sq: v, stage }
        } else {
            let Split { param, grad, buffers: [s, p0, v], stage, .. } = tensor.split::<3>();
            FirstPass { param, grad, s, p0, exp_avg: None, exp_avg_sq: v, stage }
        };
        let FirstPass { param, grad, mut s, mut p0, exp_avg, mut exp_avg_sq, stage } = pass;
        if first_step {
            p0.assign(&param);
        }
        if !moves {
            return;
        }
        let grad_of = self.grad(stage);
        // prodigyopt: `(d / d0) * dlr * dot(g, p0 - p)`, the dot product in f64 here.
        let dot = grad
            .iter()
            .zip(&param)
            .zip(&p0)
            .map(|((&g, &p), &p0)| grad_of(g, p).into_f64() * (p0 - p).into_f64());
        sums.add_blocks(0, (d / self.d0) * dlr, dot);
        if let Some(mut m) = exp_avg {
            let (beta1, weight) = (A::from_f64(self.beta1), A::from_f64(d * (1.0 - self.beta1)));
            Zip::from(&mut m).and(&grad).and(&param).for_each(|m, &g, &p| {
                *m = *m * beta1 + weight * grad_of(g, p);
            });
        }
        let (beta2, weight) = (A::from_f64(self.beta2), A::from_f64(d * d * (1.0 - self.beta2)));
        let beta3 = A::from_f64(self.beta3());
        let s_weight = A::from_f64(if self.safeguard_warmup {
            (d / self.d0) * d
        } else {
            (d / self.d0) * dlr
        });
        Zip::from(&mut exp_avg_sq).and(&mut s).and(&grad).and(&param).for_each(|v, s, &g, &p| {
            let g = grad_of(g, p);
            *v = *v * beta2 + weight * g * g;
            *s = *s * beta3 + s_weight * g;
        });
        sums.add_blocks(1, 1.0, s.iter().map(|&s| s.abs().into_f64()));
    }

    // `d_denom` > 0 needs a group at a rate > 0, so the largest rate is > 0 here, as
    // prodigyopt's update of `d` requires: the rate itself is not needed.
    fn combine(&self, shared: &mut [f64], totals: &[f64], _lr: f64) -> bool {
        let (delta_numerator, d_denom) = (totals[0], totals[1]);
        if d_denom == 0.0 {
            // Nothing to estimate from: prodigyopt returns before anything moves.
            return false;
        }
        let [d, d_max, d_numerator, k] = shared else {
            unreachable!("the optimizer keeps one value per shared name")
        };
        *d_numerator = *d_numerator * self.beta3() + delta_numerator;
        let d_hat = self.d_coef * *d_numerator / d_denom;
        if *d == self.d0 {
            *d = py_max(*d, d_hat);
        }
        *d_max = py_max(*d_max, d_hat);
        *d = py_min(*d_max, *d * self.growth_rate.unwrap_or(f64::INFINITY));
        *k += 1.0;
        true
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let (before, d) = (tensor.shared_before(), tensor.shared()[0]);
        let dlr = self.dlr(before, tensor.reduction_lr());
        let d_eps = A::from_f64(d * self.eps);
        let decoupled = self.weight_decay != 0.0 && self.decouple;
        let decay = A::from_f64(-self.weight_decay * dlr);
        let decay = move |p: A| if decoupled { p + decay * p } else { p };
        if self.beta1 > 0.0 {
            let neg_dlr = A::from_f64(-dlr);
            tensor.apply(move |p, _, [_, _, m, v]: &mut [A; 4]| {
                let denom = v.sqrt() + d_eps;
                *p = decay(*p) + neg_dlr * (*m / denom);
            });
        } else {
            let (coupled, lambda) =
                (self.weight_decay != 0.0 && !self.decouple, A::from_f64(self.weight_decay));
            let neg_dlr_d = A::from_f64(-dlr * d);
            tensor.apply(move |p, g, [_, _, v]: &mut [A; 3]| {
                let g = if coupled { g + lambda * *p } else { g };
                let denom = v.sqrt() + d_eps;
                *p = decay(*p) + neg_dlr_d * (g / denom);
            });
        }
    }
}
