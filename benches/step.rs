//! Step time of every rule at 4K, 64K, 1M and 16M elements in f32 and f64, and of 1,000
//! tensors of 1,000 elements stepped by name. `cargo bench --bench step -- adam/f32` runs a
//! subset; `--features rayon` lets large tensors use the threads of rayon's global pool.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array1;
use ndarray_optim::{
    Adadelta, Adagrad, Adam, AdamW, Adamax, Element, Momentum, NAdam, Nesterov, Optimizer,
    ParamGrad, RAdam, RmsProp, Sgd, UpdateRule,
};
use std::hint::black_box;

const SIZES: [usize; 4] = [1 << 12, 1 << 16, 1 << 20, 1 << 24];

fn values<A: Element>(numel: usize, seed: usize) -> Array1<A> {
    Array1::from_shape_fn(numel, |i| A::from_f64(((i + seed) as f64 * 0.618_034).sin() * 1e-3))
}

/// Bytes a step reads and writes per element: parameter and state twice, gradient once.
fn bytes_per_elem<R: UpdateRule, A>(rule: &R) -> u64 {
    ((3 + 2 * rule.state_names().len()) * size_of::<A>()) as u64
}

fn rule_sizes<R: UpdateRule, A: Element>(c: &mut Criterion, rule: R) {
    let mut group = c.benchmark_group(format!("{}/{}", R::NAME, A::NAME));
    for numel in SIZES {
        if numel >= 1 << 24 {
            group.sample_size(10);
        }
        group.throughput(Throughput::Bytes(numel as u64 * bytes_per_elem::<R, A>(&rule)));
        let mut opt = Optimizer::<R, A>::new(rule.clone()).unwrap();
        let (mut param, grad) = (values::<A>(numel, 0), values::<A>(numel, 7));
        opt.step("w", &mut param, &grad).unwrap();
        group.bench_function(BenchmarkId::from_parameter(numel), |b| {
            b.iter(|| opt.step("w", black_box(&mut param), black_box(&grad)).unwrap());
        });
    }
    group.finish();
}

fn every_rule<A: Element>(c: &mut Criterion) {
    rule_sizes::<_, A>(c, Sgd::default());
    rule_sizes::<_, A>(c, Momentum::default());
    rule_sizes::<_, A>(c, Nesterov::default());
    rule_sizes::<_, A>(c, Adagrad::default());
    rule_sizes::<_, A>(c, Adadelta::default());
    rule_sizes::<_, A>(c, RmsProp::default());
    rule_sizes::<_, A>(c, Adam::default());
    rule_sizes::<_, A>(c, AdamW::default());
    rule_sizes::<_, A>(c, Adamax::default());
    rule_sizes::<_, A>(c, NAdam::default());
    rule_sizes::<_, A>(c, RAdam::default());
}

fn rules(c: &mut Criterion) {
    every_rule::<f32>(c);
    every_rule::<f64>(c);
}

/// 1,000 tensors of 1,000 elements, stepped one name at a time and as one batch, beside one
/// tensor of the same million elements: the difference is the per-tensor cost.
fn many_small(c: &mut Criterion) {
    const TENSORS: usize = 1000;
    const NUMEL: usize = 1000;
    let mut group = c.benchmark_group("many_small/adam/f32");
    group.throughput(Throughput::Elements((TENSORS * NUMEL) as u64));
    let names: Vec<String> = (0..TENSORS).map(|i| format!("layer{i}.bias")).collect();
    let mut params: Vec<Array1<f32>> = (0..TENSORS).map(|i| values(NUMEL, i)).collect();
    let grads: Vec<Array1<f32>> = (0..TENSORS).map(|i| values(NUMEL, i + 7)).collect();
    let mut opt = Optimizer::<Adam, f32>::new(Adam::default()).unwrap();
    for ((name, param), grad) in names.iter().zip(&mut params).zip(&grads) {
        opt.step(name, param, grad).unwrap();
    }
    group.bench_function("step_by_name", |b| {
        b.iter(|| {
            for ((name, param), grad) in names.iter().zip(&mut params).zip(&grads) {
                opt.step(name, param, grad).unwrap();
            }
        });
    });
    group.bench_function("step_all", |b| {
        b.iter(|| {
            let mut batch: Vec<_> = names
                .iter()
                .zip(&mut params)
                .zip(&grads)
                .map(|((name, param), grad)| ParamGrad::new(name, param, grad))
                .collect();
            opt.step_all(&mut batch).unwrap();
        });
    });
    let (mut param, grad) = (values::<f32>(TENSORS * NUMEL, 0), values::<f32>(TENSORS * NUMEL, 7));
    opt.step("one", &mut param, &grad).unwrap();
    group.bench_function("one_tensor", |b| {
        b.iter(|| opt.step("one", &mut param, &grad).unwrap());
    });
    group.finish();
}

criterion_group!(benches, rules, many_small);
criterion_main!(benches);
