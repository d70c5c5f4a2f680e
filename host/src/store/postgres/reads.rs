//! Reads of the PostgreSQL store, each answering as the redb store's
//! method of the same name does: a task's record, input, output and
//! transcripts, the task an idempotency key names, a flow, its tasks and
//! its context and its size, every flow, and counts by state. Each is one statement outside any
//! transaction; a read that fails is an error, never "absent".

use super::{PgError, PgStore};
use crate::store::record::decode;
use crate::store::{FlowRecord, StoreError, TaskRecord, TaskState, TaskSummary};
use std::collections::HashMap;
use uuid::Uuid;

impl PgStore {
    /// How many tasks of plugin `name` at `version` have not ended, on
    /// every host (a version deleted under them would fail them).
    pub async fn unended_of_version(&self, name: &str, version: &str) -> Result<u64, PgError> {
        let records: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT t.record FROM taskhost_listed AS l JOIN taskhost_tasks AS t ON t.id = l.id
             WHERE l.plugin = $1 AND t.state IN ('pending', 'running', 'retrying')",
        )
        .bind(name)
        .fetch_all(self.pool())
        .await?;
        let mut n = 0;
        for record in records {
            // One that cannot be read is counted: it may use the version.
            if crate::store::decode_record(&record).is_ok_and(|r| r.plugin_version != version) {
                continue;
            }
            n += 1;
        }
        Ok(n)
    }

    /// One task's record.
    pub async fn get(&self, id: Uuid) -> Result<Option<TaskRecord>, PgError> {
        let row: Option<Vec<u8>> = sqlx::query_scalar("SELECT record FROM taskhost_tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|bytes| decode(&bytes)).transpose()?)
    }

    /// A task's input.
    pub async fn input(&self, id: Uuid) -> Result<Option<Vec<u8>>, PgError> {
        Ok(sqlx::query_scalar("SELECT input FROM taskhost_tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?)
    }

    /// A task's output, once it completed.
    pub async fn output(&self, id: Uuid) -> Result<Option<Vec<u8>>, PgError> {
        let row: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT output FROM taskhost_tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.flatten())
    }

    /// The transcript of a task's attempt.
    pub async fn attempt_log(&self, id: Uuid, attempt: u32) -> Result<Option<crate::sandbox::AttemptLog>, PgError> {
        let row: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT log FROM taskhost_logs WHERE task_id = $1 AND attempt = $2")
                .bind(id)
                .bind(i64::from(attempt))
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|bytes| decode(&bytes)).transpose()?)
    }

    /// The task an idempotency key of the API's namespace names.
    pub async fn task_by_key(&self, key: &str) -> Result<Option<Uuid>, PgError> {
        Ok(sqlx::query_scalar("SELECT id FROM taskhost_tasks WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await?)
    }

    /// The task a key of `flow`'s own namespace names.
    pub async fn child_by_key(&self, flow: Uuid, key: &str) -> Result<Option<Uuid>, PgError> {
        Ok(sqlx::query_scalar("SELECT task_id FROM taskhost_flow_keys WHERE flow_id = $1 AND key = $2")
            .bind(flow)
            .bind(key)
            .fetch_optional(self.pool())
            .await?)
    }

    /// A flow's record.
    pub async fn flow(&self, id: Uuid) -> Result<Option<FlowRecord>, PgError> {
        let row: Option<Vec<u8>> = sqlx::query_scalar("SELECT record FROM taskhost_flows WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|bytes| decode(&bytes)).transpose()?)
    }

    /// A flow's tasks: its root (whose id is the flow's) first, if it has
    /// one, then the tasks it grew in submission order.
    pub async fn flow_tasks(&self, flow: Uuid) -> Result<Vec<TaskRecord>, PgError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT record FROM (
                 SELECT t.record, 0 AS part, t.id FROM taskhost_tasks AS t WHERE t.id = $1
                 UNION ALL
                 SELECT t.record, 1, t.id FROM taskhost_flow_tasks AS f JOIN taskhost_tasks AS t ON t.id = f.task_id
                 WHERE f.flow_id = $1
             ) AS tasks ORDER BY part, id",
        )
        .bind(flow)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|bytes| Ok(decode(bytes)?)).collect()
    }

    /// A value of a flow's context.
    pub async fn context_get(&self, flow: Uuid, key: &str) -> Result<Option<Vec<u8>>, PgError> {
        Ok(sqlx::query_scalar("SELECT value FROM taskhost_context WHERE flow_id = $1 AND key = $2")
            .bind(flow)
            .bind(key)
            .fetch_optional(self.pool())
            .await?)
    }

    /// The keys of a flow's context that start with `prefix`, in byte
    /// order (as redb orders them, whatever the database's collation).
    pub async fn context_keys(&self, flow: Uuid, prefix: &str) -> Result<Vec<String>, PgError> {
        Ok(sqlx::query_scalar(
            "SELECT key FROM taskhost_context WHERE flow_id = $1 AND starts_with(key, $2) ORDER BY key COLLATE \"C\"",
        )
        .bind(flow)
        .bind(prefix)
        .fetch_all(self.pool())
        .await?)
    }

    /// Every flow's record, in id order.
    pub async fn flows(&self) -> Result<Vec<FlowRecord>, PgError> {
        let rows: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT record FROM taskhost_flows ORDER BY id").fetch_all(self.pool()).await?;
        rows.iter().map(|bytes| Ok(decode(bytes)?)).collect()
    }

    /// Bytes (keys plus values) of every flow's context.
    pub async fn context_sizes(&self) -> Result<HashMap<Uuid, u64>, PgError> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT flow_id, sum(octet_length(key) + octet_length(value))::bigint FROM taskhost_context GROUP BY flow_id",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(flow, bytes)| (flow, bytes.max(0) as u64)).collect())
    }

    /// Bytes (keys plus values) of one flow's context.
    pub async fn context_size(&self, flow: Uuid) -> Result<u64, PgError> {
        let bytes: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(octet_length(key) + octet_length(value)), 0)::bigint
             FROM taskhost_context WHERE flow_id = $1",
        )
        .bind(flow)
        .fetch_one(self.pool())
        .await?;
        Ok(bytes.max(0) as u64)
    }

    /// Visits every task in id order, as the redb store's
    /// `scan_summaries` does: its leading fields, the bytes its attempts'
    /// transcripts take, and its encoded record. Rows are streamed, not
    /// held. Quarantined rows are passed over, and a row whose record
    /// cannot be decoded (or that `visit` finds corrupt) is quarantined
    /// once the scan ended, as a claim would, so one bad row does not stop
    /// a host from starting.
    pub(crate) async fn scan_summaries(
        &self,
        mut visit: impl FnMut(TaskSummary<'_>, u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), PgError> {
        use futures::TryStreamExt as _;
        let mut bad = Vec::new();
        {
            let mut rows = sqlx::query_as::<_, (Uuid, Vec<u8>, i64)>(
                "SELECT t.id, t.record,
                        coalesce((SELECT sum(octet_length(g.log)) FROM taskhost_logs AS g WHERE g.task_id = t.id), 0)::bigint
                 FROM taskhost_tasks AS t WHERE t.state <> 'quarantined' ORDER BY t.id",
            )
            .fetch(self.pool());
            while let Some((id, record, log_bytes)) = rows.try_next().await? {
                let visited =
                    TaskSummary::of(&record).and_then(|summary| visit(summary, log_bytes.max(0) as u64, &record));
                match visited {
                    Ok(()) => {}
                    Err(StoreError::Corrupt(why)) => bad.push((id, why)),
                    Err(other) => return Err(other.into()),
                }
            }
        }
        if !bad.is_empty() {
            let mut txn = self.pool().begin().await?;
            let ids: Vec<Uuid> = bad.iter().map(|(id, _)| *id).collect();
            sqlx::query("SELECT id FROM taskhost_tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind(&ids)
                .execute(&mut *txn)
                .await?;
            super::quarantine::set_aside(&mut txn, &bad).await?;
            txn.commit().await?;
        }
        Ok(())
    }
}

/// The state a column names.
pub(super) fn state_named(state: &str) -> Result<TaskState, StoreError> {
    TaskState::ALL
        .into_iter()
        .find(|s| s.as_str() == state)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown task state `{state}` in PostgreSQL")))
}
