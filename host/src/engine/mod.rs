//! The durable task engine: accepts tasks into the store, schedules them
//! fairly across queues, runs them in the sandbox, and records each outcome
//! as a checked transition. Data flows one way: API → engine → store and
//! scheduler → runner (sandbox) → outcome recorded.
//!
//! [`Engine`] is a thin handle over components that each own one concern:
//! submission (validation, pinning), admission (scheduling committed
//! tasks, or parking joins), dispatch (the attempt loop and the retry
//! decision), endings (what a task's end sets off), flows (the flow book,
//! flow ends and iterations) and administration (cancel, re-submit,
//! queues, listing). Plugins come through a `runner` trait, so all of it
//! is tested without wasm.

mod ad_hoc;
mod admin;
mod admission;
#[cfg(test)]
mod backends;
mod callbacks;
mod claims;
mod config;
mod dispatch;
mod ending;
mod error;
mod fetch;
mod flows;
mod gate;
mod history;
mod hosts;
mod logs;
mod metrics;
mod rates;
mod recent;
mod recovery;
mod retention;
mod retry;
mod routing;
mod runner;
mod scheduler;
mod settings;
mod shared;
mod stored_bytes;
mod submission;
mod tenants;
#[cfg(test)]
pub(crate) mod testing;
mod unsettled;

pub use ad_hoc::{
    AD_HOC_JS, AD_HOC_PYTHON, AdHocScript, DEFAULT_MAX_SCRIPT_BYTES, MAX_AD_HOC_SCRIPTS, MAX_SCRIPT_QUEUES,
    plugin_for as ad_hoc_plugin,
};
pub(crate) use ad_hoc::{check_quotas as check_script_quotas, is_reserved as is_ad_hoc_plugin};
pub(crate) use admin::queue_config;
pub use admin::{ListFilter, MORE_COUNTED, QueueInfo, TaskList};
/// The most flows one listing reads (`Engine::flows_page`): a tenant with
/// few flows among many others gets short pages rather than a long scan.
pub const FLOWS_SCANNED: usize = 10_000;

pub use config::{DEFAULT_LOG_KEEP_CEILING, DEFAULT_RETAIN_FOR, EngineConfig, default_data_dir, default_memory_budget};
pub use error::EngineError;
pub use flows::{FlowLimits, FlowSpec, FlowView, Node, RepeatSpec, Step};
pub use logs::{MAX_FOLLOWERS, MAX_PER_TENANT, MAX_SUBSCRIBERS, Place};
pub use retry::{RetryPolicy, is_retried};
pub use settings::{
    MAX_SETTINGS_BYTES, ServerSettings, ServerWatch, SettingsError, StoreUrl, server_settings, watch_server_settings,
};
pub use submission::{MAX_DELAY_MS, NewTask};
pub use tenants::MAX_TENANTS;

use crate::registry::{Manifest, PluginDetail, Registry, VersionStatus};
use crate::store::{Db, QueueConfig, Store, StoreError, Submitted, TaskRecord, TaskState, now_ms};
use crate::sync::{blocking, lock};
use crate::{Sandbox, SandboxConfig};
use admin::Admin;
use admission::Admission;
use dispatch::Dispatch;
use ending::Endings;
use flows::Flows;
use metrics::Metrics;
use runner::{Runner, SandboxRunner};
use shared::Shared;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use submission::Submission;
use uuid::Uuid;

/// How long closing waits for the watched directory's loader before it
/// stops waiting on the compile it is in.
const WATCH_STOP_GRACE: Duration = Duration::from_secs(2);

/// The plugin of a spec's first step.
fn first_plugin(node: &Node) -> Option<&str> {
    match node {
        Node::Step(step) => Some(&step.plugin),
        Node::Series { series: nodes } | Node::Parallel { parallel: nodes } | Node::List(nodes) => {
            nodes.iter().find_map(first_plugin)
        }
    }
}

/// Tasks by (plugin version, state).
pub type TaskCounts = HashMap<(String, TaskState), u64>;

/// The task engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// The store's name for the default tenant's callback key.
const CALLBACK_SECRET: &str = "callbacks/default";

/// The store's name for the key the other tenants' callback keys are
/// derived from (no route shows it).
const CALLBACK_DERIVE_SECRET: &str = "callbacks/tenants";

struct Inner {
    shared: Arc<Shared>,
    /// The keys callbacks are signed with.
    callback_keys: Arc<callbacks::CallbackKeys>,
    submission: Arc<Submission>,
    flows: Arc<Flows>,
    admission: Arc<Admission>,
    endings: Arc<Endings>,
    /// Claims and runs tasks (its loop is `dispatcher`).
    dispatch: Arc<Dispatch>,
    admin: Admin,
    /// The plugin registry and sandbox (absent in engines built on a test
    /// runner).
    plugins: Option<(Arc<Registry>, Sandbox)>,
    dispatcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The retention sweep.
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Writes this host's heartbeat until told to stop (or the sender is
    /// dropped with the engine), then removes it.
    heartbeat: Mutex<Option<(tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>)>>,
    watcher: Mutex<Option<crate::registry::watch::DirWatch>>,
    /// The configuration file's state, and its watch.
    settings: settings::FileSettings,
    settings_watch: Mutex<Option<crate::watch::Watch>>,
    /// Clients following logs.
    followers: logs::Followers,
    /// Held from an ad-hoc script's version being added (or found) until
    /// its submission pins it, and while versions are collected.
    ad_hoc: ad_hoc::AdHocLocks,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("data_dir", &self.inner.shared.config.data_dir).finish_non_exhaustive()
    }
}

/// Runs a request's commit and the bookkeeping after it on a task of its
/// own and waits for it: a caller that goes away (an HTTP client that
/// disconnects) drops only the wait, never a commit without its
/// bookkeeping (a task committed but never scheduled, a cancel never
/// released).
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, EngineError>> + Send + 'static,
) -> Result<T, EngineError> {
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(EngineError::Unavailable("the engine is shutting down".into())),
    }
}

