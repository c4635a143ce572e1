//! Optimizer state sharded across data-parallel ranks by elements (ZeRO stages 1 and 2).
//!
//! In data-parallel training every rank holds the whole model and, after the gradients are
//! averaged across ranks, applies the same update. The optimizer state is the largest memory
//! cost (two values per element for Adam), so each rank keeps the state of only a contiguous
//! `$1/N$` of the model's elements, steps those, and sends the updated parameters to the
//! others.
//!
//! - A [`ShardPlan`] lays every tensor out in one flat order (by name, each tensor in
//!   row-major order) and cuts it into `$N$` contiguous shards, one per rank, balanced to
//!   within [`SHARD_BLOCK`] elements whatever the tensor sizes: a large tensor is cut between
//!   ranks. It depends only on the names, shapes and `$N$`, so every rank computes the same.
//! - A [`ShardedOptimizer`] is one rank's share of an optimizer. Its
//!   [`step_all`](ShardedOptimizer::step_all) steps the rank's shard of the flat parameters
//!   with its shard of the averaged gradients, with global-norm clipping and the non-finite
//!   check over the whole model through an all-reduce that the caller supplies.
//! - [`merge`] and [`split`] turn the per-rank checkpoints into one full checkpoint, tensor by
//!   tensor and by name, and back, for any world size: train on 4 ranks, resume on 2 or 1.
//!
//! A rule that updates element by element ([`UpdateRule::elementwise`]) steps a part of a
//! tensor exactly as it steps that part inside the whole tensor, and the global norm is an
//! exact sum, so a sharded step gives the same bits as one process's
//! [`Optimizer::step_all`](crate::Optimizer::step_all) of the whole model with the same
//! averaged gradients, on any number of ranks. That holds for low-precision state too:
//! bfloat16 ([`StatePrecision::Bf16`](crate::StatePrecision::Bf16)) is rounded element by
//! element, and 8-bit state ([`StatePrecision::Int8`](crate::StatePrecision::Int8)) is
//! quantized in blocks of [`BLOCK`](crate::compact::BLOCK) elements, on whose boundaries every
//! cut falls, so a part keeps its blocks' codes and scales. Which tensors keep 8 bits is
//! decided by the size of the whole tensor: a rank's part of a large tensor keeps 8 bits
//! however small the part, as it would in one process.
//!
//! A rule with a [reduction](crate::UpdateRule::reduction) over every tensor
//! ([`Prodigy`](crate::Prodigy)) sums each tensor's terms in blocks of
//! [`ReductionSums::BLOCK`](crate::rule::ReductionSums::BLOCK) elements, on whose boundaries
//! the cuts fall too, and adds the blocks' values exactly; the ranks add up their sums in a
//! second all-reduce, so its estimate, and every step after it, is one process's too.
//!
//! Rules that look at whole tensors ([`Lamb`](crate::Lamb), [`Muon`](crate::Muon),
//! [`Adafactor`](crate::Adafactor)) and clipping each tensor by its own norm
//! ([`Clip::Norm`]) need a plan that keeps tensors whole
//! ([`ShardPlan::whole_tensors`]): each rank steps whole tensors, in their shapes, and its
//! checkpoint holds their state whole, so the result is again one process's, bit for bit.
//! [`ShardPlan::for_optimizer`] chooses between the two kinds of plan by the optimizer's
//! rules and clipping.
//!
//! The crate does no communication itself: bring your own (MPI, sockets, threads); the
//! `data_parallel` example does it over MPI, with a reduce-scatter of the gradients and an
//! all-gather of the parameters.
//!
//! [`UpdateRule::elementwise`]: crate::UpdateRule::elementwise

mod checkpoints;
mod plan;
mod sharded;

pub use checkpoints::{merge, split};
pub use plan::{MAX_WORLD, Piece, PlannedTensor, SHARD_BLOCK, ShardPlan};
pub use sharded::ShardedOptimizer;

use crate::clip::Clip;
use crate::element::Element;
use crate::error::Error;
use crate::optimizer::Optimizer;
use crate::rule::UpdateRule;

/// Whether a part of a tensor is stepped, and its state cut, as the part of the whole
/// tensor: a rule that updates element by element, or one whose elementwise steps need a
/// reduction over every tensor, whose terms are added in blocks that the cuts respect
/// ([`UpdateRule::reduction`]).
fn cuts_exactly<R: UpdateRule>(rule: &R) -> bool {
    rule.elementwise() || rule.reduction().is_some()
}

/// Why `optimizer` cannot be stepped under a plan that cuts tensors, if it cannot: a
/// group's rule that looks at whole tensors, or a clip by each tensor's own norm.
fn needs_whole_tensors<R: UpdateRule, A: Element>(optimizer: &Optimizer<R, A>) -> Option<String> {
    if let Some(group) = optimizer.groups().iter().find(|group| !cuts_exactly(&group.hyper)) {
        return Some(format!(
            "group `{}` has rule `{}`, which does not update element by element: a shard \
             cannot step part of a tensor with it",
            group.name(),
            group.hyper.name()
        ));
    }
    if let Some(Clip::Norm { .. }) = optimizer.clip() {
        return Some(
            "clipping each tensor by its own norm needs whole tensors: clip by global norm or \
             by value"
                .to_owned(),
        );
    }
    None
}

fn invalid(reason: String) -> Error {
    Error::InvalidSharding { reason }
}
