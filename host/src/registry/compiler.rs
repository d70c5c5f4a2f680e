//! Where plugins are compiled, and the compile process. A wasmtime compile
//! cannot be stopped once it runs, so a time budget needs a process to
//! kill: with [`Compiler::Process`] (what `taskhost serve` uses) each
//! compile runs in a child process of this program (`taskhost __compile`),
//! at low CPU priority, under CPU-time, address-space and file-size
//! rlimits, first in line for the OOM killer, killed when its parent dies
//! and once its budget passes. The child compiles with the host's engine
//! settings (without the pooling allocator, which only instantiating needs
//! and which would reserve terabytes of address space; the fingerprint is
//! the same, and checked) and writes the artifact into the artifact cache;
//! the host checks the child's engine fingerprint, hashes the artifact and
//! loads it. [`Compiler::InProcess`] (the library's
//! default) compiles on one low-priority thread, with no budget.

use super::{MAX_PLUGIN_BYTES, RegistryError};
use crate::sync::blocking;
use crate::{LoadError, Plugin, Sandbox, SandboxConfig};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The hidden subcommand a compile process runs: `PROGRAM __compile`.
pub const COMPILE_COMMAND: &str = "__compile";

/// Niceness of the compile thread and of compile processes: running tasks
/// get the CPU first.
pub(crate) const COMPILE_NICENESS: libc::c_int = 10;

/// Largest artifact a compile process may write (its `RLIMIT_FSIZE`).
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// Address space a compile process may map (its `RLIMIT_AS`): a compile
/// that needs more ends as an invalid plugin, not as the host's memory.
const MAX_COMPILE_ADDRESS_SPACE: u64 = 4 << 30;

/// Largest request a compile process reads, and largest answer the host
/// reads back.
const MAX_MESSAGE_BYTES: u64 = 64 << 10;

/// CPU seconds a compile process may use past its wall-clock budget before
/// the kernel stops it (`RLIMIT_CPU`): a backstop should the host fail to.
const CPU_GRACE_SECS: u64 = 5;

/// Where plugins are compiled.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Compiler {
    /// On one low-priority thread of this process, with no time budget (a
    /// compile cannot be stopped in-thread): the library's default, for
    /// tests, benchmarks and embedders whose uploads are trusted.
    #[default]
    InProcess,
    /// In a child process per compile, killed once its budget passes: what
    /// `taskhost serve` uses.
    Process(ProcessCompiler),
}

/// Compiling in child processes of `program` (`program __compile`).
#[derive(Debug, Clone)]
pub struct ProcessCompiler {
    /// The program to run. It must call [`compile_process_main`] when its
    /// first argument is [`COMPILE_COMMAND`] (the `taskhost` binary does).
    pub program: PathBuf,
    /// Longest one compile may take, wall clock, from when its process
    /// starts (time spent waiting for the compile queue does not count).
    /// Past it the process is killed and the upload refused
    /// (`compile_timeout`).
    pub budget: Duration,
}

impl ProcessCompiler {
    /// Compiles with this very program: `/proc/self/exe` where there is
    /// one, so a binary replaced on disk while the host runs still compiles
    /// with the one that is running.
    pub fn this_program(budget: Duration) -> std::io::Result<Self> {
        let proc_self = Path::new("/proc/self/exe");
        let program = if proc_self.exists() { proc_self.to_owned() } else { std::env::current_exe()? };
        Ok(Self { program, budget })
    }
}

/// The engine settings a compile process rebuilds: every
/// [`SandboxConfig`] field that shapes compiled code. A field added to the
/// sandbox config and not passed here shows up as a fingerprint mismatch,
/// never as a silently wrong artifact (wasmtime refuses those anyway). The
/// pooling allocator is left off in the compile process: it only serves
/// instantiation, leaves compiled code (and the fingerprint) unchanged, and
/// its reservations would not fit the address-space limit.
#[derive(Debug, Serialize, Deserialize)]
struct EngineSettings {
    pool_instances: u32,
    max_memory_per_instance: u64,
    max_wasm_stack: usize,
    fuel_metering: bool,
    epoch_tick_ns: u64,
    parallel_compilation: bool,
}

