//! [`Cyclic`]: PyTorch's `CyclicLR`, the rate cycling between two bounds (Smith 2017).

use super::PerGroup;
use crate::check::{check_count, check_non_negative, check_unit};
use crate::error::Result;

/// How a [`Cyclic`] schedule scales its amplitude from cycle to cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum CyclicMode {
    /// The full amplitude in every cycle (`"triangular"`, PyTorch's default).
    #[default]
    Triangular,
    /// The amplitude halved after each cycle: `$1/2^{c-1}$` in cycle `$c$` (from 1).
    Triangular2,
    /// The amplitude scaled by `$\gamma^t$` at step `$t$` (`"exp_range"`).
    ExpRange,
}

/// PyTorch's `CyclicLR`: each group's rate rises from its `base_lr` to its `max_lr` over
/// `step_size_up` steps, falls back over `step_size_down`, and starts over, the amplitude
/// scaled by the [`mode`](CyclicMode).
///
/// With `$T = u + d$`, where `$u$` is `step_size_up` and `$d$` is `step_size_down`, and
/// `$r = u / T$`, at step `$t$` (PyTorch's `last_epoch`):
///
/// ```math
/// c = \lfloor 1 + t/T \rfloor, \quad x = 1 + t/T - c, \quad
/// s = \begin{cases} x / r & x \le r \\ (x - 1)/(r - 1) & \text{else} \end{cases}, \quad
/// \eta_t = \eta_{base} + (\eta_{max} - \eta_{base})\, s\, \sigma
/// ```
///
/// where the scale `$\sigma$` is 1 (`Triangular`), `$1/2^{c-1}$` (`Triangular2`) or
/// `$\gamma^t$` (`ExpRange`). The rate is a function of the step alone, not of the rate
/// before, and it ignores the group's own base rate: `base_lr` is the floor (as in PyTorch,
/// where the scheduler overwrites the groups' rates with it).
///
/// With `cycle_momentum` each group's momentum (β₁ for the Adam family, see
/// [`UpdateRule::cycled_momentum_mut`](crate::UpdateRule::cycled_momentum_mut)) cycles the
/// other way, `$\mu_t = \mu_{max} - (\mu_{max} - \mu_{base})\, s\, \sigma$`: it is set
/// in the group's hyperparameters, so the optimizer's checkpoint holds it. PyTorch cycles
/// momentum by default; here `cycle_momentum` is off by default, as in the replay harness
/// (a rule without momentum would refuse the default otherwise).
///
/// PyTorch's rates set by a `Cyclic` that is the *first* schedule of a chain or sequence
/// become every later schedule's base rates too (its constructor writes them into the
/// groups before the others read them): the crate does the same, so a sequence such as
/// `[Cyclic, Linear]` matches PyTorch's `SequentialLR` built in list order.
///
/// ```
/// use ndarray_optim::schedule::{Cyclic, CyclicMode, LrScheduler, Schedule};
/// use ndarray_optim::{Optimizer, Sgd};
///
/// let mut opt = Optimizer::<_, f64>::new(Sgd::default())?;
/// let cyclic = Cyclic { step_size_up: 2, mode: CyclicMode::Triangular2, ..Cyclic::new(0.1, 0.5) };
/// let mut scheduler = LrScheduler::new(&mut opt, Schedule::Cyclic(cyclic))?;
/// let mut rates = vec![opt.group("default")?.lr()];
/// for _ in 0..6 {
///     scheduler.step(&mut opt)?;
///     rates.push(opt.group("default")?.lr());
/// }
/// assert_eq!(rates, [0.1, 0.30000000000000004, 0.5, 0.30000000000000004, 0.1, 0.2, 0.30000000000000004]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Cyclic {
    /// The lower bound `$\eta_{base}$` of each group's rate (finite, ≥ 0).
    pub base_lr: PerGroup,
    /// The upper bound `$\eta_{max}$` of each group's rate (finite, ≥ 0), reached at the
    /// peak of a full-amplitude cycle.
    pub max_lr: PerGroup,
    /// Steps of the rise (≥ 1; PyTorch's default 2000).
    #[cfg_attr(feature = "serde", serde(default = "defaults::step_size_up"))]
    pub step_size_up: u64,
    /// Steps of the fall; `None` (the default) is `step_size_up`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub step_size_down: Option<u64>,
    /// How the amplitude changes from cycle to cycle (default `Triangular`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub mode: CyclicMode,
    /// `ExpRange`'s factor γ per step, in [0, 1] (default 1).
    #[cfg_attr(feature = "serde", serde(default = "defaults::gamma"))]
    pub gamma: f64,
    /// Cycle each group's momentum inversely to its rate (default `false`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub cycle_momentum: bool,
    /// The momentum `$\mu_{base}$` at the peak rate (finite, ≥ 0; default 0.8).
    #[cfg_attr(feature = "serde", serde(default = "defaults::base_momentum"))]
    pub base_momentum: PerGroup,
    /// The momentum `$\mu_{max}$` at the lowest rate (finite, ≥ 0; default 0.9).
    #[cfg_attr(feature = "serde", serde(default = "defaults::max_momentum"))]
    pub max_momentum: PerGroup,
}

