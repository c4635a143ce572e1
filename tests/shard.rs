//! Sharded optimizer state: plans by elements, sharded batch steps equal to one process's,
//! and resuming across world sizes bit for bit.

use std::sync::{Barrier, Mutex};

use ndarray::ArrayD;
use ndarray_optim::checkpoint::{Encoding, ShardRecord, StoredValues as Stored};
use ndarray_optim::shard::{MAX_WORLD, SHARD_BLOCK, merge, split};
use ndarray_optim::{
    Adafactor, Adam, AdamW, Checkpoint, Clip, Element, Error, Momentum, Muon, NonFinite, Optimizer,
    ParamGrad, Prodigy, Rule, ShardPlan, ShardedOptimizer, StatePrecision, StepOutcome, UpdateRule,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::{RuleCheck, bits, for_each_rule, values};

/// Listed out of name order on purpose; `embed` and `layer.0.weight` are cut on 2–4 ranks.
const TENSORS: [(&str, &[usize]); 7] = [
    ("layer.0.weight", &[20, 30]),
    ("embed", &[40, 30]),
    ("layer.0.bias", &[20]),
    ("layer.1.weight", &[5, 20]),
    ("layer.1.bias", &[5]),
    ("scale", &[]),
    ("unused", &[0]),
];

fn plan(world: usize) -> ShardPlan {
    plan_by(Cuts::Elements, world)
}

/// Where a plan may cut the model: inside tensors ([`ShardPlan::new`]) or only between them
/// ([`ShardPlan::whole_tensors`]).
#[derive(Clone, Copy, Debug)]
enum Cuts {
    Elements,
    Tensors,
}

impl Cuts {
    /// The plan of `tensors` over `world` ranks, cut as `self` says.
    fn plan<'a>(
        self,
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
        world: usize,
    ) -> ShardPlan {
        match self {
            Cuts::Elements => ShardPlan::new(tensors, world).unwrap(),
            Cuts::Tensors => ShardPlan::whole_tensors(tensors, world).unwrap(),
        }
    }
}

/// On 2–4 ranks, whole tensors put `embed` on a rank of its own, and on 4 ranks leave rank 0
/// with nothing.
fn plan_by(cuts: Cuts, world: usize) -> ShardPlan {
    cuts.plan(TENSORS, world)
}

/// An all-reduce between threads: every value summed over all of them, in whatever order the
/// threads arrive.
struct Collective {
    sums: Mutex<Vec<f64>>,
    barrier: Barrier,
}

impl Collective {
    fn new(world: usize) -> Self {
        Collective { sums: Mutex::new(Vec::new()), barrier: Barrier::new(world) }
    }

    fn all_reduce(&self, values: &mut [f64]) {
        {
            let mut sums = self.sums.lock().unwrap();
            sums.resize(values.len(), 0.0);
            sums.iter_mut().zip(values.iter()).for_each(|(s, v)| *s += v);
        }
        self.barrier.wait();
        values.copy_from_slice(&self.sums.lock().unwrap());
        if self.barrier.wait().is_leader() {
            self.sums.lock().unwrap().clear();
        }
        self.barrier.wait();
    }
}

/// The flat model in plan order, and its gradient at `step`; at step 3 one element of
/// `layer.1.weight` is NaN.
fn flat_params<A: Element>(plan: &ShardPlan) -> Vec<A> {
    plan.tensors().enumerate().flat_map(|(i, t)| values::<A>(t.shape, i as u64)).collect()
}

fn flat_grads<A: Element>(plan: &ShardPlan, step: u64) -> Vec<A> {
    let mut grads: Vec<A> = plan
        .tensors()
        .enumerate()
        .flat_map(|(i, t)| values::<A>(t.shape, 100 * step + i as u64))
        .collect();
    if step == 3 {
        let tensor = plan.tensor("layer.1.weight").unwrap();
        grads[tensor.range.start + 7] = A::from_f64(f64::NAN);
    }
    grads
}

/// An optimizer with a faster group for the biases, clipping by global norm and skipping
/// non-finite steps.
fn setup<R: UpdateRule, A: Element>(rule: &R) -> Optimizer<R, A> {
    setup_in(rule, StatePrecision::Full).unwrap()
}

/// [`setup`] with every group's state kept in `precision`, if the rule and element type can.
fn setup_in<R: UpdateRule, A: Element>(
    rule: &R,
    precision: StatePrecision,
) -> Result<Optimizer<R, A>, Error> {
    let mut opt = Optimizer::new(rule.clone()).unwrap();
    let mut fast = rule.clone();
    *fast.lr_mut() *= 2.0;
    opt.add_group("fast", fast).unwrap();
    for (name, _) in TENSORS.iter().filter(|(name, _)| name.ends_with("bias")) {
        opt.assign(name, "fast").unwrap();
    }
    opt.set_clip(Some(Clip::GlobalNorm { max_norm: 5.0 })).unwrap();
    opt.set_non_finite(NonFinite::Skip);
    for group in ["default", "fast"] {
        opt.set_state_precision(group, precision)?;
    }
    Ok(opt)
}

/// One process stepping the whole model, tensor by tensor in name order, from `params`.
fn train_single<R: UpdateRule, A: Element>(
    opt: &mut Optimizer<R, A>,
    params: &mut [A],
    steps: std::ops::Range<u64>,
) -> Vec<StepOutcome> {
    let plan = plan(1);
    let mut tensors: Vec<ArrayD<A>> = plan
        .tensors()
        .map(|t| ArrayD::from_shape_vec(t.shape, params[t.range].to_vec()).unwrap())
        .collect();
    let outcomes = steps
        .map(|step| {
            let flat = flat_grads::<A>(&plan, step);
            let grads: Vec<ArrayD<A>> = plan
                .tensors()
                .map(|t| ArrayD::from_shape_vec(t.shape, flat[t.range].to_vec()).unwrap())
                .collect();
            let mut batch: Vec<ParamGrad<'_, A>> = plan
                .tensors()
                .zip(tensors.iter_mut())
                .zip(&grads)
                .map(|((t, p), g)| ParamGrad::new(t.name, p, g))
                .collect();
            opt.step_all(&mut batch).unwrap()
        })
        .collect();
    let flat: Vec<A> = tensors.iter().flat_map(|t| t.iter().copied()).collect();
    params.copy_from_slice(&flat);
    outcomes
}

