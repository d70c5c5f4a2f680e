//! The checked writes of the task table, on either backend: recording a
//! submission (with its idempotency key), applying a transition (the state
//! machine, the expected version, the output, the transcript, the flow
//! effects of a completion) and editing a flow. They read and write
//! through [`Txn`], which the redb store's write transaction
//! ([`Tables`](super::Tables)) and a PostgreSQL transaction implement, so
//! one change does the same to a store of either kind.

use super::retention::{self, flow_group};
use super::{
    Applied, Change, Effects, FlowEdit, FlowLimit, FlowRecord, FlowState, FlowUpdate, IndexWrite, Redo, StoreError,
    Submitted, TaskRecord, TaskState, allowed, encode, moved, now_ms, state_bucket,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use uuid::Uuid;

/// One transaction of a store, as the checked writes see it. Reads see the
/// transaction's own earlier writes; a write is kept (and made at once, or
/// when the transaction commits).
pub(crate) trait Txn {
    /// A task's record, held for the transaction's write of it (a
    /// PostgreSQL row lock).
    async fn task(&mut self, id: Uuid) -> Result<Option<TaskRecord>, StoreError>;
    /// A task's record for a read that decides nothing about writing the
    /// task itself (a flow's tenant, whether its root has ended, the task
    /// a key names), made under a flow's or a key's hold: not held.
    async fn peek_task(&mut self, id: Uuid) -> Result<Option<TaskRecord>, StoreError>;
    /// The task an idempotency key of the API's namespace names (a flow
    /// root's).
    async fn keyed(&mut self, key: &str) -> Result<Option<Uuid>, StoreError>;
    /// The task a key of `flow`'s own namespace names (a task it grew).
    async fn flow_keyed(&mut self, flow: Uuid, key: &str) -> Result<Option<Uuid>, StoreError>;
    /// A flow's record.
    async fn flow(&mut self, id: Uuid) -> Result<Option<FlowRecord>, StoreError>;
    /// The tenant a flow belongs to: its root task's, else its first
    /// task's, else the default tenant.
    async fn flow_tenant(&mut self, flow: Uuid) -> Result<String, StoreError>;
    /// The bytes (keys plus values) of flow `flow`'s context as this
    /// transaction sees it, those of `keys` apart from the others.
    async fn context_bytes(&mut self, flow: Uuid, keys: &BTreeSet<String>) -> Result<ContextBytes, StoreError>;
    /// Makes a write (or keeps it for the commit) and keeps it.
    fn write(&mut self, write: Redo) -> Result<(), StoreError>;
}

/// A flow's context bytes, split by [`Txn::context_bytes`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ContextBytes {
    /// Of the keys asked about.
    pub(crate) these: u64,
    /// Of every other key.
    pub(crate) others: u64,
}

impl ContextBytes {
    /// Counts an entry of `size` bytes, of one of the keys asked about or
    /// not.
    pub(crate) fn add(&mut self, asked: bool, size: u64) {
        if asked {
            self.these += size;
        } else {
            self.others += size;
        }
    }
}

/// The answer of a future that never waits: the checked writes through the
/// redb store's transaction, whose reads all answer at once.
pub(crate) fn at_once<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("a redb transaction's reads never wait"),
    }
}

/// Records a task, or returns the one its idempotency key names: a key of
/// a task submitted from outside (a flow's root) in the API's namespace,
/// a key of a task a flow grew in that flow's own.
pub(crate) async fn apply_submit<T: Txn>(
    t: &mut T,
    mut record: TaskRecord,
    input: Vec<u8>,
    then: Option<Change>,
) -> Result<Submitted, StoreError> {
    // Everything is checked before the first write: a write stays in the
    // batch's transaction even when this operation is refused.
    let mut key_write = None;
    if let Some(key) = &record.idempotency_key {
        let flow = record.flow_id;
        let existing = if record.is_flow_root() { t.keyed(key).await? } else { t.flow_keyed(flow, key).await? };
        if let Some(existing) = existing {
            let found = t.peek_task(existing).await?.ok_or(StoreError::NotFound(existing))?;
            return Ok(Submitted { record: found, created: false });
        }
        key_write = Some(if record.is_flow_root() {
            Redo::Key(key.clone(), record.id.as_u128())
        } else {
            Redo::FlowKey(flow.as_u128(), key.clone(), record.id.as_u128())
        });
    }
    if let Some(change) = then {
        let id = record.id;
        if change.id != id || change.to.is_terminal() {
            return Err(StoreError::Refused(format!(
                "task {id}: a change committed with its submission must be the new task's, to a state that is not final"
            )));
        }
        if change.output.is_some() {
            return Err(StoreError::Refused(format!(
                "task {id}: a change committed with its submission carries no output"
            )));
        }
        super::step(&mut record, change)?;
    }
    if let Some(write) = key_write {
        t.write(write)?;
    }
    t.write(Redo::Task(record.id.as_u128(), encode(&record)))?;
    for write in index_writes(&record) {
        t.write(Redo::Index(write))?;
    }
    t.write(Redo::Input(record.id.as_u128(), input))?;
    if !record.is_flow_root() {
        t.write(Redo::FlowTask(record.flow_id.as_u128(), record.id.as_u128()))?;
    }
    Ok(Submitted { record, created: true })
}

