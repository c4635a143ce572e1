//! L-BFGS, PyTorch's `torch.optim.LBFGS`: [`Lbfgs`] and its [`LbfgsOptions`].

mod flat;
mod history;
mod scalar;
mod wolfe;

use crate::check::{check_lr, check_non_negative, require};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::model::layout::{ModelLayout, restore_params, save_params};
use crate::model::{NameBuffer, Parameters, Prefix};
use flat::{abs_max, abs_sum, add_scaled, dot};
use history::History;
use scalar::Num::{self, Float, Tensor};
use wolfe::{SLOTS, strong_wolfe};

const RULE: &str = "lbfgs";

/// The line search of [`LbfgsOptions::line_search_fn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum LineSearch {
    /// PyTorch's `"strong_wolfe"`: bracketing and cubic zoom until the strong Wolfe
    /// conditions hold with `$c_1 = 10^{-4}$`, `$c_2 = 0.9$`.
    StrongWolfe,
}

/// The settings of [`Lbfgs`], named and defaulted as PyTorch's `LBFGS` arguments.
///
/// | field | default | meaning |
/// | --- | --- | --- |
/// | `lr` | 1 | step length of each iteration (the line search's first trial) |
/// | `max_iter` | 20 | iterations per [`step`](Lbfgs::step) |
/// | `max_eval` | `None`: `max_iter * 5 / 4` (integer division) | loss and gradient evaluations per step |
/// | `tolerance_grad` | 1e-7 | stop when `$\max_i \lvert g_i\rvert$` is at most this |
/// | `tolerance_change` | 1e-9 | stop when the step or the loss changes less |
/// | `history_size` | 100 | curvature pairs kept |
/// | `line_search_fn` | `None` | `None` (fixed steps of `lr`) or [`LineSearch::StrongWolfe`] |
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct LbfgsOptions {
    /// Step length of each iteration, and the first trial of the line search.
    pub lr: f64,
    /// Iterations per step.
    pub max_iter: usize,
    /// Evaluations per step; `None` is `max_iter * 5 / 4`.
    pub max_eval: Option<usize>,
    /// First-order optimality: a step stops when no gradient element is larger in magnitude.
    pub tolerance_grad: f64,
    /// A step stops when the directional derivative, the step or the loss changes less.
    pub tolerance_change: f64,
    /// How many curvature pairs are kept.
    pub history_size: usize,
    /// The line search; `None` steps by `lr` (scaled on the very first iteration).
    pub line_search_fn: Option<LineSearch>,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        LbfgsOptions {
            lr: 1.0,
            max_iter: 20,
            max_eval: None,
            tolerance_grad: 1e-7,
            tolerance_change: 1e-9,
            history_size: 100,
            line_search_fn: None,
        }
    }
}

impl LbfgsOptions {
    /// Checks every setting.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] for a negative or non-finite `lr` or tolerance, or a
    /// `max_iter`, `max_eval` or `history_size` of 0.
    pub fn validate(&self) -> Result<()> {
        check_lr(RULE, self.lr)?;
        require(self.max_iter >= 1, RULE, "max_iter", self.max_iter as f64, ">= 1")?;
        if let Some(max_eval) = self.max_eval {
            require(max_eval >= 1, RULE, "max_eval", max_eval as f64, ">= 1")?;
        }
        check_non_negative(RULE, "tolerance_grad", self.tolerance_grad)?;
        check_non_negative(RULE, "tolerance_change", self.tolerance_change)?;
        require(self.history_size >= 1, RULE, "history_size", self.history_size as f64, ">= 1")
    }

    /// `max_eval`, or PyTorch's default `max_iter * 5 // 4`.
    pub fn max_eval(&self) -> usize {
        self.max_eval.unwrap_or((self.max_iter / 4).saturating_mul(5) + self.max_iter % 4 * 5 / 4)
    }
}

/// The state PyTorch keeps (`func_evals`, `n_iter`, `d`, `t`, `old_dirs`, `old_stps`, `ro`,
/// `H_diag`, `prev_flat_grad`, `prev_loss`) and the tensors it was built for.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
struct State<A> {
    /// `None` until the first step.
    layout: Option<ModelLayout>,
    func_evals: u64,
    n_iter: u64,
    d: Vec<A>,
    t: A,
    history: History<A>,
    h_diag: A,
    prev_flat_grad: Vec<A>,
    prev_loss: Option<f64>,
}