impl Engine {
    /// Opens the store, loads plugins, recovers interrupted tasks (running
    /// → pending, attempt counted) and rebuilds the schedule, then starts
    /// dispatching.
    pub async fn open(config: EngineConfig) -> anyhow::Result<Engine> {
        use anyhow::Context as _;
        let dir = config.data_dir.clone();
        let host = blocking(move || host_name(&dir)).await?;
        let (store, found) = open_store(&config, &host).await?;
        let sandbox_config: SandboxConfig = config.sandbox.clone();
        let sandbox = blocking(move || Sandbox::new(sandbox_config)).await?;
        let metrics = Metrics::new(config.models.as_ref().map(|m| m.metrics()));
        let registry_metrics = metrics.registry_metrics.clone();
        let options = crate::registry::RegistryOptions {
            cache_dir: config.data_dir.join("cache"),
            staging_dir: config.data_dir.join("uploads"),
            compiler: config.compiler.clone(),
        };
        let registry = Registry::open(sandbox.clone(), store.clone(), registry_metrics, options)
            .await
            .context("loading plugins")?
            .with_max_plugins(config.max_plugins);
        let registry = Arc::new(registry);
        let inference = config.models.clone().map(|m| -> Arc<dyn crate::sandbox::InferenceService> { Arc::new(m) });
        let runtime =
            crate::AttemptRuntime::new(config.sandbox.blocking_threads).context("starting the attempt runtime")?;
        let runner = Arc::new(SandboxRunner::new(sandbox.clone(), runtime, registry.clone(), inference));
        let plugins_dir = config.plugins_dir.clone();
        let engine = Self::assemble(
            config,
            store,
            runner,
            Arc::new(metrics),
            Some((registry.clone(), sandbox)),
            Some(found),
            host,
        )
        .await?;
        // Versions no recovered task holds.
        registry.unload_idle();
        if engine.inner.shared.store.serves_together() {
            tokio::spawn(follow_other_hosts(registry.clone(), engine.inner.shared.clone()));
        }
        if let Some(dir) = plugins_dir {
            let watch = crate::registry::watch::start(registry, dir).context("watching the plugins directory")?;
            *lock(&engine.inner.watcher) = Some(watch);
        }
        if let Some(file) = engine.inner.shared.config.settings_file.clone() {
            // Absolute, as the watcher names changed paths.
            let file = std::path::absolute(&file).unwrap_or(file);
            engine.reload_settings(&file).await?;
            let watch =
                settings::watch(Arc::downgrade(&engine.inner), file).context("watching the configuration file")?;
            *lock(&engine.inner.settings_watch) = Some(watch);
        }
        Ok(engine)
    }

    /// Builds the components over `runner`, recovers (from what the
    /// start-up scan `found`, or a scan of its own) and starts
    /// dispatching.
    async fn assemble(
        config: EngineConfig,
        store: Db,
        runner: Arc<dyn Runner>,
        metrics: Arc<Metrics>,
        plugins: Option<(Arc<Registry>, Sandbox)>,
        found: Option<recovery::Found>,
        host: String,
    ) -> Result<Engine, EngineError> {
        let found = match found {
            Some(found) => found,
            None => recovery::Found::scan_db(&store).await?,
        };
        let queues = store.queues().await?;
        let callback_keys = Arc::new(callbacks::CallbackKeys::new(
            store.secret(CALLBACK_SECRET).await?,
            store.secret(CALLBACK_DERIVE_SECRET).await?,
        ));
        let rates = rates::SharedRates::of(&store).map(Arc::new);
        let tenants = Arc::new(tenants::Tenants::load(store.clone(), rates.clone()).await?);
        let shared = Arc::new(Shared::new(config, store, runner, metrics, tenants.clone(), rates, host));
        {
            let mut sched = lock(&shared.sched);
            for (name, queue) in queues {
                shared.queues.known(&name);
                sched.configure(&name, queue);
            }
            for (name, tenant) in tenants.list() {
                sched.configure_tenant(&name, tenant.quotas.max_running);
            }
        }
        let submission = Arc::new(Submission::new(shared.clone()));
        let flows = Arc::new(Flows::new(shared.clone(), submission.clone()));
        let admission = Arc::new(Admission::new(shared.clone(), flows.clone()));
        let endings = Arc::new(Endings::new(shared.clone(), flows.clone(), admission.clone(), callback_keys.clone()));
        let dispatch = Arc::new(Dispatch::new(shared.clone(), submission.clone(), flows.clone(), endings.clone()));
        let admin = Admin::new(shared.clone(), flows.clone(), endings.clone());
        let engine = Engine {
            inner: Arc::new(Inner {
                shared,
                submission,
                flows,
                admission,
                endings,
                dispatch: dispatch.clone(),
                admin,
                plugins,
                callback_keys,
                dispatcher: Mutex::default(),
                sweeper: Mutex::default(),
                heartbeat: Mutex::default(),
                watcher: Mutex::default(),
                settings: settings::FileSettings::default(),
                settings_watch: Mutex::default(),
                followers: logs::Followers::default(),
                ad_hoc: ad_hoc::AdHocLocks::default(),
            }),
        };
        engine.recover(found).await?;
        *lock(&engine.inner.dispatcher) = Some(tokio::spawn(dispatch.run()));
        *lock(&engine.inner.sweeper) = Some(tokio::spawn(retention::run(engine.inner.shared.clone())));
        // Ends when the engine halts.
        tokio::spawn(recent::run(engine.inner.shared.clone()));
        let (stop_beating, stop) = tokio::sync::oneshot::channel();
        let beating = tokio::spawn(hosts::run(engine.inner.shared.clone(), stop));
        *lock(&engine.inner.heartbeat) = Some((beating, stop_beating));
        Ok(engine)
    }

