//! Learning-rate schedules, step for step as PyTorch's `torch.optim.lr_scheduler` computes
//! them.
//!
//! A [`Schedule`] is a plain description (StepLR, ExponentialLR, CosineAnnealingLR, …); an
//! [`LrScheduler`] runs one, or a chain or sequence of them, against an [`Optimizer`]: it sets
//! every group's current rate from the group's own base rate (the `lr` of its
//! hyperparameters), as [`Optimizer::set_lrs_with`] does; or, made by
//! [`LrScheduler::per_group`], a schedule of its own on each group listed. Creating it sets
//! the rates of the first step; call [`LrScheduler::step`] once after every optimizer step,
//! as in PyTorch. [`ReduceLrOnPlateau`] is fed a metric instead.
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
//! The one thing it cannot hold is a closure (below).
//!
//! # Closures: LambdaLR and MultiplicativeLR
//!
//! [`Schedule::Lambda`] (`LambdaLR`) sets a group's rate to its base rate times a factor,
//! [`Schedule::Multiplicative`] (`MultiplicativeLR`) multiplies the current rate by one; the
//! factor comes from a [`Lambda`], a named closure of the step and the group's index. They
//! chain and sequence like the other schedules. A restored scheduler has the lambdas' names
//! but not their closures, and refuses to step ([`Error::LambdaMissing`]) until
//! [`LrScheduler::set_lambda`] gives them again (see [`Lambda`] for why).
//!
//! ```
//! use ndarray_optim::schedule::{Lambda, LrScheduler, Schedule};
//! use ndarray_optim::{Optimizer, Sgd};
//!
//! let mut opt = Optimizer::<_, f64>::new(Sgd { lr: 0.1, ..Sgd::default() })?;
//! // LambdaLR(opt, lambda step: min(1, (step + 1) / 4)), then MultiplicativeLR(opt,
//! // lambda step: 0.5) from step 4 (SequentialLR, milestones=[4]).
//! let warmup = Lambda::new("warmup", |step, _group| ((step + 1) as f64 / 4.0).min(1.0));
//! let halve = Lambda::new("halve", |_step, _group| 0.5);
//! let mut scheduler = LrScheduler::sequential(
//!     &mut opt,
//!     vec![Schedule::Lambda(warmup), Schedule::Multiplicative(halve)],
//!     vec![4],
//! )?;
//! let mut rates = vec![opt.group("default")?.lr()];
//! for _ in 0..5 {
//!     scheduler.step(&mut opt)?;
//!     rates.push(opt.group("default")?.lr());
//! }
//! assert_eq!(rates, [0.025, 0.05, 0.07500000000000001, 0.1, 0.05, 0.025]);
//! # Ok::<(), ndarray_optim::Error>(())
//! ```
//!
//! # A schedule per group
//!
//! [`LrScheduler::per_group`] gives each group listed a [`GroupSchedule`] of its own (one
//! schedule, or several chained or in sequence): "warm up only the head", or the body on a
//! cosine while the head stays constant. Each group's rate is the one its schedule gives
//! running on that group alone; the groups not listed keep their rates.
//!
//! ```
//! use ndarray_optim::schedule::{LrScheduler, Schedule};
//! use ndarray_optim::{Optimizer, Sgd};
//!
//! let mut opt = Optimizer::<_, f64>::new(Sgd { lr: 0.1, ..Sgd::default() })?;
//! opt.add_group("head", Sgd { lr: 0.01, ..Sgd::default() })?;
//! // Warm up only the head, over 4 steps.
//! let warmup = Schedule::Linear { start_factor: 0.25, end_factor: 1.0, total_iters: 4 };
//! let mut scheduler = LrScheduler::per_group(&mut opt, [("head", warmup)])?;
//! assert_eq!((opt.group("default")?.lr(), opt.group("head")?.lr()), (0.1, 0.0025));
//! for _ in 0..4 {
//!     scheduler.step(&mut opt)?;
//! }
//! assert_eq!((opt.group("default")?.lr(), opt.group("head")?.lr()), (0.1, 0.01));
//! # Ok::<(), ndarray_optim::Error>(())
//! ```
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
//! `end_factor = 0`, which in PyTorch ends near −1e-19 and stays there) is set to exactly 0;
//! PyTorch keeps stepping with its tiny negative rate, which moves parameters by the same
//! nothing.
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

