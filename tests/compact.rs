//! Optimizer state in low precision (`StatePrecision`): the same bits for every layout and
//! thread count, the bytes it occupies, conversions, and what is refused.

use ndarray::{Array2, ShapeBuilder};
use ndarray_optim::compact::{QuantMap, bf16_bits, bf16_value, dequantize_block, quantize_block};
use ndarray_optim::{
    Adam, AdamW, Clip, Error, KernelPath, Lamb, Momentum, Optimizer, RmsProp, Rule, Sgd,
    StatePrecision, TensorView, last_kernel_path, with_kernel_path,
};

const PRECISIONS: [StatePrecision; 2] = [StatePrecision::Bf16, StatePrecision::INT8];

/// Gradients of many magnitudes, so that blocks use many codes.
fn gradient(step: usize, shape: (usize, usize)) -> Array2<f32> {
    Array2::from_shape_fn(shape, |(i, j)| {
        let k = (i * shape.1 + j + 31 * step) as f32;
        (k * 0.618_034).sin() * 10_f32.powi((k as i32 % 5) - 3)
    })
}

fn state_bits(view: TensorView<'_, f32>) -> Vec<u32> {
    view.buffers()
        .flat_map(|(_, values)| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        .collect()
}

/// Runs `f` on a pool of `threads` threads (on this thread without the `rayon` feature).
fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "rayon")]
    return rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f);
    #[cfg(not(feature = "rayon"))]
    {
        let _ = threads;
        f()
    }
}

/// The thread counts a step is compared on: 1 to 3 with the `rayon` feature.
const THREADS: &[usize] = if cfg!(feature = "rayon") { &[1, 2, 3] } else { &[1] };

/// A shape large enough for a step to be split over threads (69,000 elements, over twice
/// the smallest chunk), with a partial last block (69,000 = 269 · 256 + 136).
const SPLIT: (usize, usize) = (300, 230);

/// Runs five AdamW steps of a tensor of shape [`SPLIT`] held in the layout `place` gives,
/// on `threads` threads.
fn run(
    precision: StatePrecision,
    threads: usize,
    place: fn(&Array2<f32>) -> Array2<f32>,
) -> (Vec<u32>, Vec<u32>) {
    on_threads(threads, || steps(precision, place, gradient))
}

/// Five AdamW steps of a tensor of shape [`SPLIT`] held in the layout `place` gives, with
/// the gradients of `gradient`, on this thread: the parameter's and the state's bits.
fn steps(
    precision: StatePrecision,
    place: fn(&Array2<f32>) -> Array2<f32>,
    gradient: fn(usize, (usize, usize)) -> Array2<f32>,
) -> (Vec<u32>, Vec<u32>) {
    let shape = SPLIT;
    let mut opt =
        Optimizer::new(AdamW { lr: 0.01, weight_decay: 0.1, ..AdamW::default() }).unwrap();
    opt.set_state_precision("default", precision).unwrap();
    let mut w = place(&Array2::from_shape_fn(shape, |(i, j)| ((i + 2 * j) as f32).cos()));
    for step in 0..5 {
        let g = place(&gradient(step, shape));
        opt.step("w", &mut w, &g).unwrap();
    }
    let params = w.iter().map(|v| v.to_bits()).collect();
    (params, state_bits(opt.state_of("w").unwrap()))
}

/// [`gradient`] with values that test the conversions' edges in some blocks: ±∞, NaN, huge
/// and subnormal magnitudes, and signed zeros.
fn hostile_gradient(step: usize, shape: (usize, usize)) -> Array2<f32> {
    let mut g = gradient(step, shape);
    let specials = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 3e38, -1e-40, -0.0, 0.0, 1e30];
    for (k, value) in specials.into_iter().enumerate() {
        g[[(37 * k + 11 * step) % shape.0, (13 * k) % shape.1]] = value;
    }
    g
}

/// Every loop the CPU can run (the baseline, AVX2, AVX-512) gives the same bits, for the
/// conversions' edge values too; the step reports the loop it took.
#[test]
fn low_precision_state_is_the_same_on_every_kernel_path() {
    for precision in PRECISIONS {
        for gradient in [gradient, hostile_gradient] {
            let expected =
                with_kernel_path(KernelPath::Baseline, || steps(precision, row_major, gradient))
                    .unwrap();
            for path in KernelPath::ALL {
                let Some((got, taken)) = with_kernel_path(path, || {
                    (steps(precision, column_major, gradient), last_kernel_path())
                }) else {
                    continue;
                };
                assert!(got == expected, "{precision:?} {path:?}");
                // Blocks are contiguous: a pinned strided path runs the baseline loop.
                let runs = if path == KernelPath::Zip { KernelPath::Baseline } else { path };
                assert_eq!(taken, Some(runs), "{precision:?} {path:?}");
            }
        }
    }
}

