//! The host side of the flow imports (`queue`, `context`): each call is
//! forwarded to the [`TaskServices`] the caller of the sandbox injected
//! (the engine does, per attempt). The sandbox itself keeps no flow state
//! and never touches the store. Without services (`taskhost run`), every
//! call answers that flows need the engine.

use super::state::TaskState;
use crate::bindings::taskhost::plugin::{context, queue};
use std::sync::Arc;

pub use context::ContextError;
pub use queue::{ChildTask, QueueError, TaskStatus, TaskView};

/// Engine services one task attempt reaches through its WIT imports. The
/// engine implements it; the sandbox only forwards calls. Every method is
/// called from the guest's thread and must not block for long.
pub trait TaskServices: Send + Sync + std::fmt::Debug {
    /// `queue.submit`: validates and holds a child until the attempt ends.
    fn submit(&self, task: ChildTask) -> Result<String, QueueError>;
    /// `queue.join`: holds a continuation of `tasks` until the attempt ends.
    fn join(&self, tasks: Vec<String>, then: ChildTask) -> Result<String, QueueError>;
    /// `queue.joined`: the outcomes of what this task joins, in order.
    fn joined(&self) -> Vec<TaskView>;
    /// `queue.get`: a task of the caller's flow.
    fn get(&self, id: &str) -> Result<TaskView, QueueError>;
    /// `queue.stop-repeating`.
    fn stop_repeating(&self);
    /// `context.get`.
    fn context_get(&self, key: &str) -> Option<Vec<u8>>;
    /// `context.set`.
    fn context_set(&self, key: String, value: Vec<u8>) -> Result<(), ContextError>;
    /// `context.delete`.
    fn context_delete(&self, key: &str) -> bool;
    /// `context.list-keys`.
    fn context_list(&self, prefix: &str) -> Vec<String>;
}

const NO_ENGINE: &str = "flows need the task engine (`taskhost serve`); this task runs on its own";

impl TaskState {
    fn services(&self) -> Option<&Arc<dyn TaskServices>> {
        self.services.as_ref()
    }
}

impl queue::Host for TaskState {
    fn submit(&mut self, task: ChildTask) -> wasmtime::Result<Result<String, QueueError>> {
        Ok(match self.services() {
            Some(s) => s.submit(task),
            None => Err(QueueError::Invalid(NO_ENGINE.into())),
        })
    }

    fn join(&mut self, tasks: Vec<String>, then: ChildTask) -> wasmtime::Result<Result<String, QueueError>> {
        Ok(match self.services() {
            Some(s) => s.join(tasks, then),
            None => Err(QueueError::Invalid(NO_ENGINE.into())),
        })
    }

    fn joined(&mut self) -> wasmtime::Result<Vec<TaskView>> {
        Ok(self.services().map(|s| s.joined()).unwrap_or_default())
    }

    fn get(&mut self, id: String) -> wasmtime::Result<Result<TaskView, QueueError>> {
        Ok(match self.services() {
            Some(s) => s.get(&id),
            None => Err(QueueError::Invalid(NO_ENGINE.into())),
        })
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
        Ok(self.services().and_then(|s| s.context_get(&key)))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), ContextError>> {
        Ok(match self.services() {
            Some(s) => s.context_set(key, value),
            None => Err(ContextError::TooLarge(NO_ENGINE.into())),
        })
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<bool> {
        Ok(self.services().is_some_and(|s| s.context_delete(&key)))
    }

    fn list_keys(&mut self, prefix: String) -> wasmtime::Result<Vec<String>> {
        Ok(self.services().map(|s| s.context_list(&prefix)).unwrap_or_default())
    }
}
