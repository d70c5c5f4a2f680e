//! The group committer and what it does when the disk refuses a write.
//!
//! One thread drains the queue into batches, applies each operation in one
//! write transaction, commits once and only then answers. Every write a
//! batch makes is kept ([`Redo`]) until its commit succeeded. When a commit
//! fails with an I/O error (a full disk), redb refuses every later
//! operation until the file is reopened, so the committer:
//!
//! - marks the store unwritable ([`Shared::fault`]): `/healthz` turns
//!   unhealthy and new submissions are refused with
//!   [`StoreError::Unwritable`];
//! - reopens the file at once, so reads go on;
//! - holds the failed batch (its writes and its callers' answers) and
//!   writes it again, unchanged, after a backoff (0.2 s doubling to 5 s),
//!   reopening after each failure, until a commit succeeds; only then are
//!   its callers answered and the store healthy again. Operations queued
//!   meanwhile wait in the bounded queue, in order.
//!
//! Nothing is acknowledged before it is durable, and nothing the engine
//! waits for is dropped: a started task's outcome waits for the disk
//! instead of failing. Once the store is told to stop
//! ([`Shared::stop`], at shutdown), held and later failing writes are
//! answered with the error instead (a task whose outcome was not recorded
//! is recovered on the next start).

use super::apply::{apply_flow, apply_submit, apply_transition, at_once};
use super::open;
use super::{Applied, FlowRecord, Op, Redo, StoreError, Submitted, Tables, TaskRecord};
use crate::sync::lock;
use redb::{Database, Durability, WriteTransaction};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Payload bytes one group commit takes at most (more once, for a single
/// larger operation). Keeps a transaction's dirty pages far below redb's
/// write cache, so a full disk fails the commit, not an operation halfway.
const MAX_BATCH_BYTES: usize = 64 << 20;
/// First wait before writing a held batch again.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// Longest wait between two attempts.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// How long a reopen waits for reads still using the old handle.
const READERS_GRACE: Duration = Duration::from_secs(2);
/// How long a read waits for a reopen under way.
const REOPEN_WAIT: Duration = Duration::from_secs(1);

/// Where the database comes from (and is reopened from).
pub(crate) enum Source {
    /// The store file.
    File(PathBuf),
    /// The store file through a backend whose writes fail while the flag
    /// is set.
    #[cfg(test)]
    Faulty(PathBuf, Arc<AtomicBool>),
}

/// Why writes fail now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteFault {
    /// The I/O error of the last failed attempt.
    pub reason: String,
    /// When writes started failing (ms since the epoch).
    pub since_ms: u64,
}

/// What the store's handles and its committer share: the open database
/// (replaced on a reopen) and the write-fault state.
pub(crate) struct Shared {
    /// Committed transitions, published once durable.
    pub(crate) feed: super::events::Feed,
    source: Source,
    db: Mutex<Option<Arc<Database>>>,
    /// A reopen is under way.
    reopening: AtomicBool,
    /// Signalled when a reopen ended.
    reopened: Condvar,
    faulted: AtomicBool,
    fault: Mutex<Option<WriteFault>>,
    stopping: Mutex<bool>,
    wake: Condvar,
    /// The file's writes, held until its integrity check passed.
    gate: Option<Arc<super::gate::Gate>>,
    /// Where that check stands.
    check: Mutex<Check>,
    /// Signalled when the check ended.
    check_ended: Condvar,
}

/// Where the integrity check of a file opened behind a gate stands.
#[derive(Debug, Clone)]
enum Check {
    /// The committer runs it before its first write.
    Pending,
    /// Passed (or not needed: a new file, a test's).
    Passed,
    /// The file is damaged: what [`StoreError::Damaged`] says of it.
    Damaged(String),
    /// The check could not run, or the writes held meanwhile failed (a
    /// full disk): [`StoreError::Unwritable`]. The next start tries again.
    Unwritable(String),
}

