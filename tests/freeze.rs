//! Frozen groups: their tensors are left out of every step (parameters, state and step counts
//! stay as they are, to the bit, and their gradients count for neither the clip nor the
//! non-finite check) while the other tensors step exactly as in an optimizer that never had
//! the frozen ones; unfreezing resumes from the untouched state; the flag is saved.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use ndarray_optim::checkpoint::{Encoding, LoadMode, TrainingState};
use ndarray_optim::schedule::{LrScheduler, Schedule};
use ndarray_optim::{
    Adam, AdamW, Checkpoint, Clip, Element, Error, Momentum, MultiStepOutcome, MultiSteps, Muon,
    NonFinite, Optimizer, ParamGrad, Rprop, StepOutcome, UpdateRule,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::{bits, values};
use crate::files::{ENCODINGS, Folder};

type Model<A> = BTreeMap<String, ArrayD<A>>;

/// The tensors of the group that is frozen.
const BACKBONE: [&str; 2] = ["backbone.b", "backbone.w"];

/// A model of mixed shapes, and one of matrices only for Muon.
const MIXED: [(&str, &[usize]); 5] = [
    ("backbone.b", &[4]),
    ("backbone.w", &[3, 4]),
    ("head.b", &[2]),
    ("head.scale", &[]),
    ("head.w", &[4, 2]),
];
const MATRICES: [(&str, &[usize]); 4] =
    [("backbone.b", &[2, 3]), ("backbone.w", &[4, 3]), ("head.b", &[2, 2]), ("head.w", &[3, 5])];

/// How a test steps: one `step` per tensor, or the whole model as one batch.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Step,
    StepAll,
    StepModel,
}

const MODES: [Mode; 3] = [Mode::Step, Mode::StepAll, Mode::StepModel];

fn model<A: Element>(shapes: &[(&str, &[usize])], seed: u64) -> Model<A> {
    let tensor = |(index, (name, shape)): (usize, &(&str, &[usize]))| {
        (name.to_string(), values::<A>(shape, seed * 10 + index as u64))
    };
    shapes.iter().enumerate().map(tensor).collect()
}

/// The tensors of `model` whose names `keep` says yes to.
fn part<A: Element>(model: &Model<A>, keep: impl Fn(&str) -> bool) -> Model<A> {
    model.iter().filter(|(name, _)| keep(name)).map(|(n, t)| (n.clone(), t.clone())).collect()
}

fn frozen(name: &str) -> bool {
    BACKBONE.contains(&name)
}

fn not_frozen(name: &str) -> bool {
    !frozen(name)
}

/// One step of every tensor of `params` in `mode`: the outcome of each tensor's `step`, or the
/// batch's outcome under the name `""`.
fn step<R: UpdateRule, A: Element>(
    opt: &mut Optimizer<R, A>,
    mode: Mode,
    params: &mut Model<A>,
    grads: &Model<A>,
) -> Vec<(String, StepOutcome)> {
    match mode {
        Mode::Step => params
            .iter_mut()
            .map(|(name, param)| (name.clone(), opt.step(name, param, &grads[name]).unwrap()))
            .collect(),
        Mode::StepAll => {
            let mut batch: Vec<ParamGrad<'_, A>> = params
                .iter_mut()
                .map(|(name, param)| ParamGrad::new(name, param, &grads[name]))
                .collect();
            vec![(String::new(), opt.step_all(&mut batch).unwrap())]
        }
        Mode::StepModel => vec![(String::new(), opt.step_model(params, grads).unwrap())],
    }
}

/// A tensor's state to the bit: step count, shape, buffers and scalars; `None` without
/// state.
type StateBits = Option<(u64, Vec<usize>, Vec<(String, Vec<u64>)>, Vec<u64>)>;

