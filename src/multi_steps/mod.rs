//! Gradient accumulation: an optimizer that steps once every k micro-batches, with the mean
//! of their gradients ([`MultiSteps`]).

#[cfg(feature = "serde")]
mod record;

use hashbrown::{HashMap, HashSet};
use ndarray::{ArrayRef, ArrayView, ArrayViewMut, Dimension, IxDyn, Zip};

use crate::check::check_count;
use crate::clip::Clip;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::guard::{NonFinite, StepOutcome};
use crate::model::{NameBuffer, Parameters, Prefix, VisitPair};
use crate::optimizer::{Gradient, Gradients, Optimizer, ParamGrad};
use crate::rule::UpdateRule;

/// optax's `MultiSteps(opt, every_k_schedule=k)`: gradient accumulation around an
/// [`Optimizer`].
///
/// Each call of [`step_all`](Self::step_all) (or [`step`](Self::step)) is one micro-batch.
/// It folds the gradients into a running mean per tensor, optax's Welford update
///
/// ```math
/// \bar g_1 = 0 + \frac{g_1 - 0}{1}, \qquad
/// \bar g_{j+1} = \bar g_j + \frac{g_{j+1} - \bar g_j}{j + 1},
/// ```
///
/// computed operation for operation as optax computes it, and on the k-th micro-batch steps
/// the optimizer with the mean `$\bar g_k$` and starts again from zero. The optimizer's
/// options apply to the mean, as in optax's chain inside `MultiSteps`: clipping clips the
/// mean gradient, and a rule's step count counts optimizer steps, not micro-batches. The
/// parameters change only on the k-th call, which returns
/// [`MultiStepOutcome::Stepped`]; the others return [`MultiStepOutcome::Accumulated`].
///
/// The running means live under each tensor's name, as the optimizer's state does: the first
/// micro-batch of a name allocates its mean, later ones allocate nothing. `step_all` takes a
/// micro-batch of the whole model, and every micro-batch until the optimizer steps must give
/// the same tensors ([`Error::MicroBatchMismatch`] otherwise); `step` counts each tensor's
/// micro-batches on their own. A call that fails changes nothing.
///
/// Differences from optax: the mean is kept in the parameters' element type (optax's
/// `accumulator_dtype` defaults to `float32` whatever the parameters' type: give it the
/// parameters' type to compare with `f64` runs here); `k` is constant (optax also takes a
/// schedule of k); a mean is always reset to exact zeros (optax multiplies it by 0, which
/// keeps a NaN). The optimizer's [non-finite policy](Optimizer::set_non_finite) looks at
/// each micro-batch's gradients, as optax's `should_skip_update_fn=skip_not_finite` does: a
/// skipped micro-batch is as if it never happened.
///
/// A tensor in a [frozen](Optimizer::freeze) group counts as a zero gradient: its own
/// gradient is not read (nor checked for NaN), a zero is folded into its mean, and the
/// optimizer's step leaves it out while the group is frozen. A group unfrozen in the middle
/// of k micro-batches is stepped with the mean over all k, those before the unfreezing as
/// zeros, as PyTorch's `.grad` accumulates for a tensor whose `requires_grad` is turned on
/// halfway; freezing or unfreezing never puts tensors out of step with each other.
///
/// With the `serde` feature it serializes as k, the optimizer's checkpoint and the running
/// mean and micro-batch count of every tensor between two optimizer steps; deserializing
/// checks all of it, and a run resumed from it continues bit for bit.
///
/// ```
/// use ndarray::{Array1, array};
/// use ndarray_optim::{Adam, MultiSteps, Optimizer, ParamGrad};
///
/// let mut opt = MultiSteps::new(Optimizer::new(Adam { lr: 0.1, ..Adam::default() })?, 4)?;
/// let (mut w, mut b) = (array![1.0_f32, -1.0], Array1::<f32>::zeros(3));
/// for micro_batch in 0..8 {
///     // ... the gradients of one micro-batch's loss ...
///     let (gw, gb) = (&w * 0.5, Array1::from_elem(3, micro_batch as f32));
///     let outcome =
///         opt.step_all(&mut [ParamGrad::new("w", &mut w, &gw), ParamGrad::new("b", &mut b, &gb)])?;
///     assert_eq!(outcome.stepped(), micro_batch % 4 == 3);
/// }
/// assert_eq!(opt.optimizer().step_count("w"), Some(2));
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct MultiSteps<R: UpdateRule, A: Element> {
    optimizer: Optimizer<R, A>,
    every_k: u64,
    /// The running mean of every tensor that has taken a micro-batch.
    means: HashMap<String, Mean<A>>,
    /// How many tensors are between two optimizer steps (their `micro_steps` > 0).
    in_flight: usize,
    names: NameBuffer,
}

