//! Training one contestant: the loop, the mid-run checkpoint and the resumed run.

use std::error::Error;
use std::ops::Range;
use std::time::{Duration, Instant};

use ndarray::Axis;
use ndarray_optim::{
    DEFAULT_GROUP, Lbfgs, LbfgsOptions, Optimizer, Rule, StatePrecision, UpdateRule,
};

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
    /// Optimizer steps, or for L-BFGS evaluations of the loss on the whole training set.
    pub steps: u64,
    /// Whether the run resumed from the mid-run checkpoint ended with the same parameters and
    /// optimizer state, bit for bit.
    pub resume_identical: bool,
    pub elapsed: Duration,
}

/// How a contestant trains.
enum Method {
    /// Mini-batch steps of `rule`, and optionally of another rule for the hidden layer's
    /// weight matrix (Muon's recipe: Muon for hidden matrices, AdamW for the rest).
    /// The state is kept in `state` precision.
    MiniBatch { rule: Rule, hidden_matrix: Option<Rule>, state: StatePrecision },
    /// L-BFGS on the whole training set, one `step` (up to `max_iter` iterations) per epoch.
    FullBatch(LbfgsOptions),
}

/// A contestant in the comparison: its label and how it trains.
pub struct Contestant {
    pub label: &'static str,
    method: Method,
}

impl Contestant {
    /// A contestant that trains every tensor with `rule`.
    pub fn new(label: &'static str, rule: impl Into<Rule>) -> Contestant {
        let (rule, hidden_matrix, state) = (rule.into(), None, StatePrecision::Full);
        Contestant { label, method: Method::MiniBatch { rule, hidden_matrix, state } }
    }

    /// A contestant that trains with L-BFGS on the whole training set.
    pub fn full_batch(label: &'static str, options: LbfgsOptions) -> Contestant {
        Contestant { label, method: Method::FullBatch(options) }
    }

    /// The same, with `rule` for the hidden layer's weight matrix.
    pub fn with_hidden_matrix(mut self, rule: impl Into<Rule>) -> Contestant {
        if let Method::MiniBatch { hidden_matrix, .. } = &mut self.method {
            *hidden_matrix = Some(rule.into());
        }
        self
    }

    /// The same, with the optimizer's state kept in `precision`.
    pub fn with_state(mut self, precision: StatePrecision) -> Contestant {
        if let Method::MiniBatch { state, .. } = &mut self.method {
            *state = precision;
        }
        self
    }

    /// The learning rates, as the table shows them.
    pub fn lr(&self) -> String {
        match &self.method {
            Method::MiniBatch { rule, hidden_matrix: Some(matrix), .. } => {
                format!("{} / {}", matrix.options().lr, rule.options().lr)
            }
            Method::MiniBatch { rule, hidden_matrix: None, .. } => rule.options().lr.to_string(),
            Method::FullBatch(options) => options.lr.to_string(),
        }
    }

    /// Trains the whole run, checkpointing midway, then trains the second half again from the
    /// checkpoint in a fresh optimizer and compares the two ends; `tick` is called after every
    /// step.
    pub fn run(&self, setup: &Setup, tick: &dyn Fn()) -> Result<Outcome, Box<dyn Error>> {
        match &self.method {
            Method::MiniBatch { rule, hidden_matrix, state } => {
                run_mini_batch(optimizer(*rule, *hidden_matrix, *state)?, setup, tick)
            }
            Method::FullBatch(options) => run_full_batch(*options, setup, tick),
        }
    }
}

