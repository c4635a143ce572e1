//! The train/eval switch of the schedule-free rules: the parameter tensor holds `$y$` while
//! training and `$x$` while evaluating, and [`Optimizer::eval`] and [`Optimizer::train`] turn
//! one into the other in place, from the state `$z$`.

use core::fmt;

use ndarray::{ArrayRef, ArrayViewMut, Dimension, IxDyn, Zip};

use crate::element::Element;
use crate::error::{Error, Result};
use crate::model::{Parameters, Prefix};
use crate::optimizer::Optimizer;
use crate::registry::TensorState;
use crate::rule::UpdateRule;
use crate::rules::schedule_free::{ScheduleFreeAdamW, ScheduleFreeSgd, TRAIN_MODE};
use crate::rules::{Lerp, Rule};

/// What the parameter tensor of a schedule-free rule holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The interpolation `$y$`, where gradients are taken: the mode of every step, and of a
    /// tensor's state when it is created.
    Train,
    /// The average `$x$`, where the model is evaluated (and which `schedulefree` recommends
    /// saving as the model's weights).
    Eval,
}

impl Mode {
    /// The value of the per-tensor scalar `train_mode`.
    fn scalar(self) -> f64 {
        match self {
            Mode::Train => 1.0,
            Mode::Eval => 0.0,
        }
    }

    /// The call that switches away from this mode.
    pub(crate) fn leave(self) -> &'static str {
        match self {
            Mode::Train => "eval",
            Mode::Eval => "train",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Train => "train mode (it holds y)",
            Mode::Eval => "eval mode (it holds the average x)",
        })
    }
}

/// The tensor `param` is in `mode` and the call needs the other one.
pub(crate) fn wrong_mode(param: &str, mode: Mode) -> Error {
    Error::WrongMode { param: param.to_owned(), mode }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ScheduleFreeAdamW {}
    impl Sealed for super::ScheduleFreeSgd {}
    impl Sealed for super::Rule {}
}

/// The rules whose optimizers have the train/eval switch: [`ScheduleFreeAdamW`],
/// [`ScheduleFreeSgd`], and [`Rule`], whose groups of other rules the switch leaves alone.
/// Sealed.
pub trait ScheduleFree: UpdateRule + sealed::Sealed {
    /// The interpolation `$\beta$` between the average and the base iterate (β₁ or the
    /// momentum), or `None` if these hyperparameters are not of a schedule-free rule.
    fn interpolation(&self) -> Option<f64>;
}

impl ScheduleFree for ScheduleFreeAdamW {
    fn interpolation(&self) -> Option<f64> {
        Some(self.beta1)
    }
}

impl ScheduleFree for ScheduleFreeSgd {
    fn interpolation(&self) -> Option<f64> {
        Some(self.momentum)
    }
}

impl ScheduleFree for Rule {
    fn interpolation(&self) -> Option<f64> {
        match self {
            Rule::ScheduleFreeAdamW(rule) => rule.interpolation(),
            Rule::ScheduleFreeSgd(rule) => rule.interpolation(),
            _ => None,
        }
    }
}

fn mode_of<A>(tensor: &TensorState<A>) -> Mode {
    if tensor.scalars[TRAIN_MODE] == Mode::Eval.scalar() { Mode::Eval } else { Mode::Train }
}

/// The train/eval switch of the schedule-free rules: see [`schedule_free`](crate::schedule_free).
impl<R: ScheduleFree, A: Element> Optimizer<R, A> {
    /// Sets every stepped tensor of `model` to the average `$x$` where the model is
    /// evaluated (`schedulefree`'s `optimizer.eval()`; see
    /// [`schedule_free`](crate::schedule_free)).
    ///
    /// # Errors
    /// [`Error::ShapeChanged`] if a tensor's shape differs from its state's,
    /// [`Error::DuplicateParam`] if the model names a tensor twice; nothing has changed then.
    pub fn eval<M>(&mut self, model: &mut M) -> Result<()>
    where
        M: Parameters<Elem = A> + ?Sized,
    {
        self.switch_model(model, Mode::Eval)
    }

    /// Sets every stepped tensor of `model` back to `$y$` where gradients are taken
    /// (`schedulefree`'s `optimizer.train()`).
    ///
    /// # Errors
    /// As [`eval`](Self::eval).
    pub fn train<M>(&mut self, model: &mut M) -> Result<()>
    where
        M: Parameters<Elem = A> + ?Sized,
    {
        self.switch_model(model, Mode::Train)
    }