/// Every rank on its own thread, each stepping its shard of `params`; returns every rank's
/// outcomes.
fn train_sharded<R: UpdateRule, A: Element>(
    ranks: &mut [ShardedOptimizer<R, A>],
    params: &mut [A],
    steps: std::ops::Range<u64>,
) -> Vec<Vec<StepOutcome>> {
    on_threads(ranks, params, |sharded, shard, all_reduce| {
        let plan = sharded.plan().clone();
        let range = plan.shard(sharded.rank());
        let steps = steps.clone().map(|step| {
            let grads = flat_grads::<A>(&plan, step);
            sharded.step_all(shard, &grads[range.clone()], |v| all_reduce(v)).unwrap()
        });
        steps.collect()
    })
}

/// Runs `body` for every rank on its own thread, with the rank's shard of the flat `params`
/// and an all-reduce between the threads; returns what each rank's `body` returned.
fn on_threads<R: UpdateRule, A: Element, T: Send>(
    ranks: &mut [ShardedOptimizer<R, A>],
    params: &mut [A],
    body: impl Fn(&mut ShardedOptimizer<R, A>, &mut [A], &mut dyn FnMut(&mut [f64])) -> T + Sync,
) -> Vec<T> {
    let collective = Collective::new(ranks.len());
    let plan = ranks[0].plan().clone();
    let mut shards: Vec<&mut [A]> = Vec::new();
    let mut rest = params;
    for rank in 0..plan.world() {
        let (shard, tail) = rest.split_at_mut(plan.load(rank));
        shards.push(shard);
        rest = tail;
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = (ranks.iter_mut().zip(shards))
            .map(|(sharded, shard)| {
                let (collective, body) = (&collective, &body);
                scope.spawn(move || body(sharded, shard, &mut |v| collective.all_reduce(v)))
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    })
}

fn shards_of<R: UpdateRule, A: Element>(
    full: Checkpoint<R, A>,
    plan: ShardPlan,
) -> Vec<ShardedOptimizer<R, A>> {
    split(full, &plan)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(rank, shard)| {
            let optimizer = Optimizer::from_checkpoint(shard).unwrap();
            ShardedOptimizer::new(optimizer, plan.clone(), rank).unwrap()
        })
        .collect()
}

fn merged<R: UpdateRule, A: Element>(ranks: &[ShardedOptimizer<R, A>]) -> Checkpoint<R, A> {
    merge(ranks.iter().map(|rank| rank.optimizer().checkpoint()).collect(), ranks[0].plan())
        .unwrap()
}

/// Every rule's sharded steps against one process's, with the state kept in `.0`.
struct EqualToOneProcess(StatePrecision);

impl RuleCheck for EqualToOneProcess {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        if self.0 != StatePrecision::Full && setup_in::<R, A>(&rule, self.0).is_err() {
            return;
        }
        let fresh = || setup_in::<R, A>(&rule, self.0).unwrap();
        let what = format!("{rule:?} {}", A::NAME);
        if rule.elementwise() {
            equals_one_process(&fresh, &what, Cuts::Elements);
        } else {
            let err = ShardedOptimizer::new(fresh(), plan(2), 0).unwrap_err();
            assert!(err.to_string().contains("does not update element by element"), "{err}");
        }
        equals_one_process(&fresh, &what, Cuts::Tensors);
    }
}

/// Trains `fresh()` in one process and on 1 to 4 ranks for 6 steps: the same parameters,
/// outcomes and (merged) checkpoint, bit for bit.
fn equals_one_process<R: UpdateRule, A: Element>(
    fresh: &dyn Fn() -> Optimizer<R, A>,
    what: &str,
    cuts: Cuts,
) {
    let mut single = fresh();
    let mut expected = flat_params::<A>(&plan(1));
    let outcomes = train_single(&mut single, &mut expected, 0..6);
    // Clipped every step, and step 3 skipped at `layer.1.weight`, the fifth by name.
    assert!(outcomes.iter().all(|o| !matches!(o, StepOutcome::Stepped { grad_norm: None })));
    assert_eq!(outcomes[3], StepOutcome::Skipped { index: 4 });
    for world in 1..=4 {
        let plan = plan_by(cuts, world);
        let mut ranks: Vec<_> = (0..world)
            .map(|rank| ShardedOptimizer::new(fresh(), plan.clone(), rank).unwrap())
            .collect();
        let mut params = flat_params::<A>(&plan);
        let what = format!("{what} on {world} ranks, cut between {cuts:?}");
        for rank_outcomes in train_sharded(&mut ranks, &mut params, 0..6) {
            assert_eq!(rank_outcomes, outcomes, "{what}");
        }
        assert_eq!(bits(&params), bits(&expected), "{what}");
        assert_eq!(merged(&ranks), single.checkpoint(), "{what}");
    }
}

#[test]
fn sharded_steps_equal_one_process_on_any_number_of_ranks() {
    for_each_rule(&mut EqualToOneProcess(StatePrecision::Full));
}

/// bfloat16 state is rounded element by element, so a part of a tensor keeps the bits the
/// whole tensor would.
#[test]
fn sharded_bfloat16_state_equals_one_process() {
    for_each_rule(&mut EqualToOneProcess(StatePrecision::Bf16));
}

/// 8-bit state from 600 elements on: `embed` (1,200) and `layer.0.weight` (600) keep 8-bit
/// codes, in parts of fewer than 600 elements on 2–4 ranks, and the smaller tensors `f32`.
const EIGHT_BIT: StatePrecision = StatePrecision::Int8 { min_numel: 600 };

/// 8-bit blocks start at multiples of 256 elements into a tensor, as cuts do, and which
/// tensors keep 8 bits is decided by whole tensors' sizes: a part keeps the codes and scales
/// the whole tensor would.
#[test]
fn sharded_8_bit_state_equals_one_process() {
    for_each_rule(&mut EqualToOneProcess(EIGHT_BIT));
}

/// Every rule trained across world sizes against one process, with the state kept in `.0`.
struct AcrossWorldSizes(StatePrecision);

impl RuleCheck for AcrossWorldSizes {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        if setup_in::<R, A>(&rule, self.0).is_err() {
            return;
        }
        let fresh = || setup_in::<R, A>(&rule, self.0).unwrap();
        let what = format!("{rule:?} {}", A::NAME);
        if rule.elementwise() {
            // A checkpoint moves between plans of either kind through `merge` and `split`.
            resumes_across_world_sizes(&fresh, &what, [Cuts::Elements; 3]);
            resumes_across_world_sizes(
                &fresh,
                &what,
                [Cuts::Tensors, Cuts::Elements, Cuts::Tensors],
            );
        } else {
            resumes_across_world_sizes(&fresh, &what, [Cuts::Tensors; 3]);
        }
    }
}

