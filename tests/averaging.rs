//! Weight averaging: PyTorch's `AveragedModel` and optax's `ema` fixtures, layouts, the
//! accumulator type, checkpoints and errors.

use std::collections::BTreeMap;

use ndarray::{Array2, ArrayD, ArrayViewD, IxDyn, ShapeBuilder, array, s};
use ndarray_optim::{AveragedModel, Averaging, Element, Error};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::common::{bits, values};
use crate::layouts::{LAYOUTS, Layout, Stored};

#[derive(Deserialize)]
struct Fixtures {
    updates: usize,
    parameters: BTreeMap<String, Vec<Snapshots>>,
    averages: Vec<AverageCase>,
}

/// One tensor's parameter after every step of the run being averaged.
#[derive(Deserialize)]
struct Snapshots {
    name: String,
    shape: Vec<usize>,
    values: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct AverageCase {
    name: String,
    source: String,
    dtype: String,
    accumulator_dtype: String,
    average: Spec,
    /// Per tensor, the average after every update.
    averages: BTreeMap<String, Vec<Vec<f64>>>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Spec {
    Swa,
    Ema { decay: f64, warmup: bool },
    OptaxEma { decay: f64, debias: bool },
}

impl From<Spec> for Averaging {
    fn from(spec: Spec) -> Self {
        match spec {
            Spec::Swa => Averaging::Swa,
            Spec::Ema { decay, warmup } => Averaging::Ema { decay, warmup },
            Spec::OptaxEma { decay, debias } => Averaging::OptaxEma { decay, debias },
        }
    }
}

fn fixtures() -> Fixtures {
    let path = format!("{}/tests/reference/averaging.json", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&json).unwrap()
}

/// Averages the snapshots, each stored in `layout`, with one `update_all` per step; returns
/// every average after every update, row-major, as `f64`.
fn run<A: Element, S: Element>(
    averaging: Averaging,
    snapshots: &[Snapshots],
    layout: Layout,
) -> BTreeMap<String, Vec<Vec<f64>>> {
    let mut model = AveragedModel::<A, S>::new(averaging).unwrap();
    let steps = snapshots[0].values.len();
    let mut out: BTreeMap<String, Vec<Vec<f64>>> = BTreeMap::new();
    for step in 0..steps {
        let mut stored: Vec<Stored<A, IxDyn>> = snapshots
            .iter()
            .map(|tensor| {
                let logical = ArrayD::from_shape_vec(
                    IxDyn(&tensor.shape),
                    tensor.values[step].iter().map(|&x| A::from_f64(x)).collect(),
                )
                .unwrap();
                Stored::new(IxDyn(&tensor.shape), layout, &logical)
            })
            .collect();
        let views: Vec<_> = stored.iter_mut().map(Stored::view).collect();
        let batch: Vec<(&str, ArrayViewD<'_, A>)> =
            snapshots.iter().map(|t| t.name.as_str()).zip(views.iter().map(|v| v.view())).collect();
        model.update_all(&batch).unwrap();
        for tensor in snapshots {
            let average = model.get(&tensor.name).unwrap();
            out.entry(tensor.name.clone())
                .or_default()
                .push(average.iter().map(|x| x.into_f64()).collect());
        }
    }
    assert_eq!(model.count(&snapshots[0].name), Some(steps as u64));
    out
}

/// PyTorch's CPU `lerp` with a weight below ½ rounds `a + w(b − a)` once (FMA), this crate
/// twice: these cases agree within the tolerance, every other one bit for bit.
const FMA_CASES: [&str; 4] =
    ["torch-ema-f64", "torch-ema-f32", "torch-ema-warmup-f64", "torch-ema-warmup-f32"];

#[test]
fn averages_match_pytorch_and_optax() {
    let fixtures = fixtures();
    assert!(fixtures.updates >= 50);
    let mut kinds = BTreeMap::<(&str, &str), usize>::new();
    for case in &fixtures.averages {
        let snapshots = &fixtures.parameters[&case.dtype];
        let averaging = Averaging::from(case.average);
        let runs: Vec<_> = LAYOUTS
            .iter()
            .map(|&layout| match (case.dtype.as_str(), case.accumulator_dtype.as_str()) {
                ("f64", "f64") => run::<f64, f64>(averaging, snapshots, layout),
                ("f32", "f32") => run::<f32, f32>(averaging, snapshots, layout),
                ("f32", "f64") => run::<f32, f64>(averaging, snapshots, layout),
                other => panic!("{}: no run for {other:?}", case.name),
            })
            .collect();
        for (layout, other) in LAYOUTS.iter().zip(&runs).skip(1) {
            assert!(*other == runs[0], "{}: {layout:?} differs from row-major", case.name);
        }
        let exact = !FMA_CASES.contains(&case.name.as_str());
        let (absolute, relative) =
            if case.accumulator_dtype == "f32" { (1e-6, 1e-4) } else { (1e-12, 1e-9) };
        for (name, expected) in &case.averages {
            let got = &runs[0][name];
            assert_eq!(got.len(), fixtures.updates, "{}: `{name}`", case.name);
            for (update, (row, reference)) in got.iter().zip(expected).enumerate() {
                for (index, (&x, &r)) in row.iter().zip(reference).enumerate() {
                    let close = (x - r).abs() <= absolute + relative * r.abs();
                    assert!(
                        if exact { x.to_bits() == r.to_bits() } else { close },
                        "{} ({}): `{name}`[{index}] after update {}: {x} vs reference {r}",
                        case.name,
                        case.source,
                        update + 1
                    );
                }
            }
        }
        let kind = match case.average {
            Spec::Swa => "swa",
            Spec::Ema { warmup: false, .. } => "ema",
            Spec::Ema { warmup: true, .. } => "ema-warmup",
            Spec::OptaxEma { debias: false, .. } => "optax-ema",
            Spec::OptaxEma { debias: true, .. } => "optax-ema-debias",
        };
        *kinds.entry((kind, case.dtype.as_str())).or_default() += 1;
    }
    for kind in ["swa", "ema", "ema-warmup", "optax-ema", "optax-ema-debias"] {
        for dtype in ["f32", "f64"] {
            assert!(kinds.contains_key(&(kind, dtype)), "no {kind} {dtype} fixture");
        }
    }
}

/// Every averaging, each with a wider accumulator and its own.
fn averagings() -> [Averaging; 6] {
    [
        Averaging::Swa,
        Averaging::Ema { decay: 0.9, warmup: false },
        Averaging::Ema { decay: 0.3, warmup: false },
        Averaging::Ema { decay: 0.999, warmup: true },
        Averaging::OptaxEma { decay: 0.9, debias: false },
        Averaging::OptaxEma { decay: 0.8, debias: true },
    ]
}

/// Snapshot `step` of three tensors: a matrix, a 0-D scalar and a 3-D tensor.
fn snapshot<A: Element>(step: u64) -> [(&'static str, ArrayD<A>); 3] {
    [
        ("w", values(&[3, 4], step)),
        ("s", values(&[], 100 + step)),
        ("k", values(&[2, 1, 3], 200 + step)),
    ]
}

fn update<A: Element, S: Element>(model: &mut AveragedModel<A, S>, steps: std::ops::Range<u64>) {
    for step in steps {
        let tensors = snapshot::<A>(step);
        let batch: Vec<_> = tensors.iter().map(|(name, t)| (*name, t.view())).collect();
        model.update_all(&batch).unwrap();
    }
}

fn average_bits<A: Element, S: Element>(model: &AveragedModel<A, S>) -> Vec<Vec<u64>> {
    model.names().iter().map(|name| bits(model.get(name).unwrap().iter())).collect()
}

fn check_resume<A, S>(averaging: Averaging)
where
    A: Element,
    S: Element + serde::Serialize + DeserializeOwned,
{
    let mut uninterrupted = AveragedModel::<A, S>::new(averaging).unwrap();
    update(&mut uninterrupted, 0..9);
    let mut model = AveragedModel::<A, S>::new(averaging).unwrap();
    update(&mut model, 0..4);
    let json: AveragedModel<A, S> =
        serde_json::from_str(&serde_json::to_string(&model).unwrap()).unwrap();
    let postcard: AveragedModel<A, S> =
        postcard::from_bytes(&postcard::to_stdvec(&model).unwrap()).unwrap();
    assert!(json == model && postcard == model, "{averaging:?}: the round trip changed the model");
    for mut resumed in [json, postcard] {
        update(&mut resumed, 4..9);
        assert_eq!(average_bits(&resumed), average_bits(&uninterrupted), "{averaging:?}");
        assert_eq!(resumed.count("k"), Some(9));
    }
}

#[test]
fn a_checkpoint_resumes_bit_for_bit() {
    for averaging in averagings() {
        check_resume::<f32, f32>(averaging);
        check_resume::<f64, f64>(averaging);
        check_resume::<f32, f64>(averaging);
        check_resume::<f64, f32>(averaging);
    }
}

#[test]
fn the_serialized_form_is_sorted_and_names_its_averaging() {
    let mut model =
        AveragedModel::<f32>::new(Averaging::OptaxEma { decay: 0.5, debias: true }).unwrap();
    model.update("b", &array![1.0_f32, 2.0]).unwrap();
    model.update("a", &array![4.0_f32]).unwrap();
    let json = serde_json::to_value(&model).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "averaging": {"optax_ema": {"decay": 0.5, "debias": true}},
            "dtype": "f32",
            "tensors": [
                // The raw EMA (1 − d)·θ, then the debiased average (1 − d)·θ / (1 − d).
                {"name": "a", "count": 1, "shape": [1], "swapped": false, "buffers": [2.0, 4.0]},
                {"name": "b", "count": 1, "shape": [2], "swapped": false,
                 "buffers": [0.5, 1.0, 1.0, 2.0]},
            ]
        })
    );
}

#[test]
fn swa_is_the_mean_and_ema_starts_from_the_first_snapshot() {
    let mut swa = AveragedModel::<f64>::new(Averaging::Swa).unwrap();
    let mut ema = AveragedModel::<f64>::new(Averaging::Ema { decay: 0.75, warmup: false }).unwrap();
    let mut optax =
        AveragedModel::<f64>::new(Averaging::OptaxEma { decay: 0.75, debias: false }).unwrap();
    for x in [1.0, 2.0, 6.0] {
        for model in [&mut swa, &mut ema, &mut optax] {
            model.update("x", &array![x]).unwrap();
        }
    }
    assert_eq!(swa.get("x").unwrap()[[0]], 3.0);
    // 1, then 0.75·1 + 0.25·2 = 1.25, then 0.75·1.25 + 0.25·6 = 2.4375
    assert_eq!(ema.get("x").unwrap()[[0]], 2.4375);
    // 0.25, then 0.75·0.25 + 0.5 = 0.6875, then 0.75·0.6875 + 1.5 = 2.015625
    assert_eq!(optax.get("x").unwrap()[[0]], 2.015625);
}

#[test]
fn the_warmup_is_tensorflows() {
    let mut model = AveragedModel::<f64>::new(Averaging::Ema { decay: 0.5, warmup: true }).unwrap();
    model.update("x", &array![0.0]).unwrap();
    // n = 1: min(0.5, 2/11) = 2/11, so the weight of the new snapshot is 9/11.
    model.update("x", &array![11.0]).unwrap();
    assert!((model.get("x").unwrap()[[0]] - 9.0).abs() < 1e-12);
    // From n = 9 on, (1 + n)/(10 + n) >= 10/19 > 0.5: the decay is 0.5.
    for _ in 2..10 {
        model.update("x", &array![9.0]).unwrap();
    }
    model.update("x", &array![1.0]).unwrap();
    assert!((model.get("x").unwrap()[[0]] - 5.0).abs() < 1e-12);
}

#[test]
fn copy_and_swap_put_the_average_into_the_parameter() {
    let mut model = AveragedModel::<f32>::new(Averaging::Swa).unwrap();
    let mut w = array![[1.0_f32, 2.0], [3.0, 4.0]];
    model.update("w", &w).unwrap();
    w.fill(3.0);
    model.update("w", &w).unwrap();
    let average = array![[2.0_f32, 2.5], [3.0, 3.5]];

    let mut eval = Array2::<f32>::zeros((2, 2).f());
    model.copy_into("w", &mut eval).unwrap();
    assert_eq!(eval, average);

    let mut strided = Array2::<f32>::from_elem((2, 4), 3.0);
    let mut view = strided.slice_mut(s![.., ..;2]);
    model.swap_into("w", &mut view).unwrap();
    assert_eq!(view, average);
    assert_eq!(model.is_swapped("w"), Some(true));
    assert_eq!(model.get("w").unwrap(), ArrayD::from_elem(IxDyn(&[2, 2]), 3.0));
    let before = model.clone();
    assert_eq!(model.update("w", &w).unwrap_err(), Error::AverageSwapped { param: "w".to_owned() });
    assert_eq!(
        model.copy_into("w", &mut eval).unwrap_err(),
        Error::AverageSwapped { param: "w".to_owned() }
    );
    assert!(model == before);
    model.swap_into("w", &mut view).unwrap();
    assert_eq!(view, w);
    assert_eq!(model.is_swapped("w"), Some(false));
    model.update("w", &w).unwrap();
    assert_eq!(model.count("w"), Some(3));
}

#[test]
fn a_wider_accumulator_rounds_only_when_copied_out() {
    let mut model = AveragedModel::<f32, f64>::new(Averaging::Swa).unwrap();
    model.update("x", &array![1.0_f32]).unwrap();
    model.update("x", &array![0.0_f32]).unwrap();
    model.update("x", &array![0.0_f32]).unwrap();
    let average = model.get("x").unwrap()[[0]];
    assert!((average - 1.0 / 3.0).abs() < 1e-15 && f64::from(average as f32) != average);
    let mut x = array![0.0_f32];
    model.copy_into("x", &mut x).unwrap();
    assert_eq!(x[0], average as f32);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    for (averaging, key) in [
        (Averaging::Ema { decay: 1.5, warmup: false }, "decay"),
        (Averaging::Ema { decay: f64::NAN, warmup: true }, "decay"),
        (Averaging::OptaxEma { decay: -0.1, debias: false }, "decay"),
        (Averaging::OptaxEma { decay: 1.0, debias: true }, "decay"),
    ] {
        let err = AveragedModel::<f32>::new(averaging).unwrap_err();
        assert!(
            matches!(err, Error::InvalidHyperparameter { key: k, .. } if k == key),
            "{averaging:?}: {err}"
        );
    }
    // Decay 1 keeps the first snapshot, as PyTorch allows.
    let mut frozen =
        AveragedModel::<f32>::new(Averaging::Ema { decay: 1.0, warmup: false }).unwrap();
    frozen.update("x", &array![1.0_f32]).unwrap();
    frozen.update("x", &array![5.0_f32]).unwrap();
    assert_eq!(frozen.get("x").unwrap()[[0]], 1.0);

    let mut model = AveragedModel::<f64>::new(Averaging::Swa).unwrap();
    update(&mut model, 0..2);
    let before = model.clone();
    let (w, wrong) = (values::<f64>(&[3, 4], 7), values::<f64>(&[4, 3], 7));
    assert!(matches!(
        model.update("w", &wrong).unwrap_err(),
        Error::ShapeChanged { ref param, ref registered, ref given }
            if param == "w" && registered == &[3, 4] && given == &[4, 3]
    ));
    // All or nothing: the new tensor and `w` before the failing entry are not updated.
    let batch = [("new", w.view()), ("w", w.view()), ("k", wrong.view())];
    assert!(matches!(model.update_all(&batch).unwrap_err(), Error::ShapeChanged { .. }));
    let scalar = values::<f64>(&[], 1);
    let twice = [("w", w.view()), ("s", scalar.view()), ("w", w.view())];
    assert_eq!(
        model.update_all(&twice).unwrap_err(),
        Error::DuplicateParam { param: "w".to_owned(), in_what: "batch" }
    );
    let new_twice = [("n", w.view()), ("n", w.view())];
    assert!(matches!(model.update_all(&new_twice).unwrap_err(), Error::DuplicateParam { .. }));
    assert!(model == before);
    let mut out = ArrayD::<f64>::zeros(IxDyn(&[3, 4]));
    assert_eq!(
        model.copy_into("kk", &mut out).unwrap_err(),
        Error::NotAveraged { param: "kk".to_owned(), closest: Some("k".to_owned()) }
    );
    assert!(matches!(model.copy_into("k", &mut out).unwrap_err(), Error::ShapeChanged { .. }));
    assert!(out.iter().all(|&x| x == 0.0));
    assert_eq!(model.get("nothing"), None);
    assert_eq!(model.count("nothing"), None);
    assert_eq!(model.names(), ["k", "s", "w"]);
}

#[test]
fn bad_checkpoints_are_refused() {
    let mut model =
        AveragedModel::<f32>::new(Averaging::OptaxEma { decay: 0.5, debias: true }).unwrap();
    model.update("a", &array![1.0_f32, 2.0]).unwrap();
    let good = serde_json::to_value(&model).unwrap();
    let refused = |edit: &dyn Fn(&mut serde_json::Value), needle: &str| {
        let mut json = good.clone();
        edit(&mut json);
        let err = serde_json::from_value::<AveragedModel<f32>>(json).unwrap_err().to_string();
        assert!(err.contains(needle), "{err} does not mention {needle}");
    };
    refused(&|j| j["dtype"] = "f64".into(), "dtype");
    refused(&|j| j["averaging"]["optax_ema"]["decay"] = 1.0.into(), "decay");
    refused(&|j| j["tensors"][0]["count"] = 0.into(), "no snapshots");
    refused(&|j| j["tensors"][0]["buffers"] = serde_json::json!([1.0, 2.0]), "2 values");
    refused(&|j| j["tensors"][0]["shape"] = serde_json::json!([usize::MAX, 2]), "overflows");
    refused(
        &|j| {
            let tensor = j["tensors"][0].clone();
            j["tensors"].as_array_mut().unwrap().push(tensor);
        },
        "more than once",
    );
    refused(&|j| j["tensors"][0]["extra"] = 1.into(), "unknown field");
    // Another accumulator type: the values would be read as another type.
    assert!(serde_json::from_value::<AveragedModel<f32, f64>>(good).is_err());
}

#[test]
fn zero_sized_and_five_dimensional_tensors() {
    let mut model =
        AveragedModel::<f32>::new(Averaging::OptaxEma { decay: 0.5, debias: true }).unwrap();
    let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 3]));
    let five = values::<f32>(&[1, 2, 1, 2, 2], 3);
    for _ in 0..3 {
        model.update_all(&[("empty", empty.view()), ("five", five.view())]).unwrap();
    }
    assert_eq!(model.get("empty").unwrap().shape(), [0, 3]);
    // The debiased average of a constant is that constant, up to rounding.
    for (a, p) in model.get("five").unwrap().iter().zip(&five) {
        assert!((a - p).abs() <= 1e-6 * p.abs());
    }
}
