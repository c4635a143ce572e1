//! Learning-rate schedules, step for step as PyTorch's `torch.optim.lr_scheduler` computes
//! them.
//!
//! A [`Schedule`] is a plain description (StepLR, ExponentialLR, CosineAnnealingLR, …); an
//! [`LrScheduler`] runs one, or a chain or sequence of them, against an [`Optimizer`]: it sets
//! every group's current rate from the group's own base rate (the `lr` of its
//! hyperparameters), as [`Optimizer::set_lrs_with`] does. Creating it sets the rates of the
//! first step; call [`LrScheduler::step`] once after every optimizer step, as in PyTorch.
//! [`ReduceLrOnPlateau`] is fed a metric instead.
//!
//! PyTorch computes most schedules *recursively*, from the rate in effect (for example
//! CosineAnnealingLR multiplies the current rate by a ratio of cosines, rather than
//! evaluating its closed form); these types do the same, operation for operation, so the
//! rates agree with PyTorch's to the last bit or so, not only up to the closed form's
//! rounding. Where PyTorch switches to the closed form (SequentialLR entering a new phase),
//! so do they.
//!
//! The scheduler's position is plain data: serialize it next to the optimizer (whose
//! checkpoint holds the current rates), and a restored pair continues the schedule exactly.
//!
//! # Order of building and restoring
//!
//! Each step computes a group's next rate from the rate the schedule set it to (PyTorch's
//! recursive forms), so the optimizer's current rates and the scheduler's position must
//! belong together. Therefore:
//!
//! - Restore a saved run by restoring both the optimizer and the scheduler, in either order;
//!   PyTorch's order (build both, then load both states) works as well.
//! - Building a scheduler sets the rates of its first step, and refuses with
//!   [`Error::ScheduleInProgress`], changing nothing, when that would replace a rate that a
//!   schedule has set (an optimizer restored mid-schedule): a scheduler state restored
//!   afterwards would continue from the wrong rates. To continue, restore the saved
//!   scheduler instead; to start a new schedule from the base rates, call
//!   [`Optimizer::clear_scheduled_lrs`] first.
//! - A group without a scheduled rate at a step — added to the optimizer after the schedule
//!   started, given a new base rate with [`Optimizer::set_lr`], or in a fresh optimizer
//!   stepped by a restored scheduler — is brought into phase: its rate is replayed from its
//!   base rate through every step so far, exactly as if it had been there from the start.
//!
//! A rate that comes out below zero by rounding alone (by a few units in the last place of
//! the largest rate involved per step of the recursion, e.g. LinearLR decaying to
//! `end_factor = 0`, which in PyTorch ends near −1e-19 and stays there) is set to exactly 0; PyTorch keeps stepping with its tiny
//! negative rate, which moves parameters by the same nothing.
//!
//! ```
//! use ndarray::array;
//! use ndarray_optim::schedule::{LrScheduler, Schedule};
//! use ndarray_optim::{Optimizer, Sgd};
//!
//! let mut opt = Optimizer::new(Sgd { lr: 0.1, ..Sgd::default() })?;
//! // Warm up linearly over 3 steps, then anneal with a cosine over 10 (PyTorch's
//! // SequentialLR([LinearLR(...), CosineAnnealingLR(...)], milestones=[3])).
//! let mut scheduler = LrScheduler::sequential(
//!     &mut opt,
//!     vec![
//!         Schedule::Linear { start_factor: 0.25, end_factor: 1.0, total_iters: 3 },
//!         Schedule::Cosine { t_max: 10, eta_min: 0.0 },
//!     ],
//!     vec![3],
//! )?;
//! let mut w = array![1.0_f64];
//! let mut rates = vec![];
//! for _ in 0..5 {
//!     rates.push(opt.group("default")?.lr());
//!     opt.step("w", &mut w, &array![1.0])?;
//!     scheduler.step(&mut opt)?;
//! }
//! assert_eq!(rates[0], 0.025);
//! assert!((rates[1] - 0.05).abs() < 1e-15 && (rates[2] - 0.075).abs() < 1e-15);
//! assert_eq!(rates[3], 0.1); // the cosine phase starts at the base rate
//! # Ok::<(), ndarray_optim::Error>(())
//! ```

use core::f64::consts::PI;

use crate::check::{check_count, check_lr, check_non_negative, check_positive, require};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::rule::UpdateRule;

mod plateau;

pub use plateau::{PlateauMode, ReduceLrOnPlateau, ThresholdMode};

