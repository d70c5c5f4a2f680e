//! The sandbox: one wasmtime engine (pooling allocator, epoch interruption,
//! optional fuel) and the logic that runs one task in a fresh `Store` under
//! its limits and classifies what happened. The sandbox never touches the
//! task store; it takes a request and returns a report.

mod budget;
mod capture;
mod config;
mod host;
mod inference;
mod limiter;
mod outcome;
mod plugin;
mod runtime;
mod script;
mod services;
mod state;
mod ticker;
mod transcript;
mod virtual_root;

pub use budget::{BudgetExceeded, HostBudget};
pub use config::{Ceilings, Limits, SandboxConfig};
pub use inference::{Caller, InferenceError, InferenceService, ModelInfo, RunResult, Tensor, TensorSpec, TensorType};
pub use outcome::{FailureClass, LogLevel, LogRecord, TaskFailure, TaskReport};
pub(crate) use plugin::check_header;
pub use plugin::{LoadError, Plugin};
pub use runtime::AttemptRuntime;
pub use script::{Language, MAX_SCRIPT_BYTES, RunnerId, Script, ScriptError};
pub use services::{ChildTask, ContextError, HostFailure, QueueError, Served, TaskServices, TaskStatus, TaskView};
pub use transcript::{AttemptLog, DEFAULT_KEEP, Dropped, LogLine, MAX_LINE, Stream, Transcript};

use crate::bindings::{Task, TaskError, TaskPre, WitTaskInfo};
use anyhow::Context as _;
use plugin::PluginInner;
use state::{Interrupted, TaskState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};

/// Bytes of memory, table and stack a pool slot keeps resident between
/// tasks (reset in place rather than decommitted).
const KEEP_RESIDENT: usize = 2 << 20;

/// Longest plugin error message kept in a record.
const MAX_ERROR_MESSAGE: usize = 64 << 10;

/// Who a task is, as the plugin sees it through `runtime.task-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMeta {
    /// Task id.
    pub id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Queue name.
    pub queue: String,
    /// Priority, 0-9 (orders the task's inference calls).
    pub priority: u8,
}

impl Default for TaskMeta {
    fn default() -> Self {
        Self { id: "local".into(), attempt: 1, queue: "default".into(), priority: 0 }
    }
}

/// What an operator granted a plugin beyond the empty default: preopened
/// directories and outbound addresses. Plugins can never grant themselves
/// anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Host directories the guest sees.
    pub dirs: Vec<DirGrant>,
    /// Addresses the guest may connect or send to (TCP and UDP).
    pub connect: Vec<std::net::SocketAddr>,
    /// Models the guest may call through `inference`, beyond those whose
    /// own settings grant the plugin.
    pub models: Vec<String>,
}

/// One preopened directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// Directory on the host.
    pub host: std::path::PathBuf,
    /// Path the guest opens it by, e.g. `/data`.
    pub guest: String,
    /// Whether the guest may create, change and delete files in it.
    pub writable: bool,
}

/// A request to run one task.
#[derive(Debug, Clone, Default)]
pub struct TaskRequest {
    /// Input bytes handed to `run`.
    pub input: Vec<u8>,
    /// Identity reported to the plugin.
    pub meta: TaskMeta,
    /// Limits; `None` means the sandbox's default limits.
    pub limits: Option<Limits>,
    /// Cancels the task while it runs.
    pub cancel: Option<CancelToken>,
    /// Directories and network the operator granted this plugin.
    pub grants: Grants,
    /// Engine services behind the `queue` and `context` imports; `None`
    /// outside the engine (those calls then say so).
    pub services: Option<Arc<dyn TaskServices>>,
    /// Models behind the `inference` import; `None` when this host serves
    /// none (calls then say so).
    pub inference: Option<Arc<dyn InferenceService>>,
    /// The attempt's host budget, shared with `services`; `None` makes a
    /// fresh one of `limits.host_bytes`.
    pub budget: Option<Arc<HostBudget>>,
    /// Where the guest's log lines, stdout and stderr are also written as
    /// they come (for a server that keeps and shows them).
    pub transcript: Option<Transcript>,
    /// The span the attempt's instantiation and host calls hang under
    /// (none outside a trace).
    pub trace: crate::trace::Scope,
    /// The script, for a task of a script runner.
    pub script: Option<Arc<Script>>,
}

