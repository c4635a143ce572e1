//! Data-parallel training over MPI with the optimizer state sharded across ranks (ZeRO
//! stage 1): every rank computes gradients on its part of the batch, the gradients are
//! averaged with an all-reduce, each rank steps the tensors it owns, and the owners broadcast
//! the updated parameters.
//!
//! ```text
//! cargo build --release --features mpi --example data_parallel
//! mpirun -np 2 target/release/examples/data_parallel --steps 50 --check
//! mpirun -np 4 target/release/examples/data_parallel --steps 20 --save-dir ckpt
//! mpirun -np 2 target/release/examples/data_parallel --steps 20 --resume-dir ckpt --out p.json
//! ```
//!
//! Options: `--rule adam|momentum`, `--steps N`, `--check` (rank 0 also steps every tensor
//! in one unsharded optimizer on the same averaged gradients and requires bit-identical
//! parameters), `--save-dir D` (each rank writes its shard, rank 0 the parameters),
//! `--resume-dir D` (merge the shards found there, whatever world size wrote them, and split
//! them for this one), `--out FILE` (rank 0 writes the final parameters as JSON).
//!
//! The batch is cut into 12 micro-batches, dealt round-robin to the ranks. The all-reduce
//! sums one slot per micro-batch, each holding one rank's gradient and zeros elsewhere, so it
//! adds exact zeros only; every rank then adds the 12 slots in the same order. The averaged
//! gradient is therefore the same bits on any world size, and a run resumed on another
//! number of ranks continues exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mpi::collective::SystemOperation;
use mpi::traits::*;
use ndarray::{Array2, ArrayD, ArrayView1, ArrayView2, Axis, IxDyn, s};
use ndarray_optim::shard::{merge, split};
use ndarray_optim::{
    Adam, Momentum, Optimizer, ParamGrad, ShardPlan, ShardedOptimizer, UpdateRule,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

const MICRO_BATCHES: usize = 12;
const MICRO_BATCH: usize = 16;
struct Options {
    rule: String,
    steps: usize,
    check: bool,
    save_dir: Option<PathBuf>,
    resume_dir: Option<PathBuf>,
    out: Option<PathBuf>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        rule: "adam".into(),
        steps: 50,
        check: false,
        save_dir: None,
        resume_dir: None,
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--rule" => options.rule = value()?,
            "--steps" => options.steps = value()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--check" => options.check = true,
            "--save-dir" => options.save_dir = Some(value()?.into()),
            "--resume-dir" => options.resume_dir = Some(value()?.into()),
            "--out" => options.out = Some(value()?.into()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

/// Layer widths: input, three hidden layers, output.
const WIDTHS: [usize; 5] = [8, 24, 24, 24, 4];

/// A perceptron with tanh hidden layers, fitted to a fixed teacher network of the same shape.
struct Model {
    /// `layer{i}.weight` then `layer{i}.bias` for every layer.
    tensors: Vec<(String, ArrayD<f64>)>,
}

fn pseudo_random(shape: &[usize], seed: u64, scale: f64) -> ArrayD<f64> {
    let numel: usize = shape.iter().product();
    let values = (0..numel)
        .map(|i| ((i as f64 * 0.618_034 + seed as f64 * 0.414_214) * 12.9898).sin() * scale);
    ArrayD::from_shape_vec(IxDyn(shape), values.collect()).expect("numel matches")
}

impl Model {
    fn new(seed: u64) -> Self {
        let mut tensors = Vec::new();
        for (layer, pair) in WIDTHS.windows(2).enumerate() {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let seed = seed + 2 * layer as u64;
            let scale = (3.0 / fan_in as f64).sqrt();
            tensors.push((
                format!("layer{layer}.weight"),
                pseudo_random(&[fan_out, fan_in], seed, scale),
            ));
            tensors.push((format!("layer{layer}.bias"), pseudo_random(&[fan_out], seed + 1, 0.1)));
        }
        Model { tensors }
    }

    fn layer(&self, layer: usize) -> (ArrayView2<'_, f64>, ArrayView1<'_, f64>) {
        let weight = self.tensors[2 * layer].1.view().into_dimensionality().expect("a matrix");
        let bias = self.tensors[2 * layer + 1].1.view().into_dimensionality().expect("a vector");
        (weight, bias)
    }

    /// The activations of every layer, the input first.
    fn forward(&self, x: &Array2<f64>) -> Vec<Array2<f64>> {
        let layers = WIDTHS.len() - 1;
        let mut activations = vec![x.clone()];
        for layer in 0..layers {
            let (weight, bias) = self.layer(layer);
            let z = activations[layer].dot(&weight.t()) + bias;
            activations.push(if layer + 1 < layers { z.mapv(f64::tanh) } else { z });
        }
        activations
    }

    /// Gradients of ½ Σ‖y − t‖² / `total` over the rows of `x`, in tensor order, and that loss.
    fn gradients(
        &self,
        x: &Array2<f64>,
        target: &Array2<f64>,
        total: usize,
    ) -> (Vec<ArrayD<f64>>, f64) {
        let activations = self.forward(x);
        let layers = WIDTHS.len() - 1;
        let mut delta = (&activations[layers] - target) / total as f64;
        let loss = 0.5 * total as f64 * delta.mapv(|r| r * r).sum();
        let mut grads = vec![ArrayD::zeros(IxDyn(&[])); 2 * layers];
        for layer in (0..layers).rev() {
            grads[2 * layer] = delta.t().dot(&activations[layer]).into_dyn();
            grads[2 * layer + 1] = delta.sum_axis(Axis(0)).into_dyn();
            if layer > 0 {
                let (weight, _) = self.layer(layer);
                delta = delta.dot(&weight) * activations[layer].mapv(|h| 1.0 - h * h);
            }
        }
        (grads, loss)
    }
}

/// The training data: inputs and the outputs of a fixed teacher network.
fn data() -> (Array2<f64>, Array2<f64>) {
    let n = MICRO_BATCHES * MICRO_BATCH;
    let x: Array2<f64> = pseudo_random(&[n, WIDTHS[0]], 7, 1.0).into_dimensionality().expect("2-D");
    let target = Model::new(99).forward(&x).pop().expect("an output layer");
    (x, target)
}

fn state_bytes<R: UpdateRule, A: ndarray_optim::Element>(optimizer: &Optimizer<R, A>) -> u64 {
    let values: usize = optimizer
        .checkpoint()
        .tensors
        .iter()
        .filter_map(|tensor| tensor.state.as_ref())
        .flat_map(|state| state.buffers.iter().map(|buffer| buffer.values.len()))
        .sum();
    (values * size_of::<A>()) as u64
}

fn shard_path(dir: &Path, rank: usize, world: usize) -> PathBuf {
    dir.join(format!("shard-{rank}-of-{world}.json"))
}

fn run<R>(
    rule: R,
    options: &Options,
    world: &mpi::topology::SimpleCommunicator,
) -> Result<(), String>
where
    R: UpdateRule + Serialize + DeserializeOwned,
{
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    if !MICRO_BATCHES.is_multiple_of(size) {
        return Err(format!("the world size must divide {MICRO_BATCHES}, not {size}"));
    }
    let mut model = Model::new(1);
    let shapes = model.tensors.iter().map(|(n, t)| (n.as_str(), t.shape()));
    let plan = ShardPlan::new(shapes, size).map_err(|e| e.to_string())?;
    let mut setup = Optimizer::new(rule.clone()).map_err(|e| e.to_string())?;
    let mut bias_rule = rule;
    *bias_rule.lr_mut() *= 2.0;
    setup.add_group("biases", bias_rule).map_err(|e| e.to_string())?;
    for (name, _) in model.tensors.iter().filter(|(name, _)| name.ends_with("bias")) {
        setup.assign(name, "biases").map_err(|e| e.to_string())?;
    }
    let mut reference = setup.clone();
    if let Some(dir) = &options.resume_dir {
        // The shards name their rank and the world size that wrote them; merging needs the
        // plan of that world, and refuses a set with a rank missing.
        let mut shards = BTreeMap::new();
        let mut written_by = None;
        for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some((of, world)) = name.as_deref().and_then(|name| {
                let (rank, world) =
                    name.strip_prefix("shard-")?.strip_suffix(".json")?.split_once("-of-")?;
                Some((rank.parse::<usize>().ok()?, world.parse::<usize>().ok()?))
            }) else {
                continue;
            };
            if *written_by.get_or_insert(world) != world {
                return Err(format!("{}: shards of different world sizes", dir.display()));
            }
            let json = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let shard: Optimizer<R, f64> =
                serde_json::from_slice(&json).map_err(|e| format!("{}: {e}", path.display()))?;
            shards.insert(of, shard.checkpoint());
        }
        let written_by = written_by.ok_or(format!("{}: no shards", dir.display()))?;
        if let Some(missing) = (0..written_by).find(|rank| !shards.contains_key(rank)) {
            return Err(format!("{}: the shard of rank {missing} is missing", dir.display()));
        }
        let shapes = model.tensors.iter().map(|(n, t)| (n.as_str(), t.shape()));
        let old_plan = ShardPlan::new(shapes, written_by).map_err(|e| e.to_string())?;
        let full = merge(shards.into_values().collect(), &old_plan).map_err(|e| e.to_string())?;
        reference = Optimizer::from_checkpoint(full.clone()).map_err(|e| e.to_string())?;
        let mine = split(full, &plan).map_err(|e| e.to_string())?.swap_remove(rank);
        setup = Optimizer::from_checkpoint(mine).map_err(|e| e.to_string())?;
        let params = std::fs::read(dir.join("params.json")).map_err(|e| e.to_string())?;
        let params: BTreeMap<String, Vec<f64>> =
            serde_json::from_slice(&params).map_err(|e| e.to_string())?;
        for (name, tensor) in &mut model.tensors {
            let values = params.get(name).ok_or(format!("params.json lacks `{name}`"))?;
            tensor.as_slice_mut().expect("contiguous").copy_from_slice(values);
        }
    }
    let mut sharded =
        ShardedOptimizer::new(setup, plan.clone(), rank).map_err(|e| e.to_string())?;
    let mut reference_model = Model { tensors: model.tensors.clone() };
    let (x, target) = data();

    let numels: Vec<usize> = model.tensors.iter().map(|(_, t)| t.len()).collect();
    let grad_len: usize = numels.iter().sum();
    let mut slots = vec![0.0; MICRO_BATCHES * grad_len];
    let mut summed = vec![0.0; MICRO_BATCHES * grad_len];
    let mut loss = 0.0;
    for _ in 0..options.steps {
        slots.iter_mut().for_each(|v| *v = 0.0);
        let mut local_loss = 0.0;
        for micro in (rank..MICRO_BATCHES).step_by(size) {
            let rows = s![micro * MICRO_BATCH..(micro + 1) * MICRO_BATCH, ..];
            let total = MICRO_BATCHES * MICRO_BATCH;
            let (grads, part) =
                model.gradients(&x.slice(rows).to_owned(), &target.slice(rows).to_owned(), total);
            local_loss += part;
            let slot = &mut slots[micro * grad_len..(micro + 1) * grad_len];
            let flat = grads.iter().flat_map(|g| g.iter().copied());
            slot.iter_mut().zip(flat).for_each(|(s, g)| *s = g);
        }
        world.all_reduce_into(&slots[..], &mut summed[..], SystemOperation::sum());
        world.all_reduce_into(&local_loss, &mut loss, SystemOperation::sum());
        // The average: the micro-batch gradients added in one fixed order on every rank.
        let mut averaged = vec![0.0; grad_len];
        for slot in summed.chunks(grad_len) {
            averaged.iter_mut().zip(slot).for_each(|(a, s)| *a += s);
        }
        // The model and the averaged gradient in the plan's flat order (by name).
        let mut offsets = vec![0; numels.len()];
        (1..numels.len()).for_each(|i| offsets[i] = offsets[i - 1] + numels[i - 1]);
        let mut flat_params = vec![0.0; grad_len];
        let mut flat_grads = vec![0.0; grad_len];
        for planned in plan.tensors() {
            let index = model.tensors.iter().position(|(n, _)| n == planned.name).expect("planned");
            let param = model.tensors[index].1.as_slice().expect("contiguous");
            flat_params[planned.range.clone()].copy_from_slice(param);
            let grad = &averaged[offsets[index]..offsets[index] + numels[index]];
            flat_grads[planned.range].copy_from_slice(grad);
        }
        let mine = plan.shard(rank);
        let mut exchanged = Vec::new();
        sharded
            .step_all(&mut flat_params[mine.clone()], &flat_grads[mine], |values| {
                exchanged.resize(values.len(), 0.0);
                world.all_reduce_into(&values[..], &mut exchanged[..], SystemOperation::sum());
                values.copy_from_slice(&exchanged);
            })
            .map_err(|e| e.to_string())?;
        for owner in 0..size {
            let shard = &mut flat_params[plan.shard(owner)];
            world.process_at_rank(owner as i32).broadcast_into(shard);
        }
        for planned in plan.tensors() {
            let (_, param) =
                model.tensors.iter_mut().find(|(n, _)| n == planned.name).expect("planned");
            param.as_slice_mut().expect("contiguous").copy_from_slice(&flat_params[planned.range]);
        }
        if options.check && rank == 0 {
            let grads: Vec<ArrayD<f64>> = (0..numels.len())
                .map(|index| {
                    let values = averaged[offsets[index]..offsets[index] + numels[index]].to_vec();
                    ArrayD::from_shape_vec(model.tensors[index].1.raw_dim(), values).expect("sizes")
                })
                .collect();
            let mut batch: Vec<ParamGrad<'_, f64>> = reference_model
                .tensors
                .iter_mut()
                .zip(&grads)
                .map(|((name, param), grad)| ParamGrad::new(name, param, grad))
                .collect();
            reference.step_all(&mut batch).map_err(|e| e.to_string())?;
        }
    }

    let mine = state_bytes(sharded.optimizer());
    let mut all = vec![0_u64; size];
    world.all_gather_into(&mine, &mut all[..]);
    if let Some(dir) = &options.save_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let json = serde_json::to_vec(sharded.optimizer()).map_err(|e| e.to_string())?;
        std::fs::write(shard_path(dir, rank, size), json).map_err(|e| e.to_string())?;
    }
    if rank == 0 {
        let params: BTreeMap<&str, Vec<f64>> =
            model.tensors.iter().map(|(n, t)| (n.as_str(), t.iter().copied().collect())).collect();
        let json = serde_json::to_vec(&params).map_err(|e| e.to_string())?;
        if let Some(dir) = &options.save_dir {
            std::fs::write(dir.join("params.json"), &json).map_err(|e| e.to_string())?;
        }
        if let Some(out) = &options.out {
            std::fs::write(out, &json).map_err(|e| e.to_string())?;
        }
        println!("{size} ranks, {} steps, final loss {loss:.6e}", options.steps);
        println!("optimizer state per rank (bytes): {all:?}");
        if options.check {
            let full = state_bytes(&reference);
            let largest = all.iter().max().copied().unwrap_or(0);
            println!(
                "one process would hold {full} bytes; the largest shard holds {:.2} of that \
                 (1/{size} = {:.2})",
                largest as f64 / full as f64,
                1.0 / size as f64
            );
            let same =
                model.tensors.iter().zip(&reference_model.tensors).all(|((_, a), (_, b))| {
                    a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits())
                });
            if !same {
                return Err("sharded parameters differ from the single-process run".into());
            }
            println!(
                "equivalence: sharded parameters are bit-identical to one process on the same averaged gradients"
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(universe) = mpi::initialize() else {
        eprintln!("error: MPI could not be initialised");
        return ExitCode::from(2);
    };
    let world = universe.world();
    let result = options().and_then(|options| match options.rule.as_str() {
        "adam" => run(Adam { lr: 0.01, ..Adam::default() }, &options, &world),
        "momentum" => {
            run(Momentum { lr: 0.05, momentum: 0.9, ..Momentum::default() }, &options, &world)
        }
        other => Err(format!("unknown rule {other} (adam or momentum)")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error (rank {}): {message}", world.rank());
            ExitCode::FAILURE
        }
    }
}
