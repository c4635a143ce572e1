use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{EpsPlacement, Options, UpdateRule, WeightDecay, check_decay, check_eps};
use crate::rules::Ema;

/// RMSprop (seed eq. 16–17): Adagrad with a decaying average of squared gradients.
///
/// ```math
/// E[g^2]_t = \rho\, E[g^2]_{t-1} + (1 - \rho)\, g_t^2, \qquad
///   \theta \leftarrow \theta - \eta\,\frac{g_t}{\sqrt{E[g^2]_t + \epsilon}}
/// ```
///
/// With [`EpsPlacement::Outside`] the denominator is `$\sqrt{E[g^2]_t} + \epsilon$`, as in
/// PyTorch. The seed calls the decay γ; PyTorch calls it `alpha`.
///
/// PyTorch's options: `$g_t$` is the gradient, negated when `maximize`, plus `$\lambda\theta$`
/// when `weight_decay` λ is not 0. `centered` also averages the gradients,
/// `$\bar g_t = \rho\,\bar g_{t-1} + (1 - \rho)\, g_t$`, and divides by the root of the
/// variance estimate `$E[g^2]_t - \bar g_t^2$` instead (Graves 2013). With `momentum` μ > 0
/// the scaled gradient goes through a buffer, `$b_t = \mu\, b_{t-1} + g_t / d_t$` and
/// `$\theta \leftarrow \theta - \eta\, b_t$`, where `$d_t$` is the denominator above.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.001 | the seed (Hinton's suggestion); PyTorch uses 0.01 |
/// | `$\rho$` | `rho` | 0.9 | the seed; PyTorch's `alpha` is 0.99 |
/// | `$\epsilon$` | `eps` | 1e-8 | the seed and PyTorch |
/// | | `eps_placement` | [`EpsPlacement::Inside`] | the seed; PyTorch is `Outside` |
/// | `$\lambda$` | `weight_decay` | 0 | PyTorch |
/// | `$\mu$` | `momentum` | 0 | PyTorch |
/// | | `centered` | `false` | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// State: `square_avg` (`$E[g^2]$`), then `momentum_buffer` (`$b$`) when μ > 0, then `grad_avg`
/// (`$\bar g$`) when centered (PyTorch's names), all zero before the first step.
/// `RmsProp { lr: 0.01, rho: 0.99, eps_placement: EpsPlacement::Outside, ..}` matches
/// PyTorch's `RMSprop(lr, alpha, eps, weight_decay, momentum, centered, maximize=maximize)`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{EpsPlacement, Optimizer, RmsProp};
///
/// let rule = RmsProp { lr: 0.1, rho: 0.75, eps: 0.0, ..RmsProp::default() };
/// let mut opt = Optimizer::new(rule)?;
/// let mut w = array![1.0_f64];
/// opt.step("w", &mut w, &array![2.0])?; // E = 0.25 * 4 = 1, w = 1 - 0.1 * 2 / 1
/// assert_eq!(w, array![0.8]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct RmsProp {
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// Decay ρ of the squared-gradient average, in [0, 1).
    pub rho: f64,
    /// Smoothing term ε (finite, ≥ 0).
    pub eps: f64,
    /// Whether ε goes inside or outside the square root.
    pub eps_placement: EpsPlacement,
    /// L2 weight decay λ added to the gradient as λθ (finite, ≥ 0).
    pub weight_decay: f64,
    /// Momentum μ of the scaled gradient, in [0, 1); 0 keeps no buffer.
    pub momentum: f64,
    /// Divide by the root of the gradient's variance estimate instead of its second moment.
    pub centered: bool,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for RmsProp {
    fn default() -> Self {
        RmsProp {
            lr: 0.001,
            rho: 0.9,
            eps: 1e-8,
            eps_placement: EpsPlacement::Inside,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

/// The per-element coefficients of one step.
#[derive(Clone, Copy)]
struct Coefficients<A> {
    lr: A,
    rho: Ema<A>,
    eps_inside: A,
    eps_outside: A,
    momentum: A,
}

impl<A: Element> Coefficients<A> {
    /// Updates the averages and steps `p`; `buffer` and `grad_avg` are there when the options
    /// that need them are on, so each combination compiles to its own branch-free loop.
    #[inline(always)]
    fn update(
        self,
        p: &mut A,
        g: A,
        square_avg: &mut A,
        buffer: Option<&mut A>,
        grad_avg: Option<&mut A>,
    ) {
        *square_avg = self.rho.average(*square_avg, g * g);
        let variance = match grad_avg {
            Some(grad_avg) => {
                *grad_avg = self.rho.average(*grad_avg, g);
                *square_avg - *grad_avg * *grad_avg
            }
            None => *square_avg,
        };
        let denom = (variance + self.eps_inside).sqrt() + self.eps_outside;
        match buffer {
            Some(buffer) => {
                *buffer = self.momentum * *buffer + g / denom;
                *p = *p - self.lr * *buffer;
            }
            None => *p = *p - self.lr * (g / denom),
        }
    }
}

impl UpdateRule for RmsProp {
    const NAME: &'static str = "rmsprop";

    fn options(&self) -> Options {
        let weight_decay = WeightDecay::L2(self.weight_decay);
        Options { lr: self.lr, weight_decay, maximize: self.maximize }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn cycled_momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.momentum)
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn state_names(&self) -> &'static [&'static str] {
        match (self.momentum > 0.0, self.centered) {
            (false, false) => &["square_avg"],
            (true, false) => &["square_avg", "momentum_buffer"],
            (false, true) => &["square_avg", "grad_avg"],
            (true, true) => &["square_avg", "momentum_buffer", "grad_avg"],
        }
    }

    fn non_negative_state(&self) -> &'static [&'static str] {
        &["square_avg"]
    }

    fn validate(&self) -> Result<()> {
        check_decay(Self::NAME, "rho", self.rho)?;
        check_eps(Self::NAME, "eps", self.eps)?;
        check_decay(Self::NAME, "momentum", self.momentum)
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let (eps_inside, eps_outside) = self.eps_placement.split::<A>(self.eps);
        let c = Coefficients {
            lr: A::from_f64(tensor.lr()),
            rho: Ema::new(self.rho),
            eps_inside,
            eps_outside,
            momentum: A::from_f64(self.momentum),
        };
        match (self.momentum > 0.0, self.centered) {
            (false, false) => {
                tensor.apply(move |p, g, [sq]: &mut [A; 1]| c.update(p, g, sq, None, None));
            }
            (true, false) => {
                tensor.apply(move |p, g, [sq, b]: &mut [A; 2]| c.update(p, g, sq, Some(b), None));
            }
            (false, true) => {
                tensor.apply(move |p, g, [sq, a]: &mut [A; 2]| c.update(p, g, sq, None, Some(a)));
            }
            (true, true) => tensor.apply(move |p, g, [sq, b, a]: &mut [A; 3]| {
                c.update(p, g, sq, Some(b), Some(a));
            }),
        }
    }
}