use crate::check::{check_count, check_non_negative, check_positive, require};
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
#[cfg(doc)]
use crate::optimizer::Optimizer;

mod cyclic;
mod lambda;
mod one_cycle;
mod per_group;
mod phase;
mod plateau;
mod scheduler;
#[cfg(feature = "serde")]
mod stored;
mod track;

pub use cyclic::{Cyclic, CyclicMode};
pub use lambda::Lambda;
pub use one_cycle::{AnnealStrategy, OneCycle};
pub use per_group::PerGroup;
pub use plateau::{PlateauMode, ReduceLrOnPlateau, ThresholdMode};
pub use scheduler::LrScheduler;
pub use track::GroupSchedule;

/// One learning-rate schedule, as one of PyTorch's schedulers defines it.
///
/// Notation: `$\eta_b$` is a group's base rate, `$\eta_t$` the rate of optimizer step
/// `$t + 1$` (`$t$` = PyTorch's `last_epoch`, the number of scheduler steps so far; `$\eta_0$`
/// is the rate of the first step). The closed forms below are what the recursions compute up
/// to rounding; the recursions are PyTorch's and are what runs.
///
/// | variant | `$\eta_t$` | PyTorch |
/// | --- | --- | --- |
/// | `Step` | `$\eta_b \gamma^{\lfloor t / k \rfloor}$` (recursively: `$\eta_{t-1}\gamma$` when `$k \mid t$`) | `StepLR(step_size=k, gamma)` |
/// | `MultiStep` | `$\eta_b \gamma^{\lvert\{m \in M : m \le t\}\rvert}$`, a milestone listed twice counting twice (recursively: `$\eta_{t-1}\gamma^{c}$` when `$t$` is listed `$c$` times) | `MultiStepLR(milestones=M, gamma)` |
/// | `Constant` | `$\eta_b f$` for `$t < n$`, then `$\eta_b$` (recursively: `$\eta_{t-1} \cdot (1/f)$` at `$t = n$`) | `ConstantLR(factor=f, total_iters=n)` |
/// | `Exponential` | `$\eta_b \gamma^t$` (recursively `$\eta_{t-1}\gamma$`) | `ExponentialLR(gamma)` |
/// | `Polynomial` | `$\eta_b (1 - \min(t, n)/n)^p$`, recursively `$\eta_{t-1} \big(\frac{1 - t/n}{1 - (t-1)/n}\big)^p$` for `$1 \le t \le n$` | `PolynomialLR(total_iters=n, power=p)` |
/// | `Cosine` | `$\eta_{min} + \frac{1}{2}(\eta_b - \eta_{min})(1 + \cos\frac{\pi t}{T})$`, recursively `$\eta_{min} + (\eta_{t-1} - \eta_{min}) \frac{1 + \cos(\pi t / T)}{1 + \cos(\pi (t-1)/T)}$`; past `$T$` it rises again (PyTorch's periodic continuation) | `CosineAnnealingLR(T_max=T, eta_min)` |
/// | `CosineRestarts` | `$\eta_{min} + \frac{1}{2}(\eta_b - \eta_{min})(1 + \cos\frac{\pi T_{cur}}{T_i})$`, `$T_{cur}$` the steps since the last restart, `$T_0$` the first period, each next one `$T_{mult}$` times longer | `CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)` |
/// | `Linear` | `$\eta_b \big(a + (b - a)\frac{\min(t, n)}{n}\big)$`, recursively `$\eta_{t-1}\big(1 + \frac{b - a}{n a + (t - 1)(b - a)}\big)$` for `$1 \le t \le n$` | `LinearLR(start_factor=a, end_factor=b, total_iters=n)` |
/// | `Cyclic` | `$\eta_{base} + (\eta_{max} - \eta_{base})\, s_t\, \sigma_t$`, `$s_t$` rising from 0 to 1 over `step_size_up` steps and back over `step_size_down`, `$\sigma_t$` the mode's scale (see [`Cyclic`]) | `CyclicLR(base_lr, max_lr, step_size_up, step_size_down, mode, gamma)` |
/// | `OneCycle` | from `$M/d$` up to `$M$` over the first `pct_start` of `total_steps`, then down to `$M/(d f)$` (three phases: back to `$M/d$` first), along a cosine or a line (see [`OneCycle`]) | `OneCycleLR(max_lr=M, total_steps, pct_start, anneal_strategy, div_factor=d, final_div_factor=f, three_phase)` |
/// | `Swa` | `$\alpha_t \eta_{swa} + (1 - \alpha_t)\eta_s$`, `$\eta_s$` the rate when it started, `$\alpha_t = \frac{1}{2}(1 - \cos(\pi \min(t/n, 1)))$` (cos) or `$\min(t/n, 1)$` (linear); recursively with `$\eta_s = \frac{\eta_{t-1} - \alpha_{t-1}\eta_{swa}}{1 - \alpha_{t-1}}$` | `torch.optim.swa_utils.SWALR(swa_lr, anneal_epochs=n, anneal_strategy)` |
/// | `Lambda` | `$\eta_b \lambda(t, g)$`, `$g$` the group's index (see [`Lambda`]) | `LambdaLR(lr_lambda)` |
/// | `Multiplicative` | `$\eta_{t-1} \lambda(t, g)$` for `$t \ge 1$` (`$\eta_0 = \eta_b$`; entering a sequence, the rate the phase before left times `$\lambda(0, g)$`) | `MultiplicativeLR(lr_lambda)` |
///
/// `Cyclic` and `OneCycle` set each group's rate from their own per-group settings
/// ([`PerGroup`]: one value for all groups or one per group, as PyTorch's lists), not from
/// the group's base rate, and may cycle each group's momentum inversely to the rate
/// (`cycle_momentum`, see [`UpdateRule::cycled_momentum_mut`](crate::UpdateRule::cycled_momentum_mut)).
/// `Swa` anneals each group from the rate it has when it starts (in a sequence, the rate
/// the phase before left) to its `swa_lr`.
///
/// Stepping a `OneCycle` past `total_steps` is [`Error::ScheduleFinished`], as in PyTorch.
/// [`validate`](Self::validate) refuses what would divide by zero on some step (PyTorch
/// raises `ZeroDivisionError` there): a `Cosine` period past about 3·10^8 steps, a `OneCycle`
/// phase of length 0, a `Constant` factor of 0. A warm-restart period that would pass
/// `u64::MAX` steps is `u64::MAX` (longer than any run: a schedule counts at most `i64::MAX`
/// steps). A rate that grows past `f64::MAX` (a `gamma` above 1) is refused by the step that
/// would set it.
///
/// In serde formats a schedule is `{"kind": "step", "step_size": k, "gamma": g}`,
/// `"multistep"` (`milestones`, `gamma`), `"constant"` (`factor`, `total_iters`),
/// `"exponential"`, `"polynomial"` (`total_iters`, `power`), `"cosine"` (`t_max`, `eta_min`),
/// `"cosine_restarts"` (`t_0`, `t_mult`, `eta_min`), `"linear"` (`start_factor`, `end_factor`,
/// `total_iters`), `"cyclic"` or `"one_cycle"` (the fields of [`Cyclic`] and [`OneCycle`]),
/// `"swa"` (`swa_lr`, `anneal_epochs`, `anneal_strategy` `"cos"` or `"linear"`), or
/// `"lambda"` or `"multiplicative"` (`name`: the closure is not stored, see [`Lambda`]); keys
/// left out take PyTorch's defaults (but `cycle_momentum` is off), and a per-group setting is
/// a number or a list. Formats that are not human-readable, such as postcard, cannot read a
/// `kind` key; there a schedule is the variant's index followed by its fields, the index in
/// the order `Step`, `Exponential`, `Cosine`, `CosineRestarts`, `Linear`, `OneCycle`,
/// `MultiStep`, `Constant`, `Polynomial`, `Cyclic`, `Swa`, `Lambda`, `Multiplicative` (the
/// order in which the kinds came to the crate).
///
/// `Schedule` is not `Copy`: `MultiStep`'s milestones and the per-group settings are lists
/// of any length, and a [`Lambda`] holds a closure.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// Multiply the rate by `gamma` every `step_size` steps.
    Step {
        /// Period `$k$` (≥ 1).
        step_size: u64,
        /// Factor γ (finite, > 0; PyTorch's default 0.1).
        gamma: f64,
    },
    /// Multiply the rate by `gamma` at each milestone.
    MultiStep {
        /// The steps `$M$` at which the rate drops, in any order; a step listed `$c$` times
        /// multiplies by `$\gamma^c$` (PyTorch counts repeats too).
        milestones: Vec<u64>,
        /// Factor γ (finite, > 0, with `$\gamma^{\lvert M\rvert}$` finite; default 0.1).
        gamma: f64,
    },
    /// A constant factor of the base rate for the first `total_iters` steps, e.g. a gentle
    /// warm-up.
    Constant {
        /// Factor `$f$`, in (0, 1], with `$1/f$` finite (default 1/3).
        factor: f64,
        /// Steps `$n$` at the reduced rate (default 5; 0 keeps the factor for good, as
        /// PyTorch's recursion does).
        total_iters: u64,
    },
    /// Multiply the rate by `gamma` every step.
    Exponential {
        /// Factor γ (finite, > 0).
        gamma: f64,
    },
    /// Polynomial decay to 0 over `total_iters` steps.
    Polynomial {
        /// Steps of the decay `$n$` (≥ 1; default 5).
        total_iters: u64,
        /// Power `$p$` (finite, ≥ 0; default 1, a linear decay).
        power: f64,
    },
    /// Cosine annealing from the base rate to `eta_min` over `t_max` steps.
    Cosine {
        /// Half period `$T$` (≥ 1).
        t_max: u64,
        /// Smallest rate `$\eta_{min}$` (finite, ≥ 0; default 0).
        eta_min: f64,
    },
    /// Cosine annealing restarted at the base rate after `$T_0$`, `$T_0 T_{mult}$`, … steps.
    CosineRestarts {
        /// First period `$T_0$` (≥ 1).
        t_0: u64,
        /// Growth of the period after each restart (≥ 1; default 1).
        t_mult: u64,
        /// Smallest rate `$\eta_{min}$` (finite, ≥ 0; default 0).
        eta_min: f64,
    },
    /// Linear change of a factor of the base rate, e.g. warm-up.
    Linear {
        /// Factor of the first step, in (0, 1] (default 1/3).
        start_factor: f64,
        /// Factor from step `total_iters` on, in [0, 1] (default 1).
        end_factor: f64,
        /// Steps of the change `$n$` (≥ 1; default 5).
        total_iters: u64,
    },
    /// The rate cycling between two bounds (Smith 2017).
    Cyclic(Cyclic),
    /// The one-cycle policy (Smith & Topin 2017).
    OneCycle(OneCycle),
    /// Annealing to a constant rate for stochastic weight averaging (Izmailov et al. 2018),
    /// PyTorch's `torch.optim.swa_utils.SWALR`.
    Swa {
        /// The rate `$\eta_{swa}$` each group anneals to (finite, ≥ 0).
        swa_lr: PerGroup,
        /// Steps of the annealing `$n$` (default 10; 0 sets `swa_lr` at once).
        anneal_epochs: u64,
        /// Cosine or linear annealing (default cosine).
        anneal_strategy: AnnealStrategy,
    },
    /// The base rate times a closure's factor, PyTorch's `LambdaLR`: `$\eta_b \lambda(t, g)$`.
    Lambda(Lambda),
    /// The rate of the step before times a closure's factor, PyTorch's `MultiplicativeLR`:
    /// `$\eta_{t-1} \lambda(t, g)$` from the second step on.
    Multiplicative(Lambda),
}

