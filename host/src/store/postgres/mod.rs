//! The PostgreSQL store that many hosts share (#16): the
//! connection, the schema (versioned migrations in `host/migrations/postgres`,
//! embedded at build time and applied on connect under PostgreSQL's advisory
//! lock, so hosts starting at once migrate once), the task table with all
//! that a transition writes beside a record (flows, their keys and tasks,
//! context, transcripts, retention's entries), changed through the redb
//! store's own checked writes (`store/apply.rs`, over `txn.rs`), reads of it
//! (`reads.rs`), queue settings, claims shared fairly across queues
//! (`fair.rs`) and skipping tasks that wait for others (`joins.rs`),
//! flows' counts of unended tasks (`flow_counts.rs`), the tasks in each
//! state counted by the database (`state_counts.rs`), the lease and
//! fencing protocol ([`PgStore::claim`],
//! [`PgStore::renew`], [`PgStore::finish`], [`PgStore::reap`]), and leader
//! election ([`PgStore::lead`]); plugins and their components
//! (`plugins.rs`), tokens, tenants, secrets, the audit log and callbacks'
//! outcomes (`access.rs`), listings (`listings.rs`), and many operations
//! in one transaction (`batch.rs`) from many callers through a group
//! committer ([`PgStore::committer`]).
//!
//! Serving together, hosts also share their events (`shared_events.rs`),
//! tenants' stored bytes (`tenant_bytes.rs`) and submission rates
//! (`rates.rs`), and wake each other through `LISTEN/NOTIFY`
//! ([`PgStore::wakeups`]). See `docs/scale-out.md`.

mod access;
mod at_submit;
mod batch;
mod committer;
mod fair;
mod flow_counts;
mod hosts;
mod joins;
mod leader;
mod leases;
mod listings;
mod many;
mod plugins;
mod quarantine;
mod queues;
mod rates;
mod reads;
mod retention;
mod shared_events;
mod sole;
mod state_counts;
mod tenant_bytes;
mod txn;
mod wakeups;

pub(crate) use at_submit::ClaimAtSubmit;
pub use committer::{CommitConfig, PgCommitter};
pub use fair::RunCosts;
pub(crate) use fair::{INLINE_INPUT, MOST_CREDIT};
pub use flow_counts::FlowEndNote;
pub use hosts::HostRow;
pub use leader::{Leader, Term};
pub use leases::{Claimed, Lease, Outcome};
pub use many::ManyHosts;
pub use queues::QueueBacklog;
pub use rates::Drawn;
pub(crate) use shared_events::{DRAIN, SharedEvents};
pub use sole::{MIN_LEASE, STANDBY_POLL, SoleEngine, Standby, StandbyState};
pub use wakeups::{Wakeup, Wakeups};

