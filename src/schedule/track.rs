//! [`Track`]: schedules combined (one, chained or in sequence) with their positions, stepped
//! as PyTorch's schedulers step them; [`GroupSchedule`], what one group runs in a
//! per-group scheduler.

use super::phase::{Move, Phase, Position, exhausted};
use super::{Lambda, Schedule};
use crate::error::{Error, Result};

/// How the phases of a [`Track`] combine.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case", deny_unknown_fields))]
pub(super) enum Plan {
    /// Every phase steps every time, each from the rate the previous one set
    /// (ChainedScheduler; one phase is a plain scheduler).
    Chained,
    /// Phase i runs from milestone i−1 to milestone i (SequentialLR), with the number of
    /// steps taken so far.
    Sequential { milestones: Vec<u64>, last_epoch: u64 },
}

/// What one group runs in [`LrScheduler::per_group`](super::LrScheduler::per_group): one
/// schedule, or several chained or in sequence, as [`LrScheduler::new`](super::LrScheduler::new),
/// [`chained`](super::LrScheduler::chained) and [`sequential`](super::LrScheduler::sequential)
/// take them. A [`Schedule`] converts into `Single`.
#[derive(Clone, Debug, PartialEq)]
pub enum GroupSchedule {
    /// One schedule.
    Single(Schedule),
    /// Every schedule at every step, each from the rate the one before set (ChainedScheduler).
    Chained(Vec<Schedule>),
    /// `schedules[0]` until step `milestones[0]`, then `schedules[1]`, … (SequentialLR).
    Sequential {
        /// The schedules, in order.
        schedules: Vec<Schedule>,
        /// The steps at which the next schedule starts, one fewer than schedules.
        milestones: Vec<u64>,
    },
}

impl From<Schedule> for GroupSchedule {
    fn from(schedule: Schedule) -> Self {
        GroupSchedule::Single(schedule)
    }
}

impl GroupSchedule {
    /// The track that runs it on the group named `group`.
    pub(super) fn into_track(self, group: String) -> Track {
        let (plan, schedules) = match self {
            GroupSchedule::Single(schedule) => (Plan::Chained, vec![schedule]),
            GroupSchedule::Chained(schedules) => (Plan::Chained, schedules),
            GroupSchedule::Sequential { schedules, milestones } => {
                (Plan::Sequential { milestones, last_epoch: 0 }, schedules)
            }
        };
        Track::new(Some(group), plan, schedules)
    }
}

/// Schedules combined by a plan, with their positions, driving every group (`group` is
/// `None`) or the one group named `group`, which they drive as if it were alone in its
/// optimizer: its index in the track is 0.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub(super) struct Track {
    pub(super) group: Option<String>,
    plan: Plan,
    phases: Vec<Phase>,
}

/// What a step of a [`Track`] moves.
pub(super) enum Next {
    /// Every phase advances.
    Chained,
    /// Phase `index` makes `movement`, becoming `moved`; the sequence is at `epoch`.
    Sequential { epoch: u64, index: usize, movement: Move, moved: Position },
}

/// The longest history [`Track::replayed_rate`] replays to bring a group into phase.
const REPLAY_LIMIT: u64 = 1 << 26;

impl Track {
    /// `schedules` before their constructors' steps.
    pub(super) fn new(group: Option<String>, plan: Plan, schedules: Vec<Schedule>) -> Self {
        Track { group, plan, phases: schedules.into_iter().map(Phase::new).collect() }
    }

    /// The track of the whole scheduler's serialized form, whose plan and phases are its
    /// own fields.
    #[cfg(feature = "serde")]
    pub(super) fn whole(plan: Plan, phases: Vec<Phase>) -> Self {
        Track { group: None, plan, phases }
    }

    /// Its plan and phases, for the whole scheduler's serialized form.
    #[cfg(feature = "serde")]
    pub(super) fn parts(&self) -> (&Plan, &[Phase]) {
        (&self.plan, &self.phases)
    }

    /// Fails unless the track can run on `groups` groups (its per-group settings fit,
    /// its lambdas have their closures).
    pub(super) fn check_ready(&self, groups: usize) -> Result<()> {
        self.phases.iter().try_for_each(|phase| phase.schedule.check_ready(groups))
    }

    /// The lambdas of its phases.
    pub(super) fn lambdas_mut(&mut self) -> impl Iterator<Item = &mut Lambda> {
        self.phases.iter_mut().filter_map(|phase| phase.schedule.lambda_mut())
    }

