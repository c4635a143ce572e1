//! A model-based test of the whole API: random sequences of calls against a simple reference
//! model of what the optimizer's state should be.
//!
//! Every sequence starts from a fresh momentum optimizer in `f64` and runs up to 30 calls:
//! `step` and `step_all` (random names, shapes including empty and 0-D tensors, memory
//! layouts, gradients with occasional NaN or infinity, batches naming a tensor twice),
//! `assign`, `add_group`, `set_lr`, `freeze` and `unfreeze`, learning-rate schedules,
//! clipping, the non-finite policy, `declare`, state surgery (`reset`, `remove`, `rename`),
//! checkpoint round trips (bytes in both encodings, serde JSON), files, `load_state` against
//! a random model, edited step counts, and sharding (split, merge).
//!
//! The [`Model`] predicts, for each call, whether it succeeds or which error it returns, and
//! after it every group's rates and frozen flag, every group's members, every tensor's group,
//! step count, shape and momentum buffer,
//! and every parameter's new value (the same arithmetic as the rule, so bit for bit). A call
//! that fails, or a step that is skipped, must change nothing: the optimizer (by `==` and by
//! its checkpoint's bytes, which see NaN that `==` cannot), the parameters and the scheduler
//! are compared before and after. Every call must return, without panicking, within
//! [`CALL_LIMIT`]; a watchdog aborts the process otherwise, so that a hang fails the run.
//!
//! `cargo test --release --test suite model` runs 10,000 sequences from a fixed seed. For a
//! longer run set the number of sequences and, to explore others, the seed:
//! `MODEL_CASES=50000 MODEL_SEED=7 cargo test --release --test suite model`. A failure is
//! shrunk to a minimal sequence, which the panic message prints.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::discriminant;
use std::path::PathBuf;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, IxDyn, ShapeBuilder, Slice};
use ndarray_optim::checkpoint::{Encoding, LoadMode, LoadReport, ShapeMismatch};
use ndarray_optim::schedule::{LrScheduler, OneCycle, Schedule};
use ndarray_optim::shard::{merge, split};
use ndarray_optim::{
    Checkpoint, Clip, Error, Momentum, NonFinite, Optimizer, ParamGrad, ShardPlan, StatePrecision,
    StepOutcome,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestError, TestRunner};

use crate::common::values;

type Opt = Optimizer<Momentum, f64>;

/// The names calls use: few, so that sequences revisit them.
const NAMES: [&str; 5] = ["a", "b", "w.0", "w.1", "bias"];
/// Group names: the default group, two to add, and one that is never added.
const GROUPS: [&str; 4] = ["default", "fast", "still", "missing"];
/// Shapes, including 0-D and empty tensors.
const SHAPES: [&[usize]; 7] = [&[], &[0], &[3], &[2, 3], &[3, 2], &[2, 0, 2], &[1, 2, 1, 2]];
/// The momentum of every group that keeps a buffer.
const MOMENTUM: f64 = 0.9;
/// The default group's learning rate.
const DEFAULT_LR: f64 = 0.125;
/// No single call may take longer than this (they take microseconds).
const CALL_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Calls

/// How a tensor is stored in memory; its logical values are the same in every layout.
#[derive(Clone, Copy, Debug)]
enum Layout {
    RowMajor,
    ColumnMajor,
    /// Every other element of a twice-as-long last axis.
    Strided,
    /// Stored backwards along every axis (negative strides).
    Reversed,
}

/// One tensor of a step: indices into [`NAMES`] and [`SHAPES`].
#[derive(Clone, Debug)]
struct Entry {
    name: usize,
    shape: usize,
    /// A gradient of another shape than the parameter, now and then.
    grad_shape: Option<usize>,
    param_layout: Layout,
    grad_layout: Layout,
    seed: u8,
    /// A NaN or infinity written into the gradient at this index (modulo its length).
    special: Option<(usize, f64)>,
}

#[derive(Clone, Copy, Debug)]
enum Codec {
    Postcard,
    Json,
    /// The optimizer itself through serde_json.
    Serde,
}

#[derive(Clone, Copy, Debug)]
enum Sched {
    Exponential(f64),
    OneCycle(u64),
    Step,
}

#[derive(Clone, Debug)]
enum Op {
    Step(Entry),
    StepAll(Vec<Entry>),
    Assign {
        name: usize,
        group: usize,
    },
    AddGroup {
        group: usize,
        lr: f64,
        momentum: bool,
    },
    SetLr {
        group: usize,
        lr: f64,
    },
    Schedule(Sched),
    SetClip(Option<Clip>),
    SetNonFinite(NonFinite),
    Declare(Vec<usize>),
    RoundTrip(Codec),
    SaveLoad(Encoding),
    LoadState {
        model: Vec<(usize, usize)>,
        strict: bool,
    },
    /// Set a tensor's step count close to `u64::MAX` through an edited checkpoint.
    BumpStep {
        name: usize,
        below_max: u64,
    },
    Shard {
        world: usize,
        leave_one_out: bool,
    },
    Freeze {
        group: usize,
        frozen: bool,
    },
    /// Keep a group's state in a precision: low precision is refused for `f64` elements.
    SetPrecision {
        group: usize,
        precision: StatePrecision,
    },
    Reset(usize),
    Remove(usize),
    Rename {
        from: usize,
        to: usize,
    },
}

fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![
        Just(Layout::RowMajor),
        Just(Layout::ColumnMajor),
        Just(Layout::Strided),
        Just(Layout::Reversed)
    ]
}

fn special() -> impl Strategy<Value = f64> {
    prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        0..NAMES.len(),
        0..SHAPES.len(),
        prop::option::weighted(0.05, 0..SHAPES.len()),
        layout(),
        layout(),
        any::<u8>(),
        prop::option::weighted(0.1, (0..8_usize, special())),
    )
        .prop_map(|(name, shape, grad_shape, param_layout, grad_layout, seed, special)| {
            Entry { name, shape, grad_shape, param_layout, grad_layout, seed, special }
        })
}

/// Learning rates, mostly valid (0 included), sometimes negative, NaN or infinite.
fn lr() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => (1..=16_u32).prop_map(|k| f64::from(k) / 16.0),
        1 => Just(0.0),
        1 => Just(-0.5),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
    ]
}

