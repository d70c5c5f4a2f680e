//! The plugin registry: named, immutable, content-addressed versions,
//! persisted in the store, compiled off the async workers one at a time at
//! low priority (in a child process with a time budget, or on a thread: see
//! [`Compiler`]), with compiled artifacts cached on disk. Uploads wait for
//! the compile queue as files in the staging directory, not in memory.
//! It is the one place that knows which versions are loaded: tasks pin the
//! version they resolved at submission (`Pin`, from resolving until the
//! task is admitted) and hold it (`Registry::hold`) until they end; a
//! version that is neither what its name resolves to nor held by an
//! unfinished task is unloaded, and reloaded from the artifact cache when
//! asked for. Deleting a version and resolving to it serialise on the
//! registry's lock: a pinned or held version is not deleted, and a version
//! being deleted is not resolved to. Operators set capability
//! [`Manifest`]s here, and `watch` loads a watched directory. New plugin
//! names are refused past `max_plugins`.

mod compiler;
mod manifest;
mod metrics;
mod staging;
pub(crate) mod watch;

pub use compiler::{COMPILE_COMMAND, Compiler, ProcessCompiler, compile_process_main};
pub use manifest::{DirMode, Manifest, ManifestDir, ManifestLimits, ManifestNetwork};
pub(crate) use metrics::RegistryMetrics;
pub(crate) use staging::{Staged, Staging};

use crate::names::{self, NameError};
use crate::sandbox::{Language, MAX_SCRIPT_BYTES, RunnerId, Script};
use crate::store::{Db, PluginEntry, PluginVersion, StoreError, now_ms};
use crate::sync::{blocking, lock, read, write};
use crate::{LoadError, Plugin, Sandbox};
use sha2_digest::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Uploads compiling or waiting to compile at most; another upload is
/// refused (503 with `Retry-After`) until one finishes.
pub const MAX_COMPILE_QUEUE: usize = 4;

/// Largest component accepted.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

/// Why the registry refused a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RegistryError {
    #[error(transparent)]
    BadName(NameError),
    #[error(transparent)]
    BadVersion(NameError),
    #[error("unknown plugin `{0}`; upload it first with `POST /v1/plugins/{{name}}`")]
    Unknown(String),
    #[error("plugin `{name}` has no live version `{version}` (live: {known})")]
    UnknownVersion { name: String, version: String, known: String },
    #[error("the component is too large: at least {size} bytes; the limit is {MAX_PLUGIN_BYTES}")]
    TooLarge { size: u64 },
    #[error("version {version} of `{name}` already exists with other content; versions are immutable")]
    VersionTaken { name: String, version: String },
    #[error("invalid plugin: {0}")]
    Invalid(#[from] LoadError),
    #[error(transparent)]
    Script(#[from] crate::sandbox::ScriptError),
    #[error("{0}")]
    BadManifest(String),
    #[error("{name}@{version} is used by {unfinished} unfinished task(s); delete it once they have ended")]
    InUse { name: String, version: String, unfinished: u64 },
    #[error("{MAX_COMPILE_QUEUE} uploads are already compiling or waiting to; try again shortly")]
    Busy,
    #[error(
        "plugin `{name}` would be a new plugin, and this host already has {max} plugin names, the most it keeps \
         (max_plugins); delete the versions of one first"
    )]
    TooManyPlugins { name: String, max: usize },
    #[error(
        "compiling the component took longer than this host's compile budget of {}; it was stopped \
         (`taskhost serve --compile-timeout`)",
        humantime::format_duration(*budget)
    )]
    CompileTimeout { budget: Duration },
    /// The compile process could not run or answer (a host problem, not
    /// the component's).
    #[error("{0}")]
    Compiler(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegistryError {
    pub(crate) fn io(context: String, source: std::io::Error) -> Self {
        Self::Io { context, source }
    }
}

/// Where a version is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionState {
    /// Being compiled; not yet used for new tasks.
    Compiling,
    /// Ready: new tasks may resolve to it.
    Live,
    /// Validation or compilation failed, with the reason. Not stored.
    Failed(String),
}

/// A version as the API shows it.
#[derive(Debug, Clone)]
pub struct VersionStatus {
    /// Version, digest, size, upload time.
    pub info: PluginVersion,
    /// Compiling, live or failed.
    pub state: VersionState,
    /// How long compiling (or loading from the cache) took.
    pub load_time: Option<Duration>,
    /// Whether it came from the on-disk artifact cache.
    pub from_cache: bool,
    /// Whether its compiled code is in memory. A live version that is not
    /// what its name resolves to and that no unfinished task uses is
    /// unloaded, and reloaded from the artifact cache when asked for.
    pub loaded: bool,
}

struct Slot {
    status: VersionStatus,
    plugin: Option<Plugin>,
    /// Unfinished tasks pinned to this version: what keeps it loaded.
    unfinished: AtomicU64,
    /// Submissions that resolved to this version and are not admitted
    /// yet (their [`Pin`]s).
    pinned: Arc<AtomicU64>,
    /// Being deleted: no longer resolved to.
    deleting: bool,
}

impl Slot {
    fn new(status: VersionStatus, plugin: Option<Plugin>) -> Self {
        Self { status, plugin, unfinished: AtomicU64::new(0), pinned: Arc::default(), deleting: false }
    }

    /// Live and not being deleted: what a task may resolve to and run.
    fn usable(&self) -> bool {
        self.status.state == VersionState::Live && !self.deleting
    }

    fn pin(&self) -> Pin {
        self.pinned.fetch_add(1, Ordering::SeqCst);
        Pin(Some(self.pinned.clone()))
    }
}

/// A submission's claim on the version it resolved to, from resolving
/// until the task is admitted (and holds the version) or turns out not to
/// be created: while any is alive, the version is not deleted. Dropping
/// it lets go. The default pins nothing (for runners without a registry).
#[derive(Debug, Default)]
pub(crate) struct Pin(Option<Arc<AtomicU64>>);

