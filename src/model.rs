//! A model's parameter tensors as one value, stepped in one call by
//! [`Optimizer::step_model`](crate::Optimizer::step_model).
//!
//! [`Parameters`] is a set of named tensors: a struct whose fields hold them (derive it with
//! `#[derive(Parameters)]`, the `derive` feature), an [`Array`](ndarray::Array) in such a
//! struct, a `Vec` of layers, a map from names to arrays, a list of `(name, array)` pairs, or a
//! tuple of any of these. The gradients are a value of the same type, holding each tensor's
//! gradient where the model holds the tensor, as a hand-written backward pass or an autodiff
//! tool returns them; PyTorch keeps them in the same place too (`p.grad`).
//!
//! ```
//! # #[cfg(feature = "derive")] {
//! use ndarray::{Array1, Array2};
//! use ndarray_optim::{Adam, Optimizer, Parameters};
//!
//! #[derive(Parameters)]
//! struct Linear {
//!     weight: Array2<f32>,
//!     bias: Array1<f32>,
//! }
//!
//! #[derive(Parameters)]
//! struct Mlp {
//!     layers: Vec<Linear>,
//!     #[optim(rename = "head")]
//!     output: Linear,
//!     #[optim(skip)]
//!     dropout: f32,
//! }
//!
//! let linear = |inputs, outputs| Linear {
//!     weight: Array2::from_elem((inputs, outputs), 0.5),
//!     bias: Array1::zeros(outputs),
//! };
//! let mut model = Mlp { layers: vec![linear(4, 8), linear(8, 8)], output: linear(8, 2), dropout: 0.1 };
//! assert_eq!(
//!     model.names(),
//!     ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "head.weight", "head.bias"],
//! );
//!
//! let mut opt = Optimizer::new(Adam::default())?;
//! opt.add_group("head", Adam { lr: 1e-2, ..Adam::default() })?;
//! opt.assign("head.weight", "head")?;
//! for _ in 0..10 {
//!     let grads = Mlp { layers: vec![linear(4, 8), linear(8, 8)], output: linear(8, 2), dropout: 0.0 };
//!     opt.step_model(&mut model, &grads)?; // loss.backward(); optimizer.step()
//! }
//! assert_eq!(opt.step_count("layers.1.bias"), Some(10));
//! # }
//! # Ok::<(), ndarray_optim::Error>(())
//! ```
//!
//! # Names
//!
//! A tensor's name is the path to it, dotted as PyTorch's `named_parameters()` writes it: a
//! struct's field name (or its `#[optim(rename = "...")]`, or the position `0`, `1`, … in a
//! tuple struct), a map's key, a `(name, tensor)` pair's name, a `Vec`'s or slice's index. A
//! tuple of sets is their union: its elements add nothing to the names. An array is one tensor
//! named by the path that leads to it; on its own it would be named `""`, so step a single
//! tensor with [`Optimizer::step`](crate::Optimizer::step) instead.
//!
//! Names are written into one [`Prefix`] buffer that grows to the longest name and is then
//! reused, so visiting a model allocates nothing once the buffer is large enough;
//! [`Optimizer::step_model`](crate::Optimizer::step_model) keeps its buffer between steps.
//!
//! # Order
//!
//! Tensors are visited in the order of the fields, of the list, or of the map's keys for a
//! `BTreeMap`; a `HashMap` visits in its own order, which differs between runs. The order
//! matters only for the position that [`StepOutcome::Skipped`](crate::StepOutcome::Skipped)
//! reports (the norm of [global-norm clipping](crate::Clip::GlobalNorm) is an exact sum, the
//! same in any order). Prefer a `BTreeMap` over a `HashMap` for runs that must repeat bit for
//! bit.
//!
//! # Compile time
//!
//! The visitors take their callback as `&mut dyn FnMut` and hand out views of dynamic
//! dimension: a derived impl is compiled once per struct, not once per closure or per
//! dimension, and the optimizer's batch logic once per rule and element type, whatever
//! models a program steps.

mod impls;
pub(crate) mod layout;

use core::fmt::Write;

use ndarray::{ArrayView, ArrayViewMut, IxDyn};

use crate::element::Element;
use crate::error::Result;

/// The callback of [`Parameters::visit`]: a tensor's name and a view of it.
pub type Visit<'f, A> = dyn FnMut(&str, ArrayView<'_, A, IxDyn>) + 'f;

/// The callback of [`Parameters::visit_mut`]: a tensor's name and a mutable view of it.
pub type VisitMut<'f, A> = dyn FnMut(&str, ArrayViewMut<'_, A, IxDyn>) + 'f;

/// The callback of [`Parameters::zip_mut`]: a tensor's name, a mutable view of it and a view
/// of its gradient. An error stops the visit and is returned from it.
pub type VisitPair<'f, A> =
    dyn FnMut(&str, ArrayViewMut<'_, A, IxDyn>, ArrayView<'_, A, IxDyn>) -> Result<()> + 'f;

