//! Trajectories of the replay harness against the committed reference fixtures: PyTorch's
//! `torch.optim` and an independent implementation of the seed formulas
//! (`tests/reference/generate.py` writes both).

use serde::Deserialize;
use serde_json::Value;

use crate::case::{self, Case, Trajectory};

#[derive(Deserialize)]
struct Fixtures {
    cases: Vec<Fixture>,
}

#[derive(Deserialize)]
pub(crate) struct Fixture {
    pub(crate) case: Value,
    source: String,
    trajectory: serde_json::Map<String, Value>,
}

pub(crate) fn load(file: &str) -> Vec<Fixture> {
    let path = format!("{}/tests/reference/{file}", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str::<Fixtures>(&json).unwrap().cases
}

pub(crate) fn replay(case: &Value) -> Trajectory {
    let case: Case = serde_json::from_value(case.clone()).unwrap();
    case::run(&case).unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

/// CONFORMANCE.md's tolerance: f64 |x − ref| ≤ 1e-12 + 1e-9·|ref|, f32 ≤ 1e-6 + 1e-4·|ref|.
pub(crate) fn assert_matches(fixture: &Fixture) {
    let got = replay(&fixture.case);
    let (absolute, relative) = if got.dtype == "f32" { (1e-6, 1e-4) } else { (1e-12, 1e-9) };
    assert_eq!(got.tensors.len(), fixture.trajectory.len(), "{}: tensor count", got.name);
    for (param, rows) in &got.tensors {
        let expected: Vec<Vec<f64>> =
            serde_json::from_value(fixture.trajectory[param].clone()).unwrap();
        assert_eq!(rows.len(), expected.len(), "{}: `{param}` step count", got.name);
        for (step, (row, reference)) in rows.iter().zip(&expected).enumerate() {
            for (index, (&x, &r)) in row.iter().zip(reference).enumerate() {
                assert!(
                    (x - r).abs() <= absolute + relative * r.abs(),
                    "{} ({}): `{param}`[{index}] after step {}: {x} vs reference {r}",
                    got.name,
                    fixture.source,
                    step + 1
                );
            }
        }
    }
}

/// Every optimizer of the seed appears in both dtypes, over at least 100 steps.
fn assert_covers(fixtures: &[Fixture], optimizers: &[&str]) {
    for optimizer in optimizers {
        for dtype in ["f32", "f64"] {
            assert!(
                fixtures.iter().any(|f| f.case["optimizer"] == *optimizer
                    && f.case["dtype"] == dtype
                    && f.case["steps"].as_u64() >= Some(100)),
                "no {optimizer} {dtype} fixture of 100 steps or more"
            );
        }
    }
}

const SEED_RULES: [&str; 7] =
    ["sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam"];

#[test]
fn matches_pytorch() {
    let fixtures = load("pytorch.json");
    assert_covers(&fixtures, &SEED_RULES);
    fixtures.iter().for_each(assert_matches);
}

#[test]
fn matches_seed_formulas() {
    let fixtures = load("seed.json");
    assert_covers(&fixtures, &SEED_RULES);
    fixtures.iter().for_each(assert_matches);
}

pub(crate) fn bits(trajectory: &Trajectory) -> Vec<(String, Vec<Vec<u64>>)> {
    let rows = |rows: &Vec<Vec<f64>>| -> Vec<Vec<u64>> {
        rows.iter().map(|row| row.iter().map(|v| v.to_bits()).collect()).collect()
    };
    trajectory.tensors.iter().map(|(name, r)| (name.clone(), rows(r))).collect()
}

/// Checkpointing every few steps and storing parameters in the other memory order leave
/// every trajectory bit-for-bit the same.
#[test]
fn checkpoints_and_layouts_do_not_change_a_bit() {
    for fixture in load("pytorch.json").iter().chain(&load("seed.json")) {
        let plain = bits(&replay(&fixture.case));
        for every in [1, 7] {
            let mut case = fixture.case.clone();
            case["checkpoint_every"] = every.into();
            assert_eq!(bits(&replay(&case)), plain, "{} checkpoint_every {every}", case["name"]);
        }
        for layout in ["c", "f"] {
            let mut case = fixture.case.clone();
            for param in case["params"].as_array_mut().unwrap() {
                param["layout"] = layout.into();
            }
            assert_eq!(bits(&replay(&case)), plain, "{} layout {layout}", case["name"]);
        }
    }
}
