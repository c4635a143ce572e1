//! Flat blocks of tensors: stepped as one tensor, bit for bit as their tensors one by one, and
//! refused where that would not hold.

use ndarray::ArrayD;
use ndarray_optim::{
    Adam, Clip, Element, Error, FlatParams, NonFinite, Optimizer, ParamGrad, StatePrecision,
    UpdateRule,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::{RuleCheck, bits, for_each_rule, values};
use crate::files::{ENCODINGS, Folder};

/// A bias, a norm's scale, a scalar, an empty tensor and two matrices.
const TENSORS: [(&str, &[usize]); 6] = [
    ("layer.0.weight", &[7, 5]),
    ("layer.0.bias", &[7]),
    ("scale", &[]),
    ("unused", &[0]),
    ("norm.weight", &[3, 2, 2]),
    ("head.weight", &[300]),
];

fn block<A: Element>() -> FlatParams<A> {
    let mut block = FlatParams::new("block", TENSORS).unwrap();
    for (seed, (name, shape)) in TENSORS.into_iter().enumerate() {
        block.param_mut(name).unwrap().assign(&values::<A>(shape, seed as u64));
    }
    block
}

/// The gradient of tensor `seed` at `step`, scaled up at step 2 so that clipping acts.
fn grad<A: Element>(shape: &[usize], seed: usize, step: usize) -> ArrayD<A> {
    let scale = if step == 2 { 40.0 } else { 1.0 };
    values::<A>(shape, 100 + 7 * step as u64 + seed as u64).mapv(|g| g * A::from_f64(scale))
}

fn optimizer<R: UpdateRule, A: Element>(
    rule: &R,
    precision: StatePrecision,
    clip: Option<Clip>,
) -> Optimizer<R, A> {
    let mut opt = Optimizer::new(rule.clone()).unwrap();
    opt.set_state_precision("default", precision).unwrap();
    opt.set_clip(clip).unwrap();
    opt
}

/// Whether `rule` can keep its state in `precision` for elements of type `A`.
fn keeps_state_in<R: UpdateRule, A: Element>(rule: &R, precision: StatePrecision) -> bool {
    let mut probe = Optimizer::<R, A>::new(rule.clone()).unwrap();
    probe.set_state_precision("default", precision).is_ok()
}

/// Every rule: a block's steps against its tensors' steps one by one, with the state kept in
/// `.0` and the gradients clipped by `.1`.
struct AsTensorsOneByOne(StatePrecision, Option<Clip>);

impl RuleCheck for AsTensorsOneByOne {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        if !keeps_state_in::<R, A>(&rule, self.0) {
            return;
        }
        let mut flat = optimizer::<R, A>(&rule, self.0, self.1);
        let mut block = block::<A>();
        if !rule.elementwise() {
            let before = block.clone();
            let err = flat.step_flat(&mut block).unwrap_err();
            assert!(matches!(err, Error::FlatUnsupported { .. }), "{rule:?}: {err}");
            assert!(err.to_string().contains("looks at whole tensors"), "{err}");
            assert_eq!(block, before, "{rule:?}: a refused step changed the block");
            assert!(flat.state_of("block").is_none());
            return;
        }
        let mut alone = optimizer::<R, A>(&rule, self.0, self.1);
        let mut params: Vec<ArrayD<A>> =
            TENSORS.iter().map(|&(name, _)| block.param(name).unwrap().to_owned()).collect();
        for step in 0..5 {
            let grads: Vec<ArrayD<A>> =
                TENSORS.iter().enumerate().map(|(i, (_, shape))| grad(shape, i, step)).collect();
            for (mut tensor, g) in block.tensors_mut().zip(&grads) {
                tensor.grad.assign(g);
            }
            let got = flat.step_flat(&mut block).unwrap();
            let mut batch: Vec<ParamGrad<'_, A>> = (TENSORS.iter().zip(&mut params).zip(&grads))
                .map(|((&(name, _), param), grad)| ParamGrad::new(name, param, grad))
                .collect();
            let expected = alone.step_all(&mut batch).unwrap();
            assert_eq!(got, expected, "{rule:?} {} step {step}", A::NAME);
        }
        assert_eq!(flat.state_of("block").unwrap().step(), Some(5));
        let context = format!("{rule:?} {} {:?}", A::NAME, self.0);
        assert_block_is_its_tensors(&flat, &block, &alone, &params, &context);
    }
}

