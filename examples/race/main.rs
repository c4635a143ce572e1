//! The race: every update rule of ndarray-optim descends classic two-dimensional test
//! surfaces (Beale's function, Rosenbrock's function, a saddle point) from the same start,
//! and their paths are drawn over the surfaces' contour lines, one SVG per surface.
//!
//! ```text
//! cargo run --release --example race                 # writes target/race/race-*.svg
//! cargo run --release --example race -- --out DIR    # elsewhere
//! ```
//!
//! Nothing is random: the same build draws the same pictures on every run.

#[path = "../support/palette.rs"]
mod palette;
mod plot;
mod surfaces;

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use ndarray::Array1;
use ndarray_optim::{
    Adadelta, Adagrad, Adam, AdamW, Adamax, Lbfgs, LbfgsOptions, LineSearch, Momentum, NAdam,
    Nesterov, Optimizer, ParamGrad, Prodigy, RAdam, RmsProp, Rule, ScheduleFreeAdamW,
    ScheduleFreeSgd, Sgd, UpdateRule,
};

use surfaces::{LearningRates, Surface};

type Descend = dyn Fn(&Surface) -> Result<Descent, Box<dyn Error>>;

/// A rule in the race: its label and how to descend a surface with it.
struct Racer {
    label: &'static str,
    descend: Box<Descend>,
}

impl Racer {
    /// A racer whose hyperparameters `rule` makes from the surface's learning rates.
    fn new<R: Into<Rule> + 'static>(label: &'static str, rule: fn(&LearningRates) -> R) -> Racer {
        Racer {
            label,
            descend: Box::new(move |surface| descend(rule(&surface.lr).into(), surface)),
        }
    }
}

/// The rules, one line each, with the learning rate each surface suits their kind of rule.
fn racers() -> Vec<Racer> {
    vec![
        Racer::new("sgd", |lr| Sgd { lr: lr.gradient_scaled, ..Sgd::default() }),
        Racer::new("momentum", |lr| Momentum { lr: lr.gradient_scaled, ..Momentum::default() }),
        Racer::new("nesterov", |lr| Nesterov { lr: lr.gradient_scaled, ..Nesterov::default() }),
        Racer::new("adagrad", |lr| Adagrad { lr: lr.normalised * 10.0, ..Adagrad::default() }),
        Racer::new("adadelta", |_| Adadelta::default()),
        Racer::new("rmsprop", |lr| RmsProp { lr: lr.normalised, ..RmsProp::default() }),
        Racer::new("adam", |lr| Adam { lr: lr.normalised, ..Adam::default() }),
        Racer::new("adamw", |lr| AdamW { lr: lr.normalised, ..AdamW::default() }),
        Racer::new("adamax", |lr| Adamax { lr: lr.normalised, ..Adamax::default() }),
        Racer::new("nadam", |lr| NAdam { lr: lr.normalised, ..NAdam::default() }),
        // RAdam's first steps (until its variance estimate is trusted) are plain momentum
        // steps of size lr·m̂: at an adaptive rule's rate they leave the picture at once.
        Racer::new("radam", |lr| RAdam { lr: lr.gradient_scaled, ..RAdam::default() }),
        // The schedule-free paths are of the average x, where the rules are evaluated.
        Racer::new("sf-adamw", |lr| ScheduleFreeAdamW {
            lr: lr.normalised,
            ..ScheduleFreeAdamW::default()
        }),
        Racer::new("sf-sgd", |lr| ScheduleFreeSgd {
            lr: lr.gradient_scaled,
            ..ScheduleFreeSgd::default()
        }),
        // Prodigy sets its own step size: every surface gets its default rate of 1.
        Racer::new("prodigy", |_| Prodigy::default()),
        // One quasi-Newton iteration per race step, with its line search's evaluations.
        Racer { label: "lbfgs", descend: Box::new(descend_lbfgs) },
    ]
}

/// Where a rule went.
struct Descent {
    lr: f64,
    points: Vec<[f64; 2]>,
    /// The step at which the path left the window, if it did; the descent stops there.
    left_at: Option<usize>,
}