impl EngineSettings {
    fn of(config: &SandboxConfig) -> Self {
        Self {
            pool_instances: config.pool_instances,
            max_memory_per_instance: config.max_memory_per_instance,
            max_wasm_stack: config.max_wasm_stack,
            fuel_metering: config.fuel_metering,
            epoch_tick_ns: u64::try_from(config.epoch_tick.as_nanos()).unwrap_or(u64::MAX),
            parallel_compilation: config.parallel_compilation,
        }
    }

    fn config(&self) -> SandboxConfig {
        SandboxConfig {
            pool_instances: self.pool_instances,
            max_memory_per_instance: self.max_memory_per_instance,
            max_wasm_stack: self.max_wasm_stack,
            fuel_metering: self.fuel_metering,
            epoch_tick: Duration::from_nanos(self.epoch_tick_ns),
            pooling: false,
            parallel_compilation: self.parallel_compilation,
            ..SandboxConfig::default()
        }
    }
}

/// What the host asks of a compile process (JSON on its stdin).
#[derive(Debug, Serialize, Deserialize)]
struct CompileRequest {
    name: String,
    version: String,
    input: PathBuf,
    output: PathBuf,
    engine: EngineSettings,
}

/// Why a component was refused, as a compile process reports it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Refusal {
    NotWasm,
    NativeCode,
    Archive,
    CoreModule,
    Compile(String),
    MissingImport(String),
    WrongWorld(String),
}

impl From<LoadError> for Refusal {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::NotWasm => Self::NotWasm,
            LoadError::NativeCode => Self::NativeCode,
            LoadError::Archive => Self::Archive,
            LoadError::CoreModule => Self::CoreModule,
            LoadError::Compile(m) => Self::Compile(m),
            LoadError::MissingImport(m) => Self::MissingImport(m),
            LoadError::WrongWorld(m) => Self::WrongWorld(m),
        }
    }
}

impl From<Refusal> for LoadError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NotWasm => Self::NotWasm,
            Refusal::NativeCode => Self::NativeCode,
            Refusal::Archive => Self::Archive,
            Refusal::CoreModule => Self::CoreModule,
            Refusal::Compile(m) => Self::Compile(m),
            Refusal::MissingImport(m) => Self::MissingImport(m),
            Refusal::WrongWorld(m) => Self::WrongWorld(m),
        }
    }
}

/// A compile process's answer (JSON on its stdout).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CompileReply {
    /// The artifact is written; the engine that compiled it has this
    /// fingerprint.
    Compiled { fingerprint: String },
    /// The component cannot be a task plugin.
    Refused(Refusal),
}

/// The compile process: reads a [`CompileRequest`] on stdin, compiles,
/// writes the artifact and answers on stdout. Exits 0 when it answered
/// (compiled or refused), non-zero when it could not.
#[doc(hidden)]
pub fn compile_process_main() -> ExitCode {
    match compile_process() {
        Ok(reply) => {
            let text = serde_json::to_vec(&reply).expect("a reply serialises");
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(&text).and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("taskhost compile process: cannot answer: {e}");
                    ExitCode::from(3)
                }
            }
        }
        Err(e) => {
            eprintln!("taskhost compile process: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn compile_process() -> anyhow::Result<CompileReply> {
    use anyhow::Context as _;
    // Should memory run out, this process goes first, not the host.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        eprintln!("taskhost compile process: WARNING: cannot volunteer for the OOM killer: {e}");
    }
    let mut text = Vec::new();
    std::io::stdin().lock().take(MAX_MESSAGE_BYTES).read_to_end(&mut text).context("reading the request")?;
    let request: CompileRequest = serde_json::from_slice(&text).context("parsing the request")?;
    let mut bytes = Vec::new();
    std::fs::File::open(&request.input)
        .and_then(|f| f.take(MAX_PLUGIN_BYTES as u64 + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", request.input.display()))?;
    if bytes.len() > MAX_PLUGIN_BYTES {
        anyhow::bail!("{} is larger than {MAX_PLUGIN_BYTES} bytes", request.input.display());
    }
    let sandbox = Sandbox::new(request.engine.config())?;
    let plugin = match sandbox.load(&request.name, &request.version, &bytes) {
        Ok(plugin) => plugin,
        Err(e) => return Ok(CompileReply::Refused(e.into())),
    };
    drop(bytes);
    let artifact = match plugin.serialize() {
        Ok(artifact) => artifact,
        Err(e) => return Ok(CompileReply::Refused(e.into())),
    };
    std::fs::File::create_new(&request.output)
        .and_then(|mut f| f.write_all(&artifact))
        .with_context(|| format!("writing {}", request.output.display()))?;
    Ok(CompileReply::Compiled { fingerprint: sandbox.fingerprint() })
}

/// Lowers the calling process's priority and sets its limits; runs in the
/// forked child before `exec`, so only plain system calls.
fn limit_compile_process(cpu_seconds: u64) -> std::io::Result<()> {
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: plain system calls on the calling process, with valid
    // arguments; async-signal-safe, as a pre-exec hook must be.
    unsafe {
        // A failure only leaves the default priority.
        libc::setpriority(libc::PRIO_PROCESS, 0, COMPILE_NICENESS);
        let cpu = libc::rlimit { rlim_cur: cpu_seconds, rlim_max: cpu_seconds + CPU_GRACE_SECS };
        check(libc::setrlimit(libc::RLIMIT_CPU, &cpu))?;
        let size = libc::rlimit { rlim_cur: MAX_ARTIFACT_BYTES, rlim_max: MAX_ARTIFACT_BYTES };
        check(libc::setrlimit(libc::RLIMIT_FSIZE, &size))?;
        let space = libc::rlimit { rlim_cur: MAX_COMPILE_ADDRESS_SPACE, rlim_max: MAX_COMPILE_ADDRESS_SPACE };
        check(libc::setrlimit(libc::RLIMIT_AS, &space))?;
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0))?;
    }
    Ok(())
}

