//! The registry: parameter groups, and the state of every named tensor.

use ndarray::{ArrayView, ArrayViewMut, CowArray, IxDyn, Order, ShapeBuilder};

use crate::buffer::AlignedBuffer;
use crate::compact::{Compact, QuantMap, StatePrecision};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::kernel::{self, GradTransform, Shared, Stage, TensorStep};
use crate::rule::{ReductionSums, UpdateRule, check_options};
use crate::rules::schedule_free::{Mode, wrong_mode};
use crate::slots::Slots;

mod flat;

/// The name of the group that [`Optimizer::new`](crate::Optimizer::new) creates, which holds
/// every tensor not assigned to another group.
pub const DEFAULT_GROUP: &str = "default";

/// A named set of parameter tensors that share hyperparameters, like one of PyTorch's param
/// groups.
///
/// A group's hyperparameters are a complete rule value of their own (made from the
/// optimizer's defaults with overrides by whoever adds the group); changing them changes the
/// next step of every member. Each named tensor belongs to exactly one group, and the
/// optimizer's registry keeps the tensor's state (step count and buffers) under its name.
///
/// The learning rate in the hyperparameters is the group's *base* rate. A learning-rate
/// [schedule](crate::schedule) sets the group's *current* rate ([`lr`](Self::lr)) from it,
/// which may reach 0 (as PyTorch's schedules may), while the base rate stays validated.
///
/// A group can be [frozen](crate::Optimizer::freeze): its tensors are then left out of every
/// step, state and step count included, until it is unfrozen.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup<R> {
    pub(crate) name: String,
    pub(crate) hyper: R,
    /// The rate a schedule has set, if any; the step uses it instead of `hyper`'s.
    pub(crate) scheduled_lr: Option<f64>,
    /// Whether steps leave the group's tensors out.
    pub(crate) frozen: bool,
    /// How the group keeps its tensors' per-element state.
    pub(crate) state_precision: StatePrecision,
}

impl<R> ParamGroup<R> {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The group's hyperparameters, with its base learning rate.
    pub fn hyper(&self) -> &R {
        &self.hyper
    }

    /// Whether the group is [frozen](crate::Optimizer::freeze): steps leave its tensors out.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// How the group keeps its tensors' per-element state
    /// ([`Optimizer::set_state_precision`](crate::Optimizer::set_state_precision)).
    pub fn state_precision(&self) -> StatePrecision {
        self.state_precision
    }
}

impl<R: UpdateRule> ParamGroup<R> {
    /// The learning rate the group's next step uses: the one a schedule set last, else the
    /// base rate of its hyperparameters.
    pub fn lr(&self) -> f64 {
        self.scheduled_lr.unwrap_or_else(|| self.hyper.options().lr)
    }

    /// The group's base learning rate, the one in its hyperparameters.
    pub fn base_lr(&self) -> f64 {
        self.hyper.options().lr
    }

    fn new(name: &str, hyper: R) -> Self {
        ParamGroup {
            name: name.to_owned(),
            hyper,
            scheduled_lr: None,
            frozen: false,
            state_precision: StatePrecision::Full,
        }
    }

    /// Why the group's tensors cannot be stepped as one flat block, if its rule looks at
    /// whole tensors.
    pub(crate) fn whole_tensor_rule(&self) -> Option<String> {
        (!self.hyper.elementwise()).then(|| {
            format!(
                "its group `{}` has rule `{}`, which looks at whole tensors: step the tensors \
                 one by one",
                self.name,
                self.hyper.name()
            )
        })
    }

    /// Steps one of the group's tensors with the group's hyperparameters at its current rate,
    /// the options stage built from them and the clip's `transform`; `shared` holds the
    /// step's shared scalars if the rule has a reduction.
    pub(crate) fn step<A: Element>(
        &self,
        param: ArrayViewMut<'_, A, IxDyn>,
        grad: ArrayView<'_, A, IxDyn>,
        tensor: &mut TensorState<A>,
        transform: GradTransform<A>,
        shared: Shared<'_>,
    ) {
        self.hyper.step(self.tensor_step(param, grad, tensor, transform, shared));
    }

