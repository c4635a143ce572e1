//! Checkpoint bytes and files: a checked header around a JSON or postcard payload, written
//! to disk so that a crash never leaves a torn file in place of a whole one.
//!
//! The bytes are one ASCII header line, then the payload:
//!
//! ```text
//! ndarray-optim 2 postcard adam f32 1234 0a1b2c3d\n<1234 bytes of payload>
//! ```
//!
//! format, format version, encoding, rule, element type, payload length in bytes, and the
//! CRC-32 of everything before the checksum field together with the payload. The format and
//! version come first and keep their place in every version, so that a checkpoint of a newer
//! version is recognised and refused before anything else is read; the length and checksum
//! refuse truncated and altered bytes before the payload is decoded, which is then read in
//! the layout of the header's version.

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::finite::{NonFinite, first_non_finite};
use super::serde_impl::Live;
use super::versions::Versioned;
use super::{Checkpoint, FORMAT, TRAINING_FORMAT, VERSION, check_kind};
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

/// Bytes that are not a checkpoint: says so, and what they are if they are bare serde JSON.
fn not_a_checkpoint(bytes: &[u8], reason: &str) -> Error {
    if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{') {
        return corrupt(format!(
            "{reason}: this looks like bare serde JSON (an optimizer serialized with \
             `serde_json`), not a checkpoint file; read it with `serde_json::from_slice::<\
             Optimizer<_, _>>` (or `from_reader`), or write files with `Optimizer::save`"
        ));
    }
    corrupt(reason)
}

/// The fields of a header line, checked as far as they can be without the payload.
struct Header<'a> {
    version: u32,
    encoding: &'a str,
    rule: &'a str,
    dtype: &'a str,
    length: &'a str,
    crc: &'a str,
}

impl<'a> Header<'a> {
    /// Finds the header line in the first bytes of a file of `format` ([`FORMAT`] or
    /// [`TRAINING_FORMAT`]); returns it with the offset of the payload.
    fn find(bytes: &'a [u8], format: &'static str) -> Result<(Self, usize)> {
        let end = bytes
            .iter()
            .take(MAX_HEADER)
            .position(|&byte| byte == b'\n')
            .ok_or_else(|| not_a_checkpoint(bytes, "no checkpoint header line"))?;
        let header = std::str::from_utf8(&bytes[..end])
            .map_err(|_| not_a_checkpoint(bytes, "the header line is not text"))?;
        let fields: Vec<&str> = header.split(' ').collect();
        if fields[0] != format {
            let found = match fields[0] {
                FORMAT => "an optimizer checkpoint: read it with `Optimizer::load`",
                TRAINING_FORMAT => "a training state: read it with `Optimizer::load_with`",
                _ => return Err(not_a_checkpoint(bytes, &format!("not an `{format}` file"))),
            };
            return Err(Error::CheckpointMismatch {
                field: "kind",
                expected: format,
                found: found.to_owned(),
            });
        }
        let version = fields
            .get(1)
            .and_then(|version| version.parse::<u32>().ok())
            .ok_or_else(|| corrupt("the header has no format version"))?;
        if !(1..=VERSION).contains(&version) {
            return Err(Error::UnsupportedCheckpoint {
                format: FORMAT.to_owned(),
                version,
                newest: VERSION,
            });
        }
        let &[_, _, encoding, rule, dtype, length, crc] = fields.as_slice() else {
            return Err(corrupt(format!("the header has {} fields, not 7", fields.len())));
        };
        Ok((Header { version, encoding, rule, dtype, length, crc }, end + 1))
    }

    /// The announced payload length, if it is `actual`; else the error saying both.
    fn check_length(&self, actual: u64) -> Result<()> {
        if self.length.parse::<u64>().ok() != Some(actual) {
            return Err(corrupt(format!(
                "the header announces a payload of {} bytes, {actual} follow",
                self.length
            )));
        }
        Ok(())
    }
}

