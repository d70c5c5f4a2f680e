//! Three `taskhost serve --many-hosts` processes serving one PostgreSQL
//! database together through a SIGKILL of the leader and a freeze
//! (SIGSTOP past the lease) of another: every accepted task completes
//! once, fan-out flows complete whole, a repeating flow neither loses nor
//! doubles an iteration, and the lead fails over.

use crate::recovery::{Server, free_port, start_with, upload};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Tasks submitted in all (the 10,000).
const TASKS: usize = 10_000;

/// The lease: a frozen host's tasks are taken back this long after its
/// last renewal.
const LEASE_SECS: u64 = 6;

/// The host id in data directory `dir`.
fn host_id(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("host-id")).unwrap().trim().to_owned()
}

/// The leading host's id and whether its lease is live.
async fn leader(db: &sqlx::PgPool) -> Option<(String, bool)> {
    sqlx::query_as("SELECT host, expires_at > clock_timestamp() FROM taskhost_leader").fetch_optional(db).await.unwrap()
}

/// How many of `ids` have completed.
async fn completed(db: &sqlx::PgPool, ids: &[uuid::Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM taskhost_tasks WHERE id = ANY($1) AND state = 'completed'")
        .bind(ids)
        .fetch_one(db)
        .await
        .unwrap()
}

/// Submits `tasks` to the server at `base` in one batch: their ids.
async fn submit_batch(http: &reqwest::Client, base: &str, tasks: Vec<Value>) -> Vec<uuid::Uuid> {
    let answer: Value = http
        .post(format!("{base}/v1/tasks:batch"))
        .json(&json!({"tasks": tasks}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let results = answer["results"].as_array().unwrap_or_else(|| panic!("{answer}"));
    results.iter().map(|r| r["id"].as_str().unwrap_or_else(|| panic!("{r}")).parse().unwrap()).collect()
}

/// Starts the flow `spec` on the server at `base`: its id.
async fn start_flow(http: &reqwest::Client, base: &str, spec: &Value) -> String {
    let answer: Value = http.post(format!("{base}/v1/flows")).json(spec).send().await.unwrap().json().await.unwrap();
    answer["id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_owned()
}

/// A flow's view from the server at `base`.
async fn flow(http: &reqwest::Client, base: &str, id: &str) -> Value {
    http.get(format!("{base}/v1/flows/{id}")).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_serve_one_database_together_through_a_kill_and_a_freeze() {
    let url = taskhost_test_postgres::cluster().database("serve_many_hosts");
    let lease = format!("{LEASE_SECS}s");
    let flags = ["--store", &url, "--store-lease", &lease, "--many-hosts"];
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let first = start_with(dirs[0].path(), free_port(), &flags).await;
    let http = crate::admin_client(dirs[0].path()).await;
    // Uploaded before the others start, so every host has the plugin
    // from its first claim (an upload reaches running hosts within a few
    // seconds: see `what_one_host_changes_counts_on_the_others`).
    upload(&http, &first.base, "sleep", taskhost_test_artifacts::SLEEP.bytes()).await;
    let token = taskhost::auth::ADMIN_TOKEN_FILE;
    for dir in &dirs[1..] {
        std::fs::copy(dirs[0].path().join(token), dir.path().join(token)).unwrap();
    }
    let mut hosts: Vec<Server> = vec![first];
    for dir in &dirs[1..] {
        hosts.push(start_with(dir.path(), free_port(), &flags).await);
    }
    let ids: Vec<String> = dirs.iter().map(|d| host_id(d.path())).collect();
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    // Every host is listed live, serving.
    let listed: Value = http.get(format!("{}/v1/hosts", hosts[2].base)).send().await.unwrap().json().await.unwrap();
    let live = listed["hosts"].as_array().unwrap().iter().filter(|h| h["live"] == true).count();
    assert_eq!(live, 3, "{listed}");

    // Two repeating flows for as long as the run lasts: every 500 ms, and
    // a cron schedule firing every second.
    let mut repeaters = Vec::new();
    for repeat in [json!({"every_ms": 500}), json!({"cron": "* * * * * *"})] {
        let repeating = json!({"steps": {"plugin": "sleep", "input": 1}, "repeat": repeat});
        repeaters.push(start_flow(&http, &hosts[0].base, &repeating).await);
    }
    // Six fan-out flows: 40 steps side by side, then one that joins them.
    let mut flows = Vec::new();
    for i in 0..6 {
        let parallel: Vec<Value> = (0..40).map(|s| json!({"id": format!("s{s}"), "plugin": "sleep"})).collect();
        let spec =
            json!({"input": 20, "steps": [{"parallel": parallel}, {"id": "join", "plugin": "sleep", "input": 20}]});
        flows.push(start_flow(&http, &hosts[i % 3].base, &spec).await);
    }
    // The tasks, in batches to each host in turn.
    let mut tasks = Vec::with_capacity(TASKS);
    for (i, chunk) in (0..TASKS).collect::<Vec<_>>().chunks(1000).enumerate() {
        let batch = chunk.iter().map(|_| json!({"plugin": "sleep", "input": 20})).collect();
        tasks.extend(submit_batch(&http, &hosts[i % 3].base, batch).await);
    }
    assert_eq!(tasks.len(), TASKS);

    // Mid-run: the leader is killed, and another host frozen past its
    // lease.
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed(&db, &tasks).await < (TASKS / 10) as i64 {
        assert!(Instant::now() < deadline, "the hosts did not get going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (leading, live) = leader(&db).await.expect("a host leads");
    assert!(live);
    let killed = ids.iter().position(|id| *id == leading).expect("the leader is one of the three");
    let frozen = (killed + 1) % 3;
    let survivor = (killed + 2) % 3;
    hosts[killed].signal(libc::SIGKILL);
    let killed_at = Instant::now();
    hosts[frozen].signal(libc::SIGSTOP);
    // The lead fails over to the host that goes on, within a lease and a
    // check or two.
    let deadline = killed_at + Duration::from_secs(LEASE_SECS + 6);
    loop {
        if let Some((host, true)) = leader(&db).await
            && host == ids[survivor]
        {
            break;
        }
        assert!(Instant::now() < deadline, "the lead did not fail over: {:?}", leader(&db).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failover = killed_at.elapsed();
    // Frozen past its lease, then resumed: it serves on.
    tokio::time::sleep(Duration::from_secs(LEASE_SECS + 3).saturating_sub(killed_at.elapsed())).await;
    let done_before_resume = completed(&db, &tasks).await;
    hosts[frozen].signal(libc::SIGCONT);
    assert!(done_before_resume < TASKS as i64, "the run ended before the frozen host resumed");

    // Every accepted task completes.
    let deadline = Instant::now() + Duration::from_secs(180);
    while completed(&db, &tasks).await < TASKS as i64 {
        assert!(Instant::now() < deadline, "{} of {TASKS} tasks completed", completed(&db, &tasks).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let health = http.get(format!("{}/healthz", hosts[frozen].base)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "the host that was frozen serves on");
    // Once each: every task that ran more than once (its host killed or
    // frozen under it) completed once in its history.
    let survivors = [&hosts[survivor].base, &hosts[frozen].base];
    let mut rerun = 0;
    for (i, id) in tasks.iter().enumerate() {
        let base = survivors[i % 2];
        let task: Value = http.get(format!("{base}/v1/tasks/{id}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(task["state"], "completed", "{task}");
        if task["attempts"].as_u64() == Some(1) {
            continue;
        }
        rerun += 1;
        let history: Value =
            http.get(format!("{base}/v1/tasks/{id}/history")).send().await.unwrap().json().await.unwrap();
        let completions = history["history"].as_array().unwrap().iter().filter(|t| t["to"] == "completed").count();
        assert_eq!(completions, 1, "task {id} completed once: {history}");
    }
    assert!(rerun > 0, "the killed and frozen hosts were running tasks");
    // The fan-out flows complete whole.
    for id in &flows {
        let deadline = Instant::now() + Duration::from_secs(60);
        let view = loop {
            let view = flow(&http, &hosts[survivor].base, id).await;
            if view["state"] != "running" {
                break view;
            }
            assert!(Instant::now() < deadline, "flow {id} did not end: {view}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(view["state"], "completed", "{view}");
        assert_eq!(view["tasks"]["by_state"]["completed"], 41, "{view}");
    }
    // Each host counts every host's tasks (`/healthz`, the `tasks`
    // gauge): at least those completed above, whichever host ended them,
    // and no more than the database holds (give or take the repeating
    // flow's few tasks a host may count before its next read of the
    // database's counts, up to 2 s later).
    let floor = (TASKS + 6 * 41) as i64;
    for base in survivors {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let health: Value = http.get(format!("{base}/healthz")).send().await.unwrap().json().await.unwrap();
            let counted = health["tasks"]["completed"].as_i64().unwrap_or(0);
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM taskhost_tasks WHERE state = 'completed'")
                .fetch_one(&db)
                .await
                .unwrap();
            if counted >= floor {
                assert!(counted <= stored + 10, "{base} counts {counted} completed tasks, the database holds {stored}");
                break;
            }
            assert!(Instant::now() < deadline, "{base} counts {counted} completed tasks, not {floor}: {health}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The repeating flows go on, one task per iteration (none doubled),
    // each iteration after the one before (none lost: they still fire).
    let before: Vec<Value> =
        futures::future::join_all(repeaters.iter().map(|id| flow(&http, &hosts[survivor].base, id))).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut reached = Vec::new();
    // At least 3 iterations of the one every 500 ms, 2 of the cron one.
    for ((id, before), least) in repeaters.iter().zip(before).zip([3, 2]) {
        let after = flow(&http, &hosts[frozen].base, id).await;
        let was = before["iteration"].as_u64().unwrap();
        let now = after["iteration"].as_u64().unwrap();
        assert!(now >= was + least, "the repeating flow stalled: iteration {was}, then {now}: {after}");
        assert_eq!(after["state"], "running", "{after}");
        let total = after["tasks"]["total"].as_u64().unwrap();
        assert_eq!(total, now + 1, "one task per iteration: {after}");
        reached.push(now);
    }
    eprintln!(
        "three hosts: {TASKS} tasks and 6 flows of 41 steps completed; {rerun} ran again after the kill or freeze; \
         the lead failed over in {failover:?}; the repeating flows reached iterations {reached:?}"
    );
}

/// Uploads `bytes` as a version of plugin `name` on the server at `base`:
/// the version.
async fn upload_version(http: &reqwest::Client, base: &str, name: &str, bytes: Vec<u8>) -> String {
    let answer = http.post(format!("{base}/v1/plugins/{name}")).body(bytes).send().await.unwrap();
    assert!(answer.status().is_success(), "uploading {name}: {}", answer.status());
    let status: Value = answer.json().await.unwrap();
    status["version"].as_str().unwrap_or_else(|| panic!("{status}")).to_owned()
}

/// Submits plugin `plugin` with `input` to the server at `base` until it
/// is accepted (at most 10 s): the task's id.
async fn submitted(http: &reqwest::Client, base: &str, plugin: &str, input: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = http
            .post(format!("{base}/v1/tasks"))
            .json(&json!({"plugin": plugin, "input": input}))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let body: Value = answer.json().await.unwrap();
        if status.is_success() {
            return body["id"].as_str().unwrap().to_owned();
        }
        assert_eq!(status.as_u16(), 404, "{body}");
        assert!(Instant::now() < deadline, "{plugin} is still unknown on {base}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 10 s) until `GET /v1/tasks` with `token` on the server
/// at `base` answers `status`.
async fn answers(base: &str, token: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = crate::http().get(format!("{base}/v1/tasks")).bearer_auth(token).send().await.unwrap();
        if answer.status().as_u16() == status {
            return;
        }
        assert!(Instant::now() < deadline, "{base} still answers {} to the token", answer.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one host serving together changes counts on the others within a
/// few seconds: a plugin uploaded on one runs on another, a later version
/// uploaded there is what a plain name resolves to everywhere, and a
/// token made on one is let in, and once revoked on another refused, on
/// each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_host_changes_counts_on_the_others() {
    let url = taskhost_test_postgres::cluster().database("serve_many_hosts_plugins");
    let flags = ["--store", &url, "--many-hosts"];
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start_with(dirs[0].path(), free_port(), &flags).await;
    let http = crate::admin_client(dirs[0].path()).await;
    let token = taskhost::auth::ADMIN_TOKEN_FILE;
    std::fs::copy(dirs[0].path().join(token), dirs[1].path().join(token)).unwrap();
    let b = start_with(dirs[1].path(), free_port(), &flags).await;
    let first = upload_version(&http, &a.base, "shout", taskhost_test_artifacts::UPPERCASE.bytes()).await;
    let id = submitted(&http, &b.base, "shout", "hi").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let task = loop {
        let task: Value = http.get(format!("{}/v1/tasks/{id}", b.base)).send().await.unwrap().json().await.unwrap();
        if task["state"] != "pending" && task["state"] != "running" {
            break task;
        }
        assert!(Instant::now() < deadline, "{task}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((task["state"].as_str(), task["plugin_version"].as_str()), (Some("completed"), Some(&*first)), "{task}");
    let second = upload_version(&http, &b.base, "shout", taskhost_test_artifacts::HELLO_TASK.bytes()).await;
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let id = submitted(&http, &a.base, "shout", "x").await;
        let task: Value = http.get(format!("{}/v1/tasks/{id}", a.base)).send().await.unwrap().json().await.unwrap();
        if task["plugin_version"] == second.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "host a still resolves shout to {}", task["plugin_version"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let made: Value = http
        .post(format!("{}/v1/tokens", a.base))
        .json(&json!({"name": "reader", "scopes": ["read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (secret, id) = (made["token"].as_str().unwrap(), made["id"].as_str().unwrap());
    answers(&b.base, secret, 200).await;
    let revoked = http.delete(format!("{}/v1/tokens/{id}", b.base)).send().await.unwrap();
    assert_eq!(revoked.status().as_u16(), 200);
    answers(&a.base, secret, 401).await;
}
