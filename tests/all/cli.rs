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
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(args)
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
