//! `taskhost serve`: the engine behind the HTTP API, with the server's
//! bounds (connections, header and body timeouts) and the compile budget.

use super::{EXIT_STORE, EXIT_USAGE, fail};
use clap::Args;
use futures::FutureExt as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use taskhost::api::{Access, ServeConfig};
use taskhost::auth::Auth;
use taskhost::engine::{Engine, EngineConfig, EngineError, RetryPolicy, default_data_dir};
use taskhost::registry::{Compiler, ProcessCompiler};
use taskhost::store::{self, StoreError};
use taskhost::units::{parse_duration, parse_size};

/// How long the process waits, once the engine has closed, for leftover
/// blocking work before it exits anyway.
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(5);

/// File descriptors kept for everything but client connections (the
/// store, artifacts, uploads, callbacks, compile processes, watches).
const RESERVED_FDS: u64 = 512;

/// Default compile budget.
const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Data directory (default: $TASKHOST_DATA, else $XDG_DATA_HOME/taskhost,
    /// else ~/.local/share/taskhost).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Also serve `/metrics` here without a token, for a scraper only it
    /// reaches (on `--listen`, `/metrics` needs a `metrics`-scoped token).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A network completion callbacks may reach although it is loopback,
    /// private, link-local or otherwise refused, e.g. `10.1.0.0/16` or
    /// `127.0.0.1` (repeat for more). Public addresses need no entry.
    #[arg(long = "egress-allow", value_name = "CIDR", value_parser = taskhost::egress::parse_network)]
    egress_allow: Vec<ipnet::IpNet>,
    /// Let every request in without a token, as an admin. Only for a host
    /// nothing else can reach; it is refused on a non-loopback --listen.
    #[arg(long)]
    no_auth: bool,
    /// Most tasks running in sandboxes at once (default 4 × CPUs). A slot
    /// is held only while a sandbox runs, not while commits are awaited.
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Most tasks claimed (started, so `running`) ahead of a free slot,
    /// so short tasks' commits overlap other runs; used less the longer
    /// tasks run (default 1024).
    #[arg(long, value_name = "N")]
    claim_ahead: Option<usize>,
    /// Memory that running tasks may reserve together (each its memory
    /// limit plus its host budget); a task that does not fit waits, e.g.
    /// `8GiB` (default: half of the machine's or cgroup's memory).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_budget: Option<u64>,
    /// Commit every transition on its own (slower; for comparison).
    #[arg(long)]
    no_group_commit: bool,
    /// Keep the store in this PostgreSQL database
    /// (`postgres://USER[:PASSWORD]@HOST:PORT/DATABASE`, or
    /// `postgres:///DATABASE?host=/SOCKET/DIR`) instead of the redb file in
    /// the data directory, which still holds the artifact cache and
    /// uploads. TLS: add `?sslmode=verify-full&sslrootcert=CA.pem`. The
    /// configuration file's `[server] store` wins. One host serves a
    /// database alone (others may wait: --standby), unless every host
    /// serving it passes --many-hosts.
    #[arg(long, value_name = "URL", env = "TASKHOST_STORE", hide_env_values = true, value_parser = store_url)]
    store: Option<taskhost::engine::StoreUrl>,
    /// With --store: how long this host holds the database without a
    /// renewal (it renews every 2 s). Another host starting after a lapse
    /// (this one frozen or cut off) takes over, and this one's writes are
    /// refused from then on. At least 6s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "15s")]
    store_lease: Duration,
    /// With --store: while another host serves the database, wait (every
    /// request answered 503, `/healthz` saying `standby` and who serves)
    /// and take over once it stops, or once its lease lapses, instead of
    /// refusing to start.
    #[arg(long)]
    standby: bool,
    /// With --store: serve the database together with the other hosts
    /// started with --many-hosts, each claiming tasks under leases, one of
    /// them (elected) running retention. Each needs a data directory of
    /// its own. Refused beside a host serving the database alone.
    #[arg(long, conflicts_with = "standby")]
    many_hosts: bool,
    /// Watch DIR for `NAME.wasm`, `NAME@VERSION.wasm` and `NAME.toml`
    /// (manifest) files and load them live.
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// Models file (TOML) with the models plugins may call; reloaded when
    /// it changes; `POST /v1/models` writes to it. Default: DATA/models.toml.
    #[arg(long, value_name = "FILE")]
    models: Option<PathBuf>,
    /// Configuration file (TOML): tenants with their quotas, queue
    /// settings, the retry backoff, task defaults and ceilings, the egress
    /// allow-list (all applied at start and on every change; a broken edit
    /// is refused and the last good one kept), and `[server]` (listen
    /// addresses and TLS files, read at start). The file wins over the
    /// flags and the API. See docs/security.md.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Retry backoff base, e.g. `1s`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retry_base: Option<Duration>,
    /// Longest retry backoff, e.g. `5m`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retry_cap: Option<Duration>,
    /// Ceiling: most fuel any task may be given (default 100000000000).
    #[arg(long, value_name = "N")]
    max_fuel: Option<u64>,
    /// Ceiling: most linear memory any task may be given, e.g. `1GiB`
    /// (default 4GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Ceiling: longest wall-clock budget any task may be given, e.g. `5m`
    /// (default 15m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_timeout: Option<Duration>,
    /// Host budget of a task whose manifest sets none: what one attempt may
    /// make the host hold outside its own memory, e.g. `16MiB` (default 64MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    host_memory: Option<u64>,
    /// Ceiling: largest host budget a manifest may give (default 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_host_memory: Option<u64>,
    /// Threads for guests' blocking file I/O (default 64); while guests
    /// hold them all, tasks with granted directories fail at once as a
    /// retried host error.
    #[arg(long, value_name = "N")]
    guest_file_threads: Option<usize>,
    /// Bytes of each attempt's log records, stdout and stderr kept with
    /// the task: its first and its latest lines, e.g. `256KiB` (default
    /// 64KiB, at most 16MiB; 0 keeps none).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    log_keep: Option<u64>,
    /// The most a submission may ask each attempt's transcript to keep
    /// (its `log_keep_bytes`), e.g. `4MiB` (default 1MiB, or `--log-keep`
    /// when that is more; at most 16MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    log_keep_max: Option<u64>,
    /// How long ended work is kept before it is deleted with its input,
    /// output and logs: tasks outside flows (unless their queue sets its
    /// own) and whole flows, e.g. `3d`, `12h`, or `forever` (default 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_retain_for)]
    retain_for: Option<RetainFor>,
    /// How many ended tasks (outside flows) each queue keeps, and ended
    /// flows each tenant keeps, at most: the oldest go first (default: no
    /// count, only `--retain-for`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    retain_count: Option<u64>,
    /// How often ended work past its retention is looked for (default 1m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retention_interval: Option<Duration>,
    /// Most queues; a task or setting naming a new queue past this is
    /// refused (default 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_queues: Option<u32>,
    /// Most plugin names; an upload of a new name past this is refused
    /// (default 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_plugins: Option<u32>,
    /// Most client connections open at once (default 512). At the cap a
    /// new connection closes the one idle the longest.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// How long a client may take to send a request's head, counted from
    /// when it connected or its previous response went out; also the idle
    /// timeout (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    header_timeout: Option<Duration>,
    /// How long a request's body may take to arrive (default 60s); past it
    /// the answer is 408.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    body_timeout: Option<Duration>,
    /// Longest one plugin compile may take (default 60s); past it the
    /// compile process is killed and the upload refused (`compile_timeout`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    compile_timeout: Option<Duration>,
}

