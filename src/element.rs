//! The element types the optimizers run on.

use core::fmt::{Debug, Display};
use num_traits::Float;

use ndarray::{ArrayView, ArrayViewMut, IxDyn};

use crate::kernel::{CompactState, StateSlots, TensorStep};
use crate::rules::Rule;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point element type of parameters, gradients and optimizer state: `f32` or `f64`.
///
/// Hyperparameters are kept as `f64` and converted to the element type once per step, so one
/// configuration serves both precisions. The trait is sealed: the bit-exactness guarantees of
/// this crate are stated and tested for IEEE-754 binary32 and binary64 only.
pub trait Element:
    Float + Debug + Display + Default + Send + Sync + 'static + bytemuck::Pod + sealed::Sealed
{
    /// The type's name as written in checkpoints and replay cases: `"f32"` or `"f64"`.
    const NAME: &'static str;

    /// Rounds an `f64` to this type (round-to-nearest-even, as `as` does).
    fn from_f64(value: f64) -> Self;

    /// Widens this value to `f64` (exact for both element types).
    fn into_f64(self) -> f64;

    /// Steps `tensor` with `rule`: the two implementations are compiled in this crate, so
    /// that programs stepping [`Rule`]s do not compile the rules' loops again.
    #[doc(hidden)]
    fn step_rule(rule: &Rule, tensor: TensorStep<'_, Self>);

    /// Whether per-element state can be kept in low precision
    /// ([`StatePrecision`](crate::StatePrecision)): `f32` only, whose arithmetic the
    /// bfloat16 and 8-bit formats are defined with.
    const LOW_PRECISION_STATE: bool;

    /// Runs a fused step over state kept in low precision: compiled for `f32` only, so that
    /// `f64` programs do not compile loops they cannot run.
    #[doc(hidden)]
    fn drive_compact<S, F>(
        param: ArrayViewMut<'_, Self, IxDyn>,
        grad: ArrayView<'_, Self, IxDyn>,
        state: CompactState<'_, Self>,
        update: F,
    ) where
        S: StateSlots<Self>,
        F: Fn(&mut Self, Self, &mut S) + Sync;
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    const LOW_PRECISION_STATE: bool = true;

    fn drive_compact<S, F>(
        param: ArrayViewMut<'_, Self, IxDyn>,
        grad: ArrayView<'_, Self, IxDyn>,
        state: CompactState<'_, Self>,
        update: F,
    ) where
        S: StateSlots<Self>,
        F: Fn(&mut Self, Self, &mut S) + Sync,
    {
        crate::kernel::drive_compact::<Self, S, F>(param, grad, state, &update);
    }

    fn step_rule(rule: &Rule, tensor: TensorStep<'_, Self>) {
        rule.step_as_held(tensor);
    }

    #[inline]
    fn from_f64(value: f64) -> Self {
        value as f32
    }

    #[inline]
    fn into_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Element for f64 {
    const NAME: &'static str = "f64";
    const LOW_PRECISION_STATE: bool = false;

    fn drive_compact<S, F>(
        _: ArrayViewMut<'_, Self, IxDyn>,
        _: ArrayView<'_, Self, IxDyn>,
        _: CompactState<'_, Self>,
        _: F,
    ) where
        S: StateSlots<Self>,
        F: Fn(&mut Self, Self, &mut S) + Sync,
    {
        unreachable!("low-precision state is refused for f64 elements when it is requested")
    }

    fn step_rule(rule: &Rule, tensor: TensorStep<'_, Self>) {
        rule.step_as_held(tensor);
    }

    #[inline]
    fn from_f64(value: f64) -> Self {
        value
    }

    #[inline]
    fn into_f64(self) -> f64 {
        self
    }
}
