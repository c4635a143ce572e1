//! Trajectories of the replay harness against the committed reference fixtures: PyTorch's
//! `torch.optim` (the seed rules, and every option and rule beyond the seed) and an
//! independent implementation of the seed formulas (`tests/reference/generate.py` writes
//! all three files).

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
    pub(crate) trajectory: serde_json::Map<String, Value>,
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

/// Every optimizer appears in both dtypes, over at least `steps` steps.
pub(crate) fn assert_covers(fixtures: &[Fixture], optimizers: &[&str], steps: u64) {
    for optimizer in optimizers {
        for dtype in ["f32", "f64"] {
            assert!(
                fixtures.iter().any(|f| f.case["optimizer"] == *optimizer
                    && f.case["dtype"] == dtype
                    && f.case["steps"].as_u64() >= Some(steps)),
                "no {optimizer} {dtype} fixture of {steps} steps or more"
            );
        }
    }
}

const SEED_RULES: [&str; 7] =
    ["sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam"];

#[test]
fn matches_pytorch() {
    let fixtures = load("pytorch.json");
    assert_covers(&fixtures, &SEED_RULES, 100);
    fixtures.iter().for_each(assert_matches);
}

#[test]
fn matches_seed_formulas() {
    let fixtures = load("seed.json");
    assert_covers(&fixtures, &SEED_RULES, 100);
    fixtures.iter().for_each(assert_matches);
}

/// Every hyperparameter key beyond the seed, as CONFORMANCE.md lists them.
const EXTENSION_KEYS: [(&str, &[&str]); 11] = [
    ("sgd", &["weight_decay", "maximize"]),
    ("momentum", &["weight_decay", "dampening", "maximize"]),
    ("nesterov", &["weight_decay", "maximize"]),
    ("adagrad", &["weight_decay", "lr_decay", "initial_accumulator_value", "maximize"]),
    ("adadelta", &["weight_decay", "maximize"]),
    ("rmsprop", &["weight_decay", "momentum", "centered", "maximize"]),
    ("adam", &["weight_decay", "amsgrad", "maximize"]),
    ("adamw", &["weight_decay", "amsgrad", "maximize"]),
    ("adamax", &["weight_decay", "maximize"]),
    ("nadam", &["weight_decay", "momentum_decay", "decoupled_weight_decay", "maximize"]),
    ("radam", &["weight_decay", "decoupled_weight_decay", "maximize"]),
];

/// Every option of every rule, and every rule beyond the seed, against PyTorch: each key is
/// set away from its default in some case of each dtype, over at least 50 steps.
#[test]
fn matches_pytorch_extensions() {
    let fixtures = load("pytorch_extensions.json");
    let rules: Vec<&str> = EXTENSION_KEYS.iter().map(|(rule, _)| *rule).collect();
    assert_covers(&fixtures, &rules, 50);
    for (rule, keys) in EXTENSION_KEYS {
        for key in keys {
            for dtype in ["f32", "f64"] {
                assert!(
                    fixtures.iter().any(|f| f.case["optimizer"] == rule
                        && f.case["dtype"] == dtype
                        && f.case["hyper"].get(key).is_some()),
                    "no {rule} {dtype} fixture sets `{key}`"
                );
            }
        }
    }
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
    let files = ["pytorch.json", "seed.json", "pytorch_extensions.json"];
    for fixture in files.iter().flat_map(|file| load(file)) {
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

/// The cases of `rules_v2.json` (PyTorch's and optax's rules beyond the seed) that use
/// `rule` alone, in every group.
fn rules_v2(rule: &str) -> Vec<Fixture> {
    load("rules_v2.json")
        .into_iter()
        .filter(|fixture| {
            let groups = fixture.case["groups"].as_array().map_or(&[][..], Vec::as_slice);
            fixture.case["optimizer"] == rule
                && groups.iter().all(|group| group.get("optimizer").is_none_or(|name| name == rule))
        })
        .collect()
}

/// A rule of "Rules v2" against its reference over at least 50 steps in both dtypes, and
/// bit for bit the same with checkpoints every few steps and in either memory order.
pub(crate) fn assert_rule_v2(rule: &str) {
    let fixtures = rules_v2(rule);
    assert_covers(&fixtures, &[rule], 50);
    fixtures.iter().for_each(assert_matches_v2);
}

/// A case of "Rules v2" against its reference, and bit for bit the same with checkpoints
/// every few steps and in either memory order.
pub(crate) fn assert_matches_v2(fixture: &Fixture) {
    assert_matches(fixture);
    let plain = bits(&replay(&fixture.case));
    let mut case = fixture.case.clone();
    case["checkpoint_every"] = 7.into();
    assert_eq!(bits(&replay(&case)), plain, "{} checkpoint_every 7", case["name"]);
    for layout in ["c", "f"] {
        let mut case = fixture.case.clone();
        for param in case["params"].as_array_mut().unwrap() {
            param["layout"] = layout.into();
        }
        assert_eq!(bits(&replay(&case)), plain, "{} layout {layout}", case["name"]);
    }
}

#[test]
fn muon_matches_pytorch() {
    assert_rule_v2("muon")
}

/// The per-group cases of `rules_v2.json` (groups naming another rule than the case's) that
/// this test runs, by name without the dtype.
const PER_GROUP_CASES: [&str; 2] = ["torch-adamw-muon-groups", "optax-lion-lamb-groups"];

/// Several rules in one optimizer, each group against its own rule's reference: AdamW for
/// vectors and scalars with Muon for the matrices of group "hidden", and Lion with a Lamb group.
#[test]
fn per_group_rules_match_their_references() {
    let fixtures: Vec<Fixture> = load("rules_v2.json")
        .into_iter()
        .filter(|fixture| {
            let name = fixture.case["name"].as_str().unwrap();
            PER_GROUP_CASES.iter().any(|case| {
                name.strip_prefix(case).is_some_and(|dtype| dtype == "-f32" || dtype == "-f64")
            })
        })
        .collect();
    assert_eq!(fixtures.len(), 2 * PER_GROUP_CASES.len(), "a per-group case is missing");
    for fixture in &fixtures {
        let case_rule = &fixture.case["optimizer"];
        let groups = fixture.case["groups"].as_array().unwrap();
        assert!(
            groups.iter().any(|group| group.get("optimizer").is_some_and(|rule| rule != case_rule)),
            "{}: no group of another rule",
            fixture.case["name"]
        );
        assert_matches_v2(fixture);
    }
}

#[test]
fn lamb_matches_optax() {
    assert_rule_v2("lamb");
}

#[test]
fn adafactor_matches_pytorch() {
    assert_rule_v2("adafactor");
}

#[test]
fn lion_matches_optax() {
    assert_rule_v2("lion");
}

#[test]
fn asgd_matches_pytorch() {
    assert_rule_v2("asgd");
}

#[test]
fn rprop_matches_pytorch() {
    assert_rule_v2("rprop");
}
