//! The fused pass over state kept in low precision ([`crate::compact`]): block by block, the
//! state is expanded to the element type, the rule's update runs on it as on full-precision
//! state, and the new values are stored back rounded.
//!
//! Blocks are [`BLOCK`] elements in row-major order whatever the parameter's memory layout,
//! so the values (and the 8-bit scales) are the same for every layout, and chunks for threads
//! are cut at block boundaries, so they are the same for every thread count.

use ndarray::{ArrayView, ArrayViewMut, IxDyn};

use super::{MAX_STATE, StateSlots};
use crate::compact::{BLOCK, Compact, QuantMap, bf16_bits, bf16_value, decode, encode};
use crate::element::Element;

/// A tensor's low-precision state as a step sees it (a hidden type of the public
/// [`Element`] trait's interface).
#[doc(hidden)]
pub struct CompactState<'a> {
    pub(crate) compact: &'a mut Compact,
}

/// The stored buffers of one run of elements, cut to that run.
enum Stores<'a> {
    Bf16([&'a mut [u16]; MAX_STATE]),
    Int8 {
        codes: [&'a mut [u8]; MAX_STATE],
        scales: [&'a mut [f32]; MAX_STATE],
        maps: [QuantMap; MAX_STATE],
    },
}

impl<'a> Stores<'a> {
    fn new(compact: &'a mut Compact, numel: usize) -> Self {
        let step = numel.max(1);
        match compact {
            Compact::Bf16 { bits } => {
                let mut buffers = bits.chunks_mut(step);
                Stores::Bf16(core::array::from_fn(|_| buffers.next().unwrap_or_default()))
            }
            Compact::Int8 { codes, scales, maps } => {
                let mut buffers = codes.chunks_mut(step);
                let mut blocks = scales.chunks_mut(numel.div_ceil(BLOCK).max(1));
                Stores::Int8 {
                    codes: core::array::from_fn(|_| buffers.next().unwrap_or_default()),
                    scales: core::array::from_fn(|_| blocks.next().unwrap_or_default()),
                    maps: core::array::from_fn(|k| {
                        maps.get(k).copied().unwrap_or(QuantMap::Signed)
                    }),
                }
            }
        }
    }

    /// The stores of elements `..mid` and `mid..`, `mid` a multiple of [`BLOCK`].
    #[cfg(feature = "rayon")]
    fn split_at(self, mid: usize) -> (Self, Self) {
        fn cut<T>(
            buffers: [&mut [T]; MAX_STATE],
            mid: usize,
        ) -> ([&mut [T]; MAX_STATE], [&mut [T]; MAX_STATE]) {
            let mut highs = buffers.map(|buffer| {
                let mid = mid.min(buffer.len());
                buffer.split_at_mut(mid)
            });
            let lows = core::array::from_fn(|k| core::mem::take(&mut highs[k].0));
            (lows, highs.map(|(_, high)| high))
        }
        match self {
            Stores::Bf16(bits) => {
                let (low, high) = cut(bits, mid);
                (Stores::Bf16(low), Stores::Bf16(high))
            }
            Stores::Int8 { codes, scales, maps } => {
                let (codes_low, codes_high) = cut(codes, mid);
                let (scales_low, scales_high) = cut(scales, mid / BLOCK);
                (
                    Stores::Int8 { codes: codes_low, scales: scales_low, maps },
                    Stores::Int8 { codes: codes_high, scales: scales_high, maps },
                )
            }
        }
    }

    /// Buffer `k`'s values of block `block` (of this run), into `values`.
    #[inline(always)]
    fn load<A: Element>(&self, k: usize, block: usize, values: &mut [A]) {
        let start = block * BLOCK;
        match self {
            Stores::Bf16(bits) => {
                for (value, &bits) in values.iter_mut().zip(&bits[k][start..]) {
                    *value = A::from_f64(f64::from(bf16_value(bits)));
                }
            }
            Stores::Int8 { codes, scales, maps } => {
                let codes = &codes[k][start..start + values.len()];
                decode(codes, scales[k][block], maps[k], values);
            }
        }
    }

    /// Stores `values` as buffer `k`'s block `block`.
    #[inline(always)]
    fn store<A: Element>(&mut self, k: usize, block: usize, values: &[A]) {
        let start = block * BLOCK;
        match self {
            Stores::Bf16(bits) => {
                for (bits, &value) in bits[k][start..].iter_mut().zip(values) {
                    *bits = bf16_bits(value.into_f64() as f32);
                }
            }
            Stores::Int8 { codes, scales, maps } => {
                let codes = &mut codes[k][start..start + values.len()];
                scales[k][block] = encode(values, maps[k], codes);
            }
        }
    }
}

/// Steps every element of `param` with `update`, its state in `state`.
pub(crate) fn drive<A, S, F>(
    mut param: ArrayViewMut<'_, A, IxDyn>,
    grad: ArrayView<'_, A, IxDyn>,
    state: CompactState<'_>,
    update: &F,
) where
    A: Element,
    S: StateSlots<A>,
    F: Fn(&mut A, A, &mut S) + Sync,
{
    let stores = Stores::new(state.compact, param.len());
    match (param.as_slice_mut(), grad.as_slice()) {
        (Some(param), Some(grad)) => Run { param, grad, stores }.spread::<S, F>(update),
        _ => step_strided::<A, S, F>(param, grad, stores, update),
    }
}

/// A contiguous row-major run of elements and their stores.
struct Run<'a, A> {
    param: &'a mut [A],
    grad: &'a [A],
    stores: Stores<'a>,
}

impl<A: Element> Run<'_, A> {
    /// Steps the run, over the threads of the current pool when it is large.
    fn spread<S, F>(self, update: &F)
    where
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S) + Sync,
    {
        #[cfg(feature = "rayon")]
        if let Some(chunk) = super::parallel::chunk_len(self.param.len()) {
            return super::parallel::in_chunks(self, chunk, &|run: Self| run.step::<S, F>(update));
        }
        self.step::<S, F>(update);
    }

    fn step<S, F>(mut self, update: &F)
    where
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S),
    {
        let mut work = [[A::zero(); BLOCK]; MAX_STATE];
        let blocks = self.param.chunks_mut(BLOCK).zip(self.grad.chunks(BLOCK));
        for (block, (param, grad)) in blocks.enumerate() {
            step_block::<A, S, F>(param, grad, &mut self.stores, block, &mut work, update);
        }
    }
}

