//! Errors of the task store.

use super::TaskState;
use std::path::PathBuf;
use uuid::Uuid;

/// Why a store operation was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No task has this id.
    #[error("task {0} not found")]
    NotFound(Uuid),
    /// The transition is not in the state machine's table.
    #[error("task {id} cannot go from {from} to {to}")]
    IllegalTransition {
        /// The task.
        id: Uuid,
        /// Its current state.
        from: TaskState,
        /// The refused target state.
        to: TaskState,
    },
    /// The task changed since the caller read it.
    #[error("task {id} changed concurrently (expected version {expected}, found {found})")]
    VersionMismatch {
        /// The task.
        id: Uuid,
        /// The version the caller expected.
        expected: u64,
        /// The version in the store.
        found: u64,
    },
    /// The data file belongs to another layout version.
    #[error("the data file has schema version {found}; this build reads version {expected}")]
    Schema {
        /// Version this build expects.
        expected: u64,
        /// Version in the file.
        found: u64,
    },
    /// A record could not be decoded (corruption or a foreign file).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Storage(#[from] redb::Error),
    /// PostgreSQL failed a query of the shared store (a lost connection,
    /// a deadlock it broke, a constraint); the transaction wrote nothing.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    /// The shared PostgreSQL store refused or failed an operation (a lease
    /// taken over, a failed batch, a quarantined record).
    #[error(transparent)]
    Shared(Box<super::postgres::PgError>),
    /// The group commit holding this operation failed.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The committer's queue is full: try again shortly.
    #[error("the store is busy: {capacity} writes are already waiting; try again shortly")]
    Busy {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The committer thread is gone (the store is shutting down).
    #[error("the store is closed")]
    Closed,
    /// A checked flow change was refused (the flow moved on).
    #[error("{0}")]
    Refused(String),
    /// The store cannot write now (the disk is full, or another I/O
    /// error): nothing was written; try again once it recovered. The store
    /// retries on its own and reports this in `/healthz` meanwhile.
    #[error("the store cannot write: {reason}; try again shortly")]
    Unwritable {
        /// The I/O error of the last failed write.
        reason: String,
    },
    /// The store is reopening its file after a write fault; try again
    /// shortly.
    #[error("the store is reopening its file after a write fault ({reason}); try again shortly")]
    Reopening {
        /// The I/O error that made it reopen.
        reason: String,
    },
    /// The store file exists but cannot be used: damaged, not a taskhost
    /// store, or empty. Nothing was written to it.
    #[error(
        "the store file {} {problem}; restore it from a backup, or run `taskhost store check --data {}` to see \
         the damage and `taskhost store repair --data {}` to keep what can be read (it keeps a backup of the file)",
        path.display(),
        dir(path),
        dir(path)
    )]
    Damaged {
        /// The store file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// An attempt's flow effects would take its flow past one of its
    /// limits (checked again as it commits), reached meanwhile (by
    /// what other hosts' attempts of the flow committed): nothing of the
    /// operation was written.
    #[error(
        "flow {flow}: committing this attempt's effects would take it to {total} {limit}, over its limit of {bound}"
    )]
    OverFlowLimit {
        /// The flow.
        flow: Uuid,
        /// Which limit.
        limit: FlowLimit,
        /// What the flow would hold.
        total: u64,
        /// The limit's value.
        bound: u64,
    },
    /// Another process has the store file open.
    #[error("the store file {} is in use by another process (another `taskhost serve`?); stop it first", path.display())]
    InUse {
        /// The store file.
        path: PathBuf,
    },
}

/// A flow limit a commit checks again ([`StoreError::OverFlowLimit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowLimit {
    /// The tasks the flow holds in all.
    Tasks,
    /// The bytes of its context's keys and values.
    ContextBytes,
}

impl std::fmt::Display for FlowLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlowLimit::Tasks => "tasks",
            FlowLimit::ContextBytes => "context bytes",
        })
    }
}

/// The data directory holding a store file, for the advice in messages.
fn dir(path: &std::path::Path) -> String {
    path.parent().map(|p| p.display().to_string()).filter(|p| !p.is_empty()).unwrap_or_else(|| ".".into())
}

impl StoreError {
    /// The I/O error behind a failed write, when the failure is one that
    /// may pass (a full disk, an I/O error): redb then refuses every later
    /// operation until the file is reopened.
    pub(crate) fn io_fault(&self) -> Option<String> {
        match self {
            StoreError::Storage(redb::Error::Io(e)) => Some(e.to_string()),
            StoreError::Storage(redb::Error::PreviousIo) => {
                Some("an earlier write failed; the file must be reopened".into())
            }
            StoreError::Storage(redb::Error::DatabaseClosed) => Some("the file is being reopened".into()),
            StoreError::Unwritable { reason } | StoreError::Reopening { reason } => Some(reason.clone()),
            _ => None,
        }
    }
}

impl StoreError {
    /// Whether the failure may pass, so the same write may be tried again:
    /// PostgreSQL's lost connections, timeouts, broken deadlocks and
    /// serialisation failures, and a group commit that failed as a whole
    /// (nothing of it was written).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            StoreError::Postgres(error) => transient_sql(error),
            StoreError::Shared(error) => error.is_transient(),
            _ => false,
        }
    }
}

impl StoreError {
    /// Whether the write may or may not have committed, so the task must be
    /// read again to know: a failure that may pass, or a group commit that
    /// failed as a whole (whatever failed in it, this write is as it was).
    pub(crate) fn is_unsettled(&self) -> bool {
        self.is_transient()
            || matches!(self, StoreError::Shared(e) if matches!(**e, super::postgres::PgError::BatchFailed { .. }))
    }

    /// Whether a shared store refused the write because the lease it was
    /// made under lapsed or was taken over: another host's claim (or a
    /// reap) owns the task now, and nothing was written.
    pub(crate) fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Shared(e) if matches!(**e, super::postgres::PgError::Fenced { .. }))
    }
}

/// Whether a PostgreSQL failure may pass: the connection (class 08), a
/// transaction rolled back for a serialisation failure or a deadlock
/// (class 40), too many connections (53300), a lock or statement timeout
/// (55P03, 57014), the server ending the session (57P01-57P03, 25P03), or
/// no connection in time.
pub(crate) fn transient_sql(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("40")
                || matches!(&*code, "53300" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "25P03")
        }),
        _ => false,
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.into())
            }
        }
    )*};
}

storage_from!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);
