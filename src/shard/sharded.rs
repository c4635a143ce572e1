//! One rank's share of a sharded optimizer.

use ndarray::{ArrayView, ArrayViewMut, IxDyn};

use super::checkpoints::{share, share_of};
use super::plan::{Piece, ShardPlan};
use super::{invalid, needs_whole_tensors};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::exact_sum::{PARTS, SignedSum};
use crate::guard::{NonFinite, StepOutcome};
use crate::model::{Prefix, VisitPair};
use crate::optimizer::{BatchCheck, Exchange, Optimizer};
use crate::rule::{Reduction, UpdateRule};

/// The values a sharded step adds up across ranks, after the ranks' first non-finite tensors.
mod slot {
    /// Ranks whose step failed before the exchange.
    pub const FAILED: usize = 0;
    /// Pieces checked.
    pub const PIECES: usize = 1;
    /// Pieces of frozen groups.
    pub const FROZEN: usize = 2;
    /// The squares' exact sum, [`PARTS`](crate::exact_sum::PARTS) values.
    pub const SQUARES: usize = 3;
}

/// One rank's share of a sharded optimizer: the state of the elements the [`ShardPlan`] gives
/// it, stepped with [`step_all`](Self::step_all).
///
/// ```
/// use ndarray_optim::{Adam, Clip, Optimizer, ShardPlan, ShardedOptimizer, StepOutcome};
///
/// // Two ranks, simulated one after the other: each steps its shard of the flat parameters.
/// let plan = ShardPlan::new([("w", &[300][..]), ("b", &[4])], 2)?;
/// let mut opt = Optimizer::new(Adam::default())?;
/// opt.set_clip(Some(Clip::GlobalNorm { max_norm: 1.0 }))?;
/// let (params, grads) = (vec![1.0_f32; 304], vec![0.5_f32; 304]);
/// // The parts each rank would send to the all-reduce, and their sums.
/// let mut sent = Vec::new();
/// for rank in 0..2 {
///     let mut shard = ShardedOptimizer::new(opt.clone(), plan.clone(), rank)?;
///     let range = plan.shard(rank);
///     let mut mine = params[range.clone()].to_vec();
///     // A stand-in for the all-reduce: record this rank's values, reply with the sums.
///     let outcome = shard.step_all(&mut mine, &grads[range], |values| {
///         sent.push(values.to_vec());
///         if sent.len() == 2 {
///             for (i, v) in values.iter_mut().enumerate() {
///                 *v = sent[0][i] + sent[1][i];
///             }
///         }
///     });
///     if rank == 1 {
///         // The norm of all 304 gradients, √(304 · 0.25), on the rank that saw the sums.
///         assert_eq!(outcome?, StepOutcome::Stepped { grad_norm: Some(76.0_f64.sqrt()) });
///     }
/// }
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ShardedOptimizer<R: UpdateRule, A: Element> {
    optimizer: Optimizer<R, A>,
    plan: ShardPlan,
    rank: usize,
    /// The values of the exchange, kept so that steps allocate nothing.
    exchanged: Vec<f64>,
}