    /// The first pass of a step of a rule with a reduction over one of the group's tensors,
    /// as [`step`](Self::step) sets it up: adds the tensor's terms to `sums`.
    pub(crate) fn reduce<A: Element>(
        &self,
        param: ArrayViewMut<'_, A, IxDyn>,
        grad: ArrayView<'_, A, IxDyn>,
        tensor: &mut TensorState<A>,
        transform: GradTransform<A>,
        shared: Shared<'_>,
        sums: &mut ReductionSums,
    ) {
        self.hyper.reduce(self.tensor_step(param, grad, tensor, transform, shared), sums);
    }

    fn tensor_step<'t, A: Element>(
        &self,
        param: ArrayViewMut<'t, A, IxDyn>,
        grad: ArrayView<'t, A, IxDyn>,
        tensor: &'t mut TensorState<A>,
        transform: GradTransform<A>,
        shared: Shared<'t>,
    ) -> TensorStep<'t, A> {
        let lr = self.lr();
        let stage = Stage::new(self.hyper.options(), lr, transform);
        let TensorState { step, order, buffers, compact, elementwise, scratch, scalars, .. } =
            tensor;
        let (state, scratch, scalars) =
            (&mut buffers[..], scratch.as_mut_slice(), scalars.as_mut_slice());
        TensorStep {
            param,
            grad,
            state,
            compact: compact.as_mut(),
            elementwise: *elementwise,
            scratch,
            scalars,
            order: *order,
            stage,
            step: *step,
            lr,
            shared,
        }
    }
}

/// Validates hyperparameters entering an optimizer: the options the driver applies, then the
/// rule's own.
pub(crate) fn validate<R: UpdateRule>(hyper: &R) -> Result<()> {
    check_options(hyper.name(), hyper.options())?;
    hyper.validate()
}

/// The optimizer state of one tensor, created on its first step.
#[derive(Clone, Debug)]
pub(crate) struct TensorState<A> {
    /// Steps taken so far.
    pub(crate) step: u64,
    pub(crate) shape: Vec<usize>,
    /// Memory order of every buffer, chosen to match the parameter's layout.
    pub(crate) order: Order,
    /// Whether `order` is still to be matched to the parameter on the next step (state that
    /// was restored rather than created by a step).
    pub(crate) order_pending: bool,
    /// The rule's buffers: the per-element ones, `numel` elements each, then the shaped
    /// ones (row-major), one after the other, aligned for streaming ([`AlignedBuffer`]).
    /// Empty when `compact` holds the per-element ones (rules with shaped buffers are not
    /// elementwise, and keep full precision).
    pub(crate) buffers: AlignedBuffer<A>,
    /// The per-element buffers in low precision, row-major (`order` is then row-major).
    pub(crate) compact: Option<Compact>,
    /// How many of the buffers are per-element ones.
    pub(crate) elementwise: usize,
    /// Name and shape of each shaped buffer, as [`UpdateRule::shaped_state`] gave them when
    /// the state was created, so that views and checkpoints find them without the rule.
    pub(crate) shaped_layout: Vec<(&'static str, Vec<usize>)>,
    /// The rule's working memory: no state, never compared or checkpointed.
    pub(crate) scratch: Vec<A>,
    /// The rule's per-tensor scalars, one per name in [`UpdateRule::scalar_names`].
    pub(crate) scalars: Vec<f64>,
}

impl<A: Element> TensorState<A> {
    /// The state before a tensor's first step, every value at the rule's initial value, the
    /// per-element buffers stored in `precision` (resolved for the tensor's size).
    fn initial<R: UpdateRule>(
        hyper: &R,
        shape: &[usize],
        order: Order,
        precision: StatePrecision,
    ) -> Self {
        let numel = shape.iter().product::<usize>();
        let (names, shaped) = (hyper.state_names(), hyper.shaped_state(shape));
        let shaped_len: usize =
            shaped.iter().map(|(_, shape)| shape.iter().product::<usize>()).sum();
        let mut buffers = AlignedBuffer::filled(names.len() * numel + shaped_len, A::zero());
        let lens = names.iter().map(|&name| (name, numel));
        let shaped_lens = shaped.iter().map(|(name, shape)| (*name, shape.iter().product()));
        let mut rest = &mut buffers[..];
        for (name, len) in lens.chain(shaped_lens) {
            let (buffer, tail) = rest.split_at_mut(len);
            buffer.fill(A::from_f64(hyper.initial_value(name)));
            rest = tail;
        }
        let scalars = hyper.scalar_names().iter().map(|name| hyper.initial_value(name)).collect();
        let mut state = TensorState {
            step: 0,
            shape: shape.to_vec(),
            order,
            order_pending: false,
            buffers,
            compact: None,
            elementwise: names.len(),
            shaped_layout: shaped,
            scratch: vec![A::zero(); hyper.scratch_len(shape)],
            scalars,
        };
        state.store_as(hyper, precision);
        state
    }

