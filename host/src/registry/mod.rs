//! The plugin registry: named, immutable, content-addressed versions,
//! persisted in the store, compiled off the async workers behind a
//! one-at-a-time gate, with compiled artifacts cached on disk. Tasks pin the
//! version they resolved at submission; a running task holds its version's
//! `InstancePre` alive, and memory of versions no one references is freed.

use super::manifest::Manifest;
use super::metrics::Metrics;
use crate::store::{PluginEntry, PluginVersion, Store, StoreError, now_ms};
use crate::{LoadError, Plugin, Sandbox};
use sha2_digest::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Largest component accepted.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    #[error("invalid plugin name `{0}`: use 1-64 letters, digits, `-`, `_` or `.`")]
    BadName(String),
    #[error("invalid version `{0}`: use 1-64 letters, digits, `.`, `-`, `_` or `+`")]
    BadVersion(String),
    #[error("unknown plugin `{0}`; upload it first with `POST /v1/plugins/{{name}}`")]
    Unknown(String),
    #[error("plugin `{name}` has no live version `{version}` (live: {known})")]
    UnknownVersion { name: String, version: String, known: String },
    #[error("the component is {size} bytes; the limit is {MAX_PLUGIN_BYTES}")]
    TooLarge { size: usize },
    #[error("version {version} of `{name}` already exists with other content; versions are immutable")]
    VersionTaken { name: String, version: String },
    #[error("invalid plugin: {0}")]
    Invalid(#[from] LoadError),
    #[error("{0}")]
    BadManifest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
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
        self.slots.iter().filter(|s| s.status.state == VersionState::Live)
    }

    /// The version a plain name resolves to: the rollback pointer, else the
    /// newest live version.
    fn current(&self) -> Option<String> {
        self.latest.clone().or_else(|| self.live().last().map(|s| s.status.info.version.clone()))
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

/// A resolved, live version.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub(crate) info: PluginVersion,
}

pub(crate) struct Registry {
    sandbox: Sandbox,
    store: Store,
    metrics: Arc<Metrics>,
    cache_dir: PathBuf,
    fingerprint: String,
    /// One compile thread at low CPU priority: compiling never takes more
    /// than one core from running tasks, and yields to them.
    compiler: std::sync::Mutex<std::sync::mpsc::Sender<CompileJob>>,
    entries: RwLock<HashMap<String, Entry>>,
    compiled: AtomicU64,
    cache_hits: AtomicU64,
}

type CompileJob = Box<dyn FnOnce() + Send>;

/// Niceness of the compile thread: running tasks get the CPU first.
const COMPILE_NICENESS: libc::c_int = 10;

fn start_compiler() -> Result<std::sync::mpsc::Sender<CompileJob>, RegistryError> {
    let (tx, rx) = std::sync::mpsc::channel::<CompileJob>();
    std::thread::Builder::new()
        .name("taskhost-compile".into())
        .spawn(move || {
            // SAFETY: plain syscalls on this thread's own id; a failure only
            // leaves the default priority.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, COMPILE_NICENESS);
            }
            while let Ok(job) = rx.recv() {
                job();
            }
        })
        .map_err(|e| StoreError::CommitFailed(format!("cannot start the compile thread: {e}")))?;
    Ok(tx)
}

pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn valid_version(version: &str) -> bool {
    (1..=64).contains(&version.len()) && version.chars().all(|c| c.is_ascii_alphanumeric() || ".-_+".contains(c))
}

/// Writes a compiled artifact (atomically) and returns its sha256.
fn write_artifact(plugin: &Plugin, path: &std::path::Path) -> Result<String, String> {
    let artifact = plugin.serialize().map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &artifact).and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| e.to_string())?;
    Ok(hex(&Sha256::digest(&artifact)))
}

