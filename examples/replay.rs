//! The conformance harness: replays an optimizer case described in JSON and prints the
//! parameter trajectory as JSON (format: the crate's conformance document).
//!
//! ```text
//! cargo run --release --example replay -- CASE.json   # one case
//! cargo run --release --example replay -- -           # case read from stdin
//! ```
//!
//! A malformed case prints one line `error: ...` on stderr and exits with status 2.

#[path = "support/case.rs"]
mod case;

use std::io::Read;
use std::process::ExitCode;

fn read_case(source: &str) -> Result<String, String> {
    if source == "-" {
        let mut json = String::new();
        std::io::stdin().read_to_string(&mut json).map_err(|e| format!("reading stdin: {e}"))?;
        Ok(json)
    } else {
        std::fs::read_to_string(source).map_err(|e| format!("reading {source}: {e}"))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [source] => read_case(source).and_then(|json| case::run_json(&json)),
        _ => Err("usage: replay CASE.json | replay -".to_owned()),
    };
    match result.and_then(|trajectory| {
        serde_json::to_string(&trajectory).map_err(|e| format!("writing output: {e}"))
    }) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {}", message.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
