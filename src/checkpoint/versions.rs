//! Files of older format versions: their records as those versions laid them out, read by
//! the header's version and converted. Postcard stores fields by position, so an older
//! payload can only be read with its own version's fields, never with serde defaults
//! filling in the rest.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{
    BufferRecord, Checkpoint, GroupRecord, ScalarRecord, StateRecord, TensorRecord, TrainingState,
};
use crate::clip::Clip;
use crate::compact::StatePrecision;
use crate::guard::NonFinite;

/// A record of a file: read in the layout of the format version its header names, and
/// converted.
pub(super) trait Versioned<R, A>: DeserializeOwned {
    /// The record as format version 1 laid it out.
    type V1: DeserializeOwned + Into<Self>;
    /// The record as format version 2 laid it out.
    type V2: DeserializeOwned + Into<Self>;
    /// The record as format version 3 laid it out.
    type V3: DeserializeOwned + Into<Self>;
    /// The record as format version 4 laid it out.
    type V4: DeserializeOwned + Into<Self>;

    /// The optimizer's checkpoint in the record.
    fn checkpoint(&self) -> &Checkpoint<R, A>;
}

/// A [`Checkpoint`] of versions 1 and 2, which had no shared scalars, with groups and
/// tensors recorded as `G` and `T`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnsharedCheckpoint<G, T> {
    format: String,
    version: u32,
    rule: String,
    dtype: String,
    groups: Vec<G>,
    tensors: Vec<T>,
    #[serde(default, with = "super::stored_clip")]
    clip: Option<Clip>,
    #[serde(default)]
    non_finite: NonFinite,
}

/// A [`Checkpoint`] of versions 3 and 4, which had no rank share (every checkpoint one of
/// whole tensors), with groups and tensors recorded as `G` and `T`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnshardedCheckpoint<G, T> {
    format: String,
    version: u32,
    rule: String,
    dtype: String,
    groups: Vec<G>,
    tensors: Vec<T>,
    #[serde(default, with = "super::stored_clip")]
    clip: Option<Clip>,
    #[serde(default)]
    non_finite: NonFinite,
    #[serde(default)]
    shared: Vec<ScalarRecord>,
}

/// Version 1: no frozen flags (nor anything later).
type CheckpointV1<R, A> = UnsharedCheckpoint<GroupRecordV1<R>, TensorRecordV3<A>>;
/// Version 2: no shared scalars, no state precisions, no rank share.
type CheckpointV2<R, A> = UnsharedCheckpoint<GroupRecordV3<R>, TensorRecordV3<A>>;
/// Version 3: no state precisions (every buffer in full precision), no rank share.
type CheckpointV3<R, A> = UnshardedCheckpoint<GroupRecordV3<R>, TensorRecordV3<A>>;
/// Version 4: no rank share.
type CheckpointV4<R, A> = UnshardedCheckpoint<GroupRecord<R>, TensorRecord<A>>;

/// A [`TrainingState`] of an older version, its optimizer's checkpoint recorded as `C`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OlderTrainingState<C, E> {
    optimizer: C,
    extras: E,
}

impl<R, A, G, T> From<UnsharedCheckpoint<G, T>> for Checkpoint<R, A>
where
    G: Into<GroupRecord<R>>,
    T: Into<TensorRecord<A>>,
{
    fn from(old: UnsharedCheckpoint<G, T>) -> Self {
        let UnsharedCheckpoint { format, version, rule, dtype, groups, tensors, clip, non_finite } =
            old;
        UnshardedCheckpoint {
            format,
            version,
            rule,
            dtype,
            groups,
            tensors,
            clip,
            non_finite,
            shared: Vec::new(),
        }
        .into()
    }
}

