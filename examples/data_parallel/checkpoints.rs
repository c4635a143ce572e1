//! Checkpoints of a sharded run: one file per rank for the optimizer state, and the
//! parameters by tensor name, read back on any number of ranks.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray_optim::checkpoint::Encoding;
use ndarray_optim::shard::merge;
use ndarray_optim::{Checkpoint, Optimizer, ShardPlan, UpdateRule};
use serde::Serialize;
use serde::de::DeserializeOwned;

const PARAMS: &str = "params.json";

fn shard_name(rank: usize, world: usize) -> String {
    format!("shard-{rank}-of-{world}.ckpt")
}

/// Writes this rank's optimizer shard to `dir`, and on rank 0 the parameters too.
pub fn save<R>(
    dir: &Path,
    optimizer: &Optimizer<R, f64>,
    plan: &ShardPlan,
    rank: usize,
    params: &[f64],
) -> Result<(), String>
where
    R: UpdateRule + Serialize + DeserializeOwned,
{
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(shard_name(rank, plan.world()));
    optimizer.checkpoint().save(&path, Encoding::Postcard).map_err(|e| e.to_string())?;
    if rank == 0 {
        write_params(&dir.join(PARAMS), plan, params)?;
    }
    Ok(())
}

/// Writes the parameters as JSON, by tensor name.
pub fn write_params(path: &Path, plan: &ShardPlan, params: &[f64]) -> Result<(), String> {
    let by_name: BTreeMap<&str, &[f64]> =
        plan.tensors().map(|tensor| (tensor.name, &params[tensor.range])).collect();
    let json = serde_json::to_vec(&by_name).map_err(|e| e.to_string())?;
    std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))
}

/// The whole optimizer merged from the shards in `dir`, whatever world size wrote them, and
/// the parameters in `plan`'s flat order.
pub fn resume<R>(dir: &Path, plan: &ShardPlan) -> Result<(Optimizer<R, f64>, Vec<f64>), String>
where
    R: UpdateRule + Serialize + DeserializeOwned,
{
    let context = |e: &dyn std::fmt::Display| format!("{}: {e}", dir.display());
    // The file names say the rank and the world size; merging needs the plan of that world
    // and refuses a set with a rank missing.
    let mut shards = BTreeMap::new();
    let mut written_by = None;
    for entry in std::fs::read_dir(dir).map_err(|e| context(&e))? {
        let path = entry.map_err(|e| context(&e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some((rank, world)) = name.as_deref().and_then(|name| {
            let (rank, world) =
                name.strip_prefix("shard-")?.strip_suffix(".ckpt")?.split_once("-of-")?;
            Some((rank.parse::<usize>().ok()?, world.parse::<usize>().ok()?))
        }) else {
            continue;
        };
        if *written_by.get_or_insert(world) != world {
            return Err(context(&"shards of different world sizes"));
        }
        let shard = Checkpoint::<R, f64>::load(&path).map_err(|e| e.to_string())?;
        shards.insert(rank, shard);
    }
    let written_by = written_by.ok_or_else(|| context(&"no shards"))?;
    if let Some(missing) = (0..written_by).find(|rank| !shards.contains_key(rank)) {
        return Err(context(&format!("the shard of rank {missing} is missing")));
    }
    let shapes: Vec<(&str, &[usize])> = plan.tensors().map(|t| (t.name, t.shape)).collect();
    let old_plan = crate::plan(shapes, written_by, plan.keeps_tensors_whole())?;
    let full = merge(shards.into_values().collect(), &old_plan).map_err(|e| e.to_string())?;
    let optimizer = Optimizer::from_checkpoint(full).map_err(|e| e.to_string())?;

    let path = dir.join(PARAMS);
    let json = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let by_name: BTreeMap<String, Vec<f64>> =
        serde_json::from_slice(&json).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut params = vec![0.0; plan.len()];
    for tensor in plan.tensors() {
        let values = by_name.get(tensor.name).ok_or(format!("{PARAMS} lacks `{}`", tensor.name))?;
        if values.len() != tensor.range.len() {
            return Err(format!(
                "{PARAMS}: `{}` has {} values, not {}",
                tensor.name,
                values.len(),
                tensor.range.len()
            ));
        }
        params[tensor.range].copy_from_slice(values);
    }
    Ok((optimizer, params))
}
