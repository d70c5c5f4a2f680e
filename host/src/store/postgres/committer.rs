//! The group committer of the PostgreSQL store: operations from many
//! callers (submissions, transitions, outcomes under leases, flow edits)
//! wait in one bounded queue, and a few workers each take what has
//! gathered, up to a batch, and commit it in one transaction
//! (`batch.rs`), as redb's committer does for its store. A caller waits
//! for its own operation's answer; a refused operation writes nothing and
//! its neighbours commit. While the queue is full, callers wait for room
//! (nothing is dropped; redb's committer refuses a submission as `Busy`
//! instead, and the engine will choose which it wants here). Several workers keep the database busy while one
//! waits for its commit: unlike redb, PostgreSQL commits transactions side
//! by side.
//!
//! If a batch's transaction fails (the database cannot be reached, say),
//! every operation in it is answered [`PgError::BatchFailed`] and none of
//! it was written, except when the connection was lost during the commit
//! itself, when PostgreSQL may have committed it: as with any database
//! client, the checked writes (expected versions, idempotency keys, lease
//! tokens) make a retry of such an operation refused rather than applied
//! twice.

use super::batch::{Done, PgOp};
use super::{ClaimAtSubmit, Lease, Outcome, PgError, PgStore};
use crate::store::{Applied, Change, FlowRecord, FlowUpdate, StoreError, Submitted, TaskRecord};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

/// How a group committer batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitConfig {
    /// Operations waiting at most (callers wait for room past it).
    pub queue: usize,
    /// Operations in one transaction at most.
    pub batch: usize,
    /// Transactions in flight at once (one connection each).
    pub workers: usize,
    /// The term every transaction checks first (`PgStore::leads`): the
    /// sole engine's, so a deposed host writes nothing. `None`: unfenced.
    pub fence: Option<super::Term>,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self { queue: 4_096, batch: 256, workers: 2, fence: None }
    }
}

/// An operation and where its answer goes.
struct Queued {
    op: PgOp,
    reply: oneshot::Sender<Result<Done, PgError>>,
}

/// A handle to a PostgreSQL store's group committer; cheap to clone. The
/// workers end once every handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct PgCommitter {
    ops: mpsc::Sender<Queued>,
    counts: Arc<Counts>,
}

/// What the workers committed so far.
#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    operations: AtomicU64,
}

impl PgStore {
    /// Starts a group committer for this store (its workers are tasks of
    /// the current Tokio runtime).
    pub fn committer(&self, config: CommitConfig) -> PgCommitter {
        let (ops, rx) = mpsc::channel(config.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let counts = Arc::new(Counts::default());
        for _ in 0..config.workers.max(1) {
            tokio::spawn(work(self.clone(), Arc::clone(&rx), config.batch.max(1), config.fence, Arc::clone(&counts)));
        }
        PgCommitter { ops, counts }
    }
}

/// A worker: takes what has gathered in the queue, up to `batch`, commits
/// it, answers each caller, and goes on until the queue closes.
async fn work(
    store: PgStore,
    rx: Arc<Mutex<mpsc::Receiver<Queued>>>,
    batch: usize,
    fence: Option<super::Term>,
    counts: Arc<Counts>,
) {
    loop {
        let mut taken = Vec::with_capacity(batch);
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut taken, batch).await == 0 {
                return;
            }
        }
        let (ops, replies): (Vec<PgOp>, Vec<_>) = taken.into_iter().map(|q| (q.op, q.reply)).unzip();
        let operations = ops.len() as u64;
        // In a task of its own, so a panic (in a flow edit's closure, say)
        // fails this batch, not the worker.
        let committing = store.clone();
        let committed = tokio::spawn(async move { committing.commit_ops(ops, fence).await }).await;
        let failure = match committed {
            Ok(Ok(answers)) => {
                counts.batches.fetch_add(1, Ordering::Relaxed);
                counts.operations.fetch_add(operations, Ordering::Relaxed);
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // A caller that stopped waiting wants no answer.
                    let _ = reply.send(answer);
                }
                continue;
            }
            Ok(Err(error)) => (error.to_string(), error.is_transient()),
            Err(panicked) => (format!("committing it panicked: {panicked}"), false),
        };
        let (why, transient) = failure;
        tracing::error!(error = %why, operations, "a PostgreSQL batch failed; none of it was committed");
        for reply in replies {
            let _ = reply.send(Err(PgError::BatchFailed { why: why.clone(), transient }));
        }
    }
}

impl PgCommitter {
    /// Batches committed so far, and the operations in them.
    pub fn committed(&self) -> (u64, u64) {
        (self.counts.batches.load(Ordering::Relaxed), self.counts.operations.load(Ordering::Relaxed))
    }

    /// Queues `op` (waiting for room) and waits for its answer.
    async fn run(&self, op: PgOp) -> Result<Done, PgError> {
        let (reply, answer) = oneshot::channel();
        self.ops.send(Queued { op, reply }).await.map_err(|_| PgError::CommitterStopped)?;
        answer.await.map_err(|_| PgError::CommitterStopped)?
    }

    /// Durably records a new task, or returns the one its idempotency key
    /// names, as [`PgStore::submit`] does.
    pub async fn submit(&self, record: TaskRecord, input: Vec<u8>) -> Result<Submitted, PgError> {
        Ok(self.run(PgOp::Submit { record: Box::new(record), input, claim: None }).await?.submitted())
    }

    /// [`submit`](Self::submit), the new task started in the same commit
    /// under a lease of `claim`'s when a claim would take it next anyway
    /// (see `at_submit.rs`): then it is returned running, with its lease;
    /// otherwise it waits for a claim, as any other.
    pub(crate) async fn submit_claiming(
        &self,
        record: TaskRecord,
        input: Vec<u8>,
        claim: ClaimAtSubmit,
    ) -> Result<(Submitted, Option<Lease>), PgError> {
        Ok(self.run(PgOp::Submit { record: Box::new(record), input, claim: Some(claim) }).await?.started())
    }

    /// A checked transition taking no lease, as [`PgStore::transition`].
    pub(crate) async fn transition(&self, change: Change) -> Result<Applied, PgError> {
        Ok(self.run(PgOp::Transition(change)).await?.applied())
    }

    /// Commits how the attempt held under `lease` ended, as
    /// [`PgStore::finish`] does.
    pub async fn finish(&self, lease: Lease, outcome: Outcome) -> Result<TaskRecord, PgError> {
        let change = outcome.into_change(lease.task);
        Ok(self.finish_change(lease, change).await?.record)
    }

    /// Commits the change that ends the attempt held under `lease` (with
    /// a completion's output, transcript and flow effects), as
    /// [`PgStore::finish_changes`] does.
    pub(crate) async fn finish_change(&self, lease: Lease, change: Change) -> Result<Applied, PgError> {
        Ok(self.run(PgOp::Finish(lease, change)).await?.applied())
    }

    /// Edits a flow, as [`PgStore::flow_change`].
    pub(crate) async fn flow_change(
        &self,
        id: Uuid,
        edit: impl FnOnce(Option<FlowRecord>) -> Result<FlowUpdate, StoreError> + Send + 'static,
    ) -> Result<(FlowRecord, Vec<TaskRecord>), PgError> {
        Ok(self.run(PgOp::Flow(id, Box::new(edit))).await?.flow())
    }
}
