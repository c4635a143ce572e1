//! Training one contestant: the loop, the mid-run checkpoint and the resumed run.

use std::error::Error;
use std::ops::Range;
use std::time::{Duration, Instant};

use ndarray::Axis;
use ndarray_optim::{Optimizer, Rule, UpdateRule};

use crate::digits::Digits;
use crate::mlp::Mlp;

/// Tensors that the optimizer's groups name, as the network's fields name them.
const HIDDEN_WEIGHT: &str = "hidden.weight";
const OUTPUT_WEIGHT: &str = "output.weight";
const OUTPUT_BIAS: &str = "output.bias";

/// The parameter group of the output layer.
const OUTPUT_GROUP: &str = "output";
/// The parameter group of the hidden weight matrix, for contestants with a rule of its own.
const HIDDEN_MATRIX_GROUP: &str = "hidden_matrix";
/// The output layer's learning rate relative to the rule's: it learns at half the rate of the
/// hidden layer, to show a group with hyperparameters of its own.
const OUTPUT_LR_SCALE: f64 = 0.5;
/// Steps between two measurements of the loss on the whole training set.
const LOG_EVERY: u64 = 10;

/// Everything that every rule trains on: the same data, starting weights and batch order.
pub struct Setup {
    pub train: Digits,
    pub test: Digits,
    pub init: Mlp,
    /// The training examples of every batch of every epoch, in order.
    pub batches: Vec<Vec<Vec<usize>>>,
}

impl Setup {
    pub fn epochs(&self) -> usize {
        self.batches.len()
    }

    /// Steps of one run from start to end.
    pub fn steps(&self) -> u64 {
        self.batches.iter().map(|epoch| epoch.len() as u64).sum()
    }

    /// The epoch after which the checkpoint is taken.
    pub fn midway(&self) -> usize {
        self.epochs() / 2
    }

    /// The loss of `model` on the whole training set.
    pub fn train_loss(&self, model: &Mlp) -> f32 {
        model.loss(self.train.images.view(), &self.train.labels)
    }

    /// Steps of the run plus those of the run resumed from the checkpoint.
    pub fn steps_with_resume(&self) -> u64 {
        self.steps() + self.batches[self.midway()..].iter().map(|e| e.len() as u64).sum::<u64>()
    }
}

/// What one rule's training produced.
pub struct Outcome {
    /// (step, loss on the whole training set) from step 0 to the end.
    pub curve: Vec<(u64, f32)>,
    pub train_loss: f32,
    pub test_accuracy: f32,
    pub steps: u64,
    /// Whether the run resumed from the mid-run checkpoint ended with the same parameters and
    /// optimizer state, bit for bit.
    pub resume_identical: bool,
    pub elapsed: Duration,
}

/// A rule in the comparison: its label, the rule, and optionally another rule for the
/// hidden layer's weight matrix (Muon's recipe: Muon for hidden matrices, AdamW for the rest).
pub struct Contestant {
    pub label: &'static str,
    pub rule: Rule,
    pub hidden_matrix: Option<Rule>,
}

impl Contestant {
    /// A contestant that trains every tensor with `rule`.
    pub fn new(label: &'static str, rule: impl Into<Rule>) -> Contestant {
        Contestant { label, rule: rule.into(), hidden_matrix: None }
    }

    /// The same, with `rule` for the hidden layer's weight matrix.
    pub fn with_hidden_matrix(mut self, rule: impl Into<Rule>) -> Contestant {
        self.hidden_matrix = Some(rule.into());
        self
    }

    /// The learning rates, as the table shows them.
    pub fn lr(&self) -> String {
        match self.hidden_matrix {
            Some(matrix) => format!("{} / {}", matrix.options().lr, self.rule.options().lr),
            None => self.rule.options().lr.to_string(),
        }
    }

    /// An optimizer for the network: the rule for the hidden layer (or the hidden matrix's
    /// rule for its weight), and the output layer in a group of its own whose learning rate is
    /// scaled by [`OUTPUT_LR_SCALE`].
    fn optimizer(&self) -> Result<Optimizer<Rule, f32>, Box<dyn Error>> {
        let mut output = self.rule;
        // A rule with one step size for the whole model (Prodigy) needs every group at one
        // rate, as prodigyopt does.
        if self.rule.reduction().is_none() {
            *output.lr_mut() *= OUTPUT_LR_SCALE;
        }
        let mut optimizer = Optimizer::new(self.rule)?;
        optimizer.add_group(OUTPUT_GROUP, output)?;
        optimizer.assign(OUTPUT_WEIGHT, OUTPUT_GROUP)?;
        optimizer.assign(OUTPUT_BIAS, OUTPUT_GROUP)?;
        if let Some(matrix) = self.hidden_matrix {
            optimizer.add_group(HIDDEN_MATRIX_GROUP, matrix)?;
            optimizer.assign(HIDDEN_WEIGHT, HIDDEN_MATRIX_GROUP)?;
        }
        Ok(optimizer)
    }

