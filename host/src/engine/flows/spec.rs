//! Declared flows: the JSON spec `POST /v1/flows` takes, checked and
//! compiled into a DAG of steps (series, parallel, or explicit `after`).

use crate::store::{Repeat, RepeatKind};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};

/// A declared flow, as posted: a JSON object (serde's derive would also
/// read a struct from an array of its fields in order, which no spec is).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "SpecObject")]
#[schema(example = json!({"name": "report", "input": "hello", "steps": [{"plugin": "fetch", "id": "fetch"}, {"parallel": [{"plugin": "clean"}, {"plugin": "count", "timeout_ms": 2000}]}, {"plugin": "summarise"}], "queue": "reports"}))]
pub struct FlowSpec {
    /// A name to show.
    #[serde(default)]
    pub name: Option<String>,
    /// Input of the first steps (UTF-8 text, or JSON given as a value).
    #[serde(default)]
    pub input: Option<Value>,
    /// The steps: a step, `{"series": [...]}`, `{"parallel": [...]}` or a
    /// list (a series). Steps may also name others in `after`.
    pub steps: Node,
    /// Repeat the whole flow.
    #[serde(default)]
    pub repeat: Option<RepeatSpec>,
    /// Default queue of every step.
    #[serde(default)]
    pub queue: Option<String>,
    /// Default priority of every step.
    #[serde(default)]
    pub priority: Option<u8>,
    /// The span the submission continues (the caller's `traceparent`);
    /// never read from the spec's JSON.
    #[serde(skip)]
    pub trace: Option<crate::trace::TraceParent>,
}

/// [`FlowSpec`]'s fields, read from an object only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFields {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    steps: Node,
    #[serde(default, deserialize_with = "repeat_object")]
    repeat: Option<RepeatSpec>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    priority: Option<u8>,
}

/// A JSON object, the only shape a spec (or its `repeat`) has.
#[derive(Deserialize)]
struct SpecObject(serde_json::Map<String, Value>);

impl TryFrom<SpecObject> for FlowSpec {
    type Error = serde_json::Error;

    fn try_from(SpecObject(map): SpecObject) -> Result<Self, serde_json::Error> {
        let f: SpecFields = serde_json::from_value(Value::Object(map))?;
        Ok(Self {
            name: f.name,
            input: f.input,
            steps: f.steps,
            repeat: f.repeat,
            queue: f.queue,
            priority: f.priority,
            trace: None,
        })
    }
}

/// `repeat`, from an object only (or `null`).
fn repeat_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RepeatSpec>, D::Error> {
    use serde::de::Error;
    match Option::<SpecObject>::deserialize(d)? {
        None => Ok(None),
        Some(SpecObject(map)) => serde_json::from_value(Value::Object(map)).map(Some).map_err(D::Error::custom),
    }
}

impl FlowSpec {
    /// The spec with its plugin and queue names turned into `ns`'s keys
    /// (a name that is not one is refused: none reaches another tenant).
    pub fn in_namespace(mut self, ns: &crate::tenant::Namespace) -> Result<Self, crate::names::NameError> {
        use crate::names::NameKind;
        fn walk(node: &mut Node, ns: &crate::tenant::Namespace) -> Result<(), crate::names::NameError> {
            match node {
                Node::Series { series: nodes } | Node::Parallel { parallel: nodes } | Node::List(nodes) => {
                    nodes.iter_mut().try_for_each(|n| walk(n, ns))
                }
                Node::Step(step) => {
                    step.plugin = ns.plugin_ref(&step.plugin)?;
                    step.queue = step.queue.as_deref().map(|q| ns.key(NameKind::Queue, q)).transpose()?;
                    Ok(())
                }
            }
        }
        walk(&mut self.steps, ns)?;
        if ns.tenant() != crate::tenant::DEFAULT || self.queue.is_some() {
            self.queue = Some(ns.key(NameKind::Queue, self.queue.as_deref().unwrap_or("default"))?);
        }
        Ok(self)
    }
}

