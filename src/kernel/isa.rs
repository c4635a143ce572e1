//! Run-time choice of the instruction set that the contiguous element loop runs with.
//!
//! The loop is one generic function. [`Isa::run`] calls it from inside a function compiled
//! with AVX2 or AVX-512 enabled, where it is inlined and vectorised for those registers; a
//! default build targets baseline x86-64 (SSE2) and picks the widest set the CPU has at run
//! time. Only the choice of instructions differs between the versions: Rust never contracts
//! `a * b + c` into a fused multiply-add, and IEEE-754 addition, multiplication, division and
//! square root are correctly rounded in every instruction set, so all versions compute the
//! same bits. The passes over blocks of low-precision state are dispatched the same way: the
//! gradient's options stage ([`Isa::stage`]) and the block-wise 8-bit conversions
//! ([`Isa::quantize_each`], [`Isa::dequantize`]), whose map lookups are integer and comparison
//! work that gives the same bits in every set. With AVX2 (and FMA) or AVX-512 (F and BW) a
//! value's code comes from the map's arithmetic form, by permutations of small tables and
//! integer steps (`arithmetic_codes_avx2`, `arithmetic_codes_avx512`), which leaves to the
//! table only the values nearest a threshold: a gather from the table cost 1.5 to 1.9 times
//! as much on Zen 5, and the 8-bit step was a tenth slower with it on Zen 3. A code's entry
//! comes, where the CPU has AVX-512's byte permutations (VBMI), from permutations of the
//! entries held as planes of bytes in sixteen registers (`BytePlanes`), rather than from the
//! compiler's gather, which took about a third of the 8-bit step on Zen 5; with AVX2, from
//! one load per code (a gather of entries made the step about a sixth slower on Zen 3).
//!
//! Calling a `#[target_feature]` function is `unsafe`: it is sound only on a CPU that has the
//! features. This module is the one place that does it, each time right after checking them.
#![allow(unsafe_code)]

use super::{Stage, StateSlots};
use crate::compact::{QuantMap, int8};
use crate::element::Element;

/// `function(args…)` from the module compiled for `isa` (`avx512`, `avx2`) if the CPU has the
/// set, else `baseline`.
macro_rules! dispatch {
    ($isa:expr, $function:ident($($arg:expr),*), else $baseline:expr) => {{
        #[cfg(target_arch = "x86_64")]
        match $isa {
            // SAFETY: the CPU has AVX-512F, checked just before.
            Isa::Avx512 if $isa.is_available() => return unsafe { avx512::$function($($arg),*) },
            // SAFETY: the CPU has AVX2, checked just before.
            Isa::Avx2 if $isa.is_available() => return unsafe { avx2::$function($($arg),*) },
            _ => {}
        }
        $baseline
    }};
}

/// A module of the dispatched functions compiled with `feature` enabled: each inlines the
/// generic code it calls, which is thereby compiled for that set. `quantize_each` finds codes
/// with `codes` (written out for the set) where `extras()` holds, else one by one;
/// `dequantize` is given separately.
macro_rules! compiled_with {
    ($module:ident, $feature:literal, codes: $codes:ident if $extras:ident, $dequantize:item) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use super::*;

            #[target_feature(enable = $feature)]
            pub(super) unsafe fn run<A, S, F>(
                param: &mut [A],
                grad: &[A],
                state: &mut [&mut [A]],
                update: &F,
            ) where
                A: Element,
                S: StateSlots<A>,
                F: Fn(&mut A, A, &mut S),
            {
                S::for_each_slice(param, grad, state, update);
            }

            #[target_feature(enable = $feature)]
            pub(super) unsafe fn run_bf16<A, S, F>(
                param: &mut [A],
                grad: &[A],
                state: &mut [&mut [u16]],
                pairs: &mut [u32],
                update: &F,
            ) where
                A: Element,
                S: StateSlots<A>,
                F: Fn(&mut A, A, &mut S),
            {
                S::for_each_bf16(param, grad, state, pairs, update);
            }

            #[target_feature(enable = $feature)]
            pub(super) unsafe fn stage<A: Element>(
                stage: Stage<A>,
                param: &[A],
                grad: &[A],
                seen: &mut [A],
            ) {
                stage.grad_of_slices(param, grad, seen);
            }

            #[target_feature(enable = $feature)]
            pub(super) unsafe fn quantize_each<A: Element>(
                values: &[&[A]],
                maps: &[QuantMap],
                codes: &mut [&mut [u8]],
                scales: &mut [f32],
            ) {
                if !super::$extras() {
                    return int8::encode_each(values, maps, codes, scales, int8::codes_of);
                }
                int8::encode_each(values, maps, codes, scales, |values, scale, map, codes| {
                    // SAFETY: the CPU has the set and its extras, checked just before.
                    match map {
                        QuantMap::Signed => unsafe {
                            super::$codes::<A, true>(values, scale, codes)
                        },
                        QuantMap::Unsigned => unsafe {
                            super::$codes::<A, false>(values, scale, codes)
                        },
                    }
                });
            }

            #[target_feature(enable = $feature)]
            $dequantize
        }
    };
}