/// The running mean of one tensor's micro-batch gradients.
#[derive(Clone, Debug, PartialEq)]
struct Mean<A> {
    /// Micro-batches folded in since the last optimizer step.
    micro_steps: u64,
    shape: Vec<usize>,
    /// Row-major.
    values: Vec<A>,
}

impl<A> Mean<A> {
    fn view(&self) -> ArrayView<'_, A, IxDyn> {
        ArrayView::from_shape(IxDyn(&self.shape), &self.values)
            .expect("a mean holds exactly the elements of its shape")
    }

    fn view_mut(&mut self) -> ArrayViewMut<'_, A, IxDyn> {
        ArrayViewMut::from_shape(IxDyn(&self.shape), &mut self.values)
            .expect("a mean holds exactly the elements of its shape")
    }
}

/// What a micro-batch of [`MultiSteps`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MultiStepOutcome {
    /// The gradients were folded into the means; `micro_steps` micro-batches are in them now,
    /// fewer than k, and the parameters did not change.
    Accumulated {
        /// Micro-batches since the last optimizer step, this one included.
        micro_steps: u64,
    },
    /// This was the k-th micro-batch: the optimizer stepped with the means, which start
    /// again from zero.
    Stepped {
        /// As [`StepOutcome::Stepped`]: the norm of the mean gradients before clipping, when
        /// a norm clip computed it.
        grad_norm: Option<f64>,
    },
    /// [`NonFinite::Skip`] found NaN or infinity in the gradient of batch entry `index`
    /// (or, on the k-th micro-batch, in its mean): nothing changed, as if the micro-batch had
    /// never been given.
    Skipped {
        /// The position in the batch of the first non-finite gradient.
        index: usize,
    },
    /// This was the k-th micro-batch, but every tensor it gives is in a
    /// [frozen](Optimizer::freeze) group: the means start again from zero and nothing else
    /// changed (as [`StepOutcome::Frozen`]).
    Frozen,
}

impl MultiStepOutcome {
    /// Whether this micro-batch was the k-th, the optimizer's step (optax's `has_updated`):
    /// [`Stepped`](Self::Stepped), or [`Frozen`](Self::Frozen) when every tensor given is
    /// frozen. The moment to step a learning-rate schedule, which keeps its pace while groups
    /// are frozen, or to update an [`AveragedModel`](crate::AveragedModel).
    pub fn stepped(self) -> bool {
        matches!(self, MultiStepOutcome::Stepped { .. } | MultiStepOutcome::Frozen)
    }
}

