    use ndarray_optim::{AdamW, Muon, Optimizer, Parameters, Rule};
    let mut opt = Optimizer::<Rule, f32>::new(AdamW { lr: 3e-4, ..AdamW::default() }.into())?;
    opt.add_group("hidden", Muon { lr: 2e-2, ..Muon::default() })?;
    opt.add_group("rest", AdamW { lr: 3e-4, weight_decay: 1e-2, ..AdamW::default() })?;
    opt.assign("hidden.w", "hidden")?;
    for name in ["hidden.b", "out.w", "out.b"] {
        opt.assign(name, "rest")?;
    }
    // As rules-v2.rs, and a model of nested derived structs stepped with `step_model`.
    #[derive(Parameters)]
    struct Layer {
        weight: Array2<f32>,
        bias: Array1<f32>,
    }
    #[derive(Parameters)]
    struct Model {
        layers: Vec<Layer>,
        head: Layer,
        #[optim(skip)]
        dropout: f32,
    }
    let layer = |inputs, outputs| Layer {
        weight: Array2::from_elem((inputs, outputs), 0.5),
        bias: Array1::zeros(outputs),
    };
    let model = || Model { layers: vec![layer(8, 16), layer(16, 16)], head: layer(16, 4), dropout: 0.1 };
    let (mut params, grads) = (model(), model());
    opt.step_model(&mut params, &grads)?;
    assert!(params.dropout > 0.0);
