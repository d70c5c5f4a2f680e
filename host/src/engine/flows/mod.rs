//! Flows: the tasks one submission grows into, code-created (children and
//! joins through `queue`) or declared (`POST /v1/flows`), possibly
//! repeating. [`Flows`] owns the flow book (unfinished tasks per flow,
//! reservations against the limits, waiting joins), notices when a flow's
//! last task ends, records its outcome and, for a repeating flow, creates
//! the next iteration in the same transaction, so an iteration is never
//! lost or started twice across a restart. Scheduling what it creates is
//! admission's job; it returns the created records.

mod book;
mod services;
mod spec;

pub(crate) use book::{Book, Waiting};
pub(crate) use services::AttemptServices;
pub use spec::{FlowSpec, Node, RepeatSpec, Step};

use super::shared::{Shared, entry};
use super::submission::Submission;
use super::{EngineError, NewTask, metrics};
use crate::flow::TaskView;
use crate::registry::Pin;
use crate::store::{
    FlowRecord, FlowState, FlowUpdate, InputFrom, Repeat, RepeatKind, StoreError, TaskRecord, TaskState, now_ms,
};
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// Task records with their inputs, to create together.
type NewTasks = Vec<(TaskRecord, Vec<u8>)>;

/// Tasks a flow change created, with the pins on their plugin versions:
/// keep the pins until the tasks are admitted.
pub(crate) type Created = (Vec<TaskRecord>, Vec<Pin>);

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

impl FlowLimits {
    /// Lowers each limit to the tenant's quota for it, where it has one.
    pub(crate) fn lower_to(&mut self, q: &crate::store::TenantQuotas) {
        let lower = |limit: &mut u64, quota: Option<u64>| *limit = quota.map_or(*limit, |q| q.min(*limit));
        lower(&mut self.tasks_per_flow, q.max_flow_tasks);
        lower(&mut self.context_bytes, q.max_flow_context_bytes);
        let lower32 = |limit: &mut u32, quota: Option<u32>| *limit = quota.map_or(*limit, |q| q.min(*limit));
        lower32(&mut self.max_depth, q.max_flow_depth);
        lower32(&mut self.children_per_task, q.max_children_per_task);
    }
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

/// Gathers outputs into one JSON array, each output as JSON if it parses,
/// else as a string if it is UTF-8, else as `{"output_base64": "..."}`
/// (the [`crate::wire::Output`] an API answer carries it in).
pub(crate) fn gather(outputs: &[Vec<u8>]) -> Vec<u8> {
    let items: Vec<serde_json::Value> = outputs
        .iter()
        .map(|o| {
            serde_json::from_slice(o).unwrap_or_else(|_| match std::str::from_utf8(o) {
                Ok(text) => serde_json::Value::String(text.to_owned()),
                Err(_) => serde_json::to_value(crate::wire::Output::of(o)).expect("an output always encodes"),
            })
        })
        .collect();
    serde_json::to_vec(&items).expect("JSON values always encode")
}

/// See the module docs.
pub(crate) struct Flows {
    shared: Arc<Shared>,
    submission: Arc<Submission>,
    book: Mutex<Book>,
}

impl Flows {
    pub(crate) fn new(shared: Arc<Shared>, submission: Arc<Submission>) -> Self {
        // A store other hosts may share keeps each flow's count of
        // unended tasks; one host's own store is counted here.
        let book = match shared.store.queues_tasks() {
            true => Book::sharing(),
            false => Book::default(),
        };
        Self { shared, submission, book: Mutex::new(book) }
    }

    /// The flow book. Admission holds it while it checks dependencies, so
    /// a dependency that ends meanwhile finds its waiter registered.
    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        lock(&self.book)
    }

    /// The host's flow limits.
    pub(crate) fn limits(&self) -> &FlowLimits {
        &self.shared.config.flow_limits
    }

