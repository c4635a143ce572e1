//! Editing the optimizer's entries by name: removing, resetting and renaming a tensor's
//! state, and listing a group's members.

use ndarray::{Array1, array};
use ndarray_optim::{Adam, Error, Optimizer};

fn adam() -> Optimizer<Adam, f64> {
    let mut opt = Optimizer::new(Adam { lr: 0.1, ..Adam::default() }).unwrap();
    opt.add_group("head", Adam { lr: 0.01, ..Adam::default() }).unwrap();
    opt.assign("head.w", "head").unwrap();
    opt
}

/// Three steps of `name` with the gradients 1, −2, 3 (times `[1, 0.5]`) from `[1, 1]`.
fn run(opt: &mut Optimizer<Adam, f64>, name: &str) -> Array1<f64> {
    let mut w = array![1.0, 1.0];
    for g in [1.0, -2.0, 3.0] {
        opt.step(name, &mut w, &array![g, 0.5 * g]).unwrap();
    }
    w
}

#[test]
fn a_reset_tensor_steps_as_a_new_one_in_its_group() {
    let mut opt = adam();
    run(&mut opt, "head.w");
    opt.reset("head.w").unwrap();
    assert_eq!(opt.step_count("head.w"), None);
    assert_eq!(opt.group_of("head.w"), Some("head"));
    // From the initial state at the group's rate: the same bits as a fresh optimizer.
    assert_eq!(run(&mut opt, "head.w"), run(&mut adam(), "head.w"));
}

#[test]
fn a_removed_tensor_is_forgotten_with_its_group() {
    let mut opt = adam();
    run(&mut opt, "head.w");
    run(&mut opt, "b");
    opt.remove("head.w").unwrap();
    assert_eq!((opt.group_of("head.w"), opt.step_count("head.w")), (None, None));
    assert_eq!(opt.state().map(|t| t.name()).collect::<Vec<_>>(), ["b"]);
    // Back in the default group, as a name never seen.
    let mut fresh = Optimizer::new(Adam { lr: 0.1, ..Adam::default() }).unwrap();
    assert_eq!(run(&mut opt, "head.w"), run(&mut fresh, "head.w"));
}

#[test]
fn a_removed_declared_tensor_is_no_longer_declared() {
    let mut opt = adam();
    opt.declare(["a", "b"]).unwrap();
    opt.remove("a").unwrap();
    let err = opt.step("a", &mut array![1.0], &array![1.0]).unwrap_err();
    assert!(matches!(err, Error::UnknownParam { ref param, .. } if param == "a"), "{err}");
}

#[test]
fn a_renamed_tensor_keeps_its_group_and_state() {
    let mut opt = adam();
    let mut w = array![1.0, 1.0];
    for g in [1.0, -2.0] {
        opt.step("head.w", &mut w, &array![g, 0.5 * g]).unwrap();
    }
    opt.rename("head.w", "head.weight").unwrap();
    assert_eq!((opt.group_of("head.w"), opt.step_count("head.w")), (None, None));
    assert_eq!(
        (opt.group_of("head.weight"), opt.step_count("head.weight")),
        (Some("head"), Some(2))
    );
    opt.step("head.weight", &mut w, &array![3.0, 1.5]).unwrap();
    // Three steps under one name or two, the same bits.
    assert_eq!(w, run(&mut adam(), "head.w"));
}

#[test]
fn members_lists_a_groups_tensors_sorted() {
    let mut opt = adam();
    opt.assign("head.b", "head").unwrap();
    run(&mut opt, "body.w");
    run(&mut opt, "body.b");
    assert_eq!(opt.members("head").unwrap(), ["head.b", "head.w"]);
    assert_eq!(opt.members("default").unwrap(), ["body.b", "body.w"]);
    assert_eq!(opt.members("tail").unwrap_err(), Error::UnknownGroup { group: "tail".into() });
}

#[test]
fn edits_of_unknown_or_taken_names_change_nothing() {
    let mut opt = adam();
    run(&mut opt, "head.w");
    run(&mut opt, "b");
    let before = opt.clone();
    let unknown = |param: &str, closest: Option<&str>| Error::UnknownParam {
        param: param.into(),
        closest: closest.map(Into::into),
    };
    assert_eq!(opt.remove("head.v").unwrap_err(), unknown("head.v", Some("head.w")));
    assert_eq!(opt.reset("c").unwrap_err(), unknown("c", Some("b")));
    assert_eq!(opt.rename("nothing-like-it", "x").unwrap_err(), unknown("nothing-like-it", None));
    assert_eq!(
        opt.rename("b", "head.w").unwrap_err(),
        Error::ParamExists { param: "head.w".into() }
    );
    assert_eq!(opt, before);
    // Renaming a tensor to its own name is no change, not a clash.
    opt.rename("b", "b").unwrap();
    assert_eq!(opt, before);
}
