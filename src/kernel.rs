//! The fused elementwise driver that runs every rule over every memory layout.
//!
//! One step is one pass over parameter, gradient and state: a loop that loads an element's
//! state values, calls the rule's per-element update and stores them back. When parameter and
//! gradient are contiguous in the memory order the state was laid out in, the loop runs over
//! plain slices, compiled for the widest vector instructions the CPU has (see `isa`), and, with
//! the `rayon` feature, split into chunks over threads when the tensor is large; otherwise
//! `Zip` walks the arrays with their own strides. Every path runs the same update on the same
//! values, so neither the layout, the CPU nor the thread count changes a bit of the result.

mod isa;

use core::cell::Cell;

use ndarray::{ArrayView, ArrayViewMut, Dimension, Order, ShapeBuilder, Zip};

use crate::element::Element;
use isa::Isa;

mod sealed {
    pub trait Sealed {}
    impl<A, const N: usize> Sealed for [A; N] {}
}

/// The state values of one element, `[A; N]` for N from 0 to 4, as a rule's
/// per-element state.
///
/// The per-element update sees the N values as a plain array; this trait moves them between
/// the N state buffers of a tensor and that array.
pub trait StateSlots<A: Element>: Copy + Send + Sync + sealed::Sealed {
    /// The number of state values per element.
    const LEN: usize;

    /// Runs `update` on every element of `param` and `grad` together with its values in the
    /// `LEN` buffers that `state` holds one after the other, each laid out in `order`.
    #[doc(hidden)]
    fn for_each<D, F>(
        param: ArrayViewMut<'_, A, D>,
        grad: ArrayView<'_, A, D>,
        state: &mut [A],
        order: Order,
        update: F,
    ) where
        D: Dimension,
        F: Fn(&mut A, A, &mut Self);

    /// Runs `update` on every element of the equally long slices `param`, `grad` and the
    /// `LEN` buffers of `state`.
    #[doc(hidden)]
    fn for_each_slice<F>(param: &mut [A], grad: &[A], state: &mut [&mut [A]], update: &F)
    where
        F: Fn(&mut A, A, &mut Self);
}

/// Views `state` as `N` consecutive buffers of `dim`'s shape, each laid out in `order`.
fn buffer_views<A, D: Dimension, const N: usize>(
    state: &mut [A],
    dim: D,
    order: Order,
) -> [ArrayViewMut<'_, A, D>; N] {
    let numel = dim.size();
    let mut rest = state;
    core::array::from_fn(|_| {
        let (buffer, tail) = core::mem::take(&mut rest).split_at_mut(numel);
        rest = tail;
        ArrayViewMut::from_shape(dim.clone().set_f(order == Order::ColumnMajor), buffer)
            .expect("the registry sizes every state buffer to its tensor's shape")
    })
}

macro_rules! state_slots {
    ($n:literal => $($buffer:ident),*) => {
        impl<A: Element> StateSlots<A> for [A; $n] {
            const LEN: usize = $n;

            #[inline]
            fn for_each<D, F>(
                param: ArrayViewMut<'_, A, D>,
                grad: ArrayView<'_, A, D>,
                state: &mut [A],
                order: Order,
                update: F,
            ) where
                D: Dimension,
                F: Fn(&mut A, A, &mut Self),
            {
                let [$($buffer),*] = buffer_views::<A, D, $n>(state, param.raw_dim(), order);
                Zip::from(param).and(grad)$(.and($buffer))*.for_each(|p, &g, $($buffer),*| {
                    let mut slots = [$(*$buffer),*];
                    update(p, g, &mut slots);
                    [$(*$buffer),*] = slots;
                });
            }

            // Always inlined, so that it is compiled for the instruction set of its caller.
            #[inline(always)]
            fn for_each_slice<F>(param: &mut [A], grad: &[A], state: &mut [&mut [A]], update: &F)
            where
                F: Fn(&mut A, A, &mut Self),
            {
                let n = param.len();
                let grad = &grad[..n];
                let [$($buffer),*] = state else {
                    unreachable!("the kernel passes one slice per state buffer")
                };
                // Slicing to `n` up front lets the compiler drop every bounds check below.
                $(let $buffer = &mut $buffer[..n];)*
                for i in 0..n {
                    let mut slots = [$($buffer[i]),*];
                    update(&mut param[i], grad[i], &mut slots);
                    [$($buffer[i]),*] = slots;
                }
            }
        }
    };
}