/// One node of the step tree.
#[derive(Debug, Clone)]
pub enum Node {
    /// Run these one after another, each fed the previous one's output.
    Series {
        /// The nodes.
        series: Vec<Node>,
    },
    /// Run these side by side; what follows gets all their outputs.
    Parallel {
        /// The nodes.
        parallel: Vec<Node>,
    },
    /// A plain list is a series.
    List(Vec<Node>),
    /// One plugin call.
    Step(Step),
}

/// By shape: an array is a list; an object with `series` or `parallel` is
/// that node and has no other key (nothing beside it is silently dropped);
/// any other object is a step.
impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let nodes = |v: Value| serde_json::from_value::<Vec<Node>>(v).map_err(D::Error::custom);
        match Value::deserialize(deserializer)? {
            list @ Value::Array(_) => nodes(list).map(Node::List),
            Value::Object(mut map) if map.contains_key("series") || map.contains_key("parallel") => {
                let kind = if map.contains_key("series") { "series" } else { "parallel" };
                let inner = nodes(map.remove(kind).expect("checked"));
                if let Some(other) = map.keys().next() {
                    return Err(D::Error::custom(format!(
                        "a `{kind}` node takes no other key, found `{other}` (give a step its own object)"
                    )));
                }
                Ok(if kind == "series" { Node::Series { series: inner? } } else { Node::Parallel { parallel: inner? } })
            }
            step => serde_json::from_value(step).map(Node::Step).map_err(D::Error::custom),
        }
    }
}

/// [`Node`]'s schema, by shape as it deserializes: a step, a list (a
/// series), `{"series": [...]}` or `{"parallel": [...]}`.
impl utoipa::PartialSchema for Node {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Ref};
        let nodes = || ArrayBuilder::new().items(Ref::from_schema_name("Node"));
        let only = |key: &str, what: &str| {
            ObjectBuilder::new()
                .property(key, nodes())
                .required(key)
                .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false)))
                .description(Some(what))
        };
        OneOfBuilder::new()
            .item(Ref::from_schema_name("Step"))
            .item(nodes().description(Some("A series: each node fed the previous one's output")))
            .item(only("series", "Run these one after another, each fed the previous one's output"))
            .item(only("parallel", "Run these side by side; what follows gets all their outputs"))
            .description(Some("One node of the step tree"))
            .into()
    }
}

impl utoipa::ToSchema for Node {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        use utoipa::PartialSchema as _;
        schemas.push(("Step".to_owned(), Step::schema()));
        Step::schemas(schemas);
    }
}

/// One plugin call of a declared flow.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A name unique in the flow (default `step-N`).
    #[serde(default)]
    pub id: Option<String>,
    /// `name` or `name@version`.
    pub plugin: String,
    /// This step's own input; without it a step gets its predecessors'
    /// outputs (or the flow's input if it has none).
    #[serde(default)]
    pub input: Option<Value>,
    /// More steps (by id) to wait for, beyond the series order.
    #[serde(default)]
    pub after: Vec<String>,
    /// Queue (default: the flow's).
    #[serde(default)]
    pub queue: Option<String>,
    /// Priority (default: the flow's).
    #[serde(default)]
    pub priority: Option<u8>,
    /// Most attempts.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Wall-clock budget per attempt, ms.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// How a declared flow repeats.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepeatSpec {
    /// This many iterations in all.
    #[serde(default)]
    pub times: Option<u32>,
    /// Until a task calls `stop-repeating`.
    #[serde(default)]
    pub until_stop: bool,
    /// An iteration every this many ms.
    #[serde(default)]
    pub every_ms: Option<u64>,
    /// At the times of this cron expression (UTC; `sec min hour dom month
    /// dow [year]`).
    #[serde(default)]
    pub cron: Option<String>,
    /// Most iterations in all.
    #[serde(default)]
    pub max_iterations: Option<u32>,
}

/// A step with its resolved predecessors, in an order where each step
/// comes after its predecessors.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub(crate) name: String,
    pub(crate) step: Step,
    pub(crate) after: Vec<usize>,
}