/// A walk over a model's tensors and their gradients, with the walker's callback.
pub(crate) type Zip<'z, A> = dyn FnMut(&mut Prefix, &mut VisitPair<'_, A>) -> Result<()> + 'z;

/// The buffer that a model's tensor names are built in, kept by whoever walks models every
/// step so that the steps allocate nothing. Working memory, not state: a clone starts empty,
/// and it takes no part in equality.
#[derive(Debug, Default)]
pub(crate) struct NameBuffer(Prefix);

impl NameBuffer {
    /// The buffer, emptied, for one walk; [`put_back`](Self::put_back) returns it.
    pub(crate) fn take(&mut self) -> Prefix {
        let mut prefix = core::mem::take(&mut self.0);
        prefix.clear();
        prefix
    }

    pub(crate) fn put_back(&mut self, prefix: Prefix) {
        self.0 = prefix;
    }
}

impl Clone for NameBuffer {
    fn clone(&self) -> Self {
        NameBuffer::default()
    }
}

impl PartialEq for NameBuffer {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A set of named parameter tensors of one element type: a model, or its gradients.
///
/// Derive it for a struct with `#[derive(Parameters)]` (the `derive` feature); it is
/// implemented for [`Array`](ndarray::Array) (one tensor, named by where it sits), `Vec<P>`,
/// `[P]` and `[P; N]` (indexed `0`, `1`, …), lists of `(String, P)` or `(&str, P)` pairs,
/// `BTreeMap` and `HashMap` from names to `P`, `Box<P>`, and tuples of up to four sets. See
/// the [module](self) for the names and the order.
///
/// The gradients of a set are a value of the same type. [`zip_mut`](Self::zip_mut) pairs
/// each tensor with the gradient at the same place: a struct's same field, the same key of a
/// map or name of a list, the same index of a `Vec`; a gradient missing where the model has
/// a tensor is [`Error::MissingGradient`](crate::Error::MissingGradient), one where it has
/// none [`Error::UnexpectedGradient`](crate::Error::UnexpectedGradient).
///
/// # Implementing it by hand
///
/// Each method walks the set in the same order, every time, and names each tensor by
/// extending the [`Prefix`] for the duration of its visit. The optimizer walks a model twice
/// per step (to check everything, then to update) and relies on that: an implementation that
/// visits other tensors or shapes the second time may make
/// [`step_model`](crate::Optimizer::step_model) panic.
///
/// ```
/// use ndarray::{Array1, Array2};
/// use ndarray_optim::model::{Parameters, Prefix, Visit, VisitMut, VisitPair};
///
/// struct Linear {
///     weight: Array2<f64>,
///     bias: Array1<f64>,
/// }
///
/// impl Parameters for Linear {
///     type Elem = f64;
///
///     fn visit(&self, prefix: &mut Prefix, f: &mut Visit<'_, f64>) {
///         prefix.with("weight", |prefix| self.weight.visit(prefix, f));
///         prefix.with("bias", |prefix| self.bias.visit(prefix, f));
///     }
///
///     fn visit_mut(&mut self, prefix: &mut Prefix, f: &mut VisitMut<'_, f64>) {
///         prefix.with("weight", |prefix| self.weight.visit_mut(prefix, f));
///         prefix.with("bias", |prefix| self.bias.visit_mut(prefix, f));
///     }
///
///     fn zip_mut(
///         &mut self,
///         grads: &Self,
///         prefix: &mut Prefix,
///         f: &mut VisitPair<'_, f64>,
///     ) -> ndarray_optim::Result<()> {
///         prefix.with("weight", |prefix| self.weight.zip_mut(&grads.weight, prefix, f))?;
///         prefix.with("bias", |prefix| self.bias.zip_mut(&grads.bias, prefix, f))
///     }
/// }
///
/// let layer = Linear { weight: Array2::zeros((3, 2)), bias: Array1::zeros(2) };
/// assert_eq!(layer.names(), ["weight", "bias"]);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a set of parameter tensors",
    label = "not `Parameters`",
    note = "derive `Parameters` for it, or mark a field that holds no tensors `#[optim(skip)]`"
)]
pub trait Parameters {
    /// The element type of every tensor of the set.
    type Elem: Element;

