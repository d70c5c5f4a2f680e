//! Errors of the task store.

use super::TaskState;
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
