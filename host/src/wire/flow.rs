//! A flow on the wire (`GET /v1/flows/{id}`, and the answers to declaring
//! and cancelling one): its state, counts by state, its result and the
//! task tree with states and timings.

use super::{Output, TaskError, time};
use crate::engine::FlowView;
use crate::store::{FlowState, RepeatKind, TaskRecord, TaskState};
use crate::tenant::Namespace;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// A flow and its tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct Flow {
    /// Flow id: a declared flow's own id, or the id of the task that
    /// started it.
    pub id: Uuid,
    /// A declared flow's name.
    pub name: Option<String>,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub state: FlowState,
    /// Created.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Ended.
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// From creation to the end.
    pub duration_ms: Option<u64>,
    /// The current iteration, from 0.
    pub iteration: u32,
    /// When the current iteration of a repeating flow was due (after the
    /// first).
    #[schema(format = DateTime)]
    pub next_iteration_at: Option<String>,
    /// A repeating flow's rule.
    pub repeat: Option<FlowRepeat>,
    /// Why it failed or was cancelled, one line naming the step (or task)
    /// that failed with its error class and message. The task's own error
    /// object is on its node of `tree`.
    pub error: Option<String>,
    /// The task whose output is the flow's result: the last one that
    /// completed.
    pub result_task: Option<Uuid>,
    /// Task counts.
    pub tasks: FlowTasks,
    /// The tasks, children under the task that submitted them, in
    /// submission order.
    pub tree: Vec<FlowNode>,
    /// The result task's output (`output` or `output_base64`).
    #[serde(flatten)]
    pub output: Output,
}

/// A flow's task counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct FlowTasks {
    /// Tasks in all (every iteration).
    pub total: u64,
    /// Tasks per state; states with none are left out.
    pub by_state: BTreeMap<TaskState, u64>,
}

/// A repeating flow's rule and progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct FlowRepeat {
    /// When it runs again.
    pub rule: RepeatRule,
    /// Most iterations in all.
    pub max_iterations: Option<u32>,
    /// A task called `stop-repeating`.
    pub stop_requested: bool,
}

/// When a flow runs again, as its spec's `repeat` wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RepeatRule {
    /// `{"times": N}`: this many iterations in all.
    Times(u32),
    /// `{"until_stop": true}`: until a task calls `stop-repeating` (always
    /// `true`).
    UntilStop(bool),
    /// `{"every_ms": MS}`: an iteration every MS ms.
    EveryMs(u64),
    /// `{"cron": "..."}`: at the times of this cron expression (UTC).
    Cron(String),
}

impl From<&RepeatKind> for RepeatRule {
    fn from(kind: &RepeatKind) -> Self {
        match kind {
            RepeatKind::Times(n) => RepeatRule::Times(*n),
            RepeatKind::UntilStop => RepeatRule::UntilStop(true),
            RepeatKind::EveryMs(ms) => RepeatRule::EveryMs(*ms),
            RepeatKind::Cron(expr) => RepeatRule::Cron(expr.clone()),
        }
    }
}

/// One task of a flow's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct FlowNode {
    /// Task id.
    pub id: Uuid,
    /// Plugin name.
    pub plugin: String,
    /// A declared flow's step name.
    pub step: Option<String>,
    /// State.
    pub state: TaskState,
    /// Queue.
    pub queue: String,
    /// The flow iteration it belongs to.
    pub iteration: u32,
    /// Attempts started.
    pub attempts: u32,
    /// Tasks it joins.
    pub after: Vec<Uuid>,
    /// Submitted.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Last attempt started.
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    /// Ended.
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// From the last start to the end.
    pub run_ms: Option<u64>,
    /// The last failure: the same object as a task record's `error`.
    pub error: Option<TaskError>,
    /// The tasks it submitted (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub children: Vec<FlowNode>,
}

