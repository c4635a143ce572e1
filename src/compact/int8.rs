//! Block-wise 8-bit quantization with a dynamic map (Dettmers et al. 2022, "8-bit Optimizers
//! via Block-wise Quantization"), as bitsandbytes defines it and torchao's `AdamW8bit`
//! computes it.
//!
//! A block of up to [`BLOCK`] values is stored as one `f32` scale, the largest magnitude in
//! the block (at least `1e-12`), and one byte per value: the index of the map entry nearest
//! to the value divided by the scale. The maps put their 256 entries on a logarithmic grid of
//! decades, so small values keep their relative precision.

use crate::element::Element;

mod pieces;

pub(crate) use pieces::{FRACTION_BITS, Pieces, SLACK};

/// Values per quantization block: each has its own scale (torchao's and bitsandbytes'
/// default for optimizer state).
pub const BLOCK: usize = 256;

/// The smallest scale a block gets, so that a block of zeros divides by something.
const MIN_SCALE: f32 = 1e-12;

/// The largest scale whose reciprocal is a normal `f32` (2¹²⁶), up to which lanes may
/// multiply by the reciprocal (within a few units in the last place of the quotient).
pub(crate) const RECIPROCAL_SCALE: f32 = f32::from_bits(253 << 23);

/// Which of the two dynamic maps a buffer is quantized with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantMap {
    /// Values of either sign (first moments): 127 negative entries, 0, 127 positive
    /// entries and 1.
    Signed,
    /// Values that are never negative (second moments): 0, 254 positive entries and 1.
    Unsigned,
}

impl QuantMap {
    /// The map's 256 entries, ascending, from −0.99296874 (signed) or 0 (unsigned) to 1.
    pub fn values(self) -> &'static [f32; 256] {
        match self {
            QuantMap::Signed => &SIGNED,
            QuantMap::Unsigned => &UNSIGNED,
        }
    }

    /// The map's entries as four planes of bytes, from the least significant byte of each
    /// entry's bits to the most, for byte permutations to expand codes with.
    pub(crate) fn byte_planes(self) -> &'static [[u8; 256]; 4] {
        match self {
            QuantMap::Signed => &SIGNED_PLANES,
            QuantMap::Unsigned => &UNSIGNED_PLANES,
        }
    }

    pub(crate) fn lookup(self) -> &'static Lookup {
        match self {
            QuantMap::Signed => &SIGNED_LOOKUP,
            QuantMap::Unsigned => &UNSIGNED_LOOKUP,
        }
    }
}

/// Quantizes one block of `values` into `codes` and returns its scale.
///
/// The scale `$s = \max(\max_i |x_i|, 10^{-12})$` (NaN if a value is NaN). Each `$y_i = x_i / s$`
/// gets the code `$c$` of the largest map entry `$q_c \le y_i$`, or `$c + 1$` when
/// `$y_i - q_c \ge (q_{c+1} - q_c) / 2$`, all in `f32` as torchao's
/// `quantize_8bit_with_qmap` computes it: the nearest entry, ties upward. NaN gets code 0.
///
/// ```
/// use ndarray_optim::compact::{QuantMap, dequantize_block, quantize_block};
///
/// let values = [0.5_f32, -2.0, 0.001, 0.0];
/// let mut codes = [0_u8; 4];
/// let scale = quantize_block(&values, QuantMap::Signed, &mut codes);
/// assert_eq!(scale, 2.0);
/// let mut back = [0.0_f32; 4];
/// dequantize_block(&codes, scale, QuantMap::Signed, &mut back);
/// for (x, y) in values.iter().zip(back) {
///     assert!((x - y).abs() <= 0.02 * x.abs().max(0.01));
/// }
/// ```
///
/// # Panics
/// If `codes` is shorter than `values`.
pub fn quantize_block(values: &[f32], map: QuantMap, codes: &mut [u8]) -> f32 {
    encode(values, map, codes)
}

/// The values of one block: `$q_{c_i} \cdot s$` in `f32`, as torchao's `dequant_with_qmap`.
///
/// # Panics
/// If `values` is shorter than `codes`.
pub fn dequantize_block(codes: &[u8], scale: f32, map: QuantMap, values: &mut [f32]) {
    decode(codes, scale, map, values);
}

