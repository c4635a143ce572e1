//! What several test modules share: the list of rules under test and deterministic data.

use ndarray::{ArrayD, IxDyn};
use ndarray_optim::{
    Adadelta, Adafactor, Adagrad, Adam, AdamW, Adamax, Asgd, Element, EpsPlacement, Lamb, Lion,
    Momentum, NAdam, Nesterov, RAdam, RmsProp, Rprop, ScheduleFreeAdamW, ScheduleFreeSgd, Sgd,
    UpdateRule,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A check to run for one rule and element type.
pub trait RuleCheck {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned;
}

/// Runs `check` for every rule (both ε placements where a rule has them), each also with its
/// PyTorch options on (weight decay, maximize and every option that adds state), in f32 and
/// f64.
pub fn for_each_rule(check: &mut impl RuleCheck) {
    fn rules<A: Element + Serialize + DeserializeOwned>(check: &mut impl RuleCheck) {
        let (weight_decay, maximize) = (0.05, true);
        check.check::<_, A>(Sgd { lr: 0.05, ..Sgd::default() });
        check.check::<_, A>(Sgd { lr: 0.05, weight_decay, maximize });
        check.check::<_, A>(Momentum { lr: 0.05, momentum: 0.9, ..Momentum::default() });
        check.check::<_, A>(Momentum {
            lr: 0.05,
            momentum: 0.9,
            dampening: 0.3,
            weight_decay,
            maximize,
        });
        check.check::<_, A>(Nesterov { lr: 0.05, momentum: 0.8, ..Nesterov::default() });
        check.check::<_, A>(Nesterov { lr: 0.05, momentum: 0.8, weight_decay, maximize });
        for eps_placement in [EpsPlacement::Inside, EpsPlacement::Outside] {
            check.check::<_, A>(Adagrad {
                lr: 0.1,
                eps: 1e-8,
                eps_placement,
                ..Adagrad::default()
            });
            let rmsprop =
                RmsProp { lr: 0.01, rho: 0.9, eps: 1e-8, eps_placement, ..RmsProp::default() };
            check.check::<_, A>(rmsprop);
            check.check::<_, A>(RmsProp { momentum: 0.5, ..rmsprop });
            check.check::<_, A>(RmsProp { centered: true, ..rmsprop });
            check.check::<_, A>(RmsProp {
                momentum: 0.5,
                centered: true,
                weight_decay,
                maximize,
                ..rmsprop
            });
        }
        check.check::<_, A>(Adagrad {
            lr: 0.1,
            weight_decay,
            lr_decay: 0.1,
            initial_accumulator_value: 0.25,
            maximize,
            ..Adagrad::default()
        });
        check.check::<_, A>(Adadelta { lr: 0.5, rho: 0.9, eps: 1e-6, ..Adadelta::default() });
        check.check::<_, A>(Adadelta { lr: 0.5, weight_decay, maximize, ..Adadelta::default() });
        let adam = Adam { lr: 0.01, beta1: 0.8, beta2: 0.99, eps: 1e-8, ..Adam::default() };
        check.check::<_, A>(adam);
        check.check::<_, A>(Adam { amsgrad: true, weight_decay, maximize, ..adam });
        check.check::<_, A>(AdamW { lr: 0.01, ..AdamW::default() });
        check.check::<_, A>(AdamW {
            lr: 0.01,
            weight_decay: 0.1,
            amsgrad: true,
            maximize,
            ..AdamW::default()
        });
        check.check::<_, A>(Adamax { lr: 0.01, ..Adamax::default() });
        check.check::<_, A>(Adamax { lr: 0.01, weight_decay, maximize, ..Adamax::default() });
        for decoupled_weight_decay in [false, true] {
            check.check::<_, A>(NAdam { lr: 0.01, ..NAdam::default() });
            check.check::<_, A>(NAdam {
                lr: 0.01,
                weight_decay,
                momentum_decay: 0.01,
                decoupled_weight_decay,
                maximize,
                ..NAdam::default()
            });
            check.check::<_, A>(RAdam { lr: 0.01, ..RAdam::default() });
            check.check::<_, A>(RAdam {
                lr: 0.01,
                weight_decay,
                decoupled_weight_decay,
                maximize,
                ..RAdam::default()
            });
        }
        check.check::<_, A>(Lamb { lr: 0.01, ..Lamb::default() });
        check.check::<_, A>(Lamb { lr: 0.01, eps_root: 1e-8, weight_decay, ..Lamb::default() });
        check.check::<_, A>(Adafactor::default());
        check.check::<_, A>(Adafactor {
            lr: 0.05,
            beta2_decay: -0.5,
            eps1: Some(1e-10),
            eps2: 1e-2,
            d: 2.0,
            weight_decay,
            maximize,
        });
        check.check::<_, A>(Lion { lr: 0.01, weight_decay: 0.0, ..Lion::default() });
        check.check::<_, A>(Lion { lr: 0.01, beta1: 0.5, beta2: 0.9, weight_decay: 0.1 });
        check.check::<_, A>(Asgd { lr: 0.05, ..Asgd::default() });
        // t0 2: the average moves from the third step on.
        check.check::<_, A>(Asgd {
            lr: 0.05,
            lambd: 0.1,
            alpha: 0.5,
            t0: 2.0,
            weight_decay,
            maximize,
        });
        check.check::<_, A>(Rprop { lr: 0.05, ..Rprop::default() });
        check.check::<_, A>(Rprop {
            lr: 0.05,
            etaminus: 0.3,
            etaplus: 1.5,
            step_size_min: 0.01,
            step_size_max: 0.1,
            maximize,
        });
        check.check::<_, A>(ScheduleFreeAdamW { lr: 0.05, ..ScheduleFreeAdamW::default() });
        check.check::<_, A>(ScheduleFreeAdamW {
            lr: 0.05,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-7,
            weight_decay,
            warmup_steps: 3,
            r: 0.5,
            weight_lr_power: 1.5,
        });
        check.check::<_, A>(ScheduleFreeSgd { lr: 0.1, ..ScheduleFreeSgd::default() });
        check.check::<_, A>(ScheduleFreeSgd {
            lr: 0.1,
            momentum: 0.7,
            weight_decay,
            warmup_steps: 3,
            r: 1.0,
            weight_lr_power: 0.0,
        });
    }
    rules::<f32>(check);
    rules::<f64>(check);
}

/// Deterministic, varied values of `shape` (row-major), different for every `seed`.
pub fn values<A: Element>(shape: &[usize], seed: u64) -> ArrayD<A> {
    let numel: usize = shape.iter().product();
    let values = (0..numel)
        .map(|i| {
            let x = (i as f64 + 1.0) * 0.7548776662 + seed as f64 * 0.5698402910;
            A::from_f64((x * 12.9898).sin() * (1.0 + (i % 3) as f64))
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), values).expect("numel matches")
}

/// The bits of every value in logical (row-major) order, for bit-for-bit comparisons.
pub fn bits<'a, A: Element>(values: impl IntoIterator<Item = &'a A>) -> Vec<u64> {
    values.into_iter().map(|v| v.into_f64().to_bits()).collect()
}

/// The format version a reference checkpoint file claims by its own bytes: the second field
/// of its header line, or the `version` field of bare serde JSON (`*.serde.json`).
pub fn claimed_version(path: &std::path::Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let name = path.display();
    if path.to_string_lossy().ends_with(".serde.json") {
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        json["version"].as_u64().unwrap_or_else(|| panic!("{name}: no version"))
    } else {
        let line = bytes.split(|&byte| byte == b'\n').next().unwrap();
        let header = std::str::from_utf8(line).unwrap();
        let version = header.split(' ').nth(1);
        version.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name}: {header}"))
    }
}

/// Asserts that `folder` holds its `README.md` and the files `names`, and nothing else.
pub fn assert_folder_holds(folder: &std::path::Path, names: impl IntoIterator<Item = String>) {
    let mut expected: Vec<String> = names.into_iter().chain(["README.md".to_owned()]).collect();
    expected.sort();
    let mut found: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    found.sort();
    assert_eq!(found, expected);
}
