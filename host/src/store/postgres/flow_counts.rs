//! Each flow's count of tasks that have not ended (migration 12), kept in
//! the database by the transactions that write its tasks, so the host
//! that ends a flow's last task, whichever it is, can tell under the
//! flow's lock that nothing of the flow is left to run.
//!
//! A transaction adds, per flow, the tasks it created unended, less those
//! it ended, plus those it started again (a re-submitted failure), each
//! task's state before its write read from the row it locked. A flow whose
//! record it created is counted from its tasks instead (as this
//! transaction leaves them). A count that cannot be kept exactly (a write
//! whose earlier state was not read under its lock, a flow from before
//! the count existed) is NULL and counted again from the tasks when next
//! read ([`PgStore::flow_unfinished`]). Only flows with a record (those
//! that grew past one task) are counted, as the engine's book counts
//! them. A task quarantined before it ended never ends (see
//! `quarantine.rs`): it stays counted, so its flow does not end without
//! it.

use super::txn::flow_lock;
use super::{PgError, PgStore};
use crate::store::StoreError;
use sqlx::postgres::PgConnection;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// How one transaction changes flows' counts.
#[derive(Default)]
pub(super) struct CountChanges {
    /// Flows whose count moves by this much (`None`: by an amount not
    /// known, so it is counted again when read).
    by: BTreeMap<Uuid, Option<i64>>,
    /// Flows to count from their tasks (their record is new).
    recount: BTreeSet<Uuid>,
}

impl CountChanges {
    /// Task of flow `flow` was written `unended` (or not), having been
    /// `before` (`Some(unended)` as read; `None`: a new task; an
    /// existing task whose earlier state is not known is
    /// [`unknown`](Self::unknown)).
    pub(super) fn task(&mut self, flow: Uuid, before: Option<bool>, unended: bool) {
        let delta = i64::from(unended) - i64::from(before.unwrap_or(false));
        if delta != 0
            && let Some(by) = self.by.entry(flow).or_insert(Some(0))
        {
            *by += delta;
        }
    }

    /// Flow `flow`'s count can no longer be kept exactly.
    pub(super) fn unknown(&mut self, flow: Uuid) {
        self.by.insert(flow, None);
    }

    /// Flow `flow`'s record is new: its count is taken from its tasks.
    pub(super) fn created(&mut self, flow: Uuid) {
        self.recount.insert(flow);
    }

    /// Flows for which `uncounted` holds have no count (no record, as
    /// read under their lock): their changes are dropped.
    pub(super) fn uncounted(&mut self, uncounted: impl Fn(&Uuid) -> bool) {
        self.by.retain(|flow, _| !uncounted(flow));
    }

    /// Writes the changes, after the tasks' and flows' rows are written,
    /// and notes each flow whose count they brought to zero, or which
    /// ended a task of while its count is not known (see
    /// [`PgStore::flow_ends_noted`]; a note made again is dated anew).
    pub(super) async fn write(self, conn: &mut PgConnection) -> Result<(), StoreError> {
        let recount: Vec<Uuid> = self.recount.into_iter().collect();
        if !recount.is_empty() {
            sqlx::query(&format!(
                "WITH counted AS (
                     UPDATE taskhost_flows AS f SET unfinished = {} WHERE f.id = ANY($1) RETURNING f.id, f.unfinished
                 )
                 INSERT INTO taskhost_flow_ends (flow_id) SELECT id FROM counted WHERE unfinished = 0
                 ON CONFLICT (flow_id) DO UPDATE SET noted_at = excluded.noted_at",
                count()
            ))
            .bind(&recount)
            .execute(&mut *conn)
            .await?;
        }
        let (mut ids, mut deltas) = (Vec::new(), Vec::new());
        for (flow, by) in self.by {
            if by != Some(0) && recount.binary_search(&flow).is_err() {
                ids.push(flow);
                deltas.push(by);
            }
        }
        if !ids.is_empty() {
            // NULL + anything stays NULL: counted when read.
            sqlx::query(
                "WITH moved AS (
                     UPDATE taskhost_flows AS f SET unfinished = f.unfinished + d.delta
                     FROM unnest($1::uuid[], $2::bigint[]) AS d (id, delta) WHERE f.id = d.id
                     RETURNING f.id, f.unfinished, d.delta
                 )
                 INSERT INTO taskhost_flow_ends (flow_id)
                 SELECT id FROM moved WHERE (unfinished = 0 AND delta < 0) OR (unfinished IS NULL AND (delta < 0 OR delta IS NULL))
                 ON CONFLICT (flow_id) DO UPDATE SET noted_at = excluded.noted_at",
            )
            .bind(&ids)
            .bind(&deltas)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// SQL: a flow's (`f`'s) tasks that have not ended, counted from the
/// tasks.
fn count() -> String {
    let unended = super::quarantine::unended("t");
    format!(
        "(SELECT count(*) FROM taskhost_listed AS l JOIN taskhost_tasks AS t ON t.id = l.id
          WHERE l.flow_id = f.id AND {unended})"
    )
}