/// Cancels a running task: the guest is stopped at its next epoch tick, or
/// at once if it is waiting in a host call. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    inner: Arc<CancelInner>,
}

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    notify: tokio::sync::Notify,
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the task(s) holding this token.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once [`cancel`](Self::cancel) is called.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Owns the wasmtime engine and linker; loads plugins and runs tasks.
/// Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<SandboxInner>,
}

struct SandboxInner {
    engine: Engine,
    linker: Linker<TaskState>,
    config: SandboxConfig,
    _ticker: ticker::Ticker,
    /// The empty directory behind each guest's `/`.
    empty_root: Option<Arc<std::fs::File>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Builds the engine, the linker (WASI p2 without ambient authority, plus
    /// the taskhost interfaces) and starts the epoch ticker.
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config(&config)).map_err(wasm_err).context("creating the wasmtime engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasm_err).context("linking WASI")?;
        virtual_root::add_to_linker(&mut linker).map_err(wasm_err).context("linking the guest's `/`")?;
        Task::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(wasm_err)
            .context("linking the taskhost interfaces")?;
        let ticker = ticker::Ticker::start(engine.clone(), config.epoch_tick).context("starting the epoch ticker")?;
        // Without a usable temporary directory, guests still run: a path
        // outside their grants then reads as missing, not refused.
        let empty_root = virtual_root::empty_root()
            .inspect_err(|error| {
                tracing::warn!(%error, "no empty directory for guests' `/`: paths outside grants will read as missing")
            })
            .ok();
        Ok(Self { inner: Arc::new(SandboxInner { engine, linker, config, _ticker: ticker, empty_root }) })
    }

    /// The configuration this sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Compiles and links a component, checking that it implements world
    /// `task` and imports nothing this host lacks. CPU-bound: call it from
    /// `spawn_blocking` in async code.
    pub fn load(&self, name: &str, version: &str, bytes: &[u8]) -> Result<Plugin, LoadError> {
        let started = Instant::now();
        let component = plugin::compile(&self.inner.engine, bytes)?;
        self.link(name, version, component, bytes.len(), started)
    }

    /// Loads a component from an artifact that [`Plugin::serialize`] wrote.
    ///
    /// # Safety
    /// The bytes are trusted as native code: pass only artifacts this host
    /// wrote itself and has verified unchanged since (see
    /// `wasmtime::component::Component::deserialize`).
    pub unsafe fn load_serialized(
        &self,
        name: &str,
        version: &str,
        artifact: &[u8],
        size: usize,
    ) -> Result<Plugin, LoadError> {
        let started = Instant::now();
        // SAFETY: the caller guarantees the artifact came from this host.
        let component = unsafe { wasmtime::component::Component::deserialize(&self.inner.engine, artifact) }
            .map_err(|e| LoadError::Compile(format!("cached artifact rejected: {e:#}")))?;
        self.link(name, version, component, size, started)
    }

    /// Loads a component from an artifact file that [`Plugin::serialize`]
    /// wrote, mapping the file rather than reading it, so only the code a
    /// task runs is paged in.
    ///
    /// # Safety
    /// As for [`Sandbox::load_serialized`]; and the file must not change
    /// while the plugin is loaded (replace it by renaming a new file over
    /// it, never by writing into it).
    pub unsafe fn load_serialized_file(
        &self,
        name: &str,
        version: &str,
        path: &std::path::Path,
        size: usize,
    ) -> Result<Plugin, LoadError> {
        let started = Instant::now();
        // SAFETY: the caller guarantees the artifact came from this host
        // and stays unchanged.
        let component = unsafe { wasmtime::component::Component::deserialize_file(&self.inner.engine, path) }
            .map_err(|e| LoadError::Compile(format!("cached artifact rejected: {e:#}")))?;
        self.link(name, version, component, size, started)
    }

