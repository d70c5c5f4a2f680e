//! What a starting engine finds in its store: one scan of every task that
//! counts them per queue and state and what each tenant keeps, and keeps
//! the unfinished ones whole for the schedule. The ended tasks (nearly all
//! of a large store) are read from their records' leading fields only
//! ([`TaskSummary`](crate::store::TaskSummary)).

use crate::store::{Store, StoreError, TaskRecord, TaskState, TaskSummary, decode_record};
use std::collections::HashMap;

/// Tasks per state, by queue.
pub(crate) type StateCounts = HashMap<String, [i64; TaskState::ALL.len()]>;

/// What the scan found.
#[derive(Default)]
pub(crate) struct Found {
    /// Tasks per queue and state.
    pub(crate) by_queue: StateCounts,
    /// Bytes each tenant keeps in the store (inputs, outputs, transcripts).
    pub(crate) stored: HashMap<String, u64>,
    /// Tasks the host died running.
    pub(crate) interrupted: Vec<TaskRecord>,
    /// Pending and retrying tasks.
    pub(crate) unfinished: Vec<TaskRecord>,
}

impl Found {
    /// Scans `store` (blocking: it reads every task).
    pub(crate) fn scan(store: &Store) -> Result<Found, StoreError> {
        Self::scan_unless(store, || false)
    }

    /// Scans `store`: a redb file off the async workers, a PostgreSQL
    /// database as a stream of its rows (counted as redb's are).
    pub(crate) async fn scan_db(store: &crate::store::Db) -> Result<Found, StoreError> {
        match store {
            crate::store::Db::Redb(store) => {
                let store = store.clone();
                crate::sync::blocking(move || Found::scan(&store)).await
            }
            crate::store::Db::Postgres(pg) => {
                let mut found = Found::default();
                pg.store().scan_summaries(|summary, log_bytes, encoded| found.add(summary, log_bytes, encoded)).await?;
                Ok(found)
            }
        }
    }

    /// [`Found::scan`], given up once `stop` says so (asked every few
    /// thousand tasks).
    fn scan_unless(store: &Store, stop: impl Fn() -> bool) -> Result<Found, StoreError> {
        let mut found = Found::default();
        let mut seen = 0u64;
        store.scan_summaries(|summary, log_bytes, encoded| {
            seen += 1;
            if seen.is_multiple_of(4096) && stop() {
                return Err(StoreError::Refused("the start-up scan was given up".into()));
            }
            found.add(summary, log_bytes, encoded)
        })?;
        Ok(found)
    }

    /// Counts one stored task (its leading fields, the bytes of its
    /// transcripts, its encoded record), keeping it whole if it has not
    /// ended.
    fn add(&mut self, summary: TaskSummary<'_>, log_bytes: u64, encoded: &[u8]) -> Result<(), StoreError> {
        let kept = summary.input_len + summary.output_len.unwrap_or(0) + log_bytes;
        *slot(&mut self.stored, crate::tenant::tenant_of(summary.plugin)) += kept;
        slot(&mut self.by_queue, summary.queue)[summary.state as usize] += 1;
        match summary.state {
            TaskState::Running => self.interrupted.push(decode_record(encoded)?),
            TaskState::Pending | TaskState::Retrying => self.unfinished.push(decode_record(encoded)?),
            _ => {}
        }
        Ok(())
    }

    /// [`Found::scan`] of a store opened with
    /// [`Store::open_checking`], run beside the file's integrity check,
    /// and answered once the check ended: a damaged file is
    /// [`StoreError::Damaged`] at once, whatever the scan made of it (it
    /// stops soon after; a panic in it is caught).
    pub(crate) async fn scan_while_checking(store: &Store) -> Result<Found, StoreError> {
        let scanning = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                crate::store::quietly(|| Found::scan_unless(&store, || store.check_failed()))
            })
        };
        let checked = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.checked())
        };
        let joined = |e: tokio::task::JoinError| StoreError::CommitFailed(format!("the start-up scan stopped: {e}"));
        checked.await.map_err(joined)??;
        scanning.await.map_err(joined)?.unwrap_or_else(|panic| {
            Err(StoreError::Corrupt(format!("reading the tasks failed: {}", crate::store::panic_message(&panic))))
        })
    }
}

/// `map`'s value for `key`, a default one made if missing: the key is
/// copied only then (nearly every task's queue and tenant are known).
fn slot<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("made above if missing")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{record, task_in};
    use uuid::Uuid;

    #[tokio::test]
    async fn the_scan_counts_every_task_and_keeps_the_unfinished_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), true).unwrap();
        for (n, state) in [(1, TaskState::Completed), (2, TaskState::Completed), (3, TaskState::Running)] {
            task_in(&store, n, state).await;
        }
        task_in(&store, 4, TaskState::Retrying).await;
        let mut other = record(5, None);
        other.queue = "acme/q".into();
        other.plugin = "acme/p".into();
        other.input_len = 5;
        other.output_len = Some(7);
        store.submit(other, b"12345".to_vec()).await.unwrap();
        let found = Found::scan(&store).unwrap();
        assert_eq!(found.by_queue["q"][TaskState::Completed as usize], 2);
        assert_eq!(found.by_queue["q"][TaskState::Running as usize], 1);
        assert_eq!(found.by_queue["q"][TaskState::Retrying as usize], 1);
        assert_eq!(found.by_queue["acme/q"][TaskState::Pending as usize], 1);
        assert_eq!(found.interrupted.iter().map(|r| r.id).collect::<Vec<_>>(), vec![Uuid::from_u128(3)]);
        assert_eq!(found.unfinished.len(), 2, "the retrying and the pending task");
        let retrying = found.unfinished.iter().find(|r| r.id == Uuid::from_u128(4)).unwrap();
        assert_eq!(retrying.history.len(), 2, "kept whole, its history too");
        // What the records say they keep (the helper's say nothing).
        assert_eq!(found.stored["default"], 0);
        assert_eq!(found.stored["acme"], 12);
    }
}
