use ndarray::linalg::general_mat_vec_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Ix2, Zip};

use crate::element::Element;
use crate::error::{Error, Result};
use crate::kernel::{Split, TensorStep, sum_in_order};
use crate::rule::{Options, UpdateRule, WeightDecay, check_decay, check_eps};
use crate::rules::{Lerp, maximum};

/// The most Newton–Schulz iterations a step may run, as PyTorch allows ("less than 100"):
/// each costs three matrix products, so the bound keeps a configuration from stalling steps.
const MAX_NS_STEPS: u32 = 99;

/// Muon (Jordan et al. 2024): momentum, orthogonalised by a Newton–Schulz iteration, for the
/// 2-D weights of hidden layers.
///
/// For a matrix parameter θ of `$A$` rows and `$B$` columns, with momentum μ:
///
/// ```math
/// \begin{aligned}
/// b_t &= \mu\, b_{t-1} + (1 - \mu)\, g_t, &
/// u_t &= \begin{cases} \mu\, b_t + (1 - \mu)\, g_t & \text{nesterov} \\
///                      b_t & \text{otherwise,} \end{cases} \\
/// \theta &\leftarrow \theta\,(1 - \eta\lambda), &
/// \theta &\leftarrow \theta - \eta\, r(A, B)\; \mathrm{NS}_k(u_t),
/// \end{aligned}
/// ```
///
/// where `$\mathrm{NS}_k$` runs `$k$` Newton–Schulz iterations with coefficients `$(a, b, c)$` on
/// `$X_0 = u / \max(\lVert u\rVert_F, \epsilon)$` (transposed first when `$A > B$`, and back
/// after, so that the Gram matrix is the smaller one):
///
/// ```math
/// X_{i+1} = a X_i + \left(b\, X_i X_i^\top + c\, (X_i X_i^\top)^2\right) X_i,
/// ```
///
/// which drives every singular value of `$X$` towards 1 (roughly into [0.7, 1.2] with the
/// default coefficients), so that the update is close to the orthogonal factor `$UV^\top$` of
/// `$u = U\Sigma V^\top$`. The rate adjustment `$r(A, B)$` evens out the update's scale over
/// shapes, as [`AdjustLr`] says. Weight decay is decoupled, at the unadjusted rate η.
///
/// The averages are PyTorch's `lerp`: `$b + w\,(g - b)$` for a weight `$w < 0.5$`, else
/// `$g - (g - b)(1 - w)$`, with `$w = 1 - \mu$` for `$b_t$` and `$w = \mu$` from `$g_t$` towards
/// `$b_t$` for `$u_t$`. The iteration runs in the element type (PyTorch's runs in bfloat16);
/// the norm is a sum in `f64` in the matrix's logical order, and the matrix products go
/// through ndarray's matrix–vector product on working memory the state owns, so that
/// results are the same bits for every memory layout and steps allocate nothing.
///
/// | symbol | field | default | source of the default |
/// | --- | --- | --- | --- |
/// | `$\eta$` | `lr` | 0.001 | PyTorch |
/// | `$\lambda$` | `weight_decay` | 0.1 | PyTorch |
/// | `$\mu$` | `momentum` | 0.95 | Jordan's post and PyTorch |
/// | | `nesterov` | `true` | Jordan's post and PyTorch |
/// | `$(a, b, c)$` | `ns_coefficients` | (3.4445, −4.775, 2.0315) | Jordan's post and PyTorch |
/// | `$k$` | `ns_steps` | 5 | Jordan's post and PyTorch |
/// | `$\epsilon$` | `eps` | 1e-7 | PyTorch |
/// | `$r$` | `adjust_lr_fn` | `None` ([`AdjustLr::Original`]) | PyTorch |
///
/// State: `momentum_buffer` (`$b$`), zero before the first step. Matches PyTorch's `Muon(lr,
/// weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn)` with its
/// Newton–Schulz iteration in the parameter's dtype; PyTorch's Muon has no `maximize`.
///
/// Muon steps matrices only: a tensor of any other dimension in a Muon group is refused with
/// [`Error::UnsupportedShape`]. Biases, gains and embeddings belong to a group of another
/// rule, in one `Optimizer<Rule, A>`:
///
/// ```
/// use ndarray::{Array2, array};
/// use ndarray_optim::{AdamW, Error, Muon, Optimizer, Rule};
///
/// let adamw = AdamW { lr: 3e-4, ..AdamW::default() };
/// let mut opt = Optimizer::<Rule, f32>::new(adamw.into())?;
/// opt.add_group("hidden", Muon { lr: 0.02, weight_decay: 0.0, ..Muon::default() })?;
/// opt.assign("layer.weight", "hidden")?;
///
/// let (mut w, mut b) = (Array2::<f32>::zeros((3, 3)), array![0.5_f32, -0.5, 0.0]);
/// // A gradient with equal singular values: Muon's update is a multiple of the identity.
/// let g = Array2::from_diag(&array![2.0_f32, 2.0, 2.0]);
/// opt.step("layer.weight", &mut w, &g)?;
/// opt.step("layer.bias", &mut b, &array![1.0, -1.0, 0.0])?;
/// assert!(w.indexed_iter().all(|((i, j), &x)| if i == j { x == w[[0, 0]] } else { x == 0.0 }));
/// assert!((-0.02 * 1.3..-0.02 * 0.6).contains(&w[[0, 0]]));
/// assert!((b[0] - (0.5 * (1.0 - 3e-4 * 0.01) - 3e-4)).abs() < 1e-7);
///
/// // A vector in the Muon group is refused, and nothing changes.
/// opt.assign("stray", "hidden")?;
/// let err = opt.step("stray", &mut array![1.0_f32], &array![1.0]).unwrap_err();
/// assert!(matches!(err, Error::UnsupportedShape { rule: "muon", .. }));
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Muon {
    /// Learning rate η (finite, ≥ 0; 0 freezes the tensors), before the shape adjustment.
    pub lr: f64,
    /// Decoupled weight decay λ: θ shrinks by the factor 1 − ηλ each step, at the unadjusted
    /// rate (finite, ≥ 0).
    pub weight_decay: f64,
    /// Momentum μ, in [0, 1).
    pub momentum: f64,
    /// Orthogonalise the Nesterov look-ahead `$\mu b_t + (1 - \mu) g_t$` instead of `$b_t$`.
    pub nesterov: bool,
    /// The Newton–Schulz coefficients `$(a, b, c)$` (finite).
    pub ns_coefficients: [f64; 3],
    /// The number `$k$` of Newton–Schulz iterations, from 1 to 99.
    pub ns_steps: u32,
    /// The floor ε of the Frobenius norm that the matrix is divided by (finite, ≥ 0).
    pub eps: f64,
    /// How the rate scales with the matrix's shape; `None` is [`AdjustLr::Original`], as in
    /// PyTorch.
    pub adjust_lr_fn: Option<AdjustLr>,
}

