//! Models on the command line: opening the registry for `serve` and `run`
//! (saying loudly at start what is unavailable and why), and the
//! `taskhost models` client commands.

use super::client::{Client, ServerArg, done, print_json};
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
        server: ServerArg,
    },
    /// Remove a model.
    Remove {
        /// Model name.
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

pub(crate) async fn models(command: ModelsCommand) -> ExitCode {
    done(
        async {
            match command {
                ModelsCommand::List { server } => {
                    let models: wire::ModelsView = Client::new(&server).get_json("/v1/models").await?;
                    print_json(&models);
                }
                ModelsCommand::Add { name, spec, server } => {
                    let text = std::fs::read_to_string(&spec).map_err(|e| {
                        super::client::Failure(super::EXIT_USAGE, format!("cannot read {}: {e}", spec.display()))
                    })?;
                    let mut body: Value = toml::from_str(&text).map_err(|e| {
                        super::client::Failure(super::EXIT_USAGE, format!("{} is not valid TOML: {e}", spec.display()))
                    })?;
                    body["name"] = Value::String(name);
                    let model: wire::ModelView = Client::new(&server).post_json("/v1/models", &body).await?;
                    print_json(&model);
                }
                ModelsCommand::Remove { name, server } => {
                    let _: wire::ModelRemoved = Client::new(&server).delete_json(&format!("/v1/models/{name}")).await?;
                    eprintln!("removed model `{name}`");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}