/// Checks the bytes of a whole file of `format` (header line, then payload): the header,
/// the payload's length and checksum, and the rule and element type announced against `R`
/// and `A`; then decodes the payload in the layout of the header's version, converted to
/// this version's, and checks that its checkpoint is what the header announced.
pub(super) fn decode<R, A, T>(bytes: &[u8], format: &'static str) -> Result<T>
where
    R: UpdateRule,
    A: Element,
    T: Versioned<R, A>,
{
    let (header, payload_start) = Header::find(bytes, format)?;
    let payload = &bytes[payload_start..];
    header.check_length(payload.len() as u64)?;
    let signed = &bytes[..payload_start - 1 - header.crc.len()];
    // The checksum is the one field it does not cover: only the 8 lowercase hex digits
    // written are accepted, not another spelling of the same number ("+", upper case).
    let crc = header.crc;
    let canonical = crc.len() == 8 && crc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !canonical || u32::from_str_radix(crc, 16).ok() != Some(checksum(signed, payload)) {
        return Err(corrupt("checksum mismatch: the bytes were altered"));
    }
    check_kind::<R, A>(FORMAT, header.version, header.rule, header.dtype)?;
    let encoding = Encoding::from_name(header.encoding)
        .ok_or_else(|| corrupt(format!("unknown encoding `{}`", header.encoding)))?;
    // `Header::find` lets versions 1 to `VERSION` through.
    let record = match header.version {
        1 => decode_payload::<T::V1>(payload, encoding)?.into(),
        2 => decode_payload::<T::V2>(payload, encoding)?.into(),
        3 => decode_payload::<T::V3>(payload, encoding)?.into(),
        4 => decode_payload::<T::V4>(payload, encoding)?.into(),
        _ => decode_payload::<T>(payload, encoding)?,
    };
    // The header vouches for the payload only if both say the same.
    let checkpoint = record.checkpoint();
    checkpoint.check_kind()?;
    if checkpoint.version != header.version {
        return Err(corrupt("header and payload differ in version"));
    }
    Ok(record)
}

/// Decodes a whole payload in `encoding`.
fn decode_payload<T: DeserializeOwned>(payload: &[u8], encoding: Encoding) -> Result<T> {
    match encoding {
        Encoding::Json => {
            serde_json::from_slice(payload).map_err(|e| corrupt(format!("JSON payload: {e}")))
        }
        Encoding::Postcard => match postcard::take_from_bytes(payload) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(corrupt(format!("{} bytes after the payload", rest.len()))),
            Err(e) => Err(corrupt(format!("postcard payload: {e}"))),
        },
    }
}

/// An encoding failure carried through [`io::Error`] by the writers, told apart from the
/// writer's own failures when the save reports.
#[derive(Debug)]
struct EncodeFailure(String);

impl std::fmt::Display for EncodeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncodeFailure {}

fn encode_failure(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, EncodeFailure(reason))
}

/// The error of a failed save: an encoding failure as [`Error::Encode`], anything else as
/// [`Error::Io`] naming `path`.
pub(super) fn save_error(path: &Path, error: &io::Error) -> Error {
    match error.get_ref().and_then(|inner| inner.downcast_ref::<EncodeFailure>()) {
        Some(EncodeFailure(reason)) => Error::Encode { reason: reason.clone() },
        None => io_error(path, error),
    }
}

/// The size of the chunks in which the payload is checksummed and written.
const CHUNK: usize = 64 << 10;

/// Passes bytes on to `inner` in chunks of [`CHUNK`], with their CRC-32 and count; keeps the
/// first error of `inner`, which encoders may replace with one of their own.
struct Summed<W: Write> {
    inner: W,
    buffer: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
    error: Option<io::Error>,
}

impl<W: Write> Summed<W> {
    fn new(inner: W) -> Self {
        Summed {
            inner,
            buffer: Vec::with_capacity(CHUNK),
            crc: crc32fast::Hasher::new(),
            len: 0,
            error: None,
        }
    }

    fn pass_on(&mut self) -> io::Result<()> {
        let buffer = std::mem::take(&mut self.buffer);
        let written = self.pass(&buffer);
        self.buffer = buffer;
        self.buffer.clear();
        written
    }

    fn pass(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        self.inner.write_all(bytes)
    }

    /// Writes what is buffered; returns the writer, the CRC-32 and the length of all bytes.
    fn finish(mut self) -> io::Result<(W, crc32fast::Hasher, u64)> {
        self.pass_on()?;
        Ok((self.inner, self.crc, self.len))
    }
}

