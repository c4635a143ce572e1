//! Looking at the state by name: step counts, buffer views and memory.

use ndarray::{Array0, Array1, Array2, ShapeBuilder, arr0};
use ndarray_optim::{Adafactor, Adam, Momentum, Optimizer};

/// Momentum with γ = ½ and a constant gradient g gives the buffers g, 1.5 g, 1.75 g, exactly
/// in binary for these gradients.
#[test]
fn buffers_are_viewed_by_name_in_logical_order() {
    let mut opt = Optimizer::<Momentum, f32>::new(Momentum {
        lr: 0.25,
        momentum: 0.5,
        ..Momentum::default()
    })
    .unwrap();
    opt.add_group("slow", Momentum { lr: 0.125, momentum: 0.5, ..Momentum::default() }).unwrap();
    opt.assign("b", "slow").unwrap();
    opt.assign("d", "slow").unwrap();
    let grad = Array2::from_shape_fn((2, 3), |(i, j)| 0.25 * (3 * i + j + 1) as f32);
    let mut a = Array2::<f32>::zeros((2, 3));
    let mut b = Array2::<f32>::zeros((2, 3).f());
    let mut c: Array0<f32> = arr0(1.0);
    for step in 0..3 {
        opt.step("a", &mut a, &grad).unwrap();
        opt.step("b", &mut b, &grad).unwrap();
        if step == 0 {
            opt.step("c", &mut c, &arr0(2.0)).unwrap();
        }
    }

    let names: Vec<&str> = opt.state().map(|t| t.name()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    for name in ["a", "b"] {
        let view = opt.state_of(name).unwrap();
        assert_eq!((view.step(), view.shape()), (Some(3), Some(&[2, 3][..])));
        let buffers: Vec<_> = view.buffers().collect();
        assert_eq!(buffers.len(), 1);
        assert_eq!(buffers[0].0, "momentum_buffer");
        // Logical indexing, whatever the layout `b` was stepped in.
        assert_eq!(buffers[0].1, grad.mapv(|g| 1.75 * g).into_dyn(), "{name}");
        assert_eq!(view.buffer("momentum_buffer"), Some(buffers[0].1.clone()));
        assert_eq!(view.buffer("exp_avg"), None);
    }
    assert_eq!(opt.state_of("b").unwrap().group(), "slow");
    let c = opt.state_of("c").unwrap();
    assert_eq!((c.group(), c.step()), ("default", Some(1)));
    assert_eq!(c.buffer("momentum_buffer").unwrap().into_shape_with_order(()).unwrap()[()], 2.0);
    let d = opt.state_of("d").unwrap();
    assert_eq!((d.group(), d.step(), d.shape(), d.buffers().len()), ("slow", None, None, 0));
    assert!(opt.state_of("e").is_none());
}

#[test]
fn memory_is_buffers_times_elements_times_element_size() {
    let mut adam = Optimizer::<Adam, f64>::new(Adam::default()).unwrap();
    let mut w = Array2::<f64>::zeros((100, 30));
    let mut b = Array2::<f64>::zeros((1, 30));
    adam.step("w", &mut w, &Array2::ones((100, 30))).unwrap();
    adam.step("b", &mut b, &Array2::ones((1, 30))).unwrap();
    adam.assign("unstepped", "default").unwrap();
    let bytes: Vec<(&str, usize)> = adam.state().map(|t| (t.name(), t.bytes())).collect();
    assert_eq!(bytes, [("b", 2 * 30 * 8), ("unstepped", 0), ("w", 2 * 3000 * 8)]);
    assert_eq!(adam.state_bytes(), 2 * 3030 * 8);

    let mut momentum = Optimizer::<Momentum, f32>::new(Momentum::default()).unwrap();
    let mut x = Array2::<f32>::zeros((7, 5));
    momentum.step("x", &mut x, &Array2::ones((7, 5))).unwrap();
    assert_eq!(momentum.state_bytes(), 35 * 4);
}

/// Adafactor keeps row and column statistics of a matrix: they are listed by name with their
/// own shapes, counted in the memory (64 + 32 values for a 64 × 32 matrix, not 2048) and
/// written into checkpoints, by `checkpoint()` and the streaming serializer alike. After the
/// first step they are the means of the squared gradient over the rows and columns (exact
/// here: rows of 1s and 2s, so squares of 1 and 4).
#[test]
fn shaped_buffers_are_viewed_counted_and_checkpointed_by_name() {
    let mut opt = Optimizer::<Adafactor, f32>::new(Adafactor::default()).unwrap();
    let mut w = Array2::<f32>::ones((64, 32).f());
    let grad = Array2::from_shape_fn((64, 32), |(i, _)| if i % 2 == 0 { 1.0 } else { 2.0 });
    let mut b = Array1::<f32>::zeros(5);
    opt.step("w", &mut w, &grad).unwrap();
    opt.step("b", &mut b, &Array1::from_elem(5, 2.0)).unwrap();

    let view = opt.state_of("w").unwrap();
    let names: Vec<&str> = view.buffers().map(|(name, _)| name).collect();
    assert_eq!(names, ["row_var", "col_var"]);
    let rows = view.buffer("row_var").unwrap();
    assert_eq!(rows.shape(), &[64, 1]);
    assert!(rows.indexed_iter().all(|(i, &v)| v == if i[0] % 2 == 0 { 1.0 } else { 4.0 }));
    let cols = view.buffer("col_var").unwrap();
    assert_eq!(cols.shape(), &[1, 32]);
    assert!(cols.iter().all(|&v| v == 2.5));
    assert_eq!(view.bytes(), (64 + 32) * 4);
    let b_view = opt.state_of("b").unwrap();
    assert_eq!(b_view.buffers().map(|(name, _)| name).collect::<Vec<_>>(), ["variance"]);
    assert_eq!(b_view.buffer("variance").unwrap(), Array1::from_elem(5, 4.0).into_dyn());
    assert_eq!(opt.state_bytes(), (64 + 32 + 5) * 4);

    let checkpoint = opt.checkpoint();
    let w_state = checkpoint.tensors.iter().find(|t| t.name == "w").unwrap().state.as_ref();
    let buffers: Vec<(&str, usize)> = w_state
        .unwrap()
        .buffers
        .iter()
        .map(|buffer| (buffer.name.as_str(), buffer.values.len()))
        .collect();
    assert_eq!(buffers, [("row_var", 64), ("col_var", 32)]);
    let streamed = serde_json::to_value(&opt).unwrap();
    assert_eq!(streamed, serde_json::to_value(&checkpoint).unwrap());
    let restored: Optimizer<Adafactor, f32> = serde_json::from_value(streamed).unwrap();
    assert_eq!(restored.checkpoint(), checkpoint);
}
