//! The services one attempt reaches through `queue` and `context`: checks
//! each call against the flow limits, holds children and context writes in
//! the attempt's [`Effects`] and hands them to the engine when the attempt
//! ends (committed with a completion, released otherwise).

use super::{FlowLimits, scoped_key, task_view};
use crate::engine::{Engine, EngineError, NewTask, lock};
use crate::flow::{ChildTask, ContextError, QueueError, TaskServices, TaskStatus, TaskView};
use crate::store::{Effects, TaskRecord, TaskState};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use uuid::Uuid;

/// Longest context key, in bytes.
const MAX_KEY: usize = 256;

#[derive(Debug, Default)]
struct Held {
    effects: Effects,
    /// Ids of the children held, for `get` and `join`.
    ids: HashSet<Uuid>,
    /// Scoped idempotency keys of held children → their ids.
    keys: BTreeMap<String, Uuid>,
    /// Latest value per context key written by this attempt.
    overlay: BTreeMap<String, Option<Vec<u8>>>,
    /// Context bytes reserved against the flow cap.
    context_reserved: u64,
    /// Flow task reservations held.
    tasks_reserved: u64,
}

/// Per-attempt services; see the module docs.
pub(crate) struct AttemptServices {
    engine: Engine,
    task: TaskRecord,
    /// Tasks the flow had stored, read on the first submission.
    flow_tasks: std::sync::OnceLock<u64>,
    held: Mutex<Held>,
}

impl std::fmt::Debug for AttemptServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptServices").field("task", &self.task.id).finish_non_exhaustive()
    }
}

/// What an attempt leaves for the engine to commit or release.
pub(crate) struct Outcome {
    pub(crate) effects: Effects,
    pub(crate) tasks_reserved: u64,
    pub(crate) context_reserved: u64,
}

impl AttemptServices {
    pub(crate) fn new(engine: Engine, task: TaskRecord) -> Self {
        let effects = Effects { flow_id: task.flow_id, ..Effects::default() };
        Self {
            engine,
            task,
            flow_tasks: std::sync::OnceLock::new(),
            held: Mutex::new(Held { effects, ..Held::default() }),
        }
    }

    /// Takes what the attempt held (once, when it ended).
    pub(crate) fn take(&self) -> Outcome {
        let held = std::mem::take(&mut *lock(&self.held));
        Outcome { effects: held.effects, tasks_reserved: held.tasks_reserved, context_reserved: held.context_reserved }
    }

    fn limits(&self) -> &FlowLimits {
        &self.engine.inner.config.flow_limits
    }

    fn child(&self, spec: ChildTask, after: Vec<Uuid>) -> Result<String, QueueError> {
        let limits = self.limits().clone();
        let mut held = lock(&self.held);
        let flow = self.task.flow_id;
        if let Some(key) = &spec.idempotency_key
            && (key.is_empty() || key.len() > MAX_KEY)
        {
            return Err(QueueError::Invalid(format!("idempotency keys must be 1-{MAX_KEY} bytes; got {}", key.len())));
        }
        let key = spec.idempotency_key.as_deref().map(|k| scoped_key(flow, k));
        if let Some(key) = &key {
            if let Some(id) = held.keys.get(key) {
                return Ok(id.to_string());
            }
            if let Ok(Some(id)) = self.engine.inner.store.task_by_key(key) {
                return Ok(id.to_string());
            }
        }
        let metrics = &self.engine.inner.metrics;
        if held.effects.children.len() >= limits.children_per_task as usize {
            metrics.refused("children_per_task");
            return Err(QueueError::LimitExceeded(format!(
                "a task may submit at most {} children per attempt",
                limits.children_per_task
            )));
        }
        if self.task.depth + 1 > limits.max_depth {
            metrics.refused("depth");
            return Err(QueueError::LimitExceeded(format!(
                "a child here would be {} submissions deep; the limit is {}",
                self.task.depth + 1,
                limits.max_depth
            )));
        }
        let new = NewTask {
            plugin: spec.plugin,
            input: spec.input,
            queue: Some(spec.queue.unwrap_or_else(|| self.task.queue.clone())),
            priority: Some(spec.priority.unwrap_or(self.task.priority)),
            delay_ms: spec.delay_ms,
            parent_id: Some(self.task.id),
            ..NewTask::default()
        };
        let (mut record, input) = self.engine.prepare(new).map_err(|e| match e {
            EngineError::UnknownPlugin(m) => QueueError::UnknownPlugin(m),
            other => QueueError::Invalid(other.to_string()),
        })?;
        lock(&self.engine.inner.book).reserve_task(flow, self.stored_flow_tasks(), &limits).map_err(|m| {
            metrics.refused(if m.contains("per second") { "submissions_per_sec" } else { "tasks_per_flow" });
            QueueError::LimitExceeded(m)
        })?;
        held.tasks_reserved += 1;
        record.flow_id = flow;
        record.depth = self.task.depth + 1;
        record.iteration = self.task.iteration;
        record.idempotency_key = key.clone();
        record.after = after;
        let id = record.id;
        if let Some(key) = key {
            held.keys.insert(key, id);
        }
        held.ids.insert(id);
        held.effects.children.push((record, input));
        Ok(id.to_string())
    }