/// [`quantize_block`] of values of any element type, each rounded to `f32` first.
#[inline(always)]
pub(crate) fn encode<A: Element>(values: &[A], map: QuantMap, codes: &mut [u8]) -> f32 {
    let scale = block_scale(values);
    codes_of(values, scale, map, codes);
    scale
}

/// The code of each of `values` divided by `scale`, into `codes`.
#[inline(always)]
fn codes_one_by_one<A: Element>(lookup: &Lookup, values: &[A], scale: f32, codes: &mut [u8]) {
    for (code, &value) in codes[..values.len()].iter_mut().zip(values) {
        *code = lookup.nearest_code(to_f32(value) / scale);
    }
}

/// [`dequantize_block`] into values of any element type.
#[inline(always)]
pub(crate) fn decode<A: Element>(codes: &[u8], scale: f32, map: QuantMap, values: &mut [A]) {
    let entries = map.values();
    for (value, &code) in values[..codes.len()].iter_mut().zip(codes) {
        *value = A::from_f64(f64::from(entries[usize::from(code)] * scale));
    }
}

/// [`encode`] of one block of each of several buffers (`values`, with their `maps`), into
/// their `codes` and `scales`: every block's scale first, then the codes, each buffer's by
/// `codes_of` (`values`, scale, map, codes). A block's scale is a reduction, and its codes
/// wait on the scale's reciprocal: buffer by buffer, each buffer's codes waited on both, while
/// with every scale found first the buffers' reductions and divisions overlap. The 8-bit
/// AdamW step took 0.69 ns per element at 65,536 elements against 0.74 buffer by buffer on
/// Zen 5 (alternating runs, medians of 11).
#[inline(always)]
pub(crate) fn encode_each<A: Element>(
    values: &[&[A]],
    maps: &[QuantMap],
    codes: &mut [&mut [u8]],
    scales: &mut [f32],
    mut codes_of: impl FnMut(&[A], f32, QuantMap, &mut [u8]),
) {
    // The zips below would quietly leave a buffer unquantized.
    let buffers = values.len();
    debug_assert!(maps.len() == buffers && codes.len() == buffers && scales.len() == buffers);
    for (scale, values) in scales.iter_mut().zip(values) {
        *scale = block_scale(values);
    }
    let buffers = values.iter().zip(maps).zip(codes.iter_mut()).zip(scales.iter());
    for (((values, &map), codes), &scale) in buffers {
        codes_of(values, scale, map, codes);
    }
}

/// The codes of `values` divided by `scale`, their block's, into `codes`, one by one.
#[inline(always)]
pub(crate) fn codes_of<A: Element>(values: &[A], scale: f32, map: QuantMap, codes: &mut [u8]) {
    codes_one_by_one(map.lookup(), values, scale, codes);
}

/// [`codes_of`] with the map lookup done `LANES` values at a time by `nearest`, written out
/// for an instruction set (the map's arithmetic form with AVX2 or AVX-512); the last values
/// of a block short of `LANES` go one by one.
/// `nearest` writes the codes of `LANES` values (in `f32`) divided by the block's scale and
/// returns the lanes (bits) whose codes it leaves to the table. The scale is at most
/// [`RECIPROCAL_SCALE`] here, so each quotient lies within `[-1, 1]` (a value divided by
/// the largest magnitude of its block, correctly rounded) and the scale's reciprocal is a
/// normal number.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn codes_in_lanes<A: Element, const LANES: usize>(
    values: &[A],
    scale: f32,
    map: QuantMap,
    codes: &mut [u8],
    nearest: impl Fn(&Lookup, &[f32; LANES], f32, &mut [u8; LANES]) -> u64,
) {
    let codes = &mut codes[..values.len()];
    let lookup = map.lookup();
    if scale.is_nan() || scale > RECIPROCAL_SCALE {
        // A NaN or infinite value (the quotients are NaN or 0), or magnitudes beyond any
        // optimizer state's: the table decides.
        return codes_one_by_one(lookup, values, scale, codes);
    }
    let mut chunks = codes.chunks_exact_mut(LANES).zip(values.chunks_exact(LANES));
    for (codes, values) in &mut chunks {
        let xs = core::array::from_fn(|lane| to_f32(values[lane]));
        let mut left =
            nearest(lookup, &xs, scale, codes.try_into().expect("chunks of LANES codes"));
        while left != 0 {
            let lane = left.trailing_zeros() as usize;
            codes[lane] = lookup.nearest_code(to_f32(values[lane]) / scale);
            left &= left - 1;
        }
    }
    let done = values.len() - values.len() % LANES;
    codes_one_by_one(lookup, &values[done..], scale, &mut codes[done..]);
}

