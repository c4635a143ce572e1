//! [`FlatParams`] in serde formats: the layout and the parameters, and the gradients only
//! where one is not zero, checked against each other before any buffer is allocated.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{FlatParams, Layout};
use crate::buffer::AlignedBuffer;
use crate::element::Element;
use crate::error::{Error, Result};

/// The serialized form of a [`FlatParams`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record<'a, A: Clone> {
    name: Cow<'a, str>,
    /// The element type, [`Element::NAME`].
    dtype: Cow<'a, str>,
    /// Each tensor's name and shape, in the order of the layout.
    tensors: Vec<(Cow<'a, str>, Cow<'a, [usize]>)>,
    params: Cow<'a, [A]>,
    /// `None` while every gradient is `+0.0`, the state after
    /// [`zero_grads`](FlatParams::zero_grads), so that a block saved between steps takes the
    /// room of its parameters only.
    grads: Option<Cow<'a, [A]>>,
}

impl<A: Element + Serialize> Serialize for FlatParams<A> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tensors = self
            .tensors
            .iter()
            .map(|tensor| (Cow::Borrowed(tensor.name()), Cow::Borrowed(tensor.shape())))
            .collect();
        // Bits, not values: a gradient of -0.0 is kept.
        let zeroed = bytemuck::cast_slice::<A, u8>(&self.grads).iter().all(|&byte| byte == 0);
        Record {
            name: Cow::Borrowed(&self.name),
            dtype: Cow::Borrowed(A::NAME),
            tensors,
            params: Cow::Borrowed(&self.params),
            grads: (!zeroed).then_some(Cow::Borrowed(&self.grads)),
        }
        .serialize(serializer)
    }
}

/// Deserializes and checks the element type, the layout (as [`FlatParams::new`] checks it)
/// and the number of values; a failed check becomes the format's custom error.
impl<'de, A: Element + Deserialize<'de>> Deserialize<'de> for FlatParams<A> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = Record::<A>::deserialize(deserializer)?;
        restore(record).map_err(serde::de::Error::custom)
    }
}

fn restore<A: Element>(record: Record<'_, A>) -> Result<FlatParams<A>> {
    if record.dtype != A::NAME {
        return Err(Error::CheckpointMismatch {
            field: "dtype",
            expected: A::NAME,
            found: record.dtype.into_owned(),
        });
    }
    let tensors = record.tensors.iter().map(|(name, shape)| (&**name, &**shape));
    let layout = Layout::of::<A, _>(tensors)?;
    let checked = |values: &[A], what: &str| {
        if values.len() == layout.len {
            Ok(AlignedBuffer::from_slice(values))
        } else {
            Err(Error::InvalidFlatLayout {
                reason: format!("{} {what} for a layout of {} elements", values.len(), layout.len),
            })
        }
    };
    let params = checked(&record.params, "parameters")?;
    let grads = match &record.grads {
        Some(grads) => checked(grads, "gradients")?,
        None => AlignedBuffer::filled(layout.len, A::zero()),
    };
    Ok(layout.with_buffers(&record.name, params, grads))
}
