//! `taskhost tokens create|list|revoke` and `taskhost audit`: the admin's
//! commands for API tokens and the audit log.

use super::client::{Client, ServerArg, done, print_json};
use super::render::{JsonArg, Table, or_dash};
use clap::{Args, Subcommand};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use taskhost::units::parse_duration;
use taskhost::wire;

#[derive(Debug, Subcommand)]
pub(crate) enum TokensCommand {
    /// Make a token; prints it once (it cannot be shown again).
    Create {
        /// A unique name, e.g. `ci-submitter`.
        name: String,
        /// A scope it holds (repeat): admin, plugins, submit, read, metrics.
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
        /// Its tenant (default `default`).
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime, e.g. `30d`; never expires when absent.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<Duration>,
        /// Print the whole answer as JSON instead of the token alone.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List the tokens (never their secrets).
    List {
        #[command(flatten)]
        out: JsonArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Revoke a token by id: it is refused from the next request on.
    Revoke {
        /// The token's id (16 hex digits, from `tokens list`).
        id: String,
        #[command(flatten)]
        out: JsonArg,
        #[command(flatten)]
        server: ServerArg,
    },
}

pub(crate) async fn tokens(command: TokensCommand) -> ExitCode {
    done(
        async {
            match command {
                TokensCommand::Create { name, scopes, tenant, expires_in, json, server } => {
                    let expires_at =
                        expires_in.map(|d| humantime::format_rfc3339_millis(SystemTime::now() + d).to_string());
                    let request = wire::TokenRequest::new(name, scopes).with(tenant, expires_at);
                    let created: wire::TokenCreated = Client::new(&server).post_json("/v1/tokens", &request).await?;
                    if json {
                        print_json(&created);
                    } else {
                        println!("{}", created.token);
                        eprintln!(
                            "token `{}` (id {}, scopes {}): shown this once; send it as `Authorization: Bearer ...`",
                            created.info.name,
                            created.info.id,
                            created.info.scopes.join(", ")
                        );
                    }
                }
                TokensCommand::List { out, server } => {
                    let list: wire::TokenList = Client::new(&server).get_json("/v1/tokens").await?;
                    out.print(&list, |list| {
                        let mut table = Table::new(&["ID", "NAME", "TENANT", "SCOPES", "CREATED", "EXPIRES"]);
                        for t in &list.tokens {
                            table.row(vec![
                                t.id.clone(),
                                t.name.clone(),
                                t.tenant.clone(),
                                t.scopes.join(","),
                                t.created_at.clone(),
                                or_dash(t.expires_at.as_ref()),
                            ]);
                        }
                        table.render("no tokens")
                    });
                }
                TokensCommand::Revoke { id, out, server } => {
                    let revoked: wire::TokenRevoked =
                        Client::new(&server).delete_json(&format!("/v1/tokens/{id}")).await?;
                    out.print(&revoked, |r| format!("revoked token `{}` ({})\n", r.revoked.name, r.revoked.id));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Most entries to show (1-1000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Show entries older than this entry id.
    #[arg(long, value_name = "ID")]
    before: Option<String>,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    server: ServerArg,
}

pub(crate) async fn audit(args: AuditArgs) -> ExitCode {
    done(
        async {
            let mut path = format!("/v1/audit?limit={}", args.limit);
            if let Some(before) = &args.before {
                path.push_str(&format!("&before={before}"));
            }
            let page: wire::AuditPage = Client::new(&args.server).get_json(&path).await?;
            args.out.print(&page, |page| {
                let mut table = Table::new(&["AT", "TOKEN", "TENANT", "ACTION", "OBJECT", "ID"]);
                for r in &page.entries {
                    table.row(vec![
                        r.at.clone(),
                        r.token_name.clone(),
                        r.tenant.clone(),
                        r.action.clone(),
                        r.object.clone(),
                        r.id.to_string(),
                    ]);
                }
                let mut text = table.render("no audit records");
                if let Some(before) = page.next_before {
                    text.push_str(&format!("older: --before {before}\n"));
                }
                text
            });
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}
