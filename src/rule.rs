//! The [`UpdateRule`] trait: what a rule provides to the driver, and the checks of its
//! hyperparameters.

use core::fmt::Debug;

use crate::clip::NORM_BLOCK;
use crate::element::Element;
use crate::error::Result;
use crate::exact_sum::SignedSum;
use crate::kernel::sum_in_order;

#[doc(inline)]
pub use crate::check::{
    check_count, check_decay, check_eps, check_lr, check_non_negative, check_positive, check_unit,
    require,
};
use crate::kernel::TensorStep;

/// The options that every rule shares and the driver applies around the rule's own update,
/// in PyTorch's order: the learning rate, `maximize` and weight decay.
///
/// A rule reports them through [`UpdateRule::options`]; the driver validates them (a rate
/// finite and ≥ 0, a decay finite and ≥ 0), feeds the rule the gradient it expects
/// (`$g \leftarrow -g$` when maximizing, then `$g \leftarrow g + \lambda\theta$` for L2 decay) and
/// applies decoupled decay (`$\theta \leftarrow \theta(1 - \eta\lambda)$`) to the parameter
/// before the update, all in the same pass over the elements as the update itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// The base learning rate η (a schedule may set another current rate).
    pub lr: f64,
    /// How weight decay enters.
    pub weight_decay: WeightDecay,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
}

impl Options {
    /// The options of a rule with only a learning rate: no decay, minimizing.
    pub fn lr(lr: f64) -> Self {
        Options { lr, weight_decay: WeightDecay::L2(0.0), maximize: false }
    }
}

/// How a rule's weight decay λ enters its step. λ = 0 means no decay at all, so that the
/// common path has no `$0 \cdot \theta$` term (which would turn an infinite θ into NaN).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightDecay {
    /// L2 regularisation: `$g \leftarrow g + \lambda\theta$`, with θ before the update
    /// (PyTorch's `weight_decay` in most rules).
    L2(f64),
    /// Decoupled decay (Loshchilov & Hutter 2019): `$\theta \leftarrow \theta(1 - \eta\lambda)$`
    /// before the update (PyTorch's `AdamW`, `decoupled_weight_decay`, Muon, Adafactor).
    Decoupled(f64),
}

impl WeightDecay {
    /// L2 or decoupled decay λ, as PyTorch's `decoupled_weight_decay` flag chooses.
    pub fn new(lambda: f64, decoupled: bool) -> Self {
        if decoupled { WeightDecay::Decoupled(lambda) } else { WeightDecay::L2(lambda) }
    }

    /// The coefficient λ.
    pub fn lambda(self) -> f64 {
        match self {
            WeightDecay::L2(lambda) | WeightDecay::Decoupled(lambda) => lambda,
        }
    }
}

