//! Exact sums of `f64` values, the same bits whatever the order of the terms
//! and however they are split between parties whose sums are added at the end.
//!
//! Floating-point addition is not associative: a sum of partial sums depends on where the
//! parts were cut. A sharded step adds the squared gradients of each rank's elements and then
//! the ranks' totals; to give the single-process norm bit for bit, the sum must not depend on
//! the cut. So every term is added exactly, as an integer multiple of the smallest subnormal
//! `$2^{-1074}$`, into 32-bit digits, and rounded to `f64` once at the end.
//!
//! The digits are kept in `f64`s (integers below `$2^{53}$` add exactly there), so the parts of
//! different parties add up with the plain elementwise `f64` sum that every all-reduce offers.

/// Bits per digit.
const DIGIT_BITS: i32 = 32;
const DIGIT: f64 = 4_294_967_296.0; // 2^32
/// Digits: a finite `f64` is `$m \cdot 2^{e}$` with a 53-bit `$m$` and
/// `$-1074 \le e \le 971$`, so its bits lie in `$[0, 2098)$` above `$2^{-1074}$`: 66 digits,
/// and two more for the carries of up to `$2^{64}$` terms.
const DIGITS: usize = 68;
/// Terms a digit takes before a carry is due: each adds less than `$2^{32}$`, and a digit
/// must stay below `$2^{53}$`. Half of the `$2^{21}$` that fit, so that a sum of this many
/// parties' normalized digits is exact too.
const TERMS_BETWEEN_CARRIES: u32 = 1 << 20;

/// The number of `f64` values that [`ExactSum::parts_mut`] exposes.
pub(crate) const PARTS: usize = DIGITS + 2;

/// An exact sum of non-negative values, with NaN and infinities counted apart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ExactSum {
    /// The digits, then the number of infinite terms and the number of NaN terms.
    parts: [f64; PARTS],
    /// Terms added since the digits were last normalized.
    pending: u32,
}

impl Default for ExactSum {
    fn default() -> Self {
        ExactSum { parts: [0.0; PARTS], pending: 0 }
    }
}

impl ExactSum {
    /// Adds `value`, which is non-negative, `+∞` or NaN (a sum of squares never holds
    /// anything else).
    pub(crate) fn add(&mut self, value: f64) {
        if value.is_nan() {
            self.parts[DIGITS + 1] += 1.0;
            return;
        }
        if value.is_infinite() {
            self.parts[DIGITS] += 1.0;
            return;
        }
        debug_assert!(value >= 0.0, "only non-negative terms");
        let bits = value.to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as i32;
        let fraction = bits & ((1 << 52) - 1);
        // value = mantissa · 2^(shift − 1074)
        let (mantissa, shift) = match exponent {
            0 => (fraction, 0),
            _ => (fraction | 1 << 52, exponent - 1),
        };
        let first = (shift / DIGIT_BITS) as usize;
        let mut rest = u128::from(mantissa) << (shift % DIGIT_BITS);
        for digit in &mut self.parts[first..first + 3] {
            *digit += (rest as u32) as f64;
            rest >>= DIGIT_BITS;
        }
        self.pending += 1;
        if self.pending == TERMS_BETWEEN_CARRIES {
            self.normalize();
        }
    }

    /// Carries every digit's excess into the next, leaving each below `$2^{32}$`.
    fn normalize(&mut self) {
        let mut carry = 0.0;
        for digit in &mut self.parts[..DIGITS] {
            let value = *digit + carry;
            carry = (value / DIGIT).floor();
            *digit = value - carry * DIGIT;
        }
        debug_assert!(carry == 0.0, "the top digits are headroom");
        self.pending = 0;
    }

    /// The parts to add up across parties, normalized: summing each position over up to
    /// `$2^{20}$` parties and writing the sums back (an all-reduce with `+`) gives the exact
    /// sum of every party's terms.
    pub(crate) fn parts_mut(&mut self) -> &mut [f64; PARTS] {
        self.normalize();
        // The caller's sums are at most 2^20 normalized digits each: exact, but due a carry.
        self.pending = TERMS_BETWEEN_CARRIES - 1;
        &mut self.parts
    }

    /// The digits from the most significant down: normalized sums compare as they do.
    fn digits_from_top(&self) -> impl Iterator<Item = &f64> {
        self.parts[..DIGITS].iter().rev()
    }