fn state_bits<R: UpdateRule, A: Element>(opt: &Optimizer<R, A>, name: &str) -> StateBits {
    let view = opt.state_of(name).unwrap();
    let buffers = view.buffers().map(|(buffer, values)| (buffer.to_owned(), bits(values.iter())));
    let scalars = view.scalars().map(|(_, value)| value.to_bits());
    Some((view.step()?, view.shape()?.to_vec(), buffers.collect(), scalars.collect()))
}

fn assert_same_tensors<A: Element>(label: &str, got: &Model<A>, want: &Model<A>) {
    assert_eq!(got.len(), want.len(), "{label}");
    for (name, tensor) in want {
        assert_eq!(bits(got[name].iter()), bits(tensor.iter()), "{label}: `{name}`");
    }
}

/// The optimizer under test: `rule` in the default group and, at half its rate, in the group
/// `backbone`; clipped (by norm per tensor for `Mode::Step`, which cannot clip by global
/// norm), refusing non-finite gradients.
fn optimizer<R: UpdateRule, A: Element>(rule: &R, mode: Mode) -> Optimizer<R, A> {
    let mut opt = Optimizer::new(rule.clone()).unwrap();
    opt.add_group("backbone", rule.clone()).unwrap();
    let lr = opt.group("backbone").unwrap().base_lr();
    opt.set_lr("backbone", lr * 0.5).unwrap();
    for name in BACKBONE {
        opt.assign(name, "backbone").unwrap();
    }
    let clip = match mode {
        Mode::Step => Clip::Norm { max_norm: 1.0 },
        Mode::StepAll | Mode::StepModel => Clip::GlobalNorm { max_norm: 1.0 },
    };
    opt.set_clip(Some(clip)).unwrap();
    opt.set_non_finite(NonFinite::Refuse);
    opt
}

/// A schedule's step, for every group, the frozen one too.
fn schedule<R: UpdateRule, A: Element>(opt: &mut Optimizer<R, A>) {
    opt.set_lrs_with(|_, current| current * 0.875).unwrap();
}