/// Trains `fresh()` in one process for 12 steps, and on 4 ranks for 5, saved and resumed
/// on 2 for 4, saved and resumed on 1 for 3, cut as `cuts` says on each: the same parameters
/// and checkpoint.
fn resumes_across_world_sizes<R, A>(
    fresh: &dyn Fn() -> Optimizer<R, A>,
    what: &str,
    cuts: [Cuts; 3],
) where
    R: UpdateRule + Serialize + DeserializeOwned,
    A: Element + Serialize + DeserializeOwned,
{
    let mut single = fresh();
    let mut expected = flat_params::<A>(&plan(1));
    train_single(&mut single, &mut expected, 0..12);
    let mut params = flat_params::<A>(&plan(1));
    let mut four = shards_of(fresh().checkpoint(), plan_by(cuts[0], 4));
    train_sharded(&mut four, &mut params, 0..5);
    let saved: Vec<_> =
        four.iter().map(|rank| serde_json::to_string(rank.optimizer()).unwrap()).collect();
    let loaded = saved
        .iter()
        .map(|json| serde_json::from_str::<Optimizer<R, A>>(json).unwrap().checkpoint())
        .collect();
    let mut two = shards_of(merge(loaded, four[0].plan()).unwrap(), plan_by(cuts[1], 2));
    train_sharded(&mut two, &mut params, 5..9);
    let mut one = shards_of(merged(&two), plan_by(cuts[2], 1));
    train_sharded(&mut one, &mut params, 9..12);

    let what = format!("{what}, cut between {cuts:?}");
    assert_eq!(bits(&params), bits(&expected), "{what}");
    assert_eq!(merged(&one), single.checkpoint(), "{what}");
}

/// Prodigy's step size comes from sums over every tensor: each rank sums its parts in the
/// blocks a whole tensor would use, and the ranks' exact sums add up to one process's, so
/// the estimate, and with it every parameter, is the same bits on any number of ranks.
/// Its groups must share the rate, so the second group differs in weight decay.
#[test]
fn sharded_prodigy_equals_one_process() {
    fn check<A: Element + Serialize + DeserializeOwned>() {
        let fresh = || {
            let rule = Prodigy { use_bias_correction: true, d_coef: 100.0, ..Prodigy::default() };
            let mut opt = Optimizer::<Prodigy, A>::new(rule).unwrap();
            opt.add_group("decayed", Prodigy { weight_decay: 0.1, ..rule }).unwrap();
            for (name, _) in TENSORS.iter().filter(|(name, _)| name.ends_with("weight")) {
                opt.assign(name, "decayed").unwrap();
            }
            opt.set_clip(Some(Clip::GlobalNorm { max_norm: 5.0 })).unwrap();
            opt.set_non_finite(NonFinite::Skip);
            opt
        };
        let what = format!("prodigy {}", A::NAME);
        equals_one_process(&fresh, &what, Cuts::Elements);
        resumes_across_world_sizes(&fresh, &what, [Cuts::Elements; 3]);
        // The estimate grows from d0 within three steps (with `d_coef` 100), so the sums
        // steer the parameters compared above.
        let mut opt = fresh();
        train_single(&mut opt, &mut flat_params::<A>(&plan(1)), 0..3);
        let d = &opt.checkpoint().shared[0];
        assert!(d.name == "d" && d.value > 1e-5, "{d:?}");
    }
    check::<f32>();
    check::<f64>();
}

#[test]
fn a_four_rank_checkpoint_resumes_on_two_and_one_rank() {
    for_each_rule(&mut AcrossWorldSizes(StatePrecision::Full));
}

#[test]
fn a_four_rank_bfloat16_checkpoint_resumes_on_two_and_one_rank() {
    for_each_rule(&mut AcrossWorldSizes(StatePrecision::Bf16));
}

#[test]
fn a_four_rank_8_bit_checkpoint_resumes_on_two_and_one_rank() {
    for_each_rule(&mut AcrossWorldSizes(EIGHT_BIT));
}

/// Whether tensor `name`'s state in `opt` is kept in 8 bits: 1 byte per value of its two
/// Adam moments and a 4-byte scale per block, rather than 4 bytes per value.
fn in_eight_bits<R: UpdateRule>(opt: &Optimizer<R, f32>, name: &str) -> bool {
    let state = opt.state_of(name).unwrap();
    let numel: usize = state.shape().unwrap().iter().product();
    match state.bytes() {
        bytes if bytes == 2 * (numel + 4 * numel.div_ceil(256)) => true,
        bytes if bytes == 2 * 4 * numel => false,
        bytes => panic!("`{name}`: {bytes} bytes for {numel} elements"),
    }
}

