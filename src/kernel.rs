//! The fused elementwise driver that runs every rule over every memory layout.
//!
//! One step is one pass over parameter, gradient and state: a loop that loads an element's
//! state values, calls the rule's per-element update and stores them back. When parameter and
//! gradient are contiguous in the memory order the state was laid out in, the loop runs over
//! plain slices, compiled for the widest vector instructions the CPU has (see `isa`), and, with
//! the `rayon` feature, split into chunks over threads when the tensor is large; otherwise
//! `Zip` walks the arrays with their own strides. Every path runs the same update on the same
//! values, so neither the layout, the CPU nor the thread count changes a bit of the result.

mod compact;
mod isa;

use core::cell::Cell;

use ndarray::{ArrayView, ArrayViewMut, Dimension, IxDyn, Order, ShapeBuilder, Zip};

use crate::element::Element;
use crate::rule::{Options, WeightDecay};
use isa::Isa;

#[doc(hidden)]
pub use compact::CompactState;
pub(crate) use compact::drive as drive_compact;

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
    /// `LEN` buffers of `state`, whose values are kept as `W`.
    #[doc(hidden)]
    fn for_each_slice<W, F>(param: &mut [A], grad: &[A], state: &mut [&mut [W]], update: &F)
    where
        W: StateWord<A>,
        F: Fn(&mut A, A, &mut Self);

    /// Runs `update` on every element of the equally long slices `param` and `grad`, the
    /// state kept as bfloat16: in the `LEN` buffers of `state`, or, for two buffers, in
    /// `pairs`, each word holding an element's two values, the first buffer's in the high
    /// half.
    ///
    /// Each arity compiles only the loop of its own layout. Always inlined, as
    /// [`for_each_slice`](Self::for_each_slice) is.
    #[doc(hidden)]
    #[inline(always)]
    fn for_each_bf16<F>(
        param: &mut [A],
        grad: &[A],
        state: &mut [&mut [u16]],
        pairs: &mut [u32],
        update: &F,
    ) where
        F: Fn(&mut A, A, &mut Self),
    {
        let _ = pairs;
        Self::for_each_slice(param, grad, state, update);
    }
}

/// How a state buffer keeps its values in memory, as the slot loop reads and writes them: as
/// the element type itself, or as bfloat16 bits (`u16`, [`crate::compact`]), converted in
/// the loop.
#[doc(hidden)]
pub trait StateWord<A>: Copy + Send + Sync {
    /// The value this word holds.
    fn expand(self) -> A;
    /// The word that holds `value`.
    fn round(value: A) -> Self;
}

impl<A: Element> StateWord<A> for A {
    #[inline(always)]
    fn expand(self) -> A {
        self
    }

    #[inline(always)]
    fn round(value: A) -> Self {
        value
    }
}

impl<A: Element> StateWord<A> for u16 {
    #[inline(always)]
    fn expand(self) -> A {
        A::from_f64(f64::from(crate::compact::bf16_value(self)))
    }

    #[inline(always)]
    fn round(value: A) -> Self {
        crate::compact::bf16_bits(value.into_f64() as f32)
    }
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
    ($n:literal => $($buffer:ident $value:ident),* $(; $($more:tt)*)?) => {
        impl<A: Element> StateSlots<A> for [A; $n] {
            const LEN: usize = $n;
            $($($more)*)?

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
            fn for_each_slice<W, F>(
                param: &mut [A],
                grad: &[A],
                state: &mut [&mut [W]],
                update: &F,
            ) where
                W: StateWord<A>,
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
                    let mut slots = [$($buffer[i].expand()),*];
                    update(&mut param[i], grad[i], &mut slots);
                    let [$($value),*] = slots;
                    $($buffer[i] = W::round($value);)*
                }
            }
        }
    };
}

