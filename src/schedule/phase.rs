//! One schedule of an [`LrScheduler`](super::LrScheduler) with its position, and each kind's
//! rate as PyTorch's `get_lr` (the recursive form) and `_get_closed_form_lr` compute it.

use core::f64::consts::PI;

use super::{AnnealStrategy, Schedule};
use crate::error::{Error, Result};

/// How a phase moves to its next rate: PyTorch's three ways of calling a scheduler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Move {
    /// The step a scheduler's constructor takes (`last_epoch` -1 → 0, "initial mode").
    Initial,
    /// `scheduler.step()`: `last_epoch` + 1, the recursive form.
    Advance,
    /// SequentialLR entering this phase at a milestone: `last_epoch` = 0, the closed form.
    Restart,
}

/// The error of a step count that cannot grow: `last_epoch` is an `i64`, as PyTorch's is
/// in practice, so a schedule runs at most `i64::MAX` steps.
pub(super) fn exhausted() -> Error {
    Error::ScheduleFinished { total_steps: i64::MAX as u64 }
}

/// A warm-restart period after `t_i`: `t_i · t_mult`, or `u64::MAX` if that does not fit,
/// a period longer than any schedule can run (PyTorch's integers do not overflow, and a
/// period of `u64::MAX` steps gives the same rates for every step a schedule can reach).
fn next_period(t_i: u64, t_mult: u64) -> u64 {
    t_i.saturating_mul(t_mult)
}

/// `(T_i, T_cur)` of warm restarts after `epoch` steps from the start.
#[cfg(feature = "serde")]
fn restart_position(t_0: u64, t_mult: u64, epoch: i64) -> (u64, u64) {
    let (mut t_i, mut rest) = (t_0, u64::try_from(epoch).unwrap_or(0));
    if t_mult == 1 {
        return (t_0, rest % t_0);
    }
    // The period at least doubles, so this runs at most 64 times.
    while rest >= t_i {
        rest -= t_i;
        t_i = next_period(t_i, t_mult);
    }
    (t_i, rest)
}

/// A rate that came out below zero by rounding alone is 0: every schedule's exact rates are
/// ≥ 0, and a recursion's rounding stays within a few units in the last place of the largest
/// rate involved (`scale`) per step it has taken (`steps`, with some to spare for the first
/// steps). Anything further below zero is left for the caller to refuse.
///
/// PyTorch's recursive LinearLR with `end_factor = 0` ends at about −1e-19 for a base rate of
/// 0.01 and keeps stepping with that; a negative rate is not a learning rate, so this crate
/// sets 0 there, which moves parameters by the same nothing. Likewise a cosine whose
/// `eta_min` is above a tiny base rate comes back down to just below 0, by more the longer
/// it runs.
fn settle(rate: f64, scale: f64, steps: i64) -> f64 {
    const ROUNDING_PER_STEP: f64 = 4.0 * f64::EPSILON;
    let tolerance = ROUNDING_PER_STEP * (steps.max(0) as f64 + 16.0) * scale.abs();
    if rate < 0.0 && rate >= -tolerance { 0.0 } else { rate }
}

/// SWALR's rate at step `epoch` from the rate `lr` of the step before: the weight `$\alpha$`
/// of `swa_lr` rises from 0 to 1 over `anneal_epochs` steps, and the rate before the
/// annealing is recovered from `lr` with the previous weight (PyTorch's `_get_initial_lr`).
fn swa_lr_after(
    swa_lr: f64,
    anneal_epochs: u64,
    strategy: AnnealStrategy,
    epoch: i64,
    lr: f64,
) -> f64 {
    // PyTorch counts SWALR's own steps (`_step_count - 1`), which is `last_epoch` however the
    // phase is reached, and takes one step more without annealing.
    let step = if anneal_epochs == 0 { epoch.max(1) } else { epoch };
    let period = anneal_epochs.max(1);
    let fraction = |step: i64| match u64::try_from(step) {
        Err(_) | Ok(0) => 0.0,
        Ok(step) if step >= period => 1.0,
        Ok(step) => step as f64 / period as f64,
    };
    let weight = |t: f64| match strategy {
        AnnealStrategy::Cos => (1.0 - (PI * t).cos()) / 2.0,
        AnnealStrategy::Linear => t,
    };
    let previous = weight(fraction(step - 1));
    let before = if previous == 1.0 { swa_lr } else { (lr - previous * swa_lr) / (1.0 - previous) };
    let alpha = weight(fraction(step));
    swa_lr * alpha + before * (1.0 - alpha)
}

/// Where a phase is: PyTorch's `last_epoch`, and `T_i`, `T_cur` of warm restarts (0 for
/// the other kinds). Kept apart from the schedule so that a step computes the next position
/// without copying the schedule (whose milestones may be a list).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Position {
    pub(super) last_epoch: i64,
    t_i: u64,
    t_cur: u64,
}

