//! The durable task store: one redb file. Every change goes through the
//! group committer, one thread that batches concurrent operations into one
//! write transaction, checks each on its own (state + version), commits
//! once with fsync, and only then answers each caller. Nothing is
//! acknowledged before its commit; a refused operation writes nothing and
//! never fails its neighbours. A commit the disk refuses is held and
//! retried until it succeeds (see `commit.rs`); opening verifies the file
//! (see `open.rs`); `check.rs` checks and repairs a file offline.

mod access;
mod apply;
mod backend;
pub mod check;
mod commit;
mod db;
mod deliveries;
mod error;
mod events;
mod gate;
mod machine;
mod open;
pub mod postgres;
mod record;
mod retention;
mod tables;

pub use access::{AUDIT_KEEP, AuditEntry, StoredToken, TenantQuotas, TenantRecord};
pub use commit::WriteFault;
pub use db::{Db, PgDb, Serving};
pub use deliveries::CallbackOutcome;
pub use error::{FlowLimit, StoreError};
#[cfg(test)]
pub(crate) use events::Feed;
pub use events::{EVENTS_BUFFER, EVENTS_KEPT, Rendered, Subscription, TaskEvent};
pub(crate) use open::{panic_message, quietly};
pub(crate) use record::TaskSummary;
pub(crate) use record::now_ms;
pub use record::{
    FlowRecord, FlowState, InputFrom, PluginEntry, PluginVersion, QueueConfig, Repeat, RepeatKind, StoredFailure,
    StoredLimits, TaskRecord, TaskState, Transition,
};
pub use retention::{Removed, Retention, is_flow_group};

use apply::index_writes;
use commit::{Shared, Source};
use record::{decode, encode};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use std::path::Path;
use std::sync::Arc;
use tables::*;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The store's file name in the data directory.
pub const FILE_NAME: &str = "taskhost.redb";

/// Most operations one group commit takes.
const MAX_BATCH: usize = 2048;

/// Operations waiting for the committer at most. Internal writes (starts,
/// outcomes, flows) wait for room; a submission finding it full is refused
/// with [`StoreError::Busy`], which the API answers with 503 and
/// `Retry-After`, so a flood of submissions never grows memory.
pub const QUEUE_CAPACITY: usize = 16_384;

/// An edit applied to a record inside its transition.
pub(crate) type Edit = Box<dyn FnOnce(&mut TaskRecord) + Send>;

/// A checked state change.
pub(crate) struct Change {
    pub(crate) id: Uuid,
    pub(crate) to: TaskState,
    /// Refuse unless the record still has this version.
    pub(crate) expected_version: Option<u64>,
    pub(crate) reason: String,
    /// Output bytes to store with a completion.
    pub(crate) output: Option<Vec<u8>>,
    pub(crate) edit: Option<Edit>,
    /// What the attempt did to its flow, committed only with a completion.
    pub(crate) effects: Option<Box<Effects>>,
    /// The ending attempt's transcript (its number and postcard bytes).
    pub(crate) log: Option<(u32, Vec<u8>)>,
}

/// What one attempt did to its flow (children, context writes, a stop
/// request), held until the attempt ends and committed in the same
/// transaction as its completion, or dropped with any other outcome.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub(crate) flow_id: Uuid,
    /// New tasks with their inputs, in submission order.
    pub(crate) children: Vec<(TaskRecord, Vec<u8>)>,
    /// Context writes in order (`None` deletes).
    pub(crate) context: Vec<(String, Option<Vec<u8>>)>,
    pub(crate) stop_repeating: bool,
    /// The flow limits the attempt reserved its children and context
    /// bytes against, checked again as they commit (see [`FlowBounds`]).
    pub(crate) bounds: Option<FlowBounds>,
}

/// The flow limits an attempt's effects must stay within once committed.
///
/// On one host the engine's flow book reserves exactly, so a commit never
/// crosses them; hosts serving one PostgreSQL database together each
/// reserve against the stored totals plus their own reservations, so two
/// hosts' attempts of one flow may each fit alone and not together. The
/// commit checks again, under the flow's lock, and refuses effects that
/// would take the flow past a bound it did not already exceed
/// ([`StoreError::OverFlowLimit`]), writing nothing of the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowBounds {
    /// Tasks the flow may have in all (its root counted).
    pub(crate) tasks: u64,
    /// Bytes of keys plus values its context may hold.
    pub(crate) context_bytes: u64,
}

impl Effects {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.context.is_empty() && !self.stop_repeating
    }
}

/// A transition as committed, with the children it created.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) record: TaskRecord,
    /// Children created (a keyed child seen before is not created again).
    pub(crate) created: Vec<TaskRecord>,
    /// False when the flow was cancelled and the effects were dropped.
    pub(crate) effects_applied: bool,
}

/// A checked change to one flow: given the stored record (if any), returns
/// the new record and tasks to create with it, or refuses.
pub(crate) type FlowEdit = Box<dyn FnOnce(Option<FlowRecord>) -> Result<FlowUpdate, StoreError> + Send>;

/// What a [`FlowEdit`] writes.
pub(crate) struct FlowUpdate {
    pub(crate) flow: FlowRecord,
    pub(crate) tasks: Vec<(TaskRecord, Vec<u8>)>,
}

impl Change {
    pub(crate) fn new(id: Uuid, to: TaskState, reason: impl Into<String>) -> Self {
        Self {
            id,
            to,
            expected_version: None,
            reason: reason.into(),
            output: None,
            edit: None,
            effects: None,
            log: None,
        }
    }

    pub(crate) fn effects(mut self, effects: Effects) -> Self {
        if !effects.is_empty() {
            self.effects = Some(Box::new(effects));
        }
        self
    }

    pub(crate) fn expect_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }

    /// Adds an edit of the record, applied after any edit added before.
    pub(crate) fn edit(mut self, edit: impl FnOnce(&mut TaskRecord) + Send + 'static) -> Self {
        self.edit = Some(match self.edit.take() {
            Some(first) => Box::new(move |r: &mut TaskRecord| {
                first(r);
                edit(r);
            }),
            None => Box::new(edit),
        });
        self
    }

    pub(crate) fn output(mut self, output: Vec<u8>) -> Self {
        self.output = Some(output);
        self
    }

    /// Records attempt `attempt`'s transcript with the transition (an
    /// empty one is not written).
    pub(crate) fn log(mut self, attempt: u32, log: &crate::sandbox::AttemptLog) -> Self {
        if !log.is_empty() {
            self.log = Some((attempt, encode(log)));
        }
        self
    }
}