impl Shared {
    /// Behind a `gate`, the committer checks the file before it writes.
    pub(crate) fn new(source: Source, db: Database, gate: Option<Arc<super::gate::Gate>>) -> Self {
        let check = if gate.is_some() { Check::Pending } else { Check::Passed };
        Self {
            feed: super::events::Feed::default(),
            source,
            db: Mutex::new(Some(Arc::new(db))),
            reopening: AtomicBool::new(false),
            reopened: Condvar::new(),
            faulted: AtomicBool::new(false),
            fault: Mutex::default(),
            stopping: Mutex::new(false),
            wake: Condvar::new(),
            gate,
            check: Mutex::new(check),
            check_ended: Condvar::new(),
        }
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        match &self.source {
            Source::File(path) => path,
            #[cfg(test)]
            Source::Faulty(path, _) => path,
        }
    }

    /// Checks the file and, if it passed, makes the writes held meanwhile
    /// (on the committer, before its first write). A file redb's check
    /// had to repair is opened again with the check (which repairs it on
    /// the file, as a start did before the check ran beside the reads).
    fn run_check(&self) {
        let Some(gate) = &self.gate else { return };
        let outcome = match open::verify(self.path(), gate) {
            Ok(open::Verified::Clean) => match gate.release() {
                Ok(()) => Check::Passed,
                Err(e) => Check::Unwritable(format!("writing what the open held back: {e}")),
            },
            Ok(open::Verified::Repaired) => {
                tracing::warn!(file = %self.path().display(), "the store file needed a repair; opening it again");
                self.discard_db();
                match open::verified(self.path()) {
                    Ok(db) => {
                        *lock(&self.db) = Some(Arc::new(db));
                        Check::Passed
                    }
                    Err(StoreError::Damaged { problem, .. }) => Check::Damaged(problem),
                    Err(other) => Check::Unwritable(other.to_string()),
                }
            }
            Err(StoreError::Damaged { problem, .. }) => {
                self.discard_db();
                Check::Damaged(problem)
            }
            Err(other) => {
                self.discard_db();
                Check::Unwritable(format!("checking the file: {other}"))
            }
        };
        *lock(&self.check) = outcome;
        self.check_ended.notify_all();
    }

    /// Closes the gated database (its held writes never reach the file),
    /// quietly: its close commits, and may read what the check found
    /// damaged. Reads after this are refused.
    fn discard_db(&self) {
        if let Some(db) = lock(&self.db).take() {
            when_unused(db, |db| drop(open::quietly(move || drop(db))));
        }
    }

    /// Why the file takes no write, if the check (or the held writes)
    /// failed.
    fn refusal(&self) -> Option<StoreError> {
        match &*lock(&self.check) {
            Check::Damaged(problem) => Some(open::damaged(self.path(), problem)),
            Check::Unwritable(reason) => Some(StoreError::Unwritable { reason: reason.clone() }),
            Check::Pending | Check::Passed => None,
        }
    }

    /// Whether the integrity check ended and failed.
    pub(crate) fn check_failed(&self) -> bool {
        self.refusal().is_some()
    }

    /// Waits for the integrity check to end; the damage it found, if any.
    /// Blocks: call it off the async workers.
    pub(crate) fn checked(&self) -> Result<(), StoreError> {
        let check = self
            .check_ended
            .wait_while(lock(&self.check), |check| matches!(check, Check::Pending))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(check);
        self.refusal().map_or(Ok(()), Err)
    }