/// An instruction set that the contiguous loop can be compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Whatever the build targets (SSE2 on a default x86-64 build).
    Baseline,
    /// 256-bit vectors.
    Avx2,
    /// 512-bit vectors.
    Avx512,
}

impl Isa {
    /// Whether this CPU can run the set (detection is cached by the standard library).
    #[inline]
    pub(crate) fn is_available(self) -> bool {
        match self {
            Isa::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// The widest set this CPU has.
    #[inline]
    pub(crate) fn best() -> Isa {
        [Isa::Avx512, Isa::Avx2].into_iter().find(|isa| isa.is_available()).unwrap_or(Isa::Baseline)
    }

    /// Runs the slice loop of `S`, its state in the element type, compiled for this
    /// instruction set, or for the baseline if the CPU lacks it.
    ///
    /// The arguments are passed on as they are, rather than inside a closure, so that the
    /// compiled loop knows the slices and the update's captured scalars do not overlap and
    /// can keep the scalars in registers.
    #[inline(always)]
    pub(crate) fn run<A, S, F>(
        self,
        param: &mut [A],
        grad: &[A],
        state: &mut [&mut [A]],
        update: &F,
    ) where
        A: Element,
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S),
    {
        dispatch!(self, run(param, grad, state, update), else S::for_each_slice(param, grad, state, update))
    }

    /// [`Isa::run`] over state kept as bfloat16, in buffers or in pairs
    /// ([`StateSlots::for_each_bf16`]).
    ///
    /// Not inlined, unlike `run`: a low-precision step calls it from two places, and each
    /// inlined copy would compile the baseline loop it falls back to once more for each rule.
    #[inline(never)]
    pub(crate) fn run_bf16<A, S, F>(
        self,
        param: &mut [A],
        grad: &[A],
        state: &mut [&mut [u16]],
        pairs: &mut [u32],
        update: &F,
    ) where
        A: Element,
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S),
    {
        dispatch!(self, run_bf16(param, grad, state, pairs, update), else S::for_each_bf16(param, grad, state, pairs, update))
    }

    /// [`Stage::grad_of_slices`] of one block of low-precision state.
    #[inline(always)]
    pub(crate) fn stage<A: Element>(
        self,
        stage: Stage<A>,
        param: &[A],
        grad: &[A],
        seen: &mut [A],
    ) {
        dispatch!(self, stage(stage, param, grad, seen), else stage.grad_of_slices(param, grad, seen))
    }

    /// [`int8::encode_each`]: one block of each of several buffers.
    #[inline(always)]
    pub(crate) fn quantize_each<A: Element>(
        self,
        values: &[&[A]],
        maps: &[QuantMap],
        codes: &mut [&mut [u8]],
        scales: &mut [f32],
    ) {
        dispatch!(self, quantize_each(values, maps, codes, scales), else int8::encode_each(values, maps, codes, scales, int8::codes_of))
    }

    /// [`int8::decode`] of one block.
    #[inline(always)]
    pub(crate) fn dequantize<A: Element>(
        self,
        codes: &[u8],
        scale: f32,
        map: QuantMap,
        values: &mut [A],
    ) {
        dispatch!(self, dequantize(codes, scale, map, values), else int8::decode(codes, scale, map, values))
    }
}

compiled_with!(
    avx512,
    "avx512f",
    codes: codes_by_arithmetic_avx512 if has_byte_packs,
    pub(super) unsafe fn dequantize<A: Element>(
        codes: &[u8],
        scale: f32,
        map: QuantMap,
        values: &mut [A],
    ) {
        if super::has_byte_permutations() {
            // SAFETY: the CPU has AVX-512F, BW and VBMI, checked just before.
            unsafe { super::dequantize_by_planes(codes, scale, map, values) }
        } else {
            int8::decode(codes, scale, map, values);
        }
    }
);

compiled_with!(
    avx2,
    "avx2",
    codes: codes_by_arithmetic_avx2 if has_fma,
    pub(super) unsafe fn dequantize<A: Element>(
        codes: &[u8],
        scale: f32,
        map: QuantMap,
        values: &mut [A],
    ) {
        int8::decode(codes, scale, map, values);
    }
);

/// Whether the CPU has fused multiply-adds (FMA) besides AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_fma() -> bool {
    std::arch::is_x86_feature_detected!("fma")
}

