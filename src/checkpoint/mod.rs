//! Checkpoints: the optimizer's whole state, saved beside the model's weights and resumed
//! exactly, days later, on another machine, after a crash.
//!
//! - [`Optimizer::save`] and [`Optimizer::load`] write and read a file, in JSON for people
//!   or [postcard](https://docs.rs/postcard) for size ([`Encoding`]). A save streams the
//!   state into a new temporary file of its own, which is synced and then renamed over the
//!   old one, so a crash at any moment, or saves to one path at the same time, leave one
//!   checkpoint whole, never a torn file. A header with the payload's length and CRC-32
//!   refuses truncated or altered bytes, and a load reads the header before anything else.
//! - [`Optimizer::checkpoint`] copies the state into a [`Checkpoint`], plain data: rule,
//!   every group with its hyperparameters, current learning rate and whether it is
//!   [frozen](Optimizer::freeze), every named tensor's group, step count, shape and
//!   buffers (by name, values in row-major order whatever the memory layout), format and
//!   version. [`Checkpoint::to_bytes`] and [`Checkpoint::from_bytes`] are the file's bytes.
//! - [`Optimizer::from_checkpoint`] rebuilds an optimizer after checking all of it;
//!   [`Optimizer::load_state`] restores against the tensors a model has now, strictly or
//!   leniently, and returns a [`LoadReport`] of what is missing, unexpected or of another
//!   shape, by name.
//! - With the `serde` feature (on by default) an [`Optimizer`] serializes as its
//!   [`Checkpoint`] in any serde format, and deserializing one checks it the same way.
//! - [`Optimizer::state`] lists the state by name, each buffer as an array view, with its
//!   memory.
//!
//! Resuming is exact: N steps, a save, a load into a fresh optimizer (in another process)
//! and M more steps give the same bits as N + M steps without the break, for every rule,
//! element type and memory layout.
//!
//! # Example: save, crash, resume
//!
//! ```
//! use ndarray::Array1;
//! use ndarray_optim::checkpoint::Encoding;
//! use ndarray_optim::{Adam, Optimizer, Result};
//!
//! # fn main() -> Result<()> {
//! # let folder = std::env::temp_dir().join(format!("checkpoint-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&folder).unwrap();
//! let path = folder.join("optimizer.ckpt");
//! // Minimise ½‖w − 1‖², whose gradient is w − 1.
//! fn train(opt: &mut Optimizer<Adam, f64>, w: &mut Array1<f64>, steps: usize) -> Result<()> {
//!     for _ in 0..steps {
//!         let grad = &*w - 1.0;
//!         opt.step("w", w, &grad)?;
//!     }
//!     Ok(())
//! }
//! let adam = Adam { lr: 0.1, ..Adam::default() };
//!
//! let mut uninterrupted = Array1::zeros(3);
//! train(&mut Optimizer::new(adam)?, &mut uninterrupted, 10)?;
//!
//! let mut w = Array1::zeros(3);
//! let mut opt = Optimizer::new(adam)?;
//! train(&mut opt, &mut w, 6)?;
//! opt.save(&path, Encoding::Postcard)?;
//! let saved_w = w.clone(); // the model's weights are saved with it
//!
//! // Two more steps, then the process dies halfway through the next save: a temporary file
//! // beside the checkpoint holds half the new one, the checkpoint itself is untouched.
//! train(&mut opt, &mut w, 2)?;
//! let torn = opt.checkpoint().to_bytes(Encoding::Postcard)?;
//! let temp = folder.join(".optimizer.ckpt.4242.0.tmp");
//! std::fs::write(&temp, &torn[..torn.len() / 2]).unwrap();
//! drop(opt);
//!
//! // The next run resumes from the last whole checkpoint, after step 6.
//! let mut opt = Optimizer::<Adam, f64>::load(&path)?;
//! assert_eq!(opt.step_count("w"), Some(6));
//! let mut w = saved_w;
//! train(&mut opt, &mut w, 4)?;
//! assert_eq!(w, uninterrupted); // bit for bit
//!
//! // Later saves leave the torn file alone (never reusing its name); it can be removed.
//! opt.save(&path, Encoding::Postcard)?;
//! assert_eq!(Optimizer::<Adam, f64>::load(&path)?.step_count("w"), Some(10));
//! assert!(Optimizer::<Adam, f64>::load(&temp).is_err());
//! # std::fs::remove_dir_all(&folder).unwrap();
//! # Ok(())
//! # }
//! ```
//!
//! # What is refused
//!
//! Loading checks everything before anything changes, and a refused load leaves the optimizer
//! exactly as it was. Refused, with an error that names the tensor and what differs: bytes
//! that are truncated, altered or not a checkpoint ([`Error::CorruptCheckpoint`]); a newer
//! format version ([`Error::UnsupportedCheckpoint`]); another rule or element type
//! ([`Error::CheckpointMismatch`]); negative or non-finite hyperparameters
//! ([`Error::InvalidHyperparameter`]); a buffer whose length does not match its shape, a
//! buffer the rule does not keep, a step count of 0 or one that cannot be stepped again, a
//! value no run produces: a negative second moment or accumulator
//! ([`UpdateRule::non_negative_state`]), a per-tensor scalar out of its range
//! ([`UpdateRule::check_scalar`]) ([`Error::InvalidTensorState`]); a name
//! listed twice or a group that does not exist. State that does not fit the parameter the
//! caller then steps is refused by that step ([`Error::ShapeChanged`]), or beforehand, for a
//! whole model, by [`Optimizer::load_state`]. Hostile bytes give an error, never a panic, and
//! no allocation larger than the input calls for beyond a small bound (serde caps what a
//! claimed length preallocates).
//!
//! # Format versions
//!
//! Every checkpoint carries its format name [`FORMAT`] and version [`VERSION`], in the data
//! and, for bytes and files, first in the header. The policy:
//!
//! - A build reads every version from 1 to its own [`VERSION`] and writes only its own.
//!   Any change to what a checkpoint holds or how it is laid out bumps the version; this
//!   includes a new hyperparameter of a rule, because postcard stores fields by position.
//!   The loader then keeps the older layout's record types and converts them on load, so
//!   checkpoints written by older versions of this crate keep loading, with the same values.
//! - A checkpoint of a newer version is refused with [`Error::UnsupportedCheckpoint`], which
//!   names both versions; it is never read by guesswork. The header's first two fields,
//!   format and version, keep their place in every version, so bytes and files of any later
//!   version are recognised and refused before anything else is read.
//! - Bare serde data (an [`Optimizer`] serialized in a format of your choice) has the version
//!   only inside the data, which is checked after decoding: a newer layout may fail with the
//!   format's own decoding error instead, and an older one reads only where serde's defaults
//!   fill in what it lacks (in self-describing formats such as JSON, not in postcard). Use
//!   files or [`Checkpoint::to_bytes`] for checkpoints that must outlive a version of the
//!   crate.
//!
//! The versions:
//!
//! | version | what changed |
//! | --- | --- |
//! | 1 | the first format |
//! | 2 | each group's frozen flag ([`GroupRecord::frozen`]); the groups of version 1 read as not frozen |
//! | 3 | the optimizer-wide shared scalars of a rule with a [reduction](UpdateRule::reduction) ([`Checkpoint::shared`]), and the rule [`Prodigy`](crate::Prodigy) in [`Rule`](crate::Rule); checkpoints of versions 1 and 2 read with none |
//! | 4 | each group's [state precision](GroupRecord::state_precision), and low-precision buffers in their stored form ([`BufferRecord::stored`]); checkpoints of versions 1 to 3 read in full precision |
//! | 5 | the rank whose share of a [sharded optimizer](crate::ShardedOptimizer) a checkpoint holds ([`Checkpoint::shard`]); checkpoints of versions 1 to 4 read as ones of whole tensors |