/// What a compile in a child process produced: the plugin, and the hash of
/// the artifact now at its place in the cache (none if it could not be put
/// there).
pub(crate) struct ChildCompiled {
    pub(crate) plugin: Plugin,
    pub(crate) artifact_hash: Option<String>,
}

/// Compiles `input` in a child process of `compiler.program` and loads the
/// artifact it writes, which ends at `artifact` in the cache.
pub(crate) async fn compile_in_child(
    compiler: &ProcessCompiler,
    sandbox: &Sandbox,
    name: &str,
    version: &str,
    input: &Path,
    size: usize,
    artifact: &Path,
) -> Result<ChildCompiled, RegistryError> {
    let temporary = artifact.with_extension(format!("{}.tmp", uuid::Uuid::now_v7().simple()));
    let request = CompileRequest {
        name: name.to_owned(),
        version: version.to_owned(),
        input: input.to_owned(),
        output: temporary.clone(),
        engine: EngineSettings::of(sandbox.config()),
    };
    let reply = run_child(compiler, &request).await;
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) => {
            remove_quietly(temporary).await;
            return Err(e);
        }
    };
    let fingerprint = match reply {
        CompileReply::Refused(refusal) => {
            remove_quietly(temporary).await;
            return Err(RegistryError::Invalid(refusal.into()));
        }
        CompileReply::Compiled { fingerprint } => fingerprint,
    };
    if fingerprint != sandbox.fingerprint() {
        remove_quietly(temporary).await;
        return Err(RegistryError::Compiler(format!(
            "the compile process's engine settings differ from this host's (fingerprint {fingerprint}, \
             expected {}); is {} the same build?",
            sandbox.fingerprint(),
            compiler.program.display()
        )));
    }
    let (sandbox, name, version, artifact) =
        (sandbox.clone(), name.to_owned(), version.to_owned(), artifact.to_owned());
    blocking(move || {
        let bytes = std::fs::read(&temporary);
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(e) => {
                remove_now(&temporary);
                return Err(RegistryError::io(format!("reading the compiled artifact {}", temporary.display()), e));
            }
        };
        let hash = super::sha256_hex(&bytes);
        // SAFETY: written moments ago by this host's own program (the
        // compile process) into the host's artifact cache, and hashed
        // above; only this hash is ever recorded for it.
        let loaded = unsafe { sandbox.load_serialized(&name, &version, &bytes, size) };
        let plugin = match loaded {
            Ok(plugin) => plugin,
            Err(e) => {
                remove_now(&temporary);
                return Err(RegistryError::Invalid(e));
            }
        };
        let artifact_hash = match std::fs::rename(&temporary, &artifact) {
            Ok(()) => Some(hash),
            Err(error) => {
                tracing::warn!(%name, %error, "could not cache the compiled artifact");
                remove_now(&temporary);
                None
            }
        };
        Ok(ChildCompiled { plugin, artifact_hash })
    })
    .await
}

