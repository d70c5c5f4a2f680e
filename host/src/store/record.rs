//! What the store keeps: task records with their history, plugin entries
//! and queue settings. Encoded with postcard; field order is the format, so
//! append new fields only with a schema bump.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// A task's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Ready to run, or scheduled for later (`next_run_at`).
    Pending,
    /// A worker is running it.
    Running,
    /// Failed with a retryable error; waiting out its backoff.
    Retrying,
    /// Finished with an output. Terminal.
    Completed,
    /// Permanent failure or attempts exhausted: the dead-letter set.
    /// Terminal unless re-submitted.
    Failed,
    /// Cancelled. Terminal.
    Cancelled,
}

impl TaskState {
    /// Every state.
    pub const ALL: [TaskState; 6] = [
        TaskState::Pending,
        TaskState::Running,
        TaskState::Retrying,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// Whether the task has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Failed | TaskState::Cancelled)
    }

    /// The state's name, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// The code the state index stores. Codes are forever.
    pub(crate) fn code(self) -> u8 {
        match self {
            TaskState::Pending => 1,
            TaskState::Running => 2,
            TaskState::Retrying => 3,
            TaskState::Completed => 4,
            TaskState::Failed => 5,
            TaskState::Cancelled => 6,
        }
    }

    /// Parses an API state name.
    pub fn parse(text: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One entry of a task's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The state it left (`None` at submission).
    pub from: Option<TaskState>,
    /// The state it entered.
    pub to: TaskState,
    /// The attempt count at that moment.
    pub attempt: u32,
    /// Why.
    pub reason: String,
}

/// A failure as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFailure {
    /// The failure class, e.g. `fuel exhausted`.
    pub class: crate::FailureClass,
    /// Whether the plugin said a retry could help.
    pub retryable: bool,
    /// The message.
    pub message: String,
    /// The wasm backtrace of a trap.
    pub backtrace: Option<String>,
}

/// The limits a task runs under, resolved at submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLimits {
    /// Fuel budget.
    pub fuel: u64,
    /// Linear-memory cap in bytes.
    pub memory_bytes: u64,
    /// Wall-clock budget in milliseconds.
    pub timeout_ms: u64,
    /// Output cap in bytes.
    pub max_output_bytes: u64,
    /// Cap per captured stream in bytes.
    pub max_log_bytes: u64,
    /// The host budget in bytes (see [`crate::HostBudget`]).
    pub host_bytes: u64,
}

impl From<&crate::Limits> for StoredLimits {
    fn from(l: &crate::Limits) -> Self {
        Self {
            fuel: l.fuel,
            memory_bytes: l.memory_bytes,
            timeout_ms: l.timeout.as_millis().try_into().unwrap_or(u64::MAX),
            max_output_bytes: l.max_output_bytes,
            max_log_bytes: l.max_log_bytes,
            host_bytes: l.host_bytes,
        }
    }
}

impl From<&StoredLimits> for crate::Limits {
    fn from(l: &StoredLimits) -> Self {
        Self {
            fuel: l.fuel,
            memory_bytes: l.memory_bytes,
            timeout: std::time::Duration::from_millis(l.timeout_ms),
            max_output_bytes: l.max_output_bytes,
            max_log_bytes: l.max_log_bytes,
            host_bytes: l.host_bytes,
        }
    }
}

