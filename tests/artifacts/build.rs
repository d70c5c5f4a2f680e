//! Builds every plugin for wasm32-wasip2 once and writes `plugins.rs`.
//!
//! Each plugin crate must declare its role in
//! `[package.metadata.taskhost] role = "..."`; a crate without a known role
//! fails the build, so no plugin is silently left untested.

#[path = "../../host/build/nested_cargo.rs"]
mod nested_cargo;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const ROLES: &[&str] = &["example", "hostile", "fixture", "bench", "runner"];
const PLUGIN_DIRS: &[&str] = &["plugins", "tests/plugins"];
const PROFILE: &str = "plugin";
const TARGET: &str = "wasm32-wasip2";

#[derive(serde::Deserialize)]
struct Manifest {
    package: Package,
}

#[derive(serde::Deserialize)]
struct Package {
    name: String,
    metadata: Option<Metadata>,
}

#[derive(serde::Deserialize)]
struct Metadata {
    taskhost: Option<TaskhostMeta>,
}

#[derive(serde::Deserialize)]
struct TaskhostMeta {
    role: Option<String>,
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().and_then(Path::parent).expect("workspace root").to_path_buf();
    for watched in ["plugins", "tests/plugins", "tests/kernels", "sdk", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let mut plugins = BTreeMap::new();
    for dir in PLUGIN_DIRS {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("Cargo.toml").is_file())
            .collect();
        entries.sort();
        for path in entries {
            let (name, role) = classify(&path);
            // Script runners are built and embedded by the host itself.
            if role == "runner" {
                continue;
            }
            if let Some(previous) = plugins.insert(name.clone(), role) {
                panic!("plugin name `{name}` is used twice (roles {previous} and another)");
            }
        }
    }

    let target_dir = root.join("target").join("plugins");
    let mut cmd = nested_cargo::command();
    cmd.current_dir(&root).args(["build", "--profile", PROFILE, "--target", TARGET, "--target-dir"]).arg(&target_dir);
    for name in plugins.keys() {
        cmd.args(["-p", name]);
    }
    let status = cmd.status().expect("running cargo to build the plugins");
    assert!(
        status.success(),
        "building the plugins for {TARGET} failed; is the target installed? run `rustup target add {TARGET}` (./dev.sh setup does)"
    );

    let mut out = String::new();
    let mut all = String::new();
    for (name, role) in &plugins {
        let file = target_dir.join(TARGET).join(PROFILE).join(format!("{}.wasm", name.replace('-', "_")));
        assert!(file.is_file(), "cargo built plugin `{name}` but {} is missing", file.display());
        let ident = name.replace('-', "_").to_uppercase();
        writeln!(
            out,
            "/// The `{name}` plugin ({role}).\npub const {ident}: Artifact = Artifact {{ name: {name:?}, role: {role:?}, path: {:?} }};",
            file.display().to_string()
        )
        .unwrap();
        write!(all, "{ident}, ").unwrap();
    }
    writeln!(out, "/// Every built plugin.\npub const ALL: &[Artifact] = &[{all}];").unwrap();
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("plugins.rs"), out).unwrap();
}

/// Reads a plugin crate's name and role, failing on a crate it cannot
/// classify.
fn classify(dir: &Path) -> (String, &'static str) {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let manifest: Manifest = toml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    let role = manifest.package.metadata.and_then(|m| m.taskhost).and_then(|t| t.role).unwrap_or_else(|| {
        panic!(
            "cannot classify plugin {}: add `[package.metadata.taskhost] role = \"...\"` with one of {ROLES:?}",
            path.display()
        )
    });
    let role = ROLES.iter().find(|r| **r == role).unwrap_or_else(|| {
        panic!("cannot classify plugin {}: unknown role `{role}`, expected one of {ROLES:?}", path.display())
    });
    (manifest.package.name, role)
}
