//! Saving and restoring the whole optimizer state.

use ndarray::{Array2, ArrayD, IxDyn, ShapeBuilder};
use ndarray_optim::checkpoint::{BufferRecord, Encoding, LoadMode, StateRecord, VERSION};
use ndarray_optim::{Adam, Checkpoint, Element, Error, Optimizer, Sgd, UpdateRule};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::{RuleCheck, bits, for_each_rule, values};

/// A model of three tensors in two groups, one stored column-major.
struct Model<A> {
    tensors: Vec<(&'static str, ArrayD<A>)>,
}

impl<A: Element> Model<A> {
    fn new() -> Self {
        let mut f_order = ArrayD::zeros(IxDyn(&[3, 4]).f());
        f_order.assign(&values::<A>(&[3, 4], 100));
        Model {
            tensors: vec![
                ("encoder.weight", values(&[4, 5], 101)),
                ("encoder.bias", values(&[], 102)),
                ("head.weight", f_order),
            ],
        }
    }

    fn train<R: UpdateRule>(&mut self, opt: &mut Optimizer<R, A>, steps: std::ops::Range<u64>) {
        for step in steps {
            for (index, (name, param)) in self.tensors.iter_mut().enumerate() {
                let grad = values::<A>(param.shape(), 1000 * step + index as u64);
                opt.step(name, param, &grad).unwrap();
            }
        }
    }

    fn bits(&self) -> Vec<Vec<u64>> {
        self.tensors.iter().map(|(_, p)| bits(p.iter())).collect()
    }
}

fn optimizer<R: UpdateRule, A: Element>(rule: R) -> Optimizer<R, A> {
    let mut opt = Optimizer::new(rule.clone()).unwrap();
    let mut head = rule;
    *head.lr_mut() *= 0.5;
    opt.add_group("head", head).unwrap();
    opt.assign("head.weight", "head").unwrap();
    opt.assign("not.yet.stepped", "head").unwrap();
    opt
}

/// The ways a checkpoint leaves one optimizer and enters a fresh one.
#[derive(Clone, Copy, Debug)]
enum Route {
    /// The optimizer itself through serde_json, as the replay harness does.
    SerdeJson,
    /// The optimizer itself through postcard.
    SerdePostcard,
    /// Checkpoint bytes (header and payload) in each encoding.
    Bytes(Encoding),
    /// A file written by `save` and read by `load`.
    File(Encoding),
    /// `load_state` into an optimizer built with other hyperparameters.
    LoadState,
}

const ROUTES: [Route; 7] = [
    Route::SerdeJson,
    Route::SerdePostcard,
    Route::Bytes(Encoding::Json),
    Route::Bytes(Encoding::Postcard),
    Route::File(Encoding::Json),
    Route::File(Encoding::Postcard),
    Route::LoadState,
];

fn temp_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ndarray-optim-{}-{name}", std::process::id()))
}

fn round_trip<R, A>(opt: Optimizer<R, A>, route: Route, model: &Model<A>) -> Optimizer<R, A>
where
    R: UpdateRule + Serialize + DeserializeOwned,
    A: Element + Serialize + DeserializeOwned,
{
    match route {
        Route::SerdeJson => serde_json::from_slice(&serde_json::to_vec(&opt).unwrap()).unwrap(),
        Route::SerdePostcard => postcard::from_bytes(&postcard::to_stdvec(&opt).unwrap()).unwrap(),
        Route::Bytes(encoding) => {
            let bytes = opt.checkpoint().to_bytes(encoding).unwrap();
            drop(opt);
            Optimizer::from_checkpoint(Checkpoint::from_bytes(&bytes).unwrap()).unwrap()
        }
        Route::File(encoding) => {
            let path = temp_file(&format!("{}-{}-{encoding:?}", R::NAME, A::NAME));
            opt.save(&path, encoding).unwrap();
            drop(opt);
            let restored = Optimizer::load(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            restored
        }
        Route::LoadState => {
            let mut fresh = Optimizer::new(opt.groups()[0].hyper().clone()).unwrap();
            let shapes = model.tensors.iter().map(|(name, param)| (*name, param.shape()));
            let report = fresh.load_state(opt.checkpoint(), shapes, LoadMode::Lenient).unwrap();
            assert_eq!(report.restored, ["encoder.bias", "encoder.weight", "head.weight"]);
            // Known to the checkpoint (assigned, never stepped), not to the model: dropped.
            assert_eq!(report.unexpected, ["not.yet.stepped"]);
            fresh
        }
    }
}

struct ExactResume;

impl RuleCheck for ExactResume {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        let mut straight = Model::<A>::new();
        let mut opt = optimizer::<R, A>(rule.clone());
        straight.train(&mut opt, 0..9);

        for route in ROUTES {
            let mut resumed = Model::<A>::new();
            let mut first = optimizer::<R, A>(rule.clone());
            resumed.train(&mut first, 0..4);
            let mut second = round_trip(first, route, &resumed);
            assert_eq!(second.group_of("head.weight"), Some("head"));
            assert_eq!(second.step_count("encoder.bias"), Some(4));
            resumed.train(&mut second, 4..9);

            assert_eq!(resumed.bits(), straight.bits(), "{rule:?} {} {route:?}", A::NAME);
            let mut expected = opt.checkpoint();
            if let Route::LoadState = route {
                expected.tensors.retain(|t| t.name != "not.yet.stepped");
            } else {
                assert_eq!(second.group_of("not.yet.stepped"), Some("head"));
            }
            assert_eq!(second.checkpoint(), expected, "{rule:?} {} {route:?}", A::NAME);
        }
    }
}

