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

/// A record of a file: read in the layout of the format version its header names.
pub(super) trait Versioned<R, A>: DeserializeOwned {
    /// The record as format version 1 laid it out.
    type V1: DeserializeOwned;

    /// The record of a version 1 file in this version's layout.
    fn from_v1(v1: Self::V1) -> Self;

    /// The record as format version 2 laid it out.
    type V2: DeserializeOwned;

    /// The record of a version 2 file in this version's layout.
    fn from_v2(v2: Self::V2) -> Self;

    /// The record as format version 3 laid it out.
    type V3: DeserializeOwned;

    /// The record of a version 3 file in this version's layout.
    fn from_v3(v3: Self::V3) -> Self;

    /// The record as format version 4 laid it out.
    type V4: DeserializeOwned;

    /// The record of a version 4 file in this version's layout.
    fn from_v4(v4: Self::V4) -> Self;

    /// The optimizer's checkpoint in the record.
    fn checkpoint(&self) -> &Checkpoint<R, A>;
}

/// A [`Checkpoint`] of version 1: no frozen flags.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckpointV1<R, A> {
    format: String,
    version: u32,
    rule: String,
    dtype: String,
    groups: Vec<GroupRecordV1<R>>,
    tensors: Vec<TensorRecordV3<A>>,
    #[serde(default, with = "super::stored_clip")]
    clip: Option<Clip>,
    #[serde(default)]
    non_finite: NonFinite,
}

/// A [`Checkpoint`] of version 2: no shared scalars.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckpointV2<R, A> {
    format: String,
    version: u32,
    rule: String,
    dtype: String,
    groups: Vec<GroupRecordV3<R>>,
    tensors: Vec<TensorRecordV3<A>>,
    #[serde(default, with = "super::stored_clip")]
    clip: Option<Clip>,
    #[serde(default)]
    non_finite: NonFinite,
}

/// A [`TrainingState`] of version 2.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrainingStateV2<R, A, E> {
    optimizer: CheckpointV2<R, A>,
    extras: E,
}

/// Version 2 is version 3 without shared scalars: it converts through version 3.
impl<R, A> From<CheckpointV2<R, A>> for CheckpointV3<R, A> {
    fn from(v2: CheckpointV2<R, A>) -> Self {
        let CheckpointV2 { format, version, rule, dtype, groups, tensors, clip, non_finite } = v2;
        let shared = Vec::new();
        CheckpointV3 { format, version, rule, dtype, groups, tensors, clip, non_finite, shared }
    }
}

impl<R, A> From<CheckpointV2<R, A>> for Checkpoint<R, A> {
    fn from(v2: CheckpointV2<R, A>) -> Self {
        CheckpointV3::from(v2).into()
    }
}

/// A [`Checkpoint`] of version 3: no state precisions, every buffer in full precision.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckpointV3<R, A> {
    format: String,
    version: u32,
    rule: String,
    dtype: String,
    groups: Vec<GroupRecordV3<R>>,
    tensors: Vec<TensorRecordV3<A>>,
    #[serde(default, with = "super::stored_clip")]
    clip: Option<Clip>,
    #[serde(default)]
    non_finite: NonFinite,
    #[serde(default)]
    shared: Vec<ScalarRecord>,
}

/// A [`TrainingState`] of version 3.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrainingStateV3<R, A, E> {
    optimizer: CheckpointV3<R, A>,
    extras: E,
}

impl<R, A> From<CheckpointV3<R, A>> for Checkpoint<R, A> {
    fn from(v3: CheckpointV3<R, A>) -> Self {
        Checkpoint {
            format: v3.format,
            version: v3.version,
            rule: v3.rule,
            dtype: v3.dtype,
            groups: v3.groups.into_iter().map(GroupRecord::from).collect(),
            tensors: v3.tensors.into_iter().map(TensorRecord::from).collect(),
            clip: v3.clip,
            non_finite: v3.non_finite,
            shared: v3.shared,
            shard: None,
        }
    }
}

