//! Flows: the tasks one submission grows into, code-created (children and
//! joins through `queue`) or declared (`POST /v1/flows`), possibly
//! repeating. This module admits new tasks (scheduling them now, or once
//! the tasks they join have ended), notices when a flow's last task ends,
//! records its outcome and, for a repeating flow, creates the next
//! iteration in the same transaction, so an iteration is never lost or
//! started twice across a restart.

mod book;
mod services;
mod spec;

pub(crate) use book::Book;
pub(crate) use services::AttemptServices;
pub use spec::{FlowSpec, Node, RepeatSpec, Step};

use super::{Engine, EngineError, NewTask, entry, lock, metrics};
use crate::flow::TaskView;
use crate::store::{
    Change, FlowRecord, FlowState, FlowUpdate, InputFrom, Repeat, RepeatKind, StoreError, TaskRecord, TaskState, now_ms,
};
use std::collections::HashMap;
use uuid::Uuid;

/// Task records with their inputs, to create together.
type NewTasks = Vec<(TaskRecord, Vec<u8>)>;

/// Limits against runaway flows. Going over one is an error returned to
/// the plugin (`limit-exceeded`), never a host failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLimits {
    /// Children (and joins) one attempt may submit. Default 50,000.
    pub children_per_task: u32,
    /// Submissions between a flow's first tasks and the deepest. Default 64.
    pub max_depth: u32,
    /// Tasks one flow may create in all (every iteration). Default 100,000.
    pub tasks_per_flow: u64,
    /// Bytes of keys plus values in one flow's context. Default 1 MiB.
    pub context_bytes: u64,
    /// Submissions per second per flow (also the burst). Default 20,000.
    pub submissions_per_sec: u32,
}

impl Default for FlowLimits {
    fn default() -> Self {
        Self {
            children_per_task: 50_000,
            max_depth: 64,
            tasks_per_flow: 100_000,
            context_bytes: 1 << 20,
            submissions_per_sec: 20_000,
        }
    }
}

/// A flow and its tasks, for the API and the CLI.
#[derive(Debug, Clone)]
pub struct FlowView {
    /// The flow record; synthesised for a task that never grew a flow.
    pub flow: FlowRecord,
    /// Every task, in submission order.
    pub tasks: Vec<TaskRecord>,
    /// The result task's output.
    pub output: Option<Vec<u8>>,
}

/// An idempotency key as stored for a child: scoped to its flow, so flows
/// cannot see each other's keys.
fn scoped_key(flow: Uuid, key: &str) -> String {
    format!("flow:{flow}:{key}")
}

/// What `queue.get` and `queue.joined` show of a task.
fn task_view(record: &TaskRecord, output: Option<Vec<u8>>) -> TaskView {
    TaskView {
        id: record.id.to_string(),
        status: services::status(record.state),
        output,
        error: match record.state {
            TaskState::Cancelled => Some(
                record.history.last().map_or_else(|| "cancelled".to_owned(), |t| format!("cancelled: {}", t.reason)),
            ),
            _ => record.error.as_ref().map(|e| format!("{}: {}", e.class, e.message)),
        },
    }
}

/// The next fire time of `expr` strictly after `after_ms` (UTC).
pub(crate) fn next_cron(expr: &str, after_ms: u64) -> Result<u64, String> {
    use std::str::FromStr as _;
    let schedule = cron::Schedule::from_str(expr)
        .map_err(|e| format!("`{expr}` is not a cron expression (sec min hour dom month dow [year]): {e}"))?;
    let after = chrono::DateTime::from_timestamp_millis(after_ms as i64).unwrap_or_default();
    let next =
        schedule.after(&after).next().ok_or_else(|| format!("the cron expression `{expr}` never fires again"))?;
    Ok(next.timestamp_millis().max(0) as u64)
}

