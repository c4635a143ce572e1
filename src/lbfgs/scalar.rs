//! The scalars of PyTorch's L-BFGS as Python holds them: some are Python floats (`f64`),
//! others 0-d tensors of the parameters' dtype, and which one a value is changes how every
//! operation on it rounds. [`Num`] keeps that distinction so that the port rounds where
//! PyTorch does.

use crate::element::Element;

/// A Python float or a 0-d tensor of element type `A`.
///
/// Arithmetic follows PyTorch's type promotion: float with float stays a float (`f64`);
/// anything with a tensor is a tensor, the float rounded to `A` first. A float divided by a
/// tensor is `tensor.reciprocal() * float` (Python's `__rtruediv__` on tensors), two
/// roundings. Comparisons of a tensor with a float round the float to `A` too.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Num<A> {
    Float(f64),
    Tensor(A),
}

use Num::{Float, Tensor};

impl<A: Element> Num<A> {
    /// The value as a tensor of type `A` (how a float enters `p.add_(d, alpha=t)`).
    pub(crate) fn value(self) -> A {
        match self {
            Float(x) => A::from_f64(x),
            Tensor(x) => x,
        }
    }

    fn binary(self, other: Self, float: fn(f64, f64) -> f64, tensor: fn(A, A) -> A) -> Self {
        match (self, other) {
            (Float(a), Float(b)) => Float(float(a, b)),
            _ => Tensor(tensor(self.value(), other.value())),
        }
    }

    pub(crate) fn add(self, other: Self) -> Self {
        self.binary(other, |a, b| a + b, |a, b| a + b)
    }

    pub(crate) fn sub(self, other: Self) -> Self {
        self.binary(other, |a, b| a - b, |a, b| a - b)
    }

    pub(crate) fn mul(self, other: Self) -> Self {
        self.binary(other, |a, b| a * b, |a, b| a * b)
    }

    pub(crate) fn div(self, other: Self) -> Self {
        match (self, other) {
            (Float(a), Float(b)) => Float(a / b),
            (Float(a), Tensor(b)) => Tensor(A::one() / b * A::from_f64(a)),
            _ => Tensor(self.value() / other.value()),
        }
    }

    pub(crate) fn abs(self) -> Self {
        match self {
            Float(x) => Float(x.abs()),
            Tensor(x) => Tensor(x.abs()),
        }
    }

    pub(crate) fn sqrt(self) -> Self {
        match self {
            Float(x) => Float(x.sqrt()),
            Tensor(x) => Tensor(x.sqrt()),
        }
    }

    fn compare(
        self,
        other: Self,
        float: fn(&f64, &f64) -> bool,
        tensor: fn(&A, &A) -> bool,
    ) -> bool {
        match (self, other) {
            (Float(a), Float(b)) => float(&a, &b),
            _ => tensor(&self.value(), &other.value()),
        }
    }

    pub(crate) fn lt(self, other: Self) -> bool {
        self.compare(other, f64::lt, A::lt)
    }

    pub(crate) fn le(self, other: Self) -> bool {
        self.compare(other, f64::le, A::le)
    }

    pub(crate) fn gt(self, other: Self) -> bool {
        self.compare(other, f64::gt, A::gt)
    }

    pub(crate) fn ge(self, other: Self) -> bool {
        self.compare(other, f64::ge, A::ge)
    }

    /// Python's `min(self, other)`: `other` only if it compares less.
    pub(crate) fn min(self, other: Self) -> Self {
        if other.lt(self) { other } else { self }
    }

    /// Python's `max(self, other)`: `other` only if it compares greater.
    pub(crate) fn max(self, other: Self) -> Self {
        if other.gt(self) { other } else { self }
    }

    /// Whether a tensor is `>= 0`.
    pub(crate) fn non_negative(self) -> bool {
        self.ge(Tensor(A::zero()))
    }
}