    /// Keeps the per-element buffers in `target`, a precision resolved for the tensor's size
    /// ([`precision_of`]), converting the values if they are kept otherwise:
    /// expanded to the element type, or rounded.
    pub(crate) fn store_as<R: UpdateRule>(&mut self, hyper: &R, target: StatePrecision) {
        let numel = self.numel();
        if self.compact.as_ref().map_or(target == StatePrecision::Full, |c| c.holds(target)) {
            return;
        }
        let values = match self.compact.take() {
            Some(compact) => {
                let mut values = AlignedBuffer::filled(self.elementwise * numel, A::zero());
                compact.decode(numel, &mut values);
                values
            }
            None => {
                self.relayout(Order::RowMajor);
                core::mem::take(&mut self.buffers)
            }
        };
        if target == StatePrecision::Full {
            self.buffers = values;
        } else {
            let maps = quant_maps(hyper);
            self.compact = Some(Compact::encode(target, &values, numel, maps));
            self.order = Order::RowMajor;
        }
    }
}

/// Refuses low-precision state for a rule that is not elementwise or for `f64` elements.
pub(crate) fn check_precision<R: UpdateRule, A: Element>(
    group: &str,
    hyper: &R,
    precision: StatePrecision,
) -> Result<()> {
    let reason = match precision {
        StatePrecision::Full => return Ok(()),
        _ if !A::LOW_PRECISION_STATE => "the formats are defined for f32 elements",
        _ if !hyper.elementwise() => "the rule does not step its state value by value",
        _ => return Ok(()),
    };
    Err(Error::UnsupportedStatePrecision { group: group.to_owned(), rule: hyper.name(), reason })
}

/// The 8-bit map of each per-element buffer of `hyper`'s rule: unsigned for the buffers it
/// keeps non-negative, signed for the others.
pub(crate) fn quant_maps<R: UpdateRule>(hyper: &R) -> Vec<QuantMap> {
    let non_negative = hyper.non_negative_state();
    let map =
        |name| if non_negative.contains(name) { QuantMap::Unsigned } else { QuantMap::Signed };
    hyper.state_names().iter().map(map).collect()
}

impl<A> TensorState<A> {
    pub(crate) fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Per-element buffer `index` viewed with the tensor's shape (logical indexing, any
    /// memory order); low-precision values expanded to the element type.
    pub(crate) fn buffer(&self, index: usize) -> CowArray<'_, A, IxDyn>
    where
        A: Element,
    {
        let numel = self.numel();
        let Some(compact) = &self.compact else {
            return self.full_buffer(index).into();
        };
        let mut values = vec![A::zero(); numel];
        compact.stored(index, numel).expand(&mut values);
        ndarray::Array::from_shape_vec(IxDyn(&self.shape), values)
            .expect("every buffer holds exactly the elements of the tensor's shape")
            .into()
    }

    /// Per-element buffer `index` of full-precision state, viewed with the tensor's shape.
    fn full_buffer(&self, index: usize) -> ArrayView<'_, A, IxDyn> {
        let numel = self.numel();
        let values = &self.buffers[index * numel..(index + 1) * numel];
        let shape = IxDyn(&self.shape).set_f(self.order == Order::ColumnMajor);
        ArrayView::from_shape(shape, values)
            .expect("every buffer holds exactly the elements of the tensor's shape")
    }

    /// The shaped buffers, one after the other, row-major.
    pub(crate) fn shaped(&self) -> &[A] {
        // Low-precision state keeps its per-element buffers in `compact`, and has no shaped
        // ones: `buffers` is empty then.
        let per_element = if self.compact.is_some() { 0 } else { self.elementwise * self.numel() };
        &self.buffers[per_element..]
    }

