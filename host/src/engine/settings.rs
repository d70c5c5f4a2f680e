//! The live configuration file (`taskhost serve --config FILE`): tenants
//! with their quotas, queue settings, the retry backoff, task defaults and
//! ceilings, the egress allow-list, and where the server listens. The file is read as a whole and
//! checked before anything changes; it is applied at start (a broken file
//! stops the start) and again on every change, through the shared
//! debounced watcher. A broken edit changes nothing: the error is logged
//! and shown by `GET /v1/config`, and the last good file stays in force.
//!
//! What the file sets is the file's: the API refuses to change it (409),
//! and the file wins over what the API set before. Settings the file
//! does not name stay as the API (or an earlier file) left them.
//!
//! ```toml
//! [tenants.acme]            # made if new; every quota at once
//! max_running = 8
//! submit_per_sec = 500
//!
//! [queues.bulk]             # the default tenant's queue `bulk`
//! concurrency = 4
//! weight = 2
//!
//! [queues."acme/reports"]   # tenant acme's queue `reports`
//! weight = 3
//! retain_for = "30d"        # ended tasks kept 30 days
//!
//! [retry]                   # the backoff between attempts
//! base = "2s"
//! cap = "10m"
//!
//! [limits]                  # defaults of tasks whose plugin's manifest sets none
//! fuel = 1_000_000_000
//! memory = "64MiB"
//! timeout = "30s"
//!
//! [ceilings]                # the most any task may be given
//! memory = "1GiB"
//! timeout = "10m"
//!
//! [egress]                  # networks callbacks and input fetches may reach
//! allow = ["10.0.0.0/8"]
//!
//! [server]                  # moved live: listeners, TLS files
//! listen = "0.0.0.0:7070"
//! tls_cert = "/etc/taskhost/cert.pem"
//! tls_key = "/etc/taskhost/key.pem"
//! store = "postgres://taskhost@db/taskhost?sslmode=verify-full"  # read at start
//! ```

use super::{Engine, EngineError, Inner};
use crate::names::NameKind;
use crate::store::{QueueConfig, TenantQuotas, now_ms};
use crate::sync::{read, write};
use crate::watch::{self, Watch, WatchError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, Weak};
use std::time::Duration;

/// Largest configuration file read.
pub const MAX_SETTINGS_BYTES: u64 = 1 << 20;

/// A configuration file that cannot be applied; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a configuration (TOML, fields, values).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// Applying a checked file failed (the store).
    #[error("{path}: cannot apply it: {source}")]
    Apply {
        /// The file.
        path: PathBuf,
        /// Why.
        source: EngineError,
    },
}

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    #[serde(default)]
    tenants: BTreeMap<String, crate::wire::Quotas>,
    #[serde(default)]
    queues: BTreeMap<String, crate::wire::QueueChange>,
    retry: Option<RetryFile>,
    /// Task defaults where a plugin's manifest sets none.
    limits: Option<crate::registry::ManifestLimits>,
    ceilings: Option<CeilingsFile>,
    egress: Option<EgressFile>,
    server: Option<ServerFile>,
}

/// `[ceilings]`: the most any task may be given (`serve --max-fuel`,
/// `--max-memory`, `--max-timeout`, `--max-host-memory`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CeilingsFile {
    fuel: Option<u64>,
    memory: Option<String>,
    timeout: Option<String>,
    host_memory: Option<String>,
}

impl CeilingsFile {
    /// `start` with each ceiling this sets in its place.
    fn over(&self, start: &crate::Ceilings) -> Result<crate::Ceilings, String> {
        let size = |v: &Option<String>, d: u64, what: &str| {
            v.as_deref().map_or(Ok(d), |s| crate::units::parse_size(s).map_err(|e| format!("[ceilings]: {what}: {e}")))
        };
        Ok(crate::Ceilings {
            fuel: self.fuel.unwrap_or(start.fuel),
            memory_bytes: size(&self.memory, start.memory_bytes, "memory")?,
            timeout: match &self.timeout {
                Some(t) => crate::units::parse_duration(t).map_err(|e| format!("[ceilings]: timeout: {e}"))?,
                None => start.timeout,
            },
            host_bytes: size(&self.host_memory, start.host_bytes, "host_memory")?,
        })
    }
}

/// `[egress]`: networks callbacks and input fetches may reach although
/// their class is refused (in place of `serve --egress-allow`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressFile {
    allow: Vec<String>,
}