impl<W: Write> Write for Summed<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut written = Ok(());
        if self.buffer.len() + bytes.len() > CHUNK {
            written = self.pass_on();
        }
        if written.is_ok() && bytes.len() >= CHUNK {
            written = self.pass(bytes);
        } else if written.is_ok() {
            self.buffer.extend_from_slice(bytes);
        }
        if let Err(error) = written {
            let kept = io::Error::new(error.kind(), error.to_string());
            self.error.get_or_insert(error);
            return Err(kept);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encodes `value` into `out`, returning the CRC-32 and length of the encoding.
fn encode<W: Write>(
    value: &impl Serialize,
    encoding: Encoding,
    out: W,
) -> io::Result<(W, crc32fast::Hasher, u64)> {
    let mut summed = Summed::new(out);
    let encoded = match encoding {
        Encoding::Json => serde_json::to_writer(&mut summed, value).map_err(|e| e.to_string()),
        Encoding::Postcard => {
            postcard::to_io(value, &mut summed).map(drop).map_err(|e| e.to_string())
        }
    };
    if let Err(reason) = encoded {
        return Err(summed.error.take().unwrap_or_else(|| encode_failure(reason)));
    }
    summed.finish()
}

/// Writes the header line and the payload of `value` to `out` without holding the payload in
/// memory: a first encoding finds its length and checksum for the header, a second one is
/// written after it (and must give the same checksum).
pub(super) fn write_framed(
    out: &mut impl Write,
    value: &impl Serialize,
    encoding: Encoding,
    (format, version, rule, dtype): (&str, u32, &str, &str),
) -> io::Result<()> {
    let (_, payload_crc, length) = encode(value, encoding, io::sink())?;
    let head = format!("{format} {version} {} {rule} {dtype} {length} ", encoding.name());
    let mut crc = crc32fast::Hasher::new();
    crc.update(head.as_bytes());
    crc.combine(&payload_crc);
    out.write_all(head.as_bytes())?;
    out.write_all(format!("{:08x}\n", crc.finalize()).as_bytes())?;
    let (_, written_crc, written) = encode(value, encoding, out)?;
    if written != length || written_crc.finalize() != payload_crc.finalize() {
        return Err(encode_failure(
            "the state encoded differently twice (it changed while being saved)".to_owned(),
        ));
    }
    Ok(())
}

impl<R, A> Checkpoint<R, A>
where
    R: UpdateRule + Serialize + DeserializeOwned,
    A: Element + Serialize + DeserializeOwned,
{
    /// The checkpoint as bytes: a header line (format, version, encoding, rule, element type,
    /// length, CRC-32) followed by the payload in `encoding`, both of format version
    /// [`VERSION`] whatever version the checkpoint was read in.
    ///
    /// # Errors
    /// [`Error::Encode`] if the payload cannot be encoded: in JSON, any value that is an
    /// infinity or NaN (a buffer's or scalar's, named by tensor; a hyperparameter, current
    /// learning rate or clip, named by group; any other by its place in the checkpoint); a
    /// rule whose name is empty or has spaces.
    /// [`Error::UnsupportedCheckpoint`] or [`Error::CheckpointMismatch`] for a checkpoint
    /// edited to another format, version, rule or element type than its types.
    pub fn to_bytes(&self, encoding: Encoding) -> Result<Vec<u8>> {
        self.check_encodable(encoding)?;
        let mut bytes = Vec::new();
        write_framed(&mut bytes, self, encoding, (FORMAT, VERSION, &self.rule, &self.dtype))
            .map_err(|error| save_error(Path::new(""), &error))?;
        Ok(bytes)
    }

    /// Reads bytes written by [`to_bytes`](Self::to_bytes), in either encoding.
    ///
    /// The header is checked first: format and version, then length and checksum (so
    /// truncated or altered bytes are refused before decoding), then rule and element type.
    /// The payload is then decoded in the layout of the header's version (any from 1 to
    /// [`VERSION`]) and converted to this version's; the checkpoint's contents are checked by
    /// [`Optimizer::from_checkpoint`] or [`Optimizer::load_state`].
    ///
    /// # Errors
    /// - [`Error::UnsupportedCheckpoint`] for a format version this build does not read;
    /// - [`Error::CorruptCheckpoint`] for bytes that are not a whole checkpoint: no header,
    ///   a length or checksum that does not match, a payload that does not decode (bare
    ///   serde JSON is named as such);
    /// - [`Error::CheckpointMismatch`] for another rule or element type.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        decode::<R, A, Self>(bytes, FORMAT)
    }

    /// Writes the checkpoint to `path` so that a crash at any moment leaves either the old
    /// file or the new one whole: see [`Optimizer::save`], which this is for a checkpoint
    /// (the payload is the same; the checkpoint's values are not checked beyond what the
    /// encoding needs, as [`load`](Self::load) does not check them either).
    ///
    /// # Errors
    /// As [`Optimizer::save`], without its [`Error::InvalidTensorState`]; in addition
    /// [`Error::UnsupportedCheckpoint`] or [`Error::CheckpointMismatch`] as
    /// [`to_bytes`](Self::to_bytes).
    pub fn save(&self, path: impl AsRef<Path>, encoding: Encoding) -> Result<()> {
        self.check_encodable(encoding)?;
        let kind = (FORMAT, VERSION, self.rule.as_str(), self.dtype.as_str());
        write_atomically(path.as_ref(), |file| write_framed(file, self, encoding, kind))
    }

    /// Reads a checkpoint file written by [`save`](Self::save) or [`Optimizer::save`].
    ///
    /// The header line is read first (at most a few hundred bytes: anything else is refused
    /// unread), then exactly the payload it announces, which must be what the file holds:
    /// memory and time are those of the payload, whatever the file is.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, else as [`from_bytes`](Self::from_bytes).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_bytes(&read_framed(path.as_ref(), FORMAT)?)
    }

    /// Refuses what `encoding` cannot store, and a checkpoint whose kind differs from its types.
    pub(super) fn check_encodable(&self, encoding: Encoding) -> Result<()> {
        self.check_kind()?;
        if R::NAME.is_empty() || R::NAME.contains(char::is_whitespace) {
            return Err(Error::Encode {
                reason: format!("the rule name `{}` is empty or has spaces", R::NAME),
            });
        }
        if encoding == Encoding::Json {
            self.check_finite()?;
        }
        Ok(())
    }

    /// Refuses values that JSON cannot hold (it writes NaN and infinities as `null`, which
    /// does not read back, or reads back as `None`): every float, of the state, the groups
    /// and the clip by name, any other by its place in the checkpoint.
    ///
    /// One walk looks at every float; only when it finds one do the checks by name run, so
    /// that a large state is not read twice to be saved.
    fn check_finite(&self) -> Result<()> {
        let Some(NonFinite { path, value }) = first_non_finite(self) else { return Ok(()) };
        self.name_non_finite()?;
        // A float no check names, such as a shared scalar.
        Err(json_refusal(format_args!("`{path}` is {value}")))
    }

    /// Refuses the first value JSON cannot hold among those it knows by name: the groups'
    /// current learning rates and hyperparameters, the clip, the tensors' buffers and scalars.
    fn name_non_finite(&self) -> Result<()> {
        for group in &self.groups {
            let name = &group.name;
            if let Some(lr) = group.lr.filter(|lr| !lr.is_finite()) {
                return Err(json_refusal(format_args!(
                    "the current learning rate of group `{name}` is {lr}"
                )));
            }
            check_hyper_finite(&group.hyper).map_err(|key| {
                json_refusal(format_args!("hyperparameter `{key}` of group `{name}` is not finite"))
            })?;
        }
        if let Some(clip) = self.clip {
            let value = match clip {
                crate::clip::Clip::Value { clip_value } => clip_value,
                crate::clip::Clip::Norm { max_norm }
                | crate::clip::Clip::GlobalNorm { max_norm } => max_norm,
            };
            if !value.is_finite() {
                return Err(json_refusal(format_args!("the clip is {value}")));
            }
        }
        for tensor in &self.tensors {
            let Some(state) = &tensor.state else { continue };
            for buffer in &state.buffers {
                check_buffer_json(&tensor.name, &buffer.name, buffer.values.iter().copied())?;
            }
            for scalar in &state.scalars {
                check_scalar_json(&tensor.name, &scalar.name, scalar.value)?;
            }
        }
        Ok(())
    }
}