impl FlowSpec {
    /// Checks the spec and orders its steps; errors say what is wrong.
    pub(crate) fn plan(&self, max_steps: u64) -> Result<Vec<Planned>, String> {
        // Counted before the steps are listed: listing materialises every
        // series edge (two parallels in series are n x m of them), so an
        // oversized flow must not get that far.
        let count = count_steps(&self.steps);
        if count > max_steps {
            return Err(format!("the flow has {count} steps; a flow may have at most {max_steps} tasks"));
        }
        let mut steps: Vec<(Step, Vec<usize>)> = Vec::new();
        flatten(&self.steps, &[], &mut steps)?;
        if steps.is_empty() {
            return Err("the flow has no steps".into());
        }
        let mut names = HashMap::new();
        for (i, (step, _)) in steps.iter().enumerate() {
            let name = step.id.clone().unwrap_or_else(|| format!("step-{}", i + 1));
            crate::names::name(crate::names::NameKind::Step, &name).map_err(|e| e.to_string())?;
            if names.insert(name.clone(), i).is_some() {
                return Err(format!("two steps have the id `{name}`: step ids must be unique"));
            }
        }
        let mut after: Vec<Vec<usize>> = steps.iter().map(|(_, a)| a.clone()).collect();
        for (i, (step, _)) in steps.iter().enumerate() {
            if step.after.is_empty() {
                continue;
            }
            // The series predecessors are distinct; an `after` name adds one
            // only once, in the order given.
            let mut seen: HashSet<usize> = after[i].iter().copied().collect();
            for name in &step.after {
                let Some(&j) = names.get(name) else {
                    return Err(format!(
                        "step `{}` waits for `{name}`, which is not a step of this flow",
                        step_name(i, step)
                    ));
                };
                if seen.insert(j) {
                    after[i].push(j);
                }
            }
        }
        // Kahn's algorithm: an order exists exactly when there is no cycle.
        let mut successors: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
        for (k, preds) in after.iter().enumerate() {
            for &j in preds {
                successors[j].push(k);
            }
        }
        let mut indegree: Vec<usize> = after.iter().map(Vec::len).collect();
        let mut order = Vec::with_capacity(steps.len());
        // Among ready steps, the one declared first goes first.
        let mut ready: std::collections::BTreeSet<usize> = (0..steps.len()).filter(|&i| indegree[i] == 0).collect();
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &k in &successors[i] {
                indegree[k] -= 1;
                if indegree[k] == 0 {
                    ready.insert(k);
                }
            }
        }
        if order.len() != steps.len() {
            let stuck: Vec<String> =
                (0..steps.len()).filter(|&i| indegree[i] > 0).map(|i| step_name(i, &steps[i].0)).collect();
            return Err(format!("the steps' `after` lists form a cycle through {}", stuck.join(", ")));
        }
        let position: BTreeMap<usize, usize> = order.iter().enumerate().map(|(pos, &i)| (i, pos)).collect();
        Ok(order
            .iter()
            .map(|&i| Planned {
                name: step_name(i, &steps[i].0),
                step: steps[i].0.clone(),
                after: after[i].iter().map(|j| position[j]).collect(),
            })
            .collect())
    }

    /// The repeat rule, checked.
    pub(crate) fn repeat(&self) -> Result<Option<Repeat>, String> {
        let Some(r) = &self.repeat else { return Ok(None) };
        let mut kinds = Vec::new();
        if let Some(n) = r.times {
            if n == 0 {
                return Err("repeat.times must be at least 1".into());
            }
            kinds.push(RepeatKind::Times(n));
        }
        if r.until_stop {
            kinds.push(RepeatKind::UntilStop);
        }
        if let Some(ms) = r.every_ms {
            let most = crate::engine::submission::MAX_DELAY_MS;
            if !(10..=most).contains(&ms) {
                return Err(format!("repeat.every_ms {ms} is out of range: expected 10 to {most} (36,500 days)"));
            }
            kinds.push(RepeatKind::EveryMs(ms));
        }
        if let Some(expr) = &r.cron {
            super::next_cron(expr, 0)?;
            kinds.push(RepeatKind::Cron(expr.clone()));
        }
        match kinds.len() {
            1 => Ok(Some(Repeat { kind: kinds.remove(0), max_iterations: r.max_iterations })),
            0 => Err("repeat needs one of `times`, `until_stop`, `every_ms` or `cron`".into()),
            _ => Err("repeat takes only one of `times`, `until_stop`, `every_ms` or `cron`".into()),
        }
    }
}

