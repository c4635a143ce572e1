//! Sharded optimizer state: plans, and resuming across world sizes bit for bit.

use ndarray::ArrayD;
use ndarray_optim::shard::{merge, split};
use ndarray_optim::{Adam, Element, Error, Optimizer, ShardPlan, ShardedOptimizer, UpdateRule};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::{RuleCheck, bits, for_each_rule, values};

const TENSORS: [(&str, &[usize]); 6] = [
    ("embed", &[10, 8]),
    ("layer.0.weight", &[8, 8]),
    ("layer.0.bias", &[8]),
    ("layer.1.weight", &[4, 8]),
    ("layer.1.bias", &[4]),
    ("scale", &[]),
];

fn sizes() -> Vec<(&'static str, usize)> {
    TENSORS.iter().map(|(name, shape)| (*name, shape.iter().product())).collect()
}

#[test]
fn plans_are_deterministic_and_balanced() {
    let plan = ShardPlan::new(sizes(), 3).unwrap();
    let mut reversed = sizes();
    reversed.reverse();
    assert_eq!(ShardPlan::new(reversed, 3).unwrap(), plan);
    let total: usize = sizes().iter().map(|(_, n)| n).sum();
    assert_eq!((0..3).map(|rank| plan.load(rank)).sum::<usize>(), total);
    // Largest first: embed (80) to 0, layer.0.weight (64) to 1, layer.1.weight (32) to 2,
    // then the biases (8, 4) and scale (1) to the lightest ranks.
    assert_eq!(plan.owned(0).collect::<Vec<_>>(), ["embed"]);
    assert_eq!(plan.owned(1).collect::<Vec<_>>(), ["layer.0.weight"]);
    assert_eq!(
        plan.owned(2).collect::<Vec<_>>(),
        ["layer.0.bias", "layer.1.bias", "layer.1.weight", "scale"]
    );
    for (name, _) in sizes() {
        assert_eq!((0..3).filter(|&rank| plan.owned(rank).any(|n| n == name)).count(), 1);
    }
    assert!(matches!(ShardPlan::new(sizes(), 0), Err(Error::InvalidSharding { .. })));
    let err = ShardPlan::new([("a", 1), ("a", 2)], 2).unwrap_err();
    assert_eq!(err, Error::DuplicateParam { param: "a".into(), in_what: "shard plan" });
    assert_eq!(err.to_string(), "the shard plan lists the tensor `a` more than once");
}

struct Model<A>(Vec<(&'static str, ArrayD<A>)>);

impl<A: Element> Model<A> {
    fn new() -> Self {
        Model(TENSORS.iter().enumerate().map(|(i, (n, s))| (*n, values(s, i as u64))).collect())
    }

    fn grads(&self, step: u64) -> Vec<ArrayD<A>> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, (_, p))| values(p.shape(), 100 * step + i as u64))
            .collect()
    }

    fn bits(&self) -> Vec<Vec<u64>> {
        self.0.iter().map(|(_, p)| bits(p.iter())).collect()
    }
}

/// An optimizer with a second group for the biases.
fn setup<R: UpdateRule, A: Element>(rule: &R) -> Optimizer<R, A> {
    let mut opt = Optimizer::new(rule.clone()).unwrap();
    let mut fast = rule.clone();
    *fast.lr_mut() *= 2.0;
    opt.add_group("fast", fast).unwrap();
    for (name, _) in TENSORS.iter().filter(|(name, _)| name.ends_with("bias")) {
        opt.assign(name, "fast").unwrap();
    }
    opt
}

/// Steps every tensor on every rank's share; in one process the parameters are shared, so
/// the owner's update is what every rank would receive by broadcast.
fn train_sharded<R: UpdateRule, A: Element>(
    ranks: &mut [ShardedOptimizer<R, A>],
    model: &mut Model<A>,
    steps: std::ops::Range<u64>,
) {
    for step in steps {
        let grads = model.grads(step);
        for ((name, param), grad) in model.0.iter_mut().zip(&grads) {
            let stepped: usize =
                ranks.iter_mut().map(|rank| rank.step(name, param, grad).unwrap() as usize).sum();
            assert_eq!(stepped, 1, "`{name}` must be stepped by exactly its owner");
        }
    }
}

fn plan(world: usize) -> ShardPlan {
    ShardPlan::new(sizes(), world).unwrap()
}

fn shards_of<R: UpdateRule, A: Element>(
    full: ndarray_optim::Checkpoint<R, A>,
    world: usize,
) -> Vec<ShardedOptimizer<R, A>> {
    let plan = ShardPlan::new(sizes(), world).unwrap();
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

struct AcrossWorldSizes;

impl RuleCheck for AcrossWorldSizes {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        let fresh = || setup::<R, A>(&rule);
        // One process, 12 steps.
        let mut single = Model::<A>::new();
        let mut opt = fresh();
        for step in 0..12 {
            let grads = single.grads(step);
            for ((name, param), grad) in single.0.iter_mut().zip(&grads) {
                opt.step(name, param, grad).unwrap();
            }
        }
        // 4 ranks for 5 steps, save, resume on 2 ranks for 4, save, resume on 1 for 3.
        let mut model = Model::<A>::new();
        let mut four = shards_of(fresh().checkpoint(), 4);
        train_sharded(&mut four, &mut model, 0..5);
        let saved: Vec<_> =
            four.iter().map(|rank| serde_json::to_string(rank.optimizer()).unwrap()).collect();
        let loaded = saved
            .iter()
            .map(|json| serde_json::from_str::<Optimizer<R, A>>(json).unwrap().checkpoint())
            .collect();
        let mut two = shards_of(merge(loaded, &plan(4)).unwrap(), 2);
        train_sharded(&mut two, &mut model, 5..9);
        let full = merge(two.iter().map(|rank| rank.optimizer().checkpoint()).collect(), &plan(2))
            .unwrap();
        let mut one = shards_of(full, 1);
        train_sharded(&mut one, &mut model, 9..12);

        assert_eq!(model.bits(), single.bits(), "{rule:?} {}", A::NAME);
        assert_eq!(one[0].optimizer(), &opt);
    }
}

