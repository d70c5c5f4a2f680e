//! Retention: ended tasks and flows past their queue's or the host's
//! retention are deleted with their input, output, logs and keys, over
//! the real API, on both store backends; a long run keeps the redb file
//! within a size bound.

use crate::engine::{engine_on, engine_with, task};
use crate::stores::on_both_stores;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use taskhost::engine::{Engine, NewTask};
use taskhost::store::Retention;
use uuid::Uuid;

async fn wait_all(engine: &Engine, ids: &[Uuid]) {
    for id in ids {
        let ended = engine.wait(*id, Duration::from_secs(60)).await.unwrap();
        assert!(ended.state.is_terminal(), "{ended:?}");
    }
}

async fn submit_all(engine: &Engine, tasks: Vec<NewTask>) -> Vec<Uuid> {
    let submitted = engine.submit_batch(tasks).await;
    submitted.into_iter().map(|s| s.unwrap().record.id).collect()
}

on_both_stores! {
    async fn a_queue_keeps_its_latest_ended_tasks_and_the_rest_are_deleted(backend) {
        let (engine, dir) = engine_on(backend, |c| {
            c.retention = Retention::forever();
            c.retention_interval = Duration::from_millis(50);
        })
        .await;
        let (base, token) = crate::serve_api(&engine, dir.path()).await;
        let http = crate::authed(&token);
        let put = |body: Value| http.put(format!("{base}/v1/queues/short")).json(&body).send();
        // Bad settings are refused and change nothing.
        for (body, says) in [
            (json!({"retain_for": "soon"}), "retain_for"),
            (json!({"retain_count": 0}), "retain_count must be at least 1"),
            (json!({"retain_count": -1}), "retain_count"),
        ] {
            let response = put(body.clone()).await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
            let text = response.text().await.unwrap();
            assert!(text.contains(says), "{body}: {text}");
        }
        let response = put(json!({"retain_count": 2, "retain_for": "forever"})).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let settings: Value = response.json().await.unwrap();
        assert_eq!(settings["retain_count"], 2, "{settings}");

        let keyed = |n: usize| NewTask {
            queue: Some("short".into()),
            idempotency_key: Some(format!("job-{n}")),
            ..task("uppercase", "abc")
        };
        let mut short = Vec::new();
        for n in 0..5 {
            // One at a time, so they end in order.
            let id = submit_all(&engine, vec![keyed(n)]).await[0];
            wait_all(&engine, &[id]).await;
            short.push(id);
        }
        let other = submit_all(&engine, (0..3).map(|_| task("uppercase", "xyz")).collect()).await;
        wait_all(&engine, &other).await;

        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while engine.get(short[2]).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "the sweep never deleted the oldest tasks");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for id in &short[..3] {
            for path in [format!("/v1/tasks/{id}"), format!("/v1/tasks/{id}/logs"), format!("/v1/tasks/{id}/output")] {
                let response = http.get(format!("{base}{path}")).send().await.unwrap();
                assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            }
        }
        for id in short[3..].iter().chain(&other) {
            assert_eq!(engine.get(*id).await.unwrap().state, taskhost::store::TaskState::Completed);
        }
        let listed: Value = http.get(format!("{base}/v1/tasks?queue=short")).send().await.unwrap().json().await.unwrap();
        let listed: Vec<&str> = listed["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(listed, [short[3].to_string(), short[4].to_string()]);
        // The queue shows its setting; the metrics count what went.
        let queues: Value = http.get(format!("{base}/v1/queues")).send().await.unwrap().json().await.unwrap();
        let queue = queues["queues"].as_array().unwrap().iter().find(|q| q["name"] == "short").unwrap().clone();
        assert_eq!((queue["retain_count"].clone(), queue["retain_for"].clone()), (json!(2), json!("forever")));
        let metrics = engine.metrics_text();
        assert!(
            metrics.lines().any(|l| l.starts_with("taskhost_tasks_expired_total{")
                && l.contains("queue=\"short\"")
                && l.ends_with(" 3")),
            "{metrics}"
        );
        assert!(
            metrics.lines().any(|l| l.contains("queue=\"short\",state=\"completed\"") && l.ends_with(" 2")),
            "the task gauge counts what is left: {metrics}"
        );
        // A deleted task's key is free again: it makes a new task.
        let again = engine.submit(keyed(0)).await.unwrap();
        assert!(again.created && again.record.id != short[0]);
    }

    async fn a_finished_flow_goes_whole_and_a_running_one_stays(backend) {
        let (engine, _dir) = crate::flows::flow_engine(backend, |c| {
            c.retention = Retention::new(Some(0), None);
            c.retention_interval = Duration::from_secs(3600);
        })
        .await;
        let fan_out: Vec<Value> =
            (0..3).map(|i| json!({"submit": {"plugin": "uppercase", "input": format!("{i}")}})).collect();
        let root = crate::flows::probe(&engine, Value::Array(fan_out)).await;
        let flow = crate::flows::ended(&engine, root).await;
        assert!(flow.tasks.len() > 1, "{flow:?}");
        let ids: Vec<Uuid> = flow.tasks.iter().map(|t| t.id).collect();
        let slow = engine.submit(task("sleep", "2000")).await.unwrap().record.id;
        let deleted = engine.expire().await.unwrap();
        assert_eq!(deleted, ids.len() as u64);
        assert!(engine.flow(root).await.is_err());
        for id in ids {
            assert!(engine.get(id).await.is_err(), "{id} outlived its flow");
        }
        assert!(!engine.get(slow).await.unwrap().state.is_terminal(), "a running task is never deleted");
    }
}

/// Many waves of tasks through a host that keeps 200 ended tasks: the
/// task count stays at the bound after each sweep and the file stops
/// growing once freed pages are reused. (On redb alone: it measures the
/// store's file. A PostgreSQL database's space is PostgreSQL's to reuse,
/// by its autovacuum; the count's bound is the same code on both, held
/// by the test above.)
#[tokio::test]
async fn a_long_run_stays_within_a_size_bound() {
    const KEEP: u64 = 200;
    const WAVES: usize = 12;
    const PER_WAVE: usize = 400;
    let (engine, dir) = engine_with(|c| {
        c.retention = Retention::new(None, Some(KEEP));
        c.retention_interval = Duration::from_secs(3600);
    })
    .await;
    let file = dir.path().join(taskhost::store::FILE_NAME);
    let input = "x".repeat(8192);
    let mut sizes = Vec::new();
    for _ in 0..WAVES {
        let ids = submit_all(&engine, (0..PER_WAVE).map(|_| task("uppercase", &input)).collect()).await;
        wait_all(&engine, &ids).await;
        engine.expire().await.unwrap();
        let stored = engine.store().task_count().await.unwrap();
        assert!(stored <= KEEP, "{stored} tasks kept past a count of {KEEP}");
        sizes.push(std::fs::metadata(&file).unwrap().len());
    }
    // Each wave writes about 6.4 MiB of inputs and outputs: without
    // deletion the file would grow by that much per wave.
    let written = (WAVES * PER_WAVE * 2 * input.len()) as u64;
    let (early, last) = (sizes[2], sizes[WAVES - 1]);
    assert!(last <= early + early / 4, "the file kept growing: {sizes:?}");
    assert!(last * 3 < written, "the bound is no bound: {last} bytes for {written} written; {sizes:?}");
}