#[test]
fn resume_is_bit_for_bit() {
    for_each_rule(&mut ExactResume);
}

fn adam_checkpoint() -> Checkpoint<Adam, f32> {
    let mut opt = optimizer::<Adam, f32>(Adam::default());
    Model::<f32>::new().train(&mut opt, 0..2);
    opt.checkpoint()
}

fn state_of<'a>(c: &'a mut Checkpoint<Adam, f32>, name: &str) -> &'a mut StateRecord<f32> {
    c.tensors.iter_mut().find(|t| t.name == name).unwrap().state.as_mut().unwrap()
}

#[test]
fn checkpoint_lists_everything_by_name() {
    let c = adam_checkpoint();
    assert_eq!((c.format.as_str(), c.version), ("ndarray-optim", VERSION));
    assert_eq!((c.rule.as_str(), c.dtype.as_str()), ("adam", "f32"));
    let names: Vec<&str> = c.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["encoder.bias", "encoder.weight", "head.weight", "not.yet.stepped"]);
    let head = c.tensors.iter().find(|t| t.name == "head.weight").unwrap();
    let state = head.state.as_ref().unwrap();
    assert_eq!((head.group.as_str(), state.step, state.shape.as_slice()), ("head", 2, &[3, 4][..]));
    let buffers: Vec<&str> = state.buffers.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(buffers, ["exp_avg", "exp_avg_sq"]);
    // Values are row-major whatever the layout: exp_avg after two steps of Adam is
    // (1 − β₁)(β₁ g₁ + g₂) elementwise, with g from the same deterministic generator.
    let g1 = values::<f32>(&[3, 4], 2);
    let g2 = values::<f32>(&[3, 4], 1002);
    for (i, (&m, (&a, &b))) in state.buffers[0].values.iter().zip(g1.iter().zip(&g2)).enumerate() {
        let expected = 0.9f32 * (0.1f32 * a) + 0.1f32 * b;
        assert!((m - expected).abs() <= 1e-6, "exp_avg[{i}] = {m}, expected {expected}");
    }
}

fn refused(c: Checkpoint<Adam, f32>) -> Error {
    Optimizer::from_checkpoint(c).unwrap_err()
}

