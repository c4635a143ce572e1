//! The optimizer's whole state as plain data, validated on the way back in.
//!
//! [`Optimizer::checkpoint`] copies the state into a [`Checkpoint`]; with the `serde` feature
//! (on by default) that is what an [`Optimizer`] serializes as, in any serde format, and
//! deserializing an [`Optimizer`] validates the data through
//! [`Optimizer::from_checkpoint`]. Buffer values are stored in row-major order whatever the
//! memory layout they had, so a checkpoint does not depend on layouts.

use std::collections::HashMap;

use ndarray::Order;

use crate::clip::Clip;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::guard::NonFinite;
use crate::optimizer::Optimizer;
use crate::registry::{DEFAULT_GROUP, Registry, Slot, TensorState};
use crate::rule::UpdateRule;

/// The format name written into every checkpoint.
pub const FORMAT: &str = "ndarray-optim";

/// The format version this build writes. It reads every version from 1 up to this one.
pub const VERSION: u32 = 1;

/// An optimizer's complete state: rule, hyperparameters and current learning rate of every
/// group, every named tensor's group, step count and buffers, and the optimizer's gradient
/// clipping and non-finite policy.
///
/// The last three are optional in serde formats and left out when unset, so a checkpoint of
/// an optimizer that uses none of them reads exactly as before they existed.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Checkpoint<R, A> {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version, [`VERSION`] when written by this build.
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
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub clip: Option<Clip>,
    /// What steps do with non-finite gradients.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_default"))]
    pub non_finite: NonFinite,
}

#[cfg(feature = "serde")]
fn is_default(policy: &NonFinite) -> bool {
    *policy == NonFinite::default()
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
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub lr: Option<f64>,
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
    /// The rule's buffers in the order of [`UpdateRule::state_names`].
    pub buffers: Vec<BufferRecord<A>>,
}

/// One state buffer of one tensor in a [`Checkpoint`].
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct BufferRecord<A> {
    /// The buffer's name, e.g. `"exp_avg"`.
    pub name: String,
    /// Its values in row-major order.
    pub values: Vec<A>,
}

impl<A: Element> TensorState<A> {
    fn record(&self, names: &[&str]) -> StateRecord<A> {
        let buffers = names
            .iter()
            .enumerate()
            .map(|(index, name)| BufferRecord {
                name: (*name).to_owned(),
                values: self.buffer(index).iter().copied().collect(),
            })
            .collect();
        StateRecord { step: self.step, shape: self.shape.clone(), buffers }
    }
}

fn invalid_state(param: &str, reason: String) -> Error {
    Error::InvalidTensorState { param: param.to_owned(), reason }
}

fn restore_state<A: Element>(
    param: &str,
    record: StateRecord<A>,
    rule: &'static str,
    state_names: &[&str],
) -> Result<TensorState<A>> {
    if record.step == 0 {
        return Err(invalid_state(param, "step count 0 with state".to_owned()));
    }
    let names: Vec<&str> = record.buffers.iter().map(|buffer| buffer.name.as_str()).collect();
    if names != state_names {
        return Err(invalid_state(
            param,
            format!(
                "buffers are {names:?}, `{rule}` with its group's settings keeps {state_names:?}"
            ),
        ));
    }
    let numel = record
        .shape
        .iter()
        .try_fold(1_usize, |product, &len| product.checked_mul(len))
        .ok_or_else(|| invalid_state(param, format!("shape {:?} overflows", record.shape)))?;
    if let Some(buffer) = record.buffers.iter().find(|buffer| buffer.values.len() != numel) {
        return Err(invalid_state(
            param,
            format!(
                "buffer `{}` has {} values, shape {:?} needs {numel}",
                buffer.name,
                buffer.values.len(),
                record.shape
            ),
        ));
    }
    let mut buffers = Vec::with_capacity(state_names.len() * numel);
    for buffer in record.buffers {
        buffers.extend(buffer.values);
    }
    Ok(TensorState {
        step: record.step,
        shape: record.shape,
        order: Order::RowMajor,
        order_pending: true,
        buffers,
    })
}