impl<R: UpdateRule, A: Element> ShardedOptimizer<R, A> {
    /// Rank `rank`'s share of `optimizer`: its groups, hyperparameters, clipping and
    /// non-finite policy, and the state of the parts of tensors the plan gives the rank
    /// (state of other parts is dropped). `optimizer` may hold the state of whole tensors
    /// (a new run, or a full checkpoint from [`merge`](super::merge)) or the rank's parts
    /// (a checkpoint of this rank's share under the same plan, or one of [`split`](super::split)'s).
    ///
    /// Each group keeps its [state precision](crate::StatePrecision) as for the whole tensors:
    /// a part is kept in 8 bits if its whole tensor is large enough, whatever the part's size,
    /// here and whenever the precision is set again through
    /// [`optimizer_mut`](Self::optimizer_mut). State read otherwise is converted (an
    /// optimizer holding a rank's share on its own decides by the parts' sizes).
    ///
    /// # Errors
    /// - [`Error::InvalidSharding`] if `rank` is outside the plan's world, `optimizer` holds
    ///   another rank's share or one cut under a plan of another world size (see
    ///   [`Checkpoint::shard`](crate::Checkpoint::shard)), or holds a rank's share whose
    ///   state is not that of the parts this plan gives the rank (a share cut under another
    ///   plan: merge the shares under that plan and split them for this one), or has state
    ///   of a tensor the plan does not list or of another size;
    /// - [`Error::InvalidSharding`] unless the plan [keeps tensors
    ///   whole](ShardPlan::whole_tensors), if a group's rule does not update [element by
    ///   element](UpdateRule::elementwise) and has no [reduction](UpdateRule::reduction)
    ///   (Lamb, Muon and Adafactor look at whole tensors; Prodigy is sharded by elements) or
    ///   the optimizer clips each tensor by its own norm;
    /// - [`Error::UnequalGroupLr`] or [`Error::ReductionSettingDiffers`] if the groups of a
    ///   rule with a reduction would be refused by [`Optimizer::step_all`].
    pub fn new(optimizer: Optimizer<R, A>, plan: ShardPlan, rank: usize) -> Result<Self> {
        if rank >= plan.world() {
            return Err(invalid(format!("rank {rank} is outside a world of {}", plan.world())));
        }
        shardable(&optimizer, &plan)?;
        if let Some(origin) = optimizer.shard.filter(|&origin| origin != share_of(rank, &plan)) {
            return Err(invalid(format!(
                "the optimizer holds the share of rank {} of {}, not of rank {rank} of {}: merge \
                 the ranks' checkpoints and split them for this plan, or give each rank its own",
                origin.rank,
                origin.world,
                plan.world()
            )));
        }
        let mut optimizer =
            Optimizer::from_checkpoint(share(optimizer.checkpoint(), &plan, rank)?)?;
        let whole = plan.pieces(rank).map(|piece| {
            let tensor = plan.tensor(piece.name).expect("a piece is of a planned tensor");
            (piece.name, tensor.range.len())
        });
        optimizer.registry.set_whole_numels(whole);
        let sums = 2 * PARTS * Reduction::MAX_SUMS;
        let exchanged = vec![0.0; check_len(&plan).max(sums)];
        Ok(ShardedOptimizer { optimizer, plan, rank, exchanged })
    }

