//! The bytes each tenant keeps, counted across hosts
//! (`taskhost_tenant_bytes`, migration 14): every host adds its own
//! changes (what it admitted, completed, logged and deleted) in numbered
//! batches and reads every tenant's total back
//! ([`PgStore::add_tenant_bytes`]), so a tenant's `max_stored_bytes` holds
//! against what all hosts stored. A batch is added once however often it
//! is sent (its number is kept with the host, in the same transaction), and
//! totals are signed sums read as zero while below it, so changes from
//! different hosts may arrive in any order. A host killed before it sent
//! its last changes leaves the totals off by them; a host serving the
//! database alone counts them again at start ([`PgStore::recount_tenant_bytes`]).

use super::{PgError, PgStore};
use sqlx::postgres::PgConnection;
use std::collections::HashMap;

impl PgStore {
    /// Adds `changes` (bytes by tenant; negative for what was deleted),
    /// host `host`'s batch number `seq`, to the tenants' totals unless that
    /// batch was added already, and reads every tenant's total back, in
    /// one transaction: the totals hold these changes. With no changes it
    /// only reads (and `seq` is not taken). Under `fence` (a host serving
    /// alone's term), a host replaced meanwhile adds nothing
    /// ([`PgError::Deposed`], [`PgError::Lapsed`]).
    pub async fn add_tenant_bytes(
        &self,
        host: &str,
        seq: i64,
        changes: &HashMap<String, i64>,
        fence: Option<super::Term>,
    ) -> Result<HashMap<String, u64>, PgError> {
        let mut txn = self.begin_fenced(fence).await?;
        if changes.values().any(|by| *by != 0) {
            let last: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM taskhost_tenant_bytes_sent WHERE host = $1 FOR UPDATE")
                    .bind(host)
                    .fetch_optional(&mut *txn)
                    .await?;
            if let Some(last) = last.filter(|last| *last > seq) {
                tracing::warn!(
                    host,
                    last,
                    seq,
                    "a batch of stored-byte changes numbered behind this host's last is not \
                    added: another process uses this host's id (a copied data directory?)"
                );
            }
            if last.is_none_or(|last| last < seq) {
                add(&mut txn, changes).await?;
                sqlx::query(
                    "INSERT INTO taskhost_tenant_bytes_sent (host, seq) VALUES ($1, $2)
                     ON CONFLICT (host) DO UPDATE SET seq = excluded.seq",
                )
                .bind(host)
                .bind(seq)
                .execute(&mut *txn)
                .await?;
            }
        }
        let totals: Vec<(String, i64)> =
            sqlx::query_as("SELECT tenant, greatest(bytes, 0) FROM taskhost_tenant_bytes").fetch_all(&mut *txn).await?;
        txn.commit().await?;
        Ok(totals.into_iter().map(|(tenant, bytes)| (tenant, u64::try_from(bytes).unwrap_or(0))).collect())
    }

    /// The number of host `host`'s last batch added (0: none yet).
    pub async fn tenant_bytes_sent(&self, host: &str) -> Result<i64, PgError> {
        let last: Option<i64> = sqlx::query_scalar("SELECT seq FROM taskhost_tenant_bytes_sent WHERE host = $1")
            .bind(host)
            .fetch_optional(self.pool())
            .await?;
        Ok(last.unwrap_or(0))
    }

    /// Replaces every tenant's total with `whole` (a start-up scan's
    /// count): for a host serving the database alone, before it serves, so
    /// whatever the totals drifted by (a host killed before it sent its
    /// changes) is forgotten.
    pub async fn recount_tenant_bytes(&self, whole: &HashMap<String, u64>) -> Result<(), PgError> {
        let (tenants, bytes): (Vec<&str>, Vec<i64>) =
            whole.iter().map(|(t, b)| (t.as_str(), i64::try_from(*b).unwrap_or(i64::MAX))).unzip();
        let mut txn = self.pool().begin().await?;
        sqlx::query("DELETE FROM taskhost_tenant_bytes").execute(&mut *txn).await?;
        sqlx::query("INSERT INTO taskhost_tenant_bytes (tenant, bytes) SELECT * FROM unnest($1::text[], $2::bigint[])")
            .bind(&tenants)
            .bind(&bytes)
            .execute(&mut *txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }
}

/// Adds `changes` to the tenants' totals in the transaction `conn` is in
/// (signed sums: see the module's opening). Rows are locked in the
/// tenants' order, so hosts adding at once never deadlock.
pub(super) async fn add(conn: &mut PgConnection, changes: &HashMap<String, i64>) -> Result<(), PgError> {
    let mut sorted: Vec<(&String, &i64)> = changes.iter().filter(|(_, by)| **by != 0).collect();
    if sorted.is_empty() {
        return Ok(());
    }
    sorted.sort_unstable();
    let (tenants, by): (Vec<&str>, Vec<i64>) = sorted.into_iter().map(|(t, b)| (t.as_str(), *b)).unzip();
    sqlx::query(
        "INSERT INTO taskhost_tenant_bytes AS t (tenant, bytes)
         SELECT c.tenant, c.delta FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS c (tenant, delta, n) ORDER BY c.n
         ON CONFLICT (tenant) DO UPDATE SET bytes = t.bytes + excluded.bytes",
    )
    .bind(&tenants)
    .bind(&by)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
