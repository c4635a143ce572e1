use ndarray::{ArrayView, ArrayViewMut, Axis, IxDyn};

use crate::element::Element;
use crate::error::{Error, Result};
use crate::kernel::{Split, Stage, TensorStep, sum_in_order};
use crate::rule::{Options, UpdateRule, WeightDecay, check_eps};
use crate::rules::maximum;

/// Adafactor (Shazeer & Stern 2018), as PyTorch's `Adafactor`: second moments factored
/// into row and column statistics, a relative step size and update clipping.
///
/// At step `$t$` (per tensor, from 1), with `$\hat\beta_{2,t} = t^{c}$` (`$c$` = `beta2_decay`)
/// and the relative step `$\rho_t = \min(\eta, 1/\sqrt t)$`:
///
/// ```math
/// \begin{aligned}
/// \alpha_t &= \max\bigl(\epsilon_2, \operatorname{RMS}(\theta)\bigr)\, \rho_t, &
/// \theta &\leftarrow \theta\,(1 - \eta\lambda), \\
/// V_t &= \operatorname{lerp}\bigl(V_{t-1}, \overline{g_t^2}, \hat\beta_{2,t}\bigr), &
/// u_t &= \frac{g_t}{\sqrt{\max(V_t, \epsilon_1^2)}}, \\
/// \theta &\leftarrow \theta - \frac{\alpha_t}{\max\bigl(1, \operatorname{RMS}(u_t)/d\bigr)}\, u_t,
/// \end{aligned}
/// ```
///
/// with `$\operatorname{lerp}(a, b, w) = a + w(b - a)$` and RMS the root mean square over the
/// whole tensor; `$\alpha_t$` is computed from θ *before* the decoupled weight decay. For a
/// tensor of two or more dimensions, `$V_t$` is never stored: the rows (last axis) and columns
/// (second to last axis) of each matrix in the batch of leading axes keep running means, from
/// which `$V_t$` is rebuilt:
///
/// ```math
/// \begin{aligned}
/// R_t &= \operatorname{lerp}(R_{t-1}, \operatorname{mean}_\text{col}\, g_t^2, \hat\beta_{2,t}), \\
/// C_t &= \operatorname{lerp}(C_{t-1}, \operatorname{mean}_\text{row}\, g_t^2, \hat\beta_{2,t}), \\
/// V_{t,rc} &= \frac{R_{t,r}\, C_{t,c}}{\max\bigl(\operatorname{mean}_r R_{t,r}, \epsilon_1\bigr)}.
/// \end{aligned}
/// ```
///
/// A tensor of 0 or 1 dimensions keeps `$V_t$` itself, with `$\overline{g_t^2} = g_t^2$`. Like
/// PyTorch's, `lerp` takes `$b - (b - a)(1 - w)$` for weights of ½ or more, so that the first
/// step (`$\hat\beta_{2,1} = 1$`) stores exactly the statistics of the first gradient. The RMS
/// values are computed in `f64` in logical order ([`sum_in_order`]) and rounded to the
/// element type, as PyTorch's norms in it are, so that no memory layout or thread count
/// changes a bit; so are the row and column means. A tensor without elements is left as it
/// is (PyTorch's RMS divides by its zero size).
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.01 | PyTorch |
/// | `$c$` | `beta2_decay` | −0.8 | PyTorch and the paper |
/// | `$\epsilon_1$` | `eps1` | `None`: the element type's machine epsilon | PyTorch |
/// | `$\epsilon_2$` | `eps2` | 1e-3 | PyTorch and the paper |
/// | `$d$` | `d` | 1 | PyTorch and the paper |
/// | `$\lambda$` | `weight_decay` | 0 | PyTorch |
/// | | `maximize` | `false` | PyTorch |
///
/// State: `row_var` (shape `[..., R, 1]`) and `col_var` (shape `[..., 1, C]`) for a tensor of
/// shape `[..., R, C]`, so `$R + C$` values per matrix instead of `$RC$`; `variance` (the tensor's
/// shape) for 0-D and 1-D tensors; all zero before the first step. The per-matrix means
/// `$\max(\operatorname{mean}_r R_{t,r}, \epsilon_1)$` live in working memory, not state.
/// Matches PyTorch's `Adafactor(lr, beta2_decay, eps=(eps1, eps2), d, weight_decay,
/// maximize=maximize)`.
///
/// ```
/// use ndarray::Array2;
/// use ndarray_optim::{Adafactor, Optimizer};
///
/// let mut opt = Optimizer::new(Adafactor::default())?;
/// let mut w = Array2::<f32>::ones((64, 32));
/// opt.step("w", &mut w, &Array2::from_elem((64, 32), 0.5))?;
/// // The first step is α = RMS(θ) · min(lr, 1) = 0.01 against the sign of the gradient.
/// assert!(w.iter().all(|&x| (x - 0.99).abs() < 1e-6));
/// // Row and column statistics: 64 + 32 values instead of 64 × 32.
/// let state = opt.state_of("w").unwrap();
/// assert_eq!(state.buffer("row_var").unwrap().shape(), &[64, 1]);
/// assert_eq!(state.buffer("col_var").unwrap().shape(), &[1, 32]);
/// assert_eq!(state.bytes(), (64 + 32) * 4);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Adafactor {
    /// Learning rate η, the bound of the relative step `$\rho_t$` (finite, ≥ 0).
    pub lr: f64,
    /// Exponent `$c$` of the second-moment weight `$t^c$` (finite, ≤ 0).
    pub beta2_decay: f64,
    /// Floor `$\epsilon_1$` of the second-moment estimates (finite, ≥ 0); `None` for the
    /// element type's machine epsilon.
    pub eps1: Option<f64>,
    /// Floor `$\epsilon_2$` of the parameter's RMS in the step size (finite, ≥ 0).
    pub eps2: f64,
    /// Clipping threshold `$d$` of the update's RMS (finite, ≥ 1).
    pub d: f64,
    /// Decoupled weight decay λ: θ ← θ(1 − ηλ) (finite, ≥ 0).
    pub weight_decay: f64,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Default for Adafactor {
    fn default() -> Self {
        Adafactor {
            lr: 0.01,
            beta2_decay: -0.8,
            eps1: None,
            eps2: 1e-3,
            d: 1.0,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Whether a tensor of `shape` keeps factored statistics.
fn factored(shape: &[usize]) -> bool {
    shape.len() >= 2
}

/// PyTorch's `lerp`: `$a + w(b - a)$` for `$\lvert w\rvert < ½$`, `$b - (b - a)(1 - w)$` otherwise,
/// exact at both ends.
#[inline]
fn lerp<A: Element>(a: A, b: A, w: A) -> A {
    let half = A::from_f64(0.5);
    if w.abs() < half { a + w * (b - a) } else { b - (b - a) * (A::one() - w) }
}

impl UpdateRule for Adafactor {
    const NAME: &'static str = "adafactor";

    fn options(&self) -> Options {
        let weight_decay = WeightDecay::Decoupled(self.weight_decay);
        Options { lr: self.lr, weight_decay, maximize: self.maximize }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn state_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn shaped_state(&self, shape: &[usize]) -> Vec<(&'static str, Vec<usize>)> {
        let n = shape.len();
        if factored(shape) {
            let (mut rows, mut cols) = (shape.to_vec(), shape.to_vec());
            rows[n - 1] = 1;
            cols[n - 2] = 1;
            vec![("row_var", rows), ("col_var", cols)]
        } else {
            vec![("variance", shape.to_vec())]
        }
    }

    fn scratch_len(&self, shape: &[usize]) -> usize {
        // One mean of the row statistics per matrix of the batch.
        if factored(shape) { shape[..shape.len() - 2].iter().product() } else { 0 }
    }

    fn non_negative_state(&self) -> &'static [&'static str] {
        &["row_var", "col_var", "variance"]
    }

    fn validate(&self) -> Result<()> {
        let invalid = |key, value, requirement| Error::InvalidHyperparameter {
            rule: Self::NAME,
            key,
            value,
            requirement,
        };
        if !(self.beta2_decay.is_finite() && self.beta2_decay <= 0.0) {
            return Err(invalid("beta2_decay", self.beta2_decay, "finite and <= 0"));
        }
        if let Some(eps1) = self.eps1 {
            check_eps(Self::NAME, "eps1", eps1)?;
        }
        check_eps(Self::NAME, "eps2", self.eps2)?;
        if !(self.d.is_finite() && self.d >= 1.0) {
            return Err(invalid("d", self.d, "finite and >= 1"));
        }
        Ok(())
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let shape = tensor.shape();
        let numel: usize = shape.iter().product();
        if numel == 0 {
            return;
        }
        let (n, is_factored) = (shape.len(), factored(shape));
        let t = tensor.step() as f64;
        let weight = A::from_f64(t.powf(self.beta2_decay));
        let rho = tensor.lr().min(1.0 / t.powf(0.5));
        let eps1 = self.eps1.unwrap_or(A::epsilon().into_f64());
        let sqrt_numel = (numel as f64).powf(0.5);
        let Split { param, grad, shaped, scratch, stage, .. } = tensor.split::<0>();
        let alpha = self.eps2.max(norm(param.iter().copied()) / sqrt_numel) * rho;
        let direction = Direction { stage, eps1_sq: A::from_f64(eps1 * eps1) };

        if is_factored {
            let (rows, cols) = (param.shape()[n - 2], param.shape()[n - 1]);
            let (row_var, col_var) = shaped.split_at_mut(numel / cols);
            // Statistics of the last axis (each row), then of the second to last (each
            // column): lanes come in the row-major order of the other axes, which is that of
            // `row_var` ([..., R, 1]) and `col_var` ([..., 1, C]).
            for (axis, stats, len) in [(n - 1, &mut *row_var, cols), (n - 2, &mut *col_var, rows)] {
                let lanes = grad.lanes(Axis(axis)).into_iter().zip(param.lanes(Axis(axis)));
                for ((g, p), var) in lanes.zip(stats.iter_mut()) {
                    let sum = sum_in_order(g.iter().zip(&p).map(|(&g, &p)| {
                        let g = stage.grad(g, p).into_f64();
                        g * g
                    }));
                    *var = lerp(*var, A::from_f64(sum / len as f64), weight);
                }
            }
            let eps1 = A::from_f64(eps1);
            for (mean, batch) in scratch.iter_mut().zip(row_var.chunks(rows)) {
                let sum = sum_in_order(batch.iter().map(|r| r.into_f64()));
                *mean = maximum(A::from_f64(sum / rows as f64), eps1);
            }
            let (row_var, col_var, means) = (&*row_var, &*col_var, &*scratch);
            let variance = |index: usize| {
                let (row, col) = (index / cols, index % cols);
                let batch = row / rows;
                row_var[row] * col_var[batch * cols + col] / means[batch]
            };
            let clip = direction.clip(param.view(), &grad, variance, sqrt_numel * self.d);
            direction.update(param, &grad, variance, A::from_f64(-alpha / clip));
        } else {
            for ((&g, &p), v) in grad.iter().zip(&param).zip(shaped.iter_mut()) {
                let g = stage.grad(g, p);
                *v = lerp(*v, g * g, weight);
            }
            let shaped = &*shaped;
            let variance = |index: usize| shaped[index];
            let clip = direction.clip(param.view(), &grad, variance, sqrt_numel * self.d);
            direction.update(param, &grad, variance, A::from_f64(-alpha / clip));
        }
    }
}

/// The Euclidean norm of `values`, summed in order in `f64` and rounded to the element type.
fn norm<A: Element>(values: impl Iterator<Item = A>) -> f64 {
    let squares = sum_in_order(values.map(|x| x.into_f64() * x.into_f64()));
    A::from_f64(squares.sqrt()).into_f64()
}

/// The update direction `$u = g / \sqrt{\max(V, \epsilon_1^2)}$` of each element.
#[derive(Clone, Copy)]
struct Direction<A> {
    stage: Stage<A>,
    eps1_sq: A,
}

impl<A: Element> Direction<A> {
    /// `$u$` for the gradient `g` of the parameter `p`, of second-moment estimate `v`, as
    /// PyTorch computes it: `rsqrt` of the estimate, times the gradient.
    #[inline]
    fn at(self, g: A, p: A, v: A) -> A {
        A::one() / maximum(v, self.eps1_sq).sqrt() * self.stage.grad(g, p)
    }

    /// The clipping divisor `$\max(1, \lVert u\rVert / (\sqrt n\, d))$`, with `scale` =
    /// `$\sqrt n\, d$`, from the estimate `variance(i)` of the element at logical index `i`.
    fn clip(
        self,
        param: ArrayView<'_, A, IxDyn>,
        grad: &ArrayView<'_, A, IxDyn>,
        variance: impl Fn(usize) -> A,
        scale: f64,
    ) -> f64 {
        let elements = grad.iter().zip(&param).enumerate();
        let directions = elements.map(|(index, (&g, &p))| self.at(g, p, variance(index)));
        1.0_f64.max(norm(directions) / scale)
    }

    /// θ ← θ(1 − ηλ) + `step` · u, element by element in logical order.
    fn update(
        self,
        mut param: ArrayViewMut<'_, A, IxDyn>,
        grad: &ArrayView<'_, A, IxDyn>,
        variance: impl Fn(usize) -> A,
        step: A,
    ) {
        for (index, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            let u = self.at(g, *p, variance(index));
            *p = self.stage.decay(*p) + step * u;
        }
    }
}
