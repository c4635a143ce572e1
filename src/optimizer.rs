//! [`Optimizer`]: the public stepping API over the registry.

use ndarray::{ArrayRef, ArrayView, ArrayViewMut, Axis, Dimension, IxDyn, Slice};

use crate::check::check_lr;
use crate::checkpoint::ShardRecord;
use crate::clip::{self, Clip};
use crate::compact::StatePrecision;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::exact_sum::{ExactSum, SignedSum};
use crate::flat::{FlatParams, FlatTensor};
use crate::guard::{self, NonFinite, StepOutcome};
use crate::kernel::{GradTransform, Shared};
use crate::model::{NameBuffer, Parameters, Prefix, Zip};
use crate::registry::{ParamGroup, Registry, StepReduction, TensorState};
use crate::rule::{Reduction, ReductionSums, UpdateRule};

/// One named tensor of a batch for [`Optimizer::step_all`]: its parameter and gradient, as
/// views of dynamic dimension so that tensors of any dimensionality share one batch.
#[derive(Debug)]
pub struct ParamGrad<'a, A> {
    pub(crate) name: &'a str,
    pub(crate) param: ArrayViewMut<'a, A, IxDyn>,
    pub(crate) grad: ArrayView<'a, A, IxDyn>,
    /// The position of the tensor's slot in the registry, as the first pass of
    /// [`Optimizer::step_all`] finds it (`None` before the tensor's first step), so that the
    /// later passes find the slot without its name.
    slot: Option<usize>,
    /// The tensor's state while [`Optimizer::step_all`] has it out of the registry, so that
    /// the entries of a batch can be stepped on several threads at once (moving it does not
    /// allocate).
    lent: Option<Lent<A>>,
    /// The tensors of a [`FlatParams`] block, if the entry is one: it steps as they would
    /// only under some rules and clips, and its squares are summed tensor by tensor.
    flat: Option<&'a [FlatTensor]>,
}

/// What a batch entry needs to be stepped apart from the registry.
#[derive(Debug)]
struct Lent<A> {
    slot: usize,
    group: usize,
    tensor: Box<TensorState<A>>,
    /// The clip of this step, as a transform of the gradient.
    transform: GradTransform<A>,
}

impl<'a, A> ParamGrad<'a, A> {
    /// Pairs the parameter tensor `name` with its gradient.
    pub fn new<D: Dimension>(
        name: &'a str,
        param: &'a mut ArrayRef<A, D>,
        grad: &'a ArrayRef<A, D>,
    ) -> Self {
        ParamGrad {
            name,
            param: param.view_mut().into_dyn(),
            grad: grad.view().into_dyn(),
            slot: None,
            lent: None,
            flat: None,
        }
    }

    /// The entry of a [`FlatParams`] block named `name` of `tensors`.
    pub(crate) fn flat(
        name: &'a str,
        tensors: &'a [FlatTensor],
        param: ArrayViewMut<'a, A, IxDyn>,
        grad: ArrayView<'a, A, IxDyn>,
    ) -> Self {
        ParamGrad { name, param, grad, slot: None, lent: None, flat: Some(tensors) }
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        self.name
    }
}

/// An optimizer: update rule `R` applied to named parameter tensors of element type `A`.
///
/// Each tensor is identified by a name. Its state (step count and the rule's buffers) is
/// created on its first [`step`](Self::step), with its shape, and found again by name on every
/// later step, so tensors of any shape and dimension share one optimizer and the order in
/// which they are stepped does not matter. Tensors belong to [`ParamGroup`]s that carry
/// their own hyperparameters; a tensor that was never [`assign`](Self::assign)ed belongs to
/// the [`DEFAULT_GROUP`](crate::DEFAULT_GROUP), whose hyperparameters are the ones given to
/// [`new`](Self::new).
///
/// Every method that fails returns an [`Error`] and leaves the optimizer, and the parameter it
/// was handed, exactly as they were.
///
/// Around the rule, an optimizer can [clip](Self::set_clip) gradients, [refuse or
/// skip](Self::set_non_finite) steps with NaN or infinite gradients, [freeze](Self::freeze)
/// groups, and follow a learning-rate [schedule](crate::schedule); all of it is part of its
/// [checkpoint](crate::Checkpoint) except the schedule's position, which the schedule keeps.
///
/// ```
/// use ndarray::{Array2, array};
/// use ndarray_optim::{Adam, Optimizer};
///
/// let mut opt = Optimizer::new(Adam::default())?;
/// opt.add_group("head", Adam { lr: 1e-2, ..Adam::default() })?;
/// opt.assign("head.w", "head")?;
///
/// let mut w = Array2::<f32>::zeros((2, 3));
/// let mut b = array![0.5_f32];
/// for _ in 0..3 {
///     let grad_w = Array2::from_elem((2, 3), 0.1);
///     opt.step("head.w", &mut w, &grad_w)?;
///     opt.step("b", &mut b, &array![-1.0])?;
/// }
/// assert_eq!(opt.step_count("head.w"), Some(3));
/// assert!(w[[0, 0]] < 0.0 && b[0] > 0.5);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer<R: UpdateRule, A: Element> {
    pub(crate) registry: Registry<R, A>,
    pub(crate) clip: Option<Clip>,
    pub(crate) non_finite: NonFinite,
    /// The rank share it holds, in a [`ShardedOptimizer`](crate::ShardedOptimizer).
    pub(crate) shard: Option<ShardRecord>,
    pub(crate) names: NameBuffer,
}

/// What the first pass over a batch has found so far.
pub(crate) struct BatchCheck {
    /// Where the batch's names come from, for [`Error::DuplicateParam`].
    in_what: &'static str,
    /// The position of the next tensor.
    pub(crate) index: usize,
    /// The names without a slot in the registry seen so far (first steps).
    new_names: hashbrown::HashSet<String>,
    /// The refusal or skip of the first non-finite gradient, and its position.
    pub(crate) non_finite: Option<(usize, Result<StepOutcome>)>,
    /// How many of the tensors so far are in frozen groups.
    pub(crate) frozen: usize,
    /// The sum of the squares of the gradients, when clipping by global norm: exact, so
    /// that neither the batch's order nor a sharded step's cuts change a bit of the norm.
    /// When clipping each tensor by its own norm, for a model in parts
    /// ([`Exchange::in_parts`]), the sum of the squares of those norms.
    pub(crate) squares: ExactSum,
    /// Whether the squares of each tensor's own norm are summed in this pass.
    tensor_norms: bool,
}

/// What the parts of a sharded model exchange between the passes of a step, so that each
/// part's step sees what one step of the whole model would
/// ([`ShardedOptimizer::step_all`](crate::ShardedOptimizer::step_all)).
pub(crate) trait Exchange {
    /// After the first pass, before anything changes: may replace what it found with what
    /// it found over every part.
    fn check(&mut self, check: &mut BatchCheck) -> Result<()>;

    /// After the reduction's first pass, before its combination: may replace the sums with
    /// their sums over every part.
    fn sums(&mut self, sums: &mut [SignedSum]);

    /// Whether the model is in parts, so that a clip of each tensor by its own norm sums
    /// the norms in the first pass, where their sum can be exchanged for the outcome.
    fn in_parts(&self) -> bool;
}

/// A whole model: nothing to exchange.
struct Whole;

impl Exchange for Whole {
    fn check(&mut self, _: &mut BatchCheck) -> Result<()> {
        Ok(())
    }