fn clip() -> impl Strategy<Value = Option<Clip>> {
    let bound = prop_oneof![
        4 => Just(0.5),
        4 => Just(2.0),
        1 => Just(0.0),
        1 => Just(-1.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
    ];
    prop::option::weighted(
        0.8,
        (0..3, bound).prop_map(|(kind, bound)| match kind {
            0 => Clip::Value { clip_value: bound },
            1 => Clip::Norm { max_norm: bound },
            _ => Clip::GlobalNorm { max_norm: bound },
        }),
    )
}

fn op() -> impl Strategy<Value = Op> {
    let names = || 0..NAMES.len();
    let groups = || 0..GROUPS.len();
    prop_oneof![
        12 => entry().prop_map(Op::Step),
        8 => prop::collection::vec(entry(), 0..5).prop_map(Op::StepAll),
        5 => (names(), groups()).prop_map(|(name, group)| Op::Assign { name, group }),
        3 => (groups(), lr(), any::<bool>())
            .prop_map(|(group, lr, momentum)| Op::AddGroup { group, lr, momentum }),
        2 => (groups(), lr()).prop_map(|(group, lr)| Op::SetLr { group, lr }),
        3 => prop_oneof![
            prop_oneof![Just(0.5), Just(2.0), Just(0.0), Just(-1.0)].prop_map(Sched::Exponential),
            (1..5_u64).prop_map(Sched::OneCycle),
            Just(Sched::Step),
            Just(Sched::Step),
        ]
        .prop_map(Op::Schedule),
        2 => clip().prop_map(Op::SetClip),
        2 => prop_oneof![Just(NonFinite::Ignore), Just(NonFinite::Skip), Just(NonFinite::Refuse)]
            .prop_map(Op::SetNonFinite),
        1 => prop::collection::vec(names(), 0..4).prop_map(Op::Declare),
        2 => prop_oneof![Just(Codec::Postcard), Just(Codec::Json), Just(Codec::Serde)]
            .prop_map(Op::RoundTrip),
        1 => prop_oneof![Just(Encoding::Postcard), Just(Encoding::Json)].prop_map(Op::SaveLoad),
        2 => (prop::collection::vec((names(), 0..SHAPES.len()), 0..5), any::<bool>())
            .prop_map(|(model, strict)| Op::LoadState { model, strict }),
        1 => (names(), 0..3_u64).prop_map(|(name, below_max)| Op::BumpStep { name, below_max }),
        1 => (0..4_usize, prop::bool::weighted(0.2))
            .prop_map(|(world, leave_one_out)| Op::Shard { world, leave_one_out }),
        4 => (groups(), prop::bool::weighted(0.7))
            .prop_map(|(group, frozen)| Op::Freeze { group, frozen }),
        1 => (groups(), prop_oneof![
            Just(StatePrecision::Full),
            Just(StatePrecision::Bf16),
            (0..8192_usize).prop_map(|min_numel| StatePrecision::Int8 { min_numel }),
        ])
            .prop_map(|(group, precision)| Op::SetPrecision { group, precision }),
        1 => names().prop_map(Op::Reset),
        1 => names().prop_map(Op::Remove),
        1 => (names(), names()).prop_map(|(from, to)| Op::Rename { from, to }),
    ]
}

// ---------------------------------------------------------------------------------------
// The reference model

#[derive(Clone, Debug)]
struct GroupModel {
    name: &'static str,
    /// The base rate, in the group's hyperparameters.
    base: f64,
    /// The rate a schedule set, if any.
    scheduled: Option<f64>,
    /// Whether the group's rule keeps a momentum buffer (momentum > 0).
    buffer: bool,
    frozen: bool,
}

impl GroupModel {
    fn lr(&self) -> f64 {
        self.scheduled.unwrap_or(self.base)
    }
}

#[derive(Clone, Debug)]
struct StateModel {
    step: u64,
    shape: Vec<usize>,
    buffer: Option<ArrayD<f64>>,
}

#[derive(Clone, Debug)]
struct TensorModel {
    group: usize,
    state: Option<StateModel>,
}

#[derive(Clone, Copy, Debug)]
enum SchedModel {
    /// ExponentialLR's factor and the steps taken so far.
    Exponential {
        gamma: f64,
        steps: u64,
    },
    OneCycle {
        total: u64,
        steps: u64,
    },
}

/// What the optimizer's state should be.
#[derive(Clone, Debug)]
struct Model {
    groups: Vec<GroupModel>,
    tensors: BTreeMap<String, TensorModel>,
    declared: bool,
    clip: Option<Clip>,
    non_finite: NonFinite,
    sched: Option<SchedModel>,
}

fn valid_lr(lr: f64) -> bool {
    lr.is_finite() && lr >= 0.0
}

/// An error of the given kind; only the variant is compared.
fn invalid_hyper() -> Error {
    Error::InvalidHyperparameter { rule: "", key: "", value: 0.0, requirement: "" }
}

impl Model {
    fn new() -> Self {
        let default = GroupModel {
            name: GROUPS[0],
            base: DEFAULT_LR,
            scheduled: None,
            buffer: true,
            frozen: false,
        };
        Model {
            groups: vec![default],
            tensors: BTreeMap::new(),
            declared: false,
            clip: None,
            non_finite: NonFinite::Ignore,
            sched: None,
        }
    }

    fn group_index(&self, name: &str) -> Result<usize, Error> {
        (self.groups.iter().position(|group| group.name == name))
            .ok_or(Error::UnknownGroup { group: name.to_owned() })
    }

    fn state(&self, name: &str) -> Option<&StateModel> {
        self.tensors.get(name)?.state.as_ref()
    }

    /// Whether a step leaves `name` out: its group, or for a new name the default group, is
    /// frozen.
    fn is_frozen(&self, name: &str) -> bool {
        self.groups[self.tensors.get(name).map_or(0, |t| t.group)].frozen
    }

    /// `UnknownParam` unless the optimizer knows `name`.
    fn known(&self, name: &str) -> Result<(), Error> {
        if self.tensors.contains_key(name) {
            Ok(())
        } else {
            Err(Error::UnknownParam { param: name.into(), closest: None })
        }
    }

    /// What `check` refuses, in the library's order.
    fn check_step(&self, name: &str, shape: &[usize], grad: &[usize]) -> Result<(), Error> {
        if shape != grad {
            return Err(Error::GradientShape {
                param: name.into(),
                param_shape: vec![],
                grad_shape: vec![],
            });
        }
        if self.declared && !self.tensors.contains_key(name) {
            return Err(Error::UnknownParam { param: name.into(), closest: None });
        }
        match self.state(name) {
            Some(state) if state.shape != shape => {
                Err(Error::ShapeChanged { param: name.into(), registered: vec![], given: vec![] })
            }
            Some(state) if state.step == u64::MAX => {
                Err(Error::StepCountOverflow { param: name.into() })
            }
            _ => Ok(()),
        }
    }

    /// Whether any state buffer holds NaN or infinity (JSON cannot store it, `==` cannot
    /// compare it).
    fn has_non_finite(&self) -> bool {
        self.tensors
            .values()
            .filter_map(|t| t.state.as_ref())
            .any(|state| state.buffer.as_ref().is_some_and(|b| b.iter().any(|v| !v.is_finite())))
    }
}

/// The L2 norm as the library accumulates it: element `i` (row-major) into partial sum
/// `i mod 8`, the partial sums added pairwise.
fn l2_norm(grad: &ArrayD<f64>) -> f64 {
    let mut lanes = [0.0_f64; 8];
    for (i, g) in grad.iter().enumerate() {
        lanes[i % 8] += g * g;
    }
    let [a, b, c, d, e, f, g, h] = lanes;
    (((a + b) + (c + d)) + ((e + f) + (g + h))).sqrt()
}

/// The sums of squares of `grad`'s blocks of 256 elements (row-major), each accumulated as
/// the library does: element `i` of the block into partial sum `i mod 8`, added pairwise.
fn block_squares(grad: &ArrayD<f64>) -> Vec<f64> {
    let values: Vec<f64> = grad.iter().copied().collect();
    values
        .chunks(256)
        .map(|block| {
            let mut lanes = [0.0_f64; 8];
            for (i, g) in block.iter().enumerate() {
                lanes[i % 8] += g * g;
            }
            let [a, b, c, d, e, f, g, h] = lanes;
            ((a + b) + (c + d)) + ((e + f) + (g + h))
        })
        .collect()
}

/// The correctly rounded sum of `values`, by Shewchuk's exact partials and the final
/// rounding of Python's `math.fsum`; NaN if one is NaN, else ∞ if one is infinite.
fn exact_sum(values: &[f64]) -> f64 {
    if values.iter().any(|v| !v.is_finite()) {
        return values.iter().sum();
    }
    let mut partials: Vec<f64> = Vec::new();
    for &value in values {
        let mut x = value;
        let mut kept = 0;
        for i in 0..partials.len() {
            let mut y = partials[i];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        partials.truncate(kept);
        partials.push(x);
    }
    let Some(mut hi) = partials.pop() else { return 0.0 };
    let mut lo = 0.0;
    while let Some(y) = partials.pop() {
        let x = hi;
        hi = x + y;
        lo = y - (hi - x);
        if lo != 0.0 {
            break;
        }
    }
    // Half-way between two floats: the partials below decide the direction.
    if let Some(&next) = partials.last()
        && ((lo < 0.0 && next < 0.0) || (lo > 0.0 && next > 0.0))
    {
        let y = lo * 2.0;
        let x = hi + y;
        if y == x - hi {
            hi = x;
        }
    }
    hi
}

/// PyTorch's clip coefficient, `None` when it is 1 or more (the gradient is untouched).
fn norm_coefficient(max_norm: f64, norm: f64) -> Option<f64> {
    let coefficient = max_norm / (norm + 1e-6);
    if coefficient >= 1.0 { None } else { Some(coefficient) }
}

/// How the gradient of a step is transformed before the rule sees it.
#[derive(Clone, Copy)]
enum Transform {
    Identity,
    Clamp(f64),
    Scale(f64),
}

impl Transform {
    fn apply(self, g: f64) -> f64 {
        match self {
            Transform::Identity => g,
            Transform::Clamp(c) if g > c => c,
            Transform::Clamp(c) if g < -c => -c,
            Transform::Clamp(_) => g,
            Transform::Scale(c) => g * c,
        }
    }
}

/// One tensor's step as the rule computes it: the new parameter and state.
fn momentum_step(
    model: &Model,
    name: &str,
    param: &ArrayD<f64>,
    grad: &ArrayD<f64>,
    transform: Transform,
) -> (ArrayD<f64>, StateModel) {
    let tensor = model.tensors.get(name);
    let group = &model.groups[tensor.map_or(0, |t| t.group)];
    let lr = group.lr();
    let mut state = match tensor.and_then(|t| t.state.clone()) {
        Some(state) => state,
        None => StateModel {
            step: 0,
            shape: param.shape().to_vec(),
            buffer: group.buffer.then(|| ArrayD::zeros(param.shape())),
        },
    };
    state.step += 1;
    let mut param = param.clone();
    match &mut state.buffer {
        Some(buffer) => {
            ndarray::Zip::from(&mut param).and(buffer).and(grad).for_each(|p, b, &g| {
                // Dampening 0: the rule's factor on g is 1 on every step.
                *b = MOMENTUM * *b + 1.0 * transform.apply(g);
                *p -= lr * *b;
            });
        }
        None => ndarray::Zip::from(&mut param).and(grad).for_each(|p, &g| {
            *p -= lr * transform.apply(g);
        }),
    }
    (param, state)
}

// ---------------------------------------------------------------------------------------
// Tensors in memory layouts

const GAP: f64 = 4242.0;

/// A tensor's values stored in a layout; the gaps of a strided layout hold [`GAP`].
struct Stored {
    storage: ArrayD<f64>,
    layout: Layout,
}

impl Stored {
    fn new(logical: &ArrayD<f64>, layout: Layout) -> Self {
        let shape = logical.shape();
        let storage = match layout {
            Layout::RowMajor | Layout::Reversed => ArrayD::zeros(shape),
            Layout::ColumnMajor => ArrayD::zeros(IxDyn(shape).f()),
            Layout::Strided => {
                let mut wide = shape.to_vec();
                if let Some(last) = wide.last_mut() {
                    *last *= 2;
                }
                ArrayD::from_elem(wide, GAP)
            }
        };
        let mut stored = Stored { storage, layout };
        stored.view_mut().assign(logical);
        stored
    }

    fn view_mut(&mut self) -> ArrayViewMutD<'_, f64> {
        let mut view = self.storage.view_mut();
        match self.layout {
            Layout::RowMajor | Layout::ColumnMajor => {}
            Layout::Strided => {
                if view.ndim() > 0 {
                    let last = Axis(view.ndim() - 1);
                    view.slice_axis_inplace(last, Slice::new(0, None, 2));
                }
            }
            Layout::Reversed => {
                for axis in 0..view.ndim() {
                    view.invert_axis(Axis(axis));
                }
            }
        }
        view
    }

    fn view(&self) -> ArrayViewD<'_, f64> {
        let mut view = self.storage.view();
        match self.layout {
            Layout::RowMajor | Layout::ColumnMajor => {}
            Layout::Strided => {
                if view.ndim() > 0 {
                    let last = Axis(view.ndim() - 1);
                    view.slice_axis_inplace(last, Slice::new(0, None, 2));
                }
            }
            Layout::Reversed => {
                for axis in 0..view.ndim() {
                    view.invert_axis(Axis(axis));
                }
            }
        }
        view
    }

    /// The logical values, row-major.
    fn logical(&self) -> ArrayD<f64> {
        let view = self.view();
        ArrayD::from_shape_vec(view.shape(), view.iter().copied().collect()).unwrap()
    }

    /// Whether the elements between a strided view's elements are untouched.
    fn gaps_intact(&self) -> bool {
        let (Layout::Strided, Some(last)) = (self.layout, self.storage.ndim().checked_sub(1))
        else {
            return true;
        };
        (self.storage.indexed_iter())
            .all(|(index, value)| index[last] % 2 == 0 || value.to_bits() == GAP.to_bits())
    }
}