/// Gathers outputs into one JSON array: each output as JSON if it parses,
/// else as a string if UTF-8, else `{"base64": "..."}`.
pub(crate) fn gather(outputs: &[Vec<u8>]) -> Vec<u8> {
    use base64::Engine as _;
    let items: Vec<serde_json::Value> = outputs
        .iter()
        .map(|o| {
            serde_json::from_slice(o).unwrap_or_else(|_| match std::str::from_utf8(o) {
                Ok(text) => serde_json::Value::String(text.to_owned()),
                Err(_) => serde_json::json!({"base64": base64::engine::general_purpose::STANDARD.encode(o)}),
            })
        })
        .collect();
    serde_json::to_vec(&items).expect("JSON values always encode")
}

impl Engine {
    /// Bookkeeping for tasks just committed: counted in their flow, then
    /// scheduled, or parked until the tasks they join have ended.
    pub(crate) fn admit(&self, records: &[TaskRecord], reserved: bool) {
        let inner = &self.inner;
        let limits = &inner.config.flow_limits;
        let mut book = lock(&inner.book);
        let mut ready = Vec::with_capacity(records.len());
        for record in records {
            book.created(record.flow_id, reserved, !record.is_flow_root(), limits);
            self.hold(record);
            inner.metrics.moved(&record.queue, None, TaskState::Pending);
            inner.metrics.submitted.get_or_create(&super::Metrics::label(&record.queue)).inc();
        }
        for record in records {
            // Under the book lock, a task that ends after this read finds
            // the waiter registered; one that ended before is not waited
            // for.
            let pending = self.unfinished_deps(record);
            if pending.is_empty() {
                ready.push(record);
            } else {
                book.wait(entry(record), record.next_run_at_ms, &pending);
            }
        }
        drop(book);
        self.schedule_ready(ready, now_ms());
    }

    /// The tasks of `record.after` that have not ended yet.
    fn unfinished_deps(&self, record: &TaskRecord) -> Vec<Uuid> {
        let store = &self.inner.store;
        record
            .after
            .iter()
            .copied()
            .filter(|dep| store.get(*dep).ok().flatten().is_some_and(|r| !r.state.is_terminal()))
            .collect()
    }

