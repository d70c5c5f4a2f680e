//! The live events over real loopback HTTP: every transition of the
//! tenant's tasks in commit order, filtered, resumed with `Last-Event-ID`,
//! never another tenant's; a subscriber that does not read is dropped with
//! a marker while the tasks run on; `taskhost events`.

use crate::engine::engine_with;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

/// One SSE event: its name, id and data.
#[derive(Debug, Clone)]
struct Sse {
    name: String,
    id: Option<String>,
    data: Value,
}

/// Reads an SSE answer in the background into a channel.
fn read_events(mut response: reqwest::Response) -> mpsc::UnboundedReceiver<Sse> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (String::new(), None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let Some(data) = data
                    && tx.send(Sse { name, id, data }).is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

async fn subscribe(
    http: &reqwest::Client,
    base: &str,
    query: &str,
    last: Option<&str>,
) -> mpsc::UnboundedReceiver<Sse> {
    let mut request = http.get(format!("{base}/v1/events{query}"));
    if let Some(id) = last {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    read_events(response)
}

/// The events until one for task `id` enters `state` (within 30 s).
async fn until(rx: &mut mpsc::UnboundedReceiver<Sse>, id: &str, state: &str) -> Vec<Sse> {
    let mut seen = Vec::new();
    loop {
        let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await else {
            panic!("no event for {id} entering {state}; saw {seen:?}");
        };
        let done = event.data["id"] == id && event.data["to"] == state;
        seen.push(event);
        if done {
            return seen;
        }
    }
}

async fn submit(http: &reqwest::Client, base: &str, body: Value) -> String {
    let response = http.post(format!("{base}/v1/tasks")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn each_transition_streams_in_commit_order_filtered_resumable_and_per_tenant() {
    let (engine, dir) = engine_with(|_| {}).await;
    let (base, admin) = crate::serve_api(&engine, dir.path()).await;
    let http = crate::authed(&admin);
    let mut all = subscribe(&http, &base, "", None).await;
    let mut done = subscribe(&http, &base, "?plugin=uppercase&state=completed,failed", None).await;
    assert_eq!(crate::tenants::put_tenant(&http, &base, &admin, "other", json!({})).await, StatusCode::CREATED);
    let theirs = crate::tenants::tenant_token(&http, &base, &admin, "watcher", "other", &["read"]).await.unwrap();
    let mut other = subscribe(&crate::authed(&theirs), &base, "", None).await;

    let up = submit(&http, &base, json!({"plugin": "uppercase", "input": "a"})).await;
    let seen = until(&mut all, &up, "completed").await;
    let ours: Vec<&Sse> = seen.iter().filter(|e| e.data["id"] == up.as_str()).collect();
    let moves: Vec<(Value, Value)> = ours.iter().map(|e| (e.data["from"].clone(), e.data["to"].clone())).collect();
    assert_eq!(
        moves,
        [(json!(null), json!("pending")), (json!("pending"), json!("running")), (json!("running"), json!("completed"))]
    );
    assert!(ours.iter().all(|e| e.name == "task" && e.data["plugin"] == "uppercase" && e.data["queue"] == "default"));
    let seqs: Vec<u64> = seen.iter().map(|e| e.data["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "commit order: {seqs:?}");
    assert_eq!(ours[2].data["attempt"], 1);

    let failing = submit(&http, &base, json!({"plugin": "fail", "input_base64": "cGVybWFuZW50Om5v"})).await;
    let after_fail = until(&mut all, &failing, "failed").await;
    let second = submit(&http, &base, json!({"plugin": "uppercase", "input": "b"})).await;
    until(&mut all, &second, "completed").await;
    // The filtered subscriber saw exactly the two completions of uppercase.
    let first_done = tokio::time::timeout(Duration::from_secs(5), done.recv()).await.unwrap().unwrap();
    let second_done = tokio::time::timeout(Duration::from_secs(5), done.recv()).await.unwrap().unwrap();
    assert_eq!((&first_done.data["id"], &first_done.data["to"]), (&json!(up), &json!("completed")));
    assert_eq!(second_done.data["id"], second.as_str());
    assert!(done.try_recv().is_err());

    // Resuming after an event replays exactly what followed it.
    let resume_at = ours[0].id.clone().unwrap();
    let mut resumed = subscribe(&http, &base, "", Some(&resume_at)).await;
    let replayed = until(&mut resumed, &second, "completed").await;
    let expected: Vec<u64> =
        [seen.clone(), after_fail, vec![]].concat().iter().map(|e| e.data["seq"].as_u64().unwrap()).collect();
    let first_seq = ours[0].data["seq"].as_u64().unwrap();
    let replayed_seqs: Vec<u64> = replayed.iter().map(|e| e.data["seq"].as_u64().unwrap()).collect();
    assert_eq!(replayed_seqs[0], first_seq + 1);
    assert!(expected.iter().filter(|s| **s > first_seq).all(|s| replayed_seqs.contains(s)));
    // The same through `?after=`; an id of another run of the host is a gap.
    let mut by_query = subscribe(&http, &base, &format!("?after={resume_at}"), None).await;
    assert_eq!(by_query.recv().await.unwrap().data["seq"], first_seq + 1);
    let mut stale = subscribe(&http, &base, "", Some("1-1")).await;
    let marker = stale.recv().await.unwrap();
    assert_eq!((marker.name.as_str(), &marker.data["reason"]), ("missed", &json!("gap")));

    // The other tenant saw none of it.
    assert!(other.try_recv().is_err(), "another tenant's events leaked");

    for (query, header, part) in [
        ("?state=bogus", None, "unknown state `bogus`"),
        ("?plugin=no/such", None, "plugin"),
        ("?flow=nope", None, "nope"),
        ("?colour=red", None, "colour"),
        ("", Some("junk"), "is not an event id"),
    ] {
        let mut request = http.get(format!("{base}/v1/events{query}"));
        if let Some(h) = header {
            request = request.header("last-event-id", h);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains(part), "{query}: {body}");
    }

    // The CLI prints each transition as it happens.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["events", "--json", "--state", "completed"])
        .env("TASKHOST_SERVER", &base)
        .env("TASKHOST_TOKEN", &admin)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        line
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = submit(&http, &base, json!({"plugin": "uppercase", "input": "c"})).await;
    let line = tokio::time::timeout(Duration::from_secs(30), line).await.unwrap().unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    let printed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!((&printed["id"], &printed["to"]), (&json!(third), &json!("completed")), "{line}");
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_is_dropped_with_a_marker_and_the_tasks_run_on() {
    let (engine, dir) = engine_with(|_| {}).await;
    let (base, admin) = crate::serve_api(&engine, dir.path()).await;
    let http = crate::authed(&admin);
    // Connected, never read until the work is done.
    let mut slow = http.get(format!("{base}/v1/events")).send().await.unwrap();
    let tasks: Vec<Value> = (0..10_000).map(|i| json!({"plugin": "uppercase", "input": format!("t{i}")})).collect();
    let response = http.post(format!("{base}/v1/tasks:batch")).json(&json!({"tasks": tasks})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let counts = engine.state_counts();
        if counts.get(&taskhost::store::TaskState::Completed).copied().unwrap_or(0) >= 10_000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the tasks stalled: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Now read: what was buffered, then the marker, then the end.
    let mut text = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(10), slow.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events = text.matches("event: task").count();
    assert!(events < 30_000, "all {events} events arrived: the subscriber was not dropped");
    assert!(
        text.contains("event: missed") && text.contains("too_slow"),
        "no marker in the last bytes: {}",
        &text[text.len().saturating_sub(500)..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_end_with_a_stopping_event_as_soon_as_the_server_stops() {
    let (_data, mut server, admin, _) = crate::recovery::fresh(&[]).await;
    let http = crate::authed(&admin);
    let base = server.base.clone();
    crate::recovery::upload(&http, &base, "uppercase", taskhost_test_artifacts::UPPERCASE.bytes()).await;
    let mut events = read_events(http.get(format!("{base}/v1/events")).send().await.unwrap());
    // A task that starts in a minute: its logs are followed meanwhile.
    let task = json!({"plugin": "uppercase", "input_base64": "eA==", "delay_ms": 60_000});
    let created: Value = http.post(format!("{base}/v1/tasks")).json(&task).send().await.unwrap().json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let logs = http.get(format!("{base}/v1/tasks/{id}/logs?follow=true")).send().await.unwrap();
    assert_eq!(logs.status(), StatusCode::OK);
    let mut logs = read_events(logs);
    // Both streams are open (the events one has sent the task's).
    let first = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
    assert_eq!(first.name, "task", "{first:?}");

    // The shutdown does not wait out its grace period (10 s) for them.
    let (status, took) = server.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "the server took {took:?} to stop with two streams open");
    for (what, stream) in [("events", &mut events), ("logs", &mut logs)] {
        let mut last = None;
        while let Some(event) = tokio::time::timeout(Duration::from_secs(10), stream.recv()).await.unwrap() {
            last = Some(event);
        }
        let last = last.unwrap_or_else(|| panic!("the {what} stream sent nothing"));
        assert_eq!(last.name, "stopping", "the {what} stream's last event: {last:?}");
        assert!(last.data["message"].as_str().unwrap().contains("reconnect"), "{last:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_and_flow_filters_pass_only_their_tasks() {
    let (engine, dir) = engine_with(|_| {}).await;
    let (base, admin) = crate::serve_api(&engine, dir.path()).await;
    let http = crate::authed(&admin);
    let mut all = subscribe(&http, &base, "", None).await;
    let mut first_queue = subscribe(&http, &base, "?queue=q1", None).await;
    let a = submit(&http, &base, json!({"plugin": "uppercase", "input": "a", "queue": "q1"})).await;
    let b = submit(&http, &base, json!({"plugin": "uppercase", "input": "b", "queue": "q2"})).await;
    let seen = [until(&mut all, &a, "completed").await, until(&mut all, &b, "completed").await].concat();
    let before_a = seen.iter().find(|e| e.data["id"] == a.as_str()).and_then(|e| e.id.clone()).unwrap();

    // The queue filter: a's events only, all three of them.
    let in_q1 = until(&mut first_queue, &a, "completed").await;
    assert_eq!(in_q1.len(), 3, "{in_q1:?}");
    assert!(in_q1.iter().all(|e| e.data["id"] == a.as_str() && e.data["queue"] == "q1"), "{in_q1:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(first_queue.try_recv().is_err(), "another queue's event passed the filter");

    // The flow filter, replayed from just before a was created: a's flow
    // is a alone; b's events never pass.
    let record = http.get(format!("{base}/v1/tasks/{a}")).send().await.unwrap();
    assert_eq!(record.status(), StatusCode::OK);
    let flow = record.json::<Value>().await.unwrap()["flow_id"].as_str().unwrap().to_owned();
    let (run, seq) = before_a.rsplit_once('-').unwrap();
    let resume = format!("{run}-{}", seq.parse::<u64>().unwrap() - 1);
    let mut of_flow = subscribe(&http, &base, &format!("?flow={flow}"), Some(&resume)).await;
    let in_flow = until(&mut of_flow, &a, "completed").await;
    let moves: Vec<&Value> = in_flow.iter().map(|e| &e.data["to"]).collect();
    assert_eq!(moves, [&json!("pending"), &json!("running"), &json!("completed")], "{in_flow:?}");
    assert!(in_flow.iter().all(|e| e.data["flow_id"] == flow.as_str()), "{in_flow:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(of_flow.try_recv().is_err(), "another flow's event passed the filter");
}
