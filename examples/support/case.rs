//! Replay cases: the JSON input and output of the conformance harness, and the run between.
//!
//! Shared by `examples/replay.rs` (the command) and the integration tests, so both go
//! through the same door as any outside check.

use ndarray::{ArrayD, IxDyn, ShapeBuilder, Zip};
use ndarray_optim::schedule::{LrScheduler, Schedule};
use ndarray_optim::{Clip, Element, Lbfgs, LbfgsOptions, Optimizer, ParamGrad, Rule, UpdateRule};
use serde::de::{self, DeserializeOwned};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// One replay case, as read from JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub optimizer: String,
    pub dtype: String,
    #[serde(default)]
    pub hyper: Map<String, Value>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    pub params: Vec<ParamSpec>,
    pub steps: usize,
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Learning-rate schedule over every group's base rate, advanced after every step.
    #[serde(default)]
    pub schedule: Option<ScheduleSpec>,
    /// Gradient clipping before every step.
    #[serde(default)]
    pub clip: Option<Clip>,
}

/// A case's `schedule`: one schedule (`{"kind": "cosine", ...}`), or several in sequence
/// (`{"kind": "sequential", "schedules": [...], "milestones": [...]}`, PyTorch's
/// SequentialLR) or chained (`{"kind": "chained", "schedules": [...]}`, ChainedScheduler).
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleSpec {
    Single(Schedule),
    Sequential { schedules: Vec<Schedule>, milestones: Vec<u64> },
    Chained { schedules: Vec<Schedule> },
}

/// The combinations, tagged by `kind` as the schedules are.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum Combined {
    Sequential { schedules: Vec<Schedule>, milestones: Vec<u64> },
    Chained { schedules: Vec<Schedule> },
}

impl<'de> Deserialize<'de> for ScheduleSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The kind decides which type reads the rest, so that each reports its own errors.
        let value = Value::deserialize(deserializer)?;
        let spec = match value.get("kind").and_then(Value::as_str) {
            Some("sequential" | "chained") => match Combined::deserialize(value) {
                Ok(Combined::Sequential { schedules, milestones }) => {
                    Ok(ScheduleSpec::Sequential { schedules, milestones })
                }
                Ok(Combined::Chained { schedules }) => Ok(ScheduleSpec::Chained { schedules }),
                Err(e) => Err(e),
            },
            _ => Schedule::deserialize(value).map(ScheduleSpec::Single),
        };
        spec.map_err(de::Error::custom)
    }
}

impl ScheduleSpec {
    /// Starts the schedule on `optimizer`, setting the rates of its first step.
    pub fn start<R: UpdateRule, A: Element>(
        &self,
        optimizer: &mut Optimizer<R, A>,
    ) -> ndarray_optim::Result<LrScheduler> {
        match self {
            ScheduleSpec::Single(schedule) => LrScheduler::new(optimizer, schedule.clone()),
            ScheduleSpec::Sequential { schedules, milestones } => {
                LrScheduler::sequential(optimizer, schedules.clone(), milestones.clone())
            }
            ScheduleSpec::Chained { schedules } => {
                LrScheduler::chained(optimizer, schedules.clone())
            }
        }
    }
}

/// A parameter group: a name, its rule if not the case's, and hyperparameter overrides.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    #[serde(default)]
    pub optimizer: Option<String>,
    #[serde(default)]
    pub hyper: Map<String, Value>,
}

/// A named parameter tensor with its initial value and objective.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(default)]
    pub layout: Layout,
    #[serde(default)]
    pub group: Option<String>,
    pub init: Vec<f64>,
    pub objective: Objective,
}

/// The memory order a parameter is stored in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
pub enum Layout {
    #[default]
    #[serde(rename = "c")]
    RowMajor,
    #[serde(rename = "f")]
    ColumnMajor,
}

/// Where a tensor's gradient comes from.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Objective {
    /// g = a ⊙ θ − b
    Quadratic { a: Vec<f64>, b: Vec<f64> },
    /// g at step t is `grads[t - 1]`
    Sequence { grads: Vec<Vec<f64>> },
    /// J = (1 − x)² + 100 (y − x²)²
    Rosenbrock,
}

/// The parameter values after every step, per tensor, in the order of the case's params.
#[derive(Debug, Clone, PartialEq)]
pub struct Trajectory {
    pub name: String,
    pub dtype: String,
    /// (tensor name, one row-major row of values per step)
    pub tensors: Vec<(String, Vec<Vec<f64>>)>,
}