/// Working memory, sized once: no state.
#[derive(Clone, Debug, Default)]
struct Work<A> {
    /// Flat gradients: the current one and the line search's.
    pool: [Vec<A>; SLOTS],
    /// The parameters a line search starts from.
    x: Vec<A>,
    /// The next curvature pair before it is accepted.
    y: Vec<A>,
    s: Vec<A>,
    /// The two-loop recursion's `$\alpha_i$`.
    al: Vec<A>,
    names: NameBuffer,
}

impl<A: Element> Work<A> {
    fn size(&mut self, numel: usize, history: usize) {
        for buffer in self.pool.iter_mut().chain([&mut self.x]) {
            buffer.resize(numel, A::zero());
        }
        self.al.resize(history, A::zero());
    }
}

/// L-BFGS (Liu & Nocedal 1989), PyTorch's `torch.optim.LBFGS` operation for operation: a
/// quasi-Newton method that steps along `$d = -H g$`, `$H$` the inverse Hessian estimated from
/// the last `$m$` steps `$s_i = \theta_{i+1} - \theta_i$` and gradient changes
/// `$y_i = g_{i+1} - g_i$`, `$\rho_i = 1 / y_i^\top s_i$` (a pair is kept only if
/// `$y_i^\top s_i > 10^{-10}$`). The two-loop recursion computes `$d$` without forming `$H$`:
///
/// ```math
/// \begin{aligned}
/// q &\leftarrow -g, &
/// \alpha_i &= \rho_i\, s_i^\top q,\quad q \leftarrow q - \alpha_i y_i \quad (i = k-1, \dots, k-m), \\
/// r &\leftarrow \gamma\, q,\quad \gamma = \frac{y_{k-1}^\top s_{k-1}}{y_{k-1}^\top y_{k-1}}, &
/// \beta_i &= \rho_i\, y_i^\top r,\quad r \leftarrow r + (\alpha_i - \beta_i)\, s_i \quad (i = k-m, \dots, k-1),
/// \end{aligned}
/// ```
///
/// and `$d = r$`. The first iteration steps along `$-g$` with `$t = \min(1, 1/\lVert g\rVert_1)\,\eta$`,
/// the others with `$t = \eta$`, or where the strong-Wolfe line search finds
/// (`$f(\theta + t d) \le f(\theta) + c_1 t\, g^\top d$` and
/// `$\lvert \nabla f(\theta + t d)^\top d\rvert \le c_2 \lvert g^\top d\rvert$`).
///
/// One [`step`](Self::step) runs up to `max_iter` iterations and `max_eval` evaluations of
/// the closure, stopping early when the gradient, the directional derivative, the step or the
/// loss fall below the tolerances ([`LbfgsOptions`]). The model is any [`Parameters`], all its
/// tensors one vector in the model's order; the flat buffers (history, direction, gradients)
/// are the optimizer's and are reused, so that once the history is full a step allocates
/// nothing. Arithmetic is in the element type where PyTorch computes with tensors, in `f64`
/// where it computes with Python floats; `f64` runs agree with PyTorch to rounding of its dot
/// products, as do `f32` runs.
///
/// Use it for full-batch, smooth, deterministic objectives (curve fitting, small models, the
/// inner problem of another method): on those it converges in far fewer evaluations than
/// first-order rules; on noisy mini-batch gradients its curvature pairs mislead it.
///
/// ```
/// use std::collections::BTreeMap;
/// use ndarray::{ArrayD, IxDyn, array};
/// use ndarray_optim::{Lbfgs, LbfgsOptions, LineSearch};
///
/// // Minimise the Rosenbrock function from (-1.5, 2).
/// let mut model = BTreeMap::from([("xy".to_owned(), array![-1.5_f64, 2.0].into_dyn())]);
/// let mut grads = model.clone();
/// let options = LbfgsOptions { line_search_fn: Some(LineSearch::StrongWolfe), ..Default::default() };
/// let mut lbfgs = Lbfgs::new(options)?;
/// for _ in 0..10 {
///     lbfgs.step(&mut model, &mut grads, |model, grads| {
///         let (x, y) = (model["xy"][0], model["xy"][1]);
///         let g: &mut ArrayD<f64> = grads.get_mut("xy").unwrap();
///         g[0] = -2.0 * (1.0 - x) - 400.0 * x * (y - x * x);
///         g[1] = 200.0 * (y - x * x);
///         Ok::<_, ndarray_optim::Error>((1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2))
///     })?;
/// }
/// assert!((model["xy"][IxDyn(&[0])] - 1.0).abs() < 1e-3);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Lbfgs<A> {
    options: LbfgsOptions,
    state: State<A>,
    work: Work<A>,
}