    /// The open database. While a reopen after a write fault is under way
    /// this waits for it (it takes milliseconds), at most [`REOPEN_WAIT`];
    /// then, or if the reopen failed, it refuses with
    /// [`StoreError::Reopening`]; once a failed check closed it, with what
    /// the check found.
    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        let slot = lock(&self.db);
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let (slot, _) = self
            .reopened
            .wait_timeout_while(slot, REOPEN_WAIT, |slot| slot.is_none() && self.reopening.load(Ordering::Acquire))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A file whose check failed was closed: say so, not "reopening".
        slot.clone().ok_or_else(|| self.refusal().unwrap_or_else(|| StoreError::Reopening { reason: self.reason() }))
    }

    /// Why writes fail now, while they do.
    pub(crate) fn write_fault(&self) -> Option<WriteFault> {
        if !self.faulted.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.fault).clone()
    }

    /// Refuses with [`StoreError::Unwritable`] while writes fail.
    pub(crate) fn check_writable(&self) -> Result<(), StoreError> {
        match self.write_fault() {
            Some(fault) => Err(StoreError::Unwritable { reason: fault.reason }),
            None => Ok(()),
        }
    }

    fn reason(&self) -> String {
        lock(&self.fault).as_ref().map_or_else(|| "the file is being reopened".into(), |f| f.reason.clone())
    }

    /// Records a failed write.
    fn fault(&self, reason: &str) {
        let mut fault = lock(&self.fault);
        match fault.as_mut() {
            Some(f) => f.reason = reason.to_owned(),
            None => {
                tracing::error!(
                    %reason,
                    "the store cannot write: refusing submissions and retrying the failed commit until it succeeds"
                );
                *fault = Some(WriteFault { reason: reason.to_owned(), since_ms: super::now_ms() });
            }
        }
        self.faulted.store(true, Ordering::Release);
    }

    fn recovered(&self) {
        if let Some(fault) = lock(&self.fault).take() {
            let seconds = super::now_ms().saturating_sub(fault.since_ms) / 1000;
            tracing::warn!(seconds, "the store writes again; the held commit is durable");
        }
        self.faulted.store(false, Ordering::Release);
    }

    /// From now on a failed write is answered with its error instead of
    /// being held and retried (at shutdown: nothing waits for the disk).
    pub(crate) fn stop(&self) {
        *lock(&self.stopping) = true;
        self.wake.notify_all();
    }

    fn stopping(&self) -> bool {
        *lock(&self.stopping)
    }

    /// Waits `wait`, or less if the store is told to stop.
    fn pause(&self, wait: Duration) {
        let stopping = lock(&self.stopping);
        if !*stopping {
            let _ = self.wake.wait_timeout(stopping, wait);
        }
    }

    /// Closes the database and opens the file again: after an I/O error
    /// redb refuses everything until then.
    fn reopen(&self) -> Result<(), StoreError> {
        self.reopening.store(true, Ordering::Release);
        let result = self.replace_db();
        {
            // Under the slot's lock, so no reader misses the wake-up.
            let _slot = lock(&self.db);
            self.reopening.store(false, Ordering::Release);
        }
        self.reopened.notify_all();
        result
    }

    fn replace_db(&self) -> Result<(), StoreError> {
        let old = lock(&self.db).take();
        if let Some(old) = old {
            when_unused(old, |db| {
                if let Err(error) = db.close() {
                    tracing::debug!(%error, "closing the store after a write fault");
                }
            });
        }
        let db = match &self.source {
            Source::File(path) => open::reopen(path)?,
            #[cfg(test)]
            Source::Faulty(path, full) => {
                let backend =
                    super::backend::Faulty::open(path, full.clone()).map_err(|e| open::open_error(path, e))?;
                redb::Builder::new().create_with_backend(backend).map_err(|e| open::open_error(path, e))?
            }
        };
        *lock(&self.db) = Some(Arc::new(db));
        Ok(())
    }
}

/// Closes `db` with `close` once the reads using it ended (or the grace
/// ran out: it then closes when the last of them drops it).
fn when_unused(mut db: Arc<Database>, close: impl FnOnce(Database)) {
    let deadline = Instant::now() + READERS_GRACE;
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => return close(db),
            Err(shared) if Instant::now() < deadline => {
                db = shared;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
}

pub(crate) fn begin(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate).map_err(|e| StoreError::Storage(e.into()))?;
    // Saves the allocator state with each commit so reopening after a crash
    // is near-instant instead of a full walk of the file.
    txn.set_quick_repair(true);
    Ok(txn)
}

/// An operation's answer, sent once its batch committed (or failed).
pub(crate) enum Pending {
    Submit(oneshot::Sender<Result<Submitted, StoreError>>, Result<Submitted, StoreError>),
    Transition(oneshot::Sender<Result<Applied, StoreError>>, Result<Applied, StoreError>),
    Flow(
        oneshot::Sender<Result<(FlowRecord, Vec<TaskRecord>), StoreError>>,
        Result<(FlowRecord, Vec<TaskRecord>), StoreError>,
    ),
}

impl Pending {
    /// Publishes what committed to `feed`, then sends the answer (the
    /// batch committed).
    fn send(self, feed: &super::events::Feed) {
        match self {
            Pending::Submit(reply, result) => {
                if let Ok(submitted) = &result
                    && submitted.created
                {
                    feed.created(&submitted.record);
                }
                drop(reply.send(result));
            }
            Pending::Transition(reply, result) => {
                if let Ok(applied) = &result {
                    feed.published(&applied.record);
                    applied.created.iter().for_each(|child| feed.published(child));
                }
                drop(reply.send(result));
            }
            Pending::Flow(reply, result) => {
                if let Ok((_, created)) = &result {
                    created.iter().for_each(|task| feed.published(task));
                }
                drop(reply.send(result));
            }
        }
    }

