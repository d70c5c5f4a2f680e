//! The services one attempt reaches through `queue` and `context`: checks
//! each call against the flow limits, holds children and context writes in
//! the attempt's [`Effects`] and hands them to the engine when the attempt
//! ends (committed with a completion, released otherwise). A store read
//! that fails ends the attempt as a host error (retried); it is never taken
//! for "absent". What the attempt holds (children, their inputs, context
//! writes) and what a join hands back count against its host budget.

use super::book::Refusal;
use super::{FlowLimits, Flows, scoped_key, task_view};
use crate::engine::rates::{Take, flow_key};
use crate::engine::shared::Shared;
use crate::engine::submission::{MAX_KEY, Submission};
use crate::engine::{EngineError, NewTask};
use crate::flow::{ChildTask, ContextError, HostFailure, QueueError, Served, TaskServices, TaskStatus, TaskView};
use crate::registry::Pin;
use crate::store::{Effects, FlowBounds, StoreError, TaskRecord, TaskState};
use crate::sync::lock;
use crate::{BudgetExceeded, HostBudget};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use uuid::Uuid;

#[derive(Debug, Default)]
struct Held {
    effects: Effects,
    /// Ids of the children held, for `get` and `join`.
    ids: HashSet<Uuid>,
    /// Scoped idempotency keys of held children → their ids.
    keys: BTreeMap<String, Uuid>,
    /// Latest value per context key written by this attempt (each key
    /// once: a later write replaces an earlier one and gives its bytes
    /// back).
    overlay: BTreeMap<String, Option<Vec<u8>>>,
    /// Size (key + value) each written key had in the store before the
    /// attempt; the reservation of a key is what it grew by since.
    baseline: HashMap<String, u64>,
    /// Context bytes reserved against the flow cap.
    context_reserved: u64,
    /// Flow task reservations held.
    tasks_reserved: u64,
    /// The highest flow limits this attempt reserved under (a tenant's
    /// quota may be lowered while it runs): what its commit is held to.
    reserved_under: Option<FlowBounds>,
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
    /// The flow's context bytes as stored, read on the first write that
    /// grows it on a shared store (where the flow book may not know them).
    context_stored: OnceLock<u64>,
    /// Whether the attempt holds its flow in the flow book (from before
    /// its first read of the flow's stored totals until it is dropped).
    holds_flow: AtomicBool,
    held: Mutex<Held>,
    budget: Arc<HostBudget>,
    /// The attempt's span: the tasks it submits continue the trace there.
    trace: Option<crate::trace::TraceParent>,
}

/// Most tasks one `join` may wait for.
pub(crate) const MAX_JOIN: usize = 10_000;

/// Largest input a plugin may give one child (the API's own body cap).
pub(crate) const MAX_CHILD_INPUT: usize = crate::api::MAX_TASK_BODY;

/// What holding one child costs the host beyond its strings and input:
/// its record and the maps that find it.
const CHILD_OVERHEAD: u64 = 512;

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

/// The higher of `bounds` (if any) and `limits`, limit by limit.
fn higher(bounds: Option<FlowBounds>, limits: &FlowLimits) -> FlowBounds {
    let now = FlowBounds { tasks: limits.tasks_per_flow, context_bytes: limits.context_bytes };
    bounds.map_or(now, |b| FlowBounds {
        tasks: b.tasks.max(now.tasks),
        context_bytes: b.context_bytes.max(now.context_bytes),
    })
}

fn host(what: &str, e: StoreError) -> HostFailure {
    HostFailure(format!("the host could not {what}: {e}"))
}

impl Drop for AttemptServices {
    fn drop(&mut self) {
        if *self.holds_flow.get_mut() {
            self.flows.book().unhold(self.task.flow_id);
        }
    }
}

