//! `taskhost serve`: the engine behind the HTTP API.

use super::{EXIT_USAGE, fail};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use taskhost::engine::{Engine, EngineConfig, RetryPolicy, default_data_dir};
use taskhost::units::parse_duration;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Data directory (default: $TASKHOST_DATA, else $XDG_DATA_HOME/taskhost,
    /// else ~/.local/share/taskhost).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Most tasks running at once (default 4 × CPUs).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Commit every transition on its own (slower; for comparison).
    #[arg(long)]
    no_group_commit: bool,
    /// Watch DIR for `NAME.wasm`, `NAME@VERSION.wasm` and `NAME.toml`
    /// (manifest) files and load them live.
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// Models file (TOML) with the models plugins may call; reloaded when
    /// it changes; `POST /v1/models` writes to it. Default: DATA/models.toml.
    #[arg(long, value_name = "FILE")]
    models: Option<PathBuf>,
    /// Retry backoff base, e.g. `1s`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retry_base: Option<Duration>,
    /// Longest retry backoff, e.g. `5m`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retry_cap: Option<Duration>,
    /// Most queues; a task or setting naming a new queue past this is
    /// refused (default 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_queues: Option<u32>,
    /// Most plugin names; an upload of a new name past this is refused
    /// (default 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_plugins: Option<u32>,
}

pub(crate) async fn serve(args: ServeArgs) -> ExitCode {
    let mut config = EngineConfig { data_dir: args.data.unwrap_or_else(default_data_dir), ..EngineConfig::default() };
    if let Some(n) = args.concurrency {
        if n == 0 {
            return fail(EXIT_USAGE, "--concurrency must be at least 1");
        }
        config.concurrency = n;
    }
    config.group_commit = !args.no_group_commit;
    if let Some(n) = args.max_queues {
        config.max_queues = n as usize;
    }
    if let Some(n) = args.max_plugins {
        config.max_plugins = n as usize;
    }
    config.plugins_dir = args.plugins;
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
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            return fail(EXIT_USAGE, &format!("cannot listen on {}: {e}", args.listen));
        }
    };
    let engine = match Engine::open(config).await {
        Ok(e) => e,
        Err(e) => return fail(EXIT_USAGE, &format!("cannot open the engine: {e:#}")),
    };
    let bound = listener.local_addr().unwrap_or(args.listen);
    let counts = engine.state_counts();
    let total: i64 = counts.values().sum();
    eprintln!(
        "taskhost serving on http://{bound} (data: {}, {total} tasks stored, {} plugins)",
        data_dir.display(),
        engine.plugins().len()
    );
    let app = taskhost::api::router(engine.clone());
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = ctrl_c => {},
            _ = async { if let Some(t) = term.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {},
        }
        eprintln!("taskhost: shutting down");
    };
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    // Stop dispatching and watching, let running attempts end and their
    // outcomes commit, then release the store.
    engine.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_USAGE, &format!("server error: {e}")),
    }
}
