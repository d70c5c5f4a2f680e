//! JavaScript scripts in the JavaScript runner: the real runner component
//! built from source, pre-initialised, running scripts under the same
//! limits as any plugin; every WIT function bound; errors that point at the
//! script; `taskhost run hello.js` through the binary.

use crate::failure;
use std::sync::Arc;
use taskhost::scripts::{Language, Script};
use taskhost::{FailureClass, Limits, Plugin, TaskReport, TaskRequest};
use tokio::sync::OnceCell;

/// The runner for `language`, made ready (pre-initialised, compiled) once
/// for the whole binary.
async fn runner(language: Language) -> Plugin {
    static JAVASCRIPT: OnceCell<Plugin> = OnceCell::const_new();
    static PYTHON: OnceCell<Plugin> = OnceCell::const_new();
    let cell = match language {
        Language::JavaScript => &JAVASCRIPT,
        Language::Python => &PYTHON,
        other => panic!("no runner for {other}"),
    };
    cell.get_or_init(|| async { crate::sandbox().load_runner(language).await.unwrap() }).await.clone()
}

/// Runs the script `source`, named `name` (whose extension says its
/// language), on `input` under `limits`, in its language's runner.
pub(crate) async fn run_script(name: &str, source: &str, input: &[u8], limits: Option<Limits>) -> TaskReport {
    let language = Language::from_file_name(name).unwrap_or_else(|| panic!("{name} names no script language"));
    let script = Script::new(language, name, source.as_bytes().to_vec()).unwrap();
    let request =
        TaskRequest { input: input.to_vec(), limits, script: Some(Arc::new(script)), ..TaskRequest::default() };
    crate::sandbox().run(&runner(language).await, request).await
}

async fn js(source: &str, input: &[u8]) -> TaskReport {
    run_script("test.js", source, input, None).await
}