/// The most `--log-keep` takes: what each running attempt may hold of
/// its lines, and each attempt may store.
const MAX_LOG_KEEP: u64 = 16 << 20;

/// `--retain-for`: a duration, or `forever` (`None`).
#[derive(Debug, Clone, Copy)]
struct RetainFor(Option<Duration>);

fn parse_retain_for(text: &str) -> Result<RetainFor, String> {
    if text.trim() == "forever" { Ok(RetainFor(None)) } else { parse_duration(text).map(|d| RetainFor(Some(d))) }
}

/// Moves the API's and `/metrics`' listeners to the addresses a changed
/// configuration file names (on the file watch's thread).
struct ListenerMover {
    runtime: tokio::runtime::Handle,
    api: (SocketAddr, tokio::sync::mpsc::Sender<tokio::net::TcpListener>),
    metrics: Option<(SocketAddr, tokio::sync::mpsc::Sender<tokio::net::TcpListener>)>,
    tls: Option<TlsFiles>,
    no_auth: bool,
    scheme: &'static str,
    /// The file's store URL at start (a change needs a restart).
    store: Option<taskhost::engine::StoreUrl>,
}

/// The server's certificate, the files it comes from, and their watch.
struct TlsFiles {
    cert: Arc<taskhost::tls::ServerCert>,
    paths: (PathBuf, PathBuf),
    _watch: taskhost::tls::CertWatch,
}

