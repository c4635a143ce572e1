//! [`OneCycle`]: PyTorch's `OneCycleLR`, the one-cycle policy (Smith & Topin 2017).

use core::f64::consts::PI;

use super::PerGroup;
use crate::check::{check_count, check_non_negative, check_positive, require};
use crate::error::Result;

/// How a schedule anneals between two values (PyTorch's `anneal_strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum AnnealStrategy {
    /// Along half a cosine (`"cos"`, the default).
    #[default]
    Cos,
    /// Along a straight line (`"linear"`).
    Linear,
}

/// PyTorch's `OneCycleLR`: each group's rate rises from `$M/d$` to its peak `$M$` over the
/// first `pct_start` of `total_steps`, then falls to `$M/(d f)$`; with `three_phase` it
/// falls back to `$M/d$` over as many steps as it rose, then to `$M/(d f)$`.
///
/// Each phase from step `$a$` to step `$b$` (PyTorch's `end_step`s: `$p N - 1$`, then
/// `$2 p N - 2$` with three phases, then `$N - 1$`, for `$p$` = `pct_start` and `$N$` =
/// `total_steps`) interpolates from its start value `$u$` to its end value `$v$` at the
/// fraction `$q = (t - a)/(b - a)$`:
///
/// ```math
/// \text{cos:}\quad v + \frac{u - v}{2}\big(\cos(\pi q) + 1\big), \qquad
/// \text{linear:}\quad (v - u)\, q + u.
/// ```
///
/// The rate is a function of the step alone and ignores the group's base rate: it comes from
/// `max_lr`, one value for every group or one per group.
///
/// With `cycle_momentum` each group's momentum (β₁ for the Adam family, see
/// [`UpdateRule::cycled_momentum_mut`](crate::UpdateRule::cycled_momentum_mut)) is annealed
/// the other way, from `max_momentum` down to `base_momentum` while the rate rises and back
/// while it falls (with three phases: held at `max_momentum` in the last), and set in the
/// group's hyperparameters, so the optimizer's checkpoint holds it. PyTorch cycles momentum
/// by default; here `cycle_momentum` is off by default, as in the replay harness. Stepping past `total_steps` is
/// [`Error::ScheduleFinished`](crate::Error::ScheduleFinished), as PyTorch raises. PyTorch
/// computes the values for the step after the cycle too, at `$q > 1$`, which no optimizer
/// step of the cycle uses: with linear annealing they overshoot the final ones (the rate
/// usually below 0), so here they are the final ones (`$q = 1$`).
///
/// ```
/// use ndarray_optim::schedule::{AnnealStrategy, LrScheduler, OneCycle, Schedule};
/// use ndarray_optim::{Optimizer, Sgd};
///
/// let mut opt = Optimizer::<_, f64>::new(Sgd::default())?;
/// opt.add_group("head", Sgd::default())?;
/// let one_cycle = OneCycle {
///     anneal_strategy: AnnealStrategy::Linear,
///     pct_start: 0.5,
///     div_factor: 10.0,
///     ..OneCycle::new(vec![1.0, 0.1], 10)
/// };
/// let mut scheduler = LrScheduler::new(&mut opt, Schedule::OneCycle(one_cycle))?;
/// for _ in 0..4 {
///     scheduler.step(&mut opt)?;
/// }
/// assert_eq!(opt.group("default")?.lr(), 1.0); // the peak, after pct_start · total_steps − 1 steps
/// assert_eq!(opt.group("head")?.lr(), 0.1);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct OneCycle {
    /// The peak rate `$M$` of each group (finite, > 0).
    pub max_lr: PerGroup,
    /// Length of the cycle `$N$` in steps (≥ 1); stepping past it is an error.
    pub total_steps: u64,
    /// Fraction `$p$` of the cycle spent rising, in [0, 1] (default 0.3).
    #[cfg_attr(feature = "serde", serde(default = "defaults::pct_start"))]
    pub pct_start: f64,
    /// Cosine or linear annealing (default cosine).
    #[cfg_attr(feature = "serde", serde(default))]
    pub anneal_strategy: AnnealStrategy,
    /// Initial rate `$M/d$` (finite, > 0; default 25).
    #[cfg_attr(feature = "serde", serde(default = "defaults::div_factor"))]
    pub div_factor: f64,
    /// Final rate `$M/(d f)$` (finite, > 0; default 1e4).
    #[cfg_attr(feature = "serde", serde(default = "defaults::final_div_factor"))]
    pub final_div_factor: f64,
    /// Fall back to `$M/d$` before the final decay (default `false`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub three_phase: bool,
    /// Cycle each group's momentum inversely to its rate (default `false`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub cycle_momentum: bool,
    /// The momentum at the peak rate (finite, ≥ 0; default 0.85).
    #[cfg_attr(feature = "serde", serde(default = "defaults::base_momentum"))]
    pub base_momentum: PerGroup,
    /// The momentum at the lowest rates (finite, ≥ 0; default 0.95).
    #[cfg_attr(feature = "serde", serde(default = "defaults::max_momentum"))]
    pub max_momentum: PerGroup,
}