/// `[server]`: where the server listens, and its TLS files (in place of
/// the flags); `serve` moves its listeners and certificate on a change.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    listen: Option<String>,
    metrics_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    store: Option<String>,
}

/// A store's URL (`postgres://…`), which may carry a password: its `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// `url`, unchecked (the store checks it when it connects).
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreUrl(…)")
    }
}

/// The file's `[server]`, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerSettings {
    /// `listen`: the API's address.
    pub listen: Option<std::net::SocketAddr>,
    /// `metrics_listen`: `/metrics` without a token.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `tls_cert` and `tls_key`, both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `store`: the PostgreSQL database to keep the store in (as
    /// `serve --store`), read at start only.
    pub store: Option<StoreUrl>,
}

/// The `[server]` section of configuration file `path` (the whole file is
/// checked): what `taskhost serve --config` listens on.
pub fn server_settings(path: &Path) -> Result<Option<ServerSettings>, SettingsError> {
    Ok(Settings::read(path)?.server)
}

/// Watches configuration file `path` and hands each good version's
/// `[server]` (default when it has none) to `changed`, on the watch's own
/// thread; a broken version is skipped (the engine's own watch logs it).
/// Dropping the handle stops the watch.
pub fn watch_server_settings(
    path: PathBuf,
    mut changed: impl FnMut(ServerSettings) + Send + 'static,
) -> Result<ServerWatch, WatchError> {
    // The watcher names changed files by absolute paths.
    let path = std::path::absolute(&path).unwrap_or(path);
    let watch = watch::start("server-watch", &[watch::folder_of(&path)], Vec::new(), move |paths, _| {
        if paths.contains(&path)
            && let Ok(server) = server_settings(&path)
        {
            changed(server.unwrap_or_default());
        }
        ControlFlow::Continue(())
    })?;
    Ok(ServerWatch { _watch: watch })
}

/// A watch of the configuration file's `[server]`
/// ([`watch_server_settings`]).
#[derive(Debug)]
pub struct ServerWatch {
    _watch: Watch,
}

/// `[retry]`: the backoff between attempts (`serve --retry-base` and
/// `--retry-cap` where the file leaves one out).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    base: Option<String>,
    cap: Option<String>,
}

/// A checked configuration: tenants and queues by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Settings {
    pub(crate) tenants: BTreeMap<String, TenantQuotas>,
    pub(crate) queues: BTreeMap<String, QueueConfig>,
    /// `[retry]`'s base and cap, each where the file sets it.
    pub(crate) retry: Option<(Option<Duration>, Option<Duration>)>,
    /// `[limits]`: task defaults, each over the server's own.
    pub(crate) limits: Option<crate::registry::ManifestLimits>,
    /// `[ceilings]`, each over the server's own.
    pub(crate) ceilings: Option<CeilingsFile>,
    /// `[egress] allow`.
    pub(crate) egress: Option<Vec<ipnet::IpNet>>,
    /// `[server]`.
    pub(crate) server: Option<ServerSettings>,
}

/// A TOML error as its line, column and message, without the excerpt of
/// the file toml's own text quotes: the excerpt may be a line holding a
/// secret (`[server] store`'s password).
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {}", error.message().trim_end())
        }
        None => error.message().trim_end().to_owned(),
    }
}