impl<A: Element> Lbfgs<A> {
    /// An optimizer with no history.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] if an option is out of range
    /// ([`LbfgsOptions::validate`]).
    pub fn new(options: LbfgsOptions) -> Result<Self> {
        options.validate()?;
        let state = State {
            layout: None,
            func_evals: 0,
            n_iter: 0,
            d: Vec::new(),
            t: A::zero(),
            history: History::default(),
            h_diag: A::one(),
            prev_flat_grad: Vec::new(),
            prev_loss: None,
        };
        Ok(Lbfgs { options, state, work: Work::default() })
    }

    /// The settings.
    pub fn options(&self) -> &LbfgsOptions {
        &self.options
    }

    /// Evaluations of the closure over all steps (PyTorch's `func_evals`).
    pub fn func_evals(&self) -> u64 {
        self.state.func_evals
    }

    /// Iterations over all steps (PyTorch's `n_iter`).
    pub fn n_iter(&self) -> u64 {
        self.state.n_iter
    }

    /// Curvature pairs held, at most `history_size`.
    pub fn history_len(&self) -> usize {
        self.state.history.len()
    }

    /// Checks that `model` has the tensors (names, shapes, order) the state was built for;
    /// any model fits an optimizer that has not stepped.
    ///
    /// # Errors
    /// [`Error::ModelMismatch`] naming what differs.
    pub fn check_model<M: Parameters<Elem = A>>(&self, model: &M) -> Result<()> {
        match &self.state.layout {
            Some(layout) => layout.check(model, &mut Prefix::new()),
            None => Ok(()),
        }
    }

    /// One optimization step, PyTorch's `LBFGS.step(closure)`: up to `max_iter` iterations,
    /// each evaluating the loss and gradients through `closure` once, or several times with a
    /// line search. `closure(model, grads)` computes the loss at `model`, writes its gradient
    /// into `grads` (the same tensors, shapes and order as `model`) and returns the loss.
    /// Returns the loss of the step's first evaluation, at the parameters it started from.
    ///
    /// # Errors
    /// The closure's first error, returned as it is; [`Error::ModelMismatch`] if `model` is
    /// not the model the history was built for; [`Error::MissingGradient`],
    /// [`Error::UnexpectedGradient`] or [`Error::GradientShape`] if `grads` does not hold the
    /// model's tensors after the closure. An error at the step's first evaluation changes
    /// nothing. A later one ends the step there: the parameters are where the iterations
    /// before it moved them (never at a line search's trial point), and the state is theirs.
    ///
    /// A non-finite loss or gradient makes the comparisons fail as in PyTorch: the step runs
    /// out its evaluations (at most `max_eval`) and returns.
    pub fn step<M, E, F>(&mut self, model: &mut M, grads: &mut M, mut closure: F) -> Result<A, E>
    where
        M: Parameters<Elem = A>,
        E: From<Error>,
        F: FnMut(&M, &mut M) -> Result<A, E>,
    {
        let mut prefix = self.work.names.take();
        let result = self.step_with(model, grads, &mut closure, &mut prefix);
        self.work.names.put_back(prefix);
        result
    }

    fn step_with<M, E, F>(
        &mut self,
        model: &mut M,
        grads: &mut M,
        closure: &mut F,
        prefix: &mut Prefix,
    ) -> Result<A, E>
    where
        M: Parameters<Elem = A>,
        E: From<Error>,
        F: FnMut(&M, &mut M) -> Result<A, E>,
    {
        // The layout is taken out for the step so that the walks can borrow it beside the
        // state; it goes back after, unless the step recorded it and then failed at once.
        let layout = match self.state.layout.take() {
            Some(layout) => match layout.check(model, prefix) {
                Ok(()) => layout,
                Err(error) => {
                    self.state.layout = Some(layout);
                    return Err(error.into());
                }
            },
            None => ModelLayout::of(model, prefix),
        };
        let evals_before = self.state.func_evals;
        let fresh = self.state.n_iter == 0 && evals_before == 0;
        let result = self.step_over(model, grads, closure, &layout, prefix);
        if !fresh || self.state.func_evals > evals_before {
            self.state.layout = Some(layout);
        }
        result
    }

