//! Models as sets of named tensors: the names `#[derive(Parameters)]` and the containers give,
//! and `Optimizer::step_model`, which must step a model exactly as `step_all` steps the same
//! tensors, and refuse mismatched gradients without changing anything; the same for
//! `MultiSteps::step_model` and `AveragedModel`'s model methods.

use std::collections::{BTreeMap, HashMap};

use ndarray::{Array1, Array2, Array3, ArrayD, IxDyn, ShapeBuilder, array};
use ndarray_optim::model::Prefix;
use ndarray_optim::{
    Adam, AveragedModel, Averaging, Clip, Element, Error, FlatParams, MultiStepOutcome, MultiSteps,
    NonFinite, Optimizer, ParamGrad, Parameters, Sgd, StepOutcome, UpdateRule,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::{RuleCheck, bits, for_each_rule, values};

#[derive(Clone, Debug, PartialEq, Parameters)]
struct Linear<A: Element> {
    weight: Array2<A>,
    bias: Array1<A>,
}

/// A model of every kind of member: an array of another dimension in column-major order, a
/// `Vec` of layers, a renamed layer, a map, and fields that hold no tensors.
#[derive(Clone, Debug, PartialEq, Parameters)]
struct Net<A: Element> {
    embed: Array3<A>,
    blocks: Vec<Linear<A>>,
    #[optim(rename = "head")]
    output: Linear<A>,
    norms: BTreeMap<String, ArrayD<A>>,
    #[optim(skip)]
    dropout: f64,
    #[optim(skip)]
    label: &'static str,
}

/// The tensor names of `Net`, in the order it visits them.
const NET_NAMES: [&str; 9] = [
    "embed",
    "blocks.0.weight",
    "blocks.0.bias",
    "blocks.1.weight",
    "blocks.1.bias",
    "head.weight",
    "head.bias",
    "norms.final",
    "norms.first",
];

/// A `Net` of varied values, different for every `seed`.
fn net<A: Element>(seed: u64) -> Net<A> {
    let array2 = |shape: [usize; 2], seed| {
        values::<A>(&shape, seed).into_dimensionality().expect("the shape is 2-D")
    };
    let array1 = |len, seed| values::<A>(&[len], seed).into_dimensionality().expect("1-D");
    let linear = |inputs, outputs, seed| Linear {
        weight: array2([inputs, outputs], seed),
        bias: array1(outputs, seed + 1),
    };
    let embed = values::<A>(&[2, 3, 4], seed);
    let mut column_major = Array3::zeros((2, 3, 4).f());
    column_major.assign(&embed);
    Net {
        embed: column_major,
        blocks: vec![linear(4, 5, seed + 2), linear(5, 5, seed + 4)],
        output: linear(5, 3, seed + 6),
        norms: BTreeMap::from([
            ("first".to_owned(), values(&[5], seed + 8)),
            ("final".to_owned(), values(&[1, 3], seed + 9)),
        ]),
        dropout: 0.1,
        label: "net",
    }
}

/// Every tensor of `model` with its gradient in `grads`, named as `NET_NAMES`, for `step_all`.
fn batch<'a, A: Element>(model: &'a mut Net<A>, grads: &'a Net<A>) -> Vec<ParamGrad<'a, A>> {
    let [first_block, second_block] = &mut model.blocks[..] else { unreachable!() };
    let (final_norm, first_norm) = {
        let mut norms = model.norms.values_mut();
        (norms.next().unwrap(), norms.next().unwrap())
    };
    vec![
        ParamGrad::new(NET_NAMES[0], &mut model.embed, &grads.embed),
        ParamGrad::new(NET_NAMES[1], &mut first_block.weight, &grads.blocks[0].weight),
        ParamGrad::new(NET_NAMES[2], &mut first_block.bias, &grads.blocks[0].bias),
        ParamGrad::new(NET_NAMES[3], &mut second_block.weight, &grads.blocks[1].weight),
        ParamGrad::new(NET_NAMES[4], &mut second_block.bias, &grads.blocks[1].bias),
        ParamGrad::new(NET_NAMES[5], &mut model.output.weight, &grads.output.weight),
        ParamGrad::new(NET_NAMES[6], &mut model.output.bias, &grads.output.bias),
        ParamGrad::new(NET_NAMES[7], final_norm, &grads.norms["final"]),
        ParamGrad::new(NET_NAMES[8], first_norm, &grads.norms["first"]),
    ]
}

/// The bits of every tensor of `model`, by name.
fn model_bits<M: Parameters + ?Sized>(model: &M) -> Vec<(String, Vec<u64>)> {
    let mut all = Vec::new();
    model.visit(&mut Prefix::new(), &mut |name, view| all.push((name.to_owned(), bits(&view))));
    all
}

#[test]
fn derived_names_are_dotted_paths_in_field_order() {
    let model = net::<f32>(0);
    assert_eq!(model.names(), NET_NAMES);

    /// Tuple structs name fields by position; boxes and raw identifiers add nothing.
    #[derive(Parameters)]
    struct Pair(Array1<f64>, #[optim(skip)] u8, Box<Linear<f64>>);
    #[derive(Parameters)]
    struct Outer {
        r#type: Pair,
        #[optim(rename = "encoder.proj")]
        projection: Array2<f64>,
    }
    let linear = Linear { weight: Array2::zeros((1, 2)), bias: Array1::zeros(2) };
    let outer = Outer {
        r#type: Pair(Array1::zeros(3), 7, Box::new(linear)),
        projection: Array2::zeros((2, 2)),
    };
    assert_eq!(outer.names(), ["type.0", "type.2.weight", "type.2.bias", "encoder.proj"]);
    assert_eq!(outer.r#type.1, 7);
}

#[test]
fn visits_see_every_tensor_with_its_name_and_shape() {
    let mut model = net::<f64>(1);
    let mut shapes = Vec::new();
    model.visit(&mut Prefix::new(), &mut |name, view| {
        shapes.push((name.to_owned(), view.shape().to_vec()));
    });
    assert_eq!(shapes[0], ("embed".to_owned(), vec![2, 3, 4]));
    assert_eq!(shapes[7], ("norms.final".to_owned(), vec![1, 3]));

    // A visit from a prefix names everything below it, and restores it after.
    let mut prefix = Prefix::new();
    prefix.with("model", |prefix| {
        model.visit_mut(prefix, &mut |name, mut view| {
            assert!(name.starts_with("model."), "{name}");
            view.fill(if name.ends_with("bias") { 1.0 } else { 0.0 });
        });
    });
    assert_eq!(prefix.as_str(), "");
    assert!(model.blocks[1].bias.iter().all(|&b| b == 1.0));
    assert!(model.embed.iter().all(|&w| w == 0.0));
}

#[test]
fn containers_name_their_members() {
    let tensor = |len| Array1::<f32>::zeros(len);
    let pairs = vec![("w".to_owned(), tensor(2)), ("b".to_owned(), tensor(1))];
    assert_eq!(pairs.names(), ["w", "b"]);
    assert_eq!([("w", tensor(2)), ("b", tensor(1))].names(), ["w", "b"]);
    assert_eq!(vec![tensor(1), tensor(2)].names(), ["0", "1"]);
    let map = BTreeMap::from([("z", tensor(1)), ("a", tensor(1))]);
    assert_eq!(map.names(), ["a", "z"]);
    let layers = BTreeMap::from([("dec", vec![tensor(1)]), ("enc", vec![tensor(1), tensor(2)])]);
    assert_eq!(layers.names(), ["dec.0", "enc.0", "enc.1"]);
    let hashed: HashMap<String, Array1<f32>> =
        HashMap::from([("x".to_owned(), tensor(1)), ("y".to_owned(), tensor(1))]);
    let mut names = hashed.names();
    names.sort();
    assert_eq!(names, ["x", "y"]);
    // A tuple is the union of its sets.
    let union = (map, [("w", tensor(2))], (Box::new(tensor(3)),));
    assert_eq!(union.names(), ["a", "z", "w", ""]);
}

/// `step_model` over a `Net` and `step_all` over its tensors in the same order give the same
/// outcomes, parameters and state, bit for bit, under every clip and the non-finite check.
struct SameAsStepAll;

impl RuleCheck for SameAsStepAll {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        let clips = [
            None,
            Some(Clip::Value { clip_value: 0.5 }),
            Some(Clip::Norm { max_norm: 1.0 }),
            Some(Clip::GlobalNorm { max_norm: 2.0 }),
        ];
        for clip in clips {
            let mut by_model = Optimizer::<R, A>::new(rule.clone()).unwrap();
            by_model.add_group("head", rule.clone()).unwrap();
            by_model.assign("head.weight", "head").unwrap();
            by_model.set_clip(clip).unwrap();
            by_model.set_non_finite(NonFinite::Skip);
            let mut by_batch = by_model.clone();
            let (mut model, mut tensors) = (net::<A>(0), net::<A>(0));
            for step in 0..4 {
                let mut grads = net::<A>(10 + step);
                if step == 2 {
                    // A skipped step: the same position is reported, nothing changes.
                    grads.output.bias[1] = A::nan();
                }
                let outcome = by_model.step_model(&mut model, &grads).unwrap();
                let expected = by_batch.step_all(&mut batch(&mut tensors, &grads)).unwrap();
                assert_eq!(outcome, expected, "{rule:?} {} {clip:?} step {step}", A::NAME);
                if step == 2 {
                    assert_eq!(outcome, StepOutcome::Skipped { index: 6 });
                }
                assert_eq!(model_bits(&model), model_bits(&tensors), "{rule:?} {clip:?}");
            }
            assert!(by_model == by_batch, "{rule:?} {} {clip:?}: states differ", A::NAME);
            assert_eq!(by_model.step_count("norms.first"), Some(3));
        }
    }
}

#[test]
fn step_model_is_step_all_bit_for_bit() {
    for_each_rule(&mut SameAsStepAll);
}

/// Steps `params` with `grads`, expecting `expected`, and checks that the failed step changed
/// neither the optimizer nor the parameters.
fn refused<M: Parameters<Elem = f64> + ?Sized>(
    opt: &mut Optimizer<Adam, f64>,
    params: &mut M,
    grads: &M,
    expected: Error,
) {
    let (opt_before, params_before) = (opt.clone(), model_bits(params));
    assert_eq!(opt.step_model(params, grads), Err(expected));
    assert!(*opt == opt_before, "a refused step changed the optimizer");
    assert_eq!(model_bits(params), params_before, "a refused step changed the parameters");
}

/// An optimizer that has stepped a `Net<f64>` once.
fn stepped() -> (Optimizer<Adam, f64>, Net<f64>) {
    let mut opt = Optimizer::new(Adam::default()).unwrap();
    let mut model = net(0);
    opt.step_model(&mut model, &net(1)).unwrap();
    (opt, model)
}

#[test]
fn gradients_that_do_not_fit_the_model_are_refused_by_name() {
    let (mut opt, mut model) = stepped();
    let mut grads = net(2);
    grads.blocks.pop();
    let missing = Error::MissingGradient { param: "blocks.1".to_owned() };
    refused(&mut opt, &mut model, &grads, missing);

    let mut grads = net(2);
    grads.blocks.push(grads.blocks[0].clone());
    let unexpected = Error::UnexpectedGradient { param: "blocks.2".to_owned() };
    refused(&mut opt, &mut model, &grads, unexpected);

    let mut grads = net(2);
    grads.norms.remove("first");
    let missing = Error::MissingGradient { param: "norms.first".to_owned() };
    refused(&mut opt, &mut model, &grads, missing);

    let mut grads = net(2);
    grads.norms.insert("extra".to_owned(), values(&[2], 0));
    let unexpected = Error::UnexpectedGradient { param: "norms.extra".to_owned() };
    refused(&mut opt, &mut model, &grads, unexpected);

    // The last tensor's gradient is of another shape: the tensors before it are not stepped.
    let mut grads = net(2);
    grads.norms.insert("first".to_owned(), values(&[6], 0));
    let shape = Error::GradientShape {
        param: "norms.first".to_owned(),
        param_shape: vec![5],
        grad_shape: vec![6],
    };
    refused(&mut opt, &mut model, &grads, shape);

    // A tensor that changed shape since its first step.
    let (mut changed, mut grads) = (model.clone(), net(2));
    changed.output.bias = Array1::zeros(4);
    grads.output.bias = Array1::zeros(4);
    let shape =
        Error::ShapeChanged { param: "head.bias".to_owned(), registered: vec![3], given: vec![4] };
    refused(&mut opt, &mut changed, &grads, shape);

    opt.set_non_finite(NonFinite::Refuse);
    let mut grads = net(2);
    grads.blocks[0].bias[0] = f64::INFINITY;
    let non_finite = Error::NonFiniteGradient { param: "blocks.0.bias".to_owned() };
    refused(&mut opt, &mut model, &grads, non_finite);

    assert_eq!(opt.step_count("embed"), Some(1));
    opt.step_model(&mut model, &net(2)).unwrap();
    assert_eq!(opt.step_count("embed"), Some(2));
}

#[test]
fn lists_pair_by_name_and_refuse_names_twice() {
    let tensor = |value| ArrayD::<f64>::from_elem(IxDyn(&[2]), value);
    let mut opt = Optimizer::new(Adam::default()).unwrap();
    let mut params = vec![("w".to_owned(), tensor(1.0)), ("b".to_owned(), tensor(1.0))];
    // The gradients in another order: each finds its tensor by name.
    let grads = vec![("b".to_owned(), tensor(0.0)), ("w".to_owned(), tensor(1.0))];
    opt.step_model(&mut params, &grads).unwrap();
    assert_eq!(params[1].1, tensor(1.0));
    assert!(params[0].1.iter().all(|&w| w < 1.0));

    let grads = vec![("w".to_owned(), tensor(1.0)), ("v".to_owned(), tensor(1.0))];
    refused(&mut opt, &mut params, &grads, Error::MissingGradient { param: "b".to_owned() });
    let mut grads = vec![("w".to_owned(), tensor(1.0)), ("b".to_owned(), tensor(1.0))];
    grads.push(("b".to_owned(), tensor(2.0)));
    let twice = Error::DuplicateParam { param: "b".to_owned(), in_what: "gradients" };
    refused(&mut opt, &mut params, &grads, twice);

    // A model that names a tensor twice, here in two members of a tuple.
    let mut opt = Optimizer::new(Adam::default()).unwrap();
    let mut params = (BTreeMap::from([("w", tensor(1.0))]), [("w", tensor(1.0))]);
    let grads = params.clone();
    let twice = Error::DuplicateParam { param: "w".to_owned(), in_what: "model" };
    refused(&mut opt, &mut params, &grads, twice);
    assert!(opt.unstepped().is_empty());
}

#[test]
fn declared_names_and_groups_apply_to_models() {
    let mut opt = Optimizer::<Sgd, f32>::new(Sgd { lr: 1.0, ..Sgd::default() }).unwrap();
    let model = net::<f32>(0);
    opt.declare(model.names().iter().map(String::as_str)).unwrap();
    opt.add_group("frozen", Sgd { lr: 0.0, ..Sgd::default() }).unwrap();
    opt.assign("head.weight", "frozen").unwrap();
    let (mut model, grads) = (model, net(1));
    let before = model.clone();
    opt.step_model(&mut model, &grads).unwrap();
    assert_eq!(model.output.weight, before.output.weight);
    assert_ne!(model.output.bias, before.output.bias);
    assert!(opt.unstepped().is_empty());

    // A renamed member is a tensor the declaration does not know.
    let mut renamed = BTreeMap::from([("head.wieght", array![1.0_f32])]);
    let grads = renamed.clone();
    let unknown = opt.step_model(&mut renamed, &grads).unwrap_err();
    let closest = Some("head.weight".to_owned());
    assert_eq!(unknown, Error::UnknownParam { param: "head.wieght".to_owned(), closest });
}

#[test]
fn an_empty_model_steps_nothing() {
    let mut opt = Optimizer::<Sgd, f32>::new(Sgd::default()).unwrap();
    let mut empty: Vec<Array1<f32>> = Vec::new();
    let outcome = opt.step_model(&mut empty, &Vec::new()).unwrap();
    assert_eq!(outcome, StepOutcome::Stepped { grad_norm: None });
    opt.set_clip(Some(Clip::GlobalNorm { max_norm: 1.0 })).unwrap();
    let outcome = opt.step_model(&mut empty, &Vec::new()).unwrap();
    assert_eq!(outcome, StepOutcome::Stepped { grad_norm: Some(0.0) });
}

#[test]
fn multi_steps_step_model_is_step_all_bit_for_bit() {
    fn check<A: Element>() {
        let new = || {
            let mut opt = Optimizer::new(Adam { lr: 0.05, ..Adam::default() }).unwrap();
            opt.set_clip(Some(Clip::GlobalNorm { max_norm: 0.5 })).unwrap();
            MultiSteps::new(opt, 3).unwrap()
        };
        let (mut by_model, mut by_batch) = (new(), new());
        let (mut model, mut tensors) = (net::<A>(0), net::<A>(0));
        for micro_batch in 0..8 {
            let grads = net::<A>(100 + micro_batch);
            let outcome = by_model.step_model(&mut model, &grads).unwrap();
            assert_eq!(outcome, by_batch.step_all(&mut batch(&mut tensors, &grads)).unwrap());
            assert_eq!(outcome.stepped(), micro_batch % 3 == 2, "{outcome:?}");
            assert_eq!(model_bits(&model), model_bits(&tensors), "{} {micro_batch}", A::NAME);
        }
        let mut pending = NET_NAMES.to_vec();
        pending.sort_unstable();
        assert_eq!(by_model.pending(), pending);
        assert!(by_model == by_batch);
    }
    check::<f32>();
    check::<f64>();
}

#[test]
fn multi_steps_refuse_a_model_out_of_step_and_change_nothing() {
    let mut opt = MultiSteps::new(Optimizer::new(Sgd::default()).unwrap(), 3).unwrap();
    let tensor = |value| ArrayD::<f64>::from_elem(IxDyn(&[2]), value);
    let mut params = BTreeMap::from([("a", tensor(1.0)), ("b", tensor(2.0))]);
    let grads = BTreeMap::from([("a", tensor(0.5)), ("b", tensor(0.5))]);
    let outcome = opt.step_model(&mut params, &grads).unwrap();
    assert_eq!(outcome, MultiStepOutcome::Accumulated { micro_steps: 1 });
    // `b` missing from the second micro-batch.
    let mut fewer = BTreeMap::from([("a", tensor(1.0))]);
    let before = opt.clone();
    let err = opt.step_model(&mut fewer, &BTreeMap::from([("a", tensor(0.5))])).unwrap_err();
    assert_eq!(
        err,
        Error::MicroBatchMismatch { param: "b".to_owned(), accumulated: 1, others: None }
    );
    assert!(opt == before);
    // A gradient missing where the model has a tensor.
    let err = opt.step_model(&mut params, &BTreeMap::from([("a", tensor(0.5))])).unwrap_err();
    assert_eq!(err, Error::MissingGradient { param: "b".to_owned() });
    assert!(opt == before);
    assert_eq!(opt.micro_steps("a"), 1);
}

#[test]
fn averages_of_a_model_are_those_of_its_tensors() {
    fn check<A: Element>(averaging: Averaging) {
        let mut by_model = AveragedModel::<A>::new(averaging).unwrap();
        let mut by_batch = by_model.clone();
        for step in 0..5 {
            let model = net::<A>(step);
            by_model.update_model(&model).unwrap();
            let mut named = Vec::new();
            model.visit(&mut Prefix::new(), &mut |name, view| {
                named.push((name.to_owned(), view.to_owned()));
            });
            let tensors: Vec<_> =
                named.iter().map(|(name, view)| (name.as_str(), view.view())).collect();
            by_batch.update_all(&tensors).unwrap();
        }
        assert!(by_model == by_batch, "{averaging:?} {}", A::NAME);
        for name in NET_NAMES {
            assert_eq!(by_model.count(name), Some(5));
        }
        // Copied into an evaluation copy, swapped into the model and back.
        let mut copy = net::<A>(7);
        by_model.copy_into_model(&mut copy).unwrap();
        let mut trained = net::<A>(9);
        let before = model_bits(&trained);
        by_model.swap_model(&mut trained).unwrap();
        assert_eq!(model_bits(&trained), model_bits(&copy));
        assert_eq!(by_model.is_swapped("head.bias"), Some(true));
        by_model.swap_model(&mut trained).unwrap();
        assert_eq!(model_bits(&trained), before);
    }
    for averaging in [
        Averaging::Swa,
        Averaging::Ema { decay: 0.9, warmup: true },
        Averaging::OptaxEma { decay: 0.8, debias: true },
    ] {
        check::<f32>(averaging);
        check::<f64>(averaging);
    }
}

#[test]
fn averages_refuse_a_model_they_do_not_fit_and_change_nothing() {
    let mut ema = AveragedModel::<f64>::new(Averaging::Ema { decay: 0.9, warmup: false }).unwrap();
    let tensor = |len, value| ArrayD::<f64>::from_elem(IxDyn(&[len]), value);
    ema.update_model(&BTreeMap::from([("w", tensor(2, 1.0))])).unwrap();
    let before = ema.clone();
    let err = ema.update_model(&BTreeMap::from([("w", tensor(3, 1.0))])).unwrap_err();
    assert!(matches!(err, Error::ShapeChanged { ref param, .. } if param == "w"), "{err:?}");
    let listed_twice = vec![("w", tensor(2, 1.0)), ("w", tensor(2, 2.0))];
    let err = ema.update_model(&listed_twice).unwrap_err();
    assert!(matches!(err, Error::DuplicateParam { .. }), "{err:?}");
    let mut more = BTreeMap::from([("v", tensor(2, 5.0)), ("w", tensor(2, 5.0))]);
    let err = ema.copy_into_model(&mut more).unwrap_err();
    assert!(matches!(err, Error::NotAveraged { ref param, .. } if param == "v"), "{err:?}");
    let err = ema.swap_model(&mut more).unwrap_err();
    assert!(matches!(err, Error::NotAveraged { ref param, .. } if param == "v"), "{err:?}");
    assert_eq!(more["w"], tensor(2, 5.0), "a refused copy or swap changed the model");
    assert!(ema == before);
}

/// A model's tensors go into a flat block in the model's order (a column-major one too),
/// step there as `step_model` steps them, and go back by name.
#[test]
fn a_model_goes_into_a_flat_block_and_back() {
    let model = net::<f32>(3);
    let mut block = FlatParams::from_model("net", &model).unwrap();
    let names: Vec<&str> = block.tensors().iter().map(|tensor| tensor.name()).collect();
    assert_eq!(names, NET_NAMES);
    let in_order: Vec<u64> = model_bits(&model).into_iter().flat_map(|(_, bits)| bits).collect();
    assert_eq!(bits(block.params()), in_order, "logical order, tensor by tensor");

    let grads = net::<f32>(4);
    let grad_block = FlatParams::from_model("grads", &grads).unwrap();
    let mut stepped = model.clone();
    let mut by_model = Optimizer::new(Adam { lr: 0.01, ..Adam::default() }).unwrap();
    let mut by_block = by_model.clone();
    for _ in 0..3 {
        by_model.step_model(&mut stepped, &grads).unwrap();
        block.grads_mut().copy_from_slice(grad_block.params());
        by_block.step_flat(&mut block).unwrap();
    }
    let mut back = model.clone();
    block.copy_into_model(&mut back).unwrap();
    assert_eq!(model_bits(&back), model_bits(&stepped));
    assert_eq!((back.dropout, back.label), (model.dropout, model.label));

    let mut reloaded = FlatParams::from_model("net", &model).unwrap();
    reloaded.copy_from_model(&stepped).unwrap();
    assert_eq!(bits(reloaded.params()), bits(block.params()));

    // By name, in any order.
    let listed: Vec<(String, ArrayD<f32>)> = vec![
        ("b".into(), Array1::zeros(2).into_dyn()),
        ("a".into(), Array2::ones((2, 2)).into_dyn()),
    ];
    let mut flat = FlatParams::<f32>::new("ab", [("a", &[2, 2][..]), ("b", &[2])]).unwrap();
    flat.copy_from_model(&listed).unwrap();
    assert_eq!(flat.params(), [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
}

/// A model of other tensors than the block's is refused, naming what differs, and neither
/// side changes.
#[test]
fn a_model_of_other_tensors_is_refused_by_a_flat_block() {
    let model = net::<f32>(5);
    let mut block = FlatParams::from_model("net", &model).unwrap();
    let before = block.clone();
    let mut wider = model.clone();
    wider.output.bias = Array1::zeros(5);
    let mut fewer = model.clone();
    fewer.blocks.pop();
    for (mut other, mismatched, unexpected) in [
        (wider, vec!["head.bias"], vec![]),
        (fewer, vec![], vec!["blocks.1.bias", "blocks.1.weight"]),
    ] {
        let unchanged = other.clone();
        for err in [block.copy_into_model(&mut other), block.copy_from_model(&other)] {
            let Err(Error::ModelMismatch { report }) = err else { panic!("{err:?}") };
            let names: Vec<&str> = report.mismatched.iter().map(|m| m.name.as_str()).collect();
            let unexpected_names: Vec<&str> =
                report.unexpected.iter().map(String::as_str).collect();
            assert_eq!((names, unexpected_names), (mismatched.clone(), unexpected.clone()));
            assert!(report.missing.is_empty());
        }
        assert_eq!(other, unchanged);
        assert_eq!(block, before);
    }
    let twice: Vec<(String, ArrayD<f32>)> =
        vec![("a".into(), Array1::zeros(2).into_dyn()), ("a".into(), Array1::zeros(2).into_dyn())];
    let err = FlatParams::from_model("m", &twice).unwrap_err();
    assert!(matches!(&err, Error::DuplicateParam { param, .. } if param == "a"), "{err}");
    let mut pair = FlatParams::<f32>::new("m", [("a", &[2][..]), ("b", &[2])]).unwrap();
    let err = pair.copy_from_model(&twice).unwrap_err();
    assert!(matches!(&err, Error::DuplicateParam { param, in_what: "model" } if param == "a"));
}