    /// The sum rounded to the nearest `f64` (ties to even; a sum below `f64::MIN_POSITIVE`
    /// may be rounded twice), NaN if a term was NaN, `+∞` if one was infinite or the sum
    /// exceeds `f64`'s range.
    pub(crate) fn total(&self) -> f64 {
        let mut sum = *self;
        sum.normalize();
        if sum.parts[DIGITS + 1] > 0.0 {
            return f64::NAN;
        }
        if sum.parts[DIGITS] > 0.0 {
            return f64::INFINITY;
        }
        let digits = &sum.parts[..DIGITS];
        let Some(top) = digits.iter().rposition(|&d| d != 0.0) else { return 0.0 };
        // The top three digits hold at least 65 significant bits, more than f64 keeps; a
        // sticky bit for any lower digit makes the one rounding of the conversion exact.
        let low = top.saturating_sub(2);
        let mut head: u128 = 0;
        for &digit in digits[low..=top].iter().rev() {
            head = head << DIGIT_BITS | digit as u128;
        }
        if digits[..low].iter().any(|&d| d != 0.0) {
            head |= 1;
        }
        scale(head as f64, low as i32 * DIGIT_BITS - 1074)
    }
}

/// An exact sum of values of either sign: the positive and the negative terms in an
/// [`ExactSum`] each, whose difference is rounded once at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct SignedSum {
    positive: ExactSum,
    negative: ExactSum,
}

impl SignedSum {
    /// Adds `value`; NaN and infinities are counted as [`ExactSum::add`] counts them, on
    /// their sign's side.
    pub(crate) fn add(&mut self, value: f64) {
        if value < 0.0 { self.negative.add(-value) } else { self.positive.add(value) }
    }

    /// The exact sum rounded to the nearest `f64` as [`ExactSum::total`] rounds it; NaN if a
    /// term was NaN or both signs hold an infinity, `±∞` if one does.
    pub(crate) fn total(&self) -> f64 {
        let (mut positive, mut negative) = (self.positive, self.negative);
        positive.normalize();
        negative.normalize();
        let count = |sum: &ExactSum, slot: usize| sum.parts[slot] > 0.0;
        if count(&positive, DIGITS + 1) || count(&negative, DIGITS + 1) {
            return f64::NAN;
        }
        match (count(&positive, DIGITS), count(&negative, DIGITS)) {
            (true, true) => return f64::NAN,
            (true, false) => return f64::INFINITY,
            (false, true) => return f64::NEG_INFINITY,
            (false, false) => {}
        }
        let (larger, smaller, sign) = if positive.digits_from_top().lt(negative.digits_from_top()) {
            (negative, positive, -1.0)
        } else {
            (positive, negative, 1.0)
        };
        let mut difference = ExactSum::default();
        let mut borrow = 0.0;
        for (digit, (&high, &low)) in difference.parts[..DIGITS]
            .iter_mut()
            .zip(larger.parts[..DIGITS].iter().zip(&smaller.parts[..DIGITS]))
        {
            let value = high - low - borrow;
            (*digit, borrow) = if value < 0.0 { (value + DIGIT, 1.0) } else { (value, 0.0) };
        }
        sign * difference.total()
    }

    /// Both signs' parts ([`ExactSum::parts_mut`]), to add up across parties.
    pub(crate) fn parts_mut(&mut self) -> [&mut [f64; PARTS]; 2] {
        [self.positive.parts_mut(), self.negative.parts_mut()]
    }
}