state_slots!(0 =>);
state_slots!(1 => s0);
state_slots!(2 => s0, s1);
state_slots!(3 => s0, s1, s2);
state_slots!(4 => s0, s1, s2, s3);

/// The memory order a new tensor's state is laid out in: the parameter's own when it is
/// contiguous in column-major order only, row-major otherwise.
pub(crate) fn preferred_order<A, D: Dimension>(param: &ArrayViewMut<'_, A, D>) -> Order {
    if !param.is_standard_layout() && param.t().is_standard_layout() {
        Order::ColumnMajor
    } else {
        Order::RowMajor
    }
}

fn is_contiguous_in<A, D: Dimension>(view: &ArrayView<'_, A, D>, order: Order) -> bool {
    if order == Order::ColumnMajor {
        view.t().is_standard_layout()
    } else {
        view.is_standard_layout()
    }
}

/// A transform of every gradient element before the rule sees it: gradient clipping, applied
/// inside the fused pass because gradients are borrowed read-only and never copied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum GradTransform<A> {
    /// The gradient as it is.
    Identity,
    /// `g * c`, in the element type (PyTorch's `clip_grad_norm_` multiplies in place).
    Scale(A),
    /// `g` clamped to `[-c, c]`; NaN stays NaN (PyTorch's `clip_grad_value_`).
    Clamp(A),
}

/// `g` clamped to `[-c, c]` by comparisons, so that NaN passes through as `clamp_` lets it.
#[inline]
fn clamp<A: Element>(g: A, c: A) -> A {
    if g > c {
        c
    } else if g < -c {
        -c
    } else {
        g
    }
}

/// One tensor's step as a rule sees it: parameter, gradient and the tensor's state buffers.
///
/// A rule's [`UpdateRule::step`](crate::UpdateRule::step) computes its per-step scalars and hands its per-element
/// update to [`apply`](Self::apply), which runs it over every element in one fused pass.
pub struct TensorStep<'a, A, D> {
    pub(crate) param: ArrayViewMut<'a, A, D>,
    pub(crate) grad: ArrayView<'a, A, D>,
    pub(crate) state: &'a mut [A],
    pub(crate) scalars: &'a mut [f64],
    pub(crate) order: Order,
    pub(crate) transform: GradTransform<A>,
}

impl<A: Element, D: Dimension> TensorStep<'_, A, D> {
    /// The tensor's scalar states, one per name in
    /// [`UpdateRule::scalar_names`](crate::UpdateRule::scalar_names), for the rule to read
    /// and update before it calls [`apply`](Self::apply).
    pub fn scalars(&mut self) -> &mut [f64] {
        self.scalars
    }

    /// Runs `update(p, g, s)` on every element: its parameter `p`, gradient `g` and state
    /// values `s`, one per state buffer (`S` is `[A; N]` for a rule with N buffers, the
    /// length of its [`UpdateRule::state_names`](crate::UpdateRule::state_names)).
    ///
    /// When the optimizer clips gradients, `g` is the clipped gradient.
    ///
    /// Write `update` as a `move` closure over the step's scalars: holding them by value lets
    /// the vectorised loop keep them in registers (captured by reference, they are reloaded
    /// for every element). `update` must be `Sync`, since large tensors may be split over
    /// threads with the `rayon` feature.
    ///
    /// # Panics
    /// If `N` is not the number of buffers the rule declared: a bug in the rule, not in the
    /// data.
    #[inline]
    pub fn apply<S, F>(self, update: F)
    where
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S) + Sync,
    {
        // One match per tensor, outside the element loop: each arm is its own monomorphised
        // loop, and the identity arm is exactly the loop without clipping.
        match self.transform {
            GradTransform::Identity => self.drive(update),
            GradTransform::Scale(c) => self.drive(move |p, g, s: &mut S| update(p, g * c, s)),
            GradTransform::Clamp(c) => self.drive(move |p, g, s: &mut S| update(p, clamp(g, c), s)),
        }
    }

    /// The fused pass: flat slices when everything is contiguous in the state's order,
    /// strided `Zip` otherwise.
    #[inline]
    fn drive<S, F>(self, update: F)
    where
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S) + Sync,
    {
        let TensorStep { mut param, grad, state, order, .. } = self;
        assert_eq!(
            state.len(),
            S::LEN * param.len(),
            "a rule's update must take one state value per declared state buffer"
        );
        let path = KernelPath::current();
        let flat = path != KernelPath::Zip
            && is_contiguous_in(&param.view(), order)
            && is_contiguous_in(&grad, order);
        let taken = match (param.as_slice_memory_order_mut(), grad.as_slice_memory_order()) {
            (Some(p), Some(g)) if flat => {
                Slices::new(p, g, state, S::LEN).run::<S, F>(path.isa(), &update);
                path
            }
            _ => {
                S::for_each(param, grad, state, order, update);
                KernelPath::Zip
            }
        };
        TAKEN_PATH.with(|taken_path| taken_path.set(Some(taken)));
    }
}

