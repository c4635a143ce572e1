//! [`Lambda`]: the user's closure behind PyTorch's `LambdaLR` and `MultiplicativeLR`, named so
//! that a restored scheduler can be given it again.

use core::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The factor of a [`Lambda`]: `f(step, group)`, with `step` the scheduler's count (PyTorch's
/// `last_epoch`) and `group` the index of the parameter group.
type Closure = dyn Fn(u64, usize) -> f64 + Send + Sync;

/// A named closure `$\lambda(t, g)$` of the step `$t$` and the group index `$g$`, the factor
/// of [`Schedule::Lambda`](super::Schedule::Lambda) (PyTorch's `LambdaLR`) and
/// [`Schedule::Multiplicative`](super::Schedule::Multiplicative) (`MultiplicativeLR`).
///
/// `$t$` is PyTorch's `last_epoch`: 0 for the first optimizer step, then 1, 2, … (a schedule
/// in a sequence counts from 0 again when it starts). PyTorch takes one function for all
/// groups or a list of one per group; the closure covers both, e.g.
/// `|t, g| [0.95_f64, 0.9][g].powf(t as f64)`. Inside [`LrScheduler::per_group`] a schedule
/// runs on its group alone, so `$g$` is 0 there. The factor must be finite and ≥ 0 (0 is
/// allowed: PyTorch's `epoch // 30` starts at 0); anything else stops the step with
/// [`Error::InvalidLambdaFactor`], changing nothing. The closure should be pure: a step may
/// call it more than once with the same arguments, and a group that joins a schedule late is
/// brought into phase by calling it for every step so far.
///
/// # Checkpoints
///
/// A closure cannot be serialized. In serde formats a lambda is its name alone
/// (`{"kind": "lambda", "name": "warmup"}`), and a deserialized one has no closure: a
/// restored [`LrScheduler`] refuses to step with [`Error::LambdaMissing`], naming the
/// schedule, until [`LrScheduler::set_lambda`] gives the closure again — typically the
/// same function that built the run:
///
/// ```
/// use ndarray_optim::schedule::{Lambda, LrScheduler, Schedule};
/// use ndarray_optim::{Error, Optimizer, Sgd};
///
/// fn warmup() -> Lambda {
///     Lambda::new("warmup", |step, _group| ((step + 1) as f64 / 10.0).min(1.0))
/// }
///
/// let mut opt = Optimizer::<_, f64>::new(Sgd { lr: 0.5, ..Sgd::default() })?;
/// let mut scheduler = LrScheduler::new(&mut opt, Schedule::Lambda(warmup()))?;
/// scheduler.step(&mut opt)?;
/// let saved = serde_json::to_string(&(&opt, &scheduler)).unwrap();
///
/// let (mut opt, mut scheduler): (Optimizer<Sgd, f64>, LrScheduler) =
///     serde_json::from_str(&saved).unwrap();
/// let err = scheduler.step(&mut opt).unwrap_err();
/// let missing = Error::LambdaMissing { schedule: "lambda", name: "warmup".to_owned() };
/// assert_eq!(err, missing);
/// scheduler.set_lambda(warmup())?;
/// scheduler.step(&mut opt)?;
/// assert_eq!(opt.group("default")?.lr(), 0.5 * 0.3);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
///
/// Why a refusal rather than a restoring constructor that takes the closures: a scheduler
/// is restored by serde wherever the run keeps it (next to the optimizer, in a training-state
/// file's extras, in a struct of your own), where no argument can be passed. The refusal
/// comes at the first step, before anything changes, so a forgotten closure cannot go
/// unnoticed; phases that share a name share the closure.
///
/// Two lambdas are equal if their names are, and both have no closure or the same one
/// (clones of one `Lambda` share it; closures cannot be compared otherwise). `Debug` shows
/// the name and whether the closure is there.
#[derive(Clone)]
pub struct Lambda {
    name: String,
    closure: Option<Arc<Closure>>,
}

impl Lambda {
    /// The closure `f(step, group)` under `name`, the name by which a restored scheduler is
    /// given it again ([`LrScheduler::set_lambda`]).
    pub fn new(
        name: impl Into<String>,
        f: impl Fn(u64, usize) -> f64 + Send + Sync + 'static,
    ) -> Self {
        Lambda { name: name.into(), closure: Some(Arc::new(f)) }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the closure is there (it is not in a deserialized lambda until
    /// [`LrScheduler::set_lambda`] gives it).
    pub fn has_closure(&self) -> bool {
        self.closure.is_some()
    }

    /// Takes the closure of `other`.
    pub(super) fn bind(&mut self, other: &Lambda) {
        self.closure.clone_from(&other.closure);
    }

    /// The closure.
    ///
    /// # Errors
    /// [`Error::LambdaMissing`] without one.
    fn closure(&self, schedule: &'static str) -> Result<&Closure> {
        let missing = || Error::LambdaMissing { schedule, name: self.name.clone() };
        self.closure.as_deref().ok_or_else(missing)
    }

    /// Fails with [`Error::LambdaMissing`] without a closure.
    pub(super) fn check_bound(&self, schedule: &'static str) -> Result<()> {
        self.closure(schedule).map(drop)
    }

    /// The factor at `step` for the group at `group`: finite and ≥ 0.
    ///
    /// # Errors
    /// [`Error::LambdaMissing`] without a closure, [`Error::InvalidLambdaFactor`] for a
    /// factor that is not finite and ≥ 0.
    pub(super) fn factor(&self, schedule: &'static str, step: u64, group: usize) -> Result<f64> {
        let factor = self.closure(schedule)?(step, group);
        if factor.is_finite() && factor >= 0.0 {
            Ok(factor)
        } else {
            let name = self.name.clone();
            Err(Error::InvalidLambdaFactor { schedule, name, step, group, factor })
        }
    }

    /// A lambda as deserialized: its name, no closure.
    #[cfg(feature = "serde")]
    fn unbound(name: String) -> Self {
        Lambda { name, closure: None }
    }
}

impl PartialEq for Lambda {
    fn eq(&self, other: &Self) -> bool {
        let same = match (&self.closure, &other.closure) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        same && self.name == other.name
    }
}

impl fmt::Debug for Lambda {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let closure = if self.closure.is_some() { "<closure>" } else { "<missing>" };
        f.debug_struct("Lambda").field("name", &self.name).field("closure", &closure).finish()
    }
}

/// In serde formats, the name alone: `{"name": "warmup"}`.
#[cfg(feature = "serde")]
mod stored {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Lambda;

    #[derive(Serialize, Deserialize)]
    #[serde(rename = "Lambda", deny_unknown_fields)]
    struct Named<N> {
        name: N,
    }

    impl Serialize for Lambda {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            Named { name: self.name.as_str() }.serialize(serializer)
        }
    }

    impl<'de> Deserialize<'de> for Lambda {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            Named::<String>::deserialize(deserializer).map(|named| Lambda::unbound(named.name))
        }
    }
}

#[cfg(doc)]
use super::LrScheduler;
