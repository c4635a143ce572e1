//! One file for the whole state of a training run: the optimizer's checkpoint and whatever
//! else the run keeps (schedulers, weight averages, accumulated gradients), saved together.

use std::io;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::file::{
    Encoding, decode, json_refusal, read_framed, save_error, write_atomically, write_framed,
};
use super::finite::{NonFinite, first_non_finite};
use super::serde_impl::Live;
use super::{Checkpoint, TRAINING_FORMAT, VERSION};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::rule::UpdateRule;

/// The state of a training run: an optimizer's [`Checkpoint`] and the run's other state,
/// `extras` (any serde type: a scheduler, a tuple of a scheduler and a weight average, a
/// struct of your own), restored together from one file.
///
/// A training-state file has the header of a checkpoint file, with the format
/// [`TRAINING_FORMAT`], and the same guarantees: it is replaced atomically, its length and
/// checksum are checked before anything is decoded, a newer version is refused, and it is
/// read with bounded memory whatever the file holds. Loading the optimizer checks all of it
/// ([`Optimizer::load_with`]); to restore against a model that may have changed, read the
/// file with [`load`](Self::load) and pass `optimizer` to
/// [`Optimizer::load_state`](crate::Optimizer::load_state), strict or lenient. `extras` are
/// checked by their own `Deserialize` (a scheduler refuses a position that no run reaches).
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::checkpoint::Encoding;
/// use ndarray_optim::schedule::{LrScheduler, Schedule};
/// use ndarray_optim::{AdamW, Optimizer};
///
/// let path = std::env::temp_dir().join(format!("doc-training-{}.ckpt", std::process::id()));
/// let mut opt = Optimizer::new(AdamW { lr: 0.1, ..AdamW::default() })?;
/// let mut scheduler = LrScheduler::new(&mut opt, Schedule::Cosine { t_max: 10, eta_min: 0.0 })?;
/// let mut w = array![1.0_f32, -1.0];
/// for _ in 0..3 {
///     let g = &w * 2.0;
///     opt.step("w", &mut w, &g)?;
///     scheduler.step(&mut opt)?;
/// }
/// opt.save_with(&path, Encoding::Postcard, &scheduler)?;
///
/// let (restored, restored_scheduler): (Optimizer<AdamW, f32>, LrScheduler) =
///     Optimizer::load_with(&path)?;
/// assert_eq!((restored, restored_scheduler), (opt, scheduler));
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingState<R, A, E> {
    /// The optimizer's state.
    pub optimizer: Checkpoint<R, A>,
    /// The rest of the run's state.
    pub extras: E,
}

/// A [`TrainingState`] serialized from a live optimizer, without copying its state.
#[derive(Serialize)]
#[serde(rename = "TrainingState")]
struct LiveTraining<'a, R: UpdateRule, A: Element, E> {
    optimizer: Live<'a, R, A>,
    extras: &'a E,
}

/// Refuses extras that JSON cannot store: a NaN or infinity anywhere in them (JSON writes it
/// as `null`, which a float does not read back from and an `Option` reads back as `None`),
/// named by where it sits in `what` (such as "the extras"), and extras that do not read back
/// from their JSON at all.
pub(crate) fn check_extras_json<E: Serialize + DeserializeOwned>(
    extras: &E,
    what: &str,
) -> Result<()> {
    if let Some(NonFinite { path, value }) = first_non_finite(extras) {
        return Err(if path.is_empty() {
            json_refusal(format_args!("{what} are {value}"))
        } else {
            json_refusal(format_args!("`{path}` of {what} is {value}"))
        });
    }
    let json = serde_json::to_vec(extras).map_err(|e| Error::Encode { reason: e.to_string() })?;
    serde_json::from_slice::<E>(&json).map(drop).map_err(|e| Error::Encode {
        reason: format!("{what} do not read back from JSON ({e}); save in postcard"),
    })
}