impl ListenerMover {
    fn apply(&mut self, server: &taskhost::engine::ServerSettings) {
        self.move_tls(server);
        if server.store != self.store {
            tracing::warn!("[server] store changed: the store stays the one this host started on until it restarts");
            self.store = server.store.clone();
        }
        if let Some(to) = server.listen
            && to != self.api.0
        {
            if self.no_auth && !to.ip().is_loopback() {
                tracing::error!(%to, "not moving: --no-auth serves loopback addresses only; still on {}", self.api.0);
            } else if let Some(at) = self.bind(to, &self.api.1) {
                if self.scheme == "http" && !at.ip().is_loopback() {
                    eprintln!("taskhost: WARNING: serving plain HTTP on {at}, which other machines can reach");
                }
                eprintln!("taskhost: now serving on {}://{at} (was {})", self.scheme, self.api.0);
                self.api.0 = to;
            }
        }
        match (&self.metrics, server.metrics_listen) {
            (Some((from, sender)), Some(to)) if to != *from => {
                if let Some(at) = self.bind(to, sender) {
                    eprintln!("taskhost: /metrics now on http://{at} (was {from})");
                    self.metrics = Some((to, sender.clone()));
                }
            }
            (None, Some(to)) => tracing::warn!(%to, "metrics_listen added: restart the server to serve /metrics there"),
            _ => {}
        }
    }

    /// Serves the certificate of the TLS files `server` names, when they
    /// are others than those in use, and watches them instead.
    fn move_tls(&mut self, server: &taskhost::engine::ServerSettings) {
        let Some((cert, key)) = &server.tls else { return };
        let Some(tls) = &mut self.tls else {
            tracing::warn!("[server] names TLS files: restart the server to serve HTTPS");
            return;
        };
        if tls.paths == (cert.clone(), key.clone()) {
            return;
        }
        if let Err(error) = tls.cert.reload(cert, key) {
            tracing::error!(%error, "the TLS files [server] names cannot be used; the certificate in use stays");
            return;
        }
        match tls.cert.watch(cert.clone(), key.clone()) {
            Ok(watch) => {
                tls._watch = watch;
                tls.paths = (cert.clone(), key.clone());
                eprintln!("taskhost: the TLS certificate now comes from {}", cert.display());
            }
            Err(error) => tracing::error!(%error, "cannot watch the TLS files [server] names"),
        }
    }

    /// Binds `to` and hands the listener over; where it bound, or `None`
    /// (logged) when it cannot.
    fn bind(&self, to: SocketAddr, sender: &tokio::sync::mpsc::Sender<tokio::net::TcpListener>) -> Option<SocketAddr> {
        match self.runtime.block_on(tokio::net::TcpListener::bind(to)) {
            Ok(listener) => {
                let at = listener.local_addr().unwrap_or(to);
                sender.blocking_send(listener).ok().map(|()| at)
            }
            Err(error) => {
                tracing::error!(%error, %to, "cannot listen there; the server stays where it was");
                None
            }
        }
    }
}

/// The server's bounds from the flags, checked.
fn serve_config(args: &ServeArgs) -> Result<(ServeConfig, Option<Arc<taskhost::tls::ServerCert>>), String> {
    let defaults = ServeConfig::default();
    let nonzero = |flag: &str, d: Option<Duration>, default: Duration| match d {
        Some(d) if d.is_zero() => Err(format!("{flag} must be greater than zero")),
        Some(d) => Ok(d),
        None => Ok(default),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let (config, resolver) = taskhost::tls::reloadable_server_config(cert, key).map_err(|e| e.to_string())?;
            Some((config, resolver))
        }
        _ => None,
    };
    let max_connections = match args.max_connections {
        Some(0) => return Err("--max-connections must be at least 1".into()),
        Some(n) => n,
        None => defaults.max_connections,
    };
    Ok((
        ServeConfig {
            max_connections,
            header_timeout: nonzero("--header-timeout", args.header_timeout, defaults.header_timeout)?,
            body_timeout: nonzero("--body-timeout", args.body_timeout, defaults.body_timeout)?,
            tls: tls.as_ref().map(|(config, _)| config.clone()),
            ..defaults
        },
        tls.map(|(_, resolver)| resolver),
    ))
}

