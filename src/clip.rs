//! Gradient clipping, as PyTorch's `clip_grad_value_` and `clip_grad_norm_` do it, fused into
//! the optimizer's step.
//!
//! Gradients reach the optimizer as read-only views and are never copied: the clip becomes a
//! per-element transform of the gradient inside the kernel's single pass (a clamp, or a
//! multiplication by one coefficient per tensor or per step), so clipping allocates nothing.

use ndarray::{ArrayView, Dimension};

use crate::check::check_positive;
use crate::element::Element;
use crate::error::Result;
use crate::exact_sum::ExactSum;
use crate::kernel::{GradTransform, sum_in_order, sum_slice_in_order};

/// PyTorch's `clip_grad_norm_` adds this to the norm before dividing by it.
const NORM_EPS: f64 = 1e-6;

/// How an [`Optimizer`](crate::Optimizer) clips gradients before every step
/// ([`Optimizer::set_clip`](crate::Optimizer::set_clip)).
///
/// | variant | each gradient element `$g$` becomes | PyTorch |
/// | --- | --- | --- |
/// | `Value { clip_value: c }` | `$\min(\max(g, -c), c)$` | `clip_grad_value_(p, c)` |
/// | `Norm { max_norm: m }` | `$g \cdot \min\bigl(m / (\lVert G \rVert_2 + 10^{-6}),\ 1\bigr)$`, `$G$` the tensor's own gradient | `clip_grad_norm_(p, m)` on each tensor alone |
/// | `GlobalNorm { max_norm: m }` | the same with `$\lVert G \rVert_2 = \sqrt{\sum_i \lVert G_i \rVert_2^2}$` over every tensor of the step | `clip_grad_norm_(params, m)` |
///
/// The coefficient is computed and applied in the element type, as PyTorch multiplies the
/// gradient in place by it; the norm itself is accumulated in `f64`, and the global norm's
/// sum of squares is exact but for its final rounding (squares added in `f64` in blocks of
/// 256 elements, the blocks' sums added exactly), so it is the same in any order of the
/// tensors and over any [sharding](crate::shard) of them. With `Norm`, the norm a batch step
/// reports ([`StepOutcome`](crate::StepOutcome)) is `$\sqrt{\sum_i \lVert G_i \rVert_2^2}$` of
/// the tensors' own norms, their squares likewise added exactly. A coefficient of 1 (the
/// norm is within bounds) leaves the gradient untouched. A NaN or infinite gradient makes the
/// norm non-finite and, as in PyTorch, the whole step's gradients NaN or zero: combine with
/// [`NonFinite`](crate::NonFinite) to refuse or skip such steps instead.
///
/// Global-norm clipping needs every gradient of the step before any update, so it works
/// through [`Optimizer::step_all`](crate::Optimizer::step_all) only. In serde formats a clip
/// reads and writes as `{"kind": "value", "clip_value": c}`, `{"kind": "norm", "max_norm":
/// m}` or `{"kind": "global_norm", "max_norm": m}`.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Clip, Optimizer, ParamGrad, Sgd, StepOutcome};
///
/// let mut opt = Optimizer::new(Sgd { lr: 1.0, ..Sgd::default() })?;
/// opt.set_clip(Some(Clip::GlobalNorm { max_norm: 1.0 }))?;
/// let (mut w, mut b) = (array![0.0_f64, 0.0], array![0.0_f64]);
/// let (gw, gb) = (array![3.0, 0.0], array![4.0]); // total norm 5
/// let outcome =
///     opt.step_all(&mut [ParamGrad::new("w", &mut w, &gw), ParamGrad::new("b", &mut b, &gb)])?;
/// assert_eq!(outcome, StepOutcome::Stepped { grad_norm: Some(5.0) });
/// assert!((w[0] + 0.6).abs() < 1e-6 && (b[0] + 0.8).abs() < 1e-6);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields))]
pub enum Clip {
    /// Clamp every element to `$[-c, c]$`.
    Value {
        /// The bound `$c$` (finite, > 0).
        clip_value: f64,
    },
    /// Scale each tensor's gradient so that its own L2 norm is at most `max_norm`.
    Norm {
        /// The largest norm `$m$` (finite, > 0).
        max_norm: f64,
    },
    /// Scale every gradient of a step by one coefficient so that their joint L2 norm is at
    /// most `max_norm`.
    GlobalNorm {
        /// The largest norm `$m$` (finite, > 0).
        max_norm: f64,
    },
}

impl Clip {
    /// Checks the bound: finite and > 0.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`](crate::Error::InvalidHyperparameter) with rule `"clip"`.
    pub fn validate(&self) -> Result<()> {
        let (key, value) = match *self {
            Clip::Value { clip_value } => ("clip_value", clip_value),
            Clip::Norm { max_norm } | Clip::GlobalNorm { max_norm } => ("max_norm", max_norm),
        };
        check_positive("clip", key, value)
    }
}

/// The L2 norm of a gradient, accumulated in `f64` in an order fixed by the elements' logical
/// (row-major) indices ([`sum_in_order`]), so that no memory layout changes a bit of it.
pub(crate) fn l2_norm<A: Element, D: Dimension>(grad: &ArrayView<'_, A, D>) -> f64 {
    let sum = match grad.as_slice() {
        Some(values) => sum_slice_in_order(values, square::<A>),
        None => sum_in_order(grad.iter().map(|&g| square(g))),
    };
    sum.sqrt()
}

/// The elements of a tensor whose squares the global norm adds in `f64` before adding the
/// block's sum exactly: blocks start at multiples of this in each tensor's logical order.
///
/// Within a block the order is fixed ([`sum_in_order`]); the blocks' sums are added exactly
/// ([`ExactSum`]), so the norm does not depend on the order of the tensors, nor on how a
/// tensor is cut into parts, as long as the cuts fall on block boundaries: a sharded step
/// ([`shard`](crate::shard)) cuts tensors there only.
pub(crate) const NORM_BLOCK: usize = 256;

/// Adds the squares of `grad`'s elements to `sum`, a block of [`NORM_BLOCK`] elements at a
/// time (the last may be shorter), in logical order.
pub(crate) fn add_squares<A: Element, D: Dimension>(
    sum: &mut ExactSum,
    grad: &ArrayView<'_, A, D>,
) {
    match grad.as_slice() {
        Some(values) => {
            for block in values.chunks(NORM_BLOCK) {
                sum.add(sum_slice_in_order(block, square::<A>));
            }
        }
        None => {
            let mut elements = grad.iter();
            for _ in 0..grad.len().div_ceil(NORM_BLOCK) {
                sum.add(sum_in_order(elements.by_ref().take(NORM_BLOCK).map(|&g| square(g))));
            }
        }
    }
}

/// The square of `g` in `f64`, the term of every norm here.
fn square<A: Element>(g: A) -> f64 {
    let g = g.into_f64();
    g * g
}

/// The transform that scales gradients of joint norm `norm` to at most `max_norm`:
/// `g * min(max_norm / (norm + 1e-6), 1)` in the element type, the identity when the
/// coefficient is 1 (multiplying by 1 changes no value).
pub(crate) fn norm_transform<A: Element>(max_norm: f64, norm: f64) -> GradTransform<A> {
    let coefficient = A::from_f64(max_norm) / (A::from_f64(norm) + A::from_f64(NORM_EPS));
    if coefficient >= A::one() {
        GradTransform::Identity
    } else {
        // Also for a NaN coefficient, which PyTorch's clamp keeps and multiplies in.
        GradTransform::Scale(coefficient)
    }
}