    /// Shaped buffer `index` (of [`shaped_layout`](Self::shaped_layout)) viewed with its own
    /// shape.
    pub(crate) fn shaped_buffer(&self, index: usize) -> ArrayView<'_, A, IxDyn> {
        let len = |shape: &Vec<usize>| shape.iter().product::<usize>();
        let start: usize = self.shaped_layout[..index].iter().map(|(_, shape)| len(shape)).sum();
        let shape = &self.shaped_layout[index].1;
        ArrayView::from_shape(IxDyn(shape), &self.shaped()[start..start + len(shape)])
            .expect("the shaped buffers hold exactly the elements of their shapes")
    }
}

impl<A: Element> TensorState<A> {
    /// Lays every per-element buffer out in `order`, copying the values.
    fn relayout(&mut self, order: Order) {
        // Low-precision state stays row-major: its blocks are the same for every layout.
        if order != self.order && self.compact.is_none() {
            let mut buffers = AlignedBuffer::filled(self.buffers.len(), A::zero());
            let mut slots = buffers.iter_mut();
            for index in 0..self.elementwise {
                let buffer = self.buffer(index);
                let values: &mut dyn Iterator<Item = &A> = if order == Order::ColumnMajor {
                    &mut buffer.t().into_iter()
                } else {
                    &mut buffer.iter()
                };
                // The values first: `zip` stops on them without taking a slot too many.
                values.zip(slots.by_ref()).for_each(|(&value, slot)| *slot = value);
            }
            slots.zip(self.shaped()).for_each(|(slot, &value)| *slot = value);
            self.buffers = buffers;
            self.order = order;
        }
        self.order_pending = false;
    }
}

/// Refuses hyperparameters that would need other state buffers or scalars than the tensor
/// `param` of `shape` has.
fn check_same_buffers<R: UpdateRule>(
    param: &str,
    shape: &[usize],
    current: &R,
    requested: &R,
) -> Result<()> {
    let change = |current, requested| Error::StateBuffersChange {
        param: param.to_owned(),
        current,
        requested,
    };
    if current.state_names() != requested.state_names() {
        Err(change(current.state_names(), requested.state_names()))
    } else if current.scalar_names() != requested.scalar_names() {
        Err(change(current.scalar_names(), requested.scalar_names()))
    } else if current.shaped_state(shape) != requested.shaped_state(shape) {
        Err(Error::StateLayoutChange {
            param: param.to_owned(),
            current: current.name(),
            requested: requested.name(),
        })
    } else {
        Ok(())
    }
}

/// Equal state: the same step count, shape and buffer values, whatever their memory order;
/// low-precision buffers the same bytes and scales.
impl<A: PartialEq> PartialEq for TensorState<A> {
    fn eq(&self, other: &Self) -> bool {
        let same_buffers = match (&self.compact, &other.compact) {
            (None, None) => (0..self.elementwise)
                .all(|index| self.full_buffer(index) == other.full_buffer(index)),
            (compact, other) => compact == other,
        };
        self.step == other.step
            && self.shape == other.shape
            && self.scalars == other.scalars
            && self.elementwise == other.elementwise
            && self.shaped_layout == other.shaped_layout
            && same_buffers
            && self.shaped() == other.shaped()
    }
}

/// A named tensor's group and, once it has been stepped, its state.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Slot<A> {
    pub(crate) group: usize,
    /// Boxed, so that a batch step lends it out and takes it back by moving a pointer.
    pub(crate) tensor: Option<Box<TensorState<A>>>,
    /// The last batch that named this tensor.
    pub(crate) batch: BatchMark,
}

impl<A> Slot<A> {
    pub(crate) fn new(group: usize, tensor: Option<TensorState<A>>) -> Self {
        Slot { group, tensor: tensor.map(Box::new), batch: BatchMark(0) }
    }
}

/// The number of a [`step_all`](crate::Optimizer::step_all) batch, stamped on each slot the
/// batch names so that a name given twice is found with one lookup per entry and no
/// allocation. Bookkeeping, not state: it never takes part in equality.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BatchMark(u64);

