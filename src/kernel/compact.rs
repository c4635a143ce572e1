//! The fused pass over state kept in low precision ([`crate::compact`]), block by block:
//! the options stage runs on the block's gradient, then the rule's update runs on the block
//! through the instruction-set dispatch, as on full-precision state. bfloat16 state is
//! converted inside the update's loop, value by value (two buffers from one word per element,
//! [`StateSlots::for_each_bf16`]); 8-bit state is expanded to the element type before it and
//! stored back after it, since a block's scale depends on all of its new values.
//!
//! The pass is compiled once per rule: the gradient's part of the options stage (clipping,
//! maximizing, L2 decay) is applied in loops of its own rather than compiled into the update,
//! and decoupled decay is one multiplication in the update's loop, by 1 without it. When the
//! gradient's part has nothing to do, as in plain Adam and AdamW, the update reads the
//! gradient as given, and bfloat16 state, which needs no blocks then, is stepped in one loop
//! over the whole run: on Zen 3 the pass over each block cost about a fifth of the step.
//!
//! Blocks are [`BLOCK`] elements in row-major order whatever the parameter's memory layout,
//! so the values (and the 8-bit scales) are the same for every layout, and chunks for threads
//! are cut at block boundaries, so they are the same for every thread count.

use ndarray::{ArrayView, ArrayViewMut, IxDyn};

use super::isa::Isa;
use super::{MAX_STATE, Stage, StateSlots};
use crate::compact::{BLOCK, Compact, QuantMap};
use crate::element::Element;

/// A tensor's low-precision state as a step sees it, with the step's options stage and the
/// instruction set its loops run with (a hidden type of the public [`Element`] trait's
/// interface).
#[doc(hidden)]
pub struct CompactState<'a, A> {
    pub(crate) compact: &'a mut Compact,
    pub(crate) stage: Stage<A>,
    pub(crate) isa: Isa,
}