fn row_major(a: &Array2<f32>) -> Array2<f32> {
    a.clone()
}

fn column_major(a: &Array2<f32>) -> Array2<f32> {
    let mut out = Array2::zeros(a.raw_dim().f());
    out.assign(a);
    out
}

#[test]
fn low_precision_state_is_the_same_for_every_layout_and_thread_count() {
    for precision in PRECISIONS {
        let expected = run(precision, 1, row_major);
        for &threads in THREADS {
            assert_eq!(
                run(precision, threads, column_major),
                expected,
                "{precision:?} column-major, {threads} threads"
            );
            assert_eq!(
                run(precision, threads, row_major),
                expected,
                "{precision:?} {threads} threads"
            );
        }
        // A strided view of a larger array.
        let strided = {
            let shape = SPLIT;
            let mut opt =
                Optimizer::new(AdamW { lr: 0.01, weight_decay: 0.1, ..AdamW::default() }).unwrap();
            opt.set_state_precision("default", precision).unwrap();
            let mut big = Array2::<f32>::zeros((2 * shape.0, shape.1));
            big.slice_mut(ndarray::s![..;2, ..])
                .assign(&Array2::from_shape_fn(shape, |(i, j)| ((i + 2 * j) as f32).cos()));
            for step in 0..5 {
                let g = gradient(step, shape);
                opt.step("w", &mut big.slice_mut(ndarray::s![..;2, ..]), &g).unwrap();
            }
            let params = big.slice(ndarray::s![..;2, ..]).iter().map(|v| v.to_bits()).collect();
            (params, state_bits(opt.state_of("w").unwrap()))
        };
        assert_eq!(strided, expected, "{precision:?} strided view");
    }
}

/// `values` as `precision` stores them, rounded by the public conversions: bfloat16, or
/// 8-bit codes of `map` in blocks of 256 in row-major order.
fn stored_as(precision: StatePrecision, map: QuantMap, values: &[f32]) -> Vec<f32> {
    match precision {
        StatePrecision::Bf16 => values.iter().map(|&x| bf16_value(bf16_bits(x))).collect(),
        _ => values
            .chunks(256)
            .flat_map(|block| {
                let mut codes = vec![0; block.len()];
                let scale = quantize_block(block, map, &mut codes);
                let mut back = vec![0.0; block.len()];
                dequantize_block(&codes, scale, map, &mut back);
                back
            })
            .collect(),
    }
}

