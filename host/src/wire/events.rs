//! The live events on the wire (`GET /v1/events`, Server-Sent Events):
//! every task created and every state it moved to, as the tenant names
//! things.

use super::time;
use crate::store::{TaskEvent, TaskState};
use crate::tenant::Namespace;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One transition of a task (SSE event `task`); its SSE id is
/// `RUN-SEQ` ([`event_id`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct TaskMoved {
    /// Its number in this run of the host, in commit order.
    pub seq: u64,
    /// When it was committed.
    #[schema(format = DateTime)]
    pub at: String,
    /// The task.
    pub id: Uuid,
    /// Its flow.
    pub flow_id: Uuid,
    /// Its plugin.
    pub plugin: String,
    /// Its queue.
    pub queue: String,
    /// The state it left; `null` when it was created.
    pub from: Option<TaskState>,
    /// The state it entered.
    pub to: TaskState,
    /// Its attempts then.
    pub attempt: u32,
}

impl TaskMoved {
    /// `event` as `ns` names things; `None` when it is another tenant's.
    pub fn new(event: &TaskEvent, ns: &Namespace) -> Option<Self> {
        Some(Self {
            seq: event.seq,
            at: time(event.at_ms),
            id: event.id,
            flow_id: event.flow_id,
            plugin: ns.local(&event.plugin)?.to_owned(),
            queue: ns.local(&event.queue).unwrap_or(&event.queue).to_owned(),
            from: event.from,
            to: event.to,
            attempt: event.attempt,
        })
    }
}

/// The SSE id of event `seq` of host run `run`: a client hands it back in
/// `Last-Event-ID` to resume after it.
pub fn event_id(run: u64, seq: u64) -> String {
    format!("{run}-{seq}")
}

/// The host run and event number of an SSE id, if it is one.
pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (run, seq) = id.trim().split_once('-')?;
    Some((run.parse().ok()?, seq.parse().ok()?))
}

/// The last event of every stream (`/v1/events`, a followed task's logs)
/// when the server stops: SSE event `stopping`. Nothing follows it; the
/// client reconnects once the server is back (resuming `/v1/events` with
/// the last event id it saw).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct Stopping {
    /// What happened and what to do.
    pub message: String,
}

impl Stopping {
    /// The SSE event's name.
    pub const EVENT: &'static str = "stopping";

    /// The one message it carries.
    pub fn new() -> Self {
        Self { message: "the server is stopping; reconnect once it is back".into() }
    }
}

impl Default for Stopping {
    fn default() -> Self {
        Self::new()
    }
}

/// Why events are missing from a stream (SSE event `missed`): the
/// subscriber resumed after events no longer kept or from before a
/// restart (`gap`), read too slowly and is dropped (`too_slow`; the
/// stream ends), or its host could not hear some events other hosts sent
/// (`unheard`; hosts serving one PostgreSQL database together).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct EventsMissed {
    /// Why events are missing.
    pub reason: MissedReason,
    /// What to do about it.
    pub message: String,
}

/// Why a stream misses events (`EventsMissed.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MissedReason {
    /// Resumed after events no longer kept, or from before a restart.
    Gap,
    /// The subscriber read too slowly and is dropped; the stream ends.
    TooSlow,
    /// Events other hosts sent may be missing: the host could not hear
    /// them for a while (its connection to the database was lost, or the
    /// sending host could not send them). The stream goes on.
    Unheard,
}

impl std::fmt::Display for MissedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gap => "gap",
            Self::TooSlow => "too_slow",
            Self::Unheard => "unheard",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_junk_is_none() {
        assert_eq!(parse_event_id(&event_id(17, 42)), Some((17, 42)));
        for junk in ["", "42", "a-1", "1-b", "1-2-3"] {
            assert_eq!(parse_event_id(junk), None, "{junk}");
        }
    }
}
