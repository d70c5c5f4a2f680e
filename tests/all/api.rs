//! The HTTP API over real loopback HTTP: happy paths, every bad-input case
//! (with nothing written), and completion callbacks.

use crate::engine::engine_with;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use taskhost::engine::Engine;
use taskhost::store::TaskState;
use taskhost_test_artifacts::UPPERCASE;

struct Api {
    base: String,
    /// Sends the admin token.
    http: reqwest::Client,
    token: String,
    engine: Engine,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    api_with(|_| {}).await
}

async fn api_with(tweak: impl FnOnce(&mut taskhost::engine::EngineConfig)) -> Api {
    let (engine, dir) = engine_with(tweak).await;
    let (base, token) = crate::serve_api(&engine, dir.path()).await;
    Api { base, http: crate::authed(&token), token, engine, _dir: dir }
}

impl Api {
    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post_json(&self, path: &str, body: &str) -> (StatusCode, Value) {
        let request = self.http.post(format!("{}{path}", self.base)).header("content-type", "application/json");
        self.send(request.body(body.to_owned())).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn wait_done(&self, id: &str) -> Value {
        for _ in 0..600 {
            let (_, task) = self.get(&format!("/v1/tasks/{id}")).await;
            if ["completed", "failed", "cancelled"].contains(&task["state"].as_str().unwrap_or("")) {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("task {id} did not end");
    }

    async fn stored(&self) -> usize {
        self.engine.list(&Default::default()).await.unwrap().0.len()
    }
}

fn assert_error(status: StatusCode, body: &Value, expected_status: u16, code: &str, message_part: &str) {
    assert_eq!(status.as_u16(), expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(message_part), "`{message}` lacks `{message_part}`");
}

#[tokio::test]
async fn submit_get_and_list_over_http() {
    let api = api().await;
    let (status, plugins) = api.get("/v1/plugins").await;
    assert_eq!(status, StatusCode::OK);
    assert!(plugins["plugins"].as_array().unwrap().iter().any(|p| p["name"] == "uppercase"));

    // A JSON input reaches the plugin as its JSON text; output that parses
    // as JSON is returned as JSON.
    let (status, created) = api.post_json("/v1/tasks", r#"{"plugin": "uppercase", "input": {"a": "b"}}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let task = api.wait_done(created["id"].as_str().unwrap()).await;
    assert_eq!(task["state"], "completed");
    assert_eq!(task["output"], json!({"A": "B"}));

    // Binary-safe input and output.
    let (_, created) = api.post_json("/v1/tasks", r#"{"plugin": "uppercase", "input_base64": "aGk="}"#).await;
    let task = api.wait_done(created["id"].as_str().unwrap()).await;
    assert_eq!(task["output_base64"], "SEk=");

    let (_, history) = api.get(&format!("/v1/tasks/{}/history", created["id"].as_str().unwrap())).await;
    let states: Vec<_> = history["history"].as_array().unwrap().iter().map(|t| t["to"].clone()).collect();
    assert_eq!(states, [json!("pending"), json!("running"), json!("completed")]);

    let (_, page) = api.get("/v1/tasks?state=completed&limit=1").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = api.get(&format!("/v1/tasks?state=completed&limit=1&cursor={cursor}")).await;
    assert_eq!(next["tasks"].as_array().unwrap().len(), 1);
    assert!(next["next_cursor"].is_null());

    // Metrics follow each commit by a moment: wait (bounded) for them.
    let expected = r#"taskhost_tasks{tenant="default",queue="default",state="completed"} 2"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let metrics = api.http.get(format!("{}/metrics", api.base)).send().await.unwrap();
        let text = metrics.text().await.unwrap();
        if text.contains(expected) || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(text.contains(expected), "{text}");
    assert!(text.contains("taskhost_run_seconds_bucket"));
    let (_, health) = api.get("/healthz").await;
    assert_eq!(health["status"], "ok");
}

#[tokio::test]
async fn batch_submission_answers_each_item() {
    let api = api().await;
    let body = r#"{"tasks": [
        {"plugin": "uppercase", "input": "a"},
        {"plugin": "nope"},
        {"plugin": "uppercase", "priority": 11},
        {"plugin": "uppercase", "oops": true}
    ]}"#;
    let (status, results) = api.post_json("/v1/tasks:batch", body).await;
    assert_eq!(status, StatusCode::OK, "{results}");
    let r = results["results"].as_array().unwrap();
    // Nothing else waits on this fresh host: the task is claimed in the
    // commit that accepted it.
    assert_eq!(r[0]["state"], "running", "{results}");
    assert_eq!((r[1]["status"].as_u64(), r[1]["error"]["code"].as_str()), (Some(404), Some("unknown_plugin")));
    assert_eq!(r[2]["error"]["code"], "invalid_request");
    assert!(r[3]["error"]["message"].as_str().unwrap().contains("unknown field `oops`"));
    assert_eq!(api.stored().await, 1);
}

#[tokio::test]
async fn every_bad_request_gets_a_clear_4xx_and_writes_nothing() {
    let api = api().await;
    let cases: &[(&str, &str, u16, &str, &str)] = &[
        ("/v1/tasks", r#"{"plugin": "uppercase""#, 400, "malformed_json", "not valid JSON"),
        ("/v1/tasks", r#"{"plugin": "uppercase", "colour": "red"}"#, 400, "invalid_request", "unknown field `colour`"),
        ("/v1/tasks", r#"{"plugin": "nope"}"#, 404, "unknown_plugin", "unknown plugin `nope`"),
        (
            "/v1/tasks",
            r#"{"plugin": "uppercase", "priority": 10}"#,
            400,
            "invalid_request",
            "priority 10 is out of range: expected 0-9",
        ),
        (
            "/v1/tasks",
            r#"{"plugin": "uppercase", "priority": -1}"#,
            400,
            "invalid_request",
            "priority -1 is out of range",
        ),
        (
            "/v1/tasks",
            r#"{"plugin": "uppercase", "input": 1, "input_base64": "AA=="}"#,
            400,
            "invalid_request",
            "give at most one of input, input_base64 and input_url",
        ),
        ("/v1/tasks", r#"{"plugin": "uppercase", "input_base64": "!!"}"#, 400, "invalid_request", "not base64"),
        ("/v1/tasks", r#"{"plugin": "uppercase", "max_attempts": 1000}"#, 400, "invalid_request", "max_attempts 1000"),
        (
            "/v1/tasks",
            r#"{"plugin": "uppercase", "timeout_ms": 0}"#,
            400,
            "invalid_request",
            "timeout_ms must be greater than zero",
        ),
        (
            "/v1/tasks",
            r#"{"plugin": "uppercase", "run_at": "tomorrow"}"#,
            400,
            "invalid_request",
            "not an RFC 3339 time",
        ),
        (
            "/v1/tasks",
            r#"{"plugin": "uppercase", "callback_url": "not a url"}"#,
            400,
            "invalid_request",
            "callback_url",
        ),
        ("/v1/tasks", r#"{"input": "x"}"#, 400, "invalid_request", "give a plugin (or an ad-hoc script)"),
        ("/v1/tasks", r#"[1, 2]"#, 400, "invalid_request", "does not fit"),
        ("/v1/tasks:batch", r#"{"tasks": 5}"#, 400, "invalid_request", "does not fit"),
    ];
    for (path, body, status, code, message) in cases {
        let (got, response) = api.post_json(path, body).await;
        assert_error(got, &response, *status, code, message);
    }
    // Not JSON at all.
    let (status, body) = api.send(api.http.post(format!("{}/v1/tasks", api.base)).body("plugin=x")).await;
    assert_error(status, &body, 415, "unsupported_media_type", "application/json");
    // Over the body size limit.
    let huge = format!(r#"{{"plugin": "uppercase", "input": "{}"}}"#, "x".repeat(taskhost::api::MAX_TASK_BODY + 1));
    let (status, body) = api.post_json("/v1/tasks", &huge).await;
    assert_error(status, &body, 413, "payload_too_large", "too large");
    // Bad ids and unknown tasks.
    let (status, body) = api.get("/v1/tasks/not-a-uuid").await;
    assert_error(status, &body, 400, "invalid_request", "is not a task id");
    let (status, body) = api.get("/v1/tasks/01a1fe50-2322-70e4-bb45-25827b3e97d5").await;
    assert_error(status, &body, 404, "not_found", "not found");
    let (status, body) = api.get("/v1/tasks?state=done").await;
    assert_error(status, &body, 400, "invalid_request", "unknown state `done`; expected one of pending");
    let (status, body) = api.get("/v1/tasks?colour=red").await;
    assert_error(status, &body, 400, "invalid_request", "unknown field `colour`");
    let (status, body) = api.get("/v2/nothing").await;
    assert_error(status, &body, 404, "not_found", "no such endpoint");
    // Plugins: not a component, a bad name, an empty body.
    let post = |name: &str, bytes: Vec<u8>| api.http.post(format!("{}/v1/plugins/{name}", api.base)).body(bytes);
    let (status, body) = api.send(post("junk", b"hello".to_vec())).await;
    assert_error(status, &body, 422, "invalid_plugin", "not a WebAssembly binary");
    let (status, body) = api.send(post("core", b"\0asm\x01\0\0\0".to_vec())).await;
    assert_error(status, &body, 422, "invalid_plugin", "core WebAssembly module, not a component");
    let (status, body) = api.send(post("bad%20name", UPPERCASE.bytes())).await;
    assert_error(status, &body, 400, "invalid_request", "invalid plugin name");
    let (status, body) = api.send(post("empty", Vec::new())).await;
    assert_error(status, &body, 400, "invalid_request", "body is empty");
    let (_, plugins) = api.get("/v1/plugins").await;
    assert_eq!(plugins["plugins"].as_array().unwrap().len(), 4, "a refused upload registered something");
    // Queues.
    let put = |name: &str, body: &str| {
        api.http
            .put(format!("{}/v1/queues/{name}", api.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let (status, body) = api.send(put("q", r#"{"weight": 0}"#)).await;
    assert_error(status, &body, 400, "invalid_request", "weight 0 is out of range");
    let (status, body) = api.send(put("q", r#"{"concurrency": 0}"#)).await;
    assert_error(status, &body, 400, "invalid_request", "concurrency must be at least 1");

    assert_eq!(api.stored().await, 0, "a refused request wrote a task");
}

#[tokio::test]
async fn cancelling_a_finished_task_is_a_conflict() {
    let api = api().await;
    let (_, created) = api.post_json("/v1/tasks", r#"{"plugin": "uppercase", "input": "x"}"#).await;
    let id = created["id"].as_str().unwrap();
    api.wait_done(id).await;
    let (status, body) = api.post_json(&format!("/v1/tasks/{id}/cancel"), "{}").await;
    assert_error(status, &body, 409, "conflict", "already ended (completed)");
}

#[tokio::test]
async fn a_finished_task_is_posted_to_its_callback() {
    let loopback = taskhost::egress::EgressPolicy::allowing(vec!["127.0.0.0/8".parse().unwrap()]);
    let api = api_with(|c| c.egress = loopback).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                tx.send(body).unwrap();
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, receiver).into_future());
    let body = json!({"plugin": "uppercase", "input": "ping", "callback_url": hook}).to_string();
    let (_, created) = api.post_json("/v1/tasks", &body).await;
    let posted = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert_eq!(posted["id"], created["id"]);
    assert_eq!(posted["state"], "completed");
    assert_eq!(posted["output"], "PING");

    // A failure's callback carries the failed attempt's last stderr lines.
    let panic = taskhost_test_artifacts::PANIC;
    api.engine.add_plugin(panic.name, panic.bytes(), None, true).await.unwrap();
    let body = json!({"plugin": "panic", "input": "ping", "max_attempts": 1, "callback_url": hook}).to_string();
    let (_, created) = api.post_json("/v1/tasks", &body).await;
    let posted = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert_eq!((&posted["id"], &posted["state"]), (&created["id"], &json!("failed")), "{posted}");
    let tail = posted["error"]["stderr_tail"].as_array().unwrap();
    assert!(tail.iter().any(|l| l.as_str().unwrap().contains("plugin gave up on")), "{posted}");
}

/// Runs the `taskhost` binary against the API; returns what it printed.
async fn cli(api: &Api, args: &[&str]) -> std::process::Output {
    crate::client_cli(&api.base, &api.token, args).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_every_answer_into_its_wire_type() {
    let api = api().await;
    let mut input = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut input, b"hi").unwrap();
    let out = cli(&api, &["submit", "uppercase", "--wait", "--input", input.path().to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"HI");
    let (_, page) = api.get("/v1/tasks?limit=1").await;
    let id = page["tasks"][0]["id"].as_str().unwrap().to_owned();

    // `status` prints the record; it reads back into the wire type.
    // An input past the server's body limit: a 413 that states it.
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), vec![b'a'; 7 << 20]).unwrap();
    let out = cli(&api, &["submit", "uppercase", "--input", big.path().to_str().unwrap()]).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("payload_too_large") && said.contains("at most 8 MiB of JSON"), "{said}");
    let out = cli(&api, &["status", &id, "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let task: taskhost::wire::Task = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((task.output_bytes().as_deref(), task.output.base64.as_deref()), (Some(&b"HI"[..]), Some("SEk=")));
    // Without `--json`: the record for people, a field a line.
    let out = cli(&api, &["status", &id]).await;
    let shown = text(&out.stdout);
    let field = |key: &str| shown.lines().find_map(|l| l.strip_prefix(key)).map(str::trim_start).unwrap_or_default();
    assert_eq!((field("id"), field("state"), field("output")), (id.as_str(), "completed", "HI"), "{shown}");
    assert!(field("plugin").starts_with("uppercase@1 (sha256:") && field("attempts").starts_with("1 of "), "{shown}");
    let out = cli(&api, &["tasks"]).await;
    let listed = text(&out.stdout);
    assert!(listed.lines().any(|l| l.starts_with(&id) && l.contains("uppercase@1")), "{listed}");
    let out = cli(&api, &["plugins", "list"]).await;
    assert!(text(&out.stdout).lines().any(|l| l.starts_with("uppercase ")), "{}", text(&out.stdout));
    let out = cli(&api, &["plugins", "show", "uppercase"]).await;
    let shown = text(&out.stdout);
    assert!(shown.lines().any(|l| l.starts_with("1 ") && l.contains("live") && l.contains("completed 1")), "{shown}");
    let out = cli(&api, &["plugins", "show", "uppercase", "--json"]).await;
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (shown["versions"][0]["state"].as_str(), shown["versions"][0]["tasks"]["completed"].as_u64()),
        (Some("live"), Some(1))
    );
    let out = cli(&api, &["queues", "set", "bulk", "--weight", "2", "--json"]).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!({"name": "bulk", "concurrency": null, "weight": 2, "retain_for": null, "retain_count": null})
    );
    let out = cli(&api, &["queues", "list", "--json"]).await;
    let queues: taskhost::wire::QueueList = serde_json::from_slice(&out.stdout).unwrap();
    assert!(queues.queues.iter().any(|q| q.name == "bulk" && q.weight == 2), "{queues:?}");
    let out = cli(&api, &["queues", "list"]).await;
    let table = text(&out.stdout);
    assert!(table.starts_with("QUEUE ") && table.lines().any(|l| l.starts_with("bulk ")), "{table}");

    // `hosts`: on redb, the one host answering, live, with its slots.
    let out = cli(&api, &["hosts", "--json"]).await;
    let hosts: taskhost::wire::HostList = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hosts.hosts.len(), 1, "{hosts:?}");
    let host = &hosts.hosts[0];
    assert!(host.this && host.live && host.report.as_ref().is_some_and(|r| r.load.slots > 0), "{hosts:?}");
    let out = cli(&api, &["hosts"]).await;
    let table = text(&out.stdout);
    assert!(
        table.starts_with("HOST ") && table.lines().nth(1).is_some_and(|l| l.starts_with(&format!("{} *", host.id))),
        "{table}"
    );

    // Refusals print the error body's code and message.
    let out = cli(&api, &["cancel", &id]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("error: conflict: "), "{}", text(&out.stderr));
    let out = cli(&api, &["submit", "nope"]).await;
    assert!(text(&out.stderr).contains("error: unknown_plugin: unknown plugin `nope`"), "{}", text(&out.stderr));

    // A server that answers something else is named, with what it sent.
    let odd = axum::Router::new().fallback(|| async { axum::Json(json!({"id": 5})) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, odd).into_future());
    let elsewhere = Api {
        base,
        http: api.http.clone(),
        token: api.token.clone(),
        engine: api.engine.clone(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let out = cli(&elsewhere, &["status", &id]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("answered GET /v1/tasks/{id} with something unexpected")), "{stderr}");
    assert!(stderr.contains(r#"The answer began: {"id":5}"#), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pages_tasks_newest_first_and_passes_every_submit_flag() {
    let api = api().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let input = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(input.path(), format!("task {n}")).unwrap();
        let out =
            cli(&api, &["submit", "uppercase", "--queue", "paged", "--input", input.path().to_str().unwrap()]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        ids.push(text(&out.stdout).trim().to_owned());
    }
    // Newest first, a page of two, and how many more.
    let out = cli(&api, &["tasks", "--queue", "paged", "--limit", "2"]).await;
    let listed = text(&out.stdout);
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines[0].starts_with("ID ") && lines[0].contains("SUBMITTED"), "{listed}");
    assert!(lines[1].starts_with(&ids[4]) && lines[2].starts_with(&ids[3]), "{listed}");
    assert_eq!(lines[3], format!("3 more: --cursor {}", ids[3]), "{listed}");
    let out = cli(&api, &["tasks", "--queue", "paged", "--limit", "2", "--cursor", &ids[3]]).await;
    let listed = text(&out.stdout);
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines[1].starts_with(&ids[2]) && lines[2].starts_with(&ids[1]), "{listed}");
    assert_eq!(lines[3], format!("1 more: --cursor {}", ids[1]), "{listed}");
    let out = cli(&api, &["tasks", "--queue", "paged", "--oldest", "--json"]).await;
    let page: taskhost::wire::TaskPage = serde_json::from_slice(&out.stdout).unwrap();
    let oldest: Vec<String> = page.tasks.iter().map(|t| t.id.to_string()).collect();
    assert_eq!((oldest, page.more, page.next_cursor), (ids.clone(), Some(0), None));
    let out = cli(&api, &["tasks", "--queue", "none-here"]).await;
    assert!(text(&out.stdout).ends_with("no tasks\n"), "{}", text(&out.stdout));
    let (status, refused) = api.get("/v1/tasks?order=sideways").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("unknown order `sideways`"), "{refused}");

    // Every limit and timing flag reaches the record.
    let out = cli(
        &api,
        &[
            "submit",
            "uppercase",
            "--timeout",
            "7s",
            "--fuel",
            "123456789",
            "--memory",
            "32MiB",
            "--delay",
            "1h",
            "--callback",
            "https://example.com/hook",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let (_, task) = api.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(task["limits"]["timeout_ms"], 7000, "{task}");
    assert_eq!(task["limits"]["fuel"], 123_456_789u64, "{task}");
    assert_eq!(task["limits"]["memory_bytes"], 32u64 << 20, "{task}");
    assert_eq!(task["callback_url"], "https://example.com/hook", "{task}");
    assert_eq!(task["state"], "pending", "{task}");
    assert!(task["next_run_at"].is_string(), "delayed: {task}");
    let out = cli(&api, &["submit", "uppercase", "--run-at", "2031-01-01T00:00:00Z"]).await;
    let (_, task) = api.get(&format!("/v1/tasks/{}", text(&out.stdout).trim())).await;
    assert!(task["next_run_at"].as_str().unwrap().starts_with("2031-01-01T00:00:00"), "{task}");
    let out = cli(&api, &["submit", "uppercase", "--delay", "1m", "--run-at", "2031-01-01T00:00:00Z"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // A dead task retried on a fixed version of its plugin.
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(input.path(), "permanent:broken").unwrap();
    let out = cli(&api, &["submit", "fail", "--wait", "--input", input.path().to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let (_, page) = api.get("/v1/tasks?state=failed&order=newest&limit=1").await;
    let dead = page["tasks"][0]["id"].as_str().unwrap().to_owned();
    api.engine.add_plugin("fail", UPPERCASE.bytes(), Some("2".into()), true).await.unwrap();
    let out = cli(&api, &["retry", &dead, "--version", "9"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no live version `9`"), "{}", text(&out.stderr));
    let out = cli(&api, &["retry", &dead, "--version", "2"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ended = api.engine.wait(dead.parse().unwrap(), Duration::from_secs(30)).await.unwrap();
    assert_eq!((ended.state, ended.plugin_version.as_str()), (TaskState::Completed, "2"));
    let out = cli(&api, &["history", &dead]).await;
    assert!(text(&out.stdout).contains("on version 2"), "{}", text(&out.stdout));
}

#[tokio::test]
async fn recent_stats_count_ended_tasks_and_their_times() {
    let api = api().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (status, created) = api.post_json("/v1/tasks", r#"{"plugin": "uppercase", "input": "x"}"#).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        api.wait_done(id).await;
    }
    // A sample is taken every 2 s: one after the tasks ended counts them.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let stats = loop {
        let (status, stats) = api.get("/v1/stats/recent").await;
        assert_eq!(status, StatusCode::OK, "{stats}");
        if stats["samples"].as_array().unwrap().last().is_some_and(|s| s["ended"] == 5) {
            break stats;
        }
        assert!(std::time::Instant::now() < deadline, "no sample counts the 5 tasks: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stats["every_ms"], 2000);
    let samples = stats["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "the first sample is taken at start: {stats}");
    let (first, last) = (&samples[0], samples.last().unwrap());
    assert_eq!((first["ended"].as_u64(), last["completed"].as_u64()), (Some(0), Some(5)));
    assert_eq!((last["runs"].as_u64(), last["queue_waits"].as_u64()), (Some(5), Some(5)));
    assert!(last["run_us"].as_u64().unwrap() > 0);
    for pair in samples.windows(2) {
        assert!(pair[0]["at_ms"].as_u64() < pair[1]["at_ms"].as_u64(), "{stats}");
        assert!(pair[0]["ended"].as_u64() <= pair[1]["ended"].as_u64(), "{stats}");
    }

    // The execution slots now: the engine's 8, none busy; then one held
    // by a sleeping task while it runs, and free again once it ended.
    assert_eq!((stats["workers"].as_u64(), stats["busy"].as_u64()), (Some(8), Some(0)), "{stats}");
    let (_, sleeper) = api.post_json("/v1/tasks", r#"{"plugin": "sleep", "input": 1500}"#).await;
    let sleeper = sleeper["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, stats) = api.get("/v1/stats/recent").await;
        if stats["busy"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the sleeping task never shows as a busy slot: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.wait_done(&sleeper).await;
    let (_, stats) = api.get("/v1/stats/recent").await;
    assert_eq!((stats["workers"].as_u64(), stats["busy"].as_u64()), (Some(8), Some(0)), "{stats}");
}

/// `submit --batch`: each line of the file a task; what was refused is
/// named by its line, and `--json` prints one answer per task with its line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_names_each_refusal_by_its_line() {
    let api = api().await;
    let jsonl = tempfile::NamedTempFile::new().unwrap();
    let path = jsonl.path().to_str().unwrap();
    std::fs::write(jsonl.path(), "{\"input\": \"a\"}\n\n{\"plugin\": \"nope\"}\n{\"input\": \"b\", \"priority\": 9}\n")
        .unwrap();
    let out = cli(&api, &["submit", "uppercase", "--batch", path]).await;
    assert_eq!(out.status.code(), Some(1), "one refused: {out:?}");
    let ids: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("2 accepted, 1 rejected"), "{stderr}");
    assert!(stderr.contains(&format!("rejected: {path}:3: \"unknown_plugin\": ")), "{stderr}");
    for id in &ids {
        assert_eq!(api.wait_done(id).await["state"], "completed");
    }

    let out = cli(&api, &["submit", "uppercase", "--batch", path, "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let items: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let lines: Vec<u64> = items.iter().map(|i| i["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [1, 3, 4], "{items:?}");
    assert_eq!(items[1]["error"]["code"], "unknown_plugin", "{items:?}");
    let (_, fourth) = api.get(&format!("/v1/tasks/{}", items[2]["id"].as_str().unwrap())).await;
    assert_eq!((&fourth["priority"], &fourth["plugin"]), (&json!(9), &json!("uppercase")), "{fourth}");

    // Not JSON: named by its line, and nothing is submitted.
    std::fs::write(jsonl.path(), "{\"input\": \"a\"}\n{oops\n").unwrap();
    let (_, before) = api.get("/v1/tasks?limit=1000").await;
    let out = cli(&api, &["submit", "uppercase", "--batch", path]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains(&format!("{path}:2: not JSON")), "{}", text(&out.stderr));
    let (_, after) = api.get("/v1/tasks?limit=1000").await;
    assert_eq!(before["tasks"].as_array().unwrap().len(), after["tasks"].as_array().unwrap().len());
}

/// A task cancelled while it waits is out of its queue's and its
/// tenant's ready counts at once, not when its turn would have come.
#[tokio::test]
async fn a_cancelled_waiting_task_leaves_the_ready_counts_at_once() {
    let api = api().await;
    let put = api.http.put(format!("{}/v1/queues/held", api.base)).json(&json!({"concurrency": 1}));
    assert_eq!(api.send(put).await.0, StatusCode::OK);
    let (_, sleeper) = api.post_json("/v1/tasks", r#"{"plugin": "sleep", "input": 2000, "queue": "held"}"#).await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let (_, task) = api.post_json("/v1/tasks", r#"{"plugin": "uppercase", "input": "x", "queue": "held"}"#).await;
        waiting.push(task["id"].as_str().unwrap().to_owned());
    }
    let ready = |queues: &Value| {
        queues["queues"].as_array().unwrap().iter().find(|q| q["name"] == "held").unwrap()["ready"].clone()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, queues) = api.get("/v1/queues").await;
        if ready(&queues) == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the three never waited behind the sleeper: {queues}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &waiting[..2] {
        let (status, cancelled) = api.post_json(&format!("/v1/tasks/{id}/cancel"), "{}").await;
        assert_eq!((status, cancelled["state"].as_str()), (StatusCode::OK, Some("cancelled")), "{cancelled}");
    }
    let (_, queues) = api.get("/v1/queues").await;
    assert_eq!(ready(&queues), 1, "{queues}");
    let (_, tenant) = api.get("/v1/tenants/default").await;
    assert_eq!(tenant["usage"]["ready"], 1, "{tenant}");
    // The one left runs once the sleeper is done; the cancelled never do.
    assert_eq!(api.wait_done(&waiting[2]).await["state"], "completed");
    assert_eq!(api.wait_done(sleeper["id"].as_str().unwrap()).await["state"], "completed");
    for id in &waiting[..2] {
        let (_, task) = api.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!((&task["state"], &task["started_at"]), (&json!("cancelled"), &Value::Null), "{task}");
    }
    let (_, queues) = api.get("/v1/queues").await;
    assert_eq!((ready(&queues), queues["queues"][0]["running"].clone()), (json!(0), json!(0)), "{queues}");
}

/// A reader that goes away (`taskhost plugins list | head -0`) ends the
/// command quietly, as Unix tools end, never with a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_reader_is_gone_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let api = api().await;
    let jsonl = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(jsonl.path(), "{\"input\": \"a\"}\n".repeat(50)).unwrap();
    let batch = ["submit", "uppercase", "--batch", jsonl.path().to_str().unwrap()];
    for args in [&["plugins", "list"][..], &["tasks"], &batch] {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (base, token) = (api.base.clone(), api.token.clone());
        let out = tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_taskhost"))
                .args(&args)
                .env("TASKHOST_SERVER", base)
                .env("TASKHOST_TOKEN", token)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // The reader is gone before the command has written anything.
            drop(child.stdout.take());
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        let quiet = out.status.success() || out.status.signal() == Some(libc::SIGPIPE);
        assert!(quiet, "{:?}: {stderr}", out.status);
    }
}

/// `taskhost flow --submit spec.json --wait` follows the flow to its end
/// and exits by how it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_wait_follows_a_declared_flow_to_its_end() {
    let api = api().await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    let spec =
        json!({"input": "hi", "steps": [{"id": "one", "plugin": "uppercase"}, {"id": "two", "plugin": "uppercase"}]});
    std::fs::write(&good, spec.to_string()).unwrap();
    let out = cli(&api, &["flow", "--submit", good.to_str().unwrap(), "--wait", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let flow: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(flow["state"], "completed", "{flow}");

    let bad = dir.path().join("bad.json");
    let spec = json!({"steps": [{"id": "breaks", "plugin": "fail", "input": "permanent:no"}, {"id": "after", "plugin": "uppercase"}]});
    std::fs::write(&bad, spec.to_string()).unwrap();
    let out = cli(&api, &["flow", "--submit", bad.to_str().unwrap(), "--wait", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "a failed flow exits 1: {}", text(&out.stderr));
    let flow: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout {:?}, stderr {}", text(&out.stdout), text(&out.stderr)));
    assert_eq!(flow["state"], "failed", "{flow}");
}
