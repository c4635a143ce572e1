//! The arithmetic of one averaging update, element by element, in any memory layout.
//!
//! Every element is computed on its own with the same operations in the same order, so the
//! layouts of the parameter and of the average never change a bit of the result.

use ndarray::{ArrayView, ArrayViewMut, IxDyn, Zip};

use super::Averaging;
use crate::element::Element;

/// Converts between the element types through `f64`: exact when the type widens or stays,
/// one correctly rounded step when it narrows.
#[inline(always)]
pub(super) fn cast<X: Element, Y: Element>(x: X) -> Y {
    Y::from_f64(x.into_f64())
}

/// Folds the snapshot `param` into the tensor's `buffers` (row-major, of `param`'s shape:
/// the average, after the raw EMA of a debiased optax EMA); `count` snapshots were averaged
/// before, and `count + 1` does not overflow.
///
/// The arithmetic runs in the wider of the parameter's type `A` and the average's type `S`,
/// as optax's type promotion computes it when its accumulator type differs from the
/// parameters'; with one type it is that type.
pub(super) fn update<A: Element, S: Element>(
    averaging: Averaging,
    count: u64,
    buffers: &mut [S],
    param: ArrayView<'_, A, IxDyn>,
) {
    if size_of::<A>() == size_of::<f64>() || size_of::<S>() == size_of::<f64>() {
        update_in::<A, S, f64>(averaging, count, buffers, param);
    } else {
        update_in::<A, S, f32>(averaging, count, buffers, param);
    }
}

fn update_in<A: Element, S: Element, W: Element>(
    averaging: Averaging,
    count: u64,
    buffers: &mut [S],
    param: ArrayView<'_, A, IxDyn>,
) {
    let (first, rest) = buffers.split_at_mut(param.len());
    let shape = param.shape();
    match averaging {
        Averaging::Swa | Averaging::Ema { .. } if count == 0 => {
            Zip::from(view(shape, first)).and(&param).for_each(|a, &p| *a = cast(p));
        }
        Averaging::Swa => {
            let n = W::from_f64((count + 1) as f64);
            blend::<A, S, W>(view(shape, first), &param, |a, p| a + (p - a) / n);
        }
        Averaging::Ema { decay, warmup } => {
            let weight = W::from_f64(1.0 - ema_decay(decay, warmup, count));
            // torch.lerp's two forms, each exact at its end of the weight range.
            if weight.abs() < W::from_f64(0.5) {
                blend::<A, S, W>(view(shape, first), &param, |a, p| a + weight * (p - a));
            } else {
                let keep = W::one() - weight;
                blend::<A, S, W>(view(shape, first), &param, |a, p| p - (p - a) * keep);
            }
        }
        Averaging::OptaxEma { decay, debias } => {
            // optax: `(1 - decay) * g` in the parameter's type, `decay * ema` in the
            // accumulator's, their sum in the wider one.
            let (take, keep) = (A::from_f64(1.0 - decay), S::from_f64(decay));
            let ema = move |e: S, p: A| cast::<A, W>(take * p) + cast::<S, W>(keep * e);
            if debias {
                let t = W::from_f64((count + 1) as f64);
                let correction = W::one() - W::from_f64(decay).powf(t);
                Zip::from(view(shape, first)).and(view(shape, rest)).and(&param).for_each(
                    |e, average, &p| {
                        let new = ema(*e, p);
                        *e = cast(new);
                        *average = cast(new / correction);
                    },
                );
            } else {
                Zip::from(view(shape, first)).and(&param).for_each(|e, &p| *e = cast(ema(*e, p)));
            }
        }
    }
}

/// The decay of an update of [`Averaging::Ema`] after `count` snapshots: `decay`, or with
/// `warmup` TensorFlow's `min(decay, (1 + n) / (10 + n))`.
fn ema_decay(decay: f64, warmup: bool, count: u64) -> f64 {
    if warmup {
        let n = count as f64;
        decay.min((1.0 + n) / (10.0 + n))
    } else {
        decay
    }
}

/// `values` viewed with `shape`, row-major.
fn view<'v, S>(shape: &[usize], values: &'v mut [S]) -> ArrayViewMut<'v, S, IxDyn> {
    ArrayViewMut::from_shape(IxDyn(shape), values)
        .expect("every buffer holds exactly the elements of the tensor's shape")
}

/// Sets every average `a` to `f(a, p)` of its parameter element `p`, computed in `W`.
fn blend<A: Element, S: Element, W: Element>(
    average: ArrayViewMut<'_, S, IxDyn>,
    param: &ArrayView<'_, A, IxDyn>,
    f: impl Fn(W, W) -> W,
) {
    Zip::from(average).and(param).for_each(|a, &p| *a = cast(f(cast(*a), cast(p))));
}