/// Everything the store knows about one task (input and output are kept in
/// their own tables).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Time-ordered id (UUIDv7).
    pub id: Uuid,
    /// Record version, bumped by every transition.
    pub version: u64,
    /// Current state.
    pub state: TaskState,
    /// Plugin name.
    pub plugin: String,
    /// Plugin version pinned at submission.
    pub plugin_version: String,
    /// sha256 of the pinned component.
    pub digest: String,
    /// Queue name.
    pub queue: String,
    /// 0–9, higher runs first.
    pub priority: u8,
    /// Attempts started so far.
    pub attempts: u32,
    /// Most attempts allowed.
    pub max_attempts: u32,
    /// Limits for each attempt.
    pub limits: StoredLimits,
    /// The last failure, if any.
    pub error: Option<StoredFailure>,
    /// Submission time (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When the latest attempt started.
    pub started_at_ms: Option<u64>,
    /// When the task reached a terminal state.
    pub finished_at_ms: Option<u64>,
    /// When a delayed or retrying task becomes ready.
    pub next_run_at_ms: Option<u64>,
    /// The submission's idempotency key.
    pub idempotency_key: Option<String>,
    /// The task that submitted this one (flows).
    pub parent_id: Option<Uuid>,
    /// Where to POST the record when the task ends.
    pub callback_url: Option<String>,
    /// Input size in bytes.
    pub input_len: u64,
    /// Output size in bytes, once completed.
    pub output_len: Option<u64>,
    /// Fuel used by the latest attempt.
    pub fuel_used: Option<u64>,
    /// The most bytes the latest attempt made the host hold at once.
    pub host_bytes_used: Option<u64>,
    /// Every transition, oldest first.
    pub history: Vec<Transition>,
    /// The flow this task belongs to: the id of the task submitted from
    /// outside (its own id for such a task), or of the declared flow.
    pub flow_id: Uuid,
    /// How many submissions separate it from its flow's first tasks (0).
    pub depth: u32,
    /// Tasks that must all end before this one starts, in join order.
    pub after: Vec<Uuid>,
    /// Where the input comes from when the task starts.
    pub input_from: InputFrom,
    /// The declared step this task runs, in a declared flow.
    pub step: Option<String>,
    /// Which iteration of a repeating flow it belongs to, from 0.
    pub iteration: u32,
    /// The bytes of each attempt's transcript kept, when the submission
    /// asked (within the host's ceiling); `None`: the host's default.
    pub log_keep_bytes: Option<u64>,
    /// Where this task's spans hang in a trace (its submission span), when
    /// traces were on as it was submitted.
    pub trace: Option<crate::trace::TraceParent>,
}

impl TaskRecord {
    /// Whether this task was submitted from outside (it roots its own flow).
    pub fn is_flow_root(&self) -> bool {
        self.flow_id == self.id
    }

    /// How many times it started over its whole life: unlike `attempts`,
    /// a manual retry does not reset it. Its attempts' transcripts are
    /// numbered by it.
    pub fn runs(&self) -> u32 {
        let runs = self.history.iter().filter(|t| t.to == TaskState::Running).count();
        u32::try_from(runs).unwrap_or(u32::MAX)
    }
}

/// The leading fields of a stored task record, read without copying and
/// without the rest (its history, above all): what a start-up scan needs
/// of the many ended tasks. Today's layout and the older ones
/// [`decode`] reads share these fields. The unit test
/// `a_summary_reads_what_the_record_holds` keeps it in step with
/// [`TaskRecord`]. Only the prefix is read, so damage past it shows when
/// the whole record is next read (and `taskhost store check` finds it),
/// not at start-up.
#[derive(Debug, Deserialize)]
pub(crate) struct TaskSummary<'a> {
    _id: Uuid,
    _version: u64,
    pub(crate) state: TaskState,
    pub(crate) plugin: &'a str,
    _plugin_version: &'a str,
    _digest: &'a str,
    pub(crate) queue: &'a str,
    _priority: u8,
    _attempts: u32,
    _max_attempts: u32,
    _limits: StoredLimits,
    #[serde(borrow)]
    _error: Option<FailureSummary<'a>>,
    _created_at_ms: u64,
    _started_at_ms: Option<u64>,
    _finished_at_ms: Option<u64>,
    _next_run_at_ms: Option<u64>,
    _idempotency_key: Option<&'a str>,
    _parent_id: Option<Uuid>,
    _callback_url: Option<&'a str>,
    pub(crate) input_len: u64,
    pub(crate) output_len: Option<u64>,
}

