//! [`FlatParams`]: many named tensors in one buffer of parameters and one of gradients,
//! stepped as one tensor.
//!
//! Each tensor an optimizer steps costs bookkeeping besides its elements: finding its state
//! by name, checking shapes and layouts, choosing the loop. For a tensor of a thousand
//! elements that is a third of the step (Zen 3, Adam: 0.83 ns per element for 100 tensors of
//! 1,000 elements against 0.55 for one of 100,000). A model's biases and norms are such
//! tensors. Kept one after the other in one buffer, they are stepped as one tensor: one
//! lookup, one state, one loop over every element.
//!
//! That changes nothing in the values for a rule that updates
//! [element by element](crate::UpdateRule::elementwise) (SGD, Adam and their kin): each
//! element sees its own parameter, gradient and state, and the step count is shared because
//! the tensors are stepped together. The optimizer refuses to step a flat block with a rule
//! that looks at whole tensors (norms, matrix products, row statistics) and with clipping by
//! each tensor's own norm, where the block would count as one tensor.

#[cfg(feature = "serde")]
mod record;

use core::ops::Range;

use hashbrown::HashMap;
use ndarray::{ArrayView, ArrayViewMut, IxDyn};

use crate::buffer::AlignedBuffer;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::guard;
use crate::model::layout::{ModelLayout, save_params};
use crate::model::{Parameters, Prefix};
use crate::optimizer::ParamGrad;

/// One tensor of a [`FlatParams`]: its name, shape and place in the flat buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlatTensor {
    name: String,
    shape: Vec<usize>,
    range: Range<usize>,
}

impl FlatTensor {
    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Where the tensor's elements lie in the flat buffers, in row-major order: also where
    /// its values lie in each state buffer of the block
    /// ([`Optimizer::state_of`](crate::Optimizer::state_of) the block's name).
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }
}

/// Named tensors kept one after the other, in the order given, in one buffer of parameters
/// and one of gradients of the same layout, so that an optimizer steps them as one tensor of
/// all their elements ([`Optimizer::step_flat`](crate::Optimizer::step_flat), or
/// [`param_grad`](Self::param_grad) in a batch).
///
/// A block is one tensor to the optimizer, under the block's name: one state, one step count,
/// one group, one entry in checkpoints (whose state buffers follow the block's layout,
/// [`FlatTensor::range`]). Tensors that need other hyperparameters, such as biases without
/// weight decay, go in a block of their own, assigned to their group. The buffers are placed
/// as the optimizer places its state ([`AlignedBuffer`]). The state moves to the tensors, to
/// step them one by one from then on, with
/// [`Optimizer::split_flat`](crate::Optimizer::split_flat), and back with
/// [`Optimizer::join_flat`](crate::Optimizer::join_flat).
///
/// ```
/// use ndarray::{Array1, Ix1, Ix2};
/// use ndarray_optim::{Adam, FlatParams, Optimizer, ParamGrad};
///
/// let mut model = FlatParams::<f32>::new("mlp", [("w", &[3, 2][..]), ("b", &[2])])?;
/// model.param_mut("w")?.fill(0.5);
/// let mut opt = Optimizer::new(Adam { lr: 0.1, ..Adam::default() })?;
/// for _ in 0..3 {
///     // The backward pass writes each tensor's gradient where the block keeps it.
///     for mut tensor in model.tensors_mut() {
///         tensor.grad.fill(1.0);
///     }
///     opt.step_flat(&mut model)?;
/// }
/// // The same numbers as stepping each tensor on its own.
/// let (mut w, mut b) = (ndarray::Array2::from_elem((3, 2), 0.5_f32), Array1::zeros(2));
/// let (gw, gb) = (ndarray::Array2::ones((3, 2)), Array1::ones(2));
/// let mut alone = Optimizer::new(Adam { lr: 0.1, ..Adam::default() })?;
/// for _ in 0..3 {
///     alone.step_all(&mut [ParamGrad::new("w", &mut w, &gw), ParamGrad::new("b", &mut b, &gb)])?;
/// }
/// assert_eq!(model.param("w")?.into_dimensionality::<Ix2>().unwrap(), w);
/// assert_eq!(model.param("b")?.into_dimensionality::<Ix1>().unwrap(), b);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
///
/// A weight average ([`AveragedModel`](crate::AveragedModel)) of a block is likewise one
/// average of all its parameters under the block's name, updated and copied back through the
/// flat buffer; element by element, it is the average of each tensor:
///
/// ```
/// use ndarray::{ArrayView1, ArrayViewMut1};
/// use ndarray_optim::{AveragedModel, Averaging, FlatParams};
///
/// let name = "mlp";
/// let mut block = FlatParams::<f32>::new(name, [("w", &[3, 2][..]), ("b", &[2])])?;
/// let mut ema = AveragedModel::<f32>::new(Averaging::Ema { decay: 0.5, warmup: false })?;
/// for value in [4.0, 2.0] {
///     block.params_mut().fill(value); // in training, an optimizer step
///     ema.update(name, &ArrayView1::from(block.params()))?;
/// }
/// // Evaluate with the averaged weights.
/// ema.copy_into(name, &mut ArrayViewMut1::from(block.params_mut()))?;
/// assert!(block.param("b")?.iter().all(|&b| b == 3.0));
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
///
/// With the `serde` feature a block serializes as its name, layout and parameters, and its
/// gradients where one is not zero (a block saved between steps, after
/// [`zero_grads`](Self::zero_grads), takes the room of its parameters only; one saved in the
/// middle of accumulating gradients keeps them). Saved beside the optimizer with
/// [`Optimizer::save_with`](crate::Optimizer::save_with), a run resumes bit for bit from one
/// file. A restored block is checked as [`new`](Self::new) checks one, and its values against
/// its layout before any buffer is allocated.
#[derive(Clone, Debug, PartialEq)]
pub struct FlatParams<A> {
    name: String,
    tensors: Vec<FlatTensor>,
    /// The position of each tensor in `tensors`, by name: a training loop may look up every
    /// tensor every step.
    positions: HashMap<String, usize>,
    params: AlignedBuffer<A>,
    grads: AlignedBuffer<A>,
}