impl<R: UpdateRule, A: Element> MultiSteps<R, A> {
    /// Wraps `optimizer` to step once every `every_k` micro-batches (1: every one, with the
    /// gradient as it is).
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] (rule `"multi_steps"`, key `"every_k"`) if
    /// `every_k` is 0.
    pub fn new(optimizer: Optimizer<R, A>, every_k: u64) -> Result<Self> {
        check_count("multi_steps", "every_k", every_k)?;
        Ok(MultiSteps {
            optimizer,
            every_k,
            means: HashMap::new(),
            in_flight: 0,
            names: NameBuffer::default(),
        })
    }

    /// Folds one micro-batch of the whole model into the means and, on the k-th, steps the
    /// optimizer with them as [`Optimizer::step_all`] does (clipping, the non-finite check,
    /// threads).
    ///
    /// # Errors
    /// - what [`Optimizer::step_all`] refuses in the micro-batch (shapes, duplicate or
    ///   undeclared names, ...), and [`Error::NonFiniteGradient`] if a gradient (or, on the
    ///   k-th micro-batch, a mean) is not finite and the optimizer refuses that;
    /// - [`Error::ShapeChanged`] if a tensor's mean has another shape;
    /// - [`Error::MicroBatchMismatch`] if the micro-batch does not give exactly the tensors
    ///   that the micro-batches since the last optimizer step gave.
    ///
    /// Nothing has changed then.
    pub fn step_all(&mut self, batch: &mut [ParamGrad<'_, A>]) -> Result<MultiStepOutcome> {
        self.micro_step(&mut Batch(batch), true)
    }

    /// Folds the gradient of the one tensor `name` into its mean and, on its k-th
    /// micro-batch, steps it as [`Optimizer::step`] does. Each tensor counts its own
    /// micro-batches, so a loop may step a model's tensors one by one. A tensor given here is
    /// part of the model like any other: a [`step_all`](Self::step_all) while it has
    /// micro-batches in its mean must give it too.
    ///
    /// # Errors
    /// As [`step_all`](Self::step_all) for one tensor (which is never out of step), and
    /// [`Error::GlobalClipNeedsBatch`] if the optimizer clips by global norm,
    /// [`Error::ReductionNeedsBatch`] if the tensor's rule has a reduction over every tensor
    /// of a step (such as [`Prodigy`](crate::Prodigy)).
    pub fn step<D: Dimension>(
        &mut self,
        name: &str,
        param: &mut ArrayRef<A, D>,
        grad: &ArrayRef<A, D>,
    ) -> Result<MultiStepOutcome> {
        if let Some(Clip::GlobalNorm { .. }) = self.optimizer.clip() {
            return Err(Error::GlobalClipNeedsBatch);
        }
        if let Some(rule) = self.optimizer.reduction_of(name) {
            return Err(Error::ReductionNeedsBatch { rule });
        }
        self.micro_step(&mut Batch(&mut [ParamGrad::new(name, param, grad)]), false)
    }

    /// Folds one micro-batch of the whole model `params` (a set of named tensors,
    /// [`Parameters`]) with its gradients `grads` into the means and, on the k-th, steps the
    /// optimizer with them as [`Optimizer::step_model`] does; names are the model's dotted
    /// paths. After the first micro-batch it allocates nothing.
    ///
    /// # Errors
    /// As [`step_all`](Self::step_all), and as [`Optimizer::step_model`] for gradients that
    /// are not where the model's tensors are. Nothing has changed then.
    pub fn step_model<M>(&mut self, params: &mut M, grads: &M) -> Result<MultiStepOutcome>
    where
        M: Parameters<Elem = A> + ?Sized,
    {
        self.micro_step(&mut ModelBatch { params, grads }, true)
    }

    fn micro_step(
        &mut self,
        batch: &mut dyn MicroBatch<R, A>,
        whole_model: bool,
    ) -> Result<MultiStepOutcome> {
        let mut prefix = self.names.take();
        let outcome = self.micro_step_in(&mut prefix, batch, whole_model);
        self.names.put_back(prefix);
        outcome
    }

    fn micro_step_in(
        &mut self,
        prefix: &mut Prefix,
        batch: &mut dyn MicroBatch<R, A>,
        whole_model: bool,
    ) -> Result<MultiStepOutcome> {
        let (done, given) = self.check_micro_batch(prefix, batch, whole_model)?;
        let emit = done + 1 == self.every_k;
        if let Some(index) = self.guard(prefix, batch, done, emit)? {
            return Ok(MultiStepOutcome::Skipped { index });
        }
        let divisor = A::from_f64((done + 1) as f64);
        let (optimizer, means) = (&self.optimizer, &mut self.means);
        batch.walk(prefix, &mut |name, _, grad| {
            let mean = means.entry_ref(name).or_insert_with(|| Mean {
                micro_steps: 0,
                shape: grad.shape().to_vec(),
                values: vec![A::zero(); grad.len()],
            });
            if optimizer.registry.is_frozen(name) {
                mean.values.iter_mut().for_each(|m| *m = fold(*m, A::zero(), divisor));
            } else {
                Zip::from(mean.view_mut()).and(&grad).for_each(|m, &g| *m = fold(*m, g, divisor));
            }
            mean.micro_steps = done + 1;
            Ok(())
        })?;
        if !emit {
            if done == 0 {
                self.in_flight += given;
            }
            return Ok(MultiStepOutcome::Accumulated { micro_steps: done + 1 });
        }
        // Everything that could fail was checked above: the step goes through.
        let outcome = batch.step(&mut self.optimizer, &Means(&self.means))?;
        let means = &mut self.means;
        batch.walk(prefix, &mut |name, _, _| {
            if let Some(mean) = means.get_mut(name) {
                mean.values.fill(A::zero());
                mean.micro_steps = 0;
            }
            Ok(())
        })?;
        if done > 0 {
            self.in_flight -= given;
        }
        Ok(match outcome {
            StepOutcome::Stepped { grad_norm } => MultiStepOutcome::Stepped { grad_norm },
            StepOutcome::Skipped { index } => MultiStepOutcome::Skipped { index },
            StepOutcome::Frozen => MultiStepOutcome::Frozen,
        })
    }

    /// Everything about the names and shapes of `batch` that can make a micro-step fail;
    /// returns how many micro-batches its tensors have taken since the last optimizer step,
    /// and how many tensors it gives.
    fn check_micro_batch(
        &mut self,
        prefix: &mut Prefix,
        batch: &mut dyn MicroBatch<R, A>,
        whole_model: bool,
    ) -> Result<(u64, usize)> {
        // The step that ends the accumulation must not fail on unequal rates after the
        // means have changed.
        self.optimizer.registry.reduction()?;
        let mut check = self.optimizer.start_batch(batch.in_what());
        let (optimizer, means) = (&mut self.optimizer, &self.means);
        let (mut done, mut given) = (0, 0);
        batch.walk(prefix, &mut |name, param, grad| {
            optimizer.check_named(&mut check, name, param.shape(), grad.shape())?;
            if let Some(mean) = means.get(name) {
                if mean.shape != grad.shape() {
                    return Err(Error::ShapeChanged {
                        param: name.to_owned(),
                        registered: mean.shape.clone(),
                        given: grad.shape().to_vec(),
                    });
                }
                done = done.max(mean.micro_steps);
            }
            given += 1;
            Ok(())
        })?;
        batch.walk(prefix, &mut |name, _, _| {
            let own = means.get(name).map_or(0, |mean| mean.micro_steps);
            if own == done { Ok(()) } else { Err(out_of_step(name, own, Some(done))) }
        })?;
        // With every entry at `done` micro-batches (and none named twice), the batch holds
        // every tensor in flight exactly when it holds as many.
        let in_flight = if done == 0 { 0 } else { given };
        if whole_model && in_flight < self.in_flight {
            let mut named = HashSet::new();
            batch.walk(prefix, &mut |name, _, _| {
                named.insert(name.to_owned());
                Ok(())
            })?;
            let (name, mean) = means
                .iter()
                .find(|(name, mean)| mean.micro_steps > 0 && !named.contains(name.as_str()))
                .expect("a tensor in flight is missing from the batch");
            return Err(out_of_step(name, mean.micro_steps, None));
        }
        Ok((done, given))
    }

    /// Applies the optimizer's non-finite policy to the micro-batch's gradients and, on the
    /// k-th micro-batch (`emit`), to the means they make: `Some` index of the tensor whose
    /// gradient skips the micro-batch. Frozen tensors are left out: neither their gradients
    /// nor their means are used.
    fn guard(
        &self,
        prefix: &mut Prefix,
        batch: &mut dyn MicroBatch<R, A>,
        done: u64,
        emit: bool,
    ) -> Result<Option<usize>> {
        let (mut index, mut skipped) = (0, None);
        batch.walk(prefix, &mut |name, _, grad| {
            if skipped.is_none()
                && let Some(StepOutcome::Skipped { index }) =
                    self.optimizer.guard(index, name, &grad)?
            {
                skipped = Some(index);
            }
            index += 1;
            Ok(())
        })?;
        if skipped.is_some() || !emit || self.optimizer.non_finite() == NonFinite::Ignore {
            return Ok(skipped);
        }
        // Finite gradients can still make a mean that overflows; the optimizer would find it
        // only after the means had changed.
        let divisor = A::from_f64((done + 1) as f64);
        index = 0;
        batch.walk(prefix, &mut |name, _, grad| {
            if self.optimizer.registry.is_frozen(name) {
                index += 1;
                return Ok(());
            }
            let finite = match self.means.get(name) {
                Some(mean) => Zip::from(&mean.view())
                    .and(&grad)
                    .fold(true, |finite, &m, &g| finite & fold(m, g, divisor).is_finite()),
                None => true, // the mean of one finite gradient is that gradient
            };
            if !finite && skipped.is_none() {
                match self.optimizer.non_finite() {
                    NonFinite::Skip => skipped = Some(index),
                    _ => return Err(Error::NonFiniteGradient { param: name.to_owned() }),
                }
            }
            index += 1;
            Ok(())
        })?;
        Ok(skipped)
    }

    /// Micro-batches that the tensor `name` has taken since its last optimizer step (0 for a
    /// name never given).
    pub fn micro_steps(&self, name: &str) -> u64 {
        self.means.get(name).map_or(0, |mean| mean.micro_steps)
    }

    /// The names of the tensors between two optimizer steps (with micro-batches in their
    /// means), sorted.
    pub fn pending(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .means
            .iter()
            .filter(|(_, mean)| mean.micro_steps > 0)
            .map(|(name, _)| name.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// The number k of micro-batches per optimizer step.
    pub fn every_k(&self) -> u64 {
        self.every_k
    }

    /// The optimizer inside.
    pub fn optimizer(&self) -> &Optimizer<R, A> {
        &self.optimizer
    }

    /// The optimizer inside, to change its groups, rates or schedule (step a schedule when
    /// [`MultiStepOutcome::stepped`]).
    pub fn optimizer_mut(&mut self) -> &mut Optimizer<R, A> {
        &mut self.optimizer
    }

    /// The optimizer inside; means of micro-batches since the last optimizer step are
    /// dropped.
    pub fn into_inner(self) -> Optimizer<R, A> {
        self.optimizer
    }
}

/// optax's running mean: `$m + (g - m)/n$` for the n-th micro-batch.
#[inline(always)]
fn fold<A: Element>(mean: A, grad: A, n: A) -> A {
    mean + (grad - mean) / n
}

fn out_of_step(name: &str, accumulated: u64, others: Option<u64>) -> Error {
    Error::MicroBatchMismatch { param: name.to_owned(), accumulated, others }
}

/// One micro-batch: named tensors with their gradients, and the optimizer's step of the
/// same tensors.
trait MicroBatch<R: UpdateRule, A: Element> {
    /// Where the names come from, for [`Error::DuplicateParam`].
    fn in_what(&self) -> &'static str;

    /// Calls `f` with the name, parameter and gradient of every tensor, in order, until `f`
    /// fails.
    fn walk(&mut self, prefix: &mut Prefix, f: &mut VisitPair<'_, A>) -> Result<()>;

    /// Steps `optimizer` on the tensors with the `means` as their gradients.
    fn step(
        &mut self,
        optimizer: &mut Optimizer<R, A>,
        means: &Means<'_, A>,
    ) -> Result<StepOutcome>;
}

/// A micro-batch as [`MultiSteps::step_all`] takes it.
struct Batch<'b, 'a, A>(&'b mut [ParamGrad<'a, A>]);

impl<R: UpdateRule, A: Element> MicroBatch<R, A> for Batch<'_, '_, A> {
    fn in_what(&self) -> &'static str {
        "batch"
    }

    fn walk(&mut self, _: &mut Prefix, f: &mut VisitPair<'_, A>) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|entry| f(entry.name, entry.param.view_mut(), entry.grad.view()))
    }

    fn step(
        &mut self,
        optimizer: &mut Optimizer<R, A>,
        means: &Means<'_, A>,
    ) -> Result<StepOutcome> {
        optimizer.step_batch(self.0, means)
    }
}

/// A micro-batch as [`MultiSteps::step_model`] takes it.
struct ModelBatch<'m, M: ?Sized> {
    params: &'m mut M,
    grads: &'m M,
}