use ndarray::Order;

use crate::buffer::AlignedBuffer;
use crate::check::check_lr;
use crate::clip::Clip;
use crate::compact::{BLOCK, Bf16Bits, Compact, QuantMap, StatePrecision, StoredRef};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::guard::NonFinite;
use crate::optimizer::Optimizer;
use crate::registry::{
    DEFAULT_GROUP, ParamGroup, Registry, Slot, TensorState, check_precision, quant_maps,
};
use crate::rule::UpdateRule;
use crate::slots::Slots;

#[cfg(feature = "serde")]
mod file;
#[cfg(feature = "serde")]
mod finite;
mod report;
#[cfg(feature = "serde")]
mod training;
#[cfg(feature = "serde")]
mod versions;

pub use crate::report::{LoadMode, LoadReport, ShapeMismatch};
#[cfg(feature = "serde")]
pub use file::Encoding;
#[cfg(feature = "serde")]
pub use training::TrainingState;
#[cfg(feature = "serde")]
pub(crate) use training::check_extras_json;

/// The format name written into every checkpoint.
pub const FORMAT: &str = "ndarray-optim";

/// The format name in the header of a [training-state file](TrainingState): an optimizer's
/// checkpoint with the rest of a run's state. Its versions are those of [`FORMAT`].
pub const TRAINING_FORMAT: &str = "ndarray-optim-training";

/// The format version this build writes. It reads every version from 1 up to this one.
pub const VERSION: u32 = 5;

/// An optimizer's complete state: rule, hyperparameters, current learning rate and frozen
/// flag of every group, every named tensor's group, step count and buffers, and the
/// optimizer's gradient clipping and non-finite policy.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Checkpoint<R, A> {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version the checkpoint was read in, from 1 to [`VERSION`] ([`VERSION`] in
    /// [`Optimizer::checkpoint`]). Older versions are converted to this version's fields when
    /// read, and serializing always writes [`VERSION`], whose layout it writes.
    #[cfg_attr(feature = "serde", serde(serialize_with = "serialize_version"))]
    pub version: u32,
    /// The rule's [`UpdateRule::NAME`].
    pub rule: String,
    /// The element type's [`Element::NAME`].
    pub dtype: String,
    /// Every group, the default group first.
    pub groups: Vec<GroupRecord<R>>,
    /// Every named tensor, sorted by name.
    pub tensors: Vec<TensorRecord<A>>,
    /// The gradient clipping, if any.
    #[cfg_attr(feature = "serde", serde(default, with = "stored_clip"))]
    pub clip: Option<Clip>,
    /// What steps do with non-finite gradients.
    #[cfg_attr(feature = "serde", serde(default))]
    pub non_finite: NonFinite,
    /// The optimizer-wide shared scalars of a rule with a
    /// [reduction](UpdateRule::reduction), e.g. [`Prodigy`](crate::Prodigy)'s `d`, in the
    /// order of its [`Reduction::shared`](crate::rule::Reduction::shared); none before its
    /// first step or without such a rule (since format version 3; always written, since
    /// postcard has no optional fields; JSON without it reads as none).
    #[cfg_attr(feature = "serde", serde(default))]
    pub shared: Vec<ScalarRecord>,
    /// The rank share it holds: set in the optimizer of a
    /// [`ShardedOptimizer`](crate::ShardedOptimizer) and in the shards that
    /// [`split`](crate::shard::split) cuts, so that a shard given in another rank's place is
    /// refused rather than resumed; `None` for the state of whole tensors (since format
    /// version 5; always written; JSON without it reads as none). A share's tensors are
    /// parts, whose sizes do not decide whether a group's 8-bit state applies (the whole
    /// tensors' do): their per-element buffers are read in full precision or in the group's
    /// format, as stored.
    #[cfg_attr(feature = "serde", serde(default))]
    pub shard: Option<ShardRecord>,
}

