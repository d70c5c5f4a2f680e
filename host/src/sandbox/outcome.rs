//! What came of a task: its output or a classified failure, plus what it
//! logged. Classification reads the sandbox's own records (limiter refusals,
//! stream overflows, the epoch callback's verdict) before the trap code, so
//! an abort after a refused `memory.grow` is `memory limit exceeded`, not
//! `unreachable`.

use super::state::{Interrupted, TaskState};
use std::fmt;
use std::time::Duration;
use wasmtime::{Trap, WasmBacktrace};

/// The class of a failed task. Every failure has exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// The task used up its fuel budget.
    FuelExhausted,
    /// The task asked for more linear memory than its limit.
    MemoryLimitExceeded,
    /// The task ran past its wall-clock budget.
    Timeout,
    /// The task exhausted the wasm call stack.
    StackOverflow,
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, a
    /// failed host call); the wasm backtrace is kept.
    Trap,
    /// The plugin returned an error (see [`TaskFailure::retryable`]).
    PluginError,
    /// The output, or a captured stream (stdout, stderr, log), passed its cap.
    OutputTooLarge,
    /// The component cannot run here: not a component, not world `task`, or
    /// it imports something this host does not provide.
    InvalidPlugin,
    /// The task was cancelled while it ran.
    Cancelled,
    /// The host could not run the task (e.g. no free instance slot).
    HostError,
}

impl FailureClass {
    /// The class as people read it, e.g. `fuel exhausted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FuelExhausted => "fuel exhausted",
            Self::MemoryLimitExceeded => "memory limit exceeded",
            Self::Timeout => "timeout",
            Self::StackOverflow => "stack overflow",
            Self::Trap => "trap",
            Self::PluginError => "plugin error",
            Self::OutputTooLarge => "output too large",
            Self::InvalidPlugin => "invalid plugin",
            Self::Cancelled => "cancelled",
            Self::HostError => "host error",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed task: its class, a specific message and, for traps, the wasm
/// backtrace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// What kind of failure this is.
    pub class: FailureClass,
    /// Whether running the task again could succeed. Only plugin errors
    /// marked `retryable` set it; the engine applies its own policy for the
    /// other classes.
    pub retryable: bool,
    /// What went wrong, specifically.
    pub message: String,
    /// The wasm backtrace, for traps.
    pub backtrace: Option<String>,
}

impl TaskFailure {
    pub(crate) fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self { class, retryable: false, message: message.into(), backtrace: None }
    }
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.class, self.retryable) {
            (FailureClass::PluginError, true) => {
                write!(f, "plugin error (retryable): {}", self.message)
            }
            (FailureClass::PluginError, false) => {
                write!(f, "plugin error (permanent): {}", self.message)
            }
            (class, _) => write!(f, "{class}: {}", self.message),
        }
    }
}

impl std::error::Error for TaskFailure {}

/// Severity of a guest log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal progress.
    Info,
    /// A recovered problem.
    Warn,
    /// A failure.
    Error,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` honours width and alignment (`{:>5}`).
        f.pad(match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        })
    }
}

/// One message a task logged through the WIT `log` interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its severity.
    pub level: LogLevel,
    /// The message text.
    pub message: String,
    /// When it was logged, from the task's start.
    pub at: Duration,
}

/// Everything a task run produced.
#[derive(Debug, Clone)]
pub struct TaskReport {
    /// The output bytes, or the classified failure.
    pub result: Result<Vec<u8>, TaskFailure>,
    /// Records from the WIT `log` interface, in order.
    pub logs: Vec<LogRecord>,
    /// Captured guest stdout (capped).
    pub stdout: Vec<u8>,
    /// Captured guest stderr (capped; a Rust panic message lands here).
    pub stderr: Vec<u8>,
    /// Fuel the task burned, when fuel is metered.
    pub fuel_consumed: Option<u64>,
    /// Wall-clock time from instantiation to the end of the call.
    pub elapsed: Duration,
}

/// Classifies an error raised while instantiating or running the guest.
pub(crate) fn classify_error(err: wasmtime::Error, state: &TaskState) -> TaskFailure {
    match state.interrupted {
        Some(Interrupted::Cancelled) => {
            return TaskFailure::new(FailureClass::Cancelled, "the task was cancelled while running");
        }
        Some(Interrupted::Timeout) => return timeout_failure(state),
        None => {}
    }
    if let Some(message) = &state.host_failure {
        return TaskFailure::new(FailureClass::HostError, message.clone());
    }
    if let Some(stream) = state.overflowed_stream() {
        return TaskFailure::new(
            FailureClass::OutputTooLarge,
            format!("{stream} exceeded its cap of {} bytes", state.max_log_bytes),
        );
    }
    let trap = err.downcast_ref::<Trap>().copied();
    match trap {
        Some(Trap::OutOfFuel) => {
            return TaskFailure::new(FailureClass::FuelExhausted, "the task used up its fuel budget");
        }
        Some(Trap::StackOverflow) => {
            return TaskFailure::new(FailureClass::StackOverflow, "the task exhausted the wasm call stack");
        }
        Some(Trap::Interrupt) => return timeout_failure(state),
        _ => {}
    }
    if let Some(refusal) = state.limiter.refused {
        return TaskFailure::new(
            FailureClass::MemoryLimitExceeded,
            format!(
                "the task asked for {} bytes of linear memory; its limit is {}",
                refusal.requested_total,
                state.limiter.limit()
            ),
        );
    }
    let backtrace = err.downcast_ref::<WasmBacktrace>().map(|bt| bt.to_string());
    let mut message = match trap {
        // Trap's Display already reads "wasm trap: ..."; the class says trap.
        Some(trap) => trap.to_string().trim_start_matches("wasm trap: ").to_owned(),
        None => format!("{err:#}"),
    };
    if let Some(panic) = panic_message(&state.stderr_snapshot()) {
        message = format!("{message} (guest panicked: {panic})");
    }
    TaskFailure { class: FailureClass::Trap, retryable: false, message, backtrace }
}

fn timeout_failure(state: &TaskState) -> TaskFailure {
    TaskFailure::new(
        FailureClass::Timeout,
        format!("the task ran past its {} ms wall-clock budget", state.timeout.as_millis()),
    )
}

/// The message of a Rust panic printed to stderr, if there is one.
fn panic_message(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let start = text.find("panicked at ")?;
    let rest = &text[start..];
    // `panicked at src/lib.rs:3:5:\nmessage`
    let message = rest.split_once('\n').map(|(_, m)| m).unwrap_or(rest);
    let message = message.lines().next().unwrap_or("").trim();
    (!message.is_empty()).then(|| message.chars().take(500).collect())
}
