//! Per-rank checkpoints of a sharded optimizer, merged into one full checkpoint and split
//! again for another world size.

use std::collections::BTreeMap;

use ndarray::Dimension;

use super::plan::ShardPlan;
use super::{cuts_exactly, invalid};
use crate::checkpoint::{
    BufferRecord, Checkpoint, GroupRecord, ShardRecord, StateRecord, StoredValues, TensorRecord,
};
use crate::compact::BLOCK;
use crate::error::Result;
use crate::rule::UpdateRule;

fn same_header<R: PartialEq, A>(a: &Checkpoint<R, A>, b: &Checkpoint<R, A>) -> bool {
    a.format == b.format
        && a.version == b.version
        && a.rule == b.rule
        && a.dtype == b.dtype
        && a.groups == b.groups
        && a.clip == b.clip
        && a.non_finite == b.non_finite
        && a.shared == b.shared
}

// 8-bit state's blocks of scales never straddle a cut between ranks.
const _: () = assert!(super::SHARD_BLOCK.is_multiple_of(BLOCK));

/// Merges the per-rank checkpoints written under `plan` into one full checkpoint.
///
/// `shards[rank]` is the checkpoint of rank `rank`'s [`ShardedOptimizer`](super::ShardedOptimizer),
/// one for every rank of the plan's world: the plan that wrote them, not necessarily the one
/// that will resume (a [`ShardPlan`] is recomputed from the names, shapes and the world size
/// that wrote the shards). Every shard must come from the same optimizer setup (format,
/// rule, dtype, groups with their hyperparameters, rates and frozen flags, clipping), list
/// each tensor at most once, and hold state only of the parts the plan gives its rank. A
/// tensor's parts are joined in rank order into the state of the whole tensor, of the plan's
/// shape; all its parts must have the same step count and per-tensor scalars. Under a plan
/// that [keeps tensors whole](ShardPlan::whole_tensors), the one holder's state, of the
/// tensor's shape, is the whole tensor's. A tensor that no rank has stepped yet may be
/// listed, without state, by any number of them.
///
/// Give the shards in rank order. Each records the rank whose share it holds
/// ([`Checkpoint::shard`], since format version 5), and a shard in another rank's place, or
/// written under a plan of another world size, is refused. Shards without the record
/// (written by format version 4 or older) are taken to be in rank order: those out of order
/// are refused where their parts differ in tensors or sizes, but two ranks holding parts of
/// one tensor of the same size cannot be told apart.
///
/// # Errors
/// [`Error::InvalidSharding`](crate::Error::InvalidSharding) for no shards, fewer or more
/// shards than the plan has ranks (naming the missing ranks), a shard in another rank's place
/// or of another world size, shards of different setups (naming the shard), a shard that
/// lists a tensor twice, a tensor in different groups, state of a tensor the plan does not
/// list or whose part is not the rank's, a part of the wrong size (or shape, under a plan
/// that keeps tensors whole), or parts that disagree or are missing (naming the tensor and
/// the ranks).
pub fn merge<R: UpdateRule, A: Clone>(
    shards: Vec<Checkpoint<R, A>>,
    plan: &ShardPlan,
) -> Result<Checkpoint<R, A>> {
    if shards.len() != plan.world() {
        let reason = if shards.len() < plan.world() {
            // Listed one by one when few: a plan may have millions of ranks.
            let missing = shards.len()..plan.world();
            let missing = if missing.len() <= 8 {
                format!("{:?}", missing.collect::<Vec<_>>())
            } else {
                format!("{} to {}", missing.start, missing.end - 1)
            };
            format!(
                "{} shards for a plan of {} ranks: the shards of ranks {missing} are missing \
                 (give one shard per rank, in rank order)",
                shards.len(),
                plan.world()
            )
        } else {
            format!("{} shards for a plan of {} ranks", shards.len(), plan.world())
        };
        return Err(invalid(reason));
    }
    for (rank, shard) in shards.iter().enumerate() {
        if let Some(origin) = shard.shard.filter(|&origin| origin != share_of(rank, plan)) {
            return Err(invalid(format!(
                "the shard given as rank {rank} of {} holds the share of rank {} of {} (give the \
                 shards in rank order, each written under this plan)",
                plan.world(),
                origin.rank,
                origin.world
            )));
        }
    }
    let mut shards = shards.into_iter();
    let mut full = shards.next().ok_or_else(|| invalid("no shards to merge".to_owned()))?;
    full.shard = None;
    let first = std::mem::take(&mut full.tensors);
    // Every tensor's group, and its parts' states by rank.
    let mut tensors: BTreeMap<String, (String, BTreeMap<usize, StateRecord<A>>)> = BTreeMap::new();
    let mut add = |rank: usize, list: Vec<TensorRecord<A>>| -> Result<()> {
        let mut listed = std::collections::BTreeSet::new();
        for tensor in list {
            if !listed.insert(tensor.name.clone()) {
                return Err(invalid(format!(
                    "the shard of rank {rank} lists tensor `{}` twice",
                    tensor.name
                )));
            }
            let (group, parts) = tensors
                .entry(tensor.name.clone())
                .or_insert_with(|| (tensor.group.clone(), BTreeMap::new()));
            if *group != tensor.group {
                return Err(invalid(format!(
                    "tensor `{}` is in group `{}` in the shard of rank {rank} but `{group}` \
                     before",
                    tensor.name, tensor.group
                )));
            }
            if let Some(state) = tensor.state {
                parts.insert(rank, state);
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
    full.tensors = tensors
        .into_iter()
        .map(|(name, (group, parts))| {
            let state = if parts.is_empty() { None } else { Some(join(&name, parts, plan)?) };
            Ok(TensorRecord { name, group, state })
        })
        .collect::<Result<_>>()?;
    Ok(full)
}

/// The state of the whole tensor `name` from its parts' states, by rank.
fn join<A: Clone>(
    name: &str,
    parts: BTreeMap<usize, StateRecord<A>>,
    plan: &ShardPlan,
) -> Result<StateRecord<A>> {
    let tensor = plan.tensor(name).ok_or_else(|| {
        invalid(format!("the shards have state of tensor `{name}`, which is not in the plan"))
    })?;
    let holders: BTreeMap<usize, _> = plan.holders(name).into_iter().flatten().collect();
    if let Some(rank) = parts.keys().find(|rank| !holders.contains_key(rank)) {
        return Err(invalid(format!(
            "the shard of rank {rank} has state of tensor `{name}`, of which the plan gives it \
             no part (the parts are of ranks {:?})",
            holders.keys().collect::<Vec<_>>()
        )));
    }
    if let Some(rank) = holders.keys().find(|rank| !parts.contains_key(rank)) {
        return Err(invalid(format!(
            "tensor `{name}` has state in the shards of ranks {:?} but not in that of rank \
             {rank}, which holds a part of it",
            parts.keys().collect::<Vec<_>>()
        )));
    }
    let mut parts = parts.into_iter();
    let Some((first_rank, mut whole)) = parts.next() else {
        return Err(invalid(format!("tensor `{name}` has no parts")));
    };
    if plan.keeps_tensors_whole() {
        // The one holder's state is the whole tensor's, in its shape, and may be of a rule
        // whose buffers are not per element (Adafactor's factors): loading checks those.
        check_shape(name, first_rank, &whole, tensor.shape)?;
        return Ok(whole);
    }
    check_part(name, first_rank, &whole, holders[&first_rank].len())?;
    for (rank, part) in parts {
        check_part(name, rank, &part, holders[&rank].len())?;
        let names_agree = part.buffers.len() == whole.buffers.len()
            && (part.buffers.iter().zip(&whole.buffers))
                .all(|(a, b)| a.name == b.name && a.stored.is_some() == b.stored.is_some());
        let scalars_agree = part.scalars.len() == whole.scalars.len()
            && part
                .scalars
                .iter()
                .zip(&whole.scalars)
                .all(|(a, b)| a.name == b.name && a.value.to_bits() == b.value.to_bits());
        if part.step != whole.step || !names_agree || !scalars_agree {
            return Err(invalid(format!(
                "the parts of tensor `{name}` in the shards of ranks {first_rank} and {rank} \
                 differ in step count, buffers or per-tensor scalars"
            )));
        }
        for (buffer, more) in whole.buffers.iter_mut().zip(part.buffers) {
            buffer.values.extend(more.values);
            match (&mut buffer.stored, more.stored) {
                (Some(StoredValues::Bf16 { bits }), Some(StoredValues::Bf16 { bits: more })) => {
                    bits.extend(more);
                }
                // Every part but a tensor's last ends on a block boundary (`SHARD_BLOCK`).
                (
                    Some(StoredValues::Int8 { codes, scales }),
                    Some(StoredValues::Int8 { codes: more, scales: more_scales }),
                ) => {
                    codes.extend(more);
                    scales.extend(more_scales);
                }
                (None, None) => {}
                _ => {
                    return Err(invalid(format!(
                        "buffer `{}` of tensor `{name}` is stored in another format in the shard \
                         of rank {rank} than in that of rank {first_rank}",
                        buffer.name
                    )));
                }
            }
        }
    }
    whole.shape = tensor.shape.to_vec();
    Ok(whole)
}

/// How many elements `buffer` holds, as values, stored bfloat16 bits or 8-bit codes with a
/// scale per block of [`BLOCK`] codes; `None` if it holds several of them or scales for
/// another number of codes.
fn buffer_len<A>(buffer: &BufferRecord<A>) -> Option<usize> {
    match &buffer.stored {
        None => Some(buffer.values.len()),
        _ if !buffer.values.is_empty() => None,
        Some(StoredValues::Bf16 { bits }) => Some(bits.len()),
        Some(StoredValues::Int8 { codes, scales }) => {
            (scales.len() == codes.len().div_ceil(BLOCK)).then_some(codes.len())
        }
    }
}

/// Checks that the state rank `rank` holds of tensor `name` is of the `shape` the plan gives
/// its piece.
fn check_shape<A>(name: &str, rank: usize, state: &StateRecord<A>, shape: &[usize]) -> Result<()> {
    if state.shape != shape {
        return Err(invalid(format!(
            "the state of tensor `{name}` in the shard of rank {rank} is of shape {:?}, but the \
             plan gives the rank a piece of shape {shape:?} (was the shard cut under another \
             plan?)",
            state.shape
        )));
    }
    Ok(())
}

/// Checks that the state of rank `rank`'s part of tensor `name` is of the part's `len`.
fn check_part<A>(name: &str, rank: usize, part: &StateRecord<A>, len: usize) -> Result<()> {
    let numel = part.shape.iter().try_fold(1_usize, |n, &d| n.checked_mul(d));
    if numel != Some(len) || part.buffers.iter().any(|buffer| buffer_len(buffer) != Some(len)) {
        return Err(invalid(format!(
            "the part of tensor `{name}` in the shard of rank {rank} has {len} elements in the \
             plan, but its state is of shape {:?}",
            part.shape
        )));
    }
    Ok(())
}

/// Splits a full checkpoint into one checkpoint per rank of `plan`: each tensor's state is cut
/// into the parts the plan gives the ranks (each part's state of shape `[len]`, with the
/// tensor's step count and per-tensor scalars), or, under a plan that [keeps tensors
/// whole](ShardPlan::whole_tensors), given whole to the rank that holds the tensor; tensors
/// without state are listed in every shard, so that each rank knows every tensor's group.
///
/// # Errors
/// [`Error::InvalidSharding`](crate::Error::InvalidSharding) if the checkpoint has state of a
/// tensor the plan does not list, of another size (or, for a plan that keeps tensors whole,
/// shape) than the plan's, or, for a plan that cuts tensors, of a group whose rule
/// does not update [element by element](UpdateRule::elementwise) and has no
/// [reduction](UpdateRule::reduction) (its state cannot be cut;
/// low-precision state is cut as full-precision state is, 8-bit codes with their blocks'
/// scales), and for a checkpoint that is one rank's share ([`Checkpoint::shard`]) rather
/// than one of whole tensors.
pub fn split<R: UpdateRule, A: Clone>(
    full: Checkpoint<R, A>,
    plan: &ShardPlan,
) -> Result<Vec<Checkpoint<R, A>>> {
    if let Some(origin) = full.shard {
        // A rank's share lacks the other ranks' state, which the cut would silently drop.
        return Err(invalid(format!(
            "the checkpoint is the share of rank {} of {}, not one of whole tensors: merge the \
             ranks' checkpoints first",
            origin.rank, origin.world
        )));
    }
    let mut full = full;
    let tensors = std::mem::take(&mut full.tensors);
    let mut shards = vec![full; plan.world()];
    for (rank, shard) in shards.iter_mut().enumerate() {
        shard.shard = Some(share_of(rank, plan));
    }
    for tensor in tensors {
        let Some(state) = &tensor.state else {
            for shard in &mut shards {
                shard.tensors.push(tensor.clone());
            }
            continue;
        };
        for (rank, part) in cut(&tensor, state, &shards[0].groups, plan)? {
            shards[rank].tensors.push(part);
        }
    }
    Ok(shards)
}

/// Rank `rank`'s share of a checkpoint that holds the state of whole tensors, of parts of
/// them already cut for `rank` under `plan` (a shard saved by that rank), or both: whole
/// tensors' state is cut as [`split`] cuts it, the rank's parts are kept.
///
/// A checkpoint that records its share ([`Checkpoint::shard`], checked to be `rank`'s under
/// a plan of this world size) must hold state of the rank's pieces only, each in the shape
/// this plan gives it: a share cut under another plan of that size, such as one that keeps
/// tensors whole, would otherwise lose the state of tensors that move to other ranks.
/// Older shares, which do not record it, are told apart from whole tensors by their sizes.
pub(super) fn share<R: UpdateRule, A: Clone>(
    checkpoint: Checkpoint<R, A>,
    plan: &ShardPlan,
    rank: usize,
) -> Result<Checkpoint<R, A>> {
    let recorded = checkpoint.shard.is_some();
    let mut share = checkpoint;
    share.shard = Some(share_of(rank, plan));
    let tensors = std::mem::take(&mut share.tensors);
    for tensor in tensors {
        let Some(state) = &tensor.state else {
            share.tensors.push(tensor);
            continue;
        };
        if recorded {
            let shape = plan.piece_shape(&tensor.name, rank).ok_or_else(|| {
                invalid(format!(
                    "the share of rank {rank} has state of tensor `{}`, of which the plan gives \
                     it no piece (was it cut under another plan?)",
                    tensor.name
                ))
            })?;
            check_shape(&tensor.name, rank, state, shape.slice())?;
            share.tensors.push(tensor);
            continue;
        }
        let numel = state.shape.iter().try_fold(1_usize, |n, &d| n.checked_mul(d));
        let whole = plan.tensor(&tensor.name).map(|t| t.range.len());
        let part = plan.holders(&tensor.name).into_iter().flatten().find(|(r, _)| *r == rank);
        match part {
            Some((_, elements)) if numel != whole && numel == Some(elements.len()) => {
                share.tensors.push(tensor);
            }
            _ => {
                let parts = cut(&tensor, state, &share.groups, plan)?;
                share.tensors.extend(parts.into_iter().filter(|(r, _)| *r == rank).map(|(_, p)| p));
            }
        }
    }
    Ok(share)
}

/// The record of rank `rank`'s share under `plan`.
pub(super) fn share_of(rank: usize, plan: &ShardPlan) -> ShardRecord {
    ShardRecord { rank, world: plan.world() }
}

/// The state of tensor `tensor` (of the group in `groups` it names) cut into the parts of
/// the ranks that hold one under `plan`, in rank order.
fn cut<R: UpdateRule, A: Clone>(
    tensor: &TensorRecord<A>,
    state: &StateRecord<A>,
    groups: &[GroupRecord<R>],
    plan: &ShardPlan,
) -> Result<Vec<(usize, TensorRecord<A>)>> {
    let name = &tensor.name;
    if plan.keeps_tensors_whole() {
        let holder = plan.holders(name).into_iter().flatten().next();
        let (Some(planned), Some((rank, _))) = (plan.tensor(name), holder) else {
            return Err(invalid(format!("tensor `{name}` is not in the plan")));
        };
        if state.shape != planned.shape {
            return Err(invalid(format!(
                "tensor `{name}` is of shape {:?} in the plan but has state of shape {:?}",
                planned.shape, state.shape
            )));
        }
        return Ok(vec![(rank, tensor.clone())]);
    }
    if let Some(group) = groups.iter().find(|g| g.name == tensor.group && !cuts_exactly(&g.hyper)) {
        return Err(invalid(format!(
            "tensor `{name}` is in group `{}`, whose rule `{}` does not update element by \
             element: its state cannot be cut between ranks",
            group.name,
            group.hyper.name()
        )));
    }
    let (Some(planned), Some(holders)) = (plan.tensor(name), plan.holders(name)) else {
        return Err(invalid(format!("tensor `{name}` is not in the plan")));
    };
    check_part(name, 0, state, planned.range.len()).map_err(|_| {
        invalid(format!(
            "tensor `{name}` has {} elements in the plan but state of shape {:?}",
            planned.range.len(),
            state.shape
        ))
    })?;
    let part = |elements: std::ops::Range<usize>| StateRecord {
        step: state.step,
        shape: vec![elements.len()],
        buffers: (state.buffers.iter())
            .map(|buffer| BufferRecord {
                name: buffer.name.clone(),
                values: buffer.values.get(elements.clone()).unwrap_or_default().to_vec(),
                stored: buffer.stored.as_ref().map(|stored| match stored {
                    StoredValues::Bf16 { bits } => {
                        StoredValues::Bf16 { bits: bits[elements.clone()].to_vec() }
                    }
                    // A part starts on a block boundary (`SHARD_BLOCK`): it takes its blocks'
                    // scales whole.
                    StoredValues::Int8 { codes, scales } => StoredValues::Int8 {
                        codes: codes[elements.clone()].to_vec(),
                        scales: scales[elements.start / BLOCK..elements.end.div_ceil(BLOCK)]
                            .to_vec(),
                    },
                }),
            })
            .collect(),
        scalars: state.scalars.clone(),
    };
    Ok(holders
        .map(|(rank, elements)| {
            let record = TensorRecord {
                name: name.clone(),
                group: tensor.group.clone(),
                state: Some(part(elements)),
            };
            (rank, record)
        })
        .collect())
}
