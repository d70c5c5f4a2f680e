//! How many tasks each queue holds in each state, kept by the database
//! (`taskhost_state_counts`, migration 16): statement triggers on the task
//! table add every write's changes to rows of the writing connection's own
//! (keyed by its server process id, unique among live connections), so
//! every host reads the same counts, whichever host or statement wrote the
//! tasks, and no two transactions wait on one count. The leader folds the
//! rows of connections not writing now into one row per queue and state
//! ([`PgStore::fold_state_counts`]), so the table stays about as small as
//! the queues times the states (times the connections writing meanwhile).

use super::reads::state_named;
use super::{PgError, PgStore};
use crate::store::TaskState;

/// Sums the rows of every connection (quarantined tasks aside).
const TOTALS: &str = "SELECT queue, state, sum(n)::bigint AS n FROM taskhost_state_counts
                      WHERE state <> 'quarantined' GROUP BY queue, state HAVING sum(n) <> 0";

impl PgStore {
    /// How many tasks are in each state (quarantined ones aside: see
    /// [`PgStore::quarantined`]), in the order of [`TaskState::ALL`].
    pub async fn state_counts(&self) -> Result<Vec<(TaskState, i64)>, PgError> {
        let mut totals = [0i64; TaskState::ALL.len()];
        for (_, state, n) in self.counts_by_queue().await? {
            totals[state as usize] += i64::try_from(n).unwrap_or(i64::MAX);
        }
        Ok(TaskState::ALL.into_iter().zip(totals).filter(|(_, n)| *n != 0).collect())
    }

    /// Each queue's tasks by state, on every host (quarantined ones aside;
    /// a queue and state left out has none): one read of a table about as
    /// small as the queues times the states, however many tasks are
    /// stored.
    pub async fn counts_by_queue(&self) -> Result<Vec<(String, TaskState, u64)>, PgError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(TOTALS).fetch_all(self.pool()).await?;
        let mut counts = Vec::with_capacity(rows.len());
        for (queue, state, n) in rows {
            // Only writes made with the triggers off (a restore with them
            // disabled, say) can make a count negative: it reads as none,
            // and the rest are still read.
            let n = u64::try_from(n).unwrap_or_else(|_| {
                tracing::warn!(
                    queue,
                    state,
                    n,
                    "the database counts fewer than no tasks in this queue and state (tasks were written with \
                     taskhost's triggers off); counted as none"
                );
                0
            });
            counts.push((queue, state_named(&state)?, n));
        }
        Ok(counts)
    }

    /// Folds the counts of every connection not writing tasks now into
    /// one row per queue and state, and drops the rows left at zero;
    /// returns how many rows it folded. Never waits for a writer: the rows
    /// a transaction in flight holds are left for the next fold (and a
    /// writer that finds its row being folded waits for the fold, then
    /// writes a new one). Folds from two hosts at once lock in one order.
    pub async fn fold_state_counts(&self) -> Result<u64, PgError> {
        // One statement: the fold is one transaction of its own.
        let folded: i64 = sqlx::query_scalar(
            "WITH picked AS (
                 SELECT pid, queue, state FROM taskhost_state_counts WHERE pid <> 0 FOR UPDATE SKIP LOCKED
             ), gone AS (
                 DELETE FROM taskhost_state_counts AS c USING picked AS p
                 WHERE c.pid = p.pid AND c.queue = p.queue AND c.state = p.state
                 RETURNING c.queue, c.state, c.n
             ), added AS (
                 INSERT INTO taskhost_state_counts (pid, queue, state, n)
                 SELECT 0, queue, state, sum(n) FROM gone GROUP BY queue, state ORDER BY queue, state
                 ON CONFLICT (pid, queue, state) DO UPDATE SET n = taskhost_state_counts.n + excluded.n
             )
             SELECT count(*) FROM gone",
        )
        .fetch_one(self.pool())
        .await?;
        // In the order a fold writes them, and none another fold holds.
        sqlx::query(
            "DELETE FROM taskhost_state_counts WHERE (pid, queue, state) IN (
                 SELECT pid, queue, state FROM taskhost_state_counts WHERE pid = 0 AND n = 0
                 ORDER BY queue, state FOR UPDATE SKIP LOCKED
             )",
        )
        .execute(self.pool())
        .await?;
        Ok(u64::try_from(folded).unwrap_or(0))
    }
}
