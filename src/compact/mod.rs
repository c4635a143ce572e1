//! Optimizer state in fewer bytes: per-element buffers kept as bfloat16 or as block-wise
//! 8-bit codes, opt-in per group with
//! [`Optimizer::set_state_precision`](crate::Optimizer::set_state_precision).
//!
//! At main-memory sizes a step is a stream over the parameter, the gradient and the state,
//! and its time is the bytes it moves. Adam's `f32` state is 8 of the 20 bytes a step reads
//! per element and 8 of the 12 it writes; stored as bfloat16 it is half that, as 8-bit codes
//! a quarter (plus one `f32` scale per [`BLOCK`] values).
//!
//! The arithmetic does not change: a step expands each block of state to the element type,
//! runs the rule's update on it exactly as for full-precision state (the parameter moves by
//! the full-precision moments of this step) and stores the new values back rounded:
//!
//! - [`StatePrecision::Bf16`]: to the nearest bfloat16, ties to even ([`bf16_bits`]). The
//!   two buffers of a rule that has two (the Adam family's moments) are kept together, one
//!   32-bit word per element, so that a step reads and writes one word for both and turns
//!   each half into an `f32` with a mask or a shift; on Zen 3 that made the bfloat16 AdamW
//!   step 10–20 % faster than two buffers of 16-bit values.
//! - [`StatePrecision::Int8`]: in blocks of [`BLOCK`] values in row-major order, each
//!   scaled by its largest magnitude and mapped to the nearest of 256 entries of a dynamic
//!   map ([`quantize_block`]): bitsandbytes' and torchao's 8-bit optimizers (Dettmers et al.
//!   2022). Buffers the rule keeps non-negative (second moments) use the unsigned map, the
//!   others the signed one. Tensors of fewer than `min_numel` elements keep full-precision
//!   state, as both libraries do below 4,096.
//!
//! The stored bytes and scales are the state: checkpoints keep them as they are, so a
//! resumed run continues bit for bit, and [`TensorView::bytes`](crate::TensorView::bytes)
//! counts them. Views of the buffers ([`TensorView::buffer`](crate::TensorView::buffer))
//! show the values a step would expand them to.

pub(crate) mod bf16;
pub(crate) mod int8;

pub use bf16::{bf16_bits, bf16_value};
pub use int8::{BLOCK, QuantMap, dequantize_block, quantize_block};

use crate::buffer::AlignedBuffer;
use crate::element::Element;

/// How a group keeps the per-element state of its tensors.
///
/// ```
/// use ndarray::Array2;
/// use ndarray_optim::{AdamW, Optimizer, StatePrecision};
///
/// let mut opt = Optimizer::new(AdamW::default())?;
/// opt.set_state_precision("default", StatePrecision::INT8)?;
/// let mut w = Array2::<f32>::zeros((128, 64));
/// opt.step("w", &mut w, &Array2::from_elem((128, 64), 0.5))?;
/// // Two buffers of one byte per element, and one f32 scale per 256 elements each.
/// assert_eq!(opt.state_bytes(), 2 * (128 * 64) + 2 * 4 * (128 * 64 / 256));
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum StatePrecision {
    /// The element type itself (the default).
    #[default]
    Full,
    /// bfloat16: 2 bytes per value, 8 bits of precision, the element type's range for
    /// `f32`.
    Bf16,
    /// Block-wise 8-bit codes for tensors of at least `min_numel` elements; full precision
    /// for smaller ones (in a [sharded optimizer](crate::ShardedOptimizer), the size of the
    /// whole tensor decides, not that of a rank's part).
    Int8 {
        /// The size below which a tensor keeps full-precision state.
        min_numel: usize,
    },
}

impl StatePrecision {
    /// 8-bit state from 4,096 elements on, the threshold of bitsandbytes and torchao.
    pub const INT8: StatePrecision = StatePrecision::Int8 { min_numel: 4096 };

    /// The storage a tensor of `numel` elements gets.
    pub(crate) fn for_numel(self, numel: usize) -> StatePrecision {
        match self {
            StatePrecision::Int8 { min_numel } if numel < min_numel => StatePrecision::Full,
            precision => precision,
        }
    }
}

/// The per-element buffers of one tensor in low precision, each in row-major order: one
/// after the other, except two bfloat16 buffers, which are kept in pairs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Compact {
    /// bfloat16 bits, buffer after buffer: one buffer, or three or more.
    Bf16 { bits: AlignedBuffer<u16> },
    /// The bfloat16 bits of two buffers, one word per element ([`bf16::pair`]).
    Bf16Pairs { pairs: AlignedBuffer<u32> },
    /// 8-bit codes, and one scale per block of each buffer (buffer by buffer).
    Int8 { codes: AlignedBuffer<u8>, scales: Vec<f32>, maps: Vec<QuantMap> },
}