impl Default for Muon {
    fn default() -> Self {
        Muon {
            lr: 0.001,
            weight_decay: 0.1,
            momentum: 0.95,
            nesterov: true,
            ns_coefficients: [3.4445, -4.775, 2.0315],
            ns_steps: 5,
            eps: 1e-7,
            adjust_lr_fn: None,
        }
    }
}

/// How [`Muon`] scales its rate η for a matrix of `$A$` rows and `$B$` columns (PyTorch's
/// `adjust_lr_fn`), so that updates of matrices of different shapes have comparable effect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum AdjustLr {
    /// `$\eta \sqrt{\max(1, A/B)}$`, Jordan's original scaling (`"original"`).
    #[default]
    Original,
    /// `$0.2\, \eta \sqrt{\max(A, B)}$`, which matches the update's RMS to AdamW's, so that
    /// AdamW's rate and weight decay carry over (Liu et al. 2025, `"match_rms_adamw"`).
    MatchRmsAdamw,
    /// `$\eta \sqrt{A/B}$`, Bernstein's spectral scaling without the clamp
    /// (`"spectral_unclamped"`).
    SpectralUnclamped,
}

impl AdjustLr {
    /// The factor `$r(A, B)$` for a matrix of `rows` × `cols`, in `f64` as PyTorch computes it.
    pub fn ratio(self, rows: usize, cols: usize) -> f64 {
        let (rows, cols) = (rows as f64, cols as f64);
        match self {
            AdjustLr::Original => (rows / cols).max(1.0).sqrt(),
            AdjustLr::MatchRmsAdamw => 0.2 * rows.max(cols).sqrt(),
            AdjustLr::SpectralUnclamped => (rows / cols).sqrt(),
        }
    }
}

/// `$C \leftarrow \alpha A B + \beta C$`, column by column through ndarray's matrix–vector
/// product: `general_mat_mul` (matrixmultiply) allocates packing buffers on every call,
/// and steps allocate nothing. With ndarray's `blas` feature each column is a BLAS `gemv`.
fn mat_mul<A: Element>(
    alpha: A,
    a: &ArrayView2<'_, A>,
    b: &ArrayView2<'_, A>,
    beta: A,
    c: &mut ArrayViewMut2<'_, A>,
) {
    for (column, mut out) in b.columns().into_iter().zip(c.columns_mut()) {
        general_mat_vec_mul(alpha, a, &column, beta, &mut out);
    }
}