/// Which rank's share of a sharded optimizer a [`Checkpoint`] holds, under a plan of how
/// many ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct ShardRecord {
    /// The rank, from 0.
    pub rank: usize,
    /// The number of ranks of the plan.
    pub world: usize,
}

/// Writes [`VERSION`] for a checkpoint's version: what is written has this version's layout,
/// whatever version it was read in.
#[cfg(feature = "serde")]
fn serialize_version<S: serde::Serializer>(_: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u32(VERSION)
}

/// A clip as checkpoints store it. [`Clip`]'s own serde form is internally tagged (`{"kind":
/// "norm", ...}`, the form configuration files use), which formats that are not
/// self-describing, such as postcard, cannot read; checkpoints use the default, externally
/// tagged form instead, which every serde format can.
#[cfg(feature = "serde")]
mod stored_clip {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::clip::Clip;

    #[derive(Serialize, Deserialize)]
    enum Stored {
        Value(f64),
        Norm(f64),
        GlobalNorm(f64),
    }

    pub fn serialize<S: Serializer>(clip: &Option<Clip>, serializer: S) -> Result<S::Ok, S::Error> {
        clip.map(|clip| match clip {
            Clip::Value { clip_value } => Stored::Value(clip_value),
            Clip::Norm { max_norm } => Stored::Norm(max_norm),
            Clip::GlobalNorm { max_norm } => Stored::GlobalNorm(max_norm),
        })
        .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Clip>, D::Error> {
        Ok(Option::<Stored>::deserialize(deserializer)?.map(|stored| match stored {
            Stored::Value(clip_value) => Clip::Value { clip_value },
            Stored::Norm(max_norm) => Clip::Norm { max_norm },
            Stored::GlobalNorm(max_norm) => Clip::GlobalNorm { max_norm },
        }))
    }
}

/// One parameter group in a [`Checkpoint`].
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct GroupRecord<R> {
    /// The group's name.
    pub name: String,
    /// The group's hyperparameters, with its base learning rate.
    pub hyper: R,
    /// The current learning rate a schedule has set, if any (finite, ≥ 0).
    #[cfg_attr(feature = "serde", serde(default))]
    pub lr: Option<f64>,
    /// Whether the group is [frozen](Optimizer::freeze) (since format version 2; always
    /// written, since postcard has no optional fields; JSON without it reads as not frozen).
    #[cfg_attr(feature = "serde", serde(default))]
    pub frozen: bool,
    /// How the group keeps its tensors' per-element state (since format version 4; always
    /// written; JSON without it reads as full precision).
    #[cfg_attr(feature = "serde", serde(default))]
    pub state_precision: StatePrecision,
}

impl<R: Clone> GroupRecord<R> {
    /// The record of `group`.
    pub(crate) fn of(group: &ParamGroup<R>) -> Self {
        GroupRecord {
            name: group.name.clone(),
            hyper: group.hyper.clone(),
            lr: group.scheduled_lr,
            frozen: group.frozen,
            state_precision: group.state_precision,
        }
    }
}

/// One named tensor in a [`Checkpoint`].
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct TensorRecord<A> {
    /// The tensor's name.
    pub name: String,
    /// The name of the group it belongs to.
    pub group: String,
    /// Its state, `None` if it was assigned to a group but never stepped.
    pub state: Option<StateRecord<A>>,
}

/// The state of one tensor in a [`Checkpoint`].
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct StateRecord<A> {
    /// Steps taken (≥ 1).
    pub step: u64,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// The rule's buffers: the per-element ones in the order of [`UpdateRule::state_names`],
    /// then those of [`UpdateRule::shaped_state`], each with the values of its own shape.
    pub buffers: Vec<BufferRecord<A>>,
    /// The rule's per-tensor scalars in the order of [`UpdateRule::scalar_names`] (always
    /// written, since postcard has no optional fields; JSON without it reads as none).
    #[cfg_attr(feature = "serde", serde(default))]
    pub scalars: Vec<ScalarRecord>,
}

/// One per-tensor scalar state of one tensor in a [`Checkpoint`], e.g. NAdam's `mu_product`.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct ScalarRecord {
    /// The scalar's name.
    pub name: String,
    /// Its value.
    pub value: f64,
}

