//! Steady-state steps allocate nothing: a counting global allocator watches this thread and,
//! for the threaded path, the threads of the pool the test makes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
#[cfg(feature = "rayon")]
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{Array2, Array3, ArrayD, IxDyn, ShapeBuilder, s};
use ndarray_optim::{Element, FlatParams, Optimizer, ParamGrad, UpdateRule};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::{RuleCheck, for_each_rule};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<Option<u64>> = const { Cell::new(None) };
    static BYTES: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Allocations made by the threads of the pools that `counted_pool` builds.
#[cfg(feature = "rayon")]
static POOL_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

#[cfg(feature = "rayon")]
thread_local! {
    static IN_COUNTED_POOL: Cell<bool> = const { Cell::new(false) };
}

// SAFETY-free: only forwards to the system allocator and bumps a thread-local counter while
// a test is counting.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get().map(|n| n + 1)));
        let _ = BYTES.try_with(|bytes| bytes.set(bytes.get().map(|n| n + layout.size() as u64)));
        #[cfg(feature = "rayon")]
        if IN_COUNTED_POOL.try_with(Cell::get).unwrap_or(false) {
            POOL_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above, for `dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// How many allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|count| count.set(Some(0)));
    f();
    ALLOCATIONS.with(|count| count.replace(None)).unwrap_or(0)
}

/// How many bytes `f` allocates on this thread, counting every allocation (not the peak).
pub fn allocated_bytes<T>(f: impl FnOnce() -> T) -> (T, u64) {
    BYTES.with(|bytes| bytes.set(Some(0)));
    let result = f();
    (result, BYTES.with(|bytes| bytes.replace(None)).unwrap_or(0))
}

struct NoAllocation;

impl RuleCheck for NoAllocation {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        let mut opt = Optimizer::<R, A>::new(rule.clone()).unwrap();
        opt.add_group("other", rule.clone()).unwrap();
        opt.assign("layer.bias", "other").unwrap();
        let mut weight = Array2::<A>::zeros((64, 33));
        let mut f_order = Array3::<A>::zeros((5, 6, 7).f());
        let mut wide = Array2::<A>::zeros((16, 40));
        let mut bias = ArrayD::<A>::zeros(IxDyn(&[3, 1, 2, 5]));
        let g_weight = Array2::from_elem((64, 33), A::from_f64(0.25));
        let g_f = Array3::from_elem((5, 6, 7).f(), A::from_f64(-0.5));
        let g_wide = Array2::from_elem((16, 20), A::from_f64(0.125));
        let g_bias = ArrayD::from_elem(IxDyn(&[3, 1, 2, 5]), A::from_f64(1.5));
        // A flat block for the rules that can step one.
        let mut block = FlatParams::<A>::new("block", [("w", &[4, 3][..]), ("b", &[3])]).unwrap();
        block.grads_mut().fill(A::from_f64(0.5));
        let mut steps = |opt: &mut Optimizer<R, A>| {
            if rule.elementwise() {
                opt.step_flat(&mut block).unwrap();
            }
            opt.step("layer.weight", &mut weight, &g_weight).unwrap();
            opt.step("f", &mut f_order, &g_f).unwrap();
            opt.step("strided", &mut wide.slice_mut(s![.., ..;2]), &g_wide).unwrap();
            opt.step_all(&mut [
                ParamGrad::new("layer.bias", &mut bias, &g_bias),
                ParamGrad::new("f", &mut f_order, &g_f),
            ])
            .unwrap();
        };
        steps(&mut opt);
        let count = allocations(|| {
            for _ in 0..5 {
                steps(&mut opt);
            }
        });
        assert_eq!(count, 0, "{rule:?} {}: steady-state steps allocated", A::NAME);
        assert_eq!(opt.step_count("layer.bias"), Some(6));
        assert_eq!(opt.step_count("f"), Some(12));
    }
}

#[test]
fn steady_state_steps_do_not_allocate() {
    for_each_rule(&mut NoAllocation);
}

#[test]
fn the_counter_sees_allocations() {
    assert!(allocations(|| drop(vec![1u8; 10])) >= 1);
}

/// Clipping (each kind, through `step_all`), the non-finite check and schedule steps allocate
/// nothing once every tensor has state.
#[test]
fn clipped_and_scheduled_steps_do_not_allocate() {
    use ndarray_optim::schedule::{LrScheduler, ReduceLrOnPlateau, Schedule};
    use ndarray_optim::{Adam, Clip, NonFinite, ParamGrad};

    let clips = [
        Clip::Value { clip_value: 0.1 },
        Clip::Norm { max_norm: 0.5 },
        Clip::GlobalNorm { max_norm: 0.5 },
    ];
    for clip in clips {
        let mut opt = Optimizer::<Adam, f32>::new(Adam::default()).unwrap();
        opt.set_clip(Some(clip)).unwrap();
        opt.set_non_finite(NonFinite::Skip);
        let mut scheduler = LrScheduler::sequential(
            &mut opt,
            vec![
                Schedule::Linear { start_factor: 0.1, end_factor: 1.0, total_iters: 3 },
                Schedule::Cosine { t_max: 10, eta_min: 0.0 },
            ],
            vec![3],
        )
        .unwrap();
        let mut plateau = ReduceLrOnPlateau { patience: 0, ..ReduceLrOnPlateau::default() };
        let mut weight = Array2::<f32>::zeros((64, 33));
        let mut f_order = Array3::<f32>::zeros((5, 6, 7).f());
        let g_weight = Array2::from_elem((64, 33), 0.25_f32);
        let g_f = Array3::from_elem((5, 6, 7).f(), -0.5_f32);
        let mut steps = |opt: &mut Optimizer<Adam, f32>| {
            opt.step_all(&mut [
                ParamGrad::new("weight", &mut weight, &g_weight),
                ParamGrad::new("f", &mut f_order, &g_f),
            ])
            .unwrap();
            scheduler.step(opt).unwrap();
            plateau.step(opt, 1.0).unwrap();
        };
        steps(&mut opt);
        let count = allocations(|| {
            for _ in 0..5 {
                steps(&mut opt);
            }
        });
        assert_eq!(count, 0, "{clip:?}: clipped, scheduled steps allocated");
        assert_eq!(opt.step_count("f"), Some(6));
    }
}

/// `step_model` builds its names in a buffer it keeps: once every tensor has state, its steps
/// of a model of nested structs, a `Vec` of layers and maps allocate nothing, with global-norm
/// clipping and the non-finite check.
#[test]
fn steady_state_model_steps_do_not_allocate() {
    use std::collections::{BTreeMap, HashMap};

    use ndarray::Array1;
    use ndarray_optim::{AdamW, Clip, NonFinite, Parameters};

    #[derive(Clone, Parameters)]
    struct Layer {
        weight: Array2<f32>,
        bias: Array1<f32>,
    }

    #[derive(Clone, Parameters)]
    struct Model {
        layers: Vec<Layer>,
        norms: BTreeMap<String, Array1<f32>>,
        #[optim(rename = "extra_parameters_with_a_long_name")]
        extra: HashMap<String, Array3<f32>>,
    }

    let layer = |inputs, outputs, value| Layer {
        weight: Array2::from_elem((inputs, outputs), value),
        bias: Array1::from_elem(outputs, value),
    };
    let model = |value| Model {
        layers: vec![layer(8, 16, value), layer(16, 16, value), layer(16, 4, value)],
        norms: BTreeMap::from([("first".to_owned(), Array1::from_elem(16, value))]),
        extra: HashMap::from([("cube".to_owned(), Array3::from_elem((2, 3, 4).f(), value))]),
    };
    let mut opt = Optimizer::<AdamW, f32>::new(AdamW::default()).unwrap();
    opt.set_clip(Some(Clip::GlobalNorm { max_norm: 0.5 })).unwrap();
    opt.set_non_finite(NonFinite::Refuse);
    let (mut params, grads) = (model(1.0), model(0.25));
    opt.step_model(&mut params, &grads).unwrap();
    let count = allocations(|| {
        for _ in 0..5 {
            opt.step_model(&mut params, &grads).unwrap();
        }
    });
    assert_eq!(count, 0, "steady-state model steps allocated");
    assert_eq!(opt.step_count("extra_parameters_with_a_long_name.cube"), Some(6));
    assert_eq!(opt.step_count("layers.2.bias"), Some(6));

    // The same model through gradient accumulation and an average of its weights.
    let mut accumulated = ndarray_optim::MultiSteps::new(opt, 3).unwrap();
    let mut ema = ndarray_optim::AveragedModel::<f32>::new(ndarray_optim::Averaging::Ema {
        decay: 0.99,
        warmup: true,
    })
    .unwrap();
    accumulated.step_model(&mut params, &grads).unwrap();
    ema.update_model(&params).unwrap();
    let count = allocations(|| {
        for _ in 0..6 {
            accumulated.step_model(&mut params, &grads).unwrap();
            ema.update_model(&params).unwrap();
        }
    });
    assert_eq!(count, 0, "steady-state accumulation or averaging of a model allocated");
    assert_eq!(accumulated.optimizer().step_count("layers.2.bias"), Some(8));
    assert_eq!(ema.count("norms.first"), Some(7));
}

/// The schedule-free rules' train/eval switch allocates nothing once the model's names have
/// been built, whole model or tensor by tensor, and neither do their steps.
#[test]
fn schedule_free_switch_does_not_allocate() {
    use std::collections::BTreeMap;

    use ndarray_optim::{Rule, ScheduleFreeAdamW, ScheduleFreeSgd};

    fn check<R: ndarray_optim::schedule_free::ScheduleFree>(rule: R) {
        let tensor = |shape: &[usize], value| ArrayD::<f32>::from_elem(IxDyn(shape), value);
        let model = |value| {
            BTreeMap::from([
                ("a_longer_name.weight".to_owned(), tensor(&[4, 8], value)),
                ("bias".to_owned(), tensor(&[8], value)),
            ])
        };
        let mut opt = Optimizer::<R, f32>::new(rule.clone()).unwrap();
        let (mut params, grads) = (model(1.0), model(0.25));
        opt.step_model(&mut params, &grads).unwrap();
        opt.eval(&mut params).unwrap();
        opt.train(&mut params).unwrap();
        let count = allocations(|| {
            for _ in 0..5 {
                opt.step_model(&mut params, &grads).unwrap();
                opt.eval(&mut params).unwrap();
                opt.train(&mut params).unwrap();
                let bias = params.get_mut("bias").unwrap();
                opt.eval_tensor("bias", bias).unwrap();
                opt.train_tensor("bias", bias).unwrap();
            }
        });
        assert_eq!(count, 0, "{rule:?}: schedule-free steps or switches allocated");
    }
    check(ScheduleFreeAdamW::default());
    check(ScheduleFreeSgd::default());
    check(Rule::from(ScheduleFreeSgd::default()));
}

/// Every schedule kind steps without allocating, per-group lists, momentum cycling (which
/// checks each group's new hyperparameters against its stepped tensors) and combinations
/// included.
#[test]
fn every_schedule_kind_steps_without_allocating() {
    use ndarray_optim::schedule::{
        AnnealStrategy, Cyclic, CyclicMode, LrScheduler, OneCycle, PerGroup, Schedule,
    };
    use ndarray_optim::{Adam, Momentum, Rule};

    let cycling = |mode| Cyclic {
        step_size_up: 3,
        mode,
        cycle_momentum: true,
        max_momentum: PerGroup::Each(vec![0.95, 0.9]),
        ..Cyclic::new(vec![0.01, 0.02], 0.1)
    };
    let plans: Vec<(Vec<Schedule>, Option<Vec<u64>>)> = vec![
        (vec![Schedule::MultiStep { milestones: vec![2, 4, 4, 9], gamma: 0.5 }], None),
        (vec![Schedule::Constant { factor: 0.5, total_iters: 3 }], None),
        (vec![Schedule::Polynomial { total_iters: 7, power: 2.0 }], None),
        (vec![Schedule::Cyclic(cycling(CyclicMode::ExpRange))], None),
        (
            vec![Schedule::OneCycle(OneCycle {
                three_phase: true,
                anneal_strategy: AnnealStrategy::Linear,
                cycle_momentum: true,
                ..OneCycle::new(vec![0.1, 0.3], 20)
            })],
            None,
        ),
        (
            vec![
                Schedule::Constant { factor: 0.5, total_iters: 2 },
                Schedule::Cyclic(cycling(CyclicMode::Triangular2)),
                Schedule::Swa {
                    swa_lr: PerGroup::Each(vec![0.01, 0.02]),
                    anneal_epochs: 3,
                    anneal_strategy: AnnealStrategy::Cos,
                },
            ],
            Some(vec![2, 5]),
        ),
        (
            vec![
                Schedule::Cyclic(cycling(CyclicMode::Triangular)),
                Schedule::MultiStep { milestones: vec![3], gamma: 0.5 },
            ],
            None,
        ),
    ];
    for (schedules, milestones) in plans {
        let mut opt = Optimizer::<Rule, f64>::new(Momentum::default().into()).unwrap();
        opt.add_group("adam", Adam::default()).unwrap();
        opt.assign("b", "adam").unwrap();
        let mut scheduler = match milestones {
            Some(milestones) => LrScheduler::sequential(&mut opt, schedules.clone(), milestones),
            None => LrScheduler::chained(&mut opt, schedules.clone()),
        }
        .unwrap();
        let (mut w, mut b) = (Array2::<f64>::zeros((8, 5)), Array2::<f64>::zeros((3, 4)));
        let (gw, gb) = (Array2::from_elem((8, 5), 0.25), Array2::from_elem((3, 4), -0.5));
        let mut steps = |opt: &mut Optimizer<Rule, f64>| {
            opt.step_all(&mut [ParamGrad::new("w", &mut w, &gw), ParamGrad::new("b", &mut b, &gb)])
                .unwrap();
            scheduler.step(opt).unwrap();
        };
        steps(&mut opt);
        let count = allocations(|| {
            for _ in 0..8 {
                steps(&mut opt);
            }
        });
        assert_eq!(count, 0, "{schedules:?}: scheduled steps allocated");
    }
}

/// Lambda schedules (the closure is called through its `Arc`), alone, chained and in
/// sequence, and a schedule per group, step without allocating; so does a restored one
/// given its closures again.
#[test]
fn lambda_and_per_group_schedules_step_without_allocating() {
    use ndarray_optim::Momentum;
    use ndarray_optim::schedule::{GroupSchedule, Lambda, LrScheduler, Schedule};

    let warm_up =
        || Lambda::new("warmup", |step, group| ((step + 1 + group as u64) as f64 / 6.0).min(1.0));
    let decay = || Lambda::new("decay", |step, _| 0.97_f64.powf(step as f64 % 3.0));
    type Start = fn(&mut Optimizer<Momentum, f64>, Lambda, Lambda) -> LrScheduler;
    let starts: [Start; 4] = [
        |opt, warm_up, _| LrScheduler::new(opt, Schedule::Lambda(warm_up)).unwrap(),
        |opt, warm_up, decay| {
            let schedules = vec![Schedule::Multiplicative(decay), Schedule::Lambda(warm_up)];
            LrScheduler::chained(opt, schedules).unwrap()
        },
        |opt, warm_up, decay| {
            let schedules = vec![Schedule::Lambda(warm_up), Schedule::Multiplicative(decay)];
            LrScheduler::sequential(opt, schedules, vec![3]).unwrap()
        },
        |opt, warm_up, decay| {
            let body = GroupSchedule::Sequential {
                schedules: vec![
                    Schedule::Lambda(warm_up),
                    Schedule::Cosine { t_max: 9, eta_min: 0.0 },
                ],
                milestones: vec![4],
            };
            let head = GroupSchedule::Chained(vec![
                Schedule::Multiplicative(decay),
                Schedule::Step { step_size: 2, gamma: 0.5 },
            ]);
            LrScheduler::per_group(opt, [("default", body), ("head", head)]).unwrap()
        },
    ];
    for (index, start) in starts.into_iter().enumerate() {
        let mut opt = Optimizer::<Momentum, f64>::new(Momentum::default()).unwrap();
        opt.add_group("head", Momentum::default()).unwrap();
        opt.add_group("frozen", Momentum::default()).unwrap();
        opt.assign("b", "head").unwrap();
        let mut scheduler = start(&mut opt, warm_up(), decay());
        let (mut w, mut b) = (Array2::<f64>::zeros((8, 5)), Array2::<f64>::zeros((3, 4)));
        let (gw, gb) = (Array2::from_elem((8, 5), 0.25), Array2::from_elem((3, 4), -0.5));
        let mut steps = |opt: &mut Optimizer<Momentum, f64>, scheduler: &mut LrScheduler| {
            opt.step_all(&mut [ParamGrad::new("w", &mut w, &gw), ParamGrad::new("b", &mut b, &gb)])
                .unwrap();
            scheduler.step(opt).unwrap();
        };
        steps(&mut opt, &mut scheduler);
        let count = allocations(|| {
            for _ in 0..8 {
                steps(&mut opt, &mut scheduler);
            }
        });
        assert_eq!(count, 0, "scheduler {index}: scheduled steps allocated");

        let mut restored: LrScheduler =
            serde_json::from_str(&serde_json::to_string(&scheduler).unwrap()).unwrap();
        restored.set_lambda(warm_up()).unwrap();
        if index > 0 {
            restored.set_lambda(decay()).unwrap();
        }
        let count = allocations(|| {
            for _ in 0..4 {
                steps(&mut opt, &mut restored);
            }
        });
        assert_eq!(count, 0, "scheduler {index}: restored, scheduled steps allocated");
    }
}

/// Steps on several threads: one tensor large enough to be split into chunks, and a batch of
/// many tensors spread over the threads.
#[cfg(feature = "rayon")]
struct NoAllocationOnThreads(Option<rayon::ThreadPool>);

#[cfg(feature = "rayon")]
impl RuleCheck for NoAllocationOnThreads {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        let pool = self.0.get_or_insert_with(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .start_handler(|_| {
                    // A thread's first steal registers it with the epoch collector that
                    // rayon's queues use, an allocation of rayon's own: do it up front.
                    drop(crossbeam_epoch::pin());
                    IN_COUNTED_POOL.with(|counted| counted.set(true));
                })
                .build()
                .unwrap()
        });
        let mut opt = Optimizer::<R, A>::new(rule.clone()).unwrap();
        let mut large = Array2::<A>::zeros((4, 50_000));
        let g_large = Array2::from_elem((4, 50_000), A::from_f64(0.25));
        let names: Vec<String> = (0..64).map(|i| format!("small{i}")).collect();
        let mut small: Vec<Array2<A>> = (0..64).map(|_| Array2::zeros((40, 50))).collect();
        let g_small = Array2::from_elem((40, 50), A::from_f64(-0.5));
        let allocated = pool.install(|| {
            let mut steps = || {
                let mut batch: Vec<_> = names
                    .iter()
                    .zip(small.iter_mut())
                    .map(|(name, param)| ParamGrad::new(name, param, &g_small))
                    .collect();
                let before = POOL_ALLOCATIONS.load(Ordering::SeqCst);
                opt.step("large", &mut large, &g_large).unwrap();
                opt.step_all(&mut batch).unwrap();
                POOL_ALLOCATIONS.load(Ordering::SeqCst) - before
            };
            steps();
            (0..5).map(|_| steps()).sum::<u64>()
        });
        assert_eq!(allocated, 0, "{rule:?} {}: threaded steady-state steps allocated", A::NAME);
        assert_eq!(opt.step_count("small63"), Some(6));
    }
}

#[cfg(feature = "rayon")]
#[test]
fn steady_state_steps_on_threads_do_not_allocate() {
    for_each_rule(&mut NoAllocationOnThreads(None));
}

/// Muon (matrices only, so not in `for_each_rule`) keeps its Newton–Schulz matrices in the
/// state's working memory: once every tensor has state, its steps allocate nothing, tall and
/// wide, in every layout, beside AdamW's tensors in one optimizer.
#[test]
fn steady_state_muon_steps_do_not_allocate() {
    use ndarray::Array1;
    use ndarray_optim::{AdamW, AdjustLr, Muon, Rule};

    fn check<A: Element>(rule: Muon) {
        let mut opt = Optimizer::<Rule, A>::new(AdamW::default().into()).unwrap();
        opt.add_group("hidden", rule).unwrap();
        for name in ["tall", "f", "strided"] {
            opt.assign(name, "hidden").unwrap();
        }
        let mut tall = Array2::<A>::zeros((64, 33));
        let mut f_order = Array2::<A>::zeros((6, 7).f());
        let mut wide = Array2::<A>::zeros((16, 40));
        let mut bias = Array1::<A>::zeros(5);
        let g_tall =
            Array2::from_shape_fn((64, 33), |(i, j)| A::from_f64((i * 7 + j) as f64 / 9.0));
        let g_f = Array2::from_shape_fn((6, 7).f(), |(i, j)| A::from_f64(i as f64 - j as f64));
        let g_wide = Array2::from_shape_fn((16, 20), |(i, j)| A::from_f64((i + j * j) as f64));
        let g_bias = Array1::from_elem(5, A::from_f64(1.5));
        let mut steps = |opt: &mut Optimizer<Rule, A>| {
            opt.step("tall", &mut tall, &g_tall).unwrap();
            opt.step("strided", &mut wide.slice_mut(s![.., ..;2]), &g_wide).unwrap();
            opt.step_all(&mut [
                ParamGrad::new("bias", &mut bias, &g_bias),
                ParamGrad::new("f", &mut f_order, &g_f),
            ])
            .unwrap();
        };
        steps(&mut opt);
        let count = allocations(|| {
            for _ in 0..3 {
                steps(&mut opt);
            }
        });
        assert_eq!(count, 0, "{rule:?} {}: steady-state Muon steps allocated", A::NAME);
        assert_eq!(opt.step_count("f"), Some(4));
        assert!(tall.iter().all(|x| x.is_finite()) && tall[[0, 1]] != A::zero());
    }
    let options = Muon {
        nesterov: false,
        ns_steps: 3,
        adjust_lr_fn: Some(AdjustLr::MatchRmsAdamw),
        ..Muon::default()
    };
    for rule in [Muon::default(), options] {
        check::<f32>(rule);
        check::<f64>(rule);
    }
}

/// Averages allocate only on a tensor's first update: later updates (one by one and in
/// batches, every layout), copies and swaps allocate nothing.
#[test]
fn steady_state_averaging_does_not_allocate() {
    use ndarray::{ArrayViewD, array};
    use ndarray_optim::{AveragedModel, Averaging};

    fn check<A: Element, S: Element>(averaging: Averaging) {
        let mut model = AveragedModel::<A, S>::new(averaging).unwrap();
        let weight = Array2::<A>::from_elem((64, 33), A::from_f64(0.25));
        let mut eval = Array2::<A>::zeros((64, 33).f());
        let f_order = Array3::<A>::from_elem((5, 6, 7).f(), A::from_f64(-0.5));
        let wide = Array2::<A>::from_elem((16, 40), A::from_f64(1.5));
        let bias = ArrayD::<A>::from_elem(IxDyn(&[3, 1, 2, 5]), A::from_f64(2.0));
        let scalar = array![A::one()].into_shape_with_order(()).unwrap();
        let updates = |model: &mut AveragedModel<A, S>| {
            model.update("weight", &weight).unwrap();
            model.update("strided", &wide.slice(s![.., ..;2])).unwrap();
            let batch: [(&str, ArrayViewD<'_, A>); 3] = [
                ("f", f_order.view().into_dyn()),
                ("bias", bias.view()),
                ("scalar", scalar.view().into_dyn()),
            ];
            model.update_all(&batch).unwrap();
        };
        updates(&mut model);
        let count = allocations(|| {
            for _ in 0..3 {
                updates(&mut model);
            }
            model.copy_into("weight", &mut eval).unwrap();
        });
        assert_eq!(
            count,
            0,
            "{averaging:?} {} {}: steady-state updates allocated",
            A::NAME,
            S::NAME
        );
        assert_eq!(model.count("f"), Some(4));
    }
    for averaging in [
        Averaging::Swa,
        Averaging::Ema { decay: 0.99, warmup: true },
        Averaging::Ema { decay: 0.2, warmup: false },
        Averaging::OptaxEma { decay: 0.9, debias: true },
        Averaging::OptaxEma { decay: 0.9, debias: false },
    ] {
        check::<f32, f32>(averaging);
        check::<f64, f64>(averaging);
        check::<f32, f64>(averaging);
    }
    let mut model = AveragedModel::<f32>::new(Averaging::Swa).unwrap();
    let mut w = Array2::<f32>::from_elem((8, 9).f(), 1.0);
    model.update("w", &w).unwrap();
    let count = allocations(|| {
        model.swap_into("w", &mut w).unwrap();
        model.swap_into("w", &mut w).unwrap();
    });
    assert_eq!(count, 0, "swaps allocated");
}

/// Gradient accumulation allocates nothing once every tensor has its mean and its optimizer
/// state: micro-batches and optimizer steps, of batches (clipped by global norm) and of single
/// tensors (clipped by norm), in every layout.
#[test]
fn steady_state_gradient_accumulation_does_not_allocate() {
    use ndarray_optim::{Adam, Clip, MultiSteps, NonFinite};

    let multi_steps = |clip| {
        let mut inner = Optimizer::<Adam, f32>::new(Adam::default()).unwrap();
        inner.set_clip(Some(clip)).unwrap();
        inner.set_non_finite(NonFinite::Skip);
        MultiSteps::new(inner, 3).unwrap()
    };
    let mut batches = multi_steps(Clip::GlobalNorm { max_norm: 0.5 });
    let mut singles = multi_steps(Clip::Norm { max_norm: 0.5 });
    let mut weight = Array2::<f32>::zeros((64, 33));
    let mut f_order = Array3::<f32>::zeros((5, 6, 7).f());
    let mut wide = Array2::<f32>::zeros((16, 40));
    let g_weight = Array2::from_elem((64, 33), 0.25_f32);
    let g_f = Array3::from_elem((5, 6, 7).f(), -0.5_f32);
    let g_wide = Array2::from_elem((16, 20), 0.125_f32);
    let mut micro_batch = |batches: &mut MultiSteps<Adam, f32>, singles: &mut MultiSteps<_, _>| {
        batches
            .step_all(&mut [
                ParamGrad::new("weight", &mut weight, &g_weight),
                ParamGrad::new("f", &mut f_order, &g_f),
                ParamGrad::new("strided", &mut wide.slice_mut(s![.., ..;2]), &g_wide),
            ])
            .unwrap();
        singles.step("weight", &mut weight, &g_weight).unwrap();
        singles.step("f", &mut f_order, &g_f).unwrap();
        singles.step("strided", &mut wide.slice_mut(s![.., ..;2]), &g_wide).unwrap();
    };
    for _ in 0..3 {
        micro_batch(&mut batches, &mut singles);
    }
    let count = allocations(|| {
        for _ in 0..7 {
            micro_batch(&mut batches, &mut singles);
        }
    });
    assert_eq!(count, 0, "steady-state micro-batches allocated");
    assert_eq!(batches.optimizer().step_count("f"), Some(3));
    assert_eq!(singles.micro_steps("weight"), 1);
}

/// A frozen group costs no allocation: steady-state steps of a model and a batch with a
/// frozen group (looked up for every tensor), clipped by global norm and checked
/// for non-finite gradients, and gradient accumulation over them.
#[test]
fn steady_state_steps_with_a_frozen_group_do_not_allocate() {
    use std::collections::BTreeMap;

    use ndarray_optim::{Adam, Clip, MultiSteps, NonFinite};

    let mut opt = Optimizer::<Adam, f32>::new(Adam::default()).unwrap();
    opt.add_group("backbone", Adam::default()).unwrap();
    opt.assign("backbone.b", "backbone").unwrap();
    opt.assign("backbone.w", "backbone").unwrap();
    opt.set_clip(Some(Clip::GlobalNorm { max_norm: 0.5 })).unwrap();
    opt.set_non_finite(NonFinite::Refuse);
    let shapes = [("backbone.b", (1, 16)), ("backbone.w", (16, 16)), ("head.w", (16, 4))];
    let model = |value| -> BTreeMap<String, Array2<f32>> {
        shapes
            .iter()
            .map(|&(name, shape)| (name.to_owned(), Array2::from_elem(shape, value)))
            .collect()
    };
    let (mut params, grads) = (model(1.0), model(0.25));
    opt.step_model(&mut params, &grads).unwrap();
    opt.freeze("backbone").unwrap();
    let mut batch = model(1.0);
    let mut step = |opt: &mut Optimizer<Adam, f32>| {
        opt.step_model(&mut params, &grads).unwrap();
        let mut tensors = batch.values_mut();
        let (b, w, h) = (tensors.next().unwrap(), tensors.next().unwrap(), tensors.next().unwrap());
        opt.step_all(&mut [
            ParamGrad::new("backbone.b", b, &grads["backbone.b"]),
            ParamGrad::new("backbone.w", w, &grads["backbone.w"]),
            ParamGrad::new("head.w", h, &grads["head.w"]),
        ])
        .unwrap();
    };
    step(&mut opt);
    let count = allocations(|| {
        for _ in 0..5 {
            step(&mut opt);
        }
    });
    assert_eq!(count, 0, "steady-state steps with a frozen group allocated");
    assert_eq!((opt.step_count("backbone.w"), opt.step_count("head.w")), (Some(1), Some(13)));

    let mut accumulated = MultiSteps::new(opt, 3).unwrap();
    accumulated.step_model(&mut params, &grads).unwrap();
    let count = allocations(|| {
        for _ in 0..6 {
            accumulated.step_model(&mut params, &grads).unwrap();
        }
    });
    assert_eq!(count, 0, "steady-state accumulation with a frozen group allocated");
    assert_eq!(accumulated.optimizer().step_count("head.w"), Some(15));
}

/// Prodigy's steps, whose reduction runs over every tensor before any moves, allocate
/// nothing once the shared scalars and every tensor's state exist: batches in every layout
/// (with an Adam group beside it, on threads with the `rayon` feature), model steps and
/// gradient accumulation.
#[test]
fn steady_state_prodigy_steps_do_not_allocate() {
    use std::collections::BTreeMap;

    use ndarray_optim::{Adam, Clip, MultiSteps, Prodigy, Rule};

    fn check<A: Element>() {
        let mut opt = Optimizer::<Rule, A>::new(Prodigy::default().into()).unwrap();
        opt.add_group("adam", Adam::default()).unwrap();
        opt.assign("adam.w", "adam").unwrap();
        opt.set_clip(Some(Clip::GlobalNorm { max_norm: 0.5 })).unwrap();
        let mut weight = Array2::<A>::zeros((64, 33));
        let mut f_order = Array3::<A>::from_elem((5, 6, 7).f(), A::from_f64(0.5));
        let mut wide = Array2::<A>::ones((16, 40));
        let mut adam = Array2::<A>::zeros((3, 3));
        let g_weight = Array2::from_elem((64, 33), A::from_f64(0.25));
        let g_f = Array3::from_elem((5, 6, 7).f(), A::from_f64(-0.5));
        let g_wide = Array2::from_elem((16, 20), A::from_f64(0.125));
        let g_adam = Array2::from_elem((3, 3), A::from_f64(1.0));
        let mut steps = |opt: &mut Optimizer<Rule, A>| {
            opt.step_all(&mut [
                ParamGrad::new("weight", &mut weight, &g_weight),
                ParamGrad::new("f", &mut f_order, &g_f),
                ParamGrad::new("strided", &mut wide.slice_mut(s![.., ..;2]), &g_wide),
                ParamGrad::new("adam.w", &mut adam, &g_adam),
            ])
            .unwrap();
        };
        steps(&mut opt);
        let count = allocations(|| {
            for _ in 0..5 {
                steps(&mut opt);
            }
        });
        assert_eq!(count, 0, "prodigy {}: steady-state batch steps allocated", A::NAME);
        assert_eq!(opt.step_count("f"), Some(6));
        assert!(opt.shared("d").unwrap() > 1e-6);
    }
    check::<f32>();
    check::<f64>();

    let model = |value| -> BTreeMap<String, Array2<f64>> {
        BTreeMap::from([
            ("a".to_owned(), Array2::from_elem((8, 16), value)),
            ("b".to_owned(), Array2::from_elem((1, 16), value)),
        ])
    };
    let mut opt = Optimizer::<Prodigy, f64>::new(Prodigy::default()).unwrap();
    let (mut params, grads) = (model(1.0), model(0.25));
    opt.step_model(&mut params, &grads).unwrap();
    let count = allocations(|| {
        for _ in 0..5 {
            opt.step_model(&mut params, &grads).unwrap();
        }
    });
    assert_eq!(count, 0, "steady-state prodigy model steps allocated");

    let mut accumulated = MultiSteps::new(opt, 2).unwrap();
    for _ in 0..2 {
        accumulated.step_model(&mut params, &grads).unwrap();
    }
    let count = allocations(|| {
        for _ in 0..6 {
            accumulated.step_model(&mut params, &grads).unwrap();
        }
    });
    assert_eq!(count, 0, "steady-state prodigy accumulation allocated");
    assert_eq!(accumulated.optimizer().step_count("a"), Some(10));
}

/// Once its history is full, an L-BFGS step allocates nothing, with or without line search,
/// over a model of several tensors.
#[test]
fn steady_state_lbfgs_steps_do_not_allocate() {
    use ndarray_optim::{Error, Lbfgs, LbfgsOptions, LineSearch};

    for line_search_fn in [None, Some(LineSearch::StrongWolfe)] {
        let options = LbfgsOptions {
            history_size: 3,
            max_iter: 4,
            max_eval: Some(100),
            line_search_fn,
            ..Default::default()
        };
        let mut opt = Lbfgs::<f64>::new(options).unwrap();
        let mut model = vec![
            ("w".to_owned(), ArrayD::from_elem(IxDyn(&[3, 4]).f(), 1.5)),
            ("b".to_owned(), ArrayD::from_elem(IxDyn(&[4]), -0.5)),
        ];
        let mut grads = model.clone();
        // A quadratic with distinct curvatures, so the history fills and keeps changing.
        let mut closure = |model: &Vec<(String, ArrayD<f64>)>,
                           grads: &mut Vec<(String, ArrayD<f64>)>| {
            let mut loss = 0.0;
            for ((_, p), (_, g)) in model.iter().zip(grads.iter_mut()) {
                for (i, (g, &p)) in g.iter_mut().zip(p.iter()).enumerate() {
                    let a = 1.0 + i as f64;
                    *g = a * p - 0.25;
                    loss += a * p * p / 2.0 - 0.25 * p;
                }
            }
            Ok::<_, Error>(loss)
        };
        opt.step(&mut model, &mut grads, &mut closure).unwrap();
        assert_eq!(opt.history_len(), 3, "{line_search_fn:?}: the history is not full");
        // Move away again so that the next steps iterate.
        model[0].1.fill(2.0);
        let count = allocations(|| {
            opt.step(&mut model, &mut grads, &mut closure).unwrap();
        });
        assert_eq!(count, 0, "{line_search_fn:?}");
        assert!(opt.n_iter() > 4);
    }
}

/// A sharded step allocates nothing once its parts' state exists: its pieces are views of
/// the caller's flat buffers (in their tensors' shapes under a plan that keeps tensors
/// whole), and the values it exchanges live in a buffer it keeps, also the sums of
/// Prodigy's second exchange. (The all-reduce stands in for one where the other ranks add
/// zeros.)
#[test]
fn steady_state_sharded_steps_do_not_allocate() {
    use ndarray_optim::{AdamW, Clip, Lamb, NonFinite, Prodigy, ShardPlan, ShardedOptimizer};

    /// `rule`'s steps on rank `rank` of `plan`, clipped by `clip`, call the all-reduce
    /// `exchanges` times each.
    fn check<R: UpdateRule>(rule: R, exchanges: usize, plan: ShardPlan, rank: usize, clip: Clip) {
        let rule_name = rule.name();
        let mut opt = Optimizer::<R, f32>::new(rule).unwrap();
        opt.set_clip(Some(clip)).unwrap();
        opt.set_non_finite(NonFinite::Skip);
        let mut sharded = ShardedOptimizer::new(opt, plan.clone(), rank).unwrap();
        let mut params = vec![1.0_f32; plan.load(rank)];
        let grads = vec![0.25_f32; plan.load(rank)];
        let mut calls = 0;
        sharded.step_all(&mut params, &grads, |_| calls += 1).unwrap();
        assert_eq!(calls, exchanges, "{rule_name}");
        let count = allocations(|| {
            for _ in 0..5 {
                sharded.step_all(&mut params, &grads, |_| {}).unwrap();
            }
        });
        assert_eq!(count, 0, "{rule_name}: steady-state sharded steps allocated");
    }
    let tensors = [("w", &[64, 40][..]), ("b", &[40]), ("v", &[900])];
    let plan = ShardPlan::new(tensors, 3).unwrap();
    assert_eq!(plan.pieces(0).count(), 3, "rank 0 holds `b`, `v` and part of `w`");
    let global = Clip::GlobalNorm { max_norm: 0.5 };
    check(AdamW::default(), 1, plan.clone(), 0, global);
    check(Prodigy::default(), 2, plan, 0, global);
    let whole = ShardPlan::whole_tensors(tensors, 3).unwrap();
    assert_eq!(whole.pieces(1).map(|piece| piece.name).collect::<Vec<_>>(), ["w"]);
    check(Lamb::default(), 1, whole, 1, Clip::Norm { max_norm: 0.5 });
}

#[test]
fn steady_state_steps_with_low_precision_state_do_not_allocate() {
    use ndarray_optim::{AdamW, StatePrecision};

    for precision in [StatePrecision::Bf16, StatePrecision::INT8] {
        let mut opt = Optimizer::<AdamW, f32>::new(AdamW::default()).unwrap();
        opt.set_state_precision("default", precision).unwrap();
        let mut w = Array2::<f32>::from_elem((70, 90), 0.5);
        let mut strided = Array2::<f32>::from_elem((90, 70), 0.5);
        let g = Array2::<f32>::from_shape_fn((70, 90), |(i, j)| (i as f32 - j as f32) * 1e-3);
        let gt = g.t().to_owned();
        opt.step("w", &mut w, &g).unwrap();
        opt.step("t", &mut strided.view_mut().reversed_axes(), &gt.t()).unwrap();
        let count = allocations(|| {
            for _ in 0..5 {
                opt.step("w", &mut w, &g).unwrap();
                opt.step("t", &mut strided.view_mut().reversed_axes(), &gt.t()).unwrap();
            }
        });
        assert_eq!(count, 0, "steady-state steps with {precision:?} state allocated");
    }
}