/// [`decode`] with the map's entries looked up `LANES` codes at a time by `entries`, written
/// out for an instruction set; the last codes of a block short of `LANES` go one by one.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn decode_in_lanes<A: Element, const LANES: usize>(
    codes: &[u8],
    scale: f32,
    map: QuantMap,
    values: &mut [A],
    entries: impl Fn(&[u8; LANES]) -> [f32; LANES],
) {
    let values = &mut values[..codes.len()];
    let mut chunks = values.chunks_exact_mut(LANES).zip(codes.chunks_exact(LANES));
    for (values, codes) in &mut chunks {
        let codes = codes.try_into().expect("chunks of LANES codes");
        for (value, entry) in values.iter_mut().zip(entries(codes)) {
            *value = A::from_f64(f64::from(entry * scale));
        }
    }
    let done = codes.len() - codes.len() % LANES;
    decode(&codes[done..], scale, map, &mut values[done..]);
}

#[inline(always)]
fn to_f32<A: Element>(value: A) -> f32 {
    value.into_f64() as f32
}

/// The largest magnitude of a block, at least [`MIN_SCALE`]; NaN if a value is NaN, as
/// PyTorch's `amax` and `clip` propagate it.
#[inline(always)]
fn block_scale<A: Element>(values: &[A]) -> f32 {
    // Non-negative floats are ordered as their bits are, and every NaN lies above infinity:
    // one integer maximum, which vectorises, finds both the largest magnitude and any NaN.
    let largest =
        values.iter().fold(0, |largest, &value| largest.max(to_f32(value).to_bits() & !SIGN));
    if largest > f32::INFINITY.to_bits() {
        f32::NAN
    } else {
        f32::from_bits(largest).max(MIN_SCALE)
    }
}

pub(crate) const SIGN: u32 = 0x8000_0000;

/// A map's nearest-code search as a table lookup: `y` gets code `c` from `t_c ≤ y < t_{c+1}`,
/// where threshold `t_c` is the smallest `f32` that torchao's search and rounding give code
/// `c` or more. A bucket of `y`'s bits holds at most one threshold above its lowest value, so
/// the code is the bucket's base code, plus one from that threshold on.
///
/// Each bucket is one 32-bit word, the base code over the threshold's key (below): one load
/// per value. With AVX2 or AVX-512 the codes come from the map's arithmetic form
/// ([`Pieces`]), and from this table only for values that lie too near a threshold for it.
pub(crate) struct Lookup {
    /// For every bucket of magnitudes, the buckets of positive values, then those of negative
    /// ones: the code of the bucket's lowest value in the top 8 bits, and in the bits of
    /// [`KEY_MASK`] the [`key`] of the threshold of the next code, or [`NO_THRESHOLD`].
    words: [u32; 2 * BUCKETS],
    /// The same codes by arithmetic, for all but the values nearest to a threshold.
    pub(crate) pieces: Pieces,
}

impl Lookup {
    /// The code of `y`: the nearest entry, ties upward; 255 above the map, 0 below it and
    /// for NaN.
    #[inline(always)]
    pub(crate) fn nearest_code(&self, y: f32) -> u8 {
        let bits = y.to_bits();
        // Magnitudes above 1 share the bucket of 1, whose base is the code of ±1: the first
        // or the last. Magnitudes below the first bucket share it: no threshold lies between.
        let above_min = (bits & !SIGN).clamp(MIN_BITS, ONE_BITS) - MIN_BITS;
        let negative = bits >> 31;
        let word = self.words[(negative * BUCKETS as u32 + (above_min >> SHIFT)) as usize];
        let code = (word >> 24) + u32::from(key(above_min, negative) >= word & KEY_MASK);
        if y.is_nan() { 0 } else { code as u8 }
    }
}