impl Drop for Pin {
    fn drop(&mut self) {
        if let Some(pinned) = &self.0 {
            pinned.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[derive(Default)]
struct Entry {
    slots: Vec<Slot>,
    latest: Option<String>,
    manifest: Option<Manifest>,
    /// The last problem the watched directory hit for this name.
    watch_error: Option<String>,
}

impl Entry {
    fn live(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| s.usable())
    }

    /// Whether the name counts against `max_plugins`: it has a version or
    /// a manifest.
    fn in_use(&self) -> bool {
        !self.slots.is_empty() || self.manifest.is_some()
    }

    /// The version a plain name resolves to: the rollback pointer, else the
    /// newest live version.
    fn current(&self) -> Option<String> {
        self.latest.clone().or_else(|| self.live().last().map(|s| s.status.info.version.clone()))
    }

    /// The live versions, for an error naming what could have been meant.
    fn live_versions(&self) -> String {
        self.live().map(|s| s.status.info.version.as_str()).collect::<Vec<_>>().join(", ")
    }

    fn slot(&self, version: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.status.info.version == version)
    }

    /// Frees the compiled code of versions that are not current and that no
    /// unfinished task holds; returns whether any was freed. Running tasks
    /// keep their own reference until they end.
    fn unload_idle(&mut self) -> bool {
        let current = self.current();
        let mut freed = false;
        for slot in &mut self.slots {
            let version = &slot.status.info.version;
            if slot.plugin.is_some() && Some(version) != current.as_ref() && slot.unfinished.load(Ordering::SeqCst) == 0
            {
                slot.plugin = None;
                slot.status.loaded = false;
                freed = true;
            }
        }
        freed
    }
}

/// What loading one version produced.
struct LoadOutcome {
    plugin: Plugin,
    took: Duration,
    from_cache: bool,
    /// A freshly written artifact (cache key, sha256) that the store must
    /// record before anyone may load it.
    written: Option<(String, String)>,
}

/// A resolved, live version, pinned while the [`Pin`] lives.
pub(crate) struct Loaded {
    pub(crate) info: PluginVersion,
    pub(crate) pin: Pin,
}

/// Where the registry keeps its files and how it compiles.
#[derive(Debug, Clone)]
pub(crate) struct RegistryOptions {
    /// Compiled artifacts.
    pub(crate) cache_dir: PathBuf,
    /// Uploads waiting for the compile queue (emptied at open).
    pub(crate) staging_dir: PathBuf,
    /// In-process or in a child process with a time budget.
    pub(crate) compiler: Compiler,
}

pub(crate) struct Registry {
    sandbox: Sandbox,
    store: Db,
    metrics: RegistryMetrics,
    cache_dir: PathBuf,
    staging_dir: PathBuf,
    fingerprint: String,
    compiler: Compiler,
    /// With [`Compiler::InProcess`], one compile thread at low CPU
    /// priority: compiling never takes more than one core from running
    /// tasks, and yields to them.
    compile_thread: Option<std::sync::Mutex<std::sync::mpsc::Sender<CompileJob>>>,
    /// One compile at a time, wherever it runs.
    compile_slot: Semaphore,
    /// One look at what other hosts changed at a time.
    sync_slot: tokio::sync::Mutex<()>,
    /// One upload at a time is read whole into memory (for its declared
    /// version, or to be stored).
    whole_slot: Semaphore,
    entries: RwLock<HashMap<String, Entry>>,
    compiled: AtomicU64,
    cache_hits: AtomicU64,
    /// Uploads compiling or waiting to (at most [`MAX_COMPILE_QUEUE`]).
    uploads: Arc<Semaphore>,
    /// Most plugin names with a version or a manifest.
    max_plugins: usize,
    /// The JavaScript runner, pre-initialised and compiled (or loaded from
    /// the artifact cache) at the first script's load.
    javascript: tokio::sync::OnceCell<Plugin>,
    python: tokio::sync::OnceCell<Plugin>,
}

/// A place in the compile queue, held by an upload until its compile ends.
#[derive(Debug)]
pub(crate) struct QueueSlot {
    _permit: OwnedSemaphorePermit,
}

/// What a version is compiled from.
enum Input {
    /// An upload waiting in the staging directory.
    Staged(Staged),
    /// A stored version's bytes (staged only if it must be compiled).
    Blob(Arc<[u8]>),
}

type CompileJob = Box<dyn FnOnce() + Send>;

fn start_compile_thread() -> Result<std::sync::mpsc::Sender<CompileJob>, RegistryError> {
    let (tx, rx) = std::sync::mpsc::channel::<CompileJob>();
    std::thread::Builder::new()
        .name("taskhost-compile".into())
        .spawn(move || {
            // SAFETY: plain syscalls on this thread's own id; a failure only
            // leaves the default priority.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, compiler::COMPILE_NICENESS);
            }
            while let Ok(job) = rx.recv() {
                job();
            }
        })
        .map_err(|e| RegistryError::io("starting the compile thread".into(), e))?;
    Ok(tx)
}

/// Writes a compiled artifact (atomically) and returns its sha256.
fn write_artifact(plugin: &Plugin, path: &std::path::Path) -> Result<String, RegistryError> {
    let artifact = plugin.serialize()?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &artifact)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| RegistryError::io(format!("writing {}", path.display()), e))?;
    Ok(sha256_hex(&artifact))
}