/// The claim of a queued task (version `version`): running, its attempt
/// counted, durable before anything runs.
pub(crate) fn start(id: Uuid, version: u64) -> Change {
    Change::new(id, TaskState::Running, "started").expect_version(version).edit(|r| {
        r.attempts += 1;
        r.started_at_ms = Some(now_ms());
    })
}

/// What becomes of a task whose attempt was cut short by `lost` (its
/// host stopped, or lost its lease): back to pending, its attempt counted
/// when it started, or failed once out of attempts.
pub(crate) fn interrupted(record: &TaskRecord, lost: &str) -> Change {
    let (to, reason) = if record.attempts >= record.max_attempts {
        (TaskState::Failed, format!("{lost} during the last attempt; attempts exhausted"))
    } else {
        (TaskState::Pending, format!("recovered: {lost} while the task was running"))
    };
    let message = reason.clone();
    Change::new(record.id, to, reason).expect_version(record.version).edit(move |r| {
        if to == TaskState::Failed {
            r.error = Some(StoredFailure {
                class: crate::FailureClass::HostError,
                retryable: false,
                message,
                backtrace: None,
            });
        }
    })
}

/// The result of a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The task (the existing one when the idempotency key was seen).
    pub record: TaskRecord,
    /// False when an earlier task with the same idempotency key was returned.
    pub created: bool,
}

type AdminWrite = Box<dyn FnOnce(&WriteTransaction) -> Result<(), StoreError> + Send>;

enum Op {
    Submit {
        record: Box<TaskRecord>,
        input: Vec<u8>,
        /// A change applied to the new record before it is written (its
        /// start, when it is claimed in its submission's commit).
        then: Option<Change>,
        reply: oneshot::Sender<Result<Submitted, StoreError>>,
    },
    Transition {
        change: Change,
        reply: oneshot::Sender<Result<Applied, StoreError>>,
    },
    Flow {
        id: Uuid,
        edit: FlowEdit,
        reply: oneshot::Sender<Result<(FlowRecord, Vec<TaskRecord>), StoreError>>,
    },
    /// Rare administrative writes (plugins, queues), committed on their own.
    Admin {
        write: AdminWrite,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Op {
    /// Payload bytes the operation writes (about), for sizing batches.
    fn bytes(&self) -> usize {
        const OVERHEAD: usize = 512;
        OVERHEAD
            + match self {
                Op::Submit { input, .. } => input.len(),
                Op::Transition { change, .. } => {
                    change.output.as_ref().map_or(0, Vec::len)
                        + change.log.as_ref().map_or(0, |(_, log)| log.len())
                        + change.effects.as_ref().map_or(0, |e| {
                            e.children.iter().map(|(_, input)| input.len() + OVERHEAD).sum::<usize>()
                                + e.context.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum::<usize>()
                        })
                }
                Op::Flow { .. } | Op::Admin { .. } => 0,
            }
    }
}

/// Handle to the store; cheap to clone. When the last handle drops, the
/// committer finishes what it holds and the file is closed.
#[derive(Clone)]
pub struct Store {
    // Declared first so it drops (joining the committer) before the file.
    committer: Arc<Committer>,
    shared: Arc<Shared>,
    /// Reads of a task record left to fail on purpose (tests only set it).
    read_faults: Arc<std::sync::atomic::AtomicU32>,
}

struct Committer {
    ops: Option<mpsc::Sender<Op>>,
    capacity: usize,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        // A held batch is answered with its error rather than waited for.
        self.shared.stop();
        // Closing the channel ends the committer loop once it drained.
        self.ops.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store at `path`. With `group_commit` off,
    /// every operation gets its own transaction (for comparison only).
    pub fn open(path: &Path, group_commit: bool) -> Result<Store, StoreError> {
        Self::open_with(path, group_commit, QUEUE_CAPACITY)
    }

    /// [`Store::open`] with a committer queue of `capacity` operations.
    ///
    /// Only a missing file starts a new store; an existing one is verified
    /// first and refused with [`StoreError::Damaged`] (naming it) when it is
    /// damaged, empty or not a taskhost store, never replaced.
    pub fn open_with(path: &Path, group_commit: bool, capacity: usize) -> Result<Store, StoreError> {
        let store = Self::open_unchecked(path, group_commit, capacity)?;
        store.checked()?;
        Ok(store)
    }

    /// [`Store::open`], returning before an existing file's integrity
    /// check (about a second per GB) ended, so the caller reads while it
    /// runs: nothing is written to the file before the check passed, and
    /// [`Store::checked`] tells whether what was read can be trusted.
    pub fn open_checking(path: &Path, group_commit: bool) -> Result<Store, StoreError> {
        Self::open_unchecked(path, group_commit, QUEUE_CAPACITY)
    }

    fn open_unchecked(path: &Path, group_commit: bool, capacity: usize) -> Result<Store, StoreError> {
        let (db, opened) = open::open_file(path, |db| prepare(db, path, true))?;
        let (db, gate) = match opened {
            open::Opened::Created => {
                prepare(&db, path, false)?;
                (db, None)
            }
            // Today's layout: nothing to write before the check.
            open::Opened::Existing(gate) if prepared(&db) => (db, Some(gate)),
            open::Opened::Existing(gate) => {
                // An older layout (or an unreadable one): checked before
                // anything reads or migrates it, as the check on open did.
                // The gated handle's close commits to memory only, and may
                // read what is damaged: quietly.
                drop(open::quietly(move || drop(db)));
                drop(gate);
                let db = open::verified(path)?;
                prepare(&db, path, false)?;
                (db, None)
            }
        };
        Self::start(Source::File(path.to_owned()), db, group_commit, capacity, gate)
    }

    /// The store file's path.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        self.shared.path()
    }

    /// Waits for the integrity check of a store opened with
    /// [`Store::open_checking`] (at once for any other): `Ok` once the
    /// file verified, [`StoreError::Damaged`] if it did not. Blocks: call
    /// it off the async workers.
    pub fn checked(&self) -> Result<(), StoreError> {
        self.shared.checked()
    }

    /// Whether the integrity check of a store opened with
    /// [`Store::open_checking`] ended and failed (a reader may stop).
    pub(crate) fn check_failed(&self) -> bool {
        self.shared.check_failed()
    }

    /// A store whose file's writes fail with ENOSPC while `full` is set.
    #[cfg(test)]
    pub(crate) fn open_faulty(
        path: &Path,
        full: Arc<std::sync::atomic::AtomicBool>,
        capacity: usize,
    ) -> Result<Store, StoreError> {
        drop(open::open_file(path, |db| prepare(db, path, true))?);
        let backend = backend::Faulty::open(path, full.clone()).map_err(|e| open::open_error(path, e))?;
        let db = redb::Builder::new().create_with_backend(backend).map_err(|e| open::open_error(path, e))?;
        Self::start(Source::Faulty(path.to_owned(), full), db, true, capacity, None)
    }

    /// Starts the committer on `db`; behind a `gate`, it first checks the
    /// file and writes nothing before that passed.
    fn start(
        source: Source,
        db: Database,
        group_commit: bool,
        capacity: usize,
        gate: Option<Arc<gate::Gate>>,
    ) -> Result<Store, StoreError> {
        let shared = Arc::new(Shared::new(source, db, gate));
        let capacity = capacity.max(1);
        let (tx, mut rx) = mpsc::channel(capacity);
        let committer_shared = shared.clone();
        let batch = if group_commit { MAX_BATCH } else { 1 };
        let thread = std::thread::Builder::new()
            .name("taskhost-commit".into())
            .spawn(move || commit::run(&committer_shared, &mut rx, batch))
            .map_err(|e| StoreError::CommitFailed(format!("cannot start the committer thread: {e}")))?;
        Ok(Store {
            committer: Arc::new(Committer { ops: Some(tx), capacity, thread: Some(thread), shared: shared.clone() }),
            shared,
            read_faults: Arc::default(),
        })
    }

    /// Subscribes to the committed transitions after event `seq` of host
    /// run `run` (only what comes next when `None`); see [`Subscription`].
    pub fn subscribe(&self, resume: Option<(u64, u64)>) -> Subscription {
        self.shared.feed.subscribe(resume)
    }

    /// Why writes fail now (a full disk), while they do: submissions are
    /// refused with [`StoreError::Unwritable`] and the failed commit is
    /// retried until it succeeds.
    pub fn write_fault(&self) -> Option<WriteFault> {
        self.shared.write_fault()
    }

    /// At shutdown: writes held by a write fault (and later failing ones)
    /// are answered with their error instead of waiting for the disk; a
    /// task whose outcome was not recorded is recovered on the next start.
    pub(crate) fn stop_retrying(&self) {
        self.shared.stop();
    }

    /// The open database.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.shared.db()
    }

