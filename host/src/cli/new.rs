//! `taskhost new NAME [--lang rust|js|python]`: scaffolds a ready plugin
//! project. For Rust, a component crate (`crate-type = ["cdylib"]`, the
//! wasm32-wasip2 target set in `.cargo/config.toml`, so a plain `cargo
//! build` makes the component) depending on the SDK of a taskhost clone;
//! for JavaScript and Python, a script, a test input and the editor types.
//! Nothing is overwritten.

use super::{EXIT_USAGE, fail};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// The plugin's name: lowercase letters, digits, `-` and `_`, starting
    /// with a letter. It names the directory, the crate or script, and the
    /// plugin.
    name: String,
    /// The project's language: `rust` (a component crate), `js` or
    /// `python` (a script).
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// Where to create the project. Default: ./NAME.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// For Rust: the taskhost SDK crate to depend on (the `sdk/` folder of
    /// a taskhost clone). Default: the clone this binary was built from.
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Lang {
    Rust,
    #[value(alias = "javascript")]
    Js,
    #[value(alias = "py")]
    Python,
}

/// The longest plugin name `new` accepts.
const MAX_NAME: usize = 64;

pub(crate) fn new(args: NewArgs) -> ExitCode {
    match scaffold(&args) {
        Ok((dir, next)) => {
            let what = match args.lang {
                Lang::Rust => "a Rust component crate",
                Lang::Js => "a JavaScript script",
                Lang::Python => "a Python script",
            };
            println!("created {}: {what}", dir.display());
            println!("next:\n{next}");
            ExitCode::SUCCESS
        }
        Err(message) => fail(EXIT_USAGE, &message),
    }
}

/// Writes the project; its directory and what to run next.
fn scaffold(args: &NewArgs) -> Result<(PathBuf, String), String> {
    check_name(&args.name)?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        return Err(format!("{} already exists; choose another name or --dir", dir.display()));
    }
    let name = &args.name;
    let (files, next) = match args.lang {
        Lang::Rust => {
            let sdk = sdk_path(args.sdk.as_deref())?;
            let wasm = name.replace('-', "_");
            let next = format!(
                "  cd {dir}\n  cargo build --release\n  taskhost run target/wasm32-wasip2/release/{wasm}.wasm --input \
                 input.txt",
                dir = dir.display()
            );
            (rust_files(name, &sdk, &next), next)
        }
        Lang::Js | Lang::Python => {
            let ext = if args.lang == Lang::Js { "js" } else { "py" };
            let next = format!("  cd {}\n  taskhost run {name}.{ext} --input input.json", dir.display());
            (script_files(name, args.lang, &next), next)
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok((dir, next))
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !first_ok || !rest_ok || name.len() > MAX_NAME {
        return Err(format!(
            "invalid name `{name}`: use lowercase letters, digits, `-` and `_`, starting with a letter, at most \
             {MAX_NAME} characters"
        ));
    }
    Ok(())
}

/// The SDK crate to depend on, absolute.
fn sdk_path(given: Option<&Path>) -> Result<PathBuf, String> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    let path = given.unwrap_or(&built_from);
    let manifest = path.join("Cargo.toml");
    let is_sdk = std::fs::read_to_string(&manifest).is_ok_and(|t| t.contains("name = \"taskhost-sdk\""));
    if !is_sdk {
        return Err(match given {
            Some(_) => format!("{} is not the taskhost SDK crate (no taskhost-sdk Cargo.toml there)", path.display()),
            None => format!(
                "the SDK this binary was built from ({}) is gone; pass --sdk PATH to the `sdk/` folder of a taskhost \
                 clone",
                path.display()
            ),
        });
    }
    std::fs::canonicalize(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))
}

fn rust_files(name: &str, sdk: &Path, next: &str) -> Vec<(String, String)> {
    let sdk = sdk.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
# A component is a cdylib, built for wasm32-wasip2 (.cargo/config.toml).
crate-type = ["cdylib"]

[dependencies]
taskhost-sdk = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}

