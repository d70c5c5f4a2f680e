//! What the store keeps for the trust boundary: API tokens (by id, with
//! only the hash of their secret), the tenants and their quotas, and the
//! audit log (append-only, the
//! newest [`AUDIT_KEEP`] entries kept). The store does not interpret
//! either: [`crate::auth`] does.

use super::record::{decode, encode};
use super::tables::{AUDIT, SECRETS, TENANTS, TOKENS};
use super::{Store, StoreError};
use redb::{ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Audit entries kept; appending past it drops the oldest.
pub const AUDIT_KEEP: u64 = 100_000;

/// A token as stored: everything but its secret, of which only a SHA-256
/// hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredToken {
    /// A name for people (unique among tokens).
    pub name: String,
    /// The tenant its holder acts in.
    pub tenant: String,
    /// Its scopes, as the bits of `auth::Scopes`.
    pub scopes: u8,
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// When it was created (ms since the epoch).
    pub created_at_ms: u64,
    /// When it stops working, if ever.
    pub expires_at_ms: Option<u64>,
    /// Name of the token that created it (`serve` for the bootstrap one).
    pub created_by: String,
}

impl StoredToken {
    /// A token record.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        tenant: String,
        scopes: u8,
        secret_hash: [u8; 32],
        created_at_ms: u64,
        expires_at_ms: Option<u64>,
        created_by: String,
    ) -> Self {
        Self { name, tenant, scopes, secret_hash, created_at_ms, expires_at_ms, created_by }
    }
}

/// A tenant an admin made: when, by whom, and its quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TenantRecord {
    /// When it was made (ms since the epoch).
    pub created_at_ms: u64,
    /// Name of the token that made it.
    pub created_by: String,
    /// Its quotas.
    #[serde(default)]
    pub quotas: TenantQuotas,
}

impl TenantRecord {
    /// A tenant made now by `created_by`.
    pub fn new(created_by: String, quotas: TenantQuotas) -> Self {
        Self { created_at_ms: super::now_ms(), created_by, quotas }
    }
}

/// What a tenant may use; `None` is no quota of its own (the host's
/// limits still hold).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct TenantQuotas {
    /// Submissions (tasks and flows' tasks from the API) per second,
    /// refilled continuously.
    pub submit_per_sec: Option<u32>,
    /// Submissions allowed at once beyond the rate (the bucket's size;
    /// default: one second's worth).
    pub submit_burst: Option<u32>,
    /// Tasks of the tenant running at once.
    pub max_running: Option<u32>,
    /// Tasks of the tenant stored and not yet finished.
    pub max_unfinished: Option<u64>,
    /// Bytes of task inputs, outputs and logs the tenant keeps in the store.
    pub max_stored_bytes: Option<u64>,
    /// Plugin names the tenant has.
    pub max_plugins: Option<u32>,
    /// Versions one of its plugins keeps.
    pub max_plugin_versions: Option<u32>,
    /// Size of one uploaded component, in bytes.
    pub max_plugin_bytes: Option<u64>,
    /// Fuel one of its tasks may be given (lower than the host's ceiling).
    pub max_fuel: Option<u64>,
    /// Memory one of its tasks may be given, in bytes.
    pub max_memory_bytes: Option<u64>,
    /// Wall-clock time one attempt of its tasks may be given, in ms.
    pub max_timeout_ms: Option<u64>,
    /// Queues the tenant has (its `default` queue always counts among
    /// them and is never refused).
    pub max_queues: Option<u32>,
    /// Tasks one of its flows may create in all (lower than the host's
    /// flow limit).
    pub max_flow_tasks: Option<u64>,
    /// Submissions between one of its flows' first tasks and the deepest.
    pub max_flow_depth: Option<u32>,
    /// Children (and joins) one attempt of its tasks may submit.
    pub max_children_per_task: Option<u32>,
    /// Bytes of keys plus values in one of its flows' context.
    pub max_flow_context_bytes: Option<u64>,
    /// Queues that take ad-hoc scripts (`{"script": ...}` submissions);
    /// `*` is every queue. None: no ad-hoc scripts.
    pub script_queues: Option<Vec<String>>,
    /// Size of one ad-hoc script, in bytes (default 64 KiB).
    pub max_script_bytes: Option<u64>,
}

