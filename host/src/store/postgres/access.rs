//! What the PostgreSQL store keeps for the trust boundary, as the redb
//! store's `access.rs` does: API tokens (only their secrets' hashes),
//! tenants and their quotas, named random secrets (callbacks' signing
//! keys: the first host to ask makes one, and every host reads the same),
//! and the audit log (the newest [`AUDIT_KEEP`] entries). Like the redb
//! store it does not interpret them: `crate::auth` does. Callbacks'
//! outcomes are here too, one row per task.

use super::{PgError, PgStore};
use crate::store::record::{decode, encode};
use crate::store::{AUDIT_KEEP, AuditEntry, CallbackOutcome, StoreError, StoredToken, TenantRecord};
use uuid::Uuid;

impl PgStore {
    /// Every stored token, by id.
    pub async fn tokens(&self) -> Result<Vec<(String, StoredToken)>, PgError> {
        let rows: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT id, token FROM taskhost_tokens ORDER BY id COLLATE \"C\"")
                .fetch_all(self.pool())
                .await?;
        rows.into_iter().map(|(id, bytes)| Ok((id, decode(&bytes).map_err(PgError::Record)?))).collect()
    }

    /// Stores a token under `id`, replacing one of that id.
    pub async fn put_token(&self, id: &str, token: &StoredToken) -> Result<(), PgError> {
        sqlx::query(
            "INSERT INTO taskhost_tokens (id, token) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET token = excluded.token",
        )
        .bind(id)
        .bind(encode(token))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Removes the token `id`; whether there was one.
    pub async fn remove_token(&self, id: &str) -> Result<bool, PgError> {
        let done = sqlx::query("DELETE FROM taskhost_tokens WHERE id = $1").bind(id).execute(self.pool()).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every tenant an admin made, by name.
    pub async fn tenants(&self) -> Result<Vec<(String, TenantRecord)>, PgError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT name, record::text FROM taskhost_tenants ORDER BY name COLLATE \"C\"")
                .fetch_all(self.pool())
                .await?;
        rows.into_iter()
            .map(|(name, json)| {
                let record = serde_json::from_str(&json)
                    .map_err(|e| PgError::Record(StoreError::Corrupt(format!("tenant `{name}`: {e}"))))?;
                Ok((name, record))
            })
            .collect()
    }

    /// Stores tenant `name`, replacing its record.
    pub async fn put_tenant(&self, name: &str, tenant: &TenantRecord) -> Result<(), PgError> {
        let json = serde_json::to_string(tenant).expect("a tenant record serialises");
        sqlx::query(
            "INSERT INTO taskhost_tenants (name, record) VALUES ($1, $2::jsonb)
             ON CONFLICT (name) DO UPDATE SET record = excluded.record",
        )
        .bind(name)
        .bind(json)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The secret `name` (32 random bytes), made the first time any host
    /// asks for it: of hosts asking at once, one's is stored and all get
    /// that one.
    pub async fn secret(&self, name: &str) -> Result<Vec<u8>, PgError> {
        let stored: Option<Vec<u8>> = sqlx::query_scalar("SELECT secret FROM taskhost_secrets WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        if let Some(secret) = stored {
            return Ok(secret);
        }
        let mut fresh = vec![0u8; 32];
        getrandom::fill(&mut fresh)
            .map_err(|e| PgError::Record(StoreError::CommitFailed(format!("cannot draw a random secret: {e}"))))?;
        // Insert unless another host did first (waiting for one inserting
        // now), then read whichever was stored, in a statement of its own
        // so it sees the other's commit.
        sqlx::query("INSERT INTO taskhost_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(fresh)
            .execute(self.pool())
            .await?;
        Ok(sqlx::query_scalar("SELECT secret FROM taskhost_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(self.pool())
            .await?)
    }

    /// Appends an audit entry, removing what falls past the newest
    /// [`AUDIT_KEEP`].
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<(), PgError> {
        self.append_audit_keeping(entry, AUDIT_KEEP).await
    }

    /// Appends an audit entry, removing what falls past the newest `keep`.
    pub(crate) async fn append_audit_keeping(&self, entry: &AuditEntry, keep: u64) -> Result<(), PgError> {
        let mut txn = self.pool().begin().await?;
        let seq: i64 = sqlx::query_scalar("INSERT INTO taskhost_audit (id, entry) VALUES ($1, $2) RETURNING seq")
            .bind(Uuid::now_v7())
            .bind(encode(entry))
            .fetch_one(&mut *txn)
            .await?;
        // Sequence numbers have gaps (a rolled-back append's), so this keeps
        // at most `keep` entries, a few fewer after a rollback.
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        sqlx::query("DELETE FROM taskhost_audit WHERE seq <= $1")
            .bind(seq.saturating_sub(keep))
            .execute(&mut *txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Up to `limit` audit entries older than `before` (all when `None`),
    /// newest first, with their ids.
    pub async fn audit(&self, before: Option<Uuid>, limit: usize) -> Result<Vec<(Uuid, AuditEntry)>, PgError> {
        let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT id, entry FROM taskhost_audit WHERE $1::uuid IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(|(id, bytes)| Ok((id, decode(&bytes).map_err(PgError::Record)?))).collect()
    }

    /// Records how task `id`'s callback ended, replacing an earlier end.
    pub async fn put_callback_outcome(&self, id: Uuid, outcome: &CallbackOutcome) -> Result<(), PgError> {
        sqlx::query(
            "INSERT INTO taskhost_callbacks (task_id, outcome) VALUES ($1, $2)
             ON CONFLICT (task_id) DO UPDATE SET outcome = excluded.outcome",
        )
        .bind(id)
        .bind(encode(outcome))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// How task `id`'s callback ended, if it has.
    pub async fn callback_outcome(&self, id: Uuid) -> Result<Option<CallbackOutcome>, PgError> {
        let row: Option<Vec<u8>> = sqlx::query_scalar("SELECT outcome FROM taskhost_callbacks WHERE task_id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|bytes| decode(&bytes)).transpose()?)
    }
}
