//! The registry: parameter groups, and the state of every named tensor.

use std::collections::HashMap;

use ndarray::{ArrayView, IxDyn, Order, ShapeBuilder};

use crate::element::Element;
use crate::error::{Error, Result};
use crate::rule::UpdateRule;

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
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup<R> {
    pub(crate) name: String,
    pub(crate) hyper: R,
}

impl<R> ParamGroup<R> {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The group's hyperparameters.
    pub fn hyper(&self) -> &R {
        &self.hyper
    }
}

/// The optimizer state of one tensor, created on its first step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorState<A> {
    /// Steps taken so far.
    pub(crate) step: u64,
    pub(crate) shape: Vec<usize>,
    /// Memory order of every buffer, chosen to match the parameter's layout.
    pub(crate) order: Order,
    /// Whether `order` is still to be matched to the parameter on the next step (state that
    /// was restored rather than created by a step).
    pub(crate) order_pending: bool,
    /// The rule's buffers, one after the other, `numel` elements each.
    pub(crate) buffers: Vec<A>,
}

impl<A: Element> TensorState<A> {
    pub(crate) fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Buffer `index` viewed with the tensor's shape (logical indexing, any memory order).
    pub(crate) fn buffer(&self, index: usize) -> ArrayView<'_, A, IxDyn> {
        let numel = self.numel();
        let values = &self.buffers[index * numel..(index + 1) * numel];
        let shape = IxDyn(&self.shape).set_f(self.order == Order::ColumnMajor);
        ArrayView::from_shape(shape, values)
            .expect("every buffer holds exactly the elements of the tensor's shape")
    }

    /// Lays every buffer out in `order`, copying the values.
    fn relayout(&mut self, order: Order) {
        if order != self.order {
            let numel = self.numel();
            let mut buffers = Vec::with_capacity(self.buffers.len());
            for index in 0..self.buffers.len() / numel.max(1) {
                let buffer = self.buffer(index);
                if order == Order::ColumnMajor {
                    buffers.extend(buffer.t().iter().copied());
                } else {
                    buffers.extend(buffer.iter().copied());
                }
            }
            self.buffers = buffers;
            self.order = order;
        }
        self.order_pending = false;
    }
}

/// Refuses hyperparameters that would need other state buffers than a tensor has.
fn check_same_buffers(
    param: &str,
    current: &'static [&'static str],
    requested: &'static [&'static str],
) -> Result<()> {
    if current == requested {
        Ok(())
    } else {
        Err(Error::StateBuffersChange { param: param.to_owned(), current, requested })
    }
}

/// A named tensor's group and, once it has been stepped, its state.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Slot<A> {
    pub(crate) group: usize,
    pub(crate) tensor: Option<TensorState<A>>,
}

/// Groups and the per-name slots. Invariant: every slot's group index is valid, group names
/// are unique, and every group's hyperparameters have been validated.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Registry<R, A> {
    pub(crate) groups: Vec<ParamGroup<R>>,
    pub(crate) slots: HashMap<String, Slot<A>>,
}

impl<R: UpdateRule, A: Element> Registry<R, A> {
    pub(crate) fn new(defaults: R) -> Result<Self> {
        defaults.validate()?;
        let groups = vec![ParamGroup { name: DEFAULT_GROUP.to_owned(), hyper: defaults }];
        Ok(Registry { groups, slots: HashMap::new() })
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
        hyper.validate()?;
        self.groups.push(ParamGroup { name: name.to_owned(), hyper });
        Ok(())
    }

    pub(crate) fn set_hyper(&mut self, group: &str, hyper: R) -> Result<()> {
        let index = self.group_index(group)?;
        hyper.validate()?;
        let current = self.groups[index].hyper.state_names();
        if let Some(param) = self.stepped_members(index).next() {
            check_same_buffers(param, current, hyper.state_names())?;
        }
        self.groups[index].hyper = hyper;
        Ok(())
    }

    /// Names of the group's tensors that have state.
    fn stepped_members(&self, group: usize) -> impl Iterator<Item = &str> {
        self.slots
            .iter()
            .filter(move |(_, slot)| slot.group == group && slot.tensor.is_some())
            .map(|(name, _)| name.as_str())
    }

    pub(crate) fn assign(&mut self, param: &str, group: &str) -> Result<()> {
        let group = self.group_index(group)?;
        match self.slots.get_mut(param) {
            Some(slot) => {
                if slot.tensor.is_some() {
                    let current = self.groups[slot.group].hyper.state_names();
                    check_same_buffers(param, current, self.groups[group].hyper.state_names())?;
                }
                slot.group = group;
            }
            None => {
                self.slots.insert(param.to_owned(), Slot { group, tensor: None });
            }
        }
        Ok(())
    }

    /// Puts back the state buffers that [`Optimizer::step_all`](crate::Optimizer::step_all)
    /// took out of the registered tensor `param`.
    pub(crate) fn give_back(&mut self, param: &str, buffers: Vec<A>) {
        let tensor = self.slots.get_mut(param).and_then(|slot| slot.tensor.as_mut());
        tensor.expect("a lent state belongs to a registered tensor").buffers = buffers;
    }

    /// Fails if `param` has state for another shape than `shape`.
    pub(crate) fn check_shape(&self, param: &str, shape: &[usize]) -> Result<()> {
        match self.slots.get(param).and_then(|slot| slot.tensor.as_ref()) {
            Some(tensor) if tensor.shape != shape => Err(Error::ShapeChanged {
                param: param.to_owned(),
                registered: tensor.shape.clone(),
                given: shape.to_vec(),
            }),
            _ => Ok(()),
        }
    }

    /// The group index, its hyperparameters and the state that the next step of `param`
    /// uses, creating the state (in `order`) on the tensor's first step. The shape must have
    /// passed [`check_shape`](Self::check_shape).
    pub(crate) fn prepare(
        &mut self,
        param: &str,
        shape: &[usize],
        order: Order,
    ) -> (usize, &R, &mut TensorState<A>) {
        // Looking up before inserting keeps a registered name's step free of allocation.
        if !self.slots.contains_key(param) {
            self.slots.insert(param.to_owned(), Slot { group: 0, tensor: None });
        }
        let slot = self.slots.get_mut(param).expect("the slot exists or was just inserted");
        let hyper = &self.groups[slot.group].hyper;
        let state_len = hyper.state_names().len() * shape.iter().product::<usize>();
        let tensor = match &mut slot.tensor {
            Some(tensor) => tensor,
            empty => empty.insert(TensorState {
                step: 0,
                shape: shape.to_vec(),
                order,
                order_pending: false,
                buffers: vec![A::zero(); state_len],
            }),
        };
        if tensor.order_pending {
            tensor.relayout(order);
        }
        (slot.group, hyper, tensor)
    }
}