/// Runs one compile process to its answer, killing it past the budget.
async fn run_child(compiler: &ProcessCompiler, request: &CompileRequest) -> Result<CompileReply, RegistryError> {
    let text = serde_json::to_vec(request).expect("a request serialises");
    let mut command = tokio::process::Command::new(&compiler.program);
    command
        .arg(COMPILE_COMMAND)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let cpu_seconds = compiler.budget.as_secs().saturating_add(CPU_GRACE_SECS);
    // SAFETY: the hook only makes async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || limit_compile_process(cpu_seconds));
    }
    let mut child = command.spawn().map_err(|e| {
        RegistryError::Compiler(format!("cannot start the compile process {}: {e}", compiler.program.display()))
    })?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(RegistryError::Compiler("the compile process has no stdin or stdout".into()));
    };
    let exchange = async {
        // A child that died early closes its stdin: its exit status says why.
        if let Err(error) = stdin.write_all(&text).await {
            tracing::debug!(%error, "the compile process did not take its request");
        }
        drop(stdin);
        let mut answer = Vec::new();
        let read = stdout.take(MAX_MESSAGE_BYTES).read_to_end(&mut answer).await;
        (read, answer, child.wait().await)
    };
    let (read, answer, status) = match tokio::time::timeout(compiler.budget, exchange).await {
        Ok(done) => done,
        Err(_) => {
            if let Err(error) = child.kill().await {
                tracing::warn!(%error, "cannot stop a compile process that ran out of time");
            }
            return Err(RegistryError::CompileTimeout { budget: compiler.budget });
        }
    };
    let status = status.map_err(|e| RegistryError::Compiler(format!("waiting for the compile process: {e}")))?;
    read.map_err(|e| RegistryError::Compiler(format!("reading the compile process's answer: {e}")))?;
    if !status.success() {
        // Killed (its CPU or file-size limit, the OOM killer) or failed:
        // what it was given cannot be compiled within this host's bounds.
        return Err(RegistryError::Invalid(LoadError::Compile(format!(
            "the compile process ended without compiling it ({status}; see the host's log)"
        ))));
    }
    serde_json::from_slice(&answer)
        .map_err(|e| RegistryError::Compiler(format!("the compile process answered something unreadable: {e}")))
}

fn remove_now(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), %error, "cannot remove a temporary artifact");
    }
}

async fn remove_quietly(path: PathBuf) {
    blocking(move || remove_now(&path)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_a_compile_process_rebuilds_give_the_hosts_fingerprint() {
        let configs = [
            SandboxConfig { pool_instances: 4, ..SandboxConfig::default() },
            SandboxConfig {
                pool_instances: 4,
                fuel_metering: false,
                parallel_compilation: false,
                max_wasm_stack: 256 << 10,
                ..SandboxConfig::default()
            },
        ];
        for config in configs {
            let host = Sandbox::new(config.clone()).unwrap();
            let text = serde_json::to_vec(&EngineSettings::of(&config)).unwrap();
            let settings: EngineSettings = serde_json::from_slice(&text).unwrap();
            let child = Sandbox::new(settings.config()).unwrap();
            assert_eq!(child.fingerprint(), host.fingerprint(), "{config:?}");
        }
    }

    #[test]
    fn every_refusal_comes_back_as_the_same_load_error() {
        let errors = [
            LoadError::NotWasm,
            LoadError::CoreModule,
            LoadError::Compile("c".into()),
            LoadError::MissingImport("m".into()),
            LoadError::WrongWorld("w".into()),
        ];
        for error in errors {
            let before = error.to_string();
            let text = serde_json::to_vec(&CompileReply::Refused(error.into())).unwrap();
            let CompileReply::Refused(refusal) = serde_json::from_slice(&text).unwrap() else { panic!("not refused") };
            assert_eq!(LoadError::from(refusal).to_string(), before);
        }
    }
}