impl Flow {
    /// The same, with plugin and queue names as tenant `ns` wrote them.
    pub fn in_namespace(mut self, ns: &Namespace) -> Self {
        fn node(n: &mut FlowNode, ns: &Namespace) {
            n.plugin = ns.name_of(&n.plugin);
            n.queue = ns.name_of(&n.queue);
            n.children.iter_mut().for_each(|c| node(c, ns));
        }
        self.tree.iter_mut().for_each(|n| node(n, ns));
        self
    }
    /// The wire view of `view`.
    pub fn new(view: &FlowView) -> Self {
        let flow = &view.flow;
        let mut by_state = BTreeMap::new();
        for t in &view.tasks {
            *by_state.entry(t.state).or_default() += 1;
        }
        let ids: HashSet<Uuid> = view.tasks.iter().map(|t| t.id).collect();
        let mut children: HashMap<Uuid, Vec<&TaskRecord>> = HashMap::new();
        let mut roots = Vec::new();
        for t in &view.tasks {
            match t.parent_id.filter(|p| ids.contains(p)) {
                Some(parent) => children.entry(parent).or_default().push(t),
                None => roots.push(t),
            }
        }
        Self {
            id: flow.id,
            name: flow.name.clone(),
            state: flow.state,
            created_at: time(flow.created_at_ms),
            finished_at: flow.finished_at_ms.map(time),
            duration_ms: flow.finished_at_ms.map(|f| f.saturating_sub(flow.created_at_ms)),
            iteration: flow.iteration,
            next_iteration_at: (flow.repeat.is_some() && flow.iteration > 0).then(|| time(flow.iteration_at_ms)),
            repeat: flow.repeat.as_ref().map(|r| FlowRepeat {
                rule: RepeatRule::from(&r.kind),
                max_iterations: r.max_iterations,
                stop_requested: flow.stop_requested,
            }),
            error: flow.error.clone(),
            result_task: flow.result_task,
            tasks: FlowTasks { total: view.tasks.len() as u64, by_state },
            tree: roots.into_iter().map(|t| FlowNode::new(t, &children)).collect(),
            output: Output::new(view.output.as_deref()),
        }
    }
}

impl FlowNode {
    /// The node of `t`, with the nodes of its children (`children` maps a
    /// task id to the tasks it submitted).
    pub fn new(t: &TaskRecord, children: &HashMap<Uuid, Vec<&TaskRecord>>) -> Self {
        Self {
            id: t.id,
            plugin: t.plugin.clone(),
            step: t.step.clone(),
            state: t.state,
            queue: t.queue.clone(),
            iteration: t.iteration,
            attempts: t.attempts,
            after: t.after.clone(),
            created_at: time(t.created_at_ms),
            started_at: t.started_at_ms.map(time),
            finished_at: t.finished_at_ms.map(time),
            run_ms: t.started_at_ms.zip(t.finished_at_ms).map(|(s, f)| f.saturating_sub(s)),
            error: t.error.as_ref().map(TaskError::from),
            children: children.get(&t.id).into_iter().flatten().map(|c| FlowNode::new(c, children)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FlowRecord, Repeat, StoredFailure};
    use serde_json::{Value, json};

    fn view() -> FlowView {
        let mut root = crate::store::tests::record(1, None);
        root.state = TaskState::Completed;
        root.step = Some("first".into());
        (root.started_at_ms, root.finished_at_ms) = (Some(10), Some(25));
        let mut child = crate::store::tests::record(2, None);
        child.parent_id = Some(root.id);
        child.flow_id = root.id;
        child.state = TaskState::Failed;
        child.error = Some(StoredFailure {
            class: crate::FailureClass::PluginError,
            retryable: false,
            message: "bad input".into(),
            backtrace: None,
        });
        let flow = FlowRecord {
            name: Some("demo".into()),
            state: FlowState::Failed,
            finished_at_ms: Some(40),
            repeat: Some(Repeat { kind: RepeatKind::Times(3), max_iterations: None }),
            iteration: 1,
            iteration_at_ms: 30,
            result_task: Some(root.id),
            error: Some(format!("task {} failed: plugin error: bad input", child.id)),
            ..FlowRecord::new(root.id, 0)
        };
        FlowView { flow, tasks: vec![root, child], output: Some(vec![0xfe, b'x']) }
    }

    #[test]
    fn a_flow_has_the_api_shape_and_round_trips() {
        let wire = Flow::new(&view());
        let value = serde_json::to_value(&wire).unwrap();
        let back: Flow = serde_json::from_str(&value.to_string()).unwrap();
        assert_eq!(back, wire);
        assert_eq!((value["name"].as_str(), value["state"].as_str()), (Some("demo"), Some("failed")));
        assert_eq!((value["duration_ms"].as_u64(), value["iteration"].as_u64()), (Some(40), Some(1)));
        assert_eq!(value["next_iteration_at"], "1970-01-01T00:00:00.030Z");
        assert_eq!(value["repeat"], json!({"rule": {"times": 3}, "max_iterations": null, "stop_requested": false}));
        assert!(value["error"].as_str().unwrap().ends_with("failed: plugin error: bad input"));
        assert_eq!(value["tasks"], json!({"total": 2, "by_state": {"completed": 1, "failed": 1}}));
        // Non-JSON output: base64, as in a task's record (never lossy text).
        assert_eq!(value["output_base64"], "/ng=");
        assert!(value.get("output").is_none() && value.get("output_text").is_none());
        let root = &value["tree"][0];
        assert_eq!((root["step"].as_str(), root["run_ms"].as_u64()), (Some("first"), Some(15)));
        assert!(root["error"].is_null());
        // A node's error is the task record's error object.
        let child = &root["children"][0];
        assert_eq!(
            child["error"],
            json!({"class": "plugin error", "retryable": false, "message": "bad input", "backtrace": null})
        );
        assert!(child.get("children").is_none() && child["run_ms"].is_null());
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "created_at",
                "duration_ms",
                "error",
                "finished_at",
                "id",
                "iteration",
                "name",
                "next_iteration_at",
                "output_base64",
                "repeat",
                "result_task",
                "state",
                "tasks",
                "tree"
            ]
        );
    }

