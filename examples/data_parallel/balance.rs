//! How evenly a plan shares a model out: the largest shard against `1/N` of the elements.

use ndarray_optim::ShardPlan;
use ndarray_optim::shard::SHARD_BLOCK;

use crate::mlp::Tensors;

/// The largest shard of `plan`: its elements, that as a multiple of `P/N`, and how many
/// elements it holds beyond `⌈P/N⌉` (at most [`SHARD_BLOCK`]).
pub struct Balance {
    pub largest: usize,
    pub of_even: f64,
    pub excess: usize,
}

impl Balance {
    pub fn of(plan: &ShardPlan) -> Self {
        let largest = (0..plan.world()).map(|r| plan.load(r)).max().unwrap_or(0);
        let even = plan.len().div_ceil(plan.world());
        Balance {
            largest,
            of_even: largest as f64 * plan.world() as f64 / plan.len() as f64,
            excess: largest.saturating_sub(even),
        }
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "largest shard {} elements = {:.4} × P/N, {} beyond ⌈P/N⌉ (one block is {SHARD_BLOCK})",
            self.largest, self.of_even, self.excess
        )
    }
}

/// The plans of `models` (name, tensors) on 2, 3 and 4 ranks, as a Markdown table.
pub fn table(models: &[(&str, Tensors)]) -> Result<String, String> {
    let mut out = String::from(
        "| model | parameters P | ranks N | largest shard | × P/N | beyond ⌈P/N⌉ |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for (name, tensors) in models {
        for world in 2..=4 {
            let shapes = tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice()));
            let plan = ShardPlan::new(shapes, world).map_err(|e| e.to_string())?;
            let balance = Balance::of(&plan);
            out += &format!(
                "| {name} | {} | {world} | {} | {:.4} | {} |\n",
                plan.len(),
                balance.largest,
                balance.of_even,
                balance.excess
            );
        }
    }
    Ok(out)
}