/// A [`Checkpoint`] of version 4: no rank share, every checkpoint one of whole tensors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckpointV4<R, A> {
    format: String,
    version: u32,
    rule: String,
    dtype: String,
    groups: Vec<GroupRecord<R>>,
    tensors: Vec<TensorRecord<A>>,
    #[serde(default, with = "super::stored_clip")]
    clip: Option<Clip>,
    #[serde(default)]
    non_finite: NonFinite,
    #[serde(default)]
    shared: Vec<ScalarRecord>,
}

/// A [`TrainingState`] of version 4.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrainingStateV4<R, A, E> {
    optimizer: CheckpointV4<R, A>,
    extras: E,
}

impl<R, A> From<CheckpointV4<R, A>> for Checkpoint<R, A> {
    fn from(v4: CheckpointV4<R, A>) -> Self {
        Checkpoint {
            format: v4.format,
            version: v4.version,
            rule: v4.rule,
            dtype: v4.dtype,
            groups: v4.groups,
            tensors: v4.tensors,
            clip: v4.clip,
            non_finite: v4.non_finite,
            shared: v4.shared,
            shard: None,
        }
    }
}

/// A [`GroupRecord`] of versions 2 and 3.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupRecordV3<R> {
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
struct TensorRecordV3<A> {
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

/// A [`GroupRecord`] of version 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupRecordV1<R> {
    name: String,
    hyper: R,
    #[serde(default)]
    lr: Option<f64>,
}

/// A [`TrainingState`] of version 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrainingStateV1<R, A, E> {
    optimizer: CheckpointV1<R, A>,
    extras: E,
}

impl<R, A> From<CheckpointV1<R, A>> for Checkpoint<R, A> {
    fn from(v1: CheckpointV1<R, A>) -> Self {
        let groups = v1
            .groups
            .into_iter()
            .map(|group| GroupRecord {
                name: group.name,
                hyper: group.hyper,
                lr: group.lr,
                frozen: false,
                state_precision: StatePrecision::Full,
            })
            .collect();
        Checkpoint {
            format: v1.format,
            version: v1.version,
            rule: v1.rule,
            dtype: v1.dtype,
            groups,
            tensors: v1.tensors.into_iter().map(TensorRecord::from).collect(),
            clip: v1.clip,
            non_finite: v1.non_finite,
            shared: Vec::new(),
            shard: None,
        }
    }
}

impl<R, A> Versioned<R, A> for Checkpoint<R, A>
where
    R: DeserializeOwned,
    A: DeserializeOwned,
{
    type V1 = CheckpointV1<R, A>;

    fn from_v1(v1: Self::V1) -> Self {
        v1.into()
    }

    type V2 = CheckpointV2<R, A>;

    fn from_v2(v2: Self::V2) -> Self {
        v2.into()
    }

    type V3 = CheckpointV3<R, A>;

    fn from_v3(v3: Self::V3) -> Self {
        v3.into()
    }

    type V4 = CheckpointV4<R, A>;

    fn from_v4(v4: Self::V4) -> Self {
        v4.into()
    }

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
    type V1 = TrainingStateV1<R, A, E>;

    fn from_v1(v1: Self::V1) -> Self {
        TrainingState { optimizer: v1.optimizer.into(), extras: v1.extras }
    }

    type V2 = TrainingStateV2<R, A, E>;

    fn from_v2(v2: Self::V2) -> Self {
        TrainingState { optimizer: v2.optimizer.into(), extras: v2.extras }
    }

    type V3 = TrainingStateV3<R, A, E>;

    fn from_v3(v3: Self::V3) -> Self {
        TrainingState { optimizer: v3.optimizer.into(), extras: v3.extras }
    }

    type V4 = TrainingStateV4<R, A, E>;

    fn from_v4(v4: Self::V4) -> Self {
        TrainingState { optimizer: v4.optimizer.into(), extras: v4.extras }
    }

    fn checkpoint(&self) -> &Checkpoint<R, A> {
        &self.optimizer
    }
}
