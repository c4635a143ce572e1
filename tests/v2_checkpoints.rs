//! Checkpoints written by format version 2 keep loading, with the same values and groups
//! frozen.
//!
//! `tests/reference/checkpoints/v2/` holds files written by version 2 of the checkpoint format
//! (the version that added frozen groups): the state of the scenario below, for Adam in f32
//! and f64, saved by `Optimizer::save` in JSON (`*.json.ckpt`) and postcard
//! (`*.postcard.ckpt`), by `Optimizer::save_with` in postcard with extras (`*.training.ckpt`),
//! and as bare `serde_json` of the optimizer (`*.serde.json`). The files are a contract: every
//! later version of the crate must keep loading them, and they are never rewritten.
//! `write_the_v2_files` (ignored) wrote them and refuses to write over them.

use std::path::PathBuf;

use ndarray::ArrayD;
use ndarray_optim::checkpoint::Encoding;
use ndarray_optim::{Adam, Clip, Element, NonFinite, Optimizer, ParamGrad};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::{assert_folder_holds, bits, claimed_version, values};

fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/checkpoints/v2")
}

/// The model: name, group, shape.
const TENSORS: [(&str, &str, &[usize]); 3] = [
    ("backbone.w", "backbone", &[2, 3]),
    ("head.b", "default", &[]),
    ("head.w", "default", &[3, 2]),
];

/// The extras of the training-state files.
const EXTRAS: u64 = 42;

fn optimizer<A: Element>() -> Optimizer<Adam, A> {
    let mut opt = Optimizer::new(Adam { lr: 0.01, amsgrad: true, ..Adam::default() }).unwrap();
    opt.add_group("backbone", Adam { lr: 0.005, weight_decay: 0.1, ..Adam::default() }).unwrap();
    opt.assign("backbone.w", "backbone").unwrap();
    opt.assign("backbone.unused", "backbone").unwrap();
    opt.set_clip(Some(Clip::GlobalNorm { max_norm: 2.0 })).unwrap();
    opt.set_non_finite(NonFinite::Skip);
    opt
}

fn params<A: Element>() -> Vec<ArrayD<A>> {
    TENSORS.iter().enumerate().map(|(i, &(_, _, shape))| values(shape, i as u64)).collect()
}

/// Step `number` of the whole model, as one batch.
fn step<A: Element>(opt: &mut Optimizer<Adam, A>, params: &mut [ArrayD<A>], number: u64) {
    let grads: Vec<ArrayD<A>> = TENSORS
        .iter()
        .enumerate()
        .map(|(i, &(_, _, shape))| values(shape, 100 * number + i as u64))
        .collect();
    let mut batch: Vec<ParamGrad<'_, A>> = TENSORS
        .iter()
        .zip(params.iter_mut())
        .zip(&grads)
        .map(|((&(name, _, _), param), grad)| ParamGrad::new(name, param, grad))
        .collect();
    opt.step_all(&mut batch).unwrap();
}

/// The state the files hold: two steps of the whole model, then `backbone` frozen, every
/// rate halved (as a schedule would) and a third step.
fn saved_run<A: Element>() -> (Optimizer<Adam, A>, Vec<ArrayD<A>>) {
    let (mut opt, mut params) = (optimizer::<A>(), params::<A>());
    step(&mut opt, &mut params, 1);
    step(&mut opt, &mut params, 2);
    opt.freeze("backbone").unwrap();
    opt.set_lrs_with(|base, _| base * 0.5).unwrap();
    step(&mut opt, &mut params, 3);
    (opt, params)
}

fn file_names(dtype: &str) -> [String; 4] {
    ["json.ckpt", "postcard.ckpt", "training.ckpt", "serde.json"]
        .map(|kind| format!("adam-{dtype}.{kind}"))
}

