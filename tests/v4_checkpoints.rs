//! Checkpoints written by format version 4 keep loading, with the same values, stored
//! low-precision buffers included.
//!
//! `tests/reference/checkpoints/v4/` holds files written by version 4 of the checkpoint format
//! (the version that added low-precision state): the state of the scenario below, AdamW in f32
//! with one group's state in bfloat16 and one in 8 bits, saved by `Optimizer::save` in JSON
//! (`*.json.ckpt`) and postcard (`*.postcard.ckpt`), by `Optimizer::save_with` in postcard with
//! extras (`*.training.ckpt`), and as bare `serde_json` of the optimizer (`*.serde.json`). The
//! files are a contract: every later version of the crate must keep loading them, and they
//! are never rewritten. `write_the_v4_files` (ignored) wrote them and refuses to write over
//! them.

use std::path::PathBuf;

use ndarray::ArrayD;
use ndarray_optim::checkpoint::Encoding;
use ndarray_optim::{AdamW, Clip, NonFinite, Optimizer, ParamGrad, StatePrecision};

use crate::common::{assert_folder_holds, bits, claimed_version, values};

fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/checkpoints/v4")
}

/// The model: name, group, shape.
const TENSORS: [(&str, &str, &[usize]); 3] =
    [("embed.w", "bf16", &[4, 64]), ("head.b", "default", &[8]), ("head.w", "int8", &[8, 64])];

/// The extras of the training-state file.
const EXTRAS: u64 = 42;

fn optimizer() -> Optimizer<AdamW, f32> {
    let mut opt = Optimizer::new(AdamW { lr: 0.01, ..AdamW::default() }).unwrap();
    for (group, precision) in
        [("bf16", StatePrecision::Bf16), ("int8", StatePrecision::Int8 { min_numel: 256 })]
    {
        opt.add_group(group, AdamW { lr: 0.005, ..AdamW::default() }).unwrap();
        opt.set_state_precision(group, precision).unwrap();
    }
    for &(name, group, _) in &TENSORS {
        opt.assign(name, group).unwrap();
    }
    opt.set_clip(Some(Clip::GlobalNorm { max_norm: 2.0 })).unwrap();
    opt.set_non_finite(NonFinite::Skip);
    opt
}

fn params() -> Vec<ArrayD<f32>> {
    TENSORS.iter().enumerate().map(|(i, &(_, _, shape))| values(shape, i as u64)).collect()
}

/// Step `number` of the whole model, as one batch.
fn step(opt: &mut Optimizer<AdamW, f32>, params: &mut [ArrayD<f32>], number: u64) {
    let grads: Vec<ArrayD<f32>> = TENSORS
        .iter()
        .enumerate()
        .map(|(i, &(_, _, shape))| values(shape, 100 * number + i as u64))
        .collect();
    let mut batch: Vec<ParamGrad<'_, f32>> = TENSORS
        .iter()
        .zip(params.iter_mut())
        .zip(&grads)
        .map(|((&(name, _, _), param), grad)| ParamGrad::new(name, param, grad))
        .collect();
    opt.step_all(&mut batch).unwrap();
}

/// The state the files hold: three steps of the whole model.
fn saved_run() -> (Optimizer<AdamW, f32>, Vec<ArrayD<f32>>) {
    let (mut opt, mut params) = (optimizer(), params());
    for number in 1..=3 {
        step(&mut opt, &mut params, number);
    }
    (opt, params)
}

fn file_names() -> [String; 4] {
    ["json.ckpt", "postcard.ckpt", "training.ckpt", "serde.json"]
        .map(|kind| format!("adamw-f32.{kind}"))
}

fn load() -> Vec<(String, Optimizer<AdamW, f32>)> {
    let [json, postcard, training, serde] = file_names();
    let path = |name: &str| folder().join(name);
    let (from_training, extras): (Optimizer<AdamW, f32>, u64) =
        Optimizer::load_with(path(&training)).unwrap();
    assert_eq!(extras, EXTRAS);
    let bare = serde_json::from_slice(&std::fs::read(path(&serde)).unwrap()).unwrap();
    vec![
        (json.clone(), Optimizer::load(path(&json)).unwrap()),
        (postcard.clone(), Optimizer::load(path(&postcard)).unwrap()),
        (training, from_training),
        (serde, bare),
    ]
}

/// Every file holds the run recomputed today, bytes of bfloat16 and 8-bit state included,
/// and resumes as the run that never stopped.
#[test]
fn adamw_v4_files_load_and_resume() {
    let (expected, params) = saved_run();
    for (label, mut opt) in load() {
        assert_eq!(opt, expected, "{label}");
        assert_eq!(opt.state_bytes(), expected.state_bytes(), "{label}");
        let (mut reference, mut resumed, mut continued) =
            (expected.clone(), params.clone(), params.clone());
        for number in [4, 5] {
            step(&mut opt, &mut resumed, number);
            step(&mut reference, &mut continued, number);
            for (got, want) in resumed.iter().zip(&continued) {
                assert_eq!(bits(got.iter()), bits(want.iter()), "{label}, step {number}");
            }
        }
        assert_eq!(opt, reference, "{label}");
    }
}

/// The folder holds the files the test above loads and nothing else, each of format version 4
/// by its own bytes.
#[test]
fn the_v4_folder_holds_version_4_files() {
    for name in file_names() {
        assert_eq!(claimed_version(&folder().join(&name)), 4, "{name}");
    }
    assert_folder_holds(&folder(), file_names());
}

/// Wrote the files, with the crate at format version 4; refuses to write over any of them.
#[test]
#[ignore = "writes the version 4 reference files, once"]
fn write_the_v4_files() {
    let (opt, _) = saved_run();
    let [json, postcard, training, serde] = file_names().map(|name| folder().join(name));
    for path in [&json, &postcard, &training, &serde] {
        assert!(!path.exists(), "{} exists: the files are never rewritten", path.display());
    }
    assert_eq!(ndarray_optim::checkpoint::VERSION, 4);
    std::fs::create_dir_all(folder()).unwrap();
    opt.save(&json, Encoding::Json).unwrap();
    opt.save(&postcard, Encoding::Postcard).unwrap();
    opt.save_with(&training, Encoding::Postcard, &EXTRAS).unwrap();
    std::fs::write(&serde, serde_json::to_vec(&opt).unwrap()).unwrap();
}