/// Equal values, NaN equal to NaN.
fn same_values(a: &ArrayD<f64>, b: &ArrayD<f64>) -> bool {
    a.shape() == b.shape()
        && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

// ---------------------------------------------------------------------------------------
// Running a sequence

/// The optimizer under test, what a training loop around it holds, and the model.
struct World {
    opt: Opt,
    scheduler: Option<LrScheduler>,
    /// The training loop's parameters by name.
    params: BTreeMap<String, ArrayD<f64>>,
    model: Model,
    file: PathBuf,
}

/// Everything a failed call must leave as it was.
struct Snapshot {
    opt: Opt,
    bytes: Vec<u8>,
    params: BTreeMap<String, ArrayD<f64>>,
    scheduler: Option<LrScheduler>,
}

fn postcard(opt: &Opt) -> Vec<u8> {
    opt.checkpoint().to_bytes(Encoding::Postcard).expect("postcard encodes any state")
}

impl World {
    fn new() -> Self {
        let rule = Momentum { lr: DEFAULT_LR, momentum: MOMENTUM, ..Momentum::default() };
        let thread = format!("{:?}", std::thread::current().id())
            .replace(|c: char| !c.is_alphanumeric(), "");
        World {
            opt: Optimizer::new(rule).unwrap(),
            scheduler: None,
            params: BTreeMap::new(),
            model: Model::new(),
            file: std::env::temp_dir()
                .join(format!("model-test-{}-{thread}.ckpt", std::process::id())),
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            opt: self.opt.clone(),
            bytes: postcard(&self.opt),
            params: self.params.clone(),
            scheduler: self.scheduler.clone(),
        }
    }

    fn assert_unchanged(&self, before: &Snapshot, what: &str) {
        assert_eq!(postcard(&self.opt), before.bytes, "{what} changed the checkpoint");
        // `==` sees what the checkpoint does not (the declaration); NaN defeats it.
        if !self.model.has_non_finite() {
            assert!(self.opt == before.opt, "{what} changed the optimizer");
        }
        assert_eq!(self.params.len(), before.params.len(), "{what} changed the parameters");
        for (name, values) in &self.params {
            assert!(same_values(values, &before.params[name]), "{what} changed `{name}`");
        }
        assert_eq!(self.scheduler, before.scheduler, "{what} changed the scheduler");
    }

    /// Replaces the optimizer with one rebuilt from a checkpoint, which does not record the
    /// declaration.
    fn restored(&mut self, opt: Opt) {
        self.opt = opt;
        self.model.declared = false;
    }

    /// The parameter a step of `name` with `shape` is handed: the loop's own if it has that
    /// shape, else fresh values (a new tensor, or a model whose tensor changed shape).
    fn param(&self, name: &str, shape: &[usize], seed: u64) -> ArrayD<f64> {
        match self.params.get(name) {
            Some(known) if known.shape() == shape => known.clone(),
            _ => values(shape, seed),
        }
    }

    fn grad(entry: &Entry) -> ArrayD<f64> {
        let shape = SHAPES[entry.grad_shape.unwrap_or(entry.shape)];
        let mut grad = values::<f64>(shape, 1000 + u64::from(entry.seed));
        if let Some((index, value)) = entry.special
            && !grad.is_empty()
        {
            let index = index % grad.len();
            *grad.iter_mut().nth(index).unwrap() = value;
        }
        grad
    }
}

/// Aborts the process when a call runs past [`CALL_LIMIT`]: the running call and when it
/// started.
static RUNNING: Mutex<Option<(Instant, String)>> = Mutex::new(None);

fn start_watchdog() {
    static WATCHDOG: Once = Once::new();
    WATCHDOG.call_once(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((started, call)) = &*running
                    && started.elapsed() > CALL_LIMIT
                {
                    eprintln!("model test: `{call}` has run for over {CALL_LIMIT:?}; aborting");
                    std::process::abort();
                }
            }
        });
    });
}

