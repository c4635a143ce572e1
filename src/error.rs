//! The crate's one error type.

use core::fmt;

use crate::rules::schedule_free::Mode;

/// Everything that can go wrong in this crate.
///
/// A call that returns an error has changed nothing: parameters, state buffers, step counts
/// and hyperparameters are exactly as they were before the call.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The gradient handed to a step does not have the parameter's shape.
    GradientShape {
        /// Name of the parameter tensor.
        param: String,
        /// Shape of the parameter.
        param_shape: Vec<usize>,
        /// Shape of the gradient.
        grad_shape: Vec<usize>,
    },
    /// A registered parameter was stepped (averaged, accumulated) with a tensor of another
    /// shape than its state has.
    ShapeChanged {
        /// Name of the parameter tensor.
        param: String,
        /// Shape the optimizer state was created with.
        registered: Vec<usize>,
        /// Shape of the tensor passed now.
        given: Vec<usize>,
    },
    /// A hyperparameter is outside its valid range.
    InvalidHyperparameter {
        /// The update rule, e.g. `"adam"`.
        rule: &'static str,
        /// The hyperparameter's key, e.g. `"beta1"`.
        key: &'static str,
        /// The rejected value.
        value: f64,
        /// What the value must satisfy, e.g. `"finite and > 0"`.
        requirement: &'static str,
    },
    /// No parameter group has this name.
    UnknownGroup {
        /// The group name that was asked for.
        group: String,
    },
    /// A parameter group with this name exists already.
    DuplicateGroup {
        /// The group name.
        group: String,
    },
    /// New hyperparameters would need other state buffers (or per-tensor scalars) than a
    /// stepped tensor has (e.g. switching an option that adds a buffer on in mid-training).
    StateBuffersChange {
        /// A tensor whose state would not fit.
        param: String,
        /// The buffers it has.
        current: &'static [&'static str],
        /// The buffers the new hyperparameters need.
        requested: &'static [&'static str],
    },
    /// New hyperparameters of another rule would keep state of other shapes than a tensor
    /// has (e.g. Adafactor's row and column statistics).
    StateLayoutChange {
        /// A tensor whose state would not fit.
        param: String,
        /// The rule whose state it has.
        current: &'static str,
        /// The rule of the new hyperparameters.
        requested: &'static str,
    },
    /// A group's rule cannot step a tensor of this shape, e.g. Muon's matrices: put the tensor
    /// in a group with another rule.
    UnsupportedShape {
        /// The tensor.
        param: String,
        /// The rule of its group.
        rule: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// What the rule steps.
        requirement: &'static str,
    },
    /// A checkpoint is not of this crate's format, or of a format version this build does not
    /// read.
    UnsupportedCheckpoint {
        /// The format name found (this crate writes `"ndarray-optim"`).
        format: String,
        /// The format version found.
        version: u32,
        /// The newest version this build reads ([`VERSION`](crate::checkpoint::VERSION)).
        newest: u32,
    },
    /// A checkpoint holds the state of another rule or element type than the optimizer.
    CheckpointMismatch {
        /// What differs: `"rule"` or `"dtype"`.
        field: &'static str,
        /// What the optimizer expects, e.g. `"adam"`.
        expected: &'static str,
        /// What the checkpoint holds.
        found: String,
    },
    /// A sharding plan or sharded checkpoints do not fit together.
    InvalidSharding {
        /// What is wrong, naming the tensor, rank or shard.
        reason: String,
    },
    /// A [`FlatParams`](crate::FlatParams) layout that cannot be built.
    InvalidFlatLayout {
        /// What is wrong, naming the tensor.
        reason: String,
    },
    /// A [`FlatParams`](crate::FlatParams) block cannot be stepped as one tensor, because the
    /// result would differ from stepping its tensors one by one.
    FlatUnsupported {
        /// The block's name.
        param: String,
        /// Why, e.g. the group's rule looks at whole tensors.
        reason: String,
    },
    /// A [sharded step](crate::ShardedOptimizer::step_all) failed on other ranks (this
    /// rank's part was in order); no rank changed anything.
    OtherRanksFailed {
        /// How many ranks failed.
        ranks: usize,
    },
    /// A tensor name is listed twice where each must be listed once: in a checkpoint, in a
    /// shard plan, in the model's tensors given to
    /// [`Optimizer::load_state`](crate::Optimizer::load_state) (twice with different shapes),
    /// in [`Optimizer::declare`](crate::Optimizer::declare), in a batch of one step, or in
    /// the model or the gradients of [`Optimizer::step_model`](crate::Optimizer::step_model),
    /// or in the layout of a [`FlatParams`](crate::FlatParams).
    DuplicateParam {
        /// The tensor's name.
        param: String,
        /// Where the name is listed twice, e.g. `"checkpoint"`, `"shard plan"`, `"model's
        /// tensors"`, `"declaration"`, `"batch"`, `"model"`, `"gradients"`, `"flat layout"`, or the
        /// `"averages"` or `"means"` of a serialized [`AveragedModel`](crate::AveragedModel)
        /// or [`MultiSteps`](crate::MultiSteps).
        in_what: &'static str,
    },
    /// The gradients given to [`Optimizer::step_model`](crate::Optimizer::step_model) hold no
    /// gradient where the model holds a tensor (a key missing from a map, a `Vec` shorter
    /// than the model's).
    MissingGradient {
        /// The tensor's name, or the name of the member (a `Vec`'s element) whose gradients
        /// are missing.
        param: String,
    },
    /// The gradients given to [`Optimizer::step_model`](crate::Optimizer::step_model) hold a
    /// gradient where the model holds no tensor (a key the model's map lacks, a `Vec` longer
    /// than the model's).
    UnexpectedGradient {
        /// The gradient's name, or the name of the member it is in.
        param: String,
    },
    /// A checkpoint's state of one tensor does not fit the rule or the tensor's shape.
    InvalidTensorState {
        /// The tensor's name.
        param: String,
        /// What is wrong, e.g. which buffer has how many values for which shape.
        reason: String,
    },
    /// Checkpoint bytes are not a whole checkpoint: truncated, altered (the checksum does not
    /// match), or not a checkpoint at all.
    CorruptCheckpoint {
        /// What is wrong, e.g. how many payload bytes the header announces and how many follow.
        reason: String,
    },
    /// A checkpoint could not be encoded, e.g. state holding NaN in JSON.
    Encode {
        /// What could not be encoded and why.
        reason: String,
    },
    /// A checkpoint file could not be read or written.
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The kind of the operating system's error.
        kind: std::io::ErrorKind,
        /// The operating system's message.
        message: String,
    },
    /// A strict [`Optimizer::load_state`](crate::Optimizer::load_state) found tensors
    /// missing, unexpected or of another shape; the report names them. Also a model that does
    /// not have the tensors that state built over all of them was built for (such as
    /// [`Lbfgs`](crate::Lbfgs)'s flat history, or a [`FlatParams`](crate::FlatParams)
    /// block's layout); a report that finds no tensor missing, unexpected or of another
    /// shape ([`is_exact`](crate::report::LoadReport::is_exact)) then means the same tensors
    /// in another order.
    ModelMismatch {
        /// Everything that differs, by name.
        report: Box<crate::report::LoadReport>,
    },
    /// A gradient holds NaN or infinity and the optimizer is set to
    /// [`NonFinite::Refuse`](crate::NonFinite::Refuse) such steps.
    NonFiniteGradient {
        /// The first tensor whose gradient is not finite.
        param: String,
    },
    /// Global-norm clipping was asked of a single-tensor [`step`](crate::Optimizer::step); it
    /// needs every gradient of the step, which [`step_all`](crate::Optimizer::step_all) has.
    GlobalClipNeedsBatch,
    /// A single-tensor [`step`](crate::Optimizer::step) of a tensor whose rule has a
    /// [reduction](crate::UpdateRule::reduction) over every tensor of the step, such as
    /// [`Prodigy`](crate::Prodigy): use [`step_all`](crate::Optimizer::step_all) or
    /// [`step_model`](crate::Optimizer::step_model) (or a
    /// [sharded optimizer](crate::ShardedOptimizer)'s step).
    ReductionNeedsBatch {
        /// The rule, e.g. `"prodigy"`.
        rule: &'static str,
    },
    /// A group of a rule with one step size for the whole optimizer (such as
    /// [`Prodigy`](crate::Prodigy)) has a current learning rate that is neither the largest
    /// of those groups' rates nor 0, which prodigyopt refuses too.
    UnequalGroupLr {
        /// The group.
        group: String,
        /// Its current learning rate.
        lr: f64,
        /// The largest rate of the rule's groups.
        expected: f64,
    },
    /// A group of a rule with one step size for the whole optimizer (such as
    /// [`Prodigy`](crate::Prodigy)) differs from the rule's first group in a hyperparameter
    /// that the step takes from the first group for every group, as prodigyopt takes its
    /// betas from its first group ([`UpdateRule::reduction_mismatch`](crate::UpdateRule::reduction_mismatch)).
    ReductionSettingDiffers {
        /// The group.
        group: String,
        /// The hyperparameter, e.g. `"beta1"`.
        key: &'static str,
        /// The rule's first group, whose value every group must have.
        first: String,
    },
    /// A learning-rate schedule was stepped past its last step (PyTorch's `OneCycleLR` refuses
    /// the same).
    ScheduleFinished {
        /// The schedule's number of steps.
        total_steps: u64,
    },
    /// A learning-rate schedule is malformed, e.g. milestones that do not fit its phases.
    InvalidSchedule {
        /// What is wrong.
        reason: String,
    },
    /// A tensor's step count would pass `u64::MAX`: it cannot be stepped again.
    StepCountOverflow {
        /// The tensor's name.
        param: String,
    },
    /// The optimizer knows its model's tensors ([`Optimizer::declare`](crate::Optimizer::declare))
    /// and this name is not one of them, or a call that edits a tensor's entry
    /// ([`Optimizer::remove`](crate::Optimizer::remove) and its kin) named one it does not
    /// know: most likely a typo.
    UnknownParam {
        /// The name that was given.
        param: String,
        /// The known name closest to it, if one is close.
        closest: Option<String>,
    },
    /// [`Optimizer::rename`](crate::Optimizer::rename) was asked for a name that another
    /// tensor has.
    ParamExists {
        /// The name that is taken.
        param: String,
    },
    /// Building an [`LrScheduler`](crate::schedule::LrScheduler) would replace a rate that a
    /// schedule set (e.g. in an optimizer restored from a checkpoint) with another one. To
    /// continue that schedule, restore the scheduler saved with the optimizer instead of
    /// building a new one; to start a new schedule from the base rates, clear the scheduled
    /// rates first ([`Optimizer::clear_scheduled_lrs`](crate::Optimizer::clear_scheduled_lrs)).
    ScheduleInProgress {
        /// The first group whose rate would change.
        group: String,
        /// The rate a schedule set it to.
        current: f64,
        /// The first rate of the new schedule.
        first: f64,
    },
    /// A schedule cycles momentum (`cycle_momentum`) and a group's rule has none to cycle:
    /// its [`UpdateRule::cycled_momentum_mut`](crate::UpdateRule::cycled_momentum_mut) is
    /// `None` (PyTorch raises a `ValueError` for optimizers without `momentum` or `betas`).
    NoMomentumToCycle {
        /// The group.
        group: String,
        /// Its rule.
        rule: &'static str,
    },
    /// Low-precision state ([`StatePrecision`](crate::StatePrecision)) was asked for where
    /// it is not defined: a rule that is not
    /// [elementwise](crate::UpdateRule::elementwise) (its state is not stepped value by
    /// value), or `f64` elements (the formats are defined with `f32` arithmetic).
    UnsupportedStatePrecision {
        /// The group.
        group: String,
        /// Its rule.
        rule: &'static str,
        /// What stands in the way.
        reason: &'static str,
    },
    /// A lambda schedule ([`Schedule::Lambda`](crate::schedule::Schedule::Lambda) or
    /// [`Schedule::Multiplicative`](crate::schedule::Schedule::Multiplicative)) has no
    /// closure: a closure cannot be serialized, so a deserialized scheduler has its name
    /// alone until [`LrScheduler::set_lambda`](crate::schedule::LrScheduler::set_lambda)
    /// gives it again.
    LambdaMissing {
        /// The schedule's kind, `"lambda"` or `"multiplicative"`.
        schedule: &'static str,
        /// The lambda's name.
        name: String,
    },
    /// A lambda schedule's closure returned a factor that is not finite and ≥ 0.
    InvalidLambdaFactor {
        /// The schedule's kind, `"lambda"` or `"multiplicative"`.
        schedule: &'static str,
        /// The lambda's name.
        name: String,
        /// The step it was called with.
        step: u64,
        /// The group index it was called with.
        group: usize,
        /// What it returned.
        factor: f64,
    },
    /// Group patterns did not put every tensor into exactly one group.
    GroupPatterns {
        /// Tensors that no pattern matched.
        unmatched: Vec<String>,
        /// Tensors that patterns of different groups matched (strict matching only).
        ambiguous: Vec<String>,
    },
    /// An [`AveragedModel`](crate::AveragedModel) keeps no average under this name: it was
    /// never [`update`](crate::AveragedModel::update)d.
    NotAveraged {
        /// The name that was given.
        param: String,
        /// The averaged name closest to it, if one is close.
        closest: Option<String>,
    },
    /// The average of this tensor is swapped into the parameter
    /// ([`AveragedModel::swap_into`](crate::AveragedModel::swap_into)): swap it back before
    /// updating or copying it.
    AverageSwapped {
        /// The tensor's name.
        param: String,
    },
    /// A tensor of a schedule-free rule is in the other [`Mode`] than the call needs: a step
    /// of a tensor in eval mode (it holds the average x, not y), or
    /// [`Optimizer::check_mode`](crate::Optimizer::check_mode) finding a tensor in the mode
    /// not asked for. Switch with [`Optimizer::train`](crate::Optimizer::train) or
    /// [`Optimizer::eval`](crate::Optimizer::eval).
    WrongMode {
        /// The first tensor in the wrong mode.
        param: String,
        /// The mode it is in.
        mode: Mode,
    },
    /// Gradient accumulation ([`MultiSteps::step_all`](crate::MultiSteps::step_all)): a
    /// micro-batch does not give the same tensors as the micro-batches before it since the
    /// last optimizer step.
    MicroBatchMismatch {
        /// The first tensor out of step.
        param: String,
        /// How many micro-batches `param` has accumulated since the last optimizer step.
        accumulated: u64,
        /// How many the micro-batch's other tensors have, or `None` if `param` is missing
        /// from the micro-batch.
        others: Option<u64>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::GradientShape { param, param_shape, grad_shape } => write!(
                f,
                "gradient of `{param}` has shape {grad_shape:?} but the parameter has shape \
                 {param_shape:?}"
            ),
            Error::ShapeChanged { param, registered, given } => write!(
                f,
                "`{param}` was registered with shape {registered:?} but is now given with \
                 shape {given:?}"
            ),
            Error::InvalidHyperparameter { rule, key, value, requirement } => {
                write!(f, "{rule}: `{key}` = {value} is invalid, it must be {requirement}")
            }
            Error::UnknownGroup { group } => write!(f, "no parameter group is named `{group}`"),
            Error::DuplicateGroup { group } => {
                write!(f, "a parameter group named `{group}` exists already")
            }
            Error::StateBuffersChange { param, current, requested } => write!(
                f,
                "`{param}` has state buffers {current:?}, the new hyperparameters need \
                 {requested:?}"
            ),
            Error::StateLayoutChange { param, current, requested } => write!(
                f,
                "`{param}` has state laid out by `{current}`, which `{requested}` does not \
                 keep: it cannot move to hyperparameters of `{requested}`"
            ),
            Error::UnsupportedShape { param, rule, shape, requirement } => write!(
                f,
                "`{param}` of shape {shape:?} cannot be stepped by `{rule}`, which steps \
                 {requirement} tensors: assign it to a group with another rule"
            ),
            Error::UnsupportedCheckpoint { format, version, newest } => write!(
                f,
                "unsupported checkpoint: format `{format}` version {version} (this build reads \
                 versions 1 to {newest} of its own format)"
            ),
            Error::CheckpointMismatch { field, expected, found } => {
                write!(f, "checkpoint {field} is `{found}`, but the optimizer's is `{expected}`")
            }
            Error::InvalidSharding { reason } => write!(f, "invalid sharding: {reason}"),
            Error::InvalidFlatLayout { reason } => write!(f, "invalid flat layout: {reason}"),
            Error::FlatUnsupported { param, reason } => {
                write!(f, "the flat block `{param}` cannot be stepped as one tensor: {reason}")
            }
            Error::OtherRanksFailed { ranks } => {
                write!(f, "the sharded step failed on {ranks} other rank(s); no rank stepped")
            }
            Error::DuplicateParam { param, in_what } => {
                write!(f, "the {in_what} lists the tensor `{param}` more than once")
            }
            Error::MissingGradient { param } => {
                write!(f, "the gradients hold nothing for `{param}`; nothing was stepped")
            }
            Error::UnexpectedGradient { param } => write!(
                f,
                "the gradients hold `{param}`, which the model does not; nothing was stepped"
            ),
            Error::InvalidTensorState { param, reason } => {
                write!(f, "checkpoint state of `{param}` is invalid: {reason}")
            }
            Error::CorruptCheckpoint { reason } => write!(f, "corrupt checkpoint: {reason}"),
            Error::Encode { reason } => write!(f, "cannot encode checkpoint: {reason}"),
            Error::Io { path, message, .. } => write!(f, "{}: {message}", path.display()),
            Error::ModelMismatch { report } if report.is_exact() => write!(
                f,
                "the model has the tensors the state was built for, in another order: {report}"
            ),
            Error::ModelMismatch { report } => {
                write!(f, "checkpoint does not match the model: {report}")
            }
            Error::NonFiniteGradient { param } => {
                write!(f, "the gradient of `{param}` holds NaN or infinity; nothing was stepped")
            }
            Error::GlobalClipNeedsBatch => write!(
                f,
                "global-norm clipping needs every gradient of the step: use `step_all`, not `step`"
            ),
            Error::ReductionNeedsBatch { rule } => write!(
                f,
                "`{rule}` steps every tensor together: use `step_all` or `step_model`, not \
                 `step`"
            ),
            Error::UnequalGroupLr { group, lr, expected } => write!(
                f,
                "group `{group}` has learning rate {lr}; the groups of a rule with one step \
                 size for the whole optimizer must all have {expected} (the largest) or 0"
            ),
            Error::ReductionSettingDiffers { group, key, first } => write!(
                f,
                "group `{group}` has another `{key}` than group `{first}`; a rule with one step \
                 size for the whole optimizer takes it from its first group, `{first}`, for all"
            ),
            Error::ScheduleFinished { total_steps } => {
                write!(f, "the learning-rate schedule has run all its {total_steps} steps")
            }
            Error::InvalidSchedule { reason } => {
                write!(f, "invalid learning-rate schedule: {reason}")
            }
            Error::StepCountOverflow { param } => {
                write!(f, "`{param}` has taken u64::MAX steps and cannot be stepped again")
            }
            Error::ParamExists { param } => {
                write!(f, "the optimizer has a tensor named `{param}` already")
            }
            Error::UnknownParam { param, closest } => {
                write!(f, "the optimizer's model has no tensor named `{param}`")?;
                match closest {
                    Some(name) => write!(f, " (did you mean `{name}`?)"),
                    None => Ok(()),
                }
            }
            Error::ScheduleInProgress { group, current, first } => write!(
                f,
                "group `{group}` has the rate {current} from a schedule in progress; a new \
                 schedule would start it at {first}: restore the saved scheduler to continue, \
                 or clear the scheduled rates to start afresh"
            ),
            Error::NoMomentumToCycle { group, rule } => write!(
                f,
                "the schedule cycles momentum, but group `{group}` steps with `{rule}`, which \
                 has no momentum or beta1 to cycle: turn `cycle_momentum` off, or use a rule \
                 with momentum"
            ),
            Error::UnsupportedStatePrecision { group, rule, reason } => write!(
                f,
                "group `{group}` (rule `{rule}`) cannot keep its state in low precision: \
                 {reason}"
            ),
            Error::LambdaMissing { schedule, name } => write!(
                f,
                "the `{schedule}` schedule `{name}` has no closure (a closure is not \
                 serialized): give it with `LrScheduler::set_lambda` before stepping"
            ),
            Error::InvalidLambdaFactor { schedule, name, step, group, factor } => write!(
                f,
                "the closure of the `{schedule}` schedule `{name}` returned {factor} at step \
                 {step} for group {group}: a factor must be finite and >= 0"
            ),
            Error::GroupPatterns { unmatched, ambiguous } => write!(
                f,
                "group patterns must put every tensor into exactly one group: no pattern \
                 matches {unmatched:?}, patterns of different groups match {ambiguous:?}"
            ),
            Error::NotAveraged { param, closest } => {
                write!(f, "no average is kept for `{param}`: it was never updated")?;
                match closest {
                    Some(name) => write!(f, " (did you mean `{name}`?)"),
                    None => Ok(()),
                }
            }
            Error::AverageSwapped { param } => write!(
                f,
                "the average of `{param}` is swapped into the parameter: swap it back first"
            ),
            Error::WrongMode { param, mode } => {
                write!(f, "`{param}` is in schedule-free {mode}: call `{}` first", mode.leave())
            }
            Error::MicroBatchMismatch { param, accumulated, others } => {
                write!(
                    f,
                    "`{param}` has accumulated {accumulated} micro-batches since the last \
                     optimizer step, "
                )?;
                match others {
                    Some(others) => write!(f, "the micro-batch's other tensors {others}")?,
                    None => write!(f, "and is missing from this micro-batch")?,
                }
                write!(
                    f,
                    ": every micro-batch until the optimizer steps must give the same tensors"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

/// The result type of this crate's fallible operations.
pub type Result<T, E = Error> = core::result::Result<T, E>;
