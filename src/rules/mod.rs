//! The update rules, one module each: hyperparameters with their defaults, per-step
//! coefficients and per-element math.

mod adadelta;
mod adagrad;
pub(crate) mod adam;
mod adamax;
mod adamw;
mod gradient;
pub(crate) mod momentum;
mod nadam;
mod nesterov;
mod radam;
mod rmsprop;
mod sgd;

pub use adadelta::Adadelta;
pub use adagrad::Adagrad;
pub use adam::Adam;
pub use adamax::Adamax;
pub use adamw::AdamW;
pub use momentum::Momentum;
pub use nadam::NAdam;
pub use nesterov::Nesterov;
pub use radam::RAdam;
pub use rmsprop::RmsProp;
pub use sgd::Sgd;