/// Runs `rule` on `surface` from its start for its number of steps, or until the path leaves
/// the window. The path is of the point where the rule would be evaluated: the parameter, or
/// the schedule-free rules' average.
fn descend(rule: Rule, surface: &Surface) -> Result<Descent, Box<dyn Error>> {
    let lr = rule.options().lr;
    let mut optimizer = Optimizer::<Rule, f64>::new(rule)?;
    trace(surface, lr, |position| {
        let gradient = Array1::from((surface.gradient)(position[0], position[1]).to_vec());
        optimizer.step_all(&mut [ParamGrad::new("xy", position, &gradient)])?;
        // Switched on a copy, which goes back to train mode, so the race itself runs on.
        let mut evaluated = position.clone();
        optimizer.eval_tensor("xy", &mut evaluated)?;
        let point = [evaluated[0], evaluated[1]];
        optimizer.train_tensor("xy", &mut evaluated)?;
        Ok(point)
    })
}

/// L-BFGS with a strong-Wolfe line search, one iteration per step (`max_iter` 1): the path
/// is of its iterates, each of which may have cost several evaluations of the surface.
fn descend_lbfgs(surface: &Surface) -> Result<Descent, Box<dyn Error>> {
    let options = LbfgsOptions {
        max_iter: 1,
        // PyTorch's default would be max_iter · 5/4 = 1 evaluation: no room for the search.
        max_eval: Some(25),
        line_search_fn: Some(LineSearch::StrongWolfe),
        ..LbfgsOptions::default()
    };
    let mut lbfgs = Lbfgs::<f64>::new(options)?;
    let mut gradient = Array1::zeros(2);
    trace(surface, options.lr, |position| {
        lbfgs.step(position, &mut gradient, |xy, g| {
            g.assign(&Array1::from((surface.gradient)(xy[0], xy[1]).to_vec()));
            Ok::<_, ndarray_optim::Error>((surface.value)(xy[0], xy[1]))
        })?;
        Ok([position[0], position[1]])
    })
}

/// The path that `step` takes from the surface's start: `step` moves the position once and
/// returns the point to draw, for the surface's number of steps or until a point leaves the
/// window.
fn trace(
    surface: &Surface,
    lr: f64,
    mut step: impl FnMut(&mut Array1<f64>) -> Result<[f64; 2], Box<dyn Error>>,
) -> Result<Descent, Box<dyn Error>> {
    let mut position = Array1::from(surface.start.to_vec());
    let mut points = vec![surface.start];
    for index in 1..=surface.steps {
        let point = step(&mut position)?;
        points.push(point);
        if !surface.contains(point) {
            return Ok(Descent { lr, points, left_at: Some(index) });
        }
    }
    Ok(Descent { lr, points, left_at: None })
}

fn run(out: PathBuf) -> Result<(), Box<dyn Error>> {
    std::fs::create_dir_all(&out)?;
    let racers = racers();
    let mut written = Vec::new();
    for surface in surfaces::all() {
        println!(
            "{} from ({}, {}), {} steps:",
            surface.title, surface.start[0], surface.start[1], surface.steps
        );
        let descents: Vec<Descent> =
            racers.iter().map(|racer| (racer.descend)(&surface)).collect::<Result<_, _>>()?;
        let paths: Vec<plot::Path2d<'_>> = racers
            .iter()
            .zip(&descents)
            .enumerate()
            .map(|(index, (racer, descent))| {
                let &[x, y] = descent.points.last().expect("a descent starts with the start");
                let detail = match descent.left_at {
                    Some(step) => format!("left the window at step {step}"),
                    None => format!("f = {:.1e} at ({x:.2}, {y:.2})", (surface.value)(x, y)),
                };
                println!("  {:<9} lr {:<6} {detail}", racer.label, descent.lr);
                plot::Path2d {
                    label: format!("{}, lr {}", racer.label, descent.lr),
                    detail,
                    color: palette::color(index),
                    points: &descent.points,
                }
            })
            .collect();
        let file = out.join(format!("race-{}.svg", surface.name));
        plot::race_chart(&file, &surface, &paths)?;
        written.push(file);
    }
    println!("\nPictures:");
    for file in written {
        println!("  {}", file.display());
    }
    Ok(())
}

const HELP: &str =
    "Races every update rule of ndarray-optim on 2-D test surfaces and draws their paths.

Usage: cargo run --release --example race -- [--out DIR]

Options:
  --out DIR    folder to write race-*.svg to [default: target/race]
  -h, --help   print this help";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => PathBuf::from("target/race"),
        ["--out", dir] => PathBuf::from(dir),
        [flag] if flag.starts_with("--out=") => PathBuf::from(&flag["--out=".len()..]),
        ["-h" | "--help"] => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("error: unexpected arguments (see --help)");
            return ExitCode::from(2);
        }
    };
    match run(out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