/// Writes a flow's record (stored as `before`), keeping its entry in
/// [`FINISHED`](super::tables::FINISHED) in step: listed while it has
/// ended, under its tenant's flow group.
async fn write_flow<T: Txn>(t: &mut T, before: Option<&FlowRecord>, flow: &FlowRecord) -> Result<(), StoreError> {
    let id = flow.id.as_u128();
    let root = if before.is_none() { t.peek_task(flow.id).await? } else { None };
    if let Some(root) = root.filter(|r| r.state.is_terminal()) {
        // A root that ended alone is its flow's now (a flow of one task
        // cancelled after it ended): it goes with the flow.
        let at = root.finished_at_ms.unwrap_or(root.created_at_ms);
        t.write(Redo::Finished(root.queue, at, id, false))?;
    }
    if let Some(before) = before
        && flow.repeat.is_some()
        && flow.iteration > before.iteration
    {
        // A repeating flow's past iterations are units of their own: one
        // entry for each iteration that ended, as it ends.
        let group = retention::iteration_group(&t.flow_tenant(flow.id).await?);
        t.write(Redo::Finished(group, now_ms(), id, true))?;
    }
    let ended = |f: &FlowRecord| (f.state != FlowState::Running).then(|| f.finished_at_ms.unwrap_or(f.created_at_ms));
    let (was, now) = (before.and_then(ended), ended(flow));
    if was != now {
        let group = flow_group(&t.flow_tenant(flow.id).await?);
        if let Some(at) = was {
            t.write(Redo::Finished(group.clone(), at, id, false))?;
        }
        if let Some(at) = now {
            t.write(Redo::Finished(group, at, id, true))?;
        }
    }
    t.write(Redo::Flow(id, encode(flow)))
}

/// Applies a checked transition to a stored task: its output and
/// transcript, the record, the indexes, the flow effects of a completion
/// and the task's place in retention.
pub(crate) async fn apply_transition<T: Txn>(t: &mut T, change: Change) -> Result<Applied, StoreError> {
    let id = change.id;
    let mut record = t.task(id).await?.ok_or(StoreError::NotFound(id))?;
    allowed(&record, &change)?;
    if let Some(effects) = change.effects.as_deref().filter(|_| change.to == TaskState::Completed) {
        check_bounds(t, effects).await?;
    }
    let from = record.state;
    let ended_at = record.finished_at_ms;
    if let Some(output) = change.output {
        record.output_len = Some(output.len() as u64);
        t.write(Redo::Output(id.as_u128(), output))?;
    }
    if let Some((attempt, log)) = change.log {
        t.write(Redo::Log(id.as_u128(), attempt, log))?;
    }
    moved(&mut record, change.to, change.reason, change.edit);
    t.write(Redo::Task(id.as_u128(), encode(&record)))?;
    if from.is_terminal() && record.callback_url.is_some() {
        // It ends again: its callback is delivered again.
        t.write(Redo::ClearCallback(id.as_u128()))?;
    }
    for write in moved_writes(id, from, change.to) {
        t.write(Redo::Index(write))?;
    }
    let mut applied = Applied { record, created: Vec::new(), effects_applied: true };
    if let Some(effects) = change.effects
        && change.to == TaskState::Completed
    {
        applied.effects_applied = apply_effects(t, *effects, &mut applied.created).await?;
    }
    // A task outside any flow is a unit of retention of its own (once its
    // ending grew children, its flow is the unit).
    let record = &applied.record;
    if (from.is_terminal() || record.state.is_terminal())
        && record.is_flow_root()
        && t.flow(record.flow_id).await?.is_none()
    {
        if from.is_terminal() {
            let at = ended_at.unwrap_or(record.created_at_ms);
            t.write(Redo::Finished(record.queue.clone(), at, id.as_u128(), false))?;
        }
        if let Some(at) = record.finished_at_ms.filter(|_| record.state.is_terminal()) {
            t.write(Redo::Finished(record.queue.clone(), at, id.as_u128(), true))?;
        }
    }
    Ok(applied)
}

