//! What the engine needs of plugins, behind one trait: resolve a plugin
//! name at submission, count the unfinished tasks that pin a version, and
//! run one attempt. [`SandboxRunner`] is the real one (the registry and
//! wasmtime); tests drive dispatch, retries and flows through a scripted
//! runner without any wasm.

use super::EngineError;
use crate::flow::TaskServices;
use crate::registry::Registry;
use crate::store::TaskRecord;
use crate::{CancelToken, FailureClass, Grants, Limits, Sandbox, TaskFailure, TaskMeta, TaskReport, TaskRequest};
use std::sync::Arc;

/// A plugin resolved at submission.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// Plugin name.
    pub(crate) name: String,
    /// The version pinned in the record.
    pub(crate) version: String,
    /// Its content digest.
    pub(crate) digest: String,
    /// Its default limits: the operator's manifest over the host's,
    /// within the host's ceilings.
    pub(crate) defaults: Limits,
    /// Keeps the version from being deleted until the task holds it.
    pub(crate) pin: crate::registry::Pin,
    /// The most a submission may ask for.
    pub(crate) caps: Caps,
}

/// Who set a cap a submission ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CapSource {
    /// The plugin's manifest.
    Manifest,
    /// The operator's ceiling for every task on this host.
    Host,
}

/// One cap and who set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cap<T> {
    pub(crate) most: T,
    pub(crate) set_by: CapSource,
}

/// The most fuel, memory and time a submission may ask for: the plugin
/// manifest's limit where it sets one, else the host's ceiling (and never
/// more than the ceiling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    pub(crate) fuel: Cap<u64>,
    pub(crate) memory_bytes: Cap<u64>,
    pub(crate) timeout: Cap<std::time::Duration>,
}

impl Caps {
    /// The host's ceilings alone (a plugin without a manifest).
    pub(crate) fn host(ceilings: &crate::Ceilings) -> Self {
        fn host<T>(most: T) -> Cap<T> {
            Cap { most, set_by: CapSource::Host }
        }
        Self { fuel: host(ceilings.fuel), memory_bytes: host(ceilings.memory_bytes), timeout: host(ceilings.timeout) }
    }

    /// The caps for a plugin whose manifest gives `limits`; `set` says
    /// which of fuel, memory and timeout the manifest sets.
    pub(crate) fn with_manifest(ceilings: &crate::Ceilings, limits: &Limits, set: [bool; 3]) -> Self {
        fn cap<T: Ord + Copy>(ceiling: T, manifest: T, set: bool) -> Cap<T> {
            if set && manifest <= ceiling {
                Cap { most: manifest, set_by: CapSource::Manifest }
            } else {
                Cap { most: ceiling, set_by: CapSource::Host }
            }
        }
        Self {
            fuel: cap(ceilings.fuel, limits.fuel, set[0]),
            memory_bytes: cap(ceilings.memory_bytes, limits.memory_bytes, set[1]),
            timeout: cap(ceilings.timeout, limits.timeout, set[2]),
        }
    }
}

/// One attempt to run.
pub(crate) struct Attempt {
    /// The task's input bytes.
    pub(crate) input: Vec<u8>,
    /// Interrupts the attempt.
    pub(crate) cancel: CancelToken,
    /// The flow services behind `queue` and `context`.
    pub(crate) services: Arc<dyn TaskServices>,
    /// The attempt's host budget, shared with `services`.
    pub(crate) budget: Arc<crate::HostBudget>,
    /// Where its log lines, stdout and stderr go as they come.
    pub(crate) transcript: Option<crate::sandbox::Transcript>,
    /// The attempt's span, for the spans of its instantiation and host
    /// calls.
    pub(crate) trace: crate::trace::Scope,
}

