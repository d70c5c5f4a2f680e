//! The host side of the flow imports (`queue`, `context`): each call is
//! forwarded to the [`TaskServices`] the caller of the sandbox injected
//! (the engine does, per attempt). The sandbox itself keeps no flow state
//! and never touches the store. Without services (`taskhost run`), every
//! call answers that flows need the engine.

use super::budget::BudgetExceeded;
use super::state::TaskState;
use crate::bindings::taskhost::plugin::{context, queue};
use std::sync::Arc;

pub use context::ContextError;
pub use queue::{ChildTask, QueueError, TaskStatus, TaskView};

/// The host could not serve a call (e.g. its store failed a read). The
/// attempt ends at once as a `host error`, which the engine retries; the
/// guest never sees a failed read as "absent".
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct HostFailure(pub String);

/// What a service call gives: the WIT answer, or a host failure that ends
/// the attempt.
pub type Served<T> = Result<T, HostFailure>;

/// Engine services one task attempt reaches through its WIT imports. The
/// engine implements it; the sandbox only forwards calls. Every method is
/// called from the guest's thread and must not block for long.
pub trait TaskServices: Send + Sync + std::fmt::Debug {
    /// `queue.submit`: validates and holds a child until the attempt ends.
    fn submit(&self, task: ChildTask) -> Served<Result<String, QueueError>>;
    /// `queue.join`: holds a continuation of `tasks` until the attempt ends.
    fn join(&self, tasks: Vec<String>, then: ChildTask) -> Served<Result<String, QueueError>>;
    /// `queue.joined`: the outcomes of what this task joins, in order;
    /// refused when their outputs would not fit the attempt's host budget
    /// (which traps the guest).
    fn joined(&self) -> Served<Result<Vec<TaskView>, BudgetExceeded>>;
    /// `queue.get`: a task of the caller's flow.
    fn get(&self, id: &str) -> Served<Result<TaskView, QueueError>>;
    /// `queue.stop-repeating`.
    fn stop_repeating(&self);
    /// `context.get`.
    fn context_get(&self, key: &str) -> Served<Option<Vec<u8>>>;
    /// `context.set`.
    fn context_set(&self, key: String, value: Vec<u8>) -> Served<Result<(), ContextError>>;
    /// `context.delete`.
    fn context_delete(&self, key: &str) -> Served<bool>;
    /// `context.list-keys`.
    fn context_list(&self, prefix: &str) -> Served<Vec<String>>;
}

const NO_ENGINE: &str = "flows need the task engine (`taskhost serve`); this task runs on its own";

impl TaskState {
    fn services(&self) -> Option<&Arc<dyn TaskServices>> {
        self.services.as_ref()
    }

    /// Ends the attempt with a host failure (recorded for the classifier).
    fn served<T>(&mut self, served: Served<T>) -> wasmtime::Result<T> {
        served.map_err(|failure| {
            self.host_failure = Some(failure.0.clone());
            wasmtime::Error::msg(failure.0)
        })
    }
}

impl queue::Host for TaskState {
    fn submit(&mut self, task: ChildTask) -> wasmtime::Result<Result<String, QueueError>> {
        let _span = self.trace.child("queue.submit");
        match self.services().cloned() {
            Some(s) => self.served(s.submit(task)),
            None => Ok(Err(QueueError::Invalid(NO_ENGINE.into()))),
        }
    }

    fn join(&mut self, tasks: Vec<String>, then: ChildTask) -> wasmtime::Result<Result<String, QueueError>> {
        let _span = self.trace.child("queue.join");
        match self.services().cloned() {
            Some(s) => self.served(s.join(tasks, then)),
            None => Ok(Err(QueueError::Invalid(NO_ENGINE.into()))),
        }
    }

    fn joined(&mut self) -> wasmtime::Result<Vec<TaskView>> {
        let _span = self.trace.child("queue.joined");
        match self.services().cloned() {
            Some(s) => self.served(s.joined())?.map_err(wasmtime::Error::new),
            None => Ok(Vec::new()),
        }
    }

    fn get(&mut self, id: String) -> wasmtime::Result<Result<TaskView, QueueError>> {
        let _span = self.trace.child("queue.get");
        match self.services().cloned() {
            Some(s) => self.served(s.get(&id)),
            None => Ok(Err(QueueError::Invalid(NO_ENGINE.into()))),
        }
    }

    fn stop_repeating(&mut self) -> wasmtime::Result<()> {
        if let Some(s) = self.services() {
            s.stop_repeating();
        }
        Ok(())
    }
}

impl context::Host for TaskState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let _span = self.trace.child("context.get");
        match self.services().cloned() {
            Some(s) => self.served(s.context_get(&key)),
            None => Ok(None),
        }
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), ContextError>> {
        let _span = self.trace.child("context.set");
        match self.services().cloned() {
            Some(s) => self.served(s.context_set(key, value)),
            None => Ok(Err(ContextError::TooLarge(NO_ENGINE.into()))),
        }
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<bool> {
        let _span = self.trace.child("context.delete");
        match self.services().cloned() {
            Some(s) => self.served(s.context_delete(&key)),
            None => Ok(false),
        }
    }

    fn list_keys(&mut self, prefix: String) -> wasmtime::Result<Vec<String>> {
        let _span = self.trace.child("context.list-keys");
        match self.services().cloned() {
            Some(s) => self.served(s.context_list(&prefix)),
            None => Ok(Vec::new()),
        }
    }
}
