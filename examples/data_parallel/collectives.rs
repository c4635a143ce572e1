//! The MPI collectives of a training step, with the bytes each rank sends counted and the time
//! spent in them measured.
//!
//! The count is a model, not a capture of what Open MPI puts on the wire: a rank is charged
//! what it must send in a bandwidth-optimal schedule (a ring, or sending its own data to each
//! peer), which is what a real interconnect carries within small constant overheads:
//!
//! - reduce-scatter of `N` blocks of `m` values: its partial sum of every other rank's block,
//!   `(N − 1)·m` values;
//! - all-gather: its own block to each of the `N − 1` others, `(N − 1)·own` values;
//! - all-reduce of `k` values: a reduce-scatter then an all-gather of blocks of `⌈k / N⌉`,
//!   `2·(N − 1)·⌈k / N⌉` values.
//!
//! With the shards of a plan (`P` values, the largest `m ≤ ⌈P / N⌉ + 256`), a ZeRO-2 step sends
//! `(N − 1)·m + (N − 1)·own ≈ 2·(N − 1)/N·P` values per rank.

use std::time::{Duration, Instant};

use mpi::Count;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use ndarray_optim::ShardPlan;

/// Bytes sent by this rank, by kind of traffic.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Gradients and parameters: the reduce-scatter and all-gather (or, in exact mode, the
    /// all-reduce of the micro-batch slots) and the all-gather.
    pub bulk: u64,
    /// The scalars: the loss, and the sums that clipping and the non-finite check need.
    pub scalars: u64,
}

/// The world communicator, with counters.
pub struct Collectives<'w> {
    world: &'w SimpleCommunicator,
    ranks: usize,
    /// The plan's shards as MPI counts and displacements, for the all-gather.
    counts: Vec<Count>,
    displs: Vec<Count>,
    /// The values being summed in place, since MPI's all-reduce reads and writes two buffers.
    scratch: Vec<f64>,
    /// Bytes sent so far.
    pub sent: Sent,
    /// Time spent in collectives so far.
    pub time: Duration,
}

const VALUE: u64 = size_of::<f64>() as u64;

impl<'w> Collectives<'w> {
    /// Collectives over `world` for the shards of `plan`.
    pub fn new(world: &'w SimpleCommunicator, plan: &ShardPlan) -> Result<Self, String> {
        let count = |n: usize| {
            Count::try_from(n).map_err(|_| format!("{n} values are too many for one MPI call"))
        };
        let ranks = plan.world();
        let counts = (0..ranks).map(|r| count(plan.load(r))).collect::<Result<_, _>>()?;
        let displs = (0..ranks).map(|r| count(plan.shard(r).start)).collect::<Result<_, _>>()?;
        // The reduce-scatter sends every rank's block padded to the largest shard.
        count(ranks * (0..ranks).map(|r| plan.load(r)).max().unwrap_or(0))?;
        Ok(Collectives {
            world,
            ranks,
            counts,
            displs,
            scratch: Vec::new(),
            sent: Sent::default(),
            time: Duration::ZERO,
        })
    }

    fn timed<T>(&mut self, collective: impl FnOnce(&SimpleCommunicator) -> T) -> T {
        let start = Instant::now();
        let result = collective(self.world);
        self.time += start.elapsed();
        result
    }

    fn all_reduce_cost(&self, values: usize) -> u64 {
        2 * (self.ranks as u64 - 1) * values.div_ceil(self.ranks) as u64 * VALUE
    }

    /// Sums `blocks` (one block per rank, of `own.len()` values each) over the ranks, and
    /// leaves this rank's block of the sum in `own`.
    pub fn reduce_scatter(&mut self, blocks: &[f64], own: &mut [f64]) {
        self.sent.bulk += (self.ranks as u64 - 1) * own.len() as u64 * VALUE;
        self.timed(|world| world.reduce_scatter_block_into(blocks, own, SystemOperation::sum()));
    }

    /// Gathers every rank's shard, `own` here, into `all` at the plan's places.
    pub fn all_gather(&mut self, own: &[f64], all: &mut [f64]) {
        self.sent.bulk += (self.ranks as u64 - 1) * own.len() as u64 * VALUE;
        let (counts, displs) = (&self.counts[..], &self.displs[..]);
        let start = Instant::now();
        let mut partition = PartitionMut::new(all, counts, displs);
        self.world.all_gather_varcount_into(own, &mut partition);
        self.time += start.elapsed();
    }

    /// Sums `send` over the ranks into `sum`: the bulk traffic of exact mode.
    pub fn all_reduce(&mut self, send: &[f64], sum: &mut [f64]) {
        self.sent.bulk += self.all_reduce_cost(send.len());
        self.timed(|world| world.all_reduce_into(send, sum, SystemOperation::sum()));
    }

    /// Replaces every value of `values` by its sum over the ranks (a few scalars).
    pub fn all_reduce_in_place(&mut self, values: &mut [f64]) {
        self.sent.scalars += self.all_reduce_cost(values.len());
        // Reused: after the first step this allocates nothing.
        self.scratch.clear();
        self.scratch.extend_from_slice(values);
        let start = Instant::now();
        self.world.all_reduce_into(&self.scratch[..], values, SystemOperation::sum());
        self.time += start.elapsed();
    }

    /// The sum of `value` over the ranks.
    pub fn sum(&mut self, value: f64) -> f64 {
        let mut values = [value];
        self.all_reduce_in_place(&mut values);
        values[0]
    }

    /// Gathers every rank's shard `own` into `all` on rank 0 (`all` is ignored elsewhere), for
    /// checking only: neither counted nor timed.
    pub fn gather_to_root(&self, own: &[f64], all: &mut [f64]) {
        let root = self.world.process_at_rank(0);
        if self.world.rank() == 0 {
            let mut partition = PartitionMut::new(all, &self.counts[..], &self.displs[..]);
            root.gather_varcount_into_root(own, &mut partition);
        } else {
            root.gather_varcount_into(own);
        }
    }

    /// Every rank's `value`, in rank order.
    pub fn gather_all(&self, value: f64) -> Vec<f64> {
        let mut all = vec![0.0; self.ranks];
        self.world.all_gather_into(&value, &mut all[..]);
        all
    }
}