/// An optimizer update rule, such as [`Adam`](crate::Adam): its hyperparameters, its state
/// layout and its update, and nothing else.
///
/// A value of the implementing type is the rule's hyperparameters (`f64` whatever the
/// element type, converted once per step). The driver around the rule owns everything rules
/// share: the learning rate a schedule sets, `maximize` and weight decay
/// ([`options`](Self::options)), gradient clipping and the non-finite guard, the named state
/// registry, every memory layout, threads and checkpoints. [`step`](Self::step) computes the
/// step's coefficients once per tensor and hands the per-element arithmetic to
/// [`TensorStep::apply`], which runs it fused with the options in one pass; rules that need
/// more than one element at a time (a norm, a matrix product, factored statistics) take the
/// tensor apart with [`TensorStep::split`] instead.
///
/// The number of state buffers may depend on the hyperparameters (as PyTorch's `amsgrad` or
/// `centered` options do).
///
/// # Example: a rule of your own
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::rule::Options;
/// use ndarray_optim::{Element, Optimizer, TensorStep, UpdateRule};
///
/// /// Sign descent: θ ← θ − η·sign(g).
/// #[derive(Clone, Debug, PartialEq)]
/// struct SignSgd { lr: f64 }
///
/// impl UpdateRule for SignSgd {
///     const NAME: &'static str = "sign_sgd";
///
///     fn options(&self) -> Options { Options::lr(self.lr) }
///     fn lr_mut(&mut self) -> &mut f64 { &mut self.lr }
///     fn state_names(&self) -> &'static [&'static str] { &[] }
///     fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
///         let lr = A::from_f64(tensor.lr());
///         tensor.apply(move |p, g, _: &mut [A; 0]| *p = *p - lr * g.signum());
///     }
/// }
///
/// let mut opt = Optimizer::new(SignSgd { lr: 0.5 })?;
/// let mut w = array![1.0_f64, -1.0];
/// opt.step("w", &mut w, &array![3.0, -0.1])?;
/// assert_eq!(w, array![0.5, -0.5]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
pub trait UpdateRule: Clone + Debug + PartialEq + Send + Sync + 'static {
    /// The rule's name in checkpoints, errors and replay cases, e.g. `"adam"`.
    const NAME: &'static str;

    /// The name of this value's rule: [`NAME`](Self::NAME), except for [`Rule`](crate::Rule),
    /// whose values are of many rules.
    fn name(&self) -> &'static str {
        Self::NAME
    }

    /// The learning rate, `maximize` and weight decay, which the driver applies.
    fn options(&self) -> Options;

    /// The base learning rate η, for [`Optimizer::set_lr`](crate::Optimizer::set_lr).
    fn lr_mut(&mut self) -> &mut f64;

    /// The momentum that a schedule cycles ([`Cyclic`](crate::schedule::Cyclic) and
    /// [`OneCycle`](crate::schedule::OneCycle) with `cycle_momentum`), as PyTorch's
    /// schedulers set a group's `momentum`, or its `betas[0]` for the rules that have betas:
    /// the momentum of [`Momentum`](crate::Momentum), [`Nesterov`](crate::Nesterov),
    /// [`RmsProp`](crate::RmsProp) and [`Muon`](crate::Muon), β₁ of [`Adam`](crate::Adam),
    /// [`AdamW`](crate::AdamW), [`Adamax`](crate::Adamax), [`NAdam`](crate::NAdam) and
    /// [`RAdam`](crate::RAdam). A value a schedule sets is checked by
    /// [`validate`](Self::validate) like any other.
    ///
    /// `None` by default: the rule has no momentum, and a schedule asked to cycle it refuses
    /// with [`Error::NoMomentumToCycle`](crate::Error::NoMomentumToCycle), as PyTorch raises a
    /// `ValueError` for an optimizer without `momentum` or `betas`.
    fn cycled_momentum_mut(&mut self) -> Option<&mut f64> {
        None
    }

    /// Checks the rule's own hyperparameters (the driver checks the [`options`](Self::options));
    /// called whenever hyperparameters enter an optimizer, so that stepping never has to.
    /// Nothing to check by default.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`](crate::Error::InvalidHyperparameter) naming the first hyperparameter out of range.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Whether the rule updates a tensor element by element: each element's new value and
    /// state depend only on that element's parameter, gradient and state, and on per-tensor
    /// scalars that every part of the tensor computes alike (the step count, the learning
    /// rate). Then a part of a tensor steps exactly as it would inside the whole tensor, and
    /// a [sharded](crate::shard) step may cut tensors between ranks.
    ///
    /// `false` by default, the safe answer for a rule that looks at whole tensors: norms
    /// ([`Lamb`](crate::Lamb)), matrix products ([`Muon`](crate::Muon)), row and column
    /// statistics ([`Adafactor`](crate::Adafactor)), or a reduction over every tensor
    /// ([`Prodigy`](crate::Prodigy)). A sharded step of such a rule, unless it has a
    /// [reduction](Self::reduction), needs a plan that keeps tensors whole
    /// ([`ShardPlan::whole_tensors`](crate::ShardPlan::whole_tensors)).
    fn elementwise(&self) -> bool {
        false
    }

    /// Checks that the rule can step a tensor of `shape`, e.g. Muon's matrices.
    ///
    /// # Errors
    /// What the shape must be, e.g. `"2-D (a matrix)"`. Any shape by default.
    fn check_shape(&self, shape: &[usize]) -> Result<(), &'static str> {
        let _ = shape;
        Ok(())
    }

    /// The names of the per-element state buffers these hyperparameters need, in the order
    /// the update sees them, e.g. `["exp_avg", "exp_avg_sq"]` for Adam (PyTorch's names).
    fn state_names(&self) -> &'static [&'static str];

    /// State buffers of other shapes than the tensor's, for a tensor of `shape`: name and
    /// shape of each, e.g. Adafactor's row and column statistics. They follow the
    /// per-element buffers, each in row-major order, and are checkpointed by name with them.
    /// None by default.
    fn shaped_state(&self, shape: &[usize]) -> Vec<(&'static str, Vec<usize>)> {
        let _ = shape;
        Vec::new()
    }

    /// Working memory that a step of a tensor of `shape` needs, in elements (e.g. Muon's
    /// Newton–Schulz matrices): kept beside the state so that steps allocate nothing, but
    /// not state (never checkpointed, not counted in [`TensorView::bytes`](crate::TensorView::bytes)).
    /// None by default.
    fn scratch_len(&self, shape: &[usize]) -> usize {
        let _ = shape;
        0
    }

    /// The names of the per-tensor scalar states these hyperparameters need, e.g.
    /// `["mu_product"]` for [`NAdam`](crate::NAdam): values that change every step but are
    /// the same for all elements of a tensor. They are `f64` whatever the element type, kept
    /// and checkpointed by name next to the buffers, and reached in
    /// [`step`](Self::step) through [`TensorStep::scalars`]. None by default.
    fn scalar_names(&self) -> &'static [&'static str] {
        &[]
    }

    /// The value that the state named `name` (every element of a buffer, or a scalar of
    /// [`scalar_names`](Self::scalar_names)) holds before a tensor's first step. Zero by
    /// default; e.g. Adagrad's `initial_accumulator_value` for `sum`.
    fn initial_value(&self, name: &str) -> f64 {
        let _ = name;
        0.0
    }

    /// The state buffers whose values no run makes negative, e.g. second moments and
    /// accumulated squares. A checkpoint holding a negative value in one is refused on
    /// loading. None by default.
    fn non_negative_state(&self) -> &'static [&'static str] {
        &[]
    }

    /// Checks a value of the per-tensor scalar `name` (of [`scalar_names`](Self::scalar_names))
    /// that a checkpoint holds; a value no run can produce is refused on loading.
    ///
    /// # Errors
    /// What the value must be, e.g. `"finite"`. The default requires it finite.
    fn check_scalar(&self, name: &str, value: f64) -> Result<(), &'static str> {
        let _ = name;
        if value.is_finite() { Ok(()) } else { Err("finite") }
    }

    /// Whether a tensor whose per-tensor scalars are `scalars` is set for evaluation rather
    /// than training, so that a step of it must fail: the schedule-free rules after
    /// [`Optimizer::eval`](crate::Optimizer::eval) ([`Error::WrongMode`](crate::Error::WrongMode)).
    /// Never by default.
    fn in_eval_mode(&self, scalars: &[f64]) -> bool {
        let _ = scalars;
        false
    }

    /// The reduction over every tensor of a step that this rule needs before any parameter
    /// moves, e.g. [`Prodigy`](crate::Prodigy)'s step-size estimate; `None` (the default)
    /// for rules that step each tensor on its own, which then pay nothing for reductions.
    ///
    /// A step of a rule with a reduction runs in three parts, all inside one
    /// [`Optimizer::step_all`](crate::Optimizer::step_all) or
    /// [`step_model`](crate::Optimizer::step_model) (a single-tensor
    /// [`step`](crate::Optimizer::step) refuses with
    /// [`Error::ReductionNeedsBatch`](crate::Error::ReductionNeedsBatch)):
    ///
    /// 1. [`reduce`](Self::reduce) on every tensor of the rule's groups: it may update the
    ///    tensor's state and adds the tensor's terms to [`Reduction::sums`] sums
    ///    ([`ReductionSums`]), which add up exactly, in any order;
    /// 2. [`combine`](Self::combine), once, with the first such group's hyperparameters:
    ///    it turns the totals into new values of the optimizer-wide shared scalars
    ///    ([`Reduction::shared`]), which the optimizer owns and checkpoints by name;
    /// 3. [`step`](Self::step) on every tensor, as for any rule, which reads the shared
    ///    scalars of before and after the combination with [`TensorStep::shared`] and
    ///    [`TensorStep::shared_before`].
    ///
    /// A [sharded step](crate::ShardedOptimizer) steps each rank's contiguous part of a tensor
    /// as a tensor of its own, one-dimensional, and adds up the sums of every rank before
    /// the combination. That gives one process's bits when `reduce` and `step` work element
    /// by element and `reduce` adds its terms with [`ReductionSums::add_blocks`] in the
    /// tensor's row-major order, as [`Prodigy`](crate::Prodigy) does: a rule with a
    /// reduction is sharded on that understanding.
    fn reduction(&self) -> Option<Reduction> {
        None
    }

    /// The first pass of a step of a rule with a [`reduction`](Self::reduction) over one
    /// tensor: updates what the tensor's state needs before the combination and adds the
    /// tensor's terms to `sums` (of [`Reduction::sums`] sums). Nothing by default.
    fn reduce<A: Element>(&self, tensor: TensorStep<'_, A>, sums: &mut ReductionSums) {
        let _ = (tensor, sums);
    }

    /// Turns the `totals` of [`reduce`](Self::reduce) over every tensor of the step
    /// ([`ReductionSums`] rounded to `f64`) into new
    /// values of the `shared` scalars (in the order of [`Reduction::shared`]), with `lr` the
    /// largest current learning rate of the rule's groups. Returns whether the parameters of
    /// the rule's groups move in this step ([`step`](Self::step) runs on them); `true` by
    /// default.
    fn combine(&self, shared: &mut [f64], totals: &[f64], lr: f64) -> bool {
        let _ = (shared, totals, lr);
        true
    }

    /// Checks a value of the shared scalar `name` (of [`Reduction::shared`]) that a
    /// checkpoint holds.
    ///
    /// # Errors
    /// What the value must be. The default requires it finite.
    fn check_shared(&self, name: &str, value: f64) -> Result<(), &'static str> {
        let _ = name;
        if value.is_finite() { Ok(()) } else { Err("finite") }
    }

    /// The first hyperparameter that these hyperparameters, of a group of a rule with a
    /// [reduction](Self::reduction), must share with `first`, the rule's first group, and do
    /// not: a value that the step reads from the first group for every group (as prodigyopt
    /// reads its betas from its first group), so that a group with another value would be
    /// stepped with a value it was not given. The step then fails with
    /// [`Error::ReductionSettingDiffers`](crate::Error::ReductionSettingDiffers). None by
    /// default.
    fn reduction_mismatch(&self, first: &Self) -> Option<&'static str> {
        let _ = first;
        None
    }

    /// Applies one step to one tensor: computes the step's coefficients from
    /// [`TensorStep::step`] (1 for a tensor's first step) and [`TensorStep::lr`], and runs
    /// the update with [`TensorStep::apply`] (or [`TensorStep::split`]).
    fn step<A: Element>(&self, tensor: TensorStep<'_, A>);
}

