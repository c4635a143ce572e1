//! A map's nearest codes by arithmetic: within a decade the dynamic map's entries are evenly
//! spaced (the midpoints of `linspace(0.1, 1, n + 1)` times a power of ten), so its
//! thresholds lie at whole positions of a linear function of the magnitude, and a value's code
//! is the first code of its decade plus the whole part of its position there.
//!
//! Magnitudes split into pieces at the thresholds where a decade's first code starts (and
//! where the code of 1 starts); a piece is found from the binade of the magnitude (its
//! exponent) and at most one comparison, since no binade holds two such thresholds. The
//! position is computed in `f32` in fixed point, [`FRACTION_BITS`] bits below the point: a
//! value whose position lies within [`SLACK`] units of a whole number, or whose magnitude lies
//! within [`SLACK`] units in the last place of a piece's start, may round either way and is
//! left to the table lookup ([`super::Lookup::nearest_code`]). Every other value gets the
//! table's code, which is also the code of every `f32` within 4 units in the last place of
//! it, so that a quotient computed as a product may be off by that much (every `f32` is
//! checked by `kernel::isa::tests::the_arithmetic_codes_every_f32_as_the_table_does`).

use super::{MIN_BITS, SIGN};

/// Bits of a code position below the point.
pub(crate) const FRACTION_BITS: u32 = 14;
/// How near a threshold (in units of `2^-FRACTION_BITS` of a position, or in units in the
/// last place of a magnitude) a value is left to the table: the smallest slack for which the
/// check of every `f32`, with the 4 units a product may be off, passes (4 does not).
pub(crate) const SLACK: i32 = 5;
/// A piece start below every magnitude's bits: a binade without one compares as past it.
const NO_START: i32 = -(1 << 30);
/// The pieces: below the first decade (the code of 0), seven decades, and the code of 1.
const PIECES: usize = 9;
// Piece −1, index 15 of the tables, stays empty (see `pieces`).
const _: () = assert!(PIECES < 16);

/// A map's codes as a function of the magnitude, piece by piece, in tables of 32 binades and
/// 16 pieces (vector registers of 32-bit lanes index them).
pub(crate) struct Pieces {
    /// For the binade of magnitudes with biased exponent `e` (`2^{e − 127}` up to twice that),
    /// at index `e mod 32`, for the 32 exponents from [`FIRST_EXPONENT`] (magnitudes up to 1
    /// have at most 127; smaller magnitudes than the first binade's count as its first): the
    /// piece of the binade's first magnitude, plus one if a piece starts inside the binade.
    /// Indexing by the exponent itself, whose low five bits a permutation reads, saves the
    /// vector loop a subtraction.
    pub(crate) binade_piece: [i32; 32],
    /// The bits of the magnitude where a piece starts inside the binade, less [`SLACK`], or a
    /// number below every magnitude's bits. A magnitude's bits less these are at most
    /// `2 · SLACK` (as unsigned numbers) within `SLACK` of the start; those below the start
    /// that count as past it are left to the table.
    pub(crate) binade_start: [i32; 32],
    /// Per piece: a magnitude's code position, times `2^FRACTION_BITS`, plus [`SLACK`], is
    /// `magnitude · scale + offset`. Its bits below the point are at most `2 · SLACK` within
    /// `SLACK` of a whole position; those below it whose whole part counts one more are left to
    /// the table. Both shifts save the vector loop an addition.
    pub(crate) scale: [f32; 16],
    pub(crate) offset: [f32; 16],
    /// Per piece: the greatest fixed-point position of its codes. Just below the next
    /// piece's start, more than [`SLACK`] units in the last place from it, the rounded line
    /// can still run past the piece's last code (in the first decade, whose few entries make
    /// the line steep); positions are clamped to it. Nothing runs below a piece's first code.
    pub(crate) highest: [i32; 16],
    /// The binade tables by groups of four binades, for vectors of eight lanes (AVX2), whose
    /// permutations pick from eight: at index `(e >> 2) mod 8` for the binades of exponents
    /// `e` from [`FIRST_EXPONENT`] up to 127, the piece at the top of the group's last binade,
    /// and the starts (as in `binade_start`) of the two pieces that may begin inside the group;
    /// a magnitude's piece is the group's, less one below each start.
    pub(crate) group_piece: [i32; 8],
    pub(crate) group_starts: [[i32; 8]; 2],
    /// A negative value's code is `mirror` minus the code of its magnitude, at least 0 (the
    /// signed map is symmetric about its zero; the unsigned map gives every negative value 0).
    pub(crate) mirror: i32,
}

/// The biased exponent of the first binade of [`Pieces::binade_piece`] (2^-24 up to 2^-23,
/// from [`MIN_BITS`]): smaller magnitudes share it, since no piece starts below it.
const FIRST_EXPONENT: usize = (MIN_BITS >> 23) as usize;