/// One state buffer of one tensor in a [`Checkpoint`].
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct BufferRecord<A> {
    /// The buffer's name, e.g. `"exp_avg"`.
    pub name: String,
    /// Its values in row-major order; empty for a buffer kept in low precision.
    pub values: Vec<A>,
    /// A buffer kept in low precision, as stored (since format version 4; always written;
    /// JSON without it reads as `None`, full precision).
    #[cfg_attr(feature = "serde", serde(default))]
    pub stored: Option<StoredValues>,
}

impl From<StoredRef<'_>> for StoredValues {
    fn from(stored: StoredRef<'_>) -> Self {
        match stored {
            StoredRef::Bf16 { bits } => StoredValues::Bf16 { bits: bits.iter().collect() },
            StoredRef::Int8 { codes, scales, .. } => {
                StoredValues::Int8 { codes: codes.to_vec(), scales: scales.to_vec() }
            }
        }
    }
}

/// A per-element buffer kept in low precision ([`StatePrecision`]), in a [`BufferRecord`]:
/// what the optimizer holds, so that a resumed run continues bit for bit.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum StoredValues {
    /// bfloat16 bits, in row-major order.
    Bf16 {
        /// One per element.
        bits: Vec<u16>,
    },
    /// Block-wise 8-bit codes ([`crate::compact`]).
    Int8 {
        /// One per element, in row-major order.
        codes: Vec<u8>,
        /// One per block of [`BLOCK`] codes.
        scales: Vec<f32>,
    },
}

impl StoredValues {
    /// The values as a tensor's state holds them, with 8-bit codes of `map`.
    fn borrowed(&self, map: QuantMap) -> StoredRef<'_> {
        match self {
            StoredValues::Bf16 { bits } => StoredRef::Bf16 { bits: Bf16Bits::Run(bits) },
            StoredValues::Int8 { codes, scales } => StoredRef::Int8 { codes, scales, map },
        }
    }
}

fn invalid_state(param: &str, reason: String) -> Error {
    Error::InvalidTensorState { param: param.to_owned(), reason }
}

/// Refuses a step count that no run has: 0 with state. (`u64::MAX` loads; the step after it
/// is refused with [`Error::StepCountOverflow`] rather than wrapping.)
fn check_step(param: &str, step: u64) -> Result<()> {
    if step == 0 { Err(invalid_state(param, "step count 0 with state".to_owned())) } else { Ok(()) }
}

/// Refuses buffer values that no run produces: a negative value (or −∞) in a buffer the rule
/// keeps non-negative (second moments, accumulated squares). NaN and ±∞ elsewhere, and +∞
/// there, are what real runs produce (a non-finite gradient under
/// [`NonFinite::Ignore`], or a finite one whose square overflows),
/// so a checkpoint of such a run loads as it was saved.
fn check_buffer<R: UpdateRule, A: Element>(
    hyper: &R,
    param: &str,
    name: &str,
    values: impl Iterator<Item = A>,
) -> Result<()> {
    if !hyper.non_negative_state().contains(&name) {
        return Ok(());
    }
    match values.map(A::into_f64).enumerate().find(|&(_, value)| value < 0.0) {
        Some((index, value)) => Err(invalid_state(
            param,
            format!(
                "buffer `{name}` holds {value} at index {index}, which no run of `{}` produces: \
                 it must be >= 0",
                hyper.name()
            ),
        )),
        None => Ok(()),
    }
}

/// Refuses a per-tensor scalar outside the range the rule declares for it.
fn check_scalar<R: UpdateRule>(hyper: &R, param: &str, name: &str, value: f64) -> Result<()> {
    hyper.check_scalar(name, value).map_err(|requirement| {
        invalid_state(
            param,
            format!(
                "scalar `{name}` is {value}, which no run of `{}` produces: it must be \
                 {requirement}",
                hyper.name()
            ),
        )
    })
}

/// Whether ndarray can view an array of `shape`. It refuses any shape whose non-zero axis
/// lengths multiply past `isize::MAX`, even one with a zero-length axis; state restored with
/// such a shape could never be viewed, so it is refused.
pub(crate) fn representable(shape: &[usize]) -> bool {
    shape
        .iter()
        .try_fold(1_usize, |product, &len| product.checked_mul(len.max(1)))
        .is_some_and(|product| isize::try_from(product).is_ok())
}