#[test]
fn parts_keep_the_precision_of_their_whole_tensor() {
    let mut opt = setup_in::<_, f32>(&Adam::default(), EIGHT_BIT).unwrap();
    train_single(&mut opt, &mut flat_params(&plan(1)), 0..1);
    let eight_bit = ["embed", "layer.0.weight"];
    for (name, _) in TENSORS.iter().filter(|(name, _)| *name != "unused") {
        assert_eq!(in_eight_bits(&opt, name), eight_bit.contains(name), "{name}");
    }
    let mut ranks = shards_of(opt.checkpoint(), plan(4));
    // Stepped from state cut from whole tensors, and from a first step.
    let mut fresh: Vec<_> = (0..4)
        .map(|rank| {
            let opt = setup_in::<_, f32>(&Adam::default(), EIGHT_BIT).unwrap();
            ShardedOptimizer::new(opt, plan(4), rank).unwrap()
        })
        .collect();
    train_sharded(&mut fresh, &mut flat_params(&plan(1)), 0..1);
    for (cut, fresh) in ranks.iter().zip(&fresh) {
        for piece in plan(4).pieces(cut.rank()).filter(|piece| piece.name != "unused") {
            let (name, len) = (piece.name, piece.elements.len());
            assert!(len < 600 || !eight_bit.contains(&name), "the test needs small parts");
            assert_eq!(in_eight_bits(cut.optimizer(), name), eight_bit.contains(&name), "{name}");
            assert_eq!(in_eight_bits(fresh.optimizer(), name), eight_bit.contains(&name), "{name}");
        }
    }
    // A share loaded on its own is read as stored; setting the precision there decides by
    // the parts' sizes, and the sharded optimizer decides again by whole tensors.
    let json = serde_json::to_string(&ranks[1].optimizer().checkpoint()).unwrap();
    let mut share = Optimizer::from_checkpoint(serde_json::from_str(&json).unwrap()).unwrap();
    share.set_state_precision("default", StatePrecision::Full).unwrap();
    share.set_state_precision("default", EIGHT_BIT).unwrap();
    assert!(!in_eight_bits(&share, "embed"));
    let resumed = ShardedOptimizer::new(share, plan(4), 1).unwrap();
    assert!(in_eight_bits(resumed.optimizer(), "embed"));
    assert_eq!(resumed.optimizer().checkpoint(), ranks[1].optimizer().checkpoint());
    // And so does a group's precision set through the sharded optimizer.
    let rank = &mut ranks[1];
    rank.optimizer_mut().set_state_precision("default", StatePrecision::Full).unwrap();
    assert!(!in_eight_bits(rank.optimizer(), "embed"));
    rank.optimizer_mut().set_state_precision("default", EIGHT_BIT).unwrap();
    assert!(in_eight_bits(rank.optimizer(), "embed"));
    // And so does moving a part to another group.
    let mut moved = rank.clone();
    moved.optimizer_mut().add_group("full", Adam::default()).unwrap();
    moved.optimizer_mut().assign("embed", "full").unwrap();
    assert!(!in_eight_bits(moved.optimizer(), "embed"));
    moved.optimizer_mut().assign("embed", "fast").unwrap();
    assert!(in_eight_bits(moved.optimizer(), "embed"));

    // Parts whose codes and scales do not fit, or whose formats differ, are not merged.
    let shards = || ranks.iter().map(|rank| rank.optimizer().checkpoint()).collect::<Vec<_>>();
    assert!(merge(shards(), &plan(4)).is_ok());
    let embed_moment = |shards: &mut Vec<Checkpoint<Adam, f32>>| {
        let tensor = shards[1].tensors.iter_mut().find(|t| t.name == "embed").unwrap();
        tensor.state.as_mut().unwrap().buffers[0].stored.take().unwrap()
    };
    let mut short = shards();
    let Stored::Int8 { codes, mut scales } = embed_moment(&mut short) else { panic!() };
    scales.pop();
    let tensor = short[1].tensors.iter_mut().find(|t| t.name == "embed").unwrap();
    tensor.state.as_mut().unwrap().buffers[0].stored = Some(Stored::Int8 { codes, scales });
    let err = merge(short, &plan(4)).unwrap_err();
    assert!(err.to_string().contains("tensor `embed` in the shard of rank 1"), "{err}");
    let mut other = shards();
    let Stored::Int8 { codes, .. } = embed_moment(&mut other) else { panic!() };
    let tensor = other[1].tensors.iter_mut().find(|t| t.name == "embed").unwrap();
    let bits = codes.iter().map(|&code| u16::from(code)).collect();
    tensor.state.as_mut().unwrap().buffers[0].stored = Some(Stored::Bf16 { bits });
    let err = merge(other, &plan(4)).unwrap_err();
    assert!(err.to_string().contains("stored in another format"), "{err}");
}

/// Pseudo-random models, including one dominant tensor and tensors without elements.
fn random_models() -> Vec<Vec<(String, Vec<usize>)>> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below) as usize
    };
    let mut models = vec![vec![("embedding".to_owned(), vec![50_000, 64]), ("b".into(), vec![7])]];
    for _ in 0..200 {
        let tensors = 1 + next(12);
        models.push(
            (0..tensors)
                .map(|i| {
                    let shape = match next(4) {
                        0 => vec![],
                        1 => vec![next(3000)],
                        _ => vec![next(60), 1 + next(90)],
                    };
                    (format!("t{i}"), shape)
                })
                .collect(),
        );
    }
    models
}

/// 8-bit state cut between ranks and joined again gives back every code and scale, and each
/// rank's share is resumed as cut, whatever the tensors' sizes and the world size.
#[test]
fn eight_bit_state_splits_and_merges_on_random_models() {
    for (index, model) in random_models().iter().enumerate().take(80) {
        let min_numel = if index % 2 == 0 { 1 } else { 1000 };
        let mut opt = Optimizer::<Adam, f32>::new(Adam::default()).unwrap();
        opt.set_state_precision("default", StatePrecision::Int8 { min_numel }).unwrap();
        splits_and_merges(opt, model, Cuts::Elements);
    }
}

/// Steps `opt` once on `model`, then, for 1 to 5 ranks, splits its checkpoint under a plan
/// cut as `cuts` says: each share resumes as cut, and the shares merge into the checkpoint.
fn splits_and_merges<R: UpdateRule, A: Element>(
    mut opt: Optimizer<R, A>,
    model: &[(String, Vec<usize>)],
    cuts: Cuts,
) {
    let mut params: Vec<ArrayD<A>> = model.iter().map(|(_, s)| values(s, 1)).collect();
    let grads: Vec<ArrayD<A>> = model.iter().map(|(_, s)| values(s, 2)).collect();
    let mut batch: Vec<_> = (model.iter().zip(params.iter_mut()).zip(&grads))
        .map(|(((name, _), param), grad)| ParamGrad::new(name, param, grad))
        .collect();
    opt.step_all(&mut batch).unwrap();
    let full = opt.checkpoint();
    let listed = || model.iter().map(|(n, s)| (n.as_str(), s.as_slice()));
    for world in 1..=5 {
        let plan = cuts.plan(listed(), world);
        let shards = split(full.clone(), &plan).unwrap();
        for (rank, shard) in shards.iter().enumerate() {
            let opt = Optimizer::from_checkpoint(shard.clone()).unwrap();
            let sharded = ShardedOptimizer::new(opt, plan.clone(), rank).unwrap();
            assert_eq!(&sharded.optimizer().checkpoint(), shard, "{model:?} {rank}/{world}");
        }
        assert_eq!(merge(shards, &plan).unwrap(), full, "{model:?} on {world} ranks");
    }
}

