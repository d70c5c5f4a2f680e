//! `taskhost events`: the tenant's task transitions as they commit, one
//! line each, read from the server's Server-Sent Events until
//! interrupted (or the server drops a reader that fell behind).

use super::client::{Client, Failure, ServerArg, done};
use super::logs::{closed_pipe_is_fine, print_json_line};
use super::{EXIT_TASK_FAILED, EXIT_USAGE};
use clap::Args;
use std::process::ExitCode;
use taskhost::wire::{self, EventsMissed, MissedReason, TaskMoved};

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Only this queue's tasks.
    #[arg(long)]
    queue: Option<String>,
    /// Only this flow's tasks.
    #[arg(long)]
    flow: Option<String>,
    /// Only this plugin's tasks.
    #[arg(long)]
    plugin: Option<String>,
    /// Only transitions into this state (repeat it, or separate by commas).
    #[arg(long, value_delimiter = ',')]
    state: Vec<String>,
    /// Start after this event id (an earlier run's last `id`): the events
    /// missed since, as far as the server keeps them.
    #[arg(long)]
    after: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

pub(crate) async fn events(args: EventsArgs) -> ExitCode {
    done(run(args).await)
}

async fn run(args: EventsArgs) -> Result<ExitCode, Failure> {
    let given = [("queue", args.queue), ("flow", args.flow), ("plugin", args.plugin), ("after", args.after)];
    let mut query: Vec<(&str, String)> = given.into_iter().filter_map(|(key, value)| Some((key, value?))).collect();
    if !args.state.is_empty() {
        query.push(("state", args.state.join(",")));
    }
    let mut events = super::sse::SseReader::new(Client::new(&args.server).get_stream("/v1/events", &query).await?);
    while let Some(sse) = events.next().await? {
        let mut out = std::io::stdout().lock();
        let written = match sse.name.as_str() {
            "task" => {
                let moved: TaskMoved = serde_json::from_str(&sse.data).map_err(|e| unreadable(&e, &sse.data))?;
                if args.json { print_json_line(&mut out, &moved) } else { print_moved(&mut out, &moved) }
            }
            "missed" => {
                let (reason, message, ends) = missed_notice(&sse.data)?;
                eprintln!("taskhost: events missed ({reason}): {message}");
                if ends {
                    return Ok(ExitCode::from(EXIT_TASK_FAILED));
                }
                Ok(())
            }
            name if name == wire::Stopping::EVENT => {
                return Err(Failure(
                    EXIT_USAGE,
                    "the server is stopping; run this again once it is back (with --after and the last event id \
                     seen, to miss nothing)"
                        .into(),
                ));
            }
            _ => Ok(()),
        };
        if let Err(e) = written {
            return Ok(closed_pipe_is_fine(Err(e)));
        }
    }
    Err(Failure(EXIT_USAGE, "the server closed the event stream".into()))
}

/// What a `missed` event says: its reason, its message, and whether the
/// stream ends (`too_slow`). A reason newer than this client is told as
/// the server sent it, and the stream goes on.
fn missed_notice(data: &str) -> Result<(String, String, bool), Failure> {
    match serde_json::from_str::<EventsMissed>(data) {
        Ok(missed) => Ok((missed.reason.to_string(), missed.message, missed.reason == MissedReason::TooSlow)),
        Err(e) => {
            let value: serde_json::Value = serde_json::from_str(data).map_err(|_| unreadable(&e, data))?;
            match (value["reason"].as_str(), value["message"].as_str()) {
                (Some(reason), Some(message)) => Ok((reason.to_owned(), message.to_owned(), false)),
                _ => Err(unreadable(&e, data)),
            }
        }
    }
}

fn unreadable(e: &serde_json::Error, data: &str) -> Failure {
    Failure(EXIT_USAGE, format!("the server sent an event this client cannot read ({e}): {data}"))
}

fn print_moved(out: &mut impl std::io::Write, m: &TaskMoved) -> std::io::Result<()> {
    let from = m.from.map_or("new", |s| s.as_str());
    writeln!(
        out,
        "{} {} {:<12} {from:>9} → {:<9} queue={} attempt={}",
        m.at,
        m.id,
        m.plugin,
        m.to.as_str(),
        m.queue,
        m.attempt
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_notice_ends_the_stream_only_when_too_slow_and_a_newer_reason_is_told_as_sent() {
        let notice = |reason: &str| missed_notice(&format!(r#"{{"reason":"{reason}","message":"m"}}"#)).ok();
        assert_eq!(notice("too_slow"), Some(("too_slow".into(), "m".into(), true)));
        assert_eq!(notice("gap"), Some(("gap".into(), "m".into(), false)));
        assert_eq!(notice("unheard"), Some(("unheard".into(), "m".into(), false)));
        assert_eq!(notice("from_a_newer_server"), Some(("from_a_newer_server".into(), "m".into(), false)));
        for bad in [r#"{"reason":"gap"}"#, r#"{"message":"m"}"#, "not json"] {
            let Err(Failure(code, why)) = missed_notice(bad) else { panic!("{bad} was read") };
            assert_eq!(code, EXIT_USAGE);
            assert!(why.contains("cannot read"), "{why}");
        }
    }
}
