//! [`AveragedModel`] in serde formats: written from where the averages are, checked when
//! read.

use std::borrow::Cow;

use hashbrown::HashMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Average, AveragedModel, Averaging};
use crate::checkpoint::representable;
use crate::element::Element;
use crate::error::{Error, Result};

/// The serialized form of an [`AveragedModel`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record<'a, S: Clone> {
    averaging: Averaging,
    /// The averages' element type, [`Element::NAME`].
    dtype: Cow<'a, str>,
    /// Sorted by name.
    tensors: Vec<TensorRecord<'a, S>>,
}

/// The average of one tensor.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorRecord<'a, S: Clone> {
    name: Cow<'a, str>,
    count: u64,
    shape: Cow<'a, [usize]>,
    swapped: bool,
    /// Row-major: the average, after the raw EMA of a debiased optax EMA.
    buffers: Cow<'a, [S]>,
}

impl<A: Element, S: Element + Serialize> Serialize for AveragedModel<A, S> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        let mut tensors: Vec<TensorRecord<'_, S>> = self
            .tensors
            .iter()
            .map(|(name, average)| TensorRecord {
                name: Cow::Borrowed(name),
                count: average.count,
                shape: Cow::Borrowed(&average.shape),
                swapped: average.swapped,
                buffers: Cow::Borrowed(&average.buffers),
            })
            .collect();
        tensors.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Record { averaging: self.averaging, dtype: Cow::Borrowed(S::NAME), tensors }
            .serialize(serializer)
    }
}

/// Deserializes and checks the averaging, the element type and every tensor's record; a
/// failed check becomes the format's custom error.
impl<'de, A: Element, S: Element + Deserialize<'de>> Deserialize<'de> for AveragedModel<A, S> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = Record::<S>::deserialize(deserializer)?;
        restore(record).map_err(serde::de::Error::custom)
    }
}

fn restore<A: Element, S: Element>(record: Record<'_, S>) -> Result<AveragedModel<A, S>> {
    let mut model = AveragedModel::new(record.averaging)?;
    if record.dtype != S::NAME {
        return Err(Error::CheckpointMismatch {
            field: "dtype",
            expected: S::NAME,
            found: record.dtype.into_owned(),
        });
    }
    let mut tensors = HashMap::with_capacity(record.tensors.len());
    for tensor in record.tensors {
        let name = tensor.name.into_owned();
        let invalid = |reason: String| Error::InvalidTensorState { param: name.clone(), reason };
        if !representable(&tensor.shape) {
            return Err(invalid(format!("shape {:?} overflows", tensor.shape)));
        }
        if tensor.count == 0 {
            return Err(invalid("an average of no snapshots".to_owned()));
        }
        let len = model.averaging.buffers() * tensor.shape.iter().product::<usize>();
        if tensor.buffers.len() != len {
            return Err(invalid(format!(
                "{} values, {:?} with shape {:?} keeps {len}",
                tensor.buffers.len(),
                model.averaging,
                tensor.shape
            )));
        }
        let average = Average {
            count: tensor.count,
            shape: tensor.shape.into_owned(),
            buffers: tensor.buffers.into_owned(),
            swapped: tensor.swapped,
            batch: 0,
        };
        if tensors.insert(name.clone(), average).is_some() {
            return Err(Error::DuplicateParam { param: name, in_what: "averages" });
        }
    }
    model.tensors = tensors;
    Ok(model)
}