    /// The flow limits of `tenant`'s flows: the host's, lowered by the
    /// tenant's own quotas.
    pub(crate) fn limits_for(&self, tenant: &str) -> FlowLimits {
        let mut limits = self.limits().clone();
        if let Some(q) = self.shared.tenants.quotas(tenant) {
            limits.lower_to(&q);
        }
        limits
    }

    /// The tasks of `record.after` that have not ended yet. A failed read
    /// is an error, never taken for "ended".
    pub(crate) fn unfinished_deps(&self, record: &TaskRecord) -> Result<Vec<Uuid>, EngineError> {
        let mut pending = Vec::new();
        for dep in &record.after {
            match self.shared.store.get_now(*dep)? {
                Some(r) if !r.state.is_terminal() => pending.push(*dep),
                Some(_) => {}
                // Deleted with its flow's retention, or never committed:
                // there is nothing to wait for.
                None => {}
            }
        }
        Ok(pending)
    }

    /// A task ended: the waiting tasks it released, and whether it was
    /// (on a shared store: may have been) the last unfinished task of a
    /// flow that has a record to finish.
    pub(crate) fn task_ended(&self, done: &TaskRecord) -> (Vec<Waiting>, bool) {
        let mut book = self.book();
        (book.release(done.id), book.ended(done.flow_id, done.id))
    }