impl<R: UpdateRule, A: Element> Optimizer<R, A> {
    /// A copy of the optimizer's whole state.
    pub fn checkpoint(&self) -> Checkpoint<R, A> {
        let registry = &self.registry;
        let mut tensors: Vec<TensorRecord<A>> = registry
            .slots
            .iter()
            .map(|(name, slot)| TensorRecord {
                name: name.clone(),
                group: registry.groups[slot.group].name.clone(),
                state: slot
                    .tensor
                    .as_ref()
                    .map(|tensor| tensor.record(registry.groups[slot.group].hyper.state_names())),
            })
            .collect();
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Checkpoint {
            format: FORMAT.to_owned(),
            version: VERSION,
            rule: R::NAME.to_owned(),
            dtype: A::NAME.to_owned(),
            groups: registry
                .groups
                .iter()
                .map(|group| GroupRecord {
                    name: group.name.clone(),
                    hyper: group.hyper.clone(),
                    lr: group.scheduled_lr,
                })
                .collect(),
            tensors,
            clip: self.clip,
            non_finite: self.non_finite,
        }
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
        let Checkpoint { format, version, rule, dtype, groups, tensors, clip, non_finite } =
            checkpoint;
        if format != FORMAT || !(1..=VERSION).contains(&version) {
            return Err(Error::UnsupportedCheckpoint { format, version });
        }
        if rule != R::NAME {
            return Err(Error::CheckpointMismatch {
                field: "rule",
                expected: R::NAME,
                found: rule,
            });
        }
        if dtype != A::NAME {
            return Err(Error::CheckpointMismatch {
                field: "dtype",
                expected: A::NAME,
                found: dtype,
            });
        }
        let scheduled: Vec<Option<f64>> = groups.iter().map(|group| group.lr).collect();
        let mut groups = groups.into_iter();
        let default = match groups.next() {
            Some(first) if first.name == DEFAULT_GROUP => first.hyper,
            _ => return Err(Error::UnknownGroup { group: DEFAULT_GROUP.to_owned() }),
        };
        let mut registry = Registry::<R, A>::new(default)?;
        for group in groups {
            registry.add_group(&group.name, group.hyper)?;
        }
        for (group, lr) in registry.groups.iter_mut().zip(scheduled) {
            if let Some(value) = lr.filter(|lr| !(lr.is_finite() && *lr >= 0.0)) {
                return Err(Error::InvalidHyperparameter {
                    rule: R::NAME,
                    key: "lr",
                    value,
                    requirement: "finite and >= 0 (a scheduled rate)",
                });
            }
            group.scheduled_lr = lr;
        }
        if let Some(clip) = &clip {
            clip.validate()?;
        }
        let mut slots = HashMap::with_capacity(tensors.len());
        for record in tensors {
            let group = registry.group_index(&record.group)?;
            let state_names = registry.groups[group].hyper.state_names();
            let tensor = record
                .state
                .map(|state| restore_state(&record.name, state, R::NAME, state_names))
                .transpose()?;
            if slots.contains_key(&record.name) {
                return Err(Error::DuplicateParam { param: record.name });
            }
            slots.insert(record.name, Slot { group, tensor });
        }
        registry.slots = slots;
        Ok(Optimizer { registry, clip, non_finite })
    }
}

#[cfg(feature = "serde")]
mod serde_impl {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Checkpoint;
    use crate::element::Element;
    use crate::optimizer::Optimizer;
    use crate::rule::UpdateRule;

    /// Serializes as the optimizer's [`Checkpoint`].
    impl<R, A> Serialize for Optimizer<R, A>
    where
        R: UpdateRule + Serialize,
        A: Element + Serialize,
    {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            self.checkpoint().serialize(serializer)
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
