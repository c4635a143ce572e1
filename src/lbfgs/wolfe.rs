//! PyTorch's strong-Wolfe line search (`_strong_wolfe`, ported from minFunc's `lswolfe`)
//! and its cubic interpolation, operation for operation.
//!
//! Gradients are never copied: each evaluation writes into a free slot of the optimizer's
//! pool of flat buffers, and the search passes slot numbers where PyTorch passes (cloned)
//! tensors. The slots the search still refers to are never written.

use super::scalar::Num::{self, Float, Tensor};
use crate::element::Element;

/// Sufficient decrease (Armijo) constant.
const C1: f64 = 1e-4;
/// Curvature constant.
const C2: f64 = 0.9;
/// The bracket's smallest width: PyTorch's default, which `LBFGS.step` does not override.
const TOLERANCE_CHANGE: f64 = 1e-9;

/// How many gradient slots the search may use at once: the gradient at the start and three
/// more (the two ends of a bracket and the point being evaluated).
pub(crate) const SLOTS: usize = 4;

/// Where the search ended.
pub(crate) struct Found<A> {
    /// The loss there.
    pub(crate) loss: f64,
    /// The slot holding the gradient there.
    pub(crate) grad: usize,
    /// The step length.
    pub(crate) t: Num<A>,
    /// How many evaluations the search made.
    pub(crate) evals: usize,
}

/// A point evaluated on the line: the step length, the loss, the gradient's slot and the
/// directional derivative `g·d`.
#[derive(Clone, Copy)]
struct Point<A> {
    t: Num<A>,
    f: f64,
    g: usize,
    gtd: A,
}

/// The first slot that none of `live` uses.
fn free(live: &[usize]) -> usize {
    (0..SLOTS).find(|slot| !live.contains(slot)).unwrap_or(SLOTS - 1)
}

/// The minimiser of the cubic through `(x1, f1)` and `(x2, f2)` with slopes `g1` and `g2`,
/// clamped to `bounds` (the two points' interval if `None`); the interval's middle when the
/// cubic has no minimum.
fn cubic_interpolate<A: Element>(
    x1: Num<A>,
    f1: f64,
    g1: Num<A>,
    x2: Num<A>,
    f2: f64,
    g2: Num<A>,
    bounds: Option<(Num<A>, Num<A>)>,
) -> Num<A> {
    let (xmin, xmax) = bounds.unwrap_or(if x1.le(x2) { (x1, x2) } else { (x2, x1) });
    let d1 = g1.add(g2).sub(Float(3.0).mul(Float(f1 - f2)).div(x1.sub(x2)));
    let d2_square = d1.mul(d1).sub(g1.mul(g2));
    if d2_square.non_negative() {
        let d2 = d2_square.sqrt();
        let min_pos = if x1.le(x2) {
            x2.sub(x2.sub(x1).mul(g2.add(d2).sub(d1).div(g2.sub(g1).add(Float(2.0).mul(d2)))))
        } else {
            x1.sub(x1.sub(x2).mul(g1.add(d2).sub(d1).div(g1.sub(g2).add(Float(2.0).mul(d2)))))
        };
        min_pos.max(xmin).min(xmax)
    } else {
        xmin.add(xmax).div(Float(2.0))
    }
}