/// One schedule with its position.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub(super) struct Phase {
    pub(super) schedule: Schedule,
    last_epoch: i64,
    t_i: u64,
    t_cur: u64,
}

impl Phase {
    /// The schedule before its constructor's step.
    pub(super) fn new(schedule: Schedule) -> Self {
        let t_i = match schedule {
            Schedule::CosineRestarts { t_0, .. } => t_0,
            _ => 0,
        };
        Phase { schedule, last_epoch: -1, t_i, t_cur: 0 }
    }

    /// The schedule back at its start, before its constructor's step.
    pub(super) fn rewound(&self) -> Self {
        Phase::new(self.schedule.clone())
    }

    pub(super) fn position(&self) -> Position {
        Position { last_epoch: self.last_epoch, t_i: self.t_i, t_cur: self.t_cur }
    }

    pub(super) fn set(&mut self, position: Position) {
        (self.last_epoch, self.t_i, self.t_cur) =
            (position.last_epoch, position.t_i, position.t_cur);
    }

    /// The position after `movement`, or the error PyTorch raises for it.
    pub(super) fn moved(&self, movement: Move) -> Result<Position> {
        let mut next = self.position();
        match movement {
            Move::Initial | Move::Restart => next.last_epoch = 0,
            Move::Advance => {
                next.last_epoch = next.last_epoch.checked_add(1).ok_or_else(exhausted)?
            }
        }
        match self.schedule {
            Schedule::CosineRestarts { t_0, t_mult, .. } => match movement {
                Move::Initial => (next.t_i, next.t_cur) = (t_0, 0),
                Move::Advance => {
                    // `t_cur < t_i`, so neither count overflows.
                    next.t_cur += 1;
                    if next.t_cur >= next.t_i {
                        next.t_cur -= next.t_i;
                        next.t_i = next_period(next.t_i, t_mult);
                    }
                }
                // SequentialLR's `_update_lr(0)` keeps `T_cur` and `T_i` (0 and `T_0`, as
                // left by the constructor's step).
                Move::Restart => {}
            },
            Schedule::OneCycle(ref one_cycle) if next.last_epoch as u64 > one_cycle.total_steps => {
                return Err(Error::ScheduleFinished { total_steps: one_cycle.total_steps });
            }
            _ => {}
        }
        Ok(next)
    }

    /// Whether the position is one that stepping from the start reaches, with at least
    /// one more step possible.
    #[cfg(feature = "serde")]
    pub(super) fn position_ok(&self) -> bool {
        let epoch = self.last_epoch;
        if !(-1..i64::MAX).contains(&epoch) {
            return false;
        }
        match self.schedule {
            Schedule::CosineRestarts { t_0, t_mult, .. } => {
                (self.t_i, self.t_cur) == restart_position(t_0, t_mult, epoch)
            }
            Schedule::OneCycle(ref one_cycle) => epoch < 0 || epoch as u64 <= one_cycle.total_steps,
            _ => self.t_i == 0 && self.t_cur == 0,
        }
    }

    /// The rate of the group at `group`, with base rate `base` and current rate `lr`, at the
    /// position `at` this phase has just reached by `movement` (PyTorch's `get_lr`, or
    /// `_get_closed_form_lr` on a restart); a result that is negative by rounding alone is 0.
    ///
    /// # Errors
    /// A lambda's: [`Error::LambdaMissing`], [`Error::InvalidLambdaFactor`].
    pub(super) fn lr(
        &self,
        at: Position,
        movement: Move,
        group: usize,
        base: f64,
        lr: f64,
    ) -> Result<f64> {
        // The largest rate involved: the recursions' rounding is relative to it.
        let scale = match self.schedule {
            Schedule::Cyclic(ref cyclic) => cyclic.largest_lr(group),
            Schedule::OneCycle(ref one_cycle) => one_cycle.largest_lr(group),
            Schedule::Swa { ref swa_lr, .. } => base.abs().max(lr.abs()).max(swa_lr.get(group)),
            Schedule::Cosine { eta_min, .. } | Schedule::CosineRestarts { eta_min, .. } => {
                base.abs().max(lr.abs()).max(eta_min)
            }
            _ => base.abs().max(lr.abs()),
        };
        Ok(settle(self.raw_lr(at, movement, group, base, lr)?, scale, at.last_epoch))
    }

    /// The momentum of the group at `group` at step `epoch`, if this phase cycles momentum.
    pub(super) fn momentum(&self, epoch: i64, group: usize) -> Option<f64> {
        match self.schedule {
            Schedule::Cyclic(ref cyclic) => cyclic.momentum(group, epoch),
            Schedule::OneCycle(ref one_cycle) => one_cycle.momentum(group, epoch),
            _ => None,
        }
    }