/// What a rule's [`UpdateRule::reduction`] over the tensors of a step computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reduction {
    /// The names of the optimizer-wide shared scalars, e.g. `["d", "d_max", "d_numerator",
    /// "k"]` for [`Prodigy`](crate::Prodigy): `f64` whatever the element type, created from
    /// [`UpdateRule::initial_value`] on the first step, checkpointed by name and checked on
    /// loading with [`UpdateRule::check_shared`]. At most [`Reduction::MAX_SHARED`].
    pub shared: &'static [&'static str],
    /// How many partial sums [`UpdateRule::reduce`] writes per tensor, at most
    /// [`Reduction::MAX_SUMS`].
    pub sums: usize,
}

impl Reduction {
    /// The most shared scalars a rule can have (the driver keeps a copy of them on the stack).
    pub const MAX_SHARED: usize = 8;
    /// The most partial sums a rule can reduce.
    pub const MAX_SUMS: usize = 4;
}

/// The sums that [`UpdateRule::reduce`] adds each tensor's terms to, for a rule's
/// [`Reduction`].
///
/// A tensor's terms are summed in blocks of [`BLOCK`](Self::BLOCK) consecutive terms of its
/// row-major order, in `f64` and in [a fixed order](crate::sum_in_order) within a block;
/// the blocks' values are then added exactly, and the total handed to
/// [`UpdateRule::combine`] is their exact sum rounded once to the nearest `f64`. It
/// therefore depends neither on the order of the tensors nor on the memory layout or the
/// thread count, nor on cuts at multiples of [`BLOCK`](Self::BLOCK) elements into a
/// tensor, where a [sharded step](crate::ShardedOptimizer) cuts: each rank's sums add up to
/// one process's bit for bit.
///
/// ```
/// use ndarray_optim::rule::ReductionSums;
///
/// let mut sums = ReductionSums::new();
/// // 1000 terms of 0.1: four blocks (256, 256, 256, 232 terms), each times 2.
/// sums.add_blocks(0, 2.0, std::iter::repeat_n(0.1, 1000));
/// // Three tensors of one term each: their blocks add exactly, where f64 would lose the 1.
/// for term in [1e16, 1.0, -1e16] {
///     sums.add_blocks(1, 1.0, [term]);
/// }
/// let totals = sums.totals();
/// assert!((totals[0] - 200.0).abs() < 1e-10);
/// assert_eq!(totals[1], 1.0);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReductionSums {
    sums: [SignedSum; Reduction::MAX_SUMS],
}