impl AttemptServices {
    pub(crate) fn new(
        shared: Arc<Shared>,
        submission: Arc<Submission>,
        flows: Arc<Flows>,
        task: TaskRecord,
        trace: Option<crate::trace::TraceParent>,
    ) -> Self {
        let effects = Effects { flow_id: task.flow_id, ..Effects::default() };
        let budget = Arc::new(HostBudget::new(task.limits.host_bytes));
        Self {
            shared,
            submission,
            flows,
            task,
            flow_tasks: OnceLock::new(),
            context_stored: OnceLock::new(),
            holds_flow: AtomicBool::new(false),
            held: Mutex::new(Held { effects, ..Held::default() }),
            budget,
            trace,
        }
    }

    /// The attempt's host budget, which the sandbox charges too.
    pub(crate) fn budget(&self) -> Arc<HostBudget> {
        self.budget.clone()
    }

    /// Takes what the attempt held (once, when it ended): the context
    /// writes are the last value of each key.
    pub(crate) fn take(&self) -> Outcome {
        let mut held = std::mem::take(&mut *lock(&self.held));
        held.effects.context = std::mem::take(&mut held.overlay).into_iter().collect();
        // On a shared store each host's book counts only its own
        // attempts' reservations beside the stored totals they read, and
        // tasks the engine creates without one (a repeater's next
        // iteration) or other hosts' commits may land after that read:
        // the commit checks again, by the limits the attempt reserved
        // under.
        if self.shared.store.queues_tasks() {
            held.effects.bounds = Some(higher(held.reserved_under, &self.limits()));
        }
        Outcome {
            effects: held.effects,
            tasks_reserved: held.tasks_reserved,
            context_reserved: held.context_reserved,
            pins: held.pins,
        }
    }

    /// The flow limits of this task's tenant.
    fn limits(&self) -> FlowLimits {
        self.flows.limits_for(crate::tenant::tenant_of(&self.task.plugin))
    }

    fn child(&self, spec: ChildTask, after: Vec<Uuid>) -> Served<Result<String, QueueError>> {
        let limits = self.limits();
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
                self.shared.store.child_by_key_now(flow, key).map_err(|e| host("look up an idempotency key", e))?;
            if let Some(id) = stored {
                return Ok(Ok(id.to_string()));
            }
        }
        let metrics = &self.shared.metrics;
        if spec.input.len() > MAX_CHILD_INPUT {
            metrics.refused("child_input");
            return Ok(Err(QueueError::LimitExceeded(format!(
                "a child's input may be at most {MAX_CHILD_INPUT} bytes; this one is {} bytes",
                spec.input.len()
            ))));
        }
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
        // A child belongs to its parent's tenant: its names are that
        // tenant's (a name cannot reach into another).
        let ns = crate::tenant::Namespace::new(crate::tenant::tenant_of(&self.task.plugin));
        let names = ns.plugin_ref(&spec.plugin).and_then(|plugin| {
            let queue = spec.queue.as_deref().map(|q| ns.key(crate::names::NameKind::Queue, q)).transpose()?;
            Ok((plugin, queue))
        });
        let (plugin, queue) = match names {
            Ok(names) => names,
            Err(e) => return Ok(Err(QueueError::Invalid(e.to_string()))),
        };
        let new = NewTask {
            plugin,
            input: spec.input,
            queue: Some(queue.unwrap_or_else(|| self.task.queue.clone())),
            priority: Some(spec.priority.unwrap_or(self.task.priority)),
            delay_ms: spec.delay_ms,
            parent_id: Some(self.task.id),
            trace: self.trace,
            ..NewTask::default()
        };
        let cost = child_cost(&new, key.as_deref(), after.len());
        if let Err(refused) = self.budget.charge("a child", cost) {
            metrics.refused("host_budget");
            return Ok(Err(QueueError::LimitExceeded(refused.to_string())));
        }
        // Given back if the child is refused below.
        let refund = |r| {
            self.budget.refund(cost);
            r
        };
        let (mut record, input, pin) = match self.submission.prepare(new) {
            Ok(prepared) => prepared,
            Err(EngineError::UnknownPlugin(m)) => return refund(Ok(Err(QueueError::UnknownPlugin(m)))),
            Err(EngineError::LimitReached(m)) => return refund(Ok(Err(QueueError::LimitExceeded(m)))),
            Err(EngineError::Store(e)) => return refund(Err(host("check the child", e))),
            Err(other) => return refund(Ok(Err(QueueError::Invalid(other.to_string())))),
        };
        let stored_tasks = refund_on_err(self.stored_flow_tasks(), || self.budget.refund(cost))?;
        // On PostgreSQL the flow's rate is the database's (its tasks run on
        // any host, and the book forgets a flow between attempts); the
        // book checks the rest first, so a refused child takes no token.
        let rates = self.shared.rates.as_deref();
        if let Err(refusal) = self.flows.book().reserve_task(flow, stored_tasks, &limits, rates.is_none()) {
            metrics.refused(refusal.limit());
            return refund(Ok(Err(QueueError::LimitExceeded(refusal.to_string()))));
        }
        if let Some(rates) = rates {
            let per_sec = limits.submissions_per_sec;
            let taken = rates.take_now(&flow_key(flow), per_sec, per_sec).map_err(|e| host("draw the flow's rate", e));
            let unreserve = || {
                self.flows.book().unreserve_tasks(flow, 1);
                self.budget.refund(cost);
            };
            if refund_on_err(taken, unreserve)? != Take::Taken {
                unreserve();
                let refusal = Refusal::SubmissionsPerSec { limit: per_sec };
                metrics.refused(refusal.limit());
                return Ok(Err(QueueError::LimitExceeded(refusal.to_string())));
            }
        }
        held.tasks_reserved += 1;
        held.reserved_under = Some(higher(held.reserved_under, &limits));
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