/// Where a value lies within its bucket, as an integer that grows with the value: the low
/// bits of its magnitude's distance from the first bucket, reversed for negative values.
#[inline(always)]
const fn key(above_min: u32, negative: u32) -> u32 {
    (above_min & WITHIN) ^ (negative * WITHIN)
}

/// Magnitudes below 2⁻²⁴ share the first bucket: no threshold lies between them and it (the
/// smallest non-zero entry is 3.25 · 10⁻⁷, about 2⁻²¹·⁵, and the threshold below it half that).
pub(crate) const MIN_BITS: u32 = (127 - 24) << 23;
/// The bits of 1.0, the largest magnitude the map covers.
const ONE_BITS: u32 = 0x3F80_0000;
/// Buckets keep the exponent and 7 bits of the fraction: narrower than the gap between any
/// two thresholds, so each bucket holds at most one (checked when the tables are built, at
/// compile time).
const SHIFT: u32 = 23 - 7;
const BUCKETS: usize = ((ONE_BITS - MIN_BITS) >> SHIFT) as usize + 1;
/// The low bits of a magnitude, which tell the values of one bucket apart.
const WITHIN: u32 = (1 << SHIFT) - 1;
/// The key of a bucket without a threshold: above every value's.
const NO_THRESHOLD: u32 = WITHIN + 1;
/// The bits of a word that hold the threshold's key.
const KEY_MASK: u32 = (1 << 24) - 1;

static SIGNED_PLANES: [[u8; 256]; 4] = byte_planes(&SIGNED);
static UNSIGNED_PLANES: [[u8; 256]; 4] = byte_planes(&UNSIGNED);

/// Byte `p` of the bits of every entry, for each `p` from the least significant.
const fn byte_planes(entries: &[f32; 256]) -> [[u8; 256]; 4] {
    let mut planes = [[0; 256]; 4];
    let mut code = 0;
    while code < 256 {
        let bytes = entries[code].to_bits().to_le_bytes();
        let mut plane = 0;
        while plane < 4 {
            planes[plane][code] = bytes[plane];
            plane += 1;
        }
        code += 1;
    }
    planes
}

static SIGNED_LOOKUP: Lookup = lookup(&SIGNED);
static UNSIGNED_LOOKUP: Lookup = lookup(&UNSIGNED);

/// The order of `value` among all `f32`s as an integer: −NaN < −∞ < … < −0 < +0 < … < +∞.
const fn ordered(value: f32) -> u32 {
    let bits = value.to_bits();
    if bits & SIGN != 0 { !bits } else { bits | SIGN }
}

const fn unordered(key: u32) -> f32 {
    f32::from_bits(if key & SIGN != 0 { key & !SIGN } else { !key })
}

/// The code torchao's binary search and rounding give `y`: the largest entry `q_c ≤ y`, or
/// the next one when `y − q_c ≥ (q_{c+1} − q_c) / 2`.
const fn searched_code(entries: &[f32; 256], y: f32) -> usize {
    let mut code = 0;
    let mut step = 128;
    while step > 0 {
        if y >= entries[code + step] {
            code += step;
        }
        step /= 2;
    }
    let up = if code < 255 { code + 1 } else { 255 };
    let (low, high) = (entries[code], entries[up]);
    if y - low >= (high - low) * 0.5 { up } else { code }
}

/// A map's thresholds: `t_c` for codes 1 to 255, with `t_0 = −∞` and `t_256` NaN (no value
/// reaches it). Each is found by bisection over the `f32`s between two entries (the rounding
/// is monotonic in `y`).
const fn thresholds(entries: &[f32; 256]) -> [f32; 257] {
    let mut thresholds = [0.0; 257];
    thresholds[0] = f32::NEG_INFINITY;
    thresholds[256] = f32::NAN;
    let mut code = 1;
    while code < 256 {
        // The smallest `y` in (q_{c−1}, q_c] with code c: q_c itself has it.
        let (mut low, mut high) = (ordered(entries[code - 1]), ordered(entries[code]));
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if searched_code(entries, unordered(middle)) >= code {
                high = middle;
            } else {
                low = middle;
            }
        }
        thresholds[code] = unordered(high);
        code += 1;
    }
    thresholds
}