    /// Durably records a new task, or returns the existing one with the
    /// same idempotency key.
    /// Refused with [`StoreError::Busy`] when the committer's queue is
    /// full, and with [`StoreError::Unwritable`] while writes fail.
    pub(crate) async fn submit(&self, record: TaskRecord, input: Vec<u8>) -> Result<Submitted, StoreError> {
        self.submit_op(record, input, None).await
    }

    /// Like [`submit`](Self::submit), committing the new task already
    /// moved by `then` (its claim: pending → running), so it starts after
    /// one commit instead of two. Only `then`'s state, reason, edit and
    /// expected version apply: a change of another task, to a final state,
    /// or carrying an output, a log or effects is refused, and a refused
    /// submission writes nothing. A task found by its idempotency key is
    /// returned unchanged (`created` false) and `then` is not applied.
    pub(crate) async fn submit_then(
        &self,
        record: TaskRecord,
        input: Vec<u8>,
        then: Change,
    ) -> Result<Submitted, StoreError> {
        self.submit_op(record, input, Some(then)).await
    }

    async fn submit_op(
        &self,
        record: TaskRecord,
        input: Vec<u8>,
        then: Option<Change>,
    ) -> Result<Submitted, StoreError> {
        self.shared.check_writable()?;
        let (reply, rx) = oneshot::channel();
        let ops = self.committer.ops.as_ref().ok_or(StoreError::Closed)?;
        ops.try_send(Op::Submit { record: Box::new(record), input, then, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy { capacity: self.committer.capacity },
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Durably applies a checked transition and returns the new record.
    #[cfg(test)]
    pub(crate) async fn transition(&self, change: Change) -> Result<TaskRecord, StoreError> {
        Ok(self.apply(change).await?.record)
    }

    /// Like [`transition`](Self::transition), also reporting the children
    /// its effects created.
    pub(crate) async fn apply(&self, change: Change) -> Result<Applied, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Transition { change, reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Durably applies a checked change to a flow, creating the tasks it
    /// returns in the same transaction.
    pub(crate) async fn flow_change(
        &self,
        id: Uuid,
        edit: impl FnOnce(Option<FlowRecord>) -> Result<FlowUpdate, StoreError> + Send + 'static,
    ) -> Result<(FlowRecord, Vec<TaskRecord>), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Flow { id, edit: Box::new(edit), reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// One flow's record.
    pub fn flow(&self, id: Uuid) -> Result<Option<FlowRecord>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(FLOWS)?;
        table.get(id.as_u128())?.map(|v| decode(v.value())).transpose()
    }

    /// Every flow record.
    pub fn flows(&self) -> Result<Vec<FlowRecord>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(FLOWS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    /// Flows newest first, from before `before` (exclusive), each with its
    /// first task (its root, or its first declared step), while `keep`
    /// takes them: at most `limit` taken, reading at most `scan` flows.
    /// The id to go on from, when more may follow.
    pub fn flows_newest(
        &self,
        before: Option<Uuid>,
        limit: usize,
        scan: usize,
        keep: impl Fn(&FlowRecord, Option<&TaskRecord>) -> bool,
    ) -> Result<FlowsPage, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let flows = txn.open_table(FLOWS)?;
        let tasks = txn.open_table(TASKS)?;
        let index = txn.open_table(FLOW_TASKS)?;
        let mut range = match before {
            Some(before) => flows.range(..before.as_u128())?,
            None => flows.range::<u128>(..)?,
        };
        let (mut out, mut scanned) = (Vec::new(), 0);
        while let Some(entry) = range.next_back() {
            let (id, value) = entry?;
            let flow: FlowRecord = decode(value.value())?;
            scanned += 1;
            // Its root task (a flow grown by a task's children), else its
            // first declared step; each read once.
            let first = match tasks.get(id.value())? {
                Some(root) => Some(decode::<TaskRecord>(root.value())?),
                None => match index.range((id.value(), 0u128)..=(id.value(), u128::MAX))?.next().transpose()? {
                    Some((key, _)) => tasks.get(key.value().1)?.map(|v| decode::<TaskRecord>(v.value())).transpose()?,
                    None => None,
                },
            };
            if keep(&flow, first.as_ref()) {
                out.push((flow, first));
            }
            if out.len() >= limit || scanned >= scan {
                // More may follow this one.
                let more = range.next_back().is_some();
                let last = Uuid::from_u128(id.value());
                return Ok((out, more.then_some(last)));
            }
        }
        Ok((out, None))
    }

    /// Every task of a flow, in submission order (a root task submitted
    /// from outside first).
    pub fn flow_tasks(&self, flow: Uuid) -> Result<Vec<TaskRecord>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let tasks = txn.open_table(TASKS)?;
        let index = txn.open_table(FLOW_TASKS)?;
        let mut out = Vec::new();
        if let Some(root) = tasks.get(flow.as_u128())? {
            out.push(decode::<TaskRecord>(root.value())?);
        }
        for entry in index.range((flow.as_u128(), 0u128)..=(flow.as_u128(), u128::MAX))? {
            let (key, _) = entry?;
            if let Some(task) = tasks.get(key.value().1)? {
                out.push(decode(task.value())?);
            }
        }
        Ok(out)
    }

    /// A flow's context value.
    pub fn context_get(&self, flow: Uuid, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(CONTEXT)?;
        Ok(table.get((flow.as_u128(), key))?.map(|v| v.value().to_vec()))
    }

    /// A flow's context keys starting with `prefix`, in order.
    pub fn context_keys(&self, flow: Uuid, prefix: &str) -> Result<Vec<String>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(CONTEXT)?;
        let mut out = Vec::new();
        for entry in table.range((flow.as_u128(), prefix)..)? {
            let (key, _) = entry?;
            let (f, k) = key.value();
            if f != flow.as_u128() || !k.starts_with(prefix) {
                break;
            }
            out.push(k.to_owned());
        }
        Ok(out)
    }

    /// Bytes (keys plus values) of every flow's context.
    pub(crate) fn context_sizes(&self) -> Result<std::collections::HashMap<Uuid, u64>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(CONTEXT)?;
        let mut out = std::collections::HashMap::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (flow, k) = key.value();
            *out.entry(Uuid::from_u128(flow)).or_default() += (k.len() + value.value().len()) as u64;
        }
        Ok(out)
    }

