//! Hostile values and races through the real binary on loopback: times
//! past the longest delay, names that are not one URL path segment, a
//! client's key spelled like a flow child's, concurrent retries of one
//! task, deleting a version while tasks are submitted to it, and queues
//! past the limit.

use crate::recovery::{Server, free_port, get_json, start_with, upload};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use taskhost_test_artifacts::{FAIL, FLOW_PROBE, SLEEP, UPPERCASE};

struct Host {
    server: Server,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

/// A server with `extra` arguments and the plugins these tests use.
async fn host(extra: &[&str]) -> Host {
    let data = tempfile::tempdir().unwrap();
    let server = start_with(data.path(), free_port(), extra).await;
    let http = crate::admin_client(data.path()).await;
    for artifact in [UPPERCASE, FAIL, FLOW_PROBE, SLEEP] {
        upload(&http, &server.base, artifact.name, artifact.bytes()).await;
    }
    Host { server, http, _data: data }
}

impl Host {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    async fn get(&self, path: &str) -> Value {
        get_json(&self.http, self.url(path)).await
    }

    /// Waits (at most 60 s) until the task has ended; returns its record.
    async fn ended(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let task = self.get(&format!("/v1/tasks/{id}")).await;
            if ["completed", "failed", "cancelled"].contains(&task["state"].as_str().unwrap_or("")) {
                return task;
            }
            assert!(Instant::now() < deadline, "task {id} did not end: {task}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A running `sleep` task in queue `gate` (concurrency 1): what is
    /// queued behind it waits until it is cancelled.
    async fn close_gate(&self) -> String {
        let request = self.http.put(self.url("/v1/queues/gate")).json(&json!({"concurrency": 1}));
        assert!(self.send(request).await.0.is_success());
        let blocker = self.submit(json!({"plugin": "sleep", "input": 60000, "queue": "gate"})).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get(&format!("/v1/tasks/{blocker}")).await["state"] != "running" {
            assert!(Instant::now() < deadline, "the blocker never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        blocker
    }

    async fn open_gate(&self, blocker: &str) {
        let (status, body) = self.post(&format!("/v1/tasks/{blocker}/cancel"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    async fn submit(&self, body: Value) -> String {
        let (status, answer) = self.post("/v1/tasks", body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer["id"].as_str().unwrap().to_owned()
    }
}

fn refused(status: StatusCode, body: &Value, expected: u16, code: &str, part: &str) {
    assert_eq!(status.as_u16(), expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(part), "`{message}` lacks `{part}`");
}

/// A delay of about 10^15 ms (or a `run_at` as far) is refused at the
/// edge, from the API and from a plugin's child alike, so no view of a
/// task meets a time it cannot write.
#[tokio::test]
async fn times_past_the_longest_delay_are_refused_from_clients_and_plugins() {
    let host = host(&[]).await;
    let huge = 1_000_000_000_000_000_u64;
    let (status, body) = host.post("/v1/tasks", json!({"plugin": "uppercase", "delay_ms": huge})).await;
    refused(status, &body, 400, "invalid_request", "delay_ms 1000000000000000 is out of range");
    let (status, body) = host.post("/v1/tasks", json!({"plugin": "uppercase", "run_at": "9999-12-31T00:00:00Z"})).await;
    refused(status, &body, 400, "invalid_request", "is more than 36,500 days ahead");
    let (status, body) =
        host.post("/v1/flows", json!({"steps": {"plugin": "uppercase"}, "repeat": {"every_ms": huge * 10}})).await;
    refused(status, &body, 400, "invalid_request", "repeat.every_ms");
    // A plugin's child: the submission returns the refusal to the plugin.
    let script = json!([{"submit": {"plugin": "uppercase", "input": "x", "delay_ms": huge}}]);
    let id = host.submit(json!({"plugin": "flow-probe", "input": script})).await;
    let parent = host.ended(&id).await;
    assert_eq!(parent["state"], "completed", "{parent}");
    let error = parent["output"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("delay_ms 1000000000000000 is out of range"), "{parent}");
    // Every view still renders: the record, the list, the flow.
    let (status, page) = host.send(host.http.get(host.url("/v1/tasks"))).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "nothing refused was stored: {page}");
    let view = host.get(&format!("/v1/flows/{id}")).await;
    assert_eq!(view["tasks"]["total"], 1, "{view}");
}

/// `.`, `..` and other names that are not one safe URL path segment and
/// file name are refused wherever a name is chosen.
#[tokio::test]
async fn names_that_are_not_one_path_segment_are_refused_everywhere() {
    let host = host(&[]).await;
    for name in [".hidden", "-rf", "_x"] {
        let request = host.http.post(host.url(&format!("/v1/plugins/{name}"))).body(UPPERCASE.bytes());
        let (status, body) = host.send(request).await;
        refused(status, &body, 400, "invalid_request", &format!("invalid plugin name `{name}`"));
        let request = host.http.put(host.url(&format!("/v1/plugins/{name}/manifest"))).body("");
        let (status, body) = host.send(request.header("content-type", "application/toml")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        let request = host.http.put(host.url(&format!("/v1/queues/{name}"))).json(&json!({"weight": 1}));
        let (status, body) = host.send(request).await;
        refused(status, &body, 400, "invalid_request", &format!("invalid queue name `{name}`"));
    }
    for name in [".", "..", ".hidden", "a/b"] {
        let (status, body) = host.post("/v1/tasks", json!({"plugin": "uppercase", "queue": name})).await;
        refused(status, &body, 400, "invalid_request", &format!("invalid queue name `{name}`"));
        let flow = json!({"steps": [{"id": name, "plugin": "uppercase"}]});
        let (status, body) = host.post("/v1/flows", flow).await;
        refused(status, &body, 400, "invalid_request", &format!("invalid step id `{name}`"));
        let (status, body) = host.post("/v1/models", json!({"name": name, "path": "m.onnx"})).await;
        refused(status, &body, 400, "invalid_request", &format!("invalid model name `{name}`"));
    }
    for version in [".", ".."] {
        let request =
            host.http.post(host.url("/v1/plugins/tool")).query(&[("version", version)]).body(UPPERCASE.bytes());
        let (status, body) = host.send(request).await;
        refused(status, &body, 400, "invalid_request", &format!("invalid version `{version}`"));
    }
    // A queue `..` named by a plugin's child is refused to the plugin.
    let script = json!([{"submit": {"plugin": "uppercase", "input": "x", "queue": ".."}}]);
    let id = host.submit(json!({"plugin": "flow-probe", "input": script})).await;
    let parent = host.ended(&id).await;
    assert!(parent["output"][0]["error"].as_str().unwrap_or_default().contains("invalid queue name `..`"), "{parent}");
    let plugins = host.get("/v1/plugins").await;
    let names: Vec<&str> = plugins["plugins"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names.len(), 4, "only the uploaded plugins: {names:?}");
}

/// A client that registers the key a flow will give its child
/// (`flow:<flow id>:<key>`) before the child exists does not take it: the
/// child is created and runs, and the client's task stays the client's.
#[tokio::test]
async fn a_client_key_spelled_like_a_flow_childs_does_not_hijack_the_child() {
    let host = host(&[]).await;
    // The parent waits behind a running task in a queue of one, so the
    // client registers the key before the parent submits its child.
    let blocker = host.close_gate().await;
    let script = json!([{"submit": {"plugin": "uppercase", "input": "child", "key": "step-1"}}]);
    let parent = host.submit(json!({"plugin": "flow-probe", "input": script, "queue": "gate"})).await;
    let key = format!("flow:{parent}:step-1");
    let client = host.submit(json!({"plugin": "uppercase", "input": "client", "idempotency_key": key})).await;
    host.open_gate(&blocker).await;
    let done = host.ended(&parent).await;
    let child = done["output"][0].as_str().unwrap_or_default().to_owned();
    assert!(!child.is_empty() && child != client, "the child is its own task: {done}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let view = host.get(&format!("/v1/flows/{parent}")).await;
        if view["state"] != "running" {
            break view;
        }
        assert!(Instant::now() < deadline, "the flow did not end: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(view["tasks"]["total"], 2, "the parent and its child: {view}");
    let ran = host.ended(&child).await;
    // `CHILD`, raw bytes (not JSON), so base64.
    let output = ran["output_base64"].as_str();
    assert_eq!((output, ran["parent_id"].as_str()), (Some("Q0hJTEQ="), Some(parent.as_str())), "{ran}");
    let theirs = host.ended(&client).await;
    assert_eq!((theirs["output"].as_str(), theirs["parent_id"].as_str()), (Some("CLIENT"), None), "{theirs}");
}

/// Twenty concurrent retries of one failed task: exactly one succeeds, the
/// others lost the race and answer 409 (never 500).
#[tokio::test]
async fn concurrent_retries_of_one_failed_task_have_one_winner() {
    let host = host(&[]).await;
    // `permanent:no` as raw bytes (a JSON string would arrive quoted).
    let failing = json!({"plugin": "fail", "input_base64": "cGVybWFuZW50Om5v", "max_attempts": 1, "queue": "gate"});
    let id = host.submit(failing).await;
    assert_eq!(host.ended(&id).await["state"], "failed");
    // The winner's task waits behind the gate: it cannot fail again (and
    // be re-submittable again) while the others try.
    let blocker = host.close_gate().await;
    let retry = format!("/v1/tasks/{id}/retry");
    let retries = (0..20).map(|_| host.post(&retry, json!({})));
    let answers = futures::future::join_all(retries).await;
    let won = answers.iter().filter(|(status, _)| status.is_success()).count();
    assert_eq!(won, 1, "{answers:?}");
    for (status, body) in answers.iter().filter(|(status, _)| !status.is_success()) {
        assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");
    }
    host.open_gate(&blocker).await;
    let again = host.ended(&id).await;
    assert_eq!((again["state"].as_str(), again["attempts"].as_u64()), (Some("failed"), Some(1)), "{again}");
}

/// Deleting a version while tasks are submitted to it: each delete is
/// sent just behind a submission (so it lands while the submission
/// commits); every submission is either accepted and runs, or refused,
/// and no accepted task fails because its version went away.
#[tokio::test]
async fn deleting_a_version_while_tasks_are_submitted_to_it_never_strands_a_task() {
    let host = host(&[]).await;
    upload(&host.http, &host.server.base, "tool", UPPERCASE.bytes()).await;
    let delete = || host.send(host.http.delete(host.url("/v1/plugins/tool/versions/1")));
    let mut accepted = Vec::new();
    let mut deleted = false;
    for i in 0..200 {
        let submit = host.post("/v1/tasks", json!({"plugin": "tool@1", "input": format!("t{i}")}));
        let behind = async {
            tokio::task::yield_now().await;
            delete().await
        };
        let ((status, body), (deleting, refusal)) = tokio::join!(submit, behind);
        match status.as_u16() {
            201 => accepted.push(body["id"].as_str().unwrap().to_owned()),
            404 => assert_eq!(body["error"]["code"], "unknown_plugin", "{body}"),
            _ => panic!("{status}: {body}"),
        }
        if deleting.is_success() {
            deleted = true;
            break;
        }
        refused(deleting, &refusal, 409, "conflict", "is used by");
    }
    for id in &accepted {
        let task = host.ended(id).await;
        assert_eq!(task["state"], "completed", "an accepted task was stranded: {task}");
    }
    if !deleted {
        let (status, body) = delete().await;
        assert!(status.is_success(), "once its tasks ended the version is deleted: {body}");
    }
    let (status, body) = host.post("/v1/tasks", json!({"plugin": "tool@1"})).await;
    refused(status, &body, 404, "unknown_plugin", "tool");
}

/// Queues past `--max-queues` are refused, from the API and from plugins'
/// children, so `/metrics` stays bounded however many names are tried.
#[tokio::test]
async fn queues_past_the_limit_are_refused_and_metrics_stay_bounded() {
    let host = host(&["--max-queues", "20"]).await;
    let tasks: Vec<Value> = (0..100).map(|i| json!({"plugin": "uppercase", "queue": format!("q{i}")})).collect();
    let (status, answer) = host.post("/v1/tasks:batch", json!({"tasks": tasks})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let results = answer["results"].as_array().unwrap();
    let accepted: Vec<usize> = (0..results.len()).filter(|&i| results[i]["id"].is_string()).collect();
    assert_eq!(accepted.len(), 20, "{answer}");
    let known = format!("q{}", accepted[0]);
    let refusal = results.iter().find(|r| r["status"].is_u64()).unwrap();
    assert_eq!((refusal["status"].as_u64(), refusal["error"]["code"].as_str()), (Some(409), Some("limit_reached")));
    assert!(refusal["error"]["message"].as_str().unwrap().contains("max_queues = 20"), "{refusal}");
    let request = host.http.put(host.url("/v1/queues/another")).json(&json!({"weight": 2}));
    let (status, body) = host.send(request).await;
    refused(status, &body, 409, "limit_reached", "queue `another` would be a new queue");
    // A known queue still takes tasks and settings.
    host.submit(json!({"plugin": "uppercase", "queue": known})).await;
    let request = host.http.put(host.url(&format!("/v1/queues/{known}"))).json(&json!({"weight": 2}));
    assert!(host.send(request).await.0.is_success());
    // One task naming 200 queues for its children: refused past the limit.
    let children: Vec<Value> =
        (0..200).map(|i| json!({"submit": {"plugin": "uppercase", "queue": format!("child-{i}")}})).collect();
    let id = host.submit(json!({"plugin": "flow-probe", "input": children, "queue": known})).await;
    let parent = host.ended(&id).await;
    let outputs = parent["output"].as_array().unwrap();
    assert!(outputs.iter().all(|o| o["error"].as_str().is_some_and(|e| e.contains("max_queues"))), "{parent}");
    let metrics = host.http.get(host.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let queues: std::collections::HashSet<&str> =
        metrics.lines().filter_map(|l| l.split("queue=\"").nth(1)?.split('"').next()).collect();
    assert!(queues.len() <= 20, "{} queues in /metrics: {queues:?}", queues.len());
    assert!(metrics.len() < 64 << 10, "/metrics is {} bytes", metrics.len());
}
