//! `taskhost run`: one task, one shot, through the same sandbox the server
//! uses.

use super::{EXIT_TASK_FAILED, EXIT_USAGE, fail};
use clap::Args;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use taskhost::registry::Manifest;
use taskhost::scripts::{Language, Script};
use taskhost::units::{format_size, parse_duration, parse_size};
use taskhost::{Limits, Sandbox, SandboxConfig, TaskReport, TaskRequest};

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The plugin component (.wasm, built for wasm32-wasip2), or a script:
    /// JavaScript (.js, .mjs) or Python (.py), told by its extension or by
    /// --lang.
    plugin: PathBuf,
    /// Run the file as a script in this language (`js`, `python`), whatever its
    /// extension.
    #[arg(long, value_name = "LANG")]
    lang: Option<taskhost::scripts::Language>,
    /// Read the task input from FILE (`-` for stdin). Default: stdin when it
    /// is not a terminal, else empty input.
    #[arg(long, short, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Fuel budget (≈ wasm instructions).
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Linear-memory cap, e.g. `64MiB`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// Wall-clock budget, e.g. `500ms`, `2s`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Largest output the plugin may return, e.g. `1MiB`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_output: Option<u64>,
    /// Cap on each captured stream (stdout, stderr, log), e.g. `64KiB`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_log: Option<u64>,
    /// Host budget: what the plugin may make the host hold outside its own
    /// memory (log records, captured streams, inference tensors), e.g. `16MiB`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    host_memory: Option<u64>,
    /// Print fuel used, elapsed time and how the plugin was loaded to stderr.
    #[arg(long)]
    stats: bool,
    /// Keep compiled plugins in DIR, so a second run of the same component
    /// skips compiling (default: $TASKHOST_CACHE, else
    /// $XDG_CACHE_HOME/taskhost/artifacts, else ~/.cache/taskhost/artifacts).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile the plugin without reading or writing the artifact cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Serve the models in FILE (TOML, see README "Inference") to the
    /// plugin's `inference` calls.
    #[arg(long, value_name = "FILE")]
    models: Option<PathBuf>,
    /// The plugin's name, as model grants see it (default: the file name
    /// without `.wasm`).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Grant what a capability manifest (TOML, as for a server's plugin)
    /// grants: its directories, network and models, and its limits as the
    /// defaults the flags above override.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Preopen a host directory: `HOST[:GUEST][:ro]` (GUEST defaults to
    /// the absolute HOST path; read-write unless `:ro`). Repeat for more.
    #[arg(long = "dir", value_name = "HOST[:GUEST][:ro]", value_parser = parse_dir)]
    dirs: Vec<taskhost::DirGrant>,
    /// Allow outbound TCP/UDP to `HOST:PORT` (resolved now). Repeat for
    /// more.
    #[arg(long = "allow-net", value_name = "HOST:PORT")]
    allow_net: Vec<String>,
}

/// `HOST[:GUEST][:ro|:rw]` as a directory grant of an existing directory.
fn parse_dir(value: &str) -> Result<taskhost::DirGrant, String> {
    let mut parts: Vec<&str> = value.split(':').collect();
    let writable = match parts.last() {
        Some(&"ro") => {
            parts.pop();
            false
        }
        Some(&"rw") => {
            parts.pop();
            true
        }
        _ => true,
    };
    let (host, guest) = match parts.as_slice() {
        [host] => (*host, None),
        [host, guest] => (*host, Some(*guest)),
        _ => return Err(format!("`{value}`: expected HOST[:GUEST][:ro]")),
    };
    let host = std::fs::canonicalize(host).map_err(|e| format!("`{host}`: {e}"))?;
    if !host.is_dir() {
        return Err(format!("`{}` is not a directory", host.display()));
    }
    let guest = match guest {
        Some(guest) if guest.starts_with('/') => guest.to_owned(),
        Some(guest) => return Err(format!("the guest path `{guest}` must be absolute, e.g. `/data`")),
        None => host.to_string_lossy().into_owned(),
    };
    Ok(taskhost::DirGrant { host, guest, writable })
}