#[test]
fn invalid_checkpoints_are_refused_with_the_reason() {
    let mut c = adam_checkpoint();
    c.version = VERSION + 1;
    assert_eq!(
        refused(c),
        Error::UnsupportedCheckpoint {
            format: "ndarray-optim".into(),
            version: VERSION + 1,
            newest: VERSION
        }
    );

    let mut c = adam_checkpoint();
    c.format = "other".into();
    assert!(matches!(refused(c), Error::UnsupportedCheckpoint { .. }));

    let mut c = adam_checkpoint();
    c.rule = "sgd".into();
    assert_eq!(
        refused(c),
        Error::CheckpointMismatch { field: "rule", expected: "adam", found: "sgd".into() }
    );

    let mut c = adam_checkpoint();
    c.dtype = "f64".into();
    assert!(matches!(refused(c), Error::CheckpointMismatch { field: "dtype", .. }));

    let mut c = adam_checkpoint();
    state_of(&mut c, "head.weight").buffers[1].values.pop();
    let err = refused(c);
    assert!(matches!(&err, Error::InvalidTensorState { param, .. } if param == "head.weight"));
    assert!(err.to_string().contains("exp_avg_sq") && err.to_string().contains("11"), "{err}");

    let mut c = adam_checkpoint();
    state_of(&mut c, "encoder.bias").buffers[0].name = "momentum_buffer".into();
    assert!(
        matches!(refused(c), Error::InvalidTensorState { param, .. } if param == "encoder.bias")
    );

    let mut c = adam_checkpoint();
    state_of(&mut c, "encoder.bias").buffers.push(BufferRecord {
        name: "x".into(),
        values: vec![],
        stored: None,
    });
    assert!(matches!(refused(c), Error::InvalidTensorState { .. }));

    let mut c = adam_checkpoint();
    state_of(&mut c, "encoder.bias").shape = vec![usize::MAX, 2];
    assert!(matches!(refused(c), Error::InvalidTensorState { .. }));

    // Empty (a zero-length axis, so buffers of no values), yet its other axes multiply past
    // what ndarray can index: no array of that shape can exist, and none is accepted.
    let mut c = adam_checkpoint();
    let state = state_of(&mut c, "encoder.bias");
    state.shape = vec![0, 1 << 40, 1 << 40];
    state.buffers.iter_mut().for_each(|buffer| buffer.values.clear());
    let err = refused(c);
    assert!(matches!(&err, Error::InvalidTensorState { param, .. } if param == "encoder.bias"));
    assert!(err.to_string().contains("overflows"), "{err}");
    // The same with lengths it can index is a valid empty tensor.
    let mut c = adam_checkpoint();
    let state = state_of(&mut c, "encoder.bias");
    state.shape = vec![0, 1 << 20, 3];
    state.buffers.iter_mut().for_each(|buffer| buffer.values.clear());
    let opt = Optimizer::from_checkpoint(c).unwrap();
    assert_eq!(
        opt.state_of("encoder.bias").unwrap().buffer("exp_avg").unwrap().shape(),
        [0, 1 << 20, 3]
    );

    let mut c = adam_checkpoint();
    state_of(&mut c, "encoder.bias").step = 0;
    assert!(matches!(refused(c), Error::InvalidTensorState { .. }));

    let mut c = adam_checkpoint();
    let duplicate = c.tensors[0].clone();
    c.tensors.push(duplicate);
    assert_eq!(
        refused(c),
        Error::DuplicateParam { param: "encoder.bias".into(), in_what: "checkpoint" }
    );

    let mut c = adam_checkpoint();
    c.tensors[0].group = "nowhere".into();
    assert_eq!(refused(c), Error::UnknownGroup { group: "nowhere".into() });

    let mut c = adam_checkpoint();
    c.groups[1].hyper.beta2 = 1.0;
    assert!(matches!(refused(c), Error::InvalidHyperparameter { key: "beta2", .. }));

    let mut c = adam_checkpoint();
    c.groups[1].name = "default".into();
    assert_eq!(refused(c), Error::DuplicateGroup { group: "default".into() });

    let mut c = adam_checkpoint();
    c.groups.remove(0);
    assert!(matches!(refused(c), Error::UnknownGroup { .. }));
}

