//! Learning-rate schedules at their edges: counts that overflow, phases of length zero,
//! rates that round below zero, plateaus in `max` mode, and the order in which an optimizer
//! and its scheduler are built and restored.

use ndarray_optim::schedule::{PlateauMode, ReduceLrOnPlateau};
use ndarray_optim::{DEFAULT_GROUP, Optimizer, Sgd};

fn sgd(lr: f64) -> Optimizer<Sgd, f64> {
    Optimizer::new(Sgd { lr, ..Sgd::default() }).unwrap()
}

fn rate(opt: &Optimizer<Sgd, f64>, group: &str) -> f64 {
    opt.group(group).unwrap().lr()
}

/// `ReduceLrOnPlateau { mode: Max, ..Default::default() }` and `{"mode":"max"}` started from
/// a best of +∞ and cut the rate while the metric rose; there is no best now until the first
/// metric.
#[test]
fn plateau_in_max_mode_follows_a_rising_metric() {
    let taught = ReduceLrOnPlateau { mode: PlateauMode::Max, patience: 0, ..Default::default() };
    let config: ReduceLrOnPlateau = serde_json::from_str(r#"{"mode":"max","patience":0}"#).unwrap();
    assert_eq!(config, taught);
    assert_eq!(
        ReduceLrOnPlateau { patience: 0, ..ReduceLrOnPlateau::new(PlateauMode::Max) },
        taught
    );
    for mut plateau in [taught, config] {
        let mut opt = sgd(1.0);
        for accuracy in [0.1, 0.2, 0.5, 0.9] {
            plateau.step(&mut opt, accuracy).unwrap();
            assert_eq!(rate(&opt, DEFAULT_GROUP), 1.0, "accuracy {accuracy}");
        }
        assert_eq!(plateau.best, Some(0.9));
        plateau.step(&mut opt, 0.8).unwrap();
        assert_eq!(rate(&opt, DEFAULT_GROUP), 0.1);
    }
    // In min mode as before: the first loss is the best so far.
    let mut plateau = ReduceLrOnPlateau { patience: 0, ..Default::default() };
    let mut opt = sgd(1.0);
    for loss in [3.0, 2.0, 1.0] {
        plateau.step(&mut opt, loss).unwrap();
    }
    assert_eq!((plateau.best, rate(&opt, DEFAULT_GROUP)), (Some(1.0), 1.0));
    // A position out of range is refused, changing nothing.
    for bad in [
        ReduceLrOnPlateau { best: Some(f64::NAN), ..Default::default() },
        ReduceLrOnPlateau { num_bad_epochs: 11, ..Default::default() },
        ReduceLrOnPlateau { cooldown_counter: 1, ..Default::default() },
    ] {
        let mut plateau = bad;
        assert!(plateau.step(&mut opt, 1.0).is_err());
        assert_eq!(plateau.num_bad_epochs, bad.num_bad_epochs);
    }
}