/// Marks a call as running until dropped (also when the call panics).
struct Running;

impl Running {
    fn start(op: &Op) -> Self {
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), format!("{op:?}")));
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Asserts that a step stepped and reported `grad_norm` (NaN equal to NaN: a NaN gradient
/// makes the norm NaN).
fn assert_stepped(outcome: StepOutcome, grad_norm: Option<f64>, op: &Op) {
    let same = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => a == b || (a.is_nan() && b.is_nan()),
        (a, b) => a.is_none() && b.is_none(),
    };
    match outcome {
        StepOutcome::Stepped { grad_norm: norm } if same(norm, grad_norm) => {}
        _ => panic!("{op:?}: {outcome:?}, the model expected a step with norm {grad_norm:?}"),
    }
}

/// Asserts that `actual` failed exactly when `expected` did, with the same error variant.
fn assert_outcome<T: std::fmt::Debug, U: std::fmt::Debug>(
    actual: &Result<T, Error>,
    expected: &Result<U, Error>,
    op: &Op,
) {
    match (actual, expected) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(e)) if discriminant(a) == discriminant(e) => {}
        _ => panic!("{op:?}: returned {actual:?}, the model expected {expected:?}"),
    }
}

fn run_sequence(ops: &[Op]) {
    let mut world = World::new();
    for op in ops {
        let before = world.snapshot();
        let changed = {
            let _running = Running::start(op);
            apply(&mut world, op)
        };
        if !changed {
            world.assert_unchanged(&before, &format!("{op:?}"));
        }
        check_model(&world, op);
    }
    let _ = std::fs::remove_file(&world.file);
}

/// Runs `op` on the optimizer and the model, checking the outcome the model predicts;
/// returns whether it may have changed anything (false for failures and skipped steps).
fn apply(world: &mut World, op: &Op) -> bool {
    match op {
        Op::Step(entry) => step(world, entry, op),
        Op::StepAll(entries) => step_all(world, entries, op),
        Op::Assign { name, group } => assign(world, NAMES[*name], GROUPS[*group], op),
        Op::AddGroup { group, lr, momentum } => {
            add_group(world, GROUPS[*group], *lr, *momentum, op)
        }
        Op::SetLr { group, lr } => set_lr(world, GROUPS[*group], *lr, op),
        Op::Schedule(sched) => schedule(world, *sched, op),
        Op::SetClip(clip) => {
            let expected = clip.map_or(Ok(()), |clip| clip.validate());
            let actual = world.opt.set_clip(*clip);
            assert_outcome(&actual, &expected, op);
            if actual.is_ok() {
                world.model.clip = *clip;
            }
            actual.is_ok()
        }
        Op::SetNonFinite(policy) => {
            world.opt.set_non_finite(*policy);
            world.model.non_finite = *policy;
            true
        }
        Op::Declare(names) => declare(world, names, op),
        Op::RoundTrip(codec) => round_trip(world, *codec, op),
        Op::SaveLoad(encoding) => save_load(world, *encoding, op),
        Op::LoadState { model, strict } => load_state(world, model, *strict, op),
        Op::BumpStep { name, below_max } => bump_step(world, NAMES[*name], *below_max),
        Op::Shard { world: ranks, leave_one_out } => shard(world, *ranks, *leave_one_out, op),
        Op::Freeze { group, frozen } => freeze(world, GROUPS[*group], *frozen, op),
        Op::SetPrecision { group, precision } => {
            set_precision(world, GROUPS[*group], *precision, op)
        }
        Op::Reset(name) => reset(world, NAMES[*name], op),
        Op::Remove(name) => remove(world, NAMES[*name], op),
        Op::Rename { from, to } => rename(world, NAMES[*from], NAMES[*to], op),
    }
}

/// The values a step's entry is called with.
struct Call {
    name: &'static str,
    param: ArrayD<f64>,
    grad: ArrayD<f64>,
}

fn call(world: &World, entry: &Entry) -> Call {
    let name = NAMES[entry.name];
    let param = world.param(name, SHAPES[entry.shape], entry.name as u64);
    Call { name, param, grad: World::grad(entry) }
}