impl Settings {
    /// Parses and checks `text` (read from `path`, for messages).
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        let invalid = |message: String| SettingsError::Invalid { path: path.to_owned(), message };
        let file: SettingsFile = toml::from_str(text).map_err(|e| invalid(toml_error(text, &e)))?;
        let mut settings = Settings::default();
        for (name, quotas) in file.tenants {
            crate::names::name(NameKind::Tenant, &name).map_err(|e| invalid(format!("[tenants]: {e}")))?;
            let quotas = TenantQuotas::from(&quotas);
            super::tenants::check_quotas(&quotas).map_err(|e| invalid(format!("[tenants.{name}]: {e}")))?;
            settings.tenants.insert(name, quotas);
        }
        for (key, change) in file.queues {
            crate::tenant::check_key(NameKind::Queue, &key).map_err(|e| invalid(format!("[queues]: {e}")))?;
            let config =
                super::admin::queue_config(&change).map_err(|e| invalid(format!("[queues.\"{key}\"]: {e}")))?;
            // (A queue's tenant may come from the API: checked when applied.)
            settings.queues.insert(key, config);
        }
        if let Some(retry) = file.retry {
            let duration = |name: &str, text: Option<String>| {
                text.map(|t| crate::units::parse_duration(&t).map_err(|e| invalid(format!("[retry]: {name}: {e}"))))
                    .transpose()
            };
            let (base, cap) = (duration("base", retry.base)?, duration("cap", retry.cap)?);
            if let (Some(base), Some(cap)) = (base, cap)
                && cap < base
            {
                return Err(invalid(format!(
                    "[retry]: cap ({}) is shorter than base ({})",
                    humantime::format_duration(cap),
                    humantime::format_duration(base)
                )));
            }
            settings.retry = Some((base, cap));
        }
        if let Some(limits) = file.limits {
            let named = |e: String| format!("[limits]: {}", e.trim_start_matches("limits."));
            let given = limits.over(&crate::Limits::default()).map_err(|e| invalid(named(e)))?;
            if given.fuel == 0 || given.memory_bytes == 0 || given.timeout.is_zero() {
                return Err(invalid("[limits]: fuel, memory and timeout must be greater than zero".into()));
            }
            settings.limits = Some(limits);
        }
        if let Some(ceilings) = file.ceilings {
            ceilings.over(&crate::Ceilings::default()).map_err(invalid)?;
            settings.ceilings = Some(ceilings);
        }
        if let Some(egress) = file.egress {
            let allow = egress.allow.iter().map(|n| crate::egress::parse_network(n)).collect::<Result<Vec<_>, _>>();
            settings.egress = Some(allow.map_err(|e| invalid(format!("[egress]: allow: {e}")))?);
        }
        if let Some(server) = file.server {
            let address = |what: &str, text: Option<String>| {
                text.map(|t| t.parse().map_err(|e| invalid(format!("[server]: {what} `{t}`: {e}")))).transpose()
            };
            let tls = match (server.tls_cert, server.tls_key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => return Err(invalid("[server]: give both tls_cert and tls_key, or neither".into())),
            };
            // The URL is not echoed: it may hold a password.
            if let Some(url) = &server.store
                && !crate::store::postgres::is_postgres_url(url)
            {
                return Err(invalid("[server]: store must be a postgres:// or postgresql:// URL".into()));
            }
            settings.server = Some(ServerSettings {
                listen: address("listen", server.listen)?,
                metrics_listen: address("metrics_listen", server.metrics_listen)?,
                tls,
                store: server.store.map(StoreUrl),
            });
        }
        Ok(settings)
    }

    /// Reads and checks `path`.
    pub(crate) fn read(path: &Path) -> Result<Self, SettingsError> {
        use std::io::Read as _;
        let file = std::fs::File::open(path).map_err(|source| SettingsError::Read { path: path.to_owned(), source })?;
        let mut text = String::new();
        file.take(MAX_SETTINGS_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|source| SettingsError::Read { path: path.to_owned(), source })?;
        if text.len() as u64 > MAX_SETTINGS_BYTES {
            return Err(SettingsError::Invalid {
                path: path.to_owned(),
                message: format!("the file is larger than {MAX_SETTINGS_BYTES} bytes"),
            });
        }
        Self::parse(path, &text)
    }
}

/// Where the configuration stands: the file, its last good settings, when
/// they were applied, and the last reload's error.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileState {
    pub(crate) path: Option<PathBuf>,
    pub(crate) applied: Settings,
    pub(crate) applied_at_ms: Option<u64>,
    pub(crate) error: Option<String>,
}

/// The configuration file's state, shared by the engine and its watch.
#[derive(Debug, Default)]
pub(crate) struct FileSettings(RwLock<FileState>);

impl FileSettings {
    /// The state now.
    pub(crate) fn state(&self) -> FileState {
        read(&self.0).clone()
    }

    /// Whether the file sets tenant `name`'s quotas.
    pub(crate) fn sets_tenant(&self, name: &str) -> Option<PathBuf> {
        let state = read(&self.0);
        state.applied.tenants.contains_key(name).then(|| state.path.clone()).flatten()
    }

    /// Whether the file sets queue `key`.
    pub(crate) fn sets_queue(&self, key: &str) -> Option<PathBuf> {
        let state = read(&self.0);
        state.applied.queues.contains_key(key).then(|| state.path.clone()).flatten()
    }
}