pub(crate) async fn run(args: RunArgs) -> ExitCode {
    let input = match read_input(args.input.as_deref()) {
        Ok(i) => i,
        Err(message) => return fail(EXIT_USAGE, &message),
    };
    let mut config = SandboxConfig { pool_instances: 4, ..SandboxConfig::default() };
    let manifest = match &args.manifest {
        Some(file) => {
            match std::fs::read_to_string(file).map_err(|e| e.to_string()).and_then(|t| Manifest::parse(&t)) {
                Ok(manifest) => Some(manifest),
                Err(e) => return fail(EXIT_USAGE, &format!("manifest `{}`: {e}", file.display())),
            }
        }
        None => None,
    };
    if let Some(manifest) = &manifest {
        match manifest.limits(&config.default_limits) {
            Ok(limits) => config.default_limits = limits,
            Err(e) => return fail(EXIT_USAGE, &format!("manifest: {e}")),
        }
    }
    let mut grants = taskhost::Grants::default();
    if let Some(manifest) = &manifest {
        grants.dirs = manifest.dir_grants();
        grants.connect = manifest.connect_grants().await;
        grants.models = manifest.models.clone();
    }
    grants.dirs.extend(args.dirs.iter().cloned());
    for address in &args.allow_net {
        match tokio::net::lookup_host(address.as_str()).await {
            Ok(found) => grants.connect.extend(found),
            Err(e) => return fail(EXIT_USAGE, &format!("--allow-net `{address}`: {e} (expected HOST:PORT)")),
        }
    }
    let defaults = &mut config.default_limits;
    let limits = Limits {
        fuel: args.fuel.unwrap_or(defaults.fuel),
        memory_bytes: args.memory.unwrap_or(defaults.memory_bytes),
        timeout: args.timeout.unwrap_or(defaults.timeout),
        max_output_bytes: args.max_output.unwrap_or(defaults.max_output_bytes),
        max_log_bytes: args.max_log.unwrap_or(defaults.max_log_bytes),
        host_bytes: args.host_memory.unwrap_or(defaults.host_bytes),
    };
    *defaults = limits.clone();
    let sandbox = match Sandbox::new(config) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_USAGE, &format!("host error: {e:#}")),
    };
    if let Err(message) = sandbox.check_limits(&limits) {
        return fail(EXIT_USAGE, &message);
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| args.plugin.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    let inference = match args.models.clone() {
        Some(file) => match super::models::open(file, true).await {
            Ok(models) => Some(std::sync::Arc::new(models) as std::sync::Arc<dyn taskhost::infer::InferenceService>),
            Err(message) => return fail(EXIT_USAGE, &message),
        },
        None => None,
    };
    let cache = if args.no_cache { None } else { args.cache_dir.clone().or_else(super::artifacts::default_dir) };
    let language = args.lang.or_else(|| Language::from_file_name(&args.plugin.to_string_lossy()));
    let mut script = None;
    let loaded = match language {
        Some(language) => {
            let name = args.plugin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let bytes = match std::fs::read(&args.plugin) {
                Ok(bytes) => bytes,
                Err(e) => return fail(EXIT_USAGE, &format!("cannot read script `{}`: {e}", args.plugin.display())),
            };
            script = match Script::new(language, name, bytes) {
                Ok(script) => Some(std::sync::Arc::new(script)),
                Err(e) => return fail(EXIT_USAGE, &e.to_string()),
            };
            match super::artifacts::load_runner(&sandbox, language, cache.as_deref()).await {
                Ok(loaded) => loaded,
                Err(e) => return fail(EXIT_USAGE, &e.to_string()),
            }
        }
        None => match super::artifacts::load(&sandbox, &name, &args.plugin, cache.as_deref()) {
            Ok(loaded) => loaded,
            Err(super::artifacts::Failed::Read(message)) => return fail(EXIT_USAGE, &message),
            Err(super::artifacts::Failed::Load(e)) => {
                return fail(EXIT_TASK_FAILED, &format!("invalid plugin: `{}`: {e}", args.plugin.display()));
            }
        },
    };
    let (plugin, source, load_time) = loaded;
    let request = TaskRequest { input, limits: Some(limits), inference, script, grants, ..TaskRequest::default() };
    let report = sandbox.run(&plugin, request).await;
    print_captured(&report);
    if args.stats {
        let how = match source {
            super::artifacts::Source::Cached => "loaded from the artifact cache",
            super::artifacts::Source::Compiled => "compiled",
        };
        eprintln!(
            "stats: plugin {how} in {load_time:?}, elapsed {:?}, fuel used {}, output {}",
            report.elapsed,
            report.fuel_consumed.map_or_else(|| "n/a".into(), |f| f.to_string()),
            report.result.as_ref().map_or_else(|_| "none".into(), |o| format_size(o.len() as u64)),
        );
    }
    match report.result {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout.write_all(&output).and_then(|()| stdout.flush()) {
                return fail(EXIT_USAGE, &format!("cannot write the output: {e}"));
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            if let Some(backtrace) = &failure.backtrace {
                eprintln!("wasm backtrace:\n{backtrace}");
            }
            fail(EXIT_TASK_FAILED, &failure.to_string())
        }
    }
}

fn read_input(path: Option<&std::path::Path>) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    match path {
        Some(p) if p.as_os_str() == "-" => {
            std::io::stdin().read_to_end(&mut buf).map_err(|e| format!("cannot read input from stdin: {e}"))?;
        }
        Some(p) => {
            buf = std::fs::read(p).map_err(|e| format!("cannot read input `{}`: {e}", p.display()))?;
        }
        None if std::io::stdin().is_terminal() => {}
        None => {
            std::io::stdin().read_to_end(&mut buf).map_err(|e| format!("cannot read input from stdin: {e}"))?;
        }
    }
    Ok(buf)
}

/// The plugin's own log records, then its stdout and stderr, to our stderr.
fn print_captured(report: &TaskReport) {
    let mut err = std::io::stderr().lock();
    for record in &report.logs {
        let _ = writeln!(err, "[{:>5}] {}", record.level, record.message);
    }
    for (name, bytes) in [("stdout", &report.stdout), ("stderr", &report.stderr)] {
        for line in String::from_utf8_lossy(bytes).lines() {
            let _ = writeln!(err, "[{name}] {line}");
        }
    }
}
