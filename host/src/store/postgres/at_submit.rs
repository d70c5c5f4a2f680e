//! Claims committed with a submission: an idle host asks the group
//! committer to start a task it submits in the transaction that creates
//! it ([`ClaimAtSubmit`]), so the task runs after one commit instead of
//! two (the submission, then a claim woken by it), and its row is written
//! once, already running, with its lease. As redb's scheduler does
//! (`Scheduler::claim_now`), this happens only when a claim would take the
//! task next anyway: the batch's transaction first reads that no task
//! anywhere is startable now by a claim ([`StartNow::read`]; one whose
//! queue or tenant is at its running limit waits either way) and that neither the
//! task's queue nor its tenant has a running limit (a capped one is
//! claimed as usual, under its advisory lock and count); within the
//! batch, once an operation made a task startable, later submissions are
//! not started with their commit ([`StartNow::noted`]), nor, while tasks
//! wait for a running limit, once a transition may have freed it
//! ([`StartNow::transitioned`]). Nothing here
//! takes a lock, so a batch waits for nothing more than it did.
//!
//! The read is a snapshot: a task another transaction makes startable at
//! the same moment, or one a join releases as this batch flushes (an
//! outcome in it ending a step's last predecessor), is claimed next, after
//! a task started here, as with two claims committing side by side.

use super::fair::{READY_QUEUES, TENANT_OF_QUEUE};
use super::leases::millis;
use super::{Lease, PgError};
use crate::store::{TaskRecord, TaskState, now_ms};
use sqlx::postgres::PgConnection;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// A submission's ask to be started in its own commit, under a lease of
/// `lease` held by host `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimAtSubmit {
    pub(crate) host: String,
    pub(crate) lease: Duration,
}

/// What a batch's submissions asking to be started may do.
#[derive(Debug, Default)]
pub(super) struct StartNow {
    /// No task is startable outside the batch, nor made so by an
    /// operation of it applied so far.
    idle: bool,
    /// Tasks wait that only their queue's or tenant's running limit holds
    /// back: a running task's end may free one.
    held: bool,
    /// The queues of the asks whose queue or tenant has a running limit.
    capped: HashSet<String>,
}

impl StartNow {
    /// Reads, in the transaction `conn` is in, whether any task is
    /// startable now (its queue and tenant under their running limits) and
    /// which of `queues` (those of the asks) are capped.
    pub(super) async fn read(conn: &mut PgConnection, queues: Vec<String>) -> Result<Self, PgError> {
        // The claims' walk of the queues holding startable tasks, twice:
        // stopping at the first with one due, and at the first with one due
        // that a claim would take, its queue and tenant under their running
        // limits (counted without their locks: a snapshot, as the rest).
        let (due, busy, capped): (bool, bool, Vec<String>) = sqlx::query_as(&format!(
            "{READY_QUEUES}
             SELECT
                 EXISTS (SELECT 1 FROM ready AS r WHERE r.queue IS NOT NULL AND EXISTS (
                     SELECT 1 FROM taskhost_tasks AS t
                     WHERE t.queue = r.queue AND t.state IN ('pending', 'retrying') AND NOT t.blocked
                       AND t.due_at_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint)),
                 EXISTS (SELECT 1 FROM ready AS r LEFT JOIN taskhost_queues AS q ON q.name = r.queue
                     WHERE r.queue IS NOT NULL AND EXISTS (
                         SELECT 1 FROM taskhost_tasks AS t
                         WHERE t.queue = r.queue AND t.state IN ('pending', 'retrying') AND NOT t.blocked
                           AND t.due_at_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                       AND (q.concurrency IS NULL OR q.concurrency > (
                           SELECT count(*) FROM taskhost_tasks AS u WHERE u.queue = r.queue AND u.state = 'running'))
                       AND NOT EXISTS (
                           SELECT 1 FROM taskhost_tenants AS tn
                           WHERE tn.name = {TENANT_OF_QUEUE}
                             AND jsonb_typeof(tn.record->'quotas'->'max_running') = 'number'
                             AND (tn.record->'quotas'->>'max_running')::bigint <= (
                                 SELECT count(*) FROM taskhost_tasks AS u
                                 WHERE u.state = 'running' AND {TENANT_OF_U} = tn.name))),
                 ARRAY(SELECT a.queue FROM unnest($1::text[]) AS a (queue)
                       WHERE EXISTS (SELECT 1 FROM taskhost_queues AS q
                                     WHERE q.name = a.queue AND q.concurrency IS NOT NULL)
                          OR EXISTS (SELECT 1 FROM taskhost_tenants AS tn
                                     WHERE tn.name = {TENANT_OF_QUEUE}
                                       AND jsonb_typeof(tn.record->'quotas'->'max_running') = 'number'))",
            TENANT_OF_U = TENANT_OF_QUEUE.replace("queue", "u.queue"),
        ))
        .bind(&queues)
        .fetch_one(&mut *conn)
        .await?;
        Ok(Self { idle: !busy, held: due && !busy, capped: capped.into_iter().collect() })
    }

    /// Whether `record`, about to be created, may start in this commit: a
    /// plain task due now, pending, of an uncapped queue and tenant, while
    /// nothing else is startable.
    pub(super) fn may_start(&self, record: &TaskRecord) -> bool {
        self.idle
            && record.state == TaskState::Pending
            && record.after.is_empty()
            && record.next_run_at_ms.is_none_or(|at| at <= now_ms())
            && !self.capped.contains(&record.queue)
    }

    /// Notes a transition an operation of the batch applied: while tasks
    /// wait only for a running limit, one that ended a running task may
    /// have freed it, so the submissions after it wait for a claim.
    pub(super) fn transitioned(&mut self) {
        if self.held {
            self.idle = false;
        }
    }

    /// Notes a task an operation of the batch wrote: once one is startable
    /// (pending or retrying), the submissions after it wait for a claim.
    pub(super) fn noted<'a>(&mut self, written: impl IntoIterator<Item = &'a TaskRecord>) {
        let startable = |r: &TaskRecord| matches!(r.state, TaskState::Pending | TaskState::Retrying);
        if written.into_iter().any(startable) {
            self.idle = false;
        }
    }
}

/// Gives each of `started` (tasks this transaction created running, each
/// with its ask) its lease; the tokens by task.
pub(super) async fn lease(
    conn: &mut PgConnection,
    started: &[(Uuid, ClaimAtSubmit)],
) -> Result<HashMap<Uuid, Lease>, PgError> {
    if started.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<Uuid> = started.iter().map(|(id, _)| *id).collect();
    let hosts: Vec<&str> = started.iter().map(|(_, ask)| ask.host.as_str()).collect();
    let lengths: Vec<i64> = started.iter().map(|(_, ask)| millis(ask.lease)).collect();
    let tokens: Vec<(Uuid, i64)> = sqlx::query_as(
        "INSERT INTO taskhost_leases (task_id, host, token, expires_at)
         SELECT c.id, c.host, nextval('taskhost_fencing_tokens'), clock_timestamp() + c.ms * interval '1 millisecond'
         FROM unnest($1::uuid[], $2::text[], $3::bigint[]) AS c (id, host, ms)
         RETURNING task_id, token",
    )
    .bind(&ids)
    .bind(&hosts)
    .bind(&lengths)
    .fetch_all(&mut *conn)
    .await?;
    Ok(tokens.into_iter().map(|(task, token)| (task, Lease { task, token })).collect())
}