/// Refuses effects that would take their flow past one of its bounds (see
/// [`FlowBounds`](super::FlowBounds)) that it did not exceed already,
/// before anything of the operation is written. A cancelled flow's effects
/// are dropped anyway ([`apply_effects`]).
async fn check_bounds<T: Txn>(t: &mut T, effects: &Effects) -> Result<(), StoreError> {
    let Some(bounds) = effects.bounds else { return Ok(()) };
    let flow_id = effects.flow_id;
    let flow = t.flow(flow_id).await?;
    if flow.as_ref().is_some_and(|f| f.state == FlowState::Cancelled) {
        return Ok(());
    }
    let over = |limit, total, bound| StoreError::OverFlowLimit { flow: flow_id, limit, total, bound };
    // The children it creates: a key seen before (stored, or earlier in
    // these effects) creates none, as `apply_effects` does.
    let mut keys = HashSet::new();
    let mut created = 0;
    for (child, _) in &effects.children {
        let new = match &child.idempotency_key {
            None => true,
            Some(key) => keys.insert(key.as_str()) && t.flow_keyed(flow_id, key).await?.is_none(),
        };
        created += u64::from(new);
    }
    // A flow with no record yet is its root alone.
    let tasks = flow.as_ref().map_or(1, |f| f.tasks) + created;
    if created > 0 && tasks > bounds.tasks {
        return Err(over(FlowLimit::Tasks, tasks, bounds.tasks));
    }
    if !effects.context.is_empty() {
        // Each key's last write, and the bytes it leaves.
        let written: BTreeMap<&str, u64> = effects
            .context
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_ref().map_or(0, |v| (key.len() + v.len()) as u64)))
            .collect();
        let keys: BTreeSet<String> = written.keys().map(|k| (*k).to_owned()).collect();
        let stored = t.context_bytes(flow_id, &keys).await?;
        let after = stored.others + written.values().sum::<u64>();
        // A flow over a lowered limit may still shrink.
        if after > bounds.context_bytes && after > stored.others + stored.these {
            return Err(over(FlowLimit::ContextBytes, after, bounds.context_bytes));
        }
    }
    Ok(())
}

/// Commits an attempt's children, context writes and stop request, unless
/// its flow was cancelled meanwhile. Creates the flow record on first use.
async fn apply_effects<T: Txn>(t: &mut T, effects: Effects, created: &mut Vec<TaskRecord>) -> Result<bool, StoreError> {
    let Effects { flow_id, children, context, stop_repeating, bounds: _ } = effects;
    let before = t.flow(flow_id).await?;
    let mut flow = match &before {
        Some(flow) if flow.state == FlowState::Cancelled => return Ok(false),
        Some(flow) => flow.clone(),
        None => FlowRecord::new(flow_id, now_ms()),
    };
    // A keyed child seen before is not created again; later children that
    // join it wait for the existing task instead.
    let mut renamed = std::collections::HashMap::new();
    for (mut child, input) in children {
        for dep in &mut child.after {
            if let Some(existing) = renamed.get(dep) {
                *dep = *existing;
            }
        }
        let submitted = apply_submit(t, child.clone(), input, None).await?;
        if submitted.created {
            flow.tasks += 1;
            created.push(child);
        } else {
            renamed.insert(child.id, submitted.record.id);
        }
    }
    for (key, value) in context {
        t.write(Redo::Context(flow_id.as_u128(), key, value))?;
    }
    flow.stop_requested |= stop_repeating;
    flow.version += 1;
    write_flow(t, before.as_ref(), &flow).await?;
    Ok(true)
}

/// Applies an edit to a flow (declaring it, cancelling it, starting its
/// next iteration) with the tasks the edit submits.
pub(crate) async fn apply_flow<T: Txn>(
    t: &mut T,
    id: Uuid,
    edit: FlowEdit,
) -> Result<(FlowRecord, Vec<TaskRecord>), StoreError> {
    let stored = t.flow(id).await?;
    let FlowUpdate { mut flow, tasks } = edit(stored.clone())?;
    let mut created = Vec::new();
    for (task, input) in tasks {
        if apply_submit(t, task.clone(), input, None).await?.created {
            created.push(task);
        }
    }
    flow.version += 1;
    write_flow(t, stored.as_ref(), &flow).await?;
    Ok((flow, created))
}

/// The index entries of a new task.
pub(crate) fn index_writes(r: &TaskRecord) -> Vec<IndexWrite> {
    let id = r.id.as_u128();
    let mut writes = vec![
        IndexWrite::State { bucket: state_bucket(r.state), id, present: true },
        IndexWrite::Queue(r.queue.clone(), id),
        IndexWrite::Plugin(r.plugin.clone(), id),
    ];
    // A flow's root (a task submitted from outside, its id the flow's)
    // is found by its id; only the tasks it grew are indexed.
    if !r.is_flow_root() {
        writes.push(IndexWrite::Iteration(r.flow_id.as_u128(), r.iteration, id));
    }
    writes
}

/// The index changes of a task moving between states.
fn moved_writes(id: Uuid, from: TaskState, to: TaskState) -> Vec<IndexWrite> {
    let (from, to) = (state_bucket(from), state_bucket(to));
    if from == to {
        return Vec::new();
    }
    vec![
        IndexWrite::State { bucket: from, id: id.as_u128(), present: false },
        IndexWrite::State { bucket: to, id: id.as_u128(), present: true },
    ]
}