/// Refuses a low-precision buffer of another format or length than its tensor needs, with
/// a negative scale, or with negative values where the rule keeps them non-negative.
fn check_stored<R: UpdateRule, A: Element>(
    hyper: &R,
    param: &str,
    buffer: &BufferRecord<A>,
    precision: StatePrecision,
    len: usize,
    map: QuantMap,
) -> Result<()> {
    let name = &buffer.name;
    let fault = match (buffer.stored.as_ref(), precision) {
        _ if !buffer.values.is_empty() => {
            Some(format!("buffer `{name}` has both values and stored values"))
        }
        (Some(StoredValues::Bf16 { bits }), StatePrecision::Bf16) => (bits.len() != len)
            .then(|| format!("buffer `{name}` has {} values, {len} needed", bits.len())),
        (Some(StoredValues::Int8 { codes, scales }), StatePrecision::Int8 { .. }) => {
            if codes.len() != len || scales.len() != len.div_ceil(BLOCK) {
                Some(format!(
                    "buffer `{name}` has {} codes and {} scales, {len} and {} needed",
                    codes.len(),
                    scales.len(),
                    len.div_ceil(BLOCK)
                ))
            } else {
                scales
                    .iter()
                    .any(|&scale| scale < 0.0)
                    .then(|| format!("buffer `{name}` has a negative scale"))
            }
        }
        (_, precision) => Some(format!("buffer `{name}` is stored otherwise than {precision:?}")),
    };
    if let Some(fault) = fault {
        return Err(invalid_state(param, fault));
    }
    // Expanding costs a buffer-sized copy: only buffers with a sign to check pay it.
    if !hyper.non_negative_state().contains(&name.as_str()) {
        return Ok(());
    }
    let stored = buffer.stored.as_ref().expect("checked to be stored");
    let mut values = vec![A::zero(); len];
    stored.borrowed(map).expand(&mut values);
    check_buffer(hyper, param, name, values.into_iter())
}

/// Low-precision buffers of `numel` values each, as the registry keeps them.
fn joined(buffers: &[&StoredValues], numel: usize, maps: Vec<QuantMap>) -> Compact {
    let mut bits: Vec<u16> = Vec::new();
    let (mut codes, mut scales): (Vec<u8>, Vec<f32>) = (Vec::new(), Vec::new());
    for stored in buffers {
        match stored {
            StoredValues::Bf16 { bits: more } => bits.extend(more),
            StoredValues::Int8 { codes: more, scales: blocks } => {
                codes.extend(more);
                scales.extend(blocks);
            }
        }
    }
    match buffers.first() {
        Some(StoredValues::Bf16 { .. }) => Compact::bf16(&bits, numel),
        _ => Compact::Int8 { codes: AlignedBuffer::from_slice(&codes), scales, maps },
    }
}

/// The state of tensor `param` from its record, of a group keeping `precision`; `part` if the
/// record is a rank's part of a larger tensor ([`Checkpoint::shard`]).
fn restore_state<A: Element, R: UpdateRule>(
    param: &str,
    record: StateRecord<A>,
    hyper: &R,
    precision: StatePrecision,
    part: bool,
) -> Result<TensorState<A>> {
    check_step(param, record.step)?;
    let rule = hyper.name();
    if !representable(&record.shape) {
        return Err(invalid_state(param, format!("shape {:?} overflows", record.shape)));
    }
    if let Err(requirement) = hyper.check_shape(&record.shape) {
        return Err(invalid_state(
            param,
            format!("shape {:?}: `{rule}` steps {requirement} tensors only", record.shape),
        ));
    }
    let numel = record.shape.iter().product::<usize>();
    let state_names = hyper.state_names();
    let shaped = hyper.shaped_state(&record.shape);
    let expected: Vec<(&str, usize)> = state_names
        .iter()
        .map(|&name| (name, numel))
        .chain(shaped.iter().map(|(name, shape)| (*name, shape.iter().product())))
        .collect();
    let names: Vec<&str> = record.buffers.iter().map(|buffer| buffer.name.as_str()).collect();
    if !names.iter().copied().eq(expected.iter().map(|&(name, _)| name)) {
        let keeps: Vec<&str> = expected.iter().map(|&(name, _)| name).collect();
        return Err(invalid_state(
            param,
            format!("buffers are {names:?}, `{rule}` with its group's settings keeps {keeps:?}"),
        ));
    }
    let scalar_names = hyper.scalar_names();
    let scalars: Vec<&str> = record.scalars.iter().map(|scalar| scalar.name.as_str()).collect();
    if scalars != scalar_names {
        return Err(invalid_state(
            param,
            format!(
                "scalars are {scalars:?}, `{rule}` with its group's settings keeps {scalar_names:?}"
            ),
        ));
    }
    let precision = match record.buffers.first() {
        // Low precision is decided by the whole tensor's size, which a part's record lacks:
        // its buffers say which, and a sharded optimizer keeps them as its plan requires.
        Some(first) if part && first.stored.is_none() => StatePrecision::Full,
        _ if part => precision,
        _ => precision.for_numel(numel),
    };
    let maps = quant_maps(hyper);
    let mut compact = Vec::new();
    for (index, (buffer, &(_, len))) in record.buffers.iter().zip(&expected).enumerate() {
        let low = index < state_names.len() && precision != StatePrecision::Full;
        match (&buffer.stored, low) {
            (None, false) => {
                if buffer.values.len() != len {
                    return Err(invalid_state(
                        param,
                        format!(
                            "buffer `{}` has {} values, shape {:?} needs {len}",
                            buffer.name,
                            buffer.values.len(),
                            record.shape
                        ),
                    ));
                }
                check_buffer(hyper, param, &buffer.name, buffer.values.iter().copied())?;
            }
            (Some(stored), true) => {
                compact.push(stored);
                check_stored::<R, A>(hyper, param, buffer, precision, len, maps[index])?;
            }
            (stored, _) => {
                let kind = if stored.is_some() { "in low precision" } else { "in full precision" };
                return Err(invalid_state(
                    param,
                    format!(
                        "buffer `{}` is stored {kind}, its group keeps {precision:?}",
                        buffer.name
                    ),
                ));
            }
        }
    }
    for scalar in &record.scalars {
        check_scalar(hyper, param, &scalar.name, scalar.value)?;
    }
    let compact = (!compact.is_empty()).then(|| joined(&compact, numel, maps));
    let full = record.buffers.iter().filter(|buffer| buffer.stored.is_none());
    let mut buffers =
        AlignedBuffer::filled(full.clone().map(|buffer| buffer.values.len()).sum(), A::zero());
    let mut rest = &mut buffers[..];
    for buffer in full {
        let (part, tail) = rest.split_at_mut(buffer.values.len());
        part.copy_from_slice(&buffer.values);
        rest = tail;
    }
    Ok(TensorState {
        step: record.step,
        scratch: vec![A::zero(); hyper.scratch_len(&record.shape)],
        shape: record.shape,
        order: Order::RowMajor,
        order_pending: true,
        buffers,
        compact,
        elementwise: state_names.len(),
        shaped_layout: shaped,
        scalars: record.scalars.iter().map(|scalar| scalar.value).collect(),
    })
}

