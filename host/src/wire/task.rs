//! Tasks on the wire: the record ([`Task`], also what a callback POSTs),
//! what a submission sends ([`TaskSubmission`], [`BatchSubmission`]) and
//! gets back ([`Submitted`], [`BatchAnswer`]), list pages and history.

use super::{ErrorDetail, Output, time};
use crate::store::{self, CallbackOutcome, StoredFailure, TaskRecord, TaskState, Transition};
use crate::tenant::Namespace;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A task's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The host budget: bytes the task may make the host hold.
    pub host_bytes: u64,
}

impl From<&store::StoredLimits> for TaskLimits {
    fn from(l: &store::StoredLimits) -> Self {
        Self {
            fuel: l.fuel,
            memory_bytes: l.memory_bytes,
            timeout_ms: l.timeout_ms,
            max_output_bytes: l.max_output_bytes,
            max_log_bytes: l.max_log_bytes,
            host_bytes: l.host_bytes,
        }
    }
}

/// Why a task's last attempt failed: the same object in a task's record
/// and in a flow's task tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct TaskError {
    /// The failure class: one of the `FailureClass` names (`trap`,
    /// `timeout`, `plugin error`, ...). Kept as a string on the wire so
    /// that a client reads a class a newer server added.
    #[schema(value_type = crate::FailureClass)]
    pub class: String,
    /// Whether the plugin marked it retryable.
    pub retryable: bool,
    /// What went wrong.
    pub message: String,
    /// The wasm backtrace of a trap.
    pub backtrace: Option<String>,
    /// The last lines the failed attempt wrote to stderr (at most 20 and
    /// 4 KiB), oldest first: a panic's message, a traceback. Given by
    /// `GET /v1/tasks/{id}` and a completion callback; absent from list
    /// pages and when the attempt wrote none (the whole transcript is at
    /// `GET /v1/tasks/{id}/logs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stderr_tail: Vec<String>,
}

/// What each failure class means, as the OpenAPI document says it.
fn class_meaning(class: crate::FailureClass) -> &'static str {
    use crate::FailureClass as C;
    match class {
        C::FuelExhausted => "the task used up its fuel budget",
        C::MemoryLimitExceeded => "the task asked for more linear memory than its limit",
        C::Timeout => "the task ran past its wall-clock budget",
        C::StackOverflow => "the task exhausted the wasm call stack",
        C::Trap => {
            "the guest trapped (a panic, `unreachable`, an out-of-bounds access); `backtrace` has the wasm frames"
        }
        C::PluginError => "the plugin returned an error; `retryable` says whether the plugin asked for another attempt",
        C::OutputTooLarge => "the output, or a captured stream (stdout, stderr, log), passed its cap",
        C::InvalidPlugin => {
            "the component cannot run here (not a component, not world `task`, an import this host lacks)"
        }
        C::Cancelled => "the task was cancelled while it ran",
        C::HostError => "the host could not run the task (e.g. no free instance slot)",
        C::HostBudgetExceeded => {
            "the task made the host hold more than its budget (logs, children, context, join results, tensors)"
        }
        C::InputFetchFailed => "the task's `input_url` could not be fetched; each attempt fetches anew",
    }
}

/// A string enum of the class names, with what each means.
impl utoipa::PartialSchema for crate::FailureClass {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
        let mut description = String::from(
            "Why an attempt failed. A client should treat a class it does not know as a failure \
             of unknown cause.\n\n| class | meaning |\n|---|---|\n",
        );
        for class in crate::FailureClass::ALL {
            description.push_str(&format!("| `{}` | {} |\n", class.as_str(), class_meaning(class)));
        }
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .enum_values(Some(crate::FailureClass::ALL.iter().map(|c| c.as_str())))
            .description(Some(description))
            .into()
    }
}

impl utoipa::ToSchema for crate::FailureClass {
    fn name() -> std::borrow::Cow<'static, str> {
        "FailureClass".into()
    }
}

impl From<&StoredFailure> for TaskError {
    fn from(e: &StoredFailure) -> Self {
        Self {
            class: e.class.as_str().to_owned(),
            retryable: e.retryable,
            message: e.message.clone(),
            backtrace: e.backtrace.clone(),
            stderr_tail: Vec::new(),
        }
    }
}