    /// Rebuilds the schedule from what the start-up scan found.
    async fn recover(&self, found: recovery::Found) -> Result<(), EngineError> {
        let shared = &self.inner.shared;
        let now = now_ms();
        let recovery::Found { by_queue, stored, interrupted, mut unfinished } = found;
        for (queue, counts) in &by_queue {
            shared.queues.known(queue);
            for state in TaskState::ALL {
                let n = counts[state as usize];
                if n > 0 {
                    shared.metrics.found(queue, state, n);
                }
            }
        }
        // Serving a PostgreSQL database alone, the scan's count replaces
        // the shared totals (forgetting what they drifted by); serving
        // together, the totals are read within a beat.
        if let Some(pg) = shared.store.postgres().filter(|pg| !pg.together()) {
            pg.store().recount_tenant_bytes(&stored).await.map_err(crate::store::StoreError::from)?;
        }
        shared.tenants.stored.counted(stored);
        // Tasks the host died running: back to pending (their attempt was
        // counted when it started), or failed once out of attempts. Beside
        // other hosts, only those this host ran before it restarted and
        // those no live lease holds (the others are theirs, or their
        // reapers').
        let together = shared.store.postgres().filter(|pg| pg.together());
        let interrupted = match together {
            None => interrupted,
            Some(pg) => {
                let ours =
                    pg.store().running_to_take_back(&shared.host).await.map_err(crate::store::StoreError::from)?;
                interrupted.into_iter().filter(|r| ours.contains(&r.id)).collect()
            }
        };
        let changes = interrupted
            .into_iter()
            .map(|record| shared.store.transition(crate::store::interrupted(&record, "the host stopped")));
        for result in futures::future::join_all(changes).await {
            let record = match result {
                Ok(record) => record,
                // Moved meanwhile by another host (its reaper, say).
                Err(
                    crate::store::StoreError::VersionMismatch { .. }
                    | crate::store::StoreError::IllegalTransition { .. },
                ) if together.is_some() => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            shared.metrics.moved(&record.queue, Some(TaskState::Running), record.state);
            if record.state == TaskState::Pending {
                unfinished.push(record);
            }
        }
        for record in &unfinished {
            shared.runner.hold(&record.plugin, &record.plugin_version);
        }
        // Flow totals and joins; what is left is ready to run.
        let (ready, running_flows) = self.inner.flows.recover(&unfinished).await?;
        for flow in running_flows {
            let (created, pins) = self.inner.flows.finish(flow).await?;
            self.inner.endings.admit(&created, false);
            drop(pins);
        }
        let ends = self.inner.admission.schedule_ready(&ready, now);
        self.inner.endings.end_steps(ends);
        Ok(())
    }

    fn plugin_host(&self) -> Result<&(Arc<Registry>, Sandbox), EngineError> {
        self.inner
            .plugins
            .as_ref()
            .ok_or_else(|| EngineError::Unavailable("this engine runs without a plugin registry".into()))
    }

    fn registry(&self) -> Result<&Arc<Registry>, EngineError> {
        Ok(&self.plugin_host()?.0)
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
        ad_hoc::refuse_reserved(name)?;
        Ok(self.registry()?.add(name, bytes, version, wait).await?)
    }

    /// Uploads a script plugin version: a `language` script whose source
    /// is `source`, run by that language's runner. Otherwise as
    /// [`Engine::add_plugin`]: identical source returns the existing
    /// version.
    pub async fn add_script_plugin(
        &self,
        name: &str,
        language: crate::sandbox::Language,
        source: Vec<u8>,
        version: Option<String>,
        wait: bool,
    ) -> Result<(VersionStatus, bool), EngineError> {
        ad_hoc::refuse_reserved(name)?;
        Ok(self.registry()?.add_script(name, language, source, version, wait).await?)
    }

    /// Starts an upload whose body is still to arrive: checks the name and
    /// version and takes a place in the compile queue, so a full queue is
    /// refused before the body is read. The body is then written to the
    /// upload's staging file ([`crate::registry::Staging::write`]) and the
    /// upload added with [`Engine::add_staged_plugin`].
    pub(crate) async fn begin_plugin_upload(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(crate::registry::QueueSlot, crate::registry::Staging), EngineError> {
        let registry = self.registry()?;
        Registry::check_names(name, version)?;
        ad_hoc::refuse_reserved(name)?;
        self.check_plugin_quotas(name)?;
        let slot = registry.reserve()?;
        Ok((slot, registry.staging().await?))
    }

    /// Adds an upload staged after [`Engine::begin_plugin_upload`]: a
    /// component, or a script in `script`'s language.
    pub(crate) async fn add_staged_plugin(
        &self,
        slot: crate::registry::QueueSlot,
        name: &str,
        staged: crate::registry::Staged,
        version: Option<String>,
        wait: bool,
        script: Option<crate::sandbox::Language>,
    ) -> Result<(VersionStatus, bool), EngineError> {
        let tenant = crate::tenant::tenant_of(name);
        if let Some(max) = self.inner.shared.tenants.quotas(tenant).and_then(|q| q.max_plugin_bytes)
            && staged.size > max
        {
            return Err(tenants::exceeded(
                tenant,
                "max_plugin_bytes",
                format!("the component is {} bytes; the quota is {max}", staged.size),
            ));
        }
        Ok(self.registry()?.add_staged(slot, name, staged, version, wait, script).await?)
    }

    /// Refuses an upload to plugin `name` past its tenant's plugin quotas
    /// (a new name past `max_plugins`, a version past
    /// `max_plugin_versions`).
    fn check_plugin_quotas(&self, name: &str) -> Result<(), EngineError> {
        let tenant = crate::tenant::tenant_of(name);
        let Some(quotas) = self.inner.shared.tenants.quotas(tenant) else { return Ok(()) };
        let names = self.plugins();
        let existing = names.iter().any(|n| n == name);
        if let Some(max) = quotas.max_plugins
            && !existing
        {
            let count =
                names.iter().filter(|n| crate::tenant::tenant_of(n) == tenant && !ad_hoc::is_reserved(n)).count()
                    as u64;
            if count >= u64::from(max) {
                let message = format!("it has {count} plugins; the quota is {max}");
                return Err(tenants::exceeded(tenant, "max_plugins", message));
            }
        }
        if let Some(max) = quotas.max_plugin_versions
            && existing
        {
            let versions = self.plugin_detail(name)?.versions.len() as u64;
            if versions >= u64::from(max) {
                let message = format!(
                    "`{}` has {versions} versions; the quota is {max} (delete one first)",
                    crate::tenant::split(name).1
                );
                return Err(tenants::exceeded(tenant, "max_plugin_versions", message));
            }
        }
        Ok(())
    }

    /// The model registry, if this engine serves models.
    pub fn models(&self) -> Option<&crate::inference::Models> {
        self.inner.shared.config.models.as_ref()
    }

    /// Every plugin name.
    pub fn plugins(&self) -> Vec<String> {
        self.registry().map(|r| r.names()).unwrap_or_default()
    }

    /// One plugin's versions with their state (from memory; no store scan).
    pub fn plugin_detail(&self, name: &str) -> Result<PluginDetail, EngineError> {
        self.registry()?.detail(name).ok_or_else(|| EngineError::UnknownPlugin(format!("unknown plugin `{name}`")))
    }

    /// One plugin's versions with their state, and task counts by version
    /// and state (read through the store's plugin index).
    pub async fn plugin(&self, name: &str) -> Result<(PluginDetail, TaskCounts), EngineError> {
        let detail = self.plugin_detail(name)?;
        let counts = self.inner.shared.store.plugin_task_counts(name).await?;
        Ok((detail, counts))
    }

    /// How a plugin version's attempts ran since the host started.
    pub fn plugin_runs(&self, name: &str, version: &str) -> Option<crate::wire::RunStats> {
        self.inner.shared.history.stats(name, version)
    }

    /// Rolls back (or forward): a plain name now resolves to `version`.
    pub async fn set_latest(&self, name: &str, version: &str) -> Result<(), EngineError> {
        Ok(self.registry()?.set_latest(name, version).await?)
    }

    /// Deletes a version; refused (409) while an unfinished task uses it
    /// or a submission that resolved to it is being committed. Runs to
    /// its end even if the caller goes away.
    pub async fn delete_plugin_version(&self, name: &str, version: &str) -> Result<(), EngineError> {
        let (registry, name, version) = (self.registry()?.clone(), name.to_owned(), version.to_owned());
        detached(async move { Ok(registry.delete(&name, &version).await?) }).await
    }

    /// Sets (or clears, with `None`) a plugin's capability manifest.
    pub async fn set_manifest(&self, name: &str, manifest: Option<Manifest>) -> Result<(), EngineError> {
        Ok(self.registry()?.set_manifest(name, manifest).await?)
    }

    /// Compilations and artifact-cache hits since this engine started.
    pub fn plugin_load_counts(&self) -> (u64, u64) {
        self.registry().map(|r| r.load_counts()).unwrap_or_default()
    }

    /// Unfinished tasks that hold `name@version` (what keeps it loaded).
    pub fn plugin_unfinished(&self, name: &str, version: &str) -> u64 {
        self.registry().map(|r| r.unfinished(name, version)).unwrap_or_default()
    }

    /// Validates, pins the plugin version and durably records a task.
    /// Returns after the commit.
    pub async fn submit(&self, mut task: NewTask) -> Result<Submitted, EngineError> {
        // The submission's span; the task's own spans hang under it.
        let mut span = self.inner.shared.config.traces.start("submit", task.trace);
        span.set_with(|set| {
            set("taskhost.plugin", task.plugin.clone().into());
            set("taskhost.queue", task.queue.clone().unwrap_or_else(|| "default".into()).into());
        });
        task.trace = span.context();
        let submitted = self.submit_in_span(task).await;
        match &submitted {
            Ok(s) => span.set_with(|set| {
                set("taskhost.task.id", s.record.id.to_string().into());
                set("taskhost.task.created", s.created.into());
            }),
            Err(error) => span.fail_with(|| error.to_string()),
        }
        submitted
    }

    async fn submit_in_span(&self, mut task: NewTask) -> Result<Submitted, EngineError> {
        // A key seen before answers with its task and costs no quota.
        let seen = match &task.idempotency_key {
            Some(key) => self.inner.shared.store.task_by_key(key).await?,
            None => None,
        };
        if let Some(id) = seen {
            return Ok(Submitted { record: self.inner.shared.task(id).await?, created: false });
        }
        // An ad-hoc script's own checks come first; nothing is written
        // for a script refused by them.
        if let Some(script) = &task.script {
            self.check_ad_hoc(&task, script)?;
        }
        let tenants = &self.inner.shared.tenants;
        let tenant = crate::tenant::tenant_of(&task.plugin).to_owned();
        tenants.take_submission(&tenant).await?;
        let metrics = &self.inner.shared.metrics;
        let quota = tenants.reserve_unfinished(&tenant, || metrics.unfinished_of(&tenant), 1)?;
        // An ad-hoc script becomes a version first; the guard keeps it
        // until the submission below has pinned it.
        let ad_hoc = match task.script.take() {
            Some(script) => Some(self.ad_hoc(&mut task, script).await?),
            None => None,
        };
        let (record, input, pin) = self.inner.submission.prepare(task)?;
        drop(ad_hoc);
        tenants.check_stored(&tenant, input.len() as u64)?;
        let engine = self.clone();
        detached(async move {
            // Counted as pending until admitted (or refused).
            let _quota = quota;
            let inner = &engine.inner;
            // A task nothing waits before is claimed in this commit.
            let (id, claim) = (record.id, inner.dispatch.claim_at_submit(&record));
            // Kept for the attempt where a shared store's claim would have
            // carried it too, saving a read.
            let kept_input = (claim.is_some()
                && inner.shared.store.queues_tasks()
                && input.len() <= crate::store::postgres::INLINE_INPUT)
                .then(|| input.clone());
            let submitted = match &claim {
                Some(_) => inner.shared.store.submit_started(record, input, inner.shared.config.store_lease).await,
                None => inner.shared.store.submit(record, input).await.map(|s| (s, None)),
            };
            match (claim, &submitted) {
                (claim, Ok((s, lease))) if s.created => {
                    inner.endings.admit(std::slice::from_ref(&s.record), false);
                    match claim {
                        Some(claim) if s.record.state == crate::store::TaskState::Running => {
                            inner.dispatch.run_claimed(claim, s.record.clone(), lease.clone(), kept_input);
                        }
                        Some(claim) => inner.dispatch.unclaim(claim, id),
                        None => {}
                    }
                }
                (Some(claim), _) => inner.dispatch.unclaim(claim, id),
                (None, _) => {}
            }
            let submitted = submitted.map(|(s, _)| s);
            // The task holds its version now (or was never created).
            drop(pin);
            Ok(submitted?)
        })
        .await
    }

    /// Submits many tasks; each is answered on its own.
    pub async fn submit_batch(&self, tasks: Vec<NewTask>) -> Vec<Result<Submitted, EngineError>> {
        futures::future::join_all(tasks.into_iter().map(|t| self.submit(t))).await
    }

    /// Where spans go (off unless configured).
    pub fn traces(&self) -> &crate::trace::Traces {
        &self.inner.shared.config.traces
    }

    /// One task's record.
    pub async fn get(&self, id: Uuid) -> Result<TaskRecord, EngineError> {
        self.inner.shared.task(id).await
    }

    /// A task's input bytes as stored at submission (for a task whose
    /// input comes from a URL, the URL; for a declared step fed by other
    /// tasks' outputs, nothing).
    pub async fn input(&self, id: Uuid) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.inner.shared.store.input_whole(id).await?)
    }