impl<R: UpdateRule, A: Element> Optimizer<R, A> {
    /// A copy of the optimizer's whole state, every buffer in row-major order.
    pub fn checkpoint(&self) -> Checkpoint<R, A> {
        let tensors = self
            .state()
            .map(|tensor| TensorRecord {
                name: tensor.name().to_owned(),
                group: tensor.group().to_owned(),
                state: tensor.step().zip(tensor.shape()).map(|(step, shape)| StateRecord {
                    step,
                    shape: shape.to_vec(),
                    buffers: tensor
                        .buffers()
                        .enumerate()
                        .map(|(index, (name, values))| match tensor.stored(index) {
                            Some(stored) => BufferRecord {
                                name: name.to_owned(),
                                values: Vec::new(),
                                stored: Some(StoredValues::from(stored)),
                            },
                            None => BufferRecord {
                                name: name.to_owned(),
                                values: values.iter().copied().collect(),
                                stored: None,
                            },
                        })
                        .collect(),
                    scalars: tensor
                        .scalars()
                        .map(|(name, value)| ScalarRecord { name: name.to_owned(), value })
                        .collect(),
                }),
            })
            .collect();
        Checkpoint {
            format: FORMAT.to_owned(),
            version: VERSION,
            rule: R::NAME.to_owned(),
            dtype: A::NAME.to_owned(),
            groups: self.groups().iter().map(GroupRecord::of).collect(),
            tensors,
            clip: self.clip,
            non_finite: self.non_finite,
            shared: self.shared_records().collect(),
            shard: self.shard,
        }
    }

    /// The shared scalars with their names.
    fn shared_records(&self) -> impl ExactSizeIterator<Item = ScalarRecord> + '_ {
        let names = shared_names(&self.registry.groups);
        self.registry
            .shared
            .iter()
            .zip(names)
            .map(|(&value, &name)| ScalarRecord { name: name.to_owned(), value })
    }

    /// Checks the state with the checks of loading (step counts, buffer values, scalars),
    /// so that what is saved can be loaded back.
    #[cfg(feature = "serde")]
    pub(crate) fn check_state(&self) -> Result<()> {
        for tensor in self.state() {
            let Some(step) = tensor.step() else { continue };
            let hyper = &self.registry.groups[self.registry.group_index(tensor.group())?].hyper;
            check_step(tensor.name(), step)?;
            for (name, values) in tensor.buffers() {
                check_buffer(hyper, tensor.name(), name, values.iter().copied())?;
            }
            for (name, value) in tensor.scalars() {
                check_scalar(hyper, tensor.name(), name, value)?;
            }
        }
        check_shared(&self.registry.groups, &self.shared_records().collect::<Vec<_>>())
    }

    /// Rebuilds an optimizer from a checkpoint, after checking all of it.
    ///
    /// # Errors
    /// - [`Error::UnsupportedCheckpoint`] for another format or a newer version;
    /// - [`Error::CheckpointMismatch`] for another rule or element type;
    /// - [`Error::InvalidHyperparameter`], [`Error::DuplicateGroup`] or
    ///   [`Error::UnknownGroup`] for bad groups (the first must be the default group);
    /// - [`Error::DuplicateParam`] or [`Error::InvalidTensorState`] for bad tensors;
    /// - [`Error::InvalidHyperparameter`] for a bad clip or a group's current learning rate
    ///   that is not finite and ≥ 0.
    pub fn from_checkpoint(checkpoint: Checkpoint<R, A>) -> Result<Self> {
        checkpoint.into_optimizer()
    }
}

impl<R: UpdateRule, A: Element> Checkpoint<R, A> {
    /// Checks the format, version, rule and element type (the parts that decide how the rest
    /// is read).
    pub(crate) fn check_kind(&self) -> Result<()> {
        check_kind::<R, A>(&self.format, self.version, &self.rule, &self.dtype)
    }

