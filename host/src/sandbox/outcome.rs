//! What came of a task: its output or a classified failure, plus what it
//! logged. Classification reads the sandbox's own records (limiter refusals,
//! stream overflows, the epoch callback's verdict) before the trap code, so
//! an abort after a refused `memory.grow` is `memory limit exceeded`, not
//! `unreachable`.

use super::budget::BudgetExceeded;
use super::state::{Interrupted, TaskState};
use std::fmt;
use std::time::Duration;
use wasmtime::{Trap, WasmBacktrace};

/// The class of a failed task. Every failure has exactly one. Records
/// store it as a stable one-byte code ([`FailureClass::code`]); JSON and
/// people see its name ([`FailureClass::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// The task made the host hold more than its host budget (log
    /// records, children, context writes, join results, inference tensors).
    HostBudgetExceeded,
    /// The task's input could not be fetched from its `input_url` (refused
    /// by the egress guard, unreachable, an error status, too large, too
    /// slow). Retried: each attempt fetches anew.
    InputFetchFailed,
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
            Self::HostBudgetExceeded => "host budget exceeded",
            Self::InputFetchFailed => "input fetch failed",
        }
    }
}

impl FailureClass {
    /// Every class, in code order.
    pub const ALL: [FailureClass; 12] = [
        Self::FuelExhausted,
        Self::MemoryLimitExceeded,
        Self::Timeout,
        Self::StackOverflow,
        Self::Trap,
        Self::PluginError,
        Self::OutputTooLarge,
        Self::InvalidPlugin,
        Self::Cancelled,
        Self::HostError,
        Self::HostBudgetExceeded,
        Self::InputFetchFailed,
    ];

    /// The code stored in records. Codes are forever: a new class takes a
    /// new code, and no code is reused.
    pub fn code(self) -> u8 {
        match self {
            Self::FuelExhausted => 1,
            Self::MemoryLimitExceeded => 2,
            Self::Timeout => 3,
            Self::StackOverflow => 4,
            Self::Trap => 5,
            Self::PluginError => 6,
            Self::OutputTooLarge => 7,
            Self::InvalidPlugin => 8,
            Self::Cancelled => 9,
            Self::HostError => 10,
            Self::HostBudgetExceeded => 11,
            Self::InputFetchFailed => 12,
        }
    }

    /// The class of a stored code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a failure class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a failure class")]
pub struct UnknownClass(pub String);

impl std::str::FromStr for FailureClass {
    type Err = UnknownClass;

    fn from_str(s: &str) -> Result<Self, UnknownClass> {
        Self::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| UnknownClass(s.to_owned()))
    }
}

impl PartialEq<str> for FailureClass {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for FailureClass {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for FailureClass {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(self.as_str())
        } else {
            serializer.serialize_u8(self.code())
        }
    }
}

impl<'de> serde::Deserialize<'de> for FailureClass {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        if deserializer.is_human_readable() {
            let name = String::deserialize(deserializer)?;
            name.parse().map_err(D::Error::custom)
        } else {
            let code = u8::deserialize(deserializer)?;
            Self::from_code(code).ok_or_else(|| D::Error::custom(format!("unknown failure class code {code}")))
        }
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
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
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
    /// The most bytes the task made the host hold at once (its host
    /// budget's peak).
    pub host_bytes_peak: u64,
    /// The most linear memory the task's instance held.
    pub memory_peak: u64,
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
    if let Some(failure) = memory_refused(state) {
        return failure;
    }
    if let Some(refused) = err.chain().find_map(|e| e.downcast_ref::<BudgetExceeded>()) {
        return TaskFailure::new(FailureClass::HostBudgetExceeded, refused.to_string());
    }
    let backtrace = err.downcast_ref::<WasmBacktrace>().map(|bt| bt.to_string());
    // A guest that panics on a refused call (`unwrap` of `limit-exceeded`)
    // traps `unreachable`: the budget's record says why.
    if trap == Some(Trap::UnreachableCodeReached)
        && let Some(refusal) = state.budget.refusal()
    {
        let panic =
            panic_message(&state.stderr_snapshot()).map(|p| format!(" (guest panicked: {p})")).unwrap_or_default();
        return TaskFailure {
            class: FailureClass::HostBudgetExceeded,
            retryable: false,
            message: format!("{refusal}{panic}"),
            backtrace,
        };
    }
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

/// The message of a Rust panic printed to stderr, with where it happened
/// (`message at src/lib.rs:3:5`), if there is one.
fn panic_message(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let start = text.find("panicked at ")?;
    let rest = &text[start + "panicked at ".len()..];
    // `panicked at src/lib.rs:3:5:\nmessage`
    let (location, message) = rest.split_once('\n').unwrap_or((rest, ""));
    let location: String = location.trim().trim_end_matches(':').chars().take(200).collect();
    let message: String = message.lines().next().unwrap_or("").trim().chars().take(500).collect();
    match (message.is_empty(), location.is_empty()) {
        (true, true) => None,
        (true, false) => Some(format!("at {location}")),
        (false, true) => Some(message),
        (false, false) => Some(format!("{message} at {location}")),
    }
}

/// `memory limit exceeded`, if the limiter refused the task's memory a
/// growth during the attempt.
pub(crate) fn memory_refused(state: &TaskState) -> Option<TaskFailure> {
    let refusal = state.limiter.refused?;
    Some(TaskFailure::new(
        FailureClass::MemoryLimitExceeded,
        format!(
            "the task asked for {} bytes of linear memory; its limit is {}",
            refusal.requested_total,
            state.limiter.limit()
        ),
    ))
}

#[cfg(test)]
mod class_tests {
    use super::FailureClass;

    #[test]
    fn codes_and_names_are_unique_and_round_trip() {
        for (i, class) in FailureClass::ALL.into_iter().enumerate() {
            assert_eq!(FailureClass::from_code(class.code()), Some(class));
            assert_eq!(class.as_str().parse::<FailureClass>(), Ok(class));
            assert!(
                FailureClass::ALL[i + 1..].iter().all(|c| c.code() != class.code() && c.as_str() != class.as_str())
            );
            let json = serde_json::to_string(&class).unwrap();
            assert_eq!(json, format!("\"{}\"", class.as_str()));
            assert_eq!(serde_json::from_str::<FailureClass>(&json).unwrap(), class);
            let bytes = postcard::to_stdvec(&class).unwrap();
            assert_eq!(bytes, [class.code()]);
            assert_eq!(postcard::from_bytes::<FailureClass>(&bytes).unwrap(), class);
        }
        assert!("gremlins".parse::<FailureClass>().is_err());
        assert!(postcard::from_bytes::<FailureClass>(&[0]).is_err());
    }
}
