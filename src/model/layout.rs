//! A model's tensors in one flat order, without copying them into one: the layout (names
//! and shapes in the model's order) and the walks that copy the parameters between the model
//! and a flat buffer at those offsets, as PyTorch's `parameters_to_vector` and
//! `vector_to_parameters` do. Flat order is each tensor's logical (row-major) order,
//! whatever its memory layout.

use crate::error::{Error, Result};
use crate::model::{Parameters, Prefix};
use crate::report::{LoadReport, ShapeMismatch};

/// The names and shapes of a model's tensors, in the model's order.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub(crate) struct ModelLayout {
    pub(crate) names: Vec<String>,
    pub(crate) shapes: Vec<Vec<usize>>,
}

impl ModelLayout {
    /// The layout of `model`.
    pub(crate) fn of<M: Parameters + ?Sized>(model: &M, prefix: &mut Prefix) -> ModelLayout {
        let mut layout = ModelLayout { names: Vec::new(), shapes: Vec::new() };
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
    pub(crate) fn holds(&self, index: usize, name: &str, shape: &[usize]) -> bool {
        index < self.names.len() && self.names[index] == name && self.shapes[index] == shape
    }

    /// Checks that `model` has exactly these tensors in this order; allocates nothing unless
    /// it has not.
    ///
    /// # Errors
    /// [`Error::ModelMismatch`] naming what differs.
    pub(crate) fn check<M: Parameters + ?Sized>(
        &self,
        model: &M,
        prefix: &mut Prefix,
    ) -> Result<()> {
        let mut index = 0;
        let mut same = true;
        model.visit(prefix, &mut |name, view| {
            same &= self.holds(index, name, view.shape());
            index += 1;
        });
        if same && index == self.names.len() {
            return Ok(());
        }
        Err(self.mismatch(&ModelLayout::of(model, prefix)))
    }

    /// [`Error::ModelMismatch`] with the report of what `found`, a model's layout, has
    /// otherwise than this layout: missing and unexpected names, and other shapes.
    pub(crate) fn mismatch(&self, found: &ModelLayout) -> Error {
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
        Error::ModelMismatch { report: Box::new(report) }
    }
}

/// Calls `f` with each parameter element and the element of `flat` at its offset.
pub(crate) fn zip_params<M: Parameters + ?Sized>(
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

/// The parameters, into `flat`.
pub(crate) fn save_params<M: Parameters + ?Sized>(
    model: &M,
    prefix: &mut Prefix,
    flat: &mut [M::Elem],
) {
    let mut offset = 0;
    model.visit(prefix, &mut |_, view| {
        for (to, &p) in flat[offset..offset + view.len()].iter_mut().zip(view.iter()) {
            *to = p;
        }
        offset += view.len();
    });
}

/// The parameters, from `flat`.
pub(crate) fn restore_params<M: Parameters + ?Sized>(
    model: &mut M,
    prefix: &mut Prefix,
    flat: &[M::Elem],
) {
    zip_params(model, prefix, flat, |p, x| *p = x);
}
