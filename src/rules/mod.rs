//! The update rules, one module each: hyperparameters with their defaults, per-step
//! coefficients and per-element math.

mod adadelta;
mod adagrad;
mod adam;
pub(crate) mod momentum;
mod nesterov;
mod rmsprop;
mod sgd;

pub use adadelta::{Adadelta, AdadeltaStep};
pub use adagrad::{Adagrad, AdagradStep};
pub use adam::{Adam, AdamStep};
pub use momentum::{Momentum, MomentumStep};
pub use nesterov::Nesterov;
pub use rmsprop::{RmsProp, RmsPropStep};
pub use sgd::{Sgd, SgdStep};