impl<R, A, G, T> From<UnshardedCheckpoint<G, T>> for Checkpoint<R, A>
where
    G: Into<GroupRecord<R>>,
    T: Into<TensorRecord<A>>,
{
    fn from(old: UnshardedCheckpoint<G, T>) -> Self {
        Checkpoint {
            format: old.format,
            version: old.version,
            rule: old.rule,
            dtype: old.dtype,
            groups: old.groups.into_iter().map(Into::into).collect(),
            tensors: old.tensors.into_iter().map(Into::into).collect(),
            clip: old.clip,
            non_finite: old.non_finite,
            shared: old.shared,
            shard: None,
        }
    }
}

/// A [`GroupRecord`] of version 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupRecordV1<R> {
    name: String,
    hyper: R,
    #[serde(default)]
    lr: Option<f64>,
}

impl<R> From<GroupRecordV1<R>> for GroupRecord<R> {
    fn from(v1: GroupRecordV1<R>) -> Self {
        let GroupRecordV1 { name, hyper, lr } = v1;
        GroupRecordV3 { name, hyper, lr, frozen: false }.into()
    }
}

/// A [`GroupRecord`] of versions 2 and 3.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupRecordV3<R> {
    name: String,
    hyper: R,
    #[serde(default)]
    lr: Option<f64>,
    #[serde(default)]
    frozen: bool,
}

impl<R> From<GroupRecordV3<R>> for GroupRecord<R> {
    fn from(v3: GroupRecordV3<R>) -> Self {
        let GroupRecordV3 { name, hyper, lr, frozen } = v3;
        GroupRecord { name, hyper, lr, frozen, state_precision: StatePrecision::Full }
    }
}

/// A [`TensorRecord`] of versions 1 to 3.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TensorRecordV3<A> {
    name: String,
    group: String,
    state: Option<StateRecordV3<A>>,
}

/// A [`StateRecord`] of versions 1 to 3.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateRecordV3<A> {
    step: u64,
    shape: Vec<usize>,
    buffers: Vec<BufferRecordV3<A>>,
    #[serde(default)]
    scalars: Vec<ScalarRecord>,
}

/// A [`BufferRecord`] of versions 1 to 3: values only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BufferRecordV3<A> {
    name: String,
    values: Vec<A>,
}

impl<A> From<TensorRecordV3<A>> for TensorRecord<A> {
    fn from(v3: TensorRecordV3<A>) -> Self {
        let state = v3.state.map(|state| StateRecord {
            step: state.step,
            shape: state.shape,
            buffers: (state.buffers.into_iter())
                .map(|buffer| BufferRecord {
                    name: buffer.name,
                    values: buffer.values,
                    stored: None,
                })
                .collect(),
            scalars: state.scalars,
        });
        TensorRecord { name: v3.name, group: v3.group, state }
    }
}

impl<R, A, C, E> From<OlderTrainingState<C, E>> for TrainingState<R, A, E>
where
    C: Into<Checkpoint<R, A>>,
{
    fn from(old: OlderTrainingState<C, E>) -> Self {
        TrainingState { optimizer: old.optimizer.into(), extras: old.extras }
    }
}

impl<R, A> Versioned<R, A> for Checkpoint<R, A>
where
    R: DeserializeOwned,
    A: DeserializeOwned,
{
    type V1 = CheckpointV1<R, A>;
    type V2 = CheckpointV2<R, A>;
    type V3 = CheckpointV3<R, A>;
    type V4 = CheckpointV4<R, A>;

    fn checkpoint(&self) -> &Checkpoint<R, A> {
        self
    }
}

impl<R, A, E> Versioned<R, A> for TrainingState<R, A, E>
where
    R: DeserializeOwned,
    A: DeserializeOwned,
    E: DeserializeOwned,
{
    type V1 = OlderTrainingState<CheckpointV1<R, A>, E>;
    type V2 = OlderTrainingState<CheckpointV2<R, A>, E>;
    type V3 = OlderTrainingState<CheckpointV3<R, A>, E>;
    type V4 = OlderTrainingState<CheckpointV4<R, A>, E>;

    fn checkpoint(&self) -> &Checkpoint<R, A> {
        &self.optimizer
    }
}