state_slots!(0 =>);
state_slots!(1 => s0 v0);
state_slots!(2 => s0 v0, s1 v1;
    // Always inlined, so that it is compiled for the instruction set of its caller. One load
    // and one store per element for both buffers, and no shuffles: a half is a mask or a
    // shift away from its `f32`.
    #[inline(always)]
    fn for_each_bf16<F>(
        param: &mut [A],
        grad: &[A],
        _: &mut [&mut [u16]],
        pairs: &mut [u32],
        update: &F,
    ) where
        F: Fn(&mut A, A, &mut Self),
    {
        let n = param.len();
        let (grad, pairs) = (&grad[..n], &mut pairs[..n]);
        for i in 0..n {
            let [high, low] = crate::compact::bf16::halves(pairs[i]);
            let mut slots = [StateWord::expand(high), StateWord::expand(low)];
            update(&mut param[i], grad[i], &mut slots);
            let [high, low] = slots.map(<u16 as StateWord<A>>::round);
            pairs[i] = crate::compact::bf16::pair([high, low]);
        }
    }
);
state_slots!(3 => s0 v0, s1 v1, s2 v2);
state_slots!(4 => s0 v0, s1 v1, s2 v2, s3 v3);

/// The memory order a new tensor's state is laid out in: the parameter's own when it is
/// contiguous in column-major order only, row-major otherwise.
pub(crate) fn preferred_order<A, D: Dimension>(param: &ArrayViewMut<'_, A, D>) -> Order {
    if !param.is_standard_layout() && param.t().is_standard_layout() {
        Order::ColumnMajor
    } else {
        Order::RowMajor
    }
}

/// The elements of `view` as one slice, if they are contiguous in `order`.
fn slice_in<'a, A, D: Dimension>(view: &ArrayView<'a, A, D>, order: Order) -> Option<&'a [A]> {
    if order == Order::ColumnMajor {
        view.clone().reversed_axes().to_slice()
    } else {
        view.to_slice()
    }
}

/// The elements of `view` as one slice to change, if they are contiguous in `order`.
fn slice_mut_in<'v, A, D: Dimension>(
    view: &'v mut ArrayViewMut<'_, A, D>,
    order: Order,
) -> Option<&'v mut [A]> {
    if order == Order::ColumnMajor {
        view.view_mut().reversed_axes().into_slice()
    } else {
        view.as_slice_mut()
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

/// Weight decay in the element type, at the step's learning rate.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Decay<A> {
    Off,
    /// `g + λθ`.
    L2(A),
    /// `θ · (1 − ηλ)`: the factor.
    Decoupled(A),
}

/// The options stage of one tensor's step: what happens to the gradient and the parameter
/// before the rule's own update, in PyTorch's order (clipping, `maximize`, weight decay).
///
/// [`TensorStep::apply`] runs it for the rule. A rule that works on the arrays itself (after
/// [`TensorStep::split`]) runs it on every element it reads: [`grad`](Self::grad) on every
/// gradient element, and [`decay`](Self::decay) on every parameter element once, before
/// the update that writes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stage<A> {
    transform: GradTransform<A>,
    /// ±1: negation is a multiplication by −1, which is exact.
    sign: A,
    decay: Decay<A>,
}

impl<A: Element> Stage<A> {
    pub(crate) fn new(options: Options, lr: f64, transform: GradTransform<A>) -> Self {
        let lambda = options.weight_decay.lambda();
        let decay = match options.weight_decay {
            _ if lambda == 0.0 => Decay::Off,
            WeightDecay::L2(lambda) => Decay::L2(A::from_f64(lambda)),
            WeightDecay::Decoupled(lambda) => Decay::Decoupled(A::from_f64(1.0 - lr * lambda)),
        };
        let sign = if options.maximize { -A::one() } else { A::one() };
        Stage { transform, sign, decay }
    }

    /// The gradient the rule's update sees, from the gradient `g` as given and the parameter
    /// `p` before the update: clipped, negated when maximizing, plus λθ with L2 decay.
    #[inline(always)]
    pub fn grad(self, g: A, p: A) -> A {
        let g = match self.transform {
            GradTransform::Identity => g,
            GradTransform::Scale(c) => g * c,
            GradTransform::Clamp(c) => clamp(g, c),
        };
        match self.decay {
            Decay::L2(lambda) => self.sign * g + lambda * p,
            Decay::Off | Decay::Decoupled(_) => self.sign * g,
        }
    }