/// The strong-Wolfe search from the point `(0, f)` with gradient slot `g` and directional
/// derivative `gtd`, first trying step `t`, at most `max_ls` evaluations after the first.
/// `evaluate(t, slot)` evaluates the loss at `x + t d`, writes the gradient into `slot` and
/// returns the loss and `g·d`; `d_norm` is `max |d|`.
pub(crate) fn strong_wolfe<A: Element, E>(
    evaluate: &mut dyn FnMut(Num<A>, usize) -> Result<(f64, A), E>,
    t: Num<A>,
    d_norm: A,
    f: f64,
    g: usize,
    gtd: A,
    max_ls: usize,
) -> Result<Found<A>, E> {
    let slope = Tensor(gtd);
    // Armijo's condition fails at `(t, f_new)`.
    let too_high =
        |t: Num<A>, f_new: f64| Float(f_new).gt(Float(f).add(Float(C1).mul(t).mul(slope)));
    let curvature_met = |gtd_new: A| Tensor(gtd_new).abs().le(Float(-C2).mul(slope));
    let mut at = |t: Num<A>, slot: usize| -> Result<Point<A>, E> {
        let (f, gtd) = evaluate(t, slot)?;
        Ok(Point { t, f, g: slot, gtd })
    };

    let mut new = at(t, free(&[g]))?;
    let mut evals = 1;
    let mut prev = Point { t: Float(0.0), f, g, gtd };
    let mut done = false;
    let mut ls_iter = 0;
    // A bracket of one point (the search is done) repeats it.
    let mut bracket = [prev, new];
    while ls_iter < max_ls {
        if too_high(new.t, new.f) || (ls_iter > 1 && new.f >= prev.f) {
            bracket = [prev, new];
            break;
        }
        if curvature_met(new.gtd) {
            bracket = [new, new];
            done = true;
            break;
        }
        if Tensor(new.gtd).non_negative() {
            bracket = [prev, new];
            break;
        }
        let min_step = new.t.add(Float(0.01).mul(new.t.sub(prev.t)));
        let max_step = new.t.mul(Float(10.0));
        let t = cubic_interpolate(
            prev.t,
            prev.f,
            Tensor(prev.gtd),
            new.t,
            new.f,
            Tensor(new.gtd),
            Some((min_step, max_step)),
        );
        prev = new;
        new = at(t, free(&[g, prev.g]))?;
        evals += 1;
        ls_iter += 1;
    }
    if ls_iter == max_ls {
        // Out of evaluations: the bracket is the start and the last point.
        bracket = [Point { t: Float(0.0), f, g, gtd }, new];
    }

    // Zoom: shrink the bracket until a point meets the conditions.
    let order =
        |bracket: &[Point<A>; 2]| if bracket[0].f <= bracket[1].f { (0, 1) } else { (1, 0) };
    let mut insufficient_progress = false;
    let (mut low, mut high) = if done { (0, 1) } else { order(&bracket) };
    while !done && ls_iter < max_ls {
        let width = bracket[1].t.sub(bracket[0].t).abs();
        if width.mul(Tensor(d_norm)).lt(Float(TOLERANCE_CHANGE)) {
            break;
        }
        let mut t = cubic_interpolate(
            bracket[0].t,
            bracket[0].f,
            Tensor(bracket[0].gtd),
            bracket[1].t,
            bracket[1].f,
            Tensor(bracket[1].gtd),
            None,
        );
        // Too close to an end, twice running or at the end itself: move a tenth of the
        // bracket's width inside it.
        let top = bracket[0].t.max(bracket[1].t);
        let bottom = bracket[0].t.min(bracket[1].t);
        let eps = Float(0.1).mul(top.sub(bottom));
        if top.sub(t).min(t.sub(bottom)).lt(eps) {
            if insufficient_progress || t.ge(top) || t.le(bottom) {
                t = if t.sub(top).abs().lt(t.sub(bottom).abs()) {
                    top.sub(eps)
                } else {
                    bottom.add(eps)
                };
                insufficient_progress = false;
            } else {
                insufficient_progress = true;
            }
        } else {
            insufficient_progress = false;
        }

        new = at(t, free(&[bracket[0].g, bracket[1].g]))?;
        evals += 1;
        ls_iter += 1;

        if too_high(new.t, new.f) || new.f >= bracket[low].f {
            bracket[high] = new;
            (low, high) = order(&bracket);
        } else {
            if curvature_met(new.gtd) {
                done = true;
            } else if Tensor(new.gtd).mul(bracket[high].t.sub(bracket[low].t)).non_negative() {
                bracket[high] = bracket[low];
            }
            bracket[low] = new;
        }
    }
    let best = bracket[low];
    Ok(Found { loss: best.f, grad: best.g, t: best.t, evals })
}
