//! Engine settings and where the data lives by default.

use super::{FlowLimits, RetryPolicy};
use crate::SandboxConfig;
use crate::registry::Compiler;
use std::path::PathBuf;
use std::time::Duration;

/// Engine settings. See [`EngineConfig::default`] for the defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where the store lives (`taskhost.redb` inside it).
    pub data_dir: PathBuf,
    /// Sandbox (engine-wide limits and pool). The engine's default differs
    /// from [`SandboxConfig::default`] in one way: `parallel_compilation`
    /// is off, because the registry compiles on one low-priority thread so
    /// that uploads never starve running tasks.
    pub sandbox: SandboxConfig,
    /// Most attempts running in sandboxes at once across all queues (the
    /// execution slots). A slot is held only while a sandbox runs, never
    /// while a commit is awaited. Default 4 × CPUs.
    pub concurrency: usize,
    /// Most tasks claimed (durably started, so `running`) ahead of a free
    /// execution slot, so that short tasks' commits overlap other tasks'
    /// runs. The scheduler uses less of it the longer tasks run (none for
    /// tasks of `slots × 8 ms` or more). Default 1,024.
    pub claim_ahead: usize,
    /// Claim a task in its submission's commit when it is the one the
    /// scheduler would claim next anyway (nothing waits before it), so
    /// it starts after one commit instead of two. Default on; off only for
    /// comparison.
    pub claim_at_submit: bool,
    /// The memory running attempts may reserve together: each reserves
    /// its memory limit plus its host budget while it runs, and one that
    /// does not fit waits. Default half of the machine's memory (or of
    /// the cgroup's limit, if lower); see [`default_memory_budget`].
    pub memory_budget: u64,
    /// Batch concurrent transitions into one commit. Default on; off only
    /// for comparison.
    pub group_commit: bool,
    /// A PostgreSQL database to keep the store in
    /// (`postgres://USER@HOST:PORT/DATABASE`) instead of the redb file in
    /// `data_dir` (which still holds the artifact cache and uploads).
    /// Default none: the redb file. (Its `Debug` does not show it: it
    /// may hold a password.)
    pub store_url: Option<super::StoreUrl>,
    /// On PostgreSQL: how long this host's hold on the database lasts
    /// without a renewal (renewed every 2 s). A host that stops renewing
    /// (frozen, cut off) may be taken over by another that starts after
    /// this long, and its writes are refused from then on. Default 15 s;
    /// at least `store::postgres::MIN_LEASE`.
    pub store_lease: Duration,
    /// On PostgreSQL: wait while another host serves the database, and
    /// take over once it stops (its connection ends) or its lease lapses,
    /// instead of refusing to start. The sender is told who leads while
    /// this host waits, and may be told to stop waiting. Default `None`:
    /// refuse.
    pub standby: Option<crate::store::postgres::Standby>,
    /// On PostgreSQL: serve the database together with the other hosts
    /// started so, each claiming tasks under leases, the leader (elected
    /// among them) running retention (see `store/postgres/many.rs`).
    /// Refused beside a host serving alone, and with a standby. Default
    /// false: serve alone.
    pub many_hosts: bool,
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
    /// Most queues: a submission or queue setting that names a new queue
    /// past this many is refused (409 `limit_reached`). Each queue is a
    /// label value of the queue metrics and an entry in the scheduler.
    /// Default 1,000.
    pub max_queues: usize,
    /// Most plugin names: an upload (or manifest) for a new name past
    /// this many is refused (409 `limit_reached`). Default 1,000.
    pub max_plugins: usize,
    /// Distinct ad-hoc scripts a tenant keeps per language: past this
    /// many, the oldest no unfinished task holds is deleted (and when all
    /// are held, a new one is refused). Default [`super::MAX_AD_HOC_SCRIPTS`].
    pub max_ad_hoc_scripts: usize,
    /// Where plugins compile. Default [`Compiler::InProcess`] (no time
    /// budget); `taskhost serve` compiles in child processes with one.
    pub compiler: Compiler,
    /// What completion callbacks may reach: public addresses, and the
    /// networks it allows. Default: public addresses only.
    pub egress: crate::egress::EgressPolicy,
    /// The bytes of each attempt's transcript (its log records, stdout
    /// and stderr as lines) kept with the task: the first half and the
    /// latest half, with what was dropped between counted. 0 keeps none.
    /// Default 64 KiB.
    pub log_keep_bytes: u64,
    /// The most a submission may ask its attempts' transcripts to keep
    /// (`log_keep_bytes` on the task). Default 1 MiB.
    pub log_keep_ceiling: u64,
    /// Where spans go (OpenTelemetry over OTLP/HTTP). Default: nowhere.
    pub traces: crate::trace::Traces,
    /// The live configuration file (tenants, quotas, queue settings):
    /// applied at start (a broken file stops the start) and on every
    /// change. Default: none.
    pub settings_file: Option<PathBuf>,
    /// How long and how many ended units are kept: tasks outside any flow
    /// per queue (unless the queue sets its own), flows per tenant.
    /// Default: 7 days ([`DEFAULT_RETAIN_FOR`]), no count.
    pub retention: crate::store::Retention,
    /// How often ended work past its retention is looked for and
    /// deleted. Default 1 minute.
    pub retention_interval: std::time::Duration,
}