/// A flow whose count of unended tasks reached zero, as noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEndNote {
    /// The flow.
    pub flow: Uuid,
    /// When the note was made, on the database's clock (milliseconds since
    /// the Unix epoch): it identifies the note.
    pub noted_at_ms: i64,
}

impl PgStore {
    /// Flows whose count of unended tasks reached zero at least `age` ago
    /// and whose end is not recorded yet, oldest first, at most `limit`.
    /// The transaction that ends a flow's last task notes the flow; the
    /// next write of the flow's record (its end, its next iteration, a
    /// cancel) clears the note. So a note this old says the host that
    /// ended the last task stopped before it recorded the flow's end:
    /// another records it, then [`forget_flow_end`](Self::forget_flow_end)s
    /// the note (a flow already ended, or removed, leaves only the note).
    pub async fn flow_ends_noted(&self, age: std::time::Duration, limit: usize) -> Result<Vec<FlowEndNote>, PgError> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT flow_id, (extract(epoch FROM noted_at) * 1000)::bigint FROM taskhost_flow_ends
             WHERE noted_at <= clock_timestamp() - $1 * interval '1 millisecond'
             ORDER BY noted_at LIMIT $2",
        )
        .bind(super::leases::millis(age))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(flow, noted_at_ms)| FlowEndNote { flow, noted_at_ms }).collect())
    }

    /// Dates `note` anew: the flow's end could not be recorded now, and is
    /// tried again once the note is old again (the notes behind it go
    /// first meanwhile).
    pub async fn postpone_flow_end(&self, note: FlowEndNote) -> Result<(), PgError> {
        self.on_note("UPDATE taskhost_flow_ends SET noted_at = clock_timestamp()", note).await
    }

    /// Removes `note`, unless the flow was noted again since.
    pub async fn forget_flow_end(&self, note: FlowEndNote) -> Result<(), PgError> {
        self.on_note("DELETE FROM taskhost_flow_ends", note).await
    }

    /// Runs `statement` (an update or delete of `taskhost_flow_ends`) on
    /// `note`'s row, unless the flow was noted again since (its time,
    /// read as [`flow_ends_noted`](Self::flow_ends_noted) reads it, moved).
    async fn on_note(&self, statement: &str, note: FlowEndNote) -> Result<(), PgError> {
        sqlx::query(&format!("{statement} WHERE flow_id = $1 AND (extract(epoch FROM noted_at) * 1000)::bigint = $2"))
            .bind(note.flow)
            .bind(note.noted_at_ms)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// How many tasks of flow `id` have not ended (pending, running or
    /// retrying), read under the flow's lock; `None` for a flow without a
    /// record (one that never grew past its root). A count not known is
    /// taken from the tasks and kept.
    pub async fn flow_unfinished(&self, id: Uuid) -> Result<Option<u64>, PgError> {
        let mut txn = self.pool().begin().await?;
        super::txn::lock_names(&mut txn, vec![flow_lock(id)]).await?;
        let row: Option<Option<i64>> = sqlx::query_scalar("SELECT unfinished FROM taskhost_flows WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *txn)
            .await?;
        let count = match row {
            None => None,
            Some(Some(count)) if count >= 0 => Some(count),
            stale => {
                if stale != Some(None) {
                    tracing::warn!(flow = %id, count = ?stale, "a flow's count of unended tasks was below zero; counting again");
                }
                Some(
                    sqlx::query_scalar(&format!(
                        "UPDATE taskhost_flows AS f SET unfinished = {} WHERE f.id = $1 RETURNING unfinished",
                        count()
                    ))
                    .bind(id)
                    .fetch_one(&mut *txn)
                    .await?,
                )
            }
        };
        txn.commit().await?;
        Ok(count.map(|n| u64::try_from(n).unwrap_or(0)))
    }
}