    fn sums(&mut self, _: &mut [SignedSum]) {}

    fn in_parts(&self) -> bool {
        false
    }
}

/// A batch after its first pass.
#[expect(
    clippy::large_enum_variant,
    reason = "one per step, on the stack: boxing the exact sum would allocate in every step"
)]
enum Checked<A> {
    /// Nothing is stepped: a non-finite gradient skips the step, or every tensor is frozen.
    Skip(StepOutcome),
    /// Every tensor that is not frozen is to be stepped, with this clip and, if a group's
    /// rule has one, this reduction.
    Step(BatchClip<A>, Option<StepReduction>),
}

/// The shared scalars of a step with a reduction, copied out of the registry before and
/// after the combination, so that the tensors' passes read them while the registry lends
/// out state (on the stack: no allocation).
struct SharedStep {
    before: [f64; Reduction::MAX_SHARED],
    now: [f64; Reduction::MAX_SHARED],
    len: usize,
    lr: f64,
    /// Whether the combination lets the parameters of the rule's groups move.
    moves: bool,
}

impl SharedStep {
    /// The scalars before the combination, as the first pass sees them.
    fn start(shared: &[f64], lr: f64) -> Self {
        let mut before = [0.0; Reduction::MAX_SHARED];
        before[..shared.len()].copy_from_slice(shared);
        SharedStep { before, now: before, len: shared.len(), lr, moves: true }
    }

    fn view(&self) -> Shared<'_> {
        Shared { before: &self.before[..self.len], now: &self.now[..self.len], lr: self.lr }
    }
}

/// The clip of a batch's second pass.
struct BatchClip<A> {
    /// The transform of every gradient and the norm of them all (frozen tensors left out),
    /// when clipping by global norm.
    global: Option<(GradTransform<A>, f64)>,
    /// The sum of the squared norms of each tensor's own clip: exact, so that it does not
    /// depend on the batch's order nor on a sharded step's parts.
    squares: ExactSum,
    /// Whether the first pass summed them already.
    summed: bool,
}

impl<A> BatchClip<A> {
    /// The outcome of the stepped batch under `clip`, the optimizer's clip.
    fn outcome(&self, clip: Option<Clip>) -> StepOutcome {
        let grad_norm = match clip {
            Some(Clip::GlobalNorm { .. }) => self.global.as_ref().map(|&(_, norm)| norm),
            Some(Clip::Norm { .. }) => Some(self.squares.total().sqrt()),
            _ => None,
        };
        StepOutcome::Stepped { grad_norm }
    }
}

impl<R: UpdateRule, A: Element> Optimizer<R, A> {
    /// An optimizer whose default group has hyperparameters `defaults`.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] if `defaults` is out of range.
    pub fn new(defaults: R) -> Result<Self> {
        Ok(Optimizer {
            registry: Registry::new(defaults)?,
            clip: None,
            non_finite: NonFinite::Ignore,
            shard: None,
            names: NameBuffer::default(),
        })
    }

    /// Applies one step of the rule to the tensor `name`: updates `param` in place from
    /// `grad`, and the tensor's state with it.
    ///
    /// `param` and `grad` may be any arrays or views of one dimensionality and shape, in any
    /// memory layout (each may differ); the result does not depend on the layout by a single
    /// bit. The first step of a name creates its state; later steps of a registered name
    /// allocate nothing. The gradient is [clipped](Self::set_clip) and
    /// [checked](Self::set_non_finite) as the optimizer is set to. A tensor in a
    /// [frozen](Self::freeze) group is not stepped: the call checks the shapes, changes
    /// nothing and returns [`StepOutcome::Frozen`].
    ///
    /// # Errors
    /// - [`Error::GradientShape`] if `grad`'s shape differs from `param`'s;
    /// - [`Error::ShapeChanged`] if `name` has state for another shape;
    /// - [`Error::UnknownParam`] if the model's tensors are [declared](Self::declare) and
    ///   `name` is not one of them;
    /// - [`Error::StepCountOverflow`] if `name` has taken `u64::MAX` steps;
    /// - [`Error::GlobalClipNeedsBatch`] if the optimizer clips by global norm;
    /// - [`Error::NonFiniteGradient`] if `grad` is not finite and the optimizer refuses that.
    pub fn step<D: Dimension>(
        &mut self,
        name: &str,
        param: &mut ArrayRef<A, D>,
        grad: &ArrayRef<A, D>,
    ) -> Result<StepOutcome> {
        // The dimension ends here: everything below is compiled once per rule and element
        // type, whatever the dimensions a program steps.
        self.step_dyn(name, param.view_mut().into_dyn(), grad.view().into_dyn())
    }

    fn step_dyn(
        &mut self,
        name: &str,
        param: ArrayViewMut<'_, A, IxDyn>,
        grad: ArrayView<'_, A, IxDyn>,
    ) -> Result<StepOutcome> {
        self.check(name, param.shape(), grad.shape())?;
        if let Some(Clip::GlobalNorm { .. }) = self.clip {
            return Err(Error::GlobalClipNeedsBatch);
        }
        if let Some(rule) = self.reduction_of(name) {
            return Err(Error::ReductionNeedsBatch { rule });
        }
        if self.registry.is_frozen(name) {
            return Ok(StepOutcome::Frozen);
        }
        if let Some(skipped) = self.guard(0, name, &grad)? {
            return Ok(skipped);
        }
        let (transform, norm) = self.tensor_transform(&grad);
        self.step_checked(name, param, grad, transform);
        Ok(StepOutcome::Stepped { grad_norm: norm })
    }

    /// The group and state of the tensor `name`, which has passed [`check`](Self::check), for
    /// a step of `param`; the state is created on its first step.
    fn prepared(
        &mut self,
        name: &str,
        param: &ArrayViewMut<'_, A, IxDyn>,
    ) -> (&ParamGroup<R>, &mut TensorState<A>) {
        let slot = self.registry.slot_of(name);
        let (_, group, tensor) = self.registry.prepare(slot, param);
        (group, tensor)
    }

    /// Steps the tensor `name`, which has passed [`check`](Self::check), with the clip's
    /// `transform`.
    fn step_checked(
        &mut self,
        name: &str,
        param: ArrayViewMut<'_, A, IxDyn>,
        grad: ArrayView<'_, A, IxDyn>,
        transform: GradTransform<A>,
    ) {
        let (group, tensor) = self.prepared(name, &param);
        tensor.step += 1;
        group.step(param, grad, tensor, transform, Shared::default());
    }

    /// The first pass of a rule with a reduction over the tensor `name`, which has passed
    /// [`check`](Self::check): advances its step count and adds its terms to `sums`.
    fn reduce_checked(
        &mut self,
        name: &str,
        param: ArrayViewMut<'_, A, IxDyn>,
        grad: ArrayView<'_, A, IxDyn>,
        transform: GradTransform<A>,
        shared: &SharedStep,
        sums: &mut ReductionSums,
    ) {
        let (group, tensor) = self.prepared(name, &param);
        tensor.step += 1;
        group.reduce(param, grad, tensor, transform, shared.view(), sums);
    }

    /// The second pass of a rule with a reduction over the tensor `name`, after
    /// [`reduce_checked`](Self::reduce_checked).
    fn finish_checked(
        &mut self,
        name: &str,
        param: ArrayViewMut<'_, A, IxDyn>,
        grad: ArrayView<'_, A, IxDyn>,
        transform: GradTransform<A>,
        shared: &SharedStep,
    ) {
        let (group, tensor) = self.prepared(name, &param);
        group.step(param, grad, tensor, transform, shared.view());
    }