    /// A task's output, once it completed.
    pub async fn output(&self, id: Uuid) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.inner.shared.store.output_whole(id).await?)
    }

    /// One attempt's lines of task `record` (its latest when `attempt` is
    /// `None`): live while it runs, else as recorded with its outcome.
    pub fn task_logs(&self, record: &TaskRecord, attempt: Option<u32>) -> Result<crate::wire::TaskLogs, EngineError> {
        logs::task_logs(&self.inner.shared, record, attempt)
    }

    /// The last stderr lines of the attempt that left `record`'s failure
    /// (empty without one): what `GET /v1/tasks/{id}` shows with it.
    pub async fn stderr_tail(&self, record: &TaskRecord) -> Result<Vec<String>, EngineError> {
        logs::stderr_tail(&self.inner.shared, record).await
    }

    /// Follows task `record`'s lines from attempt `attempt` (its latest
    /// when `None`) until it ends: see [`crate::wire::LogEvent`]. At most
    /// [`MAX_FOLLOWERS`] follow at once ([`MAX_PER_TENANT`] per tenant);
    /// one more is refused ([`EngineError::Overloaded`]).
    pub fn follow_logs(
        &self,
        record: &TaskRecord,
        attempt: Option<u32>,
    ) -> Result<tokio::sync::mpsc::Receiver<crate::wire::LogEvent>, EngineError> {
        logs::follow(&self.inner.shared, &self.inner.followers, record, attempt)
    }

    /// Subscribes `tenant` to every committed task transition after event
    /// `seq` of host run `run` (only what comes next when `None`), holding
    /// a place (of [`MAX_SUBSCRIBERS`], [`MAX_PER_TENANT`] per tenant)
    /// until it drops; one more is refused ([`EngineError::Overloaded`]).
    pub fn subscribe_events(
        &self,
        tenant: &str,
        resume: Option<(u64, u64)>,
    ) -> Result<(crate::store::Subscription, Place), EngineError> {
        let permit = self.inner.followers.subscriber(tenant)?;
        Ok((self.inner.shared.store.subscribe(resume), permit))
    }

    /// Lists tasks in submission order; returns the page and the cursor of
    /// the next one.
    pub async fn list(&self, filter: &ListFilter) -> Result<(Vec<TaskRecord>, Option<Uuid>), EngineError> {
        let page = self.inner.admin.list(filter).await?;
        Ok((page.tasks, page.next))
    }

    /// A page of tasks matching `filter`, oldest or newest first, with how
    /// many more match when `count_more` asks.
    pub async fn list_page(&self, filter: &ListFilter) -> Result<TaskList, EngineError> {
        self.inner.admin.list(filter).await
    }

    /// Cancels a task: at once when pending or retrying; a running task is
    /// interrupted within an epoch tick and this returns once it ended.
    pub async fn cancel(&self, id: Uuid) -> Result<TaskRecord, EngineError> {
        let engine = self.clone();
        detached(async move { engine.inner.admin.cancel(id).await }).await
    }

    /// Re-submits a failed (dead-letter) task: back to pending with its
    /// attempts reset; its history is kept.
    pub async fn resubmit(&self, id: Uuid) -> Result<TaskRecord, EngineError> {
        self.resubmit_on(id, None).await
    }

    /// Like [`resubmit`](Self::resubmit), on plugin version `version`
    /// instead of the one the task pinned (`None`: that one).
    pub async fn resubmit_on(&self, id: Uuid, version: Option<String>) -> Result<TaskRecord, EngineError> {
        // A retried task is unfinished again: it counts as a submission.
        let record = self.get(id).await?;
        let tenant = crate::tenant::tenant_of(&record.plugin).to_owned();
        if ad_hoc::is_reserved(&record.plugin) {
            ad_hoc::check_queue(self.inner.shared.tenants.quotas(&tenant).as_ref(), &record.queue)?;
        }
        let tenants = &self.inner.shared.tenants;
        tenants.take_submission(&tenant).await?;
        let metrics = &self.inner.shared.metrics;
        let quota = tenants.reserve_unfinished(&tenant, || metrics.unfinished_of(&tenant), 1)?;
        let engine = self.clone();
        detached(async move {
            let _quota = quota;
            engine.inner.admin.resubmit(id, version).await
        })
        .await
    }

    /// Sets a queue's concurrency limit and weight.
    pub async fn set_queue(&self, name: &str, config: QueueConfig) -> Result<(), EngineError> {
        self.inner.admin.set_queue(name, config).await
    }

    /// Every known queue.
    pub fn queues(&self) -> Vec<QueueInfo> {
        self.inner.admin.queues()
    }

    /// The hosts serving the store, each with what it says of itself and
    /// its heartbeat's age (`GET /v1/hosts`); on redb, this host alone.
    pub async fn hosts(&self) -> Result<crate::wire::HostList, EngineError> {
        Ok(hosts::list(&self.inner.shared).await?)
    }

    /// The recent throughput and latency: running totals sampled every 2
    /// seconds over the last 10 minutes, host-wide; and the execution
    /// slots busy now.
    pub fn recent_stats(&self) -> crate::wire::RecentStats {
        let every = u64::try_from(recent::EVERY.as_millis()).unwrap_or(u64::MAX);
        let gate = &self.inner.shared.gate;
        crate::wire::RecentStats::new(
            every,
            self.inner.shared.metrics.recent.samples(),
            gate.slot_count() as u64,
            gate.busy_slots() as u64,
        )
    }

    /// The Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        let depths = lock(&self.inner.shared.sched).depths();
        self.inner.shared.metrics.render(&depths)
    }

    /// Tasks per state (all queues).
    pub fn state_counts(&self) -> HashMap<TaskState, i64> {
        self.inner.shared.metrics.state_totals()
    }

    /// The key tenant `tenant`'s completion callbacks are signed with
    /// (see docs/security.md "Signed callbacks").
    pub fn callback_secret(&self, tenant: &str) -> Vec<u8> {
        self.inner.callback_keys.of(tenant)
    }

    /// Whether `name` is a tenant.
    pub fn tenant_exists(&self, name: &str) -> bool {
        self.inner.shared.tenants.exists(name)
    }

    /// Every tenant, the default one first.
    pub fn tenants(&self) -> Vec<(String, crate::store::TenantRecord)> {
        self.inner.shared.tenants.list()
    }

    /// Tenant `name` and what it uses now.
    pub fn tenant(&self, name: &str) -> Result<(crate::store::TenantRecord, crate::wire::Usage), EngineError> {
        let record = self.inner.shared.tenants.get(name).ok_or_else(|| EngineError::UnknownTenant(name.to_owned()))?;
        let depth = lock(&self.inner.shared.sched).tenant_depth(name);
        let plugins = self.plugins().iter().filter(|p| crate::tenant::tenant_of(p) == name).count();
        let usage = crate::wire::Usage {
            stored_bytes: self.inner.shared.tenants.stored_of(name),
            unfinished: self.inner.shared.metrics.unfinished_of(name),
            ready: depth.ready as u64,
            delayed: depth.delayed as u64,
            running: depth.running as u64,
            plugins: plugins as u64,
        };
        Ok((record, usage))
    }

    /// The configuration file's state: its path, the settings it applied
    /// and when, and the last reload's error.
    pub fn config_view(&self) -> crate::wire::ConfigView {
        let state = self.inner.settings.state();
        let tenants = self
            .tenants()
            .into_iter()
            .map(|(name, record)| {
                let from_file = state.applied.tenants.contains_key(&name);
                crate::wire::ConfigTenant::new(&name, &record.quotas, from_file)
            })
            .collect();
        let queues = self
            .queues()
            .into_iter()
            .map(|q| crate::wire::ConfigQueue::new(&q.name, &q.config, state.applied.queues.contains_key(&q.name)))
            .collect();
        let retry = crate::wire::ConfigRetry::new(&self.inner.shared.retry_policy(), state.applied.retry.is_some());
        let mut view = crate::wire::ConfigView::new(
            state.path.as_deref(),
            state.applied_at_ms,
            state.error.clone(),
            tenants,
            queues,
            retry,
        );
        let from_file = state.applied.limits.is_some() || state.applied.ceilings.is_some();
        view.limits = self
            .inner
            .shared
            .runner
            .host_limits()
            .map(|host| crate::wire::ConfigLimits::new(&host.defaults, &host.ceilings, from_file));
        let allowed = self.inner.shared.config.egress.allowed();
        view.egress = crate::wire::ConfigEgress::new(&allowed, state.applied.egress.is_some());
        view
    }

    /// Refuses an API change to a tenant or queue the configuration file
    /// sets (the file wins; edit it there).
    pub fn check_not_file_managed(&self, tenant: Option<&str>, queue: Option<&str>) -> Result<(), EngineError> {
        let file = match (tenant, queue) {
            (Some(name), _) => self.inner.settings.sets_tenant(name).map(|f| (format!("tenant `{name}`"), f)),
            (None, Some(key)) => self.inner.settings.sets_queue(key).map(|f| (format!("queue `{key}`"), f)),
            (None, None) => None,
        };
        match file {
            Some((what, file)) => Err(EngineError::Conflict(format!(
                "{what} is set in the configuration file {}; change it there (the file wins)",
                file.display()
            ))),
            None => Ok(()),
        }
    }

    /// Makes tenant `name` or sets its quotas (by the token named `by`);
    /// whether it was made.
    pub async fn put_tenant(
        &self,
        name: &str,
        quotas: crate::store::TenantQuotas,
        by: &str,
    ) -> Result<bool, EngineError> {
        let max_running = quotas.max_running;
        let created = self.inner.shared.tenants.put(name, quotas, by).await?;
        lock(&self.inner.shared.sched).configure_tenant(name, max_running);
        // A raised cap may let tasks start.
        self.inner.shared.wake.notify_one();
        Ok(created)
    }

    /// How task `id`'s completion callback ended, if it has.
    pub async fn callback_outcome(&self, id: Uuid) -> Result<Option<crate::store::CallbackOutcome>, EngineError> {
        Ok(self.inner.shared.store.callback_outcome(id).await?)
    }

    /// The engine's store (a cheap handle), for what keeps its own records
    /// beside the engine's (tokens, the audit log).
    pub fn store(&self) -> Db {
        self.inner.shared.store.clone()
    }

    /// Why the store cannot write now (a full disk), while it cannot.
    pub fn store_fault(&self) -> Option<crate::store::WriteFault> {
        self.inner.shared.store.write_fault()
    }

    /// Waits until the task has ended, or `timeout` passed.
    pub async fn wait(&self, id: Uuid, timeout: Duration) -> Result<TaskRecord, EngineError> {
        self.inner.admin.wait(id, timeout).await
    }

    /// Starts a declared flow: every step of its first iteration is
    /// committed with the flow record in one transaction.
    pub async fn submit_flow(&self, mut spec: FlowSpec) -> Result<FlowView, EngineError> {
        // The submission's span; every step's spans hang under it.
        let mut span = self.inner.shared.config.traces.start("submit flow", spec.trace);
        spec.trace = span.context();
        let submitted = self.submit_flow_in_span(spec).await;
        match &submitted {
            Ok(view) => span.set_with(|set| set("taskhost.flow.id", view.flow.id.to_string().into())),
            Err(error) => span.fail_with(|| error.to_string()),
        }
        submitted
    }

    async fn submit_flow_in_span(&self, spec: FlowSpec) -> Result<FlowView, EngineError> {
        // Its tenant is its steps' (every key of a spec is one tenant's).
        let tenant = first_plugin(&spec.steps).map(|p| crate::tenant::tenant_of(p).to_owned());
        let tenant = tenant.unwrap_or_else(|| crate::tenant::DEFAULT.to_owned());
        let tenants = &self.inner.shared.tenants;
        tenants.take_submission(&tenant).await?;
        // A flow's tasks' inputs are counted as they are admitted: a
        // tenant already past its stored bytes starts no flow.
        tenants.check_stored(&tenant, 0)?;
        // Its first iteration's tasks count as unfinished (a plan that
        // does not fit is refused below, with its reason).
        let planned =
            spec.plan(self.inner.flows.limits_for(&tenant).tasks_per_flow).map_or(1, |plan| plan.len() as u64);
        let metrics = &self.inner.shared.metrics;
        let quota = tenants.reserve_unfinished(&tenant, || metrics.unfinished_of(&tenant), planned)?;
        let engine = self.clone();
        let id = detached(async move {
            let _quota = quota;
            let (id, (created, pins)) = engine.inner.flows.submit(spec).await?;
            engine.inner.endings.admit(&created, false);
            drop(pins);
            Ok(id)
        })
        .await?;
        self.flow(id).await
    }

    /// Flows newest first, from before `before`: at most `limit` (1-100)
    /// whose first task's plugin `owns` takes (a tenant's), in `state` when
    /// given. One call reads at most [`FLOWS_SCANNED`] flows; the id to go
    /// on from is given when more may follow (a page may be short).
    pub async fn flows_page(
        &self,
        before: Option<Uuid>,
        limit: usize,
        state: Option<crate::store::FlowState>,
        owns: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<crate::store::FlowsPage, EngineError> {
        let keep = move |flow: &crate::store::FlowRecord, first: Option<&TaskRecord>| {
            state.is_none_or(|s| flow.state == s) && first.is_some_and(|t| owns(&t.plugin))
        };
        Ok(self.inner.shared.store.flows_newest(before, limit.clamp(1, 100), FLOWS_SCANNED, keep).await?)
    }

    /// A flow with its tasks. Any task id that roots a flow works, even one
    /// that never submitted children.
    pub async fn flow(&self, id: Uuid) -> Result<FlowView, EngineError> {
        self.inner.flows.view(id).await
    }

    /// Cancels a flow: no further task or iteration starts, and every
    /// unfinished task is cancelled (running ones interrupted).
    pub async fn cancel_flow(&self, id: Uuid) -> Result<FlowView, EngineError> {
        let engine = self.clone();
        detached(async move { engine.inner.admin.cancel_flow(id).await }).await
    }

    /// Waits until a flow ends or `timeout` passes; returns its view.
    pub async fn wait_flow(&self, id: Uuid, timeout: Duration) -> Result<FlowView, EngineError> {
        self.inner.admin.wait_flow(id, timeout).await
    }

    /// Stops dispatching new tasks (running ones finish).
    pub fn shutdown(&self) {
        self.inner.shared.halt();
    }

    /// Stops dispatching and watching, waits for running tasks to end and
    /// releases the store once the last handle is dropped (a reopen then
    /// succeeds).
    pub async fn close(self) {
        self.shutdown();
        // Outcomes a full disk holds are answered now, not waited for.
        self.inner.shared.store.stop_retrying();
        let watcher = lock(&self.inner.watcher).take();
        if let Some(crate::registry::watch::DirWatch { watch, mut loader }) = watcher {
            drop(watch);
            // The loader ends once the watcher lets go of its channel, unless
            // it waits on a compile: that wait is dropped past a bound (the
            // compile itself ends with the process).
            if tokio::time::timeout(WATCH_STOP_GRACE, &mut loader).await.is_err() {
                loader.abort();
            }
        }
        let dispatcher = lock(&self.inner.dispatcher).take();
        if let Some(handle) = dispatcher {
            let _ = handle.await;
        }
        let sweeper = lock(&self.inner.sweeper).take();
        if let Some(handle) = sweeper {
            let _ = handle.await;
        }
        let shared = &self.inner.shared;
        shared.at_rest().await;
        // Listed while its tasks drained; now it leaves the hosts' list
        // (bounded: `hosts::LEAVE_GRACE`, and a write in flight is given up).
        let heartbeat = lock(&self.inner.heartbeat).take();
        if let Some((mut beating, stop)) = heartbeat {
            let _ = stop.send(());
            if tokio::time::timeout(hosts::LEAVE_GRACE * 2, &mut beating).await.is_err() {
                beating.abort();
            }
        }
    }

    /// Deletes the ended work past its retention now (the sweep that runs
    /// every `retention_interval`); returns how many tasks it deleted.
    pub async fn expire(&self) -> Result<u64, EngineError> {
        retention::sweep(&self.inner.shared).await
    }

    /// The sandbox tasks run in.
    ///
    /// # Panics
    /// In an engine built on a test runner (never through [`Engine::open`]).
    pub fn sandbox(&self) -> &Sandbox {
        &self.plugin_host().expect("an engine opened with Engine::open has a sandbox").1
    }
}

