//! The durable task engine: accepts tasks into the store, schedules them
//! fairly across queues, runs them in the sandbox, and records each outcome
//! as a checked transition. Data flows one way: API → store → scheduler →
//! sandbox → engine records the outcome → store.

mod callbacks;
mod flows;
mod manifest;
mod metrics;
mod plugins;
mod retry;
mod scheduler;
mod watch;

pub use flows::{FlowLimits, FlowSpec, FlowView, Node, RepeatSpec, Step};
pub use manifest::Manifest;
pub use plugins::{MAX_PLUGIN_BYTES, PluginDetail, VersionState, VersionStatus};
pub use retry::{RetryPolicy, is_retried};

use crate::store::{
    Change, QueueConfig, Store, StoreError, StoredFailure, StoredLimits, Submitted, TaskRecord, TaskState, now_ms,
};
use crate::{CancelToken, Grants, Limits, Sandbox, SandboxConfig, TaskMeta, TaskRequest};
use metrics::Metrics;
use plugins::{Registry, RegistryError};
use scheduler::{Charge, Entry, Scheduler};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use uuid::Uuid;

/// Engine settings. See [`EngineConfig::default`] for the defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where the store lives (`taskhost.redb` inside it).
    pub data_dir: PathBuf,
    /// Sandbox (engine-wide limits and pool).
    pub sandbox: SandboxConfig,
    /// Most tasks running at once across all queues. Default 4 × CPUs.
    pub concurrency: usize,
    /// Batch concurrent transitions into one commit. Default on; off only
    /// for comparison.
    pub group_commit: bool,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// `max_attempts` of a task that sets none. Default 3.
    pub default_max_attempts: u32,
    /// A directory to watch for `NAME.wasm` / `NAME@VERSION.wasm` (and
    /// `NAME.toml` manifests) to load live.
    pub plugins_dir: Option<PathBuf>,
    /// Limits against runaway flows.
    pub flow_limits: FlowLimits,
    /// The models tasks may call through `inference` (none when `None`).
    pub models: Option<crate::inference::Models>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            data_dir: default_data_dir(),
            sandbox: SandboxConfig::default(),
            concurrency: 4 * cpus,
            group_commit: true,
            retry: RetryPolicy::default(),
            default_max_attempts: 3,
            plugins_dir: None,
            flow_limits: FlowLimits::default(),
            models: None,
        }
    }
}

/// `$TASKHOST_DATA`, else `$XDG_DATA_HOME/taskhost`, else
/// `~/.local/share/taskhost`, else `./taskhost-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TASKHOST_DATA") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("taskhost");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".local/share/taskhost");
    }
    PathBuf::from("taskhost-data")
}

/// A task to submit.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    /// `name` (latest version, pinned now) or `name@version`.
    pub plugin: String,
    /// Input bytes.
    pub input: Vec<u8>,
    /// Queue (default `default`); created on first use.
    pub queue: Option<String>,
    /// 0–9, higher runs first (default 0).
    pub priority: Option<u8>,
    /// A second submission with the same key returns the first task.
    pub idempotency_key: Option<String>,
    /// Most attempts (1–100).
    pub max_attempts: Option<u32>,
    /// Wall-clock budget per attempt, ms.
    pub timeout_ms: Option<u64>,
    /// Fuel per attempt.
    pub fuel: Option<u64>,
    /// Memory cap per attempt, bytes.
    pub memory_bytes: Option<u64>,
    /// Start no sooner than this many ms from now.
    pub delay_ms: Option<u64>,
    /// Start no sooner than this time (ms since the Unix epoch).
    pub run_at_ms: Option<u64>,
    /// POST the record here when the task ends (http:// only).
    pub callback_url: Option<String>,
    /// The submitting task, for flows.
    pub parent_id: Option<Uuid>,
}