impl Compact {
    /// `buffers` buffers of `numel` values each (row-major, one after the other) stored in
    /// `precision`, which is not [`StatePrecision::Full`]; `maps` gives each buffer's map.
    pub(crate) fn encode<A: Element>(
        precision: StatePrecision,
        values: &[A],
        numel: usize,
        maps: Vec<QuantMap>,
    ) -> Compact {
        match precision {
            StatePrecision::Bf16 => {
                let mut bits = vec![0; values.len()];
                bf16::encode(values, &mut bits);
                Compact::bf16(&bits, numel)
            }
            StatePrecision::Int8 { .. } => {
                let mut codes = AlignedBuffer::filled(values.len(), 0);
                let mut scales = Vec::with_capacity(maps.len() * numel.div_ceil(BLOCK));
                let buffers = values.chunks(numel.max(1)).zip(codes.chunks_mut(numel.max(1)));
                for ((values, codes), &map) in buffers.zip(&maps) {
                    let blocks = values.chunks(BLOCK).zip(codes.chunks_mut(BLOCK));
                    scales.extend(blocks.map(|(values, codes)| int8::encode(values, map, codes)));
                }
                Compact::Int8 { codes, scales, maps }
            }
            StatePrecision::Full => unreachable!("full-precision state is not compact"),
        }
    }

    /// The bfloat16 `bits` of buffers of `numel` values each, one after the other, kept as
    /// the state keeps them: in pairs if there are two.
    pub(crate) fn bf16(bits: &[u16], numel: usize) -> Compact {
        if numel > 0 && bits.len() == 2 * numel {
            let (high, low) = bits.split_at(numel);
            let mut pairs = AlignedBuffer::filled(numel, 0);
            for ((pair, &high), &low) in pairs.iter_mut().zip(high).zip(low) {
                *pair = bf16::pair([high, low]);
            }
            Compact::Bf16Pairs { pairs }
        } else {
            Compact::Bf16 { bits: AlignedBuffer::from_slice(bits) }
        }
    }

    /// Every buffer's values in the element type, one after the other, into `values`.
    pub(crate) fn decode<A: Element>(&self, numel: usize, values: &mut [A]) {
        for (index, values) in values.chunks_mut(numel.max(1)).enumerate() {
            self.stored(index, numel).expand(values);
        }
    }

    /// Whether the values are stored as `precision` stores them.
    pub(crate) fn holds(&self, precision: StatePrecision) -> bool {
        matches!(
            (self, precision),
            (Compact::Bf16 { .. } | Compact::Bf16Pairs { .. }, StatePrecision::Bf16)
                | (Compact::Int8 { .. }, StatePrecision::Int8 { .. })
        )
    }

    /// Bytes the stored values and scales occupy.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Compact::Bf16 { bits } => bits.len() * size_of::<u16>(),
            Compact::Bf16Pairs { pairs } => pairs.len() * size_of::<u32>(),
            Compact::Int8 { codes, scales, .. } => codes.len() + scales.len() * size_of::<f32>(),
        }
    }
}

/// One low-precision buffer as stored, borrowed: what a checkpoint writes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StoredRef<'a> {
    Bf16 { bits: Bf16Bits<'a> },
    Int8 { codes: &'a [u8], scales: &'a [f32], map: QuantMap },
}

impl StoredRef<'_> {
    /// The values in the element type, into `values` (as long as the buffer).
    pub(crate) fn expand<A: Element>(self, values: &mut [A]) {
        match self {
            StoredRef::Bf16 { bits } => bf16::decode(bits.iter(), values),
            StoredRef::Int8 { codes, scales, map } => {
                for ((values, codes), &scale) in
                    values.chunks_mut(BLOCK).zip(codes.chunks(BLOCK)).zip(scales)
                {
                    int8::decode(codes, scale, map, values);
                }
            }
        }
    }
}

impl Compact {
    /// Per-element buffer `index` of a tensor of `numel` elements, as stored.
    pub(crate) fn stored(&self, index: usize, numel: usize) -> StoredRef<'_> {
        match self {
            Compact::Bf16 { bits } => {
                StoredRef::Bf16 { bits: Bf16Bits::Run(&bits[index * numel..(index + 1) * numel]) }
            }
            Compact::Bf16Pairs { pairs } => {
                StoredRef::Bf16 { bits: Bf16Bits::Half { pairs, index } }
            }
            Compact::Int8 { codes, scales, maps } => {
                let blocks = numel.div_ceil(BLOCK);
                StoredRef::Int8 {
                    codes: &codes[index * numel..(index + 1) * numel],
                    scales: &scales[index * blocks..(index + 1) * blocks],
                    map: maps[index],
                }
            }
        }
    }
}

/// One buffer's bfloat16 bits as stored: in a run of their own, or as one half of each
/// word of a pair buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bf16Bits<'a> {
    Run(&'a [u16]),
    /// `index` 0 is the high halves, 1 the low ones.
    Half {
        pairs: &'a [u32],
        index: usize,
    },
}

impl<'a> Bf16Bits<'a> {
    /// The bits in row-major order.
    pub(crate) fn iter(self) -> impl ExactSizeIterator<Item = u16> + 'a {
        let len = match self {
            Bf16Bits::Run(run) => run.len(),
            Bf16Bits::Half { pairs, .. } => pairs.len(),
        };
        (0..len).map(move |element| match self {
            Bf16Bits::Run(run) => run[element],
            Bf16Bits::Half { pairs, index } => bf16::halves(pairs[element])[index],
        })
    }
}
