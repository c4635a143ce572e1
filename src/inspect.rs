//! Looking at the optimizer's state by name: step counts, buffers and what they cost.

use ndarray::{CowArray, IxDyn};

use crate::element::Element;
use crate::optimizer::Optimizer;
use crate::registry::{Registry, Slot, TensorState};
use crate::rule::UpdateRule;

/// A read-only view of the state of one named tensor, from [`Optimizer::state`] or
/// [`Optimizer::state_of`].
///
/// A tensor that was [`assign`](Optimizer::assign)ed to a group but never stepped has a name
/// and a group but no step count, shape or buffers.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a, A> {
    name: &'a str,
    group: &'a str,
    state_names: &'static [&'static str],
    scalar_names: &'static [&'static str],
    state: Option<&'a TensorState<A>>,
}

impl<'a, A: Element> TensorView<'a, A> {
    fn new<R: UpdateRule>(registry: &'a Registry<R, A>, name: &'a str, slot: &'a Slot<A>) -> Self {
        let group = &registry.groups[slot.group];
        TensorView {
            name,
            group: &group.name,
            state_names: group.hyper.state_names(),
            scalar_names: group.hyper.scalar_names(),
            state: slot.tensor.as_deref(),
        }
    }

    /// The tensor's name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The name of the group the tensor belongs to.
    pub fn group(&self) -> &'a str {
        self.group
    }

    /// Steps taken, `None` before the first.
    pub fn step(&self) -> Option<u64> {
        self.state.map(|state| state.step)
    }

    /// The shape the state was created with, `None` before the first step.
    pub fn shape(&self) -> Option<&'a [usize]> {
        self.state.map(|state| state.shape.as_slice())
    }

    /// Every state buffer with its name (PyTorch's, e.g. `"exp_avg"`): the per-element ones
    /// in the order of [`UpdateRule::state_names`], viewed with the tensor's shape, then those
    /// of [`UpdateRule::shaped_state`] (e.g. Adafactor's `"row_var"` and `"col_var"`), each
    /// viewed with its own shape; none before the first step.
    pub fn buffers(&self) -> impl ExactSizeIterator<Item = (&'static str, CowArray<'a, A, IxDyn>)> {
        let state = self.state;
        let names = if state.is_some() { self.state_names } else { &[] };
        let shaped = state.map_or(&[][..], |state| state.shaped_layout.as_slice());
        (0..names.len() + shaped.len()).map(move |index| {
            let state = state.expect("there are no buffers without state");
            match names.get(index) {
                Some(&name) => (name, state.buffer(index)),
                None => {
                    let index = index - names.len();
                    (shaped[index].0, state.shaped_buffer(index).into())
                }
            }
        })
    }

    /// Every per-tensor scalar with its name (e.g. NAdam's `"mu_product"`), in the order of
    /// [`UpdateRule::scalar_names`]; none before the first step.
    pub fn scalars(&self) -> impl ExactSizeIterator<Item = (&'static str, f64)> + 'a {
        let values = self.state.map_or(&[][..], |state| state.scalars.as_slice());
        self.scalar_names.iter().copied().zip(values.iter().copied())
    }

    /// The state buffer called `name`, if the tensor has one.
    pub fn buffer(&self, name: &str) -> Option<CowArray<'a, A, IxDyn>> {
        self.buffers().find(|&(buffer, _)| buffer == name).map(|(_, view)| view)
    }

    /// Bytes of memory the tensor's state buffers occupy: the values of every buffer, per-element
    /// and shaped, times the element's size. The name, shape, step count and the rule's working
    /// memory are not counted.
    pub fn bytes(&self) -> usize {
        self.state.map_or(0, TensorState::bytes)
    }
}

impl<'a, A> TensorView<'a, A> {
    /// Per-element buffer `index` as stored, if the tensor keeps its state in low precision.
    pub(crate) fn stored(&self, index: usize) -> Option<crate::compact::StoredRef<'a>> {
        let state = self.state?;
        Some(state.compact.as_ref()?.stored(index, state.numel()))
    }
}

impl<A> TensorState<A> {
    fn bytes(&self) -> usize {
        let compact = self.compact.as_ref().map_or(0, crate::compact::Compact::bytes);
        self.buffers.len() * size_of::<A>() + compact
    }
}

impl<R: UpdateRule, A: Element> Optimizer<R, A> {
    /// Every named tensor the optimizer knows, sorted by name, with its state.
    ///
    /// ```
    /// use ndarray::{Array2, array};
    /// use ndarray_optim::{Adam, Optimizer};
    ///
    /// let mut opt = Optimizer::new(Adam::default())?;
    /// let mut w = Array2::<f32>::zeros((256, 128));
    /// opt.step("w", &mut w, &Array2::ones((256, 128)))?;
    /// opt.step("b", &mut array![0.0_f32], &array![1.0])?;
    ///
    /// for tensor in opt.state() {
    ///     println!("{} (step {:?}): {} bytes", tensor.name(), tensor.step(), tensor.bytes());
    /// }
    /// // Adam keeps two buffers per element: 2 × 256 × 128 × 4 bytes for `w`, 2 × 4 for `b`.
    /// assert_eq!(opt.state_bytes(), 262_144 + 8);
    /// let w_state = opt.state_of("w").unwrap();
    /// let exp_avg = w_state.buffer("exp_avg").unwrap();
    /// assert_eq!(exp_avg.shape(), &[256, 128]);
    /// assert!((exp_avg[[0, 0]] - 0.1).abs() < 1e-7); // (1 − β₁) g
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    pub fn state(&self) -> impl ExactSizeIterator<Item = TensorView<'_, A>> {
        let mut slots: Vec<(&String, &Slot<A>)> = self.registry.slots.iter().collect();
        slots.sort_unstable_by(|a, b| a.0.cmp(b.0));
        slots.into_iter().map(|(name, slot)| TensorView::new(&self.registry, name, slot))
    }

    /// The state of the tensor `name`, if the optimizer knows the name.
    pub fn state_of(&self, name: &str) -> Option<TensorView<'_, A>> {
        let (name, slot) = self.registry.slots.get_key_value(name)?;
        Some(TensorView::new(&self.registry, name, slot))
    }

    /// Bytes of memory all state buffers occupy: the sum of [`TensorView::bytes`].
    pub fn state_bytes(&self) -> usize {
        self.registry
            .slots
            .values()
            .filter_map(|slot| slot.tensor.as_deref())
            .map(TensorState::bytes)
            .sum()
    }
}
