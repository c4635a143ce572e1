//! Data-parallel training over MPI with the optimizer state sharded by elements (ZeRO-2):
//! every rank computes the gradients of its part of the batch, a reduce-scatter leaves each
//! rank the summed gradient of its own shard only, each rank steps its shard, and an
//! all-gather brings every rank the updated parameters.
//!
//! ```text
//! cargo build --release --features mpi --example data_parallel
//! mpirun -np 2 target/release/examples/data_parallel --steps 50 --clip 0.05 --check
//! mpirun -np 4 target/release/examples/data_parallel --exact --steps 20 --save-dir ckpt
//! mpirun -np 2 target/release/examples/data_parallel --exact --steps 20 --resume-dir ckpt --out p.json
//! mpirun -np 2 target/release/examples/data_parallel --bench
//! ```
//!
//! The parameters live in one flat buffer in the plan's flat order (tensors sorted by name),
//! the gradients in another, and the buffers of the collectives are allocated once.
//!
//! The batch is cut into 12 micro-batches, dealt round-robin to the ranks. By default each
//! rank adds up its micro-batches' gradients and the reduce-scatter adds the ranks' sums, in
//! an order that depends on the world size. With `--exact` the gradient is instead averaged
//! the same way on any world size: an all-reduce of one slot per micro-batch (each holding
//! one rank's gradient and exact zeros elsewhere), then the slots added in one fixed order, so
//! that a run resumed on another number of ranks continues bit for bit. It sends 12 gradients
//! per step instead of one.

mod balance;
mod checkpoints;
mod collectives;
mod mlp;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use mpi::traits::*;
use ndarray::Array2;
use ndarray_optim::{
    Adam, Clip, Lamb, Momentum, NonFinite, Optimizer, Prodigy, ShardPlan, ShardedOptimizer,
    StepOutcome, UpdateRule,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use balance::Balance;
use collectives::Collectives;
use mlp::Mlp;
use train::{Data, Trainer, step_whole};

const HELP: &str = "Data-parallel training over MPI with ZeRO-2 sharded optimizer state.

Usage: mpirun -np N data_parallel [OPTIONS]

Options:
  --rule adam|momentum|prodigy|lamb
                         the update rule; the biases are a group of their own, at twice
                         the rate (Prodigy: at its one rate, with weight decay); Lamb looks
                         at whole tensors, so its plan cuts between tensors [default: adam]
  --steps N              training steps [default: 50; with --bench, timed steps: 10]
  --exact                average the gradients the same way on any world size (12x traffic)
  --clip MAX_NORM        clip by the global norm of the whole model's gradient; implies
                         --non-finite skip unless given
  --non-finite skip|refuse
                         skip the step, or stop with an error, on a NaN or infinite gradient
  --nan-at STEP          the last rank puts a NaN into its gradient at step STEP (from 0)
  --check                rank 0 also steps one unsharded optimizer on the same averaged
                         gradients and requires bit-identical parameters and outcomes
  --save-dir DIR         each rank writes its optimizer shard there, rank 0 the parameters
  --resume-dir DIR       start from the shards there, whatever world size wrote them
  --out FILE             rank 0 writes the final parameters as JSON
  --bench                a 12.6M-parameter model, timed after --warmup steps
  --warmup N             untimed steps before the timed ones with --bench [default: 2]
  --baseline SECONDS     the single-process step time, to print the ratio to it
  --plans                print how evenly plans on 2, 3 and 4 ranks share out some models
";

struct Options {
    rule: String,
    steps: Option<usize>,
    exact: bool,
    clip: Option<f64>,
    non_finite: Option<NonFinite>,
    nan_at: Option<usize>,
    check: bool,
    save_dir: Option<PathBuf>,
    resume_dir: Option<PathBuf>,
    out: Option<PathBuf>,
    bench: bool,
    warmup: usize,
    baseline: Option<f64>,
    plans: bool,
    help: bool,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        rule: "adam".into(),
        steps: None,
        exact: false,
        clip: None,
        non_finite: None,
        nan_at: None,
        check: false,
        save_dir: None,
        resume_dir: None,
        out: None,
        bench: false,
        warmup: 2,
        baseline: None,
        plans: false,
        help: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        fn number<T: std::str::FromStr>(arg: &str, value: String) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            value.parse().map_err(|e| format!("{arg} {value}: {e}"))
        }
        match arg.as_str() {
            "--rule" => options.rule = value()?,
            "--steps" => options.steps = Some(number(&arg, value()?)?),
            "--exact" => options.exact = true,
            "--clip" => options.clip = Some(number(&arg, value()?)?),
            "--non-finite" => {
                options.non_finite = Some(match value()?.as_str() {
                    "skip" => NonFinite::Skip,
                    "refuse" => NonFinite::Refuse,
                    other => return Err(format!("--non-finite {other}: skip or refuse")),
                })
            }
            "--nan-at" => options.nan_at = Some(number(&arg, value()?)?),
            "--check" => options.check = true,
            "--save-dir" => options.save_dir = Some(value()?.into()),
            "--resume-dir" => options.resume_dir = Some(value()?.into()),
            "--out" => options.out = Some(value()?.into()),
            "--bench" => options.bench = true,
            "--warmup" => options.warmup = number(&arg, value()?)?,
            "--baseline" => options.baseline = Some(number(&arg, value()?)?),
            "--plans" => options.plans = true,
            "--help" | "-h" => options.help = true,
            other => return Err(format!("unknown option {other} (see --help)")),
        }
    }
    Ok(options)
}

