//! The services one attempt reaches through `queue` and `context`: checks
//! each call against the flow limits, holds children and context writes in
//! the attempt's [`Effects`] and hands them to the engine when the attempt
//! ends (committed with a completion, released otherwise). A store read
//! that fails ends the attempt as a host error (retried); it is never taken
//! for "absent".

use super::{FlowLimits, Flows, scoped_key, task_view};
use crate::engine::shared::Shared;
use crate::engine::submission::{MAX_KEY, Submission};
use crate::engine::{EngineError, NewTask};
use crate::flow::{ChildTask, ContextError, HostFailure, QueueError, Served, TaskServices, TaskStatus, TaskView};
use crate::registry::Pin;
use crate::store::{Effects, StoreError, TaskRecord, TaskState};
use crate::sync::lock;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use uuid::Uuid;

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
    /// The held children's plugin versions, kept from deletion until the
    /// children are admitted or dropped.
    pins: Vec<Pin>,
}

/// Per-attempt services; see the module docs.
pub(crate) struct AttemptServices {
    shared: Arc<Shared>,
    submission: Arc<Submission>,
    flows: Arc<Flows>,
    task: TaskRecord,
    /// Tasks the flow had stored, read on the first submission.
    flow_tasks: OnceLock<u64>,
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
    /// Keep until the committed children are admitted.
    pub(crate) pins: Vec<Pin>,
}

fn host(what: &str, e: StoreError) -> HostFailure {
    HostFailure(format!("the host could not {what}: {e}"))
}

impl AttemptServices {
    pub(crate) fn new(shared: Arc<Shared>, submission: Arc<Submission>, flows: Arc<Flows>, task: TaskRecord) -> Self {
        let effects = Effects { flow_id: task.flow_id, ..Effects::default() };
        Self {
            shared,
            submission,
            flows,
            task,
            flow_tasks: OnceLock::new(),
            held: Mutex::new(Held { effects, ..Held::default() }),
        }
    }

    /// Takes what the attempt held (once, when it ended).
    pub(crate) fn take(&self) -> Outcome {
        let held = std::mem::take(&mut *lock(&self.held));
        Outcome {
            effects: held.effects,
            tasks_reserved: held.tasks_reserved,
            context_reserved: held.context_reserved,
            pins: held.pins,
        }
    }

    fn limits(&self) -> &FlowLimits {
        self.flows.limits()
    }

