//! Every rule on every dimensionality and memory layout gives the same bits as on a plain
//! row-major array.

use ndarray::{
    Array, ArrayD, ArrayViewMut, Axis, Dimension, Ix0, Ix1, Ix2, Ix3, Ix5, IxDyn, ShapeBuilder,
    Slice,
};
use ndarray_optim::{AdjustLr, Clip, Element, Muon, Optimizer, ParamGrad, UpdateRule};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::{RuleCheck, bits, for_each_rule, values};

const STEPS: u64 = 6;

/// How a tensor is stored in memory; its logical values are the same in every layout.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Layout {
    RowMajor,
    ColumnMajor,
    /// Every other element of a twice-as-long last axis.
    Strided,
    /// Stored backwards along every axis (negative strides).
    Reversed,
}

pub(crate) const LAYOUTS: [Layout; 4] =
    [Layout::RowMajor, Layout::ColumnMajor, Layout::Strided, Layout::Reversed];

/// Storage for a tensor of `dim` in `layout`; `view` gives the tensor itself.
pub(crate) struct Stored<A, D: Dimension> {
    storage: Array<A, D>,
    layout: Layout,
}

impl<A: Element, D: Dimension> Stored<A, D> {
    pub(crate) fn new(dim: D, layout: Layout, logical: &ArrayD<A>) -> Self {
        let storage = match layout {
            Layout::RowMajor | Layout::Reversed => Array::zeros(dim),
            Layout::ColumnMajor => Array::zeros(dim.f()),
            Layout::Strided => {
                let mut wide = dim.clone();
                if let Some(last) = wide.slice_mut().last_mut() {
                    *last *= 2;
                }
                Array::zeros(wide)
            }
        };
        let mut stored = Stored { storage, layout };
        let logical = logical.view().into_dimensionality::<D>().unwrap();
        stored.view().assign(&logical);
        stored
    }

    pub(crate) fn view(&mut self) -> ArrayViewMut<'_, A, D> {
        let mut view = self.storage.view_mut();
        match self.layout {
            Layout::RowMajor | Layout::ColumnMajor => {}
            Layout::Strided => {
                if view.ndim() > 0 {
                    let last = Axis(view.ndim() - 1);
                    view.slice_axis_inplace(last, Slice::new(0, None, 2));
                }
            }
            Layout::Reversed => {
                for axis in 0..view.ndim() {
                    view.invert_axis(Axis(axis));
                }
            }
        }
        view
    }
}

/// Runs `STEPS` steps on a parameter stored in `param_layout` with gradients stored in
/// `grad_layout`; returns the parameter's bits and the optimizer's checkpoint.
fn run<R, A, D>(rule: &R, dim: D, param_layout: Layout, grad_layout: Layout) -> (Vec<u64>, String)
where
    R: UpdateRule + Serialize,
    A: Element + Serialize,
    D: Dimension,
{
    run_clipped::<R, A, D>(rule, None, dim, param_layout, grad_layout)
}

/// As [`run`], with the optimizer clipping as `clip` says, through `step_all`.
fn run_clipped<R, A, D>(
    rule: &R,
    clip: Option<Clip>,
    dim: D,
    param_layout: Layout,
    grad_layout: Layout,
) -> (Vec<u64>, String)
where
    R: UpdateRule + Serialize,
    A: Element + Serialize,
    D: Dimension,
{
    let shape = dim.slice().to_vec();
    let mut optimizer = Optimizer::<R, A>::new(rule.clone()).unwrap();
    optimizer.set_clip(clip).unwrap();
    let mut param = Stored::new(dim.clone(), param_layout, &values::<A>(&shape, 0));
    for step in 1..=STEPS {
        let mut grad = Stored::new(dim.clone(), grad_layout, &values::<A>(&shape, step));
        let (mut param, grad) = (param.view(), grad.view());
        optimizer.step_all(&mut [ParamGrad::new("p", &mut param, &grad)]).unwrap();
    }
    (bits(param.view().iter()), serde_json::to_string(&optimizer).unwrap())
}

struct AllLayouts<D>(D);

impl<D: Dimension> RuleCheck for AllLayouts<D> {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        let dim = self.0.clone();
        let plain = run::<R, A, D>(&rule, dim.clone(), Layout::RowMajor, Layout::RowMajor);
        for param_layout in LAYOUTS {
            for grad_layout in LAYOUTS {
                assert_eq!(
                    run::<R, A, D>(&rule, dim.clone(), param_layout, grad_layout),
                    plain,
                    "{rule:?} {} shape {:?}: param {param_layout:?}, grad {grad_layout:?}",
                    A::NAME,
                    dim.slice(),
                );
            }
        }
    }
}

fn check_all_rules<D: Dimension>(dim: D) {
    for_each_rule(&mut AllLayouts(dim));
}

#[test]
fn zero_dimensional() {
    check_all_rules(Ix0());
}

#[test]
fn one_dimensional() {
    check_all_rules(Ix1(37));
}

#[test]
fn three_dimensional() {
    check_all_rules(Ix3(3, 4, 5));
}