/// Whether the CPU has AVX-512's byte and word instructions (BW) besides AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_byte_packs() -> bool {
    std::arch::is_x86_feature_detected!("avx512bw")
}

/// Whether the CPU has AVX-512's byte permutations (VBMI, with BW) besides AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_byte_permutations() -> bool {
    std::arch::is_x86_feature_detected!("avx512vbmi") && has_byte_packs()
}

/// [`int8::codes_of`] a block by the map's arithmetic form (`arithmetic_codes_avx512`),
/// `SIGNED` for [`QuantMap::Signed`], 64 values at a time: the codes of four vectors are
/// packed into one store, since storing each vector's 16 codes (`vpmovdb`) took a third of
/// the quantizer's time on Zen 5.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn codes_by_arithmetic_avx512<A: Element, const SIGNED: bool>(
    values: &[A],
    scale: f32,
    codes: &mut [u8],
) {
    use core::arch::x86_64::*;
    // The map from `SIGNED`, a constant, so that its tables' addresses are too.
    let map = if SIGNED { QuantMap::Signed } else { QuantMap::Unsigned };
    int8::codes_in_lanes(values, scale, map, codes, |lookup, xs: &[f32; 64], scale, codes| {
        let reciprocal = scale.recip();
        // A macro rather than a closure mapped over the four: the compiler may keep such a
        // closure as a call (as it did in a trial build), passing registers through memory.
        macro_rules! quarter {
            ($k:literal) => {{
                let xs = xs[16 * $k..16 * $k + 16].try_into().expect("16 values");
                // SAFETY: the caller's CPU has AVX-512F.
                unsafe { arithmetic_codes_avx512::<SIGNED>(&lookup.pieces, xs, reciprocal) }
            }};
        }
        let [(c0, n0), (c1, n1), (c2, n2), (c3, n3)] =
            [quarter!(0), quarter!(1), quarter!(2), quarter!(3)];
        // Saturating packs (codes lie within 0 to 255; a lane left to the table may hold
        // anything) leave, in 128-bit lane `k`, the codes 4k to 4k + 3 of each vector in turn;
        // a permutation of 32-bit groups puts them in order.
        let bytes = _mm512_packus_epi16(_mm512_packs_epi32(c0, c1), _mm512_packs_epi32(c2, c3));
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        // SAFETY: `codes` holds 64 bytes; unaligned stores are allowed.
        unsafe {
            _mm512_storeu_si512(codes.as_mut_ptr().cast(), _mm512_permutexvar_epi32(order, bytes))
        };
        u64::from(n0) | u64::from(n1) << 16 | u64::from(n2) << 32 | u64::from(n3) << 48
    })
}

/// [`int8::decode`] 64 codes at a time by byte permutations of the map's entries held as
/// four planes of bytes in sixteen registers (`BytePlanes`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn dequantize_by_planes<A: Element>(
    codes: &[u8],
    scale: f32,
    map: QuantMap,
    values: &mut [A],
) {
    let planes = BytePlanes::load(map.byte_planes());
    int8::decode_in_lanes(codes, scale, map, values, |codes| planes.at(codes))
}

/// A map's 256 entries as four planes of bytes (byte `p` of every entry's bits) in sixteen
/// AVX-512 registers, looked up 64 codes at a time: for each plane two byte permutations pick
/// from 128 entries by a code's low 7 bits and a blend by its high bit chooses, and the
/// planes' bytes are then interleaved into entries. The same bits as a gather, at about an
/// eighth of its cost on Zen 5 (a stand-alone loop: 0.04–0.05 ns per value against 0.31–0.33).
#[cfg(target_arch = "x86_64")]
struct BytePlanes {
    registers: [core::arch::x86_64::__m512i; 16],
}

#[cfg(target_arch = "x86_64")]
impl BytePlanes {
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn load(planes: &[[u8; 256]; 4]) -> Self {
        use core::arch::x86_64::*;
        BytePlanes {
            registers: core::array::from_fn(|k| {
                // SAFETY: a plane holds 256 bytes, `64 · (k % 4) + 63` the last read;
                // unaligned loads are allowed.
                unsafe { _mm512_loadu_si512(planes[k / 4][64 * (k % 4)..].as_ptr().cast()) }
            }),
        }
    }

