//! The command line: a few options, parsed by hand.

use std::path::PathBuf;

/// The options, with their defaults filled in.
pub struct Args {
    pub epochs: usize,
    /// The rules to train with, by label; `None` for all.
    pub rules: Option<Vec<String>>,
    pub seed: u64,
    pub out: PathBuf,
}

/// What the command line asks for.
pub enum Command {
    Run(Args),
    Help,
}

pub fn help(all_rules: &[&str]) -> String {
    format!(
        "Trains a small neural network on the UCI handwritten digits with every update rule of
ndarray-optim, and compares them.

Usage: cargo run --release --example quickstart -- [OPTIONS]

Options:
  --epochs N     passes over the training set [default: 20]
  --rules LIST   comma-separated rules to train with [default: all: {}]
  --seed N       seed of the data split, the initial weights and the batch order [default: 42]
  --out DIR      folder to write loss.svg to [default: target/quickstart]
  -h, --help     print this help",
        all_rules.join(",")
    )
}

/// Parses the arguments after the program name; `--flag value` and `--flag=value` both work.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut parsed =
        Args { epochs: 20, rules: None, seed: 42, out: PathBuf::from("target/quickstart") };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value =
            || inline.clone().or_else(|| args.next()).ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => {
                parsed.epochs = value()?
                    .parse()
                    .ok()
                    .filter(|&epochs| epochs > 0)
                    .ok_or("--epochs needs a whole number > 0")?;
            }
            "--rules" => {
                parsed.rules = Some(value()?.split(',').map(str::to_owned).collect());
            }
            "--seed" => {
                parsed.seed = value()?.parse().map_err(|_| "--seed needs a whole number >= 0")?;
            }
            "--out" => parsed.out = PathBuf::from(value()?),
            _ => return Err(format!("unknown option {flag:?} (see --help)")),
        }
    }
    Ok(Command::Run(parsed))
}
