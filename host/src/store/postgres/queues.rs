//! Queue settings on PostgreSQL (`QueueConfig`, as the redb store's
//! `queues` table holds them): every host reads the same, and claims
//! share their batches by them (`fair.rs`).

use super::{PgError, PgStore, to_i64};
use crate::store::QueueConfig;

/// A stored queue's columns: name, concurrency, weight, retention time and
/// count.
type QueueRow = (String, Option<i32>, i32, Option<i64>, Option<i64>);

impl PgStore {
    /// Stores a queue's settings, replacing any before.
    pub async fn set_queue(&self, name: &str, config: &QueueConfig) -> Result<(), PgError> {
        let concurrency = config.concurrency.map(|c| i32::try_from(c).unwrap_or(i32::MAX));
        let weight = i32::try_from(config.weight.max(1)).unwrap_or(i32::MAX);
        sqlx::query(
            "INSERT INTO taskhost_queues (name, concurrency, weight, retain_for_ms, retain_count)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency, weight = excluded.weight,
                 retain_for_ms = excluded.retain_for_ms, retain_count = excluded.retain_count",
        )
        .bind(name)
        .bind(concurrency)
        .bind(weight)
        .bind(config.retain_for_ms.map(to_i64))
        .bind(config.retain_count.map(to_i64))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every stored queue's settings, by name.
    pub async fn queues(&self) -> Result<Vec<(String, QueueConfig)>, PgError> {
        let rows: Vec<QueueRow> = sqlx::query_as(
            "SELECT name, concurrency, weight, retain_for_ms, retain_count FROM taskhost_queues ORDER BY name",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, concurrency, weight, retain_for_ms, retain_count)| {
                let config = QueueConfig {
                    concurrency: concurrency.map(|c| u32::try_from(c).unwrap_or(0)),
                    weight: u32::try_from(weight).unwrap_or(1).max(1),
                    retain_for_ms: retain_for_ms.map(|ms| u64::try_from(ms).unwrap_or(0)),
                    retain_count: retain_count.map(|n| u64::try_from(n).unwrap_or(0)),
                };
                (name, config)
            })
            .collect())
    }

    /// Each queue's startable tasks that wait for nothing: those due now
    /// (ready) and those due later (delayed), on the database's clock.
    /// Queues with none are left out. One walk of the claims' index: its
    /// cost grows with the backlog.
    pub async fn backlog(&self) -> Result<Vec<QueueBacklog>, PgError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT queue,
                    count(*) FILTER (WHERE due_at_ms <= now_ms),
                    count(*) FILTER (WHERE due_at_ms > now_ms)
             FROM taskhost_tasks, (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms) AS now
             WHERE state IN ('pending', 'retrying') AND NOT blocked
             GROUP BY queue",
        )
        .fetch_all(self.pool())
        .await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(rows
            .into_iter()
            .map(|(queue, ready, delayed)| QueueBacklog { queue, ready: count(ready), delayed: count(delayed) })
            .collect())
    }
}

/// A queue's startable tasks on a shared store (see [`PgStore::backlog`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueBacklog {
    /// The queue.
    pub queue: String,
    /// Due now.
    pub ready: u64,
    /// Due later.
    pub delayed: u64,
}