fn step_name(i: usize, step: &Step) -> String {
    step.id.clone().unwrap_or_else(|| format!("step-{}", i + 1))
}

/// Steps in a step tree.
fn count_steps(node: &Node) -> u64 {
    match node {
        Node::Step(_) => 1,
        Node::Series { series: nodes } | Node::List(nodes) | Node::Parallel { parallel: nodes } => {
            nodes.iter().map(count_steps).sum()
        }
    }
}

/// Appends `node`'s steps, each depending on `before`; returns the node's
/// last steps (what a following node depends on).
fn flatten(node: &Node, before: &[usize], out: &mut Vec<(Step, Vec<usize>)>) -> Result<Vec<usize>, String> {
    match node {
        Node::Step(step) => {
            out.push((step.clone(), before.to_vec()));
            Ok(vec![out.len() - 1])
        }
        Node::Series { series: nodes } | Node::List(nodes) => {
            let mut last = before.to_vec();
            for node in nodes {
                last = flatten(node, &last, out)?;
            }
            Ok(last)
        }
        Node::Parallel { parallel } => {
            if parallel.is_empty() {
                return Err("`parallel` needs at least one step".into());
            }
            // Branches that add no step (empty series) end where they
            // began: their ends are `before`, listed once however many.
            let mut ends = Vec::new();
            let mut seen = HashSet::new();
            for node in parallel {
                ends.extend(flatten(node, before, out)?.into_iter().filter(|end| seen.insert(*end)));
            }
            Ok(ends)
        }
    }
}