#[test]
fn plans_are_balanced_contiguous_and_deterministic() {
    for model in random_models() {
        let listed = || model.iter().map(|(n, s)| (n.as_str(), s.as_slice()));
        let total: usize = model.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        for world in 1..=5 {
            let plan = ShardPlan::new(listed(), world).unwrap();
            assert_eq!(ShardPlan::new(listed().rev(), world).unwrap(), plan);
            assert_eq!(plan.len(), total);
            // Contiguous shards covering everything, none larger than an even share + a block.
            let mut end = 0;
            for rank in 0..world {
                assert_eq!(plan.shard(rank).start, end);
                end = plan.shard(rank).end;
                assert!(plan.load(rank) <= total.div_ceil(world) + SHARD_BLOCK, "{model:?}");
            }
            assert_eq!(end, total);
            // Every tensor in pieces: in order, cut at whole blocks only, each piece where the
            // flat order puts it, and every tensor (without elements too) on exactly one rank
            // or split between consecutive ones.
            let mut seen: Vec<(&str, std::ops::Range<usize>)> = Vec::new();
            for rank in 0..world {
                for piece in plan.pieces(rank) {
                    let tensor = plan.tensor(piece.name).unwrap();
                    let flat = plan.shard(rank).start + piece.shard.start;
                    assert_eq!(flat, tensor.range.start + piece.elements.start);
                    assert_eq!(piece.shard.len(), piece.elements.len());
                    let at_block =
                        |e: usize| e.is_multiple_of(SHARD_BLOCK) || e == tensor.range.len();
                    assert!(at_block(piece.elements.start) && at_block(piece.elements.end));
                    seen.push((piece.name, piece.elements));
                }
            }
            let mut expected = plan.tensors();
            let mut pieces = seen.iter().peekable();
            for tensor in &mut expected {
                let mut covered = 0;
                while let Some((_, elements)) = pieces.next_if(|(name, _)| *name == tensor.name) {
                    assert_eq!(elements.start, covered, "{}", tensor.name);
                    covered = elements.end;
                }
                assert_eq!(covered, tensor.range.len(), "{} on {world} ranks", tensor.name);
            }
            assert!(pieces.next().is_none());
        }
    }
    // The largest shard against the even share, for the dominant tensor.
    let plan = ShardPlan::new([("embedding", &[50_000, 64][..]), ("b", &[7])], 3).unwrap();
    let even = plan.len().div_ceil(3);
    assert!((0..3).all(|rank| plan.load(rank).abs_diff(even) <= SHARD_BLOCK));
}

/// Plans that keep tensors whole cut at the tensor boundaries nearest to even shares, and
/// the state of a rule that looks at whole tensors (Adafactor's factors) moves whole between
/// the ranks' shares and back.
#[test]
fn whole_tensor_plans_cut_between_tensors_nearest_to_even_shares() {
    for model in random_models() {
        let listed = || model.iter().map(|(n, s)| (n.as_str(), s.as_slice()));
        let total: usize = model.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let mut boundaries: Vec<usize> = vec![0];
        let mut sizes: Vec<(&str, usize)> =
            model.iter().map(|(n, s)| (n.as_str(), s.iter().product())).collect();
        sizes.sort();
        for (_, size) in &sizes {
            boundaries.push(boundaries.last().unwrap() + size);
        }
        for world in 1..=5 {
            let plan = ShardPlan::whole_tensors(listed(), world).unwrap();
            assert!(
                plan.keeps_tensors_whole()
                    && !ShardPlan::new(listed(), 1).unwrap().keeps_tensors_whole()
            );
            assert_eq!(ShardPlan::whole_tensors(listed().rev(), world).unwrap(), plan);
            let mut end = 0;
            for rank in 0..world {
                let shard = plan.shard(rank);
                assert_eq!(shard.start, end);
                end = shard.end;
                // The nearest boundary to the even share, the earlier of two as near.
                let even = rank * total / world;
                let distance = |b: usize| b.abs_diff(even);
                let nearest = boundaries.iter().copied().min_by_key(|&b| (distance(b), b));
                assert_eq!(Some(shard.start), nearest, "{model:?} rank {rank} of {world}");
            }
            assert_eq!(end, total);
            let mut seen: Vec<&str> = (0..world)
                .flat_map(|rank| plan.pieces(rank).collect::<Vec<_>>())
                .map(|piece| {
                    let tensor = plan.tensor(piece.name).unwrap();
                    assert_eq!(piece.elements, 0..tensor.range.len(), "{}", piece.name);
                    piece.name
                })
                .collect();
            seen.dedup();
            assert_eq!(seen, sizes.iter().map(|(name, _)| *name).collect::<Vec<_>>());
        }
    }
}

/// Adafactor's factored state, of another size than its tensor, moves whole between the
/// shares of a plan that keeps tensors whole, and back, on random models; a plan that cuts
/// tensors refuses it.
#[test]
fn whole_tensor_state_splits_and_merges_on_random_models() {
    for model in random_models().iter().take(60) {
        let opt = Optimizer::<Adafactor, f64>::new(Adafactor::default()).unwrap();
        splits_and_merges(opt, model, Cuts::Tensors);
    }
    let model = &random_models()[0];
    let mut opt = Optimizer::<Adafactor, f64>::new(Adafactor::default()).unwrap();
    let (mut b, g) = (values::<f64>(&model[1].1, 1), values::<f64>(&model[1].1, 2));
    opt.step(&model[1].0, &mut b, &g).unwrap();
    let listed = model.iter().map(|(n, s)| (n.as_str(), s.as_slice()));
    let err = split(opt.checkpoint(), &ShardPlan::new(listed, 2).unwrap()).unwrap_err();
    assert!(err.to_string().contains("does not update element by element"), "{err}");
}

/// Muon steps matrices as wholes, and clipping by each tensor's own norm needs whole
/// tensors: both are refused by a plan that cuts tensors, and under one that keeps them
/// whole equal one process, and resume across world sizes, bit for bit.
#[test]
fn muon_and_per_tensor_clipping_shard_by_whole_tensors() {
    fn check<A: Element + Serialize + DeserializeOwned>() {
        let fresh = || {
            let adamw = AdamW { lr: 0.01, ..AdamW::default() };
            let mut opt = Optimizer::<Rule, A>::new(adamw.into()).unwrap();
            opt.add_group("matrices", Muon { lr: 0.02, ..Muon::default() }).unwrap();
            for (name, _) in TENSORS.iter().filter(|(_, shape)| shape.len() == 2) {
                opt.assign(name, "matrices").unwrap();
            }
            opt.set_clip(Some(Clip::Norm { max_norm: 1.0 })).unwrap();
            opt.set_non_finite(NonFinite::Skip);
            opt
        };
        let what = format!("muon {}", A::NAME);
        let err = ShardedOptimizer::new(fresh(), plan(2), 0).unwrap_err();
        assert!(err.to_string().contains("does not update element by element"), "{err}");
        equals_one_process(&fresh, &what, Cuts::Tensors);
        resumes_across_world_sizes(&fresh, &what, [Cuts::Tensors; 3]);
    }
    check::<f32>();
    check::<f64>();
}