    /// A step over the tensors of `layout`, which `model` has.
    fn step_over<M, E, F>(
        &mut self,
        model: &mut M,
        grads: &mut M,
        closure: &mut F,
        layout: &ModelLayout,
        prefix: &mut Prefix,
    ) -> Result<A, E>
    where
        M: Parameters<Elem = A>,
        E: From<Error>,
        F: FnMut(&M, &mut M) -> Result<A, E>,
    {
        let numel = layout.numel();
        // PyTorch evaluates the closure and returns when there is nothing to optimize.
        if numel == 0 {
            return closure(model, grads);
        }
        self.work.size(numel, self.options.history_size);
        let orig_loss = evaluate(model, grads, closure, layout, prefix, &mut self.work.pool[0])?;
        self.state.func_evals += 1;
        let mut loss = orig_loss.into_f64();
        self.iterate(model, grads, closure, layout, prefix, &mut loss)?;
        Ok(orig_loss)
    }

    /// The iterations of a step, after its first evaluation (its loss `loss`, its gradient in
    /// slot 0).
    fn iterate<M, E, F>(
        &mut self,
        model: &mut M,
        grads: &mut M,
        closure: &mut F,
        layout: &ModelLayout,
        prefix: &mut Prefix,
        loss: &mut f64,
    ) -> Result<(), E>
    where
        M: Parameters<Elem = A>,
        E: From<Error>,
        F: FnMut(&M, &mut M) -> Result<A, E>,
    {
        let options = self.options;
        let tolerance_grad = A::from_f64(options.tolerance_grad);
        let tolerance_change = A::from_f64(options.tolerance_change);
        let max_eval = options.max_eval();
        let Lbfgs { state, work, .. } = self;
        let Work { pool, x, y, s, al, .. } = work;
        let mut flat = 0;
        if abs_max(&pool[flat]) <= tolerance_grad {
            return Ok(());
        }
        let mut t = Tensor(state.t);
        let mut current_evals = 1;
        let mut n_iter = 0;
        while n_iter < options.max_iter {
            n_iter += 1;
            state.n_iter = state.n_iter.saturating_add(1);
            let g = &pool[flat];
            if state.n_iter == 1 {
                state.d.clear();
                state.d.extend(g.iter().map(|&g| -g));
                state.history.clear();
                state.h_diag = A::one();
            } else {
                // The curvature pair of the last move.
                y.clear();
                y.extend(g.iter().zip(&state.prev_flat_grad).map(|(&g, &p)| g - p));
                let step = t.value();
                s.clear();
                s.extend(state.d.iter().map(|&d| d * step));
                let ys = dot(y, s);
                if ys > A::from_f64(1e-10) {
                    let yy = dot(y, y);
                    state.history.push(options.history_size, y, s, A::one() / ys);
                    state.h_diag = ys / yy;
                }
                // The two-loop recursion, in place in d.
                let d = &mut state.d;
                d.clear();
                d.extend(g.iter().map(|&g| -g));
                let history = &state.history;
                for i in (0..history.len()).rev() {
                    let (old_dir, old_stp, ro) = history.get(i);
                    al[i] = dot(old_stp, d) * ro;
                    let alpha = -al[i];
                    d.iter_mut().zip(old_dir).for_each(|(q, &y)| *q = y.mul_add(alpha, *q));
                }
                let h_diag = state.h_diag;
                d.iter_mut().for_each(|q| *q = *q * h_diag);
                for (i, &al_i) in al.iter().enumerate().take(history.len()) {
                    let (old_dir, old_stp, ro) = history.get(i);
                    let be_i = dot(old_dir, d) * ro;
                    let alpha = al_i - be_i;
                    d.iter_mut().zip(old_stp).for_each(|(r, &s)| *r = s.mul_add(alpha, *r));
                }
            }
            state.prev_flat_grad.clear();
            state.prev_flat_grad.extend_from_slice(&pool[flat]);
            let prev_loss = *loss;
            state.prev_loss = Some(prev_loss);

            t = if state.n_iter == 1 {
                let scale = Float(1.0).div(Tensor(abs_sum(&pool[flat])));
                Float(1.0).min(scale).mul(Float(options.lr))
            } else {
                Float(options.lr)
            };
            let gtd = dot(&pool[flat], &state.d);
            if gtd > -tolerance_change {
                break;
            }

            let d = &state.d;
            let mut ls_func_evals = 0;
            let opt_cond;
            if options.line_search_fn == Some(LineSearch::StrongWolfe) {
                save_params(model, prefix, x);
                let mut at = |t: Num<A>, slot: usize| -> Result<(f64, A), E> {
                    add_scaled(model, prefix, t.value(), d);
                    let result = evaluate(model, grads, closure, layout, prefix, &mut pool[slot]);
                    restore_params(model, prefix, x);
                    Ok((result?.into_f64(), dot(&pool[slot], d)))
                };
                let max_ls = max_eval - current_evals;
                let found = strong_wolfe(&mut at, t, abs_max(d), *loss, flat, gtd, max_ls)?;
                (*loss, flat, t, ls_func_evals) = (found.loss, found.grad, found.t, found.evals);
                add_scaled(model, prefix, t.value(), d);
                opt_cond = abs_max(&pool[flat]) <= tolerance_grad;
            } else {
                add_scaled(model, prefix, t.value(), d);
                if n_iter != options.max_iter {
                    // The gradient at the new point is the next iteration's; the last
                    // iteration does not evaluate it.
                    *loss = evaluate(model, grads, closure, layout, prefix, &mut pool[flat])?
                        .into_f64();
                    ls_func_evals = 1;
                }
                opt_cond = abs_max(&pool[flat]) <= tolerance_grad;
            }
            current_evals += ls_func_evals;
            state.func_evals += ls_func_evals as u64;

            if n_iter == options.max_iter || current_evals >= max_eval || opt_cond {
                break;
            }
            let step = t.value();
            let moved = d.iter().fold(A::zero(), |max, &d| {
                let x = (d * step).abs();
                if max.is_nan() || x.is_nan() { A::nan() } else { max.max(x) }
            });
            if moved <= tolerance_change || (*loss - prev_loss).abs() < options.tolerance_change {
                break;
            }
        }
        state.t = t.value();
        Ok(())
    }
}