/// The most bytes of each attempt's transcript a submission may ask to
/// keep, by default: 1 MiB.
pub const DEFAULT_LOG_KEEP_CEILING: u64 = 1 << 20;

/// How long ended work is kept by default: 7 days.
pub const DEFAULT_RETAIN_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

impl Default for EngineConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            data_dir: default_data_dir(),
            sandbox: SandboxConfig { parallel_compilation: false, ..SandboxConfig::default() },
            concurrency: 4 * cpus,
            claim_ahead: 1_024,
            claim_at_submit: true,
            memory_budget: default_memory_budget(),
            group_commit: true,
            store_url: None,
            store_lease: Duration::from_secs(15),
            standby: None,
            many_hosts: false,
            retry: RetryPolicy::default(),
            default_max_attempts: 3,
            plugins_dir: None,
            flow_limits: FlowLimits::default(),
            models: None,
            max_queues: 1_000,
            max_plugins: 1_000,
            max_ad_hoc_scripts: super::MAX_AD_HOC_SCRIPTS,
            compiler: Compiler::default(),
            egress: crate::egress::EgressPolicy::default(),
            settings_file: None,
            log_keep_bytes: crate::sandbox::DEFAULT_KEEP,
            log_keep_ceiling: DEFAULT_LOG_KEEP_CEILING,
            traces: crate::trace::Traces::off(),
            retention: crate::store::Retention::new(Some(DEFAULT_RETAIN_FOR.as_millis() as u64), None),
            retention_interval: std::time::Duration::from_secs(60),
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

/// Half of the memory this process may use: the machine's (`MemTotal` in
/// `/proc/meminfo`), or `/sys/fs/cgroup/memory.max` (a container's cgroup
/// v2 limit) when that is lower; 4 GiB where neither can be read.
pub fn default_memory_budget() -> u64 {
    fn meminfo() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib.saturating_mul(1024))
    }
    fn cgroup() -> Option<u64> {
        std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?.trim().parse().ok()
    }
    let total = match (meminfo(), cgroup()) {
        (Some(m), Some(c)) => m.min(c),
        (Some(m), None) => m,
        (None, Some(c)) => c,
        (None, None) => 8 << 30,
    };
    total / 2
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_memory_budget_is_half_of_what_the_machine_has() {
        let budget = super::default_memory_budget();
        let text = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = text
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!(budget > 0 && budget <= kib * 1024 / 2, "budget {budget} of {kib} KiB");
    }
}