    /// Answers `error` instead (the batch did not commit).
    fn fail(self, error: StoreError) {
        match self {
            Pending::Submit(reply, _) => drop(reply.send(Err(error))),
            Pending::Transition(reply, _) => drop(reply.send(Err(error))),
            Pending::Flow(reply, _) => drop(reply.send(Err(error))),
        }
    }
}

/// Answers an operation that was never applied with `error`.
fn refuse(op: Op, error: StoreError) {
    match op {
        Op::Submit { reply, .. } => drop(reply.send(Err(error))),
        Op::Transition { reply, .. } => drop(reply.send(Err(error))),
        Op::Flow { reply, .. } => drop(reply.send(Err(error))),
        Op::Admin { reply, .. } => drop(reply.send(Err(error))),
    }
}

/// A batch whose commit failed on an I/O error: its writes, to be made
/// again, and its callers, answered once they are durable.
#[derive(Default)]
struct Held {
    redo: Vec<Redo>,
    answers: Vec<Pending>,
}

impl Held {
    fn fail(self, reason: &str) {
        for answer in self.answers {
            answer.fail(StoreError::Unwritable { reason: reason.to_owned() });
        }
    }
}

/// The committer loop: one write transaction per batch; on a write fault,
/// hold the batch and retry it until it commits.
pub(crate) fn run(shared: &Shared, rx: &mut mpsc::Receiver<Op>, max_batch: usize) {
    shared.run_check();
    // A file that failed its check takes no write.
    while let Some(why) = shared.refusal() {
        let Some(op) = rx.blocking_recv() else { return };
        refuse(op, why);
    }
    // Operations taken from the queue but not applied yet, ahead of it.
    let mut backlog: VecDeque<Op> = VecDeque::new();
    let mut held: Option<Held> = None;
    let mut wait = FIRST_RETRY;
    loop {
        if let Some(batch) = held.take() {
            if shared.stopping() {
                batch.fail(&shared.reason());
                continue;
            }
            shared.pause(wait);
            match retry(shared, batch) {
                Ok(()) => wait = FIRST_RETRY,
                Err(batch) => {
                    held = Some(batch);
                    wait = (wait * 2).min(MAX_RETRY);
                }
            }
            continue;
        }
        let first = match backlog.pop_front() {
            Some(op) => op,
            None => match rx.blocking_recv() {
                Some(op) => op,
                None => break,
            },
        };
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while batch.len() < max_batch && bytes < MAX_BATCH_BYTES {
            match backlog.pop_front().or_else(|| rx.try_recv().ok()) {
                Some(op) => {
                    bytes += op.bytes();
                    batch.push(op);
                }
                None => break,
            }
        }
        let (tasks, admin): (Vec<Op>, Vec<Op>) = batch.into_iter().partition(|op| !matches!(op, Op::Admin { .. }));
        let mut admin = admin.into_iter();
        if !tasks.is_empty()
            && let Some((batch, rest)) = commit_batch(shared, tasks)
        {
            // What the failed batch never reached goes first when writes work again.
            for op in rest.into_iter().chain(admin).rev() {
                backlog.push_front(op);
            }
            held = Some(batch);
            continue;
        }
        while let Some(op) = admin.next() {
            let Op::Admin { write, reply } = op else { continue };
            let result = shared.db().and_then(|db| {
                let txn = begin(&db)?;
                write(&txn)?;
                txn.commit()?;
                Ok(())
            });
            match result.as_ref().err().and_then(StoreError::io_fault) {
                Some(reason) if !shared.stopping() => {
                    enter_fault(shared, &reason);
                    // Its closure is spent: this one is answered; the rest wait.
                    let _ = reply.send(Err(StoreError::Unwritable { reason: reason.clone() }));
                    for op in admin.by_ref().rev() {
                        backlog.push_front(op);
                    }
                    held = Some(Held::default());
                }
                _ => drop(reply.send(result)),
            }
        }
    }
    if let Some(batch) = held {
        batch.fail(&shared.reason());
    }
}

