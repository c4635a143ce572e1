//! [`MultiSteps`] in serde formats: written from where the state is, checked when read.

use std::borrow::Cow;
use std::path::Path;

use hashbrown::HashMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Mean, MultiSteps};
use crate::checkpoint::{Encoding, check_extras_json, representable};
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
        let optimizer = Cow::Borrowed(&self.optimizer);
        Record { every_k: self.every_k, optimizer, means: self.mean_records() }
            .serialize(serializer)
    }
}

impl<R: UpdateRule, A: Element> MultiSteps<R, A> {
    /// The means of the tensors between two optimizer steps, sorted by name.
    fn mean_records(&self) -> Vec<MeanRecord<'_, A>> {
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
        means
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

/// What a training-state file keeps of a [`MultiSteps`] next to its optimizer.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Accumulation<'a, A: Clone> {
    every_k: u64,
    means: Vec<MeanRecord<'a, A>>,
}

impl<R, A> MultiSteps<R, A>
where
    R: UpdateRule + Serialize + DeserializeOwned,
    A: Element + Serialize + DeserializeOwned,
{
    /// Saves the optimizer, the running means of the micro-batches since its last step and the
    /// rest of a training run's state, `extras`, to one training-state file, as
    /// [`Optimizer::save_with`] saves an optimizer: a run saved between two optimizer steps
    /// resumes bit for bit.
    ///
    /// ```
    /// use ndarray::array;
    /// use ndarray_optim::checkpoint::Encoding;
    /// use ndarray_optim::{Adam, MultiSteps, Optimizer};
    ///
    /// let path = std::env::temp_dir().join(format!("doc-multi-{}.ckpt", std::process::id()));
    /// let mut opt = MultiSteps::new(Optimizer::<Adam, f64>::new(Adam::default())?, 4)?;
    /// let mut w = array![1.0, -1.0];
    /// for micro_batch in 0..6 {
    ///     let g = &w * micro_batch as f64;
    ///     opt.step("w", &mut w, &g)?;
    /// }
    /// opt.save_with(&path, Encoding::Postcard, &6_u64)?; // 2 micro-batches into a step
    /// let (restored, micro_batch): (MultiSteps<Adam, f64>, u64) = MultiSteps::load_with(&path)?;
    /// assert_eq!((restored.micro_steps("w"), micro_batch), (2, 6));
    /// assert!(restored == opt);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Optimizer::save_with`]; in JSON also [`Error::Encode`] for a mean that is not
    /// finite.
    pub fn save_with<E>(&self, path: impl AsRef<Path>, encoding: Encoding, extras: &E) -> Result<()>
    where
        E: Serialize + DeserializeOwned,
    {
        let accumulation = Accumulation { every_k: self.every_k, means: self.mean_records() };
        if encoding == Encoding::Json {
            check_extras_json(&accumulation, "the accumulated means")?;
            check_extras_json(extras, "the extras")?;
        }
        self.optimizer.save_training(path.as_ref(), encoding, &(accumulation, extras))
    }

    /// Loads a [`MultiSteps`] and the rest of a training run's state from a file written by
    /// [`save_with`](Self::save_with), checking the optimizer as [`Optimizer::load_with`]
    /// does and the means as deserializing a `MultiSteps` does.
    ///
    /// # Errors
    /// As [`Optimizer::load_with`], and [`Error::InvalidTensorState`] or
    /// [`Error::DuplicateParam`] for means that do not fit (see the serde form).
    pub fn load_with<E: Serialize + DeserializeOwned>(path: impl AsRef<Path>) -> Result<(Self, E)> {
        let (optimizer, (accumulation, extras)) =
            Optimizer::<R, A>::load_with::<(Accumulation<'static, A>, E)>(path)?;
        let record = Record {
            every_k: accumulation.every_k,
            optimizer: Cow::Owned(optimizer),
            means: accumulation.means,
        };
        Ok((restore(record)?, extras))
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
