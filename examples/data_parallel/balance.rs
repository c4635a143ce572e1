//! How evenly a plan shares a model out: the largest shard against `1/N` of the elements.

use ndarray_optim::ShardPlan;
use ndarray_optim::shard::SHARD_BLOCK;

use crate::mlp::Tensors;

/// The largest shard of `plan`: its elements, that as a multiple of `P/N`, and how many
/// elements it holds beyond `⌈P/N⌉` (at most [`SHARD_BLOCK`] when the plan cuts tensors).
pub struct Balance {
    pub largest: usize,
    pub of_even: f64,
    pub excess: usize,
    pub whole_tensors: bool,
}

impl Balance {
    pub fn of(plan: &ShardPlan) -> Self {
        let largest = (0..plan.world()).map(|r| plan.load(r)).max().unwrap_or(0);
        let even = plan.len().div_ceil(plan.world());
        Balance {
            largest,
            of_even: largest as f64 * plan.world() as f64 / plan.len() as f64,
            excess: largest.saturating_sub(even),
            whole_tensors: plan.keeps_tensors_whole(),
        }
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "largest shard {} elements = {:.4} × P/N, {} beyond ⌈P/N⌉ ",
            self.largest, self.of_even, self.excess
        )?;
        if self.whole_tensors {
            write!(f, "(cut between tensors only)")
        } else {
            write!(f, "(one block is {SHARD_BLOCK})")
        }
    }
}

/// The plans of `models` (name, tensors) on 2, 3 and 4 ranks, cutting tensors and keeping
/// them whole, as a Markdown table.
pub fn table(models: &[(&str, Tensors)]) -> Result<String, String> {
    let mut out = String::from(
        "| model | parameters P | cuts | ranks N | largest shard | × P/N | beyond ⌈P/N⌉ |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (name, tensors) in models {
        for (cuts, whole) in [("in tensors", false), ("between tensors", true)] {
            for world in 2..=4 {
                let shapes = tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice()));
                let plan = crate::plan(shapes, world, whole)?;
                let balance = Balance::of(&plan);
                out += &format!(
                    "| {name} | {} | {cuts} | {world} | {} | {:.4} | {} |\n",
                    plan.len(),
                    balance.largest,
                    balance.of_even,
                    balance.excess
                );
            }
        }
    }
    Ok(out)
}
