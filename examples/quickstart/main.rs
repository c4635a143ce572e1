//! The quickstart: a small neural network learns the UCI handwritten digits once with every
//! update rule of ndarray-optim, and the rules are compared in a table and a loss chart.
//!
//! ```text
//! cargo run --release --example quickstart                 # the full run, a few seconds
//! cargo run --release --example quickstart -- --help       # the options
//! ```
//!
//! Every rule starts from the same weights and sees the same batches, so with the same seed the
//! table (but for its timings) and the chart are the same on every run. Midway through each
//! run the optimizer is checkpointed to JSON; the second half is then trained again from the
//! checkpoint in a fresh optimizer, and the table says whether it ended bit for bit where the
//! uninterrupted run did.

mod args;
mod digits;
mod mlp;
#[path = "../support/palette.rs"]
mod palette;
mod plot;
mod train;

use std::error::Error;
use std::io::IsTerminal;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use ndarray_optim::{
    Adadelta, Adafactor, Adagrad, Adam, AdamW, Adamax, Asgd, Lamb, LbfgsOptions, LineSearch, Lion,
    Momentum, Muon, NAdam, Nesterov, Prodigy, RAdam, RmsProp, Rprop, ScheduleFreeAdamW,
    ScheduleFreeSgd, Sgd, StatePrecision,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use args::{Args, Command};
use digits::{CLASSES, Digits};
use mlp::Mlp;
use train::{Contestant, Outcome, Setup};

/// The rules, one line each. Learning rates are round values from a coarse sweep (factors of
/// about 2); every other hyperparameter is the rule's default.
fn contestants() -> Vec<Contestant> {
    vec![
        Contestant::new("sgd", Sgd { lr: 0.5, ..Sgd::default() }),
        Contestant::new("momentum", Momentum { lr: 0.05, ..Momentum::default() }),
        Contestant::new("nesterov", Nesterov { lr: 0.05, ..Nesterov::default() }),
        Contestant::new("adagrad", Adagrad { lr: 0.1, ..Adagrad::default() }),
        Contestant::new("adadelta", Adadelta::default()),
        Contestant::new("rmsprop", RmsProp { lr: 0.005, ..RmsProp::default() }),
        Contestant::new("adam", Adam { lr: 0.01, ..Adam::default() }),
        Contestant::new("adamw", AdamW { lr: 0.01, ..AdamW::default() }),
        // Moments in block-wise 8 bits for tensors of 4,096 elements and more (the hidden
        // weight matrix), as bitsandbytes' and torchao's 8-bit AdamW keep them.
        Contestant::new("adamw-8bit", AdamW { lr: 0.01, ..AdamW::default() })
            .with_state(StatePrecision::INT8),
        Contestant::new("adamax", Adamax { lr: 0.01, ..Adamax::default() }),
        Contestant::new("nadam", NAdam { lr: 0.01, ..NAdam::default() }),
        Contestant::new("radam", RAdam { lr: 0.01, ..RAdam::default() }),
        Contestant::new("lamb", Lamb { lr: 0.01, ..Lamb::default() }),
        Contestant::new("adafactor", Adafactor::default()),
        Contestant::new("lion", Lion { lr: 0.001, ..Lion::default() }),
        Contestant::new("asgd", Asgd { lr: 0.5, ..Asgd::default() }),
        Contestant::new("rprop", Rprop { lr: 0.001, ..Rprop::default() }),
        // Schedule-free rules are evaluated at their average x (see train.rs); their rates
        // are higher than their base rules', as Defazio et al. recommend.
        Contestant::new("sf-adamw", ScheduleFreeAdamW { lr: 0.08, ..ScheduleFreeAdamW::default() }),
        Contestant::new("sf-sgd", ScheduleFreeSgd { lr: 0.5, ..ScheduleFreeSgd::default() }),
        // Prodigy estimates its own step size: lr 1 is its default, not a tuned value.
        Contestant::new("prodigy", Prodigy::default()),
        Contestant::new("muon+adamw", AdamW { lr: 0.01, ..AdamW::default() })
            .with_hidden_matrix(Muon { lr: 0.02, ..Muon::default() }),
        // Full batch: one L-BFGS step (up to 20 iterations) per epoch; its steps column
        // counts evaluations of the whole training set, each 45 mini-batches' worth.
        Contestant::full_batch(
            "lbfgs",
            LbfgsOptions {
                line_search_fn: Some(LineSearch::StrongWolfe),
                ..LbfgsOptions::default()
            },
        ),
    ]
}

const HELD_OUT: usize = 360;
const HIDDEN_UNITS: usize = 64;
const BATCH_SIZE: usize = 32;

/// The data split, initial weights and batch order that `seed` gives.
fn setup(args: &Args) -> Result<Setup, Box<dyn Error>> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (train, test) = Digits::load()?.split(HELD_OUT, &mut rng);
    let init = Mlp::new(train.images.ncols(), HIDDEN_UNITS, CLASSES, &mut rng);
    let batches = (0..args.epochs)
        .map(|_| {
            let mut order: Vec<usize> = (0..train.len()).collect();
            order.shuffle(&mut rng);
            order.chunks(BATCH_SIZE).map(<[usize]>::to_vec).collect()
        })
        .collect();
    Ok(Setup { train, test, init, batches })
}