fn finite(grad: &ArrayD<f64>) -> bool {
    grad.iter().all(|g| g.is_finite())
}

/// Records a step the model predicted: the new parameters and states.
fn commit(world: &mut World, updates: Vec<Update>) {
    for (name, param, state) in updates.into_iter().filter_map(|(n, p, s)| Some((n, p, s?))) {
        let tensor = world.model.tensors.entry(name.to_owned());
        tensor.or_insert(TensorModel { group: 0, state: None }).state = Some(state);
        world.params.insert(name.to_owned(), param);
    }
}

fn step(world: &mut World, entry: &Entry, op: &Op) -> bool {
    let Call { name, param, grad } = call(world, entry);
    let model = &world.model;
    let expected = model.check_step(name, param.shape(), grad.shape()).and_then(|()| {
        if let Some(Clip::GlobalNorm { .. }) = model.clip {
            return Err(Error::GlobalClipNeedsBatch);
        }
        if model.is_frozen(name) {
            return Ok(Some(StepOutcome::Frozen));
        }
        match model.non_finite {
            NonFinite::Ignore => Ok(None),
            _ if finite(&grad) => Ok(None),
            NonFinite::Skip => Ok(Some(StepOutcome::Skipped { index: 0 })),
            NonFinite::Refuse => Err(Error::NonFiniteGradient { param: name.into() }),
        }
    });
    let (mut p, g) =
        (Stored::new(&param, entry.param_layout), Stored::new(&grad, entry.grad_layout));
    let actual = world.opt.step(name, &mut *p.view_mut(), &*g.view());
    assert_outcome(&actual, &expected, op);
    assert!(p.gaps_intact() && g.gaps_intact(), "{op:?} wrote outside the tensor");
    assert!(same_values(&g.logical(), &grad), "{op:?} changed the gradient");
    let (Ok(outcome), Ok(skip)) = (actual, expected) else {
        assert!(same_values(&p.logical(), &param), "{op:?} failed but changed the parameter");
        return false;
    };
    if let Some(skipped) = skip {
        assert_eq!(outcome, skipped, "{op:?}");
        assert!(same_values(&p.logical(), &param), "{op:?} skipped but changed the parameter");
        return false;
    }
    let (transform, grad_norm) = match world.model.clip {
        Some(Clip::Value { clip_value }) => (Transform::Clamp(clip_value), None),
        Some(Clip::Norm { max_norm }) => {
            let norm = l2_norm(&grad);
            (
                norm_coefficient(max_norm, norm).map_or(Transform::Identity, Transform::Scale),
                Some(norm),
            )
        }
        _ => (Transform::Identity, None),
    };
    assert_stepped(outcome, grad_norm, op);
    let (new_param, state) = momentum_step(&world.model, name, &param, &grad, transform);
    assert!(
        same_values(&p.logical(), &new_param),
        "{op:?}: the parameter differs from the model's"
    );
    commit(world, vec![(name, new_param, Some(state))]);
    true
}

fn step_all(world: &mut World, entries: &[Entry], op: &Op) -> bool {
    let calls: Vec<Call> = entries.iter().map(|entry| call(world, entry)).collect();
    let expected = expected_batch(&world.model, &calls);
    let mut params: Vec<Stored> =
        calls.iter().zip(entries).map(|(c, e)| Stored::new(&c.param, e.param_layout)).collect();
    let mut grads: Vec<Stored> =
        calls.iter().zip(entries).map(|(c, e)| Stored::new(&c.grad, e.grad_layout)).collect();
    let actual = {
        let mut param_views: Vec<ArrayViewMutD<f64>> =
            params.iter_mut().map(Stored::view_mut).collect();
        let grad_views: Vec<ArrayViewD<f64>> = grads.iter().map(Stored::view).collect();
        let mut batch: Vec<ParamGrad<f64>> = (param_views.iter_mut().zip(&grad_views).zip(&calls))
            .map(|((p, g), c)| ParamGrad::new(c.name, &mut **p, &**g))
            .collect();
        world.opt.step_all(&mut batch)
    };
    assert_outcome(&actual, &expected, op);
    for (stored, c) in grads.iter_mut().zip(&calls) {
        assert!(
            stored.gaps_intact() && same_values(&stored.logical(), &c.grad),
            "{op:?} changed a gradient"
        );
    }
    let (Ok(outcome), Ok(plan)) = (actual, expected) else {
        for (stored, c) in params.iter_mut().zip(&calls) {
            assert!(
                same_values(&stored.logical(), &c.param),
                "{op:?} failed but changed `{}`",
                c.name
            );
        }
        return false;
    };
    match plan {
        BatchPlan::Skip(skipped) => {
            assert_eq!(outcome, skipped, "{op:?}");
            for (stored, c) in params.iter_mut().zip(&calls) {
                assert!(
                    same_values(&stored.logical(), &c.param),
                    "{op:?} skipped but changed `{}`",
                    c.name
                );
            }
            false
        }
        BatchPlan::Step { grad_norm, updates } => {
            assert_stepped(outcome, grad_norm, op);
            for (stored, (name, param, _)) in params.iter_mut().zip(&updates) {
                assert!(stored.gaps_intact(), "{op:?} wrote outside `{name}`");
                assert!(
                    same_values(&stored.logical(), param),
                    "{op:?}: `{name}` differs from the model's"
                );
            }
            commit(world, updates);
            true
        }
    }
}

