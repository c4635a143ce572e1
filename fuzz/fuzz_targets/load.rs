//! Loading arbitrary bytes never panics, and whatever loads is usable.
//!
//! The first byte picks the rule and element type (`selector % 8`) and the door
//! (`selector / 8 % 9`); the rest is the door's input:
//!
//! - 0, 1, 2: checkpoint bytes, or a bare postcard or JSON payload through serde. What loads
//!   is written again and must read back equal, and each tensor small enough is stepped once.
//! - 3: sharding. A world size byte (1 to 5 ranks), then checkpoint bytes; the checkpoint is
//!   split over a plan of its tensors and merged back, which must give it again; a shard
//!   dropped, repeated or standing in for another must be refused or give only its records.
//! - 4: `load_state`. A flags byte, a length and that many edit bytes, then checkpoint bytes;
//!   the edits turn the checkpoint's tensor list into a model (dropped, renamed, reshaped,
//!   repeated or new tensors). Loaded strictly and leniently into an optimizer (with state of
//!   its own if the flags byte is odd): refused loads change nothing, and after a load every
//!   tensor of the model small enough steps at its shape.
//! - 5, 6: an `LrScheduler` in JSON or postcard, 7, 8: a `ReduceLrOnPlateau` in JSON or
//!   postcard. A byte configures an optimizer of one or two groups, then comes the payload,
//!   then the action bytes (scheduler: steps, new groups, new base rates; plateau: the
//!   metrics). Every step either sets finite rates ≥ 0 or fails and changes nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ndarray::{ArrayD, IxDyn};
use ndarray_optim::checkpoint::{Encoding, LoadMode};
use ndarray_optim::schedule::{LrScheduler, ReduceLrOnPlateau};
use ndarray_optim::shard::{merge, split};
use ndarray_optim::{
    Adadelta, Adam, Checkpoint, Element, Momentum, NAdam, Optimizer, ParamGrad, Sgd, ShardPlan,
    UpdateRule,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A rule the doors run with.
trait Setup: UpdateRule + Default + Serialize + DeserializeOwned {}
impl<R: UpdateRule + Default + Serialize + DeserializeOwned> Setup for R {}

/// Postcard bytes, to compare values that may hold NaN (unequal to itself).
fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encodes any checkpoint or schedule")
}

fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Steps tensor `name` at `shape` once, if it has at most 4096 elements.
fn step_at<R: Setup, A: Element + Serialize + DeserializeOwned>(
    opt: &mut Optimizer<R, A>,
    name: &str,
    shape: &[usize],
) {
    if numel(shape).is_some_and(|n| n <= 1 << 12) {
        let mut param = ArrayD::<A>::zeros(IxDyn(shape));
        let grad = ArrayD::<A>::from_elem(IxDyn(shape), A::from_f64(0.5));
        // A batch of one: a loaded global-norm clip refuses single-tensor steps.
        let batch = &mut [ParamGrad::new(name, &mut param, &grad)];
        if let Err(error) = opt.step_all(batch) {
            panic!("tensor `{name}` of shape {shape:?} does not step: {error}");
        }
    }
}

fn load<R: Setup, A: Element + Serialize + DeserializeOwned>(door: u8, input: &[u8]) {
    let loaded = match door {
        0 => Checkpoint::<R, A>::from_bytes(input).ok().and_then(|checkpoint| {
            let again =
                checkpoint.to_bytes(Encoding::Postcard).expect("a loaded checkpoint encodes");
            let back = Checkpoint::<R, A>::from_bytes(&again).expect("and reads back");
            assert_eq!(back.to_bytes(Encoding::Postcard).expect("encodes again"), again);
            Optimizer::from_checkpoint(checkpoint).ok()
        }),
        1 => postcard::from_bytes::<Optimizer<R, A>>(input).ok(),
        _ => serde_json::from_slice::<Optimizer<R, A>>(input).ok(),
    };
    let Some(mut opt) = loaded else { return };
    let tensors: Vec<(String, Vec<usize>)> =
        opt.state().filter_map(|t| Some((t.name().to_owned(), t.shape()?.to_vec()))).collect();
    for (name, shape) in tensors {
        step_at(&mut opt, &name, &shape);
    }
}