    /// Trains the whole run, checkpointing midway, then trains the second half again from the
    /// checkpoint in a fresh optimizer and compares the two ends; `tick` is called after every
    /// step.
    pub fn run(&self, setup: &Setup, tick: &dyn Fn()) -> Result<Outcome, Box<dyn Error>> {
        let start = Instant::now();
        let mut optimizer = self.optimizer()?;
        let mut model = setup.init.clone();
        let mut curve = vec![(0, setup.train_loss(&model))];
        let midway = setup.midway();
        run_epochs(&mut optimizer, &mut model, setup, 0..midway, Some(&mut curve), tick)?;

        // The checkpoint: the optimizer as JSON bytes, as it would be written to a file.
        let checkpoint = serde_json::to_vec(&optimizer)?;
        let model_at_checkpoint = model.clone();

        let second_half = midway..setup.epochs();
        run_epochs(&mut optimizer, &mut model, setup, second_half.clone(), Some(&mut curve), tick)?;
        let elapsed = start.elapsed();

        let mut resumed_optimizer: Optimizer<Rule, f32> = serde_json::from_slice(&checkpoint)?;
        let mut resumed_model = model_at_checkpoint;
        run_epochs(&mut resumed_optimizer, &mut resumed_model, setup, second_half, None, tick)?;

        let resume_identical = resumed_model == model && resumed_optimizer == optimizer;
        optimizer.eval(&mut model)?;
        Ok(Outcome {
            train_loss: setup.train_loss(&model),
            test_accuracy: model.accuracy(setup.test.images.view(), &setup.test.labels),
            steps: optimizer.step_count(HIDDEN_WEIGHT).unwrap_or(0),
            curve,
            resume_identical,
            elapsed,
        })
    }
}

/// Trains through `epochs`, appending the training loss to `curve`, if given, every
/// [`LOG_EVERY`] steps and after the last.
fn run_epochs(
    optimizer: &mut Optimizer<Rule, f32>,
    model: &mut Mlp,
    setup: &Setup,
    epochs: Range<usize>,
    mut curve: Option<&mut Vec<(u64, f32)>>,
    tick: &dyn Fn(),
) -> Result<(), Box<dyn Error>> {
    let train = &setup.train;
    let mut step: u64 = setup.batches[..epochs.start].iter().map(|e| e.len() as u64).sum();
    for epoch in &setup.batches[epochs] {
        for batch in epoch {
            let images = train.images.select(Axis(0), batch);
            let labels: Vec<usize> = batch.iter().map(|&i| train.labels[i]).collect();
            let gradient = model.gradient(images.view(), &labels); // loss.backward()
            optimizer.step_model(model, &gradient)?; // optimizer.step()
            step += 1;
            tick();
            if let Some(curve) = curve.as_deref_mut().filter(|_| step.is_multiple_of(LOG_EVERY)) {
                curve.push((step, evaluated_loss(optimizer, model, setup)?));
            }
        }
    }
    if let Some(curve) = curve.filter(|curve| curve.last().is_some_and(|&(at, _)| at != step)) {
        curve.push((step, evaluated_loss(optimizer, model, setup)?));
    }
    Ok(())
}

/// The training loss of `model` where the optimizer evaluates it: the schedule-free rules'
/// average `x`, the other rules' parameters as they are.
///
/// `schedulefree`'s users call `optimizer.eval()` before evaluating and `optimizer.train()`
/// after; that round trip moves `y` by a rounding error. Switching a copy instead leaves the
/// training run where it was, so the run resumed from the checkpoint, which measures nothing,
/// can end on the same bits.
fn evaluated_loss(
    optimizer: &mut Optimizer<Rule, f32>,
    model: &Mlp,
    setup: &Setup,
) -> Result<f32, Box<dyn Error>> {
    let mut evaluated = model.clone();
    optimizer.eval(&mut evaluated)?;
    let loss = setup.train_loss(&evaluated);
    optimizer.train(&mut evaluated)?;
    Ok(loss)
}
