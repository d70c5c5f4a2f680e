//! Write [taskhost](https://example.invalid/taskhost) task plugins in Rust.
//!
//! A plugin is a WebAssembly component that exports `run` from the WIT world
//! `taskhost:plugin/task`. This crate turns one plain function into that
//! export, with typed JSON in and out, errors that say whether a retry could
//! help, logging, and the running task's identity.
//!
//! ```no_run
//! use taskhost_sdk::{plugin, Json, Result};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Order { items: Vec<u32> }
//!
//! #[derive(Serialize)]
//! struct Total { total: u64 }
//!
//! #[plugin]
//! fn total(Json(order): Json<Order>) -> Result<Json<Total>> {
//!     taskhost_sdk::info!("summing {} items", order.items.len());
//!     Ok(Json(Total { total: order.items.iter().map(|&i| u64::from(i)).sum() }))
//! }
//! ```
//!
//! # A new plugin, step by step
//!
//! ```text
//! rustup target add wasm32-wasip2
//! cargo new --lib my-plugin && cd my-plugin
//! # Cargo.toml:  [lib] crate-type = ["cdylib"]
//! #              [dependencies] taskhost-sdk = { path = ".../taskhost/sdk" }
//! cargo build --release --target wasm32-wasip2
//! taskhost run target/wasm32-wasip2/release/my_plugin.wasm --input input.json
//! ```
//!
//! # Inputs and outputs
//!
//! The function takes one argument and returns one value:
//!
//! | argument ([`FromInput`]) | meaning |
//! |---|---|
//! | `Vec<u8>` | the raw input bytes |
//! | `String` | the input as UTF-8 (anything else is a permanent error) |
//! | [`Json<T>`] | the input parsed as JSON into `T: Deserialize` |
//!
//! | return ([`IntoTaskResult`]) | meaning |
//! |---|---|
//! | `Vec<u8>`, `String`, `&'static str`, `()` | the output bytes (`()` is empty) |
//! | [`Json<T>`] | `T: Serialize` written as JSON |
//! | `Result<O, E>` | any of the above, or an error `E: Into<`[`Error`]`>` |
//!
//! # Errors
//!
//! An [`Error`] is [retryable](Error::retryable) or
//! [permanent](Error::permanent). `?` on any `std::error::Error` gives a
//! permanent error; [`ResultExt::retryable`] marks one as worth retrying.

//!
//! # Flows
//!
//! A task can submit child tasks and join on them ([`flow`]), and share
//! small durable state with the other tasks of its flow ([`context`]).
//! Both commit with the task's completion, so a retried task never
//! duplicates what it submitted.
//!
//! # Inference
//!
//! [`inference::run`] runs an ONNX model the host serves; the host batches
//! concurrent calls from many tasks into one run.

#![deny(missing_docs)]

extern crate self as taskhost_sdk;

use std::fmt;

pub mod context;
pub mod flow;
pub mod inference;
mod io;
pub mod log;

pub use io::{FromInput, IntoOutput, IntoTaskResult, Json};
/// Turns a function into the plugin's `run` export.
///
/// The function must look like `fn NAME(input: I) -> R` with `I:`
/// [`FromInput`] and `R:` [`IntoTaskResult`]; it may not be `async`,
/// generic or a method. Use it once per plugin crate.
///
/// ```no_run
/// #[taskhost_sdk::plugin]
/// fn shout(text: String) -> String {
///     text.to_uppercase()
/// }
/// ```
pub use taskhost_sdk_macros::plugin;

/// The running task's identity: id, attempt, queue, plugin name and version.
pub use __private::taskhost::plugin::types::TaskInfo;

/// Raw bindings generated from the WIT package, for anything the wrappers
/// above do not cover. Plugins rarely need them.
///
/// ```no_run
/// use taskhost_sdk::bindings::log::{log, Level};
/// log(Level::Warn, "written through the raw binding");
/// ```
pub mod bindings {
    pub use crate::__private::taskhost::plugin::{context, inference, log, queue, runtime, types};
}

/// Returns the running task's id, attempt, queue, plugin name and version.
///
/// ```no_run
/// #[taskhost_sdk::plugin]
/// fn whoami(_: Vec<u8>) -> String {
///     let info = taskhost_sdk::task_info();
///     format!("task {} attempt {} on queue {}", info.id, info.attempt, info.queue)
/// }
/// ```
pub fn task_info() -> TaskInfo {
    __private::taskhost::plugin::runtime::current_task()
}