use super::apply::apply_submit;
#[cfg(test)]
use super::{Applied, Change, FlowRecord, FlowUpdate};
use super::{StoreError, Submitted, TaskRecord};
use batch::{Done, PgOp};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::time::Duration;
use txn::PgTxn;
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
    Record(StoreError),
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
    /// The task's record cannot be decoded: it was set aside
    /// (`quarantined`), and nothing was written to it.
    #[error("task {id} is quarantined: its record cannot be decoded ({why})")]
    Quarantined {
        /// The task.
        id: Uuid,
        /// The decoding error.
        why: String,
    },
    /// The transaction a group committer committed this operation in
    /// failed (the database's error, as text: the batch's other operations
    /// got it too); nothing of the batch was written.
    #[error("the batch this operation was committed in failed: {why}")]
    BatchFailed {
        /// The database's error, as text.
        why: String,
        /// Whether it may pass (a lost connection, a broken deadlock):
        /// the same write may be tried again.
        transient: bool,
    },
    /// The group committer stopped before answering.
    #[error("the PostgreSQL group committer has stopped")]
    CommitterStopped,
    /// Another host's engine serves this database.
    #[error(
        "another taskhost host serves this PostgreSQL database: stop it first, start this one with --standby to \
         take over once it stops, or, where the hosts serve together (--many-hosts), start this one with \
         --many-hosts too"
    )]
    InUse,
    /// A host serves this database alone (started without
    /// `--many-hosts`): no host may join it.
    #[error(
        "a taskhost host serves this PostgreSQL database alone (started without --many-hosts): stop it, and start \
         every host with --many-hosts to serve the database together"
    )]
    ServedAlone,
    /// Another process, live, serves this database together with others
    /// under this host's id (a copied data directory?).
    #[error(
        "another process serves this PostgreSQL database as host `{host}` ({seen}): each host needs a data \
         directory of its own (its `host-id` file names the host), as two processes serving as one would share \
         their leases and the lead; stop that process, or, if it is gone, start this one again once its heartbeat \
         is older than the lease (at least 10 s): its session is then ended"
    )]
    HostIdInUse {
        /// The host id.
        host: String,
        /// Its heartbeat's age, as seen.
        seen: String,
    },
    /// This host's engine was deposed: another host took over the
    /// database (this one's lease had lapsed); nothing was written.
    #[error(
        "this host is no longer the engine of this PostgreSQL database: another host took over (this host's lease \
         had lapsed); nothing was written"
    )]
    Deposed,
    /// This host's hold on the database lapsed (its renewals are late) and
    /// was not renewed in time for this commit; nothing was written. It may
    /// pass.
    #[error("this host's hold on the PostgreSQL database lapsed (its lease renewals are late); nothing was written")]
    Lapsed,
    /// A host whose lease lapsed holds the engine lock, and its session
    /// cannot be ended.
    #[error(
        "the host holding this database's engine lock stopped renewing its lease, but its session cannot be ended \
         ({0}): end it yourself (pg_terminate_backend) or give this role the right to (pg_signal_backend)"
    )]
    CannotTakeOver(String),
    /// A setting of the store is out of its range.
    #[error("invalid PostgreSQL store setting: {0}")]
    Setting(String),
    /// The database did not answer within the time a caller allows (what
    /// it was asked).
    #[error("PostgreSQL did not answer in time: {0}")]
    Unanswered(&'static str),
    /// A standby was told to stop before it took the database over.
    #[error("stopped while standing by; it took nothing over")]
    StoodDown,
    /// What this store cannot do yet.
    #[error("not supported on PostgreSQL yet: {0}")]
    Unsupported(String),
}

impl PgError {
    /// Whether the failure may pass, so the same write may be tried again
    /// (see [`StoreError::is_transient`]).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            PgError::Database(error) | PgError::Connect { source: error, .. } => super::error::transient_sql(error),
            PgError::Record(error) => error.is_transient(),
            PgError::BatchFailed { transient, .. } => *transient,
            PgError::Lapsed => true,
            _ => false,
        }
    }
}

