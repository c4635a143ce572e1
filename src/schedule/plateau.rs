//! [`ReduceLrOnPlateau`]: a schedule driven by a metric rather than by the step count.

use crate::check::{check_decay, check_non_negative, require};
use crate::element::Element;
use crate::error::Result;
use crate::optimizer::Optimizer;
use crate::rule::UpdateRule;

/// Whether a smaller or a larger metric is better.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum PlateauMode {
    /// A loss: improvement is a decrease (PyTorch's default `"min"`).
    #[default]
    Min,
    /// An accuracy: improvement is an increase.
    Max,
}

/// How far a metric must pass the best one to count as an improvement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum ThresholdMode {
    /// Beyond `best · (1 ∓ threshold)` (PyTorch's default `"rel"`).
    #[default]
    Rel,
    /// Beyond `best ∓ threshold`.
    Abs,
}

/// PyTorch's `ReduceLROnPlateau`: multiplies every group's rate by `factor` once the metric
/// has not improved for more than `patience` calls of [`step`](Self::step).
///
/// Each call compares the metric with the best so far ([`PlateauMode`], [`ThresholdMode`]);
/// an improvement resets the count of bad calls. When the count exceeds `patience`, every
/// group's rate `$\eta$` becomes `$\max(\eta \cdot \text{factor}, \text{min\_lr})$` — unless that
/// changes it by no more than `eps` — and the next `cooldown` calls count no bad calls.
///
/// ```
/// use ndarray_optim::schedule::ReduceLrOnPlateau;
/// use ndarray_optim::{Optimizer, Sgd};
///
/// let mut opt = Optimizer::<_, f64>::new(Sgd { lr: 1.0, ..Sgd::default() })?;
/// let mut plateau = ReduceLrOnPlateau { patience: 1, factor: 0.5, ..ReduceLrOnPlateau::default() };
/// for loss in [3.0, 2.0, 2.5, 2.5] {
///     plateau.step(&mut opt, loss)?;
/// }
/// assert_eq!(opt.group("default")?.lr(), 0.5); // two calls without improvement
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ReduceLrOnPlateau {
    /// Whether smaller or larger is better (default `Min`).
    pub mode: PlateauMode,
    /// The factor applied to the rate, in [0, 1) (default 0.1).
    pub factor: f64,
    /// Calls without improvement tolerated before a reduction (default 10).
    pub patience: u64,
    /// The margin an improvement must pass (finite, ≥ 0; default 1e-4).
    pub threshold: f64,
    /// Whether the margin is relative or absolute (default `Rel`).
    pub threshold_mode: ThresholdMode,
    /// Calls after a reduction during which bad calls are not counted (default 0).
    pub cooldown: u64,
    /// The smallest rate (finite, ≥ 0; default 0), for every group.
    pub min_lr: f64,
    /// Reductions smaller than this are not made (finite, ≥ 0; default 1e-8).
    pub eps: f64,
    /// Position: the best metric so far, `None` before the first call (so that any
    /// setting of `mode` starts right: a first metric is always an improvement). In JSON an
    /// infinite best is the string `"inf"` or `"-inf"`, since JSON writes infinities as
    /// `null`, which would read back as `None`.
    #[cfg_attr(feature = "serde", serde(with = "best_metric"))]
    pub best: Option<f64>,
    /// Position: calls without improvement since the last improvement or reduction.
    pub num_bad_epochs: u64,
    /// Position: cooldown calls left.
    pub cooldown_counter: u64,
}

/// [`ReduceLrOnPlateau::best`] in human-readable formats: a number, `null` before the first
/// call, or `"inf"` / `"-inf"`; elsewhere (postcard) as an optional float.
#[cfg(feature = "serde")]
mod best_metric {
    use serde::de::{self, Unexpected};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Readable {
        Number(f64),
        Named(String),
    }