/// The lookup table of a map, from its thresholds; checks that no bucket holds two and that
/// a bucket's threshold lies among the magnitudes its keys tell apart.
const fn lookup(entries: &[f32; 256]) -> Lookup {
    let thresholds = thresholds(entries);
    let mut table =
        Lookup { words: [0; 2 * BUCKETS], pieces: pieces::pieces(entries, &thresholds) };
    // The code of `y` by the thresholds, and a check that `highest` has at most one more.
    const fn at(thresholds: &[f32; 257], y: f32) -> usize {
        let (mut low, mut high) = (0_usize, 255);
        while low < high {
            let middle = (low + high).div_ceil(2);
            if y >= thresholds[middle] {
                low = middle;
            } else {
                high = middle - 1;
            }
        }
        low
    }
    const fn check(thresholds: &[f32; 257], base: usize, highest: f32) {
        assert!(base + 2 > 255 || thresholds[base + 2] > highest, "a bucket holds two thresholds");
    }
    /// The word of a bucket with code `base` whose next threshold is `next`, if `inside` it.
    const fn word(index: usize, base: usize, next: f32, inside: bool, negative: u32) -> u32 {
        let key = if inside {
            let first = MIN_BITS + ((index as u32) << SHIFT);
            let magnitude = next.to_bits() & !SIGN;
            assert!(magnitude >= first && magnitude - first <= WITHIN, "a threshold off its keys");
            // Clamped magnitudes (below the first bucket, above 1) take the key of their
            // bucket's edge: a threshold there would not tell them apart.
            assert!(index > 0 || magnitude > first, "a threshold at the map's edge");
            assert!(magnitude < ONE_BITS, "a threshold at the map's edge");
            key(magnitude - MIN_BITS, negative)
        } else {
            NO_THRESHOLD
        };
        ((base as u32) << 24) | key
    }
    let mut index = 0;
    while index < BUCKETS {
        let low_bits = if index == 0 { 0 } else { MIN_BITS + ((index as u32) << SHIFT) };
        let high_bits = MIN_BITS + ((index as u32) << SHIFT) + WITHIN;
        let high_bits = if high_bits > ONE_BITS { ONE_BITS } else { high_bits };
        let (low, high) = (f32::from_bits(low_bits), f32::from_bits(high_bits));
        let base = at(&thresholds, low);
        check(&thresholds, base, high);
        let next = thresholds[base + 1];
        table.words[index] = word(index, base, next, next <= high, 0);
        let base = at(&thresholds, -high);
        check(&thresholds, base, -low);
        let next = thresholds[base + 1];
        table.words[BUCKETS + index] = word(index, base, next, next <= -low, 1);
        index += 1;
    }
    table
}

