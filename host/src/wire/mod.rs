//! Wire types: every JSON body the HTTP API answers with or accepts, as
//! typed structs, so the API, the callbacks and the CLI client share one
//! definition and the formats cannot drift apart.
//!
//! - [`task`]: a task's record ([`Task`]), submissions and their answers,
//!   list pages, history;
//! - [`flow`]: the flow view ([`Flow`]) with its task tree;
//! - [`plugin`]: plugin versions, details and lists;
//! - [`queue`]: queue settings and depths;
//! - [`access`]: API tokens and the audit log;
//! - [`tenant`]: tenants, their quotas and usage;
//! - [`config`]: the effective configuration and where each part comes
//!   from;
//! - [`error`]: the one error body, [`ErrorBody`];
//! - [`model`]: the model registry's views ([`ModelsView`] and friends,
//!   defined beside the registry in [`crate::inference`]);
//! - [`events`]: the live task events;
//! - [`logs`]: a task's logs and the events of following them;
//! - [`health`]: `GET /healthz`;
//! - [`host`]: the hosts serving the store;
//! - [`stats`]: the recent throughput and latency.
//!
//! Conventions: times are RFC 3339 strings with milliseconds (UTC); an
//! output (a task's, a flow's, an item of a gathered join input) is
//! carried as [`Output`]: `output` when it parses as JSON, else
//! `output_base64`; a task's failure is always a [`TaskError`] object.
//! Every answer deserializes back into its struct, so a client can read it
//! without digging through untyped JSON.

pub mod access;
pub mod config;
pub mod error;
pub mod events;
pub mod flow;
pub mod health;
pub mod host;
pub mod logs;
pub mod model;
pub mod plugin;
pub mod queue;
pub mod stats;
pub mod task;
pub mod tenant;

pub use access::{
    AuditPage, AuditRecord, CallbackSecret, TokenCreated, TokenInfo, TokenList, TokenRequest, TokenRevoked,
};
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use events::{EventsMissed, MissedReason, Stopping, TaskMoved, event_id, parse_event_id};
pub use flow::{Flow, FlowNode, FlowPage, FlowRepeat, FlowSummary, FlowTasks, RepeatRule};
pub use health::{Health, HealthStatus};
pub use host::{Host, HostList, HostLoad, HostModel, HostReport, HostRole, UnservedPlugin};
pub use logs::{LogEvent, LogLine, LogsDropped, TaskLogs};
pub use plugin::{
    LatestChange, ManifestSet, Plugin, PluginAdded, PluginLatest, PluginList, PluginSummary, PluginVersion,
    PluginVersionDetail, RunStats, VersionDeleted, VersionState,
};
pub use queue::{Queue, QueueChange, QueueList, QueueSettings};
pub use stats::{RecentSample, RecentStats};
pub use task::{
    BatchAnswer, BatchItem, BatchRefusal, BatchSubmission, CallbackDelivery, CallbackState, History, HistoryEntry,
    RetryRequest, ScriptSubmission, Submitted, Task, TaskError, TaskLimits, TaskPage, TaskSubmission,
};

pub use config::{ConfigEgress, ConfigLimits, ConfigQueue, ConfigRetry, ConfigTenant, ConfigView, Source};
pub use tenant::{Quotas, Tenant, TenantChange, TenantList, Usage};

pub use model::{ModelRemoved, ModelState, ModelView, ModelsView, RuntimeView, TensorView};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// A time as the API writes it: RFC 3339 with milliseconds, UTC. Total:
/// a time RFC 3339 cannot write (past 9999-12-31, which the engine never
/// accepts, but a record written before times were checked may hold) is
/// written as its milliseconds since the epoch, so no view of a record
/// can fail.
pub fn time(ms: u64) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let written = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .is_some_and(|at| write!(text, "{}", humantime::format_rfc3339_millis(at)).is_ok());
    if written { text } else { ms.to_string() }
}

/// An output as every body carries it, flattened into the body: `output`
/// when the bytes parse as JSON, else `output_base64`. Neither field
/// appears when there is no output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct Output {
    /// The output, when it parses as JSON (`null` included).
    #[serde(rename = "output", default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub json: Option<Value>,
    /// The output, base64 (standard alphabet, padded), when it does not.
    #[serde(rename = "output_base64", default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

/// A field that is present is `Some`, even when it is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl Output {
    /// `bytes` as JSON if they parse, else as base64.
    pub fn of(bytes: &[u8]) -> Self {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(parsed) => Self { json: Some(parsed), base64: None },
            Err(_) => Self { json: None, base64: Some(BASE64.encode(bytes)) },
        }
    }

    /// [`Output::of`] the bytes, or no output.
    pub fn new(bytes: Option<&[u8]>) -> Self {
        bytes.map(Self::of).unwrap_or_default()
    }

    /// Whether there is no output.
    pub fn is_none(&self) -> bool {
        self.json.is_none() && self.base64.is_none()
    }

    /// The bytes, from whichever field carries them: the JSON text (which
    /// parses to the same value as the original output), or the decoded
    /// base64. `None` when there is no output or the base64 is invalid.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        match (&self.json, &self.base64) {
            (Some(value), _) => Some(serde_json::to_vec(value).unwrap_or_default()),
            (None, Some(b64)) => BASE64.decode(b64).ok(),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_stored_time_formats_without_panicking() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(1_500), "1970-01-01T00:00:01.500Z");
        // The last millisecond RFC 3339 can write, and the first it cannot.
        assert_eq!(time(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(time(253_402_300_800_000), "253402300800000");
        // A delay of about 10^15 ms, once stored, and the largest value.
        assert_eq!(time(1_000_000_000_000_000), "1000000000000000");
        assert_eq!(time(u64::MAX), u64::MAX.to_string());
    }

    #[test]
    fn an_output_is_json_or_base64_and_round_trips() {
        let json = Output::of(br#"{"n":1}"#);
        assert_eq!(serde_json::to_value(&json).unwrap(), json!({"output": {"n": 1}}));
        let raw = Output::of(&[0xff, 0x00]);
        assert_eq!(serde_json::to_value(&raw).unwrap(), json!({"output_base64": "/wA="}));
        assert_eq!(raw.bytes().unwrap(), [0xff, 0x00]);
        assert_eq!(serde_json::to_value(Output::new(None)).unwrap(), json!({}));
        assert!(Output::new(None).is_none() && Output::new(None).bytes().is_none());
        // A JSON `null` output is an output, and stays one.
        let null = Output::of(b"null");
        let back: Output = serde_json::from_value(serde_json::to_value(&null).unwrap()).unwrap();
        assert_eq!(back, null);
        assert_eq!(back.bytes().unwrap(), b"null");
        for output in [json, raw, Output::default()] {
            let back: Output = serde_json::from_str(&serde_json::to_string(&output).unwrap()).unwrap();
            assert_eq!(back, output);
        }
    }
}