/// One learning-rate schedule, as one of PyTorch's schedulers defines it.
///
/// Notation: $\eta_b$ is a group's base rate, $\eta_t$ the rate of optimizer step $t + 1$
/// ($t$ = PyTorch's `last_epoch`, the number of scheduler steps so far; $\eta_0$ is the rate
/// of the first step). The closed forms below are what the recursions compute up to
/// rounding; the recursions are PyTorch's and are what runs.
///
/// | variant | $\eta_t$ | PyTorch |
/// | --- | --- | --- |
/// | `Step` | $\eta_b \gamma^{\lfloor t / k \rfloor}$ (recursively: $\eta_{t-1}\gamma$ when $k \mid t$) | `StepLR(step_size=k, gamma)` |
/// | `Exponential` | $\eta_b \gamma^t$ (recursively $\eta_{t-1}\gamma$) | `ExponentialLR(gamma)` |
/// | `Cosine` | $\eta_{min} + \frac{1}{2}(\eta_b - \eta_{min})(1 + \cos\frac{\pi t}{T})$, recursively $\eta_{min} + (\eta_{t-1} - \eta_{min}) \frac{1 + \cos(\pi t / T)}{1 + \cos(\pi (t-1)/T)}$; past $T$ it rises again (PyTorch's periodic continuation) | `CosineAnnealingLR(T_max=T, eta_min)` |
/// | `CosineRestarts` | $\eta_{min} + \frac{1}{2}(\eta_b - \eta_{min})(1 + \cos\frac{\pi T_{cur}}{T_i})$, $T_{cur}$ the steps since the last restart, $T_0$ the first period, each next one $T_{mult}$ times longer | `CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)` |
/// | `Linear` | $\eta_b \big(a + (b - a)\frac{\min(t, n)}{n}\big)$, recursively $\eta_{t-1}\big(1 + \frac{b - a}{n a + (t - 1)(b - a)}\big)$ for $1 \le t \le n$ | `LinearLR(start_factor=a, end_factor=b, total_iters=n)` |
/// | `OneCycle` | cosine from $M/d$ up to $M$ over the first `pct_start` of `total_steps`, then down to $M/(d f)$ | `OneCycleLR(max_lr=M, total_steps, pct_start, div_factor=d, final_div_factor=f, cycle_momentum=False)` |
///
/// `OneCycle` sets the same rates for every group (PyTorch's scalar `max_lr`) and does not
/// cycle momentum; stepping it past `total_steps` is [`Error::ScheduleFinished`], as in
/// PyTorch. [`validate`](Self::validate) refuses what would divide by zero on some step
/// (PyTorch raises `ZeroDivisionError` there): a `Cosine` period past about 3·10^8 steps, a
/// `OneCycle` phase of length 0. A warm-restart period that would pass `u64::MAX` steps is
/// `u64::MAX` (longer than any run: a schedule counts at most `i64::MAX` steps). A rate that
/// grows past `f64::MAX` (a `gamma` above 1) is refused by the step that would set it. In serde formats a schedule is `{"kind": "step", "step_size": k, "gamma": g}`,
/// `"exponential"`, `"cosine"` (`t_max`, `eta_min`), `"cosine_restarts"` (`t_0`, `t_mult`,
/// `eta_min`), `"linear"` (`start_factor`, `end_factor`, `total_iters`) or `"one_cycle"`
/// (`max_lr`, `total_steps`, `pct_start`, `div_factor`, `final_div_factor`); keys left out
/// take PyTorch's defaults. Formats that are not human-readable, such as postcard, cannot
/// read a `kind` key; there a schedule is the variant's index followed by its fields, in
/// the order above.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Multiply the rate by `gamma` every `step_size` steps.
    Step {
        /// Period $k$ (≥ 1).
        step_size: u64,
        /// Factor γ (finite, > 0; PyTorch's default 0.1).
        gamma: f64,
    },
    /// Multiply the rate by `gamma` every step.
    Exponential {
        /// Factor γ (finite, > 0).
        gamma: f64,
    },
    /// Cosine annealing from the base rate to `eta_min` over `t_max` steps.
    Cosine {
        /// Half period $T$ (≥ 1).
        t_max: u64,
        /// Smallest rate $\eta_{min}$ (finite, ≥ 0; default 0).
        eta_min: f64,
    },
    /// Cosine annealing restarted at the base rate after $T_0$, $T_0 T_{mult}$, … steps.
    CosineRestarts {
        /// First period $T_0$ (≥ 1).
        t_0: u64,
        /// Growth of the period after each restart (≥ 1; default 1).
        t_mult: u64,
        /// Smallest rate $\eta_{min}$ (finite, ≥ 0; default 0).
        eta_min: f64,
    },
    /// Linear change of a factor of the base rate, e.g. warm-up.
    Linear {
        /// Factor of the first step, in (0, 1] (default 1/3).
        start_factor: f64,
        /// Factor from step `total_iters` on, in [0, 1] (default 1).
        end_factor: f64,
        /// Steps of the change $n$ (≥ 1; default 5).
        total_iters: u64,
    },
    /// The one-cycle policy with cosine annealing (Smith & Topin 2017).
    OneCycle {
        /// Peak rate $M$ (finite, > 0), for every group.
        max_lr: f64,
        /// Length of the cycle in steps (≥ 1); stepping past it is an error.
        total_steps: u64,
        /// Fraction of the cycle spent rising, in [0, 1] (default 0.3).
        pct_start: f64,
        /// Initial rate $M/d$ (finite, > 0; default 25).
        div_factor: f64,
        /// Final rate $M/(d f)$ (finite, > 0; default 1e4).
        final_div_factor: f64,
    },
}