/// Asserts that `block`'s parameters and its state in `flat` are, tensor by tensor, `params`
/// and their state in `alone`, bit for bit.
fn assert_block_is_its_tensors<R: UpdateRule, A: Element>(
    flat: &Optimizer<R, A>,
    block: &FlatParams<A>,
    alone: &Optimizer<R, A>,
    params: &[ArrayD<A>],
    context: &str,
) {
    let state = flat.state_of(block.name()).unwrap();
    for (tensor, param) in block.tensors().iter().zip(params) {
        let name = tensor.name();
        assert_eq!(bits(block.param(name).unwrap()), bits(param), "{context} `{name}`");
        let expected = alone.state_of(name).unwrap();
        assert_eq!(state.step(), expected.step(), "{context} `{name}`");
        for (buffer, values) in expected.buffers() {
            let flat_values = state.buffer(buffer).unwrap();
            let part = &flat_values.as_slice().unwrap()[tensor.range()];
            assert_eq!(bits(part), bits(&values), "{context} `{name}` `{buffer}`");
        }
        assert_eq!(state.scalars().collect::<Vec<_>>(), expected.scalars().collect::<Vec<_>>());
    }
}

#[test]
fn a_block_steps_as_its_tensors_one_by_one() {
    for_each_rule(&mut AsTensorsOneByOne(StatePrecision::Full, None));
}

/// The global norm of a block's gradients is the norm of its tensors' together, and clipping
/// by value looks at each element alone.
#[test]
fn a_block_is_clipped_as_its_tensors() {
    for_each_rule(&mut AsTensorsOneByOne(
        StatePrecision::Full,
        Some(Clip::GlobalNorm { max_norm: 1.0 }),
    ));
    for_each_rule(&mut AsTensorsOneByOne(
        StatePrecision::Full,
        Some(Clip::Value { clip_value: 0.5 }),
    ));
}

/// bfloat16 state is rounded element by element.
#[test]
fn a_block_with_bfloat16_state_steps_as_its_tensors() {
    for_each_rule(&mut AsTensorsOneByOne(StatePrecision::Bf16, None));
}

/// 8-bit state is quantized over the flat order, and kept in 8 bits by the block's size:
/// here every tensor is smaller than the threshold, the block is not.
#[test]
fn a_block_keeps_8_bit_state_by_its_own_size() {
    let precision = StatePrecision::Int8 { min_numel: 320 };
    let mut opt = optimizer::<Adam, f32>(&Adam::default(), precision, None);
    let mut block = block::<f32>();
    let numel = block.len();
    assert!(numel >= 320 && block.tensors().iter().all(|t| t.range().len() < 320));
    for step in 0..3 {
        for (i, (mut tensor, (_, shape))) in block.tensors_mut().zip(TENSORS).enumerate() {
            tensor.grad.assign(&grad(shape, i, step));
        }
        opt.step_flat(&mut block).unwrap();
    }
    // Two buffers of one byte per element and a 4-byte scale per block of 256.
    let bytes = 2 * (numel + 4 * numel.div_ceil(256));
    assert_eq!(opt.state_of("block").unwrap().bytes(), bytes);
    let resumed = Optimizer::<Adam, f32>::from_checkpoint(opt.checkpoint()).unwrap();
    assert_eq!(resumed.checkpoint(), opt.checkpoint());
    assert!(block.params().iter().all(|p| p.is_finite()));
}

#[test]
fn clipping_each_tensor_by_its_own_norm_is_refused() {
    let mut opt = Optimizer::<Adam, f32>::new(Adam::default()).unwrap();
    opt.set_clip(Some(Clip::Norm { max_norm: 1.0 })).unwrap();
    let mut block = block::<f32>();
    block.grads_mut().fill(3.0);
    let before = block.clone();
    let err = opt.step_flat(&mut block).unwrap_err();
    assert!(matches!(&err, Error::FlatUnsupported { param, .. } if param == "block"), "{err}");
    assert!(err.to_string().contains("clip by global norm or by value"), "{err}");
    assert_eq!(block, before);
    assert!(opt.state_of("block").is_none());
}

