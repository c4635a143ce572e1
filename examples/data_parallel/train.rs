//! One rank's training step: gradients of its micro-batches, their average over the ranks,
//! the sharded optimizer step on this rank's shard, and the all-gather of the parameters.

use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2, s};
use ndarray_optim::{Optimizer, ParamGrad, ShardPlan, ShardedOptimizer, StepOutcome, UpdateRule};

use crate::collectives::Collectives;
use crate::mlp::Mlp;

/// The training set: inputs and the outputs of a fixed teacher network, cut into equal
/// micro-batches that are dealt round-robin to the ranks.
pub struct Data {
    pub x: Array2<f64>,
    pub target: Array2<f64>,
    pub micro_batches: usize,
}

impl Data {
    /// The inputs and targets of micro-batch `micro`.
    fn micro_batch(&self, micro: usize) -> (ArrayView2<'_, f64>, ArrayView2<'_, f64>) {
        let len = self.x.nrows() / self.micro_batches;
        let rows = s![micro * len..(micro + 1) * len, ..];
        (self.x.slice(rows), self.target.slice(rows))
    }
}

/// How the ranks' gradients are averaged, with the buffers each way needs.
enum Averaging {
    /// ZeRO-2: every rank adds up the gradients of its micro-batches in `grads`, copies them
    /// to `blocks` (one equal block per rank: its shard, then zeros), and a reduce-scatter
    /// leaves the sum of this rank's block in `own`.
    Zero { grads: Vec<f64>, blocks: Vec<f64>, own: Vec<f64> },
    /// World-size independent: one slot of the whole gradient per micro-batch, zero but on the
    /// ranks that computed it, all-reduced (exact: adding zeros), then added up in `average`
    /// in micro-batch order on every rank. Sends 12 gradients where ZeRO-2 sends one.
    Exact { slots: Vec<f64>, summed: Vec<f64>, average: Vec<f64> },
}

/// Time spent in the parts of the steps.
#[derive(Clone, Copy, Debug, Default)]
pub struct Times {
    pub compute: Duration,
    pub communication: Duration,
    pub optimizer: Duration,
}

/// One rank's model, shard and buffers, all allocated once.
pub struct Trainer<'w, R: UpdateRule> {
    pub mlp: Mlp,
    pub plan: ShardPlan,
    pub rank: usize,
    /// The whole model, in the plan's flat order.
    pub params: Vec<f64>,
    /// This rank's shard of the parameters: the copy it steps and sends.
    shard: Vec<f64>,
    averaging: Averaging,
    pub sharded: ShardedOptimizer<R, f64>,
    pub comm: Collectives<'w>,
    pub times: Times,
}

impl<'w, R: UpdateRule> Trainer<'w, R> {
    /// A trainer for the world `comm` spans, `exact` or ZeRO-2.
    pub fn new(
        mlp: Mlp,
        params: Vec<f64>,
        sharded: ShardedOptimizer<R, f64>,
        comm: Collectives<'w>,
        exact: bool,
        micro_batches: usize,
    ) -> Self {
        let plan = sharded.plan().clone();
        let rank = sharded.rank();
        let len = plan.len();
        let averaging = if exact {
            let slots = vec![0.0; micro_batches * len];
            Averaging::Exact { summed: slots.clone(), slots, average: vec![0.0; len] }
        } else {
            let block = (0..plan.world()).map(|r| plan.load(r)).max().unwrap_or(0);
            Averaging::Zero {
                grads: vec![0.0; len],
                blocks: vec![0.0; plan.world() * block],
                own: vec![0.0; block],
            }
        };
        let shard = params[plan.shard(rank)].to_vec();
        Trainer {
            mlp,
            plan,
            rank,
            params,
            shard,
            averaging,
            sharded,
            comm,
            times: Times::default(),
        }
    }