/// The most state buffers a rule can have (`StateSlots` goes up to `[A; 4]`).
const MAX_STATE: usize = 4;

/// One contiguous step, or a chunk of it: parameter, gradient and each state buffer as
/// slices of one length.
struct Slices<'a, A> {
    param: &'a mut [A],
    grad: &'a [A],
    state: [&'a mut [A]; MAX_STATE],
}

impl<'a, A: Element> Slices<'a, A> {
    /// Cuts `state` into its `buffers` buffers, each as long as `param`.
    fn new(param: &'a mut [A], grad: &'a [A], state: &'a mut [A], buffers: usize) -> Self {
        let numel = param.len();
        let mut chunks = state.chunks_mut(numel.max(1));
        let state = core::array::from_fn(|_| chunks.next().unwrap_or_default());
        debug_assert!(chunks.next().is_none() && buffers <= MAX_STATE);
        Slices { param, grad, state }
    }

    /// Runs the step, compiled for `isa`; with the `rayon` feature, in chunks over the
    /// threads of the current pool when the tensor is large enough to gain from it.
    fn run<S, F>(self, isa: Isa, update: &F)
    where
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S) + Sync,
    {
        #[cfg(feature = "rayon")]
        if let Some(chunk) = parallel::chunk_len(self.param.len()) {
            return parallel::run_chunks::<A, S, F>(self, chunk, isa, update);
        }
        self.run_here::<S, F>(isa, update);
    }

    /// Runs the step on this thread, compiled for `isa`.
    fn run_here<S, F>(self, isa: Isa, update: &F)
    where
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S),
    {
        let Slices { param, grad, mut state } = self;
        isa.run::<A, S, F>(param, grad, &mut state[..S::LEN], update);
    }
}

#[cfg(feature = "rayon")]
pub(crate) use parallel::worth_spreading;

#[cfg(feature = "rayon")]
mod parallel {
    //! Splitting one contiguous step over the threads of the current rayon pool.

    use super::{Isa, Slices, StateSlots};
    use crate::element::Element;

    /// Elements below which a chunk costs more to hand to another thread than it saves.
    pub(super) const MIN_CHUNK: usize = 1 << 15;

    /// Whether work on `numel` elements gains from being spread over the current pool.
    pub(crate) fn worth_spreading(numel: usize) -> bool {
        numel >= 2 * MIN_CHUNK && rayon::current_num_threads() > 1
    }

    /// The chunk length for a step of `numel` elements, or `None` to run it on one thread.
    /// A few chunks per thread let idle threads take over from busy ones.
    pub(super) fn chunk_len(numel: usize) -> Option<usize> {
        worth_spreading(numel).then(|| {
            let chunks = 4 * rayon::current_num_threads();
            numel.div_ceil(chunks).max(MIN_CHUNK).next_multiple_of(64)
        })
    }