/// The version a component declares in its metadata, if any.
fn declared_version(bytes: &[u8]) -> Option<String> {
    let payload = wasm_metadata::Payload::from_binary(bytes).ok()?;
    payload.metadata().version.as_ref().map(|v| v.to_string()).filter(|v| valid_version(v))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    /// Loads every stored version (from the artifact cache when it can).
    pub(crate) async fn open(
        sandbox: Sandbox,
        store: Store,
        metrics: Arc<Metrics>,
        cache_dir: PathBuf,
    ) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(&cache_dir).map_err(|e| {
            StoreError::CommitFailed(format!("creating the artifact cache {}: {e}", cache_dir.display()))
        })?;
        let registry = Self {
            fingerprint: sandbox.fingerprint(),
            sandbox,
            store,
            metrics,
            cache_dir,
            compiler: std::sync::Mutex::new(start_compiler()?),
            entries: RwLock::default(),
            compiled: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        };
        for (name, stored) in registry.store.plugins()? {
            let PluginEntry { versions, latest, manifest } = stored;
            let manifest = manifest.map(|t| Manifest::parse(&t)).transpose().map_err(RegistryError::BadManifest)?;
            let mut entry = Entry { latest, manifest, ..Entry::default() };
            for info in versions {
                let bytes = registry
                    .store
                    .blob(&info.digest)?
                    .ok_or_else(|| StoreError::Corrupt(format!("blob {} of plugin {name} is missing", info.digest)))?;
                let (state, plugin, load_time, from_cache) = match registry.load_stored(&name, &info, &bytes).await {
                    Ok(o) => (VersionState::Live, Some(o.plugin), Some(o.took), o.from_cache),
                    Err(e) => (VersionState::Failed(e.to_string()), None, None, false),
                };
                let loaded = plugin.is_some();
                entry.slots.push(Slot { status: VersionStatus { info, state, load_time, from_cache, loaded }, plugin });
            }
            registry.write().insert(name, entry);
        }
        registry.update_gauge();
        Ok(registry)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Compilations done and cache hits since start.
    pub(crate) fn load_counts(&self) -> (u64, u64) {
        (self.compiled.load(Ordering::Relaxed), self.cache_hits.load(Ordering::Relaxed))
    }

    fn update_gauge(&self) {
        let live = self.read().values().map(|e| e.live().filter(|s| s.plugin.is_some()).count()).sum::<usize>();
        self.metrics.plugins_loaded.set(live as i64);
    }

    /// Compiles (or loads from the cache) one version.
    async fn load(&self, name: &str, info: &PluginVersion, bytes: &[u8]) -> Result<LoadOutcome, LoadError> {
        let started = Instant::now();
        let key = format!("{}-{}", info.digest, self.fingerprint);
        let path = self.cache_dir.join(format!("{key}.cwasm"));
        // Only an artifact whose hash this host recorded when it wrote it is
        // ever deserialised: deserialising trusts the bytes as machine code.
        if let Ok(Some(expected)) = self.store.cache_hash(&key)
            && let Ok(artifact) = std::fs::read(&path)
            && hex(&Sha256::digest(&artifact)) == expected
        {
            // SAFETY: written by this host (see above) and verified unchanged.
            match unsafe { self.sandbox.load_serialized(name, &info.version, &artifact, bytes.len()) } {
                Ok(plugin) => {
                    self.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(LoadOutcome { plugin, took: started.elapsed(), from_cache: true, written: None });
                }
                Err(error) => tracing::warn!(%name, %error, "ignoring a cached artifact"),
            }
        }
        let plugin = {
            let (sandbox, name, version, bytes) =
                (self.sandbox.clone(), name.to_owned(), info.version.clone(), bytes.to_vec());
            let (tx, rx) = tokio::sync::oneshot::channel();
            let job: CompileJob = Box::new(move || drop(tx.send(sandbox.load(&name, &version, &bytes))));
            let sent = self.compiler.lock().unwrap_or_else(|e| e.into_inner()).send(job);
            sent.map_err(|_| LoadError::Compile("the compile thread is gone".into()))?;
            rx.await.map_err(|_| LoadError::Compile("the compile thread failed".into()))??
        };
        self.compiled.fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed();
        self.metrics.compile_time.observe(took.as_secs_f64());
        let written = match write_artifact(&plugin, &path) {
            Ok(hash) => Some((key, hash)),
            Err(error) => {
                tracing::warn!(%name, %error, "could not cache the compiled artifact");
                None
            }
        };
        Ok(LoadOutcome { plugin, took, from_cache: false, written })
    }

    /// Loads a stored version and records a freshly written artifact.
    async fn load_stored(&self, name: &str, info: &PluginVersion, bytes: &[u8]) -> Result<LoadOutcome, LoadError> {
        let outcome = self.load(name, info, bytes).await?;
        if let Some((key, hash)) = outcome.written.clone()
            && let Err(error) = self.store.set_cache_hash(key, hash).await
        {
            tracing::warn!(%name, %error, "could not record the cached artifact");
        }
        Ok(outcome)
    }

    /// Adds a version: checks it, reserves its version number, compiles it
    /// off the async workers, then stores it and makes it live. Identical
    /// bytes give back the existing version. With `wait`, returns once it is
    /// live (or with why it failed); otherwise at once, `compiling`.
    pub(crate) async fn add(
        self: &Arc<Self>,
        name: &str,
        bytes: Vec<u8>,
        version: Option<String>,
        wait: bool,
    ) -> Result<(VersionStatus, bool), RegistryError> {
        if !valid_name(name) {
            return Err(RegistryError::BadName(name.to_owned()));
        }
        if bytes.len() > MAX_PLUGIN_BYTES {
            return Err(RegistryError::TooLarge { size: bytes.len() });
        }
        crate::sandbox::check_header(&bytes)?;
        let digest = hex(&Sha256::digest(&bytes));
        let status = {
            let mut entries = self.write();
            let entry = entries.entry(name.to_owned()).or_default();
            // Identical bytes: the existing version (unless it failed).
            let same = |s: &&Slot| s.status.info.digest == digest && !matches!(s.status.state, VersionState::Failed(_));
            if let Some(existing) = entry.slots.iter().find(same) {
                return Ok((existing.status.clone(), false));
            }
            let version = match version.or_else(|| declared_version(&bytes)) {
                Some(v) if !valid_version(&v) => return Err(RegistryError::BadVersion(v)),
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
            let info = PluginVersion { version, digest, size: bytes.len() as u64, created_at_ms: now_ms() };
            let status = VersionStatus {
                info,
                state: VersionState::Compiling,
                load_time: None,
                from_cache: false,
                loaded: false,
            };
            entry.slots.push(Slot { status: status.clone(), plugin: None });
            status
        };
        let job = {
            let (registry, name, info) = (self.clone(), name.to_owned(), status.info.clone());
            tokio::spawn(async move { registry.finish_add(name, info, bytes).await })
        };
        if !wait {
            return Ok((status, true));
        }
        match job.await {
            Ok(Ok(status)) => Ok((status, true)),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(RegistryError::Invalid(LoadError::Compile(format!("the compile task failed: {e}")))),
        }
    }

    async fn finish_add(
        &self,
        name: String,
        info: PluginVersion,
        bytes: Vec<u8>,
    ) -> Result<VersionStatus, RegistryError> {
        let outcome = self.load(&name, &info, &bytes).await;
        // One commit stores the version, its blob and its cached artifact's hash.
        let stored = match &outcome {
            Ok(o) => self
                .store
                .put_plugin_version(name.clone(), info.clone(), bytes, o.written.clone())
                .await
                .map_err(RegistryError::from),
            Err(_) => Ok(()),
        };
        let mut entries = self.write();
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
            (Err(e), _) => {
                slot.status.state = VersionState::Failed(e.to_string());
                Err(RegistryError::Invalid(e))
            }
            (Ok(_), Err(e)) => {
                slot.status.state = VersionState::Failed(e.to_string());
                Err(e)
            }
        };
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
        let entries = self.read();
        let entry = entries
            .get(name)
            .filter(|e| e.live().next().is_some())
            .ok_or_else(|| RegistryError::Unknown(name.into()))?;
        let wanted = version.map(str::to_owned).or_else(|| entry.current());
        let slot = wanted.as_deref().and_then(|v| entry.live().find(|s| s.status.info.version == v));
        slot.map(|s| (name.to_owned(), Loaded { info: s.status.info.clone() })).ok_or_else(|| {
            RegistryError::UnknownVersion {
                name: name.into(),
                version: wanted.unwrap_or_default(),
                known: entry.live().map(|s| s.status.info.version.as_str()).collect::<Vec<_>>().join(", "),
            }
        })
    }

    /// The compiled plugin of a pinned version.
    /// Reloads it (from the artifact cache, normally) if it was unloaded.
    pub(crate) async fn get(&self, name: &str, version: &str) -> Result<Plugin, String> {
        let info = {
            let entries = self.read();
            let slot = entries
                .get(name)
                .and_then(|e| e.live().find(|s| s.status.info.version == version))
                .ok_or_else(|| format!("plugin {name}@{version} is not live"))?;
            match &slot.plugin {
                Some(plugin) => return Ok(plugin.clone()),
                None => slot.status.info.clone(),
            }
        };
        let bytes = self
            .store
            .blob(&info.digest)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the component of {name}@{version} is missing from the store"))?;
        let LoadOutcome { plugin, took, from_cache: cached, .. } =
            self.load_stored(name, &info, &bytes).await.map_err(|e| e.to_string())?;
        let mut entries = self.write();
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

    /// Frees the compiled code of every live version that is not what its
    /// name resolves to and that `in_use` says no unfinished task needs.
    /// Running tasks keep their own reference until they end.
    pub(crate) fn unload_unreferenced(&self, in_use: impl Fn(&str, &str) -> bool) {
        let mut entries = self.write();
        for (name, entry) in entries.iter_mut() {
            let current = entry.current();
            for slot in &mut entry.slots {
                let version = &slot.status.info.version;
                if slot.plugin.is_some() && Some(version) != current.as_ref() && !in_use(name, version) {
                    slot.plugin = None;
                    slot.status.loaded = false;
                }
            }
        }
        drop(entries);
        self.update_gauge();
    }

    /// The manifest of a plugin, if the operator set one.
    pub(crate) fn manifest(&self, name: &str) -> Option<Manifest> {
        self.read().get(name).and_then(|e| e.manifest.clone())
    }

    /// Sets (or clears) a plugin's manifest.
    pub(crate) async fn set_manifest(&self, name: &str, manifest: Option<Manifest>) -> Result<(), RegistryError> {
        if !valid_name(name) {
            return Err(RegistryError::BadName(name.to_owned()));
        }
        let text = manifest.as_ref().map(Manifest::to_toml).transpose().map_err(RegistryError::BadManifest)?;
        self.store
            .edit_plugin(name.to_owned(), move |entry| {
                entry.manifest = text;
                Vec::new()
            })
            .await?;
        self.write().entry(name.to_owned()).or_default().manifest = manifest;
        Ok(())
    }

    /// Makes `version` what a plain name resolves to (rollback).
    pub(crate) async fn set_latest(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        self.resolve(&format!("{name}@{version}"))?;
        let v = version.to_owned();
        self.store
            .edit_plugin(name.to_owned(), move |entry| {
                entry.latest = Some(v);
                Vec::new()
            })
            .await?;
        if let Some(entry) = self.write().get_mut(name) {
            entry.latest = Some(version.to_owned());
        }
        Ok(())
    }

    /// Removes a version (the caller checked no unfinished task uses it).
    /// Its compiled code is freed once running tasks let go of it.
    pub(crate) async fn delete(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        let (name_s, v) = (name.to_owned(), version.to_owned());
        let digest = {
            let entries = self.read();
            let entry = entries.get(name).ok_or_else(|| RegistryError::Unknown(name.into()))?;
            let slot = entry.slots.iter().find(|s| s.status.info.version == version).ok_or_else(|| {
                RegistryError::UnknownVersion {
                    name: name.into(),
                    version: version.into(),
                    known: entry.slots.iter().map(|s| s.status.info.version.as_str()).collect::<Vec<_>>().join(", "),
                }
            })?;
            slot.status.info.digest.clone()
        };
        self.store
            .edit_plugin(name_s, move |entry| {
                entry.versions.retain(|x| x.version != v);
                if entry.latest.as_deref() == Some(v.as_str()) {
                    entry.latest = None;
                }
                vec![digest]
            })
            .await?;
        if let Some(entry) = self.write().get_mut(name) {
            entry.slots.retain(|s| s.status.info.version != version);
            if entry.latest.as_deref() == Some(version) {
                entry.latest = None;
            }
        }
        self.update_gauge();
        Ok(())
    }

    /// Records a problem the watched directory hit for `name`.
    pub(crate) fn set_watch_error(&self, name: &str, error: Option<String>) {
        self.write().entry(name.to_owned()).or_default().watch_error = error;
    }

    /// Every version of `name` with its state, the latest, the manifest and
    /// the watched directory's last error.
    pub(crate) fn detail(&self, name: &str) -> Option<PluginDetail> {
        let entries = self.read();
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
            self.read().iter().filter(|(_, e)| !e.slots.is_empty()).map(|(n, _)| n.clone()).collect();
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
