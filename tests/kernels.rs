//! Every loop that can run a step (the strided `Zip` loop, the slice loop as built, with AVX2
//! and with AVX-512, on one thread or many) gives the same bits, so results do not depend on
//! the CPU or the thread count, and a checkpoint resumed on another CPU continues exactly.

use ndarray::ArrayD;
use ndarray_optim::{
    Element, KernelPath, Optimizer, ParamGrad, UpdateRule, last_kernel_path, with_kernel_path,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::{RuleCheck, bits, for_each_rule, values};

const STEPS: u64 = 3;

/// Sizes with every kind of remainder after whole vectors, and one large enough to be split
/// over threads.
const SIZES: [&[usize]; 4] = [&[1], &[7, 9], &[3, 1031], &[5, 40_000]];

/// The bits of every parameter and state value after `STEPS` steps of the tensors `SIZES`,
/// stepped one by one and, under other names, as one batch.
fn run<R: UpdateRule, A: Element>(rule: &R) -> Vec<u64> {
    let mut opt = Optimizer::<R, A>::new(rule.clone()).unwrap();
    let mut params: Vec<ArrayD<A>> = SIZES.iter().map(|shape| values(shape, 1)).collect();
    let mut batched = params.clone();
    let grads: Vec<ArrayD<A>> = SIZES.iter().map(|shape| values(shape, 2)).collect();
    let names: Vec<String> = (0..SIZES.len()).map(|i| format!("batched{i}")).collect();
    for _ in 0..STEPS {
        for (i, (param, grad)) in params.iter_mut().zip(&grads).enumerate() {
            opt.step(&format!("single{i}"), param, grad).unwrap();
        }
        let mut batch: Vec<_> = names
            .iter()
            .zip(batched.iter_mut())
            .zip(&grads)
            .map(|((name, param), grad)| ParamGrad::new(name, param, grad))
            .collect();
        opt.step_all(&mut batch).unwrap();
    }
    let mut all = bits(params.iter().chain(&batched).flatten());
    all.extend(state_bits(&opt));
    all
}

fn state_bits<R: UpdateRule, A: Element>(opt: &Optimizer<R, A>) -> Vec<u64> {
    let checkpoint = opt.checkpoint();
    let states = checkpoint.tensors.iter().filter_map(|tensor| tensor.state.as_ref());
    bits(states.flat_map(|state| &state.buffers).flat_map(|buffer| &buffer.values))
}

/// The rules whose steps need whole tensors (norms, row and column statistics) and so
/// take them apart with `TensorStep::split` instead of running the kernel's loops.
const WHOLE_TENSOR_RULES: [&str; 2] = ["lamb", "adafactor"];

fn available_paths() -> Vec<KernelPath> {
    KernelPath::ALL.into_iter().filter(|path| path.is_available()).collect()
}

struct SamePaths;

impl RuleCheck for SamePaths {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        let expected = with_kernel_path(KernelPath::Zip, || run::<R, A>(&rule)).unwrap();
        for path in available_paths() {
            let got = with_kernel_path(path, || run::<R, A>(&rule)).unwrap();
            assert!(got == expected, "{rule:?} {}: {path:?} differs from Zip", A::NAME);
            // The last step of `run` is of a contiguous tensor: an elementwise rule took the
            // pinned path; a rule that takes tensors apart runs loops of its own, no path.
            let expected = (!WHOLE_TENSOR_RULES.contains(&rule.name())).then_some(path);
            assert_eq!(last_kernel_path(), expected, "{rule:?} {}", A::NAME);
        }
    }
}

#[test]
fn every_kernel_path_gives_the_same_bits() {
    for_each_rule(&mut SamePaths);
}

struct ResumeElsewhere;

impl RuleCheck for ResumeElsewhere {
    fn check<R, A>(&mut self, rule: R)
    where
        R: UpdateRule + Serialize + DeserializeOwned,
        A: Element + Serialize + DeserializeOwned,
    {
        let shape = [3, 1031];
        let grad = values::<A>(&shape, 2);
        let step = |opt: &mut Optimizer<R, A>, param: &mut ArrayD<A>| {
            opt.step("w", param, &grad).unwrap();
        };
        let mut straight = Optimizer::<R, A>::new(rule.clone()).unwrap();
        let mut expected = values::<A>(&shape, 1);
        with_kernel_path(KernelPath::Baseline, || {
            (0..2 * STEPS).for_each(|_| step(&mut straight, &mut expected));
        });
        let last = *available_paths().last().unwrap();
        let mut first = Optimizer::<R, A>::new(rule.clone()).unwrap();
        let mut param = values::<A>(&shape, 1);
        with_kernel_path(last, || (0..STEPS).for_each(|_| step(&mut first, &mut param)));
        let json = serde_json::to_string(&first).unwrap();
        let mut resumed: Optimizer<R, A> = serde_json::from_str(&json).unwrap();
        with_kernel_path(KernelPath::Zip, || {
            (0..STEPS).for_each(|_| step(&mut resumed, &mut param))
        });
        assert_eq!(bits(&param), bits(&expected), "{rule:?} {}", A::NAME);
        assert_eq!(state_bits(&resumed), state_bits(&straight), "{rule:?} {}", A::NAME);
    }
}

#[test]
fn a_checkpoint_resumed_on_another_path_continues_exactly() {
    for_each_rule(&mut ResumeElsewhere);
}

#[cfg(feature = "rayon")]
mod threads {
    use super::*;

    struct SameOnThreads;

    impl RuleCheck for SameOnThreads {
        fn check<R, A>(&mut self, rule: R)
        where
            R: UpdateRule + Serialize + DeserializeOwned,
            A: Element + Serialize + DeserializeOwned,
        {
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let expected = one.install(|| run::<R, A>(&rule));
            for threads in [2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let got = pool.install(|| run::<R, A>(&rule));
                assert!(got == expected, "{rule:?} {}: {threads} threads differ", A::NAME);
            }
        }
    }

    #[test]
    fn every_thread_count_gives_the_same_bits() {
        for_each_rule(&mut SameOnThreads);
    }
}
