use crate::element::Element;
use crate::kernel::TensorStep;
use crate::rule::{Options, UpdateRule, WeightDecay};

/// Plain stochastic gradient descent.
///
/// ```math
/// \theta \leftarrow \theta - \eta\, g
/// ```
///
/// where `$g$` is the gradient, negated when `maximize`, plus `$\lambda\theta$` when
/// `weight_decay` λ is not 0 (PyTorch's L2 decay, in that order).
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.01 | common practice; PyTorch's `SGD` uses 0.001 |
/// | `$\lambda$` | `weight_decay` | 0 | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// No state. Matches PyTorch's `SGD(lr, weight_decay, maximize)`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Optimizer, Sgd};
///
/// let mut opt = Optimizer::new(Sgd { lr: 0.5, ..Sgd::default() })?;
/// let mut w = array![1.0_f64, 2.0];
/// opt.step("w", &mut w, &array![0.5, -1.0])?;
/// assert_eq!(w, array![0.75, 2.5]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Sgd {
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors).
    pub lr: f64,
    /// L2 weight decay λ added to the gradient as λθ (finite, ≥ 0).
    pub weight_decay: f64,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd { lr: 0.01, weight_decay: 0.0, maximize: false }
    }
}

impl UpdateRule for Sgd {
    const NAME: &'static str = "sgd";

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
        &[]
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let lr = A::from_f64(tensor.lr());
        tensor.apply(move |p, g, _: &mut [A; 0]| *p = *p - lr * g);
    }
}