    /// Steps this rank's shard: `params` and `grads` are the rank's parts of the flat
    /// parameters and of the flat averaged gradients
    /// ([`plan().shard(rank)`](ShardPlan::shard) of the model's elements in the
    /// [plan's order](ShardPlan)). The result is bit for bit what one process's
    /// [`Optimizer::step_all`] gives for the whole model with the same averaged gradients, on
    /// any number of ranks: the same parameters and state, the same
    /// [global-norm clipping](crate::Clip::GlobalNorm) and [non-finite check](NonFinite) over
    /// every tensor, the same outcome (a skip reports the position of the first non-finite
    /// tensor in the plan's order). Parts of frozen groups are left alone. Under a plan that
    /// [keeps tensors whole](ShardPlan::whole_tensors), each piece is stepped in its
    /// tensor's shape, and a clip of each tensor by its own norm reports the norm over
    /// every rank's tensors, as one process does (each tensor's norm is computed in the
    /// first pass, for the exchange, and again in the second, for its clip).
    ///
    /// `all_reduce` is called once per call, on every rank, with a slice of `$73 + N$`
    /// values for `$N$` ranks: it must replace each value by its sum over all ranks, as MPI's
    /// `MPI_Allreduce` with `MPI_SUM` does in place. The sums are exact in any order (the
    /// values are small integers and the exact sum of squares' digits), so any reduction
    /// algorithm gives every rank the same bits. The call comes before any change, so that
    /// a failure on one rank fails the step on every rank: when `step_all` returns an error,
    /// no rank has changed anything.
    ///
    /// When a group's rule has a [reduction](UpdateRule::reduction) over every tensor
    /// ([`Prodigy`](crate::Prodigy)'s estimate of its step size), a step that goes ahead
    /// calls `all_reduce` a second time, on every rank alike, between the reduction's first
    /// pass and its combination, with `$140 k$` values for the rule's `$k$` sums (280 for
    /// Prodigy): the exact digits of each rank's sums ([`ReductionSums`](crate::rule::ReductionSums)),
    /// whose sums over the ranks are the whole model's, again in any order. prodigyopt's
    /// `fsdp_in_use` all-reduces its two sums the same way, rounded.
    ///
    /// # Errors
    /// - [`Error::InvalidSharding`] if `params` or `grads` is not of the rank's
    ///   [load](ShardPlan::load), or the optimizer was set since [`new`](Self::new) to
    ///   something that [`new`](Self::new) refuses;
    /// - as [`Optimizer::step_all`] for the rank's own parts (e.g.
    ///   [`Error::NonFiniteGradient`] naming the first non-finite tensor of the whole model);
    /// - [`Error::OtherRanksFailed`] if the step failed on other ranks only.
    pub fn step_all(
        &mut self,
        params: &mut [A],
        grads: &[A],
        mut all_reduce: impl FnMut(&mut [f64]),
    ) -> Result<StepOutcome> {
        let ShardedOptimizer { optimizer, plan, rank, exchanged } = self;
        let (plan, rank) = (&*plan, *rank);
        let mut exchange = RankExchange {
            values: exchanged,
            plan,
            rank,
            policy: optimizer.non_finite(),
            all_reduce: &mut all_reduce,
            checked: false,
        };
        let outcome = self::check_lengths(plan, rank, params.len(), grads.len())
            .and_then(|()| shardable(optimizer, plan))
            .and_then(|()| {
                let mut zip = |_: &mut Prefix, visit: &mut VisitPair<'_, A>| {
                    for (piece, shape) in plan.shaped_pieces(rank) {
                        let (param, grad) = piece_views(&piece, shape, params, grads)?;
                        visit(piece.name, param, grad)?;
                    }
                    Ok(())
                };
                optimizer.step_exchanging(&mut zip, "shard", &mut exchange)
            });
        if outcome.is_err() && !exchange.checked {
            exchange.fail();
        }
        outcome
    }

    /// The rank this share belongs to.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The plan.
    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// The optimizer holding this rank's state (for groups, learning rates and checkpoints:
    /// its tensors are the rank's parts, each of shape `[len]`, or under a plan that [keeps
    /// tensors whole](ShardPlan::whole_tensors) the rank's tensors in their shapes).
    pub fn optimizer(&self) -> &Optimizer<R, A> {
        &self.optimizer
    }

    /// The optimizer holding this rank's state, e.g. to change learning rates (on every rank
    /// alike).
    pub fn optimizer_mut(&mut self) -> &mut Optimizer<R, A> {
        &mut self.optimizer
    }
}

/// Refuses what a sharded step cannot do: under a plan that cuts tensors, rules that look at
/// whole tensors and a clip by each tensor's own norm. Also refuses here, before the first
/// exchange, what would refuse a reduction after it (groups at other rates, settings that
/// differ), so that the other ranks learn of it in that exchange instead of waiting in the
/// reduction's.
fn shardable<R: UpdateRule, A: Element>(
    optimizer: &Optimizer<R, A>,
    plan: &ShardPlan,
) -> Result<()> {
    optimizer.registry.reduction()?;
    // Checked every step, so only where it can fail: the reason is a new string.
    if plan.keeps_tensors_whole() {
        return Ok(());
    }
    match needs_whole_tensors(optimizer) {
        Some(reason) => Err(invalid(format!("{reason} (plan with `ShardPlan::for_optimizer`)"))),
        None => Ok(()),
    }
}

/// The views of `piece` in the rank's `params` and `grads`, of the `shape` the plan gives
/// it: under a plan that keeps tensors whole, the tensor's, so that rules see the tensor as
/// one process does.
fn piece_views<'a, A>(
    piece: &Piece<'_>,
    shape: IxDyn,
    params: &'a mut [A],
    grads: &'a [A],
) -> Result<(ArrayViewMut<'a, A, IxDyn>, ArrayView<'a, A, IxDyn>)> {
    let param = ArrayViewMut::from_shape(shape.clone(), &mut params[piece.shard.clone()]);
    let grad = ArrayView::from_shape(shape, &grads[piece.shard.clone()]);
    param
        .and_then(|param| Ok((param, grad?)))
        .map_err(|_| invalid(format!("the piece of tensor `{}` is not of its shape", piece.name)))
}