    /// Whether the tensor `name` is in a group whose rule has a reduction.
    fn reduces(&self, name: &str) -> bool {
        self.reduction_of(name).is_some()
    }

    /// The name of the rule of the tensor `name`'s group if that rule has a reduction.
    pub(crate) fn reduction_of(&self, name: &str) -> Option<&'static str> {
        let group = &self.registry.groups[self.registry.slots.get(name).map_or(0, |s| s.group)];
        group.hyper.reduction().map(|_| group.hyper.name())
    }

    /// Starts a step with `reduction`: the shared scalars before it, created on the first.
    fn start_reduction(&mut self, reduction: StepReduction) -> SharedStep {
        SharedStep::start(self.registry.shared_mut(reduction), reduction.lr)
    }

    /// Combines the `sums` of the first pass into the shared scalars, with the first
    /// reducing group's hyperparameters.
    fn combine(&mut self, reduction: StepReduction, shared: &mut SharedStep, sums: &ReductionSums) {
        let hyper = &self.registry.groups[reduction.first].hyper;
        let totals = &sums.totals()[..sums_len(hyper)];
        shared.moves = hyper.combine(&mut self.registry.shared, totals, reduction.lr);
        shared.now[..shared.len].copy_from_slice(&self.registry.shared);
    }

    /// Steps every tensor of `batch`, in order, as [`step`](Self::step) does one; either all
    /// are stepped or, on an error or a skip, none is.
    ///
    /// This is the form for training loops that hold their tensors in a list, and for
    /// anything that must see all gradients before any update: [global-norm
    /// clipping](Clip::GlobalNorm) and the [non-finite check](Self::set_non_finite) cover the
    /// whole batch. A batch built as an array on the stack costs no allocation, and neither
    /// does clipping.
    ///
    /// Tensors in [frozen](Self::freeze) groups are left out, as PyTorch leaves out tensors
    /// without gradients: they are not stepped and their gradients count neither for the
    /// global norm nor for the non-finite check (their shapes are still checked). A batch of
    /// frozen tensors only returns [`StepOutcome::Frozen`].
    ///
    /// ```
    /// use ndarray::{Array1, Array2};
    /// use ndarray_optim::{Optimizer, ParamGrad, Sgd};
    ///
    /// let mut opt = Optimizer::new(Sgd { lr: 0.5, ..Sgd::default() })?;
    /// let (mut w, mut b) = (Array2::<f32>::ones((2, 2)), Array1::<f32>::ones(2));
    /// let (gw, gb) = (Array2::ones((2, 2)), Array1::ones(2));
    /// opt.step_all(&mut [ParamGrad::new("w", &mut w, &gw), ParamGrad::new("b", &mut b, &gb)])?;
    /// assert_eq!((w[[1, 1]], b[0]), (0.5, 0.5));
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`step`](Self::step), for the first tensor that fails (global-norm clipping is
    /// allowed here), and [`Error::DuplicateParam`] if the batch names a tensor twice;
    /// nothing has changed then.
    pub fn step_all(&mut self, batch: &mut [ParamGrad<'_, A>]) -> Result<StepOutcome> {
        self.step_batch(batch, &OwnGradients)
    }

    /// Steps every tensor of `batch` as [`step_all`](Self::step_all) does, with the
    /// gradients that `grads` gives for the entries (of the entries' shapes).
    pub(crate) fn step_batch(
        &mut self,
        batch: &mut [ParamGrad<'_, A>],
        grads: &impl Gradients<A>,
    ) -> Result<StepOutcome> {
        let mut check = self.start_batch("batch");
        for entry in batch.iter_mut() {
            if entry.flat.is_some() {
                self.check_flat(entry.name)?;
            }
            let grad = grads.of(entry.name, &entry.grad);
            let shape = entry.param.shape();
            entry.slot = self.check_entry(&mut check, entry.name, shape, &grad, entry.flat)?;
        }
        let (mut clip, reduction) = match self.finish_check(check)? {
            Checked::Skip(outcome) => return Ok(outcome),
            Checked::Step(clip, reduction) => (clip, reduction),
        };
        for entry in batch.iter_mut() {
            if self.registry.is_frozen_at(entry.slot) {
                continue;
            }
            let transform = self.entry_transform(&mut clip, &grads.of(entry.name, &entry.grad));
            // The states are lent to the entries, which are then stepped independently (on
            // several threads with the `rayon` feature) and give them back.
            self.lend(entry, transform);
        }
        let numel = batch.iter().filter(|entry| entry.lent.is_some()).map(|e| e.param.len()).sum();
        let shared = reduction.map(|reduction| {
            let mut shared = self.start_reduction(reduction);
            let mut sums = ReductionSums::new();
            for entry in batch.iter_mut() {
                let Some(lent) = entry.lent.as_mut() else { continue };
                let group = &self.registry.groups[lent.group];
                if group.hyper.reduction().is_some() {
                    let grad = grads.of(entry.name, &entry.grad).into_view();
                    let param = entry.param.view_mut();
                    let (tensor, transform) = (&mut lent.tensor, lent.transform);
                    group.reduce(param, grad, tensor, transform, shared.view(), &mut sums);
                }
            }
            self.combine(reduction, &mut shared, &sums);
            shared
        });
        step_lent(&self.registry.groups, batch, grads, numel, shared.as_ref());
        for entry in batch.iter_mut() {
            if let Some(lent) = entry.lent.take() {
                self.registry.give_back(lent.slot, lent.tensor);
            }
        }
        Ok(clip.outcome(self.clip))
    }

    /// Steps every tensor of the block `flat` as one tensor of all their elements, under the
    /// block's name: one lookup, one state and one loop for the whole block, however many
    /// tensors it holds, where [`step_all`](Self::step_all) of the same tensors pays each
    /// tensor's bookkeeping (a third of the step of a tensor of a thousand elements).
    ///
    /// The parameters and state come out bit for bit as [`step_all`](Self::step_all) of the
    /// block's tensors one by one in the same group would leave them, because the step is
    /// allowed only where that holds: the group's rule updates
    /// [element by element](UpdateRule::elementwise), and the gradient is clipped by value,
    /// by the global norm (of the block's gradients, as of its tensors' together) or not at
    /// all. State kept in low precision follows the block: 8-bit state
    /// ([`StatePrecision::Int8`]) is quantized in blocks of the flat order, and the block's
    /// size decides whether it is kept in 8 bits.
    ///
    /// A block steps beside other tensors in a batch of [`step_all`](Self::step_all) through
    /// [`FlatParams::param_grad`], e.g. to clip by the norm of every gradient.
    ///
    /// # Errors
    /// As [`step_all`](Self::step_all) of one tensor named as the block (a non-finite
    /// gradient names the block: [`FlatParams::first_non_finite_grad`] finds the tensor), and
    /// [`Error::FlatUnsupported`] if the block's group has a rule that looks at whole
    /// tensors, or the optimizer clips each tensor by its own norm ([`Clip::Norm`]).
    pub fn step_flat(&mut self, flat: &mut FlatParams<A>) -> Result<StepOutcome> {
        self.step_all(&mut [flat.param_grad()])
    }

    /// Moves the state of the [`FlatParams`] block `block` to its tensors: the block's name
    /// is forgotten, and each tensor is known under its own name, in the block's group, with
    /// the block's step count and scalars and its part of each state buffer
    /// ([`FlatTensor::range`](crate::FlatTensor::range)) — the state it would have, stepped on
    /// its own all along, since the rule updates element by element. From then on the tensors
    /// step one by one (and can go to groups of their own); [`join_flat`](Self::join_flat) is
    /// the reverse. A block that was never stepped leaves tensors without state.
    ///
    /// ```
    /// use ndarray::Array1;
    /// use ndarray_optim::{Adam, FlatParams, Optimizer, ParamGrad};
    ///
    /// let mut block = FlatParams::<f32>::new("small", [("a", &[2][..]), ("b", &[3])])?;
    /// let mut opt = Optimizer::new(Adam::default())?;
    /// block.grads_mut().fill(0.5);
    /// opt.step_flat(&mut block)?;
    /// opt.split_flat(&block)?;
    /// assert_eq!(opt.state_of("b").unwrap().shape(), Some(&[3][..]));
    /// let (mut a, mut b) = (block.param("a")?.to_owned(), block.param("b")?.to_owned());
    /// let (ga, gb) = (Array1::from_elem(2, 0.5_f32).into_dyn(), Array1::from_elem(3, 0.5).into_dyn());
    /// opt.step_all(&mut [ParamGrad::new("a", &mut a, &ga), ParamGrad::new("b", &mut b, &gb)])?;
    /// assert_eq!(opt.step_count("a"), Some(2));
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// Nothing changes on an error:
    /// - [`Error::UnknownParam`] if the optimizer does not know the block's name;
    ///   [`Error::ParamExists`] if it knows the name of one of its tensors;
    /// - [`Error::ShapeChanged`] if the block's state is not of the block's size;
    /// - [`Error::FlatUnsupported`] if the group's rule looks at whole tensors, the group
    ///   keeps 8-bit state (quantized in blocks that start at the block's first element,
    ///   not at each tensor's), or the optimizer steps a rank's share of a sharded model.
    pub fn split_flat(&mut self, block: &FlatParams<A>) -> Result<()> {
        self.registry.split_flat(block)
    }

    /// Moves the state of the tensors of the [`FlatParams`] block `block` to the block: each
    /// tensor's name is forgotten, and the block is known under its name, in the tensors'
    /// group, with their step count and scalars and their state buffers one after the other
    /// in the block's layout — the state the block would have, stepped as a block all along.
    /// A training loop that stepped a model tensor by tensor (or a checkpoint of one)
    /// continues with [`step_flat`](Self::step_flat) this way. Tensors without state give a
    /// block without state.
    ///
    /// # Errors
    /// Nothing changes on an error:
    /// - [`Error::UnknownParam`] if the optimizer does not know one of the tensors;
    ///   [`Error::ParamExists`] if it knows the block's name;
    /// - [`Error::ShapeChanged`] if a tensor's state is not of its shape in the block;
    /// - [`Error::FlatUnsupported`] if the tensors are in different groups, some have state
    ///   and some not, their step counts or scalars differ (they were not stepped together),
    ///   or as for [`split_flat`](Self::split_flat).
    pub fn join_flat(&mut self, block: &FlatParams<A>) -> Result<()> {
        self.registry.join_flat(block)
    }

    /// Whether the [`FlatParams`] block `name` steps as its tensors would, one by one.
    fn check_flat(&self, name: &str) -> Result<()> {
        let group = self.registry.group_at(self.registry.slots.position(name));
        let reason = if let Some(reason) = group.whole_tensor_rule() {
            reason
        } else if let Some(Clip::Norm { .. }) = self.clip {
            "the optimizer clips each tensor by its own norm, which would clip the block by the \
             norm of all its tensors: clip by global norm or by value"
                .to_owned()
        } else {
            return Ok(());
        };
        Err(Error::FlatUnsupported { param: name.to_owned(), reason })
    }

    /// Steps every tensor of `params` with its gradient in `grads` as one batch, exactly as
    /// [`step_all`](Self::step_all) steps a batch of the same tensors in the same order
    /// (the [model's order](crate::model#order)): clipping and the non-finite check cover
    /// every tensor, and either all are stepped or, on an error or a skip, none is.
    ///
    /// `params` is a model, a set of named tensors ([`Parameters`]: a struct with
    /// `#[derive(Parameters)]`, a map, a list of named arrays, …), and `grads` the same type
    /// holding the gradients, each where the model holds its tensor; the names are the
    /// model's dotted paths, such as `encoder.layers.0.weight`. The names are built in a
    /// buffer that the optimizer keeps, so that after the first step a step allocates nothing.
    ///
    /// The model is walked twice: once to check every tensor and gradient, then to step them,
    /// one after another (with the `rayon` feature, a large tensor is split over the threads,
    /// as [`step`](Self::step) splits it).
    ///
    /// ```
    /// use std::collections::BTreeMap;
    ///
    /// use ndarray::{ArrayD, IxDyn};
    /// use ndarray_optim::{Clip, Optimizer, Sgd, StepOutcome};
    ///
    /// let mut opt = Optimizer::new(Sgd { lr: 0.5, ..Sgd::default() })?;
    /// opt.set_clip(Some(Clip::GlobalNorm { max_norm: 1.0 }))?;
    /// let tensor = |shape: &[usize], value| ArrayD::<f64>::from_elem(IxDyn(shape), value);
    /// let mut params = BTreeMap::from([("b", tensor(&[2], 1.0)), ("w", tensor(&[2, 2], 1.0))]);
    /// let grads = BTreeMap::from([("b", tensor(&[2], 0.0)), ("w", tensor(&[2, 2], 1.5))]);
    /// // The norm of all gradients is 3: each is scaled by 1/3 before the step.
    /// let outcome = opt.step_model(&mut params, &grads)?;
    /// assert_eq!(outcome, StepOutcome::Stepped { grad_norm: Some(3.0) });
    /// assert!((params["w"][[0, 0]] - 0.75).abs() < 1e-6);
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`step_all`](Self::step_all), with [`Error::DuplicateParam`] if the model or the
    /// gradients name a tensor twice (in one list, or in two members of a tuple), and
    /// [`Error::MissingGradient`] or [`Error::UnexpectedGradient`] if the gradients do not
    /// hold a gradient exactly where the model holds a tensor (one of another shape is
    /// [`Error::GradientShape`]). Nothing has changed then.
    ///
    /// Tensors in [frozen](Self::freeze) groups are left out as [`step_all`](Self::step_all)
    /// leaves them out.
    pub fn step_model<M>(&mut self, params: &mut M, grads: &M) -> Result<StepOutcome>
    where
        M: Parameters<Elem = A> + ?Sized,
    {
        // Past this call nothing depends on the model's type.
        self.step_zipped(&mut |prefix, f| params.zip_mut(grads, prefix, f))
    }

    /// [`step_model`](Self::step_model) of the model that `zip` walks, in the optimizer's
    /// own name buffer.
    pub(crate) fn step_zipped(&mut self, zip: &mut Zip<'_, A>) -> Result<StepOutcome> {
        self.step_exchanging(zip, "model", &mut Whole)
    }

    /// [`step_zipped`](Self::step_zipped) of a part of a model, with `exchange` between the
    /// passes.
    pub(crate) fn step_exchanging(
        &mut self,
        zip: &mut Zip<'_, A>,
        in_what: &'static str,
        exchange: &mut dyn Exchange,
    ) -> Result<StepOutcome> {
        let mut prefix = self.names.take();
        let outcome = self.step_zipped_in(&mut prefix, zip, in_what, exchange);
        self.names.put_back(prefix);
        outcome
    }

    fn step_zipped_in(
        &mut self,
        prefix: &mut Prefix,
        zip: &mut Zip<'_, A>,
        in_what: &'static str,
        exchange: &mut dyn Exchange,
    ) -> Result<StepOutcome> {
        let mut check = self.start_batch(in_what);
        check.tensor_norms = exchange.in_parts();
        zip(prefix, &mut |name, param, grad| {
            self.check_entry(&mut check, name, param.shape(), &grad, None).map(drop)
        })?;
        exchange.check(&mut check)?;
        let (mut clip, reduction) = match self.finish_check(check)? {
            Checked::Skip(outcome) => return Ok(outcome),
            Checked::Step(clip, reduction) => (clip, reduction),
        };
        let Some(reduction) = reduction else {
            zip(prefix, &mut |name, param, grad| {
                if !self.registry.is_frozen(name) {
                    let transform = self.entry_transform(&mut clip, &grad);
                    self.step_checked(name, param, grad, transform);
                }
                Ok(())
            })?;
            return Ok(clip.outcome(self.clip));
        };
        // A rule with a reduction: its tensors' first passes and the other rules' steps, the
        // combination, then its tensors' second passes.
        let mut shared = self.start_reduction(reduction);
        let mut sums = ReductionSums::new();
        zip(prefix, &mut |name, param, grad| {
            if self.registry.is_frozen(name) {
                return Ok(());
            }
            let transform = self.entry_transform(&mut clip, &grad);
            if self.reduces(name) {
                self.reduce_checked(name, param, grad, transform, &shared, &mut sums);
            } else {
                self.step_checked(name, param, grad, transform);
            }
            Ok(())
        })?;
        exchange.sums(sums.sums_mut(sums_len(&self.registry.groups[reduction.first].hyper)));
        self.combine(reduction, &mut shared, &sums);
        if shared.moves {
            zip(prefix, &mut |name, param, grad| {
                if !self.registry.is_frozen(name) && self.reduces(name) {
                    let transform = self.transform_again(&clip, &grad);
                    self.finish_checked(name, param, grad, transform, &shared);
                }
                Ok(())
            })?;
        }
        Ok(clip.outcome(self.clip))
    }

    /// Starts the first pass over a batch, whose names come from `in_what` (for errors).
    pub(crate) fn start_batch(&mut self, in_what: &'static str) -> BatchCheck {
        self.registry.start_batch();
        BatchCheck {
            in_what,
            index: 0,
            new_names: hashbrown::HashSet::new(),
            non_finite: None,
            frozen: 0,
            squares: ExactSum::default(),
            tensor_norms: false,
        }
    }

    /// Checks the next tensor of a batch ([`check_named`](Self::check_named)), then, unless
    /// it is frozen, its gradient for the non-finite policy and, when clipping by global
    /// norm, its norm (tensor by tensor for the `flat` block of these tensors). Returns the
    /// position of its slot, if it has one.
    fn check_entry(
        &mut self,
        batch: &mut BatchCheck,
        name: &str,
        param: &[usize],
        grad: &ArrayView<'_, A, IxDyn>,
        flat: Option<&[FlatTensor]>,
    ) -> Result<Option<usize>> {
        let slot = self.check_named(batch, name, param, grad.shape())?;
        if self.registry.is_frozen_at(slot) {
            batch.frozen += 1;
        } else if batch.non_finite.is_none() {
            // A refusal waits until every tensor is checked: the batch's errors come first.
            batch.non_finite =
                self.guard(batch.index, name, grad).transpose().map(|found| (batch.index, found));
            match self.clip {
                _ if batch.non_finite.is_some() => {}
                Some(Clip::GlobalNorm { .. }) => match flat {
                    // The squares are summed in blocks that start at each tensor, so a flat
                    // block's must be too for its norm to be its tensors' to the last bit.
                    Some(tensors) => tensors.iter().for_each(|tensor| {
                        let part = grad.slice_axis(Axis(0), Slice::from(tensor.range()));
                        clip::add_squares(&mut batch.squares, &part);
                    }),
                    None => clip::add_squares(&mut batch.squares, grad),
                },
                Some(Clip::Norm { .. }) if batch.tensor_norms => {
                    let norm = clip::l2_norm(grad);
                    batch.squares.add(norm * norm);
                }
                _ => {}
            }
        }
        batch.index += 1;
        Ok(slot)
    }

    /// Everything that can make the step of the next tensor of a batch fail, as
    /// [`check`](Self::check) sees it, and a name given twice, registered or not. Returns
    /// the position of its slot, if it has one.
    pub(crate) fn check_named(
        &mut self,
        batch: &mut BatchCheck,
        name: &str,
        param: &[usize],
        grad: &[usize],
    ) -> Result<Option<usize>> {
        let slot = self.check(name, param, grad)?;
        let again = match slot {
            Some(slot) => self.registry.named_again_at(slot),
            // New names have no slot to mark; they are few and only in a tensor's first
            // step, which allocates its state anyway.
            None => !batch.new_names.insert(name.to_owned()),
        };
        if again {
            return Err(Error::DuplicateParam { param: name.to_owned(), in_what: batch.in_what });
        }
        Ok(slot)
    }

    /// Ends the first pass over a batch: the refusal or skip of a non-finite gradient, a
    /// batch of frozen tensors only, or the clip of the step.
    fn finish_check(&self, batch: BatchCheck) -> Result<Checked<A>> {
        let reduction = self.registry.reduction()?;
        if let Some((_, outcome)) = batch.non_finite {
            return outcome.map(Checked::Skip);
        }
        if batch.index > 0 && batch.frozen == batch.index {
            return Ok(Checked::Skip(StepOutcome::Frozen));
        }
        let global = match self.clip {
            // PyTorch's total norm, the norm of the per-tensor norms, is the square root of
            // the sum of all squares; this one is exact but for the final rounding.
            Some(Clip::GlobalNorm { max_norm }) => {
                let norm = batch.squares.total().sqrt();
                Some((clip::norm_transform(max_norm, norm), norm))
            }
            _ => None,
        };
        let (squares, summed) = match self.clip {
            Some(Clip::Norm { .. }) if batch.tensor_norms => (batch.squares, true),
            _ => (ExactSum::default(), false),
        };
        Ok(Checked::Step(BatchClip { global, squares, summed }, reduction))
    }

    /// The clip's transform of the gradient of the next tensor of a batch.
    fn entry_transform(
        &self,
        clip: &mut BatchClip<A>,
        grad: &ArrayView<'_, A, IxDyn>,
    ) -> GradTransform<A> {
        match clip.global {
            Some((transform, _)) => transform,
            None => {
                let (transform, norm) = self.tensor_transform(grad);
                if let (Some(norm), false) = (norm, clip.summed) {
                    clip.squares.add(norm * norm);
                }
                transform
            }
        }
    }

    /// The transform that [`entry_transform`](Self::entry_transform) gave the gradient `grad`
    /// in the first pass over a batch, again for its second pass.
    fn transform_again(
        &self,
        clip: &BatchClip<A>,
        grad: &ArrayView<'_, A, IxDyn>,
    ) -> GradTransform<A> {
        match clip.global {
            Some((transform, _)) => transform,
            None => self.tensor_transform(grad).0,
        }
    }

    /// Lends `entry` its tensor's state, advancing its step count.
    fn lend(&mut self, entry: &mut ParamGrad<'_, A>, transform: GradTransform<A>) {
        let slot = entry.slot.unwrap_or_else(|| self.registry.slot_of(entry.name));
        let (group, _, tensor) = self.registry.prepare(slot, &entry.param);
        tensor.step += 1;
        let tensor = self.registry.take(slot);
        entry.lent = Some(Lent { slot, group, tensor, transform });
    }

    /// Everything that can make a step of `name` fail, checked before anything changes;
    /// the position of its slot, if it has one.
    fn check(&self, name: &str, param: &[usize], grad: &[usize]) -> Result<Option<usize>> {
        if param != grad {
            return Err(Error::GradientShape {
                param: name.to_owned(),
                param_shape: param.to_vec(),
                grad_shape: grad.to_vec(),
            });
        }
        self.registry.check_step(name, param)
    }

    /// Applies the non-finite policy to the gradient of batch entry `index`: `Some` outcome
    /// when the step is to be skipped. The gradient of a frozen tensor is not used, so it
    /// passes whatever it holds.
    pub(crate) fn guard(
        &self,
        index: usize,
        name: &str,
        grad: &ArrayView<'_, A, IxDyn>,
    ) -> Result<Option<StepOutcome>> {
        if self.non_finite == NonFinite::Ignore
            || self.registry.is_frozen(name)
            || guard::all_finite(grad)
        {
            return Ok(None);
        }
        match self.non_finite {
            NonFinite::Skip => Ok(Some(StepOutcome::Skipped { index })),
            _ => Err(Error::NonFiniteGradient { param: name.to_owned() }),
        }
    }

    /// The gradient transform of a clip that looks at one tensor alone, and the tensor's
    /// norm when the clip computed it.
    fn tensor_transform(&self, grad: &ArrayView<'_, A, IxDyn>) -> (GradTransform<A>, Option<f64>) {
        match self.clip {
            Some(Clip::Value { clip_value }) => {
                (GradTransform::Clamp(A::from_f64(clip_value)), None)
            }
            Some(Clip::Norm { max_norm }) => {
                let norm = clip::l2_norm(grad);
                (clip::norm_transform(max_norm, norm), Some(norm))
            }
            Some(Clip::GlobalNorm { .. }) | None => (GradTransform::Identity, None),
        }
    }

    /// Clips every later step's gradients (`None`: no clipping, the default).
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] if the clip's bound is not finite and positive.
    pub fn set_clip(&mut self, clip: Option<Clip>) -> Result<()> {
        if let Some(clip) = &clip {
            clip.validate()?;
        }
        self.clip = clip;
        Ok(())
    }

    /// The gradient clipping in effect.
    pub fn clip(&self) -> Option<Clip> {
        self.clip
    }

    /// Sets what later steps do with NaN or infinite gradients (default
    /// [`NonFinite::Ignore`], PyTorch's behaviour).
    pub fn set_non_finite(&mut self, policy: NonFinite) {
        self.non_finite = policy;
    }

    /// What steps do with NaN or infinite gradients.
    pub fn non_finite(&self) -> NonFinite {
        self.non_finite
    }

    /// Adds a parameter group with its own hyperparameters.
    ///
    /// # Errors
    /// [`Error::DuplicateGroup`] if the name is taken, [`Error::InvalidHyperparameter`] if
    /// `hyper` is out of range.
    pub fn add_group(&mut self, name: &str, hyper: impl Into<R>) -> Result<()> {
        self.registry.add_group(name, hyper.into())
    }

    /// Puts the tensor `param` into `group`; its next step uses that group's hyperparameters.
    /// A tensor belongs to one group at a time: assigning it again moves it, with its state.
    ///
    /// # Errors
    /// [`Error::UnknownGroup`] if no group has that name; [`Error::UnknownParam`] if the
    /// model's tensors are [declared](Self::declare) and `param` is not one of them.
    pub fn assign(&mut self, param: &str, group: &str) -> Result<()> {
        self.registry.assign(param, group)
    }

    /// Declares the model's tensors, as PyTorch's optimizers are given their parameters up
    /// front: from now on, [`step`](Self::step), [`step_all`](Self::step_all) and
    /// [`assign`](Self::assign) refuse any other name with [`Error::UnknownParam`], which
    /// names the closest declared one, so a typo fails at once instead of training a tensor
    /// in the wrong group. Declared tensors go into the default group until assigned; calling
    /// `declare` again adds names.
    ///
    /// Without a declaration the optimizer takes every name it is given (a first step
    /// registers it). Either way, [`unstepped`](Self::unstepped) lists the names that are
    /// known but have never been stepped. A checkpoint does not record the declaration:
    /// declare again after [`load`](Self::load) or [`from_checkpoint`](Self::from_checkpoint).
    ///
    /// ```
    /// use ndarray_optim::{Adam, Error, Optimizer};
    ///
    /// let mut opt = Optimizer::<_, f32>::new(Adam::default())?;
    /// opt.declare(["head.weight", "head.bias", "body.weight"])?;
    /// opt.add_group("head", Adam { lr: 1e-2, ..Adam::default() })?;
    /// let err = opt.assign("head.weigth", "head").unwrap_err();
    /// assert!(matches!(err, Error::UnknownParam { closest: Some(ref name), .. } if name == "head.weight"));
    /// assert_eq!(opt.unstepped(), ["body.weight", "head.bias", "head.weight"]);
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::DuplicateParam`] if `names` lists a name twice; nothing changes then.
    pub fn declare<'n>(&mut self, names: impl IntoIterator<Item = &'n str>) -> Result<()> {
        self.registry.declare(names)
    }

    /// The names the optimizer knows (declared, assigned or restored) that have no state
    /// yet, sorted: after a step of the whole model, a name here is one that the training loop
    /// never steps, such as a misspelt assignment, or one in a [frozen](Self::freeze) group.
    pub fn unstepped(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .registry
            .slots
            .iter()
            .filter(|(_, slot)| slot.tensor.is_none())
            .map(|(name, _)| name.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// Forgets the tensor `param`: its state, its group and its place among the
    /// [declared](Self::declare) tensors, as PyTorch's `del optimizer.state[p]` together with
    /// taking `p` out of its group. Stepping the name again starts it afresh in the default
    /// group (and needs a new declaration if the tensors are declared).
    ///
    /// # Errors
    /// [`Error::UnknownParam`] if the optimizer does not know the name; nothing changes then.
    pub fn remove(&mut self, param: &str) -> Result<()> {
        self.registry.remove(param)
    }

    /// Drops the state of the tensor `param` and keeps it in its group: its next step is a
    /// first step, from the rule's initial state (PyTorch's `optimizer.state[p].clear()`), as
    /// after re-initialising a layer.
    ///
    /// ```
    /// use ndarray::array;
    /// use ndarray_optim::{Adam, Optimizer};
    ///
    /// let mut opt = Optimizer::new(Adam::default())?;
    /// let mut w = array![1.0_f32, 2.0];
    /// opt.step("w", &mut w, &array![0.5, 0.5])?;
    /// opt.reset("w")?;
    /// assert_eq!(opt.step_count("w"), None);
    /// opt.step("w", &mut w, &array![0.5, 0.5])?;
    /// assert_eq!(opt.step_count("w"), Some(1));
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownParam`] if the optimizer does not know the name; nothing changes then.
    pub fn reset(&mut self, param: &str) -> Result<()> {
        self.registry.known_slot(param)?.tensor = None;
        Ok(())
    }

    /// Gives the tensor `from` the name `to`, with its group and state: for a model whose
    /// layers were renamed between runs, after loading a checkpoint saved under the old
    /// names.
    ///
    /// # Errors
    /// [`Error::UnknownParam`] if the optimizer does not know `from`, [`Error::ParamExists`]
    /// if another tensor is named `to`; nothing changes then.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.registry.rename(from, to)
    }

    /// The names of the tensors in `group` (assigned, declared or stepped), sorted.
    ///
    /// # Errors
    /// [`Error::UnknownGroup`] if there is no such group.
    pub fn members(&self, group: &str) -> Result<Vec<&str>> {
        Ok(self.registry.members(self.registry.group_index(group)?))
    }

    /// All groups, the default group first, then in the order they were added.
    pub fn groups(&self) -> &[ParamGroup<R>] {
        &self.registry.groups
    }

    /// The group named `name`.
    ///
    /// # Errors
    /// [`Error::UnknownGroup`] if there is none.
    pub fn group(&self, name: &str) -> Result<&ParamGroup<R>> {
        Ok(&self.registry.groups[self.registry.group_index(name)?])
    }

    /// Replaces a group's hyperparameters; they apply from the next step of its tensors.
    /// Their learning rate becomes the group's base rate; a rate that a schedule has set
    /// stays in effect until the schedule sets the next one.
    ///
    /// # Errors
    /// [`Error::UnknownGroup`], or [`Error::InvalidHyperparameter`] if `hyper` is out of range.
    pub fn set_hyper(&mut self, group: &str, hyper: impl Into<R>) -> Result<()> {
        self.registry.set_hyper(group, hyper.into())
    }

    /// Sets a group's (base) learning rate from the next step on, replacing any rate a
    /// schedule has set.
    ///
    /// # Errors
    /// [`Error::UnknownGroup`], or [`Error::InvalidHyperparameter`] if `lr` is not finite
    /// and ≥ 0.
    pub fn set_lr(&mut self, group: &str, lr: f64) -> Result<()> {
        let mut hyper = self.group(group)?.hyper.clone();
        *hyper.lr_mut() = lr;
        self.set_hyper(group, hyper)?;
        let index = self.registry.group_index(group)?;
        self.registry.groups[index].scheduled_lr = None;
        Ok(())
    }

    /// Sets every group's current learning rate to `lr(base, current)`, from its base rate
    /// (the one in its hyperparameters) and its current rate ([`ParamGroup::lr`]): the door
    /// through which [schedules](crate::schedule) drive the rates. The new rates may be 0,
    /// as PyTorch's schedules may make them; they leave the base rates as they are.
    ///
    /// `lr` is called twice per group (to check, then to set), so it must be a pure
    /// function of its arguments. No allocation.
    ///
    /// ```
    /// use ndarray_optim::{Optimizer, Sgd};
    ///
    /// let mut opt = Optimizer::<_, f32>::new(Sgd { lr: 0.1, ..Sgd::default() })?;
    /// opt.add_group("head", Sgd { lr: 1.0, ..Sgd::default() })?;
    /// opt.set_lrs_with(|base, _current| base * 0.5)?; // a warm-up factor of one half
    /// assert_eq!(opt.group("head")?.lr(), 0.5);
    /// assert_eq!(opt.group("head")?.hyper().lr, 1.0);
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] (rule `"schedule"`, key `"lr"`) if a new rate is not
    /// finite and ≥ 0; nothing changes then.
    pub fn set_lrs_with(&mut self, lr: impl Fn(f64, f64) -> f64) -> Result<()> {
        for group in &self.registry.groups {
            check_lr("schedule", lr(group.base_lr(), group.lr()))?;
        }
        for group in &mut self.registry.groups {
            group.scheduled_lr = Some(lr(group.base_lr(), group.lr()));
        }
        Ok(())
    }

    /// Freezes the group `group`: from now on every step leaves its tensors out, as PyTorch
    /// leaves out a model's tensors after `requires_grad_(False)`, until
    /// [`unfreeze`](Self::unfreeze).
    ///
    /// A frozen tensor's parameter and state stay exactly as they are, to the bit: no
    /// update, no buffer change, no step count advance (a tensor never stepped gets no
    /// state), so bias corrections, Rprop's step sizes and the like continue after unfreezing
    /// as if the frozen steps had never been taken. Its gradient is not used: the global-norm
    /// [clip](Clip::GlobalNorm) and the [non-finite check](Self::set_non_finite) leave it
    /// out, as `clip_grad_norm_(model.parameters())` leaves out tensors without gradients.
    /// [`step`](Self::step) of a frozen tensor returns [`StepOutcome::Frozen`];
    /// [`step_all`](Self::step_all) and [`step_model`](Self::step_model) step the other
    /// tensors (and return [`StepOutcome::Frozen`] if there are none). Shapes and names are
    /// still checked.
    ///
    /// A learning rate of 0 is not the same: Adam's moments and step count still advance at
    /// rate 0, Rprop's `lr` is only its initial step size, and a schedule overwrites the rate
    /// at its next step. Schedules keep setting a frozen group's rate, so that it resumes on
    /// schedule when unfrozen. The flag is part of the [checkpoint](Self::checkpoint).
    /// Tensors can be assigned to a frozen group, and are frozen with it. Freezing a frozen
    /// group changes nothing.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    ///
    /// use ndarray::array;
    /// use ndarray_optim::{Adam, Optimizer, StepOutcome};
    ///
    /// let mut opt = Optimizer::new(Adam { lr: 0.1, ..Adam::default() })?;
    /// opt.add_group("backbone", Adam { lr: 0.01, ..Adam::default() })?;
    /// opt.assign("backbone.w", "backbone")?;
    /// let mut model =
    ///     BTreeMap::from([("backbone.w", array![1.0_f32, 2.0]), ("head.w", array![0.5_f32])]);
    /// let grads = BTreeMap::from([("backbone.w", array![0.1, 0.1]), ("head.w", array![0.2])]);
    ///
    /// // Train the head alone for a while.
    /// opt.freeze("backbone")?;
    /// for _ in 0..3 {
    ///     opt.step_model(&mut model, &grads)?;
    /// }
    /// assert!(opt.group("backbone")?.is_frozen());
    /// assert_eq!(model["backbone.w"], array![1.0, 2.0]);
    /// assert_eq!((opt.step_count("backbone.w"), opt.step_count("head.w")), (None, Some(3)));
    /// let backbone = model.get_mut("backbone.w").unwrap();
    /// assert_eq!(opt.step("backbone.w", backbone, &grads["backbone.w"])?, StepOutcome::Frozen);
    ///
    /// // Then fine-tune everything: the backbone takes its first step.
    /// opt.unfreeze("backbone")?;
    /// opt.step_model(&mut model, &grads)?;
    /// assert_eq!((opt.step_count("backbone.w"), opt.step_count("head.w")), (Some(1), Some(4)));
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownGroup`] if there is no such group; nothing changes then.
    pub fn freeze(&mut self, group: &str) -> Result<()> {
        self.set_frozen(group, true)
    }

    /// Unfreezes the group `group`: its tensors take part in steps again, from the state they
    /// had when it was [frozen](Self::freeze), at the rate the group has now. Unfreezing a
    /// group that is not frozen changes nothing.
    ///
    /// # Errors
    /// [`Error::UnknownGroup`] if there is no such group; nothing changes then.
    pub fn unfreeze(&mut self, group: &str) -> Result<()> {
        self.set_frozen(group, false)
    }

    fn set_frozen(&mut self, group: &str, frozen: bool) -> Result<()> {
        let index = self.registry.group_index(group)?;
        self.registry.groups[index].frozen = frozen;
        Ok(())
    }

    /// Keeps the per-element state of the group `group` in `precision`: bfloat16 or
    /// block-wise 8-bit codes instead of the element type (see [`crate::compact`]), or back
    /// in full precision with [`StatePrecision::Full`], the default.
    ///
    /// The state the group's tensors have is converted now (rounded, or expanded), that of
    /// tensors [assigned](Self::assign) to the group later when they move. Steps then
    /// expand each block of state, update it as in full precision, and store it rounded;
    /// they allocate nothing.
    ///
    /// ```
    /// use ndarray::Array1;
    /// use ndarray_optim::{Adam, Optimizer, StatePrecision};
    ///
    /// let mut opt = Optimizer::new(Adam::default())?;
    /// opt.set_state_precision("default", StatePrecision::Bf16)?;
    /// let mut w = Array1::<f32>::zeros(1000);
    /// opt.step("w", &mut w, &Array1::from_elem(1000, 0.3))?;
    /// assert_eq!(opt.state_bytes(), 2 * 2 * 1000); // two buffers of bfloat16
    /// // (1 − β₁)·0.3 = 0.03, as the nearest bfloat16.
    /// let exp_avg = opt.state_of("w").unwrap().buffer("exp_avg").unwrap()[0];
    /// assert_eq!(exp_avg, 0.030029297);
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// - [`Error::UnknownGroup`] if there is no such group;
    /// - [`Error::UnsupportedStatePrecision`] for low precision with `f64` elements or a rule
    ///   that is not [elementwise](UpdateRule::elementwise) (Lamb, Muon, Adafactor, Prodigy).
    ///
    /// Nothing changes then.
    pub fn set_state_precision(&mut self, group: &str, precision: StatePrecision) -> Result<()> {
        self.registry.set_state_precision(group, precision)
    }

    /// The group that the tensor `param` belongs to, if the optimizer knows the name.
    pub fn group_of(&self, param: &str) -> Option<&str> {
        let slot = self.registry.slots.get(param)?;
        Some(&self.registry.groups[slot.group].name)
    }

    /// The optimizer-wide shared scalar `name` of a rule with a
    /// [reduction](UpdateRule::reduction), e.g. [`Prodigy`](crate::Prodigy)'s step-size
    /// estimate `"d"`; `None` before its first step or for a name the rule does not keep.
    pub fn shared(&self, name: &str) -> Option<f64> {
        let reduction = self.groups().iter().find_map(|group| group.hyper.reduction())?;
        let index = reduction.shared.iter().position(|&shared| shared == name)?;
        self.registry.shared.get(index).copied()
    }

    /// How many steps the tensor `param` has taken, if it has state.
    pub fn step_count(&self, param: &str) -> Option<u64> {
        Some(self.registry.slots.get(param)?.tensor.as_ref()?.step)
    }

    /// Drops every rate a schedule has set: each group steps at its base rate again, and a
    /// new [`LrScheduler`](crate::schedule::LrScheduler) may start from the base rates (it
    /// refuses to replace rates of a schedule in progress).
    pub fn clear_scheduled_lrs(&mut self) {
        for group in &mut self.registry.groups {
            group.scheduled_lr = None;
        }
    }
}

