//! Optimizer state sharded across data-parallel ranks (ZeRO stage 1).
//!
//! In data-parallel training every rank holds the whole model and, after the gradients are
//! averaged across ranks, applies the same update. The optimizer state is the largest memory
//! cost (two values per element for Adam), so each rank keeps the state of only the tensors
//! it owns, steps those, and sends the updated parameters to the others. A [`ShardPlan`] is
//! the assignment, the same on every rank; [`ShardedOptimizer`] holds one rank's share; and
//! [`merge`] and [`split`] turn per-rank checkpoints into one full checkpoint and back, for
//! any world size. Because every update is elementwise, a sharded run gives the same bits as
//! one process stepping every tensor with the same averaged gradients.
//!
//! The crate does no communication itself: bring your own (MPI, sockets, threads); the
//! `data_parallel` example does it over MPI.

use std::collections::BTreeMap;

use ndarray::{ArrayRef, Dimension};

use crate::checkpoint::{Checkpoint, TensorRecord};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::guard::StepOutcome;
use crate::optimizer::Optimizer;
use crate::rule::UpdateRule;

fn invalid(reason: String) -> Error {
    Error::InvalidSharding { reason }
}

/// A deterministic assignment of named tensors to `world` ranks, balanced by element count.
///
/// Tensors are taken largest first (ties by name) and each goes to the rank that owns the
/// fewest elements so far (ties to the lowest rank), the classic longest-processing-time
/// rule: no rank owns more than 4/3 of the optimum. The plan depends only on the names and
/// sizes, not on their order, so every rank and every run computes the same one.
///
/// ```
/// use ndarray_optim::ShardPlan;
///
/// let plan = ShardPlan::new([("w1", 600), ("b1", 10), ("w2", 500), ("b2", 4)], 2)?;
/// assert_eq!(plan.owner("w1"), Some(0));
/// assert_eq!(plan.owner("w2"), Some(1));
/// assert_eq!(plan.load(0) + plan.load(1), 1114);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    owners: BTreeMap<String, usize>,
    loads: Vec<usize>,
}

impl ShardPlan {
    /// Plans `tensors` (name, element count) over `world` ranks.
    ///
    /// # Errors
    /// [`Error::InvalidSharding`] if `world` is 0, [`Error::DuplicateParam`] if a name is
    /// listed twice.
    pub fn new<'a>(
        tensors: impl IntoIterator<Item = (&'a str, usize)>,
        world: usize,
    ) -> Result<Self> {
        if world == 0 {
            return Err(invalid("a plan needs at least one rank".to_owned()));
        }
        let mut sizes: Vec<(&str, usize)> = tensors.into_iter().collect();
        sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let mut owners = BTreeMap::new();
        let mut loads = vec![0; world];
        for (name, numel) in sizes {
            let rank = (0..world).min_by_key(|&rank| (loads[rank], rank)).unwrap_or(0);
            if owners.insert(name.to_owned(), rank).is_some() {
                return Err(Error::DuplicateParam {
                    param: name.to_owned(),
                    in_what: "shard plan",
                });
            }
            loads[rank] += numel;
        }
        Ok(ShardPlan { owners, loads })
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.loads.len()
    }

    /// The rank that owns tensor `name`, if the plan has it.
    pub fn owner(&self, name: &str) -> Option<usize> {
        self.owners.get(name).copied()
    }

    /// The names of the tensors `rank` owns, in name order.
    pub fn owned(&self, rank: usize) -> impl Iterator<Item = &str> {
        self.owners.iter().filter(move |(_, owner)| **owner == rank).map(|(name, _)| name.as_str())
    }

    /// How many elements `rank` owns (0 for a rank outside the world).
    pub fn load(&self, rank: usize) -> usize {
        self.loads.get(rank).copied().unwrap_or(0)
    }

    fn owner_of(&self, name: &str) -> Result<usize> {
        self.owner(name).ok_or_else(|| invalid(format!("tensor `{name}` is not in the plan")))
    }
}

