//! Engine-wide sandbox configuration and the per-task limits, with their
//! documented defaults.

use std::time::Duration;

/// Engine-wide settings, fixed when the [`Sandbox`](super::Sandbox) is built.
///
/// | setting | default | why |
/// |---|---|---|
/// | `pool_instances` | 1024 | tasks that can be instantiated at once (pooling allocator slots) |
/// | `max_memory_per_instance` | 4 GiB | pool slot size; a task's `memory_bytes` may not exceed it |
/// | `max_wasm_stack` | 512 KiB | wasm call-stack cap (deep recursion ends as `stack overflow`) |
/// | `fuel_metering` | on | per-task fuel budgets; off trades them for ~no instrumentation cost |
/// | `epoch_tick` | 10 ms | timeout/cancel resolution and how often long guests yield |
/// | `pooling` | on | off uses on-demand allocation (only useful for comparison) |
/// | `parallel_compilation` | on | off compiles on one thread (the engine's default: see `EngineConfig::sandbox`) |
/// | `ceilings` | see [`Ceilings`] | the most fuel, memory and time any task may be given |
/// | `blocking_threads` | 64 | threads for guests' blocking file I/O (the engine's [`AttemptRuntime`](crate::AttemptRuntime)) |
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Number of component instances the pooling allocator can hold at once.
    pub pool_instances: u32,
    /// Largest linear memory one task may be granted, in bytes.
    pub max_memory_per_instance: u64,
    /// Maximum wasm stack in bytes. Engine-wide in wasmtime, so not a
    /// per-task override.
    pub max_wasm_stack: usize,
    /// Whether fuel is metered (needed for [`Limits::fuel`]).
    pub fuel_metering: bool,
    /// Epoch tick: timeouts and cancellation are checked this often, and a
    /// running guest yields to the executor at each tick.
    pub epoch_tick: Duration,
    /// Use the pooling instance allocator (recommended).
    pub pooling: bool,
    /// Compile a component's functions on all cores. Default on here (for
    /// `taskhost run`); the engine's default turns it off so compiling
    /// never starves running tasks, in the library and the binary alike.
    pub parallel_compilation: bool,
    /// Limits applied to a task that sets none of its own.
    pub default_limits: Limits,
    /// The operator's ceilings: no submission or manifest gets more.
    pub ceilings: Ceilings,
    /// Threads for guests' blocking file I/O under the engine. When all
    /// are stuck (guests blocked reading a FIFO, say), further guest file
    /// I/O waits and its tasks end by their timeout; the host's own
    /// threads are never used.
    pub blocking_threads: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            pool_instances: 1024,
            max_memory_per_instance: 4 << 30,
            max_wasm_stack: 512 << 10,
            fuel_metering: true,
            epoch_tick: Duration::from_millis(10),
            pooling: true,
            parallel_compilation: true,
            default_limits: Limits::default(),
            ceilings: Ceilings::default(),
            blocking_threads: 64,
        }
    }
}

/// The operator's ceilings on what one task may be given. A task's
/// effective limit is the least of what its submission asks, its plugin's
/// manifest and these; a submission that asks for more than its plugin's
/// manifest or these is refused naming the limit (never silently clamped).
/// A manifest over a ceiling is clamped to it (the operator sets both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceilings {
    /// Most fuel per attempt. Default 100 000 000 000 (10× the default).
    pub fuel: u64,
    /// Most linear memory per task, bytes. Default 4 GiB (also capped by
    /// the pool's slot size, `max_memory_per_instance`).
    pub memory_bytes: u64,
    /// Longest wall-clock budget per attempt. Default 15 minutes.
    pub timeout: Duration,
    /// Largest host budget per attempt, bytes. Default 1 GiB.
    pub host_bytes: u64,
}

impl Default for Ceilings {
    fn default() -> Self {
        Self {
            fuel: 100_000_000_000,
            memory_bytes: 4 << 30,
            timeout: Duration::from_secs(15 * 60),
            host_bytes: 1 << 30,
        }
    }
}

impl Ceilings {
    /// `limits` with each field lowered to its ceiling.
    pub fn clamp(&self, limits: &Limits) -> Limits {
        Limits {
            fuel: limits.fuel.min(self.fuel),
            memory_bytes: limits.memory_bytes.min(self.memory_bytes),
            timeout: limits.timeout.min(self.timeout),
            host_bytes: limits.host_bytes.min(self.host_bytes),
            ..limits.clone()
        }
    }
}

/// Hard limits for one task. Every field has a documented default
/// ([`Limits::default`]) and may be overridden per task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Fuel budget (≈ wasm instructions). Default 10 000 000 000.
    pub fuel: u64,
    /// Linear-memory cap in bytes, summed over the task's memories.
    /// Default 128 MiB.
    pub memory_bytes: u64,
    /// Wall-clock budget. Default 30 s.
    pub timeout: Duration,
    /// Largest output `run` may return, in bytes. Default 16 MiB.
    pub max_output_bytes: u64,
    /// Cap on each captured stream (stdout, stderr, log messages), in bytes.
    /// Default 1 MiB each.
    pub max_log_bytes: u64,
    /// The host budget: bytes the task may make the host hold outside its
    /// own memory (log records, captured streams, children and their
    /// inputs, context writes, join results, inference tensors). Default
    /// 64 MiB. See [`HostBudget`](crate::HostBudget).
    pub host_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 10_000_000_000,
            memory_bytes: 128 << 20,
            timeout: Duration::from_secs(30),
            max_output_bytes: 16 << 20,
            max_log_bytes: 1 << 20,
            host_bytes: 64 << 20,
        }
    }
}
