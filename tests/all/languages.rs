//! Full components from other languages, built with their own toolchains
//! exactly as docs/other-languages.md shows (componentize-py from PyPI,
//! componentize-js from npm; `./dev.sh setup` installs both), then run by
//! `taskhost run`: the output, a line logged through the host's `log`
//! interface, and a permanent task error.

use crate::cli::taskhost_with_env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn recipe(language: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/components").join(language)
}

fn wit() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit")
}

/// Runs the built component on two inputs: one it upper-cases (logging
/// as it does) and an empty one it refuses.
fn runs_as_documented(component: &Path, also_in_stderr: &str) {
    let component = component.to_str().unwrap();
    let out = taskhost_with_env(&["run", component], &[], b"hi there");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HI THERE");
    assert!(stderr.contains("[ info] upper-casing 8 bytes") && stderr.contains(also_in_stderr), "{stderr}");
    let out = taskhost_with_env(&["run", component], &[], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: plugin error (permanent): empty input"), "{stderr}");
}

fn built(mut command: Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {what}: {e} (run ./dev.sh setup)"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_componentize_py_component_runs_on_taskhost() {
    let python = crate::venv_python();
    let componentize_py = python.with_file_name("componentize-py");
    // Built from a copy, so nothing (`__pycache__`) is written into the
    // source tree.
    let out = tempfile::tempdir().unwrap();
    std::fs::copy(recipe("python").join("app.py"), out.path().join("app.py")).unwrap();
    let component = out.path().join("app.wasm");
    let mut command = Command::new(&componentize_py);
    command.arg("-d").arg(wit()).args(["-w", "task", "componentize", "app", "-o"]).arg(&component);
    command.current_dir(out.path());
    built(command, "componentize-py");
    runs_as_documented(&component, "");
}

#[test]
fn a_componentize_js_component_runs_on_taskhost() {
    let dir = recipe("javascript");
    assert!(dir.join("node_modules").is_dir(), "no {}/node_modules: run ./dev.sh setup", dir.display());
    let out = tempfile::tempdir().unwrap();
    let component = out.path().join("app.wasm");
    let mut command = Command::new("node");
    command.arg("build.mjs").arg(wit()).arg(&component).current_dir(&dir);
    built(command, "componentize-js (node build.mjs)");
    runs_as_documented(&component, "[stderr] written to stderr");
}
