//! [`LrScheduler`]: schedules run against an optimizer, alone, chained or in sequence.

use super::Schedule;
use super::phase::{Move, Phase, Position, exhausted};
use crate::check::check_lr;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::registry::ParamGroup;
use crate::rule::UpdateRule;

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
/// See the [module documentation](crate::schedule) for how it follows PyTorch. Made by
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
    /// [`Error::InvalidHyperparameter`] for a schedule out of range (or a cycled momentum
    /// out of a group's rule's range), [`Error::InvalidSchedule`] for a per-group list that
    /// does not have one value per group, [`Error::NoMomentumToCycle`] if the schedule cycles
    /// momentum and a group's rule has none, [`Error::ScheduleInProgress`] if a group has a
    /// rate from another schedule in progress (see the [module documentation](crate::schedule));
    /// nothing changes then.
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
    /// not chainable), and the errors of [`new`](Self::new).
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
    /// milestones rise strictly from ≥ 1, or for a `OneCycle` among several schedules; and
    /// the errors of [`new`](Self::new).
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
        scheduler.check_groups(optimizer.groups().len())?;
        scheduler.take_initial_step()?;
        let first =
            |group: usize, base: f64| scheduler.initial_rate(group, scheduler.base(group, base));
        // A rate that a schedule set is not silently replaced by another: the optimizer is
        // mid-schedule (e.g. restored from a checkpoint), and a scheduler state restored
        // after this one would then continue from the wrong rate.
        for (index, group) in optimizer.groups().iter().enumerate() {
            let rate = first(index, group.base_lr());
            if let Some(current) = group.scheduled_lr.filter(|lr| lr.to_bits() != rate.to_bits()) {
                return Err(Error::ScheduleInProgress {
                    group: group.name().to_owned(),
                    current,
                    first: rate,
                });
            }
        }
        let momentum = |group| scheduler.initial_momentum(group);
        set_rates(optimizer, |group, base, _| Ok(first(group, base)), momentum)?;
        Ok(scheduler)
    }

    /// Fails unless every per-group setting has a value for each of `groups` groups.
    fn check_groups(&self, groups: usize) -> Result<()> {
        self.phases.iter().try_for_each(|phase| phase.schedule.check_groups(groups))
    }

    /// The base rate that the phases see for the group at `group`, whose own base rate is
    /// `base`: PyTorch's `initial_lr`, which a `CyclicLR` built first sets to its `base_lr`
    /// before the other schedulers read it.
    fn base(&self, group: usize, base: f64) -> f64 {
        match &self.phases[0].schedule {
            Schedule::Cyclic(cyclic) => cyclic.base_lr.get(group),
            _ => base,
        }
    }

    /// Takes the constructors' step: every phase takes its constructor's step; a sequence
    /// then undoes all of them but the first (PyTorch's `recursive_undo`), so only the first
    /// moves the rates.
    fn take_initial_step(&mut self) -> Result<()> {
        let starting = match self.plan {
            Plan::Chained => self.phases.len(),
            Plan::Sequential { .. } => 1,
        };
        for phase in &mut self.phases[..starting] {
            let position = phase.moved(Move::Initial)?;
            phase.set(position);
        }
        Ok(())
    }

    /// The first rate of the group at `group` with base rate `base` (PyTorch's
    /// `initial_lr`), for phases that have taken the constructors' step.
    fn initial_rate(&self, group: usize, base: f64) -> f64 {
        let first = |lr, phase: &Phase| phase.lr(phase.position(), Move::Initial, group, base, lr);
        match self.plan {
            Plan::Chained => self.phases.iter().fold(base, first),
            Plan::Sequential { .. } => first(base, &self.phases[0]),
        }
    }

    /// The first momentum of the group at `group`, if a phase cycles momentum: each
    /// scheduler that cycles momentum sets it when it is built, in list order, and a
    /// sequence then has its first phase take its first step again.
    fn initial_momentum(&self, group: usize) -> Option<f64> {
        let first = match self.plan {
            Plan::Sequential { .. } => self.phases[0].momentum(0, group),
            Plan::Chained => None,
        };
        first.or_else(|| self.phases.iter().rev().find_map(|phase| phase.momentum(0, group)))
    }

    /// The momentum after the step `next` of the group at `group`, if the step sets one:
    /// the last phase of a chain that cycles momentum, the current phase of a sequence if it
    /// does.
    fn next_momentum(&self, next: &Next, group: usize) -> Option<f64> {
        match next {
            Next::Chained => self.phases.iter().rev().find_map(|phase| {
                let at = phase.moved(Move::Advance).ok()?;
                phase.momentum(at.last_epoch, group)
            }),
            Next::Sequential { index, moved, .. } => {
                self.phases[*index].momentum(moved.last_epoch, group)
            }
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

    /// The rate after the step `next` of the group at `group` with base rate `base` and
    /// current rate `lr`.
    fn next_rate(&self, next: &Next, group: usize, base: f64, lr: f64) -> f64 {
        match next {
            Next::Chained => self.phases.iter().fold(lr, |lr, phase| {
                // `next` checked that every phase moves.
                let moved = phase.moved(Move::Advance);
                moved.map_or(lr, |at| phase.lr(at, Move::Advance, group, base, lr))
            }),
            Next::Sequential { index, movement, moved, .. } => {
                self.phases[*index].lr(*moved, *movement, group, base, lr)
            }
        }
    }

    /// Takes the step `next`.
    fn take(&mut self, next: Next) -> Result<()> {
        match (next, &mut self.plan) {
            (Next::Chained, _) => {
                for phase in &mut self.phases {
                    let position = phase.moved(Move::Advance)?;
                    phase.set(position);
                }
            }
            (Next::Sequential { epoch, index, moved, .. }, Plan::Sequential { last_epoch, .. }) => {
                self.phases[index].set(moved);
                *last_epoch = epoch;
            }
            (Next::Sequential { .. }, Plan::Chained) => {}
        }
        Ok(())
    }

    /// The rate that the group at `group` with base rate `base` has at this position had it
    /// been in the optimizer from the start: the schedule replayed, operation for operation.
    fn replayed_rate(&self, group: usize, base: f64) -> Result<f64> {
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
            phases: self.phases.iter().map(Phase::rewound).collect(),
        };
        replay.take_initial_step()?;
        let mut lr = replay.initial_rate(group, base);
        for _ in 0..steps {
            let next = replay.next()?;
            lr = replay.next_rate(&next, group, base, lr);
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
        let one_cycle = self.phases.iter().any(|p| matches!(p.schedule, Schedule::OneCycle(_)));
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
    /// exponential growth past `f64::MAX`) or a group's rule refuses a cycled momentum,
    /// [`Error::NoMomentumToCycle`] for a group added with a rule without momentum,
    /// [`Error::InvalidSchedule`] for a group to bring
    /// into phase after more than 2^26 steps or a per-group setting whose list does not fit
    /// the groups (one was added); nothing changes then.
    pub fn step<R: UpdateRule, A: Element>(
        &mut self,
        optimizer: &mut Optimizer<R, A>,
    ) -> Result<()> {
        self.check_groups(optimizer.groups().len())?;
        let next = self.next()?;
        let rate = |group, base, current: Option<f64>| {
            let base = self.base(group, base);
            let lr = match current {
                Some(lr) => lr,
                None => self.replayed_rate(group, base)?,
            };
            Ok(self.next_rate(&next, group, base, lr))
        };
        set_rates(optimizer, rate, |group| self.next_momentum(&next, group))?;
        self.take(next)
    }

    /// How many times [`step`](Self::step) has run.
    pub fn steps(&self) -> u64 {
        match &self.plan {
            Plan::Chained => self.phases[0].position().last_epoch as u64,
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
                let epoch = self.phases[0].position().last_epoch;
                epoch >= 0 && self.phases.iter().all(|phase| phase.position().last_epoch == epoch)
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
                    phase.position().last_epoch == expected
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
    Sequential { epoch: u64, index: usize, movement: Move, moved: Position },
}

/// Sets every group's current rate to `rate(index, base, scheduled)`, from its index, its
/// base rate and the rate a schedule set it to, if any, and its cycled momentum to
/// `momentum(index)` where that is `Some`. Checks every new rate (finite, ≥ 0) and
/// momentum (the rule has one, and takes the value) first and changes nothing on an error.
/// `rate` and `momentum` run twice per group, so they must be pure.
fn set_rates<R: UpdateRule, A: Element>(
    optimizer: &mut Optimizer<R, A>,
    rate: impl Fn(usize, f64, Option<f64>) -> Result<f64>,
    momentum: impl Fn(usize) -> Option<f64>,
) -> Result<()> {
    let registry = &optimizer.registry;
    for (index, group) in registry.groups.iter().enumerate() {
        check_lr("schedule", rate(index, group.base_lr(), group.scheduled_lr)?)?;
        if let Some(value) = momentum(index) {
            registry.check_hyper(index, &with_momentum(group, value)?)?;
        }
    }
    for (index, group) in optimizer.registry.groups.iter_mut().enumerate() {
        if let Ok(value) = rate(index, group.base_lr(), group.scheduled_lr) {
            group.scheduled_lr = Some(value);
        }
        if let Some(Ok(hyper)) = momentum(index).map(|value| with_momentum(group, value)) {
            group.hyper = hyper;
        }
    }
    Ok(())
}

/// The group's hyperparameters with the cycled momentum `value`.
///
/// # Errors
/// [`Error::NoMomentumToCycle`] if its rule has none.
fn with_momentum<R: UpdateRule>(group: &ParamGroup<R>, value: f64) -> Result<R> {
    let mut hyper = group.hyper.clone();
    let momentum = hyper.cycled_momentum_mut().ok_or_else(|| Error::NoMomentumToCycle {
        group: group.name().to_owned(),
        rule: group.hyper.name(),
    })?;
    *momentum = value;
    Ok(hyper)
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