    /// The entries of 64 codes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    #[inline]
    fn at(&self, codes: &[u8; 64]) -> [f32; 64] {
        use core::arch::x86_64::*;
        // The interleaving below leaves, in output register `j`, 128-bit lane `k`, the entries
        // of the codes at positions 4j to 4j + 3 of input lane `k`; so position 16k + 4j + i
        // first gets code 16j + 4k + i, and the entries come out in order.
        const ORDER: [u8; 64] = {
            let mut order = [0; 64];
            let mut position = 0;
            while position < 64 {
                let (lane, group, index) = (position / 16, position % 16 / 4, position % 4);
                order[position] = (16 * group + 4 * lane + index) as u8;
                position += 1;
            }
            order
        };
        // SAFETY: `codes` and `ORDER` hold 64 bytes; unaligned loads are allowed.
        let (codes, order) = unsafe {
            (_mm512_loadu_si512(codes.as_ptr().cast()), _mm512_loadu_si512(ORDER.as_ptr().cast()))
        };
        let codes = _mm512_permutexvar_epi8(order, codes);
        let high = _mm512_movepi8_mask(codes);
        // Each plane by a macro rather than a closure mapped over the four: in one build the
        // compiler kept the closure as a call passing registers through memory, and the
        // 8-bit step was a third slower on Zen 5.
        let r = &self.registers;
        macro_rules! plane {
            ($p:literal) => {
                _mm512_mask_blend_epi8(
                    high,
                    _mm512_permutex2var_epi8(r[4 * $p], codes, r[4 * $p + 1]),
                    _mm512_permutex2var_epi8(r[4 * $p + 2], codes, r[4 * $p + 3]),
                )
            };
        }
        let (b0, b1, b2, b3) = (plane!(0), plane!(1), plane!(2), plane!(3));
        let (low01, high01) = (_mm512_unpacklo_epi8(b0, b1), _mm512_unpackhi_epi8(b0, b1));
        let (low23, high23) = (_mm512_unpacklo_epi8(b2, b3), _mm512_unpackhi_epi8(b2, b3));
        let words = [
            _mm512_unpacklo_epi16(low01, low23),
            _mm512_unpackhi_epi16(low01, low23),
            _mm512_unpacklo_epi16(high01, high23),
            _mm512_unpackhi_epi16(high01, high23),
        ];
        let mut entries = [0.0_f32; 64];
        for (chunk, words) in entries.chunks_exact_mut(16).zip(words) {
            // SAFETY: `chunk` holds 16 `f32`s; unaligned stores are allowed.
            unsafe { _mm512_storeu_ps(chunk.as_mut_ptr(), _mm512_castsi512_ps(words)) };
        }
        entries
    }
}

/// `Lookup::nearest_code` of the 16 quotients `xs · reciprocal` at once, by the map's
/// arithmetic form ([`int8::Pieces`]): the codes, one per 32-bit lane, and the lanes (bits)
/// whose codes it leaves to the table, about 0.07 % of values (their lanes hold anything).
/// Its permutations and integer steps replace a gather, which cost 1.5 to 1.9 times as much
/// on Zen 5.
///
/// The quotients must lie within a few units in the last place of `[-1, 1]`: magnitudes up to
/// 1 lie in the first 25 binades of the tables, so nothing here checks for larger ones or
/// NaN. `reciprocal` is the reciprocal of a block's scale, rounded: a product then lies
/// within 3 units in the last place of the correctly rounded quotient that torchao computes,
/// and every lane whose code those 3 units could change is left to the table (checked for
/// every `f32` by `the_arithmetic_codes_every_f32_as_the_table_does`). A multiplication
/// instead of a division makes the codes about a tenth faster on Zen 5.
///
/// `SIGNED` is for [`QuantMap::Signed`]. The unsigned map holds state that is never negative
/// (Adam's second moment), so it leaves negative values to the table rather than spend four
/// instructions of 25 on the sign: the 8-bit AdamW step about 5 % faster on Zen 5.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn arithmetic_codes_avx512<const SIGNED: bool>(
    pieces: &int8::Pieces,
    xs: &[f32; 16],
    reciprocal: f32,
) -> (core::arch::x86_64::__m512i, u16) {
    use core::arch::x86_64::*;
    use int8::{FRACTION_BITS, MIN_BITS, SIGN, SLACK};

    // SAFETY (all loads below): each reads 16 values of an array of 16 or 32; unaligned loads
    // are allowed.
    let ints = |values: &[i32]| unsafe { _mm512_loadu_si512(values.as_ptr().cast()) };
    let floats = |values: &[f32]| unsafe { _mm512_loadu_ps(values.as_ptr()) };
    let splat = _mm512_set1_epi32;
    let y = _mm512_mul_ps(floats(xs), _mm512_set1_ps(reciprocal));
    // The unsigned map keeps the sign: a negative value's bits, as an integer, lie below
    // those of every magnitude, so it falls in the first binade, below its (absent) start, in
    // piece −1, whose table entries are all 0: position 0, a whole one, left to the table.
    let bits = if SIGNED {
        _mm512_and_si512(_mm512_castps_si512(y), splat(!SIGN as i32))
    } else {
        _mm512_castps_si512(y)
    };
    let magnitude = _mm512_castsi512_ps(bits);
    // The binade, and the piece: the binade's, less one below a piece start inside it (less
    // SLACK: see `Pieces::binade_start`).
    let binade = _mm512_srli_epi32::<23>(_mm512_max_epi32(bits, splat(MIN_BITS as i32)));
    let (piece_low, piece_high) =
        (ints(&pieces.binade_piece[..16]), ints(&pieces.binade_piece[16..]));
    let (start_low, start_high) =
        (ints(&pieces.binade_start[..16]), ints(&pieces.binade_start[16..]));
    let past_start =
        _mm512_sub_epi32(bits, _mm512_permutex2var_epi32(start_low, binade, start_high));
    let piece = _mm512_add_epi32(
        _mm512_permutex2var_epi32(piece_low, binade, piece_high),
        _mm512_srai_epi32::<31>(past_start),
    );
    let scale = _mm512_permutexvar_ps(piece, floats(&pieces.scale));
    let offset = _mm512_permutexvar_ps(piece, floats(&pieces.offset));
    let position = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_fmadd_ps(magnitude, scale, offset),
    );
    let highest = _mm512_permutexvar_epi32(piece, ints(&pieces.highest));
    let mut code = _mm512_srai_epi32::<{ FRACTION_BITS }>(_mm512_min_epi32(position, highest));
    if SIGNED {
        let negative = _mm512_cmplt_epi32_mask(_mm512_castps_si512(y), splat(0));
        code = _mm512_mask_sub_epi32(code, negative, splat(pieces.mirror), code);
        code = _mm512_max_epi32(code, splat(0));
    }
    // Within SLACK of a whole position or of a piece start (both shifted by SLACK, so as
    // unsigned numbers both sides of either fold into 0 to 2 · SLACK): the table decides.
    let fraction = _mm512_and_si512(position, splat((1 << FRACTION_BITS) - 1));
    let near = _mm512_cmple_epu32_mask(_mm512_min_epu32(fraction, past_start), splat(2 * SLACK));
    (code, near)
}