/// The version a component declares in its metadata, if any (a parse of
/// up to the whole component: call it off the async workers).
fn declared_version(bytes: &[u8]) -> Option<String> {
    let payload = wasm_metadata::Payload::from_binary(bytes).ok()?;
    payload.metadata().version.as_ref().map(|v| v.to_string()).filter(|v| names::version(v).is_ok())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of `bytes` in lower-case hex: how components, artifacts and
/// manifests are named and checked.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl Registry {
    /// Loads every stored version (from the artifact cache when it can).
    pub(crate) async fn open(
        sandbox: Sandbox,
        store: Db,
        metrics: RegistryMetrics,
        options: RegistryOptions,
    ) -> Result<Self, RegistryError> {
        let RegistryOptions { cache_dir, staging_dir, compiler } = options;
        let dir = cache_dir.clone();
        blocking(move || std::fs::create_dir_all(&dir))
            .await
            .map_err(|e| RegistryError::io(format!("creating the artifact cache {}", cache_dir.display()), e))?;
        let dir = staging_dir.clone();
        blocking(move || staging::reset_dir(&dir)).await.map_err(|e| {
            RegistryError::io(format!("emptying the upload staging directory {}", staging_dir.display()), e)
        })?;
        let compile_thread = match compiler {
            Compiler::InProcess => Some(std::sync::Mutex::new(start_compile_thread()?)),
            Compiler::Process(_) => None,
        };
        let registry = Self {
            fingerprint: sandbox.fingerprint(),
            sandbox,
            store,
            metrics,
            cache_dir,
            staging_dir,
            compiler,
            compile_thread,
            compile_slot: Semaphore::new(1),
            sync_slot: tokio::sync::Mutex::new(()),
            whole_slot: Semaphore::new(1),
            entries: RwLock::default(),
            compiled: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            uploads: Arc::new(Semaphore::new(MAX_COMPILE_QUEUE)),
            max_plugins: usize::MAX,
            javascript: tokio::sync::OnceCell::new(),
            python: tokio::sync::OnceCell::new(),
        };
        for (name, stored) in registry.store.plugins().await? {
            let PluginEntry { versions, latest, manifest } = stored;
            let manifest = manifest.map(|t| Manifest::parse(&t)).transpose().map_err(RegistryError::BadManifest)?;
            let mut entry = Entry { latest, manifest, ..Entry::default() };
            for info in versions {
                let bytes = registry.blob(&name, &info).await?;
                let loaded = registry.load_stored(&name, &info, Input::Blob(bytes)).await;
                let (state, plugin, load_time, from_cache) = match loaded {
                    Ok(o) => (VersionState::Live, Some(o.plugin), Some(o.took), o.from_cache),
                    Err(e) => (VersionState::Failed(e.to_string()), None, None, false),
                };
                let loaded = plugin.is_some();
                entry.slots.push(Slot::new(VersionStatus { info, state, load_time, from_cache, loaded }, plugin));
            }
            write(&registry.entries).insert(name, entry);
        }
        registry.update_gauge();
        Ok(registry)
    }

    /// Takes in what other hosts sharing the store changed since this
    /// host looked (`serve --many-hosts`): versions uploaded there (loaded
    /// here as at start: from this host's artifact cache, else compiled),
    /// the version each name resolves to, manifests, and versions deleted
    /// there (dropped here unless this host's tasks hold them). Returns
    /// how many versions it added. Runs one at a time.
    pub(crate) async fn sync_from_store(&self) -> Result<usize, RegistryError> {
        let _one = self.sync_slot.lock().await;
        let stored = self.store.plugins().await?;
        let mut added = 0;
        for (name, entry) in &stored {
            let PluginEntry { versions, latest, manifest } = entry;
            let missing: Vec<PluginVersion> = {
                let entries = read(&self.entries);
                let known = entries.get(name);
                versions.iter().filter(|v| known.is_none_or(|e| e.slot(&v.version).is_none())).cloned().collect()
            };
            for info in missing {
                let loaded = match self.blob(name, &info).await {
                    Ok(bytes) => self.load_stored(name, &info, Input::Blob(bytes)).await,
                    Err(e) => Err(e),
                };
                let (state, plugin, load_time, from_cache) = match loaded {
                    Ok(o) => (VersionState::Live, Some(o.plugin), Some(o.took), o.from_cache),
                    Err(e) => (VersionState::Failed(e.to_string()), None, None, false),
                };
                let loaded = plugin.is_some();
                let mut entries = write(&self.entries);
                let entry = entries.entry(name.clone()).or_default();
                if entry.slot(&info.version).is_none() {
                    tracing::info!(plugin = %name, version = %info.version, "a version uploaded on another host is loaded");
                    let status = VersionStatus { info, state, load_time, from_cache, loaded };
                    entry.slots.push(Slot::new(status, plugin));
                    added += 1;
                }
            }
            let manifest = match manifest.as_deref().map(Manifest::parse).transpose() {
                Ok(manifest) => manifest,
                Err(error) => {
                    tracing::error!(plugin = %name, %error, "a manifest set on another host cannot be read; the one \
                        this host had stays");
                    read(&self.entries).get(name).and_then(|e| e.manifest.clone())
                }
            };
            let mut entries = write(&self.entries);
            let entry = entries.entry(name.clone()).or_default();
            entry.latest = latest.clone();
            entry.manifest = manifest;
            // Deleted there: resolved to no more here, and gone once no
            // submission here holds it (a version being loaded or deleted
            // here is this host's own; this host's count of the tasks
            // holding a version sees only those it admitted and ended, so
            // it does not keep one).
            let stored_at = |slot: &Slot| versions.iter().position(|v| v.version == slot.status.info.version);
            for slot in &mut entry.slots {
                if slot.usable() && stored_at(slot).is_none() {
                    slot.deleting = true;
                }
            }
            entry
                .slots
                .retain(|slot| !slot.deleting || stored_at(slot).is_some() || slot.pinned.load(Ordering::SeqCst) > 0);
            // The store's order, as the other hosts hold them (a plain
            // name resolves to the newest); this host's own uploads under
            // way after them.
            entry.slots.sort_by_key(|slot| stored_at(slot).unwrap_or(usize::MAX));
            entry.unload_idle();
        }
        // Names removed there whose versions here no task holds.
        write(&self.entries).retain(|name, entry| {
            stored.iter().any(|(n, _)| n == name)
                || entry.watch_error.is_some()
                || entry
                    .slots
                    .iter()
                    .any(|s| !s.usable() || s.unfinished.load(Ordering::SeqCst) + s.pinned.load(Ordering::SeqCst) > 0)
        });
        self.update_gauge();
        Ok(added)
    }

    /// Refuses new plugin names past `max` (names stored before still
    /// work).
    pub(crate) fn with_max_plugins(mut self, max: usize) -> Self {
        self.max_plugins = max;
        self
    }

    /// Refuses `name` if it is new and the registry already keeps
    /// `max_plugins` names. Called under the entries lock.
    fn admit_name(&self, entries: &HashMap<String, Entry>, name: &str) -> Result<(), RegistryError> {
        if entries.get(name).is_some_and(Entry::in_use) {
            return Ok(());
        }
        if entries.values().filter(|e| e.in_use()).count() >= self.max_plugins {
            return Err(RegistryError::TooManyPlugins { name: name.into(), max: self.max_plugins });
        }
        Ok(())
    }

    /// A stored version's component bytes (a store read, off the workers).
    async fn blob(&self, name: &str, info: &PluginVersion) -> Result<Arc<[u8]>, RegistryError> {
        let bytes = self.store.blob(&info.digest).await?;
        let bytes = bytes.ok_or_else(|| {
            StoreError::Corrupt(format!("blob {} of plugin {name}@{} is missing", info.digest, info.version))
        })?;
        Ok(bytes.into())
    }

    /// Compilations done and cache hits since start.
    pub(crate) fn load_counts(&self) -> (u64, u64) {
        (self.compiled.load(Ordering::Relaxed), self.cache_hits.load(Ordering::Relaxed))
    }

    fn update_gauge(&self) {
        let live = read(&self.entries).values().map(|e| e.live().filter(|s| s.plugin.is_some()).count()).sum::<usize>();
        self.metrics.plugins_loaded.set(live as i64);
    }

    /// Compiles (or loads from the cache) one version. Every step that
    /// reads files, hashes or compiles runs off the async workers; compiles
    /// run one at a time.
    async fn load(&self, name: &str, info: &PluginVersion, input: Input) -> Result<LoadOutcome, RegistryError> {
        if let Some(language) = &info.script {
            return self.load_script(name, info, language, input).await;
        }
        let started = Instant::now();
        let key = format!("{}-{}", info.digest, self.fingerprint);
        let path = self.cache_dir.join(format!("{key}.cwasm"));
        let size = usize::try_from(info.size).unwrap_or(usize::MAX);
        let cached = self.cached_artifact(name, &info.version, &key, &path, size).await;
        if let Some(plugin) = cached {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(LoadOutcome { plugin, took: started.elapsed(), from_cache: true, written: None });
        }
        let _slot = self.compile_slot.acquire().await.expect("the compile slot is never closed");
        let compile_started = Instant::now();
        let staged = match input {
            Input::Staged(staged) => staged,
            Input::Blob(bytes) => staging::stage_bytes(&self.staging_dir, bytes).await?,
        };
        let (plugin, written) = match &self.compiler {
            Compiler::InProcess => self.compile_on_thread(name, &info.version, staged, key, path).await?,
            Compiler::Process(process) => {
                let compiled =
                    compiler::compile_in_child(process, &self.sandbox, name, &info.version, staged.path(), size, &path)
                        .await;
                if let Err(RegistryError::CompileTimeout { .. }) = &compiled {
                    self.metrics.compile_timeouts.inc();
                }
                let compiled = compiled?;
                (compiled.plugin, compiled.artifact_hash.map(|hash| (key, hash)))
            }
        };
        self.compiled.fetch_add(1, Ordering::Relaxed);
        self.metrics.compile_time.observe(compile_started.elapsed().as_secs_f64());
        Ok(LoadOutcome { plugin, took: started.elapsed(), from_cache: false, written })
    }

    /// The artifact this host compiled and recorded under `key`, if it is
    /// on disk unchanged and loads.
    async fn cached_artifact(
        &self,
        name: &str,
        version: &str,
        key: &str,
        path: &std::path::Path,
        size: usize,
    ) -> Option<Plugin> {
        // Only an artifact whose hash this host recorded when it wrote it
        // is ever deserialised: deserialising trusts the bytes as machine
        // code.
        let expected = match self.store.cache_hash(key).await {
            Ok(Some(expected)) => expected,
            Ok(None) => return None,
            Err(error) => {
                tracing::warn!(%name, %error, "cannot read the artifact cache's record; compiling");
                return None;
            }
        };
        let (sandbox, path) = (self.sandbox.clone(), path.to_owned());
        let (name, version) = (name.to_owned(), version.to_owned());
        blocking(move || -> Option<Plugin> {
            let artifact = std::fs::read(&path).ok()?;
            if sha256_hex(&artifact) != expected {
                tracing::warn!(%name, path = %path.display(), "a cached artifact changed on disk; compiling");
                return None;
            }
            // SAFETY: written by this host (see above) and verified unchanged.
            match unsafe { sandbox.load_serialized(&name, &version, &artifact, size) } {
                Ok(plugin) => Some(plugin),
                Err(error) => {
                    tracing::warn!(%name, %error, "ignoring a cached artifact");
                    None
                }
            }
        })
        .await
    }

    /// A script version: its source, run by its language's runner.
    async fn load_script(
        &self,
        name: &str,
        info: &PluginVersion,
        language: &str,
        input: Input,
    ) -> Result<LoadOutcome, RegistryError> {
        let started = Instant::now();
        let language: Language = language.parse()?;
        let bytes = match input {
            Input::Staged(staged) => staged.read().await?,
            Input::Blob(bytes) => bytes.to_vec(),
        };
        // The tenant's own name for it, as the script's author knows it.
        // (An ad-hoc script's plugin, `adhoc.js`, is already a file name.)
        let local = crate::tenant::split(name).1;
        let extension = language.extension();
        let file = match local.strip_suffix(extension).and_then(|stem| stem.strip_suffix('.')) {
            Some(_) => local.to_owned(),
            None => format!("{local}.{extension}"),
        };
        let script = Script::new(language, file, bytes)?;
        let (runner, from_cache) = self.runner(language).await?;
        let plugin = Plugin::scripted(&runner, name, &info.version, script);
        Ok(LoadOutcome { plugin, took: started.elapsed(), from_cache, written: None })
    }

    /// The runner for `language`: pre-initialised and compiled once, its
    /// artifact cached and recorded like a compiled component's. Whether
    /// this call found it ready.
    async fn runner(&self, language: Language) -> Result<(Plugin, bool), RegistryError> {
        let cell = match language {
            Language::JavaScript => &self.javascript,
            Language::Python => &self.python,
        };
        let ready = cell.initialized();
        let runner = cell.get_or_try_init(|| self.prepare_runner(language)).await?;
        Ok((runner.clone(), ready))
    }

    async fn prepare_runner(&self, language: Language) -> Result<Plugin, RegistryError> {
        let id = RunnerId::of(language)?;
        let key = format!("runner-{}-{}", id.digest, self.fingerprint);
        let path = self.cache_dir.join(format!("{key}.cwasm"));
        if let Some(plugin) = self.cached_artifact(&id.plugin_name(), id.version(), &key, &path, 0).await {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(plugin);
        }
        let started = Instant::now();
        let (sandbox, handle) = (self.sandbox.clone(), tokio::runtime::Handle::current());
        // Pre-initialising instantiates and compiles: off the async workers.
        let plugin = blocking(move || handle.block_on(sandbox.load_runner(language))).await?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        self.metrics.compile_time.observe(started.elapsed().as_secs_f64());
        let (written, artifact_path) = (plugin.clone(), path.clone());
        match blocking(move || write_artifact(&written, &artifact_path)).await {
            Ok(hash) => {
                if let Err(error) = self.store.set_cache_hash(key, hash).await {
                    tracing::warn!(%error, "could not record the runner's cached artifact");
                }
            }
            Err(error) => tracing::warn!(%error, "could not cache the runner's compiled artifact"),
        }
        Ok(plugin)
    }

    /// Compiles on the compile thread, which also writes the artifact.
    async fn compile_on_thread(
        &self,
        name: &str,
        version: &str,
        staged: Staged,
        key: String,
        path: PathBuf,
    ) -> Result<(Plugin, Option<(String, String)>), RegistryError> {
        let thread = self.compile_thread.as_ref().ok_or_else(|| RegistryError::Compiler("no compile thread".into()))?;
        let (sandbox, name, version) = (self.sandbox.clone(), name.to_owned(), version.to_owned());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: CompileJob = Box::new(move || {
            let result = std::fs::read(staged.path())
                .map_err(|e| RegistryError::io(format!("reading {}", staged.path().display()), e))
                .and_then(|bytes| sandbox.load(&name, &version, &bytes).map_err(RegistryError::Invalid))
                .map(|plugin| {
                    let written = match write_artifact(&plugin, &path) {
                        Ok(hash) => Some((key, hash)),
                        Err(error) => {
                            tracing::warn!(%name, %error, "could not cache the compiled artifact");
                            None
                        }
                    };
                    (plugin, written)
                });
            drop(tx.send(result));
        });
        let sent = lock(thread).send(job);
        sent.map_err(|_| RegistryError::Compiler("the compile thread is gone".into()))?;
        rx.await.map_err(|_| RegistryError::Compiler("the compile thread failed".into()))?
    }

    /// Loads a stored version and records a freshly written artifact.
    async fn load_stored(&self, name: &str, info: &PluginVersion, input: Input) -> Result<LoadOutcome, RegistryError> {
        let outcome = self.load(name, info, input).await?;
        if let Some((key, hash)) = outcome.written.clone()
            && let Err(error) = self.store.set_cache_hash(key, hash).await
        {
            tracing::warn!(%name, %error, "could not record the cached artifact");
        }
        Ok(outcome)
    }

    /// Checks a plugin name and an explicit version.
    pub(crate) fn check_names(name: &str, version: Option<&str>) -> Result<(), RegistryError> {
        crate::tenant::check_key(names::NameKind::Plugin, name).map_err(RegistryError::BadName)?;
        if let Some(v) = version {
            names::version(v).map_err(RegistryError::BadVersion)?;
        }
        Ok(())
    }

    /// Takes a place in the compile queue, or refuses at once
    /// ([`RegistryError::Busy`]) when [`MAX_COMPILE_QUEUE`] uploads hold
    /// one: before an upload's body is read.
    pub(crate) fn reserve(&self) -> Result<QueueSlot, RegistryError> {
        self.uploads.clone().try_acquire_owned().map(|p| QueueSlot { _permit: p }).map_err(|_| RegistryError::Busy)
    }

    /// Waits for a place in the compile queue (the watched directory's
    /// files are not requests that can be refused).
    pub(crate) async fn reserve_waiting(&self) -> QueueSlot {
        QueueSlot { _permit: self.uploads.clone().acquire_owned().await.expect("the upload queue is never closed") }
    }

    /// A new staging file for an upload.
    pub(crate) async fn staging(&self) -> Result<Staging, RegistryError> {
        Staging::create(&self.staging_dir).await
    }

    /// Adds a version from bytes in memory: checks them, then stages them
    /// and adds them as [`Registry::add_staged`] does.
    pub(crate) async fn add(
        self: &Arc<Self>,
        name: &str,
        bytes: Vec<u8>,
        version: Option<String>,
        wait: bool,
    ) -> Result<(VersionStatus, bool), RegistryError> {
        self.add_bytes(name, bytes, version, wait, None).await
    }

    /// Adds a version whose code is a script in `language`.
    pub(crate) async fn add_script(
        self: &Arc<Self>,
        name: &str,
        language: Language,
        source: Vec<u8>,
        version: Option<String>,
        wait: bool,
    ) -> Result<(VersionStatus, bool), RegistryError> {
        self.add_bytes(name, source, version, wait, Some(language)).await
    }

    async fn add_bytes(
        self: &Arc<Self>,
        name: &str,
        bytes: Vec<u8>,
        version: Option<String>,
        wait: bool,
        script: Option<Language>,
    ) -> Result<(VersionStatus, bool), RegistryError> {
        Self::check_names(name, version.as_deref())?;
        if self.store.serves_together() {
            // Numbered after what the other hosts stored (one stored
            // meanwhile under the same number is refused by the store).
            if let Err(error) = self.sync_from_store().await {
                tracing::warn!(%error, "cannot read the plugins other hosts stored before numbering an upload");
            }
        }
        match script {
            None if bytes.len() > MAX_PLUGIN_BYTES => return Err(RegistryError::TooLarge { size: bytes.len() as u64 }),
            None => crate::sandbox::check_header(&bytes)?,
            Some(_) if bytes.len() > MAX_SCRIPT_BYTES => {
                return Err(crate::sandbox::ScriptError::TooLarge { name: name.into(), size: bytes.len() }.into());
            }
            Some(_) => {}
        }
        let slot = self.reserve()?;
        let staging = self.staging().await?;
        let staged = blocking(move || staging.fill_from(&bytes[..])).await?;
        self.add_staged(slot, name, staged, version, wait, script).await
    }

    /// Adds a staged version: checks it, reserves its version number,
    /// compiles it off the async workers, then stores it and makes it live.
    /// Identical bytes give back the existing version. With `wait`, returns
    /// once it is live (or with why it failed); otherwise at once,
    /// `compiling`. `slot` is held until the compile ends.
    pub(crate) async fn add_staged(
        self: &Arc<Self>,
        slot: QueueSlot,
        name: &str,
        staged: Staged,
        version: Option<String>,
        wait: bool,
        script: Option<Language>,
    ) -> Result<(VersionStatus, bool), RegistryError> {
        Self::check_names(name, version.as_deref())?;
        match script {
            None => crate::sandbox::check_header(staged.head())?,
            Some(language) => {
                // A language this host has no runner for is refused now,
                // not stored to fail at every load.
                RunnerId::of(language)?;
                if staged.size > MAX_SCRIPT_BYTES as u64 {
                    let size = usize::try_from(staged.size).unwrap_or(usize::MAX);
                    return Err(crate::sandbox::ScriptError::TooLarge { name: name.into(), size }.into());
                }
                drop(Script::new(language, name, staged.read().await?)?);
            }
        }
        // The version a component declares is in its metadata: a parse of
        // up to the whole component, read whole one upload at a time.
        let declared = match &version {
            Some(_) => None,
            // A script's version is its source's hash.
            None if script.is_some() => Some(staged.digest[..12].to_owned()),
            None => {
                let _whole = self.whole_slot.acquire().await.expect("never closed");
                let bytes = staged.read().await?;
                blocking(move || declared_version(&bytes)).await
            }
        };
        let digest = staged.digest.clone();
        let status = {
            let mut entries = write(&self.entries);
            self.admit_name(&entries, name)?;
            let entry = entries.entry(name.to_owned()).or_default();
            // Identical bytes: the existing version (unless it failed).
            let same = |s: &&Slot| {
                s.status.info.digest == digest && !s.deleting && !matches!(s.status.state, VersionState::Failed(_))
            };
            if let Some(existing) = entry.slots.iter().find(same) {
                return Ok((existing.status.clone(), false));
            }
            let version = match version.or(declared) {
                Some(v) => v,
                None => {
                    // Failed attempts were never stored: they reserve no number.
                    let highest = entry
                        .slots
                        .iter()
                        .filter(|s| !matches!(s.status.state, VersionState::Failed(_)))
                        .filter_map(|s| s.status.info.version.parse::<u64>().ok())
                        .max();
                    (highest.unwrap_or(0) + 1).to_string()
                }
            };
            if entry
                .slots
                .iter()
                .any(|s| s.status.info.version == version && !matches!(s.status.state, VersionState::Failed(_)))
            {
                return Err(RegistryError::VersionTaken { name: name.into(), version });
            }
            entry.slots.retain(|s| s.status.info.version != version);
            let script = script.map(|l| l.as_str().to_owned());
            let info = PluginVersion { version, digest, size: staged.size, created_at_ms: now_ms(), script };
            let status = VersionStatus {
                info,
                state: VersionState::Compiling,
                load_time: None,
                from_cache: false,
                loaded: false,
            };
            entry.slots.push(Slot::new(status.clone(), None));
            status
        };
        let job = {
            let (registry, name, info) = (self.clone(), name.to_owned(), status.info.clone());
            tokio::spawn(async move {
                let _slot = slot;
                registry.finish_add(name, info, staged).await
            })
        };
        if !wait {
            return Ok((status, true));
        }
        match job.await {
            Ok(result) => result.map(|status| (status, true)),
            Err(e) => Err(RegistryError::Invalid(LoadError::Compile(format!("the compile task failed: {e}")))),
        }
    }

    async fn finish_add(
        &self,
        name: String,
        info: PluginVersion,
        staged: Staged,
    ) -> Result<VersionStatus, RegistryError> {
        let outcome = self.load(&name, &info, Input::Staged(staged.clone())).await;
        // Stored and made live before a look at what other hosts changed
        // reads the store, or after it applied what it read.
        let _synced = self.sync_slot.lock().await;
        // One commit stores the version, its blob and its cached artifact's
        // hash; the blob is read whole one upload at a time.
        let stored = match &outcome {
            Ok(o) => {
                let _whole = self.whole_slot.acquire().await.expect("never closed");
                match staged.read().await {
                    Ok(bytes) => self
                        .store
                        .put_plugin_version(name.clone(), info.clone(), bytes, o.written.clone())
                        .await
                        .map_err(RegistryError::from),
                    Err(e) => Err(e),
                }
            }
            Err(_) => Ok(()),
        };
        drop(staged);
        let mut entries = write(&self.entries);
        let entry = entries.entry(name).or_default();
        let Some(slot) = entry.slots.iter_mut().find(|s| s.status.info.version == info.version) else {
            return Err(RegistryError::Store(StoreError::Closed));
        };
        let result = match (outcome, stored) {
            (Ok(o), Ok(())) => {
                slot.plugin = Some(o.plugin);
                slot.status.state = VersionState::Live;
                slot.status.load_time = Some(o.took);
                slot.status.from_cache = o.from_cache;
                slot.status.loaded = true;
                Ok(slot.status.clone())
            }
            (Err(e), _) | (Ok(_), Err(e)) => {
                slot.status.state = VersionState::Failed(e.to_string());
                Err(e)
            }
        };
        // The previous latest may now be idle.
        entry.unload_idle();
        drop(entries);
        self.update_gauge();
        result
    }

    /// Resolves `name` (its latest live version) or `name@version`.
    pub(crate) fn resolve(&self, spec: &str) -> Result<(String, Loaded), RegistryError> {
        let (name, version) = match spec.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (spec, None),
        };
        let entries = read(&self.entries);
        let entry = entries
            .get(name)
            .filter(|e| e.live().next().is_some())
            .ok_or_else(|| RegistryError::Unknown(name.into()))?;
        let wanted = version.map(str::to_owned).or_else(|| entry.current());
        let slot = wanted.as_deref().and_then(|v| entry.live().find(|s| s.status.info.version == v));
        // Pinned under the lock a delete takes to check for pins.
        slot.map(|s| (name.to_owned(), Loaded { info: s.status.info.clone(), pin: s.pin() })).ok_or_else(|| {
            RegistryError::UnknownVersion {
                name: name.into(),
                version: wanted.unwrap_or_default(),
                known: entry.live_versions(),
            }
        })
    }

    /// The compiled plugin of a pinned version.
    /// Reloads it (from the artifact cache, normally) if it was unloaded.
    pub(crate) async fn get(&self, name: &str, version: &str) -> Result<Plugin, RegistryError> {
        match self.get_known(name, version).await {
            // Uploaded on another host sharing the store, not seen here
            // yet: looked for there first.
            Err(RegistryError::UnknownVersion { .. }) if self.store.postgres().is_some_and(|pg| pg.together()) => {
                self.sync_from_store().await?;
                self.get_known(name, version).await
            }
            got => got,
        }
    }

    /// [`get`](Self::get), of what this host knows.
    async fn get_known(&self, name: &str, version: &str) -> Result<Plugin, RegistryError> {
        let info = {
            let entries = read(&self.entries);
            let slot = entries.get(name).and_then(|e| e.live().find(|s| s.status.info.version == version));
            let slot = slot.ok_or_else(|| RegistryError::UnknownVersion {
                name: name.into(),
                version: version.into(),
                known: entries.get(name).map(Entry::live_versions).unwrap_or_default(),
            })?;
            match &slot.plugin {
                Some(plugin) => return Ok(plugin.clone()),
                None => slot.status.info.clone(),
            }
        };
        let bytes = self.blob(name, &info).await?;
        let LoadOutcome { plugin, took, from_cache: cached, .. } =
            self.load_stored(name, &info, Input::Blob(bytes)).await?;
        let mut entries = write(&self.entries);
        if let Some(slot) =
            entries.get_mut(name).and_then(|e| e.slots.iter_mut().find(|s| s.status.info.version == version))
        {
            slot.plugin = Some(plugin.clone());
            slot.status.loaded = true;
            slot.status.load_time = Some(took);
            slot.status.from_cache = cached;
        }
        drop(entries);
        self.update_gauge();
        Ok(plugin)
    }

    /// Counts an unfinished task against the version it pinned: the
    /// version stays loaded (and cannot be deleted) until it is released.
    pub(crate) fn hold(&self, name: &str, version: &str) {
        if let Some(slot) = read(&self.entries).get(name).and_then(|e| e.slot(version)) {
            slot.unfinished.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A task of this version ended; the version's code is freed once no
    /// unfinished task holds it and its name no longer resolves to it.
    pub(crate) fn release(&self, name: &str, version: &str) {
        let idle = {
            let entries = read(&self.entries);
            let Some(slot) = entries.get(name).and_then(|e| e.slot(version)) else { return };
            let previous = slot.unfinished.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            previous == Ok(1) && slot.plugin.is_some()
        };
        if idle {
            self.unload_idle_of(name);
        }
    }

    /// Unfinished tasks that hold `name@version`.
    pub(crate) fn unfinished(&self, name: &str, version: &str) -> u64 {
        read(&self.entries).get(name).and_then(|e| e.slot(version)).map_or(0, |s| s.unfinished.load(Ordering::SeqCst))
    }

    fn unload_idle_of(&self, name: &str) {
        let freed = write(&self.entries).get_mut(name).is_some_and(Entry::unload_idle);
        if freed {
            self.update_gauge();
        }
    }

    /// Frees every version that is neither current nor held (at start,
    /// once the unfinished tasks have been counted).
    pub(crate) fn unload_idle(&self) {
        let mut freed = false;
        for entry in write(&self.entries).values_mut() {
            freed |= entry.unload_idle();
        }
        if freed {
            self.update_gauge();
        }
    }

    /// The manifest of a plugin, if the operator set one.
    pub(crate) fn manifest(&self, name: &str) -> Option<Manifest> {
        read(&self.entries).get(name).and_then(|e| e.manifest.clone())
    }

    /// The plugins whose manifest names models, with them: what their
    /// tasks need of the host they run on. Sorted by name.
    pub(crate) fn model_needs(&self) -> Vec<(String, Vec<String>)> {
        let mut needs: Vec<(String, Vec<String>)> = read(&self.entries)
            .iter()
            .filter_map(|(name, e)| {
                let models = &e.manifest.as_ref()?.models;
                (!models.is_empty()).then(|| (name.clone(), models.clone()))
            })
            .collect();
        needs.sort_unstable();
        needs
    }

    /// Checks and sets (or clears) a plugin's manifest.
    pub(crate) async fn set_manifest(&self, name: &str, manifest: Option<Manifest>) -> Result<(), RegistryError> {
        crate::tenant::check_key(names::NameKind::Plugin, name).map_err(RegistryError::BadName)?;
        // Not undone by a look at what other hosts changed that read the
        // store before.
        let _synced = self.sync_slot.lock().await;
        if let Some(m) = &manifest {
            m.check().map_err(RegistryError::BadManifest)?;
            for model in &m.models {
                names::name(names::NameKind::Model, model)
                    .map_err(|e| RegistryError::BadManifest(format!("models: {e}")))?;
            }
            self.admit_name(&read(&self.entries), name)?;
        }
        let text = manifest.as_ref().map(Manifest::to_toml).transpose().map_err(RegistryError::BadManifest)?;
        self.store
            .edit_plugin(name.to_owned(), move |entry| {
                entry.manifest = text;
                Vec::new()
            })
            .await?;
        write(&self.entries).entry(name.to_owned()).or_default().manifest = manifest;
        Ok(())
    }

    /// Makes `version` what a plain name resolves to (rollback).
    pub(crate) async fn set_latest(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        // Not undone by a look at what other hosts changed that read the
        // store before.
        let _synced = self.sync_slot.lock().await;
        // Pinned until the pointer is set: not deleted meanwhile.
        let (_, _pinned) = self.resolve(&format!("{name}@{version}"))?;
        let v = version.to_owned();
        self.store
            .edit_plugin(name.to_owned(), move |entry| {
                entry.latest = Some(v);
                Vec::new()
            })
            .await?;
        if let Some(entry) = write(&self.entries).get_mut(name) {
            entry.latest = Some(version.to_owned());
        }
        // The previous latest may now be idle.
        self.unload_idle_of(name);
        Ok(())
    }

    /// Removes a version; refused while an unfinished task holds it or a
    /// submission that resolved to it is not admitted yet. From the check
    /// on, no submission resolves to it (the check and that mark share
    /// the write lock that resolving reads under). Its compiled code is
    /// freed once running tasks let go of it. Cancelling the call midway
    /// can leave the version unresolvable: run it to its end.
    pub(crate) async fn delete(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        let _synced = self.sync_slot.lock().await;
        let together = self.store.serves_together();
        let (name_s, v) = (name.to_owned(), version.to_owned());
        let digest = {
            let mut entries = write(&self.entries);
            let entry = entries.get_mut(name).ok_or_else(|| RegistryError::Unknown(name.into()))?;
            let known = entry.slots.iter().map(|s| s.status.info.version.clone()).collect::<Vec<_>>().join(", ");
            let slot = entry.slots.iter_mut().find(|s| s.status.info.version == version && !s.deleting);
            let slot = slot.ok_or_else(|| RegistryError::UnknownVersion {
                name: name.into(),
                version: version.into(),
                known,
            })?;
            // Beside other hosts, this host's count of the tasks holding
            // it sees only those it admitted and ended (the store was
            // asked above); its submissions in flight count here.
            let held = match together {
                true => 0,
                false => slot.unfinished.load(Ordering::SeqCst),
            };
            let unfinished = held + slot.pinned.load(Ordering::SeqCst);
            if unfinished > 0 {
                return Err(RegistryError::InUse { name: name.into(), version: version.into(), unfinished });
            }
            slot.deleting = true;
            slot.status.info.digest.clone()
        };
        // Hosts serving together: the other hosts' tasks hold it too (asked
        // once no submission here resolves to it any more).
        let elsewhere = match self.store.unended_elsewhere(name, version).await {
            Ok(0) => Ok(()),
            Ok(unfinished) => Err(RegistryError::InUse { name: name.into(), version: version.into(), unfinished }),
            Err(e) => Err(RegistryError::from(e)),
        };
        if let Err(refused) = elsewhere {
            if let Some(entry) = write(&self.entries).get_mut(name) {
                entry.slots.iter_mut().filter(|s| s.status.info.version == version).for_each(|s| s.deleting = false);
            }
            return Err(refused);
        }
        let stored = self
            .store
            .edit_plugin(name_s, move |entry| {
                entry.versions.retain(|x| x.version != v);
                if entry.latest.as_deref() == Some(v.as_str()) {
                    entry.latest = None;
                }
                vec![digest]
            })
            .await;
        if let Some(entry) = write(&self.entries).get_mut(name) {
            match &stored {
                Ok(()) => {
                    entry.slots.retain(|s| !(s.status.info.version == version && s.deleting));
                    if entry.latest.as_deref() == Some(version) {
                        entry.latest = None;
                    }
                }
                // Not deleted after all: usable again.
                Err(_) => entry.slots.iter_mut().filter(|s| s.status.info.version == version).for_each(|s| {
                    s.deleting = false;
                }),
            }
        }
        stored?;
        self.update_gauge();
        Ok(())
    }

    /// Records a problem the watched directory hit for `name` (for a new
    /// name only while the registry keeps fewer than `max_plugins`; past
    /// that it is logged only).
    pub(crate) fn set_watch_error(&self, name: &str, error: Option<String>) {
        let mut entries = write(&self.entries);
        if let Some(entry) = entries.get_mut(name) {
            entry.watch_error = error;
        } else if entries.len() < self.max_plugins {
            entries.insert(name.to_owned(), Entry { watch_error: error, ..Entry::default() });
        } else if let Some(error) = error {
            tracing::warn!(%name, %error, "the plugins directory has a problem with a plugin past max_plugins");
        }
    }

    /// Every version of `name` with its state, the latest, the manifest and
    /// the watched directory's last error.
    pub(crate) fn detail(&self, name: &str) -> Option<PluginDetail> {
        let entries = read(&self.entries);
        let entry = entries.get(name)?;
        let latest = entry.current();
        Some(PluginDetail {
            versions: entry.slots.iter().map(|s| s.status.clone()).collect(),
            latest,
            manifest: entry.manifest.clone(),
            watch_error: entry.watch_error.clone(),
        })
    }

    /// Names with at least one version.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<_> =
            read(&self.entries).iter().filter(|(_, e)| !e.slots.is_empty()).map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }
}