/// A [`Schedule`] in serde formats: tagged by a `kind` key where the format is human-readable
/// (JSON, configuration files), by the variant's index elsewhere (postcard, which cannot
/// read a tag among the fields).
#[cfg(feature = "serde")]
mod stored {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Schedule, defaults};

    impl Serialize for Schedule {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            if serializer.is_human_readable() {
                Tagged::serialize(self, serializer)
            } else {
                Indexed::serialize(self, serializer)
            }
        }
    }

    impl<'de> Deserialize<'de> for Schedule {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            if deserializer.is_human_readable() {
                Tagged::deserialize(deserializer)
            } else {
                Indexed::deserialize(deserializer)
            }
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Schedule", tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
    enum Tagged {
        Step {
            step_size: u64,
            #[serde(default = "defaults::gamma")]
            gamma: f64,
        },
        Exponential {
            gamma: f64,
        },
        Cosine {
            t_max: u64,
            #[serde(default)]
            eta_min: f64,
        },
        CosineRestarts {
            t_0: u64,
            #[serde(default = "defaults::t_mult")]
            t_mult: u64,
            #[serde(default)]
            eta_min: f64,
        },
        Linear {
            #[serde(default = "defaults::start_factor")]
            start_factor: f64,
            #[serde(default = "defaults::end_factor")]
            end_factor: f64,
            #[serde(default = "defaults::total_iters")]
            total_iters: u64,
        },
        OneCycle {
            max_lr: f64,
            total_steps: u64,
            #[serde(default = "defaults::pct_start")]
            pct_start: f64,
            #[serde(default = "defaults::div_factor")]
            div_factor: f64,
            #[serde(default = "defaults::final_div_factor")]
            final_div_factor: f64,
        },
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Schedule", rename_all = "snake_case", deny_unknown_fields)]
    enum Indexed {
        Step {
            step_size: u64,
            gamma: f64,
        },
        Exponential {
            gamma: f64,
        },
        Cosine {
            t_max: u64,
            eta_min: f64,
        },
        CosineRestarts {
            t_0: u64,
            t_mult: u64,
            eta_min: f64,
        },
        Linear {
            start_factor: f64,
            end_factor: f64,
            total_iters: u64,
        },
        OneCycle {
            max_lr: f64,
            total_steps: u64,
            pct_start: f64,
            div_factor: f64,
            final_div_factor: f64,
        },
    }
}

/// PyTorch's defaults.
#[cfg(feature = "serde")]
mod defaults {
    pub(super) fn gamma() -> f64 {
        0.1
    }
    pub(super) fn t_mult() -> u64 {
        1
    }
    pub(super) fn start_factor() -> f64 {
        1.0 / 3.0
    }
    pub(super) fn end_factor() -> f64 {
        1.0
    }
    pub(super) fn total_iters() -> u64 {
        5
    }
    pub(super) fn pct_start() -> f64 {
        0.3
    }
    pub(super) fn div_factor() -> f64 {
        25.0
    }
    pub(super) fn final_div_factor() -> f64 {
        1e4
    }
}

impl Schedule {
    /// The schedule's name in errors, e.g. `"cosine"` (its serde `kind`).
    pub fn name(&self) -> &'static str {
        match self {
            Schedule::Step { .. } => "step",
            Schedule::Exponential { .. } => "exponential",
            Schedule::Cosine { .. } => "cosine",
            Schedule::CosineRestarts { .. } => "cosine_restarts",
            Schedule::Linear { .. } => "linear",
            Schedule::OneCycle { .. } => "one_cycle",
        }
    }

    /// Checks every parameter's range (PyTorch's checks, and finiteness).
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] naming the schedule and the first key out of range.
    pub fn validate(&self) -> Result<()> {
        let name = self.name();
        match *self {
            Schedule::Step { step_size, gamma } => {
                check_count(name, "step_size", step_size)?;
                check_positive(name, "gamma", gamma)
            }
            Schedule::Exponential { gamma } => check_positive(name, "gamma", gamma),
            Schedule::Cosine { t_max, eta_min } => {
                check_count(name, "t_max", t_max)?;
                check_non_negative(name, "eta_min", eta_min)?;
                // The recursion divides by 1 + cos(π (t − 1) / T), which is smallest one step
                // either side of the trough; past about 3·10^8 it rounds to 0 there
                // (PyTorch's division by zero).
                let period = t_max as f64;
                let divisor = |t: f64| 1.0 + (PI * t / period).cos();
                let ok = t_max == 1 || (divisor(period - 1.0) > 0.0 && divisor(period + 1.0) > 0.0);
                require(
                    ok,
                    name,
                    "t_max",
                    period,
                    "small enough that the recursion never divides by 0 (about 3e8 at most)",
                )
            }
            Schedule::CosineRestarts { t_0, t_mult, eta_min } => {
                check_count(name, "t_0", t_0)?;
                check_count(name, "t_mult", t_mult)?;
                check_non_negative(name, "eta_min", eta_min)
            }
            Schedule::Linear { start_factor, end_factor, total_iters } => {
                let start_ok = start_factor > 0.0 && start_factor <= 1.0;
                require(start_ok, name, "start_factor", start_factor, "in (0, 1]")?;
                let end_ok = (0.0..=1.0).contains(&end_factor);
                require(end_ok, name, "end_factor", end_factor, "in [0, 1]")?;
                check_count(name, "total_iters", total_iters)
            }
            Schedule::OneCycle { max_lr, total_steps, pct_start, div_factor, final_div_factor } => {
                check_positive(name, "max_lr", max_lr)?;
                check_count(name, "total_steps", total_steps)?;
                let pct_ok = (0.0..=1.0).contains(&pct_start);
                require(pct_ok, name, "pct_start", pct_start, "in [0, 1]")?;
                check_positive(name, "div_factor", div_factor)?;
                check_positive(name, "final_div_factor", final_div_factor)?;
                let initial = max_lr / div_factor;
                require(
                    initial.is_finite(),
                    name,
                    "div_factor",
                    div_factor,
                    "such that max_lr / div_factor is finite",
                )?;
                let min = initial / final_div_factor;
                require(
                    min.is_finite(),
                    name,
                    "final_div_factor",
                    final_div_factor,
                    "such that max_lr / div_factor / final_div_factor is finite",
                )?;
                // Both phases are interpolated over their length: a phase that some step
                // reaches must not have length 0 (PyTorch divides by zero there).
                let steps = total_steps as f64;
                let rise_end = pct_start * steps - 1.0;
                let rise_ok = rise_end != 0.0;
                let fall_ok = (total_steps - 1) as f64 - rise_end != 0.0;
                let requirement = "such that pct_start · total_steps is neither 1 nor total_steps (a phase of length 0)";
                require(rise_ok && fall_ok, name, "pct_start", pct_start, requirement)
            }
        }
    }
}

