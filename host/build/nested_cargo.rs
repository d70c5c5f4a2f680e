//! The nested cargo a build script runs to build components for
//! wasm32-wasip2: shared by `host/build.rs` (the script runners) and
//! `tests/artifacts/build.rs` (the test plugins), through `#[path]`.

use std::process::Command;

/// `cargo`, the one running this build script, in a clean environment:
/// what cargo set for this build (flags, profile, target) must not leak
/// into the nested build.
pub(crate) fn command() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let inherited = key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS";
        if inherited || ["RUSTFLAGS", "RUSTC_WORKSPACE_WRAPPER", "RUSTC_WRAPPER"].contains(&&*key) {
            cmd.env_remove(&*key);
        }
    }
    cmd
}