/// [`int8::codes_of`] a block by the map's arithmetic form (`arithmetic_codes_avx2`),
/// `SIGNED` for [`QuantMap::Signed`], 32 values at a time, their codes packed into one store
/// (16 at a time, in half the registers, was slower on Zen 3).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn codes_by_arithmetic_avx2<A: Element, const SIGNED: bool>(
    values: &[A],
    scale: f32,
    codes: &mut [u8],
) {
    use core::arch::x86_64::*;
    let map = if SIGNED { QuantMap::Signed } else { QuantMap::Unsigned };
    int8::codes_in_lanes(values, scale, map, codes, |lookup, xs: &[f32; 32], scale, codes| {
        let reciprocal = scale.recip();
        macro_rules! quarter {
            ($k:literal) => {{
                let xs = xs[8 * $k..8 * $k + 8].try_into().expect("8 values");
                // SAFETY: the caller's CPU has AVX2 and FMA.
                unsafe { arithmetic_codes_avx2::<SIGNED>(&lookup.pieces, xs, reciprocal) }
            }};
        }
        let [(c0, n0), (c1, n1), (c2, n2), (c3, n3)] =
            [quarter!(0), quarter!(1), quarter!(2), quarter!(3)];
        // Saturating packs leave, in 128-bit lane `k`, the codes 4k to 4k + 3 of each vector
        // in turn; a permutation of 32-bit groups puts them in order.
        let bytes = _mm256_packus_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        // SAFETY: `codes` holds 32 bytes; unaligned stores are allowed.
        unsafe {
            _mm256_storeu_si256(
                codes.as_mut_ptr().cast(),
                _mm256_permutevar8x32_epi32(bytes, order),
            )
        };
        u64::from(n0) | u64::from(n1) << 8 | u64::from(n2) << 16 | u64::from(n3) << 24
    })
}

