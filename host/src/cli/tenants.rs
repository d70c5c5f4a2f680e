//! `taskhost tenants put|list|show`: the admin's commands for tenants and
//! their quotas (a tenant's own token may `show` its own).

use super::client::{Client, ServerArg, done, print_json};
use clap::{Args, Subcommand};
use std::process::ExitCode;
use taskhost::wire;

#[derive(Debug, Subcommand)]
pub(crate) enum TenantsCommand {
    /// Make a tenant, or set its quotas (every quota at once: one left
    /// out is no quota of the tenant's own).
    Put {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List the tenants and their quotas.
    List {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show a tenant with what it uses now.
    Show {
        /// The tenant's name.
        name: String,
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
}

impl QuotaArgs {
    fn quotas(&self) -> wire::Quotas {
        let mut quotas = wire::Quotas::default();
        quotas.submit_per_sec = self.submit_per_sec;
        quotas.submit_burst = self.submit_burst;
        quotas.max_running = self.max_running;
        quotas.max_unfinished = self.max_unfinished;
        quotas
    }
}

pub(crate) async fn tenants(command: TenantsCommand) -> ExitCode {
    done(
        async {
            match command {
                TenantsCommand::Put { name, quotas, server } => {
                    let change = wire::TenantChange::new(quotas.quotas());
                    let tenant: wire::Tenant =
                        Client::new(&server).put_json(&format!("/v1/tenants/{name}"), &change).await?;
                    print_json(&tenant);
                }
                TenantsCommand::List { server } => {
                    let list: wire::TenantList = Client::new(&server).get_json("/v1/tenants").await?;
                    print_json(&list);
                }
                TenantsCommand::Show { name, server } => {
                    let tenant: wire::Tenant = Client::new(&server).get_json(&format!("/v1/tenants/{name}")).await?;
                    print_json(&tenant);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}
