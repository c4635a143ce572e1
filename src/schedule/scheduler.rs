//! [`LrScheduler`]: schedules run against an optimizer, alone, chained or in sequence, for
//! every group or a schedule per group.

use super::track::{GroupSchedule, Plan, Track};
use super::{Lambda, Schedule};
use crate::check::check_lr;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::registry::ParamGroup;
use crate::rule::UpdateRule;

/// A learning-rate schedule running against an optimizer, with its position.
///
/// See the [module documentation](crate::schedule) for how it follows PyTorch. Made by
/// [`new`](Self::new) (one schedule), [`chained`](Self::chained) (PyTorch's
/// `ChainedScheduler`), [`sequential`](Self::sequential) (`SequentialLR`) or
/// [`per_group`](Self::per_group) (a schedule of its own for each group listed), each of
/// which sets the rates for the first optimizer step; then [`step`](Self::step) after
/// every optimizer step. Stepping allocates nothing, and a step that fails changes neither
/// the scheduler nor the optimizer.
///
/// With the `serde` feature it serializes as its position; deserializing checks it: the
/// schedules' ranges, and that the position is one that stepping from the start reaches and
/// that can be stepped further. The closures of lambda schedules are not serialized: a
/// deserialized scheduler needs them again from [`set_lambda`](Self::set_lambda) (see
/// [`Lambda`]). The serialized form is `{"plan": …, "phases": [...]}`, the plan `"chained"`
/// or `{"sequential": {"milestones": [...], "last_epoch": n}}`; a per-group scheduler has
/// the plan `{"per_group": [{"group": "head", "plan": …, "phases": [...]}, ...]}` and no
/// phases of its own.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "stored::Unchecked"))]
pub struct LrScheduler {
    /// One track for every group (`group: None`), or one per group listed.
    tracks: Vec<Track>,
}

impl LrScheduler {
    /// Runs `schedule`: every group's current rate is set to its first-step value.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] for a schedule out of range (or a cycled momentum
    /// out of a group's rule's range), [`Error::InvalidSchedule`] for a per-group list that
    /// does not have one value per group, [`Error::NoMomentumToCycle`] if the schedule cycles
    /// momentum and a group's rule has none, [`Error::ScheduleInProgress`] if a group has a
    /// rate from another schedule in progress (see the [module documentation](crate::schedule)),
    /// [`Error::LambdaMissing`] for a lambda without its closure (a deserialized one),
    /// [`Error::InvalidLambdaFactor`] if a lambda's first factor is not finite and ≥ 0;
    /// nothing changes then.
    pub fn new<R: UpdateRule, A: Element>(
        optimizer: &mut Optimizer<R, A>,
        schedule: Schedule,
    ) -> Result<Self> {
        Self::start(optimizer, vec![Track::new(None, Plan::Chained, vec![schedule])])
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
        Self::start(optimizer, vec![Track::new(None, Plan::Chained, schedules)])
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
        let plan = Plan::Sequential { milestones, last_epoch: 0 };
        Self::start(optimizer, vec![Track::new(None, plan, schedules)])
    }

