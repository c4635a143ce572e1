//! A [`Schedule`] in serde formats: tagged by a `kind` key where the format is
//! human-readable (JSON, configuration files), by the variant's index elsewhere (postcard,
//! which cannot read a tag among the fields).

use serde::{Deserialize, Serialize};

use super::{AnnealStrategy, Cyclic, Lambda, OneCycle, PerGroup, Schedule};

crate::serde_form::dual_form!(Schedule);

#[derive(Serialize, Deserialize)]
#[serde(remote = "Schedule", tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum Tagged {
    Step {
        step_size: u64,
        #[serde(default = "defaults::gamma")]
        gamma: f64,
    },
    #[serde(rename = "multistep")]
    MultiStep {
        milestones: Vec<u64>,
        #[serde(default = "defaults::gamma")]
        gamma: f64,
    },
    Constant {
        #[serde(default = "defaults::third")]
        factor: f64,
        #[serde(default = "defaults::total_iters")]
        total_iters: u64,
    },
    Exponential {
        gamma: f64,
    },
    Polynomial {
        #[serde(default = "defaults::total_iters")]
        total_iters: u64,
        #[serde(default = "defaults::one")]
        power: f64,
    },
    Cosine {
        t_max: u64,
        #[serde(default)]
        eta_min: f64,
    },
    CosineRestarts {
        t_0: u64,
        #[serde(default = "defaults::t_mult")]
        t_mult: u64,
        #[serde(default)]
        eta_min: f64,
    },
    Linear {
        #[serde(default = "defaults::third")]
        start_factor: f64,
        #[serde(default = "defaults::one")]
        end_factor: f64,
        #[serde(default = "defaults::total_iters")]
        total_iters: u64,
    },
    Cyclic(Cyclic),
    OneCycle(OneCycle),
    Swa {
        swa_lr: PerGroup,
        #[serde(default = "defaults::anneal_epochs")]
        anneal_epochs: u64,
        #[serde(default)]
        anneal_strategy: AnnealStrategy,
    },
    Lambda(Lambda),
    Multiplicative(Lambda),
}

/// The variants in the order of their indices, which data written by earlier versions holds:
/// new kinds go at the end.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Schedule", rename_all = "snake_case", deny_unknown_fields)]
enum Indexed {
    Step { step_size: u64, gamma: f64 },
    Exponential { gamma: f64 },
    Cosine { t_max: u64, eta_min: f64 },
    CosineRestarts { t_0: u64, t_mult: u64, eta_min: f64 },
    Linear { start_factor: f64, end_factor: f64, total_iters: u64 },
    OneCycle(OneCycle),
    MultiStep { milestones: Vec<u64>, gamma: f64 },
    Constant { factor: f64, total_iters: u64 },
    Polynomial { total_iters: u64, power: f64 },
    Cyclic(Cyclic),
    Swa { swa_lr: PerGroup, anneal_epochs: u64, anneal_strategy: AnnealStrategy },
    Lambda(Lambda),
    Multiplicative(Lambda),
}

/// PyTorch's defaults.
mod defaults {
    pub(super) fn gamma() -> f64 {
        0.1
    }
    pub(super) fn t_mult() -> u64 {
        1
    }
    pub(super) fn third() -> f64 {
        1.0 / 3.0
    }
    pub(super) fn one() -> f64 {
        1.0
    }
    pub(super) fn total_iters() -> u64 {
        5
    }
    pub(super) fn anneal_epochs() -> u64 {
        10
    }
}
