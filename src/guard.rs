//! Non-finite gradients: what a step does when one arrives, and how it reports back.

use ndarray::{ArrayView, Dimension};

use crate::element::Element;

/// What a step does with a gradient that holds NaN or infinity
/// ([`Optimizer::set_non_finite`](crate::Optimizer::set_non_finite)).
///
/// The check covers every tensor of the call before any update: for
/// [`step_all`](crate::Optimizer::step_all) one non-finite gradient anywhere in the batch
/// refuses or skips the whole batch. It costs one read of each gradient, so the default is
/// PyTorch's behaviour: no check. The gradients of tensors in
/// [frozen](crate::Optimizer::freeze) groups are not checked, as they are not used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum NonFinite {
    /// No check: NaN and infinity flow into parameters and state, as in PyTorch.
    #[default]
    Ignore,
    /// Return [`Error::NonFiniteGradient`](crate::Error::NonFiniteGradient) naming the first
    /// such tensor; nothing changes.
    Refuse,
    /// Change nothing and report [`StepOutcome::Skipped`], as mixed-precision loss scaling
    /// skips the step of an overflowed gradient.
    Skip,
}

/// What a successful [`step`](crate::Optimizer::step),
/// [`step_all`](crate::Optimizer::step_all) or [`step_model`](crate::Optimizer::step_model)
/// did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepOutcome {
    /// Every tensor was updated, except those of [frozen](crate::Optimizer::freeze) groups.
    Stepped {
        /// The L2 norm of the call's gradients before clipping (the value PyTorch's
        /// `clip_grad_norm_` returns), when a norm [`Clip`](crate::Clip) computed it; the
        /// gradients of frozen tensors are not part of it.
        grad_norm: Option<f64>,
    },
    /// [`NonFinite::Skip`] found NaN or infinity in the gradient of batch entry `index` (0 for
    /// [`step`](crate::Optimizer::step)); nothing changed, step counts included.
    Skipped {
        /// The position in the batch of the first non-finite gradient.
        index: usize,
    },
    /// Every tensor of the call is in a [frozen](crate::Optimizer::freeze) group: nothing
    /// changed, step counts included, and no gradient was looked at.
    Frozen,
}

/// Whether every element of `grad` is finite.
pub(crate) fn all_finite<A: Element, D: Dimension>(grad: &ArrayView<'_, A, D>) -> bool {
    grad.fold(true, |finite, g| finite & g.is_finite())
}