    /// Calls `f` with the name and a view of every tensor, in order; names start with
    /// `prefix`.
    fn visit(&self, prefix: &mut Prefix, f: &mut Visit<'_, Self::Elem>);

    /// Calls `f` with the name and a mutable view of every tensor, in order; names start
    /// with `prefix`.
    fn visit_mut(&mut self, prefix: &mut Prefix, f: &mut VisitMut<'_, Self::Elem>);

    /// Calls `f` with the name, a mutable view and the gradient of every tensor, in order,
    /// the gradient taken from the same place in `grads`; names start with `prefix`.
    ///
    /// # Errors
    /// [`Error::MissingGradient`](crate::Error::MissingGradient) or
    /// [`Error::UnexpectedGradient`](crate::Error::UnexpectedGradient) if `grads` does not
    /// hold a gradient at exactly the places of the tensors (a map's keys, a list's names, a
    /// `Vec`'s length), and the first error `f` returns.
    fn zip_mut(
        &mut self,
        grads: &Self,
        prefix: &mut Prefix,
        f: &mut VisitPair<'_, Self::Elem>,
    ) -> Result<()>;

    /// The name of every tensor, in order: the names an optimizer knows the tensors by, e.g.
    /// for [`Optimizer::declare`](crate::Optimizer::declare).
    fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.visit(&mut Prefix::new(), &mut |name, _| names.push(name.to_owned()));
        names
    }
}

/// The name of the place a visit has reached in a set of [`Parameters`]: the dotted path from
/// the set's root, such as `encoder.layers.0`.
///
/// [`with`](Self::with) and [`with_index`](Self::with_index) extend it for the visit of one
/// member and shorten it again after, so that one buffer serves every name of a visit and,
/// once it is as long as the longest name, never allocates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prefix {
    name: String,
}

impl Prefix {
    /// The empty prefix: names start at the root.
    pub fn new() -> Self {
        Prefix::default()
    }

    /// The path so far: the full name of the tensor when a visit reaches one.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Runs `f` with `segment` appended to the path (after a dot, unless the path is empty),
    /// and restores the path after.
    pub fn with<T>(&mut self, segment: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        let len = self.start_segment();
        self.name.push_str(segment);
        self.finish(len, f)
    }

    /// Runs `f` with `index` appended to the path as a segment, as PyTorch names the
    /// members of a `ModuleList` (`layers.0`), and restores the path after.
    pub fn with_index<T>(&mut self, index: usize, f: impl FnOnce(&mut Self) -> T) -> T {
        let len = self.start_segment();
        write!(self.name, "{index}").expect("writing to a String cannot fail");
        self.finish(len, f)
    }

    /// Empties the path, keeping the buffer.
    pub(crate) fn clear(&mut self) {
        self.name.clear();
    }

    /// Adds the dot before a new segment; the length to restore after it.
    fn start_segment(&mut self) -> usize {
        let len = self.name.len();
        if len > 0 {
            self.name.push('.');
        }
        len
    }

    fn finish<T>(&mut self, len: usize, f: impl FnOnce(&mut Self) -> T) -> T {
        let result = f(self);
        self.name.truncate(len);
        result
    }
}

/// What `#[derive(Parameters)]` refuses, each case a small change of one it accepts, so that
/// each fails for the derive's reason. Accepted:
///
/// ```
/// use ndarray::{Array1, Array2};
/// use ndarray_optim::Parameters;
///
/// #[derive(Parameters)]
/// struct Model {
///     weight: Array2<f32>,
///     #[optim(rename = "b")]
///     bias: Array1<f32>,
///     #[optim(skip)]
///     lr: f64,
/// }
/// ```
///
/// A field that holds no tensors and is not skipped:
///
/// ```compile_fail,E0277
/// use ndarray::{Array1, Array2};
/// use ndarray_optim::Parameters;
///
/// #[derive(Parameters)]
/// struct Model {
///     weight: Array2<f32>,
///     #[optim(rename = "b")]
///     bias: Array1<f32>,
///     lr: f64,
/// }
/// ```
///
/// Tensors of two element types:
///
/// ```compile_fail,E0308
/// use ndarray::{Array1, Array2};
/// use ndarray_optim::Parameters;
///
/// #[derive(Parameters)]
/// struct Model {
///     weight: Array2<f32>,
///     #[optim(rename = "b")]
///     bias: Array1<f64>,
///     #[optim(skip)]
///     lr: f64,
/// }
/// ```
///
/// Two fields of one name:
///
/// ```compile_fail
/// use ndarray::{Array1, Array2};
/// use ndarray_optim::Parameters;
///
/// #[derive(Parameters)]
/// struct Model {
///     weight: Array2<f32>,
///     #[optim(rename = "weight")]
///     bias: Array1<f32>,
///     #[optim(skip)]
///     lr: f64,
/// }
/// ```
///
/// An unknown option:
///
/// ```compile_fail
/// use ndarray::{Array1, Array2};
/// use ndarray_optim::Parameters;
///
/// #[derive(Parameters)]
/// struct Model {
///     weight: Array2<f32>,
///     #[optim(rename = "b")]
///     bias: Array1<f32>,
///     #[optim(frozen)]
///     lr: f64,
/// }
/// ```
///
/// An enum:
///
/// ```compile_fail
/// use ndarray::{Array1, Array2};
/// use ndarray_optim::Parameters;
///
/// #[derive(Parameters)]
/// enum Model {
///     Weight(Array2<f32>),
///     Bias(Array1<f32>),
/// }
/// ```
#[cfg(all(doctest, feature = "derive"))]
pub struct DeriveErrors;
