//! Run-time choice of the instruction set that the contiguous element loop runs with.
//!
//! The loop is one generic function. [`Isa::run`] calls it from inside a function compiled
//! with AVX2 or AVX-512 enabled, where it is inlined and vectorised for those registers; a
//! default build targets baseline x86-64 (SSE2) and picks the widest set the CPU has at run
//! time. Only the choice of instructions differs between the versions: Rust never contracts
//! `a * b + c` into a fused multiply-add, and IEEE-754 addition, multiplication, division and
//! square root are correctly rounded in every instruction set, so all versions compute the
//! same bits. The block-wise 8-bit conversions of low-precision state ([`Isa::quantize`],
//! [`Isa::dequantize`]) are dispatched the same way: their map lookups are integer and
//! comparison work that gives the same bits in every set, and become gathers with AVX-512.
//!
//! Calling a `#[target_feature]` function is `unsafe`: it is sound only on a CPU that has the
//! features. This module is the one place that does it, each time right after checking them.
#![allow(unsafe_code)]

use super::{StateSlots, StateWord};
use crate::compact::{QuantMap, int8};
use crate::element::Element;

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

    /// Runs the slice loop of `S`, its state kept as `W`, compiled for this instruction set,
    /// or for the baseline if the CPU lacks it.
    ///
    /// The arguments are passed on as they are, rather than inside a closure, so that the
    /// compiled loop knows the slices and the update's captured scalars do not overlap and
    /// can keep the scalars in registers.
    #[inline(always)]
    pub(crate) fn run<A, W, S, F>(
        self,
        param: &mut [A],
        grad: &[A],
        state: &mut [&mut [W]],
        update: &F,
    ) where
        A: Element,
        W: StateWord<A>,
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S),
    {
        #[cfg(target_arch = "x86_64")]
        match self {
            // SAFETY: the CPU has AVX-512F, checked just before.
            Isa::Avx512 if self.is_available() => {
                return unsafe { with_avx512::<A, W, S, F>(param, grad, state, update) };
            }
            // SAFETY: the CPU has AVX2, checked just before.
            Isa::Avx2 if self.is_available() => {
                return unsafe { with_avx2::<A, W, S, F>(param, grad, state, update) };
            }
            _ => {}
        }
        S::for_each_slice(param, grad, state, update);
    }
}

impl Isa {
    /// [`int8::encode`] of one block.
    #[inline(always)]
    pub(crate) fn quantize<A: Element>(self, values: &[A], map: QuantMap, codes: &mut [u8]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        match self {
            // SAFETY: the CPU has AVX-512F, checked just before.
            Isa::Avx512 if self.is_available() => {
                return unsafe { quantize_avx512(values, map, codes) };
            }
            // SAFETY: the CPU has AVX2, checked just before.
            Isa::Avx2 if self.is_available() => {
                return unsafe { quantize_avx2(values, map, codes) };
            }
            _ => {}
        }
        int8::encode(values, map, codes)
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
        #[cfg(target_arch = "x86_64")]
        match self {
            // SAFETY: the CPU has AVX-512F, checked just before.
            Isa::Avx512 if self.is_available() => {
                return unsafe { dequantize_avx512(codes, scale, map, values) };
            }
            // SAFETY: the CPU has AVX2, checked just before.
            Isa::Avx2 if self.is_available() => {
                return unsafe { dequantize_avx2(codes, scale, map, values) };
            }
            _ => {}
        }
        int8::decode(codes, scale, map, values);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2<A: Element>(values: &[A], map: QuantMap, codes: &mut [u8]) -> f32 {
    int8::encode(values, map, codes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_avx512<A: Element>(values: &[A], map: QuantMap, codes: &mut [u8]) -> f32 {
    int8::encode(values, map, codes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dequantize_avx2<A: Element>(codes: &[u8], scale: f32, map: QuantMap, values: &mut [A]) {
    int8::decode(codes, scale, map, values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dequantize_avx512<A: Element>(codes: &[u8], scale: f32, map: QuantMap, values: &mut [A]) {
    int8::decode(codes, scale, map, values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<A, W, S, F>(param: &mut [A], grad: &[A], state: &mut [&mut [W]], update: &F)
where
    A: Element,
    W: StateWord<A>,
    S: StateSlots<A>,
    F: Fn(&mut A, A, &mut S),
{
    S::for_each_slice(param, grad, state, update);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<A, W, S, F>(param: &mut [A], grad: &[A], state: &mut [&mut [W]], update: &F)
where
    A: Element,
    W: StateWord<A>,
    S: StateSlots<A>,
    F: Fn(&mut A, A, &mut S),
{
    S::for_each_slice(param, grad, state, update);
}