impl ReductionSums {
    /// Terms per block: the block of the [global norm](crate::Clip::GlobalNorm)'s sums and
    /// of a [sharded](crate::ShardPlan) tensor's cuts.
    pub const BLOCK: usize = NORM_BLOCK;

    /// [`Reduction::MAX_SUMS`] sums of nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one tensor's `terms`, in its row-major order, to sum `k`: each block of
    /// [`BLOCK`](Self::BLOCK) terms (the last may be shorter) is summed in order, multiplied
    /// by `scale` and added exactly. Call it once per tensor and sum, with all of the
    /// tensor's terms, so that the blocks start at the tensor's first element.
    ///
    /// # Panics
    /// If `k` is not below [`Reduction::MAX_SUMS`].
    pub fn add_blocks(&mut self, k: usize, scale: f64, terms: impl IntoIterator<Item = f64>) {
        let sum = &mut self.sums[k];
        let mut terms = terms.into_iter().peekable();
        while terms.peek().is_some() {
            sum.add(scale * sum_in_order(terms.by_ref().take(Self::BLOCK)));
        }
    }

    /// The sums so far, each rounded once to the nearest `f64`.
    pub fn totals(&self) -> [f64; Reduction::MAX_SUMS] {
        self.sums.map(|sum| sum.total())
    }

