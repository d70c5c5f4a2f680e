//! `taskhost logs ID`: one attempt's lines of a task, or (`--follow`) its
//! lines as they are written until it ends, read from the server's
//! Server-Sent Events.

use super::client::{Client, Failure, ServerArg, done};
use super::{EXIT_TASK_FAILED, EXIT_USAGE};
use clap::Args;
use std::process::ExitCode;
use taskhost::store::TaskState;
use taskhost::wire::{self, LogEvent, LogLine};

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// Task id.
    id: String,
    /// The attempt (counted over the task's life); its latest by default.
    #[arg(long)]
    attempt: Option<u32>,
    /// Keep printing lines as they are written, attempt after attempt,
    /// until the task ends; then exit 0 if it completed, 1 if not.
    #[arg(long, short = 'f')]
    follow: bool,
    /// JSON: the attempt's record (one line per event with --follow).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

pub(crate) async fn logs(args: LogsArgs) -> ExitCode {
    done(run(args).await)
}

async fn run(args: LogsArgs) -> Result<ExitCode, Failure> {
    let client = Client::new(&args.server);
    let path = format!("/v1/tasks/{}/logs", args.id);
    let mut query = vec![("follow", args.follow.to_string())];
    query.extend(args.attempt.map(|a| ("attempt", a.to_string())));
    if !args.follow {
        let attempt = args.attempt.map(|a| format!("?attempt={a}")).unwrap_or_default();
        let logs: wire::TaskLogs = client.get_json(&format!("{path}{attempt}")).await?;
        let mut out = std::io::stdout().lock();
        let written = if args.json { print_json_line(&mut out, &logs) } else { print_logs(&mut out, &logs) };
        return Ok(closed_pipe_is_fine(written));
    }
    let mut events = super::sse::SseReader::new(client.get_stream(&path, &query).await?);
    loop {
        let Some(sse) = events.next().await? else {
            return Err(Failure(EXIT_USAGE, "the server closed the stream before the task ended".into()));
        };
        if sse.name == wire::Stopping::EVENT {
            return Err(Failure(
                EXIT_USAGE,
                "the server is stopping before the task ended; follow it again once the server is back".into(),
            ));
        }
        let event: LogEvent = serde_json::from_str(&sse.data).map_err(|e| {
            Failure(EXIT_USAGE, format!("the server sent an event this client cannot read ({e}): {}", sse.data))
        })?;
        let mut out = std::io::stdout().lock();
        let written = if args.json { print_json_line(&mut out, &event) } else { print_event(&mut out, &event) };
        if let Err(e) = written {
            return Ok(closed_pipe_is_fine(Err(e)));
        }
        if let LogEvent::End { state, .. } = event {
            return Ok(if state == TaskState::Completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_TASK_FAILED)
            });
        }
    }
}

/// A write that failed because the reader went away (`| head`) ends the
/// command quietly, as done; any other failure is reported.
pub(crate) fn closed_pipe_is_fine(written: std::io::Result<()>) -> ExitCode {
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => super::fail(EXIT_USAGE, &format!("cannot write to stdout: {e}")),
    }
}

pub(crate) fn print_json_line(out: &mut impl std::io::Write, value: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

fn print_logs(out: &mut dyn std::io::Write, logs: &wire::TaskLogs) -> std::io::Result<()> {
    if logs.attempt == 0 {
        return writeln!(out, "(task {} has not started yet: {})", logs.id, logs.state);
    }
    let marker = |out: &mut dyn std::io::Write, d: &wire::LogsDropped| {
        writeln!(out, "… {} line(s), {} bytes, dropped over the attempt's cap …", d.lines, d.bytes)
    };
    if let Some(dropped) = logs.dropped.filter(|d| d.after_seq == 0) {
        marker(out, &dropped)?;
    }
    for line in &logs.lines {
        print_line(out, line)?;
        if let Some(dropped) = logs.dropped.filter(|d| d.after_seq == line.seq) {
            marker(out, &dropped)?;
        }
    }
    if logs.lines.is_empty() {
        writeln!(out, "(attempt {} of {} wrote nothing)", logs.attempt, logs.attempts)?;
    }
    Ok(())
}

fn print_event(out: &mut impl std::io::Write, event: &LogEvent) -> std::io::Result<()> {
    match event {
        LogEvent::Line(line) => print_line(out, line),
        LogEvent::Skipped { lines } => writeln!(out, "… {lines} line(s) dropped over the attempt's cap …"),
        LogEvent::Attempt { attempt } => writeln!(out, "── attempt {attempt} ──"),
        LogEvent::End { state, attempts } => writeln!(out, "── the task ended {state} after {attempts} attempt(s) ──"),
        _ => Ok(()),
    }
}

fn print_line(out: &mut dyn std::io::Write, line: &LogLine) -> std::io::Result<()> {
    let label = match line.level {
        Some(level) => level.to_string(),
        None => line.stream.as_str().to_owned(),
    };
    writeln!(out, "{} {label:<6} {}", line.at, line.text)
}
