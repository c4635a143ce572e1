//! Step throughput of one rule: how long a step takes per element, and the memory traffic
//! that makes.
//!
//! ```sh
//! cargo run --release --example throughput -- --optimizer adam --dtype f32 \
//!     --numel 16777216 --steps 20 --threads 1
//! ```
//!
//! steps `--tensors` tensors of `--numel` elements each (one by default; several are stepped
//! together by `step_all`), after one warm-up step that creates their state, and prints as its
//! last line e.g.
//! `adam f32 numel=16777216 steps=20 threads=1 bytes_per_elem=28.00 ns_per_elem=0.71 gbps=39.4`:
//! the bytes a step reads and writes per element (parameter and state twice, gradient once),
//! the median step time per element, and those bytes per second of that time. More than one thread needs the
//! `rayon` feature (`--features rayon`). `--path zip|baseline|avx2|avx512` pins the loop, to
//! compare them. `--optimizer copy` times a plain copy instead (its bytes are those read and
//! written), the memory bandwidth that bounds a step. `--rule any` steps the rule as a
//! run-time [`Rule`] value (the path of rules chosen from a configuration, compiled inside the
//! crate) instead of its own type (`--rule typed`, the default); the line then says `rule=any`.
//! `--placement aligned` keeps parameters and gradients in [`AlignedBuffer`]s, placed as the
//! optimizer places its state (2 MiB aligned, in transparent huge pages, when large), instead
//! of `Vec`s (`--placement vec`, the default); `--placement flat` keeps all tensors in one
//! [`FlatParams`] block, stepped as one tensor by `step_flat`. `--state bf16|8bit` keeps the state in low
//! precision ([`StatePrecision`], `f32` only; `--state f32` is the default); the line then
//! says `state=bf16` or `state=8bit`, and `bytes_per_elem` counts the bytes a step moves.
//!
//! `--model gpt2-small|small40` steps the parameter list of a model instead, with `step_all`
//! (`--numel` and `--tensors` are then ignored; `numel=` reports the model's total):
//! `gpt2-small` is GPT-2 small's 148 tensors of 124,439,808 parameters (`wte` 50257×768,
//! `wpe` 1024×768, 12 blocks of two layer norms of 768, `attn.c_attn` 768×2304 + 2304,
//! `attn.c_proj` 768×768 + 768, `mlp.c_fc` 768×3072 + 3072, `mlp.c_proj` 3072×768 + 768,
//! and `ln_f` 768 + 768), `small40` a stack of 20 linear layers of 256×256 weights and 256
//! biases (40 tensors, 1,315,840 parameters).

use std::ops::DerefMut;
use std::process::ExitCode;
use std::time::Instant;

use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn};
use ndarray_optim::{
    Adadelta, Adagrad, Adam, AdamW, Adamax, AlignedBuffer, Element, FlatParams, KernelPath,
    Momentum, NAdam, Nesterov, Optimizer, ParamGrad, RAdam, RmsProp, Rule, Sgd, StatePrecision,
    UpdateRule, with_kernel_path,
};

struct Args {
    optimizer: String,
    dtype: String,
    numel: usize,
    steps: usize,
    threads: usize,
    tensors: usize,
    path: Option<KernelPath>,
    /// Step through the run-time `Rule` value rather than the rule's own type.
    any: bool,
    /// Where parameters and gradients are kept.
    placement: Placement,
    /// Step this model's parameter list rather than `tensors` tensors of `numel` elements.
    model: Option<String>,
    /// How the optimizer keeps its state.
    state: StatePrecision,
}