/// torchao's signed dynamic map (`create_dynamic_map(signed=True)` as a `float32` tensor):
/// ±0.1 to ±1 in seven decades from 10⁻⁶ up, finer in the upper ones, with 0 and 1.
const SIGNED: [f32; 256] = [
    -0.99296874,
    -0.9789063,
    -0.96484375,
    -0.9507812,
    -0.93671876,
    -0.92265624,
    -0.9085938,
    -0.89453125,
    -0.8804687,
    -0.86640626,
    -0.85234374,
    -0.8382813,
    -0.82421875,
    -0.8101562,
    -0.79609376,
    -0.78203124,
    -0.7679688,
    -0.75390625,
    -0.7398437,
    -0.72578126,
    -0.7117188,
    -0.6976563,
    -0.68359375,
    -0.6695312,
    -0.65546876,
    -0.6414063,
    -0.6273438,
    -0.61328125,
    -0.5992187,
    -0.58515626,
    -0.5710938,
    -0.5570313,
    -0.54296875,
    -0.5289062,
    -0.5148437,
    -0.50078124,
    -0.4867187,
    -0.47265625,
    -0.45859373,
    -0.44453126,
    -0.43046874,
    -0.41640624,
    -0.40234375,
    -0.38828123,
    -0.37421876,
    -0.36015624,
    -0.34609374,
    -0.33203125,
    -0.31796873,
    -0.30390626,
    -0.28984374,
    -0.27578127,
    -0.26171875,
    -0.24765624,
    -0.23359375,
    -0.21953125,
    -0.20546874,
    -0.19140625,
    -0.17734376,
    -0.16328125,
    -0.14921875,
    -0.13515624,
    -0.12109375,
    -0.107031256,
    -0.09859375,
    -0.09578126,
    -0.092968754,
    -0.09015625,
    -0.08734375,
    -0.08453125,
    -0.08171876,
    -0.07890625,
    -0.07609375,
    -0.07328125,
    -0.070468746,
    -0.067656256,
    -0.06484375,
    -0.06203125,
    -0.059218753,
    -0.05640625,
    -0.05359375,
    -0.05078125,
    -0.04796875,
    -0.04515625,
    -0.042343747,
    -0.03953125,
    -0.036718752,
    -0.03390625,
    -0.03109375,
    -0.028281251,
    -0.02546875,
    -0.02265625,
    -0.019843752,
    -0.01703125,
    -0.01421875,
    -0.01140625,
    -0.00971875,
    -0.009156249,
    -0.00859375,
    -0.00803125,
    -0.00746875,
    -0.00690625,
    -0.00634375,
    -0.00578125,
    -0.0052187503,
    -0.0046562497,
    -0.00409375,
    -0.0035312497,
    -0.00296875,
    -0.00240625,
    -0.00184375,
    -0.0012812499,
    -0.0009437501,
    -0.00083125,
    -0.00071875006,
    -0.0006062501,
    -0.00049375003,
    -0.00038125002,
    -0.00026875004,
    -0.00015625001,
    -8.875e-05,
    -6.625e-05,
    -4.375e-05,
    -2.1249998e-05,
    -7.75e-06,
    -3.2500002e-06,
    -5.5000004e-07,
    0.0,
    5.5000004e-07,
    3.2500002e-06,
    7.75e-06,
    2.1249998e-05,
    4.375e-05,
    6.625e-05,
    8.875e-05,
    0.00015625001,
    0.00026875004,
    0.00038125002,
    0.00049375003,
    0.0006062501,
    0.00071875006,
    0.00083125,
    0.0009437501,
    0.0012812499,
    0.00184375,
    0.00240625,
    0.00296875,
    0.0035312497,
    0.00409375,
    0.0046562497,
    0.0052187503,
    0.00578125,
    0.00634375,
    0.00690625,
    0.00746875,
    0.00803125,
    0.00859375,
    0.009156249,
    0.00971875,
    0.01140625,
    0.01421875,
    0.01703125,
    0.019843752,
    0.02265625,
    0.02546875,
    0.028281251,
    0.03109375,
    0.03390625,
    0.036718752,
    0.03953125,
    0.042343747,
    0.04515625,
    0.04796875,
    0.05078125,
    0.05359375,
    0.05640625,
    0.059218753,
    0.06203125,
    0.06484375,
    0.067656256,
    0.070468746,
    0.07328125,
    0.07609375,
    0.07890625,
    0.08171876,
    0.08453125,
    0.08734375,
    0.09015625,
    0.092968754,
    0.09578126,
    0.09859375,
    0.107031256,
    0.12109375,
    0.13515624,
    0.14921875,
    0.16328125,
    0.17734376,
    0.19140625,
    0.20546874,
    0.21953125,
    0.23359375,
    0.24765624,
    0.26171875,
    0.27578127,
    0.28984374,
    0.30390626,
    0.31796873,
    0.33203125,
    0.34609374,
    0.36015624,
    0.37421876,
    0.38828123,
    0.40234375,
    0.41640624,
    0.43046874,
    0.44453126,
    0.45859373,
    0.47265625,
    0.4867187,
    0.50078124,
    0.5148437,
    0.5289062,
    0.54296875,
    0.5570313,
    0.5710938,
    0.58515626,
    0.5992187,
    0.61328125,
    0.6273438,
    0.6414063,
    0.65546876,
    0.6695312,
    0.68359375,
    0.6976563,
    0.7117188,
    0.72578126,
    0.7398437,
    0.75390625,
    0.7679688,
    0.78203124,
    0.79609376,
    0.8101562,
    0.82421875,
    0.8382813,
    0.85234374,
    0.86640626,
    0.8804687,
    0.89453125,
    0.9085938,
    0.92265624,
    0.93671876,
    0.9507812,
    0.96484375,
    0.9789063,
    0.99296874,
    1.0,
];

