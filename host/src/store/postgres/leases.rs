//! Claims, leases and fencing on PostgreSQL: how hosts sharing one
//! database take tasks without taking one twice, and how a task's outcome
//! commits at most once when a host that was thought dead comes back.
//!
//! - **Claim.** [`PgStore::claim`] takes up to `limit` startable tasks
//!   (pending or retrying, due), each tenant an equal part of them, each
//!   of its queues a share of that by weight and within its concurrency
//!   limit, and in each queue by priority, then due
//!   time, then age (see `fair.rs`), with `FOR UPDATE SKIP LOCKED`: hosts
//!   claiming at once get disjoint batches and never wait on each other's
//!   rows (except a capped queue's count, which they take in turn). Each
//!   becomes `running` through the same checked transition the redb store
//!   commits (attempt counted), and gets a lease: its host, a fencing token
//!   from one sequence (every lease's larger than any before), and an
//!   expiry on the database's clock. A host serving with others leaves
//!   the tasks of plugins that need models it does not serve
//!   ([`PgStore::claim_leaving`]) to the hosts that serve them.
//! - **Renew.** The holder extends its leases ([`PgStore::renew`]) well
//!   within their length; a lease that lapsed or was taken over is not
//!   renewed and is reported lost, so the holder stops the attempt.
//! - **Finish.** An outcome commits only while its lease is live and its
//!   token is the task's ([`PgStore::finish`]): the lease row is locked and
//!   checked in the transaction that writes the outcome, and deleted with
//!   it. Otherwise [`PgError::Fenced`] and nothing is written.
//! - **Reap.** Lapsed leases are taken back ([`PgStore::reap`], by any
//!   host): the task goes back to pending with its attempt counted, or
//!   fails once out of attempts, as after a host's crash on redb.
//!
//! Times that decide who may do what (due times, lease expiry) are read
//! on the database's clock, so hosts' clocks may differ; a retry's due
//! time is its host's clock plus the backoff. A record that cannot be
//! decoded is quarantined by the claim, outcome or reap that reads it
//! (see `quarantine.rs`), which goes on without it.

use super::batch::{Done, PgOp, locked_records};
use super::{PgError, PgStore, PgTxn, RunCosts};
use crate::store::apply::apply_transition;
use crate::store::{Applied, Change, StoreError, StoredFailure, TaskRecord, TaskState, interrupted, start};
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// A running task's lease: the proof a host must show to write its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The task.
    pub task: Uuid,
    /// Its fencing token: larger than any lease's before it.
    pub token: i64,
}

/// A task a host claimed, as committed (`running`, attempt counted), with
/// its lease.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The record as claimed.
    pub record: TaskRecord,
    /// The lease to renew and to finish with.
    pub lease: Lease,
    /// The task's input, read with the record when it is at most 16 KiB;
    /// `None`: read it when the attempt starts.
    pub input: Option<Vec<u8>>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `completed`, `failed`, `retrying` or `cancelled` (or `pending`:
    /// claimed but not started).
    pub to: TaskState,
    /// Why, for the task's history.
    pub reason: String,
    /// The output of a completion.
    pub output: Option<Vec<u8>>,
    /// The failure of a failed or retrying attempt.
    pub error: Option<StoredFailure>,
    /// When a retrying task may start again (ms since the Unix epoch).
    pub retry_at_ms: Option<u64>,
}

impl Outcome {
    /// A completion with `output`.
    pub fn completed(output: Vec<u8>) -> Self {
        Self {
            to: TaskState::Completed,
            reason: "completed".into(),
            output: Some(output),
            error: None,
            retry_at_ms: None,
        }
    }

    /// The checked transition that records this outcome of task `id`.
    pub(crate) fn into_change(self, id: Uuid) -> Change {
        let Outcome { to, reason, output, error, retry_at_ms } = self;
        let mut change = Change::new(id, to, reason).edit(move |r| {
            r.error = error;
            r.next_run_at_ms = retry_at_ms;
        });
        if let Some(output) = output {
            change = change.output(output);
        }
        change
    }
}

impl PgStore {
    /// Claims up to `limit` startable tasks for `host`, each with a lease
    /// of `lease` (see the module's opening).
    pub async fn claim(&self, host: &str, limit: usize, lease: Duration) -> Result<Vec<Claimed>, PgError> {
        self.claim_fenced(host, limit, lease, None, &[], &RunCosts::default()).await
    }

    /// [`claim`](Self::claim), leaving the tasks of the plugins in `leave`
    /// to other hosts (routing by capability: those plugins need models
    /// `host` does not serve). Their queues take no share of this claim.
    pub async fn claim_leaving(
        &self,
        host: &str,
        limit: usize,
        lease: Duration,
        leave: &[String],
    ) -> Result<Vec<Claimed>, PgError> {
        self.claim_fenced(host, limit, lease, None, leave, &RunCosts::default()).await
    }

