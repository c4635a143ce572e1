//! Gradient-descent optimizers for [`ndarray`], exact to the bit and fast.
//!
//! Each update rule ([`Sgd`], [`Momentum`], [`Nesterov`], [`Adagrad`], [`Adadelta`],
//! [`RmsProp`], [`Adam`], [`AdamW`], [`Adamax`], [`NAdam`], [`RAdam`], [`Lamb`],
//! [`Adafactor`], [`Lion`], [`Asgd`], [`Rprop`], [`ScheduleFreeAdamW`], [`ScheduleFreeSgd`],
//! [`Prodigy`]) steps named parameter tensors of any shape, dimension and memory layout, in
//! `f32` or `f64`, through one [`Optimizer`]; [`Muon`] steps the matrices, in a group of its own
//! beside another rule for the other tensors ([`Rule`]). For full-batch problems, [`Lbfgs`]
//! is PyTorch's L-BFGS over a whole model, driven by a closure that evaluates the loss.
//! State lives under each tensor's name, created on its first step; [`ParamGroup`]s give sets
//! of tensors their own hyperparameters, as PyTorch's param groups do. A whole model steps in
//! one call, [`Optimizer::step_model`], from a struct with `#[derive(Parameters)]` (whose
//! fields name its tensors, `encoder.layers.0.weight`), a map or a list of named arrays
//! ([`model`]). Many small tensors (biases, norms) kept in one [`FlatParams`] block step as
//! one tensor ([`Optimizer::step_flat`]), bit for bit as they would one by one, without each
//! tensor's bookkeeping.
//!
//! ```
//! use ndarray::{Array1, Array2, Axis, array};
//! use ndarray_optim::{Adam, Optimizer};
//!
//! // Fit y = W x for one x by least squares: the gradient of ½‖Wx − y‖² is (Wx − y) xᵀ.
//! let x = array![1.0_f64, 2.0, 3.0];
//! let y = array![1.0, -1.0];
//! let mut w = Array2::<f64>::zeros((2, 3));
//! let mut opt = Optimizer::new(Adam { lr: 0.05, ..Adam::default() })?;
//! for _ in 0..500 {
//!     let residual: Array1<f64> = w.dot(&x) - &y;
//!     let column = residual.view().insert_axis(Axis(1));
//!     let grad = column.dot(&x.view().insert_axis(Axis(0)));
//!     opt.step("w", &mut w, &grad)?;
//! }
//! assert!((w.dot(&x) - &y).iter().all(|r| r.abs() < 1e-3));
//! # Ok::<(), ndarray_optim::Error>(())
//! ```
//!
//! | rule | update | state per element | defaults |
//! | --- | --- | --- | --- |
//! | [`Sgd`] | `$\theta \leftarrow \theta - \eta g$` | 0 | η 0.01 |
//! | [`Momentum`] | `$b \leftarrow \gamma b + g;\ \theta \leftarrow \theta - \eta b$` | 1 | η 0.01, γ 0.9 |
//! | [`Nesterov`] | `$b \leftarrow \gamma b + g;\ \theta \leftarrow \theta - \eta (g + \gamma b)$` | 1 | η 0.01, γ 0.9 |
//! | [`Adagrad`] | `$G \leftarrow G + g^2;\ \theta \leftarrow \theta - \eta g / \sqrt{G + \epsilon}$` | 1 | η 0.01, ε 1e-8 |
//! | [`Adadelta`] | see its page | 2 | η 1, ρ 0.9, ε 1e-6 |
//! | [`RmsProp`] | `$s \leftarrow \rho s + (1-\rho) g^2;\ \theta \leftarrow \theta - \eta g / \sqrt{s + \epsilon}$` | 1 | η 0.001, ρ 0.9, ε 1e-8 |
//! | [`Adam`] | see its page | 2 (3 with `amsgrad`) | η 0.001, β₁ 0.9, β₂ 0.999, ε 1e-8 |
//! | [`AdamW`] | Adam after `$\theta \leftarrow \theta(1 - \eta\lambda)$` | 2 (3 with `amsgrad`) | as Adam, λ 0.01 |
//! | [`Adamax`] | `$u \leftarrow \max(\beta_2 u, \lvert g\rvert + \epsilon);\ \theta \leftarrow \theta - \bigl(\eta / (1-\beta_1^t)\bigr)\, m / u$` | 2 | η 0.002, β₁ 0.9, β₂ 0.999, ε 1e-8 |
//! | [`NAdam`] | see its page | 2, and 1 scalar | η 0.002, β₁ 0.9, β₂ 0.999, ε 1e-8, ψ 0.004 |
//! | [`RAdam`] | see its page | 2 | η 0.001, β₁ 0.9, β₂ 0.999, ε 1e-8 |
//! | [`Lamb`] | Adam's direction `$u$` (+ λθ), times `$\lVert\theta\rVert / \lVert u\rVert$` per tensor | 2 | η 0.001, β₁ 0.9, β₂ 0.999, ε 1e-6 |
//! | [`Adafactor`] | see its page | row and column statistics (1 for 0-D and 1-D tensors) | η 0.01, `$c$` −0.8, ε₂ 1e-3, `$d$` 1 |
//! | [`Muon`] | `$\theta \leftarrow \theta(1 - \eta\lambda) - \eta\, r\, \mathrm{NS}_k(\text{Nesterov momentum})$`, matrices only | 1 | η 0.001, λ 0.1, μ 0.95, k 5 |
//! | [`Lion`] | `$\theta \leftarrow \theta - \eta\, \operatorname{sign}(\beta_1 m + (1-\beta_1) g)$`, then `$m \leftarrow \beta_2 m + (1-\beta_2) g$` | 1 | η 1e-4, β₁ 0.9, β₂ 0.99, λ 1e-3 (decoupled) |
//! | [`Asgd`] | `$\theta \leftarrow \theta(1 - \lambda_d \eta_t) - \eta_t g$`, `$\eta_t$` decaying; average `$\bar\theta$` kept | 1, and 2 scalars | η 0.01, λ_d 1e-4, α 0.75, t₀ 1e6 |
//! | [`Rprop`] | `$\theta \leftarrow \theta - \operatorname{sign}(g)\,\delta$`, δ grown or shrunk by the sign agreement of `$g$` | 2 | δ₀ 0.01, η₋ 0.5, η₊ 1.2, δ ∈ [1e-6, 50] |
//! | [`ScheduleFreeAdamW`] | Adam's normalised gradient `$d$`; `$y \leftarrow \operatorname{lerp}(y, z, c_{t+1}) + \gamma_t(\beta_1(1 - c_{t+1}) - 1)\, d;\ z \leftarrow z - \gamma_t d$`; the model is evaluated at the average `$x$` ([`schedule_free`]) | 2, and 3 scalars | η 0.0025, β₁ 0.9, β₂ 0.999, ε 1e-8, warmup 0, r 0, p 2 |
//! | [`ScheduleFreeSgd`] | the same with `$d = g$` | 1, and 3 scalars | η 1, β 0.9, warmup 0, r 0, p 2 |
//! | [`Prodigy`] | Adam with step size `$d\,\eta$`, `$d$` estimated from every tensor of the step ([`step_all`](Optimizer::step_all)) | 4 (3 with β₁ = 0), and 4 shared scalars | η 1, β₁ 0.9, β₂ 0.999, β₃ `$\sqrt{\beta_2}$`, ε 1e-8, `$d_0$` 1e-6 |
//!
//! Every rule also has its reference's options with its defaults: `weight_decay` (L2, λθ
//! added to the gradient; decoupled in [`AdamW`] and [`Adafactor`] and optionally in [`NAdam`]
//! and [`RAdam`]; none in [`Rprop`]; in [`Lamb`], as optax's, added to the direction before the trust ratio) and
//! `maximize` (PyTorch's rules), and per rule `dampening` ([`Momentum`]), `lr_decay` and
//! `initial_accumulator_value` ([`Adagrad`]), `momentum` and `centered` ([`RmsProp`]),
//! `amsgrad` ([`Adam`], [`AdamW`]), `momentum_decay` ([`NAdam`]). Options at their defaults
//! leave a rule's arithmetic exactly as without them. [`Lion`] follows optax: decoupled
//! `weight_decay`, no `maximize`.
//!
//! Around the rules: learning-rate [`schedule`]s as PyTorch's schedulers compute them,
//! gradient [`Clip`]ping fused into the update, a [`NonFinite`] gradient policy, group
//! assignment by name [`pattern`]s, [frozen](Optimizer::freeze) groups, weight averaging
//! ([`AveragedModel`]: PyTorch's EMA and SWA, optax's `ema`) and gradient accumulation
//! ([`MultiSteps`], optax's).
//!
//! The whole state saves and restores bit for bit ([`checkpoint`]: any serde format, crash-safe
//! files, load reports against a changed model, [`TensorView`] introspection), and can be
//! sharded across data-parallel ranks ([`shard`]).
//!
//! Every elementwise rule runs through one fused kernel: a single pass over parameter,
//! gradient and state per step, on flat slices when the arrays are contiguous in one memory
//! order (a vector loop compiled for SSE2, AVX2 and AVX-512 and picked at run time, split over
//! threads with the `rayon` feature) and through [`ndarray::Zip`] otherwise, with the same
//! arithmetic on every path, so results never depend on layout, CPU or thread count. The
//! rules that need whole tensors ([`Lamb`]'s norms, [`Adafactor`]'s row and column
//! statistics) reduce in logical order ([`sum_in_order`]), with the same guarantee.

