//! Logging into the task's record through the WIT `log` interface.
//!
//! The macros format like `format!`; the functions take a finished message.
//! The host caps the bytes a task may log (1 MiB by default); a task that
//! goes over is stopped and fails with `output too large`.
//!
//! ```no_run
//! #[taskhost_sdk::plugin]
//! fn work(input: Vec<u8>) -> Vec<u8> {
//!     taskhost_sdk::info!("got {} bytes", input.len());
//!     taskhost_sdk::log::debug("done");
//!     input
//! }
//! ```

use crate::__private::taskhost::plugin::log::{Level, log};

/// Logs `message` at trace level.
///
/// ```no_run
/// taskhost_sdk::log::trace("cache warmed");
/// ```
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message.as_ref());
}

/// Logs `message` at debug level.
///
/// ```no_run
/// taskhost_sdk::log::debug("cache warmed");
/// ```
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message.as_ref());
}

/// Logs `message` at info level.
///
/// ```no_run
/// taskhost_sdk::log::info("cache warmed");
/// ```
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message.as_ref());
}

/// Logs `message` at warn level.
///
/// ```no_run
/// taskhost_sdk::log::warn("cache warmed");
/// ```
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message.as_ref());
}

/// Logs `message` at error level.
///
/// ```no_run
/// taskhost_sdk::log::error("cache warmed");
/// ```
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message.as_ref());
}

/// Logs a formatted message at trace level.
///
/// ```no_run
/// let items = 3;
/// taskhost_sdk::trace!("processed {items} items");
/// ```
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::trace(::std::format!($($arg)*)) };
}

/// Logs a formatted message at debug level.
///
/// ```no_run
/// let items = 3;
/// taskhost_sdk::debug!("processed {items} items");
/// ```
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::debug(::std::format!($($arg)*)) };
}

/// Logs a formatted message at info level.
///
/// ```no_run
/// let items = 3;
/// taskhost_sdk::info!("processed {items} items");
/// ```
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::info(::std::format!($($arg)*)) };
}

/// Logs a formatted message at warn level.
///
/// ```no_run
/// let items = 3;
/// taskhost_sdk::warn!("processed {items} items");
/// ```
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::warn(::std::format!($($arg)*)) };
}

/// Logs a formatted message at error level.
///
/// ```no_run
/// let items = 3;
/// taskhost_sdk::error!("processed {items} items");
/// ```
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::error(::std::format!($($arg)*)) };
}