/// A task record (`GET /v1/tasks/{id}`, list pages, cancel and retry
/// answers, callbacks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Last attempt started.
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    /// Ended.
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// Due (delayed or retrying).
    #[schema(format = DateTime)]
    pub next_run_at: Option<String>,
    /// The idempotency key.
    pub idempotency_key: Option<String>,
    /// The submitting task.
    pub parent_id: Option<Uuid>,
    /// The flow.
    pub flow_id: Uuid,
    /// How deep in its flow: 0 for a first task; one more than its
    /// parent's for a task a plugin submitted, or than the deepest task it
    /// joins for a declared flow's step.
    pub depth: u32,
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
    /// The most bytes the last attempt made the host hold at once.
    pub host_bytes_used: Option<u64>,
    /// Where its completion callback stands, once it has ended (absent
    /// without a `callback_url`, and in lists and callbacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackDelivery>,
    /// The output (`output` or `output_base64`), where the answer carries
    /// it: `GET /v1/tasks/{id}` and callbacks of a completed task.
    #[serde(flatten)]
    pub output: Output,
}

impl Task {
    /// The same, with its names (plugin, queue, idempotency key) as
    /// tenant `ns` wrote them, not as the host keys them.
    pub fn in_namespace(mut self, ns: &Namespace) -> Self {
        self.plugin = ns.name_of(&self.plugin);
        self.queue = ns.name_of(&self.queue);
        if let Some(key) = self.idempotency_key.take() {
            self.idempotency_key = Some(crate::tenant::split_idempotency(&key).1.to_owned());
        }
        self
    }
    /// The view of `record`, with its output if given.
    pub fn new(record: &TaskRecord, output: Option<&[u8]>) -> Self {
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
            limits: TaskLimits::from(&record.limits),
            error: record.error.as_ref().map(TaskError::from),
            created_at: time(record.created_at_ms),
            started_at: record.started_at_ms.map(time),
            finished_at: record.finished_at_ms.map(time),
            next_run_at: record.next_run_at_ms.map(time),
            idempotency_key: record.idempotency_key.clone(),
            parent_id: record.parent_id,
            flow_id: record.flow_id,
            depth: record.depth,
            step: record.step.clone(),
            iteration: record.iteration,
            after: record.after.clone(),
            callback_url: record.callback_url.clone(),
            input_len: record.input_len,
            output_len: record.output_len,
            fuel_used: record.fuel_used,
            host_bytes_used: record.host_bytes_used,
            output: Output::new(output),
            callback: None,
        }
    }

    /// The same view, with where its callback stands (for a task that has
    /// one and has ended): `outcome`, or pending when it has none yet.
    pub fn with_callback(mut self, record: &TaskRecord, outcome: Option<&CallbackOutcome>) -> Self {
        if record.callback_url.is_some() && record.state.is_terminal() {
            self.callback = Some(CallbackDelivery::new(outcome));
        }
        self
    }

    /// The same view, with the failed attempt's last stderr lines on its
    /// error (see [`TaskError::stderr_tail`]).
    pub fn with_stderr_tail(mut self, lines: Vec<String>) -> Self {
        if let Some(error) = &mut self.error {
            error.stderr_tail = lines;
        }
        self
    }

    /// The output bytes, decoded from whichever field carries them.
    pub fn output_bytes(&self) -> Option<Vec<u8>> {
        self.output.bytes()
    }
}

/// Where a task's completion callback stands (`callback` on an ended
/// task with a `callback_url`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct CallbackDelivery {
    /// Where delivery stands.
    pub state: CallbackState,
    /// Attempts made.
    pub attempts: u32,
    /// When it was delivered or given up.
    #[schema(format = DateTime)]
    pub at: Option<String>,
    /// Why it was not delivered.
    pub error: Option<String>,
}

impl CallbackDelivery {
    /// The view of `outcome`; pending without one.
    pub fn new(outcome: Option<&CallbackOutcome>) -> Self {
        match outcome {
            None => Self { state: CallbackState::Pending, attempts: 0, at: None, error: None },
            Some(o) => Self {
                state: if o.delivered { CallbackState::Delivered } else { CallbackState::Failed },
                attempts: o.attempts,
                at: Some(time(o.at_ms)),
                error: o.error.clone(),
            },
        }
    }
}