/// The refusal to write JSON of a value it cannot store, `subject` saying which and what it
/// is (such as "the clip is NaN").
pub(crate) fn json_refusal(subject: core::fmt::Arguments<'_>) -> Error {
    Error::Encode { reason: format!("{subject}, which JSON cannot store; save in postcard") }
}

/// Refuses a buffer holding a value that JSON cannot store, naming it.
fn check_buffer_json<A: Element>(
    tensor: &str,
    buffer: &str,
    values: impl Iterator<Item = A>,
) -> Result<()> {
    match values.enumerate().find(|(_, value)| !value.is_finite()) {
        Some((index, value)) => Err(json_refusal(format_args!(
            "buffer `{buffer}` of `{tensor}` holds {value} at index {index}"
        ))),
        None => Ok(()),
    }
}

/// Refuses a scalar that JSON cannot store, naming it.
fn check_scalar_json(tensor: &str, scalar: &str, value: f64) -> Result<()> {
    if value.is_finite() {
        return Ok(());
    }
    Err(json_refusal(format_args!("scalar `{scalar}` of `{tensor}` is {value}")))
}

/// Whether hyperparameters survive JSON: a NaN or infinity is written as `null` and does not
/// read back. On failure, the key whose value did not (or `?` if it cannot be told).
fn check_hyper_finite<R: Serialize + DeserializeOwned + PartialEq>(
    hyper: &R,
) -> Result<(), String> {
    let value = serde_json::to_value(hyper).map_err(|_| "?".to_owned())?;
    if serde_json::from_value::<R>(value.clone()).is_ok_and(|back| back == *hyper) {
        return Ok(());
    }
    let nulls: Vec<&str> = value
        .as_object()
        .map(|fields| {
            fields
                .iter()
                .filter(|(_, value)| value.is_null())
                .map(|(key, _)| key.as_str())
                .collect()
        })
        .unwrap_or_default();
    Err(if nulls.is_empty() { "?".to_owned() } else { nulls.join("`, `") })
}

