//! Everything one task's `Store` holds: its WASI context (no ambient
//! authority beyond the operator's grants), the memory limiter, the captured streams and log, and what
//! the epoch callback found (timeout, cancellation).

use super::budget::{HostBudget, LOG_RECORD_OVERHEAD};
use super::capture::CappedPipe;
use super::limiter::MemoryLimiter;
use super::{Grants, Limits, LogLevel, LogRecord, Stream, Transcript};
use crate::bindings::WitTaskInfo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

/// Most WASI handles (resources) one guest holds at once.
pub(crate) const MAX_HANDLES: usize = 16_384;

/// Why the epoch callback stopped the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupted {
    Timeout,
    Cancelled,
}

pub(crate) struct TaskState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) stdout: CappedPipe,
    pub(crate) stderr: CappedPipe,
    pub(crate) logs: Vec<LogRecord>,
    log_bytes: u64,
    pub(crate) max_log_bytes: u64,
    pub(crate) timeout: Duration,
    pub(crate) log_overflowed: bool,
    pub(crate) info: WitTaskInfo,
    pub(crate) started: Instant,
    pub(crate) interrupted: Option<Interrupted>,
    pub(crate) services: Option<Arc<dyn super::TaskServices>>,
    /// A host call the host could not serve; it ended the attempt.
    pub(crate) host_failure: Option<String>,
    pub(crate) inference: Option<Arc<dyn super::InferenceService>>,
    /// Models the operator granted this plugin (its manifest).
    pub(crate) models: Vec<String>,
    pub(crate) priority: u8,
    /// What the guest makes the host hold, shared with the services.
    pub(crate) budget: Arc<HostBudget>,
    /// Where log lines are also written as they come.
    transcript: Option<Transcript>,
    /// The attempt's span: each host call is a span under it.
    pub(crate) trace: crate::trace::Scope,
    /// The script a script runner runs (`taskhost:plugin/script`).
    pub(crate) script: Option<Arc<super::Script>>,
    /// The empty directory behind `/` (see [`super::virtual_root`]),
    /// unless a grant is at `/`.
    pub(crate) empty_root: Option<Arc<std::fs::File>>,
    /// The guest's `/`, once it has asked for its preopens.
    pub(crate) virtual_root: Option<wasmtime_wasi::filesystem::Dir>,
}

impl TaskState {
    /// Builds the task's state, with `root` (an empty directory) behind
    /// the guest's `/` when given. Fails only when a granted directory
    /// cannot be opened.
    pub(crate) fn new(
        info: WitTaskInfo,
        limits: &Limits,
        grants: &Grants,
        attached: super::Attached,
        priority: u8,
        root: Option<Arc<std::fs::File>>,
    ) -> Result<Self, String> {
        let max_log_bytes = limits.max_log_bytes;
        let budget = attached.budget.unwrap_or_else(|| Arc::new(HostBudget::new(limits.host_bytes)));
        let transcript = attached.transcript;
        let stdout = CappedPipe::new(Stream::Stdout, max_log_bytes, budget.clone(), transcript.clone());
        let stderr = CappedPipe::new(Stream::Stderr, max_log_bytes, budget.clone(), transcript.clone());
        // No environment, no arguments, no stdin. Directories and network
        // only as the operator granted them (none by default): a plugin
        // sees only what the WIT imports and its grants give it. Clocks and
        // randomness are allowed.
        let mut builder = WasiCtx::builder();
        builder.stdout(stdout.clone()).stderr(stderr.clone());
        for dir in &grants.dirs {
            let perms = if dir.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            builder.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
                format!("cannot open the granted directory {} (as {}): {e:#}", dir.host.display(), dir.guest)
            })?;
        }
        // Outside the grants, `/` refuses every lookup as a permission
        // error (see `virtual_root`), unless a grant is at `/` itself.
        let empty_root = root.filter(|_| super::virtual_root::wanted(grants.dirs.iter().map(|d| d.guest.as_str())));
        let network = !grants.connect.is_empty();
        let allowed: Arc<[SocketAddr]> = grants.connect.clone().into();
        builder.allow_tcp(network).allow_udp(network).allow_ip_name_lookup(network).socket_addr_check(
            move |addr, usage| {
                let ok = match usage {
                    // Only outbound traffic to granted addresses...
                    SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                        allowed.contains(&addr)
                    }
                    // ...and the implicit wildcard bind a connect performs.
                    SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                        !allowed.is_empty() && addr.ip().is_unspecified() && addr.port() == 0
                    }
                    _ => false,
                };
                Box::pin(async move { ok })
            },
        );
        let wasi = builder.build();
        Ok(Self {
            wasi,
            table: {
                // Handles a guest holds at once (files, streams, pollables,
                // preopens it asked for again and again): each is host
                // memory, so fewer than wasmtime's default of a million.
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_HANDLES);
                table
            },
            limiter: MemoryLimiter::new(limits.memory_bytes),
            stdout,
            stderr,
            logs: Vec::new(),
            log_bytes: 0,
            max_log_bytes,
            timeout: limits.timeout,
            log_overflowed: false,
            info,
            started: Instant::now(),
            interrupted: None,
            services: attached.services,
            host_failure: None,
            inference: attached.inference,
            models: grants.models.clone(),
            priority,
            budget,
            transcript,
            trace: attached.trace,
            script: attached.script,
            empty_root,
            virtual_root: None,
        })
    }

    /// Records a log line; errs (trapping the guest) once the cap is passed.
    pub(crate) fn push_log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        self.log_bytes = self.log_bytes.saturating_add(message.len() as u64);
        if self.log_bytes > self.max_log_bytes {
            self.log_overflowed = true;
            return Err(wasmtime::format_err!("log exceeded its cap of {} bytes", self.max_log_bytes));
        }
        // The cap counts message bytes; the budget also counts each
        // record's own cost, so a flood of empty messages is not free.
        self.budget.charge("a log record", message.len() as u64 + LOG_RECORD_OVERHEAD)?;
        if let Some(transcript) = &self.transcript {
            transcript.log(level, &message);
        }
        self.logs.push(LogRecord { level, message, at: self.started.elapsed() });
        Ok(())
    }

    /// A copy of what the guest wrote to stderr so far.
    pub(crate) fn stderr_snapshot(&self) -> Vec<u8> {
        self.stderr.snapshot()
    }

    /// The captured stream that went over its cap, if any.
    pub(crate) fn overflowed_stream(&self) -> Option<&'static str> {
        if self.log_overflowed {
            Some("log")
        } else if self.stdout.overflowed() {
            Some(self.stdout.name())
        } else if self.stderr.overflowed() {
            Some(self.stderr.name())
        } else {
            None
        }
    }
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
