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
    /// Its default limits: the operator's manifest over the host's.
    pub(crate) defaults: Limits,
    /// Keeps the version from being deleted until the task holds it.
    pub(crate) pin: crate::registry::Pin,
}

/// One attempt to run.
pub(crate) struct Attempt {
    /// The task's input bytes.
    pub(crate) input: Vec<u8>,
    /// Interrupts the attempt.
    pub(crate) cancel: CancelToken,
    /// The flow services behind `queue` and `context`.
    pub(crate) services: Arc<dyn TaskServices>,
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
}

/// The real runner: plugins from the registry, run in the sandbox.
pub(crate) struct SandboxRunner {
    pub(crate) sandbox: Sandbox,
    pub(crate) registry: Arc<Registry>,
    pub(crate) inference: Option<Arc<dyn crate::sandbox::InferenceService>>,
}

fn failed(class: FailureClass, message: String) -> TaskReport {
    TaskReport {
        result: Err(TaskFailure::new(class, message)),
        logs: Vec::new(),
        stdout: Vec::new(),
        stderr: Vec::new(),
        fuel_consumed: None,
        elapsed: std::time::Duration::ZERO,
    }
}

#[async_trait::async_trait]
impl Runner for SandboxRunner {
    fn resolve(&self, spec: &str) -> Result<Resolved, EngineError> {
        let (name, loaded) = self.registry.resolve(spec)?;
        let host_defaults = &self.sandbox.config().default_limits;
        let defaults = match self.registry.manifest(&name) {
            Some(manifest) => manifest.limits(host_defaults).map_err(EngineError::InvalidRequest)?,
            None => host_defaults.clone(),
        };
        let pin = loaded.pin;
        Ok(Resolved { name, version: loaded.info.version, digest: loaded.info.digest, defaults, pin })
    }

    fn check_limits(&self, limits: &Limits) -> Result<(), String> {
        self.sandbox.check_limits(limits)
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
        };
        self.sandbox.run(&plugin, request).await
    }
}