/// One tensor of a [`FlatParams`] as [`FlatParams::tensors_mut`] lends it: its parameter and
/// gradient, both writable.
#[derive(Debug)]
pub struct FlatTensorMut<'a, A> {
    /// The tensor's name.
    pub name: &'a str,
    /// The tensor's parameter.
    pub param: ArrayViewMut<'a, A, IxDyn>,
    /// The tensor's gradient.
    pub grad: ArrayViewMut<'a, A, IxDyn>,
}

impl<A: Element> FlatParams<A> {
    /// A block named `name` of `tensors`, each a name and a shape, laid out in the order
    /// given; parameters and gradients are zero.
    ///
    /// # Errors
    /// - [`Error::DuplicateParam`] if two tensors have one name;
    /// - [`Error::InvalidFlatLayout`] if a shape is too large for an array (the product of
    ///   its non-zero axes above `isize::MAX`), or the block's elements take more bytes than
    ///   an array may (`isize::MAX`).
    pub fn new<'n>(
        name: &str,
        tensors: impl IntoIterator<Item = (&'n str, &'n [usize])>,
    ) -> Result<Self> {
        let layout = Layout::of::<A, _>(tensors)?;
        let zeros = || AlignedBuffer::filled(layout.len, A::zero());
        let (params, grads) = (zeros(), zeros());
        Ok(layout.with_buffers(name, params, grads))
    }

    /// A block named `name` of `model`'s tensors, laid out in the
    /// [model's order](crate::model#order) under the names the model gives them, holding
    /// their values (PyTorch's `parameters_to_vector`); gradients are zero. A model's
    /// initialisation, or its pretrained weights, go into a block this way;
    /// [`copy_into_model`](Self::copy_into_model) takes the trained values back.
    ///
    /// ```
    /// use ndarray::{Array1, Array2};
    /// use ndarray_optim::FlatParams;
    ///
    /// let model = vec![
    ///     ("w".to_owned(), Array2::from_elem((2, 3), 0.5_f32).into_dyn()),
    ///     ("b".to_owned(), Array1::from_elem(3, -1.0).into_dyn()),
    /// ];
    /// let mut block = FlatParams::from_model("mlp", &model)?;
    /// assert_eq!(block.params(), [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, -1.0, -1.0, -1.0]);
    /// block.param_mut("b")?.fill(2.0);
    /// let mut trained = model.clone();
    /// block.copy_into_model(&mut trained)?;
    /// assert_eq!(trained[1].1, Array1::from_elem(3, 2.0).into_dyn());
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`new`](Self::new), for a model that names two tensors alike or is too large.
    pub fn from_model<M: Parameters<Elem = A> + ?Sized>(name: &str, model: &M) -> Result<Self> {
        let layout = ModelLayout::of(model, &mut Prefix::new());
        let shapes = layout.shapes.iter().map(Vec::as_slice);
        let mut block = Self::new(name, layout.names.iter().map(String::as_str).zip(shapes))?;
        save_params(model, &mut Prefix::new(), &mut block.params);
        Ok(block)
    }

    /// Copies every parameter of the block into the tensor of `model` of its name (PyTorch's
    /// `vector_to_parameters`).
    ///
    /// # Errors
    /// [`Error::ModelMismatch`] if `model` does not have exactly the block's tensors, by name
    /// and shape, in any order (the report's `checkpoint` shapes are the block's);
    /// [`Error::DuplicateParam`] if it names a tensor twice. `model` is then unchanged.
    pub fn copy_into_model<M: Parameters<Elem = A> + ?Sized>(&self, model: &mut M) -> Result<()> {
        self.check_model(model)?;
        model.visit_mut(&mut Prefix::new(), &mut |name, mut tensor| {
            tensor.assign(&self.param(name).expect("checked: the block has every tensor"));
        });
        Ok(())
    }

    /// Copies every tensor of `model` into the block's parameter of its name: weights loaded
    /// into a model, into a block made before.
    ///
    /// # Errors
    /// As [`copy_into_model`](Self::copy_into_model); the block is then unchanged.
    pub fn copy_from_model<M: Parameters<Elem = A> + ?Sized>(&mut self, model: &M) -> Result<()> {
        self.check_model(model)?;
        model.visit(&mut Prefix::new(), &mut |name, tensor| {
            self.param_mut(name).expect("checked: the block has every tensor").assign(&tensor);
        });
        Ok(())
    }

    /// Checks that `model` has exactly the block's tensors, by name and shape, in any order.
    fn check_model<M: Parameters<Elem = A> + ?Sized>(&self, model: &M) -> Result<()> {
        let mut seen = vec![false; self.tensors.len()];
        let (mut exact, mut twice) = (true, None);
        model.visit(&mut Prefix::new(), &mut |name, tensor| match self.positions.get(name) {
            Some(&at) if seen[at] => twice = Some(name.to_owned()),
            Some(&at) if self.tensors[at].shape == tensor.shape() => seen[at] = true,
            _ => exact = false,
        });
        if let Some(param) = twice {
            return Err(Error::DuplicateParam { param, in_what: "model" });
        }
        if exact && seen.iter().all(|&seen| seen) {
            return Ok(());
        }
        Err(self.model_layout().mismatch(&ModelLayout::of(model, &mut Prefix::new())))
    }

    /// The block's tensors as a model's layout, to check a model against.
    fn model_layout(&self) -> ModelLayout {
        ModelLayout {
            names: self.tensors.iter().map(|tensor| tensor.name.clone()).collect(),
            shapes: self.tensors.iter().map(|tensor| tensor.shape.clone()).collect(),
        }
    }

    /// The block's name, under which an optimizer keeps its state.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of elements of all tensors.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether the block has no elements.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// The tensors, in the order of the layout.
    pub fn tensors(&self) -> &[FlatTensor] {
        &self.tensors
    }

    /// The tensor named `name`.
    ///
    /// # Errors
    /// [`Error::UnknownParam`] if the block has no tensor of that name.
    pub fn tensor(&self, name: &str) -> Result<&FlatTensor> {
        Ok(&self.tensors[self.position(name)?])
    }

    /// The position of tensor `name` in the layout.
    fn position(&self, name: &str) -> Result<usize> {
        self.positions.get(name).copied().ok_or_else(|| {
            let names = self.tensors.iter().map(|tensor| tensor.name.as_str());
            let closest = crate::registry::closest_name(name, names).map(str::to_owned);
            Error::UnknownParam { param: name.to_owned(), closest }
        })
    }

    /// The parameter of tensor `name`.
    ///
    /// # Errors
    /// As [`tensor`](Self::tensor).
    pub fn param(&self, name: &str) -> Result<ArrayView<'_, A, IxDyn>> {
        let tensor = self.tensor(name)?;
        Ok(view(tensor, &self.params[tensor.range()]))
    }

    /// The parameter of tensor `name`, writable (to initialise it, or to load weights).
    ///
    /// # Errors
    /// As [`tensor`](Self::tensor).
    pub fn param_mut(&mut self, name: &str) -> Result<ArrayViewMut<'_, A, IxDyn>> {
        // The layout and the buffer are borrowed apart, so the tensor need not be copied.
        let tensor = &self.tensors[self.position(name)?];
        Ok(view_mut(tensor, &mut self.params[tensor.range()]))
    }

    /// The gradient of tensor `name`.
    ///
    /// # Errors
    /// As [`tensor`](Self::tensor).
    pub fn grad(&self, name: &str) -> Result<ArrayView<'_, A, IxDyn>> {
        Ok(self.grad_of(self.tensor(name)?))
    }

    /// The gradient of `tensor`, one of the layout's.
    fn grad_of(&self, tensor: &FlatTensor) -> ArrayView<'_, A, IxDyn> {
        view(tensor, &self.grads[tensor.range()])
    }

    /// The gradient of tensor `name`, writable.
    ///
    /// # Errors
    /// As [`tensor`](Self::tensor).
    pub fn grad_mut(&mut self, name: &str) -> Result<ArrayViewMut<'_, A, IxDyn>> {
        let tensor = &self.tensors[self.position(name)?];
        Ok(view_mut(tensor, &mut self.grads[tensor.range()]))
    }

    /// Every tensor's parameter and gradient at once, writable, in the order of the layout:
    /// what a backward pass that writes several gradients while reading the parameters
    /// needs. Allocates nothing.
    pub fn tensors_mut(&mut self) -> impl ExactSizeIterator<Item = FlatTensorMut<'_, A>> {
        let (mut params, mut grads) = (&mut self.params[..], &mut self.grads[..]);
        self.tensors.iter().map(move |tensor| {
            let (param, rest) = core::mem::take(&mut params).split_at_mut(tensor.range.len());
            params = rest;
            let (grad, rest) = core::mem::take(&mut grads).split_at_mut(tensor.range.len());
            grads = rest;
            FlatTensorMut {
                name: &tensor.name,
                param: view_mut(tensor, param),
                grad: view_mut(tensor, grad),
            }
        })
    }

    /// All parameters, in the order of the layout (PyTorch's `parameters_to_vector`).
    pub fn params(&self) -> &[A] {
        &self.params
    }

    /// All parameters, writable.
    pub fn params_mut(&mut self) -> &mut [A] {
        &mut self.params
    }

    /// All gradients, in the order of the layout.
    pub fn grads(&self) -> &[A] {
        &self.grads
    }

    /// All gradients, writable.
    pub fn grads_mut(&mut self) -> &mut [A] {
        &mut self.grads
    }

    /// Sets every gradient to zero (PyTorch's `zero_grad(set_to_none=False)`).
    pub fn zero_grads(&mut self) {
        self.grads.fill(A::zero());
    }

    /// The first tensor, in the order of the layout, whose gradient holds a NaN or an
    /// infinity: the tensor inside the block that an optimizer's non-finite check refused or
    /// skipped ([`Error::NonFiniteGradient`] and [`StepOutcome::Skipped`] name the block).
    ///
    /// [`StepOutcome::Skipped`]: crate::StepOutcome::Skipped
    pub fn first_non_finite_grad(&self) -> Option<&FlatTensor> {
        self.tensors.iter().find(|tensor| !guard::all_finite(&self.grad_of(tensor)))
    }

    /// The block as one entry of a batch for [`Optimizer::step_all`](crate::Optimizer::step_all),
    /// beside other tensors: one tensor of shape `[len]` under the block's name, which the
    /// optimizer refuses to step where a block differs from its tensors stepped one by one
    /// (see [`Optimizer::step_flat`](crate::Optimizer::step_flat)).
    pub fn param_grad(&mut self) -> ParamGrad<'_, A> {
        let param = ArrayViewMut::from(&mut self.params[..]).into_dyn();
        let grad = ArrayView::from(&self.grads[..]).into_dyn();
        ParamGrad::flat(&self.name, &self.tensors, param, grad)
    }
}