/// One plugin as the API shows it.
#[derive(Debug, Clone)]
pub struct PluginDetail {
    /// Every version, oldest first.
    pub versions: Vec<VersionStatus>,
    /// What a plain name resolves to.
    pub latest: Option<String>,
    /// The operator's manifest.
    pub manifest: Option<Manifest>,
    /// The watched directory's last problem with this name.
    pub watch_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskhost_test_artifacts::TRIVIAL;

    async fn registry(dir: &std::path::Path, max_plugins: usize) -> Arc<Registry> {
        let sandbox =
            Sandbox::new(crate::SandboxConfig { pool_instances: 4, ..crate::SandboxConfig::default() }).unwrap();
        let store = Db::Redb(crate::store::Store::open(&dir.join("t.redb"), true).unwrap());
        let mut prometheus = prometheus_client::registry::Registry::default();
        let metrics = RegistryMetrics::register(&mut prometheus);
        let options = RegistryOptions {
            cache_dir: dir.join("cache"),
            staging_dir: dir.join("uploads"),
            compiler: Compiler::default(),
        };
        let registry = Registry::open(sandbox, store, metrics, options).await.unwrap();
        Arc::new(registry.with_max_plugins(max_plugins))
    }

    /// Delete and submit serialise: a version a submission resolved to is
    /// not deleted until the task holds it (or the pin is dropped), and a
    /// version being deleted is not resolved to.
    #[tokio::test]
    async fn a_pinned_version_is_not_deleted_and_one_being_deleted_is_not_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path(), 10).await;
        r.add("t", TRIVIAL.bytes(), Some("1".into()), true).await.unwrap();
        let (_, submitting) = r.resolve("t@1").unwrap();
        let refused = r.delete("t", "1").await.unwrap_err();
        assert!(matches!(refused, RegistryError::InUse { unfinished: 1, .. }), "{refused}");
        // Admission holds it, then the pin goes: still in use.
        r.hold("t", "1");
        drop(submitting);
        assert!(matches!(r.delete("t", "1").await, Err(RegistryError::InUse { unfinished: 1, .. })));
        r.release("t", "1");
        // Being deleted: nothing resolves to it.
        write(&r.entries).get_mut("t").unwrap().slots[0].deleting = true;
        // (Its only version: the name itself resolves to nothing.)
        assert!(matches!(r.resolve("t@1"), Err(RegistryError::Unknown(_))));
        assert!(matches!(r.resolve("t"), Err(RegistryError::Unknown(_))));
        assert!(matches!(r.delete("t", "1").await, Err(RegistryError::UnknownVersion { .. })), "deleted once");
        write(&r.entries).get_mut("t").unwrap().slots[0].deleting = false;
        r.delete("t", "1").await.unwrap();
        assert!(r.resolve("t@1").is_err());
    }

    #[tokio::test]
    async fn plugin_names_past_the_limit_are_refused_and_known_ones_take_versions() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path(), 1).await;
        r.add("a", TRIVIAL.bytes(), Some("1".into()), true).await.unwrap();
        let refused = r.add("b", TRIVIAL.bytes(), Some("1".into()), true).await.unwrap_err();
        assert!(matches!(refused, RegistryError::TooManyPlugins { max: 1, .. }), "{refused}");
        assert!(refused.to_string().contains("plugin `b` would be a new plugin"), "{refused}");
        assert!(r.set_manifest("c", Some(Manifest::default())).await.is_err());
        assert_eq!(r.names(), ["a"]);
        // A known name takes more versions; a deleted one frees its place.
        r.add("a", taskhost_test_artifacts::UPPERCASE.bytes(), Some("2".into()), true).await.unwrap();
        r.delete("a", "1").await.unwrap();
        r.delete("a", "2").await.unwrap();
        r.add("b", TRIVIAL.bytes(), Some("1".into()), true).await.unwrap();
    }

    #[tokio::test]
    async fn unsafe_names_and_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path(), 10).await;
        for name in [".", "..", "-x", ".hidden"] {
            let refused = r.add(name, TRIVIAL.bytes(), None, true).await.unwrap_err();
            assert!(matches!(refused, RegistryError::BadName(_)), "{name}: {refused}");
            assert!(matches!(r.set_manifest(name, None).await, Err(RegistryError::BadName(_))), "{name}");
        }
        for version in [".", ".."] {
            let refused = r.add("p", TRIVIAL.bytes(), Some(version.into()), true).await.unwrap_err();
            assert!(matches!(refused, RegistryError::BadVersion(_)), "{version}: {refused}");
        }
        let bad_model = Manifest { models: vec!["..".into()], ..Manifest::default() };
        let refused = r.set_manifest("p", Some(bad_model)).await.unwrap_err();
        assert!(refused.to_string().contains("invalid model name `..`"), "{refused}");
    }

    #[tokio::test]
    async fn the_models_plugins_need_are_their_manifests_models() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path(), 10).await;
        let needs = |models: &[&str]| Manifest {
            models: models.iter().map(|m| m.to_string()).collect(),
            ..Manifest::default()
        };
        r.add("plain", TRIVIAL.bytes(), None, true).await.unwrap();
        r.set_manifest("files", Some(needs(&[]))).await.unwrap();
        r.set_manifest("t/both", Some(needs(&["minilm", "ranker"]))).await.unwrap();
        r.set_manifest("embed", Some(needs(&["minilm"]))).await.unwrap();
        let expect = |list: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
            list.iter().map(|(p, m)| (p.to_string(), m.iter().map(|m| m.to_string()).collect())).collect()
        };
        assert_eq!(r.model_needs(), expect(&[("embed", &["minilm"]), ("t/both", &["minilm", "ranker"])]));
        r.set_manifest("t/both", None).await.unwrap();
        assert_eq!(r.model_needs(), expect(&[("embed", &["minilm"])]), "a cleared manifest needs nothing");
    }
}