/// How a phase moves to its next rate: PyTorch's three ways of calling a scheduler.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Move {
    /// The step a scheduler's constructor takes (`last_epoch` -1 → 0, "initial mode").
    Initial,
    /// `scheduler.step()`: `last_epoch` + 1, the recursive form.
    Advance,
    /// SequentialLR entering this phase at a milestone: `last_epoch` = 0, the closed form.
    Restart,
}

/// The error of a step count that cannot grow: `last_epoch` is an `i64`, as PyTorch's is
/// in practice, so a schedule runs at most `i64::MAX` steps.
fn exhausted() -> Error {
    Error::ScheduleFinished { total_steps: i64::MAX as u64 }
}

/// A warm-restart period after `t_i`: `t_i · t_mult`, or `u64::MAX` if that does not fit,
/// a period longer than any schedule can run (PyTorch's integers do not overflow, and a
/// period of `u64::MAX` steps gives the same rates for every step a schedule can reach).
fn next_period(t_i: u64, t_mult: u64) -> u64 {
    t_i.saturating_mul(t_mult)
}

/// `(T_i, T_cur)` of warm restarts after `epoch` steps from the start.
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

/// One schedule with its position: PyTorch's `last_epoch`, and `T_i`, `T_cur` of warm
/// restarts.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
struct Phase {
    schedule: Schedule,
    last_epoch: i64,
    t_i: u64,
    t_cur: u64,
}

impl Phase {
    fn new(schedule: Schedule) -> Self {
        let t_i = match schedule {
            Schedule::CosineRestarts { t_0, .. } => t_0,
            _ => 0,
        };
        Phase { schedule, last_epoch: -1, t_i, t_cur: 0 }
    }

