//! The update rules, one module each: hyperparameters with their defaults, per-step
//! coefficients and per-element math.

mod adadelta;
mod adagrad;
mod adam;
pub(crate) mod momentum;
mod nesterov;
mod rmsprop;
mod sgd;

pub use adadelta::Adadelta;
pub use adagrad::Adagrad;
pub use adam::Adam;
pub use momentum::Momentum;
pub use nesterov::Nesterov;
pub use rmsprop::RmsProp;
pub use sgd::Sgd;