/// Raises the soft limit on open files towards what `connections` need
/// (up to the hard limit); warns when even that is too few.
fn ensure_fd_limit(connections: usize) {
    let needed = connections as u64 + RESERVED_FDS;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on this process with a valid pointer.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if got != 0 {
        let error = std::io::Error::last_os_error();
        eprintln!("taskhost: WARNING: cannot read the open-file limit: {error}");
        return;
    }
    if limit.rlim_cur >= needed {
        return;
    }
    let raised = libc::rlimit { rlim_cur: needed.min(limit.rlim_max), rlim_max: limit.rlim_max };
    // SAFETY: as above.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    let now = if set == 0 { raised.rlim_cur } else { limit.rlim_cur };
    if now < needed {
        eprintln!(
            "taskhost: WARNING: at most {now} open files (hard limit {}); {connections} connections need about \
             {needed}: lower --max-connections or raise `ulimit -n`",
            limit.rlim_max
        );
    }
}

/// `--store`'s URL (checked when the store connects; never shown).
fn store_url(text: &str) -> Result<taskhost::engine::StoreUrl, String> {
    Ok(taskhost::engine::StoreUrl::new(text))
}

pub(crate) async fn serve(mut args: ServeArgs) -> ExitCode {
    // The file's `[server]` wins over the flags, as the file does
    // everywhere; the whole file is checked now, so a broken one stops the
    // start before anything listens.
    let mut file_store = None;
    if let Some(path) = &args.config {
        match taskhost::engine::server_settings(path) {
            Ok(Some(server)) => {
                file_store = server.store.clone();
                args.listen = server.listen.unwrap_or(args.listen);
                args.metrics_listen = server.metrics_listen.or(args.metrics_listen);
                if let Some((cert, key)) = server.tls {
                    (args.tls_cert, args.tls_key) = (Some(cert), Some(key));
                }
                if let Some(url) = server.store {
                    if args.store.as_ref().is_some_and(|given| *given != url) {
                        eprintln!(
                            "taskhost: the configuration file's [server] store is used, not --store/$TASKHOST_STORE"
                        );
                    }
                    args.store = Some(url);
                }
            }
            Ok(None) => {}
            Err(e) => return fail(EXIT_USAGE, &format!("--config: {e}")),
        }
    }
    let (serve_config, server_cert) = match serve_config(&args) {
        Ok(c) => c,
        Err(message) => return fail(EXIT_USAGE, &message),
    };
    // A renewed certificate is served to new connections without a restart.
    let mut tls_files = match (server_cert, &args.tls_cert, &args.tls_key) {
        (Some(cert), Some(cert_path), Some(key_path)) => match cert.watch(cert_path.clone(), key_path.clone()) {
            Ok(watch) => Some(TlsFiles { cert, paths: (cert_path.clone(), key_path.clone()), _watch: watch }),
            Err(e) => return fail(EXIT_USAGE, &format!("cannot watch the TLS files: {e}")),
        },
        _ => None,
    };
    let budget = match args.compile_timeout {
        Some(d) if d.is_zero() => return fail(EXIT_USAGE, "--compile-timeout must be greater than zero"),
        Some(d) => d,
        None => DEFAULT_COMPILE_TIMEOUT,
    };
    let compiler = match ProcessCompiler::this_program(budget) {
        Ok(process) => Compiler::Process(process),
        Err(e) => return fail(EXIT_USAGE, &format!("cannot find this program to compile plugins with: {e}")),
    };
    let mut config = EngineConfig { data_dir: args.data.unwrap_or_else(default_data_dir), ..EngineConfig::default() };
    config.compiler = compiler;
    if let Some(n) = args.concurrency {
        if n == 0 {
            return fail(EXIT_USAGE, "--concurrency must be at least 1");
        }
        config.concurrency = n;
    }
    if let Some(n) = args.claim_ahead {
        config.claim_ahead = n;
    }
    match args.memory_budget {
        Some(0) => return fail(EXIT_USAGE, "--memory-budget must be above zero"),
        Some(bytes) => config.memory_budget = bytes,
        None => {}
    }
    config.group_commit = !args.no_group_commit;
    config.store_url = args.store;
    if args.store_lease < taskhost::store::postgres::MIN_LEASE {
        return fail(
            EXIT_USAGE,
            &format!("--store-lease must be at least {}s", taskhost::store::postgres::MIN_LEASE.as_secs()),
        );
    }
    config.store_lease = args.store_lease;
    if args.standby && config.store_url.is_none() {
        return fail(EXIT_USAGE, "--standby needs a PostgreSQL store (--store, or the file's store)");
    }
    if args.many_hosts && config.store_url.is_none() {
        return fail(EXIT_USAGE, "--many-hosts needs a PostgreSQL store (--store, or the file's store)");
    }
    config.many_hosts = args.many_hosts;
    let backend = if config.store_url.is_some() { "PostgreSQL" } else { "redb" };
    let sandbox = &mut config.sandbox;
    let ceilings = &mut sandbox.ceilings;
    ceilings.fuel = args.max_fuel.unwrap_or(ceilings.fuel);
    ceilings.memory_bytes = args.max_memory.unwrap_or(ceilings.memory_bytes);
    ceilings.timeout = args.max_timeout.unwrap_or(ceilings.timeout);
    ceilings.host_bytes = args.max_host_memory.unwrap_or(ceilings.host_bytes);
    if ceilings.fuel == 0 || ceilings.memory_bytes == 0 || ceilings.timeout.is_zero() || ceilings.host_bytes == 0 {
        return fail(EXIT_USAGE, "--max-fuel, --max-memory, --max-timeout and --max-host-memory must be above zero");
    }
    if let Some(bytes) = args.host_memory {
        sandbox.default_limits.host_bytes = bytes;
    }
    match args.guest_file_threads {
        Some(0) => return fail(EXIT_USAGE, "--guest-file-threads must be at least 1"),
        Some(n) => sandbox.blocking_threads = n,
        None => {}
    }
    match args.log_keep {
        Some(bytes) if bytes > MAX_LOG_KEEP => {
            return fail(EXIT_USAGE, &format!("--log-keep is at most {}", taskhost::units::format_size(MAX_LOG_KEEP)));
        }
        Some(bytes) => config.log_keep_bytes = bytes,
        None => {}
    }
    match args.log_keep_max {
        Some(bytes) if bytes > MAX_LOG_KEEP => {
            let most = taskhost::units::format_size(MAX_LOG_KEEP);
            return fail(EXIT_USAGE, &format!("--log-keep-max is at most {most}"));
        }
        Some(bytes) => config.log_keep_ceiling = bytes,
        // The default never refuses a `--log-keep` that started before it.
        None => config.log_keep_ceiling = config.log_keep_ceiling.max(config.log_keep_bytes),
    }
    if config.log_keep_bytes > config.log_keep_ceiling {
        let size = taskhost::units::format_size;
        return fail(
            EXIT_USAGE,
            &format!(
                "--log-keep {} is over --log-keep-max {}: the default must fit the ceiling",
                size(config.log_keep_bytes),
                size(config.log_keep_ceiling)
            ),
        );
    }
    config.traces = match taskhost::trace::Traces::from_env() {
        Ok(traces) => traces,
        Err(e) => return fail(EXIT_USAGE, &format!("cannot set up traces: {e}")),
    };
    if let Some(RetainFor(keep)) = args.retain_for {
        config.retention.keep_for_ms = keep.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    }
    if let Some(n) = args.retain_count {
        config.retention.keep_count = Some(n);
    }
    if let Some(every) = args.retention_interval {
        config.retention_interval = every;
    }
    if let Some(n) = args.max_queues {
        config.max_queues = n as usize;
    }
    if let Some(n) = args.max_plugins {
        config.max_plugins = n as usize;
    }
    config.plugins_dir = args.plugins;
    config.settings_file = args.config.clone();
    config.egress = taskhost::egress::EgressPolicy::allowing(args.egress_allow.clone());
    let defaults = RetryPolicy::default();
    config.retry =
        RetryPolicy { base: args.retry_base.unwrap_or(defaults.base), cap: args.retry_cap.unwrap_or(defaults.cap) };
    let data_dir = config.data_dir.clone();
    let models_file = args.models.unwrap_or_else(|| data_dir.join("models.toml"));
    let models = match super::models::open(models_file, false).await {
        Ok(models) => models,
        Err(message) => return fail(EXIT_USAGE, &message),
    };
    if let Err(e) = models.watch() {
        eprintln!("taskhost: WARNING: the models file will not reload on change: {e}");
    }
    config.models = Some(models);
    ensure_fd_limit(serve_config.max_connections);
    if args.no_auth && !args.listen.ip().is_loopback() {
        return fail(
            EXIT_USAGE,
            &format!(
                "--no-auth is refused on {}: anyone who reaches it could run code and read every task",
                args.listen
            ),
        );
    }
    let metrics_listener = match args.metrics_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => return fail(EXIT_USAGE, &format!("cannot listen on {addr} (--metrics-listen): {e}")),
        },
        None => None,
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            return fail(EXIT_USAGE, &format!("cannot listen on {}: {e}", args.listen));
        }
    };
    // A panic while opening (a damaged store read by a dependency) ends
    // start-up with a clear error too, never with the panic's exit code.
    let settings = format!(
        "{} execution slots, claim-ahead {}, memory budget {}",
        config.concurrency,
        config.claim_ahead,
        taskhost::units::format_size(config.memory_budget)
    );
    // A standby says so in its heartbeat while it waits (the serving
    // host's `GET /v1/hosts` lists it).
    let standby = args.standby.then(|| {
        let (standby, seen) = taskhost::store::postgres::Standby::new();
        let standby = match standby_report(&config) {
            Ok(report) => standby.with_report(report),
            Err(error) => {
                tracing::error!(%error, "cannot encode this standby's report; it writes no heartbeat");
                standby
            }
        };
        config.standby = Some(standby.clone());
        (standby, seen)
    });
    // A standby listens for signals from before it waits, so none is
    // missed between standing by and serving; a host that does not stand
    // by is stopped by one while it starts, as before.
    let mut signals = None;
    let opening = std::panic::AssertUnwindSafe(Engine::open(config)).catch_unwind();
    let opened = match standby {
        None => opening.await,
        Some((standby, seen)) => {
            let metrics_config = ServeConfig::default();
            let listeners = [(Some(&listener), &serve_config), (metrics_listener.as_ref(), &metrics_config)];
            let standing = match StandbyServers::start(listeners, seen) {
                Ok(standing) => standing,
                Err(e) => return fail(EXIT_USAGE, &format!("cannot serve while standing by: {e}")),
            };
            tokio::pin!(opening);
            let (opened, told_to_stop) = tokio::select! {
                opened = &mut opening => (opened, false),
                () = signals.insert(Signals::new()).recv() => {
                    // Stops waiting; an engine that took over already
                    // finishes opening, and is closed.
                    standby.stop();
                    (opening.await, true)
                }
            };
            standing.stop().await;
            if told_to_stop {
                let took_over = matches!(&opened, Ok(Ok(_)));
                if let Ok(Ok(engine)) = opened {
                    engine.close().await;
                }
                let what = if took_over { "it had just taken over, and closed" } else { "it took nothing over" };
                eprintln!("taskhost: shutting down while standing by ({what})");
                return ExitCode::SUCCESS;
            }
            opened
        }
    };
    let mut signals = signals.unwrap_or_else(Signals::new);
    let engine = match opened {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return open_failed(&e, &data_dir, backend),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned());
            return fail(
                EXIT_STORE,
                &format!(
                    "cannot open the engine: it failed while starting ({}); if the store {} is damaged, restore it from a \
                     backup, or run `taskhost store check --data {dir}` and `taskhost store repair --data {dir}`",
                    what.unwrap_or_else(|| "no message".into()),
                    data_dir.join(store::FILE_NAME).display(),
                    dir = data_dir.display()
                ),
            );
        }
    };
    let bound = listener.local_addr().unwrap_or(args.listen);
    let counts = engine.state_counts();
    let total: i64 = counts.values().sum();
    let scheme = if serve_config.tls.is_some() { "https" } else { "http" };
    if serve_config.tls.is_none() && !bound.ip().is_loopback() {
        eprintln!(
            "taskhost: WARNING: serving plain HTTP on {bound}, which other machines can reach: tokens and task data \
             cross the network unencrypted; give --tls-cert and --tls-key"
        );
    }
    eprintln!(
        "taskhost serving on {scheme}://{bound} (data: {}, {total} tasks stored in {backend}, {} plugins; {settings})",
        data_dir.display(),
        engine.plugins().len()
    );
    if let Some(endpoint) = engine.traces().endpoint() {
        eprintln!("taskhost: traces go to {endpoint} (OTLP over HTTP)");
    }
    let auth = match Auth::load(engine.store()).await {
        Ok(auth) => Arc::new(auth),
        Err(e) => return fail(EXIT_STORE, &format!("cannot read the API tokens: {e}")),
    };
    match auth.bootstrap(&data_dir).await {
        Ok(Some(path)) => {
            eprintln!("taskhost: made an admin token; it is in {} (readable by you only)", path.display())
        }
        Ok(None) => {}
        Err(e) => return fail(EXIT_USAGE, &format!("cannot make the first admin token: {e}")),
    }
    let reloading = engine.store().serves_together().then(|| {
        // Tokens made or revoked on the other hosts count here within 2 s.
        let auth = auth.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                match auth.reload().await {
                    Ok(()) => failing = false,
                    Err(error) if !failing => {
                        failing = true;
                        tracing::warn!(%error, "reading the tokens other hosts changed failed; trying again");
                    }
                    Err(_) => {}
                }
            }
        })
        .abort_handle()
    });
    let access = if args.no_auth {
        eprintln!("taskhost: WARNING: --no-auth: every request to {bound} is let in as an admin, without a token");
        Access::open(auth)
    } else {
        Access::tokens(auth)
    };
    let app = taskhost::api::router(engine.clone(), access);
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let metrics_bound = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    // The file's `[server]` addresses move the listeners live.
    let (api_moves, metrics_moves, _server_watch) = match &args.config {
        Some(path) => {
            let (api_tx, api_rx) = tokio::sync::mpsc::channel(1);
            let (metrics_tx, metrics_rx) = tokio::sync::mpsc::channel(1);
            let mut mover = ListenerMover {
                runtime: tokio::runtime::Handle::current(),
                api: (bound, api_tx),
                metrics: metrics_bound.map(|at| (at, metrics_tx)),
                tls: tls_files.take(),
                no_auth: args.no_auth,
                scheme,
                store: file_store,
            };
            match taskhost::engine::watch_server_settings(path.clone(), move |server| mover.apply(&server)) {
                Ok(watch) => (Some(api_rx), Some(metrics_rx), Some(watch)),
                Err(e) => return fail(EXIT_USAGE, &format!("cannot watch the configuration file: {e}")),
            }
        }
        None => (None, None, None),
    };
    if let Some(listener) = metrics_listener {
        let metrics = taskhost::api::metrics_router(engine.clone());
        let mut stopped = stopped.clone();
        eprintln!("taskhost: /metrics also on http://{} (no token)", listener.local_addr().unwrap_or(bound));
        let serving =
            taskhost::api::serve_moving(listener, metrics_moves, metrics, ServeConfig::default(), async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            });
        tokio::spawn(serving);
    }
    let store_lost = std::sync::Arc::new(std::sync::Mutex::new(None));
    let shutdown = async {
        let lost = engine.store();
        tokio::select! {
            () = signals.recv() => {},
            why = lost.lost() => {
                // Another host may run the engine on the database now:
                // nothing more starts here, at once.
                engine.shutdown();
                eprintln!("taskhost: stopping: this host is no longer sure to be the only one on its store: {why}");
                *store_lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            }
        }
        eprintln!("taskhost: shutting down");
        let _ = stopping.send(true);
    };
    taskhost::api::serve_moving(listener, api_moves, app, serve_config, shutdown).await;
    if let Some(reloading) = reloading {
        reloading.abort();
    }
    // Stop dispatching and watching, let running attempts end and their
    // outcomes commit, then release the store.
    let traces = engine.traces().clone();
    engine.close().await;
    // Send the spans still buffered (blocking: off the async workers).
    let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    if store_lost.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
        return ExitCode::from(EXIT_STORE);
    }
    ExitCode::SUCCESS
}