#[test]
fn negative_or_non_finite_hyperparameters_are_refused() {
    type Set = fn(&mut Adam, f64);
    let keys: [(&str, Set); 4] = [
        ("lr", |h, v| h.lr = v),
        ("beta1", |h, v| h.beta1 = v),
        ("beta2", |h, v| h.beta2 = v),
        ("eps", |h, v| h.eps = v),
    ];
    for (key, set) in keys {
        for value in [-0.5, -1e-12, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut c = adam_checkpoint();
            set(&mut c.groups[1].hyper, value);
            // Postcard carries NaN and infinities, so the refusal is the loader's, not JSON's.
            let bytes = c.to_bytes(Encoding::Postcard).unwrap();
            let err =
                Optimizer::from_checkpoint(Checkpoint::<Adam, f32>::from_bytes(&bytes).unwrap());
            let err = err.unwrap_err();
            assert!(
                matches!(err, Error::InvalidHyperparameter { rule: "adam", key: k, .. } if k == key),
                "{key} = {value}: {err}"
            );
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}

#[test]
fn headers_refuse_newer_versions_other_rules_and_dtypes() {
    let bytes = adam_checkpoint().to_bytes(Encoding::Postcard).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with(&format!("ndarray-optim {VERSION} postcard adam f32 ")), "{text}");

    // A later version may change everything after its version number.
    let next = VERSION + 1;
    let mut future =
        format!("ndarray-optim {next} zstd-postcard adam f32 extra fields\n").into_bytes();
    future.extend_from_slice(&bytes[bytes.iter().position(|&b| b == b'\n').unwrap() + 1..]);
    let err = Checkpoint::<Adam, f32>::from_bytes(&future).unwrap_err();
    assert_eq!(
        err,
        Error::UnsupportedCheckpoint {
            format: "ndarray-optim".into(),
            version: next,
            newest: VERSION
        }
    );
    let (text, range) = (err.to_string(), format!("1 to {VERSION}"));
    assert!(text.contains(&format!("version {next}")) && text.contains(&range), "{err}");

    let err = Checkpoint::<Sgd, f32>::from_bytes(&bytes).unwrap_err();
    assert_eq!(
        err,
        Error::CheckpointMismatch { field: "rule", expected: "sgd", found: "adam".into() }
    );
    let err = Checkpoint::<Adam, f64>::from_bytes(&bytes).unwrap_err();
    assert_eq!(
        err,
        Error::CheckpointMismatch { field: "dtype", expected: "f64", found: "f32".into() }
    );
}

#[test]
fn a_refused_load_changes_nothing() {
    let mut model = Model::<f64>::new();
    let mut opt = optimizer::<Adam, f64>(Adam::default());
    model.train(&mut opt, 0..3);
    let shapes: Vec<(&str, Vec<usize>)> =
        model.tensors.iter().map(|(name, param)| (*name, param.shape().to_vec())).collect();
    let before = opt.clone();

    let mut other = optimizer::<Adam, f64>(Adam { lr: 0.5, ..Adam::default() });
    Model::<f64>::new().train(&mut other, 0..5);
    type Break = fn(&mut Checkpoint<Adam, f64>);
    let breaks: [Break; 6] = [
        |c| c.version = 9,
        |c| c.groups[0].hyper.lr = -1.0,
        |c| c.tensors[1].state.as_mut().unwrap().buffers[0].values.truncate(3),
        |c| c.tensors[1].state.as_mut().unwrap().step = 0,
        |c| c.tensors[2].group = "gone".into(),
        |c| c.groups.swap(0, 1),
    ];
    for (index, break_it) in breaks.iter().enumerate() {
        let mut c = other.checkpoint();
        break_it(&mut c);
        for mode in [LoadMode::Strict, LoadMode::Lenient] {
            assert!(opt.load_state(c.clone(), shapes.clone(), mode).is_err(), "break {index}");
            assert_eq!(opt, before, "break {index} {mode:?}");
        }
    }
    // Valid, but not the model: strictly refused.
    let mut fewer = shapes.clone();
    fewer.pop();
    assert!(opt.load_state(other.checkpoint(), fewer, LoadMode::Strict).is_err());
    assert_eq!(opt, before);
}

#[test]
fn serde_errors_name_the_problem() {
    let json = serde_json::to_string(&Optimizer::<Sgd, f64>::new(Sgd::default()).unwrap()).unwrap();
    let err = serde_json::from_str::<Optimizer<Adam, f64>>(&json).unwrap_err();
    assert!(err.to_string().contains("rule"), "{err}");
    assert!(serde_json::from_str::<Optimizer<Sgd, f64>>(&json[..json.len() - 3]).is_err());
}

#[test]
fn restored_column_major_state_takes_the_fast_path_layout() {
    // State restored into row-major buffers is relaid out for a column-major parameter on its
    // next step, and stays exact.
    let rule = Adam::default();
    let mut a = Array2::<f64>::zeros((3, 5).f());
    a.assign(&values::<f64>(&[3, 5], 7).into_dimensionality::<ndarray::Ix2>().unwrap());
    let mut b = a.clone();
    let mut straight = Optimizer::new(rule).unwrap();
    let mut resumed = Optimizer::new(rule).unwrap();
    for step in 0..6 {
        let mut g = Array2::<f64>::zeros((3, 5).f());
        g.assign(&values::<f64>(&[3, 5], step).into_dimensionality::<ndarray::Ix2>().unwrap());
        straight.step("a", &mut a, &g).unwrap();
        if step == 3 {
            resumed = Optimizer::from_checkpoint(resumed.checkpoint()).unwrap();
        }
        resumed.step("a", &mut b, &g).unwrap();
        if step == 3 {
            // The restored buffers were laid out again for the column-major parameter, so
            // the step just taken ran on flat slices, not through the strided loop.
            let state = resumed.state_of("a").unwrap();
            let exp_avg = state.buffer("exp_avg").unwrap();
            assert!(exp_avg.t().is_standard_layout(), "state laid out column-major");
            assert_ne!(ndarray_optim::last_kernel_path(), Some(ndarray_optim::KernelPath::Zip));
        }
    }
    assert_eq!(bits(a.iter()), bits(b.iter()));
}

#[test]
fn restored_state_refuses_a_parameter_of_another_shape() {
    let mut opt = Optimizer::from_checkpoint(adam_checkpoint()).unwrap();
    let before = opt.clone();
    let mut wider = Array2::<f32>::zeros((3, 5));
    let err = opt.step("head.weight", &mut wider, &Array2::zeros((3, 5))).unwrap_err();
    assert_eq!(
        err,
        Error::ShapeChanged {
            param: "head.weight".into(),
            registered: vec![3, 4],
            given: vec![3, 5]
        }
    );
    assert!(err.to_string().contains("head.weight") && err.to_string().contains("[3, 5]"));
    assert_eq!(opt, before);
    assert_eq!(wider, Array2::<f32>::zeros((3, 5)));
}

/// Clipping, the non-finite policy and scheduled learning rates are part of the state, in the
/// binary encoding (which cannot read internally tagged enums) as well as in JSON.
#[test]
fn training_settings_survive_both_encodings() {
    use ndarray_optim::{Clip, NonFinite, ParamGrad};
    for clip in [
        Clip::Value { clip_value: 0.5 },
        Clip::Norm { max_norm: 2.0 },
        Clip::GlobalNorm { max_norm: 1.0 },
    ] {
        let mut opt = Optimizer::<Adam, f64>::new(Adam::default()).unwrap();
        opt.add_group("head", Adam { lr: 0.01, ..Adam::default() }).unwrap();
        opt.assign("head.w", "head").unwrap();
        opt.set_clip(Some(clip)).unwrap();
        opt.set_non_finite(NonFinite::Skip);
        opt.set_lrs_with(|base, _| base * 0.25).unwrap();
        let (mut w, mut h) = (Array2::<f64>::ones((2, 2)), Array2::<f64>::ones((1, 3)));
        let (gw, gh) = (Array2::from_elem((2, 2), 3.0), Array2::from_elem((1, 3), -2.0));
        let batch = &mut [ParamGrad::new("w", &mut w, &gw), ParamGrad::new("head.w", &mut h, &gh)];
        opt.step_all(batch).unwrap();
        for encoding in [Encoding::Json, Encoding::Postcard] {
            let bytes = opt.checkpoint().to_bytes(encoding).unwrap();
            let restored = Optimizer::from_checkpoint(Checkpoint::from_bytes(&bytes).unwrap());
            let restored: Optimizer<Adam, f64> = restored.unwrap();
            assert_eq!(restored.checkpoint(), opt.checkpoint(), "{clip:?} {encoding:?}");
            assert_eq!((restored.clip(), restored.non_finite()), (Some(clip), NonFinite::Skip));
            assert_eq!(restored.group("head").unwrap().lr(), 0.0025);
        }
    }
}

/// The checkpoint of `rule` after two steps of one tensor `w` of 4 elements.
fn stepped<R: UpdateRule>(rule: R) -> Checkpoint<R, f64> {
    let mut opt = Optimizer::<R, f64>::new(rule).unwrap();
    let mut w = ndarray::Array1::<f64>::linspace(-1.0, 1.0, 4);
    for step in 0..2 {
        let g = w.mapv(|x| x * 0.5 - step as f64);
        opt.step("w", &mut w, &g).unwrap();
    }
    opt.checkpoint()
}

/// Sets value `index` of buffer `buffer` of the only tensor, loads, and returns the error.
fn with_value<R: UpdateRule>(rule: R, buffer: &str, index: usize, value: f64) -> Error {
    let mut c = stepped(rule);
    let state = c.tensors[0].state.as_mut().unwrap();
    state.buffers.iter_mut().find(|b| b.name == buffer).unwrap().values[index] = value;
    Optimizer::from_checkpoint(c).unwrap_err()
}

/// State that no run produces is refused on loading, naming the tensor and the buffer:
/// negative second moments and accumulators (every rule's non-negative buffers), and a NAdam
/// `mu_product` outside [0, 1] or not finite (it depends on the hyperparameters only). One
/// step later the parameters would be NaN.
#[test]
fn impossible_state_values_are_refused() {
    use ndarray_optim::{Adadelta, Adagrad, AdamW, Adamax, NAdam, RAdam, RmsProp};
    let amsgrad = Adam { amsgrad: true, ..Adam::default() };
    let cases = [
        with_value(Adam::default(), "exp_avg_sq", 1, -1e-3),
        with_value(amsgrad, "max_exp_avg_sq", 2, -1.0),
        with_value(AdamW { amsgrad: true, ..AdamW::default() }, "exp_avg_sq", 0, -1.0),
        with_value(Adagrad::default(), "sum", 3, -0.5),
        with_value(RmsProp::default(), "square_avg", 0, -2.0),
        with_value(Adadelta::default(), "acc_delta", 1, -1.0),
        with_value(Adadelta::default(), "square_avg", 1, f64::NEG_INFINITY),
        with_value(Adamax::default(), "exp_inf", 2, -1.0),
        with_value(NAdam::default(), "exp_avg_sq", 0, -1.0),
        with_value(RAdam::default(), "exp_avg_sq", 0, -1e-300),
    ];
    for err in cases {
        assert!(matches!(&err, Error::InvalidTensorState { param, .. } if param == "w"), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("buffer `") && message.contains("which no run of"), "{message}");
    }
    let message = with_value(Adagrad::default(), "sum", 3, -0.5).to_string();
    assert!(message.contains("`w`") && message.contains("buffer `sum` holds -0.5 at index 3"));
    // Signed buffers may be negative. Non-finite values are what runs with non-finite or
    // overflowing gradients produce (PyTorch's default ignores them): they load.
    let mut c = stepped(Adam::default());
    c.tensors[0].state.as_mut().unwrap().buffers[0].values[0] = -3.0;
    assert!(Optimizer::from_checkpoint(c).is_ok());
    for (buffer, value) in
        [(0, f64::NAN), (1, f64::INFINITY), (1, f64::NAN), (0, f64::NEG_INFINITY)]
    {
        let mut c = stepped(Adam::default());
        c.tensors[0].state.as_mut().unwrap().buffers[buffer].values[0] = value;
        assert!(Optimizer::from_checkpoint(c).is_ok(), "buffer {buffer}: {value}");
    }

    for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.5, -0.25] {
        let mut c = stepped(NAdam::default());
        c.tensors[0].state.as_mut().unwrap().scalars[0].value = value;
        let err = Optimizer::from_checkpoint(c).unwrap_err();
        assert!(matches!(&err, Error::InvalidTensorState { param, .. } if param == "w"), "{err:?}");
        assert!(err.to_string().contains("scalar `mu_product` is"), "{err}");
    }
    for value in [0.0, 1.0, 0.5] {
        let mut c = stepped(NAdam::default());
        c.tensors[0].state.as_mut().unwrap().scalars[0].value = value;
        assert!(Optimizer::from_checkpoint(c).is_ok(), "{value}");
    }
}

/// A checkpoint at the largest step count loads (it can be reached and saved), and the step
/// after it is refused with a typed error, changing nothing, instead of wrapping to 0 (which
/// made Adam's parameters NaN in release builds and panicked in debug ones).
#[test]
fn the_largest_step_count_loads_and_refuses_the_next_step() {
    let mut c = adam_checkpoint();
    state_of(&mut c, "encoder.bias").step = u64::MAX;
    let mut opt = Optimizer::from_checkpoint(c).unwrap();
    let before = opt.clone();
    let mut bias = ndarray::arr0(0.5_f32);
    let grad = ndarray::arr0(1.0_f32);
    let err = opt.step("encoder.bias", &mut bias, &grad).unwrap_err();
    assert_eq!(err, Error::StepCountOverflow { param: "encoder.bias".into() });
    assert_eq!(opt, before);
}
