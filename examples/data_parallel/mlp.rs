//! A perceptron with tanh hidden layers whose parameters live in one flat buffer, in the
//! flat order of a [`ShardPlan`], and whose backward pass writes its gradients into another.

use std::ops::Range;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};
use ndarray_optim::ShardPlan;

/// Named tensor shapes, as a [`ShardPlan`] takes them.
pub type Tensors = Vec<(String, Vec<usize>)>;

/// The names and shapes of the tensors of a perceptron with layer widths `widths` (input
/// first): `layer{i}.weight` (output × input) and `layer{i}.bias`.
pub fn tensors(widths: &[usize]) -> Tensors {
    let mut tensors = Vec::new();
    for (layer, pair) in widths.windows(2).enumerate() {
        tensors.push((format!("layer{layer}.weight"), vec![pair[1], pair[0]]));
        tensors.push((format!("layer{layer}.bias"), vec![pair[1]]));
    }
    tensors
}

/// Where one layer's tensors are in the flat buffers.
struct Layer {
    inputs: usize,
    outputs: usize,
    weight: Range<usize>,
    bias: Range<usize>,
}

/// The perceptron's layout in a plan's flat order.
pub struct Mlp {
    layers: Vec<Layer>,
    len: usize,
}

/// Fills `values` with a fixed sequence in ±`scale`, different for every `seed`.
pub fn pseudo_random(values: &mut [f64], seed: u64, scale: f64) {
    for (i, value) in values.iter_mut().enumerate() {
        *value = ((i as f64 * 0.618_034 + seed as f64 * 0.414_214) * 12.9898).sin() * scale;
    }
}

impl Mlp {
    /// The layout of the perceptron `widths` in `plan`, which must list its [`tensors`].
    pub fn new(widths: &[usize], plan: &ShardPlan) -> Result<Self, String> {
        // Name order is not layer order (`layer10` sorts before `layer2`): look names up.
        let range = |name: &str| {
            plan.tensor(name).map(|tensor| tensor.range).ok_or(format!("the plan lacks `{name}`"))
        };
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(layer, pair)| {
                Ok(Layer {
                    inputs: pair[0],
                    outputs: pair[1],
                    weight: range(&format!("layer{layer}.weight"))?,
                    bias: range(&format!("layer{layer}.bias"))?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Mlp { layers, len: plan.len() })
    }

    /// Fresh parameters: weights uniform-like in ±√(3 / fan-in), small biases.
    pub fn init(&self, seed: u64) -> Vec<f64> {
        let mut params = vec![0.0; self.len];
        for (index, layer) in self.layers.iter().enumerate() {
            let seed = seed + 2 * index as u64;
            let scale = (3.0 / layer.inputs as f64).sqrt();
            pseudo_random(&mut params[layer.weight.clone()], seed, scale);
            pseudo_random(&mut params[layer.bias.clone()], seed + 1, 0.1);
        }
        params
    }

    fn weight<'a>(&self, layer: &Layer, params: &'a [f64]) -> ArrayView2<'a, f64> {
        let shape = (layer.outputs, layer.inputs);
        ArrayView2::from_shape(shape, &params[layer.weight.clone()]).expect("planned shape")
    }

    /// The activations of every layer for the rows of `x`, the input first.
    pub fn forward(&self, params: &[f64], x: ArrayView2<'_, f64>) -> Vec<Array2<f64>> {
        let mut activations = vec![x.to_owned()];
        for (index, layer) in self.layers.iter().enumerate() {
            let bias = ArrayView1::from(&params[layer.bias.clone()]);
            let z = activations[index].dot(&self.weight(layer, params).t()) + bias;
            let hidden = index + 1 < self.layers.len();
            activations.push(if hidden { z.mapv(f64::tanh) } else { z });
        }
        activations
    }

    /// Writes the gradients of ½ Σ‖y − t‖² / `total` over the rows of `x` into `grads` (added
    /// to what it holds if `accumulate`), and returns that loss.
    pub fn gradients(
        &self,
        params: &[f64],
        x: ArrayView2<'_, f64>,
        target: ArrayView2<'_, f64>,
        total: usize,
        grads: &mut [f64],
        accumulate: bool,
    ) -> f64 {
        let activations = self.forward(params, x);
        let mut delta = (&activations[self.layers.len()] - &target) / total as f64;
        let loss = 0.5 * total as f64 * delta.iter().map(|r| r * r).sum::<f64>();
        let beta = if accumulate { 1.0 } else { 0.0 };
        for (index, layer) in self.layers.iter().enumerate().rev() {
            let shape = (layer.outputs, layer.inputs);
            let mut weight = ArrayViewMut2::from_shape(shape, &mut grads[layer.weight.clone()])
                .expect("planned shape");
            general_mat_mul(1.0, &delta.t(), &activations[index], beta, &mut weight);
            let mut bias = ArrayViewMut1::from(&mut grads[layer.bias.clone()]);
            let sum = delta.sum_axis(Axis(0));
            if accumulate {
                bias += &sum;
            } else {
                bias.assign(&sum);
            }
            if index > 0 {
                let h = &activations[index];
                delta = delta.dot(&self.weight(layer, params)) * h.mapv(|h| 1.0 - h * h);
            }
        }
        loss
    }
}
