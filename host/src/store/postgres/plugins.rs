//! Plugins on PostgreSQL: each name's entry (versions, the version a plain
//! name resolves to, the manifest) and the components' bytes by digest,
//! shared by every host, so an upload on one is visible to all. Changes
//! answer as the redb store's `put_plugin_version` and `edit_plugin` do.
//! Every change of the plugins holds one transaction-scoped advisory lock
//! (they are rare): a version added on one host and a blob it reuses
//! removed on another at once can't leave a version without its bytes.
//! The hashes of compiled artifacts are kept by host: each host's artifact
//! cache is its own.

use super::{PgError, PgStore};
use crate::store::record::{decode, encode};
use crate::store::{PluginEntry, PluginVersion};
use sqlx::{PgConnection, Postgres, Transaction};
use std::collections::HashSet;

/// The advisory lock every change of the plugins takes.
const PLUGINS_LOCK: &str = "taskhost plugins";

impl PgStore {
    /// The recorded sha256 of an artifact `host` cached under `key`.
    pub async fn cache_hash(&self, host: &str, key: &str) -> Result<Option<String>, PgError> {
        Ok(sqlx::query_scalar("SELECT hash FROM taskhost_artifact_hashes WHERE host = $1 AND key = $2")
            .bind(host)
            .bind(key)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Records the sha256 of an artifact `host` just wrote to its cache.
    pub async fn set_cache_hash(&self, host: &str, key: &str, hash: &str) -> Result<(), PgError> {
        sqlx::query(
            "INSERT INTO taskhost_artifact_hashes (host, key, hash) VALUES ($1, $2, $3)
             ON CONFLICT (host, key) DO UPDATE SET hash = excluded.hash",
        )
        .bind(host)
        .bind(key)
        .bind(hash)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every plugin entry, by name.
    pub async fn plugins(&self) -> Result<Vec<(String, PluginEntry)>, PgError> {
        let rows: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT name, entry FROM taskhost_plugins ORDER BY name COLLATE \"C\"")
                .fetch_all(self.pool())
                .await?;
        rows.into_iter().map(|(name, bytes)| Ok((name, decode(&bytes).map_err(PgError::Record)?))).collect()
    }

    /// A stored component (or script) by digest.
    pub async fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, PgError> {
        Ok(sqlx::query_scalar("SELECT bytes FROM taskhost_blobs WHERE digest = $1")
            .bind(digest)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Adds a version to plugin `name` (making its entry the first time)
    /// and its bytes, stored once per digest: bytes already stored are not
    /// sent again.
    pub async fn put_plugin_version(&self, name: &str, version: PluginVersion, bytes: Vec<u8>) -> Result<(), PgError> {
        let mut txn = self.plugins_txn().await?;
        let mut entry = entry_of(&mut txn, name).await?;
        // Hosts serving together number versions from what each has seen:
        // one taken meanwhile by other bytes is refused, the same bytes
        // are the same version.
        if let Some(taken) = entry.versions.iter().find(|v| v.version == version.version) {
            if taken.digest == version.digest {
                return Ok(());
            }
            return Err(PgError::Record(crate::store::StoreError::Refused(format!(
                "version {} of plugin {name} was just stored with other bytes (by another host); upload again",
                version.version
            ))));
        }
        let stored: Option<i32> = sqlx::query_scalar("SELECT 1 FROM taskhost_blobs WHERE digest = $1")
            .bind(&version.digest)
            .fetch_optional(&mut *txn)
            .await?;
        if stored.is_none() {
            sqlx::query("INSERT INTO taskhost_blobs (digest, bytes) VALUES ($1, $2)")
                .bind(&version.digest)
                .bind(bytes)
                .execute(&mut *txn)
                .await?;
        }
        entry.versions.push(version);
        put_entry(&mut txn, name, &entry).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Changes plugin `name`'s entry (making it if there is none) in one
    /// transaction. `edit` returns digests whose bytes may now be unused;
    /// those no version of any plugin references are removed.
    pub async fn edit_plugin(
        &self,
        name: &str,
        edit: impl FnOnce(&mut PluginEntry) -> Vec<String>,
    ) -> Result<(), PgError> {
        let mut txn = self.plugins_txn().await?;
        let mut entry = entry_of(&mut txn, name).await?;
        let dropped = edit(&mut entry);
        put_entry(&mut txn, name, &entry).await?;
        if !dropped.is_empty() {
            let entries: Vec<Vec<u8>> =
                sqlx::query_scalar("SELECT entry FROM taskhost_plugins").fetch_all(&mut *txn).await?;
            let mut referenced = HashSet::new();
            for bytes in entries {
                let other: PluginEntry = decode(&bytes).map_err(PgError::Record)?;
                referenced.extend(other.versions.into_iter().map(|v| v.digest));
            }
            let unused: Vec<String> = dropped.into_iter().filter(|d| !referenced.contains(d)).collect();
            sqlx::query("DELETE FROM taskhost_blobs WHERE digest = ANY($1)").bind(unused).execute(&mut *txn).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// A transaction holding the plugins' lock.
    async fn plugins_txn(&self) -> Result<Transaction<'static, Postgres>, PgError> {
        let mut txn = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(PLUGINS_LOCK)
            .execute(&mut *txn)
            .await?;
        Ok(txn)
    }
}

/// Plugin `name`'s entry, or a new one.
async fn entry_of(conn: &mut PgConnection, name: &str) -> Result<PluginEntry, PgError> {
    let bytes: Option<Vec<u8>> = sqlx::query_scalar("SELECT entry FROM taskhost_plugins WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(bytes.map(|b| decode::<PluginEntry>(&b)).transpose().map_err(PgError::Record)?.unwrap_or_default())
}

/// Stores plugin `name`'s entry.
async fn put_entry(conn: &mut PgConnection, name: &str, entry: &PluginEntry) -> Result<(), PgError> {
    sqlx::query(
        "INSERT INTO taskhost_plugins (name, entry) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET entry = excluded.entry",
    )
    .bind(name)
    .bind(encode(entry))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