impl Engine {
    /// Applies `settings` read from `path`: tenants first (a queue may
    /// belong to one), then queues. Stops at the first failure, with what
    /// was applied before it kept.
    pub(crate) async fn apply_settings(&self, path: &Path, settings: Settings) -> Result<(), SettingsError> {
        let apply = |source| SettingsError::Apply { path: path.to_owned(), source };
        let invalid = |message: String| SettingsError::Invalid { path: path.to_owned(), message };
        // Every queue's tenant exists (or the file makes it), checked before
        // anything changes.
        for key in settings.queues.keys() {
            let tenant = crate::tenant::tenant_of(key);
            if !self.tenant_exists(tenant) && !settings.tenants.contains_key(tenant) {
                return Err(apply(EngineError::UnknownTenant(tenant.to_owned())));
            }
        }
        // Task defaults and ceilings next: the host must be able to give
        // them, or nothing changes.
        let runner = &self.inner.shared.runner;
        if let Some(host) = runner.host_limits() {
            let wanted = match (&settings.limits, &settings.ceilings) {
                (None, None) => None,
                (limits, ceilings) => {
                    let defaults = match limits {
                        Some(l) => l
                            .over(&host.start.0)
                            .map_err(|e| invalid(format!("[limits]: {}", e.trim_start_matches("limits."))))?,
                        None => host.start.0.clone(),
                    };
                    let ceilings = match ceilings {
                        Some(c) => c.over(&host.start.1).map_err(invalid)?,
                        None => host.start.1.clone(),
                    };
                    Some((defaults, ceilings))
                }
            };
            runner.set_host_limits(wanted).map_err(invalid)?;
        }
        self.inner.shared.config.egress.set_allowed(settings.egress.clone());
        // (`[server]` is `serve`'s: it moves its listeners and TLS files.)
        for (name, quotas) in &settings.tenants {
            self.put_tenant(name, quotas.clone(), "config file").await.map_err(apply)?;
        }
        // (Each queue's tenant was checked above, and the file's are made.)
        for (key, config) in &settings.queues {
            self.inner.admin.set_queue(key, config.clone()).await.map_err(apply)?;
        }
        // The file's backoff, else the server's own (a `[retry]` taken out
        // of the file gives the server's back).
        let serve = self.inner.shared.config.retry;
        let (base, cap) = settings.retry.unwrap_or_default();
        *write(&self.inner.shared.retry) =
            super::RetryPolicy { base: base.unwrap_or(serve.base), cap: cap.unwrap_or(serve.cap) };
        let mut state = write(&self.inner.settings.0);
        state.path = Some(path.to_owned());
        state.applied = settings;
        state.applied_at_ms = Some(now_ms());
        state.error = None;
        Ok(())
    }

    /// Reads and applies the configuration file `path`; on failure the
    /// error is kept for `GET /v1/config` (and returned).
    pub(crate) async fn reload_settings(&self, path: &Path) -> Result<(), SettingsError> {
        let read_path = path.to_owned();
        let settings = crate::sync::blocking(move || Settings::read(&read_path)).await;
        let result = match settings {
            Ok(settings) => self.apply_settings(path, settings).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            let mut state = write(&self.inner.settings.0);
            state.path = Some(path.to_owned());
            state.error = Some(e.to_string());
        }
        result
    }
}

