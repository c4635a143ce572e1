//! The options every PyTorch rule shares, `maximize` and `weight_decay`: what happens to the
//! parameter and gradient before a rule's own update, in PyTorch's order.

use ndarray::Dimension;

use crate::element::Element;
use crate::kernel::{StateSlots, TensorStep};

/// How weight decay λ enters a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Decay {
    /// No decay (λ = 0): the gradient reaches the update untouched.
    Off,
    /// L2 regularisation: $g \leftarrow g + \lambda\theta$, with θ before the update.
    L2(f64),
    /// Decoupled decay (Loshchilov & Hutter): $\theta \leftarrow \theta\,(1 - \eta\lambda)$
    /// before the update; the factor is given.
    Decoupled(f64),
}

impl Decay {
    /// PyTorch's reading of `weight_decay` (λ) and `decoupled_weight_decay` at rate `lr`: no
    /// decay at all when λ = 0, so that the common path has no `0 · θ` term (which would
    /// turn an infinite θ into NaN).
    pub(crate) fn new(weight_decay: f64, decoupled: bool, lr: f64) -> Self {
        match (weight_decay == 0.0, decoupled) {
            (true, _) => Decay::Off,
            (false, false) => Decay::L2(weight_decay),
            (false, true) => Decay::Decoupled(1.0 - lr * weight_decay),
        }
    }

    /// L2 decay, the only form the rules without `decoupled_weight_decay` have.
    pub(crate) fn l2(weight_decay: f64) -> Self {
        Decay::new(weight_decay, false, 0.0)
    }
}

/// Runs `update(p, g, s)` over the tensor with the gradient that PyTorch's rules feed their
/// update: negated when `maximize` (the step then ascends), then with the decay applied.
///
/// The choice between decay forms is made here once per step, so each form is its own
/// branch-free element loop. Negation is a multiplication by ±1, which is exact, so a rule
/// without these options computes exactly what it did before they existed.
#[inline]
pub(crate) fn apply<A, D, S, F>(
    tensor: TensorStep<'_, A, D>,
    maximize: bool,
    decay: Decay,
    update: F,
) where
    A: Element,
    D: Dimension,
    S: StateSlots<A>,
    F: Fn(&mut A, A, &mut S) + Sync,
{
    let sign = if maximize { -A::one() } else { A::one() };
    match decay {
        Decay::Off => tensor.apply(move |p, g, s| update(p, sign * g, s)),
        Decay::L2(weight_decay) => {
            let weight_decay = A::from_f64(weight_decay);
            tensor.apply(move |p, g, s| {
                let g = sign * g + weight_decay * *p;
                update(p, g, s);
            });
        }
        Decay::Decoupled(factor) => {
            let factor = A::from_f64(factor);
            tensor.apply(move |p, g, s| {
                *p = *p * factor;
                update(p, sign * g, s);
            });
        }
    }
}

/// `torch.maximum`: the larger value, NaN if either is NaN (where `f64::max` would drop it).
#[inline]
pub(crate) fn maximum<A: Element>(a: A, b: A) -> A {
    if a.is_nan() || a > b { a } else { b }
}