    fn child(&self, spec: ChildTask, after: Vec<Uuid>) -> Served<Result<String, QueueError>> {
        let limits = self.limits().clone();
        let mut held = lock(&self.held);
        let flow = self.task.flow_id;
        if let Some(key) = &spec.idempotency_key
            && (key.is_empty() || key.len() > MAX_KEY)
        {
            let message = format!("idempotency keys must be 1-{MAX_KEY} bytes; got {}", key.len());
            return Ok(Err(QueueError::Invalid(message)));
        }
        let key = spec.idempotency_key.as_deref().map(|k| scoped_key(flow, k));
        if let Some(key) = &key {
            if let Some(id) = held.keys.get(key) {
                return Ok(Ok(id.to_string()));
            }
            let stored =
                self.shared.store.child_by_key(flow, key).map_err(|e| host("look up an idempotency key", e))?;
            if let Some(id) = stored {
                return Ok(Ok(id.to_string()));
            }
        }
        let metrics = &self.shared.metrics;
        if held.effects.children.len() >= limits.children_per_task as usize {
            metrics.refused("children_per_task");
            return Ok(Err(QueueError::LimitExceeded(format!(
                "a task may submit at most {} children per attempt",
                limits.children_per_task
            ))));
        }
        if self.task.depth + 1 > limits.max_depth {
            metrics.refused("depth");
            return Ok(Err(QueueError::LimitExceeded(format!(
                "a child here would be {} submissions deep; the limit is {}",
                self.task.depth + 1,
                limits.max_depth
            ))));
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
        let (mut record, input, pin) = match self.submission.prepare(new) {
            Ok(prepared) => prepared,
            Err(EngineError::UnknownPlugin(m)) => return Ok(Err(QueueError::UnknownPlugin(m))),
            Err(EngineError::LimitReached(m)) => return Ok(Err(QueueError::LimitExceeded(m))),
            Err(EngineError::Store(e)) => return Err(host("check the child", e)),
            Err(other) => return Ok(Err(QueueError::Invalid(other.to_string()))),
        };
        let stored_tasks = self.stored_flow_tasks()?;
        if let Err(refusal) = self.flows.book().reserve_task(flow, stored_tasks, &limits) {
            metrics.refused(refusal.limit());
            return Ok(Err(QueueError::LimitExceeded(refusal.to_string())));
        }
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
        held.pins.push(pin);
        Ok(Ok(id.to_string()))
    }

    fn stored_flow_tasks(&self) -> Served<u64> {
        if let Some(n) = self.flow_tasks.get() {
            return Ok(*n);
        }
        let flow = self.shared.store.flow(self.task.flow_id).map_err(|e| host("read the flow", e))?;
        Ok(*self.flow_tasks.get_or_init(|| flow.map_or(1, |f| f.tasks)))
    }

    fn view(&self, id: Uuid) -> Served<Result<TaskView, QueueError>> {
        if lock(&self.held).ids.contains(&id) {
            return Ok(Ok(TaskView { id: id.to_string(), status: TaskStatus::Pending, output: None, error: None }));
        }
        let not_found = || QueueError::NotFound(format!("no task {id} in this flow"));
        let record = self.shared.store.get(id).map_err(|e| host("read a task", e))?;
        let Some(record) = record.filter(|r| r.flow_id == self.task.flow_id) else { return Ok(Err(not_found())) };
        let output = self.shared.store.output(id).map_err(|e| host("read a task's output", e))?;
        Ok(Ok(task_view(&record, output)))
    }

    /// The size a context write changes the flow's context by, upward.
    fn growth(&self, held: &Held, key: &str, value: Option<&[u8]>) -> Served<u64> {
        let before = match held.overlay.get(key) {
            Some(v) => v.as_ref().map(|v| key.len() + v.len()),
            None => self.stored(key)?.map(|v| key.len() + v.len()),
        };
        let after = value.map(|v| key.len() + v.len());
        Ok((after.unwrap_or(0) as u64).saturating_sub(before.unwrap_or(0) as u64))
    }

    fn stored(&self, key: &str) -> Served<Option<Vec<u8>>> {
        self.shared.store.context_get(self.task.flow_id, key).map_err(|e| host("read the flow's context", e))
    }
}

fn parse_id(id: &str) -> Result<Uuid, QueueError> {
    Uuid::parse_str(id).map_err(|_| QueueError::Invalid(format!("`{id}` is not a task id")))
}

impl TaskServices for AttemptServices {
    fn submit(&self, task: ChildTask) -> Served<Result<String, QueueError>> {
        self.child(task, Vec::new())
    }

    fn join(&self, tasks: Vec<String>, then: ChildTask) -> Served<Result<String, QueueError>> {
        if tasks.is_empty() {
            return Ok(Err(QueueError::Invalid("join needs at least one task to wait for".into())));
        }
        let mut after = Vec::with_capacity(tasks.len());
        for id in &tasks {
            let id = match parse_id(id) {
                Ok(id) => id,
                Err(e) => return Ok(Err(e)),
            };
            // Only tasks of this flow (held or stored) can be joined.
            if let Err(e) = self.view(id)? {
                return Ok(Err(e));
            }
            after.push(id);
        }
        self.child(then, after)
    }

    fn joined(&self) -> Served<Vec<TaskView>> {
        let mut views = Vec::with_capacity(self.task.after.len());
        for id in &self.task.after {
            views.push(self.view(*id)?.unwrap_or_else(|e| missing(*id, e)));
        }
        Ok(views)
    }

    fn get(&self, id: &str) -> Served<Result<TaskView, QueueError>> {
        match parse_id(id) {
            Ok(id) => self.view(id),
            Err(e) => Ok(Err(e)),
        }
    }

    fn stop_repeating(&self) {
        lock(&self.held).effects.stop_repeating = true;
    }

    fn context_get(&self, key: &str) -> Served<Option<Vec<u8>>> {
        match lock(&self.held).overlay.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.stored(key),
        }
    }

