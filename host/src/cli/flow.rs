//! `taskhost flow`: show a flow as a tree with states and timings, declare
//! one from a JSON spec, or cancel one.

use super::client::{Client, Failure, ServerArg, done, print_json};
use super::{EXIT_TASK_FAILED, EXIT_USAGE};
use clap::Args;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Follow the flow until it ends, redrawing the tree.
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
    let mut view = match (&args.submit, &args.id) {
        (Some(path), _) => {
            let text = super::client::read_input(Some(path)).map_err(|e| Failure(EXIT_USAGE, e))?;
            let spec: Value = serde_json::from_slice(&text)
                .map_err(|e| Failure(EXIT_USAGE, format!("{} is not JSON: {e}", path.display())))?;
            client.post("/v1/flows", &spec).await?
        }
        (None, Some(id)) if args.cancel => client.post(&format!("/v1/flows/{id}/cancel"), &json!({})).await?,
        (None, Some(id)) => client.get(&format!("/v1/flows/{id}")).await?,
        (None, None) => return Err(Failure(EXIT_USAGE, "give a flow id, or --submit FILE".into())),
    };
    if args.wait {
        let id = view["id"].as_str().unwrap_or_default().to_owned();
        while view["state"] == "running" {
            tokio::time::sleep(Duration::from_millis(250)).await;
            view = client.get(&format!("/v1/flows/{id}")).await?;
        }
    }
    if args.json {
        print_json(&view);
    } else {
        print!("{}", render(&view));
    }
    Ok(match view["state"].as_str() {
        Some("failed" | "cancelled") if args.wait => ExitCode::from(EXIT_TASK_FAILED),
        _ => ExitCode::SUCCESS,
    })
}

/// The flow as text: a header, then one line per task, children indented
/// under the task that submitted them.
pub(crate) fn render(view: &Value) -> String {
    let mut out = format!(
        "flow {} {}{}  {} tasks{}{}\n",
        view["id"].as_str().unwrap_or("?"),
        view["state"].as_str().unwrap_or("?"),
        view["name"].as_str().map(|n| format!(" ({n})")).unwrap_or_default(),
        view["tasks"]["total"],
        view["duration_ms"].as_u64().map(|ms| format!("  {ms} ms")).unwrap_or_default(),
        view["iteration"].as_u64().filter(|&i| i > 0).map(|i| format!("  iteration {i}")).unwrap_or_default(),
    );
    if let Some(error) = view["error"].as_str() {
        out.push_str(&format!("  error: {error}\n"));
    }
    fn walk(node: &Value, depth: usize, out: &mut String) {
        let mark = match node["state"].as_str() {
            Some("completed") => "✔",
            Some("failed") => "✘",
            Some("cancelled") => "⊘",
            Some("running") => "▶",
            _ => "…",
        };
        let step = node["step"].as_str().map(|s| format!(" [{s}]")).unwrap_or_default();
        let timing = node["run_ms"].as_u64().map(|ms| format!("  {ms} ms")).unwrap_or_default();
        let error = &node["error"];
        let error = error["class"]
            .as_str()
            .map(|class| format!("  {class}: {}", error["message"].as_str().unwrap_or_default()))
            .unwrap_or_default();
        out.push_str(&format!(
            "{}{mark} {} {}{step} {}{timing}{error}\n",
            "  ".repeat(depth + 1),
            node["id"].as_str().unwrap_or("?"),
            node["plugin"].as_str().unwrap_or("?"),
            node["state"].as_str().unwrap_or("?"),
        ));
        for child in node["children"].as_array().into_iter().flatten() {
            walk(child, depth + 1, out);
        }
    }
    for node in view["tree"].as_array().into_iter().flatten() {
        walk(node, 0, &mut out);
    }
    out
}