    /// [`claim_leaving`](Self::claim_leaving) under `fence`, the sole or
    /// leading engine's term: a host deposed ([`PgError::Deposed`]), or
    /// whose own lease lapsed ([`PgError::Lapsed`]), claims nothing. The
    /// queues share the claim's run time at `costs` (what their tasks cost
    /// `host`; see `fair.rs`).
    pub(crate) async fn claim_fenced(
        &self,
        host: &str,
        limit: usize,
        lease: Duration,
        fence: Option<super::Term>,
        leave: &[String],
        costs: &RunCosts,
    ) -> Result<Vec<Claimed>, PgError> {
        let mut txn = self.begin_fenced(fence).await?;
        let super::fair::Taken { records: found, mut inputs } =
            super::fair::take(&mut txn, limit, leave, costs).await?;
        if found.is_empty() {
            // What it quarantined, if anything, stays so.
            txn.commit().await?;
            return Ok(Vec::new());
        }
        let mut t = PgTxn::new(&mut txn);
        let starts: Vec<Change> = found.iter().map(|r| start(r.id, r.version)).collect();
        t.locked(found);
        let mut records = Vec::with_capacity(starts.len());
        for claim in starts {
            records.push(apply_transition(&mut t, claim).await?.record);
            t.keep();
        }
        let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
        let grant = super::txn::Grant { host, lease_ms: millis(lease), tasks: &ids };
        let tokens = t.flush_granting(grant).await?;
        txn.commit().await?;
        let tokens: HashMap<Uuid, i64> = tokens.into_iter().collect();
        records
            .into_iter()
            .map(|record| {
                let token = *tokens.get(&record.id).ok_or(PgError::NotFound(record.id))?;
                Ok(Claimed { lease: Lease { task: record.id, token }, input: inputs.remove(&record.id), record })
            })
            .collect()
    }

    /// Extends each of `leases` that is still live and still its holder's
    /// by `lease` from now; gives the tasks whose lease was lost (a task
    /// whose outcome this host committed meanwhile is among them).
    pub async fn renew(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Uuid>, PgError> {
        let (tasks, tokens): (Vec<Uuid>, Vec<i64>) = leases.iter().map(|l| (l.task, l.token)).unzip();
        let renewed: Vec<Uuid> = sqlx::query_scalar(
            // Rows locked in task order first, as a finish's batch and a
            // release lock theirs, so a renewal and a commit never wait
            // for each other in a cycle.
            "WITH held AS (
                 SELECT l.task_id FROM taskhost_leases AS l
                 JOIN unnest($1::uuid[], $2::bigint[]) AS h (task_id, token)
                   ON l.task_id = h.task_id AND l.token = h.token
                 ORDER BY l.task_id
                 FOR UPDATE OF l
             )
             UPDATE taskhost_leases AS l SET expires_at = clock_timestamp() + $3 * interval '1 millisecond'
             FROM held WHERE l.task_id = held.task_id AND l.expires_at > clock_timestamp()
             RETURNING l.task_id",
        )
        .bind(&tasks)
        .bind(&tokens)
        .bind(millis(lease))
        .fetch_all(self.pool())
        .await?;
        let renewed: HashSet<Uuid> = renewed.into_iter().collect();
        Ok(tasks.into_iter().filter(|t| !renewed.contains(t)).collect())
    }