impl<R, A, E> TrainingState<R, A, E>
where
    R: UpdateRule + Serialize + DeserializeOwned,
    A: Element + Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned,
{
    fn check_encodable(&self, encoding: Encoding) -> Result<()> {
        self.optimizer.check_encodable(encoding)?;
        match encoding {
            Encoding::Json => check_extras_json(&self.extras, "the extras"),
            Encoding::Postcard => Ok(()),
        }
    }

    fn kind(&self) -> (&'static str, u32, &str, &str) {
        let optimizer = &self.optimizer;
        (TRAINING_FORMAT, VERSION, &optimizer.rule, &optimizer.dtype)
    }

    /// The state as bytes: the header line of a checkpoint (with [`TRAINING_FORMAT`]) and
    /// the payload in `encoding`.
    ///
    /// # Errors
    /// As [`Checkpoint::to_bytes`]; in JSON also [`Error::Encode`] for extras holding a NaN
    /// or infinity anywhere, named by where it sits, or not reading back from JSON.
    pub fn to_bytes(&self, encoding: Encoding) -> Result<Vec<u8>> {
        self.check_encodable(encoding)?;
        let mut bytes = Vec::new();
        write_framed(&mut bytes, self, encoding, self.kind())
            .map_err(|error| save_error(Path::new(""), &error))?;
        Ok(bytes)
    }

    /// Reads bytes written by [`to_bytes`](Self::to_bytes) or
    /// [`Optimizer::save_with`], with the checks of [`Checkpoint::from_bytes`].
    ///
    /// # Errors
    /// As [`Checkpoint::from_bytes`]; [`Error::CheckpointMismatch`] (field `"kind"`) for an
    /// optimizer checkpoint, which has no extras.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        decode::<R, A, Self>(bytes, TRAINING_FORMAT)
    }

    /// Writes the state to `path`, crash-safe, as [`Optimizer::save`] writes a checkpoint.
    ///
    /// # Errors
    /// As [`to_bytes`](Self::to_bytes), and [`Error::Io`] as [`Optimizer::save`].
    pub fn save(&self, path: impl AsRef<Path>, encoding: Encoding) -> Result<()> {
        self.check_encodable(encoding)?;
        let kind = self.kind();
        write_atomically(path.as_ref(), |file| write_framed(file, self, encoding, kind))
    }

    /// Reads a file written by [`save`](Self::save) or [`Optimizer::save_with`], with the
    /// bounds of [`Checkpoint::load`].
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, else as [`from_bytes`](Self::from_bytes).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_bytes(&read_framed(path.as_ref(), TRAINING_FORMAT)?)
    }
}

impl<R, A> Optimizer<R, A>
where
    R: UpdateRule + Serialize + DeserializeOwned,
    A: Element + Serialize + DeserializeOwned,
{
    /// Saves the optimizer and the rest of a training run's state, `extras`, to one file,
    /// crash-safe: a [`TrainingState`]. The optimizer's state is encoded straight into the
    /// file, as by [`save`](Self::save).
    ///
    /// # Errors
    /// As [`save`](Self::save); in JSON also [`Error::Encode`] for extras holding a NaN or
    /// infinity anywhere (inside an `Option` too, which JSON would turn into `None`), named
    /// by where it sits, and for extras that do not read back from JSON.
    pub fn save_with<E>(&self, path: impl AsRef<Path>, encoding: Encoding, extras: &E) -> Result<()>
    where
        E: Serialize + DeserializeOwned,
    {
        if encoding == Encoding::Json {
            check_extras_json(extras, "the extras")?;
        }
        self.save_training(path.as_ref(), encoding, extras)
    }

    /// [`save_with`](Self::save_with) of extras already checked for `encoding`.
    pub(crate) fn save_training<E: Serialize>(
        &self,
        path: &Path,
        encoding: Encoding,
        extras: &E,
    ) -> Result<()> {
        self.check_saveable(encoding)?;
        let state = LiveTraining { optimizer: Live(self), extras };
        let kind = (TRAINING_FORMAT, VERSION, R::NAME, A::NAME);
        write_atomically(path, |file| -> io::Result<()> {
            write_framed(file, &state, encoding, kind)
        })
    }

    /// Loads an optimizer and the rest of a training run's state from a file written by
    /// [`save_with`](Self::save_with), checking all of the optimizer's state as
    /// [`load`](Self::load) does.
    ///
    /// # Errors
    /// As [`TrainingState::load`], then as [`from_checkpoint`](Self::from_checkpoint).
    pub fn load_with<E: Serialize + DeserializeOwned>(path: impl AsRef<Path>) -> Result<(Self, E)> {
        let TrainingState { optimizer, extras } = TrainingState::<R, A, E>::load(path)?;
        Ok((Self::from_checkpoint(optimizer)?, extras))
    }
}