#![deny(unsafe_code)]
#![deny(missing_docs)]

mod average;
mod buffer;
mod check;
pub mod checkpoint;
mod clip;
pub mod compact;
mod element;
mod error;
mod exact_sum;
mod flat;
mod guard;
mod inspect;
mod kernel;
mod lbfgs;
pub mod model;
mod multi_steps;
mod optimizer;
pub mod pattern;
mod registry;
mod report;
pub mod rule;
pub mod rules;
pub mod schedule;
#[cfg(feature = "serde")]
mod serde_form;
pub mod shard;
mod slots;

pub use average::{AveragedModel, Averaging};
pub use buffer::{AlignedBuffer, HUGE_PAGE};
pub use checkpoint::Checkpoint;
pub use clip::Clip;
pub use compact::StatePrecision;
pub use element::Element;
pub use error::{Error, Result};
pub use flat::{FlatParams, FlatTensor, FlatTensorMut};
pub use guard::{NonFinite, StepOutcome};
pub use inspect::TensorView;
#[doc(hidden)]
pub use kernel::{KernelPath, last_kernel_path, with_kernel_path};
pub use kernel::{Split, Stage, StateSlots, TensorStep, sum_in_order};
pub use lbfgs::{Lbfgs, LbfgsOptions, LineSearch};
pub use model::Parameters;
pub use multi_steps::{MultiStepOutcome, MultiSteps};
/// `#[derive(Parameters)]`: see [`model`] and [`Parameters`].
#[cfg(feature = "derive")]
pub use ndarray_optim_derive::Parameters;
pub use optimizer::{Optimizer, ParamGrad};
pub use registry::{DEFAULT_GROUP, ParamGroup};
pub use rule::{EpsPlacement, UpdateRule};
pub use rules::{
    Adadelta, Adafactor, Adagrad, Adam, AdamW, Adamax, AdjustLr, Asgd, Lamb, Lion, Momentum, Muon,
    NAdam, Nesterov, Prodigy, RAdam, RmsProp, Rprop, Rule, ScheduleFreeAdamW, ScheduleFreeSgd, Sgd,
    schedule_free,
};
pub use shard::{ShardPlan, ShardedOptimizer};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