    /// Bytes (keys plus values) of one flow's context.
    pub(crate) fn context_sizes_of(&self, flow: Uuid) -> Result<u64, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(CONTEXT)?;
        let mut size = 0;
        for entry in table.range((flow.as_u128(), "")..)? {
            let (key, value) = entry?;
            let (f, k) = key.value();
            if f != flow.as_u128() {
                break;
            }
            size += (k.len() + value.value().len()) as u64;
        }
        Ok(size)
    }

    /// The task a client's idempotency key names (the API's namespace).
    pub(crate) fn task_by_key(&self, key: &str) -> Result<Option<Uuid>, StoreError> {
        self.injected("an idempotency key")?;
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(IDEMPOTENCY)?;
        Ok(table.get(key)?.map(|v| Uuid::from_u128(v.value())))
    }

    /// The task of `flow` that a child's idempotency key names (flows'
    /// keys live apart from the API's).
    pub(crate) fn child_by_key(&self, flow: Uuid, key: &str) -> Result<Option<Uuid>, StoreError> {
        self.injected("an idempotency key")?;
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(FLOW_KEYS)?;
        Ok(table.get((flow.as_u128(), key))?.map(|v| Uuid::from_u128(v.value())))
    }

    /// Runs an administrative write in its own transaction.
    pub(crate) async fn admin(
        &self,
        write: impl FnOnce(&WriteTransaction) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Admin { write: Box::new(write), reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues an operation, waiting (without blocking a thread) while the
    /// committer's queue is full.
    async fn send(&self, op: Op) -> Result<(), StoreError> {
        let ops = self.committer.ops.as_ref().ok_or(StoreError::Closed)?;
        ops.send(op).await.map_err(|_| StoreError::Closed)
    }

    /// Operations waiting for the committer now.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.committer.ops.as_ref().map_or(0, |ops| ops.max_capacity() - ops.capacity())
    }

    /// Makes the next `n` task reads fail, to test how callers handle a
    /// failed read.
    #[cfg(test)]
    pub(crate) fn fail_next_reads(&self, n: u32) {
        self.read_faults.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Fails this read if tests asked for it.
    fn injected(&self, what: &str) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self.read_faults.load(Ordering::Relaxed) > 0
            && self.read_faults.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
        {
            return Err(StoreError::Corrupt(format!("injected failure reading {what}")));
        }
        Ok(())
    }

    /// Reads one task.
    pub fn get(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        self.injected("a task")?;
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        table.get(id.as_u128())?.map(|v| decode(v.value())).transpose()
    }

    /// A task's input bytes.
    pub fn input(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(INPUTS)?;
        Ok(table.get(id.as_u128())?.map(|v| v.value().to_vec()))
    }

    /// A completed task's output bytes.
    pub fn output(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(OUTPUTS)?;
        Ok(table.get(id.as_u128())?.map(|v| v.value().to_vec()))
    }

    /// Attempt `attempt`'s transcript of task `id`, if it wrote one.
    pub fn attempt_log(&self, id: Uuid, attempt: u32) -> Result<Option<crate::sandbox::AttemptLog>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        table.get((id.as_u128(), attempt))?.map(|v| decode(v.value())).transpose()
    }

    /// Visits tasks in id (submission) order, starting after `after`,
    /// until `visit` returns false.
    pub fn scan(&self, after: Option<Uuid>, mut visit: impl FnMut(TaskRecord) -> bool) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        let range = match after {
            Some(id) => table.range(id.as_u128().saturating_add(1)..)?,
            None => table.range(0u128..)?,
        };
        for entry in range {
            let (_, value) = entry?;
            if !visit(decode(value.value())?) {
                break;
            }
        }
        Ok(())
    }

    /// Visits every task in id order: its leading fields (not decoding the
    /// rest: see [`TaskSummary`]), the bytes its attempts' transcripts take
    /// in the store (0 for one that wrote none; the two tables are walked
    /// together, both in task order), and its encoded record, for
    /// [`decode_record`] where the whole is needed.
    pub(crate) fn scan_summaries(
        &self,
        mut visit: impl FnMut(TaskSummary<'_>, u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let tasks = txn.open_table(TASKS)?;
        let logs = txn.open_table(LOGS)?;
        let mut logs = logs.range((0u128, 0u32)..)?.peekable();
        for entry in tasks.range(0u128..)? {
            let (key, value) = entry?;
            let id = key.value();
            let mut bytes = 0u64;
            loop {
                match logs.peek() {
                    None => break,
                    Some(Ok((key, _))) if key.value().0 > id => break,
                    // A transcript's entry, or an error `next` gives.
                    Some(_) => {}
                }
                let Some(entry) = logs.next() else { break };
                let (key, value) = entry?;
                if key.value().0 == id {
                    bytes += value.value().len() as u64;
                }
            }
            let encoded = value.value();
            visit(TaskSummary::of(encoded)?, bytes, encoded)?;
        }
        Ok(())
    }

    /// A page of the tasks `query` matches, in submission order after
    /// `after`, and whether more follow. See [`Store::list_page`].
    pub fn list(
        &self,
        query: &TaskQuery,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<TaskRecord>, bool), StoreError> {
        let listed = self.list_page(query, &Listing { after, limit, newest_first: false, count_up_to: 0 })?;
        Ok((listed.tasks, listed.more > 0))
    }

    /// A page of the tasks `query` matches, oldest or newest first, past
    /// the cursor `after` (the last task of the page before), and how many
    /// more match (counted up to `count_up_to`, at least 1 when any does).
    /// It walks the index of the most selective filter it has (state, then
    /// queue, then plugin), so a listing costs what it returns and counts,
    /// not what is stored.
    pub fn list_page(&self, query: &TaskQuery, listing: &Listing) -> Result<Listed, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let tasks = txn.open_table(TASKS)?;
        let (low, high) = match (listing.after, listing.newest_first) {
            (None, _) => (0, u128::MAX),
            (Some(id), false) => (id.as_u128().saturating_add(1), u128::MAX),
            (Some(id), true) => (0, id.as_u128().saturating_sub(1)),
        };
        let count_up_to = listing.count_up_to.max(1);
        let mut listed = Listed::default();
        let mut keep = |record: TaskRecord| -> bool {
            if !query.matches(&record) {
                return true;
            }
            if listed.tasks.len() < listing.limit {
                listed.tasks.push(record);
                return true;
            }
            listed.more += 1;
            listed.more < count_up_to
        };
        // Through an index: each id's record is read from the task table.
        let mut visit = |id: u128| -> Result<bool, StoreError> {
            match tasks.get(id)? {
                Some(value) => Ok(keep(decode(value.value())?)),
                None => Ok(true),
            }
        };
        let newest_first = listing.newest_first;
        if let Some(state) = query.state {
            let index = txn.open_table(BY_STATE)?;
            let bucket = state_bucket(state);
            walk(index.range((bucket, low)..=(bucket, high))?, newest_first, |k| k.1, &mut visit)?;
        } else if let Some(queue) = query.queue.as_deref() {
            let index = txn.open_table(BY_QUEUE)?;
            walk(index.range((queue, low)..=(queue, high))?, newest_first, |k| k.1, &mut visit)?;
        } else if let Some(plugin) = query.plugin.as_deref() {
            let index = txn.open_table(BY_PLUGIN)?;
            walk(index.range((plugin, low)..=(plugin, high))?, newest_first, |k| k.1, &mut visit)?;
        } else {
            either_way(tasks.range(low..=high)?, newest_first, |entry| Ok(keep(decode(entry?.1.value())?)))?;
        }
        Ok(listed)
    }

    /// A plugin's tasks counted by (version, state), read through the
    /// plugin index.
    pub fn plugin_task_counts(
        &self,
        plugin: &str,
    ) -> Result<std::collections::HashMap<(String, TaskState), u64>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let tasks = txn.open_table(TASKS)?;
        let index = txn.open_table(BY_PLUGIN)?;
        let mut counts = std::collections::HashMap::new();
        for entry in index.range((plugin, 0u128)..=(plugin, u128::MAX))? {
            if let Some(value) = tasks.get(entry?.0.value().1)? {
                let r: TaskRecord = decode(value.value())?;
                *counts.entry((r.plugin_version, r.state)).or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// The tasks of one iteration of a flow (its root included), in
    /// submission order.
    pub fn iteration_tasks(&self, flow: Uuid, iteration: u32) -> Result<Vec<TaskRecord>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let tasks = txn.open_table(TASKS)?;
        let index = txn.open_table(BY_ITERATION)?;
        let (f, i) = (flow.as_u128(), iteration);
        let mut out = Vec::new();
        if iteration == 0
            && let Some(value) = tasks.get(f)?
        {
            let root: TaskRecord = decode(value.value())?;
            if root.is_flow_root() {
                out.push(root);
            }
        }
        for entry in index.range((f, i, 0u128)..=(f, i, u128::MAX))? {
            if let Some(value) = tasks.get(entry?.0.value().2)? {
                out.push(decode(value.value())?);
            }
        }
        Ok(out)
    }

    /// Number of tasks stored.
    pub fn task_count(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        Ok(txn.open_table(TASKS)?.len()?)
    }

    /// Every plugin entry.
    pub fn plugins(&self) -> Result<Vec<(String, PluginEntry)>, StoreError> {
        self.read_named(PLUGINS)
    }

    /// Every record of a name-keyed table, decoded.
    fn read_named<T: for<'de> serde::Deserialize<'de> + 'static>(
        &self,
        definition: redb::TableDefinition<'_, &str, &[u8]>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(definition)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, value) = entry?;
            out.push((name.value().to_owned(), decode(value.value())?));
        }
        Ok(out)
    }

    /// A stored component by digest.
    pub fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        Ok(table.get(digest)?.map(|v| v.value().to_vec()))
    }

    /// Adds a plugin version and its blob (deduplicated by digest), and
    /// records the hash of its freshly cached artifact, in one commit.
    pub(crate) async fn put_plugin_version(
        &self,
        name: String,
        version: PluginVersion,
        bytes: Vec<u8>,
        cached_artifact: Option<(String, String)>,
    ) -> Result<(), StoreError> {
        self.admin(move |txn| {
            if let Some((key, hash)) = &cached_artifact {
                txn.open_table(CACHE)?.insert(key.as_str(), hash.as_str())?;
            }
            let mut plugins = txn.open_table(PLUGINS)?;
            let mut entry: PluginEntry =
                plugins.get(name.as_str())?.map(|v| decode(v.value())).transpose()?.unwrap_or_default();
            let mut blobs = txn.open_table(BLOBS)?;
            if blobs.get(version.digest.as_str())?.is_none() {
                blobs.insert(version.digest.as_str(), bytes.as_slice())?;
            }
            entry.versions.push(version);
            plugins.insert(name.as_str(), encode(&entry).as_slice())?;
            Ok(())
        })
        .await
    }

    /// Changes a plugin's entry (creating it if needed) in its own
    /// transaction. `edit` returns digests whose blobs may now be unused.
    pub(crate) async fn edit_plugin(
        &self,
        name: String,
        edit: impl FnOnce(&mut PluginEntry) -> Vec<String> + Send + 'static,
    ) -> Result<(), StoreError> {
        self.admin(move |txn| {
            let mut plugins = txn.open_table(PLUGINS)?;
            let mut entry: PluginEntry =
                plugins.get(name.as_str())?.map(|v| decode(v.value())).transpose()?.unwrap_or_default();
            let dropped = edit(&mut entry);
            plugins.insert(name.as_str(), encode(&entry).as_slice())?;
            // Delete blobs no version of any plugin references any more.
            let mut referenced = std::collections::HashSet::new();
            for item in plugins.iter()? {
                let (_, value) = item?;
                let other: PluginEntry = decode(value.value())?;
                referenced.extend(other.versions.into_iter().map(|v| v.digest));
            }
            let mut blobs = txn.open_table(BLOBS)?;
            for digest in dropped {
                if !referenced.contains(&digest) {
                    blobs.remove(digest.as_str())?;
                }
            }
            Ok(())
        })
        .await
    }

    /// The recorded sha256 of a cached artifact.
    pub fn cache_hash(&self, key: &str) -> Result<Option<String>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(CACHE)?;
        Ok(table.get(key)?.map(|v| v.value().to_owned()))
    }

    /// Records the sha256 of an artifact the host just wrote.
    pub(crate) async fn set_cache_hash(&self, key: String, hash: String) -> Result<(), StoreError> {
        self.admin(move |txn| {
            txn.open_table(CACHE)?.insert(key.as_str(), hash.as_str())?;
            Ok(())
        })
        .await
    }

    /// Every configured queue.
    pub fn queues(&self) -> Result<Vec<(String, QueueConfig)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(QUEUES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, value) = entry?;
            out.push((name.value().to_owned(), record::decode_queue(value.value())?));
        }
        Ok(out)
    }

    /// Stores a queue's settings.
    pub(crate) async fn set_queue(&self, name: String, config: QueueConfig) -> Result<(), StoreError> {
        self.admin(move |txn| {
            txn.open_table(QUEUES)?.insert(name.as_str(), encode(&config).as_slice())?;
            Ok(())
        })
        .await
    }
}