    /// Holds the flow in the flow book for the rest of the attempt (once):
    /// before it first reads the flow's stored totals, so that what other
    /// attempts of this host commit after that read stays counted beside
    /// them (see [`Book::hold`](super::book::Book::hold)).
    fn hold_flow(&self) {
        // (redb's book counts every task of its flows: nothing to hold.)
        if self.shared.store.queues_tasks() && !self.holds_flow.swap(true, Ordering::AcqRel) {
            let limits = self.limits();
            self.flows.book().hold(self.task.flow_id, &limits);
        }
    }

    fn stored_flow_tasks(&self) -> Served<u64> {
        if let Some(n) = self.flow_tasks.get() {
            return Ok(*n);
        }
        self.hold_flow();
        let flow = self.shared.store.flow_now(self.task.flow_id).map_err(|e| host("read the flow", e))?;
        Ok(*self.flow_tasks.get_or_init(|| flow.map_or(1, |f| f.tasks)))
    }

    /// The flow's stored context bytes where the flow book may not know
    /// them (a shared store), read once per attempt.
    fn stored_context_bytes(&self) -> Served<Option<u64>> {
        if !self.shared.store.queues_tasks() {
            return Ok(None);
        }
        if let Some(n) = self.context_stored.get() {
            return Ok(Some(*n));
        }
        self.hold_flow();
        let size = self.shared.store.context_size_now(self.task.flow_id).map_err(|e| host("read the context", e))?;
        Ok(Some(*self.context_stored.get_or_init(|| size)))
    }

    /// A task of this flow, held by this attempt or stored; `None` for a
    /// held one.
    fn find(&self, id: Uuid) -> Served<Result<Option<TaskRecord>, QueueError>> {
        if lock(&self.held).ids.contains(&id) {
            return Ok(Ok(None));
        }
        let record = self.shared.store.get_now(id).map_err(|e| host("read a task", e))?;
        match record.filter(|r| r.flow_id == self.task.flow_id) {
            Some(record) => Ok(Ok(Some(record))),
            None => Ok(Err(QueueError::NotFound(format!("no task {id} in this flow")))),
        }
    }

