//! A small multilayer perceptron, written out with ndarray: 64 pixels → tanh hidden layer →
//! softmax over the 10 digits, trained on mean cross-entropy with gradients by hand.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use ndarray_optim::Parameters;
use ndarray_rand::RandomExt;
use ndarray_rand::rand::Rng;
use ndarray_rand::rand_distr::Uniform;

/// A dense layer, `x · weight + bias`.
#[derive(Clone, Debug, PartialEq, Parameters)]
pub struct Linear {
    /// (inputs, outputs)
    pub weight: Array2<f32>,
    pub bias: Array1<f32>,
}

/// The network's parameters, which the optimizer knows by their paths, as PyTorch names them:
/// `hidden.weight`, `hidden.bias`, `output.weight`, `output.bias`. A gradient has the same
/// shapes, so it is an `Mlp` too.
#[derive(Clone, Debug, PartialEq, Parameters)]
pub struct Mlp {
    pub hidden: Linear,
    pub output: Linear,
}

/// Glorot-uniform weights for a layer from `inputs` to `outputs` units: variance
/// 2 / (inputs + outputs), which keeps tanh units out of saturation at the start.
fn glorot(inputs: usize, outputs: usize, rng: &mut impl Rng) -> Array2<f32> {
    let limit = (6.0 / (inputs + outputs) as f32).sqrt();
    let uniform = Uniform::new_inclusive(-limit, limit).expect("the limit is finite and > 0");
    Array2::random_using((inputs, outputs), uniform, rng)
}

impl Linear {
    /// A fresh layer: Glorot-uniform weights, zero biases.
    fn new(inputs: usize, outputs: usize, rng: &mut impl Rng) -> Linear {
        Linear { weight: glorot(inputs, outputs, rng), bias: Array1::zeros(outputs) }
    }
}

impl Mlp {
    /// A fresh network: random weights, zero biases.
    pub fn new(inputs: usize, hidden: usize, classes: usize, rng: &mut impl Rng) -> Mlp {
        // Fields are evaluated in the order written: the hidden weights are drawn first.
        Mlp { hidden: Linear::new(inputs, hidden, rng), output: Linear::new(hidden, classes, rng) }
    }

    /// Hidden activations and class probabilities, one row per image.
    fn forward(&self, images: ArrayView2<'_, f32>) -> (Array2<f32>, Array2<f32>) {
        let hidden = (images.dot(&self.hidden.weight) + &self.hidden.bias).tanh();
        let mut probs = hidden.dot(&self.output.weight) + &self.output.bias;
        for mut row in probs.rows_mut() {
            // Shifting by the row's maximum keeps exp from overflowing; softmax is unchanged.
            let max = row.fold(f32::NEG_INFINITY, |m, &z| m.max(z));
            row.mapv_inplace(|z| (z - max).exp());
            let sum = row.sum();
            row /= sum;
        }
        (hidden, probs)
    }

    /// Mean cross-entropy of `probs` against `labels`.
    fn cross_entropy(probs: &Array2<f32>, labels: &[usize]) -> f32 {
        let total: f32 = labels.iter().enumerate().map(|(i, &label)| -probs[[i, label]].ln()).sum();
        total / labels.len() as f32
    }

    /// Mean cross-entropy on a set of images.
    pub fn loss(&self, images: ArrayView2<'_, f32>, labels: &[usize]) -> f32 {
        Self::cross_entropy(&self.forward(images).1, labels)
    }

    /// The fraction of images whose most probable class is their label.
    pub fn accuracy(&self, images: ArrayView2<'_, f32>, labels: &[usize]) -> f32 {
        let (_, probs) = self.forward(images);
        let correct = probs
            .rows()
            .into_iter()
            .zip(labels)
            .filter(|(row, label)| {
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
                best.map(|(class, _)| class) == Some(**label)
            })
            .count();
        correct as f32 / labels.len() as f32
    }

    /// The gradient of the loss on a batch with respect to every parameter.
    ///
    /// With p the softmax output and y the one-hot labels of n images, the gradient at the
    /// logits is (p − y) / n; it flows back through the output layer, then through tanh,
    /// whose derivative is 1 − tanh².
    pub fn gradient(&self, images: ArrayView2<'_, f32>, labels: &[usize]) -> Mlp {
        let (hidden, probs) = self.forward(images);
        let mut delta_out = probs;
        for (i, &label) in labels.iter().enumerate() {
            delta_out[[i, label]] -= 1.0;
        }
        delta_out /= labels.len() as f32;
        let delta_hidden = delta_out.dot(&self.output.weight.t()) * hidden.mapv(|h| 1.0 - h * h);
        Mlp {
            hidden: Linear {
                weight: images.t().dot(&delta_hidden),
                bias: delta_hidden.sum_axis(Axis(0)),
            },
            output: Linear {
                weight: hidden.t().dot(&delta_out),
                bias: delta_out.sum_axis(Axis(0)),
            },
        }
    }
}