type Table<'t, K, V> = redb::Table<'t, K, V>;

/// A task record from its stored bytes (as [`Store::scan_summaries`]
/// gives them).
pub(crate) fn decode_record(bytes: &[u8]) -> Result<TaskRecord, StoreError> {
    decode(bytes)
}

/// Whether `db` needs no write to open: today's schema, its one-time
/// migrations done and every table there. A file that can't be read says
/// no (and is then checked before anything else reads it).
fn prepared(db: &Database) -> bool {
    let read = || -> Result<bool, StoreError> {
        let txn = db.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let current = meta.get("schema")?.map(|v| v.value()) == Some(SCHEMA_VERSION)
            && meta.get(FLOW_KEYS_MOVED)?.is_some()
            && meta.get(FINISHED_BUILT)?.is_some();
        Ok(current && tables::all_exist(&txn)?)
    };
    matches!(open::quietly(read), Ok(Ok(true)))
}

/// Opens (creating, checking or migrating) the store's schema; with
/// `created` false a file without one is refused, never initialised.
fn prepare(db: &Database, path: &Path, created: bool) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let found = meta.get("schema")?.map(|v| v.value());
        match found {
            None if created => {
                meta.insert("schema", SCHEMA_VERSION)?;
            }
            None => return Err(open::damaged(path, "holds no taskhost store (it has no schema record)")),
            Some(v) if v == SCHEMA_VERSION => {}
            // Version 6 added a variant no version-5 record holds; version
            // 7 records end with a trace and a transcript cap. Both older
            // layouts are read as they are (see `record::decode`).
            Some(LAYOUT_SINCE..SCHEMA_VERSION) => {
                meta.insert("schema", SCHEMA_VERSION)?;
            }
            Some(2) => {
                migrate::<record::TaskRecordV2>(&txn)?;
                index_all(&txn)?;
                meta.insert("schema", SCHEMA_VERSION)?;
            }
            Some(3) => {
                migrate::<record::TaskRecordV3>(&txn)?;
                index_all(&txn)?;
                meta.insert("schema", SCHEMA_VERSION)?;
            }
            Some(4) => {
                migrate::<record::TaskRecordV4>(&txn)?;
                // The index layout is schema 4's; (re)building it also
                // indexes a schema-4 file `store repair` salvaged, which
                // copied no indexes.
                index_all(&txn)?;
                meta.insert("schema", SCHEMA_VERSION)?;
            }
            Some(v) => {
                return Err(StoreError::Schema { expected: SCHEMA_VERSION, found: v });
            }
        }
        if meta.get(FLOW_KEYS_MOVED)?.is_none() {
            move_flow_keys(&txn)?;
            meta.insert(FLOW_KEYS_MOVED, 1)?;
        }
        if meta.get(FINISHED_BUILT)?.is_none() {
            retention::index_finished(&txn)?;
            meta.insert(FINISHED_BUILT, 1)?;
        }
        tables::create_all(&txn)?;
    }
    txn.commit()?;
    Ok(())
}

