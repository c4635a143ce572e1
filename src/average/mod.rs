//! Weight averaging: exponential moving averages (EMA) and stochastic weight averaging (SWA)
//! of parameter tensors, kept by name ([`AveragedModel`]).

mod blend;
#[cfg(feature = "serde")]
mod record;

use core::marker::PhantomData;

use hashbrown::{HashMap, HashSet};
use ndarray::{ArrayRef, ArrayView, ArrayViewD, ArrayViewMut, Dimension, IxDyn, Zip};

use crate::check::{check_decay, check_unit};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::model::{NameBuffer, Parameters, Prefix};
use crate::registry::closest_name;

/// How an [`AveragedModel`] averages the snapshots `$\theta_1, \theta_2, \dots$` of a tensor
/// that its updates are given.
///
/// The snapshots are counted per tensor: `$n$` below is the number averaged before the
/// update (PyTorch's `n_averaged`, optax's `count`).
///
/// | averaging | first update | reference |
/// | --- | --- | --- |
/// | [`Swa`](Self::Swa) | copies the parameter | PyTorch `AveragedModel(model)` |
/// | [`Ema`](Self::Ema) | copies the parameter | PyTorch `AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))` |
/// | [`OptaxEma`](Self::OptaxEma) | blends into zeros | optax `ema(decay, debias)` |
///
/// In serde formats it is `"swa"`, `{"ema": {"decay": 0.999, "warmup": false}}` or
/// `{"optax_ema": {"decay": 0.999, "debias": true}}`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case", deny_unknown_fields))]
pub enum Averaging {
    /// Stochastic weight averaging (Izmailov et al. 2018): the plain mean of every snapshot,
    /// as PyTorch's `AveragedModel(model)` keeps it with its default `avg_fn`,
    ///
    /// ```math
    /// \bar\theta_1 = \theta_1, \qquad
    /// \bar\theta_{n+1} = \bar\theta_n + \frac{\theta_{n+1} - \bar\theta_n}{n + 1},
    /// ```
    ///
    /// computed as written, which gives PyTorch's bits on the CPU (on CUDA PyTorch uses
    /// `lerp` with weight `$1/(n+1)$` instead).
    Swa,
    /// An exponential moving average as PyTorch's
    /// `AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))` keeps it: the first
    /// update copies the parameter, each later one moves the average by `$1 - d_n$` towards
    /// it,
    ///
    /// ```math
    /// \bar\theta_1 = \theta_1, \qquad
    /// \bar\theta_{n+1} = \operatorname{lerp}(\bar\theta_n, \theta_{n+1}, w_n)
    /// = d_n \bar\theta_n + (1 - d_n)\,\theta_{n+1}, \qquad w_n = 1 - d_n,
    /// ```
    ///
    /// where `$d_n = d$` (`decay`), or with `warmup` the decay of TensorFlow's
    /// `tf.train.ExponentialMovingAverage(decay, num_updates=n)`,
    /// `$d_n = \min\big(d, \frac{1 + n}{10 + n}\big)$`, which lets the average follow the
    /// parameter closely while it is young (`$d_1 = 2/11$`, `$d_{90} = 0.91$`).
    ///
    /// The lerp is `torch.lerp`'s: `$\bar\theta + w(\theta - \bar\theta)$` for
    /// `$|w| < 0.5$`, else `$\theta - (\theta - \bar\theta)(1 - w)$`. PyTorch's CPU kernel
    /// fuses the product and the sum of the first form into one rounding (FMA), which this
    /// crate does not, so that form can differ from PyTorch in the last bit; the second form
    /// gives PyTorch's bits.
    Ema {
        /// `$d \in [0, 1]$`; 1 keeps the first snapshot forever.
        decay: f64,
        /// Warm the decay up as TensorFlow's `num_updates` does.
        warmup: bool,
    },
    /// An exponential moving average as optax's `ema(decay, debias)` keeps it: it starts from
    /// zeros, and with `debias` divides out the weight those zeros still have,
    ///
    /// ```math
    /// e_0 = 0, \qquad e_t = (1 - d)\,\theta_t + d\, e_{t-1}, \qquad
    /// \bar\theta_t = \begin{cases} e_t / (1 - d^t) & \text{with debias} \\ e_t & \text{without} \end{cases}
    /// ```
    ///
    /// with `$t = n + 1$`, computed operation for operation as optax does (`$1 - d^t$` in the
    /// arithmetic's type): optax's bits. An accumulator type other than the parameters' is
    /// optax's `accumulator_dtype` ([`AveragedModel`]'s `S`).
    OptaxEma {
        /// `$d \in [0, 1]$`, and below 1 with `debias` (whose correction would divide by 0).
        decay: f64,
        /// Divide by `$1 - d^t$`: optax's default, `true`.
        debias: bool,
    },
}