/// A block in a batch beside a tensor stepped on its own, clipped by the norm of all.
#[test]
fn a_block_steps_in_a_batch_beside_other_tensors() {
    let rule = Adam { lr: 0.01, weight_decay: 0.1, ..Adam::default() };
    let clip = Some(Clip::GlobalNorm { max_norm: 0.5 });
    let mut flat = optimizer::<Adam, f64>(&rule, StatePrecision::Full, clip);
    let mut alone = optimizer::<Adam, f64>(&rule, StatePrecision::Full, clip);
    let mut block = block::<f64>();
    let mut params: Vec<ArrayD<f64>> =
        TENSORS.iter().map(|&(name, _)| block.param(name).unwrap().to_owned()).collect();
    let (mut big, mut big_alone) = (values::<f64>(&[40, 40], 9), values::<f64>(&[40, 40], 9));
    for step in 0..4 {
        let grads: Vec<ArrayD<f64>> =
            TENSORS.iter().enumerate().map(|(i, (_, shape))| grad(shape, i, step)).collect();
        for (mut tensor, g) in block.tensors_mut().zip(&grads) {
            tensor.grad.assign(g);
        }
        let big_grad = grad::<f64>(&[40, 40], 50, step);
        let got = flat
            .step_all(&mut [ParamGrad::new("big", &mut big, &big_grad), block.param_grad()])
            .unwrap();
        let mut batch: Vec<ParamGrad<'_, f64>> = (TENSORS.iter().zip(&mut params).zip(&grads))
            .map(|((&(name, _), param), grad)| ParamGrad::new(name, param, grad))
            .collect();
        batch.insert(0, ParamGrad::new("big", &mut big_alone, &big_grad));
        assert_eq!(got, alone.step_all(&mut batch).unwrap(), "step {step}");
    }
    assert_eq!(bits(&big), bits(&big_alone));
    for ((name, _), param) in TENSORS.iter().zip(&params) {
        assert_eq!(bits(block.param(name).unwrap()), bits(param), "`{name}`");
    }
}

/// A non-finite gradient names the block; the block names the tensor.
#[test]
fn a_non_finite_gradient_is_found_in_its_tensor() {
    let mut opt = Optimizer::<Adam, f64>::new(Adam::default()).unwrap();
    opt.set_non_finite(NonFinite::Refuse);
    let mut block = block::<f64>();
    assert!(block.first_non_finite_grad().is_none());
    block.grad_mut("norm.weight").unwrap()[[2, 1, 0]] = f64::NAN;
    block.grad_mut("head.weight").unwrap()[[299]] = f64::INFINITY;
    let before = block.params().to_vec();
    let err = opt.step_flat(&mut block).unwrap_err();
    assert!(matches!(&err, Error::NonFiniteGradient { param } if param == "block"), "{err}");
    assert_eq!(block.params(), before);
    assert!(opt.state_of("block").is_none());
    assert_eq!(block.first_non_finite_grad().map(|t| t.name()), Some("norm.weight"));
    block.grad_mut("norm.weight").unwrap().fill(0.0);
    assert_eq!(block.first_non_finite_grad().map(|t| t.name()), Some("head.weight"));
}

#[test]
fn views_and_flat_buffers_are_the_same_memory() {
    let mut block =
        FlatParams::<f32>::new("m", [("w", &[2, 3][..]), ("b", &[3]), ("s", &[])]).unwrap();
    assert_eq!((block.len(), block.is_empty(), block.name()), (10, false, "m"));
    let ranges: Vec<_> = block.tensors().iter().map(|t| (t.name(), t.range())).collect();
    assert_eq!(ranges, [("w", 0..6), ("b", 6..9), ("s", 9..10)]);
    assert_eq!(block.tensor("b").unwrap().shape(), &[3]);
    block.param_mut("w").unwrap()[[1, 0]] = 4.0;
    block.grad_mut("s").unwrap()[[]] = -1.0;
    for mut tensor in block.tensors_mut() {
        if tensor.name == "b" {
            tensor.param.fill(2.0);
            tensor.grad.fill(0.5);
        }
    }
    assert_eq!(block.params(), [0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0]);
    assert_eq!(block.grads(), [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, -1.0]);
    assert_eq!(block.param("w").unwrap().shape(), &[2, 3]);
    assert_eq!(block.grad("b").unwrap().sum(), 1.5);
    block.params_mut()[9] = 7.0;
    assert_eq!(block.param("s").unwrap()[[]], 7.0);
    block.zero_grads();
    assert!(block.grads().iter().all(|&g| g == 0.0));
    let empty = FlatParams::<f64>::new("none", []).unwrap();
    assert!(empty.is_empty() && empty.tensors().is_empty());
}