/// Two steps of the whole model, then four with `backbone` frozen (a NaN among its gradients
/// once), compared with `without`, a copy of the optimizer without the backbone given only
/// the other tensors, and `untouched`, a copy with the backbone that is not given it; then
/// three steps after unfreezing, compared with `untouched` given the whole model again.
fn check<R, A>(rule: R, shapes: &[(&str, &[usize])])
where
    R: UpdateRule,
    A: Element,
{
    for mode in MODES {
        let label = format!("{} {} {mode:?}", rule.name(), A::NAME);
        let mut opt = optimizer::<R, A>(&rule, mode);
        let mut params = model::<A>(shapes, 1);
        for t in 0..2 {
            step(&mut opt, mode, &mut params, &model(shapes, 100 + t));
            schedule(&mut opt);
        }
        let backbone = part(&params, frozen);
        let backbone_state: Vec<StateBits> = BACKBONE.iter().map(|n| state_bits(&opt, n)).collect();
        assert!(backbone_state.iter().all(|state| state.as_ref().unwrap().0 == 2), "{label}");

        let mut without = opt.clone();
        for name in BACKBONE {
            without.remove(name).unwrap();
        }
        let mut untouched = opt.clone();
        let (mut head, mut untouched_head) = (part(&params, not_frozen), part(&params, not_frozen));
        opt.freeze("backbone").unwrap();
        opt.freeze("backbone").unwrap();
        assert!(opt.group("backbone").unwrap().is_frozen() && !opt.groups()[0].is_frozen());
        for t in 2..6 {
            let mut grads = model::<A>(shapes, 100 + t);
            if t == 3 {
                grads.get_mut("backbone.w").unwrap()[[0, 0]] = A::from_f64(f64::NAN);
            }
            let head_grads = part(&grads, not_frozen);
            let outcomes = step(&mut opt, mode, &mut params, &grads);
            let expected = step(&mut without, mode, &mut head, &head_grads);
            assert_eq!(step(&mut untouched, mode, &mut untouched_head, &head_grads), expected);
            for (name, outcome) in &outcomes {
                if frozen(name) {
                    assert_eq!(*outcome, StepOutcome::Frozen, "{label}: `{name}`");
                } else {
                    let (_, want) = expected.iter().find(|(other, _)| other == name).unwrap();
                    assert_eq!(outcome, want, "{label} step {t}: the clip of `{name}`");
                }
            }
            for o in [&mut opt, &mut without, &mut untouched] {
                schedule(o);
            }
            let step_label = format!("{label}, frozen step {t}");
            assert_same_tensors(&step_label, &part(&params, not_frozen), &head);
            assert_same_tensors(&step_label, &untouched_head, &head);
            assert_same_tensors(&step_label, &part(&params, frozen), &backbone);
            for name in params.keys().filter(|name| not_frozen(name)) {
                let want = state_bits(&without, name);
                assert_eq!(state_bits(&opt, name), want, "{step_label}: state of `{name}`");
                assert_eq!(state_bits(&untouched, name), want, "{step_label}: `{name}`");
            }
            for (name, want) in BACKBONE.iter().zip(&backbone_state) {
                assert_eq!(&state_bits(&opt, name), want, "{step_label}: state of `{name}`");
                assert_eq!(opt.step_count(name), Some(2), "{step_label}");
            }
        }
        // The schedule kept setting the frozen group's rate.
        let rate = |opt: &Optimizer<R, A>| opt.group("backbone").unwrap().lr().to_bits();
        assert_eq!(rate(&opt), rate(&untouched), "{label}");

        opt.unfreeze("backbone").unwrap();
        opt.unfreeze("backbone").unwrap();
        let mut whole = untouched_head;
        whole.extend(backbone);
        for t in 6..9 {
            let grads = model::<A>(shapes, 100 + t);
            let outcomes = step(&mut opt, mode, &mut params, &grads);
            assert_eq!(outcomes, step(&mut untouched, mode, &mut whole, &grads), "{label}");
            schedule(&mut opt);
            schedule(&mut untouched);
            assert_same_tensors(&format!("{label}, unfrozen step {t}"), &params, &whole);
        }
        assert_eq!(opt, untouched, "{label}");
        for name in BACKBONE {
            assert_eq!(opt.step_count(name), Some(5), "{label}");
        }
    }
}

#[test]
fn adam_leaves_frozen_tensors_alone() {
    let adam = Adam { lr: 0.05, amsgrad: true, weight_decay: 0.01, ..Adam::default() };
    check::<_, f32>(adam, &MIXED);
    check::<_, f64>(adam, &MIXED);
}

#[test]
fn adamw_leaves_frozen_tensors_alone() {
    let adamw = AdamW { lr: 0.05, weight_decay: 0.1, ..AdamW::default() };
    check::<_, f32>(adamw, &MIXED);
    check::<_, f64>(adamw, &MIXED);
}

#[test]
fn rprop_leaves_frozen_tensors_alone() {
    let rprop = Rprop { lr: 0.05, ..Rprop::default() };
    check::<_, f32>(rprop, &MIXED);
    check::<_, f64>(rprop, &MIXED);
}

#[test]
fn momentum_leaves_frozen_tensors_alone() {
    let momentum = Momentum { lr: 0.05, momentum: 0.9, dampening: 0.1, ..Momentum::default() };
    check::<_, f32>(momentum, &MIXED);
    check::<_, f64>(momentum, &MIXED);
}

#[test]
fn muon_leaves_frozen_matrices_alone() {
    let muon = Muon { lr: 0.02, ..Muon::default() };
    check::<_, f32>(muon, &MATRICES);
    check::<_, f64>(muon, &MATRICES);
}

