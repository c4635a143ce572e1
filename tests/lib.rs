//! The integration tests, one binary with a module per concern.

#[path = "../examples/support/case.rs"]
#[allow(dead_code)]
mod case;

mod alloc;
mod averaging;
mod checkpoint;
mod common;
mod compact;
mod compact_reference;
mod errors;
mod files;
mod flat;
mod freeze;
mod hand;
mod hostile;
mod inspect;
mod kernels;
mod layouts;
mod lbfgs;
mod model;
mod model_params;
mod multi_steps;
mod options;
mod patterns;
mod prodigy;
mod reference;
mod report;
mod schedule_free;
mod schedules;
mod schedules_lambda;
mod schedules_v2;
mod shard;
mod surgery;
mod training;
mod training_state;
mod v1_checkpoints;
mod v2_checkpoints;
mod v4_checkpoints;