/// `ShardPlan::for_optimizer` cuts inside tensors exactly when every group's rule steps parts
/// of tensors and no clip needs whole tensors, and its plan is accepted on every rank.
struct PlannedForTheOptimizer;

impl RuleCheck for PlannedForTheOptimizer {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        let name = format!("{rule:?}");
        let looks_at_whole_tensors =
            ["Lamb", "Muon", "Adafactor"].iter().any(|whole| name.starts_with(whole));
        let clips =
            [None, Some(Clip::GlobalNorm { max_norm: 5.0 }), Some(Clip::Norm { max_norm: 5.0 })];
        for clip in clips {
            let mut opt = setup::<R, A>(&rule);
            opt.set_clip(clip).unwrap();
            let whole = looks_at_whole_tensors || matches!(clip, Some(Clip::Norm { .. }));
            for world in 1..=3 {
                let plan = ShardPlan::for_optimizer(&opt, TENSORS, world).unwrap();
                let cuts = if whole { Cuts::Tensors } else { Cuts::Elements };
                assert_eq!(plan, plan_by(cuts, world), "{name} {clip:?} {world}");
                for rank in 0..world {
                    ShardedOptimizer::new(opt.clone(), plan.clone(), rank).unwrap();
                }
            }
        }
    }
}

#[test]
fn plans_for_an_optimizer_keep_tensors_whole_only_where_it_needs_them() {
    for_each_rule(&mut PlannedForTheOptimizer);
    // One group of a rule that looks at whole tensors is enough.
    let mut opt = Optimizer::<Rule, f32>::new(AdamW::default().into()).unwrap();
    assert!(!ShardPlan::for_optimizer(&opt, TENSORS, 2).unwrap().keeps_tensors_whole());
    opt.add_group("matrices", Muon::default()).unwrap();
    assert!(ShardPlan::for_optimizer(&opt, TENSORS, 2).unwrap().keeps_tensors_whole());
    let err = ShardPlan::for_optimizer(&opt, TENSORS, 0).unwrap_err();
    assert!(matches!(err, Error::InvalidSharding { .. }), "{err}");
}

/// A rank's share holds the pieces of the plan that cut it: under another plan of the same
/// world size, which would give some of its tensors to other ranks, it is refused, by the
/// rank and by `merge`, rather than resumed with state lost.
#[test]
fn a_share_resumes_only_under_the_plan_that_cut_it() {
    let mut opt = setup::<_, f64>(&Adam::default());
    train_single(&mut opt, &mut flat_params::<f64>(&plan(1)), 0..2);
    let full = opt.checkpoint();
    for (cut, other) in [(Cuts::Elements, Cuts::Tensors), (Cuts::Tensors, Cuts::Elements)] {
        let shares = split(full.clone(), &plan_by(cut, 2)).unwrap();
        for (rank, share) in shares.iter().enumerate() {
            let share = Optimizer::from_checkpoint(share.clone()).unwrap();
            assert!(ShardedOptimizer::new(share.clone(), plan_by(cut, 2), rank).is_ok());
            let err = ShardedOptimizer::new(share, plan_by(other, 2), rank).unwrap_err();
            assert!(matches!(err, Error::InvalidSharding { .. }), "{err}");
            assert!(err.to_string().contains("another plan"), "{err}");
        }
        assert!(merge(shares, &plan_by(other, 2)).is_err());
    }
}

#[test]
fn plan_errors() {
    assert!(matches!(ShardPlan::new(TENSORS, 0), Err(Error::InvalidSharding { .. })));
    // A world given as a huge number is refused, not allocated (a cut per rank).
    for world in [MAX_WORLD + 1, usize::MAX] {
        let err = ShardPlan::whole_tensors(TENSORS, world).unwrap_err();
        assert!(err.to_string().contains(&format!("a world of {world} ranks is above")), "{err}");
    }
    let err = ShardPlan::new([("a", &[1][..]), ("a", &[2])], 2).unwrap_err();
    assert_eq!(err, Error::DuplicateParam { param: "a".into(), in_what: "shard plan" });
    assert_eq!(err.to_string(), "the shard plan lists the tensor `a` more than once");
    let huge = [("a", &[usize::MAX, 2][..])];
    assert!(matches!(ShardPlan::new(huge, 2), Err(Error::InvalidSharding { .. })));
    let halves = [("a", &[usize::MAX / 2 + 1][..]), ("b", &[usize::MAX / 2 + 1])];
    assert!(matches!(ShardPlan::new(halves, 2), Err(Error::InvalidSharding { .. })));
    // A world larger than the model leaves ranks empty.
    let plan = ShardPlan::new([("a", &[3][..])], 4).unwrap();
    assert_eq!((0..4).map(|rank| plan.load(rank)).collect::<Vec<_>>(), [0, 0, 3, 0]);
    assert_eq!(plan.pieces(0).count(), 0);
}

/// One step of every rank on its own thread from the flat parameters `before`, rank
/// `short` given one gradient too few; every rank's result and parameters.
fn step_on_threads<R: UpdateRule>(
    ranks: &mut [ShardedOptimizer<R, f64>],
    before: &[f64],
    short: Option<usize>,
) -> Vec<(Result<StepOutcome, Error>, Vec<f64>)> {
    let mut params = before.to_vec();
    on_threads(ranks, &mut params, |sharded, shard, all_reduce| {
        let range = sharded.plan().shard(sharded.rank());
        let grads = flat_grads::<f64>(sharded.plan(), 2);
        let end = range.end - usize::from(short == Some(sharded.rank()));
        let result = sharded.step_all(shard, &grads[range.start..end], all_reduce);
        (result, shard.to_vec())
    })
}

