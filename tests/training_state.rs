//! Training-state files: an optimizer and the rest of a run's state in one file, with the
//! guarantees of a checkpoint file (atomic replacement, checked header, hostile bytes
//! refused) and an exact resume.

use std::collections::BTreeMap;

use ndarray::{Array1, array};
use ndarray_optim::checkpoint::{Encoding, LoadMode, TrainingState};
use ndarray_optim::schedule::{LrScheduler, Schedule};
use ndarray_optim::{AdamW, Checkpoint, Error, Optimizer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::files::{ENCODINGS, Folder, listing};
use crate::hostile::mutate;

type Run = (Optimizer<AdamW, f64>, LrScheduler, Array1<f64>);

fn start() -> Run {
    let mut opt = Optimizer::new(AdamW { lr: 0.05, ..AdamW::default() }).unwrap();
    opt.add_group("head", AdamW { lr: 0.2, weight_decay: 0.1, ..AdamW::default() }).unwrap();
    opt.assign("head.w", "head").unwrap();
    let schedules = vec![
        Schedule::Linear { start_factor: 0.1, end_factor: 1.0, total_iters: 4 },
        Schedule::Cosine { t_max: 20, eta_min: 0.001 },
    ];
    let scheduler = LrScheduler::sequential(&mut opt, schedules, vec![4]).unwrap();
    (opt, scheduler, array![1.0, -2.0, 0.5])
}

/// `steps` steps of two tensors of the quadratic ½ Σ k xₖ², the schedule stepped after each.
fn advance((opt, scheduler, w): &mut Run, steps: usize) {
    for _ in 0..steps {
        let mut head = w.mapv(|x| 0.5 * x);
        let (gw, gh) = (Array1::from_shape_fn(3, |k| (k + 1) as f64 * w[k]), head.clone());
        opt.step("w", w, &gw).unwrap();
        opt.step("head.w", &mut head, &gh).unwrap();
        scheduler.step(opt).unwrap();
    }
}

fn trained(steps: usize) -> Run {
    let mut run = start();
    advance(&mut run, steps);
    run
}

#[test]
fn a_run_resumed_from_its_training_state_continues_exactly() {
    let folder = Folder::new("training-resume");
    let path = folder.file("run.ckpt");
    let mut whole = trained(7);
    advance(&mut whole, 8);
    for encoding in ENCODINGS {
        let (opt, scheduler, w) = trained(7);
        opt.save_with(&path, encoding, &(scheduler, w)).unwrap();
        drop(opt);
        let (opt, (scheduler, w)) = Optimizer::load_with(&path).unwrap();
        let mut resumed = (opt, scheduler, w);
        advance(&mut resumed, 8);
        assert_eq!(resumed.0, whole.0, "{encoding:?}");
        assert_eq!(resumed.1, whole.1, "{encoding:?}");
        assert_eq!(resumed.2, whole.2, "{encoding:?}");
    }
    assert_eq!(listing(&folder), ["run.ckpt"]);
}

/// The file holds what `TrainingState::to_bytes` gives for the same state, and reads back
/// through every door.
#[test]
fn a_saved_training_state_is_its_bytes() {
    let folder = Folder::new("training-bytes");
    let path = folder.file("run.ckpt");
    let (opt, scheduler, _) = trained(5);
    for encoding in ENCODINGS {
        opt.save_with(&path, encoding, &scheduler).unwrap();
        let state = TrainingState { optimizer: opt.checkpoint(), extras: scheduler.clone() };
        let bytes = state.to_bytes(encoding).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{encoding:?}");
        let version = ndarray_optim::checkpoint::VERSION;
        assert!(bytes.starts_with(format!("ndarray-optim-training {version} ").as_bytes()));
        assert_eq!(TrainingState::from_bytes(&bytes).unwrap(), state);
        assert_eq!(TrainingState::load(&path).unwrap(), state);
        state.save(&path, encoding).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
}

/// A training state is not an optimizer checkpoint nor the other way round: each loader
/// names what the file is instead of misreading it.
#[test]
fn a_file_of_the_other_kind_is_refused_by_name() {
    let folder = Folder::new("training-kind");
    let (opt, scheduler, _) = trained(2);
    let (optimizer_file, training_file) = (folder.file("opt.ckpt"), folder.file("run.ckpt"));
    opt.save(&optimizer_file, Encoding::Postcard).unwrap();
    opt.save_with(&training_file, Encoding::Postcard, &scheduler).unwrap();

    let err = Optimizer::<AdamW, f64>::load(&training_file).unwrap_err();
    assert!(matches!(err, Error::CheckpointMismatch { field: "kind", .. }), "{err:?}");
    assert!(err.to_string().contains("load_with"), "{err}");
    let err = Optimizer::<AdamW, f64>::load_with::<LrScheduler>(&optimizer_file).unwrap_err();
    assert!(matches!(err, Error::CheckpointMismatch { field: "kind", .. }), "{err:?}");
    assert!(err.to_string().contains("Optimizer::load"), "{err}");
    // Extras of another type do not decode.
    let err = Optimizer::<AdamW, f64>::load_with::<(LrScheduler, u8)>(&training_file).unwrap_err();
    assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{err:?}");
}

/// Torn and altered files are refused whatever byte the damage is at: the header's length
/// and checksum cover the extras as they cover the optimizer.
#[test]
fn torn_or_altered_training_states_are_refused() {
    let (opt, scheduler, w) = trained(3);
    let state = TrainingState { optimizer: opt.checkpoint(), extras: (scheduler, w) };
    type State = TrainingState<AdamW, f64, (LrScheduler, Array1<f64>)>;
    let mut rng = StdRng::seed_from_u64(11);
    for encoding in ENCODINGS {
        let bytes = state.to_bytes(encoding).unwrap();
        for cut in 0..bytes.len() {
            let err = State::from_bytes(&bytes[..cut]).unwrap_err();
            assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{encoding:?} {cut}: {err}");
        }
        for _ in 0..1000 {
            let mut mutated = bytes.clone();
            for _ in 0..rng.random_range(1..4) {
                mutate(&mut rng, &mut mutated);
            }
            if mutated != bytes {
                let err = State::from_bytes(&mutated).unwrap_err();
                assert!(
                    matches!(
                        err,
                        Error::CorruptCheckpoint { .. } | Error::UnsupportedCheckpoint { .. }
                    ),
                    "{err:?}"
                );
            }
        }
    }
}

/// A newer version is refused before anything else is read.
#[test]
fn a_newer_training_state_is_refused() {
    let next = ndarray_optim::checkpoint::VERSION + 1;
    let bytes = format!("ndarray-optim-training {next} postcard adamw f64 0 00000000\n");
    let err = TrainingState::<AdamW, f64, ()>::from_bytes(bytes.as_bytes()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedCheckpoint { version, .. } if version == next));
}

/// Extras that JSON cannot store are refused when saving, and the old file stays.
#[test]
fn extras_json_cannot_store_are_refused_on_saving() {
    let folder = Folder::new("training-json");
    let path = folder.file("run.ckpt");
    let (opt, scheduler, _) = trained(2);
    opt.save_with(&path, Encoding::Json, &scheduler).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = opt.save_with(&path, Encoding::Json, &array![1.0, f64::NAN]).unwrap_err();
    assert!(matches!(err, Error::Encode { .. }), "{err:?}");
    let state = TrainingState { optimizer: opt.checkpoint(), extras: f64::INFINITY };
    assert!(matches!(state.to_bytes(Encoding::Json), Err(Error::Encode { .. })));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // Postcard stores them bit for bit.
    opt.save_with(&path, Encoding::Postcard, &f64::NAN).unwrap();
    let (_, nan): (Optimizer<AdamW, f64>, f64) = Optimizer::load_with(&path).unwrap();
    assert_eq!(nan.to_bits(), f64::NAN.to_bits());
    assert_eq!(listing(&folder), ["run.ckpt"]);
}

/// JSON writes NaN and infinities as `null`, which an `Option` reads back as `None`: such
/// extras are refused too, naming where the value sits, rather than changed on the way.
#[test]
fn extras_whose_floats_json_would_turn_into_none_are_refused() {
    let folder = Folder::new("training-json-option");
    let path = folder.file("run.ckpt");
    let (opt, scheduler, _) = trained(2);
    opt.save_with(&path, Encoding::Json, &scheduler).unwrap();
    let before = std::fs::read(&path).unwrap();
    let best: BTreeMap<String, Option<f64>> =
        BTreeMap::from([("loss".to_owned(), Some(0.5)), ("metric".to_owned(), Some(f64::NAN))]);
    let err = opt.save_with(&path, Encoding::Json, &(7_u64, best.clone())).unwrap_err();
    let Error::Encode { reason } = &err else { panic!("{err:?}") };
    assert!(reason.contains(r#"`[1]["metric"]` of the extras is NaN"#), "{reason}");
    let state = TrainingState { optimizer: opt.checkpoint(), extras: Some(f64::INFINITY) };
    assert!(matches!(state.to_bytes(Encoding::Json), Err(Error::Encode { .. })));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // Postcard keeps them.
    opt.save_with(&path, Encoding::Postcard, &best).unwrap();
    let (_, back): (Optimizer<AdamW, f64>, BTreeMap<String, Option<f64>>) =
        Optimizer::load_with(&path).unwrap();
    assert!(back["metric"].is_some_and(f64::is_nan));
}

/// Concurrent saves of training states to one path leave one whole file of one of them.
#[test]
fn concurrent_training_saves_leave_a_whole_file() {
    let folder = Folder::new("training-concurrent");
    let path = folder.file("run.ckpt");
    let runs: Vec<Run> = (1..=3).map(trained).collect();
    let expected: Vec<_> =
        runs.iter().map(|(opt, scheduler, _)| (opt.clone(), scheduler.clone())).collect();
    runs[0].0.save_with(&path, Encoding::Postcard, &runs[0].1).unwrap();
    std::thread::scope(|scope| {
        for (index, (opt, scheduler, _)) in runs.iter().enumerate() {
            let path = &path;
            scope.spawn(move || {
                for round in 0..60 {
                    opt.save_with(path, ENCODINGS[(index + round) % 2], scheduler).unwrap();
                }
            });
        }
        scope.spawn(|| {
            for _ in 0..60 {
                let loaded: (Optimizer<AdamW, f64>, LrScheduler) =
                    Optimizer::load_with(&path).unwrap();
                assert!(expected.contains(&loaded), "a training state no save wrote");
            }
        });
    });
    assert_eq!(listing(&folder), ["run.ckpt"]);
}

/// Restoring against a model that changed goes through `load_state`: strict names what
/// differs, lenient restores the rest, and the extras come back either way.
#[test]
fn a_training_state_restores_against_a_changed_model() {
    let (opt, scheduler, w) = trained(4);
    let state = TrainingState { optimizer: opt.checkpoint(), extras: scheduler.clone() };
    let bytes = state.to_bytes(Encoding::Postcard).unwrap();
    let TrainingState { optimizer, extras } =
        TrainingState::<AdamW, f64, LrScheduler>::from_bytes(&bytes).unwrap();
    assert_eq!(extras, scheduler);
    let model = [("w", w.shape()), ("head.w", &[3][..]), ("new.bias", &[2][..])];
    let mut fresh = start().0;
    let err = fresh.load_state(optimizer.clone(), model, LoadMode::Strict).unwrap_err();
    assert!(err.to_string().contains("new.bias"), "{err}");
    let report = fresh.load_state(optimizer, model, LoadMode::Lenient).unwrap();
    assert!(format!("{report:?}").contains("new.bias"), "{report:?}");
    assert_eq!(fresh.step_count("w"), Some(4));
    let _: Checkpoint<AdamW, f64> = fresh.checkpoint();
}