    /// Schedules tasks that wait for nothing. A pending declared step whose
    /// predecessors have ended is checked first (and skipped if one of them
    /// did not complete).
    pub(crate) fn schedule_ready<'a>(&self, ready: impl IntoIterator<Item = &'a TaskRecord>, now: u64) {
        let mut released = Vec::new();
        {
            let mut sched = lock(&self.inner.sched);
            for record in ready {
                if record.state == TaskState::Pending
                    && record.input_from == InputFrom::Outputs
                    && !record.after.is_empty()
                {
                    released.push(record.id);
                } else {
                    sched.enqueue(entry(record), record.next_run_at_ms, now);
                }
            }
        }
        for id in released {
            self.start_released(id, None);
        }
        self.inner.wake.notify_one();
    }

    /// A released declared step: cancelled when a predecessor did not
    /// complete, else scheduled.
    pub(crate) fn start_released(&self, id: Uuid, due_ms: Option<u64>) {
        let engine = self.clone();
        let check = move || {
            let inner = &engine.inner;
            let record = inner.store.get(id).ok().flatten()?;
            if record.state != TaskState::Pending {
                return None;
            }
            if record.input_from == InputFrom::Outputs {
                for dep in &record.after {
                    let d = inner.store.get(*dep).ok().flatten()?;
                    if d.state != TaskState::Completed {
                        let step = d.step.clone().unwrap_or_else(|| d.id.to_string());
                        return Some((record, Some(format!("skipped: step `{step}` ended {}", d.state))));
                    }
                }
            }
            Some((record, None))
        };
        let Some((record, skip)) = check() else { return };
        match skip {
            None => {
                lock(&self.inner.sched).enqueue(entry(&record), due_ms.or(record.next_run_at_ms), now_ms());
                self.inner.wake.notify_one();
            }
            Some(reason) => {
                let engine = self.clone();
                tokio::spawn(async move {
                    let change = Change::new(record.id, TaskState::Cancelled, reason).expect_version(record.version);
                    if let Ok(done) = engine.inner.store.transition(change).await {
                        engine.ended(&record, &done);
                    }
                });
            }
        }
    }

    /// Flow bookkeeping for a task that ended: releases its joins and, if
    /// it was its flow's last unfinished task, ends (or repeats) the flow.
    pub(crate) fn flow_task_ended(&self, done: &TaskRecord) {
        let (released, last) = {
            let mut book = lock(&self.inner.book);
            (book.release(done.id), book.ended(done.flow_id))
        };
        for waiting in released {
            self.start_released(waiting.entry.id, waiting.due_ms);
        }
        if last {
            let engine = self.clone();
            let flow = done.flow_id;
            tokio::spawn(async move {
                if let Err(error) = engine.finish_flow(flow).await {
                    tracing::error!(%flow, %error, "recording the end of a flow failed");
                }
            });
        }
    }

    /// Records a flow's outcome once no task of it is unfinished, or
    /// creates its next iteration. Does nothing for a flow that is still
    /// running tasks or that never grew past one task.
    pub(crate) async fn finish_flow(&self, id: Uuid) -> Result<(), EngineError> {
        let inner = &self.inner;
        loop {
            let Some(flow) = inner.store.flow(id)? else { return Ok(()) };
            if flow.state != FlowState::Running || lock(&inner.book).is_active(id) {
                return Ok(());
            }
            let tasks: Vec<TaskRecord> =
                inner.store.flow_tasks(id)?.into_iter().filter(|t| t.iteration == flow.iteration).collect();
            if tasks.iter().any(|t| !t.state.is_terminal()) {
                return Ok(());
            }
            let ok = tasks.iter().all(|t| t.state == TaskState::Completed);
            let last_completed = tasks
                .iter()
                .filter(|t| t.state == TaskState::Completed)
                .max_by_key(|t| (t.finished_at_ms, t.id))
                .map(|t| t.id);
            let failure = tasks.iter().find(|t| t.state != TaskState::Completed).map(|t| {
                let what = t.step.clone().map_or_else(|| format!("task {}", t.id), |s| format!("step `{s}`"));
                match &t.error {
                    Some(e) => format!("{what} {}: {}: {}", t.state, e.class, e.message),
                    None => format!("{what} {}", t.state),
                }
            });
            let next = self.next_iteration(&flow, ok, last_completed)?;
            let version = flow.version;
            let edit = move |stored: Option<FlowRecord>| {
                let mut flow = stored.ok_or_else(|| StoreError::Refused(format!("flow {id} vanished")))?;
                if flow.version != version || flow.state != FlowState::Running {
                    return Err(StoreError::Refused(format!("flow {id} changed")));
                }
                match next {
                    Some((at, tasks)) => {
                        flow.iteration += 1;
                        flow.iteration_at_ms = at;
                        flow.tasks += tasks.len() as u64;
                        Ok(FlowUpdate { flow, tasks })
                    }
                    None => {
                        flow.state = if ok { FlowState::Completed } else { FlowState::Failed };
                        flow.finished_at_ms = Some(now_ms());
                        flow.result_task = last_completed;
                        flow.error = failure;
                        Ok(FlowUpdate { flow, tasks: Vec::new() })
                    }
                }
            };
            match inner.store.flow_change(id, edit).await {
                Ok((flow, created)) => {
                    if flow.state != FlowState::Running {
                        let label = metrics::FlowLabel { state: flow.state.as_str().to_owned() };
                        inner.metrics.flows_ended.get_or_create(&label).inc();
                    }
                    self.admit(&created, false);
                    inner.ended.notify_waiters();
                    return Ok(());
                }
                // Cancelled or changed meanwhile: look again.
                Err(StoreError::Refused(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next iteration's start time and tasks, if the flow repeats.
    fn next_iteration(
        &self,
        flow: &FlowRecord,
        ok: bool,
        last: Option<Uuid>,
    ) -> Result<Option<(u64, NewTasks)>, EngineError> {
        let (Some(repeat), Some(spec)) = (&flow.repeat, &flow.spec) else { return Ok(None) };
        let iteration = flow.iteration + 1;
        if flow.stop_requested || repeat.max_iterations.is_some_and(|m| iteration >= m) {
            return Ok(None);
        }
        let now = now_ms();
        let (more, at, input) = match &repeat.kind {
            // Loops stop at a failure and feed each iteration's result on.
            RepeatKind::Times(n) => (ok && iteration < *n, now, None),
            RepeatKind::UntilStop => (ok, now, None),
            // Schedules keep going whatever one run did; missed starts
            // are skipped, so a restart never fires one twice.
            RepeatKind::EveryMs(ms) => (true, (flow.iteration_at_ms + ms).max(now), Some(flow.input.clone())),
            RepeatKind::Cron(expr) => {
                (true, next_cron(expr, flow.iteration_at_ms.max(now)).map_err(EngineError::InvalidRequest)?, None)
            }
        };
        if !more {
            return Ok(None);
        }
        let input = match input {
            Some(input) => input,
            None if matches!(repeat.kind, RepeatKind::Cron(_)) => flow.input.clone(),
            None => match last {
                Some(task) => self.inner.store.output(task)?.unwrap_or_default(),
                None => flow.input.clone(),
            },
        };
        let spec: FlowSpec = serde_json::from_str(spec).map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        let tasks = self.plan_tasks(&spec, flow.id, iteration, &input, Some(at))?;
        Ok(Some((at, tasks)))
    }

    /// The tasks of one iteration of a declared flow.
    fn plan_tasks(
        &self,
        spec: &FlowSpec,
        flow: Uuid,
        iteration: u32,
        input: &[u8],
        run_at_ms: Option<u64>,
    ) -> Result<NewTasks, EngineError> {
        let plan = spec.plan(self.inner.config.flow_limits.tasks_per_flow).map_err(EngineError::InvalidRequest)?;
        let mut out: Vec<(TaskRecord, Vec<u8>)> = Vec::with_capacity(plan.len());
        for planned in &plan {
            let step = &planned.step;
            let own = step.input.is_some() || planned.after.is_empty();
            let new = NewTask {
                plugin: step.plugin.clone(),
                input: match &step.input {
                    Some(value) => spec::input_bytes(Some(value)),
                    None if planned.after.is_empty() => input.to_vec(),
                    None => Vec::new(),
                },
                queue: step.queue.clone().or_else(|| spec.queue.clone()),
                priority: step.priority.or(spec.priority),
                max_attempts: step.max_attempts,
                timeout_ms: step.timeout_ms,
                run_at_ms: if planned.after.is_empty() { run_at_ms } else { None },
                ..NewTask::default()
            };
            let (mut record, input) = self.prepare(new).map_err(|e| match e {
                EngineError::InvalidRequest(m) | EngineError::UnknownPlugin(m) => {
                    EngineError::InvalidRequest(format!("step `{}`: {m}", planned.name))
                }
                other => other,
            })?;
            record.flow_id = flow;
            record.iteration = iteration;
            record.step = Some(planned.name.clone());
            record.after = planned.after.iter().map(|&i| out[i].0.id).collect();
            record.depth = planned.after.iter().map(|&i| out[i].0.depth + 1).max().unwrap_or(0);
            record.input_from = if own { InputFrom::Own } else { InputFrom::Outputs };
            out.push((record, input));
        }
        Ok(out)
    }

    /// Starts a declared flow: every step of its first iteration is
    /// committed with the flow record in one transaction.
    pub async fn submit_flow(&self, spec: FlowSpec) -> Result<FlowView, EngineError> {
        let repeat: Option<Repeat> = spec.repeat().map_err(EngineError::InvalidRequest)?;
        let input = spec::input_bytes(spec.input.as_ref());
        let id = Uuid::now_v7();
        let now = now_ms();
        let first_at = match repeat.as_ref().map(|r| &r.kind) {
            Some(RepeatKind::Cron(expr)) => Some(next_cron(expr, now).map_err(EngineError::InvalidRequest)?),
            _ => None,
        };
        let tasks = self.plan_tasks(&spec, id, 0, &input, first_at)?;
        let text = serde_json::to_string(&spec_json(&spec)).map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        let flow = FlowRecord {
            name: spec.name.clone(),
            spec: Some(text),
            input,
            repeat,
            iteration_at_ms: first_at.unwrap_or(now),
            tasks: tasks.len() as u64,
            ..FlowRecord::new(id, now)
        };
        let edit = move |stored: Option<FlowRecord>| match stored {
            Some(_) => Err(StoreError::Refused(format!("flow {id} exists"))),
            None => Ok(FlowUpdate { flow, tasks }),
        };
        let (_, created) = self.inner.store.flow_change(id, edit).await?;
        self.admit(&created, false);
        self.flow(id)
    }

    /// A flow with its tasks. Any task id that roots a flow works, even one
    /// that never submitted children.
    pub fn flow(&self, id: Uuid) -> Result<FlowView, EngineError> {
        let store = &self.inner.store;
        let tasks = store.flow_tasks(id)?;
        let flow = match store.flow(id)? {
            Some(flow) => flow,
            None => {
                let root = tasks.first().filter(|t| t.is_flow_root()).ok_or(EngineError::NotFound(id))?;
                synthesised(root)
            }
        };
        let output = match flow.result_task {
            Some(task) => store.output(task)?,
            None => None,
        };
        Ok(FlowView { flow, tasks, output })
    }

    /// Cancels a flow: no further task or iteration starts, and every
    /// unfinished task is cancelled (running ones interrupted).
    pub async fn cancel_flow(&self, id: Uuid) -> Result<FlowView, EngineError> {
        let view = self.flow(id)?;
        if view.flow.state != FlowState::Running {
            return Err(EngineError::Conflict(format!("flow {id} already ended ({})", view.flow.state.as_str())));
        }
        // A flow of one task has no record yet: the view's is synthesised.
        let synthesised = view.flow;
        let edit = move |stored: Option<FlowRecord>| {
            let mut flow = stored.unwrap_or(synthesised);
            if flow.state != FlowState::Running {
                return Err(StoreError::Refused(format!("flow {id} already ended ({})", flow.state.as_str())));
            }
            flow.state = FlowState::Cancelled;
            flow.finished_at_ms = Some(now_ms());
            flow.error = Some("cancelled by request".into());
            Ok(FlowUpdate { flow, tasks: Vec::new() })
        };
        self.inner.store.flow_change(id, edit).await.map_err(|e| match e {
            StoreError::Refused(m) => EngineError::Conflict(m),
            other => other.into(),
        })?;
        self.inner.metrics.flows_ended.get_or_create(&metrics::FlowLabel { state: "cancelled".into() }).inc();
        let unfinished: Vec<Uuid> =
            self.inner.store.flow_tasks(id)?.into_iter().filter(|t| !t.state.is_terminal()).map(|t| t.id).collect();
        let cancels = unfinished.into_iter().map(|task| self.cancel(task));
        for result in futures::future::join_all(cancels).await {
            match result {
                // Ended on its own meanwhile: nothing to cancel.
                Ok(_) | Err(EngineError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.ended.notify_waiters();
        self.flow(id)
    }

    /// Waits until a flow ends or `timeout` passes; returns its view.
    pub async fn wait_flow(&self, id: Uuid, timeout: std::time::Duration) -> Result<FlowView, EngineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ended = self.inner.ended.notified();
            // The state alone (one read), not the whole tree, until it ends.
            let state = match self.inner.store.flow(id)? {
                Some(flow) => flow.state,
                None => synthesised(&self.get(id)?).state,
            };
            if state != FlowState::Running || tokio::time::Instant::now() >= deadline {
                return self.flow(id);
            }
            let wake = deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(100));
            let _ = tokio::time::timeout_at(wake, ended).await;
        }
    }

    /// At start: flow totals, waiting joins, and flows whose last task
    /// ended just before the host stopped.
    pub(crate) async fn recover_flows(&self, tasks: &[TaskRecord]) -> Result<Vec<TaskRecord>, EngineError> {
        let inner = &self.inner;
        let limits = &inner.config.flow_limits;
        let sizes = inner.store.context_sizes()?;
        let mut unfinished: HashMap<Uuid, u64> = HashMap::new();
        for t in tasks.iter().filter(|t| !t.state.is_terminal()) {
            *unfinished.entry(t.flow_id).or_default() += 1;
        }
        let flows = inner.store.flows()?;
        {
            let mut book = lock(&inner.book);
            for flow in &flows {
                let open = unfinished.remove(&flow.id).unwrap_or(0);
                book.restore(flow.id, flow.tasks, open, sizes.get(&flow.id).copied().unwrap_or(0), limits);
            }
            for (flow, open) in unfinished {
                book.restore_single(flow, open, limits);
            }
        }
        // Pending tasks that join others wait again; the rest are ready.
        let mut ready = Vec::new();
        {
            let mut book = lock(&inner.book);
            for t in tasks.iter().filter(|t| matches!(t.state, TaskState::Pending | TaskState::Retrying)) {
                // A retrying task started once: what it joined has ended.
                let pending = if t.state == TaskState::Pending { self.unfinished_deps(t) } else { Vec::new() };
                if pending.is_empty() {
                    ready.push(t.clone());
                } else {
                    book.wait(entry(t), t.next_run_at_ms, &pending);
                }
            }
        }
        for flow in flows.iter().filter(|f| f.state == FlowState::Running) {
            self.finish_flow(flow.id).await?;
        }
        Ok(ready)
    }
}

/// A flow record for a task that never grew a flow.
fn synthesised(root: &TaskRecord) -> FlowRecord {
    let state = match root.state {
        TaskState::Completed => FlowState::Completed,
        TaskState::Failed => FlowState::Failed,
        TaskState::Cancelled => FlowState::Cancelled,
        _ => FlowState::Running,
    };
    FlowRecord {
        state,
        finished_at_ms: root.finished_at_ms,
        result_task: (root.state == TaskState::Completed).then_some(root.id),
        error: root.error.as_ref().map(|e| format!("{}: {}", e.class, e.message)),
        ..FlowRecord::new(root.id, root.created_at_ms)
    }
}

/// The spec as stored (to build later iterations from).
fn spec_json(spec: &FlowSpec) -> serde_json::Value {
    fn node(n: &Node) -> serde_json::Value {
        match n {
            Node::Series { series } | Node::List(series) => {
                serde_json::json!({"series": series.iter().map(node).collect::<Vec<_>>()})
            }
            Node::Parallel { parallel } => {
                serde_json::json!({"parallel": parallel.iter().map(node).collect::<Vec<_>>()})
            }
            Node::Step(s) => serde_json::json!({
                "id": s.id, "plugin": s.plugin, "input": s.input, "after": s.after, "queue": s.queue,
                "priority": s.priority, "max_attempts": s.max_attempts, "timeout_ms": s.timeout_ms,
            }),
        }
    }
    serde_json::json!({"name": spec.name, "steps": node(&spec.steps), "queue": spec.queue, "priority": spec.priority})
}