#[tokio::test]
async fn a_script_runs_on_its_input_and_returns_its_output() {
    let source = r#"
        export default function (input) {
          const { name } = input.json();
          console.log("greeting", name, { n: 1 });
          host.log("warn", "careful");
          return { hello: name, task: host.task().plugin, bytes: input.length };
        }
    "#;
    let report = js(source, br#"{"name":"Ada"}"#).await;
    let output: serde_json::Value = serde_json::from_str(&crate::output(&report)).unwrap();
    assert_eq!(output, serde_json::json!({"hello": "Ada", "task": "js-runner", "bytes": 14}));
    let logs: Vec<_> = report.logs.iter().map(|r| (r.level.to_string(), r.message.as_str())).collect();
    assert_eq!(logs, [("info".to_owned(), r#"greeting Ada {"n":1}"#), ("warn".to_owned(), "careful")]);

    // What a script returns becomes bytes: strings as UTF-8, typed arrays
    // as they are, undefined as nothing; `run` works as well as default;
    // an async function is awaited.
    let cases: [(&str, &[u8]); 4] = [
        ("export function run(input) { return input.text().toUpperCase(); }", b"ABC"),
        ("export default () => new Uint8Array([0, 255, 7]);", &[0, 255, 7]),
        ("export default () => {};", b""),
        ("export default async (input) => { await null; return 'later ' + input.text(); }", b"later abc"),
    ];
    for (source, expected) in cases {
        let report = js(source, b"abc").await;
        assert_eq!(report.result.as_deref().map_err(ToString::to_string), Ok(expected), "{source}");
    }
}

/// (the script's name, WIT `interface.function`) of every service import
/// of world `script-task`, read from `wit/`: `host.<interface>.<member>`,
/// the member named by `style` from the function, but for the few that
/// read better shorter (the same in every language).
pub(crate) fn service_functions(style: impl Fn(&str) -> String) -> Vec<(String, String)> {
    let renamed = [
        ("log", "log", "host.log"),
        ("runtime", "current-task", "host.task"),
        ("context", "list-keys", "host.context.keys"),
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut resolve = wit_parser::Resolve::new();
    let (package, _) = resolve.push_dir(root.join("wit")).unwrap();
    let world = resolve.select_world(&[package], Some("script-task")).unwrap();
    let mut expected = Vec::new();
    for (_, item) in &resolve.worlds[world].imports {
        let wit_parser::WorldItem::Interface { id, .. } = item else { continue };
        let interface = &resolve.interfaces[*id];
        let name = interface.name.clone().unwrap();
        // `script` is how the runner gets the script, not a service.
        if interface.package != Some(package) || name == "script" {
            continue;
        }
        for function in interface.functions.keys() {
            let path = renamed
                .iter()
                .find(|(i, f, _)| *i == name && f == function)
                .map_or_else(|| format!("host.{name}.{}", style(function)), |(_, _, path)| (*path).to_owned());
            expected.push((path, format!("{name}.{function}")));
        }
    }
    assert!(expected.len() >= 13 && expected.iter().any(|(path, _)| path == "host.inference.run"), "{expected:?}");
    expected
}

#[tokio::test]
async fn every_wit_function_has_a_binding_in_the_runner_and_in_the_type_declarations() {
    // The JavaScript name of each WIT import, by rule: `host.<interface>.
    // <camelCase>`, but for the few that read better shorter.
    let expected = service_functions(|function| {
        let mut parts = function.split('-');
        let first = parts.next().unwrap().to_owned();
        parts.fold(first, |acc, p| acc + &p[..1].to_uppercase() + &p[1..])
    });
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let paths: Vec<&String> = expected.iter().map(|(path, _)| path).collect();
    // In the runner: each is a function.
    let probe = r#"
        export default (input) => input.json().filter((path) =>
          typeof path.split(".").slice(1).reduce((o, k) => (o == null ? undefined : o[k]), host) !== "function");
    "#;
    let report = js(probe, serde_json::to_string(&paths).unwrap().as_bytes()).await;
    assert_eq!(crate::output(&report), "[]", "functions the runner lacks");
    // In the declarations editors read: each has its WIT name documented
    // beside it.
    let declarations = std::fs::read_to_string(root.join("sdk/scripts/taskhost.d.ts")).unwrap();
    for (path, wit) in &expected {
        let member = path.rsplit('.').next().unwrap();
        assert!(declarations.contains(&format!("  {member}(")), "taskhost.d.ts does not declare {path}");
        assert!(declarations.contains(&format!("WIT `{wit}`")), "taskhost.d.ts does not name {wit}");
    }
}

#[tokio::test]
async fn errors_point_at_the_script_and_say_whether_to_retry() {
    // A syntax error: permanent, with the script's name, line and column.
    let failed = run_script("broken.js", "export default function (input) {\n  let x = ;\n}\n", b"", None).await;
    let f = failure(&failed);
    assert_eq!((f.class, f.retryable), (FailureClass::PluginError, false), "{f}");
    assert!(f.message.starts_with("SyntaxError: "), "{f}");
    assert!(f.message.contains("broken.js:2:"), "{f}");

    // A thrown error: retryable, with the script's frames and none of the
    // runner's own.
    let source = "function inner() { throw new Error('boom'); }\nexport default function () {\n  inner();\n}\n";
    let f = failure(&run_script("thrower.js", source, b"", None).await).clone();
    assert_eq!((f.class, f.retryable), (FailureClass::PluginError, true), "{f}");
    assert!(f.message.starts_with("Error: boom"), "{f}");
    assert!(f.message.contains("at inner (thrower.js:1:"), "{f}");
    assert!(f.message.contains("thrower.js:3:"), "{f}");
    assert!(!f.message.contains("taskhost>"), "{f}");

    // Saying so makes it permanent.
    for source in [
        "export default () => { throw new host.PermanentError('bad input'); }",
        "export default () => { const e = new Error('bad input'); e.permanent = true; throw e; }",
    ] {
        let f = failure(&js(source, b"").await).clone();
        assert!(!f.retryable && f.message.contains("bad input"), "{f}");
    }
    // A thrown value that is not an Error, and a rejected promise.
    let f = failure(&js("export default () => { throw { code: 7 }; }", b"").await).clone();
    assert!(f.retryable && f.message.contains(r#"not an Error: {"code":7}"#), "{f}");
    let f = failure(&js("export default async () => { throw new TypeError('later'); }", b"").await).clone();
    assert!(f.message.starts_with("TypeError: later"), "{f}");
    // No entry point.
    let f = failure(&run_script("lib.js", "export const x = 1;", b"", None).await).clone();
    assert!(!f.retryable && f.message.contains("lib.js exports no function to run"), "{f}");
    // A refused host call is a HostError carrying the WIT case.
    let source = "export default () => { try { host.queue.get('x'); } catch (e) { return `${e.name} ${e.kind}`; } }";
    let report = js(source, b"").await;
    let output = crate::output(&report);
    assert!(output.starts_with("HostError ") && output.len() > "HostError ".len(), "{output}");
    assert!(!output.ends_with("undefined"), "the refusal carries its WIT case: {output}");
    // A bad number is refused before the call, naming the field.
    let source = "export default () => host.queue.submit({ plugin: 'x', input: '', priority: 1.5 });";
    let f = failure(&js(source, b"").await).clone();
    assert!(f.message.starts_with("RangeError: queue.submit: priority must be an integer"), "{f}");
    // A promise nothing can settle fails for good, saying so.
    let f = failure(&js("export default () => new Promise(() => {});", b"").await).clone();
    assert!(!f.retryable && f.message.contains("promise never settled"), "{f}");
}

#[tokio::test]
async fn every_limit_ends_a_script_in_its_class() {
    let limits = Limits { fuel: 50_000_000, ..Limits::default() };
    let spin = run_script("spin.js", "export default () => { for (;;) {} }", b"", Some(limits)).await;
    assert_eq!(failure(&spin).class, FailureClass::FuelExhausted, "{}", failure(&spin));

    let limits = Limits { fuel: u64::MAX / 2, timeout: std::time::Duration::from_millis(300), ..Limits::default() };
    let slow = run_script("spin.js", "export default () => { for (;;) {} }", b"", Some(limits)).await;
    assert_eq!(failure(&slow).class, FailureClass::Timeout, "{}", failure(&slow));

    // QuickJS catches the refused growth and throws its own "out of
    // memory"; the limiter's record classifies it.
    let limits = Limits { memory_bytes: 32 << 20, ..Limits::default() };
    let source = "export default () => { const a = []; for (;;) a.push(new Array(100000).fill(1)); }";
    let hog = run_script("hog.js", source, b"", Some(limits)).await;
    let f = failure(&hog);
    assert_eq!(f.class, FailureClass::MemoryLimitExceeded, "{f}");
    assert!(f.message.contains("out of memory"), "the guest's own report is kept: {f}");

    let deep = js("function f(n) { return f(n + 1) + 1; }\nexport default () => f(0);", b"").await;
    assert_eq!(failure(&deep).class, FailureClass::StackOverflow, "{}", failure(&deep));

    let limits = Limits { max_output_bytes: 1000, ..Limits::default() };
    let big = run_script("big.js", "export default () => 'x'.repeat(1001);", b"", Some(limits)).await;
    assert_eq!(failure(&big).class, FailureClass::OutputTooLarge, "{}", failure(&big));

    // The runner still runs the next script.
    assert_eq!(crate::output(&js("export default () => 'fine'", b"").await), "fine");
}

#[tokio::test]
async fn each_task_starts_from_the_snapshot_with_its_own_randomness_and_no_authority() {
    let source =
        "globalThis.count = (globalThis.count ?? 0) + 1;\nexport default () => JSON.stringify([count, Math.random()]);";
    let mut randoms = Vec::new();
    for _ in 0..3 {
        let (count, random): (u32, f64) = serde_json::from_str(&crate::output(&js(source, b"").await)).unwrap();
        assert_eq!(count, 1, "no state is left from an earlier task");
        assert!((0.0..1.0).contains(&random));
        randoms.push(random.to_bits());
    }
    randoms.dedup();
    assert_eq!(randoms.len(), 3, "Math.random is seeded per task");
    // `performance` counts from each task's start, not the snapshot's.
    let source = "export default () => JSON.stringify([performance.now(), performance.timeOrigin, Date.now()]);";
    let mut origins = Vec::new();
    for _ in 0..2 {
        let (now, origin, date): (f64, f64, f64) =
            serde_json::from_str(&crate::output(&js(source, b"").await)).unwrap();
        assert!((0.0..5_000.0).contains(&now), "performance.now() is {now}");
        assert!(
            (date - origin - now).abs() < 1_000.0,
            "timeOrigin {origin} + now {now} is not about Date.now() {date}"
        );
        origins.push(origin);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(origins[1] > origins[0], "each task has its own origin: {origins:?}");

    // No modules to import, no file, network or process globals.
    let failed = js("import * as os from 'os';\nexport default () => os.getenv('HOME');", b"").await;
    assert!(failure(&failed).message.contains("os"), "{}", failure(&failed));
    let probe = "export default () => ['std', 'os', 'fetch', 'require', 'process', 'XMLHttpRequest', 'WebSocket']\
        .filter((name) => typeof globalThis[name] !== 'undefined');";
    assert_eq!(crate::output(&js(probe, b"").await), "[]");
}

#[test]
fn taskhost_run_runs_a_script_file() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hello.js");
    std::fs::write(&script, "export default (input) => { console.log('hi'); return `hello, ${input.text()}!`; };")
        .unwrap();
    let path = script.to_str().unwrap();
    let out = crate::cli::taskhost_with_env(&["run", path], &[], b"Ada");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello, Ada!");
    assert!(String::from_utf8_lossy(&out.stderr).contains("[ info] hi"), "{}", String::from_utf8_lossy(&out.stderr));

    // The second run loads the pre-initialised runner from the cache.
    let out = crate::cli::taskhost_with_env(&["run", path, "--stats"], &[], b"Bob");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello, Bob!");
    assert!(String::from_utf8_lossy(&out.stderr).contains("loaded from the artifact cache"));

    // Any name with --lang; an unknown language is refused.
    let other = dir.path().join("transform.txt");
    std::fs::write(&other, "export default () => 'as js';").unwrap();
    let out = crate::cli::taskhost_with_env(&["run", other.to_str().unwrap(), "--lang", "js"], &[], b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "as js");
    let out = crate::cli::taskhost_with_env(&["run", path, "--lang", "ruby"], &[], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown script language `ruby`"));

    // A failing script: exit 1 and one error line pointing at it.
    std::fs::write(&script, "export default () => {\n  null.x;\n};").unwrap();
    let out = crate::cli::taskhost_with_env(&["run", path], &[], b"");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TypeError") && stderr.contains("hello.js:2:"), "{stderr}");
}

/// Waits for `id` to end and gives its record and output.
pub(crate) async fn finished(
    engine: &taskhost::engine::Engine,
    id: uuid::Uuid,
) -> (taskhost::store::TaskRecord, String) {
    let record = engine.wait(id, std::time::Duration::from_secs(60)).await.unwrap();
    assert!(record.state.is_terminal(), "{id} is still {}", record.state);
    let output = engine.output(id).await.unwrap().map(|o| String::from_utf8(o).unwrap()).unwrap_or_default();
    (record, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_plugins_are_versioned_by_their_source_and_run_as_tasks() {
    let (engine, _dir) = crate::engine::engine_with(|_| {}).await;
    let v1 = b"export default (input) => `v1 ${input.text()} ${host.task().plugin}@${host.task().version}`;".to_vec();
    let (added, created) =
        engine.add_script_plugin("greet", Language::JavaScript, v1.clone(), None, true).await.unwrap();
    assert!(created);
    let version = added.info.version.clone();
    assert_eq!(version, added.info.digest[..12], "a script's version is its source's hash");
    assert_eq!(added.info.script.as_deref(), Some("js"));
    let submitted = engine.submit(crate::engine::task("greet", "Ada")).await.unwrap();
    let (record, output) = finished(&engine, submitted.record.id).await;
    assert_eq!(record.state, taskhost::store::TaskState::Completed);
    assert_eq!(output, format!("v1 Ada greet@{version}"));

    // The same source is the same version; another is a new one, and a
    // rollback goes back.
    let (_, created) = engine.add_script_plugin("greet", Language::JavaScript, v1, None, true).await.unwrap();
    assert!(!created);
    let v2 = b"export default (input) => 'v2 ' + input.text();".to_vec();
    engine.add_script_plugin("greet", Language::JavaScript, v2, None, true).await.unwrap();
    let id = engine.submit(crate::engine::task("greet", "Bob")).await.unwrap().record.id;
    assert_eq!(finished(&engine, id).await.1, "v2 Bob");
    engine.set_latest("greet", &version).await.unwrap();
    let id = engine.submit(crate::engine::task("greet", "Cy")).await.unwrap().record.id;
    assert!(finished(&engine, id).await.1.starts_with("v1 Cy"));

    // A script that is not UTF-8 is refused, and nothing is added.
    let refused = engine.add_script_plugin("bad", Language::JavaScript, vec![0xff, 0xfe], None, true).await;
    assert!(refused.unwrap_err().to_string().contains("not UTF-8"));
    assert!(engine.submit(crate::engine::task("bad", "")).await.is_err());

    // A script error fails the task with the script's name and line, and
    // is retried like any retryable plugin error.
    let source = b"export default () => {\n  throw new Error('flaky');\n};".to_vec();
    engine.add_script_plugin("flaky", Language::JavaScript, source, None, true).await.unwrap();
    let mut task = crate::engine::task("flaky", "");
    task.max_attempts = Some(2);
    let id = engine.submit(task).await.unwrap().record.id;
    let (record, _) = finished(&engine, id).await;
    assert_eq!((record.state, record.attempts), (taskhost::store::TaskState::Failed, 2));
    let error = record.error.unwrap().message;
    assert!(error.contains("Error: flaky") && error.contains("flaky.js:2:"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_fans_out_and_joins_through_the_queue() {
    let (engine, _dir) = crate::engine::engine_with(|_| {}).await;
    let scripts: [(&str, &str); 3] = [
        (
            "fan",
            r#"export default (input) => {
                 const ids = input.json().map((n) => host.queue.submit({ plugin: "double", input: String(n) }));
                 host.context.set("count", String(ids.length));
                 return host.queue.join(ids, { plugin: "sum" });
               };"#,
        ),
        ("double", "export default (input) => String(2 * Number(input.text()));"),
        (
            "sum",
            r#"export default () => {
                 const parts = host.queue.joined();
                 if (parts.some((p) => p.status !== "completed")) throw new host.PermanentError("a part failed");
                 const total = parts.reduce((acc, p) => acc + Number(p.output.text()), 0);
                 return { total, parts: parts.length, counted: Number(host.context.get("count").text()) };
               };"#,
        ),
    ];
    for (name, source) in scripts {
        engine.add_script_plugin(name, Language::JavaScript, source.as_bytes().to_vec(), None, true).await.unwrap();
    }
    let id = engine.submit(crate::engine::task("fan", "[1, 2, 3, 4]")).await.unwrap().record.id;
    let (record, join_id) = finished(&engine, id).await;
    assert_eq!(record.state, taskhost::store::TaskState::Completed);
    let join_id: uuid::Uuid = join_id.trim_matches('"').parse().unwrap();
    let (joined, output) = finished(&engine, join_id).await;
    assert_eq!(joined.state, taskhost::store::TaskState::Completed, "{:?}", joined.error);
    let output: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(output, serde_json::json!({"total": 20, "parts": 4, "counted": 4}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_uploaded_over_http_and_by_the_cli() {
    let (engine, dir) = crate::engine::engine_with(|_| {}).await;
    let (base, token) = crate::serve_api(&engine, dir.path()).await;
    let http = crate::authed(&token);
    let source = "export default (input) => input.text().split('').reverse().join('');";
    let response = http.post(format!("{base}/v1/plugins/reverse?lang=js")).body(source).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let added: serde_json::Value = response.json().await.unwrap();
    assert_eq!((added["lang"].as_str(), added["version"].as_str().map(str::len)), (Some("js"), Some(12)), "{added}");
    // An unknown language and a body that is not a script are refused.
    let response = http.post(format!("{base}/v1/plugins/other?lang=ruby")).body(source).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("unknown script language `ruby`"));
    let response = http.post(format!("{base}/v1/plugins/other?lang=python")).body(vec![0xffu8]).send().await.unwrap();
    assert_eq!(response.status(), 422, "checked before it is stored");
    assert!(response.text().await.unwrap().contains("not UTF-8"));
    let response = http.post(format!("{base}/v1/plugins/other?lang=js")).body(vec![0xffu8; 10]).send().await.unwrap();
    assert_eq!(response.status(), 422, "an invalid plugin, as for a component");
    assert!(response.text().await.unwrap().contains("not UTF-8"));

    // The CLI tells a script by its extension.
    let file = dir.path().join("shout.js");
    std::fs::write(&file, "export default (input) => input.text().toUpperCase() + '!';").unwrap();
    let out = crate::client_cli(&base, &token, &["plugins", "add", file.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("shout@"), "{}", String::from_utf8_lossy(&out.stdout));
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "hey").unwrap();
    let out =
        crate::client_cli(&base, &token, &["submit", "shout", "--wait", "--input", input.to_str().unwrap()]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HEY!", "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_plugins_survive_a_restart_and_load_from_the_watched_directory() {
    use taskhost::engine::{Engine, EngineConfig};
    let dir = tempfile::tempdir().unwrap();
    let watched = tempfile::tempdir().unwrap();
    let config = || EngineConfig {
        data_dir: dir.path().to_owned(),
        plugins_dir: Some(watched.path().to_owned()),
        ..EngineConfig::default()
    };
    let engine = Engine::open(config()).await.unwrap();
    let source = b"export default (input) => 'kept ' + input.text();".to_vec();
    engine.add_script_plugin("kept", Language::JavaScript, source, None, true).await.unwrap();
    assert_eq!(engine.plugin_load_counts(), (1, 0), "the runner was prepared once");
    // A script dropped into the watched directory goes live.
    std::fs::write(watched.path().join("dropped.js"), "export default () => 'from the directory';").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let id = loop {
        match engine.submit(crate::engine::task("dropped", "")).await {
            Ok(submitted) => break submitted.record.id,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "dropped.js never went live: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(finished(&engine, id).await.1, "from the directory");
    let (detail, _) = engine.plugin("dropped").await.unwrap();
    assert_eq!(detail.versions[0].info.script.as_deref(), Some("js"));
    engine.close().await;

    // After a restart the scripts are there, and the runner comes from
    // the artifact cache, not pre-initialised again.
    let engine = Engine::open(config()).await.unwrap();
    assert_eq!(engine.plugin_load_counts(), (0, 1), "the runner was prepared again instead of loaded");
    let id = engine.submit(crate::engine::task("kept", "still")).await.unwrap().record.id;
    assert_eq!(finished(&engine, id).await.1, "kept still");
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_hoc_scripts_run_only_where_a_tenant_allows_them_and_the_oldest_idle_ones_are_collected() {
    use serde_json::{Value, json};
    let (engine, dir) = crate::engine::engine_with(|c| c.max_ad_hoc_scripts = 2).await;
    let (base, token) = crate::serve_api(&engine, dir.path()).await;
    let http = crate::authed(&token);
    let submit = |body: Value| {
        let request = http.post(format!("{base}/v1/tasks")).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let script = |source: &str, queue: &str| json!({"script": {"lang": "js", "source": source}, "input": 5, "queue": queue, "max_attempts": 1});
    let double = "export default (input) => String(Number(input.text()) * 2);";
    let versions = || async {
        let detail = engine.plugin_detail("adhoc.js");
        detail.map(|d| d.versions.into_iter().map(|v| v.info.version).collect::<Vec<_>>()).unwrap_or_default()
    };

    // Off by default: refused, and nothing is stored.
    let (status, body) = submit(script(double, "default")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(body["error"]["message"].as_str().unwrap().contains("does not take ad-hoc scripts"), "{body}");
    assert!(versions().await.is_empty());

    // An admin allows them in one queue, with a size cap.
    let put = |quotas: Value| http.put(format!("{base}/v1/tenants/default")).json(&json!({"quotas": quotas})).send();
    let response = put(json!({"script_queues": ["bad queue"]})).await.unwrap();
    assert_eq!(response.status(), 400, "a queue name is checked");
    let response = put(json!({"script_queues": ["scripts"], "max_script_bytes": 200})).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(submit(script(double, "other")).await.0, 403, "another queue still takes none");
    let (status, body) = submit(script(double, "scripts")).await;
    assert_eq!(status, 201, "{body}");
    let id: uuid::Uuid = body["id"].as_str().unwrap().parse().unwrap();
    let (record, output) = finished(&engine, id).await;
    assert_eq!((record.state, output.as_str()), (taskhost::store::TaskState::Completed, "10"), "{:?}", record.error);
    assert_eq!(record.plugin, "adhoc.js");
    let first = record.plugin_version.clone();
    assert_eq!(first.len(), 12, "a script's version is its source's hash");
    let (_, again) = submit(script(double, "scripts")).await;
    let again = engine.get(again["id"].as_str().unwrap().parse().unwrap()).await.unwrap();
    assert_eq!(again.plugin_version, first, "the same source is the same version");
    // Named as a plugin, an ad-hoc script still runs only where scripts may.
    let by_name = |queue: &str| json!({"plugin": format!("adhoc.js@{first}"), "input": 1, "queue": queue});
    assert_eq!(submit(by_name("other")).await.0, 403, "no way around script_queues");
    let (status, body) = submit(by_name("scripts")).await;
    assert_eq!(status, 201, "{body}");
    finished(&engine, body["id"].as_str().unwrap().parse().unwrap()).await;

    // Refusals, each naming what is wrong.
    let refusals = [
        (script(&"x".repeat(201), "scripts"), 400, "at most 200 (`max_script_bytes`)"),
        (json!({"plugin": "uppercase", "script": {"lang": "js", "source": double}}), 400, "not both"),
        (json!({"script": {"lang": "ruby", "source": "puts 1"}, "queue": "scripts"}), 400, "not a script language"),
        (json!({"input": 1}), 400, "give a plugin"),
    ];
    for (body, want, message) in refusals {
        let (status, answer) = submit(body).await;
        assert_eq!(status, want, "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(message), "{answer}");
    }
    let upload = http.post(format!("{base}/v1/plugins/adhoc.js?lang=js")).body(double).send().await.unwrap();
    assert_eq!(upload.status(), 400, "the ad-hoc plugins' names are reserved");
    assert!(upload.text().await.unwrap().contains("reserved for ad-hoc scripts"));

    // A failure points at the script by its ad-hoc name.
    let (_, body) = submit(script("export default () => {\n  throw new Error('boom');\n};", "scripts")).await;
    let (record, _) = finished(&engine, body["id"].as_str().unwrap().parse().unwrap()).await;
    let error = record.error.unwrap().message;
    assert!(error.contains("boom") && error.contains("adhoc.js:2:"), "{error}");
    assert_eq!(versions().await.len(), 2);

    // Past the cap (2 here) the oldest idle script goes; while every one
    // is held by an unfinished task, a new one is refused.
    let (status, body) = submit(script("export default () => 'third';", "scripts")).await;
    assert_eq!(status, 201);
    finished(&engine, body["id"].as_str().unwrap().parse().unwrap()).await;
    let kept = versions().await;
    assert_eq!(kept.len(), 2);
    assert!(!kept.contains(&first), "the oldest idle version was collected: {kept:?}");
    let later = |n: u32| {
        let mut body = script(&format!("export default () => 'later {n}';"), "scripts");
        body["delay_ms"] = json!(3_600_000);
        body
    };
    assert_eq!(submit(later(1)).await.0, 201);
    assert_eq!(submit(later(2)).await.0, 201);
    let (status, body) = submit(later(3)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "limit_reached");
    assert!(body["error"]["message"].as_str().unwrap().contains("2 distinct ad-hoc scripts"), "{body}");
    // A task already submitted keeps running its script.
    assert_eq!(submit(later(2)).await.0, 201, "a held script is submitted again");

    // The CLI submits a script file.
    let file = dir.path().join("shout.js");
    std::fs::write(&file, "export default (input) => input.text().toUpperCase();").unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "hey").unwrap();
    let (file, input) = (file.to_str().unwrap(), input.to_str().unwrap());
    let args = ["submit", "--script", file, "--input", input, "--queue", "scripts", "--wait"];
    // Both held scripts are delayed: the file is a third one, refused.
    let out = crate::client_cli(&base, &token, &args).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("distinct ad-hoc scripts"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in
        engine.list(&taskhost::engine::ListFilter::default()).await.unwrap().0.iter().filter(|t| !t.state.is_terminal())
    {
        engine.cancel(id.id).await.unwrap();
    }
    let out = crate::client_cli(&base, &token, &args).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HEY", "{}", String::from_utf8_lossy(&out.stderr));
}