    /// The phase after `movement`, or the error PyTorch raises for it.
    fn moved(mut self, movement: Move) -> Result<Self> {
        match movement {
            Move::Initial | Move::Restart => self.last_epoch = 0,
            Move::Advance => {
                self.last_epoch = self.last_epoch.checked_add(1).ok_or_else(exhausted)?
            }
        }
        match self.schedule {
            Schedule::CosineRestarts { t_0, t_mult, .. } => match movement {
                Move::Initial => (self.t_i, self.t_cur) = (t_0, 0),
                Move::Advance => {
                    // `t_cur < t_i`, so neither count overflows.
                    self.t_cur += 1;
                    if self.t_cur >= self.t_i {
                        self.t_cur -= self.t_i;
                        self.t_i = next_period(self.t_i, t_mult);
                    }
                }
                // SequentialLR's `_update_lr(0)` keeps `T_cur` and `T_i` (0 and `T_0`, as
                // left by the constructor's step).
                Move::Restart => {}
            },
            Schedule::OneCycle { total_steps, .. } if self.last_epoch as u64 > total_steps => {
                return Err(Error::ScheduleFinished { total_steps });
            }
            _ => {}
        }
        Ok(self)
    }

    /// Whether the position is one that stepping from the start reaches, with at least
    /// one more step possible.
    fn position_ok(&self) -> bool {
        let epoch = self.last_epoch;
        if !(-1..i64::MAX).contains(&epoch) {
            return false;
        }
        match self.schedule {
            Schedule::CosineRestarts { t_0, t_mult, .. } => {
                (self.t_i, self.t_cur) == restart_position(t_0, t_mult, epoch)
            }
            Schedule::OneCycle { total_steps, .. } => epoch < 0 || epoch as u64 <= total_steps,
            _ => self.t_i == 0 && self.t_cur == 0,
        }
    }

    /// The rate of a group with base rate `base` and current rate `lr`, for a phase that has
    /// just made `movement` (PyTorch's `get_lr`, or `_get_closed_form_lr` on a restart); a
    /// result that is negative by rounding alone is 0.
    fn lr(&self, movement: Move, base: f64, lr: f64) -> f64 {
        // The largest rate involved: the recursions' rounding is relative to it.
        let scale = match self.schedule {
            Schedule::OneCycle { max_lr, .. } => max_lr,
            Schedule::Cosine { eta_min, .. } | Schedule::CosineRestarts { eta_min, .. } => {
                base.abs().max(lr.abs()).max(eta_min)
            }
            _ => base.abs().max(lr.abs()),
        };
        settle(self.raw_lr(movement, base, lr), scale, self.last_epoch)
    }

    fn raw_lr(&self, movement: Move, base: f64, lr: f64) -> f64 {
        let epoch = self.last_epoch;
        let t = epoch as f64;
        match self.schedule {
            Schedule::Step { step_size, gamma } => match movement {
                Move::Restart => base * gamma.powf((epoch as u64 / step_size) as f64),
                _ if epoch == 0 || !(epoch as u64).is_multiple_of(step_size) => lr,
                _ => lr * gamma,
            },
            Schedule::Exponential { gamma } => match movement {
                Move::Restart => base * gamma.powf(t),
                Move::Initial => lr,
                Move::Advance => lr * gamma,
            },
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
                let (t_cur, t_i) = (self.t_cur as f64, self.t_i as f64);
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
            Schedule::OneCycle { max_lr, total_steps, pct_start, div_factor, final_div_factor } => {
                let initial = max_lr / div_factor;
                let min = initial / final_div_factor;
                let rise_end = pct_start * total_steps as f64 - 1.0;
                let (start_step, end_step, from, to) = if t <= rise_end {
                    (0.0, rise_end, initial, max_lr)
                } else {
                    (rise_end, (total_steps - 1) as f64, max_lr, min)
                };
                let pct = (t - start_step) / (end_step - start_step);
                to + (from - to) / 2.0 * ((PI * pct).cos() + 1.0)
            }
        }
    }
}

/// How the phases of an [`LrScheduler`] combine.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case", deny_unknown_fields))]
enum Plan {
    /// Every phase steps every time, each from the rate the previous one set
    /// (ChainedScheduler; one phase is a plain scheduler).
    Chained,
    /// Phase i runs from milestone i−1 to milestone i (SequentialLR), with the number of
    /// steps taken so far.
    Sequential { milestones: Vec<u64>, last_epoch: u64 },
}