    /// The parameter `p` after decoupled decay, `$\theta(1 - \eta\lambda)$`; `p` itself
    /// without it.
    #[inline(always)]
    pub fn decay(self, p: A) -> A {
        match self.decay {
            Decay::Decoupled(factor) => p * factor,
            Decay::Off | Decay::L2(_) => p,
        }
    }

    /// The factor [`decay`](Self::decay) multiplies the parameter by: `$1 - \eta\lambda$`,
    /// or 1 without decoupled decay.
    pub(crate) fn decay_factor(self) -> A {
        match self.decay {
            Decay::Decoupled(factor) => factor,
            Decay::Off | Decay::L2(_) => A::one(),
        }
    }

    /// Whether [`grad`](Self::grad) is the gradient as given.
    pub(crate) fn keeps_grad(self) -> bool {
        matches!(self.transform, GradTransform::Identity)
            && !matches!(self.decay, Decay::L2(_))
            && self.sign == A::one()
    }

    /// [`grad`](Self::grad) of every element of `grad` and `param` into `seen`: the same bits
    /// as element by element, with each case a loop of its own that vectorises.
    #[inline(always)]
    pub(crate) fn grad_of_slices(self, param: &[A], grad: &[A], seen: &mut [A]) {
        #[inline(always)]
        fn each<A: Copy>(seen: &mut [A], grad: &[A], f: impl Fn(A) -> A) {
            for (seen, &g) in seen.iter_mut().zip(grad) {
                *seen = f(g);
            }
        }
        let sign = self.sign;
        match self.transform {
            GradTransform::Identity => each(seen, grad, |g| sign * g),
            GradTransform::Scale(c) => each(seen, grad, |g| sign * (g * c)),
            GradTransform::Clamp(c) => each(seen, grad, |g| sign * clamp(g, c)),
        }
        if let Decay::L2(lambda) = self.decay {
            for (seen, &p) in seen.iter_mut().zip(param) {
                *seen = *seen + lambda * p;
            }
        }
    }
}

/// One tensor's step as a rule sees it: parameter, gradient, the tensor's state, the step
/// number and learning rate, and the options stage.
///
/// A rule's [`UpdateRule::step`](crate::UpdateRule::step) computes its per-step coefficients
/// and hands its per-element update to [`apply`](Self::apply), which runs it over every
/// element in one fused pass; a rule that needs more takes the tensor apart with
/// [`split`](Self::split). Parameter and gradient are of dynamic dimension: the loops are
/// compiled once per rule and element type, whatever the dimension of the caller's arrays.
pub struct TensorStep<'a, A> {
    pub(crate) param: ArrayViewMut<'a, A, IxDyn>,
    pub(crate) grad: ArrayView<'a, A, IxDyn>,
    /// The per-element buffers, one after the other in `order`, then the shaped ones; empty
    /// when the state is kept in low precision.
    pub(crate) state: &'a mut [A],
    /// The per-element buffers in low precision, if the tensor's group keeps them so.
    pub(crate) compact: Option<&'a mut crate::compact::Compact>,
    /// How many per-element buffers `state` begins with: as many as the rule declared.
    pub(crate) elementwise: usize,
    pub(crate) scratch: &'a mut [A],
    pub(crate) scalars: &'a mut [f64],
    pub(crate) order: Order,
    pub(crate) stage: Stage<A>,
    pub(crate) step: u64,
    pub(crate) lr: f64,
    /// The step's shared scalars, for rules with a reduction; empty otherwise.
    pub(crate) shared: Shared<'a>,
}

/// The optimizer-wide scalars of a rule with a
/// [`reduction`](crate::UpdateRule::reduction), as one tensor's step sees them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Shared<'a> {
    /// The values before this step's combination.
    pub(crate) before: &'a [f64],
    /// The current values: after the combination in the second pass, the same as `before`
    /// in the first.
    pub(crate) now: &'a [f64],
    /// The largest current learning rate of the rule's groups.
    pub(crate) lr: f64,
}

