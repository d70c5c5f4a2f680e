//! ML inference for plugins on ONNX Runtime: the model registry behind the
//! `inference` WIT import. [`Models`] holds the registered models (from a
//! TOML models file, `POST /v1/models`, reloaded when the file changes),
//! checks each call against the model's signature and the plugin's grant,
//! and queues it on the model's dynamic batcher (`batcher.rs`).

mod batcher;
mod config;
mod metrics;
mod runtime;
mod session;
mod signature;
mod watch;

pub(crate) use config::every_plugin_of;
pub use config::{Device, ModelSpec};
pub use metrics::InferenceMetrics;
pub use runtime::RuntimeStatus;

use crate::sandbox::{Caller, InferenceError, InferenceService, ModelInfo, RunResult, Tensor};
use batcher::{Batcher, Policy};
use config::ModelsFile;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Why a change to the registry was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelsError {
    /// The settings are wrong (name, field values).
    #[error("{0}")]
    Invalid(String),
    /// The model could not be loaded (file, ONNX Runtime, device).
    #[error("{0}")]
    Load(String),
    /// The models file could not be written.
    #[error("{0}")]
    Write(String),
    /// No such model.
    #[error("no model named `{0}`")]
    NotFound(String),
}

/// One registered model as `GET /v1/models` shows it (re-exported as a
/// wire type, [`crate::wire::ModelView`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ModelView {
    /// Registered name.
    pub name: String,
    /// Settings as registered.
    #[serde(flatten)]
    pub spec: ModelSpec,
    /// `ready` or `failed`.
    pub state: ModelState,
    /// Why it failed to load.
    pub error: Option<String>,
    /// The device it actually runs on (`cpu`, `cuda:0`), when ready.
    pub running_on: Option<String>,
    /// Why `running_on` differs from `device`.
    pub device_note: Option<String>,
    /// Inputs and outputs, when ready.
    pub inputs: Vec<TensorView>,
    /// Outputs, when ready.
    pub outputs: Vec<TensorView>,
    /// Whether calls are batched across tasks.
    pub batched: bool,
    /// Calls waiting now.
    pub queued: usize,
    /// The last reload that failed for this model, while the previous
    /// version keeps serving.
    pub reload_error: Option<String>,
}

/// Whether a model loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ModelState {
    /// Loaded: calls run.
    Ready,
    /// It failed to load (see `error`); calls are refused.
    Failed,
}

impl ModelState {
    /// The state's name, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "ready",
            ModelState::Failed => "failed",
        }
    }
}