/// Beside other hosts on one database: takes in the plugin versions,
/// rollbacks, manifests and deletions, and the tenants, made on them,
/// every heartbeat, until the engine halts.
async fn follow_other_hosts(registry: Arc<Registry>, shared: Arc<Shared>) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = shared.halted() => return,
            () = tokio::time::sleep(hosts::EVERY) => {}
        }
        let read = match registry.sync_from_store().await {
            Ok(_) => shared.tenants.reload().await,
            Err(e) => Err(EngineError::from(e)),
        };
        match read {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("reading the plugins and tenants other hosts changed works again");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "reading the plugins and tenants other hosts changed failed; trying again");
            }
            Err(_) => {}
        }
    }
}

/// Connections this host opens to a PostgreSQL store at most.
const PG_CONNECTIONS: u32 = 16;

/// Workers of a PostgreSQL store's group committer (each holds a
/// connection while it commits).
const PG_COMMIT_WORKERS: usize = 4;

/// Opens the store: the PostgreSQL database `config.store_url` names,
/// else the redb file in the data directory. The store and what the
/// start-up scan found.
async fn open_store(config: &EngineConfig, host: &str) -> anyhow::Result<(Db, recovery::Found)> {
    use anyhow::Context as _;
    let Some(url) = config.store_url.as_ref().map(StoreUrl::as_str) else {
        let (store, found) = open_file_store(config).await?;
        return Ok((Db::Redb(store), found));
    };
    let host = host.to_owned();
    let serving = match (config.many_hosts, config.standby.as_ref()) {
        (false, standby) => crate::store::Serving::Alone(standby),
        (true, None) => crate::store::Serving::Together,
        (true, Some(_)) => anyhow::bail!("a host serving a database together with others does not stand by"),
    };
    // A host serving together names itself by its data directory's host
    // id, and takes back its own leases at start: one process a directory.
    let dir_lock = match serving {
        crate::store::Serving::Together => {
            let dir = config.data_dir.clone();
            Some(blocking(move || lock_data_dir(&dir)).await?)
        }
        crate::store::Serving::Alone(_) => None,
    };
    let store = crate::store::postgres::PgStore::connect(url, PG_CONNECTIONS).await?;
    let pg = crate::store::PgDb::open(store, host, PG_COMMIT_WORKERS, config.store_lease, serving).await?;
    let db = Db::Postgres(Arc::new(pg.with_dir_lock(dir_lock)));
    let found = recovery::Found::scan_db(&db).await.context("reading the PostgreSQL store's tasks")?;
    Ok((db, found))
}

