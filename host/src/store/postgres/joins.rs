//! Joins kept in the database (migration 11): a task that starts only
//! after others of its flow have ended (its record's `after`) is
//! `blocked` while any of them has not, so a claim on any host skips it
//! without reading records. Each dependency that had not ended when the
//! task was written is a row of `taskhost_waits`; a task's end (completed,
//! failed or cancelled) deletes the rows naming it and unblocks the tasks
//! left with none, in the transaction that ends it. A quarantined task
//! (its record cannot be decoded) never ends: what waits for it stays
//! blocked until an operator repairs or removes it.
//!
//! A task waits only for tasks of its own flow, and both the writes that
//! create a task and those that end one hold the flow's lock, taken
//! before any task's row (see `txn.rs`), so an end never misses a waiting
//! task written at the same time, and unblocking a waiting task's row
//! never waits for a transaction that waits for the flow. A dependency
//! that does not exist (removed by retention, or never committed) is
//! nothing to wait for, as on redb.

use super::quarantine::{Decoded, set_aside};
use super::txn::{flow_lock, lock_flows_of, lock_names};
use super::{PgError, PgStore};
use crate::store::{StoreError, TaskRecord, TaskState};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

/// Tasks the fill reads per transaction (a few in tests, so they read
/// several batches).
const FILL_BATCH: i64 = if cfg!(test) { 2 } else { 1_000 };

/// The dependencies of new tasks, gathered for one statement.
#[derive(Default)]
pub(super) struct NewWaits {
    deps: Vec<Uuid>,
    tasks: Vec<Uuid>,
}

impl NewWaits {
    /// Adds `record`'s dependencies, if it may start once they ended.
    pub(super) fn push(&mut self, record: &TaskRecord) {
        if matches!(record.state, TaskState::Pending | TaskState::Retrying) {
            for dep in &record.after {
                self.deps.push(*dep);
                self.tasks.push(record.id);
            }
        }
    }

    /// Writes a wait for each dependency that has not ended, as the rows
    /// are now in this transaction, and blocks the tasks that have one.
    pub(super) async fn write(self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.deps.is_empty() {
            return Ok(());
        }
        let unended = super::quarantine::unended("x");
        sqlx::query(&format!(
            "WITH waits AS (
                 INSERT INTO taskhost_waits (dep, task)
                 SELECT d.dep, d.task FROM unnest($1::uuid[], $2::uuid[]) AS d (dep, task)
                 WHERE EXISTS (SELECT 1 FROM taskhost_tasks AS x
                               WHERE x.id = d.dep AND {unended})
                 ON CONFLICT DO NOTHING
                 RETURNING task
             )
             UPDATE taskhost_tasks SET blocked = true WHERE id IN (SELECT task FROM waits) AND NOT blocked"
        ))
        .bind(&self.deps)
        .bind(&self.tasks)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Tasks `ended` will not run again: deletes the waits naming them (for
/// them, or theirs) and unblocks them and the tasks left waiting for
/// nothing. How many of the latter it unblocked (they may start now).
pub(super) async fn release(conn: &mut PgConnection, ended: &[Uuid]) -> Result<u64, StoreError> {
    if ended.is_empty() {
        return Ok(0);
    }
    // The update reads the table as it was before the delete (one
    // snapshot), so the rows deleted are left out by hand.
    let released: Vec<bool> = sqlx::query_scalar(
        "WITH gone AS (
             DELETE FROM taskhost_waits WHERE dep = ANY($1) OR task = ANY($1) RETURNING task
         )
         UPDATE taskhost_tasks AS t SET blocked = false
         WHERE t.id IN (SELECT task FROM gone) AND t.blocked
           AND (t.id = ANY($1)
                OR NOT EXISTS (SELECT 1 FROM taskhost_waits AS w WHERE w.task = t.id AND w.dep <> ALL($1)))
         RETURNING t.id <> ALL($1)",
    )
    .bind(ended)
    .fetch_all(&mut *conn)
    .await?;
    Ok(released.into_iter().filter(|&startable| startable).count() as u64)
}

impl PgStore {
    /// Writes the waits of the startable tasks stored before migration 11
    /// made them, from their records, a batch per transaction under the
    /// fill's mark (hosts starting at once take turns; each batch holds
    /// its tasks' flows' locks, so a dependency ending meanwhile is seen),
    /// then deletes the mark. A record that cannot be decoded is
    /// quarantined. How many tasks it read.
    pub(super) async fn fill_waits(&self) -> Result<u64, PgError> {
        let mut read = 0;
        loop {
            let mut txn = self.pool().begin().await?;
            let mark: Option<(Option<Uuid>, Option<Uuid>)> =
                sqlx::query_as("SELECT upto, done_to FROM taskhost_waits_fill LIMIT 1 FOR UPDATE")
                    .fetch_optional(&mut *txn)
                    .await?;
            // No mark (done, or nothing was stored), an empty store's, or
            // nothing left after the last batch: the mark goes.
            let batch: Vec<Uuid> = match mark {
                Some((Some(upto), done_to)) => {
                    sqlx::query_scalar(
                        "SELECT id FROM taskhost_tasks
                         WHERE id <= $1 AND id > $2 AND state IN ('pending', 'retrying') ORDER BY id LIMIT $3",
                    )
                    .bind(upto)
                    .bind(done_to.unwrap_or(Uuid::nil()))
                    .bind(FILL_BATCH)
                    .fetch_all(&mut *txn)
                    .await?
                }
                _ => Vec::new(),
            };
            let Some(&last) = batch.last() else {
                sqlx::query("DELETE FROM taskhost_waits_fill").execute(&mut *txn).await?;
                txn.commit().await?;
                return Ok(read);
            };
            // The batch's tasks' flows, then their rows (see `txn.rs`).
            let held = lock_flows_of(&mut txn, &batch, []).await?;
            // Still startable once locked (ended meanwhile: nothing to do).
            let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
                "SELECT id, record FROM taskhost_tasks
                 WHERE id = ANY($1) AND state IN ('pending', 'retrying') ORDER BY id FOR UPDATE",
            )
            .bind(&batch)
            .fetch_all(&mut *txn)
            .await?;
            read += batch.len() as u64;
            let decoded = Decoded::of(rows);
            set_aside(&mut txn, &decoded.bad).await?;
            // A task not listed yet (the listings' fill runs on another
            // host) had its flow not locked above: now, late.
            let late = decoded.records.iter().filter(|r| !held.contains(&r.flow_id));
            lock_names(&mut txn, late.map(|r| flow_lock(r.flow_id)).collect()).await?;
            let mut waits = NewWaits::default();
            decoded.records.iter().for_each(|r| waits.push(r));
            waits.write(&mut txn).await?;
            sqlx::query("UPDATE taskhost_waits_fill SET done_to = $1").bind(last).execute(&mut *txn).await?;
            txn.commit().await?;
        }
    }
}
