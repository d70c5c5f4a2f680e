//! `taskhost hosts`: the hosts serving a server's store, with their
//! models, load and heartbeat age, and the plugins whose models no live
//! host serves (`GET /v1/hosts`).

use super::client::{Client, ServerArg, done};
use super::render::{JsonArg, Table};
use clap::Args;
use std::process::ExitCode;
use taskhost::units::format_size;
use taskhost::wire;

#[derive(Debug, Args)]
pub(crate) struct HostsArgs {
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    server: ServerArg,
}

pub(crate) async fn hosts(args: HostsArgs) -> ExitCode {
    done(
        async {
            let list: wire::HostList = Client::new(&args.server).get_json("/v1/hosts").await?;
            args.out.print(&list, hosts_text);
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

/// The hosts as a table; the one that answered is marked `*`.
fn hosts_text(list: &wire::HostList) -> String {
    let mut table =
        Table::new(&["HOST", "LIVE", "HEARD", "ROLE", "VERSION", "STARTED", "SLOTS", "READY", "MEMORY", "MODELS"])
            .right(&[2, 6, 7]);
    for host in &list.hosts {
        let mark = if host.this { " *" } else { "" };
        let heard = format!("{:.1}s ago", host.heartbeat_age_ms as f64 / 1000.0);
        let live = if host.live { "yes" } else { "no" };
        let mut row = vec![format!("{}{mark}", host.id), live.to_owned(), heard];
        match &host.report {
            Some(r) => {
                let load = &r.load;
                let models: Vec<String> = r
                    .models
                    .iter()
                    .map(|m| match (&m.device, m.ready) {
                        (Some(device), true) => format!("{} ({device})", m.name),
                        (None, true) => m.name.clone(),
                        (_, false) => format!("{} (not ready)", m.name),
                    })
                    .collect();
                let role = match r.role {
                    wire::HostRole::Standby => "standby",
                    _ => "serving",
                };
                row.extend([
                    role.to_owned(),
                    r.version.clone(),
                    r.started_at.clone(),
                    format!("{}/{}", load.busy, load.slots),
                    load.ready.to_string(),
                    format!("{}/{}", format_size(load.memory_reserved_bytes), format_size(load.memory_budget_bytes)),
                    if models.is_empty() { "-".to_owned() } else { models.join(", ") },
                ]);
            }
            None => row.extend([
                "-".to_owned(),
                "(unreadable report)".to_owned(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
        table.row(row);
    }
    let mut text = table.render("no hosts");
    for waiting in &list.unserved {
        text.push_str(&format!(
            "waiting: plugin `{}` needs {}, which no live host serves together; its tasks wait until one does\n",
            waiting.plugin,
            waiting.needs.join(", "),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_read_as_a_table_with_the_answering_one_marked() {
        let load = wire::HostLoad::new(8, 3, 12, 4 << 30, 1 << 30);
        let model = wire::HostModel::new("minilm".into(), true, Some("cuda:0".into()));
        let report = wire::HostReport::new("0.1.0".into(), "2026-12-05T10:00:00.000Z".into(), vec![model], load);
        let idle = wire::HostLoad::new(8, 0, 0, 4 << 30, 0);
        let standing = wire::HostReport::new("0.1.0".into(), "2026-12-05T10:01:00.000Z".into(), vec![], idle);
        let list = wire::HostList::new(
            vec![
                wire::Host::new("a".into(), true, true, 1200, Some(report)),
                wire::Host::new("b".into(), false, false, 65_000, None),
                wire::Host::new("c".into(), false, true, 900, Some(standing.standing_by())),
            ],
            2000,
            10_000,
        )
        .with_unserved(vec![wire::UnservedPlugin::new("t/rank".into(), vec!["minilm".into(), "ranker".into()])]);
        let text = hosts_text(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("HOST"), "{text}");
        assert!(lines[1].starts_with("a *") && lines[1].contains("1.2s ago") && lines[1].contains("3/8"), "{text}");
        assert!(
            lines[1].contains(" serving ") && lines[3].starts_with("c ") && lines[3].contains(" standby "),
            "{text}"
        );
        assert!(lines[1].contains("minilm (cuda:0)") && lines[1].contains("1 GiB/4 GiB"), "{text}");
        assert!(
            lines[2].starts_with("b ") && lines[2].contains(" no ") && lines[2].contains("(unreadable report)"),
            "{text}"
        );
        assert_eq!(
            lines[4],
            "waiting: plugin `t/rank` needs minilm, ranker, which no live host serves together; its tasks wait until \
             one does"
        );
    }
}
