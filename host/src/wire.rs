//! Wire types: the JSON shapes the HTTP API answers with and callbacks
//! carry, as typed structs, so the API, the callbacks and the CLI client
//! share one definition. Times are RFC 3339 strings; a task's output
//! appears as `output` when it parses as JSON, else as `output_base64`.

use crate::store::{TaskRecord, TaskState};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// A time as the API writes it: RFC 3339 with milliseconds, UTC.
pub fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A task's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskLimits {
    /// Fuel per attempt.
    pub fuel: u64,
    /// Memory cap per attempt.
    pub memory_bytes: u64,
    /// Wall-clock budget per attempt.
    pub timeout_ms: u64,
    /// Output cap.
    pub max_output_bytes: u64,
    /// Cap per captured stream.
    pub max_log_bytes: u64,
}

/// Why a task's last attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskError {
    /// The failure class (`trap`, `timeout`, `plugin error`, ...).
    pub class: String,
    /// Whether the plugin marked it retryable.
    pub retryable: bool,
    /// What went wrong.
    pub message: String,
    /// The wasm backtrace of a trap.
    pub backtrace: Option<String>,
}

/// A task record (`GET /v1/tasks/{id}`, list pages, callbacks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Task {
    /// Task id.
    pub id: Uuid,
    /// State.
    pub state: TaskState,
    /// Plugin name.
    pub plugin: String,
    /// The version pinned at submission.
    pub plugin_version: String,
    /// Its digest.
    pub digest: String,
    /// Queue.
    pub queue: String,
    /// Priority 0-9.
    pub priority: u8,
    /// Attempts started.
    pub attempts: u32,
    /// Most attempts.
    pub max_attempts: u32,
    /// Per-attempt limits.
    pub limits: TaskLimits,
    /// The last failure.
    pub error: Option<TaskError>,
    /// Submitted.
    pub created_at: String,
    /// Last attempt started.
    pub started_at: Option<String>,
    /// Ended.
    pub finished_at: Option<String>,
    /// Due (delayed or retrying).
    pub next_run_at: Option<String>,
    /// The idempotency key.
    pub idempotency_key: Option<String>,
    /// The submitting task.
    pub parent_id: Option<Uuid>,
    /// The flow.
    pub flow_id: Uuid,
    /// A declared flow's step name.
    pub step: Option<String>,
    /// The flow iteration.
    pub iteration: u32,
    /// Tasks this one joins.
    pub after: Vec<Uuid>,
    /// Where the record is POSTed when the task ends.
    pub callback_url: Option<String>,
    /// Input size.
    #[serde(rename = "input_bytes")]
    pub input_len: u64,
    /// Output size.
    #[serde(rename = "output_bytes")]
    pub output_len: Option<u64>,
    /// Fuel the last attempt used.
    pub fuel_used: Option<u64>,
    /// The output, when it is JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// The output, base64, when it is not JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_base64: Option<String>,
}

impl Task {
    /// The view of `record`, with its output if given.
    pub fn new(record: &TaskRecord, output: Option<&[u8]>) -> Self {
        let (output, output_base64) = match output {
            None => (None, None),
            Some(bytes) => match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(parsed) => (Some(parsed), None),
                Err(_) => (None, Some(BASE64.encode(bytes))),
            },
        };
        let l = &record.limits;
        Self {
            id: record.id,
            state: record.state,
            plugin: record.plugin.clone(),
            plugin_version: record.plugin_version.clone(),
            digest: record.digest.clone(),
            queue: record.queue.clone(),
            priority: record.priority,
            attempts: record.attempts,
            max_attempts: record.max_attempts,
            limits: TaskLimits {
                fuel: l.fuel,
                memory_bytes: l.memory_bytes,
                timeout_ms: l.timeout_ms,
                max_output_bytes: l.max_output_bytes,
                max_log_bytes: l.max_log_bytes,
            },
            error: record.error.as_ref().map(|e| TaskError {
                class: e.class.as_str().to_owned(),
                retryable: e.retryable,
                message: e.message.clone(),
                backtrace: e.backtrace.clone(),
            }),
            created_at: time(record.created_at_ms),
            started_at: record.started_at_ms.map(time),
            finished_at: record.finished_at_ms.map(time),
            next_run_at: record.next_run_at_ms.map(time),
            idempotency_key: record.idempotency_key.clone(),
            parent_id: record.parent_id,
            flow_id: record.flow_id,
            step: record.step.clone(),
            iteration: record.iteration,
            after: record.after.clone(),
            callback_url: record.callback_url.clone(),
            input_len: record.input_len,
            output_len: record.output_len,
            fuel_used: record.fuel_used,
            output,
            output_base64,
        }
    }

    /// The output bytes, decoded from whichever field carries them.
    pub fn output_bytes(&self) -> Option<Vec<u8>> {
        match (&self.output, &self.output_base64) {
            (Some(value), _) => Some(serde_json::to_vec(value).unwrap_or_default()),
            (None, Some(b64)) => BASE64.decode(b64).ok(),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_json_when_it_parses_else_base64_and_round_trips() {
        let record = crate::store::tests::record(1, None);
        let json = Task::new(&record, Some(br#"{"n":1}"#));
        let value = serde_json::to_value(&json).unwrap();
        assert_eq!(value["output"]["n"], 1);
        assert!(value.get("output_base64").is_none());
        let raw = Task::new(&record, Some(&[0xff, 0x00]));
        let value = serde_json::to_value(&raw).unwrap();
        assert_eq!(value["output_base64"], "/wA=");
        assert!(value.get("output").is_none());
        let back: Task = serde_json::from_value(value).unwrap();
        assert_eq!(back, raw);
        assert_eq!(back.output_bytes().unwrap(), [0xff, 0x00]);
        let none = serde_json::to_value(Task::new(&record, None)).unwrap();
        assert!(none.get("output").is_none() && none["error"].is_null() && none["input_bytes"] == 0);
    }
}