/// Where a completion callback's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CallbackState {
    /// Being delivered, or waiting to be retried.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed; `error` says why.
    Failed,
}

/// `POST /v1/tasks`: one task to submit (also each item of a batch).
/// Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
#[schema(example = json!({"plugin": "uppercase", "input": "hello", "queue": "emails", "priority": 5, "idempotency_key": "order-42", "max_attempts": 3, "timeout_ms": 5000}))]
pub struct TaskSubmission {
    /// `name` or `name@version`. Give either a plugin or a `script`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// An ad-hoc script to run instead of a plugin, where the tenant's
    /// `script_queues` quota allows it in the task's queue (none by
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<ScriptSubmission>,
    /// Any JSON value; the plugin receives its JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Raw input bytes, base64. At most one of `input`, `input_base64`
    /// and `input_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_base64: Option<String>,
    /// Where the host fetches the input (http or https) when the task
    /// starts, each attempt anew, through the egress guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_url: Option<String>,
    /// The bytes of each attempt's log transcript to keep, up to the
    /// host's ceiling (`--log-keep-max`); default the host's `--log-keep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_keep_bytes: Option<u64>,
    /// Queue (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// 0-9, higher runs first (a wider type, so a value out of range gets
    /// a message saying so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// A repeated key returns the first task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// 1-100 (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
    /// Wall-clock budget per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Fuel per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Memory cap per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Start no sooner than this many ms from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Start no sooner than this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// Where to POST the record when the task ends (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

impl TaskSubmission {
    /// A submission of `plugin` with no input and every default; set the
    /// fields to change them.
    pub fn new(plugin: impl Into<String>) -> Self {
        Self { plugin: Some(plugin.into()), ..Self::default() }
    }

    /// A submission of an ad-hoc `script` with no input and every default.
    pub fn script(script: ScriptSubmission) -> Self {
        Self { script: Some(script), ..Self::default() }
    }
}

/// An ad-hoc script in a submission: its language and its source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
#[schema(example = json!({"lang": "js", "source": "export default (input) => input.text().toUpperCase();"}))]
pub struct ScriptSubmission {
    /// `js` (an ES module exporting `default` or `run`) or `python` (a
    /// module defining `run`).
    pub lang: String,
    /// The source, at most the tenant's `max_script_bytes` (64 KiB by
    /// default).
    pub source: String,
}

impl ScriptSubmission {
    /// A `lang` script of `source`.
    pub fn new(lang: impl Into<String>, source: impl Into<String>) -> Self {
        Self { lang: lang.into(), source: source.into() }
    }
}

/// `POST /v1/tasks:batch`: up to 10,000 tasks, each a [`TaskSubmission`]
/// object. Items stay untyped here because each is checked, and refused,
/// on its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
#[schema(example = json!({"tasks": [{"plugin": "uppercase", "input": "a"}, {"plugin": "word-count", "input_base64": "aGVsbG8gd29ybGQ=", "priority": 9}]}))]
pub struct BatchSubmission {
    /// The tasks.
    #[schema(value_type = Vec<TaskSubmission>)]
    pub tasks: Vec<Value>,
}

impl BatchSubmission {
    /// A batch of `tasks`.
    pub fn new(tasks: Vec<Value>) -> Self {
        Self { tasks }
    }
}

/// A submitted task: the answer to `POST /v1/tasks` (201 new, 200 an
/// idempotency key seen before) and each accepted batch item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct Submitted {
    /// Task id (the existing task's, when the key was seen before).
    pub id: Uuid,
    /// Its state now.
    pub state: TaskState,
    /// False when the idempotency key returned an earlier task.
    pub created: bool,
}

impl From<&store::Submitted> for Submitted {
    fn from(s: &store::Submitted) -> Self {
        Self { id: s.record.id, state: s.record.state, created: s.created }
    }
}

/// A refused batch item: the same `error` as a whole-request refusal, with
/// the status it would have had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct BatchRefusal {
    /// The HTTP status a single submission would have got.
    pub status: u16,
    /// Why.
    pub error: ErrorDetail,
}

impl BatchRefusal {
    /// A refusal with `status` and `error`.
    pub fn new(status: u16, error: ErrorDetail) -> Self {
        Self { status, error }
    }
}

