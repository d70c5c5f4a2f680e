//! What tasks log and print under the server: each attempt's lines kept
//! with the task (in order, within a cap that keeps the first and the
//! latest lines), shown over HTTP and by `taskhost logs`, and followed as
//! they are written.

use crate::engine::engine_with;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use taskhost::engine::{Engine, EngineConfig};
use taskhost_test_artifacts::{CHATTER, LOG_FLOOD, PANIC};

struct Server {
    base: String,
    token: String,
    http: reqwest::Client,
    _engine: Engine,
    _dir: tempfile::TempDir,
}

async fn server(tweak: impl FnOnce(&mut EngineConfig)) -> Server {
    let (engine, dir) = engine_with(tweak).await;
    for artifact in [CHATTER, LOG_FLOOD, PANIC] {
        engine.add_plugin(artifact.name, artifact.bytes(), None, true).await.unwrap();
    }
    let (base, token) = crate::serve_api(&engine, dir.path()).await;
    Server { base, http: crate::authed(&token), token, _engine: engine, _dir: dir }
}

impl Server {
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        (response.status(), response.json().await.unwrap_or(Value::Null))
    }

    async fn submit(&self, body: Value) -> String {
        let response = self.http.post(format!("{}/v1/tasks", self.base)).json(&body).send().await.unwrap();
        let status = response.status();
        let created: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["id"].as_str().unwrap().to_owned()
    }

    async fn ended(&self, id: &str) -> Value {
        for _ in 0..1500 {
            let (_, task) = self.get(&format!("/v1/tasks/{id}")).await;
            if ["completed", "failed", "cancelled"].contains(&task["state"].as_str().unwrap_or("")) {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("task {id} did not end");
    }

    async fn cli(&self, args: &[&str]) -> std::process::Output {
        crate::client_cli(&self.base, &self.token, args).await
    }
}

/// The texts of a logs answer's lines.
fn texts(logs: &Value) -> Vec<String> {
    logs["lines"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap().to_owned()).collect()
}

/// What chatter writes in attempt `attempt` (its own count) over `rounds`.
fn chatter(attempt: u32, rounds: u32) -> Vec<String> {
    (1..=rounds)
        .flat_map(|i| {
            [
                format!("attempt {attempt} log {i}"),
                format!("attempt {attempt} out {i}"),
                format!("attempt {attempt} err {i}"),
            ]
        })
        .collect()
}

#[tokio::test]
async fn each_attempts_lines_are_kept_in_order_shown_and_not_replaced_by_a_manual_retry() {
    let s = server(|_| {}).await;
    let id = s.submit(json!({"plugin": "chatter", "input": "2:0:2", "max_attempts": 3})).await;
    let done = s.ended(&id).await;
    assert_eq!((&done["state"], &done["attempts"]), (&json!("completed"), &json!(2)), "{done}");

    let (status, latest) = s.get(&format!("/v1/tasks/{id}/logs")).await;
    assert_eq!(status, StatusCode::OK, "{latest}");
    assert_eq!((&latest["attempt"], &latest["attempts"], &latest["live"]), (&json!(2), &json!(2), &json!(false)));
    assert_eq!(texts(&latest), chatter(2, 2));
    let lines = latest["lines"].as_array().unwrap();
    let streams: Vec<&str> = lines.iter().map(|l| l["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, ["log", "stdout", "stderr", "log", "stdout", "stderr"]);
    assert_eq!(lines[0]["level"], "warn");
    assert!(lines[1].get("level").is_none(), "{}", lines[1]);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert!(lines[0]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(latest["dropped"], Value::Null);

    let (_, first) = s.get(&format!("/v1/tasks/{id}/logs?attempt=1")).await;
    assert_eq!(texts(&first), chatter(1, 2), "the failed attempt's lines are kept too");

    for (query, part) in [("attempt=3", "there is no attempt 3"), ("attempt=x", "attempt"), ("nonsense=1", "nonsense")]
    {
        let (status, body) = s.get(&format!("/v1/tasks/{id}/logs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(part), "{query}: {body}");
    }
    let (status, _) = s.get("/v1/tasks/0190a0a0-0000-7000-8000-000000000000/logs").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let out = s.cli(&["logs", &id, "--attempt", "1"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("warn   attempt 1 log 1"), "{text}");
    assert!(text.contains("stderr attempt 1 err 2"), "{text}");
    let out = s.cli(&["logs", &id, "--json"]).await;
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(texts(&json), chatter(2, 2));

    // A manual retry starts the task's attempts again from 1; its lines
    // follow the earlier attempts' rather than replacing them.
    let id = s.submit(json!({"plugin": "chatter", "input": "1:0:2", "max_attempts": 1})).await;
    assert_eq!(s.ended(&id).await["state"], "failed");
    let out = s.cli(&["retry", &id]).await;
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("pending"), "{out:?}");
    let again = s.ended(&id).await;
    let out = s.cli(&["history", &id]).await;
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = history.lines().collect();
    assert!(lines[0].starts_with("AT ") && lines[0].contains("MOVE"), "{history}");
    assert!(lines[1].contains("new → pending"), "{history}");
    assert!(lines.iter().filter(|l| l.contains("pending → running")).count() == 2, "{history}");
    assert!(lines.last().unwrap().contains("running → failed"), "{history}");
    assert_eq!((&again["state"], &again["attempts"]), (&json!("failed"), &json!(1)), "{again}");
    let (_, latest) = s.get(&format!("/v1/tasks/{id}/logs")).await;
    assert_eq!((&latest["attempt"], &latest["attempts"]), (&json!(2), &json!(2)));
    assert_eq!(texts(&latest), chatter(1, 1));
    let (_, first) = s.get(&format!("/v1/tasks/{id}/logs?attempt=1")).await;
    assert_eq!(texts(&first), chatter(1, 1));
}

/// The events of an SSE answer, read until the `end` event, each with the
/// task's state when it arrived.
async fn follow(s: &Server, id: &str, query: &str) -> Vec<(Value, String)> {
    let mut response = s.http.get(format!("{}/v1/tasks/{id}/logs?follow=true{query}", s.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Vec::new();
    let mut buffer = String::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk()).await.unwrap().unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk.expect("the stream ends after the end event")));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            let event: Value = serde_json::from_str(data).unwrap();
            let (_, task) = s.get(&format!("/v1/tasks/{id}")).await;
            let ended = event.get("end").is_some();
            events.push((event, task["state"].as_str().unwrap().to_owned()));
            if ended {
                return events;
            }
        }
    }
}

#[tokio::test]
async fn a_followed_task_streams_its_lines_as_they_are_written_attempt_after_attempt() {
    let s = server(|_| {}).await;
    let id = s.submit(json!({"plugin": "chatter", "input": "4:150:2", "max_attempts": 3})).await;
    let events = follow(&s, &id, "").await;
    let lines: Vec<&Value> = events.iter().filter_map(|(e, _)| e.get("line")).collect();
    let texts: Vec<&str> = lines.iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(texts, [chatter(1, 4), chatter(2, 4)].concat().iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        events.iter().any(|(e, state)| e.get("line").is_some() && state == "running"),
        "lines arrive while the task runs, not after: {events:?}"
    );
    let markers: Vec<&Value> = events.iter().map(|(e, _)| e).filter(|e| e.get("line").is_none()).collect();
    assert_eq!(markers, [&json!({"attempt": {"attempt": 2}}), &json!({"end": {"state": "completed", "attempts": 2}})]);

    // Following an ended task gives its latest attempt's lines and the end.
    let again = follow(&s, &id, "").await;
    assert_eq!(again.len(), 13, "{again:?}");
    let from_first = follow(&s, &id, "&attempt=1").await;
    assert_eq!(from_first.len(), 26, "{from_first:?}");

    // The CLI follows too, and its exit says how the task ended.
    let id = s.submit(json!({"plugin": "chatter", "input": "3:100:2", "max_attempts": 2})).await;
    let out = s.cli(&["logs", &id, "--follow", "--attempt", "1"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for part in ["stdout attempt 1 out 1", "── attempt 2 ──", "stderr attempt 2 err 3", "ended completed after 2"]
    {
        assert!(text.contains(part), "`{part}` missing from:\n{text}");
    }
    let id = s.submit(json!({"plugin": "chatter", "input": "1:0:9", "max_attempts": 1})).await;
    s.ended(&id).await;
    let out = s.cli(&["logs", &id, "-f"]).await;
    assert_eq!(out.status.code(), Some(1), "a failed task: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ended failed after 1"), "{out:?}");
}

#[tokio::test]
async fn a_panic_s_location_is_in_the_error_and_a_flood_keeps_its_first_and_last_lines() {
    let s = server(|c| c.log_keep_bytes = 4096).await;
    let id = s.submit(json!({"plugin": "panic", "input": "order 7"})).await;
    let failed = s.ended(&id).await;
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("plugin gave up on"), "{failed}");
    assert!(message.contains(" at ") && message.contains("src/lib.rs:"), "the panic's location: {message}");
    let (_, logs) = s.get(&format!("/v1/tasks/{id}/logs")).await;
    assert!(texts(&logs).iter().any(|t| t.contains("panicked at")), "{logs}");
    // The failure shows the attempt's last stderr lines, and so does
    // `taskhost status`.
    let tail = failed["error"]["stderr_tail"].as_array().unwrap();
    assert!(tail.iter().any(|t| t.as_str().unwrap().contains("panicked at")), "{failed}");
    let out = s.cli(&["status", &id]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stderr (the failed attempt's last lines):\n  ") && text.contains("panicked at"), "{text}");

    let id = s.submit(json!({"plugin": "log-flood", "input_base64": "c3RkZXJy"})).await;
    let flooded = s.ended(&id).await;
    assert_eq!(flooded["error"]["class"], "output too large", "{flooded}");
    let (_, logs) = s.get(&format!("/v1/tasks/{id}/logs")).await;
    let lines = logs["lines"].as_array().unwrap();
    let dropped = &logs["dropped"];
    assert!(dropped["lines"].as_u64().unwrap() > 100, "{dropped}");
    let kept: usize = lines.iter().map(|l| l["text"].as_str().unwrap().len()).sum();
    assert!(kept <= 4096, "{kept} bytes kept");
    assert_eq!(lines[0]["seq"], 1);
    let after = dropped["after_seq"].as_u64().unwrap();
    let gap = lines.iter().position(|l| l["seq"].as_u64().unwrap() > after).unwrap();
    assert_eq!(lines[gap - 1]["seq"], after);
    assert_eq!(
        lines[gap]["seq"].as_u64().unwrap(),
        after + dropped["lines"].as_u64().unwrap() + 1,
        "the dropped lines are exactly those between"
    );
    assert!(lines.iter().all(|l| l["text"].as_str().unwrap().starts_with("flood")), "{logs}");
    // Its stderr tail: the newest lines kept, however many were dropped.
    let tail = flooded["error"]["stderr_tail"].as_array().unwrap();
    let newest: Vec<&Value> = lines.iter().rev().take(tail.len()).rev().map(|l| &l["text"]).collect();
    assert!(!tail.is_empty() && tail.len() <= 20, "{flooded}");
    assert_eq!(tail.iter().collect::<Vec<_>>(), newest, "{flooded}");
    let out = s.cli(&["logs", &id]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("dropped over the attempt's cap"), "{out:?}");
}

/// While a retry runs, the failure shown is the one before it, with that
/// attempt's stderr lines, not the running attempt's.
#[tokio::test]
async fn while_a_retry_runs_its_failure_shows_the_failed_attempts_stderr() {
    let s = server(|_| {}).await;
    let id = s.submit(json!({"plugin": "chatter", "input": "3:300:2", "max_attempts": 2})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let running = loop {
        let (_, task) = s.get(&format!("/v1/tasks/{id}")).await;
        if task["state"] == "running" && task["attempts"] == 2 {
            break task;
        }
        assert!(std::time::Instant::now() < deadline, "attempt 2 never ran: {task}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(running["error"]["message"], "attempt 1 fails on purpose", "{running}");
    assert_eq!(running["error"]["stderr_tail"], json!(["attempt 1 err 1", "attempt 1 err 2", "attempt 1 err 3"]));
    let done = s.ended(&id).await;
    assert_eq!((&done["state"], &done["error"]), (&json!("completed"), &Value::Null), "{done}");
}

#[tokio::test]
async fn a_task_sets_its_own_transcript_cap_within_the_operators_ceiling() {
    let s = server(|c| {
        c.log_keep_bytes = 4096;
        c.log_keep_ceiling = 16 << 10;
    })
    .await;
    let kept = |logs: &Value| -> usize { texts(logs).iter().map(|t| t.len()).sum() };
    // The host's default: 4 KiB.
    let id = s.submit(json!({"plugin": "log-flood", "input_base64": "c3RkZXJy"})).await;
    s.ended(&id).await;
    let (_, default) = s.get(&format!("/v1/tasks/{id}/logs")).await;
    assert!(kept(&default) <= 4096, "{} bytes kept", kept(&default));
    // Its own: 16 KiB, the ceiling.
    let id = s.submit(json!({"plugin": "log-flood", "input_base64": "c3RkZXJy", "log_keep_bytes": 16384})).await;
    s.ended(&id).await;
    let (_, own) = s.get(&format!("/v1/tasks/{id}/logs")).await;
    assert!(kept(&own) > 8192 && kept(&own) <= 16384, "{} bytes kept", kept(&own));
    assert!(own["dropped"]["lines"].as_u64().unwrap() > 0, "the cap still drops: {own}");
    // None at all.
    let id = s.submit(json!({"plugin": "chatter", "input": "1:0:1", "max_attempts": 1, "log_keep_bytes": 0})).await;
    s.ended(&id).await;
    let (_, none) = s.get(&format!("/v1/tasks/{id}/logs")).await;
    assert_eq!(texts(&none).len(), 0, "{none}");
    // Over the ceiling: refused, naming it, and nothing is created.
    let response = s
        .http
        .post(format!("{}/v1/tasks", s.base))
        .json(&json!({"plugin": "chatter", "input": "1:0:1", "log_keep_bytes": 16385}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("over this host's ceiling of 16 KiB") && message.contains("--log-keep-max"), "{body}");
    // The CLI's flag.
    let out = s.cli(&["submit", "chatter", "--log-keep", "1MiB"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ceiling"), "{out:?}");
}