fn load<A: Element + Serialize + DeserializeOwned>(
    dtype: &str,
) -> Vec<(String, Optimizer<Adam, A>)> {
    let [json, postcard, training, serde] = file_names(dtype);
    let path = |name: &str| folder().join(name);
    let (from_training, extras): (Optimizer<Adam, A>, u64) =
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

/// Whether every state value of `a` is within `ulps` units in the last place of `b`'s.
fn close<A: Element>(a: &Optimizer<Adam, A>, b: &Optimizer<Adam, A>, ulps: f64) -> bool {
    let (a, b) = (a.checkpoint(), b.checkpoint());
    let epsilon = if A::NAME == "f32" { f64::from(f32::EPSILON) } else { f64::EPSILON };
    a.tensors.len() == b.tensors.len()
        && a.tensors.iter().zip(&b.tensors).all(|(a, b)| match (&a.state, &b.state) {
            (Some(a), Some(b)) => a.buffers.iter().zip(&b.buffers).all(|(a, b)| {
                a.values.iter().zip(&b.values).all(|(&x, &y)| {
                    let (x, y) = (x.into_f64(), y.into_f64());
                    (x - y).abs() <= ulps * epsilon * x.abs().max(y.abs())
                })
            }),
            (a, b) => a.is_none() && b.is_none(),
        })
}

/// Since format version 3 the global norm is an exact sum of squares, so a run today may
/// differ from the one that wrote the files in the last bits of the norm, and so of every
/// value: the files are compared with today's run within a few units in the last place, and
/// with one another, and resumed, bit for bit.
fn check<A: Element + Serialize + DeserializeOwned>(dtype: &str) {
    let (recomputed, params) = saved_run::<A>();
    let loaded = load::<A>(dtype);
    let expected = loaded[0].1.clone();
    assert!(close(&expected, &recomputed, 4.0), "{dtype}: the files hold another run");
    for (label, mut opt) in loaded {
        assert!(opt.group("backbone").unwrap().is_frozen(), "{label}");
        assert!(!opt.group("default").unwrap().is_frozen(), "{label}");
        assert_eq!(opt.group("backbone").unwrap().lr(), 0.0025, "{label}");
        assert_eq!(opt.step_count("backbone.w"), Some(2), "{label}");
        assert_eq!(opt.step_count("head.w"), Some(3), "{label}");
        assert_eq!(opt.step_count("backbone.unused"), None, "{label}");
        assert_eq!(opt, expected, "{label}");
        // One more step frozen, then one unfrozen: as the run that never stopped.
        let (mut reference, mut resumed, mut continued) =
            (expected.clone(), params.clone(), params.clone());
        for number in [4, 5] {
            if number == 5 {
                opt.unfreeze("backbone").unwrap();
                reference.unfreeze("backbone").unwrap();
            }
            step(&mut opt, &mut resumed, number);
            step(&mut reference, &mut continued, number);
            for (got, want) in resumed.iter().zip(&continued) {
                assert_eq!(bits(got.iter()), bits(want.iter()), "{label}, step {number}");
            }
        }
        assert_eq!(opt, reference, "{label}");
    }
}

#[test]
fn adam_v2_files_load_and_resume() {
    check::<f32>("f32");
    check::<f64>("f64");
}

/// The folder holds the files the test above loads and nothing else, each of format version 2
/// by its own bytes.
#[test]
fn the_v2_folder_holds_version_2_files() {
    let names: Vec<String> = ["f32", "f64"].into_iter().flat_map(file_names).collect();
    for name in &names {
        assert_eq!(claimed_version(&folder().join(name)), 2, "{name}");
    }
    assert_folder_holds(&folder(), names);
}

/// Wrote the files, with the crate at format version 2; refuses to write over any of them.
#[test]
#[ignore = "writes the version 2 reference files, once"]
fn write_the_v2_files() {
    fn write<A: Element + Serialize + DeserializeOwned>(dtype: &str) {
        let (opt, _) = saved_run::<A>();
        let [json, postcard, training, serde] = file_names(dtype).map(|name| folder().join(name));
        for path in [&json, &postcard, &training, &serde] {
            assert!(!path.exists(), "{} exists: the files are never rewritten", path.display());
        }
        opt.save(&json, Encoding::Json).unwrap();
        opt.save(&postcard, Encoding::Postcard).unwrap();
        opt.save_with(&training, Encoding::Postcard, &EXTRAS).unwrap();
        std::fs::write(&serde, serde_json::to_vec(&opt).unwrap()).unwrap();
    }
    assert_eq!(ndarray_optim::checkpoint::VERSION, 2);
    std::fs::create_dir_all(folder()).unwrap();
    write::<f32>("f32");
    write::<f64>("f64");
}