    fn context_set(&self, key: String, value: Vec<u8>) -> Served<Result<(), ContextError>> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Ok(Err(ContextError::InvalidKey(format!(
                "context keys must be 1-{MAX_KEY} bytes; this one is {} bytes",
                key.len()
            ))));
        }
        let mut held = lock(&self.held);
        let grow = self.growth(&held, &key, Some(&value))?;
        if grow > 0 {
            if let Err(refusal) = self.flows.book().reserve_context(self.task.flow_id, grow, self.limits()) {
                self.shared.metrics.refused(refusal.limit());
                return Ok(Err(ContextError::TooLarge(refusal.to_string())));
            }
            held.context_reserved += grow;
        }
        held.overlay.insert(key.clone(), Some(value.clone()));
        held.effects.context.push((key, Some(value)));
        Ok(Ok(()))
    }

    fn context_delete(&self, key: &str) -> Served<bool> {
        let mut held = lock(&self.held);
        let existed = match held.overlay.get(key) {
            Some(value) => value.is_some(),
            None => self.stored(key)?.is_some(),
        };
        if existed {
            held.overlay.insert(key.to_owned(), None);
            held.effects.context.push((key.to_owned(), None));
        }
        Ok(existed)
    }

    fn context_list(&self, prefix: &str) -> Served<Vec<String>> {
        let held = lock(&self.held);
        let stored = self
            .shared
            .store
            .context_keys(self.task.flow_id, prefix)
            .map_err(|e| host("list the flow's context", e))?;
        let mut keys: std::collections::BTreeSet<String> = stored.into_iter().collect();
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
        Ok(keys.into_iter().collect())
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

#[cfg(test)]
mod tests {
    use crate::engine::testing::{Harness, Script};
    use crate::flow::{ChildTask, QueueError, TaskServices as _};

    fn child(key: &str) -> ChildTask {
        ChildTask {
            plugin: "echo".into(),
            input: b"x".to_vec(),
            queue: None,
            priority: None,
            idempotency_key: Some(key.into()),
            delay_ms: None,
        }
    }

    #[tokio::test]
    async fn a_failed_key_lookup_fails_the_call_instead_of_duplicating_the_child() {
        let h = Harness::new().await;
        let parent = h.submit("echo", Script::Complete(b"p".to_vec())).await;
        h.wait(parent).await;
        let services = h.services(parent);
        let first = services.submit(child("k")).unwrap().unwrap();
        assert_eq!(services.submit(child("k")).unwrap().unwrap(), first, "held keys dedupe");
        // The key's lookup in the store is the first read: it fails.
        h.store().fail_next_reads(1);
        let failed = services.submit(child("k2")).unwrap_err();
        assert!(failed.0.contains("could not look up an idempotency key"), "{failed}");
        assert!(services.submit(child("k2")).unwrap().is_ok());
    }

    /// A client that registers the key a flow will give its child does not
    /// get the child: the flow's keys are its own.
    #[tokio::test]
    async fn a_client_key_spelled_like_a_childs_does_not_hijack_the_child() {
        let h = Harness::new().await;
        let parent = h.submit("echo", Script::Complete(b"p".to_vec())).await;
        h.wait(parent).await;
        let hijack = crate::engine::NewTask {
            plugin: "echo".into(),
            idempotency_key: Some(format!("flow:{parent}:step-1")),
            ..crate::engine::NewTask::default()
        };
        let client = h.engine.submit(hijack).await.unwrap().record.id;
        let services = h.services(parent);
        let child_id = services.submit(child("step-1")).unwrap().unwrap();
        assert_ne!(child_id, client.to_string(), "the child is a new task of the flow");
    }

    /// A plugin's child is checked like a submission: a delay of about
    /// 10^15 ms, or a queue past the limit, is refused to the plugin.
    #[tokio::test]
    async fn a_childs_delay_and_queue_are_checked() {
        let h = Harness::with_config(|c| c.max_queues = 2).await;
        let parent = h.submit("echo", Script::Complete(b"p".to_vec())).await;
        h.wait(parent).await;
        let services = h.services(parent);
        let late = ChildTask { delay_ms: Some(1_000_000_000_000_000), ..child("late") };
        match services.submit(late).unwrap() {
            Err(QueueError::Invalid(m)) => assert!(m.contains("delay_ms 1000000000000000 is out of range"), "{m}"),
            other => panic!("{other:?}"),
        }
        // `default` is known; one more queue fits, the next does not.
        services.submit(ChildTask { queue: Some("q1".into()), ..child("a") }).unwrap().unwrap();
        match services.submit(ChildTask { queue: Some("q2".into()), ..child("b") }).unwrap() {
            Err(QueueError::LimitExceeded(m)) => assert!(m.contains("max_queues = 2"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_read_is_not_an_absent_task() {
        let h = Harness::new().await;
        let parent = h.submit("echo", Script::Complete(b"p".to_vec())).await;
        h.wait(parent).await;
        let services = h.services(parent);
        h.store().fail_next_reads(1);
        let failed = services.get(&parent.to_string()).unwrap_err();
        assert!(failed.0.contains("could not read a task"), "{failed}");
        assert!(services.get(&parent.to_string()).unwrap().is_ok());
    }
}