impl Averaging {
    /// Checks the decay's range.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] (rule `"ema"` or `"optax_ema"`, key `"decay"`).
    pub fn validate(self) -> Result<()> {
        match self {
            Averaging::Swa => Ok(()),
            Averaging::Ema { decay, .. } => check_unit("ema", "decay", decay),
            Averaging::OptaxEma { decay, debias: true } => check_decay("optax_ema", "decay", decay),
            Averaging::OptaxEma { decay, debias: false } => check_unit("optax_ema", "decay", decay),
        }
    }

    /// How many buffers of the tensor's size an average keeps: the average, and before it
    /// the raw EMA of a debiased optax EMA.
    fn buffers(self) -> usize {
        match self {
            Averaging::OptaxEma { debias: true, .. } => 2,
            _ => 1,
        }
    }
}

/// Running averages of named parameter tensors: PyTorch's `AveragedModel` and optax's
/// `ema`, kept by name like an [`Optimizer`](crate::Optimizer)'s state, for tensors of any
/// shape, dimension and memory layout.
///
/// After each optimizer step, [`update`](Self::update) (one tensor) or
/// [`update_all`](Self::update_all) (a batch) folds the parameters into their averages, as
/// [`Averaging`] says; [`get`](Self::get) reads an average, and
/// [`copy_into`](Self::copy_into) or [`swap_into`](Self::swap_into) put the averages into
/// the parameters to evaluate the averaged model, as PyTorch users evaluate an
/// `AveragedModel`.
///
/// `A` is the parameters' element type and `S` the averages' (optax's `accumulator_dtype`;
/// by default `A`). The arithmetic runs in the wider of the two. Averages are stored
/// row-major whatever the parameters' layout; every element is computed on its own, so
/// layouts never change a bit of the result. The first update of a name allocates its
/// average; later updates allocate nothing (up to 4 dimensions, as ndarray keeps larger
/// dynamic shapes on the heap). A call that fails changes nothing.
///
/// With the `serde` feature it serializes as its averaging, the averages' element type and
/// every tensor's count, shape, swap state and buffers (row-major, sorted by name);
/// deserializing checks all of it, and a run resumed from it continues bit for bit.
///
/// ```
/// use ndarray::array;
/// use ndarray_optim::{Adam, AveragedModel, Averaging, Optimizer};
///
/// let mut opt = Optimizer::new(Adam { lr: 0.1, ..Adam::default() })?;
/// let mut ema = AveragedModel::new(Averaging::Ema { decay: 0.9, warmup: false })?;
/// let mut w = array![1.0_f32, -2.0];
/// for _ in 0..100 {
///     let grad = &w - &array![0.5, 0.5]; // minimise ½‖w − ½‖²
///     opt.step("w", &mut w, &grad)?;
///     ema.update("w", &w)?;
/// }
/// assert_eq!(ema.count("w"), Some(100));
///
/// // Evaluate with the averaged weights, then go back to training.
/// let (trained, average) = (w.clone(), ema.get("w").unwrap().to_owned());
/// ema.swap_into("w", &mut w)?; // `w` holds the average...
/// assert_eq!(w.view().into_dyn(), average);
/// assert!((&w - &array![0.5, 0.5]).iter().all(|d| d.abs() < 0.05));
/// ema.swap_into("w", &mut w)?; // ...and the trained weights again
/// assert_eq!(w, trained);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct AveragedModel<A: Element, S: Element = A> {
    averaging: Averaging,
    tensors: HashMap<String, Average<S>>,
    /// The number of the latest batch, to find a name given twice in one with one lookup.
    batches: u64,
    names: NameBuffer,
    params: PhantomData<fn(A)>,
}