    /// Runs `slices` as chunks of `chunk` elements, halving recursively with `rayon::join`.
    pub(super) fn run_chunks<A, S, F>(slices: Slices<'_, A>, chunk: usize, isa: Isa, update: &F)
    where
        A: Element,
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S) + Sync,
    {
        let numel = slices.param.len();
        if numel <= chunk {
            return slices.run_here::<S, F>(isa, update);
        }
        let mid = numel.div_ceil(chunk) / 2 * chunk;
        let Slices { param, grad, mut state } = slices;
        let (param_lo, param_hi) = param.split_at_mut(mid);
        let (grad_lo, grad_hi) = grad.split_at(mid);
        // Unused buffers are empty and stay so.
        let state_lo = core::array::from_fn(|k| {
            let buffer = core::mem::take(&mut state[k]);
            let (lo, hi) = buffer.split_at_mut(mid.min(buffer.len()));
            state[k] = hi;
            lo
        });
        let lo = Slices { param: param_lo, grad: grad_lo, state: state_lo };
        let hi = Slices { param: param_hi, grad: grad_hi, state };
        rayon::join(
            || run_chunks::<A, S, F>(lo, chunk, isa, update),
            || run_chunks::<A, S, F>(hi, chunk, isa, update),
        );
    }
}

/// Which loop runs a contiguous step. Every path gives the same bits; tests pin each one in
/// turn with [`with_kernel_path`] to check that.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// The strided `Zip` loop that non-contiguous layouts take.
    Zip,
    /// The slice loop as the build targets it (SSE2 on a default x86-64 build).
    Baseline,
    /// The slice loop compiled with AVX2.
    Avx2,
    /// The slice loop compiled with AVX-512.
    Avx512,
}

thread_local! {
    static PINNED_PATH: Cell<Option<KernelPath>> = const { Cell::new(None) };
    /// The path of the last step this thread ran, so that tests can tell that a pinned path
    /// really ran.
    static TAKEN_PATH: Cell<Option<KernelPath>> = const { Cell::new(None) };
}

impl KernelPath {
    /// Every path, available on this CPU or not.
    pub const ALL: [KernelPath; 4] =
        [KernelPath::Zip, KernelPath::Baseline, KernelPath::Avx2, KernelPath::Avx512];

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        self.isa().is_available()
    }

    /// The path a step started on this thread takes: the pinned one, else the fastest.
    pub(crate) fn current() -> KernelPath {
        PINNED_PATH.with(Cell::get).unwrap_or(match Isa::best() {
            Isa::Avx512 => KernelPath::Avx512,
            Isa::Avx2 => KernelPath::Avx2,
            Isa::Baseline => KernelPath::Baseline,
        })
    }

    fn isa(self) -> Isa {
        match self {
            KernelPath::Zip | KernelPath::Baseline => Isa::Baseline,
            KernelPath::Avx2 => Isa::Avx2,
            KernelPath::Avx512 => Isa::Avx512,
        }
    }
}

/// The path that the last tensor step run on this thread took, if any.
#[doc(hidden)]
pub fn last_kernel_path() -> Option<KernelPath> {
    TAKEN_PATH.with(Cell::get)
}

/// Runs `f` with every step that this thread starts taking `path`, or returns `None` if this
/// CPU cannot run it. For tests and benchmarks that compare the paths. A batch stepped on
/// several threads takes the path on each of them.
#[doc(hidden)]
pub fn with_kernel_path<R>(path: KernelPath, f: impl FnOnce() -> R) -> Option<R> {
    struct Restore(Option<KernelPath>);
    impl Drop for Restore {
        fn drop(&mut self) {
            PINNED_PATH.with(|pinned| pinned.set(self.0));
        }
    }
    if !path.is_available() {
        return None;
    }
    let _restore = Restore(PINNED_PATH.with(|pinned| pinned.replace(Some(path))));
    Some(f())
}