impl<R, A, M> MicroBatch<R, A> for ModelBatch<'_, M>
where
    R: UpdateRule,
    A: Element,
    M: Parameters<Elem = A> + ?Sized,
{
    fn in_what(&self) -> &'static str {
        "model"
    }

    fn walk(&mut self, prefix: &mut Prefix, f: &mut VisitPair<'_, A>) -> Result<()> {
        self.params.zip_mut(self.grads, prefix, f)
    }

    fn step(
        &mut self,
        optimizer: &mut Optimizer<R, A>,
        means: &Means<'_, A>,
    ) -> Result<StepOutcome> {
        let (params, grads) = (&mut *self.params, self.grads);
        optimizer.step_zipped(&mut |prefix, f| {
            params.zip_mut(grads, prefix, &mut |name, param, grad| {
                f(name, param, means.of(name, &grad).into_view())
            })
        })
    }
}

/// The means as the gradients of the optimizer's step.
struct Means<'a, A>(&'a HashMap<String, Mean<A>>);

impl<A: Sync> Gradients<A> for Means<'_, A> {
    fn of<'g>(&'g self, name: &str, _: &'g ArrayView<'g, A, IxDyn>) -> Gradient<'g, A> {
        Gradient::Other(
            self.0.get(name).expect("every entry of a stepped micro-batch has a mean").view(),
        )
    }
}
