//! Checkpoint bytes and files: a checked header around a JSON or postcard payload, written
//! to disk so that a crash never leaves a torn file in place of a whole one.
//!
//! The bytes are one ASCII header line, then the payload:
//!
//! ```text
//! ndarray-optim 1 postcard adam f32 1234 0a1b2c3d\n<1234 bytes of payload>
//! ```
//!
//! format, format version, encoding, rule, element type, payload length in bytes, and the
//! CRC-32 of everything before the checksum field together with the payload. The format and
//! version come first and keep their place in every version, so that a checkpoint of a newer
//! version is recognised and refused before anything else is read; the length and checksum
//! refuse truncated and altered bytes before the payload is decoded.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Checkpoint, FORMAT, VERSION, check_kind};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::rule::UpdateRule;

/// How a checkpoint's payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// JSON, for people to read and diff. Floats are written so that they read back
    /// bit-for-bit, but JSON has no infinities or NaN: state holding one is refused on saving.
    Json,
    /// [postcard](https://docs.rs/postcard), compact binary: each value in its 4 or 8 bytes
    /// (JSON takes two to three times that), NaN and infinities included, stored bit-for-bit.
    Postcard,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Postcard => "postcard",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Encoding::Json, Encoding::Postcard].into_iter().find(|encoding| encoding.name() == name)
    }
}

/// The header is one short line; anything longer is not a checkpoint.
const MAX_HEADER: usize = 256;

fn corrupt(reason: impl Into<String>) -> Error {
    Error::CorruptCheckpoint { reason: reason.into() }
}

fn io_error(path: &Path, error: &io::Error) -> Error {
    Error::Io { path: path.to_owned(), kind: error.kind(), message: error.to_string() }
}