/// From zero state, a first step moves the parameter by the full-precision moments, so it
/// is the step of full-precision state; the state is then that step's, rounded. Checked for
/// every options stage (clipping by value or norm, L2 or decoupled decay, maximize), for
/// rules of one, two and three per-element buffers (bfloat16 keeps two in pairs, and the
/// others one after the other), and for a row-major and a column-major tensor.
#[test]
fn the_options_stage_runs_on_low_precision_state_as_on_full_precision() {
    let rmsprop = RmsProp { lr: 0.01, centered: true, ..RmsProp::default() };
    let rules = [
        Rule::from(Adam { lr: 0.01, weight_decay: 0.1, maximize: true, ..Adam::default() }),
        Rule::from(AdamW { lr: 0.01, weight_decay: 0.1, ..AdamW::default() }),
        Rule::from(Adam { lr: 0.01, ..Adam::default() }),
        Rule::from(AdamW { lr: 0.01, amsgrad: true, ..AdamW::default() }),
        Rule::from(Momentum { lr: 0.01, weight_decay: 0.1, ..Momentum::default() }),
        Rule::from(rmsprop),
        Rule::from(RmsProp { momentum: 0.9, maximize: true, ..rmsprop }),
    ];
    // The buffers the rules keep non-negative, stored with the unsigned 8-bit map.
    let non_negative = ["exp_avg_sq", "max_exp_avg_sq", "square_avg"];
    let clips = [None, Some(Clip::Value { clip_value: 0.05 }), Some(Clip::Norm { max_norm: 0.5 })];
    let shape = (70, 130);
    for precision in PRECISIONS {
        for rule in &rules {
            for clip in clips {
                for place in [row_major, column_major] {
                    let first_step = |precision| {
                        let mut opt = Optimizer::new(*rule).unwrap();
                        opt.set_clip(clip).unwrap();
                        opt.set_state_precision("default", precision).unwrap();
                        let mut w = place(&Array2::from_shape_fn(shape, |(i, j)| {
                            ((i + 2 * j) as f32).cos()
                        }));
                        opt.step("w", &mut w, &place(&gradient(0, shape))).unwrap();
                        let view = opt.state_of("w").unwrap();
                        let state: Vec<(&str, Vec<f32>)> = view
                            .buffers()
                            .map(|(name, values)| (name, values.iter().copied().collect()))
                            .collect();
                        (w, state)
                    };
                    let case = format!("{precision:?} {rule:?} {clip:?}");
                    let (w_full, state_full) = first_step(StatePrecision::Full);
                    let (w, state) = first_step(precision);
                    let bits = |w: &Array2<f32>| w.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&w), bits(&w_full), "{case}: parameters");
                    assert_eq!(state.len(), state_full.len(), "{case}");
                    for ((name, values), (_, full)) in state.iter().zip(&state_full) {
                        let map = if non_negative.contains(name) {
                            QuantMap::Unsigned
                        } else {
                            QuantMap::Signed
                        };
                        assert_eq!(values, &stored_as(precision, map, full), "{case}: {name}");
                    }
                }
            }
        }
    }
}

#[test]
fn low_precision_state_occupies_its_stored_bytes() {
    let mut opt = Optimizer::new(Adam { amsgrad: true, ..Adam::default() }).unwrap();
    opt.add_group("bf16", Adam { amsgrad: true, ..Adam::default() }).unwrap();
    opt.set_state_precision("default", StatePrecision::INT8).unwrap();
    opt.set_state_precision("bf16", StatePrecision::Bf16).unwrap();
    opt.assign("h", "bf16").unwrap();
    let g = gradient(0, (70, 130));
    let (mut w, mut h) = (Array2::<f32>::zeros((70, 130)), Array2::<f32>::zeros((70, 130)));
    let mut small = Array2::<f32>::zeros((10, 10));
    opt.step("w", &mut w, &g).unwrap();
    opt.step("h", &mut h, &g).unwrap();
    opt.step("small", &mut small, &g.slice(ndarray::s![..10, ..10])).unwrap();
    // Three buffers each: codes and one scale per 256 values (36 blocks), bfloat16, and
    // f32 below the 8-bit threshold of 4,096 elements.
    assert_eq!(opt.state_of("w").unwrap().bytes(), 3 * (9100 + 4 * 36));
    assert_eq!(opt.state_of("h").unwrap().bytes(), 3 * 2 * 9100);
    assert_eq!(opt.state_of("small").unwrap().bytes(), 3 * 4 * 100);
}

#[test]
fn converting_state_rounds_it_once_and_expanding_it_keeps_the_values() {
    for precision in PRECISIONS {
        let mut opt = Optimizer::new(Adam::default()).unwrap();
        let mut w = Array2::<f32>::zeros((64, 64));
        opt.step("w", &mut w, &gradient(0, (64, 64))).unwrap();
        let full: Vec<f32> =
            opt.state_of("w").unwrap().buffer("exp_avg").unwrap().iter().copied().collect();
        opt.set_state_precision("default", precision).unwrap();
        let rounded: Vec<f32> =
            opt.state_of("w").unwrap().buffer("exp_avg").unwrap().iter().copied().collect();
        // bfloat16 keeps 8 significant bits; 8-bit codes are within half the widest gap of
        // the map (0.014) times the block's largest magnitude.
        for (block, (xs, ys)) in full.chunks(256).zip(rounded.chunks(256)).enumerate() {
            let largest = xs.iter().fold(0.0_f32, |m, x| m.max(x.abs()));
            for (x, y) in xs.iter().zip(ys) {
                let bound = match precision {
                    StatePrecision::Bf16 => x.abs() / 256.0,
                    _ => 0.0071 * largest,
                };
                assert!((x - y).abs() <= bound, "{precision:?} block {block}: {x} became {y}");
            }
        }
        assert_ne!(full, rounded, "{precision:?} rounds");
        // Back to full precision: the rounded values, exactly; and again: nothing changes.
        opt.set_state_precision("default", StatePrecision::Full).unwrap();
        let expanded: Vec<f32> =
            opt.state_of("w").unwrap().buffer("exp_avg").unwrap().iter().copied().collect();
        assert_eq!(expanded, rounded);
        assert_eq!(opt.state_bytes(), 2 * 4 * 64 * 64);
    }
}