/// See the module docs.
#[async_trait::async_trait]
pub(crate) trait Runner: Send + Sync + 'static {
    /// Resolves `name` or `name@version` to a live version, pinned (not
    /// deleted) until the [`Resolved`]'s `pin` is dropped.
    fn resolve(&self, spec: &str) -> Result<Resolved, EngineError>;
    /// Whether these limits are within what this host can give one task.
    fn check_limits(&self, limits: &Limits) -> Result<(), String>;
    /// An unfinished task pins `name@version`.
    fn hold(&self, name: &str, version: &str);
    /// A task pinning `name@version` ended.
    fn release(&self, name: &str, version: &str);
    /// Runs one attempt of `task`.
    async fn run(&self, task: &TaskRecord, attempt: Attempt) -> TaskReport;
    /// The plugins whose manifest names models, with them (what their
    /// tasks need of a host: see `routing.rs`).
    fn model_needs(&self) -> Vec<(String, Vec<String>)> {
        Vec::new()
    }
    /// The task defaults and ceilings in force, and those given at start
    /// (`None`: a runner without them, as in tests).
    fn host_limits(&self) -> Option<HostLimits> {
        None
    }
    /// Puts `limits` in force (`None`: those given at start again), once
    /// this host can give them.
    fn set_host_limits(&self, limits: Option<(Limits, crate::Ceilings)>) -> Result<(), String> {
        let _ = limits;
        Ok(())
    }
}

/// A host's task defaults and ceilings: in force, and as given at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostLimits {
    pub(crate) defaults: Limits,
    pub(crate) ceilings: crate::Ceilings,
    pub(crate) start: (Limits, crate::Ceilings),
}

/// The real runner: plugins from the registry, run in the sandbox.
pub(crate) struct SandboxRunner {
    pub(crate) sandbox: Sandbox,
    /// Where attempts run (see [`AttemptRuntime`](crate::AttemptRuntime)).
    pub(crate) runtime: crate::AttemptRuntime,
    pub(crate) registry: Arc<Registry>,
    pub(crate) inference: Option<Arc<dyn crate::sandbox::InferenceService>>,
    /// The defaults and ceilings in force (the configuration file's
    /// `[limits]` and `[ceilings]`, else the sandbox's).
    pub(crate) limits: std::sync::RwLock<(Limits, crate::Ceilings)>,
}

impl SandboxRunner {
    /// A runner of `registry`'s plugins in `sandbox`, with its defaults
    /// and ceilings.
    pub(crate) fn new(
        sandbox: Sandbox,
        runtime: crate::AttemptRuntime,
        registry: Arc<Registry>,
        inference: Option<Arc<dyn crate::sandbox::InferenceService>>,
    ) -> Self {
        let limits = (sandbox.config().default_limits.clone(), sandbox.config().ceilings.clone());
        Self { sandbox, runtime, registry, inference, limits: std::sync::RwLock::new(limits) }
    }
}

fn failed(class: FailureClass, message: String) -> TaskReport {
    TaskReport {
        result: Err(TaskFailure::new(class, message)),
        logs: Vec::new(),
        stdout: Vec::new(),
        stderr: Vec::new(),
        fuel_consumed: None,
        elapsed: std::time::Duration::ZERO,
        host_bytes_peak: 0,
        memory_peak: 0,
    }
}

#[async_trait::async_trait]
impl Runner for SandboxRunner {
    fn model_needs(&self) -> Vec<(String, Vec<String>)> {
        self.registry.model_needs()
    }

    fn resolve(&self, spec: &str) -> Result<Resolved, EngineError> {
        let (name, loaded) = self.registry.resolve(spec)?;
        let (defaults, ceilings) = crate::sync::read(&self.limits).clone();
        let ceilings = &ceilings;
        let host_defaults = ceilings.clamp(&defaults);
        let (defaults, caps) = match self.registry.manifest(&name) {
            Some(manifest) => {
                let limits = manifest.limits(&host_defaults).map_err(EngineError::InvalidRequest)?;
                let l = &manifest.limits;
                let set = [l.fuel.is_some(), l.memory.is_some(), l.timeout.is_some()];
                (ceilings.clamp(&limits), Caps::with_manifest(ceilings, &limits, set))
            }
            None => (host_defaults, Caps::host(ceilings)),
        };
        let pin = loaded.pin;
        Ok(Resolved { name, version: loaded.info.version, digest: loaded.info.digest, defaults, caps, pin })
    }