/// [`StoredFailure`], borrowed.
#[derive(Debug, Deserialize)]
struct FailureSummary<'a> {
    _class: crate::FailureClass,
    _retryable: bool,
    _message: &'a str,
    _backtrace: Option<&'a str>,
}

impl<'a> TaskSummary<'a> {
    /// The summary of the record encoded in `bytes`.
    pub(crate) fn of(bytes: &'a [u8]) -> Result<Self, super::StoreError> {
        postcard::take_from_bytes(bytes)
            .map(|(summary, _)| summary)
            .map_err(|e| super::StoreError::Corrupt(format!("a task record's leading fields: {e}")))
    }
}

/// Where a task's input comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputFrom {
    /// Its own input bytes, stored at submission.
    #[default]
    Own,
    /// The outputs of the tasks in `after` (a declared step): one
    /// predecessor passes its output as is; several are gathered into a
    /// JSON array. The task is cancelled instead if one of them did not
    /// complete.
    Outputs,
    /// Fetched when the task starts, each attempt anew, from the URL kept
    /// in the task's input (`input_url`).
    Url,
}

/// The lifecycle of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    /// Some task is unfinished, or another iteration is scheduled.
    Running,
    /// Every task completed.
    Completed,
    /// Some task failed (or was cancelled) and nothing was left to run.
    Failed,
    /// Cancelled by request.
    Cancelled,
}

impl FlowState {
    /// The state's name, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::Running => "running",
            FlowState::Completed => "completed",
            FlowState::Failed => "failed",
            FlowState::Cancelled => "cancelled",
        }
    }

    /// The state named `text`, as the API spells it.
    pub fn parse(text: &str) -> Option<Self> {
        [FlowState::Running, FlowState::Completed, FlowState::Failed, FlowState::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// When a flow runs again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepeatKind {
    /// This many iterations in all.
    Times(u32),
    /// Until a task calls `stop-repeating` (bounded by `max_iterations`).
    UntilStop,
    /// An iteration every this many ms (measured between scheduled starts;
    /// missed starts are skipped, never run twice).
    EveryMs(u64),
    /// At the times of this cron expression (UTC, with seconds:
    /// `sec min hour day-of-month month day-of-week [year]`).
    Cron(String),
}

/// A flow's repeat rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repeat {
    /// When to run again.
    pub kind: RepeatKind,
    /// Most iterations in all (`None`: no bound but the rule's own).
    pub max_iterations: Option<u32>,
}

/// A flow: what groups the tasks one submission grew into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// The flow id (a root task's id, or a declared flow's own id).
    pub id: Uuid,
    /// Bumped by every change.
    pub version: u64,
    /// Current state.
    pub state: FlowState,
    /// A declared flow's name.
    pub name: Option<String>,
    /// Creation time (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it ended.
    pub finished_at_ms: Option<u64>,
    /// A declared flow's spec (JSON), to start each iteration from.
    pub spec: Option<String>,
    /// A declared flow's input, given to its first steps.
    pub input: Vec<u8>,
    /// The repeat rule, if it repeats.
    pub repeat: Option<Repeat>,
    /// The current iteration, from 0.
    pub iteration: u32,
    /// When the current iteration was scheduled to start.
    pub iteration_at_ms: u64,
    /// A task called `stop-repeating`.
    pub stop_requested: bool,
    /// Tasks created in the flow so far.
    pub tasks: u64,
    /// The task whose output is the flow's result: the last one that
    /// completed when the flow ended.
    pub result_task: Option<Uuid>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
}

impl FlowRecord {
    /// A running flow with nothing declared: no spec, no repeat, one task.
    pub fn new(id: Uuid, created_at_ms: u64) -> Self {
        FlowRecord {
            id,
            version: 0,
            state: FlowState::Running,
            name: None,
            created_at_ms,
            finished_at_ms: None,
            spec: None,
            input: Vec::new(),
            repeat: None,
            iteration: 0,
            iteration_at_ms: created_at_ms,
            stop_requested: false,
            tasks: 1,
            result_task: None,
            error: None,
        }
    }
}