impl Schedule {
    /// The schedule's name in errors, e.g. `"cosine"` (its serde `kind`).
    pub fn name(&self) -> &'static str {
        match self {
            Schedule::Step { .. } => "step",
            Schedule::MultiStep { .. } => "multistep",
            Schedule::Constant { .. } => "constant",
            Schedule::Exponential { .. } => "exponential",
            Schedule::Polynomial { .. } => "polynomial",
            Schedule::Cosine { .. } => "cosine",
            Schedule::CosineRestarts { .. } => "cosine_restarts",
            Schedule::Linear { .. } => "linear",
            Schedule::Cyclic(_) => "cyclic",
            Schedule::OneCycle(_) => "one_cycle",
            Schedule::Swa { .. } => "swa",
            Schedule::Lambda(_) => "lambda",
            Schedule::Multiplicative(_) => "multiplicative",
        }
    }

    /// Checks that the schedule can run on `groups` groups: every per-group setting has a
    /// value for each, and a lambda has its closure.
    ///
    /// # Errors
    /// [`Error::InvalidSchedule`] naming the setting whose list has another length,
    /// [`Error::LambdaMissing`].
    pub(crate) fn check_ready(&self, groups: usize) -> Result<()> {
        match self {
            Schedule::Cyclic(cyclic) => cyclic.check_groups(self.name(), groups),
            Schedule::OneCycle(one_cycle) => one_cycle.check_groups(self.name(), groups),
            Schedule::Swa { swa_lr, .. } => swa_lr.check_groups(self.name(), "swa_lr", groups),
            Schedule::Lambda(lambda) | Schedule::Multiplicative(lambda) => {
                lambda.check_bound(self.name())
            }
            _ => Ok(()),
        }
    }

    /// The lambda of a `Lambda` or `Multiplicative` schedule.
    pub(crate) fn lambda_mut(&mut self) -> Option<&mut Lambda> {
        match self {
            Schedule::Lambda(lambda) | Schedule::Multiplicative(lambda) => Some(lambda),
            _ => None,
        }
    }

    /// Checks every parameter's range (PyTorch's checks, finiteness, and what would divide
    /// by zero or overflow on some step).
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
            Schedule::MultiStep { ref milestones, gamma } => {
                check_positive(name, "gamma", gamma)?;
                // A step's factor is γ to the power of its repeats, the closed form's γ to the
                // power of the milestones passed: neither may overflow, or a rate of 0 would
                // become 0 · ∞.
                let ok = gamma.powf(milestones.len() as f64).is_finite();
                let requirement = "such that gamma ^ (number of milestones) is finite";
                require(ok, name, "gamma", gamma, requirement)
            }
            Schedule::Constant { factor, .. } => {
                let ok = factor > 0.0 && factor <= 1.0 && (1.0 / factor).is_finite();
                require(ok, name, "factor", factor, "in (0, 1], with 1 / factor finite")
            }
            Schedule::Exponential { gamma } => check_positive(name, "gamma", gamma),
            Schedule::Polynomial { total_iters, power } => {
                check_count(name, "total_iters", total_iters)?;
                check_non_negative(name, "power", power)
            }
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
            Schedule::Cyclic(ref cyclic) => cyclic.validate(name),
            Schedule::OneCycle(ref one_cycle) => one_cycle.validate(name),
            Schedule::Swa { ref swa_lr, .. } => swa_lr.validate(name, "swa_lr", check_non_negative),
            // The closure's factors are checked as it returns them.
            Schedule::Lambda(_) | Schedule::Multiplicative(_) => Ok(()),
        }
    }
}