/// Names and shapes of a checkpoint's tensors, for a plan (`[0]` without state).
fn shapes<R, A>(checkpoint: &Checkpoint<R, A>) -> Vec<(String, Vec<usize>)> {
    let shape = |t: &ndarray_optim::checkpoint::TensorRecord<A>| {
        t.state.as_ref().map_or_else(|| vec![0], |state| state.shape.clone())
    };
    checkpoint.tensors.iter().map(|t| (t.name.clone(), shape(t))).collect()
}

fn plan_of<R, A>(checkpoint: &Checkpoint<R, A>, world: usize) -> ndarray_optim::Result<ShardPlan> {
    let shapes = shapes(checkpoint);
    ShardPlan::new(shapes.iter().map(|(name, shape)| (name.as_str(), shape.as_slice())), world)
}

fn shard<R: Setup, A: Element + Serialize + DeserializeOwned>(input: &[u8]) {
    let Some((&world, input)) = input.split_first() else { return };
    let world = 1 + usize::from(world % 5);
    let Ok(checkpoint) = Checkpoint::<R, A>::from_bytes(input) else { return };
    // As read, unchecked: splitting and merging may refuse it but never panic.
    if let Ok(plan) = plan_of(&checkpoint, world)
        && let Ok(shards) = split(checkpoint.clone(), &plan)
    {
        assert_eq!(shards.len(), world);
        let _ = merge(shards, &plan);
    }
    let Ok(opt) = Optimizer::from_checkpoint(checkpoint) else { return };
    let full = opt.checkpoint();
    let plan = plan_of(&full, world).expect("a loaded checkpoint lists every name once");
    let shards = split(full.clone(), &plan).expect("the plan lists every tensor");
    assert_eq!(shards.len(), world);
    for shard in &shards {
        Optimizer::from_checkpoint(shard.clone()).expect("a shard loads");
    }
    let merged = merge(shards.clone(), &plan).expect("the shards merge");
    assert_eq!(bytes(&merged), bytes(&full), "merging the shards gives the checkpoint again");
    let records: Vec<Vec<u8>> = full.tensors.iter().map(bytes).collect();
    for rank in 0..world {
        let mut fewer = shards.clone();
        fewer.remove(rank);
        assert!(merge(fewer, &plan).is_err(), "rank {rank}'s shard missing");
        let mut more = shards.clone();
        more.insert(rank, shards[rank].clone());
        assert!(merge(more, &plan).is_err(), "rank {rank}'s shard twice");
        for other in (0..world).filter(|&other| other != rank) {
            let mut swapped = shards.clone();
            swapped[rank] = shards[other].clone();
            // The shard of another rank in its place: state it has is then in the wrong
            // shard and refused. Without state it cannot be told apart (a checkpoint does not
            // record its rank), and the merge keeps the records it has, changing none.
            if let Ok(merged) = merge(swapped, &plan) {
                let has_state = shards[other].tensors.iter().any(|t| t.state.is_some());
                assert!(!has_state, "rank {other}'s state merged as rank {rank}'s");
                for tensor in &merged.tensors {
                    assert!(records.contains(&bytes(tensor)), "`{}` changed", tensor.name);
                }
            }
        }
    }
}