/// An optimizer for the network: `rule` for the hidden layer (or `hidden_matrix` for its
/// weight), and the output layer in a group of its own whose learning rate is scaled by
/// [`OUTPUT_LR_SCALE`]; every group keeps its state in `state` precision.
fn optimizer(
    rule: Rule,
    hidden_matrix: Option<Rule>,
    state: StatePrecision,
) -> Result<Optimizer<Rule, f32>, Box<dyn Error>> {
    let mut output = rule;
    // A rule with one step size for the whole model (Prodigy) needs every group at one rate,
    // as prodigyopt does.
    if rule.reduction().is_none() {
        *output.lr_mut() *= OUTPUT_LR_SCALE;
    }
    let mut optimizer = Optimizer::new(rule)?;
    optimizer.add_group(OUTPUT_GROUP, output)?;
    optimizer.assign(OUTPUT_WEIGHT, OUTPUT_GROUP)?;
    optimizer.assign(OUTPUT_BIAS, OUTPUT_GROUP)?;
    if let Some(matrix) = hidden_matrix {
        optimizer.add_group(HIDDEN_MATRIX_GROUP, matrix)?;
        optimizer.assign(HIDDEN_WEIGHT, HIDDEN_MATRIX_GROUP)?;
    }
    for group in [DEFAULT_GROUP, OUTPUT_GROUP] {
        optimizer.set_state_precision(group, state)?;
    }
    Ok(optimizer)
}

/// [`Contestant::run`] with mini-batch steps of `optimizer`.
fn run_mini_batch(
    mut optimizer: Optimizer<Rule, f32>,
    setup: &Setup,
    tick: &dyn Fn(),
) -> Result<Outcome, Box<dyn Error>> {
    let start = Instant::now();
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

/// [`Contestant::run`] with L-BFGS on the whole training set, one step per epoch; the curve
/// and the steps count evaluations of the loss and gradient on the whole set.
fn run_full_batch(
    options: LbfgsOptions,
    setup: &Setup,
    tick: &dyn Fn(),
) -> Result<Outcome, Box<dyn Error>> {
    let start = Instant::now();
    let mut lbfgs = Lbfgs::<f32>::new(options)?;
    let mut model = setup.init.clone();
    let mut curve = vec![(0, setup.train_loss(&model))];
    let midway = setup.midway();
    full_batch_epochs(&mut lbfgs, &mut model, setup, midway, Some(&mut curve), tick)?;

    let checkpoint = serde_json::to_vec(&lbfgs)?;
    let model_at_checkpoint = model.clone();

    let second_half = setup.epochs() - midway;
    full_batch_epochs(&mut lbfgs, &mut model, setup, second_half, Some(&mut curve), tick)?;
    let elapsed = start.elapsed();

    let mut resumed: Lbfgs<f32> = serde_json::from_slice(&checkpoint)?;
    let mut resumed_model = model_at_checkpoint;
    full_batch_epochs(&mut resumed, &mut resumed_model, setup, second_half, None, tick)?;

    let resume_identical =
        resumed_model == model && serde_json::to_vec(&resumed)? == serde_json::to_vec(&lbfgs)?;
    Ok(Outcome {
        train_loss: setup.train_loss(&model),
        test_accuracy: model.accuracy(setup.test.images.view(), &setup.test.labels),
        steps: lbfgs.func_evals(),
        curve,
        resume_identical,
        elapsed,
    })
}

/// Takes `epochs` L-BFGS steps on the whole training set, appending the loss after each to
/// `curve`, if given, at the count of evaluations so far.
fn full_batch_epochs(
    lbfgs: &mut Lbfgs<f32>,
    model: &mut Mlp,
    setup: &Setup,
    epochs: usize,
    mut curve: Option<&mut Vec<(u64, f32)>>,
    tick: &dyn Fn(),
) -> Result<(), Box<dyn Error>> {
    let (images, labels) = (setup.train.images.view(), setup.train.labels.as_slice());
    let mut grads = model.clone();
    for _ in 0..epochs {
        // The closure is PyTorch's: the loss at `model`, its gradient written into `grads`.
        lbfgs.step(model, &mut grads, |model, grads| {
            *grads = model.gradient(images, labels);
            Ok::<_, ndarray_optim::Error>(model.loss(images, labels))
        })?;
        tick();
        if let Some(curve) = curve.as_deref_mut() {
            curve.push((lbfgs.func_evals(), setup.train_loss(model)));
        }
    }
    Ok(())
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