    pub(super) fn serialize<S: Serializer>(
        best: &Option<f64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match *best {
            Some(value) if value.is_infinite() && serializer.is_human_readable() => {
                serializer.serialize_some(if value > 0.0 { "inf" } else { "-inf" })
            }
            _ => best.serialize(serializer),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<f64>, D::Error> {
        if !deserializer.is_human_readable() {
            return Option::<f64>::deserialize(deserializer);
        }
        Ok(match Option::<Readable>::deserialize(deserializer)? {
            None => None,
            Some(Readable::Number(value)) => Some(value),
            Some(Readable::Named(name)) => Some(match name.as_str() {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                _ => {
                    let expected = &"a number, \"inf\" or \"-inf\"";
                    return Err(de::Error::invalid_value(Unexpected::Str(&name), expected));
                }
            }),
        })
    }
}

impl Default for ReduceLrOnPlateau {
    /// PyTorch's defaults, in `Min` mode.
    fn default() -> Self {
        ReduceLrOnPlateau {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
            best: None,
            num_bad_epochs: 0,
            cooldown_counter: 0,
        }
    }
}

impl ReduceLrOnPlateau {
    /// A fresh one in `mode` with PyTorch's other defaults; the same as
    /// `ReduceLrOnPlateau { mode, ..ReduceLrOnPlateau::default() }`.
    pub fn new(mode: PlateauMode) -> Self {
        ReduceLrOnPlateau { mode, ..ReduceLrOnPlateau::default() }
    }

    /// Checks the settings' ranges and that the position is one stepping reaches.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`](crate::Error::InvalidHyperparameter) with rule `"plateau"` and the key out of range (a
    /// `best` of NaN, a `num_bad_epochs` above `patience` or a `cooldown_counter` above
    /// `cooldown` among them).
    pub fn validate(&self) -> Result<()> {
        const OWNER: &str = "plateau";
        check_decay(OWNER, "factor", self.factor)?;
        for (key, value) in
            [("threshold", self.threshold), ("min_lr", self.min_lr), ("eps", self.eps)]
        {
            check_non_negative(OWNER, key, value)?;
        }
        if let Some(best) = self.best {
            require(!best.is_nan(), OWNER, "best", best, "a number (not NaN)")?;
        }
        let (bad, cooling) = (self.num_bad_epochs, self.cooldown_counter);
        require(bad <= self.patience, OWNER, "num_bad_epochs", bad as f64, "<= patience")?;
        require(cooling <= self.cooldown, OWNER, "cooldown_counter", cooling as f64, "<= cooldown")
    }

    /// Whether `metric` improves on the best so far; before the first metric, any number
    /// does (PyTorch's comparison with the worst value of `mode`, ±∞).
    fn is_better(&self, metric: f64) -> bool {
        let Some(best) = self.best else { return !metric.is_nan() };
        match (self.mode, self.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => metric < best * (1.0 - self.threshold),
            (PlateauMode::Min, ThresholdMode::Abs) => metric < best - self.threshold,
            (PlateauMode::Max, ThresholdMode::Rel) => metric > best * (self.threshold + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => metric > best + self.threshold,
        }
    }

    /// Feeds the metric of the latest epoch (or step), reducing the rates when it has
    /// stalled.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`](crate::Error::InvalidHyperparameter) for settings out of range; nothing changes then.
    pub fn step<R: UpdateRule, A: Element>(
        &mut self,
        optimizer: &mut Optimizer<R, A>,
        metric: f64,
    ) -> Result<()> {
        self.validate()?;
        let mut next = *self;
        if next.is_better(metric) {
            next.best = Some(metric);
            next.num_bad_epochs = 0;
        } else {
            // `validate` keeps the count at most `patience`, so this overflows only for a
            // patience of `u64::MAX`; the count then stays there (2^64 calls are out of
            // reach anyway).
            next.num_bad_epochs = next.num_bad_epochs.saturating_add(1);
        }
        if next.cooldown_counter > 0 {
            next.cooldown_counter -= 1;
            next.num_bad_epochs = 0;
        }
        if next.num_bad_epochs > next.patience {
            let (factor, min_lr, eps) = (next.factor, next.min_lr, next.eps);
            optimizer.set_lrs_with(|_, lr| {
                let reduced = (lr * factor).max(min_lr);
                if lr - reduced > eps { reduced } else { lr }
            })?;
            next.cooldown_counter = next.cooldown;
            next.num_bad_epochs = 0;
        }
        *self = next;
        Ok(())
    }
}
