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
//! last line e.g. `adam f32 numel=16777216 steps=20 threads=1 ns_per_elem=0.71 gbps=39.4`:
//! the median step time per element, and the bytes a step reads and writes (parameter and
//! state twice, gradient once) per second of that time. More than one thread needs the
//! `rayon` feature (`--features rayon`). `--path zip|baseline|avx2|avx512` pins the loop, to
//! compare them. `--optimizer copy` times a plain copy instead (its bytes are those read and
//! written), the memory bandwidth that bounds a step. `--rule any` steps the rule as a
//! run-time [`Rule`] value (the path of rules chosen from a configuration, compiled inside the
//! crate) instead of its own type (`--rule typed`, the default); the line then says `rule=any`.
//! `--placement aligned` keeps parameters and gradients in [`AlignedBuffer`]s, placed as the
//! optimizer places its state (2 MiB aligned, in transparent huge pages, when large), instead
//! of `Vec`s (`--placement vec`, the default).

use std::ops::DerefMut;
use std::process::ExitCode;
use std::time::Instant;

use ndarray::{ArrayView1, ArrayViewMut1};
use ndarray_optim::{
    Adadelta, Adagrad, Adam, AdamW, Adamax, AlignedBuffer, Element, KernelPath, Momentum, NAdam,
    Nesterov, Optimizer, ParamGrad, RAdam, RmsProp, Rule, Sgd, UpdateRule, with_kernel_path,
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
    /// Place parameters and gradients in `AlignedBuffer`s rather than `Vec`s.
    aligned: bool,
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
        aligned: false,
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
                args.aligned = match value.as_str() {
                    "aligned" => true,
                    "vec" => false,
                    other => return Err(format!("--placement {other}: `vec` or `aligned`")),
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
    if args.aligned { Box::new(AlignedBuffer::from_slice(&values)) } else { Box::new(values) }
}

/// Median seconds per step over `args.steps` steps, after one warm-up step.
fn time_steps<R: UpdateRule, A: Element>(rule: R, args: &Args) -> f64 {
    let mut opt = Optimizer::<R, A>::new(rule).expect("the defaults are valid");
    let names: Vec<String> = (0..args.tensors).map(|i| format!("layer{i}.weight")).collect();
    let mut params: Vec<_> = (0..args.tensors).map(|i| values(args.numel, i, 1.0, args)).collect();
    let grads: Vec<_> = (0..args.tensors).map(|i| values(args.numel, i + 7, 1e-3, args)).collect();
    let mut step = |opt: &mut Optimizer<R, A>| {
        if args.tensors == 1 {
            let mut param = ArrayViewMut1::from(&mut params[0][..]);
            let grad = ArrayView1::from(&grads[0][..]);
            opt.step(&names[0], &mut param, &grad).expect("shapes match");
        } else {
            let mut views: Vec<ArrayViewMut1<'_, A>> =
                params.iter_mut().map(|p| ArrayViewMut1::from(&mut p[..])).collect();
            let grads: Vec<ArrayView1<'_, A>> =
                grads.iter().map(|g| ArrayView1::from(&g[..])).collect();
            let mut batch: Vec<ParamGrad<'_, A>> = names
                .iter()
                .zip(views.iter_mut())
                .zip(&grads)
                .map(|((name, param), grad)| ParamGrad::new(name, param, grad))
                .collect();
            opt.step_all(&mut batch).expect("shapes match");
        }
    };
    step(&mut opt);
    let mut times: Vec<f64> = (0..args.steps)
        .map(|_| {
            let start = Instant::now();
            step(&mut opt);
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
    let elements = (args.numel * args.tensors) as f64;
    let bytes = elements * (3 + 2 * rule.state_names().len()) as f64 * size_of::<A>() as f64;
    let tensors =
        if args.tensors > 1 { format!(" tensors={}", args.tensors) } else { String::new() };
    let any = if args.any { " rule=any" } else { "" };
    let placement = if args.aligned { " placement=aligned" } else { "" };
    println!(
        "{} {} numel={} steps={} threads={}{tensors}{any}{placement} ns_per_elem={:.3} gbps={:.1}",
        rule.name(),
        A::NAME,
        args.numel,
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