/// A rate of 0 is not a freeze: Adam's moments and step count advance at rate 0, and Rprop
/// moves at rate 0 (its `lr` is only its first step size); frozen, neither does anything.
#[test]
fn a_rate_of_zero_is_not_a_freeze() {
    /// One step, then two more at rate 0, frozen or not.
    fn steps<R: UpdateRule>(rule: R, freeze: bool) -> (Optimizer<R, f64>, ArrayD<f64>) {
        let mut opt = Optimizer::new(rule).unwrap();
        let mut w = values::<f64>(&[3], 1);
        for t in 0..3 {
            if t == 1 {
                opt.set_lr("default", 0.0).unwrap();
                if freeze {
                    opt.freeze("default").unwrap();
                }
            }
            opt.step("w", &mut w, &values(&[3], 10 + t)).unwrap();
        }
        (opt, w)
    }
    let (at_zero, _) = steps(Adam::default(), false);
    let (frozen, _) = steps(Adam::default(), true);
    assert_eq!((at_zero.step_count("w"), frozen.step_count("w")), (Some(3), Some(1)));
    assert_ne!(state_bits(&at_zero, "w"), state_bits(&frozen, "w"));

    let (_, moved) = steps(Rprop::default(), false);
    let (_, kept) = steps(Rprop::default(), true);
    let mut one_step = values::<f64>(&[3], 1);
    let mut opt = Optimizer::new(Rprop::default()).unwrap();
    opt.step("w", &mut one_step, &values(&[3], 10)).unwrap();
    assert_eq!(bits(kept.iter()), bits(one_step.iter()));
    assert_ne!(bits(moved.iter()), bits(one_step.iter()));
}

/// A learning-rate scheduler keeps setting a frozen group's rate: unfrozen, the group steps
/// at the rate it would have had.
#[test]
fn schedules_keep_their_pace_through_a_freeze() {
    let start = || {
        let mut opt = Optimizer::<AdamW, f32>::new(AdamW { lr: 0.1, ..AdamW::default() }).unwrap();
        opt.add_group("backbone", AdamW { lr: 0.01, ..AdamW::default() }).unwrap();
        let scheduler = LrScheduler::new(&mut opt, Schedule::Cosine { t_max: 10, eta_min: 0.0 });
        (opt, scheduler.unwrap())
    };
    let (mut opt, mut scheduler) = start();
    let (mut plain, mut plain_scheduler) = start();
    opt.freeze("backbone").unwrap();
    for _ in 0..4 {
        scheduler.step(&mut opt).unwrap();
        plain_scheduler.step(&mut plain).unwrap();
    }
    opt.unfreeze("backbone").unwrap();
    assert_eq!(opt, plain);
    assert_eq!(opt.group("backbone").unwrap().lr(), plain.group("backbone").unwrap().lr());
    assert!(opt.group("backbone").unwrap().lr() < 0.01);
}

/// Freezing or unfreezing an unknown group is refused and changes nothing; a tensor assigned
/// to a frozen group is frozen, and a frozen tensor's shapes are still checked.
#[test]
fn bad_calls_are_refused() {
    let mut opt = Optimizer::<Adam, f32>::new(Adam::default()).unwrap();
    opt.add_group("backbone", Adam::default()).unwrap();
    opt.freeze("backbone").unwrap();
    let before = opt.clone();
    for result in [opt.freeze("backbon"), opt.unfreeze("nope")] {
        assert!(matches!(result, Err(Error::UnknownGroup { .. })), "{result:?}");
        assert_eq!(opt, before);
    }
    opt.assign("later", "backbone").unwrap();
    let mut w = values::<f32>(&[2, 2], 1);
    assert_eq!(opt.step("later", &mut w, &values(&[2, 2], 2)).unwrap(), StepOutcome::Frozen);
    assert_eq!(opt.step_count("later"), None);
    assert_eq!(opt.unstepped(), ["later"]);
    let err = opt.step("later", &mut w, &values(&[4], 2)).unwrap_err();
    assert!(matches!(err, Error::GradientShape { .. }), "{err:?}");
    // The default group frozen: a name never seen gets no slot.
    opt.freeze("default").unwrap();
    assert_eq!(opt.step("new", &mut w, &values(&[2, 2], 3)).unwrap(), StepOutcome::Frozen);
    assert_eq!(opt.group_of("new"), None);
    // A batch of frozen tensors steps nothing, and says so.
    let g = values::<f32>(&[2, 2], 4);
    let mut v = w.clone();
    let mut batch = [ParamGrad::new("later", &mut w, &g), ParamGrad::new("new", &mut v, &g)];
    assert_eq!(opt.step_all(&mut batch).unwrap(), StepOutcome::Frozen);
    // A name given twice is still an error.
    let mut u = values::<f32>(&[2, 2], 1);
    let mut batch = [ParamGrad::new("new", &mut v, &g), ParamGrad::new("new", &mut u, &g)];
    assert!(matches!(opt.step_all(&mut batch), Err(Error::DuplicateParam { .. })));
}

