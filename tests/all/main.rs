//! The integration tests: one binary, one module per feature. Plugins are
//! real components built from source by `tests/artifacts/build.rs`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use taskhost::{Limits, Plugin, Sandbox, SandboxConfig, TaskMeta, TaskReport, TaskRequest};
use taskhost_test_artifacts::Artifact;

/// The trust boundary: tokens and scopes on every route, revocation, the
/// audit log, `--metrics-listen`, the CLI's token.
mod access;
/// The HTTP API on loopback: every bad-input case, callbacks.
mod api;
/// The bounds against hostile clients and files: connection timeouts and
/// cap, the compile budget, the upload queue, watched files, callbacks.
mod bounds;
/// `taskhost run` end to end through the binary.
mod cli;
/// The Python and TypeScript clients' own suites against a live server.
mod clients;
/// The web console in a real headless Chromium: every page, its actions
/// end to end, no browser errors.
mod console;
/// README.md and docs/: size, links and anchors, the index.
mod docs;
/// The durable engine: idempotency, priority, fairness, retries, cancel.
mod engine;
/// The live events (SSE): order, filters, resuming, tenants, slow
/// subscribers, `taskhost events`.
mod events;
/// The example plugins, SDK and plain wit-bindgen plugins alike.
mod examples;
/// Flows: children, joins, declared DAGs, repeaters, limits, context.
mod flows;
/// What the server emits, read by real tools: `promtool`, a real
/// Prometheus, the Grafana dashboard's queries.
mod formats;
/// The host around the sandbox under hostile plugins and clients: host
/// budgets, the operator's ceilings, a bounded pool for guests' file I/O.
mod hostile_host;
/// Inference on ONNX Runtime: batching across tasks, checks, grants,
/// timeouts, cancellation, the models API and file, MiniLM.
mod inference;
/// Plugins that are not valid task components are refused with the reason.
mod invalid;
/// No ambient authority: files, sockets, environment.
mod isolation;
/// Full components built by other languages' toolchains (componentize-py,
/// componentize-js), as docs/other-languages.md shows.
mod languages;
/// Every hard limit ends in its class and the host survives.
mod limits;
/// What tasks log and print under the server: kept per attempt within a
/// cap, shown and followed over HTTP and the CLI.
mod logs;
/// Three `taskhost serve --many-hosts` on one PostgreSQL database: a
/// kill, a freeze, every task once, flows whole, the lead failing over.
mod many_hosts;
/// The OpenAPI document: every route with its scope, a real validator,
/// live answers against their schemas.
mod openapi;
/// `taskhost serve --store postgres://`: one host per database, a second
/// refused, a host that loses its lock stops.
mod postgres;
/// Python scripts in the runner componentize-py builds: output, every WIT
/// binding, errors, limits, the standard library, `taskhost run x.py`.
mod python;
/// Kill -9 under load, restart, nothing lost or duplicated.
mod recovery;
/// Hot-loading: swaps, pinning, the artifact cache, the watched directory,
/// manifests.
mod registry;
/// Retention: ended tasks and flows deleted past their queue's or the
/// host's bound, with all they kept; a long run within a size bound.
mod retention;
/// Cooperative yielding, cancellation and timeouts in host calls.
mod scheduling;
/// JavaScript scripts in the pre-initialised runner: output, every WIT
/// binding, errors that point at the script, limits, `taskhost run x.js`.
mod scripts;
/// The SDK packages for outside authors, with this WIT.
mod sdk;
/// Storage faults: a damaged or empty store file refused at start-up with
/// a clear error, `taskhost store check|repair`, a full disk.
mod storage;
/// The store backends the engine's, flows' and retention's tests run
/// on, each test on both (`on_both_stores!`).
mod stores;
/// Tenants: isolation of every object kind, quotas, fairness, the CLI.
mod tenants;
/// OpenTelemetry traces through the real binary to a real OTLP/HTTP
/// receiver: the span tree of a fan-out flow and of a declared flow.
mod traces;
/// Hostile values and races over HTTP: times, names, keys, retries,
/// deletes, queue limits.
mod values;

/// Tests that judge timing (a cancel within 100 ms, shares of worker
/// time) hold this for reading; a test that loads the machine hard (a
/// whole browser) holds it for writing, so it never runs beside them on a
/// 2-core machine.
static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by a test whose assertions are about time.
pub(crate) async fn timing() -> tokio::sync::RwLockReadGuard<'static, ()> {
    QUIET.read().await
}

/// Held by a test that loads the machine: no timing test runs meanwhile.
pub(crate) async fn heavy() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    QUIET.write().await
}