/// One write of a batch, with what it writes (absolute values, so writing
/// it twice leaves what writing it once does). A batch keeps its writes
/// until its commit succeeded, so a commit the disk refused can be made
/// again, unchanged, once it has room.
pub(crate) enum Redo {
    Task(u128, Vec<u8>),
    Input(u128, Vec<u8>),
    Output(u128, Vec<u8>),
    Key(String, u128),
    /// A key of a task a flow grew, in that flow's namespace.
    FlowKey(u128, String, u128),
    Flow(u128, Vec<u8>),
    FlowTask(u128, u128),
    /// A context write; `None` deletes.
    Context(u128, String, Option<Vec<u8>>),
    /// An attempt's transcript.
    Log(u128, u32, Vec<u8>),
    Index(IndexWrite),
    /// Adds (`true`) or removes an ended unit in [`FINISHED`]: its group,
    /// end time and id.
    Finished(String, u64, u128, bool),
    /// Forgets how a task's last callback ended (it runs again).
    ClearCallback(u128),
}

/// One write to a task index.
pub(crate) enum IndexWrite {
    /// Adds (`present`) or removes a state-index entry.
    State {
        bucket: u8,
        id: u128,
        present: bool,
    },
    Queue(String, u128),
    Plugin(String, u128),
    Iteration(u128, u32, u128),
}

/// The tables one batch writes, and the writes it made so far.
pub(crate) struct Tables<'t> {
    tasks: Table<'t, u128, &'static [u8]>,
    inputs: Table<'t, u128, &'static [u8]>,
    outputs: Table<'t, u128, &'static [u8]>,
    keys: Table<'t, &'static str, u128>,
    flow_keys: Table<'t, (u128, &'static str), u128>,
    flows: Table<'t, u128, &'static [u8]>,
    flow_tasks: Table<'t, (u128, u128), ()>,
    context: Table<'t, (u128, &'static str), &'static [u8]>,
    logs: Table<'t, (u128, u32), &'static [u8]>,
    finished: Table<'t, (&'static str, u64, u128), ()>,
    callbacks: Table<'t, u128, &'static [u8]>,
    indexes: Indexes<'t>,
    pub(crate) redo: &'t mut Vec<Redo>,
}

