//! Restoring a checkpoint against the tensors a model has now, with a report by name.

use std::collections::BTreeMap;

use super::Checkpoint;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::report::{LoadMode, LoadReport, ShapeMismatch};
use crate::rule::UpdateRule;

impl<R: UpdateRule, A: Element> Optimizer<R, A> {
    /// Replaces the optimizer's whole state (groups, hyperparameters, tensors) with a
    /// checkpoint's, matched by name against the tensors the model has now, and reports what
    /// differs.
    ///
    /// `model` lists each tensor's name and shape, e.g. `[("w", w.shape()), ("b", b.shape())]`
    /// or a `&HashMap<String, Vec<usize>>`. Unlike PyTorch (which matches state by position and
    /// accepts any shape) nothing is matched by order and no state is used for a tensor of
    /// another shape; unlike re-initialising silently, every difference is in the report.
    /// All tensors share the optimizer's element type, so a checkpoint of another one is
    /// refused as a whole.
    ///
    /// ```
    /// use ndarray::{Array1, Array2};
    /// use ndarray_optim::checkpoint::LoadMode;
    /// use ndarray_optim::{Adam, Optimizer};
    ///
    /// let mut opt = Optimizer::new(Adam::default())?;
    /// let (mut w, mut head) = (Array2::<f32>::zeros((4, 3)), Array1::<f32>::zeros(3));
    /// opt.step("encoder.w", &mut w, &Array2::ones((4, 3)))?;
    /// opt.step("head", &mut head, &Array1::ones(3))?;
    /// let saved = opt.checkpoint();
    ///
    /// // The next run has a wider head and a new bias.
    /// let model = [("encoder.w", &[4, 3][..]), ("head", &[5][..]), ("head.bias", &[5][..])];
    /// let mut resumed = Optimizer::new(Adam::default())?;
    /// let err = resumed.load_state(saved.clone(), model, LoadMode::Strict).unwrap_err();
    /// assert!(err.to_string().contains("`head` has shape [3] in the checkpoint, [5] in the model"));
    /// assert_eq!(resumed.state().len(), 0); // a refused load changes nothing
    ///
    /// let report = resumed.load_state(saved, model, LoadMode::Lenient)?;
    /// assert_eq!(report.restored, ["encoder.w"]);
    /// assert_eq!(report.missing, ["head.bias"]);
    /// assert_eq!(report.mismatched[0].name, "head");
    /// assert_eq!(resumed.step_count("encoder.w"), Some(1));
    /// assert_eq!(resumed.step_count("head"), None); // fresh: its first step will be step 1
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// Every error of [`from_checkpoint`](Self::from_checkpoint) for an invalid checkpoint
    /// (checked in full, whatever the mode); [`Error::DuplicateParam`] if `model` lists a name
    /// twice with different shapes; in [`LoadMode::Strict`], [`Error::ModelMismatch`] with
    /// the report unless it [`is_exact`](LoadReport::is_exact). On an error the optimizer is
    /// exactly as it was.
    pub fn load_state<N, S>(
        &mut self,
        checkpoint: Checkpoint<R, A>,
        model: impl IntoIterator<Item = (N, S)>,
        mode: LoadMode,
    ) -> Result<LoadReport>
    where
        N: AsRef<str>,
        S: AsRef<[usize]>,
    {
        let mut restored = checkpoint.into_optimizer()?;
        let registry = &mut restored.registry;
        let mut shapes = BTreeMap::<String, Vec<usize>>::new();
        for (name, shape) in model {
            let (name, shape) = (name.as_ref(), shape.as_ref());
            match shapes.get(name) {
                Some(known) if known != shape => {
                    return Err(Error::DuplicateParam {
                        param: name.to_owned(),
                        in_what: "model's tensors",
                    });
                }
                Some(_) => {}
                None => {
                    shapes.insert(name.to_owned(), shape.to_vec());
                }
            }
        }
        let mut report = LoadReport::default();
        for (name, model) in &shapes {
            match registry.slots.get(name).map(|slot| slot.tensor.as_ref()) {
                None => report.missing.push(name.clone()),
                Some(Some(state)) if state.shape != *model => {
                    report.mismatched.push(ShapeMismatch {
                        name: name.clone(),
                        checkpoint: state.shape.clone(),
                        model: model.clone(),
                    });
                }
                Some(_) => report.restored.push(name.clone()),
            }
        }
        report.unexpected =
            registry.slots.keys().filter(|name| !shapes.contains_key(*name)).cloned().collect();
        report.unexpected.sort_unstable();
        if mode == LoadMode::Strict && !report.is_exact() {
            return Err(Error::ModelMismatch { report: Box::new(report) });
        }
        for name in &report.unexpected {
            registry.slots.remove(name);
        }
        for mismatch in &report.mismatched {
            if let Some(slot) = registry.slots.get_mut(&mismatch.name) {
                slot.tensor = None;
            }
        }
        *self = restored;
        Ok(report)
    }
}
