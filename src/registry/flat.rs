//! A [`FlatParams`] block's state moved to its tensors and back: the state each tensor would
//! have had, stepped one by one, for a rule that updates element by element.

use ndarray::Order;

use super::{Registry, Slot, TensorState, precision_of};
use crate::compact::StatePrecision;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::flat::{FlatParams, FlatTensor};
use crate::rule::UpdateRule;

impl<R: UpdateRule, A: Element> Registry<R, A> {
    /// Replaces the entry of `block` with one entry per tensor, in the block's group, each
    /// with its part of the block's state.
    pub(crate) fn split_flat(&mut self, block: &FlatParams<A>) -> Result<()> {
        let name = block.name();
        let position = self.slots.position(name).ok_or_else(|| self.unknown(name))?;
        if let Some(tensor) = block.tensors().iter().find(|t| self.slots.contains_key(t.name())) {
            return Err(Error::ParamExists { param: tensor.name().to_owned() });
        }
        let slot = self.slots.at(position);
        let group = slot.group;
        self.check_movable(name, group)?;
        let parts = match &slot.tensor {
            None => block.tensors().iter().map(|_| None).collect(),
            Some(state) => {
                let len = block.len();
                if state.shape != [len] {
                    return Err(Error::ShapeChanged {
                        param: name.to_owned(),
                        registered: state.shape.clone(),
                        given: vec![len],
                    });
                }
                let values = state.row_major_values();
                let part = |tensor: &FlatTensor| {
                    let buffers = values.chunks(len.max(1)).take(state.elementwise);
                    let values: Vec<A> =
                        buffers.flat_map(|buffer| &buffer[tensor.range()]).copied().collect();
                    let shape = tensor.shape();
                    Some(self.moved_state(group, tensor.name(), shape, state, &values))
                };
                block.tensors().iter().map(part).collect::<Vec<_>>()
            }
        };
        self.slots.remove(name);
        for (tensor, state) in block.tensors().iter().zip(parts) {
            self.slots.insert(tensor.name().to_owned(), Slot::new(group, state));
        }
        Ok(())
    }

    /// Replaces the entries of `block`'s tensors, all in one group and stepped together,
    /// with one entry for the block, their states one after the other.
    pub(crate) fn join_flat(&mut self, block: &FlatParams<A>) -> Result<()> {
        let name = block.name();
        if self.slots.contains_key(name) {
            return Err(Error::ParamExists { param: name.to_owned() });
        }
        let mut slots = Vec::with_capacity(block.tensors().len());
        for tensor in block.tensors() {
            let slot = self.slots.get(tensor.name()).ok_or_else(|| self.unknown(tensor.name()))?;
            slots.push((tensor, slot));
        }
        let group = slots.first().map_or(0, |(_, slot)| slot.group);
        let refuse = |reason: String| Error::FlatUnsupported { param: name.to_owned(), reason };
        if let Some((tensor, _)) = slots.iter().find(|(_, slot)| slot.group != group) {
            return Err(refuse(format!(
                "its tensors `{}` and `{}` are in different groups",
                slots[0].0.name(),
                tensor.name()
            )));
        }
        self.check_movable(name, group)?;
        let mut states = Vec::with_capacity(slots.len());
        for (tensor, slot) in &slots {
            let Some(state) = &slot.tensor else { break };
            if state.shape != tensor.shape() {
                return Err(Error::ShapeChanged {
                    param: tensor.name().to_owned(),
                    registered: state.shape.clone(),
                    given: tensor.shape().to_vec(),
                });
            }
            states.push(state);
        }
        let joined = match states.first() {
            None if slots.iter().all(|(_, slot)| slot.tensor.is_none()) => None,
            Some(&first) if states.len() == slots.len() => {
                // Scalars compared by their bits: a NaN among them is the same NaN.
                let bits =
                    |scalars: &[f64]| scalars.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
                let apart = slots.iter().zip(&states).find(|(_, state)| {
                    state.step != first.step || bits(&state.scalars) != bits(&first.scalars)
                });
                if let Some(((tensor, _), _)) = apart {
                    return Err(refuse(format!(
                        "its tensors `{}` and `{}` were not stepped together (their step \
                         counts or the rule's scalars differ)",
                        slots[0].0.name(),
                        tensor.name()
                    )));
                }
                // Buffer after buffer, each the tensors' values one after the other.
                let mut values = Vec::with_capacity(first.elementwise * block.len());
                for index in 0..first.elementwise {
                    for state in &states {
                        values.extend(state.buffer(index).iter().copied());
                    }
                }
                Some(self.moved_state(group, name, &[block.len()], first, &values))
            }
            _ => {
                let stepped =
                    |stepped: bool| slots.iter().find(|(_, slot)| slot.tensor.is_some() == stepped);
                let (with, without) = (stepped(true), stepped(false));
                return Err(refuse(format!(
                    "its tensor `{}` has state and `{}` has none: step them together first",
                    with.map_or("", |(tensor, _)| tensor.name()),
                    without.map_or("", |(tensor, _)| tensor.name()),
                )));
            }
        };
        for tensor in block.tensors() {
            self.slots.remove(tensor.name());
        }
        self.slots.insert(name.to_owned(), Slot::new(group, joined));
        Ok(())
    }

    /// Fails unless the state of tensors in group `group` can move between a block `name` and
    /// its tensors unchanged.
    fn check_movable(&self, name: &str, group: usize) -> Result<()> {
        let group = &self.groups[group];
        let reason = if let Some(reason) = group.whole_tensor_rule() {
            reason
        } else if let StatePrecision::Int8 { .. } = group.state_precision {
            format!(
                "its group `{}` keeps 8-bit state, quantized in blocks that start at the \
                 block's first element, not at each tensor's",
                group.name
            )
        } else if !self.whole_numels.is_empty() {
            "the optimizer steps a rank's share of a sharded model".to_owned()
        } else {
            return Ok(());
        };
        Err(Error::FlatUnsupported { param: name.to_owned(), reason })
    }

    /// The state of tensor `name` of `shape` in group `group`, moved from `from`: its step
    /// count and scalars, and `values` as its per-element buffers (row-major, one after the
    /// other), kept in the precision the group keeps for the tensor's size.
    fn moved_state(
        &self,
        group: usize,
        name: &str,
        shape: &[usize],
        from: &TensorState<A>,
        values: &[A],
    ) -> TensorState<A> {
        let group = &self.groups[group];
        let mut state =
            TensorState::initial(&group.hyper, shape, Order::RowMajor, StatePrecision::Full);
        state.buffers[..values.len()].copy_from_slice(values);
        state.step = from.step;
        state.scalars.clone_from(&from.scalars);
        // Laid out as the parameter is on its next step, as restored state is.
        state.order_pending = true;
        let numel = shape.iter().product();
        let precision = precision_of(&self.whole_numels, group.state_precision, name, numel);
        state.store_as(&group.hyper, precision);
        state
    }
}

impl<A: Element> TensorState<A> {
    /// Every per-element buffer's values in the element type, row-major, one buffer after
    /// the other.
    fn row_major_values(&self) -> Vec<A> {
        let mut values = Vec::with_capacity(self.elementwise * self.numel());
        for index in 0..self.elementwise {
            values.extend(self.buffer(index).iter().copied());
        }
        values
    }
}