    fn raw_lr(
        &self,
        at: Position,
        movement: Move,
        group: usize,
        base: f64,
        lr: f64,
    ) -> Result<f64> {
        let epoch = at.last_epoch;
        let t = epoch as f64;
        let name = self.schedule.name();
        Ok(match self.schedule {
            Schedule::Step { step_size, gamma } => match movement {
                Move::Restart => base * gamma.powf((epoch as u64 / step_size) as f64),
                _ if epoch == 0 || !(epoch as u64).is_multiple_of(step_size) => lr,
                _ => lr * gamma,
            },
            Schedule::MultiStep { ref milestones, gamma } => {
                // PyTorch's `Counter` of milestones, counted in place: no allocation.
                let epoch = epoch as u64;
                let count = |hit: fn(u64, u64) -> bool| {
                    milestones.iter().filter(|&&milestone| hit(milestone, epoch)).count()
                };
                match movement {
                    Move::Restart => base * gamma.powf(count(|m, e| m <= e) as f64),
                    _ => match count(|m, e| m == e) {
                        0 => lr,
                        repeats => lr * gamma.powf(repeats as f64),
                    },
                }
            }
            Schedule::Constant { factor, total_iters } => match movement {
                Move::Restart => {
                    let done = if epoch as u64 >= total_iters { 1.0 - factor } else { 0.0 };
                    base * (factor + done)
                }
                _ if epoch == 0 => lr * factor,
                _ if epoch as u64 != total_iters => lr,
                _ => lr * (1.0 / factor),
            },
            Schedule::Exponential { gamma } => match movement {
                Move::Restart => base * gamma.powf(t),
                Move::Initial => lr,
                Move::Advance => lr * gamma,
            },
            Schedule::Polynomial { total_iters, power } => {
                let n = total_iters as f64;
                match movement {
                    Move::Restart => {
                        base * (1.0 - (epoch as u64).min(total_iters) as f64 / n).powf(power)
                    }
                    Move::Initial => lr,
                    Move::Advance if epoch as u64 > total_iters => lr,
                    Move::Advance => lr * ((1.0 - t / n) / (1.0 - (t - 1.0) / n)).powf(power),
                }
            }
            Schedule::Cosine { t_max, eta_min } => {
                let period = t_max as f64;
                // In i128, `epoch − 1 − T` and `2T` cannot overflow for any `u64` T.
                let trough = (i128::from(epoch) - 1 - i128::from(t_max))
                    .rem_euclid(2 * i128::from(t_max))
                    == 0;
                match movement {
                    Move::Restart => {
                        eta_min + (base - eta_min) * (1.0 + (PI * t / period).cos()) / 2.0
                    }
                    Move::Initial => lr,
                    Move::Advance if trough => {
                        lr + (base - eta_min) * (1.0 - (PI / period).cos()) / 2.0
                    }
                    Move::Advance => {
                        (1.0 + (PI * t / period).cos()) / (1.0 + (PI * (t - 1.0) / period).cos())
                            * (lr - eta_min)
                            + eta_min
                    }
                }
            }
            Schedule::CosineRestarts { eta_min, .. } => {
                let (t_cur, t_i) = (at.t_cur as f64, at.t_i as f64);
                eta_min + (base - eta_min) * (1.0 + (PI * t_cur / t_i).cos()) / 2.0
            }
            Schedule::Linear { start_factor, end_factor, total_iters } => {
                let (a, b, n) = (start_factor, end_factor, total_iters as f64);
                match movement {
                    Move::Restart => {
                        base * (a + (b - a) * (epoch as u64).min(total_iters) as f64 / n)
                    }
                    _ if epoch == 0 => lr * a,
                    _ if epoch as u64 > total_iters => lr,
                    _ => lr * (1.0 + (b - a) / (n * a + (t - 1.0) * (b - a))),
                }
            }
            // Functions of the step alone (CyclicLR has no closed form: SequentialLR's
            // restart is its `get_lr` at step 0).
            Schedule::Cyclic(ref cyclic) => cyclic.lr(group, epoch),
            Schedule::OneCycle(ref one_cycle) => one_cycle.lr(group, epoch),
            // SWALR has no closed form: SequentialLR's restart is its `get_lr` at step 0.
            Schedule::Swa { ref swa_lr, anneal_epochs, anneal_strategy } => {
                swa_lr_after(swa_lr.get(group), anneal_epochs, anneal_strategy, epoch, lr)
            }
            // LambdaLR has no closed form: SequentialLR's restart is its `get_lr` at step 0.
            Schedule::Lambda(ref lambda) => base * lambda.factor(name, epoch as u64, group)?,
            // Nor has MultiplicativeLR: a restart multiplies the rate the phase before left by
            // the factor of step 0; only the constructor's step keeps the rate.
            Schedule::Multiplicative(ref lambda) => match movement {
                Move::Initial => lr,
                Move::Advance | Move::Restart => lr * lambda.factor(name, epoch as u64, group)?,
            },
        })
    }
}