impl PartialEq for BatchMark {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Groups and the per-name slots. Invariant: every slot's group index is valid, group names
/// are unique, and every group's hyperparameters have been validated.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Registry<R, A> {
    pub(crate) groups: Vec<ParamGroup<R>>,
    pub(crate) slots: Slots<A>,
    /// Whether the slots are the model's whole list of tensors
    /// ([`Optimizer::declare`](crate::Optimizer::declare)): then a name without a slot is an
    /// error rather than a new tensor.
    pub(crate) declared: bool,
    /// The mark of the latest batch.
    batches: BatchMark,
    /// The number of elements of the whole tensor of which each name's state is a part, in a
    /// rank's share of a [sharded optimizer](crate::ShardedOptimizer) (empty otherwise): a
    /// group's [`StatePrecision`] is decided by whole tensors' sizes, which parts lack.
    whole_numels: hashbrown::HashMap<String, usize>,
    /// The optimizer-wide shared scalars of the rule with a reduction, named by its
    /// [`Reduction::shared`](crate::rule::Reduction::shared): empty until its first step.
    pub(crate) shared: Vec<f64>,
}

/// The reduction of a step, for the groups whose rule has one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepReduction {
    /// The first group whose rule has a reduction: its hyperparameters combine the sums.
    pub(crate) first: usize,
    /// The largest current learning rate of those groups.
    pub(crate) lr: f64,
}

impl<R: UpdateRule, A: Element> Registry<R, A> {
    pub(crate) fn new(defaults: R) -> Result<Self> {
        validate(&defaults)?;
        let groups = vec![ParamGroup::new(DEFAULT_GROUP, defaults)];
        Ok(Registry {
            groups,
            slots: Slots::default(),
            declared: false,
            batches: BatchMark(0),
            whole_numels: hashbrown::HashMap::new(),
            shared: Vec::new(),
        })
    }

    /// Fails with [`Error::UnknownParam`] if the model's tensors are declared and `param` is
    /// not one of them.
    pub(crate) fn check_known(&self, param: &str) -> Result<()> {
        if !self.declared || self.slots.contains_key(param) {
            return Ok(());
        }
        Err(self.unknown(param))
    }

    /// [`Error::UnknownParam`] for `param`, naming the closest known name.
    fn unknown(&self, param: &str) -> Error {
        let closest = closest_name(param, self.slots.keys().map(String::as_str));
        Error::UnknownParam { param: param.to_owned(), closest: closest.map(str::to_owned) }
    }

    /// The slot of the known tensor `param`, or [`Error::UnknownParam`].
    pub(crate) fn known_slot(&mut self, param: &str) -> Result<&mut Slot<A>> {
        if !self.slots.contains_key(param) {
            return Err(self.unknown(param));
        }
        Ok(self.slots.get_mut(param).expect("the name was just found"))
    }

    /// Forgets the known tensor `param`: its group, its state and its declaration.
    pub(crate) fn remove(&mut self, param: &str) -> Result<()> {
        self.known_slot(param)?;
        self.slots.remove(param);
        Ok(())
    }