/// The flag is part of the checkpoint: bytes and files in JSON and postcard, bare serde,
/// the training-state file, `load_state`; a resumed run keeps the group frozen.
#[test]
fn the_frozen_flag_is_saved() {
    let mode = Mode::StepModel;
    let mut opt = optimizer::<Adam, f64>(&Adam { lr: 0.05, ..Adam::default() }, mode);
    let mut params = model::<f64>(&MIXED, 1);
    step(&mut opt, mode, &mut params, &model(&MIXED, 100));
    opt.freeze("backbone").unwrap();
    let checkpoint = opt.checkpoint();
    let flags: Vec<bool> = checkpoint.groups.iter().map(|group| group.frozen).collect();
    assert_eq!(flags, [false, true]);

    let folder = Folder::new("freeze-saved");
    let (path, run) = (folder.file("opt.ckpt"), folder.file("run.ckpt"));
    let mut restored: Vec<(String, Optimizer<Adam, f64>)> = Vec::new();
    for encoding in ENCODINGS {
        let bytes = checkpoint.to_bytes(encoding).unwrap();
        let from_bytes = Optimizer::from_checkpoint(Checkpoint::from_bytes(&bytes).unwrap());
        restored.push((format!("{encoding:?} bytes"), from_bytes.unwrap()));
        opt.save(&path, encoding).unwrap();
        restored.push((format!("{encoding:?} file"), Optimizer::load(&path).unwrap()));
        opt.save_with(&run, encoding, &params).unwrap();
        let (loaded, saved_params): (Optimizer<Adam, f64>, Model<f64>) =
            Optimizer::load_with(&run).unwrap();
        assert_eq!(saved_params, params);
        restored.push((format!("{encoding:?} training state"), loaded));
        let state = TrainingState::<Adam, f64, Model<f64>>::load(&run).unwrap();
        assert!(state.optimizer.groups[1].frozen);
    }
    let json = serde_json::to_string(&opt).unwrap();
    restored.push(("serde_json".to_owned(), serde_json::from_str(&json).unwrap()));
    let bare = postcard::to_allocvec(&opt).unwrap();
    restored.push(("bare postcard".to_owned(), postcard::from_bytes(&bare).unwrap()));
    let mut loaded = Optimizer::new(Adam::default()).unwrap();
    let shapes: Vec<(String, Vec<usize>)> =
        params.iter().map(|(name, param)| (name.clone(), param.shape().to_vec())).collect();
    loaded.load_state(checkpoint.clone(), shapes, LoadMode::Strict).unwrap();
    restored.push(("load_state".to_owned(), loaded));

    let mut expected = (opt.clone(), params.clone());
    step(&mut expected.0, mode, &mut expected.1, &model(&MIXED, 101));
    for (label, mut resumed) in restored {
        assert_eq!(resumed, opt, "{label}");
        assert!(resumed.group("backbone").unwrap().is_frozen(), "{label}");
        let mut resumed_params = params.clone();
        let outcome = step(&mut resumed, mode, &mut resumed_params, &model(&MIXED, 101));
        assert_same_tensors(&label, &resumed_params, &expected.1);
        assert_same_tensors(&label, &part(&resumed_params, frozen), &part(&params, frozen));
        assert!(matches!(outcome[0].1, StepOutcome::Stepped { .. }), "{label}");
        assert_eq!(resumed, expected.0, "{label}");
    }
}

