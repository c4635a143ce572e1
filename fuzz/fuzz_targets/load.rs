//! Loading arbitrary bytes as a checkpoint never panics, and whatever loads is usable.
//!
//! The first byte picks the rule, element type and door (checkpoint bytes, or a bare
//! postcard or JSON payload through serde); the rest is the input. NAdam brings per-tensor
//! scalars. What loads is written
//! again and must read back equal, and each tensor small enough is stepped once.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ndarray::{ArrayD, IxDyn};
use ndarray_optim::checkpoint::Encoding;
use ndarray_optim::{
    Adadelta, Adam, Checkpoint, Element, Momentum, NAdam, Optimizer, ParamGrad, Sgd, UpdateRule,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn load<R, A>(door: u8, input: &[u8])
where
    R: UpdateRule + Serialize + DeserializeOwned,
    A: Element + Serialize + DeserializeOwned,
{
    let loaded = match door % 3 {
        0 => Checkpoint::<R, A>::from_bytes(input).ok().and_then(|checkpoint| {
            // Compared as bytes: loaded values may be NaN, which is unequal to itself.
            let again =
                checkpoint.to_bytes(Encoding::Postcard).expect("a loaded checkpoint encodes");
            let back = Checkpoint::<R, A>::from_bytes(&again).expect("and reads back");
            assert_eq!(back.to_bytes(Encoding::Postcard).expect("encodes again"), again);
            Optimizer::from_checkpoint(checkpoint).ok()
        }),
        1 => postcard::from_bytes::<Optimizer<R, A>>(input).ok(),
        _ => serde_json::from_slice::<Optimizer<R, A>>(input).ok(),
    };
    let Some(mut opt) = loaded else { return };
    let tensors: Vec<(String, Vec<usize>)> =
        opt.state().filter_map(|t| Some((t.name().to_owned(), t.shape()?.to_vec()))).collect();
    for (name, shape) in tensors {
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if numel.is_some_and(|n| n <= 1 << 12) {
            let mut param = ArrayD::<A>::zeros(IxDyn(&shape));
            let grad = ArrayD::<A>::from_elem(IxDyn(&shape), A::from_f64(0.5));
            // A batch of one: a loaded global-norm clip refuses single-tensor steps.
            let batch = &mut [ParamGrad::new(&name, &mut param, &grad)];
            opt.step_all(batch).expect("a loaded tensor steps at its shape");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else { return };
    let door = selector / 8;
    match selector % 8 {
        0 => load::<Adam, f32>(door, input),
        1 => load::<Adam, f64>(door, input),
        2 => load::<Sgd, f32>(door, input),
        3 => load::<Sgd, f64>(door, input),
        4 => load::<Momentum, f32>(door, input),
        5 => load::<Momentum, f64>(door, input),
        6 => load::<Adadelta, f32>(door, input),
        _ => load::<NAdam, f64>(door, input),
    }
});
