//! Claims, leases and fencing on PostgreSQL: how hosts sharing one
//! database take tasks without taking one twice, and how a task's outcome
//! commits at most once when a host that was thought dead comes back.
//!
//! - **Claim.** [`PgStore::claim`] takes up to `limit` startable tasks
//!   (pending or retrying, due) by priority, then due time, then age, with
//!   `FOR UPDATE SKIP LOCKED`: hosts claiming at once get disjoint batches
//!   and never wait on each other's rows. Each becomes `running` through
//!   the same checked transition the redb store commits (attempt counted),
//!   and gets a lease: its host, a fencing token from one sequence (every
//!   lease's larger than any before), and an expiry on the database's clock.
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
//! decoded fails the whole claim or reap it is in (it is not skipped):
//! quarantining such rows is still to be built.

use super::{PgError, PgStore, to_i64};
use crate::store::{
    Change, StoredFailure, TaskRecord, TaskState, decode_record, interrupted, record::encode, start, step,
};
use sqlx::Row;
use sqlx::postgres::PgConnection;
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

impl PgStore {
    /// Claims up to `limit` startable tasks for `host`, each with a lease
    /// of `lease` (see the module's opening).
    pub async fn claim(&self, host: &str, limit: usize, lease: Duration) -> Result<Vec<Claimed>, PgError> {
        let mut txn = self.pool().begin().await?;
        let rows = sqlx::query(
            "SELECT record FROM taskhost_tasks
             WHERE state IN ('pending', 'retrying')
               AND due_at_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint
             ORDER BY priority DESC, due_at_ms, id
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *txn)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let mut record = decode_record(row.try_get("record")?)?;
            let claim = start(record.id, record.version);
            step(&mut record, claim)?;
            write_record(&mut txn, &record, None).await?;
            let token: i64 = sqlx::query_scalar(
                "INSERT INTO taskhost_leases (task_id, host, token, expires_at)
                 VALUES ($1, $2, nextval('taskhost_fencing_tokens'), clock_timestamp() + $3 * interval '1 millisecond')
                 RETURNING token",
            )
            .bind(record.id)
            .bind(host)
            .bind(millis(lease))
            .fetch_one(&mut *txn)
            .await?;
            let lease = Lease { task: record.id, token };
            claimed.push(Claimed { record, lease });
        }
        txn.commit().await?;
        Ok(claimed)
    }

    /// Extends each of `leases` that is still live and still its holder's
    /// by `lease` from now; gives the tasks whose lease was lost (a task
    /// whose outcome this host committed meanwhile is among them).
    pub async fn renew(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Uuid>, PgError> {
        let (tasks, tokens): (Vec<Uuid>, Vec<i64>) = leases.iter().map(|l| (l.task, l.token)).unzip();
        let renewed: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE taskhost_leases AS l SET expires_at = clock_timestamp() + $3 * interval '1 millisecond'
             FROM unnest($1::uuid[], $2::bigint[]) AS held (task_id, token)
             WHERE l.task_id = held.task_id AND l.token = held.token AND l.expires_at > clock_timestamp()
             RETURNING l.task_id",
        )
        .bind(&tasks)
        .bind(&tokens)
        .bind(millis(lease))
        .fetch_all(self.pool())
        .await?;
        let renewed: std::collections::HashSet<Uuid> = renewed.into_iter().collect();
        Ok(tasks.into_iter().filter(|t| !renewed.contains(t)).collect())
    }

    /// Commits how the attempt held under `lease` ended, if the lease is
    /// still live and still the task's; else [`PgError::Fenced`] and
    /// nothing is written.
    pub async fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<TaskRecord, PgError> {
        let fenced = || PgError::Fenced { id: lease.task, token: lease.token };
        let mut txn = self.pool().begin().await?;
        // Locks the lease: a reaper taking it back waits, or has taken it.
        let live: Option<i64> = sqlx::query_scalar(
            "SELECT token FROM taskhost_leases
             WHERE task_id = $1 AND token = $2 AND expires_at > clock_timestamp()
             FOR UPDATE",
        )
        .bind(lease.task)
        .bind(lease.token)
        .fetch_optional(&mut *txn)
        .await?;
        if live.is_none() {
            return Err(fenced());
        }
        let mut record = locked_record(&mut txn, lease.task).await?;
        let Outcome { to, reason, output, error, retry_at_ms } = outcome;
        let output_len = output.as_ref().map(|o| o.len() as u64);
        let change = Change::new(lease.task, to, reason).edit(move |r| {
            r.error = error;
            r.next_run_at_ms = retry_at_ms;
            if output_len.is_some() {
                r.output_len = output_len;
            }
        });
        step(&mut record, change)?;
        write_record(&mut txn, &record, output.as_deref()).await?;
        sqlx::query("DELETE FROM taskhost_leases WHERE task_id = $1").bind(lease.task).execute(&mut *txn).await?;
        txn.commit().await?;
        Ok(record)
    }

    /// Takes back up to `limit` lapsed leases: each task goes back to
    /// pending (its attempt counted) or fails once out of attempts. Gives
    /// the tasks as they are now. Any host may run it; leases another
    /// reaper holds are skipped.
    pub async fn reap(&self, limit: usize) -> Result<Vec<TaskRecord>, PgError> {
        let mut txn = self.pool().begin().await?;
        let rows = sqlx::query(
            "SELECT l.task_id, l.host FROM taskhost_leases AS l
             WHERE l.expires_at <= clock_timestamp()
             ORDER BY l.expires_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *txn)
        .await?;
        let mut reaped = Vec::with_capacity(rows.len());
        for row in rows {
            let (task, host): (Uuid, String) = (row.try_get("task_id")?, row.try_get("host")?);
            let mut record = locked_record(&mut txn, task).await?;
            let change: Change = interrupted(&record, &format!("host `{host}` lost its lease"));
            step(&mut record, change)?;
            write_record(&mut txn, &record, None).await?;
            sqlx::query("DELETE FROM taskhost_leases WHERE task_id = $1").bind(task).execute(&mut *txn).await?;
            reaped.push(record);
        }
        txn.commit().await?;
        Ok(reaped)
    }
}

/// Task `id`'s record, its row locked until the transaction ends.
async fn locked_record(conn: &mut PgConnection, id: Uuid) -> Result<TaskRecord, PgError> {
    let row = sqlx::query("SELECT record FROM taskhost_tasks WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(PgError::NotFound(id))?;
    Ok(decode_record(row.try_get("record")?)?)
}

/// Writes `record` and the columns queried beside it (and `output`, when
/// given) to its row.
async fn write_record(conn: &mut PgConnection, record: &TaskRecord, output: Option<&[u8]>) -> Result<(), PgError> {
    sqlx::query(
        "UPDATE taskhost_tasks
         SET state = $2, version = $3, due_at_ms = $4, record = $5, output = coalesce($6, output)
         WHERE id = $1",
    )
    .bind(record.id)
    .bind(record.state.as_str())
    .bind(to_i64(record.version))
    .bind(to_i64(record.next_run_at_ms.unwrap_or(0)))
    .bind(encode(record))
    .bind(output)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A duration in whole milliseconds, as a `bigint`.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