/// `arithmetic_codes_avx512` for eight values with AVX2 (and FMA), whose permutations pick
/// from eight lanes, so that each table takes one: the binade tables are read by groups of
/// four binades (`Pieces::group_piece`, with up to two piece starts per group), and the
/// pieces' tables by a piece's low three bits, the last piece (the code of 1) reading the
/// first's (the code of 0), which lies on the same line. With the tables of 32 binades and
/// 16 pieces in four and two registers, picked by blends, the 8-bit AdamW step took 3.4 ns
/// per element in cache on Zen 3 against 2.8 with the gather this replaces: permutations
/// run on one of that core's pipes, and the tables did not fit its sixteen registers.
/// Checked for every `f32` by `the_arithmetic_codes_every_f32_as_the_table_does`, as the
/// AVX-512 form is.
///
/// The unsigned map leaves its negative values to the table by their sign.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn arithmetic_codes_avx2<const SIGNED: bool>(
    pieces: &int8::Pieces,
    xs: &[f32; 8],
    reciprocal: f32,
) -> (core::arch::x86_64::__m256i, u8) {
    use core::arch::x86_64::*;
    use int8::{FRACTION_BITS, MIN_BITS, SIGN, SLACK};

    // SAFETY (both loads): each reads 8 values of an array of 8 or more; unaligned loads are
    // allowed.
    let ints = |values: &[i32]| unsafe { _mm256_loadu_si256(values.as_ptr().cast()) };
    let floats = |values: &[f32]| unsafe { _mm256_loadu_ps(values.as_ptr()) };
    let splat = _mm256_set1_epi32;
    let y = _mm256_mul_ps(floats(xs), _mm256_set1_ps(reciprocal));
    let bits = if SIGNED {
        _mm256_and_si256(_mm256_castps_si256(y), splat(!SIGN as i32))
    } else {
        _mm256_castps_si256(y)
    };
    let magnitude = _mm256_castsi256_ps(bits);
    // The group of four binades, and the piece: the group's, less one below each start in it.
    let group = _mm256_srli_epi32::<25>(_mm256_max_epi32(bits, splat(MIN_BITS as i32)));
    let by_group = |table: &[i32; 8]| _mm256_permutevar8x32_epi32(ints(table), group);
    let past_first = _mm256_sub_epi32(bits, by_group(&pieces.group_starts[0]));
    let past_second = _mm256_sub_epi32(bits, by_group(&pieces.group_starts[1]));
    let piece = _mm256_add_epi32(
        by_group(&pieces.group_piece),
        _mm256_add_epi32(_mm256_srai_epi32::<31>(past_first), _mm256_srai_epi32::<31>(past_second)),
    );
    // The pieces' tables by the piece's low three bits: piece 8, the last (the code of 1),
    // reads piece 0's entries, the same line.
    let scale = _mm256_permutevar8x32_ps(floats(&pieces.scale), piece);
    let offset = _mm256_permutevar8x32_ps(floats(&pieces.offset), piece);
    let position = _mm256_cvtps_epi32(_mm256_fmadd_ps(magnitude, scale, offset));
    let highest = _mm256_permutevar8x32_epi32(ints(&pieces.highest), piece);
    let mut code =
        _mm256_srai_epi32::<{ FRACTION_BITS as i32 }>(_mm256_min_epi32(position, highest));
    if SIGNED {
        let mirrored = _mm256_castsi256_ps(_mm256_sub_epi32(splat(pieces.mirror), code));
        // By the sign of `y`.
        let signed = _mm256_blendv_ps(_mm256_castsi256_ps(code), mirrored, y);
        code = _mm256_max_epi32(_mm256_castps_si256(signed), splat(0));
    }
    let fraction = _mm256_and_si256(position, splat((1 << FRACTION_BITS) - 1));
    // Below 2^FRACTION_BITS, so a signed comparison orders it.
    let nearest = _mm256_min_epu32(fraction, _mm256_min_epu32(past_first, past_second));
    let near =
        _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(splat(2 * SLACK + 1), nearest)))
            as u8;
    // The unsigned map's negative values (never its state's) go to the table.
    (code, if SIGNED { near } else { near | _mm256_movemask_ps(y) as u8 })
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// How far, in units in the last place, a lane's product `x · RN(1/s)` may lie from the
    /// quotient `RN(x / s)`: the two differ by a relative `3 · 2^-24` at most, which is less
    /// than 3 units of the finer of their binades' units; one more for good measure.
    const PRODUCT_ULPS: usize = 4;

    /// Each set with an arithmetic form of the codes that the CPU has, with each map.
    fn arithmetic_cases() -> Vec<(Isa, QuantMap)> {
        let avx2 = Isa::Avx2.is_available() && has_fma();
        let avx512 = Isa::Avx512.is_available() && has_byte_packs();
        [(Isa::Avx2, avx2), (Isa::Avx512, avx512)]
            .into_iter()
            .filter_map(|(isa, available)| available.then_some(isa))
            .flat_map(|isa| [QuantMap::Signed, QuantMap::Unsigned].map(|map| (isa, map)))
            .collect()
    }

    /// The codes of 16 quotients by the arithmetic form of `isa` (`arithmetic_codes_avx2` on
    /// each half, or `arithmetic_codes_avx512`), and the lanes it leaves to the table.
    fn arithmetic_codes(isa: Isa, map: QuantMap, chunk: &[f32; 16]) -> ([i32; 16], u16) {
        use core::arch::x86_64::*;
        let pieces = &map.lookup().pieces;
        let signed = map == QuantMap::Signed;
        let mut codes = [0_i32; 16];
        // SAFETY (all calls and stores): `arithmetic_cases` checked that the CPU has the set;
        // `codes` holds 16 `i32`s, unaligned stores are allowed.
        match isa {
            Isa::Avx512 => unsafe {
                let (lanes, left) = if signed {
                    arithmetic_codes_avx512::<true>(pieces, chunk, 1.0)
                } else {
                    arithmetic_codes_avx512::<false>(pieces, chunk, 1.0)
                };
                _mm512_storeu_si512(codes.as_mut_ptr().cast(), lanes);
                (codes, left)
            },
            Isa::Avx2 => {
                let mut left = 0;
                for half in 0..2 {
                    let xs = chunk[8 * half..8 * half + 8].try_into().expect("8 values");
                    // SAFETY: as above.
                    unsafe {
                        let (lanes, half_left) = if signed {
                            arithmetic_codes_avx2::<true>(pieces, xs, 1.0)
                        } else {
                            arithmetic_codes_avx2::<false>(pieces, xs, 1.0)
                        };
                        _mm256_storeu_si256(codes[8 * half..].as_mut_ptr().cast(), lanes);
                        left |= u16::from(half_left) << (8 * half);
                    }
                }
                (codes, left)
            }
            Isa::Baseline => unreachable!("the baseline has no arithmetic form"),
        }
    }

    /// Checks the arithmetic codes of `isa` on those of `ys` within [`PRODUCT_ULPS`] of
    /// `[-1, 1]` against the table: every code it gives is the table's, and is the table's
    /// code of every `f32` within `PRODUCT_ULPS` of the value, so a quotient computed as a
    /// product gets the code of the quotient torchao divides out. Returns how many values it
    /// left to the table.
    fn check_arithmetic_codes(isa: Isa, map: QuantMap, ys: impl Iterator<Item = f32>) -> usize {
        let lookup = map.lookup();
        let around = |y: f32, step: fn(f32) -> f32| (0..PRODUCT_ULPS).fold(y, |y, _| step(y));
        let mut left = 0;
        let mut chunk = [0.0_f32; 16];
        let mut filled = 0;
        let mut check = |chunk: &[f32; 16], lanes: usize| {
            let (codes, redo) = arithmetic_codes(isa, map, chunk);
            for (lane, (&y, code)) in chunk.iter().zip(codes).enumerate().take(lanes) {
                if redo >> lane & 1 == 1 {
                    left += 1;
                } else {
                    let (below, above) = (around(y, f32::next_down), around(y, f32::next_up));
                    let expected = lookup.nearest_code(y);
                    assert_eq!(code, i32::from(expected), "{isa:?} {map:?} {y:e}");
                    assert_eq!(lookup.nearest_code(below), expected, "{map:?} {y:e} {below:e}");
                    assert_eq!(lookup.nearest_code(above), expected, "{map:?} {y:e} {above:e}");
                }
            }
        };
        let edge = around(1.0, f32::next_up);
        for y in ys.filter(|y| y.abs() <= edge) {
            chunk[filled] = y;
            filled += 1;
            if filled == 16 {
                check(&chunk, 16);
                filled = 0;
            }
        }
        check(&chunk, filled);
        left
    }

    #[test]
    fn the_arithmetic_codes_as_the_table_does() {
        for (isa, map) in arithmetic_cases() {
            // Every threshold and entry and their neighbours: these are the hard cases.
            check_arithmetic_codes(isa, map, int8::tests::probes(map).into_iter());
            // Evenly spread values, as a block divided by its largest magnitude holds (the
            // unsigned map's are never negative; it leaves its negative values to the table):
            // the table is left only the values within a few 2^-14 of a threshold's position.
            let lowest = if map == QuantMap::Signed { -1_000_000 } else { 0 };
            let spread = (lowest..=1_000_000).map(|k| k as f32 * 1e-6);
            let left = check_arithmetic_codes(isa, map, spread);
            assert!(left < 2_000, "{isa:?} {map:?}: {left} values from {lowest}e-6 left");
        }
    }

    /// Every `f32` (about a minute per set): `cargo test --release --lib -- --ignored`.
    #[test]
    #[ignore = "every f32 of both maps, about a minute per instruction set"]
    fn the_arithmetic_codes_every_f32_as_the_table_does() {
        let cases = arithmetic_cases();
        assert!(!cases.is_empty(), "needs a CPU with AVX2 and FMA, or AVX-512F and BW");
        for (isa, map) in cases {
            let left = check_arithmetic_codes(isa, map, (0..=u32::MAX).map(f32::from_bits));
            println!("{isa:?} {map:?}: {left} of 2^32 values left to the table");
        }
    }

    #[test]
    fn every_instruction_set_dequantizes_a_block_alike() {
        let codes: Vec<u8> = (0..=255).chain((0..=255).rev()).collect();
        let scales = [1.0, 3.5e-3, 1e-12, 7.0e30, f32::INFINITY, f32::NAN];
        for len in [1, 15, 16, 17, 63, 64, 65, 128, 255, 256] {
            for start in [0, 240] {
                let codes = &codes[start..start + len];
                for (map, scale) in [QuantMap::Signed, QuantMap::Unsigned]
                    .into_iter()
                    .flat_map(|map| scales.map(|scale| (map, scale)))
                {
                    let mut expected = vec![0.0_f32; len];
                    int8::decode(codes, scale, map, &mut expected);
                    let mut wide = vec![0.0_f64; len];
                    int8::decode(codes, scale, map, &mut wide);
                    for isa in [Isa::Avx2, Isa::Avx512].into_iter().filter(|isa| isa.is_available())
                    {
                        let (mut values, mut values_wide) = (vec![1.0_f32; len], vec![1.0; len]);
                        isa.dequantize(codes, scale, map, &mut values);
                        isa.dequantize(codes, scale, map, &mut values_wide);
                        let bits =
                            |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        let wide_bits =
                            |values: &[f64]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        let context = format!("{isa:?} {map:?} {len} {start} {scale}");
                        assert_eq!(bits(&values), bits(&expected), "{context}");
                        assert_eq!(wide_bits(&values_wide), wide_bits(&wide), "{context}");
                    }
                }
            }
        }
    }

    /// A step quantizes its buffers' blocks in one call: each buffer's codes and scale are its
    /// own, as if quantized alone, whatever the other buffers hold.
    #[test]
    fn quantizing_blocks_together_is_quantizing_each_alone() {
        let ramp: Vec<f32> = (0..200).map(|i| (i as f32 - 90.0) * 1e-4).collect();
        let mut with_nan = ramp.iter().map(|x| x * x).collect::<Vec<_>>();
        with_nan[7] = f32::NAN;
        // Beyond `RECIPROCAL_SCALE`, where the codes come from the table.
        let huge: Vec<f32> = (0..200).map(|i| (i as f32 - 90.0) * 1.5e36).collect();
        let values = [&ramp[..], &with_nan, &huge, &ramp[..]];
        let maps = [QuantMap::Signed, QuantMap::Unsigned, QuantMap::Signed, QuantMap::Unsigned];
        let mut expected = [[0_u8; 200]; 4];
        let mut expected_scales = [0.0_f32; 4];
        for k in 0..4 {
            expected_scales[k] = int8::encode(values[k], maps[k], &mut expected[k]);
        }
        let isas = [Isa::Baseline, Isa::Avx2, Isa::Avx512];
        for isa in isas.into_iter().filter(|isa| isa.is_available()) {
            let mut codes = [[0_u8; 200]; 4];
            let mut scales = [0.0_f32; 4];
            let mut buffers = codes.each_mut().map(|codes| &mut codes[..]);
            isa.quantize_each(&values, &maps, &mut buffers, &mut scales);
            assert_eq!(scales.map(f32::to_bits), expected_scales.map(f32::to_bits), "{isa:?}");
            assert_eq!(codes, expected, "{isa:?}");
        }
    }

    #[test]
    fn every_instruction_set_quantizes_a_block_alike() {
        let specials = [0.0, -0.0, 1e-40, -3e38, f32::INFINITY, f32::NAN, 0.7, -2.5];
        for len in [1, 7, 8, 9, 16, 17, 63, 64, 65, 129, 255, 256] {
            for special in 0..=specials.len() {
                let values: Vec<f32> = (0..len)
                    .map(|i| match specials.get(special) {
                        Some(&value) if i == len / 2 => value,
                        _ => ((i * 7919 % 1000) as f32 - 500.0) * 1e-3,
                    })
                    .collect();
                for map in [QuantMap::Signed, QuantMap::Unsigned] {
                    let mut expected = vec![0_u8; len];
                    let scale = int8::encode(&values, map, &mut expected);
                    for isa in [Isa::Avx2, Isa::Avx512].into_iter().filter(|isa| isa.is_available())
                    {
                        let mut codes = vec![0_u8; len];
                        let mut got = [0.0];
                        isa.quantize_each(&[&values], &[map], &mut [&mut codes], &mut got);
                        assert_eq!(got[0].to_bits(), scale.to_bits(), "{isa:?} {len} {special}");
                        assert_eq!(codes, expected, "{isa:?} {len} {special} {map:?}");
                    }
                }
            }
        }
    }
}