    /// Checks all of the checkpoint and builds the optimizer it describes.
    pub(crate) fn into_optimizer(self) -> Result<Optimizer<R, A>> {
        self.check_kind()?;
        let Checkpoint { groups, tensors, clip, non_finite, shared, shard, .. } = self;
        if let Some(clip) = &clip {
            clip.validate()?;
        }
        if let Some(ShardRecord { rank, world }) = shard
            && rank >= world
        {
            return Err(Error::InvalidSharding {
                reason: format!("the checkpoint is the share of rank {rank} of a world of {world}"),
            });
        }
        let scheduled: Vec<(Option<f64>, bool, StatePrecision)> =
            groups.iter().map(|group| (group.lr, group.frozen, group.state_precision)).collect();
        let mut groups = groups.into_iter();
        let default = match groups.next() {
            Some(first) if first.name == DEFAULT_GROUP => first.hyper,
            _ => return Err(Error::UnknownGroup { group: DEFAULT_GROUP.to_owned() }),
        };
        let mut registry = Registry::<R, A>::new(default)?;
        for group in groups {
            registry.add_group(&group.name, group.hyper)?;
        }
        for (group, (lr, frozen, precision)) in registry.groups.iter_mut().zip(scheduled) {
            if let Some(lr) = lr {
                check_lr(group.hyper.name(), lr)?;
            }
            check_precision::<R, A>(&group.name, &group.hyper, precision)?;
            group.scheduled_lr = lr;
            group.frozen = frozen;
            group.state_precision = precision;
        }
        let mut slots = Slots::with_capacity(tensors.len());
        let part = shard.is_some();
        for record in tensors {
            let group = registry.group_index(&record.group)?;
            let (hyper, precision) =
                (&registry.groups[group].hyper, registry.groups[group].state_precision);
            let tensor = (record.state)
                .map(|state| restore_state(&record.name, state, hyper, precision, part))
                .transpose()?;
            if slots.contains_key(&record.name) {
                return Err(Error::DuplicateParam { param: record.name, in_what: "checkpoint" });
            }
            slots.insert(record.name, Slot::new(group, tensor));
        }
        registry.slots = slots;
        check_shared(&registry.groups, &shared)?;
        registry.shared = shared.into_iter().map(|scalar| scalar.value).collect();
        Ok(Optimizer { registry, clip, non_finite, shard, names: Default::default() })
    }
}

/// The names of the shared scalars of the first group whose rule has a reduction, if any.
fn shared_names<R: UpdateRule>(groups: &[ParamGroup<R>]) -> &'static [&'static str] {
    groups.iter().find_map(|group| group.hyper.reduction()).map_or(&[], |r| r.shared)
}

/// Refuses shared scalars that are not those of the groups' rule with a reduction (by
/// name, in order; none at all before its first step) or hold a value no run produces.
fn check_shared<R: UpdateRule>(groups: &[ParamGroup<R>], shared: &[ScalarRecord]) -> Result<()> {
    let invalid = |reason: String| invalid_state("(shared)", reason);
    let names = shared_names(groups);
    let given: Vec<&str> = shared.iter().map(|scalar| scalar.name.as_str()).collect();
    if !given.is_empty() && given != names {
        return Err(invalid(format!("shared scalars are {given:?}, the rules keep {names:?}")));
    }
    let Some(group) = groups.iter().find(|group| group.hyper.reduction().is_some()) else {
        return Ok(());
    };
    for scalar in shared {
        group.hyper.check_shared(&scalar.name, scalar.value).map_err(|requirement| {
            invalid(format!(
                "shared scalar `{}` is {}, which no run of `{}` produces: it must be {requirement}",
                scalar.name,
                scalar.value,
                group.hyper.name()
            ))
        })?;
    }
    Ok(())
}

/// Refuses another format, a version this build does not read, another rule or element type.
pub(crate) fn check_kind<R: UpdateRule, A: Element>(
    format: &str,
    version: u32,
    rule: &str,
    dtype: &str,
) -> Result<()> {
    if format != FORMAT || !(1..=VERSION).contains(&version) {
        return Err(Error::UnsupportedCheckpoint {
            format: format.to_owned(),
            version,
            newest: VERSION,
        });
    }
    if rule != R::NAME {
        return Err(Error::CheckpointMismatch {
            field: "rule",
            expected: R::NAME,
            found: rule.to_owned(),
        });
    }
    if dtype != A::NAME {
        return Err(Error::CheckpointMismatch {
            field: "dtype",
            expected: A::NAME,
            found: dtype.to_owned(),
        });
    }
    Ok(())
}