/// A tensor's new parameter and state after a step; no state for a frozen tensor, which the
/// step leaves as it is.
type Update = (&'static str, ArrayD<f64>, Option<StateModel>);

#[derive(Debug)]
enum BatchPlan {
    /// The step changes nothing and returns this outcome.
    Skip(StepOutcome),
    Step {
        grad_norm: Option<f64>,
        updates: Vec<Update>,
    },
}

/// What `step_all` should do with `calls`: checks in the library's order (each entry, then a
/// name given twice; then the non-finite policy over the batch), then the clip over all.
/// Frozen tensors are checked, then left out: of the non-finite policy, the clip and the step.
fn expected_batch(model: &Model, calls: &[Call]) -> Result<BatchPlan, Error> {
    let mut seen = BTreeSet::new();
    for c in calls {
        model.check_step(c.name, c.param.shape(), c.grad.shape())?;
        if !seen.insert(c.name) {
            return Err(Error::DuplicateParam { param: c.name.into(), in_what: "batch" });
        }
    }
    let stepped = |c: &&Call| !model.is_frozen(c.name);
    if model.non_finite != NonFinite::Ignore
        && let Some(index) = calls.iter().position(|c| stepped(&c) && !finite(&c.grad))
    {
        return match model.non_finite {
            NonFinite::Skip => Ok(BatchPlan::Skip(StepOutcome::Skipped { index })),
            _ => Err(Error::NonFiniteGradient { param: calls[index].name.into() }),
        };
    }
    if !calls.is_empty() && !calls.iter().any(|c| stepped(&c)) {
        return Ok(BatchPlan::Skip(StepOutcome::Frozen));
    }
    let norms: Vec<f64> = calls.iter().filter(stepped).map(|c| l2_norm(&c.grad)).collect();
    let (transforms, grad_norm): (Vec<Transform>, _) = match model.clip {
        Some(Clip::GlobalNorm { max_norm }) => {
            let blocks: Vec<f64> =
                calls.iter().filter(stepped).flat_map(|c| block_squares(&c.grad)).collect();
            let norm = exact_sum(&blocks).sqrt();
            let transform =
                norm_coefficient(max_norm, norm).map_or(Transform::Identity, Transform::Scale);
            (vec![transform; calls.len()], Some(norm))
        }
        Some(Clip::Norm { max_norm }) => {
            let transforms = norms.iter().map(|&n| {
                norm_coefficient(max_norm, n).map_or(Transform::Identity, Transform::Scale)
            });
            // The squares of the tensors' norms are summed exactly, as for the global norm,
            // so that the batch's order and a sharded step's parts change no bit.
            let squares: Vec<f64> = norms.iter().map(|n| n * n).collect();
            (transforms.collect(), Some(exact_sum(&squares).sqrt()))
        }
        Some(Clip::Value { clip_value }) => (vec![Transform::Clamp(clip_value); norms.len()], None),
        None => (vec![Transform::Identity; norms.len()], None),
    };
    let mut transforms = transforms.into_iter();
    let updates = calls
        .iter()
        .map(|c| {
            if !stepped(&c) {
                return (c.name, c.param.clone(), None);
            }
            let transform = transforms.next().expect("a transform per stepped tensor");
            let (param, state) = momentum_step(model, c.name, &c.param, &c.grad, transform);
            (c.name, param, Some(state))
        })
        .collect();
    Ok(BatchPlan::Step { grad_norm, updates })
}

fn assign(world: &mut World, name: &'static str, group: &str, op: &Op) -> bool {
    let model = &world.model;
    let expected = model.group_index(group).and_then(|target| {
        if model.declared && !model.tensors.contains_key(name) {
            return Err(Error::UnknownParam { param: name.into(), closest: None });
        }
        if let Some(tensor) = model.tensors.get(name)
            && tensor.state.is_some()
            && model.groups[tensor.group].buffer != model.groups[target].buffer
        {
            return Err(Error::StateBuffersChange {
                param: name.into(),
                current: &[],
                requested: &[],
            });
        }
        Ok(target)
    });
    let actual = world.opt.assign(name, group);
    assert_outcome(&actual, &expected, op);
    let Ok(target) = expected else { return false };
    world
        .model
        .tensors
        .entry(name.to_owned())
        .or_insert(TensorModel { group: 0, state: None })
        .group = target;
    true
}

fn add_group(world: &mut World, group: &'static str, lr: f64, momentum: bool, op: &Op) -> bool {
    let expected = match world.model.group_index(group) {
        Ok(_) => Err(Error::DuplicateGroup { group: group.into() }),
        Err(_) if !valid_lr(lr) => Err(invalid_hyper()),
        Err(_) => Ok(()),
    };
    let hyper =
        Momentum { lr, momentum: if momentum { MOMENTUM } else { 0.0 }, ..Momentum::default() };
    let actual = world.opt.add_group(group, hyper);
    assert_outcome(&actual, &expected, op);
    if expected.is_err() {
        return false;
    }
    world.model.groups.push(GroupModel {
        name: group,
        base: lr,
        scheduled: None,
        buffer: momentum,
        frozen: false,
    });
    true
}

fn set_lr(world: &mut World, group: &str, lr: f64, op: &Op) -> bool {
    let expected = world
        .model
        .group_index(group)
        .and_then(|index| if valid_lr(lr) { Ok(index) } else { Err(invalid_hyper()) });
    let actual = world.opt.set_lr(group, lr);
    assert_outcome(&actual, &expected, op);
    let Ok(index) = expected else { return false };
    let group = &mut world.model.groups[index];
    (group.base, group.scheduled) = (lr, None);
    true
}

/// `ScheduleInProgress` if building `schedule` would replace a rate that another schedule
/// set with a different one. The rates of the first step come from the schedule built on a
/// copy without scheduled rates (their values are checked against PyTorch elsewhere).
fn in_progress(world: &World, schedule: Schedule) -> Result<(), Error> {
    let mut fresh = world.opt.clone();
    fresh.clear_scheduled_lrs();
    if LrScheduler::new(&mut fresh, schedule).is_err() {
        return Ok(());
    }
    for (group, first) in world.model.groups.iter().zip(fresh.groups()) {
        if group.scheduled.is_some_and(|lr| lr.to_bits() != first.lr().to_bits()) {
            return Err(Error::ScheduleInProgress {
                group: group.name.into(),
                current: 0.0,
                first: 0.0,
            });
        }
    }
    Ok(())
}

fn schedule(world: &mut World, sched: Sched, op: &Op) -> bool {
    match sched {
        Sched::Exponential(gamma) => {
            let schedule = Schedule::Exponential { gamma };
            let expected = if gamma.is_finite() && gamma > 0.0 {
                in_progress(world, schedule.clone())
            } else {
                Err(invalid_hyper())
            };
            let actual = LrScheduler::new(&mut world.opt, schedule);
            assert_outcome(&actual, &expected, op);
            let Ok(scheduler) = actual else { return false };
            // A new scheduler starts every group from its base rate.
            for group in &mut world.model.groups {
                group.scheduled = Some(group.base);
            }
            world.scheduler = Some(scheduler);
            world.model.sched = Some(SchedModel::Exponential { gamma, steps: 0 });
            true
        }
        Sched::OneCycle(total) => {
            let schedule = Schedule::OneCycle(OneCycle::new(0.5, total));
            let expected = in_progress(world, schedule.clone());
            let actual = LrScheduler::new(&mut world.opt, schedule);
            assert_outcome(&actual, &expected, op);
            let Ok(scheduler) = actual else { return false };
            world.scheduler = Some(scheduler);
            world.model.sched = Some(SchedModel::OneCycle { total, steps: 0 });
            take_one_cycle_rates(world, op);
            true
        }
        Sched::Step => {
            let (Some(scheduler), Some(sched)) = (&mut world.scheduler, &mut world.model.sched)
            else {
                return false;
            };
            let actual = scheduler.step(&mut world.opt);
            match sched {
                SchedModel::Exponential { gamma, steps } => {
                    assert!(actual.is_ok(), "{op:?}: {actual:?}");
                    *steps += 1;
                    for group in &mut world.model.groups {
                        // A group without a scheduled rate (added or re-based since the
                        // schedule started) joins in phase: its base rate, multiplied once
                        // per step taken, as if it had been there from the start.
                        let rate = match group.scheduled {
                            Some(rate) => rate * *gamma,
                            None => (0..*steps).fold(group.base, |rate, _| rate * *gamma),
                        };
                        group.scheduled = Some(rate);
                    }
                }
                SchedModel::OneCycle { total, steps } => {
                    let expected = if *steps < *total {
                        Ok(())
                    } else {
                        Err(Error::ScheduleFinished { total_steps: *total })
                    };
                    assert_outcome(&actual, &expected, op);
                    if actual.is_err() {
                        return false;
                    }
                    *steps += 1;
                    take_one_cycle_rates(world, op);
                }
            }
            true
        }
    }
}

/// The one-cycle rates are the schedule tests' business; here they must be one valid rate
/// for every group, which the model then takes.
fn take_one_cycle_rates(world: &mut World, op: &Op) {
    let rates: Vec<f64> = world.opt.groups().iter().map(|group| group.lr()).collect();
    assert!(valid_lr(rates[0]) && rates.iter().all(|&r| r == rates[0]), "{op:?}: rates {rates:?}");
    for group in &mut world.model.groups {
        group.scheduled = Some(rates[0]);
    }
}

fn declare(world: &mut World, names: &[usize], op: &Op) -> bool {
    let names: Vec<&str> = names.iter().map(|&i| NAMES[i]).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    let expected = if unique.len() == names.len() {
        Ok(())
    } else {
        Err(Error::DuplicateParam { param: String::new(), in_what: "declaration" })
    };
    let actual = world.opt.declare(names.iter().copied());
    assert_outcome(&actual, &expected, op);
    if expected.is_err() {
        return false;
    }
    for name in unique {
        world.model.tensors.entry(name.to_owned()).or_insert(TensorModel { group: 0, state: None });
    }
    world.model.declared = true;
    true
}

/// Encodes the optimizer and decodes it again: the same checkpoint, bit for bit. JSON cannot
/// hold NaN or infinity, so state holding one must fail to encode (or, through serde_json,
/// which writes `null`, to decode).
fn round_trip(world: &mut World, codec: Codec, op: &Op) -> bool {
    let bytes = postcard(&world.opt);
    let refused = world.model.has_non_finite() && !matches!(codec, Codec::Postcard);
    let restored: Result<Opt, Error> = match codec {
        Codec::Postcard | Codec::Json => {
            let encoding =
                if matches!(codec, Codec::Json) { Encoding::Json } else { Encoding::Postcard };
            world.opt.checkpoint().to_bytes(encoding).and_then(|encoded| {
                assert!(!refused, "{op:?} encoded non-finite state");
                Optimizer::from_checkpoint(Checkpoint::from_bytes(&encoded)?)
            })
        }
        Codec::Serde => {
            let text = serde_json::to_string(&world.opt).expect("serde_json writes any state");
            serde_json::from_str(&text)
                .map_err(|e| Error::CorruptCheckpoint { reason: e.to_string() })
        }
    };
    match restored {
        Ok(opt) => {
            assert!(!refused, "{op:?} restored non-finite state from JSON");
            assert_eq!(postcard(&opt), bytes, "{op:?} changed the state");
            world.restored(opt);
            true
        }
        Err(error) => {
            assert!(refused, "{op:?} failed: {error:?}");
            false
        }
    }
}

fn save_load(world: &mut World, encoding: Encoding, op: &Op) -> bool {
    let bytes = postcard(&world.opt);
    let refused = world.model.has_non_finite() && encoding == Encoding::Json;
    let saved = world.opt.save(&world.file, encoding);
    let expected = if refused { Err(Error::Encode { reason: String::new() }) } else { Ok(()) };
    assert_outcome(&saved, &expected, op);
    if saved.is_err() {
        return false;
    }
    let loaded = Opt::load(&world.file).unwrap_or_else(|e| panic!("{op:?}: {e:?}"));
    assert_eq!(postcard(&loaded), bytes, "{op:?} changed the state");
    world.restored(loaded);
    true
}

/// Restores the optimizer's own checkpoint against a random model: the report names what
/// the model predicts, and a lenient load keeps exactly the tensors that fit.
fn load_state(world: &mut World, model: &[(usize, usize)], strict: bool, op: &Op) -> bool {
    let shapes: Vec<(&str, &[usize])> = model.iter().map(|&(n, s)| (NAMES[n], SHAPES[s])).collect();
    let expected = expected_report(&world.model, &shapes, strict);
    let mode = if strict { LoadMode::Strict } else { LoadMode::Lenient };
    let checkpoint = world.opt.checkpoint();
    let actual = world.opt.load_state(checkpoint, shapes.iter().copied(), mode);
    assert_outcome(&actual, &expected, op);
    let (Ok(report), Ok(predicted)) = (actual, expected) else { return false };
    assert_eq!(report, predicted, "{op:?}");
    let tensors = &mut world.model.tensors;
    tensors.retain(|name, _| !predicted.unexpected.contains(name));
    for mismatch in &predicted.mismatched {
        tensors.get_mut(&mismatch.name).expect("a mismatch is in the checkpoint").state = None;
    }
    world.model.declared = false;
    true
}

fn expected_report(
    model: &Model,
    shapes: &[(&str, &[usize])],
    strict: bool,
) -> Result<LoadReport, Error> {
    let mut listed = BTreeMap::<&str, &[usize]>::new();
    for &(name, shape) in shapes {
        if listed.insert(name, shape).is_some_and(|known| known != shape) {
            return Err(Error::DuplicateParam { param: name.into(), in_what: "model's tensors" });
        }
    }
    let mut report = LoadReport::default();
    for (&name, &shape) in &listed {
        match model.tensors.get(name).map(|tensor| &tensor.state) {
            None => report.missing.push(name.to_owned()),
            Some(Some(state)) if state.shape != shape => report.mismatched.push(ShapeMismatch {
                name: name.to_owned(),
                checkpoint: state.shape.clone(),
                model: shape.to_vec(),
            }),
            Some(_) => report.restored.push(name.to_owned()),
        }
    }
    report.unexpected =
        model.tensors.keys().filter(|name| !listed.contains_key(name.as_str())).cloned().collect();
    if strict && !report.is_exact() {
        return Err(Error::ModelMismatch { report: Box::new(report) });
    }
    Ok(report)
}

/// Edits a stepped tensor's step count to near `u64::MAX` in a checkpoint and restores it,
/// so that the step count's limit is reached within a sequence.
fn bump_step(world: &mut World, name: &str, below_max: u64) -> bool {
    let Some(state) = world.model.tensors.get_mut(name).and_then(|t| t.state.as_mut()) else {
        return false;
    };
    let mut checkpoint = world.opt.checkpoint();
    let record = checkpoint.tensors.iter_mut().find(|t| t.name == name).expect("a stepped tensor");
    record.state.as_mut().expect("with state").step = u64::MAX - below_max;
    state.step = u64::MAX - below_max;
    let opt = Optimizer::from_checkpoint(checkpoint).expect("an edited step count loads");
    world.restored(opt);
    true
}

/// Splits the checkpoint over `ranks` ranks and merges it back: the same checkpoint. A plan
/// without a stepped tensor, or with no rank, is refused.
fn shard(world: &mut World, ranks: usize, leave_one_out: bool, op: &Op) -> bool {
    let checkpoint = world.opt.checkpoint();
    let bytes = postcard(&world.opt);
    let stepped =
        world.model.tensors.iter().find(|(_, t)| t.state.is_some()).map(|(n, _)| n.clone());
    let left_out = if leave_one_out { stepped } else { None };
    let shapes: Vec<(&str, &[usize])> = (world.model.tensors.iter())
        .filter(|(name, _)| Some(*name) != left_out.as_ref())
        .map(|(name, t)| (name.as_str(), t.state.as_ref().map_or(&[0][..], |s| &s.shape[..])))
        .collect();
    let plan = ShardPlan::new(shapes, ranks);
    if ranks == 0 {
        assert!(matches!(plan, Err(Error::InvalidSharding { .. })), "{op:?}: {plan:?}");
        return false;
    }
    let plan = plan.expect("a plan of distinct names");
    let shards = split(checkpoint, &plan);
    if left_out.is_some() {
        assert!(matches!(shards, Err(Error::InvalidSharding { .. })), "{op:?}");
        return false;
    }
    let shards = shards.unwrap_or_else(|e| panic!("{op:?}: {e:?}"));
    assert_eq!(shards.len(), ranks);
    for shard in &shards {
        Optimizer::from_checkpoint(shard.clone())
            .unwrap_or_else(|e| panic!("{op:?}: shard: {e:?}"));
    }
    let merged = merge(shards, &plan).unwrap_or_else(|e| panic!("{op:?}: merge: {e:?}"));
    let opt = Optimizer::from_checkpoint(merged).unwrap_or_else(|e| panic!("{op:?}: {e:?}"));
    assert_eq!(postcard(&opt), bytes, "{op:?}: split and merged is not the original");
    world.restored(opt);
    true
}

fn freeze(world: &mut World, group: &str, frozen: bool, op: &Op) -> bool {
    let expected = world.model.group_index(group);
    let actual = if frozen { world.opt.freeze(group) } else { world.opt.unfreeze(group) };
    assert_outcome(&actual, &expected, op);
    let Ok(index) = expected else { return false };
    world.model.groups[index].frozen = frozen;
    true
}

/// Full precision changes nothing here; low precision is refused, as it is for every `f64`
/// optimizer, changing nothing either (which the caller checks).
fn set_precision(world: &mut World, group: &str, precision: StatePrecision, op: &Op) -> bool {
    let expected = world.model.group_index(group).and_then(|_| match precision {
        StatePrecision::Full => Ok(()),
        _ => {
            Err(Error::UnsupportedStatePrecision { group: group.to_owned(), rule: "", reason: "" })
        }
    });
    let actual = world.opt.set_state_precision(group, precision);
    assert_outcome(&actual, &expected, op);
    false
}

fn reset(world: &mut World, name: &str, op: &Op) -> bool {
    let expected = world.model.known(name);
    let actual = world.opt.reset(name);
    assert_outcome(&actual, &expected, op);
    let Some(tensor) = world.model.tensors.get_mut(name) else { return false };
    tensor.state = None;
    true
}

fn remove(world: &mut World, name: &str, op: &Op) -> bool {
    let expected = world.model.known(name);
    let actual = world.opt.remove(name);
    assert_outcome(&actual, &expected, op);
    world.model.tensors.remove(name).is_some()
}

/// Renames a tensor of the optimizer and, as a model whose layer was renamed, of the loop.
fn rename(world: &mut World, from: &str, to: &str, op: &Op) -> bool {
    let model = &world.model;
    let expected = model.known(from).and_then(|()| {
        if from != to && model.tensors.contains_key(to) {
            Err(Error::ParamExists { param: to.into() })
        } else {
            Ok(())
        }
    });
    let actual = world.opt.rename(from, to);
    assert_outcome(&actual, &expected, op);
    if expected.is_err() {
        return false;
    }
    let tensor = world.model.tensors.remove(from).expect("known");
    world.model.tensors.insert(to.to_owned(), tensor);
    if let Some(param) = world.params.remove(from) {
        world.params.insert(to.to_owned(), param);
    }
    true
}

/// The optimizer's whole visible state against the model's.
fn check_model(world: &World, op: &Op) {
    let (opt, model) = (&world.opt, &world.model);
    let groups: Vec<(&str, f64, f64, bool, bool)> = (opt.groups().iter())
        .map(|g| (g.name(), g.hyper().lr, g.lr(), g.hyper().momentum > 0.0, g.is_frozen()))
        .collect();
    let expected: Vec<(&str, f64, f64, bool, bool)> =
        model.groups.iter().map(|g| (g.name, g.base, g.lr(), g.buffer, g.frozen)).collect();
    assert_eq!(groups, expected, "after {op:?}: groups");
    for (index, group) in model.groups.iter().enumerate() {
        let members: Vec<&str> = (model.tensors.iter())
            .filter(|(_, t)| t.group == index)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(opt.members(group.name).ok(), Some(members), "after {op:?}: members");
    }
    assert_eq!(opt.clip(), model.clip, "after {op:?}: clip");
    assert_eq!(opt.non_finite(), model.non_finite, "after {op:?}: non-finite policy");
    let names: Vec<&str> = opt.state().map(|tensor| tensor.name()).collect();
    let expected: Vec<&str> = model.tensors.keys().map(String::as_str).collect();
    assert_eq!(names, expected, "after {op:?}: tensors");
    for (name, tensor) in &model.tensors {
        let view = opt.state_of(name).expect("listed");
        assert_eq!(
            opt.group_of(name),
            Some(model.groups[tensor.group].name),
            "after {op:?}: `{name}`"
        );
        assert_eq!(view.group(), model.groups[tensor.group].name);
        let state = tensor.state.as_ref();
        assert_eq!(opt.step_count(name), state.map(|s| s.step), "after {op:?}: `{name}` steps");
        assert_eq!(view.shape(), state.map(|s| s.shape.as_slice()), "after {op:?}: `{name}`");
        let buffer = view.buffer("momentum_buffer").map(|b| b.to_owned());
        let expected = state.and_then(|s| s.buffer.clone());
        let same = match (&buffer, &expected) {
            (Some(a), Some(b)) => same_values(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        assert!(same, "after {op:?}: `{name}` buffer {buffer:?}, the model's {expected:?}");
    }
    let unstepped: Vec<&str> = (model.tensors.iter())
        .filter(|(_, t)| t.state.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(opt.unstepped(), unstepped, "after {op:?}: unstepped");
}

/// How many sequences to run and from which seed: `MODEL_CASES` and `MODEL_SEED`.
fn config() -> Config {
    let number = |key: &str, default: u64| {
        std::env::var(key).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{key}={v}")))
    };
    Config {
        cases: u32::try_from(number("MODEL_CASES", 10_000)).expect("MODEL_CASES fits in u32"),
        rng_seed: RngSeed::Fixed(number("MODEL_SEED", 0x006d_6f64_656c)),
        failure_persistence: None,
        ..Config::default()
    }
}

#[test]
fn model_random_call_sequences_match_the_reference_model() {
    start_watchdog();
    let config = config();
    let cases = config.cases;
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), 1..=30), |ops| {
        run_sequence(&ops);
        Ok(())
    });
    eprintln!("model test: {cases} sequences in {:.1?}", started.elapsed());
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, ops)) => {
            panic!("{reason}\nminimal failing sequence ({} calls):\n{ops:#?}", ops.len())
        }
        Err(error) => panic!("{error}"),
    }
}