/// Watches the configuration file and applies each change; a change that
/// does not apply is logged and leaves the last good settings in force.
/// The watch ends when the engine is dropped.
pub(crate) fn watch(inner: Weak<Inner>, file: PathBuf) -> Result<Watch, WatchError> {
    let runtime = tokio::runtime::Handle::current();
    watch::start("config-watch", &[watch::folder_of(&file)], Vec::new(), move |paths, _| {
        let Some(inner) = inner.upgrade() else { return ControlFlow::Break(()) };
        if paths.contains(&file) {
            let engine = Engine { inner };
            match runtime.block_on(engine.reload_settings(&file)) {
                Ok(()) => tracing::info!(file = %file.display(), "configuration applied"),
                Err(error) => {
                    tracing::error!(%error, "configuration change refused; the last good one stays in force")
                }
            }
        }
        ControlFlow::Continue(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, String> {
        Settings::parse(Path::new("taskhost.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_sets_tenants_and_queues_and_a_bad_one_says_where() {
        let settings = parse(
            "[tenants.acme]\nmax_running = 8\n[queues.bulk]\nconcurrency = 4\nweight = 2\n\
             [queues.\"acme/reports\"]\nweight = 3\nretain_for = \"30d\"\nretain_count = 100\n",
        )
        .unwrap();
        assert_eq!(settings.tenants["acme"].max_running, Some(8));
        assert_eq!(settings.queues["bulk"], QueueConfig { concurrency: Some(4), weight: 2, ..QueueConfig::default() });
        let reports = &settings.queues["acme/reports"];
        assert_eq!(
            (reports.weight, reports.retain_for_ms, reports.retain_count),
            (3, Some(30 * 86_400_000), Some(100))
        );
        assert_eq!(parse("").unwrap(), Settings::default());
        let all = parse(
            "[limits]\nfuel = 5\nmemory = \"64MiB\"\n[ceilings]\ntimeout = \"1m\"\n\
             [egress]\nallow = [\"10.0.0.0/8\", \"::1\"]\n\
             [server]\nlisten = \"0.0.0.0:7070\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\
             store = \"postgres://u:hunter2@db/tasks\"\n",
        )
        .unwrap();
        assert_eq!(all.limits.unwrap().over(&crate::Limits::default()).unwrap().memory_bytes, 64 << 20);
        assert_eq!(all.ceilings.unwrap().over(&crate::Ceilings::default()).unwrap().timeout, Duration::from_secs(60));
        assert_eq!(all.egress.unwrap().len(), 2);
        let server = all.server.unwrap();
        assert_eq!(server.listen, Some("0.0.0.0:7070".parse().unwrap()));
        assert_eq!(server.tls, Some(("c.pem".into(), "k.pem".into())));
        assert_eq!(server.store.as_ref().map(StoreUrl::as_str), Some("postgres://u:hunter2@db/tasks"));
        assert!(!format!("{server:?}").contains("hunter2"), "{server:?}");
        let retry = parse("[retry]\ncap = \"10m\"\n").unwrap().retry;
        assert_eq!(retry, Some((None, Some(Duration::from_secs(600)))));
        for (bad, says) in [
            ("[tenants.acme]\nmax_runing = 8\n", "unknown field `max_runing`"),
            ("listen = \"0.0.0.0:1\"\n", "unknown field `listen`"),
            ("[tenants.\"a b\"]\n", "invalid tenant name `a b`"),
            ("[tenants.acme]\nmax_running = 0\n", "[tenants.acme]: quota `max_running` must be at least 1"),
            ("[queues.\"a/b/c\"]\n", "[queues]: invalid queue name"),
            ("[queues.bulk]\nweight = 0\n", "weight 0 is out of range"),
            ("[queues.bulk]\nretain_for = \"a while\"\n", "[queues.\"bulk\"]: retain_for: invalid duration"),
            ("[queues.bulk]\nretain_count = 0\n", "retain_count must be at least 1"),
            ("[tenants.acme\n", "taskhost.toml"),
            ("[limits]\nmemory = \"lots\"\n", "[limits]: memory"),
            ("[limits]\nfuel = 0\n", "must be greater than zero"),
            ("[ceilings]\nmax_output = \"1KiB\"\n", "unknown field `max_output`"),
            ("[ceilings]\ntimeout = \"soon\"\n", "[ceilings]: timeout"),
            ("[egress]\nallow = [\"nowhere\"]\n", "[egress]: allow: `nowhere` is not a network"),
            ("[server]\nlisten = \"here\"\n", "[server]: listen `here`"),
            ("[server]\ntls_cert = \"c.pem\"\n", "give both tls_cert and tls_key"),
            ("[server]\nstore = \"mysql://u:hunter2@db\"\n", "store must be a postgres:// or postgresql:// URL"),
            ("[server]\nstor = \"postgres://u:hunter2@db\"\n", "line 2, column 1: unknown field `stor`"),
            ("[server]\nstore = \"postgres://u:hunter2@db\n", "line 2, column"),
            ("[server]\nstore = \"postgres://u:hunter2@a\"\nstore = \"postgres://b\"\n", "line 3"),
            ("[retry]\nbase = \"soon\"\n", "[retry]: base: invalid duration `soon`"),
            ("[retry]\nbase = \"1m\"\ncap = \"1s\"\n", "[retry]: cap (1s) is shorter than base (1m)"),
            ("[retry]\njitter = true\n", "unknown field `jitter`"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says) && e.starts_with("taskhost.toml"), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "the file's text is not quoted: {e}");
        }
    }
}