    fn stored_flow_tasks(&self) -> u64 {
        *self
            .flow_tasks
            .get_or_init(|| self.engine.inner.store.flow(self.task.flow_id).ok().flatten().map_or(1, |f| f.tasks))
    }

    fn view(&self, id: Uuid) -> Result<TaskView, QueueError> {
        if lock(&self.held).ids.contains(&id) {
            return Ok(TaskView { id: id.to_string(), status: TaskStatus::Pending, output: None, error: None });
        }
        let not_found = || QueueError::NotFound(format!("no task {id} in this flow"));
        let record = self.engine.inner.store.get(id).ok().flatten().ok_or_else(not_found)?;
        if record.flow_id != self.task.flow_id {
            return Err(not_found());
        }
        let output = self.engine.inner.store.output(id).ok().flatten();
        Ok(task_view(&record, output))
    }

    /// The size a context write changes the flow's context by, upward.
    fn growth(&self, held: &Held, key: &str, value: Option<&[u8]>) -> u64 {
        let before = match held.overlay.get(key) {
            Some(v) => v.as_ref().map(|v| key.len() + v.len()),
            None => self.stored(key).map(|v| key.len() + v.len()),
        };
        let after = value.map(|v| key.len() + v.len());
        (after.unwrap_or(0) as u64).saturating_sub(before.unwrap_or(0) as u64)
    }

    fn stored(&self, key: &str) -> Option<Vec<u8>> {
        self.engine.inner.store.context_get(self.task.flow_id, key).ok().flatten()
    }
}

fn parse_id(id: &str) -> Result<Uuid, QueueError> {
    Uuid::parse_str(id).map_err(|_| QueueError::Invalid(format!("`{id}` is not a task id")))
}

impl TaskServices for AttemptServices {
    fn submit(&self, task: ChildTask) -> Result<String, QueueError> {
        self.child(task, Vec::new())
    }

    fn join(&self, tasks: Vec<String>, then: ChildTask) -> Result<String, QueueError> {
        if tasks.is_empty() {
            return Err(QueueError::Invalid("join needs at least one task to wait for".into()));
        }
        let mut after = Vec::with_capacity(tasks.len());
        for id in &tasks {
            let id = parse_id(id)?;
            // Only tasks of this flow (held or stored) can be joined.
            self.view(id)?;
            after.push(id);
        }
        self.child(then, after)
    }

    fn joined(&self) -> Vec<TaskView> {
        self.task.after.iter().map(|id| self.view(*id).unwrap_or_else(|e| missing(*id, e))).collect()
    }

    fn get(&self, id: &str) -> Result<TaskView, QueueError> {
        self.view(parse_id(id)?)
    }

    fn stop_repeating(&self) {
        lock(&self.held).effects.stop_repeating = true;
    }

    fn context_get(&self, key: &str) -> Option<Vec<u8>> {
        match lock(&self.held).overlay.get(key) {
            Some(value) => value.clone(),
            None => self.stored(key),
        }
    }

    fn context_set(&self, key: String, value: Vec<u8>) -> Result<(), ContextError> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(ContextError::InvalidKey(format!(
                "context keys must be 1-{MAX_KEY} bytes; this one is {} bytes",
                key.len()
            )));
        }
        let mut held = lock(&self.held);
        let grow = self.growth(&held, &key, Some(&value));
        if grow > 0 {
            lock(&self.engine.inner.book).reserve_context(self.task.flow_id, grow, self.limits()).map_err(|m| {
                self.engine.inner.metrics.refused("context_bytes");
                ContextError::TooLarge(m)
            })?;
            held.context_reserved += grow;
        }
        held.overlay.insert(key.clone(), Some(value.clone()));
        held.effects.context.push((key, Some(value)));
        Ok(())
    }

    fn context_delete(&self, key: &str) -> bool {
        let mut held = lock(&self.held);
        let existed = match held.overlay.get(key) {
            Some(value) => value.is_some(),
            None => self.stored(key).is_some(),
        };
        if existed {
            held.overlay.insert(key.to_owned(), None);
            held.effects.context.push((key.to_owned(), None));
        }
        existed
    }

    fn context_list(&self, prefix: &str) -> Vec<String> {
        let held = lock(&self.held);
        let mut keys: std::collections::BTreeSet<String> =
            self.engine.inner.store.context_keys(self.task.flow_id, prefix).unwrap_or_default().into_iter().collect();
        for (key, value) in held.overlay.range(prefix.to_owned()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if value.is_some() {
                keys.insert(key.clone());
            } else {
                keys.remove(key);
            }
        }
        keys.into_iter().collect()
    }
}

fn missing(id: Uuid, error: QueueError) -> TaskView {
    let message = match error {
        QueueError::NotFound(m)
        | QueueError::Invalid(m)
        | QueueError::LimitExceeded(m)
        | QueueError::UnknownPlugin(m) => m,
    };
    TaskView { id: id.to_string(), status: TaskStatus::Cancelled, output: None, error: Some(message) }
}

/// The WIT status of a stored state.
pub(crate) fn status(state: TaskState) -> TaskStatus {
    match state {
        TaskState::Pending => TaskStatus::Pending,
        TaskState::Running => TaskStatus::Running,
        TaskState::Retrying => TaskStatus::Retrying,
        TaskState::Completed => TaskStatus::Completed,
        TaskState::Failed => TaskStatus::Failed,
        TaskState::Cancelled => TaskStatus::Cancelled,
    }
}