/// One item of a batch answer, in the order of the submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[non_exhaustive]
pub enum BatchItem {
    /// `{id, state, created}`.
    Submitted(Submitted),
    /// `{status, error}`.
    Refused(BatchRefusal),
}

/// The answer to `POST /v1/tasks:batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct BatchAnswer {
    /// One item per submitted task, in order.
    pub results: Vec<BatchItem>,
}

impl BatchAnswer {
    /// The answer with `results`.
    pub fn new(results: Vec<BatchItem>) -> Self {
        Self { results }
    }
}

/// `POST /v1/tasks/{id}/retry` body (optional). Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
#[schema(example = json!({"version": "3"}))]
pub struct RetryRequest {
    /// Run it on this plugin version instead of the one it pinned.
    #[serde(default)]
    pub version: Option<String>,
}

impl RetryRequest {
    /// A retry on `version` (`None`: the pinned one).
    pub fn new(version: Option<String>) -> Self {
        Self { version }
    }
}

/// `GET /v1/tasks`: a page of tasks, oldest or newest first (without
/// outputs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct TaskPage {
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<Uuid>,
    /// How many more tasks match after this page, counted up to 10,000
    /// (a lower bound at that): only with `count=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more: Option<u64>,
}

impl TaskPage {
    /// The page of `records`, continued at `next_cursor`.
    pub fn new(records: &[TaskRecord], next_cursor: Option<Uuid>) -> Self {
        Self { tasks: records.iter().map(|r| Task::new(r, None)).collect(), next_cursor, more: None }
    }

    /// The same, saying how many more match.
    pub fn more(mut self, more: Option<u64>) -> Self {
        self.more = more;
        self
    }

    /// The same, with names as tenant `ns` wrote them.
    pub fn in_namespace(mut self, ns: &Namespace) -> Self {
        self.tasks = self.tasks.into_iter().map(|t| t.in_namespace(ns)).collect();
        self
    }
}

/// One transition of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// When.
    #[schema(format = DateTime)]
    pub at: String,
    /// The state it left (`null` at submission).
    pub from: Option<TaskState>,
    /// The state it entered.
    pub to: TaskState,
    /// The attempt count at that moment.
    pub attempt: u32,
    /// Why.
    pub reason: String,
}

impl From<&Transition> for HistoryEntry {
    fn from(t: &Transition) -> Self {
        Self { at: time(t.at_ms), from: t.from, to: t.to, attempt: t.attempt, reason: t.reason.clone() }
    }
}

/// `GET /v1/tasks/{id}/history`: every transition, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct History {
    /// Task id.
    pub id: Uuid,
    /// The transitions.
    pub history: Vec<HistoryEntry>,
}