/// A failure as schemas 2 and 3 stored it: the class as text. Read only
/// to migrate a file.
#[derive(Deserialize)]
pub(crate) struct StoredFailureV3 {
    class: String,
    retryable: bool,
    message: String,
    backtrace: Option<String>,
}

impl StoredFailureV3 {
    fn upgrade(self) -> Result<StoredFailure, super::StoreError> {
        let class = self.class.parse().map_err(|e| super::StoreError::Corrupt(format!("a stored failure: {e}")))?;
        Ok(StoredFailure { class, retryable: self.retryable, message: self.message, backtrace: self.backtrace })
    }
}

/// A task record as schema 2 stored it (before flows); read only to
/// migrate a file.
#[derive(Deserialize)]
pub(crate) struct TaskRecordV2 {
    id: Uuid,
    version: u64,
    state: TaskState,
    plugin: String,
    plugin_version: String,
    digest: String,
    queue: String,
    priority: u8,
    attempts: u32,
    max_attempts: u32,
    limits: StoredLimitsV4,
    error: Option<StoredFailureV3>,
    created_at_ms: u64,
    started_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    next_run_at_ms: Option<u64>,
    idempotency_key: Option<String>,
    parent_id: Option<Uuid>,
    callback_url: Option<String>,
    input_len: u64,
    output_len: Option<u64>,
    fuel_used: Option<u64>,
    history: Vec<Transition>,
}

/// A task record as schema 3 stored it (the failure class as text); read
/// only to migrate a file.
#[derive(Deserialize)]
pub(crate) struct TaskRecordV3 {
    id: Uuid,
    version: u64,
    state: TaskState,
    plugin: String,
    plugin_version: String,
    digest: String,
    queue: String,
    priority: u8,
    attempts: u32,
    max_attempts: u32,
    limits: StoredLimitsV4,
    error: Option<StoredFailureV3>,
    created_at_ms: u64,
    started_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    next_run_at_ms: Option<u64>,
    idempotency_key: Option<String>,
    parent_id: Option<Uuid>,
    callback_url: Option<String>,
    input_len: u64,
    output_len: Option<u64>,
    fuel_used: Option<u64>,
    history: Vec<Transition>,
    flow_id: Uuid,
    depth: u32,
    after: Vec<Uuid>,
    input_from: InputFrom,
    step: Option<String>,
    iteration: u32,
}

impl TryFrom<TaskRecordV2> for TaskRecord {
    type Error = super::StoreError;

    fn try_from(r: TaskRecordV2) -> Result<Self, Self::Error> {
        Ok(TaskRecord {
            id: r.id,
            version: r.version,
            state: r.state,
            plugin: r.plugin,
            plugin_version: r.plugin_version,
            digest: r.digest,
            queue: r.queue,
            priority: r.priority,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            limits: r.limits.upgrade(),
            error: r.error.map(StoredFailureV3::upgrade).transpose()?,
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            next_run_at_ms: r.next_run_at_ms,
            idempotency_key: r.idempotency_key,
            parent_id: r.parent_id,
            callback_url: r.callback_url,
            input_len: r.input_len,
            output_len: r.output_len,
            fuel_used: r.fuel_used,
            host_bytes_used: None,
            history: r.history,
            flow_id: r.id,
            depth: 0,
            after: Vec::new(),
            input_from: InputFrom::Own,
            step: None,
            iteration: 0,
            log_keep_bytes: None,
            trace: None,
        })
    }
}

impl TryFrom<TaskRecordV3> for TaskRecord {
    type Error = super::StoreError;