/// A tensor's step taken apart by [`TensorStep::split`], for rules that work on whole
/// arrays: norms, matrix products, statistics of rows and columns.
pub struct Split<'a, A, const N: usize> {
    /// The parameter, updated in place.
    pub param: ArrayViewMut<'a, A, IxDyn>,
    /// The gradient as given: pass every element through [`Stage::grad`].
    pub grad: ArrayView<'a, A, IxDyn>,
    /// The per-element state buffers, with the tensor's shape, in the order of
    /// [`UpdateRule::state_names`](crate::UpdateRule::state_names).
    pub buffers: [ArrayViewMut<'a, A, IxDyn>; N],
    /// The buffers of [`UpdateRule::shaped_state`](crate::UpdateRule::shaped_state), one after
    /// the other, each in row-major order.
    pub shaped: &'a mut [A],
    /// Working memory of [`UpdateRule::scratch_len`](crate::UpdateRule::scratch_len) elements,
    /// holding whatever the last step left there.
    pub scratch: &'a mut [A],
    /// The per-tensor scalars.
    pub scalars: &'a mut [f64],
    /// The options stage, for the rule to apply.
    pub stage: Stage<A>,
}

impl<'a, A: Element> TensorStep<'a, A> {
    /// The step number: 1 for a tensor's first step.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The learning rate of this step: the group's current rate, which a schedule may set.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// The optimizer-wide shared scalars of a rule with a
    /// [`reduction`](crate::UpdateRule::reduction), in the order of
    /// [`Reduction::shared`](crate::rule::Reduction::shared): after this step's
    /// [`combine`](crate::UpdateRule::combine) in [`step`](crate::UpdateRule::step), as they
    /// were before it in [`reduce`](crate::UpdateRule::reduce). Empty for other rules.
    pub fn shared(&self) -> &[f64] {
        self.shared.now
    }

    /// The shared scalars as they were before this step's
    /// [`combine`](crate::UpdateRule::combine).
    pub fn shared_before(&self) -> &[f64] {
        self.shared.before
    }

    /// The largest current learning rate of the groups whose rule has a
    /// [`reduction`](crate::UpdateRule::reduction) (the one rate such a rule steps at); the
    /// tensor's own rate, [`lr`](Self::lr), for other rules.
    pub fn reduction_lr(&self) -> f64 {
        if self.shared.now.is_empty() { self.lr } else { self.shared.lr }
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        self.param.shape()
    }

    /// The tensor's scalar states, one per name in
    /// [`UpdateRule::scalar_names`](crate::UpdateRule::scalar_names), for the rule to read
    /// and update before it calls [`apply`](Self::apply).
    pub fn scalars(&mut self) -> &mut [f64] {
        self.scalars
    }