/// Compares with the name (`state == "ready"`), as when it was a string.
impl PartialEq<&str> for ModelState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A tensor in a signature: `{"name": "x", "type": "f32", "shape": [-1, 4]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct TensorView {
    /// Name.
    pub name: String,
    /// Element type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Dimensions, -1 for any size.
    pub shape: Vec<i64>,
}

/// The whole registry as `GET /v1/models` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ModelsView {
    /// ONNX Runtime: loaded or why not, and CUDA.
    pub runtime: RuntimeView,
    /// The models file, if any.
    #[schema(value_type = Option<String>)]
    pub file: Option<PathBuf>,
    /// Why the last reload of the models file was refused (the models in
    /// use are those from before it).
    pub file_error: Option<String>,
    /// The models.
    pub models: Vec<ModelView>,
}

/// [`RuntimeStatus`] for JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct RuntimeView {
    /// Whether ONNX Runtime is loaded.
    pub available: bool,
    /// Its library.
    #[schema(value_type = Option<String>)]
    pub library: Option<PathBuf>,
    /// Why it is not.
    pub error: Option<String>,
    /// Whether the CUDA execution provider is available.
    pub cuda: bool,
    /// Why CUDA is not.
    pub cuda_error: Option<String>,
}

struct Ready {
    batcher: Batcher,
    device: String,
    note: Option<String>,
    /// The model's WIT description, built once per load.
    info: ModelInfo,
}

struct Model {
    name: String,
    spec: ModelSpec,
    /// Size and mtime of the .onnx file when loaded.
    stamp: Option<(u64, SystemTime)>,
    loaded: Result<Ready, String>,
}

impl Model {
    /// Loads a model; a failure is kept as the model's state.
    fn load(name: &str, spec: &ModelSpec, base: Option<&Path>, metrics: &InferenceMetrics) -> Model {
        let path = spec.resolved_path(base);
        let stamp = stamp(&path);
        let loaded = Self::open(name, spec, &path, metrics);
        if let Ok(ready) = &loaded {
            let label = metrics.device_label(name, &ready.device);
            metrics.device.get_or_create(&label).set(1);
        }
        Model { name: name.to_owned(), spec: spec.clone(), stamp, loaded }
    }

    fn open(name: &str, spec: &ModelSpec, path: &Path, metrics: &InferenceMetrics) -> Result<Ready, String> {
        let rt = runtime::runtime();
        let env = rt.env.as_ref().ok_or_else(|| {
            format!("inference is unavailable: {}", rt.status.error.as_deref().unwrap_or("ONNX Runtime is not loaded"))
        })?;
        let opened = session::open(env, path, spec.device, spec.instances, spec.threads)
            .map_err(|e| format!("model `{name}`: {e}"))?;
        let mut preferred: Vec<usize> = spec.preferred_batch.iter().map(|&n| n as usize).collect();
        preferred.sort_unstable();
        let batched = opened.signature.batched;
        let max_rows = if batched { spec.max_batch as usize } else { 1 };
        let policy = Policy { max_rows, max_delay: spec.max_delay, preferred, max_queue: spec.max_queue as usize };
        let info = ModelInfo {
            name: name.to_owned(),
            inputs: opened.signature.inputs.clone(),
            outputs: opened.signature.outputs.clone(),
            batched,
            max_rows: max_rows as u32,
            device: opened.device.clone(),
        };
        let batcher = Batcher::start(name, opened.signature, policy, opened.sessions, metrics.clone())?;
        Ok(Ready { batcher, device: opened.device, note: opened.note, info })
    }

    fn view(&self, reload_error: Option<String>) -> ModelView {
        let tensors = |specs: &[crate::sandbox::TensorSpec]| {
            specs
                .iter()
                .map(|s| TensorView {
                    name: s.name.clone(),
                    ty: signature::type_name(s.ty).to_owned(),
                    shape: s.shape.clone(),
                })
                .collect()
        };
        let (state, error, running_on, device_note, inputs, outputs, batched, queued) = match &self.loaded {
            Ok(r) => (
                ModelState::Ready,
                None,
                Some(r.device.clone()),
                r.note.clone(),
                tensors(&r.info.inputs),
                tensors(&r.info.outputs),
                r.info.batched,
                r.batcher.queued(),
            ),
            Err(e) => (ModelState::Failed, Some(e.clone()), None, None, Vec::new(), Vec::new(), false, 0),
        };
        ModelView {
            name: self.name.clone(),
            spec: self.spec.clone(),
            state,
            error,
            running_on,
            device_note,
            inputs,
            outputs,
            batched,
            queued,
            reload_error,
        }
    }
}

fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// The model registry and the inference service plugins call. Cheap to
/// clone.
#[derive(Clone)]
pub struct Models {
    inner: Arc<Inner>,
}

struct Inner {
    file: Option<PathBuf>,
    models: RwLock<BTreeMap<String, Arc<Model>>>,
    /// Serialises changes (reloads, puts, removes).
    changing: Mutex<()>,
    file_error: Mutex<Option<String>>,
    reload_errors: Mutex<BTreeMap<String, String>>,
    metrics: InferenceMetrics,
    /// The models file's watch, once started.
    watch: Mutex<Option<crate::watch::Watch>>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models").field("file", &self.inner.file).finish_non_exhaustive()
    }
}

use crate::sync::lock;

impl Models {
    /// Opens the registry: loads ONNX Runtime (once per process) and every
    /// model in `file` (a missing file has none; `POST /v1/models` creates
    /// it). A file that does not parse is an error; a model that fails to
    /// load is kept as `failed`, with why. Blocking (loads models).
    pub fn open(file: Option<PathBuf>) -> Result<Self, String> {
        // Absolute, so file events (which carry absolute paths) match it.
        let file = file
            .map(|f| std::path::absolute(&f).map_err(|e| format!("cannot resolve {}: {e}", f.display())))
            .transpose()?;
        let parsed = match &file {
            Some(path) => ModelsFile::read(path)?,
            None => ModelsFile::default(),
        };
        let inner = Inner {
            file,
            models: RwLock::default(),
            changing: Mutex::default(),
            file_error: Mutex::default(),
            reload_errors: Mutex::default(),
            metrics: InferenceMetrics::default(),
            watch: Mutex::default(),
        };
        let models = Self { inner: Arc::new(inner) };
        let base = models.base();
        let mut map = BTreeMap::new();
        for (name, spec) in &parsed.models {
            map.insert(name.clone(), Arc::new(Model::load(name, spec, base.as_deref(), &models.inner.metrics)));
        }
        *crate::sync::write(&models.inner.models) = map;
        Ok(models)
    }

    /// Reloads the models file whenever it (or a model file it names)
    /// changes, until the registry is dropped.
    pub fn watch(&self) -> Result<(), crate::watch::WatchError> {
        let mut slot = lock(&self.inner.watch);
        if let (Some(file), None) = (&self.inner.file, slot.as_ref()) {
            *slot = Some(watch::start(Arc::downgrade(&self.inner), file.clone())?);
        }
        Ok(())
    }

    /// The runtime: loaded, or why not.
    pub fn runtime(&self) -> &'static RuntimeStatus {
        &runtime::runtime().status
    }

    /// The process's ONNX Runtime environment (there is one per process),
    /// for code that calls ONNX Runtime directly beside the registry. Only
    /// for benchmarks.
    #[doc(hidden)]
    pub fn ort_environment(&self) -> Option<ort::environment::Environment> {
        runtime::runtime().env.clone()
    }

    /// The metric families (the engine registers them).
    pub fn metrics(&self) -> &InferenceMetrics {
        &self.inner.metrics
    }

    /// The models file.
    pub fn file(&self) -> Option<&Path> {
        self.inner.file.as_deref()
    }

    fn base(&self) -> Option<PathBuf> {
        self.inner.file.as_ref().and_then(|f| f.parent()).map(Path::to_path_buf)
    }

    fn get(&self, name: &str) -> Option<Arc<Model>> {
        crate::sync::read(&self.inner.models).get(name).cloned()
    }

    fn swap(&self, name: &str, model: Option<Arc<Model>>) {
        let mut map = crate::sync::write(&self.inner.models);
        match model {
            Some(m) => map.insert(name.to_owned(), m),
            None => map.remove(name),
        };
    }

    /// The names of the models this host serves now (loaded and ready),
    /// whoever may call them, sorted.
    pub(crate) fn serving(&self) -> Vec<String> {
        crate::sync::read(&self.inner.models).values().filter(|m| m.loaded.is_ok()).map(|m| m.name.clone()).collect()
    }

    /// Everything, for `GET /v1/models`.
    pub fn view(&self) -> ModelsView {
        let status = self.runtime();
        let runtime = RuntimeView {
            available: status.available,
            library: status.library.clone(),
            error: status.error.clone(),
            cuda: status.cuda.is_ok(),
            cuda_error: status.cuda.clone().err(),
        };
        let errors = lock(&self.inner.reload_errors).clone();
        let models = crate::sync::read(&self.inner.models);
        ModelsView {
            runtime,
            file: self.inner.file.clone(),
            file_error: lock(&self.inner.file_error).clone(),
            models: models.values().map(|m| m.view(errors.get(&m.name).cloned())).collect(),
        }
    }

    /// One model, for `GET /v1/models/{name}`.
    pub fn model(&self, name: &str) -> Option<ModelView> {
        let error = lock(&self.inner.reload_errors).get(name).cloned();
        self.get(name).map(|m| m.view(error))
    }

    /// Adds or replaces a model: checks the settings, loads it, writes it
    /// into the models file, then swaps it in (calls queued on the old
    /// version finish there). On any error nothing changes. Blocking.
    pub fn put(&self, name: &str, spec: ModelSpec) -> Result<ModelView, ModelsError> {
        spec.check(name).map_err(ModelsError::Invalid)?;
        let _changing = lock(&self.inner.changing);
        let model = Model::load(name, &spec, self.base().as_deref(), &self.inner.metrics);
        if let Err(e) = &model.loaded {
            return Err(ModelsError::Load(e.clone()));
        }
        if let Some(file) = &self.inner.file {
            config::write_model(file, name, Some(&spec)).map_err(ModelsError::Write)?;
        }
        let view = model.view(None);
        lock(&self.inner.reload_errors).remove(name);
        self.swap(name, Some(Arc::new(model)));
        Ok(view)
    }

    /// Removes a model from the registry and the models file. Calls queued
    /// on it finish.
    pub fn remove(&self, name: &str) -> Result<(), ModelsError> {
        let _changing = lock(&self.inner.changing);
        if self.get(name).is_none() {
            return Err(ModelsError::NotFound(name.to_owned()));
        }
        if let Some(file) = &self.inner.file {
            config::write_model(file, name, None).map_err(ModelsError::Write)?;
        }
        lock(&self.inner.reload_errors).remove(name);
        self.swap(name, None);
        Ok(())
    }

    /// Reads the models file again and applies what changed: new models
    /// load, removed ones go, changed ones (settings or .onnx file) load
    /// anew and replace the old. A file that does not parse changes
    /// nothing; a changed model that fails to load leaves its previous
    /// version serving. Blocking.
    pub fn reload(&self) -> Result<(), String> {
        let Some(file) = self.inner.file.clone() else { return Ok(()) };
        let _changing = lock(&self.inner.changing);
        let parsed = match ModelsFile::read(&file) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::error!("models file not reloaded: {e}");
                *lock(&self.inner.file_error) = Some(e.clone());
                return Err(e);
            }
        };
        *lock(&self.inner.file_error) = None;
        let base = self.base();
        let current: Vec<String> = crate::sync::read(&self.inner.models).keys().cloned().collect();
        for name in current.iter().filter(|n| !parsed.models.contains_key(*n)) {
            tracing::info!(model = %name, "model removed from the models file");
            lock(&self.inner.reload_errors).remove(name);
            self.swap(name, None);
        }
        for (name, spec) in &parsed.models {
            let old = self.get(name);
            let path = spec.resolved_path(base.as_deref());
            let unchanged =
                old.as_ref().is_some_and(|m| m.spec == *spec && m.stamp == stamp(&path) && m.loaded.is_ok());
            if unchanged {
                continue;
            }
            let model = Model::load(name, spec, base.as_deref(), &self.inner.metrics);
            match (&model.loaded, &old) {
                (Err(e), Some(old)) if old.loaded.is_ok() => {
                    tracing::error!(model = %name, "reload failed, the previous version keeps serving: {e}");
                    lock(&self.inner.reload_errors).insert(name.clone(), e.clone());
                }
                _ => {
                    match &model.loaded {
                        Ok(r) => tracing::info!(model = %name, device = %r.device, "model loaded"),
                        Err(e) => tracing::error!(model = %name, "model failed to load: {e}"),
                    }
                    lock(&self.inner.reload_errors).remove(name);
                    self.swap(name, Some(Arc::new(model)));
                }
            }
        }
        Ok(())
    }

    /// Runs a call as `caller`: permission, signature check, queue, wait.
    pub async fn call(&self, caller: &Caller, model: &str, inputs: Vec<Tensor>) -> RunResult {
        let waiting = self.enqueue(caller, model, inputs)?;
        waiting.await
    }

    fn enqueue(
        &self,
        caller: &Caller,
        name: &str,
        inputs: Vec<Tensor>,
    ) -> Result<BoxFuture<'static, RunResult>, InferenceError> {
        let metrics = &self.inner.metrics;
        let Some(model) = self.get(name) else {
            let known: Vec<String> = self.granted(caller).into_iter().map(|m| m.name).collect();
            return Err(InferenceError::UnknownModel(format!(
                "no model named `{name}`; models this plugin may use: {}",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        };
        if !permits(&model.spec, name, caller) {
            metrics.error(name, "not_permitted");
            return Err(InferenceError::NotPermitted(format!(
                "plugin `{}` may not use model `{name}`; the operator grants it with `plugins = [\"{}\"]` in the model's settings, or `models = [\"{name}\"]` in the plugin's manifest",
                caller.plugin, caller.plugin
            )));
        }
        let ready = match &model.loaded {
            Ok(ready) => ready,
            Err(e) => {
                metrics.error(name, "unavailable");
                return Err(InferenceError::Unavailable(e.clone()));
            }
        };
        let checked = ready.info_signature_check(name, inputs).inspect_err(|_| metrics.error(name, "invalid_input"))?;
        let mut ticket = ready.batcher.submit(checked, caller.priority, caller.trace.clone()).inspect_err(|e| {
            metrics.error(name, if matches!(e, InferenceError::Overloaded(_)) { "overloaded" } else { "unavailable" })
        })?;
        metrics.requests.get_or_create(&metrics.label(name)).inc();
        let timeout = model.spec.timeout;
        let metrics = metrics.clone();
        let name = name.to_owned();
        Ok(Box::pin(async move {
            // `model` stays alive (and so its batcher) while the call waits.
            let _model = model;
            match tokio::time::timeout(timeout, ticket.wait()).await {
                Ok(Some(result)) => result,
                Ok(None) => Err(InferenceError::Backend(format!("model `{name}` stopped before answering"))),
                Err(_) => {
                    metrics.error(&name, "timeout");
                    Err(InferenceError::Timeout(format!(
                        "model `{name}` gave no result within its timeout of {}",
                        humantime::format_duration(timeout)
                    )))
                }
            }
        }))
    }

    fn granted(&self, caller: &Caller) -> Vec<ModelInfo> {
        let models = crate::sync::read(&self.inner.models);
        models
            .values()
            .filter(|m| permits(&m.spec, &m.name, caller))
            .filter_map(|m| m.loaded.as_ref().ok().map(|r| r.info.clone()))
            .collect()
    }
}

/// A model is granted by its own settings or by the plugin's manifest.
fn permits(spec: &ModelSpec, name: &str, caller: &Caller) -> bool {
    spec.permits(&caller.plugin) || caller.granted.iter().any(|m| m == name)
}

impl Ready {
    fn info_signature_check(&self, name: &str, inputs: Vec<Tensor>) -> Result<signature::Checked, InferenceError> {
        self.batcher.signature().check(name, inputs, self.info.max_rows as usize)
    }
}

impl InferenceService for Models {
    fn models(&self, caller: &Caller) -> Vec<ModelInfo> {
        self.granted(caller)
    }

    fn run(&self, caller: &Caller, model: String, inputs: Vec<Tensor>) -> BoxFuture<'static, RunResult> {
        match self.enqueue(caller, &model, inputs) {
            Ok(waiting) => waiting,
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}