#[test]
fn five_dimensional() {
    check_all_rules(Ix5(2, 3, 1, 4, 2));
}

#[test]
fn dynamic_dimensional() {
    check_all_rules(IxDyn(&[3, 2, 4]));
    check_all_rules(IxDyn(&[2, 1, 3, 2, 2, 3]));
}

#[test]
fn empty_tensors() {
    check_all_rules(Ix3(2, 0, 3));
}

/// The same tensor stepped once through a view and once through an owned array of another
/// dimension type (same shape) shares its state and keeps matching bits.
#[test]
fn static_and_dynamic_dimensions_agree() {
    let rule = ndarray_optim::Adam::default();
    let shape = [4, 3];
    let mut fixed = Optimizer::<_, f64>::new(rule).unwrap();
    let mut dynamic = fixed.clone();
    let mut a = values::<f64>(&shape, 0).into_dimensionality::<ndarray::Ix2>().unwrap();
    let mut b = values::<f64>(&shape, 0);
    for step in 1..=STEPS {
        let g = values::<f64>(&shape, step);
        fixed.step("w", &mut a, &g.clone().into_dimensionality().unwrap()).unwrap();
        dynamic.step("w", &mut b, &g).unwrap();
    }
    assert_eq!(bits(a.iter()), bits(b.iter()));
    assert_eq!(fixed.checkpoint(), dynamic.checkpoint());
}

/// Clipping by norm sums the squares in an order that no layout changes: a column-major,
/// strided or reversed gradient gives the row-major norm to the last bit, and so the same
/// clipped step. Norms are summed over hundreds of elements of mixed magnitude, where the
/// order of a floating-point sum shows in the last bits.
#[test]
fn clipping_by_norm_is_layout_independent() {
    fn check<A: Element + Serialize>(clip: Clip) {
        let rule = ndarray_optim::Sgd { lr: 0.5, ..Default::default() };
        let dim = Ix3(7, 9, 11);
        let plain =
            run_clipped::<_, A, _>(&rule, Some(clip), dim, Layout::RowMajor, Layout::RowMajor);
        for grad_layout in LAYOUTS {
            for param_layout in LAYOUTS {
                let run = run_clipped::<_, A, _>(&rule, Some(clip), dim, param_layout, grad_layout);
                assert_eq!(
                    run,
                    plain,
                    "{clip:?} {}: param {param_layout:?}, grad {grad_layout:?}",
                    A::NAME
                );
            }
        }
    }
    for clip in [Clip::Norm { max_norm: 0.01 }, Clip::GlobalNorm { max_norm: 0.01 }] {
        check::<f32>(clip);
        check::<f64>(clip);
    }
}

/// Muon (matrices only, so not in `for_each_rule`): its Newton–Schulz iterate is filled in
/// logical order, so a tall, a wide and a square matrix give the same bits in every layout
/// of parameter and gradient, and as transposed views of arrays of the other shape.
#[test]
fn muon_is_layout_independent() {
    fn check<A: Element + Serialize + DeserializeOwned>(rule: Muon) {
        for (rows, cols) in [(5, 3), (3, 7), (4, 4)] {
            let dim = Ix2(rows, cols);
            let plain = run::<Muon, A, Ix2>(&rule, dim, Layout::RowMajor, Layout::RowMajor);
            for param_layout in LAYOUTS {
                for grad_layout in LAYOUTS {
                    let got = run::<Muon, A, Ix2>(&rule, dim, param_layout, grad_layout);
                    assert_eq!(
                        got,
                        plain,
                        "{rule:?} {} ({rows}, {cols}): param {param_layout:?}, grad {grad_layout:?}",
                        A::NAME
                    );
                }
            }
            assert_eq!(transposed_views::<A>(&rule, rows, cols), plain.0, "{rule:?} {}", A::NAME);
        }
    }
    /// The run of `run` with parameter and gradients each the transposed view of a row-major
    /// array of shape (`cols`, `rows`).
    fn transposed_views<A: Element + Serialize>(rule: &Muon, rows: usize, cols: usize) -> Vec<u64> {
        let mut optimizer = Optimizer::<Muon, A>::new(*rule).unwrap();
        let transposed = |seed| {
            values::<A>(&[rows, cols], seed).reversed_axes().as_standard_layout().into_owned()
        };
        let mut param = transposed(0);
        for step in 1..=STEPS {
            let grad = transposed(step);
            let (mut param, grad) = (param.view_mut().reversed_axes(), grad.view().reversed_axes());
            assert_eq!(param.strides(), &[1, rows as isize]);
            optimizer.step_all(&mut [ParamGrad::new("p", &mut param, &grad)]).unwrap();
        }
        bits(param.t().iter())
    }
    let options = Muon {
        lr: 0.05,
        weight_decay: 0.2,
        momentum: 0.9,
        nesterov: false,
        ns_steps: 3,
        adjust_lr_fn: Some(AdjustLr::SpectralUnclamped),
        ..Muon::default()
    };
    for rule in [Muon { lr: 0.05, ..Muon::default() }, options] {
        check::<f32>(rule);
        check::<f64>(rule);
    }
}