    /// Takes the tensor apart into arrays, for rules that are not elementwise; `N` is the
    /// number of per-element buffers.
    ///
    /// # Panics
    /// If `N` is not the number of per-element buffers the rule declared: a bug in the rule.
    pub fn split<const N: usize>(self) -> Split<'a, A, N> {
        let TensorStep {
            param,
            grad,
            state,
            compact,
            elementwise,
            scratch,
            scalars,
            order,
            stage,
            ..
        } = self;
        assert_eq!(N, elementwise, "split::<N> must take the rule's per-element buffers");
        assert!(compact.is_none(), "low-precision state is refused for rules that split");
        let numel = param.len();
        let (elementwise, shaped) = state.split_at_mut(N * numel);
        let buffers = buffer_views::<A, IxDyn, N>(elementwise, param.raw_dim(), order);
        // The rule runs its own loops, none of the kernel's: tests must not see a stale path.
        TAKEN_PATH.with(|taken_path| taken_path.set(None));
        Split { param, grad, buffers, shaped, scratch, scalars, stage }
    }

    /// Runs `update(p, g, s)` on every element: its parameter `p`, gradient `g` and state
    /// values `s`, one per state buffer (`S` is `[A; N]` for a rule with N buffers, the
    /// length of its [`UpdateRule::state_names`](crate::UpdateRule::state_names)).
    ///
    /// The options stage runs in the same pass: `g` is the gradient clipped, negated when
    /// maximizing and with L2 decay added, and `p` has had decoupled decay applied.
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
        if self.compact.is_some() {
            return self.drive_compact(update);
        }
        // One match per tensor, outside the element loop: each arm is its own monomorphised
        // loop, and the arm without clipping or decay is exactly the rule's bare loop.
        let sign = self.stage.sign;
        match self.stage.transform {
            GradTransform::Identity => self.with_decay(move |g| sign * g, update),
            GradTransform::Scale(c) => self.with_decay(move |g| sign * (g * c), update),
            GradTransform::Clamp(c) => self.with_decay(move |g| sign * clamp(g, c), update),
        }
    }

    #[inline]
    fn with_decay<S, G, F>(self, grad: G, update: F)
    where
        S: StateSlots<A>,
        G: Fn(A) -> A + Sync,
        F: Fn(&mut A, A, &mut S) + Sync,
    {
        match self.stage.decay {
            Decay::Off => self.drive(move |p, g, s: &mut S| update(p, grad(g), s)),
            Decay::L2(lambda) => self.drive(move |p, g, s: &mut S| {
                let g = grad(g) + lambda * *p;
                update(p, g, s);
            }),
            Decay::Decoupled(factor) => self.drive(move |p, g, s: &mut S| {
                *p = *p * factor;
                update(p, grad(g), s);
            }),
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
        let TensorStep { mut param, grad, state, elementwise, order, .. } = self;
        assert_eq!(S::LEN, elementwise, "apply must take the rule's per-element buffers");
        let state = &mut state[..S::LEN * param.len()];
        let path = KernelPath::current();
        // One layout check per array: the slices are taken as they are checked.
        let grad_flat = if path == KernelPath::Zip { None } else { slice_in(&grad, order) };
        let param_flat = grad_flat.and_then(|_| slice_mut_in(&mut param, order));
        let taken = match (param_flat, grad_flat) {
            (Some(p), Some(g)) => {
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

impl<A: Element> TensorStep<'_, A> {
    /// The fused pass over low-precision state, in blocks; `update` is the rule's own, with
    /// decoupled decay before it, and the rest of the options stage runs on each block's
    /// gradient first.
    fn drive_compact<S, F>(self, update: F)
    where
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S) + Sync,
    {
        let TensorStep { param, grad, compact, elementwise, stage, .. } = self;
        assert_eq!(S::LEN, elementwise, "apply must take the rule's per-element buffers");
        let compact = compact.expect("called for low-precision state only");
        // Blocks are contiguous whatever the layout: a pinned strided path runs the baseline.
        let path = match KernelPath::current() {
            KernelPath::Zip => KernelPath::Baseline,
            path => path,
        };
        // Decoupled decay rides in the update's loop: one multiplication, by 1 without decay,
        // which gives every value back unchanged (a signalling NaN quieted, as the update's own
        // arithmetic on the parameter quiets it). The loop is still compiled once per rule.
        let factor = stage.decay_factor();
        let update = move |p: &mut A, g: A, slots: &mut S| {
            *p = *p * factor;
            update(p, g, slots);
        };
        let state = CompactState { compact, stage, isa: path.isa() };
        A::drive_compact::<S, _>(param, grad, state, update);
        TAKEN_PATH.with(|taken_path| taken_path.set(Some(path)));
    }
}

/// A sum over a tensor's elements in logical (row-major index) order, with eight partial sums
/// by index, in `f64`: the same bits for every memory layout and thread count, and the error
/// of a sum of n/8 terms. Rules use it for norms and other per-tensor reductions.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::sum_in_order;
///
/// let m = array![[1.0_f32, 2.0], [3.0, 4.0]];
/// let squares = sum_in_order(m.iter().map(|&x| f64::from(x * x)));
/// assert_eq!(squares, 30.0);
/// assert_eq!(sum_in_order(m.t().iter().map(|&x| f64::from(x))), 10.0);
/// ```
pub fn sum_in_order(values: impl Iterator<Item = f64>) -> f64 {
    let mut lanes = Lanes::default();
    let mut values = values.peekable();
    while values.peek().is_some() {
        lanes.add(values.by_ref().take(LANES));
    }
    lanes.total()
}

/// [`sum_in_order`] of `term(x)` over a contiguous row-major slice: the same bits, in
/// chunks that the compiler turns into vector lanes.
pub(crate) fn sum_slice_in_order<A: Copy>(values: &[A], term: impl Fn(A) -> f64) -> f64 {
    let mut lanes = Lanes::default();
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        lanes.add(chunk.iter().map(|&x| term(x)));
    }
    lanes.add(chunks.remainder().iter().map(|&x| term(x)));
    lanes.total()
}

/// How many partial sums the ordered reductions keep.
const LANES: usize = 8;

/// The partial sums of an ordered reduction: element `i` goes into sum `i mod 8`, and the
/// sums are added pairwise at the end, so the result depends only on the logical order.
#[derive(Default)]
struct Lanes([f64; LANES]);

impl Lanes {
    /// Adds the next (at most) eight values, the first into sum 0.
    #[inline(always)]
    fn add(&mut self, values: impl Iterator<Item = f64>) {
        for (lane, value) in self.0.iter_mut().zip(values) {
            *lane += value;
        }
    }

    fn total(self) -> f64 {
        let [a, b, c, d, e, f, g, h] = self.0;
        ((a + b) + (c + d)) + ((e + f) + (g + h))
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
            let run = |slices: Self| slices.run_here::<S, F>(isa, update);
            return parallel::in_chunks(self, chunk, &run);
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

    use super::Slices;
    use crate::compact::BLOCK;
    use crate::element::Element;

    /// Elements below which a chunk costs more to hand to another thread than it saves.
    pub(super) const MIN_CHUNK: usize = 1 << 15;

    /// Whether work on `numel` elements gains from being spread over the current pool.
    pub(crate) fn worth_spreading(numel: usize) -> bool {
        numel >= 2 * MIN_CHUNK && rayon::current_num_threads() > 1
    }

    /// The chunk length for a step of `numel` elements, or `None` to run it on one thread.
    /// A few chunks per thread let idle threads take over from busy ones; chunks are whole
    /// blocks of low-precision state.
    pub(super) fn chunk_len(numel: usize) -> Option<usize> {
        worth_spreading(numel).then(|| {
            let chunks = 4 * rayon::current_num_threads();
            numel.div_ceil(chunks).max(MIN_CHUNK).next_multiple_of(BLOCK)
        })
    }

    /// Work on a run of elements that can be cut in two.
    pub(super) trait Halves: Sized + Send {
        /// The number of elements.
        fn len(&self) -> usize;
        /// The work on elements `..mid` and on `mid..`.
        fn split_at(self, mid: usize) -> (Self, Self);
    }

    /// Runs `work` as chunks of `chunk` elements, halving recursively with `rayon::join`.
    pub(super) fn in_chunks<T: Halves>(work: T, chunk: usize, run: &(impl Fn(T) + Sync)) {
        let numel = work.len();
        if numel <= chunk {
            return run(work);
        }
        let mid = numel.div_ceil(chunk) / 2 * chunk;
        let (low, high) = work.split_at(mid);
        rayon::join(|| in_chunks(low, chunk, run), || in_chunks(high, chunk, run));
    }

    impl<A: Element> Halves for Slices<'_, A> {
        fn len(&self) -> usize {
            self.param.len()
        }

        fn split_at(self, mid: usize) -> (Self, Self) {
            let Slices { param, grad, mut state } = self;
            let (param_lo, param_hi) = param.split_at_mut(mid);
            let (grad_lo, grad_hi) = grad.split_at(mid);
            // Unused buffers are empty and stay so.
            let state_lo = core::array::from_fn(|k| {
                let buffer = core::mem::take(&mut state[k]);
                let (lo, hi) = buffer.split_at_mut(mid.min(buffer.len()));
                state[k] = hi;
                lo
            });
            (
                Slices { param: param_lo, grad: grad_lo, state: state_lo },
                Slices { param: param_hi, grad: grad_hi, state },
            )
        }
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