#[test]
fn bad_layouts_and_names_are_typed_errors() {
    let twice = FlatParams::<f32>::new("m", [("w", &[2][..]), ("b", &[1]), ("w", &[3])]);
    assert!(
        matches!(&twice, Err(Error::DuplicateParam { param, in_what: "flat layout" }) if param == "w"),
        "{twice:?}"
    );
    let huge = usize::MAX / 2 + 1;
    for shapes in [
        vec![("w", vec![huge, 2])],
        vec![("w", vec![huge]), ("b", vec![huge])],
        vec![("w", vec![usize::MAX / 4 + 1])],
    ] {
        let layout = shapes.iter().map(|(name, shape)| (*name, shape.as_slice()));
        let err = FlatParams::<f32>::new("m", layout).unwrap_err();
        assert!(matches!(err, Error::InvalidFlatLayout { .. }), "{shapes:?}: {err}");
        assert!(err.to_string().contains("too large"), "{err}");
    }
    // Empty, but no array may have these axes.
    let err = FlatParams::<f32>::new("m", [("w", &[0, usize::MAX][..])]).unwrap_err();
    assert!(err.to_string().contains("too large for an array"), "{err}");
    let empty = FlatParams::<f32>::new("m", [("w", &[0, isize::MAX as usize][..])]).unwrap();
    assert_eq!(empty.param("w").unwrap().shape(), &[0, isize::MAX as usize]);
    let mut block = FlatParams::<f32>::new("m", [("weight", &[2][..])]).unwrap();
    let err = block.param_mut("wieght").unwrap_err();
    assert!(
        matches!(&err, Error::UnknownParam { param, closest: Some(c) } if param == "wieght" && c == "weight"),
        "{err}"
    );
    assert!(block.grad("bias").is_err() && block.tensor("").is_err());
}

/// A block saved with its optimizer in one training-state file resumes bit for bit, in
/// either encoding; its gradients are kept only where one is not zero.
#[test]
fn a_block_saved_with_its_optimizer_resumes_bit_for_bit() {
    let folder = Folder::new("flat-saved");
    let path = folder.file("run.ckpt");
    let mut opt = Optimizer::<Adam, f32>::new(Adam { lr: 0.01, ..Adam::default() }).unwrap();
    let mut block = block::<f32>();
    let set_grads = |block: &mut FlatParams<f32>, step: usize| {
        for (i, (mut tensor, (_, shape))) in block.tensors_mut().zip(TENSORS).enumerate() {
            tensor.grad.assign(&grad::<f32>(shape, i, step));
        }
    };
    for step in 0..3 {
        set_grads(&mut block, step);
        opt.step_flat(&mut block).unwrap();
    }
    block.zero_grads();
    for encoding in ENCODINGS {
        opt.save_with(&path, encoding, &block).unwrap();
        let (mut resumed, mut resumed_block): (Optimizer<Adam, f32>, FlatParams<f32>) =
            Optimizer::load_with(&path).unwrap();
        assert_eq!(resumed_block, block, "{encoding:?}");
        let (mut opt, mut block) = (opt.clone(), block.clone());
        for step in 3..6 {
            set_grads(&mut block, step);
            set_grads(&mut resumed_block, step);
            let outcome = opt.step_flat(&mut block).unwrap();
            assert_eq!(resumed.step_flat(&mut resumed_block).unwrap(), outcome);
        }
        assert_eq!(bits(resumed_block.params()), bits(block.params()), "{encoding:?}");
        assert_eq!(resumed, opt, "{encoding:?}");
    }

    let json = serde_json::to_value(&block).unwrap();
    assert_eq!(json["grads"], serde_json::Value::Null, "zero gradients take no room");
    assert_eq!(json["tensors"][0], serde_json::json!(["layer.0.weight", [7, 5]]));
    // Gradients mid-accumulation are kept, to the sign of a zero.
    set_grads(&mut block, 7);
    block.grad_mut("scale").unwrap()[[]] = -0.0;
    let restored: FlatParams<f32> =
        serde_json::from_value(serde_json::to_value(&block).unwrap()).unwrap();
    assert_eq!(bits(restored.grads()), bits(block.grads()));
    block.zero_grads();
    block.grads_mut()[0] = -0.0;
    let bytes = postcard::to_allocvec(&block).unwrap();
    let restored: FlatParams<f32> = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(restored.grads()[0].to_bits(), (-0.0_f32).to_bits());
}

