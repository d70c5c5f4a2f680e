//! A task's logs on the wire: one attempt's transcript
//! (`GET /v1/tasks/{id}/logs`) and the events of following a task's lines
//! as they are written (`…/logs?follow=true`, Server-Sent Events).

use super::time;
use crate::LogLevel;
use crate::sandbox::{AttemptLog, Stream};
use crate::store::TaskState;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One line a task logged or printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct LogLine {
    /// Its number in the attempt, from 1; a jump means lines were dropped
    /// (see [`TaskLogs::dropped`]).
    pub seq: u64,
    /// When it was written.
    #[schema(format = DateTime)]
    pub at: String,
    /// `log` (the WIT `log` interface), `stdout` or `stderr`.
    pub stream: Stream,
    /// The level of a `log` record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// The text, without its line end.
    pub text: String,
}

impl From<&crate::sandbox::LogLine> for LogLine {
    fn from(l: &crate::sandbox::LogLine) -> Self {
        Self { seq: l.seq, at: time(l.at_ms), stream: l.stream, level: l.level, text: l.text.clone() }
    }
}

/// Lines dropped from the middle of an attempt's transcript over its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct LogsDropped {
    /// How many.
    pub lines: u64,
    /// Their text's bytes.
    pub bytes: u64,
    /// The last line kept before them.
    pub after_seq: u64,
}

/// `GET /v1/tasks/{id}/logs`: one attempt's lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct TaskLogs {
    /// Task id.
    pub id: Uuid,
    /// The attempt shown (0 before the first began). Attempts are
    /// counted over the task's life: a manual retry's first attempt
    /// follows the earlier ones rather than replacing them.
    pub attempt: u32,
    /// The attempts made so far, counted so.
    pub attempts: u32,
    /// The task's state.
    pub state: TaskState,
    /// The attempt is running: more lines may come.
    pub live: bool,
    /// The lines kept, in order.
    pub lines: Vec<LogLine>,
    /// What was dropped between the first and the latest lines over the
    /// cap, if anything.
    pub dropped: Option<LogsDropped>,
}

impl TaskLogs {
    /// Attempt `attempt` of a task with `attempts` in `state`.
    pub fn new(id: Uuid, attempt: u32, attempts: u32, state: TaskState, live: bool, log: &AttemptLog) -> Self {
        Self {
            id,
            attempt,
            attempts,
            state,
            live,
            lines: log.lines.iter().map(LogLine::from).collect(),
            dropped: log.dropped.map(|d| LogsDropped { lines: d.lines, bytes: d.bytes, after_seq: d.after_seq }),
        }
    }
}

/// One event of following a task's logs; its SSE event name is the
/// variant's (`line`, `skipped`, `attempt`, `end`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LogEvent {
    /// A line.
    Line(LogLine),
    /// Lines dropped over the cap before the follower saw them.
    Skipped {
        /// How many.
        lines: u64,
    },
    /// Another attempt began (its lines follow).
    Attempt {
        /// Its number.
        attempt: u32,
    },
    /// The task ended: nothing more will come.
    End {
        /// How it ended.
        state: TaskState,
        /// Its attempts.
        attempts: u32,
    },
}

impl LogEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Line(_) => "line",
            Self::Skipped { .. } => "skipped",
            Self::Attempt { .. } => "attempt",
            Self::End { .. } => "end",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_and_events_round_trip() {
        let log = AttemptLog {
            lines: vec![crate::sandbox::LogLine {
                seq: 1,
                at_ms: 0,
                stream: Stream::Log,
                level: Some(LogLevel::Warn),
                text: "hi".into(),
            }],
            dropped: Some(crate::sandbox::Dropped { lines: 2, bytes: 3, after_seq: 1 }),
        };
        let logs = TaskLogs::new(Uuid::nil(), 1, 1, TaskState::Running, true, &log);
        let json = serde_json::to_value(&logs).unwrap();
        assert_eq!(json["lines"][0]["stream"], "log");
        assert_eq!(json["lines"][0]["level"], "warn");
        assert_eq!(json["lines"][0]["at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(serde_json::from_value::<TaskLogs>(json).unwrap(), logs);
        for event in [
            LogEvent::Line(logs.lines[0].clone()),
            LogEvent::Skipped { lines: 3 },
            LogEvent::Attempt { attempt: 2 },
            LogEvent::End { state: TaskState::Completed, attempts: 2 },
        ] {
            let json = serde_json::to_string(&event).unwrap();
            assert!(json.starts_with(&format!("{{\"{}\":", event.name())), "{json}");
            assert_eq!(serde_json::from_str::<LogEvent>(&json).unwrap(), event);
        }
    }
}