/// SIGINT and SIGTERM, listened for from start-up to shutdown (a signal
/// that comes while nothing waits on it is kept for the next wait).
struct Signals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self { interrupt: signal(SignalKind::interrupt()).ok(), terminate: signal(SignalKind::terminate()).ok() }
    }

    /// Waits for either.
    async fn recv(&mut self) {
        async fn one(signal: Option<&mut tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = one(self.interrupt.as_mut()) => {}
            () = one(self.terminate.as_mut()) => {}
        }
    }
}

/// What a standby writes as its heartbeat while it waits: its version,
/// when it started, and the slots and memory budget it will serve with
/// (none of them busy), as a `standby`.
fn standby_report(config: &EngineConfig) -> Result<serde_json::Value, serde_json::Error> {
    use taskhost::wire::{HostLoad, HostReport, time};
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let started = u64::try_from(started.as_millis()).unwrap_or(u64::MAX);
    let load = HostLoad::new(config.concurrency as u64, 0, 0, config.memory_budget, 0);
    let report = HostReport::new(env!("CARGO_PKG_VERSION").to_owned(), time(started), Vec::new(), load);
    serde_json::to_value(report.standing_by())
}

/// The standby's API (`api::standby_router`), served on second handles
/// of the host's listeners while it stands by; the engine's API takes
/// the listeners over once these stopped.
struct StandbyServers {
    stop: tokio::sync::watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    tell: tokio::task::AbortHandle,
}

