//! The bytes each tenant keeps, counted across hosts
//! (`taskhost_tenant_bytes`, migration 14): every host adds its own
//! changes (what it admitted, completed, logged and deleted) and reads
//! every tenant's total back ([`PgStore::add_tenant_bytes`]), so a
//! tenant's `max_stored_bytes` holds against what all hosts stored. A host
//! killed before it sent its last changes (up to one beat's) leaves the
//! totals off by them.

use super::{PgError, PgStore};
use sqlx::postgres::PgConnection;
use std::collections::HashMap;

impl PgStore {
    /// Adds `changes` (bytes by tenant; negative for what was deleted) to
    /// the tenants' totals and reads every tenant's total back, in one
    /// transaction: the totals hold these changes.
    pub async fn add_tenant_bytes(&self, changes: &HashMap<String, i64>) -> Result<HashMap<String, u64>, PgError> {
        let mut txn = self.pool().begin().await?;
        add(&mut txn, changes).await?;
        let totals: Vec<(String, i64)> =
            sqlx::query_as("SELECT tenant, greatest(bytes, 0) FROM taskhost_tenant_bytes").fetch_all(&mut *txn).await?;
        txn.commit().await?;
        Ok(totals.into_iter().map(|(tenant, bytes)| (tenant, u64::try_from(bytes).unwrap_or(0))).collect())
    }
}

/// Adds `changes` to the tenants' totals in the transaction `conn` is in,
/// none below zero (a tenant's first change, if a deletion, is kept as it
/// is and read as zero). Rows are locked in the tenants' order, so hosts
/// adding at once never deadlock.
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
         ON CONFLICT (tenant) DO UPDATE SET bytes = greatest(t.bytes + excluded.bytes, 0)",
    )
    .bind(&tenants)
    .bind(&by)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