fn check_lengths(plan: &ShardPlan, rank: usize, params: usize, grads: usize) -> Result<()> {
    let load = plan.load(rank);
    if params != load || grads != load {
        return Err(invalid(format!(
            "rank {rank} owns {load} elements, but the step got {params} parameters and {grads} \
             gradients"
        )));
    }
    Ok(())
}

/// A rank's side of the exchanges of one step, through the caller's all-reduce.
struct RankExchange<'a, F> {
    /// Room for the largest exchange.
    values: &'a mut [f64],
    plan: &'a ShardPlan,
    rank: usize,
    policy: NonFinite,
    all_reduce: &'a mut F,
    /// Whether the first exchange took place.
    checked: bool,
}

impl<F: FnMut(&mut [f64])> RankExchange<'_, F> {
    /// Tells the other ranks, waiting in the first exchange, that this rank's step failed.
    fn fail(&mut self) {
        let values = &mut self.values[..check_len(self.plan)];
        values.fill(0.0);
        values[slot::FAILED] = 1.0;
        (self.all_reduce)(values);
    }
}

impl<F: FnMut(&mut [f64])> Exchange for RankExchange<'_, F> {
    fn check(&mut self, check: &mut BatchCheck) -> Result<()> {
        self.checked = true;
        let (plan, rank, policy) = (self.plan, self.rank, self.policy);
        let values = &mut self.values[..check_len(plan)];
        exchange_check(check, values, plan, rank, policy, &mut *self.all_reduce)
    }

    fn in_parts(&self) -> bool {
        true
    }

    /// Each sum's two sides' exact parts, summed over the ranks: what the whole model's
    /// first pass would have found, bit for bit.
    fn sums(&mut self, sums: &mut [SignedSum]) {
        let values = &mut self.values[..2 * PARTS * sums.len()];
        let sides = sums.iter_mut().flat_map(SignedSum::parts_mut);
        for (chunk, parts) in values.chunks_exact_mut(PARTS).zip(sides) {
            chunk.copy_from_slice(parts);
        }
        (self.all_reduce)(values);
        let sides = sums.iter_mut().flat_map(SignedSum::parts_mut);
        for (chunk, parts) in values.chunks_exact(PARTS).zip(sides) {
            parts.copy_from_slice(chunk);
        }
    }
}

/// The number of values of the first exchange: the slots, the squares' parts and one per
/// rank.
fn check_len(plan: &ShardPlan) -> usize {
    slot::SQUARES + PARTS + plan.world()
}

/// Adds up what every rank's first pass found, and leaves in `check` what the whole model's
/// first pass would have found.
fn exchange_check(
    check: &mut BatchCheck,
    values: &mut [f64],
    plan: &ShardPlan,
    rank: usize,
    policy: NonFinite,
    all_reduce: &mut impl FnMut(&mut [f64]),
) -> Result<()> {
    values.fill(0.0);
    values[slot::PIECES] = check.index as f64;
    values[slot::FROZEN] = check.frozen as f64;
    let squares = &mut values[slot::SQUARES..slot::SQUARES + PARTS];
    squares.copy_from_slice(check.squares.parts_mut());
    let first_tensor = |rank| plan.pieces(rank).next().and_then(|p| plan.position(p.name));
    if let (Some((index, _)), Some(first)) = (&check.non_finite, first_tensor(rank)) {
        // Each rank's first non-finite tensor in its own slot: the sum gathers them all.
        values[slot::SQUARES + PARTS + rank] = (first + index + 1) as f64;
    }
    all_reduce(values);

    let failed = values[slot::FAILED];
    if failed > 0.0 {
        return Err(Error::OtherRanksFailed { ranks: failed as usize });
    }
    check.index = values[slot::PIECES] as usize;
    check.frozen = values[slot::FROZEN] as usize;
    check.squares.parts_mut().copy_from_slice(&values[slot::SQUARES..slot::SQUARES + PARTS]);
    let non_finite = values[slot::SQUARES + PARTS..].iter().find(|&&v| v > 0.0);
    check.non_finite = non_finite.map(|&found| {
        let index = found as usize - 1;
        let outcome = match policy {
            NonFinite::Skip => Ok(StepOutcome::Skipped { index }),
            _ => Err(Error::NonFiniteGradient {
                param: plan.tensors().nth(index).map_or_else(String::new, |t| t.name.to_owned()),
            }),
        };
        (index, outcome)
    });
    Ok(())
}