/// How long stopping the standby's servers waits for answers in flight
/// (each a 503) before it cuts them off.
const STANDBY_STOP_GRACE: Duration = Duration::from_millis(500);

impl StandbyServers {
    /// Serves on each listener given, with its settings; says what the
    /// standby sees whenever that changes.
    fn start<'a>(
        listeners: impl IntoIterator<Item = (Option<&'a tokio::net::TcpListener>, &'a ServeConfig)>,
        seen: tokio::sync::watch::Receiver<taskhost::store::postgres::StandbyState>,
    ) -> std::io::Result<Self> {
        use std::os::fd::AsFd as _;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut servers = Vec::new();
        for (listener, config) in listeners {
            let Some(listener) = listener else { continue };
            // The same socket (a duplicated descriptor, non-blocking as
            // the first): connections wait in its backlog for whichever
            // accepts, and none is lost at the switch.
            let second = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?);
            second.set_nonblocking(true)?;
            let second = tokio::net::TcpListener::from_std(second)?;
            if let Ok(at) = listener.local_addr() {
                let scheme = if config.tls.is_some() { "https" } else { "http" };
                eprintln!("taskhost standing by on {scheme}://{at}: answering 503 until it serves");
            }
            let mut stopped = stopped.clone();
            let router = taskhost::api::standby_router(seen.clone());
            servers.push(tokio::spawn(taskhost::api::serve_moving(second, None, router, config.clone(), async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })));
        }
        let mut told = seen;
        let tell = tokio::spawn(async move {
            while told.changed().await.is_ok() {
                let now = taskhost::api::standing_by(&told.borrow_and_update());
                eprintln!("taskhost: {now}");
            }
        })
        .abort_handle();
        Ok(Self { stop, servers, tell })
    }

    /// Stops serving, cutting off what has not ended within
    /// [`STANDBY_STOP_GRACE`].
    async fn stop(self) {
        self.tell.abort();
        self.stop.send_replace(true);
        for mut server in self.servers {
            if tokio::time::timeout(STANDBY_STOP_GRACE, &mut server).await.is_err() {
                server.abort();
            }
        }
    }
}