/// The model the edit bytes make of a checkpoint's tensors.
fn model<R, A>(checkpoint: &Checkpoint<R, A>, edits: &[u8]) -> Vec<(String, Vec<usize>)> {
    let mut model = vec![];
    let tensors = checkpoint.tensors.iter().map(|t| {
        (t.name.clone(), t.state.as_ref().map_or_else(|| vec![3], |state| state.shape.clone()))
    });
    let mut tensors: Vec<(String, Vec<usize>)> = tensors.collect();
    tensors.extend(
        edits.iter().skip(tensors.len()).map(|&e| (format!("new{e}"), vec![e as usize % 4])),
    );
    for (k, (name, shape)) in tensors.into_iter().enumerate() {
        let edit = edits.get(k).copied().unwrap_or(0);
        let mut other = shape.clone();
        other.push(2);
        match edit % 8 {
            1 => {}
            2 => model.push((name, other)),
            3 => model.extend([(name.clone(), shape.clone()), (name, shape)]),
            4 => model.extend([(name.clone(), shape), (name, other)]),
            5 => model.push((format!("{name}'"), shape)),
            6 => model.push((name, vec![usize::MAX, 2])),
            7 => model.push((name, vec![])),
            _ => model.push((name, shape)),
        }
    }
    model
}

fn load_state<R: Setup, A: Element + Serialize + DeserializeOwned>(input: &[u8]) {
    let [flags, length, input @ ..] = input else { return };
    let (edits, input) = input.split_at(usize::from(*length).min(input.len()));
    let Ok(checkpoint) = Checkpoint::<R, A>::from_bytes(input) else { return };
    let model = model(&checkpoint, edits);
    let mut start = Optimizer::<R, A>::new(R::default()).expect("the defaults are valid");
    if flags & 1 == 1 {
        step_at(&mut start, "own", &[2]);
    }
    for mode in [LoadMode::Strict, LoadMode::Lenient] {
        let mut opt = start.clone();
        let listed = model.iter().map(|(name, shape)| (name.as_str(), shape.as_slice()));
        match opt.load_state(checkpoint.clone(), listed, mode) {
            Err(_) => assert_eq!(bytes(&opt.checkpoint()), bytes(&start.checkpoint())),
            Ok(report) => {
                assert!(mode == LoadMode::Lenient || report.is_exact());
                for tensor in opt.state() {
                    assert!(model.iter().any(|(name, _)| name == tensor.name()));
                }
                for (name, shape) in &model {
                    step_at(&mut opt, name, shape);
                }
            }
        }
    }
}

/// Base rates for the optimizers that schedules drive.
const RATES: [f64; 8] = [0.1, 0.0, 1e-3, 1.0, 5e-324, 1e300, f64::MAX, 2.5e-7];

fn scheduled<R: Setup, A: Element + Serialize + DeserializeOwned>(config: u8) -> Optimizer<R, A> {
    let rate = |bits: u8| RATES[usize::from(bits & 7)];
    let mut hyper = R::default();
    *hyper.lr_mut() = rate(config >> 1);
    let mut opt = Optimizer::<R, A>::new(hyper.clone()).expect("a rate of RATES is valid");
    if config & 1 == 1 {
        *hyper.lr_mut() = rate(config >> 4);
        opt.add_group("second", hyper).expect("a rate of RATES is valid");
    }
    opt
}

/// One value from the front of `input` (JSON or postcard), and the bytes after it.
fn decode<T: DeserializeOwned>(json: bool, input: &[u8]) -> Option<(T, &[u8])> {
    if json {
        let mut values = serde_json::Deserializer::from_slice(input).into_iter::<T>();
        let value = values.next()?.ok()?;
        Some((value, &input[values.byte_offset()..]))
    } else {
        postcard::take_from_bytes(input).ok()
    }
}

fn rates_ok<R: UpdateRule, A: Element + Serialize + DeserializeOwned>(opt: &Optimizer<R, A>) {
    for group in opt.groups() {
        assert!(group.lr().is_finite() && group.lr() >= 0.0, "rate {}", group.lr());
    }
}

/// At most this many steps are replayed when a group is brought into phase (replaying is
/// linear in the position, up to 2^26 steps).
const REPLAY: u64 = 1 << 12;