    /// Runs a schedule of its own on each group listed, by name; the groups not listed keep
    /// their rates. Each group's rate is the one its schedule gives when it runs alone on
    /// that group (in PyTorch: on an optimizer with that group only), so a per-group setting
    /// ([`PerGroup`](super::PerGroup)) has one value and a [`Lambda`] sees the group as
    /// index 0.
    ///
    /// ```
    /// use ndarray_optim::schedule::{GroupSchedule, Lambda, LrScheduler, Schedule};
    /// use ndarray_optim::{Optimizer, Sgd};
    ///
    /// let mut opt = Optimizer::<_, f64>::new(Sgd { lr: 0.1, ..Sgd::default() })?;
    /// opt.add_group("head", Sgd { lr: 1.0, ..Sgd::default() })?;
    /// opt.add_group("frozen", Sgd { lr: 0.01, ..Sgd::default() })?;
    /// // The body warms up over 2 steps then anneals; only the head decays, by 0.5 a step.
    /// let body = GroupSchedule::Sequential {
    ///     schedules: vec![
    ///         Schedule::Linear { start_factor: 0.5, end_factor: 1.0, total_iters: 2 },
    ///         Schedule::Cosine { t_max: 8, eta_min: 0.0 },
    ///     ],
    ///     milestones: vec![2],
    /// };
    /// let head = Schedule::Multiplicative(Lambda::new("head", |_step, _group| 0.5)).into();
    /// let mut scheduler = LrScheduler::per_group(&mut opt, [("default", body), ("head", head)])?;
    /// for _ in 0..3 {
    ///     scheduler.step(&mut opt)?;
    /// }
    /// assert_eq!(opt.group("head")?.lr(), 0.125);
    /// assert_eq!(opt.group("frozen")?.lr(), 0.01); // not listed: its own rate
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownGroup`] for a group that the optimizer does not have,
    /// [`Error::InvalidSchedule`] for no groups or a group listed twice, and the errors of
    /// [`new`](Self::new), [`chained`](Self::chained) and [`sequential`](Self::sequential).
    pub fn per_group<R, A, N, S>(
        optimizer: &mut Optimizer<R, A>,
        schedules: impl IntoIterator<Item = (N, S)>,
    ) -> Result<Self>
    where
        R: UpdateRule,
        A: Element,
        N: AsRef<str>,
        S: Into<GroupSchedule>,
    {
        let tracks = schedules
            .into_iter()
            .map(|(group, schedule)| schedule.into().into_track(group.as_ref().to_owned()))
            .collect();
        Self::start(optimizer, tracks)
    }

    fn start<R: UpdateRule, A: Element>(
        optimizer: &mut Optimizer<R, A>,
        tracks: Vec<Track>,
    ) -> Result<Self> {
        let mut scheduler = LrScheduler { tracks };
        scheduler.validate()?;
        scheduler.check_ready(optimizer)?;
        for track in &mut scheduler.tracks {
            track.take_initial_step()?;
        }
        let first = |index, group: &ParamGroup<R>| -> Result<Option<f64>> {
            let Some((track, at)) = scheduler.track_of(index, group) else { return Ok(None) };
            track.initial_rate(at, track.base(at, group.base_lr())).map(Some)
        };
        // A rate that a schedule set is not silently replaced by another: the optimizer is
        // mid-schedule (e.g. restored from a checkpoint), and a scheduler state restored
        // after this one would then continue from the wrong rate.
        for (index, group) in optimizer.groups().iter().enumerate() {
            let Some(rate) = first(index, group)? else { continue };
            if let Some(current) = group.scheduled_lr.filter(|lr| lr.to_bits() != rate.to_bits()) {
                return Err(Error::ScheduleInProgress {
                    group: group.name().to_owned(),
                    current,
                    first: rate,
                });
            }
        }
        let momentum = |index, group: &ParamGroup<R>| {
            let (track, at) = scheduler.track_of(index, group)?;
            track.initial_momentum(at)
        };
        set_rates(optimizer, first, momentum)?;
        Ok(scheduler)
    }

    /// The track that drives the group at `index`, with the group's index in it, if one does.
    fn track_of<R>(&self, index: usize, group: &ParamGroup<R>) -> Option<(&Track, usize)> {
        self.tracks.iter().find_map(|track| match &track.group {
            None => Some((track, index)),
            Some(name) if name == group.name() => Some((track, 0)),
            Some(_) => None,
        })
    }

    /// Fails unless every track can run on `optimizer`: its group is there, its per-group
    /// settings fit, its lambdas have their closures.
    fn check_ready<R: UpdateRule, A: Element>(&self, optimizer: &Optimizer<R, A>) -> Result<()> {
        for track in &self.tracks {
            match &track.group {
                None => track.check_ready(optimizer.groups().len())?,
                Some(name) => {
                    optimizer.group(name)?;
                    track.check_ready(1)?;
                }
            }
        }
        Ok(())
    }

    /// Gives the lambda schedules named `lambda.name()` its closure, as a scheduler restored
    /// from serde needs (see [`Lambda`]); every phase of that name takes it.
    ///
    /// # Errors
    /// [`Error::InvalidSchedule`] if no lambda schedule has that name, or `lambda` has no
    /// closure itself (a deserialized one); nothing changes then.
    pub fn set_lambda(&mut self, lambda: Lambda) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidSchedule { reason });
        if !lambda.has_closure() {
            return invalid(format!("the lambda `{}` given has no closure", lambda.name()));
        }
        let mut named = self
            .tracks
            .iter_mut()
            .flat_map(Track::lambdas_mut)
            .filter(|phase| phase.name() == lambda.name())
            .peekable();
        if named.peek().is_none() {
            return invalid(format!("no lambda schedule is named `{}`", lambda.name()));
        }
        named.for_each(|phase| phase.bind(&lambda));
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidSchedule { reason });
        if self.tracks.is_empty() {
            return invalid("no schedules".to_owned());
        }
        for (index, track) in self.tracks.iter().enumerate() {
            track.validate()?;
            match &track.group {
                None if self.tracks.len() > 1 => {
                    return invalid("a schedule for every group among per-group ones".to_owned());
                }
                Some(name) if self.tracks[..index].iter().any(|t| t.group == track.group) => {
                    return invalid(format!("group `{name}` is given two schedules"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Advances the schedule by one step and sets the rates for the next optimizer step.
    /// Call it once after every optimizer step.
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
    /// the groups (one was added), [`Error::UnknownGroup`] for a per-group scheduler's group
    /// that the optimizer does not have, [`Error::LambdaMissing`] for a lambda without its
    /// closure (restored, before [`set_lambda`](Self::set_lambda)),
    /// [`Error::InvalidLambdaFactor`] for a lambda's factor that is not finite and ≥ 0;
    /// nothing changes then.
    pub fn step<R: UpdateRule, A: Element>(
        &mut self,
        optimizer: &mut Optimizer<R, A>,
    ) -> Result<()> {
        self.check_ready(optimizer)?;
        for track in &self.tracks {
            track.next()?;
        }
        let rate = |index, group: &ParamGroup<R>| -> Result<Option<f64>> {
            let Some((track, at)) = self.track_of(index, group) else { return Ok(None) };
            let base = track.base(at, group.base_lr());
            let lr = match group.scheduled_lr {
                Some(lr) => lr,
                None => track.replayed_rate(at, base)?,
            };
            track.next_rate(&track.next()?, at, base, lr).map(Some)
        };
        let momentum = |index, group: &ParamGroup<R>| {
            let (track, at) = self.track_of(index, group)?;
            track.next_momentum(&track.next().ok()?, at)
        };
        set_rates(optimizer, rate, momentum)?;
        for track in &mut self.tracks {
            // Every track's next step was checked above.
            if let Ok(next) = track.next() {
                track.take(next);
            }
        }
        Ok(())
    }

    /// How many times [`step`](Self::step) has run.
    pub fn steps(&self) -> u64 {
        self.tracks[0].steps()
    }

    /// Whether the position is the one `steps()` steps from the start reach, and one more
    /// step can be counted.
    #[cfg(feature = "serde")]
    fn position_ok(&self) -> bool {
        let steps = self.steps();
        self.tracks.iter().all(|track| track.position_ok() && track.steps() == steps)
    }
}

/// Sets the current rate of every group to `rate(index, group)` where that is `Some`, from
/// its index and the group (its base rate, and the rate a schedule set it to, if any), and
/// its cycled momentum to `momentum(index, group)` where that is `Some`. Checks every new
/// rate (finite, ≥ 0) and momentum (the rule has one, and takes the value) first and changes
/// nothing on an error. `rate` and `momentum` run twice per group, so they must be pure.
fn set_rates<R: UpdateRule, A: Element>(
    optimizer: &mut Optimizer<R, A>,
    rate: impl Fn(usize, &ParamGroup<R>) -> Result<Option<f64>>,
    momentum: impl Fn(usize, &ParamGroup<R>) -> Option<f64>,
) -> Result<()> {
    let registry = &optimizer.registry;
    for (index, group) in registry.groups.iter().enumerate() {
        if let Some(value) = rate(index, group)? {
            check_lr("schedule", value)?;
        }
        if let Some(value) = momentum(index, group) {
            registry.check_hyper(index, &with_momentum(group, value)?)?;
        }
    }
    for (index, group) in optimizer.registry.groups.iter_mut().enumerate() {
        if let Ok(Some(value)) = rate(index, group) {
            group.scheduled_lr = Some(value);
        }
        if let Some(Ok(hyper)) = momentum(index, group).map(|value| with_momentum(group, value)) {
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

/// The serialized form: a scheduler for every group is its track's `plan` and `phases`, as
/// it has always been; a per-group scheduler has the plan `per_group` (the next variant
/// index, for formats that are not self-describing) with its tracks, and no phases.
#[cfg(feature = "serde")]
mod stored {
    use serde::{Deserialize, Serialize, Serializer};

    use super::super::phase::Phase;
    use super::super::track::{Plan, Track};
    use super::LrScheduler;
    use crate::error::Error;

    #[derive(Serialize, Deserialize)]
    #[serde(rename = "LrScheduler", deny_unknown_fields)]
    pub(super) struct Stored<M, T, P> {
        plan: Layout<M, T>,
        phases: P,
    }

    /// [`Plan`] and the per-group layout: the plan of the scheduler as a whole. (A track's
    /// own plan is a [`Plan`], so that no input nests per-group schedulers.)
    #[derive(Serialize, Deserialize)]
    #[serde(rename = "Plan", rename_all = "snake_case", deny_unknown_fields)]
    pub(super) enum Layout<M, T> {
        Chained,
        Sequential { milestones: M, last_epoch: u64 },
        PerGroup(T),
    }

    /// What deserializing reads, checked before it becomes an [`LrScheduler`].
    pub(super) type Unchecked = Stored<Vec<u64>, Vec<Track>, Vec<Phase>>;

    impl Serialize for LrScheduler {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let no_phases: &[Phase] = &[];
            let stored: Stored<&[u64], &[Track], &[Phase]> = match self.tracks.as_slice() {
                [whole] if whole.group.is_none() => {
                    let (plan, phases) = whole.parts();
                    let plan = match plan {
                        Plan::Chained => Layout::Chained,
                        Plan::Sequential { milestones, last_epoch } => Layout::Sequential {
                            milestones: milestones.as_slice(),
                            last_epoch: *last_epoch,
                        },
                    };
                    Stored { plan, phases }
                }
                tracks => Stored { plan: Layout::PerGroup(tracks), phases: no_phases },
            };
            stored.serialize(serializer)
        }
    }

    impl TryFrom<Unchecked> for LrScheduler {
        type Error = Error;

        fn try_from(unchecked: Unchecked) -> Result<Self, Error> {
            let invalid = |reason: &str| Err(Error::InvalidSchedule { reason: reason.to_owned() });
            let Stored { plan, phases } = unchecked;
            let tracks = match plan {
                Layout::Chained => vec![Track::whole(Plan::Chained, phases)],
                Layout::Sequential { milestones, last_epoch } => {
                    vec![Track::whole(Plan::Sequential { milestones, last_epoch }, phases)]
                }
                Layout::PerGroup(tracks) => {
                    if !phases.is_empty() {
                        return invalid("a per-group scheduler has no phases of its own");
                    }
                    if tracks.iter().any(|track| track.group.is_none()) {
                        return invalid("each schedule of a per-group scheduler names its group");
                    }
                    tracks
                }
            };
            let scheduler = LrScheduler { tracks };
            scheduler.validate()?;
            if !scheduler.position_ok() {
                return invalid(
                    "a position that stepping from the start does not reach, or that cannot be \
                     stepped further",
                );
            }
            Ok(scheduler)
        }
    }
}