/// The pieces of `entries`, with `thresholds` as [`super::thresholds`] gives them; checks, at
/// compile time, that no binade holds two piece starts.
pub(super) const fn pieces(entries: &[f32; 256], thresholds: &[f32; 257]) -> Pieces {
    let mut table = Pieces {
        binade_piece: [0; 32],
        binade_start: [NO_START; 32],
        scale: [0.0; 16],
        offset: [0.0; 16],
        highest: [0; 16],
        group_piece: [0; 8],
        group_starts: [[NO_START; 8]; 2],
        mirror: 0,
    };
    let mut zero = 0;
    while entries[zero] < 0.0 {
        zero += 1;
    }
    table.mirror = 2 * zero as i32;
    // Piece `d` starts at `starts[d − 1]`.
    let mut starts = [0.0_f32; PIECES - 1];
    let mut first = zero + 1;
    let mut decade = 0;
    while decade < 7 {
        // Decade `i` holds the entries from 10^(i − 7) up to 10^(i − 6), 1 excluded.
        let top = power_of_ten(decade as i32 - 6);
        let mut end = first;
        while end < 255 && (entries[end] as f64) < top {
            end += 1;
        }
        let count = end - first;
        let n = count as f64;
        piece(&mut table, decade + 1, first, count, n / (0.9 * top), -0.1 * n / 0.9);
        starts[decade] = thresholds[first];
        first = end;
        decade += 1;
    }
    assert!(first == 255, "the decades end at the code of 1");
    starts[PIECES - 2] = thresholds[255];
    // Below the first decade every magnitude takes 0's code, and from the last threshold up
    // to 1 the code of 1. Both ends lie on one line, so that vectors of eight lanes (AVX2),
    // whose tables hold eight pieces, read both from one entry.
    let slope = ends_slope(zero, thresholds[255] as f64, starts[0] as f64);
    piece(&mut table, 0, zero, 256 - zero, slope, 0.5);
    piece(&mut table, PIECES - 1, zero, 256 - zero, slope, 0.5);
    let mut exponent = FIRST_EXPONENT;
    while exponent < FIRST_EXPONENT + 32 {
        let (binade, start_bits) = (exponent % 32, (exponent as u32) << 23);
        let end_bits = start_bits + (1 << 23);
        let mut below = 0;
        let mut inside = 0;
        let mut k = 0;
        while k < PIECES - 1 {
            let bits = starts[k].to_bits() & !SIGN;
            if bits < start_bits {
                below += 1;
            } else if bits < end_bits {
                table.binade_start[binade] = bits as i32 - SLACK;
                inside += 1;
            }
            k += 1;
        }
        assert!(inside <= 1, "a binade holds two piece starts");
        // The unsigned map's vector loop leaves negative values to the table by this: their
        // bits, as integers, fall in the first binade and below its mark of no start, so in
        // piece −1 (index 15), whose entries are all 0.
        assert!(
            exponent > FIRST_EXPONENT || below + inside == 0,
            "a piece starts in or below the first binade"
        );
        table.binade_piece[binade] = below + inside;
        exponent += 1;
    }
    group_binades(&mut table);
    table
}

// The groups of the binades up to 1 have distinct indices.
const _: () = assert!((127 >> 2) - (FIRST_EXPONENT >> 2) < 8);

/// Fills the tables of groups of four binades from those of binades; checks, at compile time,
/// that no group holds more than two piece starts.
const fn group_binades(table: &mut Pieces) {
    let mut exponent = FIRST_EXPONENT;
    while exponent < 128 {
        let group = (exponent >> 2) % 8;
        table.group_piece[group] = table.binade_piece[exponent % 32];
        let start = table.binade_start[exponent % 32];
        if start != NO_START {
            let k = if table.group_starts[0][group] == NO_START { 0 } else { 1 };
            assert!(table.group_starts[k][group] == NO_START, "a group holds three starts");
            table.group_starts[k][group] = start;
        }
        exponent += 1;
    }
}

/// The slope, in codes per unit of magnitude, of the line through both ends of the map: its
/// position is 0's code and a half at magnitude 0, and the code of 1 and a half half-way
/// between the `last` threshold and 1. Checks, at compile time, that it stays clear of whole
/// positions below the `first` threshold and from the last up to 1.
const fn ends_slope(zero: usize, last: f64, first: f64) -> f64 {
    let slope = (255 - zero) as f64 / ((last + 1.0) / 2.0);
    assert!(slope * first < 0.4, "the ends' line nears a whole position below the first code");
    assert!(slope * (1.0 - last) / 2.0 < 0.4, "the ends' line nears a whole position near 1");
    slope
}

/// Sets piece `d`: its `count` codes from `first`, and the position `magnitude · scale +
/// offset` of a magnitude among them, both in fixed point.
const fn piece(table: &mut Pieces, d: usize, first: usize, count: usize, scale: f64, offset: f64) {
    let unit = (1 << FRACTION_BITS) as f64;
    table.scale[d] = (scale * unit) as f32;
    table.offset[d] = ((offset + first as f64) * unit + SLACK as f64) as f32;
    table.highest[d] = ((first + count - 1) as i32) << FRACTION_BITS | ((1 << FRACTION_BITS) - 1);
}

/// `10^exponent` for exponents from −6 to 0, by an exact power of ten and one division.
const fn power_of_ten(exponent: i32) -> f64 {
    let mut power = 1.0;
    let mut k = 0;
    while k < -exponent {
        power *= 10.0;
        k += 1;
    }
    1.0 / power
}
