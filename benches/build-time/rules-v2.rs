    use ndarray_optim::{AdamW, Muon, Optimizer, Rule};
    let mut opt = Optimizer::<Rule, f32>::new(AdamW { lr: 3e-4, ..AdamW::default() }.into())?;
    opt.add_group("hidden", Muon { lr: 2e-2, ..Muon::default() })?;
    opt.add_group("rest", AdamW { lr: 3e-4, weight_decay: 1e-2, ..AdamW::default() })?;
    opt.assign("hidden.w", "hidden")?;
    for name in ["hidden.b", "out.w", "out.b"] {
        opt.assign(name, "rest")?;
    }
