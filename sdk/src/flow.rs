//! Child tasks, joins and repeaters, from inside a running task.
//!
//! What a task submits is created when it completes, in the same commit as
//! its output: an attempt that fails submits nothing, so retries never
//! duplicate children. Nothing here waits for another task; to use the
//! results of others, [`join`] them with a continuation and return.
//!
//! ```no_run
//! use taskhost_sdk::{flow::{self, Child}, plugin, Result};
//!
//! #[plugin]
//! fn split(text: String) -> Result<String> {
//!     let parts: Vec<_> = text
//!         .lines()
//!         .map(|line| Child::new("word-count").input(line).submit())
//!         .collect::<Result<_>>()?;
//!     flow::join(&parts, Child::new("sum-counts"))?;
//!     Ok(format!("{} parts", parts.len()))
//! }
//! ```

use crate::__private::taskhost::plugin::queue;
use crate::Error;

/// A task id, as the host returned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub String);

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task to submit; built step by step, then [`submit`](Child::submit)ted
/// or passed to [`join`].
///
/// ```no_run
/// use taskhost_sdk::flow::Child;
/// let id = Child::new("uppercase").input("hello").priority(5).key("greeting").submit()?;
/// # Ok::<(), taskhost_sdk::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Child(queue::ChildTask);

impl Child {
    /// A task of `plugin` (`name` or `name@version`) with empty input, in
    /// the current task's queue and priority.
    pub fn new(plugin: impl Into<String>) -> Self {
        Child(queue::ChildTask {
            plugin: plugin.into(),
            input: Vec::new(),
            queue: None,
            priority: None,
            delay_ms: None,
            idempotency_key: None,
        })
    }

    /// Sets the input bytes.
    pub fn input(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.0.input = input.into();
        self
    }

    /// Sets the input to `value` as JSON.
    ///
    /// ```no_run
    /// let child = taskhost_sdk::flow::Child::new("total").json(&[1, 2, 3])?;
    /// # Ok::<(), taskhost_sdk::Error>(())
    /// ```
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> crate::Result<Self> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| Error::permanent(format!("encoding the child input: {e}")))?;
        Ok(self.input(bytes))
    }

    /// Runs it in `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.0.queue = Some(queue.into());
        self
    }

    /// Sets its priority, 0-9 (higher runs first).
    pub fn priority(mut self, priority: u8) -> Self {
        self.0.priority = Some(priority);
        self
    }

    /// Starts it no sooner than `delay` from now.
    pub fn delay(mut self, delay: std::time::Duration) -> Self {
        self.0.delay_ms = Some(delay.as_millis().try_into().unwrap_or(u64::MAX));
        self
    }

    /// Makes the submission idempotent within the flow: the same key again
    /// returns the first task's id.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.0.idempotency_key = Some(key.into());
        self
    }

    /// Submits it; it is created when the current task completes.
    pub fn submit(self) -> crate::Result<TaskId> {
        queue::submit(&self.0).map(TaskId).map_err(error)
    }
}

/// Submits `then` to start once every task in `tasks` has ended (however
/// it ended); it reads their outcomes with [`joined`].
///
/// ```no_run
/// use taskhost_sdk::flow::{self, Child};
/// let a = Child::new("fetch").input("a").submit()?;
/// let b = Child::new("fetch").input("b").submit()?;
/// flow::join(&[a, b], Child::new("merge"))?;
/// # Ok::<(), taskhost_sdk::Error>(())
/// ```
pub fn join(tasks: &[TaskId], then: Child) -> crate::Result<TaskId> {
    let ids: Vec<String> = tasks.iter().map(|t| t.0.clone()).collect();
    queue::join(&ids, &then.0).map(TaskId).map_err(error)
}

/// Where a task is in its lifecycle.
pub use queue::TaskStatus as Status;

/// What a task can see of another task of its flow.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its id.
    pub id: TaskId,
    /// Its state.
    pub status: Status,
    /// Its output, once completed.
    pub output: Option<Vec<u8>>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
}

impl Outcome {
    /// The output parsed as JSON; an error if it did not complete or does
    /// not parse.
    ///
    /// ```no_run
    /// let counts: Vec<u64> = taskhost_sdk::flow::joined()
    ///     .iter()
    ///     .map(|o| o.json::<u64>())
    ///     .collect::<taskhost_sdk::Result<_>>()?;
    /// # Ok::<(), taskhost_sdk::Error>(())
    /// ```
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        let Some(output) = &self.output else {
            let why = self.error.as_deref().unwrap_or("no output");
            return Err(Error::permanent(format!("task {} has no output ({:?}: {why})", self.id, self.status)));
        };
        serde_json::from_slice(output).map_err(|e| Error::permanent(format!("output of task {}: {e}", self.id)))
    }
}

impl From<queue::TaskView> for Outcome {
    fn from(v: queue::TaskView) -> Self {
        Outcome { id: TaskId(v.id), status: v.status, output: v.output, error: v.error }
    }
}

/// The outcomes of the tasks this task joins, in the order given to
/// [`join`]; empty if it joins nothing.
pub fn joined() -> Vec<Outcome> {
    queue::joined().into_iter().map(Outcome::from).collect()
}

/// Looks at a task of this flow.
pub fn get(id: &TaskId) -> crate::Result<Outcome> {
    queue::get(&id.0).map(Outcome::from).map_err(error)
}

/// Ends a repeating flow after the current iteration.
pub fn stop_repeating() {
    queue::stop_repeating();
}

/// Refusals are permanent errors, except the rate limit (retrying later
/// can succeed).
fn error(e: queue::QueueError) -> Error {
    match e {
        queue::QueueError::LimitExceeded(m) if m.contains("per second") => {
            Error::retryable(format!("limit exceeded: {m}"))
        }
        queue::QueueError::LimitExceeded(m) => Error::permanent(format!("limit exceeded: {m}")),
        queue::QueueError::Invalid(m) => Error::permanent(format!("invalid submission: {m}")),
        queue::QueueError::UnknownPlugin(m) => Error::permanent(m),
        queue::QueueError::NotFound(m) => Error::permanent(m),
    }
}
