//! `taskhost flow`: show a flow as a tree with states and timings, declare
//! one from a JSON spec, or cancel one.

use super::client::{Client, Failure, ServerArg, done, print_json};
use super::{EXIT_TASK_FAILED, EXIT_USAGE};
use clap::Args;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use taskhost::store::{FlowState, TaskState};
use taskhost::wire::{Flow, FlowNode};

#[derive(Debug, Args)]
pub(crate) struct FlowArgs {
    /// Flow id (or the id of the task that started it).
    #[arg(required_unless_present = "submit")]
    id: Option<String>,
    /// Declare a flow from a JSON spec FILE (`-` for stdin) instead.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["id", "cancel"])]
    submit: Option<PathBuf>,
    /// Cancel the flow: every unfinished task, and any later iteration.
    #[arg(long)]
    cancel: bool,
    /// Wait until the flow ends (following its tasks' ends on the event
    /// stream), then print its tree.
    #[arg(long, short, conflicts_with = "cancel")]
    wait: bool,
    /// Print the flow as JSON instead of a tree.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

pub(crate) async fn flow(args: FlowArgs) -> ExitCode {
    done(flow_inner(args).await)
}

async fn flow_inner(args: FlowArgs) -> Result<ExitCode, Failure> {
    let client = Client::new(&args.server);
    let mut view: Flow = match (&args.submit, &args.id) {
        (Some(path), _) => {
            let text = super::client::read_input(Some(path)).map_err(|e| Failure(EXIT_USAGE, e))?;
            let spec: Value = serde_json::from_slice(&text)
                .map_err(|e| Failure(EXIT_USAGE, format!("{} is not JSON: {e}", path.display())))?;
            client.post_json("/v1/flows", &spec).await?
        }
        (None, Some(id)) if args.cancel => client.post_json(&format!("/v1/flows/{id}/cancel"), &json!({})).await?,
        (None, Some(id)) => client.get_json(&format!("/v1/flows/{id}")).await?,
        (None, None) => return Err(Failure(EXIT_USAGE, "give a flow id, or --submit FILE".into())),
    };
    if args.wait && view.state == FlowState::Running {
        // The view is read again when one of the flow's tasks ends (at
        // most every 100 ms); without an event stream, every 250 ms.
        let query = [("flow", view.id.to_string()), ("state", "completed,failed,cancelled".to_owned())];
        let mut events = client.get_stream("/v1/events", &query).await.ok().map(super::sse::SseReader::new);
        view = client.get_json(&format!("/v1/flows/{}", view.id)).await?;
        while view.state == FlowState::Running {
            match &mut events {
                Some(stream) => {
                    if stream.next().await?.is_none() {
                        events = None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => tokio::time::sleep(Duration::from_millis(250)).await,
            }
            view = client.get_json(&format!("/v1/flows/{}", view.id)).await?;
        }
    }
    if args.json {
        print_json(&view);
    } else {
        print!("{}", render(&view));
    }
    Ok(match view.state {
        FlowState::Failed | FlowState::Cancelled if args.wait => ExitCode::from(EXIT_TASK_FAILED),
        _ => ExitCode::SUCCESS,
    })
}

/// The flow as text: a header, then one line per task, children indented
/// under the task that submitted them.
pub(crate) fn render(view: &Flow) -> String {
    let mut out = format!(
        "flow {} {}{}  {} tasks{}{}\n",
        view.id,
        view.state.as_str(),
        view.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
        view.tasks.total,
        view.duration_ms.map(|ms| format!("  {ms} ms")).unwrap_or_default(),
        Some(view.iteration).filter(|&i| i > 0).map(|i| format!("  iteration {i}")).unwrap_or_default(),
    );
    if let Some(error) = &view.error {
        out.push_str(&format!("  error: {error}\n"));
    }
    fn walk(node: &FlowNode, depth: usize, out: &mut String) {
        let mark = match node.state {
            TaskState::Completed => "✔",
            TaskState::Failed => "✘",
            TaskState::Cancelled => "⊘",
            TaskState::Running => "▶",
            TaskState::Pending | TaskState::Retrying => "…",
        };
        let step = node.step.as_deref().map(|s| format!(" [{s}]")).unwrap_or_default();
        let timing = node.run_ms.map(|ms| format!("  {ms} ms")).unwrap_or_default();
        let error = node.error.as_ref().map(|e| format!("  {}: {}", e.class, e.message)).unwrap_or_default();
        out.push_str(&format!(
            "{}{mark} {} {}{step} {}{timing}{error}\n",
            "  ".repeat(depth + 1),
            node.id,
            node.plugin,
            node.state,
        ));
        for child in &node.children {
            walk(child, depth + 1, out);
        }
    }
    for node in &view.tree {
        walk(node, 0, &mut out);
    }
    out
}