/// One rank's share of a sharded optimizer: the state of the tensors the plan gives it.
///
/// Every rank calls [`step`](Self::step) for every tensor with the averaged gradient; only
/// the owner updates the parameter (and keeps state), and then sends it to the other ranks.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Adam, Optimizer, ShardPlan, ShardedOptimizer};
///
/// let plan = ShardPlan::new([("w", 3), ("b", 1)], 2)?;
/// let mut rank1 = ShardedOptimizer::new(Optimizer::new(Adam::default())?, plan, 1)?;
/// let (mut w, mut b) = (array![1.0_f32, 2.0, 3.0], array![0.5_f32]);
/// assert!(!rank1.step("w", &mut w, &array![0.1, 0.1, 0.1])?); // rank 0 owns `w`
/// assert!(rank1.step("b", &mut b, &array![0.1])?);
/// assert_eq!((rank1.optimizer().step_count("w"), rank1.optimizer().step_count("b")), (None, Some(1)));
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ShardedOptimizer<R: UpdateRule, A: Element> {
    optimizer: Optimizer<R, A>,
    plan: ShardPlan,
    rank: usize,
}

impl<R: UpdateRule, A: Element> ShardedOptimizer<R, A> {
    /// Rank `rank`'s share of `optimizer` (its groups and hyperparameters; state of tensors
    /// it does not own is dropped).
    ///
    /// # Errors
    /// [`Error::InvalidSharding`] if `rank` is outside the plan's world, or the optimizer has
    /// state for a tensor the plan does not list; [`Error::ReductionNeedsBatch`] if a group's
    /// rule has a [reduction](UpdateRule::reduction) over every tensor of a step (such as
    /// [`Prodigy`](crate::Prodigy)), which sharded steps cannot compute yet.
    pub fn new(optimizer: Optimizer<R, A>, plan: ShardPlan, rank: usize) -> Result<Self> {
        if rank >= plan.world() {
            return Err(invalid(format!("rank {rank} is outside a world of {}", plan.world())));
        }
        // A reduction over every tensor of a step would need the ranks to exchange sums.
        if let Some(group) = optimizer.groups().iter().find(|g| g.hyper.reduction().is_some()) {
            return Err(Error::ReductionNeedsBatch { rule: group.hyper.name() });
        }
        let mut shards = split(optimizer.checkpoint(), &plan)?;
        let optimizer = Optimizer::from_checkpoint(shards.swap_remove(rank))?;
        Ok(ShardedOptimizer { optimizer, plan, rank })
    }

    /// Steps tensor `name` if this rank owns it; returns whether it did (`false` for a
    /// tensor of another rank, or of a [frozen](Optimizer::freeze) group, which no rank
    /// steps: freeze and unfreeze groups on every rank alike).
    ///
    /// # Errors
    /// [`Error::InvalidSharding`] if the plan does not list `name`; otherwise as
    /// [`Optimizer::step`].
    pub fn step<D: Dimension>(
        &mut self,
        name: &str,
        param: &mut ArrayRef<A, D>,
        grad: &ArrayRef<A, D>,
    ) -> Result<bool> {
        if self.plan.owner_of(name)? != self.rank {
            return Ok(false);
        }
        Ok(self.optimizer.step(name, param, grad)? != StepOutcome::Frozen)
    }

    /// The rank this share belongs to.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The plan.
    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// The optimizer holding this rank's state (for groups, learning rates and checkpoints).
    pub fn optimizer(&self) -> &Optimizer<R, A> {
        &self.optimizer
    }

    /// The optimizer holding this rank's state, e.g. to change learning rates.
    pub fn optimizer_mut(&mut self) -> &mut Optimizer<R, A> {
        &mut self.optimizer
    }
}

fn same_header<R: PartialEq, A>(a: &Checkpoint<R, A>, b: &Checkpoint<R, A>) -> bool {
    a.format == b.format
        && a.version == b.version
        && a.rule == b.rule
        && a.dtype == b.dtype
        && a.groups == b.groups
        && a.clip == b.clip
        && a.non_finite == b.non_finite
}