/// A perceptron and its batch: layer widths (input first), micro-batches and rows in each.
struct Config {
    widths: &'static [usize],
    micro_batches: usize,
    micro_batch: usize,
}

/// The example: 8-24-24-24-4, 192 rows.
const SMALL: Config = Config { widths: &[8, 24, 24, 24, 4], micro_batches: 12, micro_batch: 16 };
/// The benchmark: 1024-2048-2048-2048-1024, 12,590,080 parameters, 96 rows.
const BENCH: Config =
    Config { widths: &[1024, 2048, 2048, 2048, 1024], micro_batches: 12, micro_batch: 8 };

/// The training set of `config`: inputs, and the outputs of a teacher network of the same
/// shape.
fn data(config: &Config, mlp: &Mlp) -> Data {
    let rows = config.micro_batches * config.micro_batch;
    let mut x = Array2::zeros((rows, config.widths[0]));
    mlp::pseudo_random(x.as_slice_mut().expect("standard layout"), 7, 1.0);
    let mut activations = mlp.forward(&mlp.init(99), x.view());
    let target = activations.pop().expect("an output layer");
    Data { x, target, micro_batches: config.micro_batches }
}

fn bytes(bytes: f64) -> String {
    if bytes < 1e6 { format!("{bytes:.0} B") } else { format!("{:.3} MB", bytes / 1e6) }
}

/// The plan of `tensors` over `world` ranks: cut between tensors only if `whole_tensors`.
fn plan<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    world: usize,
    whole_tensors: bool,
) -> Result<ShardPlan, String> {
    let plan = if whole_tensors {
        ShardPlan::whole_tensors(tensors, world)
    } else {
        ShardPlan::new(tensors, world)
    };
    plan.map_err(|e| e.to_string())
}