/// The stored buffers of one run of elements, cut to that run.
enum Stores<'a> {
    /// Buffers of 16-bit values, or (for two buffers) pairs.
    Bf16 { bits: [&'a mut [u16]; MAX_STATE], pairs: &'a mut [u32] },
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
                let bits = core::array::from_fn(|_| buffers.next().unwrap_or_default());
                Stores::Bf16 { bits, pairs: &mut [] }
            }
            Compact::Bf16Pairs { pairs } => {
                Stores::Bf16 { bits: core::array::from_fn(|_| <&mut [u16]>::default()), pairs }
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
        fn cut<T, const N: usize>(
            buffers: [&mut [T]; N],
            mid: usize,
        ) -> ([&mut [T]; N], [&mut [T]; N]) {
            let mut highs = buffers.map(|buffer| {
                let mid = mid.min(buffer.len());
                buffer.split_at_mut(mid)
            });
            let lows = core::array::from_fn(|k| core::mem::take(&mut highs[k].0));
            (lows, highs.map(|(_, high)| high))
        }
        match self {
            Stores::Bf16 { bits, pairs } => {
                let (bits_low, bits_high) = cut(bits, mid);
                let ([pairs_low], [pairs_high]) = cut([pairs], mid);
                (
                    Stores::Bf16 { bits: bits_low, pairs: pairs_low },
                    Stores::Bf16 { bits: bits_high, pairs: pairs_high },
                )
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
}

/// Steps every element of `param` with the options stage and `update`, its state in
/// `state`.
pub(crate) fn drive<A, S, F>(
    mut param: ArrayViewMut<'_, A, IxDyn>,
    grad: ArrayView<'_, A, IxDyn>,
    state: CompactState<'_, A>,
    update: &F,
) where
    A: Element,
    S: StateSlots<A>,
    F: Fn(&mut A, A, &mut S) + Sync,
{
    let CompactState { compact, stage, isa } = state;
    let stores = Stores::new(compact, param.len());
    let pass = Pass { stage, isa, update };
    match (param.as_slice_mut(), grad.as_slice()) {
        (Some(param), Some(grad)) => Run { param, grad, stores }.spread::<S, F>(&pass),
        _ => step_strided::<A, S, F>(param, grad, stores, &pass),
    }
}

/// What every block of a step runs: the options stage, then the rule's update through the
/// instruction-set dispatch.
struct Pass<'a, A, F> {
    stage: Stage<A>,
    isa: Isa,
    update: &'a F,
}

/// Working memory of one block: the state expanded, and the gradient the rule sees.
struct Work<A> {
    state: [[A; BLOCK]; MAX_STATE],
    grad: [A; BLOCK],
}

impl<A: Element> Work<A> {
    fn new() -> Self {
        Work { state: [[A::zero(); BLOCK]; MAX_STATE], grad: [A::zero(); BLOCK] }
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
    fn spread<S, F>(self, pass: &Pass<'_, A, F>)
    where
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S) + Sync,
    {
        #[cfg(feature = "rayon")]
        if let Some(chunk) = super::parallel::chunk_len(self.param.len()) {
            return super::parallel::in_chunks(self, chunk, &|run: Self| run.step::<S, F>(pass));
        }
        self.step::<S, F>(pass);
    }

    fn step<S, F>(mut self, pass: &Pass<'_, A, F>)
    where
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S),
    {
        // bfloat16 values are converted one by one, so with nothing to do to the gradient
        // first the whole run is one loop.
        if pass.stage.keeps_grad() {
            let (param, grad, isa) = (&mut *self.param, self.grad, pass.isa);
            if let Stores::Bf16 { bits, pairs } = &mut self.stores {
                let mut state = bits.each_mut().map(|bits| &mut **bits);
                let state = &mut state[..S::LEN];
                return isa.run_bf16::<A, S, F>(param, grad, state, pairs, pass.update);
            }
        }
        let mut work = Work::new();
        let blocks = self.param.chunks_mut(BLOCK).zip(self.grad.chunks(BLOCK));
        for (block, (param, grad)) in blocks.enumerate() {
            step_block::<A, S, F>(param, grad, &mut self.stores, block, &mut work, pass);
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

/// One block: the options stage's gradient, then the rule's update over the block, its state
/// converted in the update's loop (bfloat16), or expanded before it and stored back after
/// it (8-bit codes, whose scale needs the whole block).
///
/// Not inlined: both walks (contiguous and strided) call it, and each inlined copy would
/// compile the dispatch's baseline loops again; one call is small beside a block's
/// [`BLOCK`] updates.
#[inline(never)]
fn step_block<A, S, F>(
    param: &mut [A],
    grad: &[A],
    stores: &mut Stores<'_>,
    block: usize,
    work: &mut Work<A>,
    pass: &Pass<'_, A, F>,
) where
    A: Element,
    S: StateSlots<A>,
    F: Fn(&mut A, A, &mut S),
{
    let (len, start) = (param.len(), block * BLOCK);
    let seen = if pass.stage.keeps_grad() {
        grad
    } else {
        pass.isa.stage(pass.stage, param, grad, &mut work.grad[..len]);
        &work.grad[..len]
    };
    match stores {
        Stores::Bf16 { bits, pairs } => {
            // Buffers past the rule's, and pairs for other than two, are empty.
            let mut state =
                bits.each_mut().map(|bits| bits.get_mut(start..start + len).unwrap_or_default());
            let pairs = pairs.get_mut(start..start + len).unwrap_or_default();
            let state = &mut state[..S::LEN];
            pass.isa.run_bf16::<A, S, F>(param, seen, state, pairs, pass.update);
        }
        Stores::Int8 { codes, scales, maps } => {
            let buffers = work.state[..S::LEN].iter_mut().zip(codes.iter()).zip(scales.iter());
            for (((values, codes), scales), &map) in buffers.zip(maps.iter()) {
                let codes = &codes[start..start + len];
                pass.isa.dequantize(codes, scales[block], map, &mut values[..len]);
            }
            let mut state = work.state.each_mut().map(|values| &mut values[..len]);
            pass.isa.run::<A, S, F>(param, seen, &mut state[..S::LEN], pass.update);
            let values = work.state.each_ref().map(|values| &values[..len]);
            let mut block_codes =
                codes.each_mut().map(|codes| codes.get_mut(start..start + len).unwrap_or_default());
            let mut found = [0.0; MAX_STATE];
            let (values, maps) = (&values[..S::LEN], &maps[..S::LEN]);
            pass.isa.quantize_each(values, maps, &mut block_codes[..S::LEN], &mut found[..S::LEN]);
            for (scales, found) in scales.iter_mut().zip(&found[..S::LEN]) {
                scales[block] = *found;
            }
        }
    }
}

/// Steps a parameter or gradient that is not contiguous in row-major order: each block's
/// elements are gathered in row-major order, stepped, and the parameter's scattered back.
fn step_strided<A, S, F>(
    param: ArrayViewMut<'_, A, IxDyn>,
    grad: ArrayView<'_, A, IxDyn>,
    mut stores: Stores<'_>,
    pass: &Pass<'_, A, F>,
) where
    A: Element,
    S: StateSlots<A>,
    F: Fn(&mut A, A, &mut S),
{
    let (mut params, mut grads) = (param.into_iter(), grad.iter());
    let mut work = Work::new();
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
        step_block::<A, S, F>(param_values, grad_values, &mut stores, block, &mut work, pass);
        for (target, &value) in targets.iter_mut().zip(param_values.iter()) {
            if let Some(target) = target {
                **target = value;
            }
        }
    }
}