/// One audit entry: who did what to which object, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The acting token's id.
    pub token_id: String,
    /// The acting token's name.
    pub token_name: String,
    /// The tenant it acted in.
    pub tenant: String,
    /// What was done, e.g. `plugin.upload`.
    pub action: String,
    /// What it was done to, e.g. `/v1/plugins/resize`.
    pub object: String,
}

impl AuditEntry {
    /// An entry of `action` on `object` by the token `token_id`/`token_name`.
    pub fn new(token_id: String, token_name: String, tenant: String, action: String, object: String) -> Self {
        Self { at_ms: super::now_ms(), token_id, token_name, tenant, action, object }
    }
}

impl Store {
    /// Every stored token, by id.
    pub fn tokens(&self) -> Result<Vec<(String, StoredToken)>, StoreError> {
        self.read_named(TOKENS)
    }

    /// Stores a token under `id` (replacing one of that id).
    pub(crate) async fn put_token(&self, id: String, token: StoredToken) -> Result<(), StoreError> {
        self.admin(move |txn| {
            txn.open_table(TOKENS)?.insert(id.as_str(), encode(&token).as_slice())?;
            Ok(())
        })
        .await
    }

    /// Removes the token `id`; whether there was one.
    pub(crate) async fn remove_token(&self, id: String) -> Result<bool, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.admin(move |txn| {
            let removed = txn.open_table(TOKENS)?.remove(id.as_str())?.is_some();
            let _ = tx.send(removed);
            Ok(())
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Every tenant an admin made, by name.
    pub fn tenants(&self) -> Result<Vec<(String, TenantRecord)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(TENANTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, value) = entry?;
            let record = serde_json::from_slice(value.value())
                .map_err(|e| StoreError::Corrupt(format!("tenant `{}`: {e}", name.value())))?;
            out.push((name.value().to_owned(), record));
        }
        Ok(out)
    }

    /// Stores tenant `name` (replacing its record).
    pub(crate) async fn put_tenant(&self, name: String, tenant: TenantRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(&tenant).expect("a tenant record serialises");
        self.admin(move |txn| {
            txn.open_table(TENANTS)?.insert(name.as_str(), json.as_slice())?;
            Ok(())
        })
        .await
    }

    /// The secret `name` (32 random bytes), made and stored the first time
    /// it is asked for. (A small read; the write, once, goes through the
    /// committer.)
    pub(crate) async fn secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        // Read first: only the first start of a store writes (and syncs).
        let stored = {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = txn.open_table(SECRETS)?;
            table.get(name)?.map(|v| v.value().to_vec())
        };
        if let Some(secret) = stored {
            return Ok(secret);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let name = name.to_owned();
        self.admin(move |txn| {
            let mut table = txn.open_table(SECRETS)?;
            let existing = table.get(name.as_str())?.map(|v| v.value().to_vec());
            let secret = match existing {
                Some(secret) => secret,
                None => {
                    let mut fresh = vec![0u8; 32];
                    getrandom::fill(&mut fresh)
                        .map_err(|e| StoreError::CommitFailed(format!("cannot draw a random secret: {e}")))?;
                    table.insert(name.as_str(), fresh.as_slice())?;
                    fresh
                }
            };
            let _ = tx.send(secret);
            Ok(())
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Appends an audit entry, dropping the oldest past [`AUDIT_KEEP`].
    pub(crate) async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.append_audit_keeping(entry, AUDIT_KEEP).await
    }

    /// Appends an audit entry, dropping the oldest past `keep`.
    pub(crate) async fn append_audit_keeping(&self, entry: AuditEntry, keep: u64) -> Result<(), StoreError> {
        self.admin(move |txn| {
            let mut table = txn.open_table(AUDIT)?;
            table.insert(Uuid::now_v7().as_u128(), encode(&entry).as_slice())?;
            let excess = table.len()?.saturating_sub(keep);
            for _ in 0..excess {
                table.pop_first()?;
            }
            Ok(())
        })
        .await
    }

    /// Up to `limit` audit entries older than `before` (all when `None`),
    /// newest first, with their ids.
    pub fn audit(&self, before: Option<Uuid>, limit: usize) -> Result<Vec<(Uuid, AuditEntry)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let range = match before {
            Some(before) => table.range(..before.as_u128())?,
            None => table.range::<u128>(..)?,
        };
        let mut out = Vec::new();
        for entry in range.rev().take(limit) {
            let (id, value) = entry?;
            out.push((Uuid::from_u128(id.value()), decode(value.value())?));
        }
        Ok(out)
    }
}
