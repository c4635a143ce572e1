//! Assigning tensors to groups by name patterns.

use ndarray::array;
use ndarray_optim::pattern::{GroupPatterns, glob_match};
use ndarray_optim::{DEFAULT_GROUP, Error, Momentum, Optimizer, Sgd};

#[test]
fn glob_matching() {
    let cases = [
        ("*", "", true),
        ("*", "a.b.c", true),
        ("", "", true),
        ("", "a", false),
        ("a", "a", true),
        ("a", "ab", false),
        ("?", "a", true),
        ("?", "", false),
        ("?", "ab", false),
        ("*.bias", "layer1.bias", true),
        ("*.bias", "layer1.bias.g", false),
        ("*.bias", "bias", false),
        ("*norm*", "encoder.layernorm.weight", true),
        ("*norm*", "norm", true),
        ("*norm*", "nor", false),
        ("head.*", "head.", true),
        ("head.*", "heads.w", false),
        ("a*b*c", "aXXbYYc", true),
        ("a*b*c", "aXXcYYb", false),
        ("a*b?c", "abbbxc", true),
        ("**", "x", true),
        ("layer?.w", "layerä.w", true),
        ("*?", "", false),
        ("*a", "bab", false),
        ("*ab", "aab", true),
        ("x*", "x*", true),
    ];
    for (pattern, name, expected) in cases {
        assert_eq!(glob_match(pattern, name), expected, "{pattern:?} vs {name:?}");
    }
}

fn optimizer() -> Optimizer<Sgd, f64> {
    let mut opt = Optimizer::new(Sgd { lr: 0.1, ..Sgd::default() }).unwrap();
    opt.add_group("no_decay", Sgd { lr: 0.1, ..Sgd::default() }).unwrap();
    opt.add_group("head", Sgd { lr: 1.0, ..Sgd::default() }).unwrap();
    opt
}

const NAMES: [&str; 6] =
    ["embed.w", "block.norm.w", "block.w", "block.bias", "head.w", "head.bias"];

#[test]
fn first_match_wins_and_every_name_lands_once() {
    let mut opt = optimizer();
    let rules = GroupPatterns::new()
        .rule("*.bias", "no_decay")
        .rule("*norm*", "no_decay")
        .rule("head.*", "head")
        .otherwise(DEFAULT_GROUP);
    opt.assign_by_patterns(&NAMES, &rules).unwrap();
    let groups: Vec<_> = NAMES.iter().map(|name| opt.group_of(name).unwrap()).collect();
    assert_eq!(groups, ["default", "no_decay", "default", "no_decay", "head", "no_decay"]);

    // The assignment steers the steps: `head.w` moves with its group's rate.
    let mut w = array![1.0];
    opt.step("head.w", &mut w, &array![0.5]).unwrap();
    assert_eq!(w, array![0.5]);
}

#[test]
fn unmatched_and_ambiguous_names_are_reported_and_nothing_moves() {
    let mut opt = optimizer();
    let rules = GroupPatterns::new().rule("*.bias", "no_decay").rule("head.*", "head");
    let err = opt.assign_by_patterns(&NAMES, &rules).unwrap_err();
    assert_eq!(
        err,
        Error::GroupPatterns {
            unmatched: vec!["embed.w".into(), "block.norm.w".into(), "block.w".into()],
            ambiguous: vec![],
        }
    );
    assert!(err.to_string().contains("embed.w"));
    assert!(NAMES.iter().all(|name| opt.group_of(name).is_none()));

    let strict = rules.clone().otherwise(DEFAULT_GROUP).strict();
    let err = opt.assign_by_patterns(&NAMES, &strict).unwrap_err();
    assert_eq!(
        err,
        Error::GroupPatterns { unmatched: vec![], ambiguous: vec!["head.bias".into()] }
    );
    assert!(NAMES.iter().all(|name| opt.group_of(name).is_none()));

    // Rules of one group may overlap even when strict.
    let same = GroupPatterns::new().rule("*.w", "head").rule("head.*", "head").strict();
    opt.assign_by_patterns(&["head.w"], &same).unwrap();
    assert_eq!(opt.group_of("head.w"), Some("head"));

    let unknown = GroupPatterns::new().rule("*", "tail");
    assert_eq!(
        opt.assign_by_patterns(&NAMES, &unknown).unwrap_err(),
        Error::UnknownGroup { group: "tail".into() }
    );
}

#[test]
fn stepped_tensors_move_with_their_state() {
    let mut opt = Optimizer::<Momentum, f64>::new(Momentum::default()).unwrap();
    opt.add_group("other", Momentum::default()).unwrap();
    let mut w = array![1.0];
    opt.step("w", &mut w, &array![1.0]).unwrap();
    let rules = GroupPatterns::new().rule("*", "other");
    opt.assign_by_patterns(&["w", "fresh"], &rules).unwrap();
    assert_eq!((opt.group_of("w"), opt.group_of("fresh")), (Some("other"), Some("other")));
    assert_eq!((opt.step_count("w"), opt.step_count("fresh")), (Some(1), None));
}