/// torchao's unsigned dynamic map (`create_dynamic_map(signed=False)` as a `float32`
/// tensor): the same decades with twice the codes each, 0 and 1.
const UNSIGNED: [f32; 256] = [
    0.0,
    3.2500003e-07,
    7.75e-07,
    2.1249998e-06,
    4.3749997e-06,
    6.625e-06,
    8.874999e-06,
    1.5624999e-05,
    2.6875001e-05,
    3.8125e-05,
    4.9374998e-05,
    6.0625003e-05,
    7.1875e-05,
    8.312499e-05,
    9.4375e-05,
    0.000128125,
    0.000184375,
    0.00024062501,
    0.00029687502,
    0.00035312498,
    0.00040937503,
    0.00046562502,
    0.00052187504,
    0.000578125,
    0.000634375,
    0.00069062505,
    0.000746875,
    0.0008031251,
    0.00085937505,
    0.000915625,
    0.00097187504,
    0.001140625,
    0.001421875,
    0.001703125,
    0.001984375,
    0.002265625,
    0.0025468748,
    0.002828125,
    0.0031093748,
    0.0033906251,
    0.003671875,
    0.003953125,
    0.0042343745,
    0.004515625,
    0.0047968747,
    0.005078125,
    0.005359375,
    0.0056406246,
    0.005921875,
    0.0062031248,
    0.006484375,
    0.0067656254,
    0.0070468746,
    0.007328125,
    0.0076093744,
    0.007890625,
    0.008171875,
    0.008453124,
    0.008734375,
    0.009015624,
    0.0092968745,
    0.009578126,
    0.009859375,
    0.010703126,
    0.012109376,
    0.013515624,
    0.014921876,
    0.016328124,
    0.017734377,
    0.019140625,
    0.020546874,
    0.021953126,
    0.023359375,
    0.024765624,
    0.026171876,
    0.027578129,
    0.028984373,
    0.030390626,
    0.031796873,
    0.033203125,
    0.034609374,
    0.036015626,
    0.03742188,
    0.038828123,
    0.040234376,
    0.041640624,
    0.043046873,
    0.044453125,
    0.045859374,
    0.047265626,
    0.04867187,
    0.050078124,
    0.051484372,
    0.052890625,
    0.054296877,
    0.05570313,
    0.057109382,
    0.058515627,
    0.059921872,
    0.061328124,
    0.06273438,
    0.06414063,
    0.06554688,
    0.06695312,
    0.068359375,
    0.06976563,
    0.07117188,
    0.072578125,
    0.07398438,
    0.07539063,
    0.07679688,
    0.07820313,
    0.07960938,
    0.081015624,
    0.08242188,
    0.08382813,
    0.085234374,
    0.086640626,
    0.08804687,
    0.08945312,
    0.090859376,
    0.09226563,
    0.09367188,
    0.095078126,
    0.09648438,
    0.09789063,
    0.099296875,
    0.103515625,
    0.11054687,
    0.11757813,
    0.12460937,
    0.13164061,
    0.13867188,
    0.14570314,
    0.15273437,
    0.15976563,
    0.16679686,
    0.17382812,
    0.18085939,
    0.18789062,
    0.19492188,
    0.20195311,
    0.20898438,
    0.21601564,
    0.22304687,
    0.23007813,
    0.23710936,
    0.24414062,
    0.25117186,
    0.25820312,
    0.26523438,
    0.2722656,
    0.27929688,
    0.28632814,
    0.29335937,
    0.3003906,
    0.30742186,
    0.31445312,
    0.3214844,
    0.32851562,
    0.33554685,
    0.3425781,
    0.34960938,
    0.35664064,
    0.36367187,
    0.3707031,
    0.37773436,
    0.38476562,
    0.3917969,
    0.39882812,
    0.40585935,
    0.4128906,
    0.41992188,
    0.42695314,
    0.43398437,
    0.4410156,
    0.44804686,
    0.45507812,
    0.4621094,
    0.46914062,
    0.47617185,
    0.4832031,
    0.49023438,
    0.4972656,
    0.5042969,
    0.5113281,
    0.51835936,
    0.5253906,
    0.5324218,
    0.53945315,
    0.54648435,
    0.5535157,
    0.5605469,
    0.56757814,
    0.5746094,
    0.5816406,
    0.5886719,
    0.5957031,
    0.6027344,
    0.60976565,
    0.61679685,
    0.6238282,
    0.6308594,
    0.63789064,
    0.6449219,
    0.6519531,
    0.6589844,
    0.6660156,
    0.6730469,
    0.68007815,
    0.68710935,
    0.6941407,
    0.7011719,
    0.70820314,
    0.7152344,
    0.7222656,
    0.7292969,
    0.7363281,
    0.7433594,
    0.75039065,
    0.75742185,
    0.7644532,
    0.7714844,
    0.7785156,
    0.7855469,
    0.7925781,
    0.7996094,
    0.8066406,
    0.8136718,
    0.82070315,
    0.82773435,
    0.8347657,
    0.8417969,
    0.8488281,
    0.8558594,
    0.8628906,
    0.8699219,
    0.8769531,
    0.8839843,
    0.89101565,
    0.89804685,
    0.9050782,
    0.9121094,
    0.9191406,
    0.9261719,
    0.9332031,
    0.9402344,
    0.9472656,
    0.9542968,
    0.96132815,
    0.96835935,
    0.9753907,
    0.9824219,
    0.9894531,
    0.9964844,
    1.0,
];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every entry, threshold and midpoint of `map`, their neighbours a few ulps away, a sweep
    /// of bit patterns through [-1, 1], and values outside it.
    pub(crate) fn probes(map: QuantMap) -> Vec<f32> {
        let entries = map.values();
        let mut points: Vec<f32> = thresholds(entries)[1..256].to_vec();
        for pair in entries.windows(2) {
            points.extend([pair[0], pair[0] + (pair[1] - pair[0]) * 0.5, pair[1]]);
        }
        let mut probes: Vec<f32> = Vec::new();
        for point in points {
            // As far as the AVX-512 codes leave to the table, and a product's error beyond.
            for ulps in -10_i32..=10 {
                probes.push(f32::from_bits(point.to_bits().wrapping_add_signed(ulps)));
            }
        }
        probes.extend((0..=0x3F80_0000_u32).step_by(97).map(f32::from_bits));
        probes.extend((0..=0x3F80_0000_u32).step_by(97).map(|bits| -f32::from_bits(bits)));
        probes.extend([0.0, -0.0, 1.0, -1.0, 1.5, -1.5, f32::INFINITY, f32::NEG_INFINITY]);
        probes.extend([f32::NAN, -f32::NAN, 1e-40, -1e-40]);
        probes
    }

    #[test]
    fn the_lookup_finds_the_code_the_search_finds() {
        for map in [QuantMap::Signed, QuantMap::Unsigned] {
            let (entries, lookup) = (map.values(), map.lookup());
            for y in probes(map) {
                assert_eq!(
                    usize::from(lookup.nearest_code(y)),
                    searched_code(entries, y),
                    "{map:?} {y:e}"
                );
            }
        }
    }

    #[test]
    fn block_scales_are_the_largest_magnitude_or_nan() {
        assert_eq!(block_scale(&[0.5_f32, -2.0, 1.0]), 2.0);
        assert_eq!(block_scale(&[0.0_f32, -0.0]), MIN_SCALE);
        assert_eq!(block_scale(&[1.0_f32, f32::NEG_INFINITY]), f32::INFINITY);
        assert!(block_scale(&[1.0_f32, -f32::NAN, 3.0]).is_nan());
    }
}