impl<R, A> Optimizer<R, A>
where
    R: UpdateRule + Serialize + DeserializeOwned,
    A: Element + Serialize + DeserializeOwned,
{
    /// Saves the whole state to `path`, crash-safe.
    ///
    /// The bytes go to a new temporary file of a name of its own in the same folder (created
    /// afresh, so that saves to one path at the same time, from threads or processes, never
    /// share one, and an existing file or link of any name is never followed or reused),
    /// which is flushed to disk, then renamed over `path`, and the folder is synced. A crash
    /// at any moment leaves either the old file or the new one whole; concurrent saves leave
    /// one of them whole.
    ///
    /// The payload is encoded straight from the optimizer's state into the file, twice
    /// (once for its length and checksum, which the header gives first, then written), never
    /// held in memory. Beyond the state itself a save allocates about 130 KB in all, whatever
    /// the state's size: measured, every allocation of a save of a 1-million-element f32 Adam
    /// state (8 MB) adds up to 132 KB in JSON and 130 KB in postcard (two 64 KB write
    /// buffers, the groups and names), so the peak stays within that of the state plus 132 KB.
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
    /// - [`Error::InvalidTensorState`] for state that [`load`](Self::load) would refuse
    ///   (e.g. a buffer holding NaN): what cannot be loaded back is not saved;
    /// - [`Error::Encode`] for what the encoding cannot store: in JSON, an infinity or NaN
    ///   anywhere (named);
    /// - [`Error::Io`] naming `path` if the file could not be written. If writing or renaming
    ///   the temporary file failed, `path` is as it was and the temporary file is removed; if
    ///   only the final sync of the folder failed, the new file is in place but a power loss
    ///   may still undo the rename.
    pub fn save(&self, path: impl AsRef<Path>, encoding: Encoding) -> Result<()> {
        self.check_saveable(encoding)?;
        let kind = (FORMAT, VERSION, R::NAME, A::NAME);
        write_atomically(path.as_ref(), |file| write_framed(file, &Live(self), encoding, kind))
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

    /// Refuses state that [`load`](Self::load) would refuse or `encoding` cannot store.
    pub(super) fn check_saveable(&self, encoding: Encoding) -> Result<()> {
        self.check_state()?;
        if encoding == Encoding::Json {
            self.check_json()?;
        }
        Ok(())
    }

    /// Refuses values that JSON cannot hold, in the state, the groups and the clip.
    fn check_json(&self) -> Result<()> {
        for tensor in self.state() {
            for (buffer, values) in tensor.buffers() {
                check_buffer_json(tensor.name(), buffer, values.iter().copied())?;
            }
            for (scalar, value) in tensor.scalars() {
                check_scalar_json(tensor.name(), scalar, value)?;
            }
        }
        let groups = self.groups().iter().map(super::GroupRecord::of).collect();
        let checkpoint = Checkpoint::<R, A> {
            format: FORMAT.to_owned(),
            version: VERSION,
            rule: R::NAME.to_owned(),
            dtype: A::NAME.to_owned(),
            groups,
            tensors: Vec::new(),
            clip: self.clip,
            non_finite: self.non_finite,
            // Finite, as saving checks (`check_state`).
            shared: Vec::new(),
            shard: self.shard,
        };
        checkpoint.check_encodable(Encoding::Json)
    }
}

/// Reads a file of `format` whose header announces its payload: at most [`MAX_HEADER`] bytes
/// of header first (anything else is refused unread), then exactly the payload announced,
/// which must be all the file holds. Returns the header and payload, unchecked beyond that.
pub(super) fn read_framed(path: &Path, format: &'static str) -> Result<Vec<u8>> {
    let read = |error: io::Error| io_error(path, &error);
    let mut file = File::open(path).map_err(read)?;
    let metadata = file.metadata().map_err(read)?;
    let mut bytes = Vec::with_capacity(MAX_HEADER);
    (&mut file).take(MAX_HEADER as u64).read_to_end(&mut bytes).map_err(read)?;
    let (start, length) = {
        let (header, payload_start) = Header::find(&bytes, format)?;
        let start = payload_start as u64;
        if metadata.is_file() {
            // A regular file: its size must be the header's and the payload's.
            header.check_length(metadata.len().saturating_sub(start))?;
        }
        let length = header.length.parse::<u64>().map_err(|_| {
            corrupt(format!("the header announces a payload of `{}` bytes", header.length))
        })?;
        (start, length)
    };
    let end = start.saturating_add(length);
    if metadata.is_file() {
        // Known to be there: read it into one allocation.
        let total = usize::try_from(end)
            .map_err(|_| corrupt(format!("no memory for a payload of {length} bytes")))?;
        bytes
            .try_reserve_exact(total.saturating_sub(bytes.len()))
            .map_err(|_| corrupt(format!("no memory for a payload of {length} bytes")))?;
    }
    // Bounded by the announced length, whatever the file turns out to hold.
    let rest = end.saturating_sub(bytes.len() as u64);
    (&mut file).take(rest).read_to_end(&mut bytes).map_err(read)?;
    let mut more = [0u8; 1];
    let extra = if bytes.len() as u64 > end { 1 } else { file.read(&mut more).map_err(read)? };
    if bytes.len() as u64 != end || extra > 0 {
        let found = bytes.len() as u64 - start;
        let follow = if extra > 0 { "more".to_owned() } else { found.to_string() };
        return Err(corrupt(format!(
            "the header announces a payload of {length} bytes, {follow} follow"
        )));
    }
    Ok(bytes)
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

/// Creates a new temporary file beside `path`, of a name no other save uses: the file name
/// with a leading dot, the process id, a counter and a random number. It is created
/// exclusively (an existing file or link of the name is never opened or followed); a name
/// that is taken is replaced by another.
fn create_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    static SAVES: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut last = None;
    for _ in 0..64 {
        let mut temp = OsString::from(".");
        temp.push(name);
        let random = RandomState::new().hash_one(SAVES.fetch_add(1, Ordering::Relaxed));
        temp.push(format!(".{}.{random:016x}.tmp", std::process::id()));
        let temp = path.with_file_name(temp);
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => return Ok((temp, file)),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary file name")))
}

/// Writes a temporary file beside `path` with `write`, syncs it and renames it over `path`;
/// removes the temporary file on an error. Errors name `path`, the path the caller gave.
/// `write` is a parameter so that tests can interrupt it at any byte.
pub(super) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<()> {
    let (temp, mut file) = create_temp(path).map_err(|error| io_error(path, &error))?;
    let written = write(&mut file).and_then(|()| file.sync_all());
    drop(file);
    if let Err(error) = written.and_then(|()| fs::rename(&temp, path)) {
        // Best effort: a temporary file that cannot be removed is still never `path`.
        let _ = fs::remove_file(&temp);
        return Err(save_error(path, &error));
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
                let err = write_atomically(&path, |file| {
                    file.write_all(&bytes[..cut])?;
                    Err(io::Error::new(io::ErrorKind::StorageFull, "interrupted"))
                })
                .unwrap_err();
                assert!(
                    matches!(&err, Error::Io { kind: io::ErrorKind::StorageFull, path: named, .. }
                        if *named == path)
                );
                assert_eq!(Checkpoint::load(&path).unwrap(), old, "{encoding:?} cut at {cut}");
                assert_eq!(fs::read_dir(&folder).unwrap().count(), 1, "a temporary file is left");
            }
            new.save(&path, encoding).unwrap();
            assert_eq!(Checkpoint::load(&path).unwrap(), new);
        }
        fs::remove_dir_all(&folder).unwrap();
    }
}