/// Where a batch step finds the gradient of each entry: in the entry itself
/// ([`OwnGradients`]), or elsewhere by the entry's name, such as the mean gradients of
/// [`MultiSteps`](crate::MultiSteps).
pub(crate) trait Gradients<A>: Sync {
    /// The gradient of the entry `name`, whose own gradient is `own`.
    fn of<'g>(&'g self, name: &str, own: &'g ArrayView<'g, A, IxDyn>) -> Gradient<'g, A>;
}

/// A gradient that [`Gradients::of`] gives: an entry's own, borrowed (each pass over a batch
/// asks for it, and a view of a dynamic-dimension array copies its shape), or a view of
/// another.
pub(crate) enum Gradient<'g, A> {
    Own(&'g ArrayView<'g, A, IxDyn>),
    Other(ArrayView<'g, A, IxDyn>),
}

impl<'g, A> Gradient<'g, A> {
    /// The gradient as a view of its own.
    pub(crate) fn into_view(self) -> ArrayView<'g, A, IxDyn> {
        match self {
            Gradient::Own(own) => own.view(),
            Gradient::Other(view) => view,
        }
    }
}

impl<'g, A> core::ops::Deref for Gradient<'g, A> {
    type Target = ArrayView<'g, A, IxDyn>;

    fn deref(&self) -> &Self::Target {
        match self {
            Gradient::Own(own) => own,
            Gradient::Other(view) => view,
        }
    }
}