#[cfg(feature = "serde")]
pub(crate) mod serde_impl {
    use ndarray::{CowArray, IxDyn};
    use serde::ser::{SerializeStruct, SerializeStructVariant};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Checkpoint, FORMAT, GroupRecord, VERSION};
    use crate::compact::StoredRef;

    use crate::clip::Clip;
    use crate::inspect::TensorView;

    use crate::element::Element;
    use crate::optimizer::Optimizer;
    use crate::rule::UpdateRule;

    /// Serializes as the optimizer's [`Checkpoint`], without copying the state.
    impl<R, A> Serialize for Optimizer<R, A>
    where
        R: UpdateRule + Serialize,
        A: Element + Serialize,
    {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            Live(self).serialize(serializer)
        }
    }

    /// An optimizer serialized as its [`Checkpoint`] would be, field for field, reading the
    /// state where it is instead of copying it: saving a large state needs little memory
    /// beyond the state itself.
    pub(crate) struct Live<'a, R: UpdateRule, A: Element>(pub(crate) &'a Optimizer<R, A>);

    impl<R: UpdateRule + Serialize, A: Element + Serialize> Serialize for Live<'_, R, A> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let opt = self.0;
            let groups: Vec<GroupRecord<R>> = opt.groups().iter().map(GroupRecord::of).collect();
            let mut record = serializer.serialize_struct("Checkpoint", 10)?;
            record.serialize_field("format", FORMAT)?;
            record.serialize_field("version", &VERSION)?;
            record.serialize_field("rule", R::NAME)?;
            record.serialize_field("dtype", A::NAME)?;
            record.serialize_field("groups", &groups)?;
            record.serialize_field("tensors", &Seq(|| opt.state().map(Tensor)))?;
            record.serialize_field("clip", &StoredClip(&opt.clip))?;
            record.serialize_field("non_finite", &opt.non_finite)?;
            record.serialize_field("shared", &Seq(|| opt.shared_records()))?;
            record.serialize_field("shard", &opt.shard)?;
            record.end()
        }
    }

    /// A sequence serialized from an iterator that `make` returns (of known length).
    struct Seq<F>(F);

    impl<F, I> Serialize for Seq<F>
    where
        F: Fn() -> I,
        I: ExactSizeIterator,
        I::Item: Serialize,
    {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_seq((self.0)())
        }
    }

    struct StoredClip<'a>(&'a Option<Clip>);

    impl Serialize for StoredClip<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            super::stored_clip::serialize(self.0, serializer)
        }
    }

    /// A [`TensorRecord`](super::TensorRecord).
    struct Tensor<'a, A: Element>(TensorView<'a, A>);

    impl<A: Element + Serialize> Serialize for Tensor<'_, A> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let tensor = &self.0;
            let mut record = serializer.serialize_struct("TensorRecord", 3)?;
            record.serialize_field("name", tensor.name())?;
            record.serialize_field("group", tensor.group())?;
            let state = tensor.step().zip(tensor.shape()).map(|(step, shape)| State {
                step,
                shape,
                tensor,
            });
            record.serialize_field("state", &state)?;
            record.end()
        }
    }

    /// A [`StateRecord`](super::StateRecord).
    struct State<'a, 'b, A: Element> {
        step: u64,
        shape: &'a [usize],
        tensor: &'b TensorView<'a, A>,
    }

    impl<A: Element + Serialize> Serialize for State<'_, '_, A> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let tensor = self.tensor;
            let mut record = serializer.serialize_struct("StateRecord", 4)?;
            record.serialize_field("step", &self.step)?;
            record.serialize_field("shape", self.shape)?;
            let buffer =
                |(index, (name, values))| Buffer { name, values, stored: tensor.stored(index) };
            record.serialize_field("buffers", &Seq(|| tensor.buffers().enumerate().map(buffer)))?;
            record.serialize_field(
                "scalars",
                &Seq(|| tensor.scalars().map(|(name, value)| Scalar { name, value })),
            )?;
            record.end()
        }
    }

    /// A [`BufferRecord`](super::BufferRecord), its values in row-major order, or none and
    /// the stored ones.
    struct Buffer<'a, A> {
        name: &'static str,
        values: CowArray<'a, A, IxDyn>,
        stored: Option<StoredRef<'a>>,
    }

    impl<A: Element + Serialize> Serialize for Buffer<'_, A> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut record = serializer.serialize_struct("BufferRecord", 3)?;
            record.serialize_field("name", self.name)?;
            match self.stored {
                Some(_) => record.serialize_field("values", &[] as &[A])?,
                None => record.serialize_field("values", &Seq(|| self.values.iter()))?,
            }
            record.serialize_field("stored", &self.stored.map(Stored))?;
            record.end()
        }
    }

    /// A [`StoredValues`](super::StoredValues), borrowed.
    struct Stored<'a>(StoredRef<'a>);

    impl Serialize for Stored<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                StoredRef::Bf16 { bits } => {
                    let mut variant =
                        serializer.serialize_struct_variant("StoredValues", 0, "Bf16", 1)?;
                    // As the slice of a `StoredValues` serialises, read from pairs or not.
                    variant.serialize_field("bits", &Seq(|| bits.iter()))?;
                    variant.end()
                }
                StoredRef::Int8 { codes, scales, .. } => {
                    let mut variant =
                        serializer.serialize_struct_variant("StoredValues", 1, "Int8", 2)?;
                    variant.serialize_field("codes", codes)?;
                    variant.serialize_field("scales", scales)?;
                    variant.end()
                }
            }
        }
    }

    /// A [`ScalarRecord`](super::ScalarRecord).
    struct Scalar {
        name: &'static str,
        value: f64,
    }

    impl Serialize for Scalar {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut record = serializer.serialize_struct("ScalarRecord", 2)?;
            record.serialize_field("name", self.name)?;
            record.serialize_field("value", &self.value)?;
            record.end()
        }
    }

    /// Deserializes a [`Checkpoint`] and validates it with
    /// [`Optimizer::from_checkpoint`]; a validation error becomes the format's custom error.
    impl<'de, R, A> Deserialize<'de> for Optimizer<R, A>
    where
        R: UpdateRule + Deserialize<'de>,
        A: Element + Deserialize<'de>,
    {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let checkpoint = Checkpoint::<R, A>::deserialize(deserializer)?;
            Optimizer::from_checkpoint(checkpoint).map_err(serde::de::Error::custom)
        }
    }
}