/// The average of one named tensor.
#[derive(Clone, Debug)]
struct Average<S> {
    /// Snapshots averaged.
    count: u64,
    shape: Vec<usize>,
    /// Row-major: the average, after the raw EMA of a debiased optax EMA.
    buffers: Vec<S>,
    /// Whether [`AveragedModel::swap_into`] has put the average into the parameter (and the
    /// parameter's values into `buffers`).
    swapped: bool,
    /// The last batch that named this tensor; bookkeeping, not state.
    batch: u64,
}

impl<S> Average<S> {
    /// The average, viewed with the tensor's shape.
    fn average(&self) -> ArrayView<'_, S, IxDyn> {
        let start = self.buffers.len() - self.shape.iter().product::<usize>();
        ArrayView::from_shape(IxDyn(&self.shape), &self.buffers[start..])
            .expect("the average holds exactly the elements of the tensor's shape")
    }

    fn average_mut(&mut self) -> ArrayViewMut<'_, S, IxDyn> {
        let start = self.buffers.len() - self.shape.iter().product::<usize>();
        ArrayViewMut::from_shape(IxDyn(&self.shape), &mut self.buffers[start..])
            .expect("the average holds exactly the elements of the tensor's shape")
    }
}

/// Equal state: count, shape, swap state and buffers.
impl<S: PartialEq> PartialEq for Average<S> {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count
            && self.shape == other.shape
            && self.swapped == other.swapped
            && self.buffers == other.buffers
    }
}

/// Equal averaging and equal averages of the same names.
impl<A: Element, S: Element> PartialEq for AveragedModel<A, S> {
    fn eq(&self, other: &Self) -> bool {
        self.averaging == other.averaging && self.tensors == other.tensors
    }
}

impl<A: Element, S: Element> AveragedModel<A, S> {
    /// Averages that no tensor has yet.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] if the decay is out of range
    /// ([`Averaging::validate`]).
    pub fn new(averaging: Averaging) -> Result<Self> {
        averaging.validate()?;
        Ok(AveragedModel {
            averaging,
            tensors: HashMap::new(),
            batches: 0,
            names: NameBuffer::default(),
            params: PhantomData,
        })
    }

    /// How the averages are kept.
    pub fn averaging(&self) -> Averaging {
        self.averaging
    }

    /// Folds the current value of the tensor `name` into its average; the first update of a
    /// name creates the average with the parameter's shape.
    ///
    /// # Errors
    /// - [`Error::ShapeChanged`] if `name`'s average has another shape;
    /// - [`Error::AverageSwapped`] if its average is [swapped](Self::swap_into) into the
    ///   parameter;
    /// - [`Error::StepCountOverflow`] if it has averaged `u64::MAX` snapshots.
    pub fn update<D: Dimension>(&mut self, name: &str, param: &ArrayRef<A, D>) -> Result<()> {
        self.update_all(&[(name, param.view().into_dyn())])
    }