impl UpdateRule for Muon {
    const NAME: &'static str = "muon";

    fn options(&self) -> Options {
        let weight_decay = WeightDecay::Decoupled(self.weight_decay);
        Options { lr: self.lr, weight_decay, maximize: false }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn cycled_momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.momentum)
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["momentum_buffer"]
    }

    fn check_shape(&self, shape: &[usize]) -> Result<(), &'static str> {
        if shape.len() == 2 { Ok(()) } else { Err("only 2-D (matrix)") }
    }

    /// The iterate X and its previous value (n × m each, for n ≤ m the sides of the
    /// matrix), the Gram matrix and the polynomial in it (n × n each).
    fn scratch_len(&self, shape: &[usize]) -> usize {
        match *shape {
            [rows, cols] => {
                let (n, m) = (rows.min(cols), rows.max(cols));
                2 * n * m + 2 * n * n
            }
            _ => 0,
        }
    }

    fn validate(&self) -> Result<()> {
        let invalid = |key, value, requirement| Error::InvalidHyperparameter {
            rule: Self::NAME,
            key,
            value,
            requirement,
        };
        check_decay(Self::NAME, "momentum", self.momentum)?;
        check_eps(Self::NAME, "eps", self.eps)?;
        if !(1..=MAX_NS_STEPS).contains(&self.ns_steps) {
            return Err(invalid("ns_steps", f64::from(self.ns_steps), "in [1, 99]"));
        }
        match self.ns_coefficients.iter().find(|c| !c.is_finite()) {
            Some(&c) => Err(invalid("ns_coefficients", c, "finite")),
            None => Ok(()),
        }
    }

    fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
        let lr = tensor.lr();
        let Split { param, grad, buffers: [buffer], scratch, stage, .. } = tensor.split::<1>();
        let matrix = "check_shape admits matrices only";
        let mut param = param.into_dimensionality::<Ix2>().expect(matrix);
        let grad = grad.into_dimensionality::<Ix2>().expect(matrix);
        let mut buffer = buffer.into_dimensionality::<Ix2>().expect(matrix);
        let (rows, cols) = param.dim();
        let tall = rows > cols;
        let (n, m) = (rows.min(cols), rows.max(cols));
        let (x, rest) = scratch.split_at_mut(n * m);
        let (previous, rest) = rest.split_at_mut(n * m);
        let (gram, poly) = rest.split_at_mut(n * n);
        let sized = "scratch_len sizes the working memory";
        let mut x = ArrayViewMut2::from_shape((n, m), x).expect(sized);
        let mut previous = ArrayViewMut2::from_shape((n, m), previous).expect(sized);
        let mut gram = ArrayViewMut2::from_shape((n, n), gram).expect(sized);
        let mut poly = ArrayViewMut2::from_shape((n, n), poly).expect(sized);

        // X is written at each element's logical index, so it holds the same values in the
        // same places whatever the layouts of parameter, gradient and buffer.
        let into_buffer = Lerp::<A>::new(1.0 - self.momentum);
        let towards_buffer = Lerp::<A>::new(self.momentum);
        let nesterov = self.nesterov;
        let mut update = if tall { x.view_mut().reversed_axes() } else { x.view_mut() };
        Zip::from(&mut update).and(&mut buffer).and(&grad).and(&param).for_each(|u, b, &g, &p| {
            let g = stage.grad(g, p);
            *b = into_buffer.at(*b, g);
            *u = if nesterov { towards_buffer.at(g, *b) } else { *b };
        });

        let norm = sum_in_order(x.iter().map(|&v| v.into_f64() * v.into_f64())).sqrt();
        let norm = maximum(A::from_f64(norm), A::from_f64(self.eps));
        x.mapv_inplace(|v| v / norm);
        let [a, b, c] = self.ns_coefficients.map(A::from_f64);
        for _ in 0..self.ns_steps {
            mat_mul(A::one(), &x.view(), &x.t(), A::zero(), &mut gram);
            poly.assign(&gram);
            mat_mul(c, &gram.view(), &gram.view(), b, &mut poly);
            previous.assign(&x);
            mat_mul(A::one(), &poly.view(), &previous.view(), a, &mut x);
        }

        let ratio = self.adjust_lr_fn.unwrap_or_default().ratio(rows, cols);
        let step_size = A::from_f64(lr * ratio);
        let update = if tall { x.view().reversed_axes() } else { x.view() };
        Zip::from(&mut param).and(&update).for_each(|p, &u| *p = stage.decay(*p) - step_size * u);
    }
}