    /// [`eval`](Self::eval) of the single tensor `name`.
    ///
    /// # Errors
    /// [`Error::UnknownParam`] if the optimizer does not know the name,
    /// [`Error::ShapeChanged`] if `param`'s shape differs from its state's; nothing has
    /// changed then.
    pub fn eval_tensor<D: Dimension>(
        &mut self,
        name: &str,
        param: &mut ArrayRef<A, D>,
    ) -> Result<()> {
        self.switch_tensor(name, param.view_mut().into_dyn(), Mode::Eval)
    }

    /// [`train`](Self::train) of the single tensor `name`.
    ///
    /// # Errors
    /// As [`eval_tensor`](Self::eval_tensor).
    pub fn train_tensor<D: Dimension>(
        &mut self,
        name: &str,
        param: &mut ArrayRef<A, D>,
    ) -> Result<()> {
        self.switch_tensor(name, param.view_mut().into_dyn(), Mode::Train)
    }

    /// The mode of the tensor `name`, if it has state of a schedule-free rule.
    pub fn mode(&self, name: &str) -> Option<Mode> {
        let slot = self.registry.slots.get(name)?;
        self.registry.groups[slot.group].hyper.interpolation()?;
        slot.tensor.as_deref().map(mode_of)
    }

    /// Fails unless every stepped tensor of `model` is in `mode`: call it before evaluating
    /// the model (`Mode::Eval`) or saving its weights, so that a forgotten switch shows.
    ///
    /// # Errors
    /// [`Error::WrongMode`] naming the first tensor in the other mode.
    pub fn check_mode<M>(&self, model: &M, mode: Mode) -> Result<()>
    where
        M: Parameters<Elem = A> + ?Sized,
    {
        let mut wrong = None;
        model.visit(&mut Prefix::new(), &mut |name, _| {
            if wrong.is_none() {
                let found = self.mode(name).filter(|&found| found != mode);
                wrong = found.map(|found| wrong_mode(name, found));
            }
        });
        wrong.map_or(Ok(()), Err)
    }

    fn switch_tensor(
        &mut self,
        name: &str,
        param: ArrayViewMut<'_, A, IxDyn>,
        to: Mode,
    ) -> Result<()> {
        self.registry.known_slot(name)?;
        self.check_switch(name, param.shape())?;
        self.switch(name, param, to);
        Ok(())
    }

    fn switch_model<M>(&mut self, model: &mut M, to: Mode) -> Result<()>
    where
        M: Parameters<Elem = A> + ?Sized,
    {
        let mut prefix = self.names.take();
        let result = self.switch_model_in(&mut prefix, model, to);
        self.names.put_back(prefix);
        result
    }

    /// Checks every tensor of the model, then switches them: all or nothing.
    fn switch_model_in<M>(&mut self, prefix: &mut Prefix, model: &mut M, to: Mode) -> Result<()>
    where
        M: Parameters<Elem = A> + ?Sized,
    {
        self.registry.start_batch();
        let mut failure = None;
        model.visit(prefix, &mut |name, param| {
            if failure.is_none() {
                failure = self.check_model_entry(name, param.shape()).err();
            }
        });
        if let Some(failure) = failure {
            return Err(failure);
        }
        model.visit_mut(prefix, &mut |name, param| self.switch(name, param, to));
        Ok(())
    }

    fn check_model_entry(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        // Switching a tensor twice would take it past the other mode and back.
        if self.registry.named_again(name) == Some(true) {
            return Err(Error::DuplicateParam { param: name.to_owned(), in_what: "model" });
        }
        self.check_switch(name, shape)
    }

    /// Fails if the tensor `name` has state for another shape.
    fn check_switch(&self, name: &str, shape: &[usize]) -> Result<()> {
        match self.registry.slots.get(name).and_then(|slot| slot.tensor.as_ref()) {
            Some(tensor) if tensor.shape != shape => Err(Error::ShapeChanged {
                param: name.to_owned(),
                registered: tensor.shape.clone(),
                given: shape.to_vec(),
            }),
            _ => Ok(()),
        }
    }

    /// Switches the tensor `name`, checked, to mode `to`, if it has state of a schedule-free
    /// rule in the other mode.
    fn switch(&mut self, name: &str, param: ArrayViewMut<'_, A, IxDyn>, to: Mode) {
        let registry = &mut self.registry;
        let Some(slot) = registry.slots.get_mut(name) else { return };
        let Some(beta) = registry.groups[slot.group].hyper.interpolation() else { return };
        let Some(tensor) = slot.tensor.as_mut() else { return };
        if mode_of(tensor) == to {
            return;
        }
        let weight = match to {
            Mode::Eval => 1.0 - 1.0 / beta,
            Mode::Train => 1.0 - beta,
        };
        let towards_z = Lerp::<A>::new(weight);
        Zip::from(param).and(&tensor.buffer(0)).for_each(|p, &z| *p = towards_z.at(*p, z));
        tensor.scalars[TRAIN_MODE] = to.scalar();
    }
}