/// A setting that Prodigy refuses only after the first exchange in one process (groups at
/// other rates) is refused before it in a sharded step: the other ranks learn of it there,
/// rather than waiting in the second exchange for a rank that has left.
#[test]
fn a_reduction_refused_on_one_rank_fails_every_rank() {
    let setup = || {
        let mut opt = Optimizer::<Prodigy, f64>::new(Prodigy::default()).unwrap();
        opt.add_group("decayed", Prodigy { weight_decay: 0.1, ..Prodigy::default() }).unwrap();
        opt.assign("embed", "decayed").unwrap();
        opt
    };
    let mut ranks: Vec<_> =
        (0..3).map(|rank| ShardedOptimizer::new(setup(), plan(3), rank).unwrap()).collect();
    let mut params = flat_params::<f64>(&plan(3));
    train_sharded(&mut ranks, &mut params, 0..2);
    let (before, states) = (params.clone(), merged(&ranks));
    ranks[2].optimizer_mut().set_lr("decayed", 0.5).unwrap();
    let results = step_on_threads(&mut ranks, &before, None);
    for (rank, (result, shard)) in results.into_iter().enumerate() {
        let err = result.unwrap_err();
        match rank {
            2 => assert!(matches!(err, Error::UnequalGroupLr { .. }), "{err}"),
            _ => assert_eq!(err, Error::OtherRanksFailed { ranks: 1 }),
        }
        assert_eq!(bits(&shard), bits(&before[plan(3).shard(rank)]));
    }
    ranks[2].optimizer_mut().set_lr("decayed", 1.0).unwrap();
    assert_eq!(merged(&ranks), states);
}

/// A step that fails on one rank fails on every rank, and changes nothing anywhere.
#[test]
fn a_failure_on_one_rank_fails_every_rank_and_changes_nothing() {
    let mut ranks: Vec<_> = (0..3)
        .map(|rank| {
            ShardedOptimizer::new(setup::<_, f64>(&Adam::default()), plan(3), rank).unwrap()
        })
        .collect();
    let mut params = flat_params::<f64>(&plan(3));
    train_sharded(&mut ranks, &mut params, 0..2);
    let (before, states) = (params.clone(), merged(&ranks));
    // Rank 1 passes one gradient too few.
    let results = step_on_threads(&mut ranks, &before, Some(1));
    for (rank, (result, shard)) in results.into_iter().enumerate() {
        let err = result.unwrap_err();
        match rank {
            1 => {
                let load = plan(3).load(1);
                let message = format!("the step got {load} parameters and {} gradients", load - 1);
                assert!(err.to_string().contains(&message), "{err}");
            }
            _ => assert_eq!(err, Error::OtherRanksFailed { ranks: 1 }),
        }
        assert_eq!(bits(&shard), bits(&before[plan(3).shard(rank)]));
    }
    assert_eq!(merged(&ranks), states);
}

#[test]
fn what_a_shard_cannot_step_is_refused() {
    let opt = Optimizer::<Adam, f64>::new(Adam::default()).unwrap();
    assert!(ShardedOptimizer::new(opt.clone(), plan(2), 2).is_err());
    let mut per_tensor = opt.clone();
    per_tensor.set_clip(Some(Clip::Norm { max_norm: 1.0 })).unwrap();
    let err = ShardedOptimizer::new(per_tensor, plan(2), 0).unwrap_err();
    assert!(err.to_string().contains("its own norm needs whole tensors"), "{err}");
    // A rank's share resumes on that rank only, under a plan of the same world size.
    let ranks = shards_of(setup::<_, f64>(&Adam::default()).checkpoint(), plan(2));
    let first = ranks[0].optimizer().clone();
    assert!(ShardedOptimizer::new(first.clone(), plan(2), 0).is_ok());
    for (world, rank) in [(2, 1), (3, 0)] {
        let err = ShardedOptimizer::new(first.clone(), plan(world), rank).unwrap_err();
        let message = format!("holds the share of rank 0 of 2, not of rank {rank} of {world}");
        assert!(err.to_string().contains(&message), "{err}");
    }
    // Set after the share was made: refused by the step, which still joins the exchange.
    let mut rank = ShardedOptimizer::new(opt, plan(1), 0).unwrap();
    rank.optimizer_mut().set_clip(Some(Clip::Norm { max_norm: 1.0 })).unwrap();
    let (mut params, grads) = (flat_params::<f64>(&plan(1)), flat_grads::<f64>(&plan(1), 0));
    let mut exchanged = None;
    let err = rank.step_all(&mut params, &grads, |v| exchanged = Some(v[0])).unwrap_err();
    assert!(matches!(err, Error::InvalidSharding { .. }), "{err}");
    assert_eq!(exchanged, Some(1.0), "the failure is announced to the other ranks");
}

#[test]
fn shards_of_a_frozen_group_stay_unchanged() {
    let rule = Momentum { lr: 0.1, momentum: 0.9, ..Momentum::default() };
    let mut opt = setup::<_, f32>(&rule);
    opt.freeze("fast").unwrap();
    let mut single = opt.clone();
    let mut expected = flat_params::<f32>(&plan(1));
    train_single(&mut single, &mut expected, 0..3);
    let mut ranks = shards_of(opt.checkpoint(), plan(3));
    let mut params = flat_params::<f32>(&plan(3));
    train_sharded(&mut ranks, &mut params, 0..3);
    assert_eq!(bits(&params), bits(&expected));
    let full = merged(&ranks);
    assert_eq!(full, single.checkpoint());
    assert!(full.groups[1].frozen);
    let bias = full.tensors.iter().find(|t| t.name == "layer.0.bias").unwrap();
    assert!(bias.state.is_none());
    // Shards that disagree on the flag do not merge.
    let mut shards: Vec<_> = ranks.iter().map(|rank| rank.optimizer().checkpoint()).collect();
    shards[1].groups[1].frozen = false;
    let err = merge(shards, &plan(3)).unwrap_err();
    assert!(matches!(err, Error::InvalidSharding { .. }), "{err:?}");
    // Every tensor frozen: every rank reports it.
    opt.freeze("default").unwrap();
    let mut ranks = shards_of(opt.checkpoint(), plan(2));
    for outcomes in train_sharded(&mut ranks, &mut params, 0..1) {
        assert_eq!(outcomes, [StepOutcome::Frozen]);
    }
}

#[test]
fn refusing_non_finite_gradients_names_the_tensor_on_every_rank() {
    let mut opt = setup::<_, f64>(&Adam::default());
    opt.set_non_finite(NonFinite::Refuse);
    let mut ranks = shards_of(opt.checkpoint(), plan(2));
    let collective = Collective::new(2);
    let plan = plan(2);
    let params = flat_params::<f64>(&plan);
    let grads = flat_grads::<f64>(&plan, 3);
    std::thread::scope(|scope| {
        for sharded in &mut ranks {
            let range = plan.shard(sharded.rank());
            let mut shard = params[range.clone()].to_vec();
            let (grads, collective) = (&grads[range], &collective);
            scope.spawn(move || {
                let err = sharded.step_all(&mut shard, grads, |v| collective.all_reduce(v));
                assert_eq!(err, Err(Error::NonFiniteGradient { param: "layer.1.weight".into() }));
            });
        }
    });
}