/// A restored block is checked as a new one is, and its values against its layout before
/// anything of the layout's size is allocated.
#[test]
fn restored_blocks_are_checked() {
    let good = serde_json::json!({
        "name": "m",
        "dtype": "f32",
        "tensors": [["w", [2, 3]], ["b", [3]]],
        "params": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        "grads": null
    });
    let restored: FlatParams<f32> = serde_json::from_value(good.clone()).unwrap();
    assert_eq!(restored.param("b").unwrap().as_slice().unwrap(), [7.0, 8.0, 9.0]);
    let with = |field: &str, value: serde_json::Value| {
        let mut record = good.clone();
        record[field] = value;
        serde_json::from_value::<FlatParams<f32>>(record).unwrap_err().to_string()
    };
    let cases = [
        (with("dtype", "f64".into()), "dtype"),
        (with("tensors", serde_json::json!([["w", [2, 3]], ["w", [3]]])), "`w`"),
        (with("params", serde_json::json!([1.0, 2.0])), "2 parameters for a layout of 9"),
        (with("grads", serde_json::json!(vec![0.0; 10])), "10 gradients for a layout of 9"),
        // Sixteen gigabytes claimed by a layout of three values: refused, not allocated.
        (with("tensors", serde_json::json!([["w", [4_000_000_000_u64]]])), "for a layout of"),
        (with("tensors", serde_json::json!([["w", [usize::MAX, 2]]])), "too large"),
    ];
    for (err, expected) in cases {
        assert!(err.contains(expected), "{err}");
    }
    let wrong_type = serde_json::from_value::<FlatParams<f64>>(good).unwrap_err();
    assert!(wrong_type.to_string().contains("dtype"), "{wrong_type}");
}

/// Every rule: a block's state moved to its tensors midway (and the tensors' to the block)
/// is the state of a run that stepped them that way all along; the state kept in `.0`.
struct MovedMidway(StatePrecision);

impl MovedMidway {
    /// Steps the tensors one by one for `steps` from `first`.
    fn tensors<R: UpdateRule, A: Element>(
        opt: &mut Optimizer<R, A>,
        params: &mut [ArrayD<A>],
        steps: core::ops::Range<usize>,
    ) {
        for step in steps {
            let grads: Vec<ArrayD<A>> =
                TENSORS.iter().enumerate().map(|(i, (_, shape))| grad(shape, i, step)).collect();
            let mut batch: Vec<ParamGrad<'_, A>> = (TENSORS.iter().zip(&mut *params).zip(&grads))
                .map(|((&(name, _), param), grad)| ParamGrad::new(name, param, grad))
                .collect();
            opt.step_all(&mut batch).unwrap();
        }
    }

    /// Steps `block` as one tensor for `steps`.
    fn block<R: UpdateRule, A: Element>(
        opt: &mut Optimizer<R, A>,
        block: &mut FlatParams<A>,
        steps: core::ops::Range<usize>,
    ) {
        for step in steps {
            for (i, (mut tensor, (_, shape))) in block.tensors_mut().zip(TENSORS).enumerate() {
                tensor.grad.assign(&grad::<A>(shape, i, step));
            }
            opt.step_flat(block).unwrap();
        }
    }
}

impl RuleCheck for MovedMidway {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        if !keeps_state_in::<R, A>(&rule, self.0) {
            return;
        }
        let context = format!("{rule:?} {} {:?}", A::NAME, self.0);
        let mut opt = optimizer::<R, A>(&rule, self.0, None);
        let block_of_tensors = block::<A>();
        if !rule.elementwise() {
            opt.assign("block", "default").unwrap();
            for (name, _) in TENSORS {
                opt.assign(name, "default").unwrap();
            }
            opt.remove("block").unwrap();
            let before = opt.clone();
            let err = opt.join_flat(&block_of_tensors).unwrap_err();
            assert!(matches!(err, Error::FlatUnsupported { .. }), "{context}: {err}");
            assert_eq!(opt, before, "{context}: a refused join changed the optimizer");
            return;
        }
        let initial: Vec<ArrayD<A>> = TENSORS
            .iter()
            .map(|&(name, _)| block_of_tensors.param(name).unwrap().to_owned())
            .collect();
        // All along one by one: the reference.
        let mut alone = optimizer::<R, A>(&rule, self.0, None);
        let mut params = initial.clone();
        Self::tensors(&mut alone, &mut params, 0..6);