/// The tensors of a block laid out one after the other, before any buffer is allocated:
/// a restored block checks its values against it first.
struct Layout {
    tensors: Vec<FlatTensor>,
    positions: HashMap<String, usize>,
    len: usize,
}

impl Layout {
    /// The layout of `tensors` of element type `A`, as [`FlatParams::new`] checks it.
    fn of<'n, A, I>(tensors: I) -> Result<Self>
    where
        I: IntoIterator<Item = (&'n str, &'n [usize])>,
    {
        let mut layout = Layout { tensors: Vec::new(), positions: HashMap::new(), len: 0 };
        for (tensor, shape) in tensors {
            if layout.positions.insert(tensor.to_owned(), layout.tensors.len()).is_some() {
                return Err(Error::DuplicateParam {
                    param: tensor.to_owned(),
                    in_what: "flat layout",
                });
            }
            let too_large = || Error::InvalidFlatLayout {
                reason: format!("`{tensor}` of shape {shape:?} makes the block too large"),
            };
            // ndarray's bound for a shape, which holds also where an axis of 0 empties it.
            if bounded_product(shape.iter().copied().filter(|&dim| dim != 0)).is_none() {
                return Err(Error::InvalidFlatLayout {
                    reason: format!("`{tensor}` of shape {shape:?} is too large for an array"),
                });
            }
            let numel = bounded_product(shape.iter().copied());
            let start = layout.len;
            let end = numel.and_then(|numel| start.checked_add(numel)).ok_or_else(too_large)?;
            let bytes = end.checked_mul(size_of::<A>());
            if bytes.is_none_or(|bytes| bytes > isize::MAX as usize) {
                return Err(too_large());
            }
            layout.tensors.push(FlatTensor {
                name: tensor.to_owned(),
                shape: shape.to_vec(),
                range: start..end,
            });
            layout.len = end;
        }
        Ok(layout)
    }

    /// The block `name` of this layout over `params` and `grads`, `len` elements each.
    fn with_buffers<A>(
        self,
        name: &str,
        params: AlignedBuffer<A>,
        grads: AlignedBuffer<A>,
    ) -> FlatParams<A> {
        debug_assert!(params.len() == self.len && grads.len() == self.len);
        FlatParams {
            name: name.to_owned(),
            tensors: self.tensors,
            positions: self.positions,
            params,
            grads,
        }
    }
}

/// The product of `dims`, if it is at most `isize::MAX`.
fn bounded_product(mut dims: impl Iterator<Item = usize>) -> Option<usize> {
    dims.try_fold(1_usize, usize::checked_mul).filter(|&product| product <= isize::MAX as usize)
}

fn view<'a, A>(tensor: &FlatTensor, values: &'a [A]) -> ArrayView<'a, A, IxDyn> {
    ArrayView::from_shape(IxDyn(&tensor.shape), values).expect("the layout sizes every tensor")
}

fn view_mut<'a, A>(tensor: &FlatTensor, values: &'a mut [A]) -> ArrayViewMut<'a, A, IxDyn> {
    ArrayViewMut::from_shape(IxDyn(&tensor.shape), values).expect("the layout sizes every tensor")
}