    /// The task `lease` names, while it runs under that lease and the
    /// lease is live; `None` once it moved on, or its lease lapsed or was
    /// taken over (a host adopting a claim whose answer was lost must not
    /// run a task another host now runs).
    pub async fn running_under(&self, lease: &Lease) -> Result<Option<TaskRecord>, PgError> {
        let row: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT t.record FROM taskhost_tasks AS t JOIN taskhost_leases AS l ON l.task_id = t.id
             WHERE t.id = $1 AND l.token = $2 AND l.expires_at > clock_timestamp() AND t.state = 'running'",
        )
        .bind(lease.task)
        .bind(lease.token)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|bytes| crate::store::record::decode(&bytes)).transpose()?)
    }

    /// The running tasks a host named `host` that starts may take back:
    /// those it held leases on before it restarted, those whose lease
    /// lapsed, and those without one (started by a host of an earlier
    /// version). The others run on live hosts.
    pub async fn running_to_take_back(&self, host: &str) -> Result<HashSet<Uuid>, PgError> {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT t.id FROM taskhost_tasks AS t LEFT JOIN taskhost_leases AS l ON l.task_id = t.id
             WHERE t.state = 'running' AND (l.task_id IS NULL OR l.host = $1 OR l.expires_at <= clock_timestamp())",
        )
        .bind(host)
        .fetch_all(self.pool())
        .await?;
        Ok(ids.into_iter().collect())
    }

    /// The live leases `host` holds on running tasks.
    pub async fn leases_of(&self, host: &str) -> Result<Vec<Lease>, PgError> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT l.task_id, l.token FROM taskhost_leases AS l JOIN taskhost_tasks AS t ON t.id = l.task_id
             WHERE l.host = $1 AND l.expires_at > clock_timestamp() AND t.state = 'running'",
        )
        .bind(host)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(task, token)| Lease { task, token }).collect())
    }

    /// Commits how the attempt held under `lease` ended, if the lease is
    /// still live and still the task's; else [`PgError::Fenced`] and
    /// nothing is written.
    pub async fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<TaskRecord, PgError> {
        let mut done = self.finish_all(vec![(lease.clone(), outcome)]).await?;
        done.pop().unwrap_or(Err(PgError::NotFound(lease.task)))
    }

    /// Commits many attempts' outcomes in one transaction, each as
    /// [`finish`](Self::finish) would: one whose lease lapsed or was taken
    /// over is [`PgError::Fenced`] and writes nothing, and the others
    /// commit. The answers are in the order of `outcomes`.
    pub async fn finish_all(
        &self,
        outcomes: Vec<(Lease, Outcome)>,
    ) -> Result<Vec<Result<TaskRecord, PgError>>, PgError> {
        let changes = outcomes
            .into_iter()
            .map(|(lease, outcome)| {
                let change = outcome.into_change(lease.task);
                (lease, change)
            })
            .collect();
        let answers = self.finish_changes(changes).await?;
        Ok(answers.into_iter().map(|answer| answer.map(|applied| applied.record)).collect())
    }

    /// Commits the changes that end attempts held under leases, in one
    /// transaction, each through the store's checked transition (with a
    /// completion's output, transcript and flow effects) while its lease
    /// is live and still the task's; one whose lease lapsed or was taken
    /// over is [`PgError::Fenced`] and writes nothing. The answers are in
    /// the order of `changes`.
    pub(crate) async fn finish_changes(
        &self,
        changes: Vec<(Lease, Change)>,
    ) -> Result<Vec<Result<Applied, PgError>>, PgError> {
        let ops = changes.into_iter().map(|(lease, change)| PgOp::Finish(lease, change)).collect();
        let answers = self.commit_ops(ops, None).await?;
        Ok(answers.into_iter().map(|answer| answer.map(Done::applied)).collect())
    }

    /// Takes back up to `limit` lapsed leases: each task goes back to
    /// pending (its attempt counted) or fails once out of attempts. Gives
    /// the tasks as they are now. Any host may run it; leases another
    /// reaper holds are skipped.
    pub async fn reap(&self, limit: usize) -> Result<Vec<TaskRecord>, PgError> {
        let mut txn = self.pool().begin().await?;
        // Flows before rows (see `txn.rs`): the lapsed leases' tasks'
        // flows, then the leases still lapsed (and not another reaper's).
        let candidates: Vec<Uuid> = sqlx::query_scalar(
            "SELECT task_id FROM taskhost_leases WHERE expires_at <= clock_timestamp() ORDER BY expires_at LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *txn)
        .await?;
        if candidates.is_empty() {
            txn.commit().await?;
            return Ok(Vec::new());
        }
        let held_flows = super::txn::lock_flows_of(&mut txn, &candidates, []).await?;
        let rows = sqlx::query(
            "SELECT task_id, host FROM taskhost_leases
             WHERE task_id = ANY($1) AND expires_at <= clock_timestamp()
             ORDER BY task_id
             FOR UPDATE SKIP LOCKED",
        )
        .bind(&candidates)
        .fetch_all(&mut *txn)
        .await?;
        let mut lapsed = Vec::with_capacity(rows.len());
        for row in rows {
            lapsed.push((row.try_get::<Uuid, _>("task_id")?, row.try_get::<String, _>("host")?));
        }
        let ids: Vec<Uuid> = lapsed.iter().map(|(task, _)| *task).collect();
        let mut held = locked_records(&mut txn, &ids).await?.records;
        let mut changes = Vec::with_capacity(lapsed.len());
        for (task, host) in lapsed {
            // Missing: quarantined by the read (its lease went with it).
            if let Some(record) = held.get(&task) {
                changes.push(interrupted(record, &format!("host `{host}` lost its lease")));
            }
        }
        let mut t = PgTxn::new(&mut txn);
        t.flows_held(held_flows);
        t.lock_flows(held.values().map(|r| r.flow_id)).await?;
        t.locked(held.drain().map(|(_, r)| r));
        let mut reaped = Vec::with_capacity(changes.len());
        for change in changes {
            let id = change.id;
            match apply_transition(&mut t, change).await {
                Ok(applied) => {
                    t.release_lease(id);
                    t.keep();
                    reaped.push(applied.record);
                }
                Err(error @ StoreError::Postgres(_)) => return Err(error.into()),
                Err(refused) => {
                    // Not running any more (its lease outlived the attempt):
                    // the lease alone goes.
                    t.discard();
                    tracing::warn!(task = %id, %refused, "a lapsed lease's task was not running; its lease is removed");
                    t.release_lease(id);
                    t.keep();
                }
            }
        }
        t.flush().await?;
        txn.commit().await?;
        Ok(reaped)
    }
}

/// A duration in whole milliseconds, as a `bigint`.
pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
