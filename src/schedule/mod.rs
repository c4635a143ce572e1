//! Learning-rate schedules, step for step as PyTorch's `torch.optim.lr_scheduler` computes
//! them.
//!
//! A [`Schedule`] is a plain description (StepLR, ExponentialLR, CosineAnnealingLR, …); an
//! [`LrScheduler`] runs one, or a chain or sequence of them, against an [`Optimizer`]: it sets
//! every group's current rate from the group's own base rate (the `lr` of its
//! hyperparameters) through [`Optimizer::set_lrs_with`]. Creating it sets the rates of the
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
/// PyTorch. In serde formats a schedule is `{"kind": "step", "step_size": k, "gamma": g}`,
/// `"exponential"`, `"cosine"` (`t_max`, `eta_min`), `"cosine_restarts"` (`t_0`, `t_mult`,
/// `eta_min`), `"linear"` (`start_factor`, `end_factor`, `total_iters`) or `"one_cycle"`
/// (`max_lr`, `total_steps`, `pct_start`, `div_factor`, `final_div_factor`); keys left out
/// take PyTorch's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields))]
pub enum Schedule {
    /// Multiply the rate by `gamma` every `step_size` steps.
    Step {
        /// Period $k$ (≥ 1).
        step_size: u64,
        /// Factor γ (finite, > 0; PyTorch's default 0.1).
        #[cfg_attr(feature = "serde", serde(default = "defaults::gamma"))]
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
        #[cfg_attr(feature = "serde", serde(default))]
        eta_min: f64,
    },
    /// Cosine annealing restarted at the base rate after $T_0$, $T_0 T_{mult}$, … steps.
    CosineRestarts {
        /// First period $T_0$ (≥ 1).
        t_0: u64,
        /// Growth of the period after each restart (≥ 1; default 1).
        #[cfg_attr(feature = "serde", serde(default = "defaults::t_mult"))]
        t_mult: u64,
        /// Smallest rate $\eta_{min}$ (finite, ≥ 0; default 0).
        #[cfg_attr(feature = "serde", serde(default))]
        eta_min: f64,
    },
    /// Linear change of a factor of the base rate, e.g. warm-up.
    Linear {
        /// Factor of the first step, in (0, 1] (default 1/3).
        #[cfg_attr(feature = "serde", serde(default = "defaults::start_factor"))]
        start_factor: f64,
        /// Factor from step `total_iters` on, in [0, 1] (default 1).
        #[cfg_attr(feature = "serde", serde(default = "defaults::end_factor"))]
        end_factor: f64,
        /// Steps of the change $n$ (≥ 1; default 5).
        #[cfg_attr(feature = "serde", serde(default = "defaults::total_iters"))]
        total_iters: u64,
    },
    /// The one-cycle policy with cosine annealing (Smith & Topin 2017).
    OneCycle {
        /// Peak rate $M$ (finite, > 0), for every group.
        max_lr: f64,
        /// Length of the cycle in steps (≥ 1); stepping past it is an error.
        total_steps: u64,
        /// Fraction of the cycle spent rising, in [0, 1] (default 0.3).
        #[cfg_attr(feature = "serde", serde(default = "defaults::pct_start"))]
        pct_start: f64,
        /// Initial rate $M/d$ (finite, > 0; default 25).
        #[cfg_attr(feature = "serde", serde(default = "defaults::div_factor"))]
        div_factor: f64,
        /// Final rate $M/(d f)$ (finite, > 0; default 1e4).
        #[cfg_attr(feature = "serde", serde(default = "defaults::final_div_factor"))]
        final_div_factor: f64,
    },
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

fn invalid(
    schedule: &'static str,
    key: &'static str,
    value: f64,
    requirement: &'static str,
) -> Error {
    Error::InvalidHyperparameter { rule: schedule, key, value, requirement }
}

fn check(
    ok: bool,
    schedule: &'static str,
    key: &'static str,
    value: f64,
    requirement: &'static str,
) -> Result<()> {
    if ok { Ok(()) } else { Err(invalid(schedule, key, value, requirement)) }
}

fn positive(schedule: &'static str, key: &'static str, value: f64) -> Result<()> {
    check(value.is_finite() && value > 0.0, schedule, key, value, "finite and > 0")
}

fn non_negative(schedule: &'static str, key: &'static str, value: f64) -> Result<()> {
    check(value.is_finite() && value >= 0.0, schedule, key, value, "finite and >= 0")
}

fn at_least_one(schedule: &'static str, key: &'static str, value: u64) -> Result<()> {
    check(value >= 1, schedule, key, value as f64, ">= 1")
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
                at_least_one(name, "step_size", step_size)?;
                positive(name, "gamma", gamma)
            }
            Schedule::Exponential { gamma } => positive(name, "gamma", gamma),
            Schedule::Cosine { t_max, eta_min } => {
                at_least_one(name, "t_max", t_max)?;
                non_negative(name, "eta_min", eta_min)
            }
            Schedule::CosineRestarts { t_0, t_mult, eta_min } => {
                at_least_one(name, "t_0", t_0)?;
                at_least_one(name, "t_mult", t_mult)?;
                non_negative(name, "eta_min", eta_min)
            }
            Schedule::Linear { start_factor, end_factor, total_iters } => {
                let start_ok = start_factor > 0.0 && start_factor <= 1.0;
                check(start_ok, name, "start_factor", start_factor, "in (0, 1]")?;
                let end_ok = (0.0..=1.0).contains(&end_factor);
                check(end_ok, name, "end_factor", end_factor, "in [0, 1]")?;
                at_least_one(name, "total_iters", total_iters)
            }
            Schedule::OneCycle { max_lr, total_steps, pct_start, div_factor, final_div_factor } => {
                positive(name, "max_lr", max_lr)?;
                at_least_one(name, "total_steps", total_steps)?;
                let pct_ok = (0.0..=1.0).contains(&pct_start);
                check(pct_ok, name, "pct_start", pct_start, "in [0, 1]")?;
                positive(name, "div_factor", div_factor)?;
                positive(name, "final_div_factor", final_div_factor)
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
            Move::Advance => self.last_epoch += 1,
        }
        match self.schedule {
            Schedule::CosineRestarts { t_0, t_mult, .. } => match movement {
                Move::Initial => (self.t_i, self.t_cur) = (t_0, 0),
                Move::Advance => {
                    self.t_cur += 1;
                    if self.t_cur >= self.t_i {
                        self.t_cur %= self.t_i;
                        self.t_i *= t_mult;
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

    /// The rate of a group with base rate `base` and current rate `lr`, for a phase that has
    /// just made `movement` (PyTorch's `get_lr`, or `_get_closed_form_lr` on a restart).
    fn lr(&self, movement: Move, base: f64, lr: f64) -> f64 {
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
                match movement {
                    Move::Restart => {
                        eta_min + (base - eta_min) * (1.0 + (PI * t / period).cos()) / 2.0
                    }
                    Move::Initial => lr,
                    Move::Advance
                        if (epoch - 1 - t_max as i64).rem_euclid(2 * t_max as i64) == 0 =>
                    {
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
/// With the `serde` feature it serializes as its position; deserializing checks it.
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
    /// [`Error::InvalidHyperparameter`] for a schedule out of range; nothing changes then.
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
    /// not chainable), [`Error::InvalidHyperparameter`] for a schedule out of range.
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
    /// [`Error::InvalidHyperparameter`] for a schedule out of range.
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
        let mut scheduler =
            LrScheduler { plan, phases: schedules.into_iter().map(Phase::new).collect() };
        scheduler.validate()?;
        // Every phase takes its constructor's step; a sequence then undoes all of them but
        // the first (PyTorch's `recursive_undo`), so only the first moves the rates.
        let moved: Vec<Phase> = match &scheduler.plan {
            Plan::Chained => scheduler
                .phases
                .iter()
                .map(|phase| phase.moved(Move::Initial))
                .collect::<Result<_>>()?,
            Plan::Sequential { .. } => {
                let first = scheduler.phases[0].moved(Move::Initial)?;
                let mut phases = scheduler.phases.clone();
                phases[0] = first;
                phases
            }
        };
        let chained = matches!(scheduler.plan, Plan::Chained);
        optimizer.set_lrs_with(|base, _| {
            // A new scheduler starts from the base rates (PyTorch's `initial_lr`).
            if chained {
                moved.iter().fold(base, |lr, phase| phase.lr(Move::Initial, base, lr))
            } else {
                moved[0].lr(Move::Initial, base, base)
            }
        })?;
        scheduler.phases = moved;
        Ok(scheduler)
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
    /// # Errors
    /// [`Error::ScheduleFinished`] past a `OneCycle`'s last step,
    /// [`Error::InvalidHyperparameter`] if a rate came out non-finite or negative; nothing
    /// changes then.
    pub fn step<R: UpdateRule, A: Element>(
        &mut self,
        optimizer: &mut Optimizer<R, A>,
    ) -> Result<()> {
        match &mut self.plan {
            Plan::Chained => {
                for phase in &self.phases {
                    phase.moved(Move::Advance)?;
                }
                let phases = &self.phases;
                optimizer.set_lrs_with(|base, lr| {
                    phases.iter().fold(lr, |lr, phase| {
                        let moved = phase.moved(Move::Advance).expect("checked above");
                        moved.lr(Move::Advance, base, lr)
                    })
                })?;
                for phase in &mut self.phases {
                    *phase = phase.moved(Move::Advance)?;
                }
            }
            Plan::Sequential { milestones, last_epoch } => {
                let epoch = *last_epoch + 1;
                let index = milestones.partition_point(|&m| m <= epoch);
                let movement = if index > 0 && milestones[index - 1] == epoch {
                    Move::Restart
                } else {
                    Move::Advance
                };
                let moved = self.phases[index].moved(movement)?;
                optimizer.set_lrs_with(|base, lr| moved.lr(movement, base, lr))?;
                self.phases[index] = moved;
                *last_epoch = epoch;
            }
        }
        Ok(())
    }

    /// How many times [`step`](Self::step) has run.
    pub fn steps(&self) -> u64 {
        match &self.plan {
            Plan::Chained => self.phases[0].last_epoch as u64,
            Plan::Sequential { last_epoch, .. } => *last_epoch,
        }
    }
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
            let position_ok = scheduler.phases.iter().all(|phase| {
                let restarts_ok = match phase.schedule {
                    super::Schedule::CosineRestarts { .. } => phase.t_cur < phase.t_i,
                    _ => true,
                };
                phase.last_epoch >= -1 && restarts_ok
            });
            if !position_ok {
                return Err(Error::InvalidSchedule { reason: "inconsistent position".to_owned() });
            }
            Ok(scheduler)
        }
    }
}
