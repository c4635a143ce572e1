//! A model's tensors as one flat vector, without copying them into one: the layout
//! (names, shapes, offsets in the model's order) and the walks that read and write the
//! model tensor by tensor at those offsets, as PyTorch's `_gather_flat_grad`, `_add_grad`,
//! `_clone_param` and `_set_param` do. Flat order is each tensor's logical (row-major)
//! order, whatever its memory layout.

use ndarray::{ArrayView, IxDyn};
use num_traits::Float;

use crate::element::Element;
use crate::error::{Error, Result};
use crate::model::{Parameters, Prefix};
use crate::report::{LoadReport, ShapeMismatch};

/// The names and shapes of the tensors an optimizer's flat buffers were built for.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub(crate) struct Layout {
    pub(crate) names: Vec<String>,
    pub(crate) shapes: Vec<Vec<usize>>,
}

impl Layout {
    /// The layout of `model`.
    pub(crate) fn of<M: Parameters>(model: &M, prefix: &mut Prefix) -> Layout {
        let mut layout = Layout { names: Vec::new(), shapes: Vec::new() };
        model.visit(prefix, &mut |name, view| {
            layout.names.push(name.to_owned());
            layout.shapes.push(view.shape().to_vec());
        });
        layout
    }

    /// The number of elements of all tensors together.
    pub(crate) fn numel(&self) -> usize {
        self.shapes.iter().map(|shape| shape.iter().product::<usize>()).sum()
    }

    /// Whether tensor `index` is `name` of `shape`.
    fn holds(&self, index: usize, name: &str, shape: &[usize]) -> bool {
        index < self.names.len() && self.names[index] == name && self.shapes[index] == shape
    }

    /// Checks that `model` has exactly these tensors in this order; allocates nothing unless
    /// it has not.
    ///
    /// # Errors
    /// [`Error::ModelMismatch`] naming what differs.
    pub(crate) fn check<M: Parameters>(&self, model: &M, prefix: &mut Prefix) -> Result<()> {
        let mut index = 0;
        let mut same = true;
        model.visit(prefix, &mut |name, view| {
            same &= self.holds(index, name, view.shape());
            index += 1;
        });
        if same && index == self.names.len() {
            return Ok(());
        }
        let found = Layout::of(model, prefix);
        let mut report = LoadReport::default();
        for (name, shape) in found.names.iter().zip(&found.shapes) {
            match self.names.iter().position(|n| n == name) {
                None => report.missing.push(name.clone()),
                Some(at) if self.shapes[at] != *shape => report.mismatched.push(ShapeMismatch {
                    name: name.clone(),
                    checkpoint: self.shapes[at].clone(),
                    model: shape.clone(),
                }),
                Some(_) => report.restored.push(name.clone()),
            }
        }
        report.unexpected =
            self.names.iter().filter(|name| !found.names.contains(name)).cloned().collect();
        report.restored.sort();
        report.missing.sort();
        report.unexpected.sort();
        report.mismatched.sort_by(|a, b| a.name.cmp(&b.name));
        Err(Error::ModelMismatch { report: Box::new(report) })
    }

    /// Copies the gradients into `flat`, checking that they are this layout's tensors.
    ///
    /// # Errors
    /// [`Error::UnexpectedGradient`], [`Error::MissingGradient`] or [`Error::GradientShape`]
    /// for the first gradient out of place; `flat` is then partly written.
    pub(crate) fn gather<M: Parameters>(
        &self,
        grads: &M,
        prefix: &mut Prefix,
        flat: &mut [M::Elem],
    ) -> Result<()> {
        let mut index = 0;
        let mut offset = 0;
        let mut error = None;
        grads.visit(prefix, &mut |name, grad: ArrayView<'_, M::Elem, IxDyn>| {
            if error.is_some() {
                return;
            }
            if !self.holds(index, name, grad.shape()) {
                error = Some(match self.names.get(index) {
                    Some(expected) if expected == name => Error::GradientShape {
                        param: name.to_owned(),
                        param_shape: self.shapes[index].clone(),
                        grad_shape: grad.shape().to_vec(),
                    },
                    _ => Error::UnexpectedGradient { param: name.to_owned() },
                });
                return;
            }
            let len = grad.len();
            for (to, &from) in flat[offset..offset + len].iter_mut().zip(grad.iter()) {
                *to = from;
            }
            offset += len;
            index += 1;
        });
        match error {
            Some(error) => Err(error),
            None if index < self.names.len() => {
                Err(Error::MissingGradient { param: self.names[index].clone() })
            }
            None => Ok(()),
        }
    }
}

/// Calls `f` with each parameter element and the element of `flat` at its offset.
fn zip_params<M: Parameters>(
    model: &mut M,
    prefix: &mut Prefix,
    flat: &[M::Elem],
    mut f: impl FnMut(&mut M::Elem, M::Elem),
) {
    let mut offset = 0;
    model.visit_mut(prefix, &mut |_, mut view| {
        let len = view.len();
        for (p, &x) in view.iter_mut().zip(&flat[offset..offset + len]) {
            f(p, x);
        }
        offset += len;
    });
}

/// `p += alpha * d`, fused as PyTorch's `p.add_(d, alpha=alpha)` computes it.
pub(crate) fn add_scaled<M: Parameters>(
    model: &mut M,
    prefix: &mut Prefix,
    alpha: M::Elem,
    d: &[M::Elem],
) {
    zip_params(model, prefix, d, |p, d| *p = d.mul_add(alpha, *p));
}

/// The parameters, into `flat`.
pub(crate) fn save_params<M: Parameters>(model: &M, prefix: &mut Prefix, flat: &mut [M::Elem]) {
    let mut offset = 0;
    model.visit(prefix, &mut |_, view| {
        for (to, &p) in flat[offset..offset + view.len()].iter_mut().zip(view.iter()) {
            *to = p;
        }
        offset += view.len();
    });
}

/// The parameters, from `flat`.
pub(crate) fn restore_params<M: Parameters>(model: &mut M, prefix: &mut Prefix, flat: &[M::Elem]) {
    zip_params(model, prefix, flat, |p, x| *p = x);
}

/// `Σ aᵢ bᵢ` in order.
pub(crate) fn dot<A: Element>(a: &[A], b: &[A]) -> A {
    a.iter().zip(b).fold(A::zero(), |sum, (&a, &b)| sum + a * b)
}

/// `max |aᵢ|`, NaN if any element is NaN (as PyTorch's `abs().max()`).
pub(crate) fn abs_max<A: Element>(a: &[A]) -> A {
    a.iter().fold(A::zero(), |max, &x| {
        let x = x.abs();
        if max.is_nan() || x.is_nan() { A::nan() } else { max.max(x) }
    })
}

/// `Σ |aᵢ|` in order.
pub(crate) fn abs_sum<A: Element>(a: &[A]) -> A {
    a.iter().fold(A::zero(), |sum, &x| sum + x.abs())
}
