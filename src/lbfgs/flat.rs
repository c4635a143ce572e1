//! The flat-vector arithmetic of L-BFGS over a model's tensors: gathering the gradients into
//! one vector and adding a step to the parameters at their flat offsets, as PyTorch's
//! `_gather_flat_grad` and `_add_grad` do.

use ndarray::{ArrayView, IxDyn};
use num_traits::Float;

use crate::element::Element;
use crate::error::{Error, Result};
use crate::model::layout::{ModelLayout, zip_params};
use crate::model::{Parameters, Prefix};

impl ModelLayout {
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

/// `p += alpha * d`, fused as PyTorch's `p.add_(d, alpha=alpha)` computes it.
pub(crate) fn add_scaled<M: Parameters>(
    model: &mut M,
    prefix: &mut Prefix,
    alpha: M::Elem,
    d: &[M::Elem],
) {
    zip_params(model, prefix, d, |p, d| *p = d.mul_add(alpha, *p));
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