    /// One training step on `data`; returns the loss before it and what the optimizer did.
    /// `poison` puts a NaN into this rank's gradient first, to exercise the non-finite check.
    pub fn step(&mut self, data: &Data, poison: bool) -> Result<(f64, StepOutcome), String> {
        let start = Instant::now();
        let total = data.x.nrows();
        let (world, rank) = (self.plan.world(), self.rank);
        let mut local_loss = 0.0;
        let len = self.plan.len();
        if let Averaging::Zero { grads, .. } = &mut self.averaging {
            grads.fill(0.0);
        }
        for micro in (rank..data.micro_batches).step_by(world) {
            let (x, target) = data.micro_batch(micro);
            let (grads, accumulate) = match &mut self.averaging {
                Averaging::Zero { grads, .. } => (&mut grads[..], true),
                Averaging::Exact { slots, .. } => (&mut slots[micro * len..][..len], false),
            };
            local_loss += self.mlp.gradients(&self.params, x, target, total, grads, accumulate);
            if poison {
                grads[0] = f64::NAN;
            }
        }
        self.times.compute += start.elapsed();

        let before = self.comm.time;
        let grads = match &mut self.averaging {
            Averaging::Zero { grads, blocks, own } => {
                // Equal blocks for MPI's reduce-scatter: each rank's shard, then zeros.
                let start = Instant::now();
                let block = own.len();
                for r in 0..world {
                    let shard = self.plan.shard(r);
                    blocks[r * block..][..shard.len()].copy_from_slice(&grads[shard]);
                }
                self.comm.time += start.elapsed();
                self.comm.reduce_scatter(blocks, own);
                &own[..self.plan.load(rank)]
            }
            Averaging::Exact { slots, summed, average } => {
                self.comm.all_reduce(slots, summed);
                let start = Instant::now();
                average.fill(0.0);
                for slot in summed.chunks_exact(self.plan.len()) {
                    average.iter_mut().zip(slot).for_each(|(a, s)| *a += s);
                }
                self.comm.time += start.elapsed();
                &average[self.plan.shard(rank)]
            }
        };
        let loss = self.comm.sum(local_loss);

        let start = Instant::now();
        let in_step = self.comm.time;
        let comm = &mut self.comm;
        let outcome = self
            .sharded
            .step_all(&mut self.shard, grads, |values| comm.all_reduce_in_place(values))
            .map_err(|e| e.to_string())?;
        self.times.optimizer += start.elapsed() - (self.comm.time - in_step);
        // Every rank reaches the same outcome: a skipped step changed no parameter.
        if !matches!(outcome, StepOutcome::Skipped { .. }) {
            self.comm.all_gather(&self.shard, &mut self.params);
        }
        self.times.communication += self.comm.time - before;
        Ok((loss, outcome))
    }

    /// The averaged gradient of the last step, whole, into `all` on rank 0 (ignored
    /// elsewhere); every rank must call it.
    pub fn gather_gradient(&self, all: &mut [f64]) {
        match &self.averaging {
            Averaging::Zero { own, .. } => {
                self.comm.gather_to_root(&own[..self.plan.load(self.rank)], all)
            }
            Averaging::Exact { average, .. } if self.rank == 0 => all.copy_from_slice(average),
            Averaging::Exact { .. } => {}
        }
    }
}

/// Steps `optimizer` on the whole model, `params` with `grads` in `plan`'s flat order, as one
/// process would: the reference a sharded step must equal bit for bit.
pub fn step_whole<R: UpdateRule>(
    optimizer: &mut Optimizer<R, f64>,
    plan: &ShardPlan,
    params: &mut [f64],
    grads: &[f64],
) -> Result<StepOutcome, String> {
    let mut views = Vec::new();
    let mut rest = params;
    for tensor in plan.tensors() {
        let (head, tail) = rest.split_at_mut(tensor.range.len());
        rest = tail;
        let shape = ndarray::IxDyn(tensor.shape);
        let param = ndarray::ArrayViewMut::from_shape(shape.clone(), head);
        let grad = ndarray::ArrayView::from_shape(shape, &grads[tensor.range.clone()]);
        views.push((
            tensor.name,
            param.map_err(|e| e.to_string())?,
            grad.map_err(|e| e.to_string())?,
        ));
    }
    let mut batch: Vec<ParamGrad<'_, f64>> =
        views.iter_mut().map(|(name, param, grad)| ParamGrad::new(name, param, grad)).collect();
    optimizer.step_all(&mut batch).map_err(|e| e.to_string())
}
