//! One- and two-step values of every rule, worked out by hand in the comments.
//!
//! Inputs are chosen so that most intermediate values are exact in binary floating point;
//! where they are not, the expected value is written as the exact expression and compared
//! within a few ulps.

use approx::assert_relative_eq;
use ndarray::{Array0, arr0};
use ndarray_optim::{
    Adadelta, Adagrad, Adam, EpsPlacement, Momentum, Nesterov, Optimizer, RmsProp, Sgd, UpdateRule,
};

/// Steps a scalar parameter starting at 1.0 with the given gradients; returns its values.
fn run<R: UpdateRule>(rule: R, grads: &[f64]) -> Vec<f64> {
    let mut opt = Optimizer::new(rule).unwrap();
    let mut w: Array0<f64> = arr0(1.0);
    grads
        .iter()
        .map(|&g| {
            opt.step("w", &mut w, &arr0(g)).unwrap();
            w[()]
        })
        .collect()
}

#[test]
fn sgd() {
    // w = 1 - 0.5 * 0.5 = 0.75; w = 0.75 - 0.5 * (-1) = 1.25
    assert_eq!(run(Sgd { lr: 0.5, ..Sgd::default() }, &[0.5, -1.0]), [0.75, 1.25]);
}

#[test]
fn momentum() {
    // seed form, η = 0.5, γ = 0.5: v1 = 0.5 * 1 = 0.5, w = 0.5;
    // v2 = 0.5 * 0.5 + 0.5 * 1 = 0.75, w = -0.25
    assert_eq!(
        run(Momentum { lr: 0.5, momentum: 0.5, ..Momentum::default() }, &[1.0, 1.0]),
        [0.5, -0.25]
    );
}

#[test]
fn nesterov() {
    // look-ahead form: b1 = 1, w = 1 - 0.5 * (1 + 0.5 * 1) = 0.25;
    // b2 = 0.5 * 1 + 2 = 2.5, w = 0.25 - 0.5 * (2 + 0.5 * 2.5) = -1.375
    assert_eq!(
        run(Nesterov { lr: 0.5, momentum: 0.5, ..Nesterov::default() }, &[1.0, 2.0]),
        [0.25, -1.375]
    );
}

#[test]
fn adagrad_eps_inside() {
    // G1 = 9, w = 1 - 0.5 * 3 / √(9 + 7) = 0.625; G2 = 18, w = 0.625 - 0.5 * 3 / √25 = 0.325
    let w = run(
        Adagrad { lr: 0.5, eps: 7.0, eps_placement: EpsPlacement::Inside, ..Adagrad::default() },
        &[3.0, 3.0],
    );
    assert_eq!(w[0], 0.625);
    assert_relative_eq!(w[1], 0.325, max_relative = 1e-15);
}

#[test]
fn adagrad_eps_outside() {
    // G1 = 9, w = 1 - 0.5 * 3 / (√9 + 1) = 0.625; G2 = 25, w = 0.625 - 0.5 * 4 / (5 + 1)
    let w = run(
        Adagrad { lr: 0.5, eps: 1.0, eps_placement: EpsPlacement::Outside, ..Adagrad::default() },
        &[3.0, 4.0],
    );
    assert_eq!(w[0], 0.625);
    assert_relative_eq!(w[1], 0.625 - 1.0 / 3.0, max_relative = 1e-15);
}

#[test]
fn rmsprop() {
    // E1 = 0.25 * 4 = 1, w = 1 - 0.25 * 2 / 1 = 0.5; E2 = 0.75 * 1 + 0.25 * 16 = 4.75,
    // w = 0.5 - 0.25 * 4 / √4.75
    let rule = RmsProp {
        lr: 0.25,
        rho: 0.75,
        eps: 0.0,
        eps_placement: EpsPlacement::Inside,
        ..RmsProp::default()
    };
    let w = run(rule, &[2.0, 4.0]);
    assert_eq!(w[0], 0.5);
    assert_relative_eq!(w[1], 0.5 - 1.0 / 4.75f64.sqrt(), max_relative = 1e-15);
    // Outside, ε = 1: E1 = 1, w = 1 - 0.25 * 2 / (1 + 1) = 0.75
    let rule = RmsProp {
        lr: 0.25,
        rho: 0.75,
        eps: 1.0,
        eps_placement: EpsPlacement::Outside,
        ..RmsProp::default()
    };
    assert_eq!(run(rule, &[2.0])[0], 0.75);
}

#[test]
fn adadelta() {
    // ρ = 0.5, ε = 1, η = 1.
    // E[g²]1 = 0.5 * 9 = 4.5; Δ1 = √(0 + 1) / √5.5 * 3; E[Δ²]1 = 0.5 * 9 / 5.5 = 9/11
    // E[g²]2 = 2.25 + 0.5 * 1 = 2.75; Δ2 = √(9/11 + 1) / √3.75 * 1
    let w = run(Adadelta { lr: 1.0, rho: 0.5, eps: 1.0, ..Adadelta::default() }, &[3.0, 1.0]);
    let w1 = 1.0 - 3.0 / 5.5f64.sqrt();
    let w2 = w1 - (9.0 / 11.0 + 1.0f64).sqrt() / 3.75f64.sqrt();
    assert_relative_eq!(w[0], w1, max_relative = 1e-15);
    assert_relative_eq!(w[1], w2, max_relative = 1e-15);
    // η scales the step only: η = 0.5 moves half as far on the first step.
    let half = run(Adadelta { lr: 0.5, rho: 0.5, eps: 1.0, ..Adadelta::default() }, &[3.0]);
    assert_relative_eq!(half[0], 1.0 - 1.5 / 5.5f64.sqrt(), max_relative = 1e-15);
}

#[test]
fn adam() {
    // With a constant gradient m̂ = g and v̂ = g² at every step, so with ε = 0 each step moves
    // the parameter by exactly η against the gradient's sign.
    // (The bias corrections 1 − 0.9ᵗ and 1 − 0.999ᵗ are not exact in binary: a few ulps.)
    let w = run(Adam { lr: 0.125, eps: 0.0, ..Adam::default() }, &[5.0, 5.0]);
    assert_relative_eq!(w[0], 0.875, max_relative = 1e-14);
    assert_relative_eq!(w[1], 0.75, max_relative = 1e-14);
    // β1 = 0.5, β2 = 0.75, g = 2 then -2, ε = 0:
    // m1 = 1, v1 = 1, m̂ = 2, v̂ = 4 → w = 1 - 0.125 * 2 / 2 = 0.875
    // m2 = 0.5 - 1 = -0.5, v2 = 0.75 + 1 = 1.75; m̂ = -0.5 / 0.75, v̂ = 1.75 / 0.4375 = 4
    // → w = 0.875 + 0.125 * (2/3) / 2
    let rule = Adam { lr: 0.125, beta1: 0.5, beta2: 0.75, eps: 0.0, ..Adam::default() };
    let w = run(rule, &[2.0, -2.0]);
    assert_relative_eq!(w[0], 0.875, max_relative = 1e-15);
    assert_relative_eq!(w[1], 0.875 + 0.125 / 3.0, max_relative = 1e-15);
}