    /// Identifies the engine configuration: compiled artifacts are only
    /// valid for an engine with the same fingerprint.
    pub fn fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.inner.engine.precompile_compatibility_hash().hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    fn link(
        &self,
        name: &str,
        version: &str,
        component: wasmtime::component::Component,
        size: usize,
        started: Instant,
    ) -> Result<Plugin, LoadError> {
        let pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            let mut message = format!("{e:#}");
            if message.contains("wasi:http/") {
                message.push_str(
                    " (taskhost provides no `wasi:http`: a plugin reaches the network only through `wasi:sockets`, \
                     to the addresses its manifest grants; see the `[network]` section of a manifest)",
                );
            }
            LoadError::MissingImport(message)
        })?;
        let pre = TaskPre::new(pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let reaches_files = component
            .component_type()
            .imports(&self.inner.engine)
            .any(|(name, _)| name.starts_with("wasi:filesystem/preopens@"));
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                name: name.to_owned(),
                version: version.to_owned(),
                pre,
                reaches_files,
                compile_time: started.elapsed(),
                size,
                script: None,
            }),
        })
    }

    /// Checks a task's limits against what this sandbox can grant.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), String> {
        let max = self.inner.config.max_memory_per_instance;
        if limits.memory_bytes > max {
            return Err(format!(
                "memory limit {} exceeds this host's per-task maximum of {}",
                crate::units::format_size(limits.memory_bytes),
                crate::units::format_size(max)
            ));
        }
        if limits.timeout.is_zero() {
            return Err("timeout must be greater than zero".into());
        }
        Ok(())
    }

    /// Runs one task in a fresh store. Never panics or errors because of
    /// the guest: every failure is classified in the report.
    pub async fn run(&self, plugin: &Plugin, request: TaskRequest) -> TaskReport {
        self.run_with(plugin, request, Instantiate::Pre).await
    }

    /// Like [`run`](Self::run) but links the component from scratch instead
    /// of using the cached `InstancePre`. Only for benchmarks.
    #[doc(hidden)]
    pub async fn run_relinking(&self, plugin: &Plugin, request: TaskRequest) -> TaskReport {
        self.run_with(plugin, request, Instantiate::Relink).await
    }

    /// Instantiates `count` tasks of `plugin`, keeps them all alive while
    /// `while_held` runs (given how many instantiated), then drops them.
    /// Only for the memory benchmark.
    #[doc(hidden)]
    pub async fn hold_instances<R>(&self, plugin: &Plugin, count: usize, while_held: impl FnOnce(usize) -> R) -> R {
        self.hold_ran_instances(plugin, count, None, while_held).await
    }

    /// Like [`Sandbox::hold_instances`], but each instance first runs
    /// `run` (its input and script), so what a task touches counts. Only
    /// for the memory benchmark.
    #[doc(hidden)]
    pub async fn hold_ran_instances<R>(
        &self,
        plugin: &Plugin,
        count: usize,
        run: Option<(&[u8], Option<Arc<Script>>)>,
        while_held: impl FnOnce(usize) -> R,
    ) -> R {
        let limits = self.inner.config.default_limits.clone();
        let mut stores = Vec::with_capacity(count);
        for i in 0..count {
            let meta = TaskMeta { id: format!("hold-{i}"), ..TaskMeta::default() };
            let attached = Attached { script: run.as_ref().and_then(|(_, s)| s.clone()), ..Attached::default() };
            let Ok(mut store) = self.new_store(plugin, &meta, &limits, &Grants::default(), None, attached) else {
                continue;
            };
            let Ok(task) = plugin.inner.pre.instantiate_async(&mut store).await else { continue };
            if let Some((input, _)) = run
                && !matches!(task.call_run(&mut store, input).await, Ok(Ok(_)))
            {
                continue;
            }
            stores.push(store);
        }
        while_held(stores.len())
    }

    fn new_store(
        &self,
        plugin: &Plugin,
        meta: &TaskMeta,
        limits: &Limits,
        grants: &Grants,
        cancel: Option<CancelToken>,
        attached: Attached,
    ) -> Result<Store<TaskState>, String> {
        let info = WitTaskInfo {
            id: meta.id.clone(),
            attempt: meta.attempt,
            queue: meta.queue.clone(),
            plugin: plugin.inner.name.clone(),
            version: plugin.inner.version.clone(),
        };
        self.store_for(info, meta.priority, limits, grants, cancel, attached, plugin.inner.reaches_files)
    }

    /// A store for one instance: its state, memory limiter, fuel, and the
    /// epoch deadline that ends it at its timeout or cancellation.
    /// `reaches_files`: whether the guest imports the filesystem's
    /// preopens (only then is the empty root behind its `/` opened).
    #[allow(clippy::too_many_arguments)]
    fn store_for(
        &self,
        info: WitTaskInfo,
        priority: u8,
        limits: &Limits,
        grants: &Grants,
        cancel: Option<CancelToken>,
        attached: Attached,
        reaches_files: bool,
    ) -> Result<Store<TaskState>, String> {
        let root = self.inner.empty_root.clone().filter(|_| reaches_files);
        let state = TaskState::new(info, limits, grants, attached, priority, root)?;
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        if self.inner.config.fuel_metering {
            // Cannot fail: it errs only when the engine does not meter fuel.
            let _ = store.set_fuel(limits.fuel);
        }
        let deadline = Instant::now() + limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            if cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
                ctx.data_mut().interrupted = Some(Interrupted::Cancelled);
                return Ok(UpdateDeadline::Interrupt);
            }
            if Instant::now() >= deadline {
                ctx.data_mut().interrupted = Some(Interrupted::Timeout);
                return Ok(UpdateDeadline::Interrupt);
            }
            // Give the executor back to other tasks once per tick.
            Ok(UpdateDeadline::Yield(1))
        });
        Ok(store)
    }

    async fn run_with(&self, plugin: &Plugin, request: TaskRequest, how: Instantiate) -> TaskReport {
        let started = Instant::now();
        let limits = request.limits.unwrap_or_else(|| self.inner.config.default_limits.clone());
        let early_failure = |message: String| TaskReport {
            result: Err(TaskFailure::new(FailureClass::HostError, message)),
            logs: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            fuel_consumed: None,
            elapsed: started.elapsed(),
            host_bytes_peak: 0,
            memory_peak: 0,
        };
        if let Err(message) = self.check_limits(&limits) {
            return early_failure(message);
        }
        let deadline = tokio::time::Instant::now() + limits.timeout;
        let cancel = request.cancel.clone();
        let attached = Attached {
            services: request.services,
            inference: request.inference,
            budget: request.budget,
            transcript: request.transcript,
            trace: request.trace,
            script: request.script.or_else(|| plugin.inner.script.clone()),
        };
        let mut store = match self.new_store(plugin, &request.meta, &limits, &request.grants, request.cancel, attached)
        {
            Ok(store) => store,
            Err(message) => return early_failure(message),
        };

        enum Ended {
            Returned(Result<Result<Vec<u8>, TaskError>, wasmtime::Error>),
            InstantiateFailed(wasmtime::Error),
            Interrupted(Interrupted),
        }
        let ended = {
            let store = &mut store;
            let input = request.input;
            let call = async move {
                let mut span = store.data().trace.child("instantiate");
                let task = match how {
                    Instantiate::Pre => plugin.inner.pre.instantiate_async(&mut *store).await,
                    Instantiate::Relink => {
                        let component = plugin.inner.pre.instance_pre().component();
                        let linker = &self.inner.linker;
                        Task::instantiate_async(&mut *store, component, linker).await
                    }
                };
                if let Err(e) = &task {
                    span.fail_with(|| format!("{e:#}"));
                }
                span.end();
                match task {
                    Ok(task) => Ended::Returned(task.call_run(&mut *store, &input).await),
                    Err(e) => Ended::InstantiateFailed(e),
                }
            };
            let cancelled = async {
                match &cancel {
                    Some(token) => token.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            // The epoch callback stops a guest running wasm; these two arms
            // stop one that is parked in an async host call (e.g. a sleep).
            tokio::select! {
                ended = call => ended,
                () = tokio::time::sleep_until(deadline) => Ended::Interrupted(Interrupted::Timeout),
                () = cancelled => Ended::Interrupted(Interrupted::Cancelled),
            }
        };

        let result = match ended {
            Ended::Returned(Ok(Ok(output))) if output.len() as u64 > limits.max_output_bytes => Err(TaskFailure::new(
                FailureClass::OutputTooLarge,
                format!("the output is {} bytes; the limit is {} bytes", output.len(), limits.max_output_bytes),
            )),
            Ended::Returned(Ok(Ok(output))) => Ok(output),
            // A guest whose growth was refused may catch that and report
            // an error of its own (an interpreter's "out of memory"): the
            // limiter's record says what happened.
            Ended::Returned(Ok(Err(error))) => Err(match outcome::memory_refused(store.data()) {
                Some(mut failure) => {
                    let reported = plugin_error(error);
                    failure.message = format!("{}; the guest then reported: {}", failure.message, reported.message);
                    failure
                }
                None => plugin_error(error),
            }),
            Ended::Returned(Err(error)) => Err(outcome::classify_error(error, store.data())),
            Ended::InstantiateFailed(error) if error.is::<wasmtime::PoolConcurrencyLimitError>() => Err(TaskFailure {
                retryable: true,
                ..TaskFailure::new(FailureClass::HostError, format!("no free instance slot: {error:#}"))
            }),
            Ended::InstantiateFailed(error) => Err(outcome::classify_error(error, store.data())),
            Ended::Interrupted(why) => {
                store.data_mut().interrupted = Some(why);
                Err(outcome::classify_error(wasmtime::format_err!("interrupted"), store.data()))
            }
        };
        let fuel_consumed = self
            .inner
            .config
            .fuel_metering
            .then(|| store.get_fuel().ok().map(|left| limits.fuel.saturating_sub(left)))
            .flatten();
        let state = store.into_data();
        TaskReport {
            result,
            stdout: state.stdout.take(),
            stderr: state.stderr.take(),
            logs: state.logs,
            fuel_consumed,
            elapsed: started.elapsed(),
            host_bytes_peak: state.budget.peak(),
            memory_peak: state.limiter.peak(),
        }
    }
}

/// The services a request attaches to its store.
#[derive(Default)]
pub(crate) struct Attached {
    pub(crate) services: Option<Arc<dyn TaskServices>>,
    pub(crate) inference: Option<Arc<dyn InferenceService>>,
    pub(crate) budget: Option<Arc<HostBudget>>,
    pub(crate) transcript: Option<Transcript>,
    pub(crate) trace: crate::trace::Scope,
    pub(crate) script: Option<Arc<Script>>,
}

#[derive(Clone, Copy)]
enum Instantiate {
    Pre,
    Relink,
}

fn plugin_error(error: TaskError) -> TaskFailure {
    let (retryable, mut message) = match error {
        TaskError::Retryable(m) => (true, m),
        TaskError::Permanent(m) => (false, m),
    };
    if message.len() > MAX_ERROR_MESSAGE {
        let mut cut = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("… (truncated)");
    }
    TaskFailure { retryable, ..TaskFailure::new(FailureClass::PluginError, message) }
}

fn engine_config(config: &SandboxConfig) -> wasmtime::Config {
    let mut c = wasmtime::Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(config.fuel_metering)
        .max_wasm_stack(config.max_wasm_stack)
        // The async fiber stack must hold the wasm stack plus host frames.
        .async_stack_size(config.max_wasm_stack + (1 << 20))
        .parallel_compilation(config.parallel_compilation)
        .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(64));
    if config.pooling {
        let n = config.pool_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(8))
            .max_core_instances_per_component(16)
            .total_memories(n.saturating_mul(2))
            .max_memories_per_component(2)
            .total_tables(n.saturating_mul(8))
            .max_tables_per_component(16)
            .total_stacks(n)
            .max_memory_size(usize::try_from(config.max_memory_per_instance).unwrap_or(usize::MAX))
            // Reset only the pages a task dirtied and keep them resident for
            // the next task, instead of madvise + page faults every time
            // (Linux >= 6.7; silently off elsewhere).
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

/// wasmtime 48's error type is not `anyhow::Error`; convert explicitly.
pub(crate) fn wasm_err(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rejects_bytes_that_are_not_a_component() {
        let sandbox = Sandbox::new(SandboxConfig { pool_instances: 4, ..SandboxConfig::default() }).unwrap();
        let err = sandbox.load("x", "1", b"hello").unwrap_err();
        assert!(matches!(err, LoadError::NotWasm), "{err}");
        // The smallest valid core module: magic + version 1.
        let err = sandbox.load("x", "1", b"\0asm\x01\0\0\0").unwrap_err();
        assert!(matches!(err, LoadError::CoreModule), "{err}");
        assert!(err.to_string().contains("wasm32-wasip2"));
    }

    #[test]
    fn refuses_memory_beyond_the_pool_slot() {
        let sandbox = Sandbox::new(SandboxConfig {
            pool_instances: 4,
            max_memory_per_instance: 64 << 20,
            ..SandboxConfig::default()
        })
        .unwrap();
        let limits = Limits { memory_bytes: 128 << 20, ..Limits::default() };
        let err = sandbox.check_limits(&limits).unwrap_err();
        assert!(err.contains("exceeds this host's per-task maximum of 64 MiB"), "{err}");
    }

    #[tokio::test]
    async fn cancel_token_wakes_waiters() {
        let token = CancelToken::new();
        let waiter = {
            let token = token.clone();
            tokio::spawn(async move { token.cancelled().await })
        };
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(token.is_cancelled());
    }
}
