//! taskhost developer tasks: `cargo xtask <command>` (an alias in
//! `.cargo/config.toml`). dev.sh calls these instead of inline scripts.

mod demo;
mod licenses;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

  licenses                  check every dependency's licence against the allow-list,
                            and that no banned crate is in the tree (offline once fetched)
  demo-input NAME           print one of the demo's input files to stdout; NAME is one of
                            word-count, workload, map-reduce, pipeline, flow-spec, semantic-search
  plugin-live VERSION       read `taskhost plugins show` JSON on stdin; succeed if VERSION is live
  model-summary             read `taskhost models add` JSON on stdin; print a one-line summary
  search-answers            read `taskhost flow ID --json` of a semantic-search flow on stdin;
                            print its state and the nearest paragraph for each query
  metrics URL [--prefix P] [--contains S]...
                            GET URL/metrics (plain HTTP) and print the lines that start with P
                            and contain any S";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["licenses"] => licenses::check(&workspace_root()),
        ["demo-input", name] => demo::input(&workspace_root(), name),
        ["plugin-live", version] => return demo::plugin_live(version),
        ["model-summary"] => demo::model_summary(),
        ["search-answers"] => demo::search_answers(),
        ["metrics", url, filters @ ..] => demo::metrics(url, filters),
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the folder above this crate.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}