/// Merges the per-rank checkpoints written under `plan` into one full checkpoint.
///
/// `shards[rank]` is the checkpoint of rank `rank`, one for every rank of the plan's world:
/// the plan that wrote them, not necessarily the one that will resume (a [`ShardPlan`] is
/// recomputed from the tensor sizes and the world size that wrote the shards). Every shard
/// must come from the same optimizer setup (format, rule, dtype, groups with their
/// hyperparameters, rates and frozen flags, clipping), list each tensor at most once, and
/// hold state only of the tensors the plan gives its rank; a tensor that no rank has stepped yet may be listed, without state,
/// by any number of them.
///
/// # Errors
/// [`Error::InvalidSharding`] for no shards, fewer or more shards than the plan has ranks
/// (naming the missing ranks), shards of different setups (naming the shard), a shard that
/// lists a tensor twice, or state of a tensor in another shard than its owner's or of a
/// tensor the plan does not list (naming the tensor and the ranks).
pub fn merge<R: UpdateRule, A: Element>(
    shards: Vec<Checkpoint<R, A>>,
    plan: &ShardPlan,
) -> Result<Checkpoint<R, A>> {
    if shards.len() != plan.world() {
        let reason = if shards.len() < plan.world() {
            let missing: Vec<usize> = (shards.len()..plan.world()).collect();
            format!(
                "{} shards for a plan of {} ranks: the shards of ranks {missing:?} are missing \
                 (give one shard per rank, in rank order)",
                shards.len(),
                plan.world()
            )
        } else {
            format!("{} shards for a plan of {} ranks", shards.len(), plan.world())
        };
        return Err(invalid(reason));
    }
    let mut shards = shards.into_iter();
    let mut full = shards.next().ok_or_else(|| invalid("no shards to merge".to_owned()))?;
    let first = std::mem::take(&mut full.tensors);
    let mut tensors: BTreeMap<String, TensorRecord<A>> = BTreeMap::new();
    let mut add = |rank: usize, list: Vec<TensorRecord<A>>| -> Result<()> {
        let mut listed = std::collections::BTreeSet::new();
        for tensor in list {
            if !listed.insert(tensor.name.clone()) {
                return Err(invalid(format!(
                    "the shard of rank {rank} lists tensor `{}` twice",
                    tensor.name
                )));
            }
            if tensor.state.is_some() {
                match plan.owner(&tensor.name) {
                    Some(owner) if owner != rank => {
                        return Err(invalid(format!(
                            "the shard of rank {rank} has state of tensor `{}`, which the plan \
                             gives to rank {owner}",
                            tensor.name
                        )));
                    }
                    None => {
                        return Err(invalid(format!(
                            "the shard of rank {rank} has state of tensor `{}`, which is not in \
                             the plan",
                            tensor.name
                        )));
                    }
                    Some(_) => {}
                }
            }
            match tensors.get_mut(&tensor.name) {
                None => {
                    tensors.insert(tensor.name.clone(), tensor);
                }
                Some(known) if known.group != tensor.group => {
                    return Err(invalid(format!(
                        "tensor `{}` is in group `{}` in the shard of rank {rank} but `{}` \
                         before",
                        tensor.name, tensor.group, known.group
                    )));
                }
                // The owner check above leaves state in one shard at most.
                Some(known) => {
                    if tensor.state.is_some() {
                        known.state = tensor.state;
                    }
                }
            }
        }
        Ok(())
    };
    add(0, first)?;
    for (rank, shard) in (1..).zip(shards) {
        if !same_header(&full, &shard) {
            return Err(invalid(format!(
                "the shard of rank {rank} differs from rank 0's in format, rule, dtype, groups \
                 or clipping"
            )));
        }
        add(rank, shard.tensors)?;
    }
    full.tensors = tensors.into_values().collect();
    Ok(full)
}

/// Splits a full checkpoint into one checkpoint per rank of `plan`: each tensor's state goes
/// to its owner; tensors without state are listed in every shard, so that each rank knows
/// every tensor's group.
///
/// # Errors
/// [`Error::InvalidSharding`] if the checkpoint has state for a tensor the plan does not
/// list.
pub fn split<R: UpdateRule, A: Element>(
    full: Checkpoint<R, A>,
    plan: &ShardPlan,
) -> Result<Vec<Checkpoint<R, A>>> {
    let mut full = full;
    let tensors = std::mem::take(&mut full.tensors);
    let mut shards = vec![full; plan.world()];
    for tensor in tensors {
        if tensor.state.is_some() {
            let owner = plan.owner_of(&tensor.name)?;
            shards[owner].tensors.push(tensor);
        } else {
            for shard in &mut shards {
                shard.tensors.push(tensor.clone());
            }
        }
    }
    Ok(shards)
}
