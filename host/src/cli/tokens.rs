//! `taskhost tokens create|list|revoke` and `taskhost audit`: the admin's
//! commands for API tokens and the audit log.

use super::client::{Client, ServerArg, done, print_json};
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
        server: ServerArg,
    },
    /// Revoke a token by id: it is refused from the next request on.
    Revoke {
        /// The token's id (16 hex digits, from `tokens list`).
        id: String,
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
                TokensCommand::List { server } => {
                    let list: wire::TokenList = Client::new(&server).get_json("/v1/tokens").await?;
                    print_json(&list);
                }
                TokensCommand::Revoke { id, server } => {
                    let revoked: wire::TokenRevoked =
                        Client::new(&server).delete_json(&format!("/v1/tokens/{id}")).await?;
                    print_json(&revoked);
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
            print_json(&page);
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}