    /// The view of a task of this flow, with its output. The output is a
    /// copy the host holds until the guest has it: it must fit the host
    /// budget beside `already` bytes of the same call, checked before it
    /// is read.
    fn view(&self, id: Uuid, already: u64) -> Served<Result<TaskView, ViewError>> {
        let record = match self.find(id)? {
            Ok(Some(record)) => record,
            Ok(None) => {
                return Ok(Ok(TaskView { id: id.to_string(), status: TaskStatus::Pending, output: None, error: None }));
            }
            Err(e) => return Ok(Err(ViewError::Queue(e))),
        };
        let bytes = already + view_bytes(&record);
        if let Err(refused) = self.budget.fits("the joined tasks' outputs", bytes) {
            self.shared.metrics.refused("host_budget");
            return Ok(Err(ViewError::Budget(refused)));
        }
        let output = self.shared.store.output_now(id).map_err(|e| host("read a task's output", e))?;
        Ok(Ok(task_view(&record, output)))
    }

    /// Writes `value` (`None` deletes) to `key` in the attempt's overlay:
    /// the key's reservation against the flow's cap grows or shrinks to
    /// what the key grew by since the attempt began, and the host budget
    /// holds the overlay's bytes (a replaced value's are given back).
    fn write(&self, held: &mut Held, key: &str, value: Option<Vec<u8>>) -> Served<Result<(), ContextError>> {
        let baseline = match held.baseline.get(key) {
            Some(size) => *size,
            None => {
                let size = self.stored(key)?.map_or(0, |v| (key.len() + v.len()) as u64);
                held.baseline.insert(key.to_owned(), size);
                size
            }
        };
        let size = |v: Option<&Option<Vec<u8>>>| v.map(|v| v.as_ref().map_or(0, |v| (key.len() + v.len()) as u64));
        // A key the attempt has not written yet stands at its baseline.
        let before = size(held.overlay.get(key)).unwrap_or(baseline);
        let after = size(Some(&value)).unwrap_or(0);
        let (was_reserved, reserve) = (before.saturating_sub(baseline), after.saturating_sub(baseline));
        // The overlay holds the key and the new value. A deletion is not
        // counted: a key this attempt created is forgotten when deleted
        // (below), so tombstones are only kept for stored keys, which the
        // flow's context cap bounds.
        let holds =
            |v: Option<&Option<Vec<u8>>>| v.and_then(Option::as_ref).map_or(0, |v| (key.len() + v.len()) as u64);
        let (held_before, held_after) = (holds(held.overlay.get(key)), holds(Some(&value)));
        if held_after > held_before
            && let Err(refused) = self.budget.charge("a context write", held_after - held_before)
        {
            self.shared.metrics.refused("host_budget");
            return Ok(Err(ContextError::TooLarge(refused.to_string())));
        }
        if reserve > was_reserved {
            let stored = match self.stored_context_bytes() {
                Ok(stored) => stored,
                Err(failure) => {
                    self.budget.refund(held_after.saturating_sub(held_before));
                    return Err(failure);
                }
            };
            let limits = self.limits();
            if let Err(refusal) =
                self.flows.book().reserve_context(self.task.flow_id, reserve - was_reserved, stored, &limits)
            {
                self.budget.refund(held_after.saturating_sub(held_before));
                self.shared.metrics.refused(refusal.limit());
                return Ok(Err(ContextError::TooLarge(refusal.to_string())));
            }
            held.context_reserved += reserve - was_reserved;
            held.reserved_under = Some(higher(held.reserved_under, &limits));
        } else if was_reserved > reserve {
            self.flows.book().settle_context(self.task.flow_id, was_reserved - reserve, None);
            held.context_reserved -= was_reserved - reserve;
        }
        self.budget.refund(held_before.saturating_sub(held_after));
        if value.is_none() && baseline == 0 {
            // Deleting a key this attempt created leaves nothing to commit:
            // forget it, so set-then-delete loops hold nothing.
            held.overlay.remove(key);
            held.baseline.remove(key);
        } else {
            held.overlay.insert(key.to_owned(), value);
        }
        Ok(Ok(()))
    }

    fn stored(&self, key: &str) -> Served<Option<Vec<u8>>> {
        self.shared.store.context_get_now(self.task.flow_id, key).map_err(|e| host("read the flow's context", e))
    }
}