/// A file's payload is read in the layout of its header's version: a version 2 payload under
/// a version 1 header is refused, not read by guesswork.
#[test]
fn the_header_version_decides_the_layout() {
    let mut opt = Optimizer::<Momentum, f32>::new(Momentum::default()).unwrap();
    opt.step("w", &mut values::<f32>(&[3], 1), &values(&[3], 2)).unwrap();
    for encoding in ENCODINGS {
        let bytes = opt.checkpoint().to_bytes(encoding).unwrap();
        let newline = bytes.iter().position(|&byte| byte == b'\n').unwrap();
        let header = std::str::from_utf8(&bytes[..newline]).unwrap();
        let fields: Vec<&str> = header.split(' ').collect();
        assert_eq!(fields[1], ndarray_optim::checkpoint::VERSION.to_string());
        let head = format!("{} 1 {} ", fields[0], fields[2..6].join(" "));
        let payload = &bytes[newline + 1..];
        let mut crc = crc32fast::Hasher::new();
        crc.update(head.as_bytes());
        crc.update(payload);
        let mut relabelled = format!("{head}{:08x}\n", crc.finalize()).into_bytes();
        relabelled.extend_from_slice(payload);
        let err = Checkpoint::<Momentum, f32>::from_bytes(&relabelled).unwrap_err();
        assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{encoding:?}: {err:?}");
    }
}

/// Gradient accumulation leaves frozen tensors out as the optimizer does: a frozen tensor's
/// gradient counts as zero, and is never looked at.
#[test]
fn multi_steps_leave_frozen_tensors_alone() {
    for mode in [Mode::StepAll, Mode::StepModel] {
        let label = format!("{mode:?}");
        let adam = Adam { lr: 0.05, ..Adam::default() };
        let mut opt = optimizer::<Adam, f32>(&adam, mode);
        opt.set_non_finite(NonFinite::Skip);
        let mut reference = MultiSteps::new(opt.clone(), 3).unwrap();
        opt.freeze("backbone").unwrap();
        let mut accumulated = MultiSteps::new(opt, 3).unwrap();
        let mut params = model::<f32>(&MIXED, 1);
        let initial = params.clone();
        let mut head = part(&params, not_frozen);
        let micro_batch =
            |accumulated: &mut MultiSteps<Adam, f32>, params: &mut Model<f32>, t: u64| {
                let mut grads = model::<f32>(&MIXED, 100 + t);
                if !params.contains_key("backbone.w") {
                    grads = part(&grads, not_frozen);
                } else if t == 1 {
                    grads.get_mut("backbone.b").unwrap()[0] = f32::INFINITY;
                }
                micro_step(accumulated, mode, params, &grads)
            };
        for t in 0..6 {
            let outcome = micro_batch(&mut accumulated, &mut params, t);
            assert_eq!(outcome, micro_batch(&mut reference, &mut head, t), "{label} {t}");
            assert_eq!(outcome.stepped(), t % 3 == 2, "{label} {t}");
            assert_same_tensors(&label, &part(&params, not_frozen), &head);
            assert_same_tensors(&label, &part(&params, frozen), &part(&initial, frozen));
        }
        assert_eq!(accumulated.optimizer().step_count("head.w"), Some(2));
        assert_eq!(accumulated.optimizer().step_count("backbone.w"), None);

        // Unfrozen after the first micro-batch of three: the backbone steps with the mean of
        // all three, the first as zeros.
        let mut reference = accumulated.clone();
        reference.optimizer_mut().unfreeze("backbone").unwrap();
        let mut reference_params = params.clone();
        for t in 6..9 {
            if t == 7 {
                accumulated.optimizer_mut().unfreeze("backbone").unwrap();
            }
            let mut grads = model::<f32>(&MIXED, 100 + t);
            micro_step(&mut accumulated, mode, &mut params, &grads);
            if t == 6 {
                grads.iter_mut().filter(|(name, _)| frozen(name)).for_each(|(_, g)| g.fill(0.0));
            }
            micro_step(&mut reference, mode, &mut reference_params, &grads);
        }
        assert_same_tensors(&label, &params, &reference_params);
        assert_eq!(accumulated, reference, "{label}");
        assert_eq!(accumulated.optimizer().step_count("backbone.w"), Some(1));

        // Everything frozen: the k-th micro-batch steps nothing, and ends the optimizer step.
        for group in ["default", "backbone"] {
            accumulated.optimizer_mut().freeze(group).unwrap();
        }
        let before = params.clone();
        let outcomes: Vec<MultiStepOutcome> = (9..12)
            .map(|t| micro_step(&mut accumulated, mode, &mut params, &model(&MIXED, 100 + t)))
            .collect();
        assert_eq!(outcomes[2], MultiStepOutcome::Frozen, "{label}");
        assert!(outcomes[2].stepped());
        assert_same_tensors(&label, &params, &before);
        assert!(accumulated.pending().is_empty());
    }
}

