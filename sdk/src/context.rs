//! The flow's context: a small durable key-value store shared by the tasks
//! of one flow. Writes are committed with the task's completion (a failed
//! attempt writes nothing); the task reads its own writes at once.
//!
//! ```no_run
//! use taskhost_sdk::context;
//! let seen: u64 = context::get_json("seen")?.unwrap_or(0);
//! context::set_json("seen", &(seen + 1))?;
//! # Ok::<(), taskhost_sdk::Error>(())
//! ```

use crate::__private::taskhost::plugin::context as wit;
use crate::Error;

/// The bytes under `key`.
pub fn get(key: &str) -> Option<Vec<u8>> {
    wit::get(key)
}

/// Stores `value` under `key`; refused past the flow's byte cap.
pub fn set(key: &str, value: impl AsRef<[u8]>) -> crate::Result<()> {
    wit::set(key, value.as_ref()).map_err(|e| match e {
        wit::ContextError::TooLarge(m) => Error::permanent(format!("context full: {m}")),
        wit::ContextError::InvalidKey(m) => Error::permanent(format!("bad context key: {m}")),
    })
}

/// Removes `key`; true if it existed.
pub fn delete(key: &str) -> bool {
    wit::delete(key)
}

/// Every key starting with `prefix`, in order.
pub fn keys(prefix: &str) -> Vec<String> {
    wit::list_keys(prefix)
}

/// The value under `key`, parsed as JSON.
pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> crate::Result<Option<T>> {
    get(key)
        .map(|bytes| serde_json::from_slice(&bytes).map_err(|e| Error::permanent(format!("context `{key}`: {e}"))))
        .transpose()
}

/// Stores `value` as JSON under `key`.
pub fn set_json<T: serde::Serialize + ?Sized>(key: &str, value: &T) -> crate::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::permanent(format!("encoding context `{key}`: {e}")))?;
    set(key, bytes)
}