    fn check_limits(&self, limits: &Limits) -> Result<(), String> {
        self.sandbox.check_limits(limits)
    }

    fn host_limits(&self) -> Option<HostLimits> {
        let (defaults, ceilings) = crate::sync::read(&self.limits).clone();
        let config = self.sandbox.config();
        Some(HostLimits { defaults, ceilings, start: (config.default_limits.clone(), config.ceilings.clone()) })
    }

    fn set_host_limits(&self, limits: Option<(Limits, crate::Ceilings)>) -> Result<(), String> {
        let config = self.sandbox.config();
        let start = (config.default_limits.clone(), config.ceilings.clone());
        // What the server started with was checked then (its flags may
        // give more than a new value could): only a change is checked.
        let limits = limits.unwrap_or_else(|| start.clone());
        let ceilings = &limits.1;
        if ceilings.fuel == 0 || ceilings.memory_bytes == 0 || ceilings.timeout.is_zero() || ceilings.host_bytes == 0 {
            return Err("a ceiling of zero would refuse every task".into());
        }
        if ceilings.memory_bytes != start.1.memory_bytes {
            let most = Limits { memory_bytes: ceilings.memory_bytes, ..limits.0.clone() };
            self.sandbox.check_limits(&most).map_err(|e| format!("ceilings: {e}"))?;
        }
        if limits.0 != start.0 {
            self.sandbox.check_limits(&limits.0).map_err(|e| format!("limits: {e}"))?;
        }
        *crate::sync::write(&self.limits) = limits;
        Ok(())
    }

    fn hold(&self, name: &str, version: &str) {
        self.registry.hold(name, version);
    }

    fn release(&self, name: &str, version: &str) {
        self.registry.release(name, version);
    }

    async fn run(&self, task: &TaskRecord, attempt: Attempt) -> TaskReport {
        let plugin = match self.registry.get(&task.plugin, &task.plugin_version).await {
            Ok(plugin) => plugin,
            // The store failed (reading the version, or what other hosts
            // changed): the attempt may pass later.
            Err(e @ crate::registry::RegistryError::Store(_)) => {
                return failed(FailureClass::HostError, e.to_string());
            }
            Err(e) => return failed(FailureClass::InvalidPlugin, e.to_string()),
        };
        // The operator's grants, resolved at start so DNS changes count.
        let grants = match self.registry.manifest(&task.plugin) {
            Some(manifest) => Grants {
                dirs: manifest.dir_grants(),
                connect: manifest.connect_grants().await,
                models: manifest.models.clone(),
            },
            None => Grants::default(),
        };
        // A plugin with directories needs the pool for guests' file I/O;
        // when guests hold all of it, fail now (retried) rather than queue.
        if !grants.dirs.is_empty() && !self.runtime.file_io_available().await {
            return failed(
                FailureClass::HostError,
                format!(
                    "guest file I/O is unavailable: all {} threads for it are taken by guests blocked in file \
                     operations (e.g. reading a FIFO); the task is retried later",
                    self.runtime.blocking_threads()
                ),
            );
        }
        let request = TaskRequest {
            input: attempt.input,
            meta: TaskMeta {
                id: task.id.to_string(),
                attempt: task.attempts,
                queue: task.queue.clone(),
                priority: task.priority,
            },
            limits: Some(Limits::from(&task.limits)),
            cancel: Some(attempt.cancel),
            grants,
            services: Some(attempt.services),
            inference: self.inference.clone(),
            budget: Some(attempt.budget),
            transcript: attempt.transcript,
            trace: attempt.trace,
            script: None,
        };
        let sandbox = self.sandbox.clone();
        let attempt = async move { sandbox.run(&plugin, request).await };
        match self.runtime.run(attempt).await {
            Some(report) => report,
            None => failed(FailureClass::HostError, "the attempt's runtime stopped before it ended".into()),
        }
    }
}