    /// Updates the average of every tensor of `batch`, as [`update`](Self::update) does one;
    /// either all are updated or, on an error, none is. Views of dynamic dimension let tensors
    /// of any dimensionality share one batch (`w.view().into_dyn()`).
    ///
    /// # Errors
    /// As [`update`](Self::update) for the first tensor that fails, and
    /// [`Error::DuplicateParam`] if the batch names a tensor twice.
    pub fn update_all(&mut self, batch: &[(&str, ArrayViewD<'_, A>)]) -> Result<()> {
        self.update_walk(&mut |f| batch.iter().try_for_each(|(name, param)| f(name, param.view())))
    }

    /// Updates the average of every tensor of `model` (a set of named tensors,
    /// [`Parameters`]) as [`update_all`](Self::update_all) updates a batch of the same
    /// tensors; names are the model's dotted paths, as [`Optimizer::step_model`] gives them.
    /// After the first update it allocates nothing.
    ///
    /// [`Optimizer::step_model`]: crate::Optimizer::step_model
    ///
    /// # Errors
    /// As [`update_all`](Self::update_all), with [`Error::DuplicateParam`] if the model
    /// names a tensor twice.
    pub fn update_model<M: Parameters<Elem = A> + ?Sized>(&mut self, model: &M) -> Result<()> {
        let mut prefix = self.names.take();
        let outcome = self.update_walk(&mut |f| visit_until_error(model, &mut prefix, f));
        self.names.put_back(prefix);
        outcome
    }

    /// Updates the averages of the tensors that `walk` gives its callback: all or, on an
    /// error, none.
    fn update_walk(&mut self, walk: &mut Walk<'_, A>) -> Result<()> {
        self.batches += 1;
        // New names have no average to mark; they are few, and only in a tensor's first
        // update, which allocates its average anyway.
        let mut new_names = HashSet::new();
        walk(&mut |name, param| self.check_update(&mut new_names, name, param.shape()))?;
        let (averaging, buffers) = (self.averaging, self.averaging.buffers());
        walk(&mut |name, param| {
            let average = self.tensors.entry_ref(name).or_insert_with(|| Average {
                count: 0,
                shape: param.shape().to_vec(),
                buffers: vec![S::zero(); buffers * param.len()],
                swapped: false,
                batch: self.batches,
            });
            blend::update(averaging, average.count, &mut average.buffers, param);
            average.count += 1;
            Ok(())
        })
    }

    /// Everything that can make the update of `name` in the current batch fail.
    fn check_update(
        &mut self,
        new_names: &mut HashSet<String>,
        name: &str,
        shape: &[usize],
    ) -> Result<()> {
        let again = match self.tensors.get_mut(name) {
            Some(average) => {
                check_average(name, average, shape)?;
                if average.count == u64::MAX {
                    return Err(Error::StepCountOverflow { param: name.to_owned() });
                }
                let again = average.batch == self.batches;
                average.batch = self.batches;
                again
            }
            None => !new_names.insert(name.to_owned()),
        };
        if again {
            return Err(Error::DuplicateParam { param: name.to_owned(), in_what: "batch" });
        }
        Ok(())
    }

    /// The average of the tensor `name`, if it has one. While it is
    /// [swapped](Self::swap_into), this holds the parameter's values instead.
    pub fn get(&self, name: &str) -> Option<ArrayViewD<'_, S>> {
        Some(self.tensors.get(name)?.average())
    }

    /// How many snapshots of the tensor `name` its average holds (PyTorch's `n_averaged`,
    /// optax's `count`), if it has one.
    pub fn count(&self, name: &str) -> Option<u64> {
        Some(self.tensors.get(name)?.count)
    }

    /// Whether the average of `name` is [swapped](Self::swap_into) into its parameter, if it
    /// has one.
    pub fn is_swapped(&self, name: &str) -> Option<bool> {
        Some(self.tensors.get(name)?.swapped)
    }

    /// The names of the averaged tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Writes the average of the tensor `name` into `param` (rounded to `A` if the averages
    /// are wider), e.g. into an evaluation copy of the model; the average stays as it is.
    ///
    /// # Errors
    /// - [`Error::NotAveraged`] if `name` has no average;
    /// - [`Error::ShapeChanged`] if `param` has another shape;
    /// - [`Error::AverageSwapped`] if the average is swapped into the parameter.
    pub fn copy_into<D: Dimension>(&self, name: &str, param: &mut ArrayRef<A, D>) -> Result<()> {
        let average = self.find(name)?;
        check_average(name, average, param.shape())?;
        let mut param = param.view_mut().into_dyn();
        Zip::from(&mut param).and(&average.average()).for_each(|p, &a| *p = blend::cast(a));
        Ok(())
    }

    /// Writes the average of every tensor of `model` into it, as [`copy_into`](Self::copy_into)
    /// does one, e.g. into an evaluation copy of the model: all or, on an error, none.
    ///
    /// # Errors
    /// As [`copy_into`](Self::copy_into), for the first tensor that fails.
    pub fn copy_into_model<M: Parameters<Elem = A> + ?Sized>(&self, model: &mut M) -> Result<()> {
        let mut prefix = Prefix::new();
        visit_until_error(model, &mut prefix, &mut |name, param| {
            check_average(name, self.find(name)?, param.shape())
        })?;
        model.visit_mut(&mut prefix, &mut |name, mut param| {
            if let Ok(average) = self.find(name) {
                Zip::from(&mut param).and(&average.average()).for_each(|p, &a| *p = blend::cast(a));
            }
        });
        Ok(())
    }

    /// The average of `name`, or [`Error::NotAveraged`] naming the closest averaged name.
    fn find(&self, name: &str) -> Result<&Average<S>> {
        self.tensors.get(name).ok_or_else(|| Error::NotAveraged {
            param: name.to_owned(),
            closest: closest_name(name, self.tensors.keys().map(String::as_str)).map(str::to_owned),
        })
    }
}

impl<A: Element> AveragedModel<A> {
    /// Exchanges the average of the tensor `name` with the values of `param`: the parameter
    /// then holds the average (to evaluate the averaged model in place), and a second call
    /// puts both back exactly. In between, the tensor's average can be neither updated nor
    /// copied ([`Error::AverageSwapped`]); a checkpoint taken in between keeps the swap.
    ///
    /// # Errors
    /// [`Error::NotAveraged`] if `name` has no average, [`Error::ShapeChanged`] if `param`
    /// has another shape.
    pub fn swap_into<D: Dimension>(
        &mut self,
        name: &str,
        param: &mut ArrayRef<A, D>,
    ) -> Result<()> {
        self.find(name)?;
        let average = self.tensors.get_mut(name).expect("found just before");
        if average.shape != param.shape() {
            return Err(shape_changed(name, average, param.shape()));
        }
        let mut param = param.view_mut().into_dyn();
        Zip::from(&mut param).and(average.average_mut()).for_each(core::mem::swap);
        average.swapped = !average.swapped;
        Ok(())
    }
}

impl<A: Element> AveragedModel<A> {
    /// Exchanges the average of every tensor of `model` with its values, as
    /// [`swap_into`](Self::swap_into) does one: the model then holds the averaged weights,
    /// and a second call puts both back exactly. All or, on an error, none.
    ///
    /// # Errors
    /// As [`swap_into`](Self::swap_into), for the first tensor that fails.
    pub fn swap_model<M: Parameters<Elem = A> + ?Sized>(&mut self, model: &mut M) -> Result<()> {
        let mut prefix = self.names.take();
        let outcome = visit_until_error(model, &mut prefix, &mut |name, param| {
            let average = self.find(name)?;
            if average.shape != param.shape() {
                return Err(shape_changed(name, average, param.shape()));
            }
            Ok(())
        });
        if outcome.is_ok() {
            model.visit_mut(&mut prefix, &mut |name, mut param| {
                if let Some(average) = self.tensors.get_mut(name) {
                    Zip::from(&mut param).and(average.average_mut()).for_each(core::mem::swap);
                    average.swapped = !average.swapped;
                }
            });
        }
        self.names.put_back(prefix);
        outcome
    }
}

/// A walk over named tensors, with the walker's callback; it stops at the callback's first
/// error and returns it.
type Walk<'w, A> = dyn FnMut(&mut Each<'_, A>) -> Result<()> + 'w;

/// The callback of a [`Walk`]: a named tensor's view.
type Each<'f, A> = dyn FnMut(&str, ArrayViewD<'_, A>) -> Result<()> + 'f;

/// Visits `model` with `f` until `f` fails; returns the failure.
fn visit_until_error<M: Parameters + ?Sized>(
    model: &M,
    prefix: &mut Prefix,
    f: &mut Each<'_, M::Elem>,
) -> Result<()> {
    let mut outcome = Ok(());
    model.visit(prefix, &mut |name, param| {
        if outcome.is_ok() {
            outcome = f(name, param);
        }
    });
    outcome
}

/// Fails unless `average` has `shape` and is not swapped out.
fn check_average<S>(name: &str, average: &Average<S>, shape: &[usize]) -> Result<()> {
    if average.shape != shape {
        Err(shape_changed(name, average, shape))
    } else if average.swapped {
        Err(Error::AverageSwapped { param: name.to_owned() })
    } else {
        Ok(())
    }
}

fn shape_changed<S>(name: &str, average: &Average<S>, shape: &[usize]) -> Error {
    Error::ShapeChanged {
        param: name.to_owned(),
        registered: average.shape.clone(),
        given: shape.to_vec(),
    }
}