/// The admin token a `taskhost serve` on `data` wrote to
/// `DATA/admin.token` at its first start, once it has.
pub(crate) async fn admin_token(data: &std::path::Path) -> String {
    let path = data.join(taskhost::auth::ADMIN_TOKEN_FILE);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match taskhost::auth::read_token_file(&path) {
            Ok(token) if !token.is_empty() => return token,
            _ if std::time::Instant::now() < deadline => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            other => panic!("no admin token in {}: {other:?}", path.display()),
        }
    }
}

/// A plain HTTP client (after installing the TLS provider every client in
/// this process needs).
pub(crate) fn http() -> reqwest::Client {
    taskhost::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// An HTTP client that sends `token` with every request.
pub(crate) fn authed(token: &str) -> reqwest::Client {
    taskhost::tls::install_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

/// Serves `engine`'s API on a free loopback port, behind tokens, with an
/// admin token bootstrapped into `data`; its base URL and that token.
pub(crate) async fn serve_api(engine: &taskhost::engine::Engine, data: &std::path::Path) -> (String, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let auth = std::sync::Arc::new(taskhost::auth::Auth::load(engine.store()).await.unwrap());
    auth.bootstrap(data).await.unwrap();
    let token = admin_token(data).await;
    let router = taskhost::api::router(engine.clone(), taskhost::api::Access::tokens(auth));
    tokio::spawn(axum::serve(listener, router).into_future());
    (base, token)
}

/// Runs the `taskhost` binary's client command `args` against the server
/// at `server` with `token`, off the async workers.
pub(crate) async fn client_cli(server: &str, token: &str, args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let (server, token) = (server.to_owned(), token.to_owned());
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_taskhost"))
            .args(&args)
            .env("TASKHOST_SERVER", server)
            .env("TASKHOST_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// [`authed`] with the admin token of the server on `data`.
pub(crate) async fn admin_client(data: &std::path::Path) -> reqwest::Client {
    authed(&admin_token(data).await)
}

/// The value of one series (`name` or `name{labels}`, exactly) in a
/// Prometheus text; 0 when it is absent.
pub(crate) fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap_or_else(|e| panic!("`{series}` has the value `{v}`: {e}")))
}

/// The Python of `target/venv` (componentize-py, openapi-spec-validator,
/// the Python client and pytest), or a failure saying how to get it.
pub(crate) fn venv_python() -> std::path::PathBuf {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/python");
    assert!(python.exists(), "no {}: run ./dev.sh setup", python.display());
    python
}

/// One sandbox for the whole test binary, as a server would have.
pub(crate) fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(SandboxConfig { pool_instances: 128, ..SandboxConfig::default() }).unwrap())
}

/// Loads (once) and returns the plugin built from `artifact`.
pub(crate) fn plugin(artifact: Artifact) -> Plugin {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, Plugin>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    cache
        .entry(artifact.name)
        .or_insert_with(|| sandbox().load(artifact.name, "1.0.0", &artifact.bytes()).unwrap())
        .clone()
}

/// Runs `artifact` on `input` with `limits` (or the defaults).
pub(crate) async fn run(artifact: Artifact, input: &str, limits: Option<Limits>) -> TaskReport {
    let request = TaskRequest { input: input.as_bytes().to_vec(), limits, ..TaskRequest::default() };
    sandbox().run(&plugin(artifact), request).await
}

/// Runs a task with an explicit identity.
pub(crate) async fn run_as(artifact: Artifact, input: &str, meta: TaskMeta) -> TaskReport {
    let request = TaskRequest { input: input.as_bytes().to_vec(), meta, ..TaskRequest::default() };
    sandbox().run(&plugin(artifact), request).await
}

/// A real component cut in half.
pub(crate) fn plugin_bytes_truncated() -> Vec<u8> {
    let mut bytes = taskhost_test_artifacts::UPPERCASE.bytes();
    bytes.truncate(bytes.len() / 2);
    bytes
}

/// The output of a task that must have succeeded, as text.
pub(crate) fn output(report: &TaskReport) -> String {
    match &report.result {
        Ok(bytes) => String::from_utf8(bytes.clone()).unwrap(),
        Err(failure) => panic!("task failed: {failure}\nstderr: {}", String::from_utf8_lossy(&report.stderr)),
    }
}

/// The failure of a task that must have failed.
pub(crate) fn failure(report: &TaskReport) -> &taskhost::TaskFailure {
    match &report.result {
        Ok(bytes) => panic!("task succeeded unexpectedly with {} output bytes", bytes.len()),
        Err(failure) => failure,
    }
}

#[test]
fn every_plugin_was_built_and_classified() {
    let roles: Vec<_> = taskhost_test_artifacts::ALL.iter().map(|a| a.role).collect();
    for role in ["example", "hostile", "fixture", "bench"] {
        assert!(roles.contains(&role), "no plugin has role {role}");
    }
    for artifact in taskhost_test_artifacts::ALL {
        let bytes = artifact.bytes();
        assert!(bytes.starts_with(b"\0asm"), "{} is not wasm", artifact.name);
    }
}