/// Each entry's own gradient, as [`Optimizer::step_all`] takes them.
struct OwnGradients;

impl<A: Sync> Gradients<A> for OwnGradients {
    fn of<'g>(&'g self, _: &str, own: &'g ArrayView<'g, A, IxDyn>) -> Gradient<'g, A> {
        Gradient::Own(own)
    }
}

/// The number of partial sums that `hyper`'s reduction has.
fn sums_len<R: UpdateRule>(hyper: &R) -> usize {
    hyper.reduction().map_or(0, |reduction| reduction.sums.min(Reduction::MAX_SUMS))
}

/// Steps the entries of a batch that hold their lent state, with the gradients of `grads`;
/// `numel` is their total size. `shared` is the step's reduction, after its combination:
/// the second pass of the tensors of its rule, if they move.
fn step_lent<R: UpdateRule, A: Element>(
    groups: &[ParamGroup<R>],
    batch: &mut [ParamGrad<'_, A>],
    grads: &impl Gradients<A>,
    numel: usize,
    shared: Option<&SharedStep>,
) {
    let step = |entry: &mut ParamGrad<'_, A>| {
        // Entries of frozen groups were lent nothing.
        let Some(lent) = entry.lent.as_mut() else { return };
        let group = &groups[lent.group];
        let shared = match shared {
            Some(shared) if group.hyper.reduction().is_some() => {
                if !shared.moves {
                    return;
                }
                shared.view()
            }
            _ => Shared::default(),
        };
        let grad = grads.of(entry.name, &entry.grad).into_view();
        let param = entry.param.view_mut();
        group.step(param, grad, &mut lent.tensor, lent.transform, shared);
    };
    #[cfg(feature = "rayon")]
    if batch.len() > 1 && crate::kernel::worth_spreading(numel) {
        use crate::kernel::{KernelPath, with_kernel_path};
        use rayon::iter::{IntoParallelRefMutIterator, ParallelIterator};
        // A kernel path pinned on this thread holds on the pool's threads too.
        let path = KernelPath::current();
        return batch.par_iter_mut().for_each(|entry| {
            with_kernel_path(path, || step(entry));
        });
    }
    let _ = numel;
    batch.iter_mut().for_each(step);
}
