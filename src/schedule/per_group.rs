//! [`PerGroup`]: a schedule's setting for every parameter group at once, or one per group.

use crate::check::require;
use crate::error::{Error, Result};

/// A setting of a schedule for the optimizer's parameter groups: one value for all of them,
/// or one per group in the optimizer's order (the default group first), as PyTorch's
/// schedulers take a float or a list for `max_lr`, `base_lr`, `swa_lr` and the momenta.
///
/// A list must have exactly one value per group when the schedule runs: a scheduler whose
/// list does not fit the optimizer's groups (at its start, or after a group was added) is
/// refused with [`Error::InvalidSchedule`], as PyTorch raises a `ValueError`.
///
/// In human-readable serde formats it is a number or a list of numbers.
///
/// ```
/// use ndarray_optim::schedule::PerGroup;
///
/// assert_eq!(PerGroup::from(0.1), PerGroup::All(0.1));
/// let each: PerGroup = serde_json::from_str("[0.1, 0.01]").unwrap();
/// assert_eq!(each, PerGroup::Each(vec![0.1, 0.01]));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum PerGroup {
    /// The same value for every group.
    All(f64),
    /// One value per group, in the optimizer's order.
    Each(Vec<f64>),
}

impl From<f64> for PerGroup {
    fn from(value: f64) -> Self {
        PerGroup::All(value)
    }
}

impl From<Vec<f64>> for PerGroup {
    fn from(values: Vec<f64>) -> Self {
        PerGroup::Each(values)
    }
}

impl PerGroup {
    /// The value of the group at `index`; [`check_groups`](Self::check_groups) has passed.
    pub(crate) fn get(&self, index: usize) -> f64 {
        match self {
            PerGroup::All(value) => *value,
            PerGroup::Each(values) => values[index],
        }
    }

    /// Every value given.
    pub(crate) fn values(&self) -> &[f64] {
        match self {
            PerGroup::All(value) => core::slice::from_ref(value),
            PerGroup::Each(values) => values,
        }
    }

    /// Checks every value with `check` and that a list is not empty.
    pub(crate) fn validate(
        &self,
        owner: &'static str,
        key: &'static str,
        check: fn(&'static str, &'static str, f64) -> Result<()>,
    ) -> Result<()> {
        let count = self.values().len();
        require(count > 0, owner, key, count as f64, "a number or a list of numbers, not []")?;
        self.values().iter().try_for_each(|&value| check(owner, key, value))
    }

    /// Fails unless there is a value for each of `groups` groups.
    pub(crate) fn check_groups(
        &self,
        owner: &'static str,
        key: &'static str,
        groups: usize,
    ) -> Result<()> {
        match self {
            PerGroup::Each(values) if values.len() != groups => Err(Error::InvalidSchedule {
                reason: format!(
                    "`{key}` of the `{owner}` schedule has {} values for {groups} parameter \
                     groups (one value for all groups, or one per group)",
                    values.len()
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// In human-readable formats a number or a list, as in PyTorch; elsewhere (postcard) the
/// variant's index followed by its value.
#[cfg(feature = "serde")]
mod stored {
    use core::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::PerGroup;

    impl Serialize for PerGroup {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match self {
                _ if !serializer.is_human_readable() => Indexed::serialize(self, serializer),
                PerGroup::All(value) => serializer.serialize_f64(*value),
                PerGroup::Each(values) => values.serialize(serializer),
            }
        }
    }

    impl<'de> Deserialize<'de> for PerGroup {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            if deserializer.is_human_readable() {
                deserializer.deserialize_any(NumberOrList)
            } else {
                Indexed::deserialize(deserializer)
            }
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "PerGroup")]
    enum Indexed {
        All(f64),
        Each(Vec<f64>),
    }

    struct NumberOrList;

    impl<'de> Visitor<'de> for NumberOrList {
        type Value = PerGroup;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, or a list of one number per parameter group")
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<PerGroup, E> {
            Ok(PerGroup::All(value))
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<PerGroup, E> {
            Ok(PerGroup::All(value as f64))
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<PerGroup, E> {
            Ok(PerGroup::All(value as f64))
        }

        fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<PerGroup, S::Error> {
            let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(value) = seq.next_element()? {
                values.push(value);
            }
            Ok(PerGroup::Each(values))
        }
    }
}