impl History {
    /// The history of `record`.
    pub fn new(record: &TaskRecord) -> Self {
        Self { id: record.id, history: record.history.iter().map(HistoryEntry::from).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) -> Value {
        let json = serde_json::to_value(value).unwrap();
        let back: T = serde_json::from_str(&json.to_string()).unwrap();
        assert_eq!(&back, value);
        json
    }

    #[test]
    fn output_is_json_when_it_parses_else_base64_and_round_trips() {
        let record = crate::store::tests::record(1, None);
        let json = Task::new(&record, Some(br#"{"n":1}"#));
        let value = round_trip(&json);
        assert_eq!(value["output"]["n"], 1);
        assert!(value.get("output_base64").is_none());
        let raw = Task::new(&record, Some(&[0xff, 0x00]));
        let value = round_trip(&raw);
        assert_eq!(value["output_base64"], "/wA=");
        assert!(value.get("output").is_none());
        let back: Task = serde_json::from_value(value).unwrap();
        assert_eq!(back.output_bytes().unwrap(), [0xff, 0x00]);
        let none = round_trip(&Task::new(&record, None));
        assert!(none.get("output").is_none() && none["error"].is_null() && none["input_bytes"] == 0);
    }

    #[test]
    fn a_task_has_the_api_shape() {
        let mut record = crate::store::tests::record(7, Some("k"));
        record.state = TaskState::Failed;
        record.error = Some(StoredFailure {
            class: crate::FailureClass::Trap,
            retryable: false,
            message: "unreachable".into(),
            backtrace: Some("0: f".into()),
        });
        record.started_at_ms = Some(1_500);
        let value = round_trip(&Task::new(&record, None));
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "after",
                "attempts",
                "callback_url",
                "created_at",
                "depth",
                "digest",
                "error",
                "finished_at",
                "flow_id",
                "fuel_used",
                "host_bytes_used",
                "id",
                "idempotency_key",
                "input_bytes",
                "iteration",
                "limits",
                "max_attempts",
                "next_run_at",
                "output_bytes",
                "parent_id",
                "plugin",
                "plugin_version",
                "priority",
                "queue",
                "started_at",
                "state",
                "step"
            ]
        );
        assert_eq!(
            value["error"],
            json!({"class": "trap", "retryable": false, "message": "unreachable", "backtrace": "0: f"})
        );
        assert_eq!((value["state"].as_str(), value["idempotency_key"].as_str()), (Some("failed"), Some("k")));
        assert_eq!(value["started_at"], "1970-01-01T00:00:01.500Z");
        assert_eq!(value["limits"]["timeout_ms"], 1);
    }

    /// A record stored with an absurd time (a delay of about 10^15 ms,
    /// accepted before times were checked) still renders in every view.
    #[test]
    fn a_record_with_an_absurd_time_still_renders() {
        let mut record = crate::store::tests::record(3, None);
        record.next_run_at_ms = Some(1_000_000_000_000_000);
        record.finished_at_ms = Some(u64::MAX);
        record.history.push(Transition {
            at_ms: u64::MAX,
            from: None,
            to: TaskState::Pending,
            attempt: 0,
            reason: "submitted (delayed)".into(),
        });
        let value = round_trip(&Task::new(&record, None));
        assert_eq!(value["next_run_at"], "1000000000000000");
        assert_eq!(value["finished_at"], u64::MAX.to_string());
        assert_eq!(value["created_at"], "1970-01-01T00:00:00.000Z");
        let page = round_trip(&TaskPage::new(std::slice::from_ref(&record), None));
        assert_eq!(page["tasks"][0]["next_run_at"], "1000000000000000");
        assert_eq!(round_trip(&History::new(&record))["history"][0]["at"], u64::MAX.to_string());
    }

    #[test]
    fn submissions_and_their_answers() {
        let mut submission = TaskSubmission::new("uppercase");
        submission.input_base64 = Some("aGk=".into());
        submission.priority = Some(3);
        let value = round_trip(&submission);
        assert_eq!(value, json!({"plugin": "uppercase", "input_base64": "aGk=", "priority": 3}));
        let refused = serde_json::from_value::<TaskSubmission>(json!({"plugin": "p", "colour": "red"}));
        assert!(refused.unwrap_err().to_string().contains("unknown field `colour`"));

        let id = Uuid::from_u128(5);
        let accepted = BatchItem::Submitted(Submitted { id, state: TaskState::Pending, created: true });
        let refused =
            BatchItem::Refused(BatchRefusal::new(404, ErrorDetail::new(crate::wire::ErrorCode::UnknownPlugin, "no")));
        let value = round_trip(&BatchAnswer::new(vec![accepted, refused]));
        assert_eq!(
            value,
            json!({"results": [
                {"id": id, "state": "pending", "created": true},
                {"status": 404, "error": {"code": "unknown_plugin", "message": "no"}}
            ]})
        );
        let value = round_trip(&BatchSubmission::new(vec![json!({"plugin": "p"})]));
        assert_eq!(value, json!({"tasks": [{"plugin": "p"}]}));
    }

    #[test]
    fn pages_and_history() {
        let mut record = crate::store::tests::record(2, None);
        record.history.push(Transition {
            at_ms: 0,
            from: None,
            to: TaskState::Pending,
            attempt: 0,
            reason: "submitted".into(),
        });
        let value = round_trip(&TaskPage::new(std::slice::from_ref(&record), None));
        assert_eq!(value["tasks"][0]["id"], json!(record.id));
        assert!(value["next_cursor"].is_null() && value["tasks"][0].get("output").is_none());
        let value = round_trip(&History::new(&record));
        assert_eq!(
            value,
            json!({"id": record.id, "history": [
                {"at": "1970-01-01T00:00:00.000Z", "from": null, "to": "pending", "attempt": 0, "reason": "submitted"}
            ]})
        );
    }
}