/// The loss at `model` and its gradient, gathered into `flat`.
fn evaluate<M, E, F>(
    model: &mut M,
    grads: &mut M,
    closure: &mut F,
    layout: &ModelLayout,
    prefix: &mut Prefix,
    flat: &mut [M::Elem],
) -> Result<M::Elem, E>
where
    M: Parameters,
    E: From<Error>,
    F: FnMut(&M, &mut M) -> Result<M::Elem, E>,
{
    let loss = closure(model, grads)?;
    layout.gather(grads, prefix, flat)?;
    Ok(loss)
}

#[cfg(feature = "serde")]
mod form {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Lbfgs, LbfgsOptions, State, Work};
    use crate::element::Element;
    use crate::error::Error;

    /// The options and the state: working memory is not saved.
    #[derive(Serialize)]
    struct Saved<'a, A> {
        options: &'a LbfgsOptions,
        state: &'a State<A>,
    }

    #[derive(Deserialize)]
    #[serde(rename = "Saved", deny_unknown_fields)]
    struct Loaded<A> {
        options: LbfgsOptions,
        state: State<A>,
    }

    impl<A: Element + Serialize> Serialize for Lbfgs<A> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            Saved { options: &self.options, state: &self.state }.serialize(serializer)
        }
    }

    impl<'de, A: Element + Deserialize<'de>> Deserialize<'de> for Lbfgs<A> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let Loaded { options, state } = Loaded::deserialize(deserializer)?;
            check(&options, &state).map_err(serde::de::Error::custom)?;
            Ok(Lbfgs { options, state, work: Work::default() })
        }
    }

    /// Saved state that fits its options and its tensors.
    fn check<A: Element>(options: &LbfgsOptions, state: &State<A>) -> Result<(), Error> {
        options.validate()?;
        let corrupt = |reason: String| Err(Error::CorruptCheckpoint { reason });
        let numel = state.layout.as_ref().map_or(0, |layout| layout.numel());
        if let Some(layout) = &state.layout {
            if layout.names.len() != layout.shapes.len() {
                return corrupt("L-BFGS tensor names and shapes differ in number".into());
            }
            for (i, name) in layout.names.iter().enumerate() {
                if layout.names[..i].contains(name) {
                    return Err(Error::DuplicateParam {
                        param: name.clone(),
                        in_what: "checkpoint",
                    });
                }
            }
        }
        let started = state.n_iter > 0;
        let want = if started { numel } else { 0 };
        if state.d.len() != want || state.prev_flat_grad.len() != want {
            return corrupt(format!(
                "L-BFGS state has d of {} and prev_flat_grad of {} values for {want}",
                state.d.len(),
                state.prev_flat_grad.len()
            ));
        }
        if state.history.len() > options.history_size || !state.history.fits(numel) {
            return corrupt(format!(
                "L-BFGS history of {} pairs does not fit history_size {} and {numel} values",
                state.history.len(),
                options.history_size
            ));
        }
        if state.layout.is_none() && state.func_evals > 0 {
            return corrupt("L-BFGS state has evaluations but no tensors".into());
        }
        Ok(())
    }
}