#[cfg(feature = "rayon")]
impl<A: Element> super::parallel::Halves for Run<'_, A> {
    fn len(&self) -> usize {
        self.param.len()
    }

    fn split_at(self, mid: usize) -> (Self, Self) {
        debug_assert!(mid.is_multiple_of(BLOCK));
        let (param_low, param_high) = self.param.split_at_mut(mid);
        let (grad_low, grad_high) = self.grad.split_at(mid);
        let (stores_low, stores_high) = self.stores.split_at(mid);
        (
            Run { param: param_low, grad: grad_low, stores: stores_low },
            Run { param: param_high, grad: grad_high, stores: stores_high },
        )
    }
}

/// One block: expand the state, update, store it back.
#[inline(always)]
fn step_block<A, S, F>(
    param: &mut [A],
    grad: &[A],
    stores: &mut Stores<'_>,
    block: usize,
    work: &mut [[A; BLOCK]; MAX_STATE],
    update: &F,
) where
    A: Element,
    S: StateSlots<A>,
    F: Fn(&mut A, A, &mut S),
{
    let len = param.len();
    for (k, values) in work[..S::LEN].iter_mut().enumerate() {
        stores.load(k, block, &mut values[..len]);
    }
    let mut state = work.each_mut().map(|values| &mut values[..len]);
    S::for_each_slice(param, grad, &mut state[..S::LEN], update);
    for (k, values) in work[..S::LEN].iter().enumerate() {
        stores.store(k, block, &values[..len]);
    }
}

/// Steps a parameter or gradient that is not contiguous in row-major order: each block's
/// elements are gathered in row-major order, stepped, and the parameter's scattered back.
fn step_strided<A, S, F>(
    param: ArrayViewMut<'_, A, IxDyn>,
    grad: ArrayView<'_, A, IxDyn>,
    mut stores: Stores<'_>,
    update: &F,
) where
    A: Element,
    S: StateSlots<A>,
    F: Fn(&mut A, A, &mut S),
{
    let (mut params, mut grads) = (param.into_iter(), grad.iter());
    let mut work = [[A::zero(); BLOCK]; MAX_STATE];
    let (mut param_block, mut grad_block) = ([A::zero(); BLOCK], [A::zero(); BLOCK]);
    for block in 0.. {
        let mut targets: [Option<&mut A>; BLOCK] = core::array::from_fn(|_| None);
        let mut len = 0;
        for ((target, param), &grad) in targets.iter_mut().zip(&mut params).zip(&mut grads) {
            (param_block[len], grad_block[len]) = (*param, grad);
            *target = Some(param);
            len += 1;
        }
        if len == 0 {
            break;
        }
        let (param_values, grad_values) = (&mut param_block[..len], &grad_block[..len]);
        step_block::<A, S, F>(param_values, grad_values, &mut stores, block, &mut work, update);
        for (target, &value) in targets.iter_mut().zip(param_values.iter()) {
            if let Some(target) = target {
                **target = value;
            }
        }
    }
}