/// A learning-rate schedule running against an optimizer, with its position.
///
/// See the [module documentation](self) for how it follows PyTorch. Made by
/// [`new`](Self::new) (one schedule), [`chained`](Self::chained) (PyTorch's
/// `ChainedScheduler`) or [`sequential`](Self::sequential) (`SequentialLR`), each of which
/// sets every group's rate for the first optimizer step; then [`step`](Self::step) after
/// every optimizer step. Stepping allocates nothing, and a step that fails changes neither
/// the scheduler nor the optimizer.
///
/// With the `serde` feature it serializes as its position; deserializing checks it: the
/// schedules' ranges, and that the position is one that stepping from the start reaches and
/// that can be stepped further.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "checked::Unchecked", deny_unknown_fields))]
pub struct LrScheduler {
    plan: Plan,
    phases: Vec<Phase>,
}

impl LrScheduler {
    /// Runs `schedule`: every group's current rate is set to its first-step value.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] for a schedule out of range,
    /// [`Error::ScheduleInProgress`] if a group has a rate from another schedule in
    /// progress (see the [module documentation](self)); nothing changes then.
    pub fn new<R: UpdateRule, A: Element>(
        optimizer: &mut Optimizer<R, A>,
        schedule: Schedule,
    ) -> Result<Self> {
        Self::start(optimizer, Plan::Chained, vec![schedule])
    }

    /// Runs every schedule of `schedules` at every step, each from the rate the one before
    /// it set, as PyTorch's `ChainedScheduler` does (e.g. a linear warm-up multiplied into
    /// an exponential decay).
    ///
    /// # Errors
    /// [`Error::InvalidSchedule`] for no schedules or a `OneCycle` among them (PyTorch's is
    /// not chainable), [`Error::InvalidHyperparameter`] for a schedule out of range,
    /// [`Error::ScheduleInProgress`] as for [`new`](Self::new).
    pub fn chained<R: UpdateRule, A: Element>(
        optimizer: &mut Optimizer<R, A>,
        schedules: Vec<Schedule>,
    ) -> Result<Self> {
        Self::start(optimizer, Plan::Chained, schedules)
    }

    /// Runs `schedules[0]` until step `milestones[0]`, then `schedules[1]` from its start,
    /// and so on, as PyTorch's `SequentialLR` does: warm-up then cosine is
    /// `[Linear, Cosine]` with the warm-up's length as the milestone.
    ///
    /// # Errors
    /// [`Error::InvalidSchedule`] unless there is one milestone fewer than schedules and the
    /// milestones rise strictly from ≥ 1, or for a `OneCycle` among several schedules;
    /// [`Error::InvalidHyperparameter`] for a schedule out of range,
    /// [`Error::ScheduleInProgress`] as for [`new`](Self::new).
    pub fn sequential<R: UpdateRule, A: Element>(
        optimizer: &mut Optimizer<R, A>,
        schedules: Vec<Schedule>,
        milestones: Vec<u64>,
    ) -> Result<Self> {
        Self::start(optimizer, Plan::Sequential { milestones, last_epoch: 0 }, schedules)
    }

    fn start<R: UpdateRule, A: Element>(
        optimizer: &mut Optimizer<R, A>,
        plan: Plan,
        schedules: Vec<Schedule>,
    ) -> Result<Self> {
        let fresh = LrScheduler { plan, phases: schedules.into_iter().map(Phase::new).collect() };
        fresh.validate()?;
        let mut scheduler = fresh.clone();
        scheduler.phases = fresh.initial_phases()?;
        let first = |base: f64| scheduler.initial_rate(base);
        // A rate that a schedule set is not silently replaced by another: the optimizer is
        // mid-schedule (e.g. restored from a checkpoint), and a scheduler state restored
        // after this one would then continue from the wrong rate.
        for group in optimizer.groups() {
            let rate = first(group.base_lr());
            if let Some(current) = group.scheduled_lr.filter(|lr| lr.to_bits() != rate.to_bits()) {
                return Err(Error::ScheduleInProgress {
                    group: group.name().to_owned(),
                    current,
                    first: rate,
                });
            }
        }
        set_rates(optimizer, |base, _| Ok(first(base)))?;
        Ok(scheduler)
    }

    /// The phases after the constructors' step: every phase takes its constructor's step; a
    /// sequence then undoes all of them but the first (PyTorch's `recursive_undo`), so only
    /// the first moves the rates.
    fn initial_phases(&self) -> Result<Vec<Phase>> {
        match &self.plan {
            Plan::Chained => self.phases.iter().map(|phase| phase.moved(Move::Initial)).collect(),
            Plan::Sequential { .. } => {
                let mut phases = self.phases.clone();
                phases[0] = phases[0].moved(Move::Initial)?;
                Ok(phases)
            }
        }
    }