/// `x · 2^exponent`, in steps that stay within `f64`'s normal powers of two.
fn scale(mut x: f64, mut exponent: i32) -> f64 {
    while exponent > 1023 {
        x *= f64::from_bits(2046 << 52); // 2^1023
        exponent -= 1023;
    }
    while exponent < -1022 {
        x *= f64::from_bits(1 << 52); // 2^-1022
        exponent += 1022;
    }
    x * f64::from_bits(((exponent + 1023) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(values: &[f64]) -> f64 {
        let mut sum = ExactSum::default();
        values.iter().for_each(|&v| sum.add(v));
        sum.total()
    }

    #[test]
    fn single_values_come_back_unchanged() {
        for value in [0.0, 1.0, 0.1, 3.5e-310, f64::MIN_POSITIVE, 5e-324, 1e300, f64::MAX, 7.0] {
            assert_eq!(exact(&[value]).to_bits(), value.to_bits(), "{value:e}");
        }
    }

    #[test]
    fn sums_are_exact_where_f64_loses_bits() {
        // 2^60 + 1 + 1: f64 adds neither 1 on its own, the exact sum rounds 2^60 + 2 to 2^60.
        assert_eq!(exact(&[2f64.powi(60), 1.0, 1.0]), 2f64.powi(60));
        // 2^53 + 1 + 1 = 2^53 + 2, representable; left to right f64 gives 2^53.
        assert_eq!(exact(&[2f64.powi(53), 1.0, 1.0]), 2f64.powi(53) + 2.0);
        // A tie broken by a sticky bit far below: 2^53 + 1 + 2^-1000 rounds up.
        assert_eq!(exact(&[2f64.powi(53), 1.0, 2f64.powi(-1000)]), 2f64.powi(53) + 2.0);
        assert_eq!(exact(&[2f64.powi(53), 1.0]), 2f64.powi(53)); // a tie to even
        assert_eq!(exact(&[f64::MAX, f64::MAX]), f64::INFINITY);
        assert!(exact(&[1.0, f64::NAN, f64::INFINITY]).is_nan());
        assert_eq!(exact(&[1.0, f64::INFINITY]), f64::INFINITY);
    }

    #[test]
    fn matches_integer_arithmetic() {
        // Terms m · 2^-20 with m below 2^40: their exact sum fits a u128, whose conversion to
        // f64 rounds once, to nearest.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for terms in [1, 2, 7, 100, 5000] {
            let (mut sum, mut reference) = (ExactSum::default(), 0_u128);
            for _ in 0..terms {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let m = state >> (24 + state % 20);
                sum.add(m as f64 * 2f64.powi(-20));
                reference += u128::from(m);
            }
            assert_eq!(sum.total(), reference as f64 * 2f64.powi(-20), "{terms} terms");
        }
    }

    #[test]
    fn many_terms_carry() {
        let terms = 3 * TERMS_BETWEEN_CARRIES as usize + 5;
        let mut sum = ExactSum::default();
        (0..terms).for_each(|_| sum.add(4_294_967_295.0));
        assert_eq!(sum.total(), 4_294_967_295.0 * terms as f64);
    }

    #[test]
    fn signed_sums_take_each_side_exactly() {
        let mut sum = SignedSum::default();
        for value in [2f64.powi(60), -1.0, -1.0, 3.0, -(2f64.powi(60))] {
            sum.add(value);
        }
        // Left to right in f64 the ones vanish into 2^60 and the sum is 3.
        assert_eq!(sum.total(), 1.0);
        let mut negative = SignedSum::default();
        [1.0, -(2f64.powi(60)), -0.5].into_iter().for_each(|value| negative.add(value));
        assert_eq!(negative.total(), -(2f64.powi(60)));
        negative.add(2f64.powi(60));
        assert_eq!(negative.total(), 0.5);
        // Split between two parties, in another order: the same bits.
        let (mut whole, mut split) = (SignedSum::default(), [SignedSum::default(); 2]);
        for (i, value) in [0.1, -0.7, 1e-300, -2.5e10, 0.3, -0.1].into_iter().enumerate() {
            split[i % 2].add(value);
            whole.add(value);
        }
        let [mut first, mut second] = split;
        for (mine, theirs) in second.parts_mut().into_iter().zip(first.parts_mut()) {
            mine.iter_mut().zip(theirs.iter()).for_each(|(a, b)| *a += b);
        }
        assert_eq!(second.total().to_bits(), whole.total().to_bits());
        // The exact sum, −25000000000.39999999999999996…, rounded once (the difference of
        // the two signs' rounded sums would be −25000000000.399998).
        assert_eq!(whole.total(), -25000000000.4);
        let mut special = SignedSum::default();
        special.add(f64::NEG_INFINITY);
        assert_eq!(special.total(), f64::NEG_INFINITY);
        special.add(f64::INFINITY);
        assert!(special.total().is_nan());
    }

    #[test]
    fn parts_add_up_across_parties() {
        let values: Vec<f64> =
            (0..1000).map(|i| ((i as f64 * 0.7).sin() * 40.0).exp() * (i % 3) as f64).collect();
        let whole = exact(&values);
        for cut in [0, 1, 333, 999, 1000] {
            let (mut a, mut b) = (ExactSum::default(), ExactSum::default());
            values[..cut].iter().for_each(|&v| a.add(v));
            values[cut..].iter().rev().for_each(|&v| b.add(v));
            let (pa, pb) = (*a.parts_mut(), *b.parts_mut());
            let mut reduced = ExactSum::default();
            for ((slot, x), y) in reduced.parts_mut().iter_mut().zip(pa).zip(pb) {
                *slot = x + y;
            }
            assert_eq!(reduced.total().to_bits(), whole.to_bits(), "cut at {cut}");
        }
    }
}