fn schedule<R: Setup, A: Element + Serialize + DeserializeOwned>(json: bool, input: &[u8]) {
    let Some((&config, input)) = input.split_first() else { return };
    let Some((mut scheduler, actions)) = decode::<LrScheduler>(json, input) else { return };
    let again: LrScheduler =
        serde_json::from_slice(&serde_json::to_vec(&scheduler).expect("encodes")).expect("reads");
    assert_eq!(again, scheduler);
    let again: LrScheduler = postcard::from_bytes(&bytes(&scheduler)).expect("reads");
    assert_eq!(again, scheduler);
    let mut opt = scheduled::<R, A>(config);
    if scheduler.steps() > REPLAY {
        // Rates in phase already, as if restored with the scheduler.
        opt.set_lrs_with(|base, _| base).expect("the base rates are valid");
    }
    let plain = [3u8; 200];
    let actions = if actions.is_empty() { &plain[..] } else { &actions[..actions.len().min(200)] };
    for (i, &action) in actions.iter().enumerate() {
        let replay_ok = scheduler.steps() <= REPLAY;
        match action % 16 {
            0 if replay_ok => {
                let _ = opt.set_lr("default", RATES[usize::from(action >> 4 & 7)]);
            }
            1 if replay_ok => {
                let mut hyper = R::default();
                *hyper.lr_mut() = RATES[usize::from(action >> 4 & 7)];
                let _ = opt.add_group(&format!("added{i}"), hyper);
            }
            2 if replay_ok => opt.clear_scheduled_lrs(),
            _ => {
                let (before, position) = (bytes(&opt.checkpoint()), bytes(&scheduler));
                match scheduler.step(&mut opt) {
                    Ok(()) => rates_ok(&opt),
                    Err(_) => {
                        assert_eq!(bytes(&opt.checkpoint()), before, "a failed step changed rates");
                        assert_eq!(bytes(&scheduler), position, "a failed step moved on");
                        return;
                    }
                }
            }
        }
    }
}

fn plateau<R: Setup, A: Element + Serialize + DeserializeOwned>(json: bool, input: &[u8]) {
    let Some((&config, input)) = input.split_first() else { return };
    let Some((mut plateau, metrics)) = decode::<ReduceLrOnPlateau>(json, input) else { return };
    let mut opt = scheduled::<R, A>(config);
    let metric = |byte: u8| match byte {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        3 => -0.0,
        4 => f64::MAX,
        5 => -f64::MAX,
        6 => f64::MIN_POSITIVE,
        _ => (f64::from(byte) - 128.0) / 16.0,
    };
    let stalled = [136u8; 200];
    let metrics =
        if metrics.is_empty() { &stalled[..] } else { &metrics[..metrics.len().min(200)] };
    for &byte in metrics {
        let (before, position) = (bytes(&opt.checkpoint()), plateau);
        match plateau.step(&mut opt, metric(byte)) {
            Ok(()) => rates_ok(&opt),
            Err(_) => {
                assert_eq!(bytes(&opt.checkpoint()), before, "a failed step changed rates");
                assert_eq!(bytes(&plateau), bytes(&position), "a failed step moved on");
                return;
            }
        }
    }
}

fn door<R: Setup, A: Element + Serialize + DeserializeOwned>(door: u8, input: &[u8]) {
    match door {
        0..=2 => load::<R, A>(door, input),
        3 => shard::<R, A>(input),
        4 => load_state::<R, A>(input),
        5 | 6 => schedule::<R, A>(door == 5, input),
        _ => plateau::<R, A>(door == 7, input),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else { return };
    let d = selector / 8 % 9;
    match selector % 8 {
        0 => door::<Adam, f32>(d, input),
        1 => door::<Adam, f64>(d, input),
        2 => door::<Sgd, f32>(d, input),
        3 => door::<Sgd, f64>(d, input),
        4 => door::<Momentum, f32>(d, input),
        5 => door::<Momentum, f64>(d, input),
        6 => door::<Adadelta, f32>(d, input),
        _ => door::<NAdam, f64>(d, input),
    }
});
