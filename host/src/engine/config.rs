//! Engine settings and where the data lives by default.

use super::{FlowLimits, RetryPolicy};
use crate::SandboxConfig;
use crate::registry::Compiler;
use std::path::PathBuf;

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
    /// Most tasks running at once across all queues. Default 4 × CPUs.
    pub concurrency: usize,
    /// Batch concurrent transitions into one commit. Default on; off only
    /// for comparison.
    pub group_commit: bool,
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
    /// Where plugins compile. Default [`Compiler::InProcess`] (no time
    /// budget); `taskhost serve` compiles in child processes with one.
    pub compiler: Compiler,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            data_dir: default_data_dir(),
            sandbox: SandboxConfig { parallel_compilation: false, ..SandboxConfig::default() },
            concurrency: 4 * cpus,
            group_commit: true,
            retry: RetryPolicy::default(),
            default_max_attempts: 3,
            plugins_dir: None,
            flow_limits: FlowLimits::default(),
            models: None,
            max_queues: 1_000,
            max_plugins: 1_000,
            compiler: Compiler::default(),
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