impl From<StoreError> for PgError {
    /// A query that failed under the store's checked writes is the
    /// database's error, not a record's.
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Postgres(error) => PgError::Database(error),
            other => PgError::Record(other),
        }
    }
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
        if !is_postgres_url(url) {
            return Err(PgError::Url("the scheme must be postgres:// or postgresql://".into()));
        }
        let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| PgError::Url(e.to_string()))?;
        let at = describe(&options);
        if !verified_or_local(&options) {
            tracing::warn!(
                "the connection to PostgreSQL ({at}) does not verify the server (sslmode is not verify-full or \
                 verify-ca): a machine in the middle could read or change the store; add sslmode=verify-full"
            );
        }
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
        let filled = store.fill_listed().await?;
        if filled > 0 {
            tracing::info!(tasks = filled, "filled the listings' table for tasks stored before schema version 7");
        }
        let read = store.fill_waits().await?;
        if read > 0 {
            tracing::info!(tasks = read, "wrote the joins of startable tasks stored before schema version 11");
        }
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

    /// Runs `op` through the store's checked writes in one transaction
    /// and commits what it wrote; a refusal or a failure writes nothing.
    async fn in_txn<T>(&self, op: impl AsyncFnOnce(&mut PgTxn<'_>) -> Result<T, StoreError>) -> Result<T, PgError> {
        let mut txn = self.pool.begin().await?;
        let mut t = PgTxn::new(&mut txn);
        let value = op(&mut t).await?;
        t.flush().await?;
        txn.commit().await?;
        Ok(value)
    }

    /// Commits one operation in a transaction of its own.
    async fn commit_one(&self, op: PgOp) -> Result<Done, PgError> {
        self.commit_ops(vec![op], None).await?.pop().unwrap_or(Err(PgError::CommitterStopped))
    }

    /// Durably records a new task, or returns the existing one with the
    /// same idempotency key (in the API's namespace for a flow's root, in
    /// its flow's for a task a flow grew), as the redb store does.
    pub async fn submit(&self, record: TaskRecord, input: Vec<u8>) -> Result<Submitted, PgError> {
        Ok(self.commit_one(PgOp::Submit { record: Box::new(record), input, claim: None }).await?.submitted())
    }

    /// Records many new tasks in one transaction, each as
    /// [`submit`](Self::submit) would: a key seen before, or earlier in
    /// `tasks`, answers with the task that has it. Answers in the order
    /// of `tasks`.
    pub async fn submit_all(&self, tasks: Vec<(TaskRecord, Vec<u8>)>) -> Result<Vec<Submitted>, PgError> {
        self.in_txn(async move |t| {
            // A task a flow grew is written under its flow's lock, as its
            // joins need (see `joins.rs`); flows before keys, as every
            // batch takes them.
            t.lock_flows(tasks.iter().filter(|(r, _)| !r.is_flow_root()).map(|(r, _)| r.flow_id)).await?;
            t.lock_keys(tasks.iter().map(|(r, _)| r)).await?;
            let mut answers = Vec::with_capacity(tasks.len());
            for (record, input) in tasks {
                answers.push(apply_submit(t, record, input, None).await?);
            }
            Ok(answers)
        })
        .await
    }

    /// Applies a checked transition (the state machine, the expected
    /// version; with a completion, its output, transcript and flow
    /// effects) to a task, as the redb store does. It takes no lease: a
    /// running task's outcome commits through [`finish`](Self::finish).
    #[cfg(test)]
    pub(crate) async fn transition(&self, change: Change) -> Result<Applied, PgError> {
        Ok(self.commit_one(PgOp::Transition(change)).await?.applied())
    }

    /// Applies an edit to a flow with the tasks it submits, as the redb
    /// store does.
    #[cfg(test)]
    pub(crate) async fn flow_change(
        &self,
        id: Uuid,
        edit: impl FnOnce(Option<FlowRecord>) -> Result<FlowUpdate, StoreError> + Send + 'static,
    ) -> Result<(FlowRecord, Vec<TaskRecord>), PgError> {
        Ok(self.commit_one(PgOp::Flow(id, Box::new(edit))).await?.flow())
    }

    pub(crate) fn pool(&self) -> &PgPool {
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

/// Whether `url` has a PostgreSQL URL's scheme (`postgres://` or
/// `postgresql://`): what a store URL is checked against before it is
/// parsed.
pub fn is_postgres_url(url: &str) -> bool {
    ["postgres://", "postgresql://"].iter().any(|scheme| url.starts_with(scheme))
}

/// Whether `options` reach the server on this machine (a Unix socket, a
/// loopback address) or verify its certificate.
fn verified_or_local(options: &PgConnectOptions) -> bool {
    use sqlx::postgres::PgSslMode;
    let host = options.get_host();
    let local = options.get_socket().is_some()
        || host.starts_with('/')
        || host == "localhost"
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    local || matches!(options.get_ssl_mode(), PgSslMode::VerifyCa | PgSslMode::VerifyFull)
}

/// A count or time as PostgreSQL's `bigint` (they never come near 2^63).
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connection_off_this_machine_that_does_not_verify_the_server_is_warned_of() {
        let verified = |url: &str| verified_or_local(&url.parse().unwrap());
        assert!(!verified("postgres://u:p@db.internal/tasks"));
        assert!(!verified("postgres://u:p@db.internal/tasks?sslmode=require"));
        assert!(verified("postgres://u:p@db.internal/tasks?sslmode=verify-full"));
        assert!(verified("postgres://u:p@db.internal/tasks?sslmode=verify-ca"));
        assert!(verified("postgres://u@localhost/tasks"));
        assert!(verified("postgres://u@127.0.0.1:5433/tasks"));
        assert!(verified("postgres://u@%2Frun%2Fpostgresql/tasks"));
        assert!(verified("postgres://u@localhost/tasks?host=/run/postgresql"));
    }

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
#[cfg(test)]
mod tls_tests;