/// Trains with `rule`, and `bias_rule` for the biases' group.
fn run<R>(
    rule: R,
    bias_rule: R,
    options: &Options,
    world: &mpi::topology::SimpleCommunicator,
) -> Result<(), String>
where
    R: UpdateRule + Serialize + DeserializeOwned,
{
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let config = if options.bench { &BENCH } else { &SMALL };
    let tensors = mlp::tensors(config.widths);
    let shapes = tensors.iter().map(|(name, shape)| (name.as_str(), shape.as_slice()));
    let mut optimizer = Optimizer::new(rule).map_err(|e| e.to_string())?;
    optimizer.add_group("biases", bias_rule).map_err(|e| e.to_string())?;
    for (name, _) in tensors.iter().filter(|(name, _)| name.ends_with("bias")) {
        optimizer.assign(name, "biases").map_err(|e| e.to_string())?;
    }
    // Cut inside tensors, unless a rule looks at whole tensors.
    let plan = ShardPlan::for_optimizer(&optimizer, shapes, size).map_err(|e| e.to_string())?;
    let mlp = Mlp::new(config.widths, &plan)?;

    let (mut optimizer, params) = match &options.resume_dir {
        Some(dir) => checkpoints::resume::<R>(dir, &plan)?,
        None => (optimizer, mlp.init(1)),
    };
    let clip = options.clip.map(|max_norm| Clip::GlobalNorm { max_norm });
    optimizer.set_clip(clip).map_err(|e| e.to_string())?;
    let skip = if clip.is_some() { NonFinite::Skip } else { NonFinite::Ignore };
    optimizer.set_non_finite(options.non_finite.unwrap_or(skip));
    let mut reference = (options.check && rank == 0).then(|| (optimizer.clone(), params.clone()));
    let mut full_grads = vec![0.0; if options.check && rank == 0 { plan.len() } else { 0 }];

    let sharded =
        ShardedOptimizer::new(optimizer, plan.clone(), rank).map_err(|e| e.to_string())?;
    let comm = Collectives::new(world, &plan)?;
    let data = data(config, &mlp);
    let mut trainer = Trainer::new(mlp, params, sharded, comm, options.exact, config.micro_batches);

    let steps = options.steps.unwrap_or(if options.bench { 10 } else { 50 });
    let warmup = if options.bench { options.warmup } else { 0 };
    let (mut loss, mut clipped, mut skipped) = (0.0, 0, 0);
    let mut started = Instant::now();
    for step in 0..warmup + steps {
        if step == warmup {
            // Only the timed steps count.
            world.barrier();
            trainer.times = Default::default();
            trainer.comm.sent = Default::default();
            (clipped, skipped) = (0, 0);
            started = Instant::now();
        }
        let poison = options.nan_at == Some(step) && rank + 1 == size;
        let outcome;
        (loss, outcome) = trainer.step(&data, poison)?;
        match outcome {
            StepOutcome::Stepped { grad_norm: Some(norm) } if Some(norm) > options.clip => {
                clipped += 1
            }
            StepOutcome::Skipped { .. } => skipped += 1,
            _ => {}
        }
        if options.check {
            trainer.gather_gradient(&mut full_grads);
        }
        if let Some((optimizer, params)) = &mut reference {
            let expected = step_whole(optimizer, &trainer.plan, params, &full_grads)?;
            if expected != outcome {
                return Err(format!("step {step}: sharded {outcome:?}, one process {expected:?}"));
            }
        }
    }
    let wall = started.elapsed().as_secs_f64() / steps as f64;

    if let Some(dir) = &options.save_dir {
        checkpoints::save(dir, trainer.sharded.optimizer(), &plan, rank, &trainer.params)?;
    }
    let per_step = |seconds: std::time::Duration| seconds.as_secs_f64() / steps as f64;
    let times = trainer.times;
    let sent = trainer.comm.sent;
    let bulk = trainer.comm.gather_all(sent.bulk as f64 / steps as f64);
    let scalars = trainer.comm.gather_all(sent.scalars as f64 / steps as f64);
    let state = trainer.comm.gather_all(trainer.sharded.optimizer().state_bytes() as f64);
    let mean = |value: f64| trainer.comm.gather_all(value).iter().sum::<f64>() / size as f64;
    let compute = mean(per_step(times.compute));
    let communication = mean(per_step(times.communication));
    let optimizing = mean(per_step(times.optimizer));
    if rank != 0 {
        return Ok(());
    }
    if let Some(out) = &options.out {
        checkpoints::write_params(out, &plan, &trainer.params)?;
    }
    let mode = if options.exact { "exact averaging" } else { "ZeRO-2" };
    println!(
        "{size} ranks, {mode}, {} parameters, {steps} steps, final loss {loss:.6e}",
        plan.len()
    );
    if options.clip.is_some() || skipped > 0 {
        println!("steps clipped: {clipped}, skipped for a non-finite gradient: {skipped}");
    }
    println!("{}", Balance::of(&plan));
    let value = size_of::<f64>() as f64;
    let formula = 2.0 * (size as f64 - 1.0) / size as f64 * plan.len() as f64 * value;
    let list = |values: &[f64]| values.iter().map(|&b| bytes(b)).collect::<Vec<_>>().join(", ");
    println!(
        "sent per rank per step: gradients and parameters {}; scalars {}",
        list(&bulk),
        list(&scalars)
    );
    println!("  2·(N−1)/N·P·s = {} (P = {}, s = 8 bytes)", bytes(formula), plan.len());
    println!("optimizer state per rank: {}", list(&state));
    if let Some((optimizer, params)) = &reference {
        let whole = optimizer.state_bytes() as f64;
        let largest = state.iter().copied().fold(0.0, f64::max);
        println!(
            "one process holds {}; the largest rank holds {:.4} of that (1/{size} = {:.4})",
            bytes(whole),
            largest / whole,
            1.0 / size as f64
        );
        let same = params.iter().zip(&trainer.params).all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            return Err("sharded parameters differ from the single-process run".into());
        }
        println!(
            "equivalence: sharded parameters are bit-identical to one process on the same averaged gradients"
        );
    }
    if options.bench {
        println!(
            "step {:.4} s (rank 0, wall): compute {compute:.4} s, communication {communication:.4} s, \
             optimizer {optimizing:.4} s (means over ranks)",
            wall
        );
        match options.baseline {
            Some(baseline) => {
                println!("{:.3} × the single-process step ({baseline} s)", wall / baseline)
            }
            None if size == 1 => println!("pass --baseline {wall:.4} to the runs on more ranks"),
            None => {}
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // A rank that unwinds would wait in MPI's finalisation for ranks waiting for it; dying
    // instead makes mpirun end the job.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let Some(universe) = mpi::initialize() else {
        eprintln!("error: MPI could not be initialised");
        return ExitCode::from(2);
    };
    let world = universe.world();
    let result = options().and_then(|options| {
        if options.help || options.plans {
            if world.rank() == 0 {
                if options.help {
                    print!("{HELP}");
                } else {
                    let dominant = vec![
                        ("embedding.weight".to_owned(), vec![50_000, 512]),
                        ("head.weight".to_owned(), vec![10, 512]),
                        ("head.bias".to_owned(), vec![10]),
                    ];
                    print!(
                        "{}",
                        balance::table(&[
                            ("example", mlp::tensors(SMALL.widths)),
                            ("benchmark", mlp::tensors(BENCH.widths)),
                            ("one dominant tensor", dominant),
                        ])?
                    );
                }
            }
            return Ok(());
        }
        match options.rule.as_str() {
            "adam" => {
                let rule = |lr| Adam { lr, ..Adam::default() };
                run(rule(0.01), rule(0.02), &options, &world)
            }
            "momentum" => {
                let rule = |lr| Momentum { lr, momentum: 0.9, ..Momentum::default() };
                run(rule(0.05), rule(0.1), &options, &world)
            }
            "prodigy" => {
                let rule = |weight_decay| Prodigy { weight_decay, ..Prodigy::default() };
                run(rule(0.0), rule(0.01), &options, &world)
            }
            "lamb" => {
                let rule = |lr| Lamb { lr, ..Lamb::default() };
                run(rule(0.01), rule(0.02), &options, &world)
            }
            other => Err(format!("unknown rule {other} (adam, momentum, prodigy or lamb)")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error (rank {}): {message}", world.rank());
            // The other ranks may be waiting in a collective for this one: end them all.
            if world.size() > 1 {
                world.abort(1);
            }
            ExitCode::FAILURE
        }
    }
}
