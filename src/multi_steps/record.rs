//! [`MultiSteps`] in serde formats: written from where the state is, checked when read.

use std::borrow::Cow;

use hashbrown::HashMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Mean, MultiSteps};
use crate::checkpoint::representable;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::rule::UpdateRule;

/// The serialized form of a [`MultiSteps`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(bound(
    serialize = "R: UpdateRule + Serialize, A: Element + Serialize",
    deserialize = "R: UpdateRule + Deserialize<'de>, A: Element + Deserialize<'de>"
))]
struct Record<'a, R: UpdateRule, A: Element> {
    every_k: u64,
    /// The optimizer's checkpoint.
    optimizer: Cow<'a, Optimizer<R, A>>,
    /// The means of the tensors between two optimizer steps, sorted by name (the others are
    /// zeros).
    means: Vec<MeanRecord<'a, A>>,
}

/// The running mean of one tensor.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeanRecord<'a, A: Clone> {
    name: Cow<'a, str>,
    /// Micro-batches in the mean, from 1 to k − 1.
    micro_steps: u64,
    shape: Cow<'a, [usize]>,
    /// Row-major.
    values: Cow<'a, [A]>,
}

impl<R, A> Serialize for MultiSteps<R, A>
where
    R: UpdateRule + Serialize,
    A: Element + Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut means: Vec<MeanRecord<'_, A>> = self
            .means
            .iter()
            .filter(|(_, mean)| mean.micro_steps > 0)
            .map(|(name, mean)| MeanRecord {
                name: Cow::Borrowed(name),
                micro_steps: mean.micro_steps,
                shape: Cow::Borrowed(&mean.shape),
                values: Cow::Borrowed(&mean.values),
            })
            .collect();
        means.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Record { every_k: self.every_k, optimizer: Cow::Borrowed(&self.optimizer), means }
            .serialize(serializer)
    }
}

/// Deserializes and checks k, the optimizer's checkpoint and every mean; a failed check
/// becomes the format's custom error.
impl<'de, R, A> Deserialize<'de> for MultiSteps<R, A>
where
    R: UpdateRule + Deserialize<'de>,
    A: Element + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = Record::<R, A>::deserialize(deserializer)?;
        restore(record).map_err(serde::de::Error::custom)
    }
}

fn restore<R: UpdateRule, A: Element>(record: Record<'_, R, A>) -> Result<MultiSteps<R, A>> {
    let mut steps = MultiSteps::new(record.optimizer.into_owned(), record.every_k)?;
    let mut means = HashMap::with_capacity(record.means.len());
    for mean in record.means {
        let name = mean.name.into_owned();
        let invalid = |reason: String| Error::InvalidTensorState { param: name.clone(), reason };
        if !representable(&mean.shape) {
            return Err(invalid(format!("shape {:?} overflows", mean.shape)));
        }
        if !(1..steps.every_k).contains(&mean.micro_steps) {
            return Err(invalid(format!(
                "a mean of {} micro-batches, which steps every {} do not keep",
                mean.micro_steps, steps.every_k
            )));
        }
        let numel = mean.shape.iter().product::<usize>();
        if mean.values.len() != numel {
            return Err(invalid(format!(
                "a mean of {} values for shape {:?}",
                mean.values.len(),
                mean.shape
            )));
        }
        let state = steps.optimizer.state_of(&name);
        if let Some(shape) = state.and_then(|state| state.shape()).filter(|s| *s != &*mean.shape) {
            return Err(invalid(format!(
                "a mean of shape {:?} for a tensor whose optimizer state has shape {shape:?}",
                mean.shape
            )));
        }
        let mean = Mean {
            micro_steps: mean.micro_steps,
            shape: mean.shape.into_owned(),
            values: mean.values.into_owned(),
        };
        if means.insert(name.clone(), mean).is_some() {
            return Err(Error::DuplicateParam { param: name, in_what: "means" });
        }
    }
    steps.in_flight = means.len();
    steps.means = means;
    Ok(steps)
}