        // As a block, then one by one.
        let mut block = block_of_tensors.clone();
        Self::block(&mut opt, &mut block, 0..3);
        opt.split_flat(&block).unwrap();
        assert!(opt.state_of("block").is_none(), "{context}");
        let mut split: Vec<ArrayD<A>> =
            TENSORS.iter().map(|&(name, _)| block.param(name).unwrap().to_owned()).collect();
        Self::tensors(&mut opt, &mut split, 3..6);
        for ((name, _), (param, expected)) in TENSORS.iter().zip(split.iter().zip(&params)) {
            assert_eq!(bits(param), bits(expected), "{context} split `{name}`");
            let (got, want) = (opt.state_of(name).unwrap(), alone.state_of(name).unwrap());
            assert_eq!(got.step(), want.step(), "{context} split `{name}`");
            for ((buffer, got), (_, want)) in got.buffers().zip(want.buffers()) {
                assert_eq!(bits(&got), bits(&want), "{context} split `{name}` `{buffer}`");
            }
            assert_eq!(got.scalars().collect::<Vec<_>>(), want.scalars().collect::<Vec<_>>());
        }

        // One by one, then as a block, against a block all along.
        let mut as_block = optimizer::<R, A>(&rule, self.0, None);
        let mut block_all_along = block_of_tensors.clone();
        Self::block(&mut as_block, &mut block_all_along, 0..6);
        let mut joined = optimizer::<R, A>(&rule, self.0, None);
        let mut params = initial;
        Self::tensors(&mut joined, &mut params, 0..3);
        let mut block = block_of_tensors;
        for (mut tensor, param) in block.tensors_mut().zip(&params) {
            tensor.param.assign(param);
        }
        joined.join_flat(&block).unwrap();
        assert!(TENSORS.iter().all(|(name, _)| joined.state_of(name).is_none()), "{context}");
        Self::block(&mut joined, &mut block, 3..6);
        assert_eq!(bits(block.params()), bits(block_all_along.params()), "{context} joined");
        assert_eq!(joined.checkpoint(), as_block.checkpoint(), "{context} joined");
    }
}

#[test]
fn state_moves_between_a_block_and_its_tensors_midway() {
    for_each_rule(&mut MovedMidway(StatePrecision::Full));
    for_each_rule(&mut MovedMidway(StatePrecision::Bf16));
}

/// Moving state is refused, naming why, where it would change what the tensors step with;
/// nothing changes then.
#[test]
fn moving_state_is_refused_where_it_would_change() {
    let block = block::<f32>();
    let stepped = |opt: &mut Optimizer<Adam, f32>, names: &[&str], steps: usize| {
        for &name in names {
            let shape = block.tensor(name).unwrap().shape().to_vec();
            let mut param = ArrayD::<f32>::zeros(shape.clone());
            for step in 0..steps {
                opt.step(name, &mut param, &grad::<f32>(&shape, 0, step)).unwrap();
            }
        }
    };
    let names: Vec<&str> = TENSORS.iter().map(|(name, _)| *name).collect();
    let refused = |opt: &mut Optimizer<Adam, f32>, join: bool, expected: &str| {
        let before = opt.clone();
        let err = if join { opt.join_flat(&block) } else { opt.split_flat(&block) }.unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(*opt, before, "{err}");
    };
    let mut opt = Optimizer::<Adam, f32>::new(Adam::default()).unwrap();
    refused(&mut opt, false, "`block`");
    refused(&mut opt, true, "`layer.0.weight`");
    stepped(&mut opt, &names, 2);
    opt.step("block", &mut ArrayD::zeros(vec![5]), &ArrayD::ones(vec![5])).unwrap();
    refused(&mut opt, true, "`block`");
    refused(&mut opt, false, "`layer.0.weight`");
    for name in &names {
        opt.remove(name).unwrap();
    }
    refused(&mut opt, false, "shape");
    opt.remove("block").unwrap();
    stepped(&mut opt, &names, 2);
    opt.reset("layer.0.weight").unwrap();
    stepped(&mut opt, &["layer.0.weight"], 3);
    refused(&mut opt, true, "were not stepped together");
    opt.reset("layer.0.weight").unwrap();
    refused(&mut opt, true, "has state and `layer.0.weight` has none");
    opt.add_group("head", Adam::default()).unwrap();
    opt.assign("head.weight", "head").unwrap();
    refused(&mut opt, true, "different groups");

    let mut int8 = optimizer::<Adam, f32>(&Adam::default(), StatePrecision::INT8, None);
    stepped(&mut int8, &names, 1);
    refused(&mut int8, true, "8-bit");
}