    #[test]
    fn every_repeat_rule_is_written_as_the_spec_writes_it() {
        let rules = [
            (RepeatKind::Times(2), json!({"times": 2})),
            (RepeatKind::UntilStop, json!({"until_stop": true})),
            (RepeatKind::EveryMs(500), json!({"every_ms": 500})),
            (RepeatKind::Cron("0 * * * * *".into()), json!({"cron": "0 * * * * *"})),
        ];
        for (kind, expected) in rules {
            let rule = RepeatRule::from(&kind);
            let value = serde_json::to_value(&rule).unwrap();
            assert_eq!(value, expected);
            assert_eq!(serde_json::from_value::<RepeatRule>(value).unwrap(), rule);
        }
        let mut json_output = view();
        json_output.output = Some(br#"["A","B"]"#.to_vec());
        let value: Value = serde_json::to_value(Flow::new(&json_output)).unwrap();
        assert_eq!(value["output"], json!(["A", "B"]));
        assert!(value.get("output_base64").is_none());
    }
}

/// `GET /v1/flows`: a page of flows, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct FlowPage {
    /// The flows of this page.
    pub flows: Vec<FlowSummary>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<Uuid>,
}

impl FlowPage {
    /// A page of `flows`, `next` going on.
    pub fn new(flows: Vec<FlowSummary>, next: Option<Uuid>) -> Self {
        Self { flows, next_cursor: next }
    }
}

/// One flow of a list: its record, without its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct FlowSummary {
    /// Flow id (see [`Flow::id`]).
    pub id: Uuid,
    /// A declared flow's name.
    pub name: Option<String>,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub state: FlowState,
    /// Created.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Ended.
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// The current iteration, from 0.
    pub iteration: u32,
    /// Whether it repeats.
    pub repeats: bool,
    /// Tasks it holds (in every iteration kept).
    pub tasks: u64,
    /// The plugin of its first task (its root, or its first step).
    pub plugin: Option<String>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
}

impl FlowSummary {
    /// The summary of `flow`, whose first task is `first`, with names as
    /// tenant `ns` wrote them.
    pub fn new(flow: &crate::store::FlowRecord, first: Option<&TaskRecord>, ns: &Namespace) -> Self {
        Self {
            id: flow.id,
            name: flow.name.clone(),
            state: flow.state,
            created_at: time(flow.created_at_ms),
            finished_at: flow.finished_at_ms.map(time),
            iteration: flow.iteration,
            repeats: flow.repeat.is_some(),
            tasks: flow.tasks,
            plugin: first.map(|t| ns.name_of(&t.plugin)),
            error: flow.error.clone(),
        }
    }
}