/// Ends start-up on an engine that would not open: a store that cannot be
/// used exits with [`EXIT_STORE`], naming the file and what to do.
fn open_failed(e: &anyhow::Error, data_dir: &std::path::Path, backend: &str) -> ExitCode {
    if e.chain().any(|cause| cause.downcast_ref::<taskhost::engine::SettingsError>().is_some()) {
        return fail(EXIT_USAGE, &format!("cannot start: the configuration file: {e:#}"));
    }
    let postgres = e.chain().any(|cause| cause.downcast_ref::<store::postgres::PgError>().is_some());
    if postgres || (backend != "redb" && e.chain().any(|cause| cause.downcast_ref::<StoreError>().is_some())) {
        return fail(EXIT_STORE, &format!("cannot start: the PostgreSQL store: {e:#}"));
    }
    let store_error = e.chain().find_map(|cause| {
        cause.downcast_ref::<StoreError>().or_else(|| match cause.downcast_ref::<EngineError>() {
            Some(EngineError::Store(s)) => Some(s),
            _ => None,
        })
    });
    match store_error {
        // These say what is wrong and what to do (or are not damage).
        Some(
            StoreError::Damaged { .. }
            | StoreError::InUse { .. }
            | StoreError::Schema { .. }
            | StoreError::Storage(redb::Error::Io(_)),
        ) => fail(EXIT_STORE, &format!("cannot start: {e:#}")),
        Some(StoreError::Corrupt(_) | StoreError::Storage(_)) => fail(
            EXIT_STORE,
            &format!(
                "cannot start: reading the store {} failed: {e:#}; restore it from a backup, or run \
                 `taskhost store check --data {dir}` and `taskhost store repair --data {dir}`",
                data_dir.join(store::FILE_NAME).display(),
                dir = data_dir.display()
            ),
        ),
        _ => fail(EXIT_USAGE, &format!("cannot open the engine: {e:#}")),
    }
}
