//! Models on the command line: opening the registry for `serve` and `run`
//! (saying loudly at start what is unavailable and why), and the
//! `taskhost models` client commands.

use super::client::{Client, ServerArg, done};
use super::render::{self, JsonArg, Table, or_dash};
use clap::Subcommand;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use taskhost::inference::Models;
use taskhost::wire;

/// Opens the registry (loading ONNX Runtime and every model, which may
/// take a moment) and prints what came of it to stderr; `quiet` prints only
/// problems.
pub(crate) async fn open(file: PathBuf, quiet: bool) -> Result<Models, String> {
    let shown = file.clone();
    let models = tokio::task::spawn_blocking(move || Models::open(Some(file)))
        .await
        .map_err(|e| format!("loading models: {e}"))?
        .map_err(|e| format!("invalid models file: {e}"))?;
    let view = models.view();
    let rt = &view.runtime;
    match (&rt.error, &rt.library) {
        (Some(error), _) => {
            eprintln!("taskhost: WARNING: inference is unavailable: {error}");
            eprintln!("taskhost: tasks that do not call models run as usual");
        }
        (None, Some(lib)) if !quiet => eprintln!("taskhost: ONNX Runtime loaded from {}", lib.display()),
        _ => {}
    }
    let wants_gpu = view.models.iter().any(|m| m.spec.device != taskhost::inference::Device::Cpu);
    if let (Some(why), true) = (&rt.cuda_error, wants_gpu && rt.available) {
        eprintln!("taskhost: WARNING: the CUDA execution provider cannot be used: {why}");
    }
    for m in &view.models {
        match (&m.error, &m.running_on, &m.device_note) {
            (Some(error), _, _) => eprintln!("taskhost: WARNING: model `{}` failed to load: {error}", m.name),
            (None, Some(device), Some(note)) => {
                eprintln!("taskhost: WARNING: model `{}` runs on {device}, not a GPU: {note}", m.name)
            }
            (None, Some(device), None) if !quiet => eprintln!("taskhost: model `{}` ready on {device}", m.name),
            _ => {}
        }
    }
    if view.models.is_empty() && !quiet {
        eprintln!("taskhost: no models yet ({}; add with `taskhost models add`)", shown.display());
    }
    Ok(models)
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModelsCommand {
    /// List the models, the device each runs on and ONNX Runtime's state.
    List {
        #[command(flatten)]
        out: JsonArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Add or replace a model from a TOML file holding one model's settings
    /// (the fields of `[models.NAME]`; see README "Inference").
    Add {
        /// Model name, as plugins pass it to `inference.run`.
        name: String,
        /// The settings file (TOML).
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
        #[command(flatten)]
        out: JsonArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Remove a model.
    Remove {
        /// Model name.
        name: String,
        #[command(flatten)]
        out: JsonArg,
        #[command(flatten)]
        server: ServerArg,
    },
}

pub(crate) async fn models(command: ModelsCommand) -> ExitCode {
    done(
        async {
            match command {
                ModelsCommand::List { out, server } => {
                    let models: wire::ModelsView = Client::new(&server).get_json("/v1/models").await?;
                    out.print(&models, models_text);
                }
                ModelsCommand::Add { name, spec, out, server } => {
                    let text = std::fs::read_to_string(&spec).map_err(|e| {
                        super::client::Failure(super::EXIT_USAGE, format!("cannot read {}: {e}", spec.display()))
                    })?;
                    let mut body: Value = toml::from_str(&text).map_err(|e| {
                        super::client::Failure(super::EXIT_USAGE, format!("{} is not valid TOML: {e}", spec.display()))
                    })?;
                    body["name"] = Value::String(name);
                    let model: wire::ModelView = Client::new(&server).post_json("/v1/models", &body).await?;
                    out.print(&model, |m| {
                        let mut table = model_table();
                        model_row(&mut table, m);
                        table.render("")
                    });
                }
                ModelsCommand::Remove { name, out, server } => {
                    let removed: wire::ModelRemoved =
                        Client::new(&server).delete_json(&format!("/v1/models/{name}")).await?;
                    out.print(&removed, |r| format!("removed model `{}`\n", r.removed));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

fn model_table() -> Table {
    Table::new(&["MODEL", "STATE", "ON", "BATCH", "QUEUED", "NOTES"]).right(&[3, 4])
}

fn model_row(table: &mut Table, m: &wire::ModelView) {
    let notes: Vec<&str> =
        [&m.error, &m.reload_error, &m.device_note].into_iter().filter_map(|n| n.as_deref()).collect();
    table.row(vec![
        m.name.clone(),
        m.state.as_str().to_owned(),
        or_dash(m.running_on.as_ref()),
        m.spec.max_batch.to_string(),
        m.queued.to_string(),
        notes.join("; "),
    ]);
}

/// The models for people: ONNX Runtime's state, then a row per model.
fn models_text(view: &wire::ModelsView) -> String {
    let runtime = match (&view.runtime.error, &view.runtime.library) {
        (Some(error), _) => format!("ONNX Runtime: unavailable: {}\n", render::printable(error)),
        (None, Some(library)) => {
            format!("ONNX Runtime: {}{}\n", library.display(), if view.runtime.cuda { ", CUDA available" } else { "" })
        }
        (None, None) => "ONNX Runtime: not loaded yet\n".to_owned(),
    };
    let file = match (&view.file, &view.file_error) {
        (Some(file), Some(error)) => {
            format!("models file: {} (its last change was refused: {})\n", file.display(), render::printable(error))
        }
        (Some(file), None) => format!("models file: {}\n", file.display()),
        (None, _) => String::new(),
    };
    let mut table = model_table();
    for m in &view.models {
        model_row(&mut table, m);
    }
    format!("{runtime}{file}{}", table.render("no models"))
}
