//! Builds the script runners this host embeds, each from source in this
//! workspace into `target/runners`, and includes them in the binary:
//! - JavaScript (`plugins/js-runner`): a Rust crate with QuickJS inside,
//!   built for wasm32-wasip2 by a nested cargo. QuickJS is C: it is
//!   compiled with Debian's `clang-19` against the headers of Debian's
//!   `wasi-libc` (`./dev.sh setup` installs both). The host pre-initialises
//!   it at its first use and caches the result like any compiled plugin.
//! - Python (`plugins/py-runner`): CPython by `componentize-py` (PyPI;
//!   `./dev.sh setup` installs it into `target/venv`), which runs the
//!   runner's module level and snapshots it as it builds. Without
//!   componentize-py the host is built without Python (a warning says so;
//!   `TASKHOST_REQUIRE_PYTHON_RUNNER=1` makes that an error, as `./dev.sh`
//!   does).

#[path = "build/nested_cargo.rs"]
mod nested_cargo;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";
/// (crate, the constant's name in `runners.rs`).
const RUNNERS: &[(&str, &str)] = &[("js-runner", "JAVASCRIPT")];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    // `host/migrations`: the PostgreSQL schema `sqlx::migrate!` embeds (a
    // new file there is not seen by the macro alone).
    for watched in ["plugins/js-runner", "wit", "Cargo.lock", "host/migrations"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    for var in ["CC_wasm32_wasip2", "AR_wasm32_wasip2", "CFLAGS_wasm32_wasip2", "RQUICKJS_SYS_NO_WASI_SDK"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let target_dir = root.join("target").join("runners");
    let mut cmd = nested_cargo::command();
    cmd.current_dir(&root).args(["build", "--quiet", "--profile", PROFILE, "--target", TARGET, "--target-dir"]);
    cmd.arg(&target_dir);
    for (name, _) in RUNNERS {
        cmd.args(["-p", name]);
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
    out.push_str(&python_runner(&root, &target_dir));
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("runners.rs"), out).unwrap();
}

/// Builds the Python runner with componentize-py (unless what it was built
/// from is unchanged) and says where it is: `PYTHON`, `None` when there is
/// no componentize-py.
fn python_runner(root: &Path, target_dir: &Path) -> String {
    let venv = root.join("target/venv/bin/componentize-py");
    println!("cargo:rerun-if-changed={}", root.join("plugins/py-runner").display());
    // A path that does not exist would rerun this script on every build.
    if let Some(watched) = [venv.as_path(), &root.join("target/venv")].into_iter().find(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    println!("cargo:rerun-if-env-changed=COMPONENTIZE_PY");
    println!("cargo:rerun-if-env-changed=TASKHOST_REQUIRE_PYTHON_RUNNER");
    let tool = std::env::var_os("COMPONENTIZE_PY")
        .map(PathBuf::from)
        .or_else(|| venv.is_file().then(|| venv.clone()))
        .or_else(|| on_path("componentize-py").then(|| PathBuf::from("componentize-py")));
    let Some(tool) = tool else {
        let message = "componentize-py was not found (not in $COMPONENTIZE_PY, target/venv or PATH): this taskhost \
                       is built without its Python runner; `./dev.sh setup` installs it";
        if std::env::var_os("TASKHOST_REQUIRE_PYTHON_RUNNER").is_some_and(|v| v != "0") {
            panic!("{message}");
        }
        println!("cargo:warning={message}");
        return "/// No Python runner: componentize-py was missing when this binary was built.\n\
                pub(crate) const PYTHON: Option<&[u8]> = None;\n"
            .into();
    };
    let version = Command::new(&tool).arg("--version").output();
    let version = match version {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => panic!("`{} --version` failed: {}", tool.display(), String::from_utf8_lossy(&out.stderr)),
        Err(e) => panic!("running {}: {e}", tool.display()),
    };
    // The runner is written against 0.25's bindings.
    assert!(
        version.starts_with("componentize-py 0.25."),
        "{} is {version}; the Python runner needs componentize-py 0.25 (`./dev.sh setup` installs it into target/venv)",
        tool.display()
    );
    // What the component is made from: the tool, this recipe, the runner
    // and the WIT.
    let mut hasher = std::hash::DefaultHasher::new();
    version.hash(&mut hasher);
    include_str!("build.rs").hash(&mut hasher);
    for dir in ["plugins/py-runner", "wit"] {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        files.sort();
        for file in files {
            file.file_name().hash(&mut hasher);
            std::fs::read(&file).unwrap().hash(&mut hasher);
        }
    }
    let key = format!("{:016x}", hasher.finish());
    let (file, stamp) = (target_dir.join("py-runner.wasm"), target_dir.join("py-runner.key"));
    if !(file.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|k| k == key)) {
        std::fs::create_dir_all(target_dir).unwrap();
        let part = target_dir.join(format!("py-runner.wasm.{}.part", std::process::id()));
        let out = Command::new(&tool)
            .current_dir(root.join("plugins/py-runner"))
            .env_remove("VIRTUAL_ENV")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .args(["--quiet", "-d"])
            .arg(root.join("wit"))
            .args(["-w", "script-task", "componentize", "app", "-p", ".", "-o"])
            .arg(&part)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
        assert!(
            out.status.success(),
            "building the Python runner with {version} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&part, &file).unwrap();
        std::fs::write(&stamp, &key).unwrap();
    }
    format!(
        "/// The Python runner (componentize-py, {version}), as built.\n\
         pub(crate) const PYTHON: Option<&[u8]> = Some(include_bytes!({:?}));\n",
        file.display().to_string()
    )
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
