//! The PostgreSQL store that many hosts share (#16), first part: the
//! connection, the schema (versioned migrations in `host/migrations/postgres`,
//! embedded at build time and applied on connect under PostgreSQL's advisory
//! lock, so hosts starting at once migrate once), submission with
//! idempotency keys, and the claim, lease and fencing protocol
//! ([`PgStore::claim`], [`PgStore::renew`], [`PgStore::finish`],
//! [`PgStore::reap`]), and leader election ([`PgStore::lead`]). Records
//! are the redb store's own ([`TaskRecord`] in
//! postcard) and change through the same checked transitions as there (the
//! state machine's table, the expected version).
//!
//! Not yet here (see `docs/scale-out.md`): the engine running on it
//! (`taskhost serve --store postgres://…`), flows, context, plugins,
//! retention, fairness across queues and tenants, the duties a leader
//! runs and `LISTEN/NOTIFY` wake-ups.

mod leader;
mod leases;

pub use leader::{Leader, Term};
pub use leases::{Claimed, Lease, Outcome};

use super::{StoreError, Submitted, TaskRecord, TaskState, decode_record, record::encode};
use sqlx::Row;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::time::Duration;
use uuid::Uuid;

/// The schema's migrations, in version order.
static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// How long a connection may be waited for before a call fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The URL is not a PostgreSQL connection string. The URL itself is
    /// never repeated: it may hold a password.
    #[error("the store URL is not a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE): {0}")]
    Url(String),
    /// The server could not be reached or refused the login.
    #[error("cannot connect to PostgreSQL at {at}: {source}")]
    Connect {
        /// Where (host or socket directory, port, database; never a password).
        at: String,
        /// What failed.
        source: sqlx::Error,
    },
    /// A migration failed, or the database holds a schema this build does
    /// not know (a newer host migrated it).
    #[error("applying taskhost's PostgreSQL schema failed: {0}")]
    Migrate(#[from] MigrateError),
    /// A query failed.
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    /// A record could not be decoded, or a change was refused by the state
    /// machine.
    #[error(transparent)]
    Record(#[from] StoreError),
    /// The lease is no longer this holder's: it lapsed, or the task was
    /// re-queued and claimed again. Nothing was written.
    #[error("task {id}: lease {token} has lapsed or was taken over; this host's write is refused")]
    Fenced {
        /// The task.
        id: Uuid,
        /// The lease's token.
        token: i64,
    },
    /// No task has this id.
    #[error("task {0} not found")]
    NotFound(Uuid),
    /// What this store cannot do yet.
    #[error("not supported on PostgreSQL yet: {0}")]
    Unsupported(String),
}

/// A handle to the shared PostgreSQL store; cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects with at most `max_connections` connections and applies
    /// the schema's migrations that are not applied yet.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, PgError> {
        if !["postgres://", "postgresql://"].iter().any(|scheme| url.starts_with(scheme)) {
            return Err(PgError::Url("the scheme must be postgres:// or postgresql://".into()));
        }
        let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| PgError::Url(e.to_string()))?;
        let at = describe(&options);
        // A host stopped (or cut off) inside a transaction must not hold
        // its rows (a lease it locked) for longer than a lease lasts.
        let options = options.options([("idle_in_transaction_session_timeout", "10s")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| PgError::Connect { at, source })?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations not applied yet, holding PostgreSQL's
    /// advisory lock meanwhile: of hosts starting at once, one migrates
    /// and the others wait and find nothing left to do.
    pub async fn migrate(&self) -> Result<(), PgError> {
        Ok(MIGRATOR.run(&self.pool).await?)
    }

    /// The versions of the schema's migrations this build carries.
    pub fn schema_versions() -> Vec<i64> {
        MIGRATOR.iter().map(|m| m.version).collect()
    }

    /// Durably records a new task (a flow root), or returns the existing
    /// one with the same idempotency key.
    pub async fn submit(&self, record: &TaskRecord, input: &[u8]) -> Result<Submitted, PgError> {
        if !record.is_flow_root() {
            return Err(PgError::Unsupported(format!("task {} belongs to flow {}", record.id, record.flow_id)));
        }
        let inserted = sqlx::query(
            "INSERT INTO taskhost_tasks (id, state, version, queue, priority, due_at_ms, idempotency_key, record, input)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(record.id)
        .bind(record.state.as_str())
        .bind(to_i64(record.version))
        .bind(&record.queue)
        .bind(i16::from(record.priority))
        .bind(to_i64(record.next_run_at_ms.unwrap_or(0)))
        .bind(record.idempotency_key.as_deref())
        .bind(encode(record))
        .bind(input)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Submitted { record: record.clone(), created: true });
        }
        // The key was taken: by a committed task, as the insert waited for
        // any concurrent one to end.
        let key = record.idempotency_key.as_deref().unwrap_or_default();
        let row = sqlx::query("SELECT record FROM taskhost_tasks WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| {
                StoreError::Refused(format!("the task with idempotency key `{key}` was removed meanwhile"))
            })?;
        Ok(Submitted { record: decode_record(row.try_get("record")?)?, created: false })
    }

    /// Records many new tasks (flow roots) in one transaction, each as
    /// [`submit`](Self::submit) would: a key seen before, or earlier in
    /// `tasks`, answers with the task that has it. Answers in the order
    /// of `tasks`.
    pub async fn submit_all(&self, tasks: &[(TaskRecord, Vec<u8>)]) -> Result<Vec<Submitted>, PgError> {
        if let Some((r, _)) = tasks.iter().find(|(r, _)| !r.is_flow_root()) {
            return Err(PgError::Unsupported(format!("task {} belongs to flow {}", r.id, r.flow_id)));
        }
        let ids: Vec<Uuid> = tasks.iter().map(|(r, _)| r.id).collect();
        let states: Vec<&str> = tasks.iter().map(|(r, _)| r.state.as_str()).collect();
        let versions: Vec<i64> = tasks.iter().map(|(r, _)| to_i64(r.version)).collect();
        let queues: Vec<&str> = tasks.iter().map(|(r, _)| r.queue.as_str()).collect();
        let priorities: Vec<i16> = tasks.iter().map(|(r, _)| i16::from(r.priority)).collect();
        let due: Vec<i64> = tasks.iter().map(|(r, _)| to_i64(r.next_run_at_ms.unwrap_or(0))).collect();
        let keys: Vec<Option<&str>> = tasks.iter().map(|(r, _)| r.idempotency_key.as_deref()).collect();
        let records: Vec<Vec<u8>> = tasks.iter().map(|(r, _)| encode(r)).collect();
        let inputs: Vec<&[u8]> = tasks.iter().map(|(_, input)| input.as_slice()).collect();
        let mut txn = self.pool.begin().await?;
        // Keys in one order on every host, so two batches sharing keys
        // wait for each other instead of deadlocking; within a key, the
        // batch's first task is kept.
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO taskhost_tasks (id, state, version, queue, priority, due_at_ms, idempotency_key, record, input)
             SELECT id, state, version, queue, priority, due, key, record, input
             FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::smallint[], $6::bigint[], $7::text[],
                         $8::bytea[], $9::bytea[])
               WITH ORDINALITY AS t (id, state, version, queue, priority, due, key, record, input, n)
             ORDER BY key, n
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING id",
        )
        .bind(&ids)
        .bind(&states)
        .bind(&versions)
        .bind(&queues)
        .bind(&priorities)
        .bind(&due)
        .bind(&keys)
        .bind(&records)
        .bind(&inputs)
        .fetch_all(&mut *txn)
        .await?;
        let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
        let taken: Vec<&str> = tasks
            .iter()
            .filter(|(r, _)| !inserted.contains(&r.id))
            .filter_map(|(r, _)| r.idempotency_key.as_deref())
            .collect();
        let rows = sqlx::query("SELECT idempotency_key, record FROM taskhost_tasks WHERE idempotency_key = ANY($1)")
            .bind(&taken)
            .fetch_all(&mut *txn)
            .await?;
        txn.commit().await?;
        let mut holders = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let key: String = row.try_get("idempotency_key")?;
            holders.insert(key, decode_record(row.try_get("record")?)?);
        }
        tasks
            .iter()
            .map(|(record, _)| {
                if inserted.contains(&record.id) {
                    return Ok(Submitted { record: record.clone(), created: true });
                }
                let key = record.idempotency_key.as_deref().unwrap_or_default();
                let holder = holders.get(key).ok_or_else(|| {
                    StoreError::Refused(format!("the task with idempotency key `{key}` was removed meanwhile"))
                })?;
                Ok(Submitted { record: holder.clone(), created: false })
            })
            .collect()
    }

    /// One task's record.
    pub async fn get(&self, id: Uuid) -> Result<Option<TaskRecord>, PgError> {
        let row =
            sqlx::query("SELECT record FROM taskhost_tasks WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(decode_record(row.try_get("record")?)?))
    }

    /// A task's output, once it completed.
    pub async fn output(&self, id: Uuid) -> Result<Option<Vec<u8>>, PgError> {
        let row =
            sqlx::query("SELECT output FROM taskhost_tasks WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        let Some(row) = row else { return Ok(None) };
        Ok(row.try_get("output")?)
    }

    /// How many tasks are in each state.
    pub async fn state_counts(&self) -> Result<Vec<(TaskState, i64)>, PgError> {
        let rows =
            sqlx::query("SELECT state, count(*) AS n FROM taskhost_tasks GROUP BY state").fetch_all(&self.pool).await?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in rows {
            let state: String = row.try_get("state")?;
            let state = TaskState::ALL
                .into_iter()
                .find(|s| s.as_str() == state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown task state `{state}` in PostgreSQL")))?;
            counts.push((state, row.try_get("n")?));
        }
        Ok(counts)
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Where `options` point, for messages: never the password.
fn describe(options: &PgConnectOptions) -> String {
    let place = match options.get_socket() {
        Some(dir) => format!("socket directory {}", dir.display()),
        None => options.get_host().to_owned(),
    };
    let database = options.get_database().unwrap_or(options.get_username());
    format!("{place}, port {}, database `{database}`", options.get_port())
}

/// A count or time as PostgreSQL's `bigint` (they never come near 2^63).
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_a_url_points_is_named_without_its_password() {
        let options: PgConnectOptions = "postgres://u:secret@db:6543/tasks".parse().unwrap();
        let at = describe(&options);
        assert_eq!(at, "db, port 6543, database `tasks`");
        let socket: PgConnectOptions = "postgres://u@%2Frun%2Fpg/tasks".parse().unwrap();
        assert!(describe(&socket).starts_with("socket directory /run/pg"), "{}", describe(&socket));
    }

    #[test]
    fn the_build_carries_its_migrations_in_order() {
        let versions = PgStore::schema_versions();
        assert!(!versions.is_empty());
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    }
}

#[cfg(test)]
mod database_tests;