#[test]
fn a_tensor_moved_to_a_group_takes_its_precision() {
    let mut opt = Optimizer::new(Adam::default()).unwrap();
    opt.add_group("low", Adam::default()).unwrap();
    opt.set_state_precision("low", StatePrecision::Bf16).unwrap();
    let mut w = Array2::<f32>::zeros((8, 8));
    opt.step("w", &mut w, &gradient(0, (8, 8))).unwrap();
    assert_eq!(opt.state_bytes(), 2 * 4 * 64);
    opt.assign("w", "low").unwrap();
    assert_eq!(opt.state_bytes(), 2 * 2 * 64);
    opt.assign("w", "default").unwrap();
    assert_eq!(opt.state_bytes(), 2 * 4 * 64);
}

#[test]
fn low_precision_state_is_refused_where_it_is_not_defined() {
    let mut opt = Optimizer::<Adam, f64>::new(Adam::default()).unwrap();
    let refused = opt.set_state_precision("default", StatePrecision::Bf16).unwrap_err();
    assert!(matches!(refused, Error::UnsupportedStatePrecision { rule: "adam", .. }), "{refused}");
    assert!(refused.to_string().contains("f32"));
    // Full precision is always fine.
    opt.set_state_precision("default", StatePrecision::Full).unwrap();

    let mut opt = Optimizer::<Lamb, f32>::new(Lamb::default()).unwrap();
    let refused = opt.set_state_precision("default", StatePrecision::INT8).unwrap_err();
    assert!(matches!(refused, Error::UnsupportedStatePrecision { rule: "lamb", .. }), "{refused}");
    assert_eq!(opt.groups()[0].state_precision(), StatePrecision::Full, "nothing changed");

    let mut opt = Optimizer::<Adam, f32>::new(Adam::default()).unwrap();
    assert!(matches!(
        opt.set_state_precision("nope", StatePrecision::Bf16),
        Err(Error::UnknownGroup { .. })
    ));

    // A group with low-precision state cannot switch to a rule that is not elementwise.
    let mut opt =
        Optimizer::<Rule, f32>::new(Rule::from(Sgd { lr: 0.1, ..Sgd::default() })).unwrap();
    opt.set_state_precision("default", StatePrecision::Bf16).unwrap();
    let refused = opt.set_hyper("default", Rule::from(Lamb::default())).unwrap_err();
    assert!(matches!(refused, Error::UnsupportedStatePrecision { .. }), "{refused}");
}

/// A way through a checkpoint and back.
type Route = fn(Optimizer<Adam, f32>) -> Optimizer<Adam, f32>;

/// An edit of one stored buffer and its values.
type Edit = fn(&mut ndarray_optim::checkpoint::StoredValues, &mut Vec<f32>);

/// Six steps of two tensors, one group with 8-bit state and one with bfloat16, saved and
/// restored after step `save_after` through `route`: the parameters and stored state end
/// bit for bit as in the run without a break.
fn resumed(
    save_after: Option<usize>,
    route: fn(Optimizer<Adam, f32>) -> Optimizer<Adam, f32>,
) -> Vec<u32> {
    let mut opt = Optimizer::new(Adam { lr: 0.01, ..Adam::default() }).unwrap();
    opt.add_group("half", Adam { lr: 0.02, amsgrad: true, ..Adam::default() }).unwrap();
    opt.set_state_precision("default", StatePrecision::INT8).unwrap();
    opt.set_state_precision("half", StatePrecision::Bf16).unwrap();
    opt.assign("h", "half").unwrap();
    let (mut w, mut h) = (Array2::<f32>::zeros((70, 130)), Array2::<f32>::ones((5, 7)));
    for step in 0..6 {
        if save_after == Some(step) {
            opt = route(opt);
        }
        opt.step("w", &mut w, &gradient(step, (70, 130))).unwrap();
        opt.step("h", &mut h, &gradient(step + 9, (5, 7))).unwrap();
    }
    let mut bits: Vec<u32> = w.iter().chain(&h).map(|v| v.to_bits()).collect();
    bits.extend(state_bits(opt.state_of("w").unwrap()));
    bits.extend(state_bits(opt.state_of("h").unwrap()));
    bits
}