/// Why the engine refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed or out of range; nothing was written.
    #[error("{0}")]
    InvalidRequest(String),
    /// The plugin (or version) is not registered.
    #[error("{0}")]
    UnknownPlugin(String),
    /// The uploaded component cannot be a task plugin.
    #[error("{0}")]
    InvalidPlugin(String),
    /// No task with this id.
    #[error("task {0} not found")]
    NotFound(Uuid),
    /// The request conflicts with the task's state.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<RegistryError> for EngineError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unknown(_) | RegistryError::UnknownVersion { .. } => Self::UnknownPlugin(e.to_string()),
            RegistryError::BadName(_)
            | RegistryError::BadVersion(_)
            | RegistryError::TooLarge { .. }
            | RegistryError::BadManifest(_) => Self::InvalidRequest(e.to_string()),
            RegistryError::VersionTaken { .. } => Self::Conflict(e.to_string()),
            RegistryError::Invalid(_) => Self::InvalidPlugin(e.to_string()),
            RegistryError::Store(s) => Self::Store(s),
        }
    }
}

/// Tasks by (plugin version, state).
pub type TaskCounts = HashMap<(String, TaskState), u64>;

/// Filter and page for [`Engine::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this state.
    pub state: Option<TaskState>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this plugin name.
    pub plugin: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Continue after this task id.
    pub cursor: Option<Uuid>,
}

/// A queue with its settings and current depth.
#[derive(Debug, Clone)]
pub struct QueueInfo {
    /// Name.
    pub name: String,
    /// Settings.
    pub config: QueueConfig,
    /// Ready tasks.
    pub ready: usize,
    /// Delayed or retrying tasks.
    pub delayed: usize,
    /// Running tasks.
    pub running: usize,
}

