use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, WeightDecay, check_decay, check_unit};

/// SGD with momentum (seed eq. 1–2).
///
/// The seed keeps an η-scaled velocity, `$v_t = \gamma v_{t-1} + \eta g_t$`,
/// `$\theta \leftarrow \theta - v_t$`. This crate keeps PyTorch's `momentum_buffer` instead,
///
/// ```math
/// b_t = \gamma\, b_{t-1} + g_t, \qquad \theta \leftarrow \theta - \eta\, b_t,
/// ```
///
/// which is the same trajectory (`$v_t = \eta b_t$`) while η is constant, and is what PyTorch
/// does when a schedule changes η: the rate applies at the moment of the update.
///
/// PyTorch's options: with `dampening` τ the buffer takes `$(1 - \tau) g_t$` instead of `$g_t$`
/// from the second step on (the first step sets `$b_1 = g_1$`); the gradient is negated when
/// `maximize` and gets `$\lambda\theta$` added when `weight_decay` λ is not 0, in that
/// order, before it enters the buffer.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.01 | common practice; PyTorch's `SGD` uses 0.001 |
/// | `$\gamma$` | `momentum` | 0.9 | the seed ("usually set to 0.9") |
/// | `$\tau$` | `dampening` | 0 | PyTorch |
/// | `$\lambda$` | `weight_decay` | 0 | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// State: `momentum_buffer` (`$b$`, zero before the first step); none at γ = 0, where the
/// rule is plain [`Sgd`](crate::Sgd) and τ has no effect. Matches PyTorch's
/// `SGD(lr, momentum, dampening, weight_decay, maximize)`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Momentum, Optimizer};
///
/// let mut opt = Optimizer::new(Momentum { lr: 0.5, momentum: 0.5, ..Momentum::default() })?;
/// let mut w = array![1.0_f64];
/// opt.step("w", &mut w, &array![1.0])?; // b = 1,   w = 1 - 0.5
/// opt.step("w", &mut w, &array![1.0])?; // b = 1.5, w = 0.5 - 0.75
/// assert_eq!(w, array![-0.25]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Momentum {
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// Momentum γ, in [0, 1).
    pub momentum: f64,
    /// Dampening τ of the gradient entering the buffer, in [0, 1].
    pub dampening: f64,
    /// L2 weight decay λ added to the gradient as λθ (finite, ≥ 0).
    pub weight_decay: f64,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for Momentum {
    fn default() -> Self {
        Momentum { lr: 0.01, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, maximize: false }
    }
}

impl UpdateRule for Momentum {
    const NAME: &'static str = "momentum";

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
        // PyTorch's SGD keeps no buffer at momentum 0, and dampening then has no effect.
        if self.momentum > 0.0 { &["momentum_buffer"] } else { &[] }
    }

    fn validate(&self) -> Result<()> {
        check_decay(Self::NAME, "momentum", self.momentum)?;
        check_unit(Self::NAME, "dampening", self.dampening)
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let (lr, momentum) = (A::from_f64(tensor.lr()), A::from_f64(self.momentum));
        // PyTorch's first step copies the gradient into the buffer undampened; the buffer is
        // zero then, so γ·0 + 1·g is that copy. Multiplying by 1 is exact: without dampening
        // this is the plain b = γb + g.
        let undampened = if tensor.step() == 1 { 1.0 } else { 1.0 - self.dampening };
        let undampened = A::from_f64(undampened);
        if self.momentum > 0.0 {
            tensor.apply(move |p, g, [b]: &mut [A; 1]| {
                *b = momentum * *b + undampened * g;
                *p = *p - lr * *b;
            });
        } else {
            tensor.apply(move |p, g, _: &mut [A; 0]| *p = *p - lr * g);
        }
    }
}