/// The file in the data directory that names this host to a shared store.
const HOST_FILE: &str = "host-id";

/// The file a host serving a database together with others locks in its
/// data directory while it runs.
const HOST_LOCK: &str = "host.lock";

/// Locks the data directory's [`HOST_LOCK`] (made if missing): refused
/// while another process holds it.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    let path = dir.join(HOST_LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "the data directory {} is in use by another taskhost host (its host id names one host to the \
             database): give each host a data directory of its own",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("locking {}", path.display())))
        }
    }
}

/// This host's name in a shared store (its artifact hashes are kept under
/// it): made once, at random, in the data directory (made if missing,
/// its owner's alone).
fn host_name(dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    let path = dir.join(HOST_FILE);
    match std::fs::read_to_string(&path) {
        Ok(name) if Uuid::parse_str(name.trim()).is_ok() => Ok(name.trim().to_owned()),
        Ok(_) => anyhow::bail!("{} does not hold a host id (a UUID); remove it to make a new one", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Whole or not at all: written beside it, then renamed.
            let name = Uuid::now_v7().to_string();
            let partial = dir.join(format!("{HOST_FILE}.partial"));
            std::fs::write(&partial, format!("{name}\n")).with_context(|| format!("writing {}", partial.display()))?;
            std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
            Ok(name)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

/// Opens (creating, migrating) the redb store off the async workers, and
/// scans it beside its integrity check: the store and what the scan found.
async fn open_file_store(config: &EngineConfig) -> anyhow::Result<(Store, recovery::Found)> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, group_commit) = (config.data_dir.clone(), config.group_commit);
    let path = dir.join(crate::store::FILE_NAME);
    let store = blocking(move || -> anyhow::Result<Store> {
        use std::os::unix::fs::DirBuilderExt as _;
        // The store holds every task's data, the token hashes and the
        // callback key: a new directory and file are the owner's alone.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
        let path = dir.join(crate::store::FILE_NAME);
        Store::open_checking(&path, group_commit).map_err(|e: StoreError| match e {
            // These name the file and say what to do.
            StoreError::Damaged { .. } | StoreError::InUse { .. } => anyhow::anyhow!(e),
            e => anyhow::anyhow!(e).context(format!("opening {}", path.display())),
        })
    })
    .await?;
    // The recovery scan reads while the file's integrity check runs;
    // nothing else reads it, and nothing changes it, before the check
    // passed.
    let found = recovery::Found::scan_while_checking(&store).await.map_err(|e| match e {
        StoreError::Damaged { .. } => anyhow::anyhow!(e),
        e => anyhow::anyhow!(e).context(format!("reading {}", path.display())),
    })?;
    let mode = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o700))
            .with_context(|| format!("making {} readable by its owner only", path.display()))?;
    }
    Ok((store, found))
}