    /// The first rate of a group with base rate `base` (PyTorch's `initial_lr`), for phases
    /// that have taken the constructors' step.
    fn initial_rate(&self, base: f64) -> f64 {
        match self.plan {
            Plan::Chained => {
                self.phases.iter().fold(base, |lr, phase| phase.lr(Move::Initial, base, lr))
            }
            Plan::Sequential { .. } => self.phases[0].lr(Move::Initial, base, base),
        }
    }

    /// What the next step moves, or the error it fails with. No allocation.
    fn next(&self) -> Result<Next> {
        match &self.plan {
            Plan::Chained => {
                for phase in &self.phases {
                    phase.moved(Move::Advance)?;
                }
                Ok(Next::Chained)
            }
            Plan::Sequential { milestones, last_epoch } => {
                let epoch = last_epoch.checked_add(1).ok_or_else(exhausted)?;
                let index = milestones.partition_point(|&m| m <= epoch);
                let movement = if index > 0 && milestones[index - 1] == epoch {
                    Move::Restart
                } else {
                    Move::Advance
                };
                let moved = self.phases[index].moved(movement)?;
                Ok(Next::Sequential { epoch, index, movement, moved })
            }
        }
    }

    /// The rate after the step `next` of a group with base rate `base` and current rate
    /// `lr`.
    fn next_rate(&self, next: &Next, base: f64, lr: f64) -> f64 {
        match next {
            Next::Chained => self.phases.iter().fold(lr, |lr, phase| {
                // `next` checked that every phase moves.
                phase.moved(Move::Advance).map_or(lr, |moved| moved.lr(Move::Advance, base, lr))
            }),
            Next::Sequential { movement, moved, .. } => moved.lr(*movement, base, lr),
        }
    }

    /// Takes the step `next`.
    fn take(&mut self, next: Next) -> Result<()> {
        match (next, &mut self.plan) {
            (Next::Chained, _) => {
                for phase in &mut self.phases {
                    *phase = phase.moved(Move::Advance)?;
                }
            }
            (Next::Sequential { epoch, index, moved, .. }, Plan::Sequential { last_epoch, .. }) => {
                self.phases[index] = moved;
                *last_epoch = epoch;
            }
            (Next::Sequential { .. }, Plan::Chained) => {}
        }
        Ok(())
    }

    /// The rate that a group with base rate `base` has at this position had it been in the
    /// optimizer from the start: the schedule replayed, operation for operation.
    fn replayed_rate(&self, base: f64) -> Result<f64> {
        let steps = self.steps();
        if steps > REPLAY_LIMIT {
            return Err(Error::InvalidSchedule {
                reason: format!(
                    "a group without a scheduled rate cannot be brought into phase at step \
                     {steps} (at most {REPLAY_LIMIT} steps are replayed)"
                ),
            });
        }
        let mut replay = LrScheduler {
            plan: match &self.plan {
                Plan::Chained => Plan::Chained,
                Plan::Sequential { milestones, .. } => {
                    Plan::Sequential { milestones: milestones.clone(), last_epoch: 0 }
                }
            },
            phases: self.phases.iter().map(|phase| Phase::new(phase.schedule)).collect(),
        };
        replay.phases = replay.initial_phases()?;
        let mut lr = replay.initial_rate(base);
        for _ in 0..steps {
            let next = replay.next()?;
            lr = replay.next_rate(&next, base, lr);
            replay.take(next)?;
        }
        Ok(lr)
    }

    fn validate(&self) -> Result<()> {
        let invalid = |reason: &str| Err(Error::InvalidSchedule { reason: reason.to_owned() });
        if self.phases.is_empty() {
            return invalid("no schedules");
        }
        for phase in &self.phases {
            phase.schedule.validate()?;
        }
        let one_cycle = self.phases.iter().any(|p| matches!(p.schedule, Schedule::OneCycle { .. }));
        if one_cycle && self.phases.len() > 1 {
            return invalid("a one-cycle schedule runs alone (PyTorch's is not chainable)");
        }
        if let Plan::Sequential { milestones, .. } = &self.plan {
            if milestones.len() + 1 != self.phases.len() {
                return invalid("a sequence needs one milestone fewer than schedules");
            }
            if milestones.first().is_some_and(|&m| m == 0)
                || milestones.windows(2).any(|pair| pair[0] >= pair[1])
            {
                return invalid("milestones must rise strictly from 1");
            }
        }
        Ok(())
    }

