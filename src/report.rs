//! What a load found: the report of
//! [`Optimizer::load_state`](crate::Optimizer::load_state), by name. Plain data, so that
//! errors can carry it without depending on checkpoints.

use core::fmt;

/// How [`Optimizer::load_state`](crate::Optimizer::load_state) treats a checkpoint that does not match the model exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoadMode {
    /// Refuse unless every tensor of the model has state of its shape in the checkpoint (or
    /// is listed there without state) and the checkpoint has no other tensor.
    Strict,
    /// Restore the tensors that match, leave the others fresh, and report them.
    Lenient,
}

/// A tensor whose checkpointed state has another shape than the model's tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShapeMismatch {
    /// The tensor's name.
    pub name: String,
    /// The shape its state has in the checkpoint.
    pub checkpoint: Vec<usize>,
    /// The shape the model's tensor has now.
    pub model: Vec<usize>,
}

/// What [`Optimizer::load_state`](crate::Optimizer::load_state) found comparing a checkpoint with the model's tensors, by
/// name; every list is sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LoadReport {
    /// Tensors of the model restored from the checkpoint: state of the model's shape, or (for
    /// tensors assigned but never stepped) their group.
    pub restored: Vec<String>,
    /// Tensors of the model the checkpoint does not list (e.g. a new head). Their state is
    /// fresh and they belong to the default group until assigned to another.
    pub missing: Vec<String>,
    /// Tensors of the checkpoint the model no longer has (e.g. a renamed layer). A lenient
    /// load drops them.
    pub unexpected: Vec<String>,
    /// Tensors whose checkpointed state has another shape than the model's tensor. A lenient
    /// load keeps their group and leaves their state fresh.
    pub mismatched: Vec<ShapeMismatch>,
}

impl LoadReport {
    /// Whether checkpoint and model match exactly: nothing missing, unexpected or mismatched.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

/// One line: how many tensors were restored, then every difference by name.
impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} restored", self.restored.len())?;
        if !self.missing.is_empty() {
            write!(f, "; missing from the checkpoint: {}", self.missing.join(", "))?;
        }
        if !self.unexpected.is_empty() {
            write!(f, "; not in the model: {}", self.unexpected.join(", "))?;
        }
        for ShapeMismatch { name, checkpoint, model } in &self.mismatched {
            write!(
                f,
                "; `{name}` has shape {checkpoint:?} in the checkpoint, {model:?} in the model"
            )?;
        }
        Ok(())
    }
}