impl<R, A> Checkpoint<R, A>
where
    R: UpdateRule + Serialize + DeserializeOwned,
    A: Element + Serialize + DeserializeOwned,
{
    /// The checkpoint as bytes: a header line (format, version, encoding, rule, element type,
    /// length, CRC-32) followed by the payload in `encoding`.
    ///
    /// # Errors
    /// [`Error::Encode`] if the payload cannot be encoded: in JSON, state that holds an
    /// infinity or NaN (named by tensor and buffer); a rule whose name is empty or has
    /// spaces. [`Error::UnsupportedCheckpoint`] or [`Error::CheckpointMismatch`] for a
    /// checkpoint edited to another format, version, rule or element type than its types.
    pub fn to_bytes(&self, encoding: Encoding) -> Result<Vec<u8>> {
        self.check_kind()?;
        if R::NAME.is_empty() || R::NAME.contains(char::is_whitespace) {
            return Err(Error::Encode {
                reason: format!("the rule name `{}` is empty or has spaces", R::NAME),
            });
        }
        let payload = match encoding {
            Encoding::Json => {
                self.check_finite()?;
                serde_json::to_vec(self).map_err(|e| Error::Encode { reason: e.to_string() })?
            }
            Encoding::Postcard => {
                postcard::to_stdvec(self).map_err(|e| Error::Encode { reason: e.to_string() })?
            }
        };
        let head = format!(
            "{FORMAT} {} {} {} {} {} ",
            self.version,
            encoding.name(),
            self.rule,
            self.dtype,
            payload.len()
        );
        let mut bytes = Vec::with_capacity(head.len() + 9 + payload.len());
        bytes.extend_from_slice(head.as_bytes());
        bytes
            .extend_from_slice(format!("{:08x}\n", checksum(head.as_bytes(), &payload)).as_bytes());
        bytes.extend_from_slice(&payload);
        Ok(bytes)
    }

    /// Reads bytes written by [`to_bytes`](Self::to_bytes), in either encoding.
    ///
    /// The header is checked first: format and version, then length and checksum (so
    /// truncated or altered bytes are refused before decoding), then rule and element type.
    /// The payload is then decoded; the checkpoint's contents are checked by
    /// [`Optimizer::from_checkpoint`] or [`Optimizer::load_state`].
    ///
    /// # Errors
    /// - [`Error::UnsupportedCheckpoint`] for a format version this build does not read;
    /// - [`Error::CorruptCheckpoint`] for bytes that are not a whole checkpoint: no header,
    ///   a length or checksum that does not match, a payload that does not decode;
    /// - [`Error::CheckpointMismatch`] for another rule or element type.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let end = bytes
            .iter()
            .take(MAX_HEADER)
            .position(|&byte| byte == b'\n')
            .ok_or_else(|| corrupt("no checkpoint header line"))?;
        let header = std::str::from_utf8(&bytes[..end])
            .map_err(|_| corrupt("the header line is not text"))?;
        let fields: Vec<&str> = header.split(' ').collect();
        if fields[0] != FORMAT {
            return Err(corrupt(format!("not an `{FORMAT}` checkpoint")));
        }
        let version = fields
            .get(1)
            .and_then(|version| version.parse::<u32>().ok())
            .ok_or_else(|| corrupt("the header has no format version"))?;
        if !(1..=VERSION).contains(&version) {
            return Err(Error::UnsupportedCheckpoint { format: FORMAT.to_owned(), version });
        }
        let &[_, _, encoding, rule, dtype, length, crc] = fields.as_slice() else {
            return Err(corrupt(format!("the header has {} fields, not 7", fields.len())));
        };
        let payload = &bytes[end + 1..];
        if length.parse::<usize>().ok() != Some(payload.len()) {
            return Err(corrupt(format!(
                "the header announces a payload of {length} bytes, {} follow",
                payload.len()
            )));
        }
        let signed = &bytes[..end - crc.len()];
        if crc.len() != 8 || u32::from_str_radix(crc, 16).ok() != Some(checksum(signed, payload)) {
            return Err(corrupt("checksum mismatch: the bytes were altered"));
        }
        check_kind::<R, A>(FORMAT, version, rule, dtype)?;
        let checkpoint: Self = match Encoding::from_name(encoding) {
            Some(Encoding::Json) => serde_json::from_slice(payload)
                .map_err(|e| corrupt(format!("JSON payload: {e}")))?,
            Some(Encoding::Postcard) => match postcard::take_from_bytes(payload) {
                Ok((checkpoint, [])) => checkpoint,
                Ok((_, rest)) => {
                    return Err(corrupt(format!("{} bytes after the payload", rest.len())));
                }
                Err(e) => return Err(corrupt(format!("postcard payload: {e}"))),
            },
            None => return Err(corrupt(format!("unknown encoding `{encoding}`"))),
        };
        // The header vouches for the payload only if both say the same.
        checkpoint.check_kind()?;
        if checkpoint.version != version {
            return Err(corrupt("header and payload differ in version"));
        }
        Ok(checkpoint)
    }

    /// Writes the checkpoint to `path` so that a crash at any moment leaves either the old
    /// file or the new one whole: the bytes go to `path` + `.tmp` in the same folder, which
    /// is flushed to disk, then renamed over `path`, and the folder is synced.
    ///
    /// # Errors
    /// [`Error::Encode`] as [`to_bytes`](Self::to_bytes); [`Error::Io`] naming the file that
    /// could not be written. If writing or renaming the temporary file failed, `path` is as
    /// it was and the temporary file is removed; if only the final sync of the folder failed
    /// (the error then names `path`), the new file is in place but a power loss may still
    /// undo the rename.
    pub fn save(&self, path: impl AsRef<Path>, encoding: Encoding) -> Result<()> {
        write_atomically(path.as_ref(), &self.to_bytes(encoding)?, |file, bytes| {
            file.write_all(bytes)
        })
    }

    /// Reads a checkpoint file written by [`save`](Self::save).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, else as [`from_bytes`](Self::from_bytes).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_bytes(&fs::read(path).map_err(|e| io_error(path, &e))?)
    }

    /// Refuses state that JSON cannot hold.
    fn check_finite(&self) -> Result<()> {
        for tensor in &self.tensors {
            for buffer in tensor.state.iter().flat_map(|state| &state.buffers) {
                if let Some(value) = buffer.values.iter().find(|value| !value.is_finite()) {
                    return Err(Error::Encode {
                        reason: format!(
                            "buffer `{}` of `{}` holds {value}, which JSON cannot store; save \
                             in postcard",
                            buffer.name, tensor.name
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

impl<R, A> Optimizer<R, A>
where
    R: UpdateRule + Serialize + DeserializeOwned,
    A: Element + Serialize + DeserializeOwned,
{
    /// Saves the whole state to `path`, crash-safe: see [`Checkpoint::save`].
    ///
    /// ```
    /// use ndarray::array;
    /// use ndarray_optim::checkpoint::Encoding;
    /// use ndarray_optim::{Adam, Optimizer};
    ///
    /// let path = std::env::temp_dir().join(format!("doc-save-{}.ckpt", std::process::id()));
    /// let mut w = array![1.0_f32, -1.0];
    /// let grad = |w: &ndarray::Array1<f32>| w * 2.0;
    ///
    /// let mut opt = Optimizer::new(Adam { lr: 0.1, ..Adam::default() })?;
    /// for _ in 0..3 {
    ///     let g = grad(&w);
    ///     opt.step("w", &mut w, &g)?;
    /// }
    /// opt.save(&path, Encoding::Postcard)?;
    /// let saved_w = w.clone(); // model weights are saved alongside
    ///
    /// // A crash here, or during a later save, leaves the file whole. A new process resumes:
    /// drop(opt);
    /// let mut opt = Optimizer::<Adam, f32>::load(&path)?;
    /// let mut resumed_w = saved_w;
    /// let g = grad(&resumed_w);
    /// opt.step("w", &mut resumed_w, &g)?;
    /// assert_eq!(opt.step_count("w"), Some(4));
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Checkpoint::save`].
    pub fn save(&self, path: impl AsRef<Path>, encoding: Encoding) -> Result<()> {
        self.checkpoint().save(path, encoding)
    }

    /// Loads an optimizer from a file written by [`save`](Self::save) and checks all of it.
    /// To restore against a model that may have changed, use [`Checkpoint::load`] and
    /// [`load_state`](Self::load_state).
    ///
    /// # Errors
    /// As [`Checkpoint::load`], then as [`from_checkpoint`](Self::from_checkpoint).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_checkpoint(Checkpoint::load(path)?)
    }
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

/// `path` with `.tmp` appended to its file name.
fn temp_path(path: &Path) -> Result<PathBuf> {
    let mut name = path
        .file_name()
        .ok_or_else(|| Error::Io {
            path: path.to_owned(),
            kind: io::ErrorKind::InvalidInput,
            message: "the path names no file".to_owned(),
        })?
        .to_owned();
    name.push(".tmp");
    Ok(path.with_file_name(name))
}

/// Writes `bytes` to a temporary file beside `path` with `write`, syncs it and renames it
/// over `path`; removes the temporary file on an error. `write` is a parameter so that tests
/// can interrupt it at any byte.
fn write_atomically(
    path: &Path,
    bytes: &[u8],
    write: impl FnOnce(&mut File, &[u8]) -> io::Result<()>,
) -> Result<()> {
    let temp = temp_path(path)?;
    let written = File::create(&temp).and_then(|mut file| {
        write(&mut file, bytes)?;
        file.sync_all()
    });
    if let Err(error) = written.and_then(|()| fs::rename(&temp, path)) {
        // Best effort: a temporary file that cannot be removed is still never `path`.
        let _ = fs::remove_file(&temp);
        return Err(io_error(&temp, &error));
    }
    sync_folder(path).map_err(|error| io_error(path, &error))
}

/// Makes the rename itself durable: on Unix a rename reaches the disk with its folder.
#[cfg(unix)]
fn sync_folder(path: &Path) -> io::Result<()> {
    let folder = path.parent().filter(|parent| !parent.as_os_str().is_empty());
    File::open(folder.unwrap_or(Path::new("."))).and_then(|folder| folder.sync_all())
}

#[cfg(not(unix))]
fn sync_folder(_: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Adam, Optimizer};

    fn checkpoint(steps: usize) -> Checkpoint<Adam, f64> {
        let mut opt = Optimizer::new(Adam::default()).unwrap();
        let mut w = ndarray::Array1::<f64>::linspace(-1.0, 1.0, 5);
        for _ in 0..steps {
            let g = w.mapv(|x| x * x - 0.5);
            opt.step("w", &mut w, &g).unwrap();
        }
        opt.checkpoint()
    }

    /// A save that stops after any number of bytes (a full disk, a killed process) leaves
    /// the old checkpoint in place and loadable, and no temporary file behind.
    #[test]
    fn an_interrupted_save_leaves_the_old_file() {
        let folder = std::env::temp_dir().join(format!("interrupted-save-{}", std::process::id()));
        fs::create_dir_all(&folder).unwrap();
        let path = folder.join("opt.ckpt");
        let (old, new) = (checkpoint(2), checkpoint(3));
        for encoding in [Encoding::Json, Encoding::Postcard] {
            old.save(&path, encoding).unwrap();
            let bytes = new.to_bytes(encoding).unwrap();
            for cut in 0..bytes.len() {
                let err = write_atomically(&path, &bytes, |file, bytes| {
                    file.write_all(&bytes[..cut])?;
                    Err(io::Error::new(io::ErrorKind::StorageFull, "interrupted"))
                })
                .unwrap_err();
                assert!(matches!(err, Error::Io { kind: io::ErrorKind::StorageFull, .. }));
                assert_eq!(Checkpoint::load(&path).unwrap(), old, "{encoding:?} cut at {cut}");
                assert!(!temp_path(&path).unwrap().exists());
            }
            new.save(&path, encoding).unwrap();
            assert_eq!(Checkpoint::load(&path).unwrap(), new);
        }
        fs::remove_dir_all(&folder).unwrap();
    }
}
