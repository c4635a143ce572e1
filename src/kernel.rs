//! The fused elementwise driver that runs every rule over every memory layout.
//!
//! One step is one pass over parameter, gradient and state: a single `Zip` whose closure loads
//! an element's state values, calls the rule's per-element update and stores them back. When
//! parameter and gradient are contiguous in the memory order the state was laid out in, all
//! arrays are handed to `Zip` as flat 1-D slices, which it walks with unit stride and the
//! compiler vectorises; otherwise `Zip` walks the arrays with their own strides. Both paths run
//! the same update on the same values, so the layout never changes a bit of the result.

use ndarray::{
    ArrayView, ArrayView1, ArrayViewMut, ArrayViewMut1, Dimension, Order, ShapeBuilder, Zip,
};

use crate::element::Element;

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
    /// # Panics
    /// If `N` is not the number of buffers the rule declared: a bug in the rule, not in the
    /// data.
    #[inline]
    pub fn apply<S, F>(self, update: F)
    where
        S: StateSlots<A>,
        F: Fn(&mut A, A, &mut S),
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
        F: Fn(&mut A, A, &mut S),
    {
        let TensorStep { mut param, grad, state, order, .. } = self;
        assert_eq!(
            state.len(),
            S::LEN * param.len(),
            "a rule's update must take one state value per declared state buffer"
        );
        let flat = is_contiguous_in(&param.view(), order) && is_contiguous_in(&grad, order);
        match (param.as_slice_memory_order_mut(), grad.as_slice_memory_order()) {
            (Some(p), Some(g)) if flat => S::for_each(
                ArrayViewMut1::from(p),
                ArrayView1::from(g),
                state,
                Order::RowMajor,
                update,
            ),
            _ => S::for_each(param, grad, state, order, update),
        }
    }
}