#[cfg(feature = "serde")]
mod defaults {
    pub(super) fn pct_start() -> f64 {
        0.3
    }
    pub(super) fn div_factor() -> f64 {
        25.0
    }
    pub(super) fn final_div_factor() -> f64 {
        1e4
    }
    pub(super) fn base_momentum() -> super::PerGroup {
        super::PerGroup::All(0.85)
    }
    pub(super) fn max_momentum() -> super::PerGroup {
        super::PerGroup::All(0.95)
    }
}

/// A rate a phase starts or ends at, as PyTorch's phase table names it.
#[derive(Clone, Copy)]
enum Level {
    Initial,
    Max,
    Min,
}

/// A momentum a phase starts or ends at.
#[derive(Clone, Copy)]
enum Momentum {
    Base,
    Max,
}

/// A phase of the cycle: its last step (PyTorch's `end_step`) and the rates and momenta it
/// goes between.
#[derive(Clone, Copy)]
struct Part {
    end: f64,
    from: Level,
    to: Level,
    momentum: (Momentum, Momentum),
}

/// The rates of one group's cycle.
struct Rates {
    initial: f64,
    max: f64,
    min: f64,
}

impl Rates {
    fn at(&self, level: Level) -> f64 {
        match level {
            Level::Initial => self.initial,
            Level::Max => self.max,
            Level::Min => self.min,
        }
    }
}

impl OneCycle {
    /// A cycle of `total_steps` steps peaking at `max_lr`, with PyTorch's other defaults
    /// (cosine annealing, `pct_start` 0.3, `div_factor` 25, `final_div_factor` 1e4, two
    /// phases, momentum between 0.85 and 0.95), momentum not cycled.
    pub fn new(max_lr: impl Into<PerGroup>, total_steps: u64) -> Self {
        OneCycle {
            max_lr: max_lr.into(),
            total_steps,
            pct_start: 0.3,
            anneal_strategy: AnnealStrategy::Cos,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
            cycle_momentum: false,
            base_momentum: PerGroup::All(0.85),
            max_momentum: PerGroup::All(0.95),
        }
    }

    /// PyTorch's phase table, `parts[..count]`.
    fn parts(&self) -> ([Part; 3], usize) {
        let (p, n) = (self.pct_start, self.total_steps as f64);
        let down = (Momentum::Max, Momentum::Base);
        let up = (Momentum::Base, Momentum::Max);
        let rise = Part { end: p * n - 1.0, from: Level::Initial, to: Level::Max, momentum: down };
        let end = (self.total_steps - 1) as f64;
        if self.three_phase {
            let back =
                Part { end: 2.0 * p * n - 2.0, from: Level::Max, to: Level::Initial, momentum: up };
            let hold = (Momentum::Max, Momentum::Max);
            let last = Part { end, from: Level::Initial, to: Level::Min, momentum: hold };
            ([rise, back, last], 3)
        } else {
            let last = Part { end, from: Level::Max, to: Level::Min, momentum: up };
            ([rise, last, last], 2)
        }
    }

    /// The rates of the group at `group`.
    fn rates(&self, group: usize) -> Rates {
        let max = self.max_lr.get(group);
        let initial = max / self.div_factor;
        Rates { initial, max, min: initial / self.final_div_factor }
    }

