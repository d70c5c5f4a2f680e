//! Builds the script runners this host embeds: each is a component built
//! from source in this workspace (`plugins/js-runner`) for wasm32-wasip2,
//! by a nested cargo into `target/runners`, and included in the binary.
//! The host pre-initialises a runner at its first use and caches the
//! result like any compiled plugin.
//!
//! QuickJS is C: it is compiled with Debian's `clang-19` against the
//! headers of Debian's `wasi-libc` (`./dev.sh setup` installs both).

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";
/// (crate, the constant's name in `runners.rs`).
const RUNNERS: &[(&str, &str)] = &[("js-runner", "JAVASCRIPT")];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    for watched in ["plugins/js-runner", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    for var in ["CC_wasm32_wasip2", "AR_wasm32_wasip2", "CFLAGS_wasm32_wasip2", "RQUICKJS_SYS_NO_WASI_SDK"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let target_dir = root.join("target").join("runners");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root).args(["build", "--quiet", "--profile", PROFILE, "--target", TARGET, "--target-dir"]);
    cmd.arg(&target_dir);
    for (name, _) in RUNNERS {
        cmd.args(["-p", name]);
    }
    // A clean environment: what cargo set for this build script (flags,
    // profile, target) must not leak into the runners' build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let inherited = key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS";
        if inherited || ["RUSTFLAGS", "RUSTC_WORKSPACE_WRAPPER", "RUSTC_WRAPPER"].contains(&&*key) {
            cmd.env_remove(&*key);
        }
    }
    let c_compiler = std::env::var("CC_wasm32_wasip2").unwrap_or_else(|_| "clang-19".into());
    let headers = Path::new("/usr/include/wasm32-wasi");
    if std::env::var_os("CC_wasm32_wasip2").is_none() {
        if !on_path(&c_compiler) || !headers.is_dir() {
            panic!(
                "building the JavaScript runner needs a C compiler for {TARGET}: Debian's clang-19, llvm-19 and \
                 wasi-libc (run `./dev.sh setup`, or set CC_wasm32_wasip2, AR_wasm32_wasip2 and CFLAGS_wasm32_wasip2)"
            );
        }
        cmd.env("CC_wasm32_wasip2", &c_compiler)
            .env("AR_wasm32_wasip2", "llvm-ar-19")
            .env("CFLAGS_wasm32_wasip2", format!("-isystem {}", headers.display()))
            .env("RQUICKJS_SYS_NO_WASI_SDK", "1");
    }
    let status = cmd.status().expect("running cargo to build the script runners");
    assert!(
        status.success(),
        "building the script runners for {TARGET} failed; is the target installed? run `./dev.sh setup` \
         (it adds the Rust target and Debian's clang-19, llvm-19 and wasi-libc)"
    );
    let mut out = String::new();
    for (name, ident) in RUNNERS {
        let file = target_dir.join(TARGET).join(PROFILE).join(format!("{}.wasm", name.replace('-', "_")));
        assert!(file.is_file(), "cargo built runner `{name}` but {} is missing", file.display());
        out.push_str(&format!(
            "/// The `{name}` component, as built.\npub(crate) const {ident}: &[u8] = include_bytes!({:?});\n",
            file.display().to_string()
        ));
    }
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("runners.rs"), out).unwrap();
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
