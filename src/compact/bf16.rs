//! bfloat16: the upper half of an IEEE-754 binary32, 8 bits of exponent and 7 of fraction.

use crate::element::Element;
use crate::kernel::StateWord;

/// Rounds `value` to the nearest bfloat16, ties to even, and returns its bits.
///
/// Values beyond the largest bfloat16 round to ±∞. Every NaN becomes the NaN `0xFFFF`, as
/// PyTorch's vectorised `.to(torch.bfloat16)` on x86-64 gives it.
///
/// ```
/// use ndarray_optim::compact::{bf16_bits, bf16_value};
///
/// assert_eq!(bf16_bits(1.0), 0x3F80);
/// // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: the tie goes to the even neighbour, 1.
/// assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
/// assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
/// ```
#[inline(always)]
pub fn bf16_bits(value: f32) -> u16 {
    let bits = value.to_bits();
    // Adding just under half a unit of the kept part, plus its last bit, carries into the
    // kept part exactly when the dropped part is above half, or at half with an odd last bit.
    // (Only a NaN's bits can wrap; it is replaced.) A select rather than an early return
    // keeps loops over slices vectorised.
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    if value.is_nan() { 0xFFFF } else { rounded }
}

/// The value of bfloat16 `bits`, exactly, as an `f32`.
#[inline(always)]
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// The word that keeps two bfloat16 values together, `bits[0]` in the high half.
///
/// A rule with two per-element buffers (the Adam family's moments) keeps them this way, one
/// word per element: a step loads and stores one word per element for both, and a half becomes
/// an `f32` with a mask or a shift, without the shuffles that separate buffers of 16-bit values
/// take.
#[inline(always)]
pub(crate) fn pair(bits: [u16; 2]) -> u32 {
    (u32::from(bits[0]) << 16) | u32::from(bits[1])
}

/// The two bfloat16 values of a [`pair`] word, the high half first.
#[inline(always)]
pub(crate) fn halves(word: u32) -> [u16; 2] {
    [(word >> 16) as u16, word as u16]
}

/// Rounds each of `values` to bfloat16, into `bits`.
#[inline(always)]
pub(crate) fn encode<A: Element>(values: &[A], bits: &mut [u16]) {
    for (bits, &value) in bits.iter_mut().zip(values) {
        *bits = <u16 as StateWord<A>>::round(value);
    }
}

/// The values of bfloat16 `bits`, into `values`.
#[inline(always)]
pub(crate) fn decode<A: Element>(bits: impl Iterator<Item = u16>, values: &mut [A]) {
    for (value, bits) in values.iter_mut().zip(bits) {
        *value = <u16 as StateWord<A>>::expand(bits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearest bfloat16 by search among the neighbours, ties to the even one.
    fn nearest(value: f32) -> u16 {
        let truncated = (value.to_bits() >> 16) as u16;
        let (down, up) = (truncated, truncated.wrapping_add(1));
        // Past the largest finite value, ±∞ stands where 2¹²⁸ would be (IEEE 754 rounding).
        let widened = |bits: u16| match bf16_value(bits) {
            infinite if infinite.is_infinite() => infinite.signum() as f64 * 2_f64.powi(128),
            finite => f64::from(finite),
        };
        let distance = |bits: u16| (widened(bits) - f64::from(value)).abs();
        match distance(down).partial_cmp(&distance(up)).unwrap() {
            core::cmp::Ordering::Less => down,
            core::cmp::Ordering::Greater => up,
            core::cmp::Ordering::Equal => {
                if down & 1 == 0 {
                    down
                } else {
                    up
                }
            }
        }
    }

    #[test]
    fn rounds_to_nearest_even_over_a_sweep_of_patterns() {
        // Every 4099th pattern reaches every exponent, sign and rounding case.
        for bits in (0..=u32::MAX).step_by(4099).chain([0x7F7F_FFFF, 0xFF7F_FFFF, 0x3F80_8000]) {
            let value = f32::from_bits(bits);
            if value.is_finite() {
                assert_eq!(bf16_bits(value), nearest(value), "{value:e} ({bits:#010x})");
            }
        }
    }

    #[test]
    fn a_pair_keeps_both_halves() {
        assert_eq!(pair([bf16_bits(1.0), bf16_bits(-2.0)]), 0x3F80_C000);
        for bits in [[0x3F80, 0xC000], [0xFFFF, 0], [0, 0xFFFF], [0x8000, 0x7F80]] {
            assert_eq!(halves(pair(bits)), bits);
        }
    }

    #[test]
    fn special_values() {
        assert_eq!(bf16_bits(f32::INFINITY), 0x7F80);
        assert_eq!(bf16_bits(f32::NEG_INFINITY), 0xFF80);
        assert_eq!(bf16_bits(-0.0), 0x8000);
        assert_eq!(bf16_bits(f32::NAN), 0xFFFF);
        assert!(bf16_value(bf16_bits(-f32::NAN)).is_nan());
        assert_eq!(bf16_bits(f32::MAX), 0x7F80);
    }
}