#[test]
fn a_four_rank_checkpoint_resumes_on_two_and_one_rank() {
    for_each_rule(&mut AcrossWorldSizes);
}

#[test]
fn shard_state_is_a_share_of_the_whole() {
    let mut model = Model::<f64>::new();
    let mut ranks = shards_of(setup::<_, f64>(&Adam::default()).checkpoint(), 3);
    train_sharded(&mut ranks, &mut model, 0..2);
    let plan = ranks[0].plan().clone();
    for rank in &ranks {
        let stepped: Vec<&str> = plan
            .owned(rank.rank())
            .filter(|name| rank.optimizer().step_count(name).is_some())
            .collect();
        assert_eq!(stepped, plan.owned(rank.rank()).collect::<Vec<_>>());
        for (name, _) in sizes() {
            let owned = plan.owner(name) == Some(rank.rank());
            assert_eq!(rank.optimizer().step_count(name).is_some(), owned, "{name}");
        }
    }
}

#[test]
fn invalid_sharding_is_refused() {
    let mut model = Model::<f64>::new();
    let mut ranks = shards_of(setup::<_, f64>(&Adam::default()).checkpoint(), 2);
    train_sharded(&mut ranks, &mut model, 0..1);
    let shard0 = ranks[0].optimizer().checkpoint();
    // The same shard twice holds the state of its tensors twice.
    let err = merge(vec![shard0.clone(), shard0.clone()], &plan(2)).unwrap_err();
    assert!(matches!(err, Error::InvalidSharding { .. }), "{err}");
    assert!(err.to_string().contains("which the plan gives to rank 0"), "{err}");
    // Shards of different setups.
    let mut other = ranks[1].optimizer().checkpoint();
    other.groups[1].hyper.lr = 0.5;
    let err = merge(vec![shard0.clone(), other], &plan(2)).unwrap_err();
    assert!(matches!(err, Error::InvalidSharding { .. }), "{err}");
    assert!(matches!(merge::<Adam, f64>(vec![], &plan(2)), Err(Error::InvalidSharding { .. })));
    // A plan that misses a tensor with state.
    let small = ShardPlan::new([("embed", 80)], 2).unwrap();
    let err = split(shard0, &small).unwrap_err();
    assert!(err.to_string().contains("is not in the plan"), "{err}");
    // Ranks outside the world and tensors outside the plan.
    let plan = ShardPlan::new(sizes(), 2).unwrap();
    let opt = Optimizer::<Adam, f64>::new(Adam::default()).unwrap();
    assert!(ShardedOptimizer::new(opt.clone(), plan.clone(), 2).is_err());
    let mut rank = ShardedOptimizer::new(opt, plan, 0).unwrap();
    let mut p = ndarray::array![1.0];
    assert!(matches!(
        rank.step("unknown", &mut p, &ndarray::array![1.0]),
        Err(Error::InvalidSharding { .. })
    ));
}

/// Merging 3 of 4 shards, or a shard that lists a tensor twice, is refused with the missing
/// ranks or the tensor named; so are shards given out of rank order.
#[test]
fn incomplete_or_inconsistent_shards_are_refused() {
    let mut model = Model::<f64>::new();
    let mut ranks = shards_of(setup::<_, f64>(&Adam::default()).checkpoint(), 4);
    train_sharded(&mut ranks, &mut model, 0..2);
    let shards: Vec<_> = ranks.iter().map(|rank| rank.optimizer().checkpoint()).collect();
    assert!(merge(shards.clone(), &plan(4)).is_ok());

    let err = merge(shards[..3].to_vec(), &plan(4)).unwrap_err();
    assert!(matches!(err, Error::InvalidSharding { .. }), "{err}");
    assert!(err.to_string().contains("the shards of ranks [3] are missing"), "{err}");
    let err = merge(shards[..1].to_vec(), &plan(4)).unwrap_err();
    assert!(err.to_string().contains("ranks [1, 2, 3] are missing"), "{err}");
    assert!(merge(shards.clone(), &plan(3)).is_err());

    let mut twice = shards.clone();
    let copy = twice[2].tensors[0].clone();
    twice[2].tensors.push(copy);
    let err = merge(twice, &plan(4)).unwrap_err();
    assert!(matches!(err, Error::InvalidSharding { .. }), "{err}");
    let name = &shards[2].tensors[0].name;
    assert!(err.to_string().contains(&format!("rank 2 lists tensor `{name}` twice")), "{err}");

    let mut swapped = shards.clone();
    swapped.swap(0, 1);
    let err = merge(swapped, &plan(4)).unwrap_err();
    assert!(err.to_string().contains("the shard of rank 0 has state of tensor"), "{err}");
}