/// Parses a case and replays it.
pub fn run_json(json: &str) -> Result<Trajectory, String> {
    let case: Case = serde_json::from_str(json).map_err(|e| format!("invalid case: {e}"))?;
    run(&case)
}

/// Replays a case with the optimizers and element type it names.
pub fn run(case: &Case) -> Result<Trajectory, String> {
    match case.dtype.as_str() {
        "f32" => run_dtype::<f32>(case),
        "f64" => run_dtype::<f64>(case),
        other => Err(format!("dtype `{other}` is not `f32` or `f64`")),
    }
}

/// The rule named `name` with the case's keys over its defaults; unknown keys are errors.
fn rule(name: &str, keys: &[&Map<String, Value>], context: &str) -> Result<Rule, String> {
    if Rule::with_defaults(name).is_none() {
        let known = Rule::NAMES.join(", ");
        return Err(format!("{context}: unknown optimizer `{name}` (expected one of {known})"));
    }
    let mut tagged = Map::new();
    for keys in keys {
        tagged.extend(keys.iter().map(|(key, value)| (key.clone(), value.clone())));
    }
    tagged.insert("rule".to_owned(), Value::String(name.to_owned()));
    serde_json::from_value(Value::Object(tagged)).map_err(|e| format!("{context}: {e}"))
}

/// A tensor being replayed: its parameter, objective and recorded rows.
struct Tensor<'a, A> {
    spec: &'a ParamSpec,
    param: ArrayD<A>,
    grad: ArrayD<A>,
    rows: Vec<Vec<f64>>,
}

fn array<A: Element>(shape: &[usize], layout: Layout, values: &[f64]) -> ArrayD<A> {
    let row_major =
        ArrayD::from_shape_vec(IxDyn(shape), values.iter().map(|&v| A::from_f64(v)).collect())
            .expect("lengths are checked before arrays are built");
    let mut array = ArrayD::zeros(IxDyn(shape).set_f(layout == Layout::ColumnMajor));
    array.assign(&row_major);
    array
}

fn check_len(what: &str, param: &str, len: usize, numel: usize) -> Result<(), String> {
    if len == numel {
        Ok(())
    } else {
        Err(format!("param `{param}`: {what} has {len} values, its shape needs {numel}"))
    }
}

impl<'a, A: Element> Tensor<'a, A> {
    fn new(spec: &'a ParamSpec, steps: usize) -> Result<Self, String> {
        let numel: usize = spec.shape.iter().product();
        let name = spec.name.as_str();
        check_len("init", name, spec.init.len(), numel)?;
        match &spec.objective {
            Objective::Quadratic { a, b } => {
                check_len("objective.a", name, a.len(), numel)?;
                check_len("objective.b", name, b.len(), numel)?;
            }
            Objective::Sequence { grads } => {
                if grads.len() < steps {
                    return Err(format!(
                        "param `{name}`: sequence has {} gradients for {steps} steps",
                        grads.len()
                    ));
                }
                for row in grads {
                    check_len("a sequence gradient", name, row.len(), numel)?;
                }
            }
            Objective::Rosenbrock if spec.shape != [2] => {
                return Err(format!("param `{name}`: rosenbrock needs shape [2]"));
            }
            Objective::Rosenbrock => {}
        }
        let param = array(&spec.shape, spec.layout, &spec.init);
        let grad = param.clone();
        Ok(Tensor { spec, param, grad, rows: Vec::with_capacity(steps) })
    }

    /// Writes the gradient of step `step` (from 1) at the current parameter into `self.grad`.
    fn compute_grad(&mut self, step: usize) {
        gradient(self.spec, step, &self.param, &mut self.grad);
    }
}

/// The gradient of `spec`'s objective at step `step` (from 1) and `param`, into `grad`.
fn gradient<A: Element>(spec: &ParamSpec, step: usize, param: &ArrayD<A>, grad: &mut ArrayD<A>) {
    match &spec.objective {
        Objective::Quadratic { a, b } => {
            let a = array::<A>(&spec.shape, Layout::RowMajor, a);
            let b = array::<A>(&spec.shape, Layout::RowMajor, b);
            Zip::from(grad).and(param).and(&a).and(&b).for_each(|g, &t, &a, &b| *g = a * t - b);
        }
        Objective::Sequence { grads } => {
            grad.assign(&array::<A>(&spec.shape, Layout::RowMajor, &grads[step - 1]));
        }
        Objective::Rosenbrock => {
            let c = A::from_f64;
            let (x, y) = (param[[0]], param[[1]]);
            let d = y - x * x;
            grad[[0]] = -c(2.0) * (c(1.0) - x) - c(400.0) * x * d;
            grad[[1]] = c(200.0) * d;
        }
    }
}