/// The task engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    sandbox: Sandbox,
    store: Store,
    registry: Arc<Registry>,
    sched: Mutex<Scheduler>,
    wake: Notify,
    running: Mutex<HashMap<Uuid, CancelToken>>,
    /// Signalled whenever a task ends.
    ended: Notify,
    metrics: Arc<Metrics>,
    http: reqwest::Client,
    stopping: AtomicBool,
    dispatcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Unfinished tasks per (plugin, version): what keeps a version loaded.
    unfinished: Mutex<HashMap<(String, String), u64>>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Flow totals, limits and waiting joins.
    book: Mutex<flows::Book>,
    /// `config.models` as the service each attempt gets.
    inference: Option<Arc<dyn crate::sandbox::InferenceService>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("data_dir", &self.inner.config.data_dir).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// Opens the store, loads plugins, recovers interrupted tasks (running
    /// → pending, attempt counted) and rebuilds the schedule, then starts
    /// dispatching.
    pub async fn open(config: EngineConfig) -> anyhow::Result<Engine> {
        use anyhow::Context as _;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
        let path = config.data_dir.join("taskhost.redb");
        let store = Store::open(&path, config.group_commit).with_context(|| format!("opening {}", path.display()))?;
        let sandbox = Sandbox::new(config.sandbox.clone())?;
        let metrics = Arc::new(Metrics::new(config.models.as_ref().map(|m| m.metrics())));
        let inference = config.models.clone().map(|m| -> Arc<dyn crate::sandbox::InferenceService> { Arc::new(m) });
        let registry = Registry::open(sandbox.clone(), store.clone(), metrics.clone(), config.data_dir.join("cache"))
            .await
            .context("loading plugins")?;
        let mut sched = Scheduler::new(config.concurrency);
        for (name, queue) in store.queues()? {
            sched.configure(&name, queue);
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                sched: Mutex::new(sched),
                config,
                sandbox,
                store,
                registry: Arc::new(registry),
                wake: Notify::new(),
                running: Mutex::default(),
                ended: Notify::new(),
                metrics,
                http: reqwest::Client::new(),
                stopping: AtomicBool::new(false),
                dispatcher: Mutex::default(),
                unfinished: Mutex::default(),
                watcher: Mutex::default(),
                book: Mutex::default(),
                inference,
            }),
        };
        engine.recover().await?;
        engine.unload_idle();
        *lock(&engine.inner.dispatcher) = Some(tokio::spawn(engine.clone().dispatch_loop()));
        if let Some(dir) = engine.inner.config.plugins_dir.clone() {
            watch::start(engine.clone(), dir).context("watching the plugins directory")?;
        }
        Ok(engine)
    }

    /// Rebuilds the schedule from the store.
    async fn recover(&self) -> Result<(), EngineError> {
        let inner = &self.inner;
        let now = now_ms();
        let mut interrupted = Vec::new();
        let mut ready = Vec::new();
        inner.store.scan(None, |record| {
            inner.metrics.moved(&record.queue, None, record.state);
            match record.state {
                TaskState::Running => interrupted.push(record),
                TaskState::Pending | TaskState::Retrying => ready.push(record),
                _ => {}
            }
            true
        })?;
        // Tasks the host died running: back to pending (their attempt was
        // counted when it started), or failed once out of attempts.
        let changes = interrupted.into_iter().map(|record| {
            let (to, reason) = if record.attempts >= record.max_attempts {
                (TaskState::Failed, "the host stopped during the last attempt; attempts exhausted")
            } else {
                (TaskState::Pending, "recovered: the host stopped while the task was running")
            };
            let change = Change::new(record.id, to, reason).expect_version(record.version).edit(move |r| {
                if to == TaskState::Failed {
                    r.error = Some(StoredFailure {
                        class: "host error".into(),
                        retryable: false,
                        message: reason.into(),
                        backtrace: None,
                    });
                }
            });
            inner.store.transition(change)
        });
        for result in futures::future::join_all(changes).await {
            let record = result?;
            inner.metrics.moved(&record.queue, Some(TaskState::Running), record.state);
            if record.state == TaskState::Pending {
                ready.push(record);
            }
        }
        for record in &ready {
            self.hold(record);
        }
        // Flow totals and joins; what is left is ready to run.
        let ready = self.recover_flows(&ready).await?;
        self.schedule_ready(&ready, now);
        Ok(())
    }

    /// Counts an unfinished task against its plugin version.
    fn hold(&self, record: &TaskRecord) {
        let key = (record.plugin.clone(), record.plugin_version.clone());
        *lock(&self.inner.unfinished).entry(key).or_default() += 1;
    }

    /// A task ended: its version may no longer be needed in memory.
    fn release(&self, record: &TaskRecord) {
        let key = (record.plugin.clone(), record.plugin_version.clone());
        let idle = {
            let mut unfinished = lock(&self.inner.unfinished);
            let count = unfinished.entry(key.clone()).or_default();
            *count = count.saturating_sub(1);
            let idle = *count == 0;
            if idle {
                unfinished.remove(&key);
            }
            idle
        };
        if idle {
            self.unload_idle();
        }
    }

    /// Frees compiled versions that are neither current nor in use.
    fn unload_idle(&self) {
        let unfinished = lock(&self.inner.unfinished).clone();
        self.inner
            .registry
            .unload_unreferenced(|name, version| unfinished.contains_key(&(name.to_owned(), version.to_owned())));
    }

    /// Uploads a plugin version: checked, compiled off the async workers,
    /// stored, then live. Identical bytes return the existing version
    /// (`false`). `version` overrides the component's declared version (else
    /// the next number). With `wait` false, returns at once while it
    /// compiles.
    pub async fn add_plugin(
        &self,
        name: &str,
        bytes: Vec<u8>,
        version: Option<String>,
        wait: bool,
    ) -> Result<(VersionStatus, bool), EngineError> {
        let added = self.inner.registry.add(name, bytes, version, wait).await?;
        // The previous latest may now be idle.
        self.unload_idle();
        Ok(added)
    }

    /// The model registry, if this engine serves models.
    pub fn models(&self) -> Option<&crate::inference::Models> {
        self.inner.config.models.as_ref()
    }

    /// Every plugin name.
    pub fn plugins(&self) -> Vec<String> {
        self.inner.registry.names()
    }

    /// One plugin's versions with their state (from memory; no store scan).
    pub fn plugin_detail(&self, name: &str) -> Result<PluginDetail, EngineError> {
        self.inner.registry.detail(name).ok_or_else(|| EngineError::UnknownPlugin(format!("unknown plugin `{name}`")))
    }

    /// One plugin's versions with their state, and task counts by version
    /// and state (this scans the store).
    pub fn plugin(&self, name: &str) -> Result<(PluginDetail, TaskCounts), EngineError> {
        let detail = self.plugin_detail(name)?;
        let mut counts = HashMap::new();
        self.inner.store.scan(None, |r| {
            if r.plugin == name {
                *counts.entry((r.plugin_version, r.state)).or_default() += 1;
            }
            true
        })?;
        Ok((detail, counts))
    }

    /// Rolls back (or forward): a plain name now resolves to `version`.
    pub async fn set_latest(&self, name: &str, version: &str) -> Result<(), EngineError> {
        self.inner.registry.set_latest(name, version).await?;
        self.unload_idle();
        Ok(())
    }

    /// Deletes a version; refused (409) while an unfinished task uses it.
    pub async fn delete_plugin_version(&self, name: &str, version: &str) -> Result<(), EngineError> {
        // The same count that keeps a version loaded.
        let key = (name.to_owned(), version.to_owned());
        let unfinished = lock(&self.inner.unfinished).get(&key).copied().unwrap_or(0);
        if unfinished > 0 {
            return Err(EngineError::Conflict(format!(
                "{name}@{version} is used by {unfinished} unfinished task(s); delete it once they have ended"
            )));
        }
        Ok(self.inner.registry.delete(name, version).await?)
    }

    /// Sets (or clears, with `None`) a plugin's capability manifest.
    pub async fn set_manifest(&self, name: &str, manifest: Option<Manifest>) -> Result<(), EngineError> {
        if let Some(m) = &manifest {
            m.check().map_err(EngineError::InvalidRequest)?;
        }
        Ok(self.inner.registry.set_manifest(name, manifest).await?)
    }

    /// Compilations and artifact-cache hits since this engine started.
    pub fn plugin_load_counts(&self) -> (u64, u64) {
        self.inner.registry.load_counts()
    }

    /// Validates, pins the plugin version and durably records a task.
    /// Returns after the commit.
    pub async fn submit(&self, task: NewTask) -> Result<Submitted, EngineError> {
        let inner = &self.inner;
        let (record, input) = self.prepare(task)?;
        let submitted = inner.store.submit(record, input).await?;
        if submitted.created {
            self.admit(std::slice::from_ref(&submitted.record), false);
        }
        Ok(submitted)
    }

    /// Submits many tasks; each is answered on its own.
    pub async fn submit_batch(&self, tasks: Vec<NewTask>) -> Vec<Result<Submitted, EngineError>> {
        futures::future::join_all(tasks.into_iter().map(|t| self.submit(t))).await
    }

    fn prepare(&self, task: NewTask) -> Result<(TaskRecord, Vec<u8>), EngineError> {
        let invalid = |m: String| Err(EngineError::InvalidRequest(m));
        let queue = task.queue.unwrap_or_else(|| "default".into());
        if !plugins::valid_name(&queue) {
            return invalid(format!("invalid queue name `{queue}`: use 1-64 letters, digits, `-`, `_` or `.`"));
        }
        let priority = task.priority.unwrap_or(0);
        if priority > 9 {
            return invalid(format!("priority {priority} is out of range: expected 0-9 (higher runs first)"));
        }
        let max_attempts = task.max_attempts.unwrap_or(self.inner.config.default_max_attempts);
        if !(1..=100).contains(&max_attempts) {
            return invalid(format!("max_attempts {max_attempts} is out of range: expected 1-100"));
        }
        let (name, loaded) = self.inner.registry.resolve(&task.plugin)?;
        let host_defaults = &self.inner.config.sandbox.default_limits;
        let defaults = &match self.inner.registry.manifest(&name) {
            Some(manifest) => manifest.limits(host_defaults).map_err(EngineError::InvalidRequest)?,
            None => host_defaults.clone(),
        };
        let limits = Limits {
            fuel: task.fuel.unwrap_or(defaults.fuel),
            memory_bytes: task.memory_bytes.unwrap_or(defaults.memory_bytes),
            timeout: task.timeout_ms.map_or(defaults.timeout, Duration::from_millis),
            max_output_bytes: defaults.max_output_bytes,
            max_log_bytes: defaults.max_log_bytes,
        };
        if limits.fuel == 0 {
            return invalid("fuel must be greater than zero".into());
        }
        self.inner.sandbox.check_limits(&limits).map_err(EngineError::InvalidRequest)?;
        let now = now_ms();
        let next_run_at_ms = match (task.delay_ms, task.run_at_ms) {
            (Some(_), Some(_)) => {
                return invalid("give either delay_ms or run_at, not both".into());
            }
            (Some(delay), None) => Some(now.saturating_add(delay)),
            (None, Some(at)) => Some(at),
            (None, None) => None,
        };
        if let Some(key) = &task.idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            return invalid("idempotency_key must be 1-256 bytes".into());
        }
        if let Some(url) = &task.callback_url {
            match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "http" => {}
                Ok(u) => {
                    return invalid(format!("callback_url scheme `{}` is not supported: use http://", u.scheme()));
                }
                Err(e) => return invalid(format!("callback_url `{url}` is not a URL: {e}")),
            }
        }
        let id = Uuid::now_v7();
        let record = TaskRecord {
            id,
            version: 1,
            state: TaskState::Pending,
            plugin: name,
            plugin_version: loaded.info.version,
            digest: loaded.info.digest,
            queue,
            priority,
            attempts: 0,
            max_attempts,
            limits: StoredLimits::from(&limits),
            error: None,
            created_at_ms: now,
            started_at_ms: None,
            finished_at_ms: None,
            next_run_at_ms,
            idempotency_key: task.idempotency_key,
            parent_id: task.parent_id,
            callback_url: task.callback_url,
            input_len: task.input.len() as u64,
            output_len: None,
            fuel_used: None,
            history: vec![crate::store::Transition {
                at_ms: now,
                from: None,
                to: TaskState::Pending,
                attempt: 0,
                reason: if next_run_at_ms.is_some() { "submitted (delayed)" } else { "submitted" }.into(),
            }],
            flow_id: id,
            depth: 0,
            after: Vec::new(),
            input_from: crate::store::InputFrom::Own,
            step: None,
            iteration: 0,
        };
        Ok((record, task.input))
    }

    /// One task's record.
    pub fn get(&self, id: Uuid) -> Result<TaskRecord, EngineError> {
        self.inner.store.get(id)?.ok_or(EngineError::NotFound(id))
    }

    /// A task's output, once it completed.
    pub fn output(&self, id: Uuid) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.inner.store.output(id)?)
    }

    /// Lists tasks in submission order; returns the page and the cursor of
    /// the next one.
    pub fn list(&self, filter: &ListFilter) -> Result<(Vec<TaskRecord>, Option<Uuid>), EngineError> {
        let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
        let mut page = Vec::new();
        let mut more = false;
        self.inner.store.scan(filter.cursor, |record| {
            let keep = filter.state.is_none_or(|s| s == record.state)
                && filter.queue.as_deref().is_none_or(|q| q == record.queue)
                && filter.plugin.as_deref().is_none_or(|p| p == record.plugin);
            if keep {
                if page.len() == limit {
                    more = true;
                    return false;
                }
                page.push(record);
            }
            true
        })?;
        let cursor = if more { page.last().map(|r| r.id) } else { None };
        Ok((page, cursor))
    }

    /// Cancels a task: at once when pending or retrying; a running task is
    /// interrupted within an epoch tick and this returns once it ended.
    pub async fn cancel(&self, id: Uuid) -> Result<TaskRecord, EngineError> {
        let inner = &self.inner;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut interrupted = false;
        loop {
            let record = self.get(id)?;
            match record.state {
                TaskState::Pending | TaskState::Retrying => {
                    let change =
                        Change::new(id, TaskState::Cancelled, "cancelled by request").expect_version(record.version);
                    match inner.store.transition(change).await {
                        Ok(done) => {
                            self.ended(&record, &done);
                            return Ok(done);
                        }
                        // It moved (e.g. a worker started it): look again.
                        Err(StoreError::VersionMismatch { .. } | StoreError::IllegalTransition { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                TaskState::Running => {
                    let ended = inner.ended.notified();
                    let token = lock(&inner.running).get(&id).cloned();
                    if let Some(token) = token {
                        token.cancel();
                        interrupted = true;
                    }
                    if Instant::now() > deadline {
                        return Err(EngineError::Conflict(format!("task {id} did not stop within 10 s")));
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(50), ended).await;
                }
                // We interrupted it and it has ended (cancelled, or it
                // finished first): report how it ended.
                _ if interrupted => return Ok(record),
                state => {
                    return Err(EngineError::Conflict(format!("task {id} already ended ({state})")));
                }
            }
        }
    }

    /// Re-submits a failed (dead-letter) task: back to pending with its
    /// attempts reset; its history is kept.
    pub async fn resubmit(&self, id: Uuid) -> Result<TaskRecord, EngineError> {
        let record = self.get(id)?;
        if record.state != TaskState::Failed {
            return Err(EngineError::Conflict(format!(
                "only failed tasks can be re-submitted; task {id} is {}",
                record.state
            )));
        }
        let change = Change::new(id, TaskState::Pending, "re-submitted from the dead-letter set")
            .expect_version(record.version)
            .edit(|r| {
                r.attempts = 0;
                r.error = None;
                r.finished_at_ms = None;
                r.next_run_at_ms = None;
            });
        let done = self.inner.store.transition(change).await.map_err(|e| match e {
            StoreError::VersionMismatch { .. } => EngineError::Conflict(format!("task {id} changed; try again")),
            other => other.into(),
        })?;
        self.inner.metrics.moved(&done.queue, Some(TaskState::Failed), TaskState::Pending);
        self.hold(&done);
        lock(&self.inner.book).reopened(done.flow_id, &self.inner.config.flow_limits);
        lock(&self.inner.sched).enqueue(entry(&done), None, now_ms());
        self.inner.wake.notify_one();
        Ok(done)
    }

    /// Sets a queue's concurrency limit and weight.
    pub async fn set_queue(&self, name: &str, config: QueueConfig) -> Result<(), EngineError> {
        if !plugins::valid_name(name) {
            return Err(EngineError::InvalidRequest(format!(
                "invalid queue name `{name}`: use 1-64 letters, digits, `-`, `_` or `.`"
            )));
        }
        if !(1..=1000).contains(&config.weight) {
            return Err(EngineError::InvalidRequest(format!(
                "weight {} is out of range: expected 1-1000",
                config.weight
            )));
        }
        if config.concurrency == Some(0) {
            return Err(EngineError::InvalidRequest("concurrency must be at least 1 (omit it for no limit)".into()));
        }
        self.inner.store.set_queue(name.to_owned(), config.clone()).await?;
        lock(&self.inner.sched).configure(name, config);
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Every known queue.
    pub fn queues(&self) -> Vec<QueueInfo> {
        let sched = lock(&self.inner.sched);
        sched
            .depths()
            .into_iter()
            .map(|(name, d)| QueueInfo {
                config: sched.config(&name).unwrap_or_default(),
                name,
                ready: d.ready,
                delayed: d.delayed,
                running: d.running,
            })
            .collect()
    }

    /// The Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        let depths = lock(&self.inner.sched).depths();
        self.inner.metrics.render(&depths)
    }

    /// Tasks per state (all queues).
    pub fn state_counts(&self) -> HashMap<TaskState, i64> {
        self.inner.metrics.state_totals()
    }

    /// Waits until the task has ended, or `timeout` passed.
    pub async fn wait(&self, id: Uuid, timeout: Duration) -> Result<TaskRecord, EngineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ended = self.inner.ended.notified();
            let record = self.get(id)?;
            if record.state.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(record);
            }
            let _ =
                tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + Duration::from_millis(100)), ended)
                    .await;
        }
    }

    /// Stops dispatching new tasks (running ones finish).
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
    }

    /// Stops dispatching, waits for running tasks to end and releases the
    /// store once the last handle is dropped (a reopen then succeeds).
    pub async fn close(self) {
        self.shutdown();
        let tasks = [lock(&self.inner.dispatcher).take(), lock(&self.inner.watcher).take()];
        for handle in tasks.into_iter().flatten() {
            let _ = handle.await;
        }
        while !lock(&self.inner.running).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The sandbox tasks run in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.inner.sandbox
    }

    async fn dispatch_loop(self) {
        let inner = &self.inner;
        while !inner.stopping.load(Ordering::SeqCst) {
            let next_due = {
                let mut sched = lock(&inner.sched);
                let next_due = sched.promote_due(now_ms());
                while let Some((entry, charge)) = sched.next() {
                    tokio::spawn(self.clone().execute(entry, charge));
                }
                next_due
            };
            let sleep = match next_due {
                Some(due) => Duration::from_millis(due.saturating_sub(now_ms()).max(1)),
                None => Duration::from_secs(3600),
            };
            let _ = tokio::time::timeout(sleep, inner.wake.notified()).await;
        }
    }

    /// Runs one attempt of a task and records its outcome.
    async fn execute(self, queued: Entry, charge: Charge) {
        let inner = &self.inner;
        let started = Instant::now();
        let token = CancelToken::new();
        lock(&inner.running).insert(queued.id, token.clone());
        let start = Change::new(queued.id, TaskState::Running, "started").expect_version(queued.version).edit(|r| {
            r.attempts += 1;
            r.started_at_ms = Some(now_ms());
        });
        let record = match inner.store.transition(start).await {
            Ok(record) => record,
            Err(error) => {
                // Cancelled or changed since it was queued: nothing to run.
                tracing::debug!(id = %queued.id, %error, "task not started");
                lock(&inner.running).remove(&queued.id);
                lock(&inner.sched).finished(&queued.queue, charge, 0.0);
                inner.wake.notify_one();
                return;
            }
        };
        let from = record.history.last().and_then(|t| t.from).unwrap_or(TaskState::Pending);
        inner.metrics.moved(&record.queue, Some(from), TaskState::Running);
        let ready_since = record.next_run_at_ms.unwrap_or(record.created_at_ms).max(record.created_at_ms);
        inner.metrics.queue_wait.observe(now_ms().saturating_sub(ready_since) as f64 / 1000.0);

        let services = Arc::new(flows::AttemptServices::new(self.clone(), record.clone()));
        let mut change = self.run_attempt(&record, token, services.clone()).await;
        let held = services.take();
        let completing = change.to == TaskState::Completed;
        let context_writes = !held.effects.context.is_empty();
        let has_effects = context_writes || held.effects.stop_repeating || !held.effects.children.is_empty();
        if completing {
            change = change.effects(held.effects);
        }
        let finished = inner.store.apply(change.expect_version(record.version)).await;
        // Children first, so the flow never looks finished in between.
        let committed = match &finished {
            Ok(applied) if completing && applied.effects_applied => {
                self.admit(&applied.created, true);
                applied.created.len() as u64
            }
            _ => 0,
        };
        {
            let applied = finished.as_ref().is_ok_and(|a| completing && a.effects_applied);
            // The flow's exact context size, read back after its writes.
            let size = (applied && context_writes).then(|| inner.store.context_sizes_of(record.flow_id).ok()).flatten();
            let mut book = lock(&inner.book);
            if applied && has_effects {
                // The commit created the flow's record: it must be finished.
                book.grew(record.flow_id);
            }
            book.unreserve_tasks(record.flow_id, held.tasks_reserved.saturating_sub(committed));
            book.settle_context(record.flow_id, held.context_reserved, size);
        }
        let finished = finished.map(|applied| applied.record);
        lock(&inner.running).remove(&record.id);
        let run_secs = started.elapsed().as_secs_f64();
        lock(&inner.sched).finished(&record.queue, charge, run_secs);
        inner.metrics.run_time.observe(run_secs);
        match finished {
            Ok(done) => {
                if done.state == TaskState::Retrying {
                    inner.metrics.moved(&done.queue, Some(TaskState::Running), TaskState::Retrying);
                    inner.metrics.retried.get_or_create(&Metrics::label(&done.queue)).inc();
                    lock(&inner.sched).enqueue(entry(&done), done.next_run_at_ms, now_ms());
                } else {
                    self.ended(&record, &done);
                }
                if let Some(fuel) = done.fuel_used {
                    inner.metrics.fuel_used.observe(fuel as f64);
                }
            }
            Err(error) => tracing::error!(id = %record.id, %error, "recording the outcome failed"),
        }
        inner.wake.notify_one();
    }

    /// Runs the sandbox and turns its report into the next transition.
    async fn run_attempt(
        &self,
        record: &TaskRecord,
        token: CancelToken,
        services: Arc<flows::AttemptServices>,
    ) -> Change {
        let inner = &self.inner;
        let id = record.id;
        let fail = |class: &str, message: String| {
            Change::new(id, TaskState::Failed, format!("{class}: {message}")).edit({
                let class = class.to_owned();
                move |r| r.error = Some(StoredFailure { class, retryable: false, message, backtrace: None })
            })
        };
        let plugin = match inner.registry.get(&record.plugin, &record.plugin_version).await {
            Ok(plugin) => plugin,
            Err(message) => return fail("invalid plugin", message),
        };
        let input = match self.input_of(record) {
            Ok(input) => input,
            Err(message) => return fail("host error", message),
        };
        let limits = Limits::from(&record.limits);
        // The operator's grants, resolved at start so DNS changes count.
        let grants = match inner.registry.manifest(&record.plugin) {
            Some(manifest) => Grants {
                dirs: manifest.dir_grants(),
                connect: manifest.connect_grants().await,
                models: manifest.models.clone(),
            },
            None => Grants::default(),
        };
        let request = TaskRequest {
            input,
            meta: TaskMeta {
                id: id.to_string(),
                attempt: record.attempts,
                queue: record.queue.clone(),
                priority: record.priority,
            },
            limits: Some(limits),
            cancel: Some(token),
            grants,
            services: Some(services),
            inference: inner.inference.clone(),
        };
        let report = inner.sandbox.run(&plugin, request).await;
        let fuel_used = report.fuel_consumed;
        match report.result {
            Ok(output) => Change::new(id, TaskState::Completed, "completed").output(output).edit(move |r| {
                r.error = None;
                r.fuel_used = fuel_used;
            }),
            Err(failure) => {
                let stored = StoredFailure {
                    class: failure.class.as_str().to_owned(),
                    retryable: failure.retryable,
                    message: failure.message.clone(),
                    backtrace: failure.backtrace.clone(),
                };
                let summary = failure.to_string();
                let (to, reason, next_run) = if failure.class == crate::FailureClass::Cancelled {
                    (TaskState::Cancelled, "cancelled while running".to_owned(), None)
                } else if is_retried(failure.class, failure.retryable) && record.attempts < record.max_attempts {
                    let backoff = inner.config.retry.backoff(record.attempts);
                    let at = now_ms() + backoff.as_millis() as u64;
                    (TaskState::Retrying, format!("{summary}; retrying in {} ms", backoff.as_millis()), Some(at))
                } else if is_retried(failure.class, failure.retryable) {
                    (TaskState::Failed, format!("{summary}; attempts exhausted"), None)
                } else {
                    (TaskState::Failed, summary, None)
                };
                Change::new(id, to, reason).edit(move |r| {
                    r.error = Some(stored);
                    r.fuel_used = fuel_used;
                    r.next_run_at_ms = next_run;
                })
            }
        }
    }

    /// A task's input: its own, or its predecessors' outputs (one as is,
    /// several gathered into a JSON array).
    fn input_of(&self, record: &TaskRecord) -> Result<Vec<u8>, String> {
        let store = &self.inner.store;
        if record.input_from == crate::store::InputFrom::Own || record.after.is_empty() {
            return store
                .input(record.id)
                .map_err(|e| format!("reading the input: {e}"))?
                .ok_or_else(|| "the task's input is missing from the store".into());
        }
        let mut outputs = Vec::with_capacity(record.after.len());
        for dep in &record.after {
            let output = store.output(*dep).map_err(|e| format!("reading the output of {dep}: {e}"))?;
            outputs.push(output.ok_or_else(|| format!("task {dep} has no output to pass on"))?);
        }
        Ok(if outputs.len() == 1 { outputs.remove(0) } else { flows::gather(&outputs) })
    }

    /// Bookkeeping for a task that reached a terminal state.
    fn ended(&self, before: &TaskRecord, done: &TaskRecord) {
        let inner = &self.inner;
        self.release(done);
        let label = Metrics::label(&done.queue);
        let from = done.history.last().and_then(|t| t.from).unwrap_or(before.state);
        inner.metrics.moved(&done.queue, Some(from), done.state);
        let plugin_label = metrics::PluginLabel {
            plugin: done.plugin.clone(),
            version: done.plugin_version.clone(),
            outcome: done.state.as_str().to_owned(),
        };
        inner.metrics.plugin_tasks.get_or_create(&plugin_label).inc();
        match done.state {
            TaskState::Completed => inner.metrics.completed.get_or_create(&label).inc(),
            TaskState::Failed => inner.metrics.failed.get_or_create(&label).inc(),
            TaskState::Cancelled => inner.metrics.cancelled.get_or_create(&label).inc(),
            _ => 0,
        };
        if let Some(url) = &done.callback_url {
            let output = self.output(done.id).ok().flatten();
            callbacks::deliver(inner.http.clone(), url.clone(), crate::api::task_json(done, output.as_deref()));
        }
        self.flow_task_ended(done);
        inner.ended.notify_waiters();
    }
}

fn entry(record: &TaskRecord) -> Entry {
    Entry { id: record.id, version: record.version, priority: record.priority, queue: record.queue.clone() }
}