# A project of its own, not a member of an enclosing workspace.
[workspace]
"#
    );
    let lib = format!(
        r#"//! {name}: a taskhost task plugin. The host calls the `#[plugin]`
//! function once per task, in a fresh sandbox; its input is the task's
//! input, its return value the task's output.

use serde::{{Deserialize, Serialize}};
use taskhost_sdk::{{Error, Json, Result}};

#[derive(Deserialize)]
struct Request {{
    name: String,
}}

#[derive(Serialize)]
struct Greeting {{
    hello: String,
    attempt: u32,
}}

#[taskhost_sdk::plugin]
fn handle(Json(request): Json<Request>) -> Result<Json<Greeting>> {{
    let name = request.name.trim();
    if name.is_empty() {{
        // Permanent: running the task again would fail the same way.
        return Err(Error::permanent("`name` is empty"));
    }}
    taskhost_sdk::info!("greeting {{name}}");
    Ok(Json(Greeting {{ hello: name.to_owned(), attempt: taskhost_sdk::task_info().attempt }}))
}}
"#
    );
    [
        ("Cargo.toml", cargo),
        (".cargo/config.toml", "[build]\ntarget = \"wasm32-wasip2\"\n".to_owned()),
        ("src/lib.rs", lib),
        ("input.txt", "{\"name\": \"Ada\"}\n".to_owned()),
        (".gitignore", "/target\n".to_owned()),
        ("README.md", readme(name, "A taskhost task plugin in Rust.", next)),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_owned(), text))
    .collect()
}

fn script_files(name: &str, lang: Lang, next: &str) -> Vec<(String, String)> {
    let (script, types) = if lang == Lang::Js {
        let script = format!(
            r#"// {name}: a taskhost script. Its default export runs once per task:
// `input` is the task's input bytes (with .text() and .json()), and what
// it returns is the output (objects as JSON). taskhost.d.ts gives editors
// the `host` object's types.
/// <reference path="taskhost.d.ts" />

export default function (input) {{
  const {{ name }} = input.json();
  if (!name) throw new host.PermanentError('the input needs a "name"');
  console.log("greeting", name);
  return {{ hello: name, attempt: host.task().attempt }};
}}
"#
        );
        (
            (format!("{name}.js"), script),
            ("taskhost.d.ts".to_owned(), include_str!("../../../sdk/scripts/taskhost.d.ts")),
        )
    } else {
        let script = format!(
            r#""""{name}: a taskhost script. `run` runs once per task: `input` is the
task's input bytes (with .text() and .json()), and what it returns is the
output (dicts and lists as JSON). `host` is a global; taskhost.pyi gives
editors its types.
"""


def run(input):
    name = input.json().get("name")
    if not name:
        raise host.PermanentError('the input needs a "name"')
    print("greeting", name)
    return {{"hello": name, "attempt": host.task().attempt}}
"#
        );
        ((format!("{name}.py"), script), ("taskhost.pyi".to_owned(), include_str!("../../../sdk/scripts/taskhost.pyi")))
    };
    let what = if lang == Lang::Js { "A taskhost script in JavaScript." } else { "A taskhost script in Python." };
    vec![
        script,
        (types.0, types.1.to_owned()),
        ("input.json".to_owned(), "{\"name\": \"Ada\"}\n".to_owned()),
        ("README.md".to_owned(), readme(name, what, next)),
    ]
}

fn readme(name: &str, what: &str, next: &str) -> String {
    format!(
        "# {name}\n\n{what}\n\nRun it once, as a task:\n\n```sh\n{}\n```\n\nThen register it with a server: \
         `taskhost plugins add FILE --name {name}`.\n",
        next.lines().map(str::trim).collect::<Vec<_>>().join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "hello-task", "x_1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1a", "Hello", "a b", "../x", "a/b", &"a".repeat(MAX_NAME + 1)] {
            let err = check_name(bad).unwrap_err();
            assert!(err.contains("invalid name"), "{bad}: {err}");
        }
    }
}
