//! Fits a small least-squares problem with every rule of the crate and prints the final
//! losses: `cargo run --release --example quickstart`.

use ndarray::{Array1, Array2, Axis};
use ndarray_optim::{
    Adadelta, Adagrad, Adam, EpsPlacement, Momentum, Nesterov, Optimizer, RmsProp, Sgd, UpdateRule,
};

/// A linear model y = W x + b fitted to a fixed linear target on fixed inputs.
struct Problem {
    inputs: Array2<f64>,
    targets: Array2<f64>,
}

impl Problem {
    fn new() -> Self {
        // Deterministic inputs and a target map, so every run prints the same table.
        let inputs =
            Array2::from_shape_fn((64, 5), |(i, j)| ((i * 7 + j * 3) % 11) as f64 / 5.0 - 1.0);
        let truth = Array2::from_shape_fn((3, 5), |(i, j)| (i as f64 - 1.0) * 0.5 + j as f64 * 0.1);
        let targets = inputs.dot(&truth.t());
        Problem { inputs, targets }
    }

    /// Mean squared error and its gradients with respect to W and b.
    fn loss_and_grads(&self, w: &Array2<f64>, b: &Array1<f64>) -> (f64, Array2<f64>, Array1<f64>) {
        let n = self.inputs.nrows() as f64;
        let residual = self.inputs.dot(&w.t()) + b - &self.targets;
        let loss = residual.mapv(|r| r * r).sum() / n;
        let grad_w = residual.t().dot(&self.inputs) * (2.0 / n);
        let grad_b = residual.sum_axis(Axis(0)) * (2.0 / n);
        (loss, grad_w, grad_b)
    }
}

/// Trains with `rule` for `steps` steps; the bias gets its own group with a larger rate.
fn train<R: UpdateRule>(problem: &Problem, rule: R, steps: usize) -> f64 {
    let mut bias_rule = rule.clone();
    *bias_rule.lr_mut() *= 2.0;
    let mut opt = Optimizer::new(rule).expect("valid hyperparameters");
    opt.add_group("bias", bias_rule).expect("a new group");
    opt.assign("b", "bias").expect("the group exists");
    let mut w = Array2::zeros((3, 5));
    let mut b = Array1::zeros(3);
    for _ in 0..steps {
        let (_, grad_w, grad_b) = problem.loss_and_grads(&w, &b);
        opt.step("w", &mut w, &grad_w).expect("shapes match");
        opt.step("b", &mut b, &grad_b).expect("shapes match");
    }
    problem.loss_and_grads(&w, &b).0
}

fn main() {
    let problem = Problem::new();
    let steps = 500;
    let initial = problem.loss_and_grads(&Array2::zeros((3, 5)), &Array1::zeros(3)).0;
    let inside = EpsPlacement::Inside;
    let results = [
        ("sgd", train(&problem, Sgd { lr: 0.05, ..Sgd::default() }, steps)),
        ("momentum", train(&problem, Momentum { lr: 0.02, ..Momentum::default() }, steps)),
        ("nesterov", train(&problem, Nesterov { lr: 0.02, ..Nesterov::default() }, steps)),
        (
            "adagrad",
            train(
                &problem,
                Adagrad { lr: 0.5, eps_placement: inside, ..Adagrad::default() },
                steps,
            ),
        ),
        ("adadelta", train(&problem, Adadelta::default(), steps)),
        ("rmsprop", train(&problem, RmsProp { lr: 0.01, ..RmsProp::default() }, steps)),
        ("adam", train(&problem, Adam { lr: 0.05, ..Adam::default() }, steps)),
    ];
    println!("least squares, 64 samples, W: 3x5, b: 3; initial loss {initial:.4}; {steps} steps\n");
    println!("{:<10} {:>14}", "rule", "final loss");
    for (name, loss) in results {
        println!("{name:<10} {loss:>14.3e}");
    }
}