impl<'t> Tables<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction, redo: &'t mut Vec<Redo>) -> Result<Self, StoreError> {
        Ok(Self {
            tasks: txn.open_table(TASKS)?,
            inputs: txn.open_table(INPUTS)?,
            outputs: txn.open_table(OUTPUTS)?,
            keys: txn.open_table(IDEMPOTENCY)?,
            flow_keys: txn.open_table(FLOW_KEYS)?,
            flows: txn.open_table(FLOWS)?,
            flow_tasks: txn.open_table(FLOW_TASKS)?,
            context: txn.open_table(CONTEXT)?,
            logs: txn.open_table(LOGS)?,
            finished: txn.open_table(FINISHED)?,
            callbacks: txn.open_table(CALLBACKS)?,
            indexes: Indexes::open(txn)?,
            redo,
        })
    }

    /// Makes a write.
    pub(crate) fn put(&mut self, write: &Redo) -> Result<(), StoreError> {
        match write {
            Redo::Task(id, value) => drop(self.tasks.insert(*id, value.as_slice())?),
            Redo::Input(id, value) => drop(self.inputs.insert(*id, value.as_slice())?),
            Redo::Output(id, value) => drop(self.outputs.insert(*id, value.as_slice())?),
            Redo::Key(key, id) => drop(self.keys.insert(key.as_str(), *id)?),
            Redo::FlowKey(flow, key, id) => drop(self.flow_keys.insert((*flow, key.as_str()), *id)?),
            Redo::Flow(id, value) => drop(self.flows.insert(*id, value.as_slice())?),
            Redo::FlowTask(flow, id) => drop(self.flow_tasks.insert((*flow, *id), ())?),
            Redo::Context(flow, key, Some(value)) => {
                drop(self.context.insert((*flow, key.as_str()), value.as_slice())?)
            }
            Redo::Context(flow, key, None) => drop(self.context.remove((*flow, key.as_str()))?),
            Redo::Log(id, attempt, value) => drop(self.logs.insert((*id, *attempt), value.as_slice())?),
            Redo::Index(write) => self.indexes.put(write)?,
            Redo::Finished(group, at, id, true) => drop(self.finished.insert((group.as_str(), *at, *id), ())?),
            Redo::Finished(group, at, id, false) => drop(self.finished.remove((group.as_str(), *at, *id))?),
            Redo::ClearCallback(id) => drop(self.callbacks.remove(*id)?),
        }
        Ok(())
    }
}

impl apply::Txn for Tables<'_> {
    async fn task(&mut self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        self.tasks.get(id.as_u128())?.map(|v| decode(v.value())).transpose()
    }

    async fn peek_task(&mut self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        apply::Txn::task(self, id).await
    }

    async fn keyed(&mut self, key: &str) -> Result<Option<Uuid>, StoreError> {
        Ok(self.keys.get(key)?.map(|v| Uuid::from_u128(v.value())))
    }

    async fn flow_keyed(&mut self, flow: Uuid, key: &str) -> Result<Option<Uuid>, StoreError> {
        Ok(self.flow_keys.get((flow.as_u128(), key))?.map(|v| Uuid::from_u128(v.value())))
    }

    async fn flow(&mut self, id: Uuid) -> Result<Option<FlowRecord>, StoreError> {
        self.flows.get(id.as_u128())?.map(|v| decode(v.value())).transpose()
    }

    async fn flow_tenant(&mut self, flow: Uuid) -> Result<String, StoreError> {
        retention::flow_tenant(&self.tasks, &self.flow_tasks, flow.as_u128())
    }

    async fn context_bytes(
        &mut self,
        flow: Uuid,
        keys: &std::collections::BTreeSet<String>,
    ) -> Result<apply::ContextBytes, StoreError> {
        let mut bytes = apply::ContextBytes::default();
        for entry in self.context.range((flow.as_u128(), "")..)? {
            let (key, value) = entry?;
            let (f, k) = key.value();
            if f != flow.as_u128() {
                break;
            }
            bytes.add(keys.contains(k), (k.len() + value.value().len()) as u64);
        }
        Ok(bytes)
    }

    /// Makes a write and keeps it.
    fn write(&mut self, write: Redo) -> Result<(), StoreError> {
        self.put(&write)?;
        self.redo.push(write);
        Ok(())
    }
}

/// Applies `change` to `record` in memory, checked as a committed
/// transition is (the state machine, the expected version); its output
/// is the caller's to store (a change with a log or effects is refused:
/// those are the redb store's own).
pub(crate) fn step(record: &mut TaskRecord, change: Change) -> Result<(), StoreError> {
    let id = record.id;
    if change.id != id {
        return Err(StoreError::Refused(format!("a change of task {} applied to task {id}", change.id)));
    }
    if change.log.is_some() || change.effects.is_some() {
        return Err(StoreError::Refused(format!("task {id}: this change carries a log or effects")));
    }
    allowed(record, &change)?;
    if let Some(output) = &change.output {
        record.output_len = Some(output.len() as u64);
    }
    moved(record, change.to, change.reason, change.edit);
    Ok(())
}

/// Whether `change` may apply to `record`: the state machine allows the
/// move, and the record has the version the change expects.
fn allowed(record: &TaskRecord, change: &Change) -> Result<(), StoreError> {
    let id = record.id;
    if !machine::allowed(record.state, change.to) {
        return Err(StoreError::IllegalTransition { id, from: record.state, to: change.to });
    }
    if let Some(expected) = change.expected_version
        && expected != record.version
    {
        return Err(StoreError::VersionMismatch { id, expected, found: record.version });
    }
    Ok(())
}

/// Moves `record` to `to` with `edit` applied first: its state, version,
/// end time and history, as every transition does.
fn moved(record: &mut TaskRecord, to: TaskState, reason: String, edit: Option<Edit>) {
    let from = record.state;
    if let Some(edit) = edit {
        edit(record);
    }
    record.state = to;
    record.version += 1;
    let at_ms = now_ms();
    if to.is_terminal() {
        record.finished_at_ms = Some(at_ms);
    }
    record.history.push(Transition { at_ms, from: Some(from), to, attempt: record.attempts, reason });
}

/// A page of flows, each with its first task, and the id to go on from
/// when more may follow.
pub type FlowsPage = (Vec<(FlowRecord, Option<TaskRecord>)>, Option<Uuid>);