    fn try_from(r: TaskRecordV3) -> Result<Self, Self::Error> {
        Ok(TaskRecord {
            id: r.id,
            version: r.version,
            state: r.state,
            plugin: r.plugin,
            plugin_version: r.plugin_version,
            digest: r.digest,
            queue: r.queue,
            priority: r.priority,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            limits: r.limits.upgrade(),
            error: r.error.map(StoredFailureV3::upgrade).transpose()?,
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            next_run_at_ms: r.next_run_at_ms,
            idempotency_key: r.idempotency_key,
            parent_id: r.parent_id,
            callback_url: r.callback_url,
            input_len: r.input_len,
            output_len: r.output_len,
            fuel_used: r.fuel_used,
            host_bytes_used: None,
            history: r.history,
            flow_id: r.flow_id,
            depth: r.depth,
            after: r.after,
            input_from: r.input_from,
            step: r.step,
            iteration: r.iteration,
            log_keep_bytes: None,
            trace: None,
        })
    }
}

/// Limits as schemas 2-4 stored them (no host budget); read only to
/// migrate a file.
#[derive(Deserialize)]
pub(crate) struct StoredLimitsV4 {
    fuel: u64,
    memory_bytes: u64,
    timeout_ms: u64,
    max_output_bytes: u64,
    max_log_bytes: u64,
}

impl StoredLimitsV4 {
    /// Today's layout; the host budget is the default's.
    fn upgrade(self) -> StoredLimits {
        StoredLimits {
            fuel: self.fuel,
            memory_bytes: self.memory_bytes,
            timeout_ms: self.timeout_ms,
            max_output_bytes: self.max_output_bytes,
            max_log_bytes: self.max_log_bytes,
            host_bytes: crate::Limits::default().host_bytes,
        }
    }
}

/// A task record as schema 4 stored it (no host budget); read only to
/// migrate a file.
#[derive(Deserialize)]
pub(crate) struct TaskRecordV4 {
    id: Uuid,
    version: u64,
    state: TaskState,
    plugin: String,
    plugin_version: String,
    digest: String,
    queue: String,
    priority: u8,
    attempts: u32,
    max_attempts: u32,
    limits: StoredLimitsV4,
    error: Option<StoredFailure>,
    created_at_ms: u64,
    started_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    next_run_at_ms: Option<u64>,
    idempotency_key: Option<String>,
    parent_id: Option<Uuid>,
    callback_url: Option<String>,
    input_len: u64,
    output_len: Option<u64>,
    fuel_used: Option<u64>,
    history: Vec<Transition>,
    flow_id: Uuid,
    depth: u32,
    after: Vec<Uuid>,
    input_from: InputFrom,
    step: Option<String>,
    iteration: u32,
}

impl TryFrom<TaskRecordV4> for TaskRecord {
    type Error = super::StoreError;

    fn try_from(r: TaskRecordV4) -> Result<Self, Self::Error> {
        Ok(TaskRecord {
            id: r.id,
            version: r.version,
            state: r.state,
            plugin: r.plugin,
            plugin_version: r.plugin_version,
            digest: r.digest,
            queue: r.queue,
            priority: r.priority,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            limits: r.limits.upgrade(),
            error: r.error,
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            next_run_at_ms: r.next_run_at_ms,
            idempotency_key: r.idempotency_key,
            parent_id: r.parent_id,
            callback_url: r.callback_url,
            input_len: r.input_len,
            output_len: r.output_len,
            fuel_used: r.fuel_used,
            host_bytes_used: None,
            history: r.history,
            flow_id: r.flow_id,
            depth: r.depth,
            after: r.after,
            input_from: r.input_from,
            step: r.step,
            iteration: r.iteration,
            log_keep_bytes: None,
            trace: None,
        })
    }
}

/// One registered version of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginVersion {
    /// Version string (an increasing number).
    pub version: String,
    /// sha256 of the component, hex.
    pub digest: String,
    /// Component size in bytes.
    pub size: u64,
    /// Upload time (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// For a script, its language (`js`): the version's blob is the
    /// script's source, run by that language's runner. `None` for a
    /// component.
    pub script: Option<String>,
}

/// A plugin version as schemas up to 7 stored it (no scripts).
#[derive(Deserialize)]
struct PluginVersionV7 {
    version: String,
    digest: String,
    size: u64,
    created_at_ms: u64,
}