/// Input bytes from a spec value: a string as its UTF-8 bytes, anything
/// else as JSON.
pub(crate) fn input_bytes(value: Option<&Value>) -> Vec<u8> {
    match value {
        None => Vec::new(),
        Some(Value::String(s)) => s.as_bytes().to_vec(),
        Some(other) => other.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> FlowSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn series_and_parallel_compile_to_a_dag() {
        let s = spec(
            r#"{"steps": {"series": [{"id": "a", "plugin": "p"},
                {"parallel": [{"id": "b", "plugin": "p"}, [{"id": "c", "plugin": "p"}, {"id": "d", "plugin": "p"}]]},
                {"id": "e", "plugin": "p"}]}}"#,
        );
        let plan = s.plan(100).unwrap();
        let deps: Vec<(String, Vec<String>)> =
            plan.iter().map(|p| (p.name.clone(), p.after.iter().map(|&i| plan[i].name.clone()).collect())).collect();
        let expect = |n: &str, d: &[&str]| (n.to_owned(), d.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            deps,
            [expect("a", &[]), expect("b", &["a"]), expect("c", &["a"]), expect("d", &["c"]), expect("e", &["b", "d"])]
        );
    }

    #[test]
    fn large_flows_plan_in_linear_time_and_oversized_ones_are_refused_unlisted() {
        // A series of the default most tasks: the planner once scanned every
        // step for each step it placed (minutes for this one).
        let steps: Vec<Value> = (0..100_000).map(|_| serde_json::json!({"plugin": "p"})).collect();
        let long: FlowSpec = serde_json::from_value(serde_json::json!({ "steps": steps })).unwrap();
        let started = std::time::Instant::now();
        let plan = long.plan(100_000).unwrap();
        assert_eq!((plan.len(), plan[99_999].after.as_slice()), (100_000, &[99_998][..]));
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
        // Two parallels of 60,000 in series are 3.6e9 edges once listed: a
        // few MB of JSON must be refused by count first, not run out of memory.
        let layer = || serde_json::json!({"parallel": vec![serde_json::json!({"plugin": "p"}); 60_000]});
        let wide: FlowSpec = serde_json::from_value(serde_json::json!({"steps": [layer(), layer()]})).unwrap();
        assert!(wide.plan(100_000).unwrap_err().contains("the flow has 120000 steps"));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |json: &str| spec(json).plan(100).unwrap_err();
        assert!(err(r#"{"steps": [{"id": "a", "plugin": "p"}, {"id": "a", "plugin": "p"}]}"#).contains("unique"));
        assert!(err(r#"{"steps": [{"id": "a", "plugin": "p", "after": ["x"]}]}"#).contains("`x`, which is not"));
        let cycle = r#"{"steps": {"parallel": [{"id": "a", "plugin": "p", "after": ["b"]},
            {"id": "b", "plugin": "p", "after": ["a"]}]}}"#;
        assert!(err(cycle).contains("cycle through a, b"));
        assert!(err(r#"{"steps": []}"#).contains("no steps"));
        assert!(spec(r#"{"steps": [{"plugin": "p"}, {"plugin": "p"}]}"#).plan(1).unwrap_err().contains("at most 1"));
        let twice = spec(r#"{"steps": {"plugin": "p"}, "repeat": {"times": 2, "every_ms": 100}}"#);
        assert!(twice.repeat().unwrap_err().contains("only one of"));
        // Found by the property tests: serde reads a struct from an array of
        // its fields, so `["", null, []]` was a spec with no steps.
        assert!(serde_json::from_str::<FlowSpec>(r#"["", null, {"plugin": "p"}]"#).is_err());
        assert!(serde_json::from_str::<FlowSpec>(r#"{"steps": {"plugin": "p"}, "repeat": [2]}"#).is_err());
        assert!(serde_json::from_str::<FlowSpec>(r#"{"steps": {"plugin": "p"}, "repeat": {"times": 2}}"#).is_ok());
        // Found by the property tests: two branches without steps each
        // passed the steps before them on, so the next step waited for the
        // same task twice.
        let empty_branches = r#"{"steps": [{"parallel": [{"plugin": "p"}]},
            {"parallel": [{"series": []}, {"series": []}]}, {"plugin": "p"}]}"#;
        let plan = serde_json::from_str::<FlowSpec>(empty_branches).unwrap().plan(10).unwrap();
        assert_eq!(plan[1].after, [0]);
        // Found by the property tests: a key beside `series` or `parallel`
        // was dropped without a word (here the whole parallel branch).
        let both = r#"{"steps": {"series": [{"plugin": "a"}], "parallel": [{"plugin": "b"}]}}"#;
        let refused = serde_json::from_str::<FlowSpec>(both).unwrap_err().to_string();
        assert!(refused.contains("a `series` node takes no other key, found `parallel`"), "{refused}");
        let after = r#"{"steps": {"parallel": [{"plugin": "a"}], "after": ["x"]}}"#;
        assert!(serde_json::from_str::<FlowSpec>(after).unwrap_err().to_string().contains("found `after`"));
        let cron = spec(r#"{"steps": {"plugin": "p"}, "repeat": {"cron": "not cron"}}"#);
        assert!(cron.repeat().unwrap_err().contains("cron expression"));
    }

    /// Step ids follow the one name rule; schedules stay within the
    /// longest delay, so no time the flow computes leaves the range.
    #[test]
    fn step_ids_are_names_and_schedules_are_bounded() {
        for bad in ["", "..", "a b", "-x", "a/b"] {
            let json = serde_json::json!({"steps": [{"id": bad, "plugin": "p"}]});
            let refused = serde_json::from_value::<FlowSpec>(json).unwrap().plan(100).unwrap_err();
            assert!(refused.starts_with("invalid step id"), "{bad}: {refused}");
        }
        for (every, ok) in [(9, false), (10, true), (crate::engine::submission::MAX_DELAY_MS, true), (u64::MAX, false)]
        {
            let json = serde_json::json!({"steps": {"plugin": "p"}, "repeat": {"every_ms": every}});
            let result = serde_json::from_value::<FlowSpec>(json).unwrap().repeat();
            assert_eq!(result.is_ok(), ok, "every_ms {every}: {result:?}");
            if !ok {
                assert!(result.unwrap_err().contains("repeat.every_ms"));
            }
        }
    }
}
