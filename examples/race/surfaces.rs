//! The test surfaces the rules race on: classic two-dimensional functions with a hard part
//! (a flat valley, a curved ravine, a saddle point).

use std::ops::Range;

/// Where the contour lines are drawn.
pub enum Levels {
    /// `count` levels spaced evenly in log scale from `low` to `high`: for surfaces whose
    /// interesting part is orders of magnitude below their rim.
    Log { low: f64, high: f64, count: usize },
    /// Levels from `low` to `high` every `every`.
    Linear { low: f64, high: f64, every: f64 },
}

impl Levels {
    pub fn values(&self) -> Vec<f64> {
        match *self {
            Levels::Log { low, high, count } => {
                let ratio = (high / low).ln() / (count - 1) as f64;
                (0..count).map(|i| low * (ratio * i as f64).exp()).collect()
            }
            Levels::Linear { low, high, every } => {
                let count = ((high - low) / every).round() as usize;
                (0..=count).map(|i| low + every * i as f64).collect()
            }
        }
    }
}

/// The learning rates a surface suits, by kind of rule: rules whose step is the gradient
/// times the learning rate, and rules whose step is normalised by the gradient's size, so
/// that the learning rate is about the length of a step.
pub struct LearningRates {
    pub gradient_scaled: f64,
    pub normalised: f64,
}

/// A surface, the start of the race on it and the window it is drawn in.
pub struct Surface {
    /// The file name: race-NAME.svg.
    pub name: &'static str,
    pub title: &'static str,
    pub value: fn(f64, f64) -> f64,
    pub gradient: fn(f64, f64) -> [f64; 2],
    pub start: [f64; 2],
    /// The global minimum, if the surface has one.
    pub minimum: Option<[f64; 2]>,
    pub x: Range<f64>,
    pub y: Range<f64>,
    pub steps: usize,
    pub levels: Levels,
    pub lr: LearningRates,
}

impl Surface {
    pub fn contains(&self, [x, y]: [f64; 2]) -> bool {
        self.x.contains(&x) && self.y.contains(&y)
    }
}

/// Beale's function: a flat valley that bends towards the minimum f(3, 0.5) = 0, walled by
/// steep sides.
fn beale(x: f64, y: f64) -> f64 {
    (1.5 - x + x * y).powi(2) + (2.25 - x + x * y * y).powi(2) + (2.625 - x + x * y.powi(3)).powi(2)
}

fn beale_gradient(x: f64, y: f64) -> [f64; 2] {
    let a = 1.5 - x + x * y;
    let b = 2.25 - x + x * y * y;
    let c = 2.625 - x + x * y.powi(3);
    [
        2.0 * (a * (y - 1.0) + b * (y * y - 1.0) + c * (y.powi(3) - 1.0)),
        2.0 * x * (a + 2.0 * y * b + 3.0 * y * y * c),
    ]
}

/// Rosenbrock's function: a narrow curved ravine whose floor falls slowly to the minimum
/// f(1, 1) = 0.
fn rosenbrock(x: f64, y: f64) -> f64 {
    (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2)
}

fn rosenbrock_gradient(x: f64, y: f64) -> [f64; 2] {
    [-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)]
}

/// A saddle point at the origin: a minimum along x, a maximum along y.
fn saddle(x: f64, y: f64) -> f64 {
    x * x - y * y
}

fn saddle_gradient(x: f64, y: f64) -> [f64; 2] {
    [2.0 * x, -2.0 * y]
}

pub fn all() -> Vec<Surface> {
    vec![
        Surface {
            name: "beale",
            title: "Beale's function",
            value: beale,
            gradient: beale_gradient,
            start: [0.7, 1.4],
            minimum: Some([3.0, 0.5]),
            x: -1.0..4.5,
            y: -1.5..2.5,
            steps: 300,
            levels: Levels::Log { low: 0.1, high: 1e4, count: 26 },
            lr: LearningRates { gradient_scaled: 0.003, normalised: 0.05 },
        },
        Surface {
            name: "rosenbrock",
            title: "Rosenbrock's function",
            value: rosenbrock,
            gradient: rosenbrock_gradient,
            start: [-0.5, 2.5],
            minimum: Some([1.0, 1.0]),
            x: -2.0..2.0,
            y: -1.0..3.0,
            steps: 1500,
            levels: Levels::Log { low: 0.1, high: 3e3, count: 22 },
            lr: LearningRates { gradient_scaled: 5e-4, normalised: 0.05 },
        },
        Surface {
            name: "saddle",
            title: "A saddle point, f = x² − y²",
            value: saddle,
            gradient: saddle_gradient,
            start: [1.0, 1e-3],
            minimum: None,
            x: -1.5..1.5,
            y: -1.5..1.5,
            steps: 300,
            levels: Levels::Linear { low: -2.0, high: 2.0, every: 0.25 },
            lr: LearningRates { gradient_scaled: 0.01, normalised: 0.01 },
        },
    ]
}