#[test]
fn low_precision_state_resumes_bit_for_bit_from_checkpoints() {
    use ndarray_optim::Checkpoint;
    use ndarray_optim::checkpoint::Encoding;

    let routes: [(&str, Route); 4] = [
        ("serde json", |opt| serde_json::from_slice(&serde_json::to_vec(&opt).unwrap()).unwrap()),
        ("serde postcard", |opt| {
            postcard::from_bytes(&postcard::to_stdvec(&opt).unwrap()).unwrap()
        }),
        ("json bytes", |opt| {
            let bytes = opt.checkpoint().to_bytes(Encoding::Json).unwrap();
            Optimizer::from_checkpoint(Checkpoint::from_bytes(&bytes).unwrap()).unwrap()
        }),
        ("postcard bytes", |opt| {
            let bytes = opt.checkpoint().to_bytes(Encoding::Postcard).unwrap();
            Optimizer::from_checkpoint(Checkpoint::from_bytes(&bytes).unwrap()).unwrap()
        }),
    ];
    // Whole optimizers compare equal across a round trip, stored bytes and all.
    let mut opt = Optimizer::new(Adam::default()).unwrap();
    opt.set_state_precision("default", StatePrecision::INT8).unwrap();
    opt.step("w", &mut Array2::<f32>::zeros((70, 130)), &gradient(0, (70, 130))).unwrap();
    let bytes = opt.checkpoint().to_bytes(Encoding::Postcard).unwrap();
    assert!(Optimizer::from_checkpoint(Checkpoint::from_bytes(&bytes).unwrap()).unwrap() == opt);

    let whole = resumed(None, |opt| opt);
    for (name, route) in routes {
        for save_after in [1, 4] {
            assert_eq!(
                resumed(Some(save_after), route),
                whole,
                "{name}, saved after step {save_after}"
            );
        }
    }
}

#[test]
fn checkpoints_with_wrongly_stored_state_are_refused() {
    use ndarray_optim::checkpoint::StoredValues;

    let mut opt = Optimizer::new(Adam::default()).unwrap();
    opt.set_state_precision("default", StatePrecision::INT8).unwrap();
    opt.step("w", &mut Array2::<f32>::zeros((64, 64)), &gradient(0, (64, 64))).unwrap();
    let good = opt.checkpoint();
    let record = good.tensors[0].state.as_ref().unwrap();
    assert!(record.buffers.iter().all(|buffer| buffer.values.is_empty()));
    let edits: [(&str, Edit); 4] = [
        ("a code too few", |stored, _| {
            if let StoredValues::Int8 { codes, .. } = stored {
                codes.pop();
            }
        }),
        ("a negative scale", |stored, _| {
            if let StoredValues::Int8 { scales, .. } = stored {
                scales[3] = -1.0;
            }
        }),
        ("another format", |stored, _| *stored = StoredValues::Bf16 { bits: vec![0; 4096] }),
        ("values besides", |_, values| values.push(1.0)),
    ];
    for (what, edit) in edits {
        let mut bad = good.clone();
        let buffer = &mut bad.tensors[0].state.as_mut().unwrap().buffers[1];
        edit(buffer.stored.as_mut().unwrap(), &mut buffer.values);
        let refused = Optimizer::from_checkpoint(bad).unwrap_err();
        assert!(matches!(refused, Error::InvalidTensorState { .. }), "{what}: {refused}");
    }
    // A group said to keep full precision with state stored in 8 bits, and the reverse.
    let mut bad = good.clone();
    bad.groups[0].state_precision = StatePrecision::Full;
    assert!(matches!(Optimizer::from_checkpoint(bad), Err(Error::InvalidTensorState { .. })));
    let mut opt = Optimizer::new(Adam::default()).unwrap();
    opt.step("w", &mut Array2::<f32>::zeros((64, 64)), &gradient(0, (64, 64))).unwrap();
    let mut bad = opt.checkpoint();
    bad.groups[0].state_precision = StatePrecision::Bf16;
    assert!(matches!(Optimizer::from_checkpoint(bad), Err(Error::InvalidTensorState { .. })));
}
