use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{EpsPlacement, Options, UpdateRule, WeightDecay, check_eps, check_non_negative};

/// Adagrad (seed eq. 7): a per-element rate that shrinks with the sum of past squared
/// gradients.
///
/// ```math
/// G_t = G_{t-1} + g_t^2, \qquad
///   \theta \leftarrow \theta - \eta\,\frac{g_t}{\sqrt{G_t + \epsilon}}
/// ```
///
/// With [`EpsPlacement::Outside`] the denominator is `$\sqrt{G_t} + \epsilon$`, as in PyTorch.
///
/// PyTorch's options: step `$t$` uses the rate `$\eta / (1 + (t - 1)\,\kappa)$` with `lr_decay`
/// κ; `$G$` starts at `initial_accumulator_value` `$G_0$`; `$g_t$` is the gradient, negated when
/// `maximize`, plus `$\lambda\theta$` when `weight_decay` λ is not 0.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.01 | the seed ("most implementations use 0.01"); PyTorch's too |
/// | `$\epsilon$` | `eps` | 1e-8 | the seed; PyTorch uses 1e-10 |
/// | | `eps_placement` | [`EpsPlacement::Inside`] | the seed; PyTorch is `Outside` |
/// | `$\lambda$` | `weight_decay` | 0 | PyTorch |
/// | `$\kappa$` | `lr_decay` | 0 | PyTorch |
/// | `$G_0$` | `initial_accumulator_value` | 0 | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// State: `sum` (`$G$`). `Adagrad { eps: 1e-10, eps_placement: EpsPlacement::Outside, ..}`
/// matches PyTorch's `Adagrad(lr, lr_decay, weight_decay, initial_accumulator_value,
/// maximize=maximize)`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Adagrad, EpsPlacement, Optimizer};
///
/// let rule = Adagrad { lr: 0.1, eps: 0.0, eps_placement: EpsPlacement::Inside, ..Adagrad::default() };
/// let mut opt = Optimizer::new(rule)?;
/// let mut w = array![1.0_f64];
/// opt.step("w", &mut w, &array![3.0])?; // G = 9, w = 1 - 0.1 * 3 / 3
/// assert_eq!(w, array![0.9]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Adagrad {
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// Smoothing term ε (finite, ≥ 0).
    pub eps: f64,
    /// Whether ε goes inside or outside the square root.
    pub eps_placement: EpsPlacement,
    /// L2 weight decay λ added to the gradient as λθ (finite, ≥ 0).
    pub weight_decay: f64,
    /// Decay κ of the rate over steps (finite, ≥ 0).
    pub lr_decay: f64,
    /// The value `$G_0$` every element of `sum` starts at (finite, ≥ 0).
    pub initial_accumulator_value: f64,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for Adagrad {
    fn default() -> Self {
        Adagrad {
            lr: 0.01,
            eps: 1e-8,
            eps_placement: EpsPlacement::Inside,
            weight_decay: 0.0,
            lr_decay: 0.0,
            initial_accumulator_value: 0.0,
            maximize: false,
        }
    }
}

impl UpdateRule for Adagrad {
    const NAME: &'static str = "adagrad";

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
        &["sum"]
    }

    fn non_negative_state(&self) -> &'static [&'static str] {
        &["sum"]
    }

    fn validate(&self) -> Result<()> {
        check_eps(Self::NAME, "eps", self.eps)?;
        check_non_negative(Self::NAME, "lr_decay", self.lr_decay)?;
        check_non_negative(Self::NAME, "initial_accumulator_value", self.initial_accumulator_value)
    }

    fn initial_value(&self, _name: &str) -> f64 {
        self.initial_accumulator_value
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        // Exactly η when κ = 0: η / 1.
        let decayed = 1.0 + (tensor.step() - 1) as f64 * self.lr_decay;
        let lr = A::from_f64(tensor.lr() / decayed);
        let (eps_inside, eps_outside) = self.eps_placement.split::<A>(self.eps);
        tensor.apply(move |p, g, [sum]: &mut [A; 1]| {
            *sum = *sum + g * g;
            *p = *p - lr * (g / ((*sum + eps_inside).sqrt() + eps_outside));
        });
    }
}
