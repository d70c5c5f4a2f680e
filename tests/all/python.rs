//! Python scripts in the Python runner: the real runner component built
//! from source by componentize-py, running scripts under the same limits
//! as any plugin; every WIT function bound; errors that point at the
//! script; the standard library the docs list; `taskhost run x.py`; a
//! Python script plugin run as tasks by the engine.

use crate::failure;
use crate::scripts::run_script;
use taskhost::scripts::Language;
use taskhost::{FailureClass, Limits, TaskReport};

async fn py(source: &str, input: &[u8]) -> TaskReport {
    run_script("test.py", source, input, None).await
}

#[tokio::test]
async fn a_python_script_runs_on_its_input_and_returns_its_output() {
    let source = r#"
def run(input):
    name = input.json()["name"]
    print("greeting", name, 1)
    host.log("warn", "careful", {"n": 1})
    return {"hello": name, "task": host.task().plugin, "bytes": len(input)}
"#;
    let report = py(source, br#"{"name":"Ada"}"#).await;
    let output: serde_json::Value = serde_json::from_str(&crate::output(&report)).unwrap();
    assert_eq!(output, serde_json::json!({"hello": "Ada", "task": "python-runner", "bytes": 14}));
    let logs: Vec<_> = report.logs.iter().map(|r| (r.level.to_string(), r.message.as_str())).collect();
    assert_eq!(logs, [("info".to_owned(), "greeting Ada 1"), ("warn".to_owned(), r#"careful {"n":1}"#)]);

    // What a script returns becomes bytes: bytes as they are, strings as
    // UTF-8, None as nothing; a coroutine that needs no event loop is run.
    let cases: [(&str, &[u8]); 5] = [
        ("def run(input):\n    return input.text().upper()", b"ABC"),
        ("def run(input):\n    return bytes([0, 255, 7])", &[0, 255, 7]),
        ("def run(input):\n    pass", b""),
        ("def run(input):\n    return [1, 'é', None]", "[1,\"é\",null]".as_bytes()),
        (
            "async def part(x):\n    return 'later ' + x\nasync def run(input):\n    return await part(input.text())",
            b"later abc",
        ),
    ];
    for (source, expected) in cases {
        let report = py(source, b"abc").await;
        assert_eq!(report.result.as_deref().map_err(ToString::to_string), Ok(expected), "{source}");
    }
}

#[tokio::test]
async fn every_wit_function_has_a_binding_in_the_python_runner_and_its_stub() {
    // The Python name of each WIT import: `host.<interface>.<snake_case>`.
    let expected = crate::scripts::service_functions(|function| function.replace('-', "_"));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let paths: Vec<&String> = expected.iter().map(|(path, _)| path).collect();
    // In the runner: each is callable.
    let probe = r#"
import functools
def run(input):
    def find(path):
        try:
            return functools.reduce(getattr, path.split(".")[1:], host)
        except AttributeError:
            return None
    return [p for p in input.json() if not callable(find(p))]
"#;
    let report = py(probe, serde_json::to_string(&paths).unwrap().as_bytes()).await;
    assert_eq!(crate::output(&report), "[]", "functions the runner lacks");
    // In the stub editors read: each is declared with its WIT name beside it.
    let stub = std::fs::read_to_string(root.join("sdk/scripts/taskhost.pyi")).unwrap();
    for (path, wit) in &expected {
        let member = path.rsplit('.').next().unwrap();
        assert!(stub.contains(&format!("def {member}(")), "taskhost.pyi does not declare {path}");
        assert!(stub.contains(&format!("WIT `{wit}`")), "taskhost.pyi does not name {wit}");
    }
}

#[tokio::test]
async fn python_errors_point_at_the_script_and_say_whether_to_retry() {
    // A syntax error: permanent, with the script's name, line and column.
    let f = failure(&run_script("broken.py", "def run(input):\n    x = (\n", b"", None).await).clone();
    assert_eq!((f.class, f.retryable), (FailureClass::PluginError, false), "{f}");
    assert!(f.message.starts_with("SyntaxError: "), "{f}");
    assert!(f.message.contains("(broken.py:2:"), "{f}");

    // An exception: retryable, with the script's frames and none of the
    // runner's own.
    let source = "def inner():\n    raise ValueError('boom')\n\ndef run(input):\n    inner()\n";
    let f = failure(&run_script("thrower.py", source, b"", None).await).clone();
    assert_eq!((f.class, f.retryable), (FailureClass::PluginError, true), "{f}");
    assert!(f.message.starts_with("ValueError: boom"), "{f}");
    assert!(f.message.contains("File \"thrower.py\", line 2, in inner"), "{f}");
    assert!(f.message.contains("File \"thrower.py\", line 5, in run"), "{f}");
    assert!(!f.message.contains("app.py") && !f.message.contains("taskhost.py"), "{f}");

    // Saying so makes it permanent.
    for source in [
        "def run(input):\n    raise host.PermanentError('bad input')",
        "def run(input):\n    e = KeyError('bad input')\n    e.permanent = True\n    raise e",
    ] {
        let f = failure(&py(source, b"").await).clone();
        assert!(!f.retryable && f.message.contains("bad input"), "{f}");
    }
    // Failures that would recur are permanent: no entry point, a module the
    // runner lacks (saying where the list is), sys.exit.
    let f = failure(&run_script("lib.py", "x = 1", b"", None).await).clone();
    assert!(!f.retryable && f.message.contains("lib.py defines no function `run(input)`"), "{f}");
    let f = failure(&py("from json import nothing\ndef run(input):\n    pass", b"").await).clone();
    assert!(!f.retryable && f.message.contains("cannot import name 'nothing'"), "{f}");
    let f = failure(&py("import socket\ndef run(input):\n    pass", b"").await).clone();
    assert!(!f.retryable && f.message.contains("No module named 'socket'"), "{f}");
    assert!(f.message.contains("docs/scripts.md"), "{f}");
    let f = failure(&py("import sys\ndef run(input):\n    sys.exit(3)", b"").await).clone();
    assert!(!f.retryable && f.message.contains("sys.exit(3)"), "{f}");
    // An output that is not bytes, text or JSON.
    let f = failure(&py("def run(input):\n    return object()", b"").await).clone();
    assert!(!f.retryable && f.message.contains("not JSON serializable"), "{f}");

    // A refused host call is a HostError carrying the WIT case.
    let source = "def run(input):\n    try:\n        host.queue.get('x')\n    except host.HostError as e:\n        \
                  return f'{type(e).__name__} {e.kind}'";
    assert_eq!(crate::output(&py(source, b"").await), "HostError invalid", "no engine under a bare sandbox");
    // Text that is not Unicode (a lone surrogate) never reaches the host as
    // a string: logged escaped, refused as a key, a permanent output error.
    let source = "def run(input):\n    print('\\ud800')\n    raise ValueError('\\ud83d')";
    let report = py(source, b"").await;
    assert_eq!(report.logs[0].message, "\\ud800");
    let f = failure(&report);
    assert_eq!((f.class, f.retryable), (FailureClass::PluginError, true), "{f}");
    assert!(f.message.starts_with("ValueError: \\ud83d"), "{f}");
    let f = failure(&py("def run(input):\n    host.context.get('\\ud800')", b"").await).clone();
    assert!(f.message.contains("context.get: the key is not valid Unicode"), "{f}");
    let f = failure(&py("def run(input):\n    return '\\ud800'", b"").await).clone();
    assert!(!f.retryable && f.message.contains("not valid Unicode"), "{f}");
    // NaN is not JSON: refused, not written.
    let f = failure(&py("def run(input):\n    return {'x': float('nan')}", b"").await).clone();
    assert!(!f.retryable && f.message.contains("not JSON compliant"), "{f}");
    // An `Err` the script raises, or an error whose report fails, is the
    // script's failure, never a crash of the runner.
    let source = "from componentize_py_types import Err\ndef run(input):\n    raise Err('mine')";
    let f = failure(&py(source, b"").await).clone();
    assert_eq!(f.class, FailureClass::PluginError, "{f}");
    let source = "class Bad(Exception):\n    @property\n    def permanent(self):\n        raise KeyboardInterrupt\n\n\
                  def run(input):\n    raise Bad()";
    let f = failure(&py(source, b"").await).clone();
    assert_eq!(f.class, FailureClass::PluginError, "{f}");
    assert!(f.message.contains("could not be reported"), "{f}");
    // The script is `__main__`, so annotations resolve.
    let source = "import dataclasses, typing\n@dataclasses.dataclass\nclass Node:\n    next: 'Node | None'\n\n\
                  def run(input):\n    return str(typing.get_type_hints(Node)['next'])";
    assert_eq!(crate::output(&py(source, b"").await), "__main__.Node | None");
    // A bad number is refused before the call, naming the field.
    let source = "def run(input):\n    host.queue.submit('x', '', priority=1.5)";
    let f = failure(&py(source, b"").await).clone();
    assert!(f.message.starts_with("ValueError: queue.submit: priority must be an integer"), "{f}");
    // A coroutine that waits on something only an event loop could finish.
    let source = "class Never:\n    def __await__(self):\n        yield\n\nasync def run(input):\n    await Never()";
    let f = failure(&py(source, b"").await).clone();
    assert!(!f.retryable && f.message.contains("only an event loop could finish"), "{f}");
}

#[tokio::test]
async fn every_limit_ends_a_python_script_in_its_class() {
    let limits = Limits { fuel: 50_000_000, ..Limits::default() };
    let spin = run_script("spin.py", "def run(input):\n    while True:\n        pass", b"", Some(limits)).await;
    assert_eq!(failure(&spin).class, FailureClass::FuelExhausted, "{}", failure(&spin));

    let limits = Limits { fuel: u64::MAX / 2, timeout: std::time::Duration::from_millis(300), ..Limits::default() };
    let slow = run_script("spin.py", "def run(input):\n    while True:\n        pass", b"", Some(limits)).await;
    assert_eq!(failure(&slow).class, FailureClass::Timeout, "{}", failure(&slow));

    // CPython catches the refused growth and raises MemoryError; the
    // limiter's record classifies it.
    let limits = Limits { memory_bytes: 96 << 20, ..Limits::default() };
    let source = "def run(input):\n    a = []\n    while True:\n        a.append(bytearray(1 << 20))";
    let f = failure(&run_script("hog.py", source, b"", Some(limits)).await).clone();
    assert_eq!(f.class, FailureClass::MemoryLimitExceeded, "{f}");
    assert!(f.message.contains("MemoryError"), "the guest's own report is kept: {f}");

    // Deep recursion: Python's own limit, permanent (it would recur).
    let deep = py("def f(n):\n    return f(n + 1) + 1\n\ndef run(input):\n    return f(0)", b"").await;
    let f = failure(&deep);
    assert!(f.class == FailureClass::StackOverflow || (f.message.starts_with("RecursionError") && !f.retryable), "{f}");

    let limits = Limits { max_output_bytes: 1000, ..Limits::default() };
    let big = run_script("big.py", "def run(input):\n    return 'x' * 1001", b"", Some(limits)).await;
    assert_eq!(failure(&big).class, FailureClass::OutputTooLarge, "{}", failure(&big));

    // The runner still runs the next script.
    assert_eq!(crate::output(&py("def run(input):\n    return 'fine'", b"").await), "fine");
}

#[tokio::test]
async fn each_python_task_starts_from_the_snapshot_with_its_own_randomness_and_no_authority() {
    let source = "import json, random, sys\nsys.counter = getattr(sys, 'counter', 0) + 1\n\
                  def run(input):\n    return json.dumps([sys.counter, random.random()])";
    let mut randoms = Vec::new();
    for _ in 0..3 {
        let (count, random): (u32, f64) = serde_json::from_str(&crate::output(&py(source, b"").await)).unwrap();
        assert_eq!(count, 1, "no state is left from an earlier task");
        randoms.push(random.to_bits());
    }
    randoms.dedup();
    assert_eq!(randoms.len(), 3, "random is seeded per task");

    // No files, environment or processes; a path outside any grant says so.
    let source = "def run(input):\n    return open('/etc/passwd').read()";
    let f = failure(&py(source, b"").await).clone();
    assert!(f.message.starts_with("PermissionError") && f.message.contains("directory grants"), "{f}");
    let source = "import os\ndef run(input):\n    return [dict(os.environ), hasattr(os, 'fork')]";
    assert_eq!(crate::output(&py(source, b"").await), "[{},false]");
    for module in ["subprocess", "socket", "ctypes"] {
        let f = failure(&py(&format!("import {module}\ndef run(input):\n    pass"), b"").await).clone();
        assert!(f.message.contains(&format!("No module named '{module}'")), "{f}");
    }
}

#[tokio::test]
async fn the_standard_library_the_docs_list_is_in_the_runner() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/scripts.md")).unwrap();
    let list = docs
        .lines()
        .find_map(|line| line.strip_prefix("Standard library modules: "))
        .expect("docs/scripts.md lists the runner's standard library on one line");
    let modules: Vec<&str> = list.split(", ").map(|m| m.trim_matches(|c| c == '`' || c == '.')).collect();
    assert!(modules.len() >= 20 && modules.contains(&"json") && modules.contains(&"statistics"), "{modules:?}");
    let source = "import importlib\ndef run(input):\n    for m in input.json():\n        importlib.import_module(m)\n    \
                  return 'ok'";
    assert_eq!(crate::output(&py(source, serde_json::to_string(&modules).unwrap().as_bytes()).await), "ok");
}

#[test]
fn taskhost_run_runs_a_python_file() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hello.py");
    std::fs::write(&script, "def run(input):\n    print('hi')\n    return f'hello, {input.text()}!'\n").unwrap();
    let path = script.to_str().unwrap();
    let out = crate::cli::taskhost_with_env(&["run", path], &[], b"Ada");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello, Ada!");
    assert!(String::from_utf8_lossy(&out.stderr).contains("[ info] hi"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = crate::cli::taskhost_with_env(&["run", path, "--stats"], &[], b"Bob");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello, Bob!");
    assert!(String::from_utf8_lossy(&out.stderr).contains("loaded from the artifact cache"));

    // A failing script: exit 1 and one error line pointing at it.
    std::fs::write(&script, "def run(input):\n    return None.x\n").unwrap();
    let out = crate::cli::taskhost_with_env(&["run", path], &[], b"");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AttributeError") && stderr.contains("\"hello.py\", line 2"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_script_plugin_runs_as_tasks_and_fans_out() {
    let (engine, _dir) = crate::engine::engine_with(|_| {}).await;
    let scripts: [(&str, &str); 3] = [
        (
            "fan",
            "def run(input):\n    ids = [host.queue.submit('double', str(n)) for n in input.json()]\n    \
             host.context.set('count', len(ids))\n    return host.queue.join(ids, 'total')",
        ),
        ("double", "def run(input):\n    return str(2 * int(input.text()))"),
        (
            "total",
            "def run(input):\n    parts = host.queue.joined()\n    \
             if any(p.status != 'completed' for p in parts):\n        raise host.PermanentError('a part failed')\n    \
             return {'total': sum(int(p.output.text()) for p in parts), 'parts': len(parts),\n            \
             'counted': host.context.get('count').json(), 'version': host.task().version}",
        ),
    ];
    let mut versions = Vec::new();
    for (name, source) in scripts {
        let (added, _) =
            engine.add_script_plugin(name, Language::Python, source.as_bytes().to_vec(), None, true).await.unwrap();
        assert_eq!(added.info.script.as_deref(), Some("python"));
        versions.push(added.info.version);
    }
    let id = engine.submit(crate::engine::task("fan", "[1, 2, 3, 4]")).await.unwrap().record.id;
    let record = engine.wait(id, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(record.state, taskhost::store::TaskState::Completed, "{:?}", record.error);
    let join_id: uuid::Uuid = String::from_utf8(engine.output(id).await.unwrap().unwrap()).unwrap().parse().unwrap();
    let joined = engine.wait(join_id, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(joined.state, taskhost::store::TaskState::Completed, "{:?}", joined.error);
    let output: serde_json::Value = serde_json::from_slice(&engine.output(join_id).await.unwrap().unwrap()).unwrap();
    assert_eq!(output, serde_json::json!({"total": 20, "parts": 4, "counted": 4, "version": versions[2]}));
}
