//! Command-line interface: argument parsing and dispatch to subcommands
//! (`run` one-shot, `serve` the engine, `store` offline, and the client
//! commands). Exit codes: 0 success, 1 the task failed (for `store`:
//! problems found), 2 bad usage or unreadable files, 3 `serve` cannot open
//! the store (damaged, not a store, in use).

mod artifacts;
mod client;
mod events;
mod flow;
mod hosts;
mod local_server;
mod logs;
mod models;
mod new;
mod render;
mod run;
mod serve;
mod sse;
mod store;
mod tenants;
mod tokens;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "taskhost", version, about = "Sandboxed task host for WebAssembly component plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one task: PLUGIN.wasm on input from FILE or stdin; output to
    /// stdout, captured logs to stderr.
    Run(run::RunArgs),
    /// Create a plugin project: a Rust component crate, or a JavaScript or
    /// Python script, ready to build and run.
    New(new::NewArgs),
    /// Run the task engine and its HTTP API.
    Serve(Box<serve::ServeArgs>),
    /// Submit a task (or a JSONL batch) to a server.
    Submit(client::SubmitArgs),
    /// Show a task's record.
    Status(client::IdArgs),
    /// Cancel a task.
    Cancel(client::IdArgs),
    /// Run a failed task again (from the dead-letter set), its attempts
    /// counted afresh.
    Retry(client::RetryArgs),
    /// Show a task's transitions, oldest first.
    History(client::HistoryArgs),
    /// Print the tasks' transitions as they happen, one line each
    /// (filtered by queue, flow, plugin, state).
    Events(events::EventsArgs),
    /// Show what a task logged and printed (one attempt's lines), or
    /// follow its lines as they are written (`--follow`).
    Logs(logs::LogsArgs),
    /// List tasks.
    Tasks(client::TasksArgs),
    /// Manage plugins on a server.
    #[command(subcommand)]
    Plugins(client::PluginsCommand),
    /// Show a flow as a tree (`taskhost flow ID`), declare one
    /// (`--submit spec.json`) or cancel one (`--cancel`).
    Flow(flow::FlowArgs),
    /// Manage queues on a server.
    #[command(subcommand)]
    Queues(client::QueuesCommand),
    /// Manage the models plugins call through `inference`.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// Manage tenants and their quotas (admin).
    #[command(subcommand)]
    Tenants(tenants::TenantsCommand),
    /// Show the audit log of admin and plugin actions (admin), newest first.
    Audit(tokens::AuditArgs),
    /// List the hosts serving the server's store: their models, load and
    /// last heartbeat (one host on redb).
    Hosts(hosts::HostsArgs),
    /// Check or repair the data store, offline (no server running on it).
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// The compile process `serve` starts for each compile (internal).
    #[command(name = "__compile", hide = true)]
    Compile,
}

/// Exit status for a task that failed.
pub(crate) const EXIT_TASK_FAILED: u8 = 1;
/// Exit status for bad usage or an environment problem (unreadable file).
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit status of `serve` when the store cannot be opened (damaged, not a
/// store, in use).
pub(crate) const EXIT_STORE: u8 = 3;

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Compile = cli.command {
        // No async runtime, no logging set-up: it only compiles.
        return taskhost::registry::compile_process_main();
    }
    if !matches!(cli.command, Command::Serve(_)) {
        // A command whose reader went away (`taskhost plugins list | head
        // -1`) ends quietly, as Unix tools do, instead of panicking in
        // `println!`. Sockets are unaffected (written with MSG_NOSIGNAL);
        // the server keeps Rust's default of ignoring the signal.
        // SAFETY: sets a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TASKHOST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_USAGE, &format!("cannot start the async runtime: {e}")),
    };
    match cli.command {
        Command::Run(args) => runtime.block_on(run::run(args)),
        Command::New(args) => new::new(args),
        Command::Serve(args) => {
            let code = runtime.block_on(serve::serve(*args));
            // The engine has closed; nothing left may hold the exit.
            runtime.shutdown_timeout(serve::EXIT_GRACE);
            code
        }
        Command::Submit(args) => runtime.block_on(client::submit(args)),
        Command::Status(args) => runtime.block_on(client::status(args)),
        Command::Cancel(args) => runtime.block_on(client::cancel(args)),
        Command::Retry(args) => runtime.block_on(client::retry(args)),
        Command::History(args) => runtime.block_on(client::history(args)),
        Command::Logs(args) => runtime.block_on(logs::logs(args)),
        Command::Events(args) => runtime.block_on(events::events(args)),
        Command::Tasks(args) => runtime.block_on(client::tasks(args)),
        Command::Plugins(command) => runtime.block_on(client::plugins(command)),
        Command::Queues(command) => runtime.block_on(client::queues(command)),
        Command::Flow(args) => runtime.block_on(flow::flow(args)),
        Command::Models(command) => runtime.block_on(models::models(command)),
        Command::Tokens(command) => runtime.block_on(tokens::tokens(command)),
        Command::Tenants(command) => runtime.block_on(tenants::tenants(command)),
        Command::Audit(args) => runtime.block_on(tokens::audit(args)),
        Command::Hosts(args) => runtime.block_on(hosts::hosts(args)),
        Command::Store(command) => runtime.block_on(store::store(command)),
        Command::Compile => taskhost::registry::compile_process_main(),
    }
}

/// Prints the one `error: ` line and returns the exit code.
pub(crate) fn fail(code: u8, message: &str) -> ExitCode {
    // Keep the error on one line whatever the detail contains.
    let one_line = message.split(['\n', '\r']).map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>();
    eprintln!("error: {}", one_line.join(" | "));
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command that talks to a server prints text for people by
    /// default and the server's answer with `--json`.
    #[test]
    fn every_client_command_takes_json() {
        fn leaves(command: &clap::Command, path: String, found: &mut Vec<(String, bool)>) {
            let subcommands: Vec<_> = command.get_subcommands().filter(|c| c.get_name() != "help").collect();
            if subcommands.is_empty() {
                if command.get_arguments().any(|a| a.get_id() == "server") {
                    found.push((path, command.get_arguments().any(|a| a.get_long() == Some("json"))));
                }
                return;
            }
            for sub in subcommands {
                leaves(sub, format!("{path} {}", sub.get_name()), found);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let mut found = Vec::new();
        leaves(&cli, "taskhost".into(), &mut found);
        let without: Vec<&String> = found.iter().filter(|(_, json)| !json).map(|(path, _)| path).collect();
        // A new client command adds one here; one that lost `--server`
        // would take one away.
        assert_eq!(found.len(), 28, "client commands: {found:?}");
        assert!(without.is_empty(), "client commands without --json: {without:?}");
    }
}
