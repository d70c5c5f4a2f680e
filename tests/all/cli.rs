//! `taskhost run` through the real binary: input from stdin or a file,
//! output on stdout, logs on stderr, one `error: ` line and a non-zero exit
//! on failure.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use taskhost_test_artifacts::{Artifact, HELLO_TASK, READ_ENV, SPIN, UPPERCASE};

fn taskhost(args: &[&str], stdin: &[u8]) -> Output {
    taskhost_with_env(args, &[], stdin)
}

/// Runs the `taskhost` binary with extra environment variables, feeding
/// `stdin`; returns everything it printed.
pub(crate) fn taskhost_with_env(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    // The artifact cache of these runs is the tests' own, not the user's.
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(args)
        .env("TASKHOST_CACHE", cache.path())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn run_plugin(artifact: Artifact, extra: &[&str], stdin: &[u8]) -> Output {
    let mut args = vec!["run", artifact.path];
    args.extend_from_slice(extra);
    taskhost(&args, stdin)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The last stderr line, which must be the only `error: ` line.
fn error_line(out: &Output) -> String {
    let text = stderr(out);
    let errors: Vec<_> = text.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "expected one error line in:\n{text}");
    assert_eq!(text.lines().last(), Some(errors[0]), "the error line must come last:\n{text}");
    errors[0].to_owned()
}

#[test]
fn input_from_stdin_output_to_stdout() {
    let out = run_plugin(UPPERCASE, &[], b"from stdin");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"FROM STDIN");
}

#[test]
fn input_from_a_file() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"from a file").unwrap();
    let out = run_plugin(UPPERCASE, &["--input", file.path().to_str().unwrap()], b"ignored");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"FROM A FILE");
}

#[test]
fn logs_go_to_stderr() {
    let out = run_plugin(HELLO_TASK, &[], b"Lin");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello, Lin!"));
    assert!(stderr(&out).contains("[ info] greeting Lin"), "{}", stderr(&out));
}