/// A plugin entry as schemas up to 7 stored it.
#[derive(Deserialize)]
pub(crate) struct PluginEntryV7 {
    versions: Vec<PluginVersionV7>,
    latest: Option<String>,
    manifest: Option<String>,
}

impl From<PluginEntryV7> for PluginEntry {
    fn from(old: PluginEntryV7) -> Self {
        let versions = old
            .versions
            .into_iter()
            .map(|v| PluginVersion {
                version: v.version,
                digest: v.digest,
                size: v.size,
                created_at_ms: v.created_at_ms,
                script: None,
            })
            .collect();
        Self { versions, latest: old.latest, manifest: old.manifest }
    }
}

/// A plugin name, its versions (oldest first) and its operator settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginEntry {
    /// The versions.
    pub versions: Vec<PluginVersion>,
    /// The version a plain name resolves to (after a rollback); `None`
    /// means the newest.
    pub latest: Option<String>,
    /// The capability manifest, as TOML.
    pub manifest: Option<String>,
}

/// A queue's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// Most tasks of this queue running at once (`None`: only the global
    /// limit applies).
    pub concurrency: Option<u32>,
    /// Share of the workers relative to other queues with work (≥ 1).
    pub weight: u32,
    /// How long an ended task outside any flow is kept (ms; `None`: the
    /// host's default).
    pub retain_for_ms: Option<u64>,
    /// How many of the queue's latest ended tasks outside any flow are
    /// kept (`None`: the host's default).
    pub retain_count: Option<u64>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { concurrency: None, weight: 1, retain_for_ms: None, retain_count: None }
    }
}

/// A queue's settings as files from before retention stored them.
#[derive(Deserialize)]
struct QueueConfigV1 {
    concurrency: Option<u32>,
    weight: u32,
}

/// Decodes a stored queue's settings, of this layout or the one before
/// retention (which has no retention fields: the host's defaults apply).
pub(crate) fn decode_queue(bytes: &[u8]) -> Result<QueueConfig, super::StoreError> {
    decode::<QueueConfig>(bytes).or_else(|error| match decode::<QueueConfigV1>(bytes) {
        Ok(old) => Ok(QueueConfig { concurrency: old.concurrency, weight: old.weight, ..QueueConfig::default() }),
        Err(_) => Err(error),
    })
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("records always encode")
}

/// Decodes a stored record of today's layout, or of an older one read as
/// today's: a task record of schemas 5 and 6 (which ends before today's
/// last two fields) with no trace and no transcript cap of its own, and a
/// plugin entry of schemas up to 7 (its versions without a script
/// language) with none. Those files are not rewritten on open; each
/// record takes today's layout at its next write. Every layout must take
/// all of a record's bytes ([`whole`]), so one layout's bytes never pass
/// for another's.
pub(crate) fn decode<T: for<'de> Deserialize<'de> + 'static>(bytes: &[u8]) -> Result<T, super::StoreError> {
    match whole(bytes) {
        Ok(value) => Ok(value),
        Err(error) => {
            if std::any::TypeId::of::<T>() == std::any::TypeId::of::<TaskRecord>()
                && let Ok(old) = whole::<TaskRecordV6>(bytes)
            {
                let record: Box<dyn std::any::Any> = Box::new(TaskRecord::try_from(old)?);
                if let Ok(record) = record.downcast::<T>() {
                    return Ok(*record);
                }
            }
            if std::any::TypeId::of::<T>() == std::any::TypeId::of::<PluginEntry>()
                && let Ok(old) = whole::<PluginEntryV7>(bytes)
            {
                let entry: Box<dyn std::any::Any> = Box::new(PluginEntry::from(old));
                if let Ok(entry) = entry.downcast::<T>() {
                    return Ok(*entry);
                }
            }
            Err(super::StoreError::Corrupt(error.to_string()))
        }
    }
}