/// The objective J of `spec` at `param`, for the objectives that have one: quadratic
/// Σ (a ⊙ θ ⊙ θ / 2 − b ⊙ θ), summed in row-major order, and Rosenbrock.
fn objective_value<A: Element>(spec: &ParamSpec, param: &ArrayD<A>) -> Option<A> {
    let c = A::from_f64;
    match &spec.objective {
        Objective::Quadratic { a, b } => {
            let terms = param.iter().zip(a).zip(b).map(|((&t, &a), &b)| {
                let (a, b) = (c(a), c(b));
                a * t * t / c(2.0) - b * t
            });
            Some(terms.fold(A::zero(), |sum, term| sum + term))
        }
        Objective::Rosenbrock => {
            let (x, y) = (param[[0]], param[[1]]);
            let (u, d) = (c(1.0) - x, y - x * x);
            Some(u * u + c(100.0) * (d * d))
        }
        Objective::Sequence { .. } => None,
    }
}

/// Replays an L-BFGS case: one `step(closure)` per case step over all tensors, the closure's
/// loss the sum of the tensors' objectives in `params` order.
fn run_lbfgs<A>(case: &Case) -> Result<Trajectory, String>
where
    A: Element + Serialize + DeserializeOwned,
{
    let unsupported =
        |what: &str| Err(format!("lbfgs: {what} are not supported (PyTorch's LBFGS has none)"));
    if !case.groups.is_empty() || case.params.iter().any(|spec| spec.group.is_some()) {
        return unsupported("parameter groups");
    }
    if case.schedule.is_some() {
        return unsupported("learning-rate schedules");
    }
    if case.clip.is_some() {
        return unsupported("gradient clipping");
    }
    let options: LbfgsOptions = serde_json::from_value(Value::Object(case.hyper.clone()))
        .map_err(|e| format!("hyper: {e}"))?;
    let mut optimizer = Lbfgs::<A>::new(options).map_err(|e| e.to_string())?;
    let mut model = Vec::with_capacity(case.params.len());
    for spec in &case.params {
        if let Objective::Sequence { .. } = spec.objective {
            return Err(format!(
                "param `{}`: lbfgs takes quadratic and rosenbrock objectives only (its closure \
                 needs the loss)",
                spec.name
            ));
        }
        model.push((spec.name.clone(), Tensor::<A>::new(spec, case.steps)?.param));
    }
    let mut grads = model.clone();
    let mut rows = vec![Vec::with_capacity(case.steps); model.len()];
    let closure = |model: &Vec<(String, ArrayD<A>)>, grads: &mut Vec<(String, ArrayD<A>)>| {
        let mut loss = None;
        for ((spec, (_, param)), (_, grad)) in case.params.iter().zip(model).zip(grads) {
            gradient(spec, 1, param, grad);
            let value = objective_value(spec, param).unwrap_or(A::zero());
            loss = Some(loss.map_or(value, |sum| sum + value));
        }
        Ok::<_, ndarray_optim::Error>(loss.unwrap_or(A::zero()))
    };
    for step in 1..=case.steps {
        optimizer.step(&mut model, &mut grads, closure).map_err(|e| e.to_string())?;
        for (rows, (_, param)) in rows.iter_mut().zip(&model) {
            rows.push(param.iter().map(|v| v.into_f64()).collect());
        }
        if case.checkpoint_every > 0 && step % case.checkpoint_every == 0 {
            let bytes = serde_json::to_vec(&optimizer).map_err(|e| e.to_string())?;
            drop(optimizer);
            optimizer = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        }
    }
    Ok(Trajectory {
        name: case.name.clone(),
        dtype: A::NAME.to_owned(),
        tensors: case.params.iter().map(|spec| spec.name.clone()).zip(rows).collect(),
    })
}

