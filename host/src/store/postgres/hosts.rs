//! The hosts serving a database: each host's heartbeat row, with what it
//! says of itself (its report, JSON the engine writes and reads; the store
//! keeps it as given), aged on the database's clock so hosts' clocks do
//! not matter.

use super::{PgError, PgStore};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use std::time::Duration;

/// Rows listed at most (hosts beyond it are left out, by name).
const MAX_HOSTS: i64 = 1000;

/// A row not written for this long is removed by any host's heartbeat.
const FORGET_AFTER_SECS: i64 = 86_400;

/// A host's row.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    /// The host's name (its `host-id`).
    pub host: String,
    /// Since its last heartbeat, on the database's clock.
    pub age: Duration,
    /// What it said of itself then.
    pub report: serde_json::Value,
}

impl PgStore {
    /// Writes `host`'s heartbeat now with `report`, and forgets hosts not
    /// heard from for a day.
    pub async fn beat(&self, host: &str, report: &serde_json::Value) -> Result<(), PgError> {
        let mut conn = self.pool().acquire().await?;
        beat_on(&mut conn, host, report).await
    }

    /// The hosts' rows, by name (at most 1,000).
    pub async fn hosts(&self) -> Result<Vec<HostRow>, PgError> {
        let rows = sqlx::query(
            "SELECT host, report::text AS report,
                    greatest(0, floor(extract(epoch FROM clock_timestamp() - heartbeat_at) * 1000))::bigint AS age_ms
             FROM taskhost_hosts ORDER BY host LIMIT $1",
        )
        .bind(MAX_HOSTS)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|row| {
                let host: String = row.try_get("host")?;
                let text: String = row.try_get("report")?;
                let age_ms: i64 = row.try_get("age_ms")?;
                // jsonb the database checked: it parses.
                let report = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                Ok(HostRow { host, age: Duration::from_millis(age_ms.max(0) as u64), report })
            })
            .collect()
    }

    /// Removes `host`'s row (it stops).
    pub async fn leave(&self, host: &str) -> Result<(), PgError> {
        sqlx::query("DELETE FROM taskhost_hosts WHERE host = $1").bind(host).execute(self.pool()).await?;
        Ok(())
    }
}

/// Writes `host`'s heartbeat now with `report` on `conn`, and forgets
/// hosts not heard from for a day.
pub(super) async fn beat_on(conn: &mut PgConnection, host: &str, report: &serde_json::Value) -> Result<(), PgError> {
    let mut txn = conn.begin().await?;
    sqlx::query(
        "INSERT INTO taskhost_hosts (host, heartbeat_at, report) VALUES ($1, clock_timestamp(), $2::text::jsonb)
         ON CONFLICT (host) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at, report = EXCLUDED.report",
    )
    .bind(host)
    .bind(report.to_string())
    .execute(&mut *txn)
    .await?;
    sqlx::query("DELETE FROM taskhost_hosts WHERE heartbeat_at < clock_timestamp() - make_interval(secs => $1)")
        .bind(FORGET_AFTER_SECS as f64)
        .execute(&mut *txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hosts_beat_are_listed_aged_on_the_databases_clock_and_forgotten() {
        let url = taskhost_test_postgres::cluster().database("hosts");
        let store = PgStore::connect(&url, 2).await.unwrap();
        store.beat("b", &json!({"slots": 8})).await.unwrap();
        store.beat("a", &json!({"slots": 4})).await.unwrap();
        store.beat("a", &json!({"slots": 5})).await.unwrap();
        let hosts = store.hosts().await.unwrap();
        let names: Vec<_> = hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(hosts[0].report, json!({"slots": 5}), "the latest report");
        assert!(hosts.iter().all(|h| h.age < Duration::from_secs(5)), "{hosts:?}");
        // `b` went quiet a minute ago; `c` two days ago.
        sqlx::query(
            "UPDATE taskhost_hosts SET heartbeat_at = clock_timestamp() - interval '1 minute' WHERE host = 'b'",
        )
        .execute(store.pool())
        .await
        .unwrap();
        sqlx::query("INSERT INTO taskhost_hosts VALUES ('c', clock_timestamp() - interval '2 days', '{}'::jsonb)")
            .execute(store.pool())
            .await
            .unwrap();
        let aged = store.hosts().await.unwrap();
        assert_eq!(aged.len(), 3);
        assert!(aged[1].age >= Duration::from_secs(60) && aged[1].age < Duration::from_secs(70), "{aged:?}");
        // Any heartbeat forgets hosts quiet for a day.
        store.beat("a", &json!({})).await.unwrap();
        let names: Vec<_> = store.hosts().await.unwrap().into_iter().map(|h| h.host).collect();
        assert_eq!(names, ["a", "b"]);
        store.leave("a").await.unwrap();
        let names: Vec<_> = store.hosts().await.unwrap().into_iter().map(|h| h.host).collect();
        assert_eq!(names, ["b"]);
    }
}