    /// Advances the schedule by one step and sets every group's rate for the next optimizer
    /// step. Call it once after every optimizer step.
    ///
    /// Each group's rate follows from the rate the schedule set it to at the last step. A
    /// group without one (added to the optimizer after the schedule started, or given a new
    /// rate by [`Optimizer::set_lr`]) is first brought into phase: its rate is replayed from
    /// its base rate through every step so far, as if it had been there from the start.
    ///
    /// # Errors
    /// [`Error::ScheduleFinished`] past a `OneCycle`'s last step (or after `i64::MAX` steps),
    /// [`Error::InvalidHyperparameter`] if a rate came out non-finite or negative (e.g. an
    /// exponential growth past `f64::MAX`), [`Error::InvalidSchedule`] for a group to bring
    /// into phase after more than 2^26 steps; nothing changes then.
    pub fn step<R: UpdateRule, A: Element>(
        &mut self,
        optimizer: &mut Optimizer<R, A>,
    ) -> Result<()> {
        let next = self.next()?;
        set_rates(optimizer, |base, current| {
            let lr = match current {
                Some(lr) => lr,
                None => self.replayed_rate(base)?,
            };
            Ok(self.next_rate(&next, base, lr))
        })?;
        self.take(next)
    }

    /// How many times [`step`](Self::step) has run.
    pub fn steps(&self) -> u64 {
        match &self.plan {
            Plan::Chained => self.phases[0].last_epoch as u64,
            Plan::Sequential { last_epoch, .. } => *last_epoch,
        }
    }

    /// Whether the position is the one `steps()` steps from the start reach, and one more
    /// step can be counted.
    fn position_ok(&self) -> bool {
        if !self.phases.iter().all(Phase::position_ok) {
            return false;
        }
        match &self.plan {
            Plan::Chained => {
                let epoch = self.phases[0].last_epoch;
                epoch >= 0 && self.phases.iter().all(|phase| phase.last_epoch == epoch)
            }
            Plan::Sequential { milestones, last_epoch } => {
                if *last_epoch >= i64::MAX as u64 {
                    return false;
                }
                let index = milestones.partition_point(|&m| m <= *last_epoch);
                let start = |i: usize| if i == 0 { 0 } else { milestones[i - 1] };
                // Phase i ran from its milestone to the step before the next one; the
                // current one is `last_epoch − start` steps in; later ones have not begun.
                self.phases.iter().enumerate().all(|(i, phase)| {
                    let expected = match i.cmp(&index) {
                        core::cmp::Ordering::Less => (milestones[i] - 1 - start(i)) as i64,
                        core::cmp::Ordering::Equal => (last_epoch - start(i)) as i64,
                        core::cmp::Ordering::Greater => -1,
                    };
                    phase.last_epoch == expected
                })
            }
        }
    }
}

/// The longest history [`LrScheduler::step`] replays to bring a group into phase.
const REPLAY_LIMIT: u64 = 1 << 26;

/// What a step of an [`LrScheduler`] moves.
enum Next {
    /// Every phase advances.
    Chained,
    /// Phase `index` makes `movement`, becoming `moved`; the sequence is at `epoch`.
    Sequential { epoch: u64, index: usize, movement: Move, moved: Phase },
}

/// Sets every group's current rate to `rate(base, scheduled)`, from its base rate and the
/// rate a schedule set it to, if any; checks every new rate (finite, ≥ 0) first and changes
/// nothing on an error. `rate` runs twice per group, so it must be pure.
fn set_rates<R: UpdateRule, A: Element>(
    optimizer: &mut Optimizer<R, A>,
    rate: impl Fn(f64, Option<f64>) -> Result<f64>,
) -> Result<()> {
    let mut groups = optimizer.registry.groups.iter();
    if let Some(error) = groups.find_map(|group| {
        rate(group.base_lr(), group.scheduled_lr).and_then(|lr| check_lr("schedule", lr)).err()
    }) {
        return Err(error);
    }
    for group in &mut optimizer.registry.groups {
        if let Ok(value) = rate(group.base_lr(), group.scheduled_lr) {
            group.scheduled_lr = Some(value);
        }
    }
    Ok(())
}

#[cfg(feature = "serde")]
mod checked {
    use super::{LrScheduler, Phase, Plan};
    use crate::error::Error;

    /// The serialized form, checked before it becomes an [`LrScheduler`].
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Unchecked {
        plan: Plan,
        phases: Vec<Phase>,
    }

    impl TryFrom<Unchecked> for LrScheduler {
        type Error = Error;

        fn try_from(unchecked: Unchecked) -> Result<Self, Error> {
            let scheduler = LrScheduler { plan: unchecked.plan, phases: unchecked.phases };
            scheduler.validate()?;
            if !scheduler.position_ok() {
                return Err(Error::InvalidSchedule {
                    reason: "a position that stepping from the start does not reach, or that \
                             cannot be stepped further"
                        .to_owned(),
                });
            }
            Ok(scheduler)
        }
    }
}
