//! Where each task's completion callback stands once it was tried:
//! delivered, or not and why. Kept beside the task's record (a delivery
//! never changes the record) so `GET /v1/tasks/{id}` can show it; a task
//! that ends again (re-submitted) replaces its entry.

use super::record::{decode, encode};
use super::tables::CALLBACKS;
use super::{Store, StoreError};
use redb::ReadableDatabase as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How a task's callback ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CallbackOutcome {
    /// Whether the receiver took it (a 2xx answer).
    pub delivered: bool,
    /// Attempts made (0: refused or dropped before any).
    pub attempts: u32,
    /// When it ended (ms since the epoch).
    pub at_ms: u64,
    /// Why it was not delivered.
    pub error: Option<String>,
}

impl CallbackOutcome {
    /// Delivered on attempt `attempts`.
    pub fn delivered(attempts: u32) -> Self {
        Self { delivered: true, attempts, at_ms: super::now_ms(), error: None }
    }

    /// Not delivered after `attempts` attempts, because of `error`.
    pub fn failed(attempts: u32, error: impl Into<String>) -> Self {
        Self { delivered: false, attempts, at_ms: super::now_ms(), error: Some(error.into()) }
    }
}

impl Store {
    /// Records how task `id`'s callback ended.
    pub(crate) async fn put_callback_outcome(&self, id: Uuid, outcome: CallbackOutcome) -> Result<(), StoreError> {
        self.admin(move |txn| {
            txn.open_table(CALLBACKS)?.insert(id.as_u128(), encode(&outcome).as_slice())?;
            Ok(())
        })
        .await
    }

    /// How task `id`'s callback ended, if it has.
    pub fn callback_outcome(&self, id: Uuid) -> Result<Option<CallbackOutcome>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(CALLBACKS)?;
        table.get(id.as_u128())?.map(|v| decode(v.value())).transpose()
    }
}