    /// Gives the slot of the known tensor `from` the name `to`, which must be new.
    pub(crate) fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.known_slot(from)?;
        if from != to && self.slots.contains_key(to) {
            return Err(Error::ParamExists { param: to.to_owned() });
        }
        let slot = self.slots.remove(from).expect("the name was just found");
        self.slots.insert(to.to_owned(), slot);
        Ok(())
    }

    /// The names of the tensors in group `group`, sorted.
    pub(crate) fn members(&self, group: usize) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.group == group)
            .map(|(name, _)| name.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// Declares `names` as the model's tensors, in the default group unless assigned already.
    pub(crate) fn declare<'n>(&mut self, names: impl IntoIterator<Item = &'n str>) -> Result<()> {
        let mut new = hashbrown::HashSet::new();
        for name in names {
            if !new.insert(name) {
                return Err(Error::DuplicateParam {
                    param: name.to_owned(),
                    in_what: "declaration",
                });
            }
        }
        for name in new {
            self.slot_of(name);
        }
        self.declared = true;
        Ok(())
    }

    /// Starts a batch: later [`named_again`](Self::named_again) calls find names given twice
    /// in it.
    pub(crate) fn start_batch(&mut self) {
        self.batches.0 += 1;
    }

    /// Stamps `param`'s slot with the current batch: `Some(true)` if the batch named it
    /// already, `None` if it has no slot.
    pub(crate) fn named_again(&mut self, param: &str) -> Option<bool> {
        self.slots.position(param).map(|slot| self.named_again_at(slot))
    }

    /// [`named_again`](Self::named_again) for the slot at position `slot`.
    pub(crate) fn named_again_at(&mut self, slot: usize) -> bool {
        let batch = self.batches.0;
        let slot = self.slots.at_mut(slot);
        let again = slot.batch.0 == batch;
        slot.batch.0 = batch;
        again
    }

    /// Whether the tensor `param` is in a frozen group (a name without a slot is in the
    /// default group). No lookup while no group is frozen.
    pub(crate) fn is_frozen(&self, param: &str) -> bool {
        self.any_frozen() && self.is_frozen_at(self.slots.position(param))
    }

    /// [`is_frozen`](Self::is_frozen) for the slot at position `slot` (`None`: a name without
    /// a slot).
    pub(crate) fn is_frozen_at(&self, slot: Option<usize>) -> bool {
        self.any_frozen() && self.group_at(slot).frozen
    }

    /// The group of the tensor in the slot at position `slot`; the default group for a name
    /// without a slot, where its first step puts it.
    pub(crate) fn group_at(&self, slot: Option<usize>) -> &ParamGroup<R> {
        &self.groups[slot.map_or(0, |slot| self.slots.at(slot).group)]
    }

    fn any_frozen(&self) -> bool {
        self.groups.iter().any(|group| group.frozen)
    }

    /// The reduction of the next step, `None` if no group's rule has one (one pass over the
    /// groups, no allocation), after checking the learning rates: like prodigyopt, every
    /// group of such a rule steps at the largest of their rates or at 0.
    ///
    /// # Errors
    /// [`Error::UnequalGroupLr`] naming the first group at another rate,
    /// [`Error::ReductionSettingDiffers`] naming the first group whose rule reads a setting
    /// from the first group that it does not share.
    pub(crate) fn reduction(&self) -> Result<Option<StepReduction>> {
        let reducing =
            || self.groups.iter().enumerate().filter(|(_, g)| g.hyper.reduction().is_some());
        let Some((first, _)) = reducing().next() else { return Ok(None) };
        let lr = reducing().map(|(_, group)| group.lr()).fold(0.0, f64::max);
        if let Some((_, group)) = reducing().find(|(_, g)| g.lr() != lr && g.lr() != 0.0) {
            let (group, given) = (group.name.clone(), group.lr());
            return Err(Error::UnequalGroupLr { group, lr: given, expected: lr });
        }
        let first_group = &self.groups[first];
        for (_, group) in reducing() {
            if let Some(key) = group.hyper.reduction_mismatch(&first_group.hyper) {
                return Err(Error::ReductionSettingDiffers {
                    group: group.name.clone(),
                    key,
                    first: first_group.name.clone(),
                });
            }
        }
        Ok(Some(StepReduction { first, lr }))
    }

    /// The shared scalars, created from the first reducing group's initial values before
    /// the first step of a rule with a reduction.
    pub(crate) fn shared_mut(&mut self, reduction: StepReduction) -> &mut [f64] {
        if self.shared.is_empty() {
            let hyper = &self.groups[reduction.first].hyper;
            let names = hyper.reduction().map_or(&[][..], |reduction| reduction.shared);
            self.shared = names.iter().map(|name| hyper.initial_value(name)).collect();
        }
        &mut self.shared
    }

    pub(crate) fn group_index(&self, name: &str) -> Result<usize> {
        self.groups
            .iter()
            .position(|group| group.name == name)
            .ok_or_else(|| Error::UnknownGroup { group: name.to_owned() })
    }

    pub(crate) fn add_group(&mut self, name: &str, hyper: R) -> Result<()> {
        if self.group_index(name).is_ok() {
            return Err(Error::DuplicateGroup { group: name.to_owned() });
        }
        validate(&hyper)?;
        self.groups.push(ParamGroup::new(name, hyper));
        Ok(())
    }

    /// Keeps the per-element state of the group's tensors in `precision` from now on,
    /// converting the state they have.
    pub(crate) fn set_state_precision(
        &mut self,
        group: &str,
        precision: StatePrecision,
    ) -> Result<()> {
        let index = self.group_index(group)?;
        let group = &mut self.groups[index];
        check_precision::<R, A>(&group.name, &group.hyper, precision)?;
        group.state_precision = precision;
        self.keep_state_precisions(Some(index));
        Ok(())
    }

    /// Records, for a rank's share of a sharded optimizer, the size of the whole tensor of
    /// which each name's state is a part, and keeps the state the names have in the precision
    /// their groups keep for that size.
    pub(crate) fn set_whole_numels<'n>(
        &mut self,
        whole: impl IntoIterator<Item = (&'n str, usize)>,
    ) {
        self.whole_numels =
            whole.into_iter().map(|(name, numel)| (name.to_owned(), numel)).collect();
        self.keep_state_precisions(None);
    }

    /// Keeps the state of every tensor (of the group at index `only`, if given) in the
    /// precision its group keeps for its size, converting what is kept otherwise.
    fn keep_state_precisions(&mut self, only: Option<usize>) {
        let chosen = |slot: &&mut Slot<A>| only.is_none_or(|group| slot.group == group);
        for (name, slot) in self.slots.iter_mut().filter(|(_, slot)| chosen(slot)) {
            let group = &self.groups[slot.group];
            if let Some(tensor) = &mut slot.tensor {
                let numel = tensor.numel();
                let target = precision_of(&self.whole_numels, group.state_precision, name, numel);
                tensor.store_as(&group.hyper, target);
            }
        }
    }

    pub(crate) fn set_hyper(&mut self, group: &str, hyper: R) -> Result<()> {
        let index = self.group_index(group)?;
        self.check_hyper(index, &hyper)?;
        self.groups[index].hyper = hyper;
        Ok(())
    }

    /// Fails unless `hyper` can replace the hyperparameters of the group at `index`: in
    /// range, and needing the state that the group's stepped tensors have. No allocation for
    /// rules whose state has the tensor's shape.
    pub(crate) fn check_hyper(&self, index: usize, hyper: &R) -> Result<()> {
        validate(hyper)?;
        let group = &self.groups[index];
        check_precision::<R, A>(&group.name, hyper, group.state_precision)?;
        for (param, shape) in self.stepped_members(index) {
            check_same_buffers(param, shape, &self.groups[index].hyper, hyper)?;
        }
        Ok(())
    }

    /// Names and shapes of the group's tensors that have state.
    fn stepped_members(&self, group: usize) -> impl Iterator<Item = (&str, &[usize])> {
        self.slots.iter().filter(move |(_, slot)| slot.group == group).filter_map(|(name, slot)| {
            Some((name.as_str(), slot.tensor.as_ref()?.shape.as_slice()))
        })
    }

    pub(crate) fn assign(&mut self, param: &str, group: &str) -> Result<()> {
        let group = self.group_index(group)?;
        self.check_known(param)?;
        match self.slots.get_mut(param) {
            Some(slot) => {
                let (current, requested) = (&self.groups[slot.group], &self.groups[group]);
                if let Some(tensor) = &mut slot.tensor {
                    check_same_buffers(param, &tensor.shape, &current.hyper, &requested.hyper)?;
                    let (precision, numel) = (requested.state_precision, tensor.numel());
                    let target = precision_of(&self.whole_numels, precision, param, numel);
                    tensor.store_as(&requested.hyper, target);
                }
                slot.group = group;
            }
            None => {
                self.slots.insert(param.to_owned(), Slot::new(group, None));
            }
        }
        Ok(())
    }

    /// Takes the state out of the slot at position `slot`, which
    /// [`prepare`](Self::prepare) has given state, for a batch step to lend.
    pub(crate) fn take(&mut self, slot: usize) -> Box<TensorState<A>> {
        self.slots.at_mut(slot).tensor.take().expect("a prepared slot has state")
    }

    /// Puts back the state that [`take`](Self::take) took out of the slot at position `slot`.
    pub(crate) fn give_back(&mut self, slot: usize, tensor: Box<TensorState<A>>) {
        self.slots.at_mut(slot).tensor = Some(tensor);
    }

    /// Fails if `param` cannot take a step with a tensor of `shape`: it is not a declared
    /// tensor, its group's rule cannot step that shape, it has state for another shape, or
    /// its step count is at its limit. Else the position of its slot, if it has one.
    pub(crate) fn check_step(&self, param: &str, shape: &[usize]) -> Result<Option<usize>> {
        let position = self.slots.position(param);
        if self.declared && position.is_none() {
            return Err(self.unknown(param));
        }
        let slot = position.map(|position| self.slots.at(position));
        let hyper = &self.groups[slot.map_or(0, |slot| slot.group)].hyper;
        hyper.check_shape(shape).map_err(|requirement| Error::UnsupportedShape {
            param: param.to_owned(),
            rule: hyper.name(),
            shape: shape.to_vec(),
            requirement,
        })?;
        match slot.and_then(|slot| slot.tensor.as_ref()) {
            Some(tensor) if tensor.shape != shape => Err(Error::ShapeChanged {
                param: param.to_owned(),
                registered: tensor.shape.clone(),
                given: shape.to_vec(),
            }),
            Some(tensor) if hyper.in_eval_mode(&tensor.scalars) => {
                Err(wrong_mode(param, Mode::Eval))
            }
            Some(tensor) if tensor.step == u64::MAX => {
                Err(Error::StepCountOverflow { param: param.to_owned() })
            }
            _ => Ok(position),
        }
    }

    /// The position of `param`'s slot, created (in the default group) if it has none: the
    /// name is copied only then, so a registered name's step allocates nothing.
    pub(crate) fn slot_of(&mut self, param: &str) -> usize {
        self.slots.position_or_insert(param, || Slot::new(0, None))
    }

    /// The group index, the group and the state that the next step of the tensor in the slot
    /// at position `slot` uses, creating the state on the tensor's first step, laid out in
    /// the order that suits `param`. The shape must have passed
    /// [`check_step`](Self::check_step).
    pub(crate) fn prepare(
        &mut self,
        slot: usize,
        param: &ArrayViewMut<'_, A, IxDyn>,
    ) -> (usize, &ParamGroup<R>, &mut TensorState<A>) {
        // The order is worked out only where it is used: a layout check is a noticeable part
        // of a small tensor's bookkeeping.
        let shape = param.shape();
        let (name, slot) = self.slots.entry_at(slot);
        let group = &self.groups[slot.group];
        let tensor = match &mut slot.tensor {
            Some(tensor) => tensor,
            empty => {
                let numel = shape.iter().product();
                let precision =
                    precision_of(&self.whole_numels, group.state_precision, name, numel);
                let order = kernel::preferred_order(param);
                empty.insert(Box::new(TensorState::initial(&group.hyper, shape, order, precision)))
            }
        };
        if tensor.order_pending {
            tensor.relayout(kernel::preferred_order(param));
        }
        // Only a tensor moved to a group whose rule works in more memory allocates here.
        let scratch = group.hyper.scratch_len(shape);
        if tensor.scratch.len() != scratch {
            tensor.scratch.resize(scratch, A::zero());
        }
        (slot.group, group, tensor)
    }
}

/// The precision in which a group keeping `precision` keeps the state of tensor `name` of
/// `numel` elements: decided by the size of the whole tensor if `name`'s state is a part of
/// one ([`Registry::set_whole_numels`]), else by `numel`.
fn precision_of(
    whole_numels: &hashbrown::HashMap<String, usize>,
    precision: StatePrecision,
    name: &str,
    numel: usize,
) -> StatePrecision {
    // No lookup for an optimizer of whole tensors.
    let whole = if whole_numels.is_empty() { None } else { whole_numels.get(name).copied() };
    precision.for_numel(whole.unwrap_or(numel))
}

/// The name among `names` closest to `name` by edit distance, if it is close enough to be a
/// likely typo (at most a third of the name's characters differ).
pub(crate) fn closest_name<'n>(
    name: &str,
    names: impl Iterator<Item = &'n str>,
) -> Option<&'n str> {
    let limit = name.chars().count().div_ceil(3);
    names
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|&(distance, _)| distance <= limit)
        .min()
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance between `a` and `b`, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(diagonal + 1).min(row[j] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::edit_distance;

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("head.weight", "head.weigth"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