fn micro_step<R: UpdateRule, A: Element>(
    accumulated: &mut MultiSteps<R, A>,
    mode: Mode,
    params: &mut Model<A>,
    grads: &Model<A>,
) -> MultiStepOutcome {
    match mode {
        Mode::Step => unreachable!("tensor by tensor, micro-batches count apart"),
        Mode::StepAll => {
            let mut batch: Vec<ParamGrad<'_, A>> = params
                .iter_mut()
                .map(|(name, param)| ParamGrad::new(name, param, &grads[name]))
                .collect();
            accumulated.step_all(&mut batch).unwrap()
        }
        Mode::StepModel => accumulated.step_model(params, grads).unwrap(),
    }
}

/// Tensor by tensor through `MultiSteps::step`: a frozen tensor's k-th micro-batch reports
/// `Frozen`.
#[test]
fn multi_steps_of_one_frozen_tensor() {
    let mut opt = Optimizer::<Momentum, f64>::new(Momentum::default()).unwrap();
    opt.freeze("default").unwrap();
    let mut accumulated = MultiSteps::new(opt, 2).unwrap();
    let mut w = values::<f64>(&[2, 3], 1);
    let before = w.clone();
    let g = values::<f64>(&[2, 3], 2);
    let first = accumulated.step("w", &mut w, &g).unwrap();
    assert_eq!(first, MultiStepOutcome::Accumulated { micro_steps: 1 });
    assert_eq!(accumulated.step("w", &mut w, &g).unwrap(), MultiStepOutcome::Frozen);
    assert_eq!(bits(w.iter()), bits(before.iter()));
    assert_eq!(accumulated.optimizer().step_count("w"), None);
}

/// Serialized optimizers hold the flag for every rule type, and what a build writes, it reads.
#[test]
fn every_kind_of_optimizer_round_trips_the_flag() {
    fn round_trip<R: UpdateRule + Serialize + DeserializeOwned>(rule: R) {
        let mut opt = Optimizer::<R, f32>::new(rule).unwrap();
        opt.freeze("default").unwrap();
        let json: Optimizer<R, f32> = serde_json::from_str(&serde_json::to_string(&opt).unwrap())
            .unwrap_or_else(|err| panic!("{}: {err}", opt.groups()[0].hyper().name()));
        assert!(json.groups()[0].is_frozen());
        let bytes = opt.checkpoint().to_bytes(Encoding::Postcard).unwrap();
        let back = Optimizer::from_checkpoint(Checkpoint::<R, f32>::from_bytes(&bytes).unwrap());
        assert!(back.unwrap().groups()[0].is_frozen());
    }
    round_trip(Adam::default());
    round_trip(Rprop::default());
    round_trip(ndarray_optim::Rule::from(Muon::default()));
}