    /// Records a flow's outcome once no task of it is unfinished, or
    /// creates its next iteration; returns the tasks it created (with
    /// their pins: keep them until the tasks are admitted). Does
    /// nothing for a flow that is still running tasks or that never grew
    /// past one task.
    pub(crate) async fn finish(&self, id: Uuid) -> Result<Created, EngineError> {
        let shared = &self.shared;
        // A shared store counts each flow's unended tasks under the flow's
        // lock (whichever host ended them): the host that commits the
        // last end reads zero after its commit.
        if let Some(pg) = shared.store.postgres()
            && pg.flow_unfinished(id).await? != Some(0)
        {
            return Ok(Created::default());
        }
        loop {
            let Some(flow) = shared.store.flow(id).await? else { return Ok(Created::default()) };
            if flow.state != FlowState::Running || self.book().is_active(id) {
                return Ok(Created::default());
            }
            let tasks = shared.store.iteration_tasks(id, flow.iteration).await?;
            if tasks.iter().any(|t| !t.state.is_terminal()) {
                return Ok(Created::default());
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
            let (next, pins) = match self.next_iteration(&flow, ok, last_completed).await? {
                Some((at, tasks, pins)) => (Some((at, tasks)), pins),
                None => (None, Vec::new()),
            };
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
            match shared.store.flow_change(id, edit).await {
                Ok((flow, created)) => {
                    if flow.state != FlowState::Running {
                        let label = metrics::FlowLabel { state: flow.state.as_str().to_owned() };
                        shared.metrics.flows_ended.get_or_create(&label).inc();
                    }
                    return Ok((created, pins));
                }
                // Cancelled or changed meanwhile: look again.
                Err(StoreError::Refused(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next iteration's start time and tasks, if the flow repeats.
    async fn next_iteration(
        &self,
        flow: &FlowRecord,
        ok: bool,
        last: Option<Uuid>,
    ) -> Result<Option<(u64, NewTasks, Vec<Pin>)>, EngineError> {
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
            RepeatKind::EveryMs(ms) => {
                (true, flow.iteration_at_ms.saturating_add(*ms).max(now), Some(flow.input.clone()))
            }
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
                Some(task) => self.shared.store.output(task).await?.unwrap_or_default(),
                None => flow.input.clone(),
            },
        };
        let spec: FlowSpec = serde_json::from_str(spec).map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        // Each iteration is a trace of its own (a schedule's runs are
        // unrelated requests).
        let mut span = self.shared.config.traces.start("flow iteration", None);
        span.set_with(|set| {
            set("taskhost.flow.id", flow.id.to_string().into());
            set("taskhost.flow.iteration", i64::from(iteration).into());
        });
        let (tasks, pins) = self.plan_tasks(&spec, flow.id, iteration, &input, Some(at), span.context())?;
        Ok(Some((at, tasks, pins)))
    }

    /// The tasks of one iteration of a declared flow.
    fn plan_tasks(
        &self,
        spec: &FlowSpec,
        flow: Uuid,
        iteration: u32,
        input: &[u8],
        run_at_ms: Option<u64>,
        trace: Option<crate::trace::TraceParent>,
    ) -> Result<(NewTasks, Vec<Pin>), EngineError> {
        let plan = spec.plan(self.limits().tasks_per_flow).map_err(EngineError::InvalidRequest)?;
        // A new flow's steps are its tenant's (names were qualified in its
        // namespace): the tenant's own flow quota holds too. Checked only
        // at submission: a later iteration of a flow accepted before a
        // quota was lowered still runs (refusing it would stall the flow).
        if iteration == 0
            && let Some(first) = plan.first()
        {
            let tenant = crate::tenant::tenant_of(&first.step.plugin);
            let limit = self.limits_for(tenant).tasks_per_flow;
            if plan.len() as u64 > limit {
                return Err(EngineError::InvalidRequest(format!(
                    "the flow has {} steps; tenant `{tenant}`'s quota `max_flow_tasks` allows at most {limit} tasks in a flow",
                    plan.len()
                )));
            }
        }
        let mut out: Vec<(TaskRecord, Vec<u8>)> = Vec::with_capacity(plan.len());
        let mut pins = Vec::with_capacity(plan.len());
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
                trace,
                ..NewTask::default()
            };
            let (mut record, input, pin) = self.submission.prepare(new).map_err(|e| match e {
                EngineError::InvalidRequest(m) => EngineError::InvalidRequest(format!("step `{}`: {m}", planned.name)),
                // As for a task: 404 `unknown_plugin`, naming the step.
                EngineError::UnknownPlugin(m) => EngineError::UnknownPlugin(format!("step `{}`: {m}", planned.name)),
                other => other,
            })?;
            record.flow_id = flow;
            record.iteration = iteration;
            record.step = Some(planned.name.clone());
            record.after = planned.after.iter().map(|&i| out[i].0.id).collect();
            record.depth = planned.after.iter().map(|&i| out[i].0.depth + 1).max().unwrap_or(0);
            record.input_from = if own { InputFrom::Own } else { InputFrom::Outputs };
            out.push((record, input));
            pins.push(pin);
        }
        Ok((out, pins))
    }

    /// Starts a declared flow: every step of its first iteration is
    /// committed with the flow record in one transaction. Returns the flow
    /// id and the tasks to admit, with their pins.
    pub(crate) async fn submit(&self, spec: FlowSpec) -> Result<(Uuid, Created), EngineError> {
        let repeat: Option<Repeat> = spec.repeat().map_err(EngineError::InvalidRequest)?;
        let input = spec::input_bytes(spec.input.as_ref());
        let id = Uuid::now_v7();
        let now = now_ms();
        let first_at = match repeat.as_ref().map(|r| &r.kind) {
            Some(RepeatKind::Cron(expr)) => Some(next_cron(expr, now).map_err(EngineError::InvalidRequest)?),
            _ => None,
        };
        let (tasks, pins) = self.plan_tasks(&spec, id, 0, &input, first_at, spec.trace)?;
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
        let (_, created) = self.shared.store.flow_change(id, edit).await?;
        Ok((id, (created, pins)))
    }

    /// A flow with its tasks. Any task id that roots a flow works, even one
    /// that never submitted children.
    pub(crate) async fn view(&self, id: Uuid) -> Result<FlowView, EngineError> {
        let store = &self.shared.store;
        let tasks = store.flow_tasks(id).await?;
        let flow = match store.flow(id).await? {
            Some(flow) => flow,
            None => {
                let root = tasks.first().filter(|t| t.is_flow_root()).ok_or(EngineError::NotFound(id))?;
                synthesised(root)
            }
        };
        let output = match flow.result_task {
            Some(task) => store.output_whole(task).await?,
            None => None,
        };
        Ok(FlowView { flow, tasks, output })
    }

    /// A flow's state (one read, not the whole tree).
    pub(crate) async fn state(&self, id: Uuid) -> Result<FlowState, EngineError> {
        let store = &self.shared.store;
        if let Some(flow) = store.flow(id).await? {
            return Ok(flow.state);
        }
        let root = synthesised(&self.shared.task(id).await?).state;
        // An ended root's commit wrote the flow's record with it, if the
        // flow grew: read again, as that commit may have come between the
        // two reads (the flow is then still running).
        if root != FlowState::Running
            && let Some(flow) = store.flow(id).await?
        {
            return Ok(flow.state);
        }
        Ok(root)
    }

    /// Marks a flow cancelled, so no later iteration starts; returns its
    /// unfinished tasks, each with whether it was running, for the caller
    /// to cancel.
    pub(crate) async fn cancel(&self, id: Uuid) -> Result<Vec<(Uuid, bool)>, EngineError> {
        let view = self.view(id).await?;
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
        self.shared.store.flow_change(id, edit).await.map_err(|e| match e {
            StoreError::Refused(m) => EngineError::Conflict(m),
            other => other.into(),
        })?;
        self.shared.metrics.flows_ended.get_or_create(&metrics::FlowLabel { state: "cancelled".into() }).inc();
        Ok(self
            .shared
            .store
            .flow_tasks(id)
            .await?
            .into_iter()
            .filter(|t| !t.state.is_terminal())
            .map(|t| (t.id, t.state == TaskState::Running))
            .collect())
    }

    /// At start: flow totals and waiting joins from the unfinished tasks.
    /// Returns the tasks that are ready to schedule, and the running flows
    /// to check for an end (their last task may have ended just before the
    /// host stopped).
    pub(crate) async fn recover(&self, tasks: &[TaskRecord]) -> Result<(Vec<TaskRecord>, Vec<Uuid>), EngineError> {
        let store = &self.shared.store;
        let limits = self.limits();
        let sizes = store.context_sizes().await?;
        let mut unfinished: HashMap<Uuid, u64> = HashMap::new();
        for t in tasks.iter().filter(|t| !t.state.is_terminal()) {
            *unfinished.entry(t.flow_id).or_default() += 1;
        }
        let flows = store.flows().await?;
        let mut ready = Vec::new();
        let mut book = self.book();
        for flow in &flows {
            let open = unfinished.remove(&flow.id).unwrap_or(0);
            book.restore(flow.id, flow.tasks, open, sizes.get(&flow.id).copied().unwrap_or(0), limits);
        }
        for (flow, open) in unfinished {
            book.restore_single(flow, open, limits);
        }
        // Pending tasks that join others wait again (a store that queues
        // tasks waits for them itself); the rest are ready.
        for t in tasks.iter().filter(|t| matches!(t.state, TaskState::Pending | TaskState::Retrying)) {
            // A retrying task started once: what it joined has ended.
            let joins = t.state == TaskState::Pending && !store.queues_tasks();
            let pending = if joins { self.unfinished_deps(t)? } else { Vec::new() };
            if pending.is_empty() {
                ready.push(t.clone());
            } else {
                book.wait(entry(t), t.next_run_at_ms, &pending);
            }
        }
        drop(book);
        let running = flows.iter().filter(|f| f.state == FlowState::Running).map(|f| f.id).collect();
        Ok((ready, running))
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

#[cfg(test)]
mod tests {
    use super::{FlowSpec, gather};
    use crate::engine::testing::{Script, on_both};
    use crate::store::{FlowState, TaskState};
    use serde_json::{Value, json};
    use std::time::Duration;

    fn spec(script: &Script, steps: serde_json::Value) -> FlowSpec {
        serde_json::from_value(serde_json::json!({"input": script, "steps": steps})).unwrap()
    }

    const WAIT: Duration = Duration::from_secs(20);

    on_both! {
        async fn a_series_passes_each_output_on_and_ends_with_the_last(h) {
            let steps = serde_json::json!({"series": [
                {"id": "a", "plugin": "echo"}, {"id": "b", "plugin": "echo"}, {"id": "c", "plugin": "echo"}
            ]});
            let view = h.engine.submit_flow(spec(&Script::Complete(b"hi".to_vec()), steps)).await.unwrap();
            let done = h.engine.wait_flow(view.flow.id, WAIT).await.unwrap();
            assert_eq!(done.flow.state, FlowState::Completed, "{:?}", done.flow);
            assert_eq!(done.output.as_deref(), Some(&b"hi"[..]));
            assert_eq!(done.tasks.len(), 3);
            assert!(done.tasks.iter().all(|t| t.state == TaskState::Completed));
            assert_eq!(h.held("echo"), 0);
            let (flows, _) = h.engine.flows_page(None, 10, None, |_| true).await.unwrap();
            assert_eq!(flows.len(), 1, "the flow is listed");
        }

        // A declared step runs only if its predecessor completed: one whose
        // predecessor failed is skipped, never run. (On PostgreSQL the claim
        // takes it once its predecessor ended, and the attempt checks.)
        async fn a_failed_step_skips_what_follows_and_fails_the_flow_naming_it(h) {
            let steps = serde_json::json!({"series": [
                {"id": "a", "plugin": "echo", "max_attempts": 1}, {"id": "b", "plugin": "echo"}
            ]});
            let view = h.engine.submit_flow(spec(&Script::FailTimes(5, Vec::new()), steps)).await.unwrap();
            let done = h.engine.wait_flow(view.flow.id, WAIT).await.unwrap();
            assert_eq!(done.flow.state, FlowState::Failed);
            let error = done.flow.error.clone().unwrap();
            assert!(error.starts_with("step `a` failed: trap"), "{error}");
            let a = done.tasks.iter().find(|t| t.step.as_deref() == Some("a")).unwrap();
            assert_eq!((a.state, a.attempts), (TaskState::Failed, 1));
            let b = done.tasks.iter().find(|t| t.step.as_deref() == Some("b")).unwrap();
            assert_eq!((b.state, b.attempts), (TaskState::Cancelled, 0), "{b:?}");
            assert_eq!(b.history.last().unwrap().reason, "skipped: step `a` ended failed");
            assert_eq!(h.runner.calls(b.id), 0, "a skipped step never runs");
        }

        async fn a_repeating_flow_runs_each_iteration_then_ends(h) {
            let mut spec = spec(&Script::Complete(b"x".to_vec()), serde_json::json!({"id": "only", "plugin": "echo"}));
            spec.repeat = Some(serde_json::from_value(serde_json::json!({"times": 3})).unwrap());
            let view = h.engine.submit_flow(spec).await.unwrap();
            let done = h.engine.wait_flow(view.flow.id, WAIT).await.unwrap();
            assert_eq!((done.flow.state, done.flow.iteration), (FlowState::Completed, 2));
            let iterations: Vec<u32> = done.tasks.iter().map(|t| t.iteration).collect();
            assert_eq!(iterations, [0, 1, 2]);
        }
    }

    #[test]
    fn gather_keeps_json_and_text_and_carries_bytes_as_output_base64() {
        let outputs = [br#"{"n":1}"#.to_vec(), b"plain text".to_vec(), vec![0xff, 0x00]];
        let gathered: Value = serde_json::from_slice(&gather(&outputs)).unwrap();
        assert_eq!(gathered, json!([{"n": 1}, "plain text", {"output_base64": "/wA="}]));
    }
}