fn build<A: Element>(case: &Case) -> Result<Optimizer<Rule, A>, String> {
    let defaults = rule(&case.optimizer, &[&case.hyper], "hyper")?;
    let mut optimizer = Optimizer::new(defaults).map_err(|e| e.to_string())?;
    optimizer.set_clip(case.clip).map_err(|e| format!("clip: {e}"))?;
    for group in &case.groups {
        let context = format!("group `{}`", group.name);
        // The case's keys belong to the case's rule; a group of another rule has its own.
        let hyper = match group.optimizer.as_deref() {
            Some(name) if name != case.optimizer => rule(name, &[&group.hyper], &context)?,
            _ => rule(&case.optimizer, &[&case.hyper, &group.hyper], &context)?,
        };
        optimizer.add_group(&group.name, hyper).map_err(|e| format!("{context}: {e}"))?;
    }
    for spec in &case.params {
        if let Some(group) = &spec.group {
            optimizer
                .assign(&spec.name, group)
                .map_err(|e| format!("param `{}`: {e}", spec.name))?;
        }
    }
    Ok(optimizer)
}

/// Replays a case with the element type it names, its rules chosen at run time.
fn run_dtype<A>(case: &Case) -> Result<Trajectory, String>
where
    A: Element + Serialize + DeserializeOwned,
{
    let mut names = std::collections::HashSet::new();
    if let Some(spec) = case.params.iter().find(|spec| !names.insert(spec.name.as_str())) {
        return Err(format!("param `{}` is listed twice", spec.name));
    }
    if case.optimizer == "lbfgs" {
        return run_lbfgs::<A>(case);
    }
    let mut tensors = case
        .params
        .iter()
        .map(|spec| Tensor::<A>::new(spec, case.steps))
        .collect::<Result<Vec<_>, _>>()?;
    let mut optimizer = build::<A>(case)?;
    let mut scheduler = case
        .schedule
        .as_ref()
        .map(|spec| spec.start(&mut optimizer))
        .transpose()
        .map_err(|e| format!("schedule: {e}"))?;
    for step in 1..=case.steps {
        // Every gradient first, then one step over all tensors, so that a global-norm clip
        // sees them all (each gradient depends on its own tensor only).
        for tensor in &mut tensors {
            tensor.compute_grad(step);
        }
        let mut batch: Vec<ParamGrad<'_, A>> = tensors
            .iter_mut()
            .map(|t| ParamGrad::new(&t.spec.name, &mut t.param, &t.grad))
            .collect();
        optimizer.step_all(&mut batch).map_err(|e| e.to_string())?;
        for tensor in &mut tensors {
            tensor.rows.push(tensor.param.iter().map(|v| v.into_f64()).collect());
        }
        if let Some(scheduler) = &mut scheduler {
            scheduler
                .step(&mut optimizer)
                .map_err(|e| format!("schedule after step {step}: {e}"))?;
        }
        if case.checkpoint_every > 0 && step % case.checkpoint_every == 0 {
            let bytes = serde_json::to_vec(&(&optimizer, &scheduler)).map_err(|e| e.to_string())?;
            drop((optimizer, scheduler));
            (optimizer, scheduler) = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        }
    }
    Ok(Trajectory {
        name: case.name.clone(),
        dtype: A::NAME.to_owned(),
        tensors: tensors.into_iter().map(|t| (t.spec.name.clone(), t.rows)).collect(),
    })
}

/// One row of values, printed in the case's dtype so that each round-trips exactly with the
/// fewest digits.
struct Row<'a> {
    values: &'a [f64],
    single: bool,
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.values.len()))?;
        for &value in self.values {
            if self.single {
                seq.serialize_element(&(value as f32))?;
            } else {
                seq.serialize_element(&value)?;
            }
        }
        seq.end()
    }
}

struct Rows<'a>(&'a [Vec<f64>], bool);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|values| Row { values, single: self.1 }))
    }
}

struct Tensors<'a>(&'a Trajectory);

impl Serialize for Tensors<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let single = self.0.dtype == "f32";
        let mut map = serializer.serialize_map(Some(self.0.tensors.len()))?;
        for (name, rows) in &self.0.tensors {
            map.serialize_entry(name, &Rows(rows, single))?;
        }
        map.end()
    }
}

/// `{"name": ..., "trajectory": {tensor: [[row after step 1], ...], ...}}`
impl Serialize for Trajectory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("name", &self.name)?;
        map.serialize_entry("trajectory", &Tensors(self))?;
        map.end()
    }
}