#[cfg(feature = "serde")]
mod defaults {
    pub(super) fn step_size_up() -> u64 {
        2000
    }
    pub(super) fn gamma() -> f64 {
        1.0
    }
    pub(super) fn base_momentum() -> super::PerGroup {
        super::PerGroup::All(0.8)
    }
    pub(super) fn max_momentum() -> super::PerGroup {
        super::PerGroup::All(0.9)
    }
}

impl Cyclic {
    /// A cycle between `base_lr` and `max_lr` with PyTorch's other defaults (2000 steps up,
    /// as many down, `Triangular`, momentum between 0.8 and 0.9), momentum not cycled.
    pub fn new(base_lr: impl Into<PerGroup>, max_lr: impl Into<PerGroup>) -> Self {
        Cyclic {
            base_lr: base_lr.into(),
            max_lr: max_lr.into(),
            step_size_up: 2000,
            step_size_down: None,
            mode: CyclicMode::Triangular,
            gamma: 1.0,
            cycle_momentum: false,
            base_momentum: PerGroup::All(0.8),
            max_momentum: PerGroup::All(0.9),
        }
    }

    pub(super) fn validate(&self, name: &'static str) -> Result<()> {
        self.base_lr.validate(name, "base_lr", check_non_negative)?;
        self.max_lr.validate(name, "max_lr", check_non_negative)?;
        check_count(name, "step_size_up", self.step_size_up)?;
        // γ above 1 would grow the amplitude without bound (and 0 · ∞ at a cycle's start).
        check_unit(name, "gamma", self.gamma)?;
        // Checked even when momentum does not cycle: the settings are kept and saved, and a
        // non-finite one would not survive a JSON round trip (which writes it as null).
        self.base_momentum.validate(name, "base_momentum", check_non_negative)?;
        self.max_momentum.validate(name, "max_momentum", check_non_negative)?;
        Ok(())
    }

    pub(super) fn check_groups(&self, name: &'static str, groups: usize) -> Result<()> {
        self.base_lr.check_groups(name, "base_lr", groups)?;
        self.max_lr.check_groups(name, "max_lr", groups)?;
        if self.cycle_momentum {
            self.base_momentum.check_groups(name, "base_momentum", groups)?;
            self.max_momentum.check_groups(name, "max_momentum", groups)?;
        }
        Ok(())
    }

    /// Where step `epoch` is in its cycle, `$s$`, and the amplitude's scale `$\sigma$`, in
    /// PyTorch's operations.
    fn position(&self, epoch: i64) -> (f64, f64) {
        let up = self.step_size_up as f64;
        let total = up + self.step_size_down.map_or(up, |down| down as f64);
        let ratio = up / total;
        let t = epoch as f64;
        let cycle = (1.0 + t / total).floor();
        let x = 1.0 + t / total - cycle;
        let height = if x <= ratio { x / ratio } else { (x - 1.0) / (ratio - 1.0) };
        let scale = match self.mode {
            CyclicMode::Triangular => 1.0,
            // PyTorch's `2.0 ** (cycle - 1)` raises OverflowError after 1024 cycles; here the
            // amplitude is then 0, the limit.
            CyclicMode::Triangular2 => 1.0 / 2f64.powf(cycle - 1.0),
            CyclicMode::ExpRange => self.gamma.powf(t),
        };
        (height, scale)
    }

    /// The rate of the group at `group` at step `epoch`.
    pub(super) fn lr(&self, group: usize, epoch: i64) -> f64 {
        let (height, scale) = self.position(epoch);
        let (base, max) = (self.base_lr.get(group), self.max_lr.get(group));
        base + (max - base) * height * scale
    }

    /// The momentum of the group at `group` at step `epoch`, if cycled.
    pub(super) fn momentum(&self, group: usize, epoch: i64) -> Option<f64> {
        self.cycle_momentum.then(|| {
            let (height, scale) = self.position(epoch);
            let (base, max) = (self.base_momentum.get(group), self.max_momentum.get(group));
            max - (max - base) * height * scale
        })
    }

    /// The largest rate of the group at `group`, the scale of the rates' rounding.
    pub(super) fn largest_lr(&self, group: usize) -> f64 {
        self.base_lr.get(group).max(self.max_lr.get(group))
    }
}