    pub(super) fn validate(&self, name: &'static str) -> Result<()> {
        self.max_lr.validate(name, "max_lr", check_positive)?;
        // Checked even when momentum does not cycle: the settings are kept and saved, and a
        // non-finite one would not survive a JSON round trip (which writes it as null).
        self.base_momentum.validate(name, "base_momentum", check_non_negative)?;
        self.max_momentum.validate(name, "max_momentum", check_non_negative)?;
        check_count(name, "total_steps", self.total_steps)?;
        let pct_ok = (0.0..=1.0).contains(&self.pct_start);
        require(pct_ok, name, "pct_start", self.pct_start, "in [0, 1]")?;
        check_positive(name, "div_factor", self.div_factor)?;
        check_positive(name, "final_div_factor", self.final_div_factor)?;
        for group in 0..self.max_lr.values().len() {
            let Rates { initial, min, .. } = self.rates(group);
            let requirement = "such that max_lr / div_factor is finite";
            require(initial.is_finite(), name, "div_factor", self.div_factor, requirement)?;
            let requirement = "such that max_lr / div_factor / final_div_factor is finite";
            require(min.is_finite(), name, "final_div_factor", self.final_div_factor, requirement)?;
        }
        // Each phase is interpolated over its length: a phase that some step reaches must not
        // have length 0 (PyTorch divides by zero there).
        let (parts, count) = self.parts();
        let (mut start, mut passed) = (0.0, f64::NEG_INFINITY);
        for (index, part) in parts[..count].iter().enumerate() {
            // The first step of this phase: the first one past every earlier phase's end.
            let first = if passed < 0.0 { 0.0 } else { passed.floor() + 1.0 };
            let last = index + 1 == count;
            let reached = first <= self.total_steps as f64 && (last || first <= part.end);
            let requirement = "such that no phase that a step reaches has length 0 \
                               (pct_start · total_steps of 1, or of total_steps)";
            require(!reached || part.end != start, name, "pct_start", self.pct_start, requirement)?;
            (start, passed) = (part.end, passed.max(part.end));
        }
        Ok(())
    }

    pub(super) fn check_groups(&self, name: &'static str, groups: usize) -> Result<()> {
        self.max_lr.check_groups(name, "max_lr", groups)?;
        if self.cycle_momentum {
            self.base_momentum.check_groups(name, "base_momentum", groups)?;
            self.max_momentum.check_groups(name, "max_momentum", groups)?;
        }
        Ok(())
    }

    /// The phase that step `epoch` is in and the fraction of it done, as PyTorch finds them
    /// (but no further than the end with linear annealing).
    fn locate(&self, epoch: i64) -> (Part, f64) {
        let (parts, count) = self.parts();
        let t = epoch as f64;
        let (mut part, mut start) = (parts[count - 1], 0.0);
        for candidate in &parts[..count - 1] {
            if t <= candidate.end {
                part = *candidate;
                break;
            }
            start = candidate.end;
        }
        let pct = (t - start) / (part.end - start);
        match self.anneal_strategy {
            AnnealStrategy::Linear if epoch as u64 == self.total_steps => (part, pct.min(1.0)),
            _ => (part, pct),
        }
    }

    fn anneal(&self, from: f64, to: f64, pct: f64) -> f64 {
        match self.anneal_strategy {
            AnnealStrategy::Cos => to + (from - to) / 2.0 * ((PI * pct).cos() + 1.0),
            AnnealStrategy::Linear => (to - from) * pct + from,
        }
    }

    /// The rate of the group at `group` at step `epoch`.
    pub(super) fn lr(&self, group: usize, epoch: i64) -> f64 {
        let (part, pct) = self.locate(epoch);
        let rates = self.rates(group);
        self.anneal(rates.at(part.from), rates.at(part.to), pct)
    }

    /// The momentum of the group at `group` at step `epoch`, if cycled.
    pub(super) fn momentum(&self, group: usize, epoch: i64) -> Option<f64> {
        self.cycle_momentum.then(|| {
            let (part, pct) = self.locate(epoch);
            let at = |momentum| match momentum {
                Momentum::Base => self.base_momentum.get(group),
                Momentum::Max => self.max_momentum.get(group),
            };
            self.anneal(at(part.momentum.0), at(part.momentum.1), pct)
        })
    }

    /// The largest rate of the group at `group`, the scale of the rates' rounding.
    pub(super) fn largest_lr(&self, group: usize) -> f64 {
        let Rates { initial, max, min } = self.rates(group);
        max.max(initial).max(min)
    }
}
