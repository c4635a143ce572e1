//! Files of older format versions: their records as those versions laid them out, read by
//! the header's version and converted. Postcard stores fields by position, so an older
//! payload can only be read with its own version's fields, never with serde defaults
//! filling in the rest.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{Checkpoint, GroupRecord, TensorRecord, TrainingState};
use crate::clip::Clip;
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
    tensors: Vec<TensorRecord<A>>,
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
    groups: Vec<GroupRecord<R>>,
    tensors: Vec<TensorRecord<A>>,
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

impl<R, A> From<CheckpointV2<R, A>> for Checkpoint<R, A> {
    fn from(v2: CheckpointV2<R, A>) -> Self {
        Checkpoint {
            format: v2.format,
            version: v2.version,
            rule: v2.rule,
            dtype: v2.dtype,
            groups: v2.groups,
            tensors: v2.tensors,
            clip: v2.clip,
            non_finite: v2.non_finite,
            shared: Vec::new(),
        }
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
            })
            .collect();
        Checkpoint {
            format: v1.format,
            version: v1.version,
            rule: v1.rule,
            dtype: v1.dtype,
            groups,
            tensors: v1.tensors,
            clip: v1.clip,
            non_finite: v1.non_finite,
            shared: Vec::new(),
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

    fn checkpoint(&self) -> &Checkpoint<R, A> {
        &self.optimizer
    }
}