/// Merging 3 of 4 shards, a shard that lists a tensor twice, shards out of rank order or of
/// other setups, and parts that disagree are refused, naming what is wrong.
#[test]
fn incomplete_or_inconsistent_shards_are_refused() {
    let mut ranks = shards_of(setup::<_, f64>(&Adam::default()).checkpoint(), plan(4));
    let mut params = flat_params::<f64>(&plan(4));
    train_sharded(&mut ranks, &mut params, 0..2);
    let shards: Vec<_> = ranks.iter().map(|rank| rank.optimizer().checkpoint()).collect();
    assert!(merge(shards.clone(), &plan(4)).is_ok());

    let err = merge(shards[..3].to_vec(), &plan(4)).unwrap_err();
    assert!(matches!(err, Error::InvalidSharding { .. }), "{err}");
    assert!(err.to_string().contains("the shards of ranks [3] are missing"), "{err}");
    let err = merge(shards[..1].to_vec(), &plan(4)).unwrap_err();
    assert!(err.to_string().contains("ranks [1, 2, 3] are missing"), "{err}");
    // Many missing ranks (a plan may have millions) are named as a range, not listed.
    let err = merge(shards[..1].to_vec(), &plan(20)).unwrap_err();
    assert!(err.to_string().contains("the shards of ranks 1 to 19 are missing"), "{err}");
    assert!(merge(shards.clone(), &plan(3)).is_err());
    assert!(matches!(merge::<Adam, f64>(vec![], &plan(4)), Err(Error::InvalidSharding { .. })));

    let mut twice = shards.clone();
    let copy = twice[2].tensors[0].clone();
    twice[2].tensors.push(copy);
    let err = merge(twice, &plan(4)).unwrap_err();
    let name = &shards[2].tensors[0].name;
    assert!(err.to_string().contains(&format!("rank 2 lists tensor `{name}` twice")), "{err}");

    // Every shard records its rank: shards out of order are refused, also where their parts
    // are of the same sizes (ranks 0 and 1 hold one part each of 512 elements of `embed`).
    for (a, b) in [(0, 1), (1, 2)] {
        let mut swapped = shards.clone();
        swapped.swap(a, b);
        let err = merge(swapped, &plan(4)).unwrap_err();
        let message = format!("the shard given as rank {a} of 4 holds the share of rank {b} of 4");
        assert!(err.to_string().contains(&message), "{err}");
    }
    let four = split(merge(shards.clone(), &plan(4)).unwrap(), &plan(4)).unwrap();
    let recorded = |shards: &[Checkpoint<Adam, f64>]| -> Vec<_> {
        shards.iter().map(|shard| shard.shard.map(|s| (s.rank, s.world))).collect()
    };
    let expected: Vec<_> = (0..4).map(|rank| Some((rank, 4))).collect();
    assert_eq!(recorded(&four), expected, "split records each rank's share");
    assert_eq!(recorded(&shards), expected, "so do the ranks");
    // Shards without the record (format version 4) are taken in rank order, refused where
    // their parts differ in size, and cannot be told apart where they do not.
    let unrecorded: Vec<_> =
        shards.iter().cloned().map(|shard| Checkpoint { shard: None, ..shard }).collect();
    assert_eq!(
        merge(unrecorded.clone(), &plan(4)).unwrap(),
        merge(shards.clone(), &plan(4)).unwrap()
    );
    let mut swapped = unrecorded.clone();
    swapped.swap(1, 2);
    let err = merge(swapped, &plan(4)).unwrap_err();
    assert!(err.to_string().contains("of rank 1 has 512 elements in the plan"), "{err}");
    // A rank's share is no full checkpoint: cutting it would lose the other ranks' state.
    let err = split(shards[1].clone(), &plan(2)).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("the share of rank 1 of 4, not one of whole"), "{err}");
    // The record survives the encodings, and a rank outside its world does not load.
    let bytes = shards[3].to_bytes(Encoding::Postcard).unwrap();
    assert_eq!(Checkpoint::<Adam, f64>::from_bytes(&bytes).unwrap(), shards[3]);
    let json = serde_json::to_string(&shards[3]).unwrap();
    assert_eq!(serde_json::from_str::<Checkpoint<Adam, f64>>(&json).unwrap(), shards[3]);
    let outside =
        Checkpoint { shard: Some(ShardRecord { rank: 4, world: 4 }), ..shards[3].clone() };
    let err = Optimizer::from_checkpoint(outside).unwrap_err();
    assert!(matches!(err, Error::InvalidSharding { .. }), "{err}");

    let mut other = shards.clone();
    other[1].groups[1].hyper.lr = 0.5;
    let err = merge(other, &plan(4)).unwrap_err();
    assert!(err.to_string().contains("the shard of rank 1 differs"), "{err}");

    // `embed` is cut between ranks 0 and 1: parts of other step counts, or of a lost rank.
    let embed = |shard: &mut Checkpoint<Adam, f64>| {
        shard
            .tensors
            .iter_mut()
            .find(|t| t.name == "embed")
            .unwrap()
            .state
            .as_mut()
            .unwrap()
            .step += 1;
    };
    let mut stepped = shards.clone();
    embed(&mut stepped[1]);
    let err = merge(stepped, &plan(4)).unwrap_err();
    assert!(
        err.to_string().contains("parts of tensor `embed` in the shards of ranks 0 and 1"),
        "{err}"
    );
    let mut lost = shards.clone();
    lost[1].tensors.retain(|t| t.name != "embed");
    let err = merge(lost, &plan(4)).unwrap_err();
    assert!(err.to_string().contains("but not in that of rank 1"), "{err}");

    // A plan that misses a tensor with state, or gives it another size.
    let full = merge(shards, &plan(4)).unwrap();
    let small = ShardPlan::new([("embed", &[40, 30][..])], 2).unwrap();
    let err = split(full.clone(), &small).unwrap_err();
    assert!(err.to_string().contains("is not in the plan"), "{err}");
    let resized: Vec<_> =
        TENSORS.iter().map(|&(n, s)| (n, if n == "embed" { &[41, 30][..] } else { s })).collect();
    let err = split(full, &ShardPlan::new(resized, 2).unwrap()).unwrap_err();
    assert!(err.to_string().contains("`embed` has 1230 elements in the plan"), "{err}");
}