    /// The base rate that the phases see for the group at `group`, whose own base rate is
    /// `base`: PyTorch's `initial_lr`, which a `CyclicLR` built first sets to its `base_lr`
    /// before the other schedulers read it.
    pub(super) fn base(&self, group: usize, base: f64) -> f64 {
        match &self.phases[0].schedule {
            Schedule::Cyclic(cyclic) => cyclic.base_lr.get(group),
            _ => base,
        }
    }

    /// Takes the constructors' step: every phase takes its constructor's step; a sequence
    /// then undoes all of them but the first (PyTorch's `recursive_undo`), so only the first
    /// moves the rates.
    pub(super) fn take_initial_step(&mut self) -> Result<()> {
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
    pub(super) fn initial_rate(&self, group: usize, base: f64) -> Result<f64> {
        let first = |lr, phase: &Phase| phase.lr(phase.position(), Move::Initial, group, base, lr);
        match self.plan {
            Plan::Chained => self.phases.iter().try_fold(base, first),
            Plan::Sequential { .. } => first(base, &self.phases[0]),
        }
    }

    /// The first momentum of the group at `group`, if a phase cycles momentum: each
    /// scheduler that cycles momentum sets it when it is built, in list order, and a
    /// sequence then has its first phase take its first step again.
    pub(super) fn initial_momentum(&self, group: usize) -> Option<f64> {
        let first = match self.plan {
            Plan::Sequential { .. } => self.phases[0].momentum(0, group),
            Plan::Chained => None,
        };
        first.or_else(|| self.phases.iter().rev().find_map(|phase| phase.momentum(0, group)))
    }

    /// The momentum after the step `next` of the group at `group`, if the step sets one:
    /// the last phase of a chain that cycles momentum, the current phase of a sequence if it
    /// does.
    pub(super) fn next_momentum(&self, next: &Next, group: usize) -> Option<f64> {
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
    pub(super) fn next(&self) -> Result<Next> {
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
    pub(super) fn next_rate(&self, next: &Next, group: usize, base: f64, lr: f64) -> Result<f64> {
        match next {
            Next::Chained => self.phases.iter().try_fold(lr, |lr, phase| {
                // `next` checked that every phase moves.
                let moved = phase.moved(Move::Advance);
                moved.map_or(Ok(lr), |at| phase.lr(at, Move::Advance, group, base, lr))
            }),
            Next::Sequential { index, movement, moved, .. } => {
                self.phases[*index].lr(*moved, *movement, group, base, lr)
            }
        }
    }

    /// Takes the step `next`, which [`next`](Self::next) returned for this position.
    pub(super) fn take(&mut self, next: Next) {
        match (next, &mut self.plan) {
            (Next::Chained, _) => {
                for phase in &mut self.phases {
                    // `next` checked that every phase moves.
                    if let Ok(position) = phase.moved(Move::Advance) {
                        phase.set(position);
                    }
                }
            }
            (Next::Sequential { epoch, index, moved, .. }, Plan::Sequential { last_epoch, .. }) => {
                self.phases[index].set(moved);
                *last_epoch = epoch;
            }
            (Next::Sequential { .. }, Plan::Chained) => {}
        }
    }

    /// The rate that the group at `group` with base rate `base` has at this position had it
    /// been driven from the start: the schedule replayed, operation for operation.
    pub(super) fn replayed_rate(&self, group: usize, base: f64) -> Result<f64> {
        let steps = self.steps();
        if steps > REPLAY_LIMIT {
            return Err(Error::InvalidSchedule {
                reason: format!(
                    "a group without a scheduled rate cannot be brought into phase at step \
                     {steps} (at most {REPLAY_LIMIT} steps are replayed)"
                ),
            });
        }
        let plan = match &self.plan {
            Plan::Chained => Plan::Chained,
            Plan::Sequential { milestones, .. } => {
                Plan::Sequential { milestones: milestones.clone(), last_epoch: 0 }
            }
        };
        let phases = self.phases.iter().map(Phase::rewound).collect();
        let mut replay = Track { group: None, plan, phases };
        replay.take_initial_step()?;
        let mut lr = replay.initial_rate(group, base)?;
        for _ in 0..steps {
            let next = replay.next()?;
            lr = replay.next_rate(&next, group, base, lr)?;
            replay.take(next);
        }
        Ok(lr)
    }

    /// Checks the schedules' ranges and how they combine.
    pub(super) fn validate(&self) -> Result<()> {
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

    /// How many steps the track has taken.
    pub(super) fn steps(&self) -> u64 {
        match &self.plan {
            Plan::Chained => self.phases[0].position().last_epoch as u64,
            Plan::Sequential { last_epoch, .. } => *last_epoch,
        }
    }

    /// Whether the position is the one `steps()` steps from the start reach, and one more
    /// step can be counted.
    #[cfg(feature = "serde")]
    pub(super) fn position_ok(&self) -> bool {
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