/// A loss to four decimals, or to three significant digits once it is below 0.001.
fn format_loss(loss: f32) -> String {
    if loss >= 1e-3 { format!("{loss:.4}") } else { format!("{loss:.2e}") }
}

/// Prints rows as a Markdown table with aligned columns.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|row| row[c].len()).chain([header[c].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(cell, &width)| format!("{cell:width$}")).collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    line(widths.iter().map(|&width| "-".repeat(width)).collect());
    for row in rows {
        line(row.clone());
    }
}

fn run(args: Args) -> Result<bool, Box<dyn Error>> {
    let all = contestants();
    let chosen: Vec<(usize, &Contestant)> = match &args.rules {
        None => all.iter().enumerate().collect(),
        Some(labels) => labels
            .iter()
            .map(|label| {
                all.iter().enumerate().find(|(_, c)| c.label == label).ok_or_else(|| {
                    let known: Vec<&str> = all.iter().map(|c| c.label).collect();
                    format!("unknown rule {label:?}; the rules are {}", known.join(","))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let setup = setup(&args)?;
    println!(
        "UCI handwritten digits: {} training and {} held-out images of 8x8 pixels.",
        setup.train.len(),
        setup.test.len()
    );
    println!(
        "Network 64-{HIDDEN_UNITS}-{CLASSES} (tanh, softmax), batches of {BATCH_SIZE}, {} epochs, \
         seed {}.\nThe output layer is a parameter group that learns at half the rate (Prodigy: at its one rate).\n",
        setup.epochs(),
        args.seed
    );

    let interactive = std::io::stderr().is_terminal();
    let progress = ProgressBar::new(chosen.len() as u64 * setup.steps_with_resume());
    progress.set_style(ProgressStyle::with_template(
        "{msg:>9} [{bar:40.cyan/blue}] {pos}/{len} steps, {elapsed}",
    )?);
    let mut outcomes: Vec<(usize, &Contestant, Outcome)> = Vec::new();
    for &(index, contestant) in &chosen {
        progress.set_message(contestant.label);
        let outcome = contestant.run(&setup, &|| progress.inc(1))?;
        if !interactive {
            eprintln!(
                "{}: {} steps in {:.2} s",
                contestant.label,
                outcome.steps,
                outcome.elapsed.as_secs_f64()
            );
        }
        outcomes.push((index, contestant, outcome));
    }
    progress.finish_and_clear();

    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|(_, contestant, outcome)| {
            vec![
                contestant.label.to_owned(),
                contestant.lr(),
                format_loss(outcome.train_loss),
                format!("{:.1} %", 100.0 * outcome.test_accuracy),
                outcome.steps.to_string(),
                (if outcome.resume_identical { "bit-identical" } else { "DIFFERS" }).to_owned(),
                format!("{} ms", outcome.elapsed.as_millis()),
            ]
        })
        .collect();
    let header =
        ["rule", "lr", "training loss", "held-out accuracy", "steps", "resumed run", "time"];
    print_table(&header, &rows);

    std::fs::create_dir_all(&args.out)?;
    let chart = args.out.join("loss.svg");
    let curves: Vec<plot::Curve<'_>> = outcomes
        .iter()
        .map(|(index, contestant, outcome)| plot::Curve {
            label: contestant.label,
            color: palette::color(*index),
            points: &outcome.curve,
        })
        .collect();
    let title = format!("UCI digits, MLP 64-{HIDDEN_UNITS}-{CLASSES}: training loss by rule");
    plot::loss_chart(&chart, &title, &curves)?;
    println!("\nLoss curves: {}", chart.display());

    let all_identical = outcomes.iter().all(|(_, _, outcome)| outcome.resume_identical);
    if !all_identical {
        eprintln!("error: a run resumed from its checkpoint did not end where the original did");
    }
    Ok(all_identical)
}

fn main() -> ExitCode {
    let labels: Vec<&str> = contestants().iter().map(|c| c.label).collect();
    match args::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{}", args::help(&labels));
            ExitCode::SUCCESS
        }
        Ok(Command::Run(args)) => match run(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
