//! Fitting a damped oscillator `y(t) = A e^{-γt} cos(ωt + φ)` to noiseless samples, full
//! batch: L-BFGS with a strong-Wolfe line search against Adam, counting loss and gradient
//! evaluations. The samples come from known parameters, so each method's error is exact.
//!
//! ```text
//! cargo run --release --example curve_fit                # 300 steps each
//! cargo run --release --example curve_fit -- --steps 40  # a short run
//! ```

use ndarray::{Array0, Array1, arr0};
use ndarray_optim::{Adam, Error, Lbfgs, LbfgsOptions, LineSearch, Optimizer, Parameters};

/// The curve's parameters, each a named 0-D tensor.
#[derive(Parameters, Clone, Debug)]
struct Oscillator {
    amplitude: Array0<f64>,
    decay: Array0<f64>,
    frequency: Array0<f64>,
    phase: Array0<f64>,
}

impl Oscillator {
    fn new(amplitude: f64, decay: f64, frequency: f64, phase: f64) -> Self {
        Oscillator {
            amplitude: arr0(amplitude),
            decay: arr0(decay),
            frequency: arr0(frequency),
            phase: arr0(phase),
        }
    }

    fn values(&self) -> [f64; 4] {
        [self.amplitude[()], self.decay[()], self.frequency[()], self.phase[()]]
    }

    fn at(&self, t: f64) -> f64 {
        let [a, g, w, p] = self.values();
        a * (-g * t).exp() * (w * t + p).cos()
    }
}

/// Half the mean squared residual over the samples, and its gradient into `grads`.
fn loss(model: &Oscillator, grads: &mut Oscillator, times: &Array1<f64>, ys: &Array1<f64>) -> f64 {
    let [a, g, w, p] = model.values();
    let mut sums = [0.0; 4];
    let mut total = 0.0;
    for (&t, &y) in times.iter().zip(ys) {
        let (envelope, angle) = ((-g * t).exp(), w * t + p);
        let r = a * envelope * angle.cos() - y;
        total += r * r;
        sums[0] += r * envelope * angle.cos();
        sums[1] += r * -t * a * envelope * angle.cos();
        sums[2] += r * -t * a * envelope * angle.sin();
        sums[3] += r * -a * envelope * angle.sin();
    }
    let n = times.len() as f64;
    for (grad, sum) in
        [&mut grads.amplitude, &mut grads.decay, &mut grads.frequency, &mut grads.phase]
            .into_iter()
            .zip(sums)
    {
        grad.fill(sum / n);
    }
    total / (2.0 * n)
}

struct Outcome {
    method: &'static str,
    steps: usize,
    evaluations: u64,
    loss: f64,
    error: f64,
}

fn error(model: &Oscillator, truth: &Oscillator) -> f64 {
    model.values().iter().zip(truth.values()).map(|(x, t)| (x - t).abs()).fold(0.0, f64::max)
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps = match args.as_slice() {
        [] => 300,
        [flag, n] if flag == "--steps" => n.parse().map_err(|_| ()).unwrap_or_else(|()| {
            eprintln!("error: --steps takes a count");
            std::process::exit(2)
        }),
        _ => {
            eprintln!("usage: curve_fit [--steps N]");
            std::process::exit(2)
        }
    };
    let truth = Oscillator::new(1.5, 0.3, 2.0, 0.5);
    let times = Array1::linspace(0.0, 10.0, 200);
    let ys = times.mapv(|t| truth.at(t));
    let start = Oscillator::new(1.0, 0.1, 1.8, 0.0);
    let mut outcomes = Vec::new();

    // L-BFGS: each step runs up to 20 iterations and 25 evaluations, and returns at once
    // when the gradient is below tolerance_grad.
    let options =
        LbfgsOptions { line_search_fn: Some(LineSearch::StrongWolfe), ..Default::default() };
    let mut lbfgs = Lbfgs::new(options)?;
    let (mut model, mut grads) = (start.clone(), start.clone());
    for _ in 0..steps {
        lbfgs.step(&mut model, &mut grads, |m, g| Ok::<_, Error>(loss(m, g, &times, &ys)))?;
    }
    let final_loss = loss(&model, &mut grads, &times, &ys);
    outcomes.push(Outcome {
        method: "L-BFGS (strong Wolfe)",
        steps,
        evaluations: lbfgs.func_evals(),
        loss: final_loss,
        error: error(&model, &truth),
    });

    // Adam: one evaluation per step.
    let mut adam = Optimizer::new(Adam { lr: 0.01, ..Adam::default() })?;
    let (mut model, mut grads) = (start.clone(), start.clone());
    for _ in 0..steps {
        loss(&model, &mut grads, &times, &ys);
        adam.step_model(&mut model, &grads)?;
    }
    let final_loss = loss(&model, &mut grads, &times, &ys);
    outcomes.push(Outcome {
        method: "Adam (lr 0.01)",
        steps,
        evaluations: steps as u64,
        loss: final_loss,
        error: error(&model, &truth),
    });

    println!("damped oscillator, 200 noiseless samples, from (A, γ, ω, φ) = (1, 0.1, 1.8, 0)");
    println!(
        "{:<22} {:>6} {:>12} {:>12} {:>16}",
        "method", "steps", "evaluations", "final loss", "max |θ − θ*|"
    );
    for o in &outcomes {
        println!(
            "{:<22} {:>6} {:>12} {:>12.3e} {:>16.3e}",
            o.method, o.steps, o.evaluations, o.loss, o.error
        );
    }
    Ok(())
}
