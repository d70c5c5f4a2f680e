//! `taskhost tenants put|list|show`: the admin's commands for tenants and
//! their quotas (a tenant's own token may `show` its own).

use super::client::{Client, ServerArg, done};
use super::render::{JsonArg, Table, fields};
use clap::{Args, Subcommand};
use std::process::ExitCode;
use taskhost::units::{parse_duration, parse_size};
use taskhost::wire;

#[derive(Debug, Subcommand)]
pub(crate) enum TenantsCommand {
    /// Make a tenant, or set its quotas (every quota at once: one left
    /// out is no quota of the tenant's own).
    Put {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        quotas: Box<QuotaArgs>,
        #[command(flatten)]
        out: JsonArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List the tenants and their quotas.
    List {
        #[command(flatten)]
        out: JsonArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show a tenant with what it uses now.
    Show {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        out: JsonArg,
        #[command(flatten)]
        server: ServerArg,
    },
}

/// A tenant's quotas as flags.
#[derive(Debug, Args)]
pub(crate) struct QuotaArgs {
    /// Task and flow submissions per second.
    #[arg(long, value_name = "N")]
    submit_per_sec: Option<u32>,
    /// Submissions allowed at once beyond the rate (default: one second's worth).
    #[arg(long, value_name = "N")]
    submit_burst: Option<u32>,
    /// Tasks running at once.
    #[arg(long, value_name = "N")]
    max_running: Option<u32>,
    /// Tasks stored and not yet finished.
    #[arg(long, value_name = "N")]
    max_unfinished: Option<u64>,
    /// Bytes of task inputs, outputs and logs kept, e.g. `10GiB`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_stored_bytes: Option<u64>,
    /// Plugin names.
    #[arg(long, value_name = "N")]
    max_plugins: Option<u32>,
    /// Versions one plugin keeps.
    #[arg(long, value_name = "N")]
    max_plugin_versions: Option<u32>,
    /// Size of one uploaded component, e.g. `20MiB`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_plugin_bytes: Option<u64>,
    /// Fuel one task may be given.
    #[arg(long, value_name = "N")]
    max_fuel: Option<u64>,
    /// Memory one task may be given, e.g. `256MiB`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Wall-clock time one attempt may be given, e.g. `30s`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_timeout: Option<std::time::Duration>,
    /// Queues (its `default` queue is never refused).
    #[arg(long, value_name = "N")]
    max_queues: Option<u32>,
    /// Tasks one of its flows may create in all.
    #[arg(long, value_name = "N")]
    max_flow_tasks: Option<u64>,
    /// Submissions between a flow's first tasks and the deepest.
    #[arg(long, value_name = "N")]
    max_flow_depth: Option<u32>,
    /// Children (and joins) one attempt may submit.
    #[arg(long, value_name = "N")]
    max_children_per_task: Option<u32>,
    /// Bytes of one flow's context, e.g. `256KiB`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_flow_context: Option<u64>,
    /// Queues that take ad-hoc scripts (`submit --script`), comma-separated;
    /// `*` for every queue. Default: none.
    #[arg(long, value_name = "QUEUE,...", value_delimiter = ',')]
    script_queues: Option<Vec<String>>,
    /// Size of one ad-hoc script, e.g. `256KiB` (default 64 KiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_script: Option<u64>,
}

impl QuotaArgs {
    fn quotas(&self) -> wire::Quotas {
        let mut quotas = wire::Quotas::default();
        quotas.submit_per_sec = self.submit_per_sec;
        quotas.submit_burst = self.submit_burst;
        quotas.max_running = self.max_running;
        quotas.max_unfinished = self.max_unfinished;
        quotas.max_stored_bytes = self.max_stored_bytes;
        quotas.max_plugins = self.max_plugins;
        quotas.max_plugin_versions = self.max_plugin_versions;
        quotas.max_plugin_bytes = self.max_plugin_bytes;
        quotas.max_fuel = self.max_fuel;
        quotas.max_memory_bytes = self.max_memory;
        quotas.max_timeout_ms = self.max_timeout.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        quotas.max_queues = self.max_queues;
        quotas.max_flow_tasks = self.max_flow_tasks;
        quotas.max_flow_depth = self.max_flow_depth;
        quotas.max_children_per_task = self.max_children_per_task;
        quotas.max_flow_context_bytes = self.max_flow_context;
        quotas.script_queues = self.script_queues.clone();
        quotas.max_script_bytes = self.max_script;
        quotas
    }
}

pub(crate) async fn tenants(command: TenantsCommand) -> ExitCode {
    done(
        async {
            match command {
                TenantsCommand::Put { name, quotas, out, server } => {
                    let change = wire::TenantChange::new(quotas.quotas());
                    let tenant: wire::Tenant =
                        Client::new(&server).put_json(&format!("/v1/tenants/{name}"), &change).await?;
                    out.print(&tenant, tenant_text);
                }
                TenantsCommand::List { out, server } => {
                    let list: wire::TenantList = Client::new(&server).get_json("/v1/tenants").await?;
                    out.print(&list, |list| {
                        let mut table = Table::new(&["TENANT", "CREATED", "BY", "QUOTAS"]);
                        for t in &list.tenants {
                            table.row(vec![
                                t.name.clone(),
                                t.created_at.clone(),
                                t.created_by.clone(),
                                quota_list(&t.quotas),
                            ]);
                        }
                        table.render("no tenants")
                    });
                }
                TenantsCommand::Show { name, out, server } => {
                    let tenant: wire::Tenant = Client::new(&server).get_json(&format!("/v1/tenants/{name}")).await?;
                    out.print(&tenant, tenant_text);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

/// The quotas a tenant has, `name=value` (`none`: no quota of its own).
fn quota_list(q: &wire::Quotas) -> String {
    let value = serde_json::to_value(q).unwrap_or_default();
    let set: Vec<String> = value
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if set.is_empty() { "none".into() } else { set.join(" ") }
}

/// A tenant for people: its quotas, then what it uses now.
fn tenant_text(t: &wire::Tenant) -> String {
    let mut pairs = vec![
        ("tenant", t.name.clone()),
        ("created", format!("{} by {}", t.created_at, t.created_by)),
        ("quotas", quota_list(&t.quotas)),
    ];
    if let Some(u) = &t.usage {
        pairs.push((
            "tasks",
            format!("{} unfinished ({} ready, {} delayed, {} running)", u.unfinished, u.ready, u.delayed, u.running),
        ));
        pairs.push(("plugins", u.plugins.to_string()));
        pairs.push(("stored", taskhost::units::format_size(u.stored_bytes)));
    }
    fields(&pairs)
}
