//! The range checks of every setting: rules' hyperparameters, schedules, clipping and the
//! plateau rule. Each failure is one [`Error::InvalidHyperparameter`] naming the owner (a
//! rule, a schedule, `"clip"`, `"plateau"`), the key, the value and what it must be.

use crate::error::{Error, Result};

/// Fails unless `ok`, with `requirement` saying what `key` must be.
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given owner and key.
pub fn require(
    ok: bool,
    owner: &'static str,
    key: &'static str,
    value: f64,
    requirement: &'static str,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidHyperparameter { rule: owner, key, value, requirement })
    }
}

/// Checks a learning rate: finite and ≥ 0. A rate of 0 freezes a group, as in PyTorch.
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with key `lr`.
pub fn check_lr(owner: &'static str, lr: f64) -> Result<()> {
    check_non_negative(owner, "lr", lr)
}

/// Checks a decay factor (β, ρ, momentum, a plateau's factor): in [0, 1).
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given key.
pub fn check_decay(owner: &'static str, key: &'static str, value: f64) -> Result<()> {
    require((0.0..1.0).contains(&value), owner, key, value, "in [0, 1)")
}

/// Checks a value that must be finite and ≥ 0, such as a weight decay or an ε.
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given key.
pub fn check_non_negative(owner: &'static str, key: &'static str, value: f64) -> Result<()> {
    require(value.is_finite() && value >= 0.0, owner, key, value, "finite and >= 0")
}

/// Checks a value that must be finite and > 0, such as a clipping bound or a schedule's
/// factor.
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given key.
pub fn check_positive(owner: &'static str, key: &'static str, value: f64) -> Result<()> {
    require(value.is_finite() && value > 0.0, owner, key, value, "finite and > 0")
}

/// Checks a fraction such as SGD's dampening: in [0, 1].
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given key.
pub fn check_unit(owner: &'static str, key: &'static str, value: f64) -> Result<()> {
    require((0.0..=1.0).contains(&value), owner, key, value, "in [0, 1]")
}

/// Checks a smoothing term ε: finite and ≥ 0.
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given key.
pub fn check_eps(owner: &'static str, key: &'static str, value: f64) -> Result<()> {
    check_non_negative(owner, key, value)
}

/// Checks a count such as a schedule's period: at least 1.
///
/// # Errors
/// [`Error::InvalidHyperparameter`] with the given key.
pub fn check_count(owner: &'static str, key: &'static str, value: u64) -> Result<()> {
    require(value >= 1, owner, key, value as f64, ">= 1")
}
