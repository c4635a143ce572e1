//! The update rules, one module each: hyperparameters with their defaults, per-step
//! coefficients and per-element math.

mod adadelta;
mod adafactor;
mod adagrad;
pub(crate) mod adam;
mod adamax;
mod adamw;
mod any;
mod asgd;
mod lamb;
mod lion;
mod momentum;
mod muon;
mod nadam;
mod nesterov;
mod prodigy;
mod radam;
mod rmsprop;
mod rprop;
pub mod schedule_free;
mod sgd;

pub use adadelta::Adadelta;
pub use adafactor::Adafactor;
pub use adagrad::Adagrad;
pub use adam::Adam;
pub use adamax::Adamax;
pub use adamw::AdamW;
pub use any::Rule;
pub use asgd::Asgd;
pub use lamb::Lamb;
pub use lion::Lion;
pub use momentum::Momentum;
pub use muon::{AdjustLr, Muon};
pub use nadam::NAdam;
pub use nesterov::Nesterov;
pub use prodigy::Prodigy;
pub use radam::RAdam;
pub use rmsprop::RmsProp;
pub use rprop::Rprop;
pub use schedule_free::{ScheduleFreeAdamW, ScheduleFreeSgd};
pub use sgd::Sgd;

use core::cell::Cell;

use crate::element::Element;

/// An exponential moving average's weights β and 1 − β, in the element type.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ema<A> {
    beta: A,
    one_minus_beta: A,
}

impl<A: Element> Ema<A> {
    /// The weights of decay β, with 1 − β computed in `f64`, as PyTorch computes it.
    pub(crate) fn new(beta: f64) -> Self {
        Ema { beta: A::from_f64(beta), one_minus_beta: A::from_f64(1.0 - beta) }
    }

    /// `$\beta\, a + (1 - \beta)\, x$`.
    #[inline(always)]
    pub(crate) fn average(self, average: A, x: A) -> A {
        self.beta * average + self.one_minus_beta * x
    }
}

/// Adam's bias correction `$1 - \beta^t$`, with `powf` on the step as a float, as PyTorch's
/// `beta ** step`.
pub(crate) fn bias_correction(beta: f64, step: u64) -> f64 {
    // A batch steps its tensors at one count with the same betas, and `powf` costs as much
    // as the rest of a small tensor's set-up: each thread keeps its last two results, a new
    // one replacing them in turn, so that the Adam family's two betas both stay and a hit
    // writes nothing.
    std::thread_local! {
        static KEPT: [Cell<Kept>; 2] = const { [Cell::new(Kept::NONE), Cell::new(Kept::NONE)] };
        static NEXT: Cell<usize> = const { Cell::new(0) };
    }
    let key = (beta.to_bits(), step);
    KEPT.with(|kept| {
        if let Some(hit) = kept.iter().map(Cell::get).find(|kept| kept.key == key) {
            return hit.value;
        }
        let value = 1.0 - beta.powf(step as f64);
        let next = NEXT.with(|next| next.replace(1 - next.get()));
        kept[next].set(Kept { key, value });
        value
    })
}

/// A result of [`bias_correction`] and its key, β's bits and the step.
#[derive(Clone, Copy)]
struct Kept {
    key: (u64, u64),
    value: f64,
}

impl Kept {
    /// No result: a β of NaN, which no rule accepts, so no call's key matches it.
    const NONE: Kept = Kept { key: (0x7FF8_0000_0000_0000, 0), value: f64::NAN };
}

/// `torch.maximum`: the larger value, NaN if either is NaN (where `f64::max` would drop it).
#[inline]
pub(crate) fn maximum<A: Element>(a: A, b: A) -> A {
    if a.is_nan() || a > b { a } else { b }
}

/// PyTorch's `lerp(start, end, weight)` for one weight: the branch on the weight keeps the
/// result exact at both ends.
#[derive(Clone, Copy)]
pub(crate) struct Lerp<A> {
    weight: A,
    one_minus_weight: A,
    small: bool,
}

impl<A: Element> Lerp<A> {
    pub(crate) fn new(weight: f64) -> Self {
        let weight = A::from_f64(weight);
        let small = weight.abs() < A::from_f64(0.5);
        Lerp { weight, one_minus_weight: A::one() - weight, small }
    }

    #[inline]
    pub(crate) fn at(self, start: A, end: A) -> A {
        if self.small {
            start + self.weight * (end - start)
        } else {
            end - (end - start) * self.one_minus_weight
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bias_correction;

    #[test]
    fn bias_corrections_equal_powf_in_any_order_of_betas_and_steps() {
        let calls = [(0.9, 1), (0.999, 1), (0.9, 1), (0.999, 1), (0.9, 2), (0.8, 2), (0.999, 2)];
        for (beta, step) in calls.into_iter().chain(calls.into_iter().rev()) {
            let direct = 1.0 - f64::powf(beta, step as f64);
            assert_eq!(bias_correction(beta, step).to_bits(), direct.to_bits(), "{beta} {step}");
        }
    }
}