/// Rewrites every task record of an older schema `Old` in today's layout:
/// schema 2 gains the flow fields (each task its own flow), schemas 2 and 3
/// store the failure class as a code instead of text, schemas 2-4 gain the
/// host budget (the default's) and its use (unknown).
fn migrate<Old>(txn: &WriteTransaction) -> Result<(), StoreError>
where
    Old: for<'de> serde::Deserialize<'de> + 'static,
    TaskRecord: TryFrom<Old, Error = StoreError>,
{
    let mut tasks = txn.open_table(TASKS)?;
    let mut migrated = Vec::new();
    for entry in tasks.iter()? {
        let (key, value) = entry?;
        let old: Old = decode(value.value())?;
        migrated.push((key.value(), encode(&TaskRecord::try_from(old)?)));
    }
    for (key, value) in migrated {
        tasks.insert(key, value.as_slice())?;
    }
    Ok(())
}

/// Moves the keys of tasks a flow grew out of the API's namespace into
/// [`FLOW_KEYS`] (files from before it kept both in [`IDEMPOTENCY`], flow
/// keys as `flow:<flow id>:<key>`). A `flow:` key whose task is a flow's
/// root was a client's own and stays where it is.
fn move_flow_keys(txn: &WriteTransaction) -> Result<(), StoreError> {
    let tasks = txn.open_table(TASKS)?;
    let mut keys = txn.open_table(IDEMPOTENCY)?;
    let mut flow_keys = txn.open_table(FLOW_KEYS)?;
    let mut moved = Vec::new();
    // Every key that starts with `flow:` (`;` follows `:`).
    for entry in keys.range("flow:".."flow;")? {
        let (key, id) = entry?;
        let Some(value) = tasks.get(id.value())? else { continue };
        let record: TaskRecord = decode(value.value())?;
        if !record.is_flow_root() && record.idempotency_key.as_deref() == Some(key.value()) {
            moved.push((key.value().to_owned(), record.flow_id.as_u128(), id.value()));
        }
    }
    for (key, flow, id) in moved {
        keys.remove(key.as_str())?;
        flow_keys.insert((flow, key.as_str()), id)?;
    }
    Ok(())
}

/// Builds the task indexes from the task table (migrating to schema 4).
fn index_all(txn: &WriteTransaction) -> Result<(), StoreError> {
    let tasks = txn.open_table(TASKS)?;
    let mut indexes = Indexes::open(txn)?;
    for entry in tasks.iter()? {
        let record: TaskRecord = decode(entry?.1.value())?;
        for write in index_writes(&record) {
            indexes.put(&write)?;
        }
    }
    Ok(())
}

/// The secondary indexes of the task table, kept in the same write
/// transaction as the records they point at.
struct Indexes<'t> {
    by_state: Table<'t, (u8, u128), ()>,
    by_queue: Table<'t, (&'static str, u128), ()>,
    by_plugin: Table<'t, (&'static str, u128), ()>,
    by_iteration: Table<'t, (u128, u32, u128), ()>,
}

impl<'t> Indexes<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            by_state: txn.open_table(BY_STATE)?,
            by_queue: txn.open_table(BY_QUEUE)?,
            by_plugin: txn.open_table(BY_PLUGIN)?,
            by_iteration: txn.open_table(BY_ITERATION)?,
        })
    }

    fn put(&mut self, write: &IndexWrite) -> Result<(), StoreError> {
        match write {
            IndexWrite::State { bucket, id, present: true } => drop(self.by_state.insert((*bucket, *id), ())?),
            IndexWrite::State { bucket, id, present: false } => drop(self.by_state.remove((*bucket, *id))?),
            IndexWrite::Queue(queue, id) => drop(self.by_queue.insert((queue.as_str(), *id), ())?),
            IndexWrite::Plugin(plugin, id) => drop(self.by_plugin.insert((plugin.as_str(), *id), ())?),
            IndexWrite::Iteration(flow, iteration, id) => {
                drop(self.by_iteration.insert((*flow, *iteration, *id), ())?);
            }
        }
        Ok(())
    }
}

/// The state index's bucket of a state: one bucket for every unfinished
/// state (pending, running, retrying), so starting and retrying a task
/// write no index entry; one bucket per terminal state. A listing by an
/// unfinished state walks the unfinished tasks and keeps those in it.
fn state_bucket(state: TaskState) -> u8 {
    if state.is_terminal() { state.code() } else { 0 }
}

/// Which page of a listing is wanted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listing {
    /// The cursor: the last task of the page before.
    pub after: Option<Uuid>,
    /// Most tasks in the page.
    pub limit: usize,
    /// Newest first (else oldest first).
    pub newest_first: bool,
    /// Count the tasks after the page up to this many (0 or 1: only tell
    /// whether there are any).
    pub count_up_to: u64,
}

/// A page of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listed {
    /// The tasks, in the listing's order.
    pub tasks: Vec<TaskRecord>,
    /// How many more match after the page, counted up to the listing's
    /// `count_up_to` (so a lower bound when it equals it).
    pub more: u64,
}

/// Walks index entries `range` in either direction, passing each entry's
/// task id (taken from its key by `id`) to `visit` until it returns false.
fn walk<'a, K: redb::Key + 'static>(
    range: redb::Range<'a, K, ()>,
    newest_first: bool,
    id: impl Fn(K::SelfType<'_>) -> u128,
    visit: &mut impl FnMut(u128) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    either_way(range, newest_first, |entry| visit(id(entry?.0.value())))
}

/// Steps through `items` backwards (`newest_first`) or forwards until
/// `step` returns false.
fn either_way<I: DoubleEndedIterator>(
    items: I,
    newest_first: bool,
    mut step: impl FnMut(I::Item) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    if newest_first {
        for item in items.rev() {
            if !step(item)? {
                break;
            }
        }
    } else {
        for item in items {
            if !step(item)? {
                break;
            }
        }
    }
    Ok(())
}

/// Which tasks a listing wants; every given filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskQuery {
    /// Only this state.
    pub state: Option<TaskState>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this plugin name.
    pub plugin: Option<String>,
    /// Only this tenant's tasks.
    pub tenant: Option<String>,
}

impl TaskQuery {
    fn matches(&self, r: &TaskRecord) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == crate::tenant::tenant_of(&r.plugin))
            && self.state.is_none_or(|s| s == r.state)
            && self.queue.as_deref().is_none_or(|q| q == r.queue)
            && self.plugin.as_deref().is_none_or(|p| p == r.plugin)
    }
}

#[cfg(test)]
mod matrix;
#[cfg(test)]
pub(crate) mod tests;