/// `bytes` decoded as one `T` with nothing left over: a record is exactly
/// its bytes, so one layout's bytes never pass for another's by leaving
/// some unread.
fn whole<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, postcard::Error> {
    match postcard::take_from_bytes(bytes)? {
        (value, []) => Ok(value),
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A task record as schemas 5 and 6 stored it (no trace, no per-task
/// transcript cap); read by [`decode`] when today's layout does not fit.
#[derive(Deserialize)]
pub(crate) struct TaskRecordV6 {
    id: Uuid,
    version: u64,
    state: TaskState,
    plugin: String,
    plugin_version: String,
    digest: String,
    queue: String,
    priority: u8,
    attempts: u32,
    max_attempts: u32,
    limits: StoredLimits,
    error: Option<StoredFailure>,
    created_at_ms: u64,
    started_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    next_run_at_ms: Option<u64>,
    idempotency_key: Option<String>,
    parent_id: Option<Uuid>,
    callback_url: Option<String>,
    input_len: u64,
    output_len: Option<u64>,
    fuel_used: Option<u64>,
    host_bytes_used: Option<u64>,
    history: Vec<Transition>,
    flow_id: Uuid,
    depth: u32,
    after: Vec<Uuid>,
    input_from: InputFrom,
    step: Option<String>,
    iteration: u32,
}

impl TryFrom<TaskRecordV6> for TaskRecord {
    type Error = super::StoreError;

    fn try_from(r: TaskRecordV6) -> Result<Self, Self::Error> {
        Ok(TaskRecord {
            id: r.id,
            version: r.version,
            state: r.state,
            plugin: r.plugin,
            plugin_version: r.plugin_version,
            digest: r.digest,
            queue: r.queue,
            priority: r.priority,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            limits: r.limits,
            error: r.error,
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            next_run_at_ms: r.next_run_at_ms,
            idempotency_key: r.idempotency_key,
            parent_id: r.parent_id,
            callback_url: r.callback_url,
            input_len: r.input_len,
            output_len: r.output_len,
            fuel_used: r.fuel_used,
            host_bytes_used: r.host_bytes_used,
            history: r.history,
            flow_id: r.flow_id,
            depth: r.depth,
            after: r.after,
            input_from: r.input_from,
            step: r.step,
            iteration: r.iteration,
            log_keep_bytes: None,
            trace: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_reads_what_the_record_holds() {
        // Every field before the summary's last set, with values that
        // differ, so a field added or moved before them shows.
        let mut record = crate::store::tests::record(7, Some("key"));
        record.state = TaskState::Failed;
        record.plugin = "acme/resize".into();
        record.queue = "acme/images".into();
        record.error = Some(StoredFailure {
            class: crate::FailureClass::Trap,
            retryable: true,
            message: "boom".into(),
            backtrace: Some("at f".into()),
        });
        record.started_at_ms = Some(11);
        record.finished_at_ms = Some(12);
        record.next_run_at_ms = Some(13);
        record.parent_id = Some(Uuid::from_u128(3));
        record.callback_url = Some("https://example.com/done".into());
        record.input_len = 4242;
        record.output_len = Some(99);
        record.fuel_used = Some(5);
        record.history.push(Transition {
            at_ms: 1,
            from: None,
            to: TaskState::Pending,
            attempt: 0,
            reason: "submitted".into(),
        });
        let bytes = encode(&record);
        // Schema 5-6 records end before today's last two fields (both
        // `None` here: a byte each).
        let v6 = &bytes[..bytes.len() - 2];
        assert_eq!(decode::<TaskRecord>(v6).unwrap().queue, record.queue, "the older layout still decodes");
        for bytes in [&bytes[..], v6] {
            let summary = TaskSummary::of(bytes).unwrap();
            assert_eq!(summary.state, record.state);
            assert_eq!(summary.plugin, record.plugin);
            assert_eq!(summary.queue, record.queue);
            assert_eq!(summary.input_len, record.input_len);
            assert_eq!(summary.output_len, record.output_len);
        }
        assert!(TaskSummary::of(&bytes[..20]).is_err(), "a cut record is an error");
    }
}