    /// The first `len` sums, to add up across the ranks of a sharded step.
    pub(crate) fn sums_mut(&mut self, len: usize) -> &mut [SignedSum] {
        &mut self.sums[..len]
    }
}

/// Checks a rule's [`Options`]: the learning rate and the weight decay finite and ≥ 0.
///
/// # Errors
/// [`Error::InvalidHyperparameter`](crate::Error::InvalidHyperparameter) with key `lr` or `weight_decay`.
pub(crate) fn check_options(rule: &'static str, options: Options) -> Result<()> {
    check_lr(rule, options.lr)?;
    check_non_negative(rule, "weight_decay", options.weight_decay.lambda())
}

/// Where a rule adds ε to the root of its second-moment estimate `s`.
///
/// The seed formulas put it inside the square root, `$\eta / \sqrt{s + \epsilon}$`; PyTorch's
/// `Adagrad` and `RMSprop` put it outside, `$\eta / (\sqrt{s} + \epsilon)$`. The two differ
/// noticeably only while `s` is of the order of ε.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum EpsPlacement {
    /// `$\sqrt{s + \epsilon}$`, as the seed formulas write it (the default).
    #[default]
    Inside,
    /// `$\sqrt{s} + \epsilon$`, as PyTorch's `Adagrad` and `RMSprop` compute it.
    Outside,
}

impl EpsPlacement {
    /// The denominator `$\sqrt{s + \epsilon_{\text{in}}} + \epsilon_{\text{out}}$`, with ε split
    /// by placement.
    ///
    /// Adding an exact zero leaves a non-negative value unchanged, so one branch-free
    /// expression gives both placements bit for bit and keeps the element loop vectorisable.
    #[inline]
    pub(crate) fn split<A: Element>(self, eps: f64) -> (A, A) {
        let eps = A::from_f64(eps);
        match self {
            EpsPlacement::Inside => (eps, A::zero()),
            EpsPlacement::Outside => (A::zero(), eps),
        }
    }
}