/// Where a benchmark keeps its parameters and gradients.
#[derive(Clone, Copy, PartialEq)]
enum Placement {
    /// A `Vec` for each.
    Vec,
    /// An `AlignedBuffer` for each.
    Aligned,
    /// All in one `FlatParams` block.
    Flat,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        optimizer: "adam".into(),
        dtype: "f32".into(),
        numel: 1 << 20,
        steps: 20,
        threads: 1,
        tensors: 1,
        path: None,
        any: false,
        placement: Placement::Vec,
        model: None,
        state: StatePrecision::Full,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--optimizer" => args.optimizer = value.clone(),
            "--dtype" => args.dtype = value.clone(),
            "--numel" => args.numel = number()?,
            "--steps" => args.steps = number()?.max(1),
            "--threads" => args.threads = number()?.max(1),
            "--tensors" => args.tensors = number()?.max(1),
            "--rule" => {
                args.any = match value.as_str() {
                    "any" => true,
                    "typed" => false,
                    other => return Err(format!("--rule {other}: `typed` or `any`")),
                }
            }
            "--placement" => {
                args.placement = match value.as_str() {
                    "vec" => Placement::Vec,
                    "aligned" => Placement::Aligned,
                    "flat" => Placement::Flat,
                    other => {
                        return Err(format!("--placement {other}: `vec`, `aligned` or `flat`"));
                    }
                }
            }
            "--model" => {
                model_tensors(&value).ok_or_else(|| format!("--model {value}: unknown model"))?;
                args.model = Some(value.clone());
            }
            "--state" => {
                args.state = match value.as_str() {
                    "f32" => StatePrecision::Full,
                    "bf16" => StatePrecision::Bf16,
                    // Every size in 8 bits: the benchmark's tensors may be small.
                    "8bit" => StatePrecision::Int8 { min_numel: 0 },
                    other => return Err(format!("--state {other}: `f32`, `bf16` or `8bit`")),
                }
            }
            "--path" => {
                let path = KernelPath::ALL
                    .into_iter()
                    .find(|path| format!("{path:?}").eq_ignore_ascii_case(&value))
                    .ok_or_else(|| format!("unknown path {value}"))?;
                args.path = Some(path);
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

/// The names and shapes of the parameter tensors of the model `name`, in the order PyTorch's
/// `model.parameters()` lists them.
fn model_tensors(name: &str) -> Option<Vec<(String, Vec<usize>)>> {
    let mut tensors = Vec::new();
    let mut add = |name: String, shape: &[usize]| tensors.push((name, shape.to_vec()));
    match name {
        "gpt2-small" => {
            let (d, vocab, context) = (768, 50257, 1024);
            add("wte.weight".into(), &[vocab, d]);
            add("wpe.weight".into(), &[context, d]);
            for block in 0..12 {
                let layers: [(&str, &[usize], usize); 6] = [
                    ("ln_1", &[], d),
                    ("attn.c_attn", &[d], 3 * d),
                    ("attn.c_proj", &[d], d),
                    ("ln_2", &[], d),
                    ("mlp.c_fc", &[d], 4 * d),
                    ("mlp.c_proj", &[4 * d], d),
                ];
                // A layer norm's weight is a vector; a linear layer's is a matrix (Conv1D:
                // inputs × outputs).
                for (layer, inputs, outputs) in layers {
                    add(format!("h.{block}.{layer}.weight"), &[inputs, &[outputs]].concat());
                    add(format!("h.{block}.{layer}.bias"), &[outputs]);
                }
            }
            add("ln_f.weight".into(), &[d]);
            add("ln_f.bias".into(), &[d]);
        }
        "small40" => {
            for layer in 0..20 {
                add(format!("layers.{layer}.weight"), &[256, 256]);
                add(format!("layers.{layer}.bias"), &[256]);
            }
        }
        _ => return None,
    }
    Some(tensors)
}

/// The names and shapes of the tensors to step: `--model`'s, else `--tensors` of `--numel`.
fn tensors(args: &Args) -> Vec<(String, Vec<usize>)> {
    match &args.model {
        Some(model) => model_tensors(model).expect("checked when parsed"),
        None => (0..args.tensors).map(|i| (format!("layer{i}.weight"), vec![args.numel])).collect(),
    }
}

/// Deterministic values in about [-1, 1], scaled by `scale`, in a `Vec` or, for
/// `--placement aligned`, an [`AlignedBuffer`].
fn values<A: Element>(
    numel: usize,
    seed: usize,
    scale: f64,
    args: &Args,
) -> Box<dyn DerefMut<Target = [A]>> {
    let values = (0..numel).map(|i| A::from_f64(((i + seed) as f64 * 0.618_034).sin() * scale));
    let values: Vec<A> = values.collect();
    if args.placement == Placement::Aligned {
        Box::new(AlignedBuffer::from_slice(&values))
    } else {
        Box::new(values)
    }
}

/// Median seconds per step over `args.steps` steps, after one warm-up step.
fn time_steps<R: UpdateRule, A: Element>(rule: R, args: &Args) -> f64 {
    let mut opt = Optimizer::<R, A>::new(rule).expect("the defaults are valid");
    if let Err(error) = opt.set_state_precision("default", args.state) {
        panic!("--state: {error}");
    }
    if args.placement == Placement::Flat {
        return time_flat_steps(&mut opt, args);
    }
    let (names, shapes): (Vec<String>, Vec<Vec<usize>>) = tensors(args).into_iter().unzip();
    let numel = |i: usize| shapes[i].iter().product::<usize>();
    let mut param_values: Vec<_> =
        (0..names.len()).map(|i| values(numel(i), i, 1.0, args)).collect();
    let grad_values: Vec<_> =
        (0..names.len()).map(|i| values(numel(i), i + 7, 1e-3, args)).collect();
    // Views made once, as a training loop holds its arrays; the batch is rebuilt every step.
    let mut params: Vec<ArrayViewMutD<'_, A>> = (param_values.iter_mut().zip(&shapes))
        .map(|(p, shape)| ArrayViewMutD::from_shape(IxDyn(shape), &mut p[..]).expect("sized"))
        .collect();
    let grads: Vec<ArrayViewD<'_, A>> = (grad_values.iter().zip(&shapes))
        .map(|(g, shape)| ArrayViewD::from_shape(IxDyn(shape), &g[..]).expect("sized"))
        .collect();
    let mut step = |opt: &mut Optimizer<R, A>| {
        if names.len() == 1 && args.model.is_none() {
            opt.step(&names[0], &mut params[0], &grads[0]).expect("shapes match");
        } else {
            let mut batch: Vec<ParamGrad<'_, A>> = names
                .iter()
                .zip(params.iter_mut())
                .zip(&grads)
                .map(|((name, param), grad)| ParamGrad::new(name, param, grad))
                .collect();
            opt.step_all(&mut batch).expect("shapes match");
        }
    };
    step(&mut opt);
    median_seconds(args.steps, || step(&mut opt))
}

/// [`time_steps`] of the tensors kept in one [`FlatParams`] block.
fn time_flat_steps<R: UpdateRule, A: Element>(opt: &mut Optimizer<R, A>, args: &Args) -> f64 {
    let tensors = tensors(args);
    let layout = tensors.iter().map(|(name, shape)| (name.as_str(), shape.as_slice()));
    let mut block = FlatParams::new("block", layout).expect("the benchmark's sizes fit");
    let numel = block.len();
    block.params_mut().copy_from_slice(&values(numel, 0, 1.0, args)[..]);
    block.grads_mut().copy_from_slice(&values(numel, 7, 1e-3, args)[..]);
    opt.step_flat(&mut block).expect("an elementwise rule");
    median_seconds(args.steps, || {
        opt.step_flat(&mut block).expect("an elementwise rule");
    })
}

/// The median of `steps` timings of `step`.
fn median_seconds(steps: usize, mut step: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..steps)
        .map(|_| {
            let start = Instant::now();
            step();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Reports `rule`'s throughput, stepped as its own type or as a run-time [`Rule`].
fn report<R: UpdateRule + Into<Rule>, A: Element>(rule: R, args: &Args) {
    if args.any { report_as::<Rule, A>(rule.into(), args) } else { report_as::<R, A>(rule, args) }
}

fn report_as<R: UpdateRule, A: Element>(rule: R, args: &Args) {
    let seconds = match args.path {
        Some(path) => with_kernel_path(path, || time_steps::<R, A>(rule.clone(), args))
            .unwrap_or_else(|| panic!("this CPU cannot run {path:?}")),
        None => time_steps::<R, A>(rule.clone(), args),
    };
    let elements =
        tensors(args).iter().map(|(_, shape)| shape.iter().product::<usize>()).sum::<usize>()
            as f64;
    let state_bytes = match args.state {
        StatePrecision::Full => size_of::<A>() as f64,
        StatePrecision::Bf16 => 2.0,
        StatePrecision::Int8 { .. } => 1.0 + 4.0 / 256.0,
    };
    // Parameter read and written, gradient read, each state value read and written.
    let per_elem =
        (3 * size_of::<A>()) as f64 + 2.0 * rule.state_names().len() as f64 * state_bytes;
    let bytes = elements * per_elem;
    let tensors = match &args.model {
        Some(model) => format!(" model={model}"),
        None if args.tensors > 1 => format!(" tensors={}", args.tensors),
        None => String::new(),
    };
    let any = if args.any { " rule=any" } else { "" };
    let placement = match args.placement {
        Placement::Vec => "",
        Placement::Aligned => " placement=aligned",
        Placement::Flat => " placement=flat",
    };
    let state = match args.state {
        StatePrecision::Full => "",
        StatePrecision::Bf16 => " state=bf16",
        StatePrecision::Int8 { .. } => " state=8bit",
    };
    println!(
        "{} {} numel={} steps={} threads={}{tensors}{any}{placement}{state} \
         bytes_per_elem={per_elem:.2} ns_per_elem={:.3} gbps={:.1}",
        rule.name(),
        A::NAME,
        if args.model.is_some() { elements as usize } else { args.numel },
        args.steps,
        args.threads,
        seconds * 1e9 / elements,
        bytes / seconds / 1e9,
    );
}

/// Median seconds of copying `args.numel` elements, split over the threads of the pool.
fn time_copy<A: Element>(args: &Args) -> f64 {
    let src = values::<A>(args.numel, 0, 1.0, args);
    let mut dst = values::<A>(args.numel, 1, 1.0, args);
    let (src, dst) = (&src[..], &mut dst[..]);
    let mut copy = || {
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            let chunk = args.numel.div_ceil(rayon::current_num_threads()).max(1);
            let pairs = dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk));
            pairs.for_each(|(dst, src)| dst.copy_from_slice(src));
        }
        #[cfg(not(feature = "rayon"))]
        dst.copy_from_slice(src);
    };
    copy();
    let mut times: Vec<f64> = (0..args.steps)
        .map(|_| {
            let start = Instant::now();
            copy();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn run<A: Element>(args: &Args) -> Result<(), String> {
    match args.optimizer.as_str() {
        "copy" => {
            let seconds = time_copy::<A>(args);
            let bytes = 2.0 * (args.numel * size_of::<A>()) as f64;
            println!(
                "copy {} numel={} steps={} threads={} gbps={:.1}",
                A::NAME,
                args.numel,
                args.steps,
                args.threads,
                bytes / seconds / 1e9
            );
        }
        "sgd" => report::<_, A>(Sgd::default(), args),
        "momentum" => report::<_, A>(Momentum::default(), args),
        "nesterov" => report::<_, A>(Nesterov::default(), args),
        "adagrad" => report::<_, A>(Adagrad::default(), args),
        "adadelta" => report::<_, A>(Adadelta::default(), args),
        "rmsprop" => report::<_, A>(RmsProp::default(), args),
        "adam" => report::<_, A>(Adam::default(), args),
        "adamw" => report::<_, A>(AdamW::default(), args),
        "adamax" => report::<_, A>(Adamax::default(), args),
        "nadam" => report::<_, A>(NAdam::default(), args),
        "radam" => report::<_, A>(RAdam::default(), args),
        // The options that add state and work per element, all on.
        "adam-amsgrad" => {
            report::<_, A>(Adam { amsgrad: true, weight_decay: 0.01, ..Adam::default() }, args)
        }
        "rmsprop-centered" => report::<_, A>(
            RmsProp { momentum: 0.9, centered: true, weight_decay: 0.01, ..RmsProp::default() },
            args,
        ),
        other => return Err(format!("unknown optimizer {other}")),
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = parse().and_then(|args| {
        let run = || match args.dtype.as_str() {
            "f32" => run::<f32>(&args),
            "f64" => run::<f64>(&args),
            other => Err(format!("unknown dtype {other}")),
        };
        in_threads(args.threads, run)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("throughput: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "rayon")]
fn in_threads(
    threads: usize,
    run: impl FnOnce() -> Result<(), String> + Send,
) -> Result<(), String> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
    pool.map_err(|e| e.to_string())?.install(run)
}

#[cfg(not(feature = "rayon"))]
fn in_threads(threads: usize, run: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    if threads == 1 { run() } else { Err("more than one thread needs --features rayon".into()) }
}