/// A plugin's error: a message, and whether running the task again could
/// succeed.
///
/// Any `std::error::Error` converts into a *permanent* `Error`, so `?` works
/// on ordinary results; use [`Error::retryable`] or [`ResultExt::retryable`]
/// for transient failures.
///
/// ```no_run
/// use taskhost_sdk::{Error, Result};
///
/// #[taskhost_sdk::plugin]
/// fn parse(text: String) -> Result<String> {
///     if text.is_empty() {
///         return Err(Error::permanent("input is empty; expected a number"));
///     }
///     let n: i64 = text.trim().parse()?; // a bad number is permanent
///     Ok((n * 2).to_string())
/// }
/// ```
pub struct Error {
    retryable: bool,
    message: String,
}

impl Error {
    /// A transient failure: the host may run the task again.
    ///
    /// ```
    /// let e = taskhost_sdk::Error::retryable("rate limited");
    /// assert!(e.is_retryable());
    /// ```
    pub fn retryable(message: impl fmt::Display) -> Self {
        Self { retryable: true, message: message.to_string() }
    }

    /// A failure that will recur on the same input: never retried.
    ///
    /// ```
    /// let e = taskhost_sdk::Error::permanent("order id missing");
    /// assert!(!e.is_retryable());
    /// ```
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self { retryable: false, message: message.to_string() }
    }

    /// Whether the host may retry the task.
    ///
    /// ```
    /// let e: taskhost_sdk::Error = std::io::Error::other("disk").into();
    /// assert!(!e.is_retryable()); // converted errors are permanent
    /// ```
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The error message.
    ///
    /// ```
    /// assert_eq!(taskhost_sdk::Error::permanent("bad input").message(), "bad input");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::permanent(message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.retryable { "retryable" } else { "permanent" };
        write!(f, "{kind}: {}", self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `Result` with the SDK's [`Error`].
///
/// ```
/// fn half(n: u32) -> taskhost_sdk::Result<u32> {
///     if n % 2 == 1 {
///         return Err(taskhost_sdk::Error::permanent(format!("{n} is odd")));
///     }
///     Ok(n / 2)
/// }
/// assert_eq!(half(4).unwrap(), 2);
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Marks the error of any `Result` as retryable or permanent.
///
/// ```no_run
/// use taskhost_sdk::{ResultExt, Result};
///
/// fn fetch_rate() -> std::result::Result<f64, std::io::Error> {
///     Err(std::io::Error::other("upstream busy"))
/// }
///
/// #[taskhost_sdk::plugin]
/// fn convert(amount: String) -> Result<String> {
///     let rate = fetch_rate().retryable()?;
///     let amount: f64 = amount.trim().parse().permanent()?;
///     Ok(format!("{:.2}", amount * rate))
/// }
/// ```
pub trait ResultExt<T> {
    /// Turns the error into a retryable [`Error`].
    ///
    /// ```
    /// use taskhost_sdk::ResultExt;
    /// let r: Result<(), &str> = Err("timeout");
    /// assert!(r.retryable().unwrap_err().is_retryable());
    /// ```
    fn retryable(self) -> Result<T>;
    /// Turns the error into a permanent [`Error`].
    ///
    /// ```
    /// use taskhost_sdk::ResultExt;
    /// let n = "x1".parse::<u8>().permanent();
    /// assert!(!n.unwrap_err().is_retryable());
    /// ```
    fn permanent(self) -> Result<T>;
}

impl<T, E: fmt::Display> ResultExt<T> for std::result::Result<T, E> {
    fn retryable(self) -> Result<T> {
        self.map_err(Error::retryable)
    }

    fn permanent(self) -> Result<T> {
        self.map_err(Error::permanent)
    }
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    wit_bindgen::generate!({
        world: "task",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_task",
        default_bindings_module: "::taskhost_sdk::__private",
        runtime_path: "::taskhost_sdk::__private::wit_bindgen::rt",
    });

    /// Maps the SDK's error to the WIT `task-error`; used by `#[plugin]`.
    pub fn task_error(error: crate::Error) -> TaskError {
        if error.retryable { TaskError::Retryable(error.message) } else { TaskError::Permanent(error.message) }
    }
}