#[test]
fn a_limit_failure_exits_non_zero_with_its_class() {
    let out = run_plugin(SPIN, &["--fuel", "1000000"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(error_line(&out), "error: fuel exhausted: the task used up its fuel budget");
    let out = run_plugin(SPIN, &["--fuel", "100000000000000", "--timeout", "300ms"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(error_line(&out).starts_with("error: timeout: "));
}

#[test]
fn a_plugin_error_exits_non_zero_with_its_message() {
    let out = run_plugin(HELLO_TASK, &[], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(error_line(&out), "error: plugin error (permanent): input is empty; expected a name");
}

#[test]
fn memory_and_timeout_accept_human_units() {
    let out = run_plugin(UPPERCASE, &["--memory", "64MiB", "--timeout", "2s"], b"ok");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_plugin(UPPERCASE, &["--memory", "64 KiB"], b"ok");
    assert!(error_line(&out).starts_with("error: memory limit exceeded: "), "{}", stderr(&out));
}

#[test]
fn bad_arguments_are_usage_errors() {
    let out = run_plugin(UPPERCASE, &["--memory", "lots"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid size `lots`"), "{}", stderr(&out));
    let out = run_plugin(UPPERCASE, &["--timeout", "0s"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("greater than zero"), "{}", stderr(&out));
    let out = run_plugin(UPPERCASE, &["--memory", "1TiB"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(error_line(&out).contains("exceeds this host's per-task maximum"), "{}", stderr(&out));
}

#[test]
fn missing_and_invalid_plugin_files() {
    let out = taskhost(&["run", "/nonexistent/plugin.wasm"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(error_line(&out).starts_with("error: cannot read plugin `/nonexistent/plugin.wasm`"));
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"\0asm\x01\0\0\0").unwrap();
    let out = taskhost(&["run", file.path().to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(line.starts_with("error: invalid plugin: ") && line.contains("core WebAssembly module"), "{line}");
}

#[test]
fn the_host_environment_does_not_leak_into_plugins() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskhost"));
    child.args(["run", READ_ENV.path]).env("TASKHOST_TEST_SECRET", "hunter2").stdin(Stdio::null());
    let out = child.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"[[],[]]");
}

/// A second run of the same component loads its compiled artifact from the
/// cache instead of compiling; an artifact someone else may write is not
/// trusted, and `--no-cache` neither reads nor writes the cache.
#[test]
fn a_second_run_loads_the_compiled_plugin_from_the_artifact_cache() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("artifacts");
    let args = ["run", UPPERCASE.path, "--stats", "--cache-dir", dir.to_str().unwrap()];
    let first = taskhost(&args, b"abc");
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stderr(&first).contains("stats: plugin compiled in"), "{}", stderr(&first));
    let second = taskhost(&args, b"abc");
    assert_eq!(second.stdout, b"ABC");
    assert!(stderr(&second).contains("stats: plugin loaded from the artifact cache in"), "{}", stderr(&second));
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);

    // Writable by others: ignored with a warning, and compiled again.
    let artifact = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"));
    let artifact = artifact.expect("an artifact in the cache");
    std::fs::set_permissions(&artifact, std::fs::Permissions::from_mode(0o666)).unwrap();
    let third = taskhost(&args, b"abc");
    assert_eq!(third.stdout, b"ABC");
    let text = stderr(&third);
    assert!(text.contains("warning: ignoring the cached artifact") && text.contains("plugin compiled in"), "{text}");

    let other = tempfile::tempdir().unwrap();
    let uncached = taskhost_with_env(
        &["run", UPPERCASE.path, "--stats", "--no-cache"],
        &[("TASKHOST_CACHE", other.path().to_str().unwrap())],
        b"abc",
    );
    assert!(stderr(&uncached).contains("plugin compiled in"), "{}", stderr(&uncached));
    assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 0, "--no-cache writes nothing");
}

/// An author tests a grant without a server: `--dir`, `--allow-net` and
/// `--manifest` give the task what a manifest on a server would.
#[test]
fn grants_are_given_on_the_command_line_or_by_a_manifest() {
    use taskhost_test_artifacts::READ_FILE;
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("note.txt"), "granted").unwrap();
    let dir = data.path().to_str().unwrap();

    // Nothing granted: nothing to read, and the guest is told so.
    let out = run_plugin(READ_FILE, &[], b"/data/note.txt");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("Permission denied"), "{}", stderr(&out));
    // A read-only directory: read, not written; a file missing from it is
    // missing, not refused.
    let ro = format!("{dir}:/data:ro");
    let out = run_plugin(READ_FILE, &["--dir", &ro], b"/data/note.txt");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "READ: granted", "{}", stderr(&out));
    let out = run_plugin(READ_FILE, &["--dir", &ro], b"/data/missing.txt");
    assert!(stderr(&out).contains("No such file"), "{}", stderr(&out));
    let out = run_plugin(READ_FILE, &["--dir", &ro], b"write /data/new.txt");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not permitted"), "{}", stderr(&out));
    assert!(!data.path().join("new.txt").exists());
    // Read-write, by default at the same path.
    let out = run_plugin(READ_FILE, &["--dir", dir], format!("write {dir}/new.txt").as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(data.path().join("new.txt")).unwrap(), "written by a plugin");

    // The same from a manifest, whose limits apply too.
    let manifest = data.path().join("grants.toml");
    std::fs::write(
        &manifest,
        format!("[limits]\nmax_output = \"5B\"\n\n[[dirs]]\nhost = \"{dir}\"\nguest = \"/data\"\nmode = \"ro\"\n"),
    )
    .unwrap();
    let out = run_plugin(READ_FILE, &["--manifest", manifest.to_str().unwrap()], b"/data/note.txt");
    assert!(stderr(&out).contains("output too large"), "the manifest's limit holds: {}", stderr(&out));
    let out =
        run_plugin(READ_FILE, &["--manifest", manifest.to_str().unwrap(), "--max-output", "1KiB"], b"/data/note.txt");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "READ: granted", "a flag overrides it: {}", stderr(&out));

    // Bad grants are refused before anything runs.
    for (args, says) in [
        (vec!["--dir", "/no/such/dir"], "/no/such/dir"),
        (vec!["--dir", &format!("{dir}:data")], "must be absolute"),
        (vec!["--allow-net", "no port"], "--allow-net `no port`"),
        (vec!["--manifest", "/no/such.toml"], "manifest `/no/such.toml`"),
    ] {
        let out = run_plugin(READ_FILE, &args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn taskhost_new_scaffolds_projects_that_build_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    // Scripts: a script, an input and the editor types; ready to run.
    for (lang, file, types) in [("js", "greet.js", "taskhost.d.ts"), ("python", "greet.py", "taskhost.pyi")] {
        let project = at(lang);
        let out = taskhost(&["new", "greet", "--lang", lang, "--dir", &project], b"");
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(std::path::Path::new(&project).join(types).is_file());
        let script = format!("{project}/{file}");
        let out = taskhost(&["run", &script, "--input", &format!("{project}/input.json")], b"");
        assert!(out.status.success(), "{lang}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"hello":"Ada","attempt":1}"#, "{lang}");
        assert!(stderr(&out).contains("greeting Ada"), "{lang}: {}", stderr(&out));
    }
    // Rust: a plain `cargo build` in the project makes the component,
    // against the SDK of this clone.
    let project = at("rust");
    let out = taskhost(&["new", "greet-rs", "--dir", &project], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cargo build --release"));
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.current_dir(&project).args(["build", "--release", "--quiet"]);
    // Nothing of this test's own build may leak into the project's (but
    // rustup's settings stay: the toolchain is the one this test runs on).
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let flags = ["RUSTFLAGS", "RUSTDOCFLAGS", "RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER"];
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || flags.contains(&&*key) {
            cargo.env_remove(&*key);
        }
    }
    let built = cargo.output().unwrap();
    assert!(built.status.success(), "cargo build: {}", String::from_utf8_lossy(&built.stderr));
    let wasm = format!("{project}/target/wasm32-wasip2/release/greet_rs.wasm");
    let out = taskhost(&["run", &wasm, "--input", &format!("{project}/input.txt")], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"hello":"Ada","attempt":1}"#);

    // Nothing is overwritten; a bad name or SDK path is refused.
    let out = taskhost(&["new", "greet", "--lang", "js", "--dir", &at("js")], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = taskhost(&["new", "Greet", "--dir", &at("other")], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid name `Greet`"), "{}", stderr(&out));
    let out = taskhost(&["new", "x", "--dir", &at("x"), "--sdk", dir.path().to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not the taskhost SDK crate"), "{}", stderr(&out));
    assert!(!std::path::Path::new(&at("other")).exists() && !std::path::Path::new(&at("x")).exists());
}
