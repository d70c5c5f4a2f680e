//! taskhost: runs user task logic as WebAssembly components (WASI preview 2)
//! under wasmtime, each task in a fresh sandbox with hard limits.
//!
//! The public surface is deliberately small:
//! - [`Sandbox`] owns the wasmtime engine and loads [`Plugin`]s;
//! - [`TaskRequest`] + [`Limits`] describe one run; [`TaskReport`] is what
//!   came of it, with a classified [`TaskFailure`] on failure;
//! - [`engine::Engine`] is the durable task engine over [`store::Store`]
//!   (redb), served over HTTP by [`api::router`];
//! - [`registry`] holds plugin versions, their compiled code and the
//!   operators' capability [`registry::Manifest`]s;
//! - [`wire`] has the JSON shapes the API answers with and callbacks carry;
//! - [`egress`] is the guarded HTTP client for what the host fetches or
//!   posts on users' behalf; [`tls`] serves HTTPS;
//! - [`auth`] keeps the API tokens, their scopes and the audit log;
//!   [`tenant`] turns tenants' names into the keys below the API;
//! - [`units`] parses the human sizes and durations the CLI and API accept.

#![warn(missing_docs, unreachable_pub)]
#![deny(clippy::await_holding_lock)]

pub mod api;
#[cfg(test)]
mod arbitrary_json;
pub mod auth;
mod bindings;
pub mod egress;
pub mod engine;
pub mod files;
pub mod inference;
mod labels;
pub mod names;
pub mod registry;
mod sandbox;
pub mod store;
mod sync;
pub mod tenant;
pub mod tls;
pub mod trace;
pub mod units;
pub mod watch;
pub mod wire;

pub use sandbox::{
    AttemptRuntime, BudgetExceeded, CancelToken, Ceilings, DirGrant, FailureClass, Grants, HostBudget, Limits,
    LoadError, LogLevel, LogRecord, Plugin, Sandbox, SandboxConfig, TaskFailure, TaskMeta, TaskReport, TaskRequest,
    Transcript,
};

/// Scripts (JavaScript, Python) and the runner components that run them.
pub mod scripts {
    pub use crate::sandbox::{Language, MAX_SCRIPT_BYTES, RunnerId, Script, ScriptError};
}

/// Attempts' transcripts: what a task logged and printed, as timed lines.
pub mod logs {
    pub use crate::sandbox::{AttemptLog, DEFAULT_KEEP, Dropped, LogLine, MAX_LINE, Stream};
}

/// The WIT types of the `inference` import (generated from
/// `wit/inference.wit`) and the trait the model registry implements.
pub mod infer {
    pub use crate::sandbox::{
        Caller, InferenceError, InferenceService, ModelInfo, RunResult, Tensor, TensorSpec, TensorType,
    };
}

/// The flow services a task reaches through its `queue` and `context`
/// imports: the trait the engine implements and the WIT types it speaks
/// (generated from `wit/flow.wit`).
pub mod flow {
    pub use crate::sandbox::{
        ChildTask, ContextError, HostFailure, QueueError, Served, TaskServices, TaskStatus, TaskView,
    };
}