/// Marks the store unwritable and reopens the file so reads go on.
fn enter_fault(shared: &Shared, reason: &str) {
    shared.fault(reason);
    if let Err(error) = shared.reopen() {
        shared.fault(&error.to_string());
    }
}

/// Writes a held batch again in one transaction.
fn retry(shared: &Shared, held: Held) -> Result<(), Held> {
    let result = (|| {
        if lock(&shared.db).is_none() {
            shared.reopen()?;
        }
        let db = shared.db()?;
        let txn = begin(&db)?;
        {
            let mut scratch = Vec::new();
            let mut t = Tables::open(&txn, &mut scratch)?;
            for write in &held.redo {
                t.put(write)?;
            }
        }
        txn.commit()?;
        Ok::<_, StoreError>(())
    })();
    match result {
        Ok(()) => {
            // Healthy before anyone hears back, so a caller answered now
            // finds the store writable.
            shared.recovered();
            for answer in held.answers {
                answer.send(&shared.feed);
            }
            Ok(())
        }
        Err(error) => {
            enter_fault(shared, &error.io_fault().unwrap_or_else(|| error.to_string()));
            Err(held)
        }
    }
}

/// Applies and commits one batch of task operations, answering each
/// caller after the commit. On an I/O fault it returns the held batch and
/// the operations it never reached.
fn commit_batch(shared: &Shared, ops: Vec<Op>) -> Option<(Held, Vec<Op>)> {
    let mut held = Held::default();
    // The operation a storage error stopped halfway (its writes are not kept).
    let mut broken: Option<Pending> = None;
    let mut ops = ops.into_iter();
    let outcome = (|| {
        let db = shared.db()?;
        let txn = begin(&db)?;
        {
            let mut t = Tables::open(&txn, &mut held.redo)?;
            for op in ops.by_ref() {
                let mark = t.redo.len();
                let (answer, failure) = match op {
                    Op::Submit { record, input, then, reply } => {
                        let result = at_once(apply_submit(&mut t, *record, input, then));
                        let failure = storage_failure(&result);
                        (Pending::Submit(reply, result), failure)
                    }
                    Op::Transition { change, reply } => {
                        let result = at_once(apply_transition(&mut t, change));
                        let failure = storage_failure(&result);
                        (Pending::Transition(reply, result), failure)
                    }
                    Op::Flow { id, edit, reply } => {
                        let result = at_once(apply_flow(&mut t, id, edit));
                        let failure = storage_failure(&result);
                        (Pending::Flow(reply, result), failure)
                    }
                    Op::Admin { .. } => unreachable!("admin writes are committed on their own"),
                };
                if let Some(e) = failure {
                    // A storage error aborts the whole batch below.
                    t.redo.truncate(mark);
                    broken = Some(answer);
                    return Err(e);
                }
                held.answers.push(answer);
            }
        }
        txn.commit()?;
        Ok(())
    })();
    let error = match outcome {
        Ok(()) => {
            for answer in held.answers {
                answer.send(&shared.feed);
            }
            return None;
        }
        Err(error) => error,
    };
    match error.io_fault() {
        Some(reason) if !shared.stopping() => {
            enter_fault(shared, &reason);
            if let Some(answer) = broken {
                answer.fail(StoreError::Unwritable { reason: reason.clone() });
            }
            Some((held, ops.collect()))
        }
        fault => {
            // Not a fault that passes (or the store is stopping): every
            // operation of the batch shares the failure.
            let failure = || match &fault {
                Some(reason) => StoreError::Unwritable { reason: reason.clone() },
                None => StoreError::CommitFailed(error.to_string()),
            };
            for answer in held.answers.into_iter().chain(broken) {
                answer.fail(failure());
            }
            for op in ops {
                refuse(op, failure());
            }
            None
        }
    }
}

/// The error that must abort the batch: the storage failed.
fn storage_failure<T>(result: &Result<T, StoreError>) -> Option<StoreError> {
    match result {
        Err(e @ StoreError::Storage(_)) => Some(match e.io_fault() {
            Some(reason) => StoreError::Unwritable { reason },
            None => StoreError::CommitFailed(e.to_string()),
        }),
        _ => None,
    }
}