/// Why a view could not be given.
enum ViewError {
    /// Not a task of this flow.
    Queue(QueueError),
    /// Its output does not fit the host budget.
    Budget(BudgetExceeded),
}

/// What a view of `record` makes the host hold: its output and error.
fn view_bytes(record: &TaskRecord) -> u64 {
    let error = record.error.as_ref().map_or(0, |e| e.message.len() as u64);
    36 + record.output_len.unwrap_or(0) + error
}

/// What holding a child costs the host: its input, strings and ids.
fn child_cost(task: &NewTask, key: Option<&str>, after: usize) -> u64 {
    let strings = task.plugin.len() + task.queue.as_ref().map_or(0, String::len) + key.map_or(0, str::len);
    (task.input.len() + strings + 16 * after) as u64 + CHILD_OVERHEAD
}

/// `served`, running `undo` first when it is a host failure.
fn refund_on_err<T>(served: Served<T>, undo: impl FnOnce()) -> Served<T> {
    if served.is_err() {
        undo();
    }
    served
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
        if tasks.len() > MAX_JOIN {
            self.shared.metrics.refused("join_tasks");
            return Ok(Err(QueueError::LimitExceeded(format!(
                "a join may wait for at most {MAX_JOIN} tasks; this one names {}",
                tasks.len()
            ))));
        }
        let mut after = Vec::with_capacity(tasks.len());
        let mut seen = HashSet::with_capacity(tasks.len());
        for id in &tasks {
            let id = match parse_id(id) {
                Ok(id) => id,
                Err(e) => return Ok(Err(e)),
            };
            if !seen.insert(id) {
                return Ok(Err(QueueError::Invalid(format!("task {id} appears more than once in the join"))));
            }
            // Only tasks of this flow (held or stored) can be joined.
            if let Err(e) = self.find(id)? {
                return Ok(Err(e));
            }
            after.push(id);
        }
        self.child(then, after)
    }

    fn joined(&self) -> Served<Result<Vec<TaskView>, BudgetExceeded>> {
        // The outputs are copies the host holds until the guest has them:
        // all of them together must fit beside what the attempt holds.
        let mut views = Vec::with_capacity(self.task.after.len());
        let mut bytes = 0u64;
        for id in &self.task.after {
            let view = match self.view(*id, bytes)? {
                Ok(view) => view,
                Err(ViewError::Budget(refused)) => return Ok(Err(refused)),
                Err(ViewError::Queue(e)) => missing(*id, e),
            };
            bytes += (view.id.len() + view.output.as_ref().map_or(0, Vec::len)) as u64
                + view.error.as_ref().map_or(0, |e| e.len() as u64);
            views.push(view);
        }
        Ok(Ok(views))
    }

    fn get(&self, id: &str) -> Served<Result<TaskView, QueueError>> {
        match parse_id(id) {
            Ok(id) => Ok(self.view(id, 0)?.map_err(|e| match e {
                ViewError::Queue(e) => e,
                ViewError::Budget(refused) => QueueError::LimitExceeded(refused.to_string()),
            })),
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
        self.write(&mut held, &key, Some(value))
    }

    fn context_delete(&self, key: &str) -> Served<bool> {
        let mut held = lock(&self.held);
        let existed = match held.overlay.get(key) {
            Some(value) => value.is_some(),
            None => self.stored(key)?.is_some(),
        };
        if existed {
            // A delete only shrinks what the key holds and reserves, so
            // nothing but a failed store read can stop it.
            if let Err(refused) = self.write(&mut held, key, None)? {
                return Err(HostFailure(format!("a context delete was refused: {refused:?}")));
            }
        }
        Ok(existed)
    }

    fn context_list(&self, prefix: &str) -> Served<Vec<String>> {
        let held = lock(&self.held);
        let stored = self
            .shared
            .store
            .context_keys_now(self.task.flow_id, prefix)
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
    use super::{MAX_CHILD_INPUT, MAX_JOIN};
    use crate::engine::testing::{Harness, Script, on_both};
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

    // This test and the next make a store read fail, which only the redb
    // store can be told to do: they run on redb alone.
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

    on_both! {
        /// A client that registers the key a flow will give its child does not
        /// get the child: the flow's keys are its own.
        async fn a_client_key_spelled_like_a_childs_does_not_hijack_the_child(h) {
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

        async fn children_count_against_the_host_budget_and_a_refusal_holds_nothing(h) {
            let parent = h.submit("echo", Script::Complete(b"p".to_vec())).await;
            h.wait(parent).await;
            let services = h.services(parent);
            let budget = services.budget();
            let big = |n: usize| ChildTask { input: vec![b'x'; n], idempotency_key: None, ..child("unused") };
            let mut accepted = 0;
            let refusal = loop {
                match services.submit(big(8 << 20)).unwrap() {
                    Ok(_) => accepted += 1,
                    Err(e) => break e,
                }
            };
            // 64 MiB holds seven 8 MiB children and their records, not eight.
            assert_eq!(accepted, 7);
            let crate::flow::QueueError::LimitExceeded(message) = refusal else { panic!("{refusal:?}") };
            // Its input, plugin and queue names (the parent's queue), and 512.
            let queue = h.engine.get(parent).await.unwrap().queue;
            let cost = (8 << 20) + "echo".len() + queue.len() + 512;
            assert!(message.contains(&format!("a child needs {cost} more bytes")), "{message}");
            let held = budget.held();
            assert!(services.submit(big(8 << 20)).unwrap().is_err());
            assert_eq!(budget.held(), held, "a refused child holds nothing");
            // Over the input cap, whatever the budget.
            let over = services.submit(big(MAX_CHILD_INPUT + 1)).unwrap().unwrap_err();
            assert!(format!("{over:?}").contains("a child's input may be at most"), "{over:?}");
        }

        async fn a_key_set_then_deleted_gives_its_bytes_back(h) {
            let parent = h.submit("echo", Script::Complete(b"p".to_vec())).await;
            h.wait(parent).await;
            let services = h.services(parent);
            // Twenty rounds of 100 KiB under a 1 MiB flow cap.
            for round in 0..20 {
                services
                    .context_set("k".into(), vec![b'v'; 100 << 10])
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{round}: {e:?}"));
                assert!(services.context_delete("k").unwrap());
            }
            assert_eq!(services.budget().held(), 0);
            // Keys created and deleted within the attempt leave nothing behind
            // (no tombstones to hold or commit).
            for i in 0..1_000 {
                services.context_set(format!("new-{i}"), b"v".to_vec()).unwrap().unwrap();
                assert!(services.context_delete(&format!("new-{i}")).unwrap());
            }
            // Only the last write of a key is committed.
            services.context_set("k".into(), b"1".to_vec()).unwrap().unwrap();
            services.context_set("k".into(), b"2".to_vec()).unwrap().unwrap();
            let outcome = services.take();
            assert_eq!(outcome.effects.context, vec![("k".to_owned(), Some(b"2".to_vec()))]);
            assert_eq!(outcome.context_reserved, 2);
        }

        async fn a_join_names_each_task_once_and_at_most_max_join(h) {
            let parent = h.submit("echo", Script::Complete(b"p".to_vec())).await;
            h.wait(parent).await;
            let services = h.services(parent);
            let a = services.submit(child("a")).unwrap().unwrap();
            let twice = services.join(vec![a.clone(), a.clone()], child("then")).unwrap().unwrap_err();
            assert!(format!("{twice:?}").contains("appears more than once in the join"), "{twice:?}");
            let many = vec![a; MAX_JOIN + 1];
            let refused = services.join(many, child("then")).unwrap().unwrap_err();
            assert!(format!("{refused:?}").contains("a join may wait for at most 10000 tasks"), "{refused:?}");
        }
    }

    on_both! {
        tweak = |c: &mut crate::engine::EngineConfig| c.max_queues = 2;

        /// A plugin's child is checked like a submission: a delay of about
        /// 10^15 ms, or a queue past the limit, is refused to the plugin.
        async fn a_childs_delay_and_queue_are_checked(h) {
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
    }
}
