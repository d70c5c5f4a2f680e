//! Crash recovery through the real binary: `taskhost serve` is killed with
//! SIGKILL while submissions and tasks are in flight, restarted on the same
//! data directory, and every acknowledged task must reach a terminal state
//! exactly once.

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskhost_test_artifacts::SLEEP;

/// `taskhost serve` on loopback, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
}

impl Server {
    /// Sends SIGTERM (a clean shutdown) and waits for the process to
    /// exit, at most `within`: its exit status and how long it took.
    pub(crate) async fn terminate(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: signals our own child, which has not been reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let sent = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, sent.elapsed());
            }
            assert!(sent.elapsed() < within, "taskhost serve did not exit within {within:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Server {
    /// Sends `signal` to the server (SIGSTOP, SIGCONT).
    pub(crate) fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: signals our own child, which has not been reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits (at most `within`) for the server to exit on its own.
    pub(crate) async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "taskhost serve did not exit within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    /// Never leaves a server running, even when an assertion failed.
    fn drop(&mut self) {
        // A stopped one gets SIGKILL all the same.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start(data: &std::path::Path, port: u16) -> Server {
    start_with(data, port, &[]).await
}

/// A `taskhost serve` with `extra` flags on a new data directory: the
/// directory, the server, its admin token and a plain client.
pub(crate) async fn fresh(extra: &[&str]) -> (tempfile::TempDir, Server, String, reqwest::Client) {
    let data = tempfile::tempdir().unwrap();
    let server = start_with(data.path(), free_port(), extra).await;
    let admin = crate::admin_token(data.path()).await;
    (data, server, admin, crate::http())
}

/// Starts `taskhost serve` on `data` with `extra` arguments and waits
/// until it answers, its own admin token written. When another process
/// took `port` first (a free port is only free until someone binds it),
/// it starts again on another.
pub(crate) async fn start_with(data: &std::path::Path, port: u16, extra: &[&str]) -> Server {
    start_with_env(data, port, extra, &[]).await
}

/// [`start_with`], with `env` set for the server.
pub(crate) async fn start_with_env(data: &std::path::Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut port = port;
    for _ in 0..5 {
        let log_path = data.join(format!("serve-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_taskhost"))
            .args([
                "serve",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--concurrency",
                "8",
            ])
            .args(["--retry-base", "20ms", "--retry-cap", "100ms"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = crate::http();
        let token = data.join(taskhost::auth::ADMIN_TOKEN_FILE);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                assert!(log.contains("cannot listen"), "taskhost serve exited while starting: {log}");
                break; // the port was taken: try another
            }
            // Its own answer: the token in its data directory exists only
            // once it has bound its port (or from its previous start).
            if token.exists() && http.get(format!("{base}/healthz")).send().await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if child.try_wait().unwrap().is_none() {
                    return Server { child, base };
                }
                continue;
            }
            assert!(Instant::now() < deadline, "taskhost serve did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        port = free_port();
    }
    panic!("taskhost serve found no free port in 5 tries");
}

/// Starts the host that follows a killed one on `dir` (with `--store
/// url` when given). A new data directory on PostgreSQL gets no admin
/// token file of its own (the database has tokens): the first host's
/// (in `first`) is copied there, which is where [`start_with`] looks for it.
async fn start_restarted(dir: &std::path::Path, port: u16, url: Option<&str>, first: &std::path::Path) -> Server {
    if dir != first {
        let token = taskhost::auth::ADMIN_TOKEN_FILE;
        std::fs::copy(first.join(token), dir.join(token)).unwrap();
    }
    start_with(dir, port, &store_args(url)).await
}

pub(crate) async fn upload(http: &reqwest::Client, base: &str, name: &str, bytes: Vec<u8>) {
    let response = http.post(format!("{base}/v1/plugins/{name}")).body(bytes).send().await.unwrap();
    assert!(response.status().is_success(), "uploading {name}: {}", response.status());
}

pub(crate) async fn get_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn all_tasks(http: &reqwest::Client, base: &str) -> Vec<Value> {
    let mut tasks = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}/v1/tasks?limit=1000&cursor={c}"),
            None => format!("{base}/v1/tasks?limit=1000"),
        };
        let page = get_json(http, url).await;
        tasks.extend(page["tasks"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return tasks,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_and_duplicates_nothing() {
    sigkill_under_load(None).await;
}

/// The same on a PostgreSQL store; the host that starts after the kill
/// has a data directory of its own, so all it finds is in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_on_postgresql_loses_and_duplicates_nothing() {
    sigkill_under_load(Some(taskhost_test_postgres::cluster().database("serve_sigkill"))).await;
}

/// `--store URL` when `url` is given.
fn store_args(url: Option<&str>) -> Vec<&str> {
    url.map(|url| vec!["--store", url]).unwrap_or_default()
}

/// The data directory a restarted host uses: the same one on redb, a new
/// one on PostgreSQL (kept alive by the returned guard).
fn restart_dir(data: &tempfile::TempDir, url: Option<&str>) -> (Option<tempfile::TempDir>, std::path::PathBuf) {
    match url {
        Some(_) => {
            let fresh = tempfile::tempdir().unwrap();
            let path = fresh.path().to_path_buf();
            (Some(fresh), path)
        }
        None => (None, data.path().to_path_buf()),
    }
}

/// Keyed batches stream in while the host is killed mid-run; after a
/// restart every acknowledged task completes once.
async fn sigkill_under_load(url: Option<String>) {
    let url = url.as_deref();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start_with(data.path(), port, &store_args(url)).await;
    let http = crate::admin_client(data.path()).await;
    upload(&http, &server.base, "sleep", SLEEP.bytes()).await;

    // Submit keyed batches until the server dies, recording what it
    // acknowledged.
    let acknowledged: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let submitter = tokio::spawn({
        let (http, base, acknowledged) = (http.clone(), server.base.clone(), acknowledged.clone());
        async move {
            // Bounded: at most 60 rounds of 25, paced so the kill lands
            // mid-stream.
            for round in 0..60 {
                let tasks: Vec<Value> = (0..25)
                    // Mostly short tasks, one long one per round, so some
                    // task is always running when the kill lands.
                    .map(|i| {
                        let ms = if i == 0 { 300 } else { 1 + (i % 4) * 5 };
                        json!({"plugin": "sleep", "input": ms, "idempotency_key": format!("k{round}-{i}")})
                    })
                    .collect();
                let Ok(response) =
                    http.post(format!("{base}/v1/tasks:batch")).json(&json!({"tasks": tasks})).send().await
                else {
                    return;
                };
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                {
                    let mut acked = acknowledged.lock().unwrap();
                    for (i, result) in body["results"].as_array().unwrap().iter().enumerate() {
                        let id = result["id"].as_str().expect("every item of a healthy batch is accepted");
                        acked.insert(format!("k{round}-{i}"), id.to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    });
    // Kill once enough is acknowledged and a task is running.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let enough = acknowledged.lock().unwrap().len() >= 100;
        let running = match http.get(format!("{}/v1/tasks?state=running&limit=1", server.base)).send().await {
            Ok(r) => r.json::<Value>().await.is_ok_and(|page| page["tasks"].as_array().is_some_and(|t| !t.is_empty())),
            Err(_) => false,
        };
        if enough && running {
            break;
        }
        assert!(Instant::now() < deadline, "never saw 100 acknowledged tasks with one running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    submitter.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 100, "only {} tasks were acknowledged before the kill", acknowledged.len());

    // Restart (on the same data, or on the same database) and let
    // everything finish.
    let (_fresh, dir) = restart_dir(&data, url);
    let mut server = start_restarted(&dir, port, url, data.path()).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let tasks = loop {
        let tasks = all_tasks(&http, &server.base).await;
        if tasks.iter().all(|t| ["completed", "failed", "cancelled"].contains(&t["state"].as_str().unwrap())) {
            break tasks;
        }
        assert!(Instant::now() < deadline, "tasks did not finish after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Every acknowledged task exists and completed.
    let by_id: HashMap<&str, &Value> = tasks.iter().map(|t| (t["id"].as_str().unwrap(), t)).collect();
    for (key, id) in &acknowledged {
        let task = by_id.get(id.as_str()).unwrap_or_else(|| panic!("acknowledged task {id} ({key}) was lost"));
        assert_eq!(task["state"], "completed", "{task}");
        assert_eq!(task["idempotency_key"], key.as_str());
    }
    // No idempotency key has two records.
    let mut keys = HashSet::new();
    for task in &tasks {
        assert!(keys.insert(task["idempotency_key"].as_str().unwrap().to_owned()), "duplicate record for {task}");
    }
    // Re-sending acknowledged keys returns the same tasks.
    let (key, id) = acknowledged.iter().next().unwrap();
    let again: Value = http
        .post(format!("{}/v1/tasks", server.base))
        .json(&json!({"plugin": "sleep", "input": "1", "idempotency_key": key}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((again["id"].as_str(), again["created"].as_bool()), (Some(id.as_str()), Some(false)));
    // Tasks that were running at the kill were recovered, attempt counted.
    let recovered = tasks.iter().filter(|t| t["attempts"].as_u64() > Some(1)).count();
    assert!(recovered > 0, "no task was running at the kill; the test did not exercise recovery");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// A flow survives SIGKILL mid-fan-out: after the restart every child runs
/// once, none is duplicated, and the join sees them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_fan_out_keeps_the_flow_whole() {
    sigkill_during_a_fan_out(None).await;
}

/// The same on a PostgreSQL store, restarted on a new data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_fan_out_on_postgresql_keeps_the_flow_whole() {
    sigkill_during_a_fan_out(Some(taskhost_test_postgres::cluster().database("serve_fan_out"))).await;
}

async fn sigkill_during_a_fan_out(url: Option<String>) {
    let url = url.as_deref();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start_with(data.path(), port, &store_args(url)).await;
    let http = crate::admin_client(data.path()).await;
    upload(&http, &server.base, "sleep", SLEEP.bytes()).await;
    upload(&http, &server.base, "flow-probe", taskhost_test_artifacts::FLOW_PROBE.bytes()).await;
    let script = json!([
        {"fanout": {"n": 200, "plugin": "sleep", "input": "30"}},
        {"join": "all", "then": {"plugin": "flow-probe", "input": r#"["joined_count"]"#}}
    ]);
    let submitted: Value = http
        .post(format!("{}/v1/tasks", server.base))
        .json(&json!({"plugin": "flow-probe", "input": script}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let flow = submitted["id"].as_str().unwrap().to_owned();
    // Kill it once some, not all, children have completed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = get_json(&http, format!("{}/v1/flows/{flow}", server.base)).await;
        let done = view["tasks"]["by_state"]["completed"].as_u64().unwrap_or(0);
        if done >= 40 {
            assert!(done < 150, "the fan-out finished before the kill ({done} completed)");
            break;
        }
        assert!(Instant::now() < deadline, "the children never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (_fresh, dir) = restart_dir(&data, url);
    let server = start_restarted(&dir, port, url, data.path()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let view = get_json(&http, format!("{}/v1/flows/{flow}", server.base)).await;
        if view["state"] != "running" {
            break view;
        }
        assert!(Instant::now() < deadline, "the flow did not end after the restart: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(view["tasks"]["total"], 202, "root, 200 children and the join, none twice");
    assert_eq!(view["output"], json!([{"completed": 200, "total": 200}]));
    let children = view["tree"][0]["children"].as_array().unwrap();
    assert_eq!(children.len(), 201);
    // A child interrupted by the kill ran again (attempt 2); none lost.
    assert!(children.iter().all(|c| c["state"] == "completed"));
}

/// SIGTERM is a graceful stop: the server stops taking requests, lets the
/// attempt that is running end, commits its outcome, then exits. Nothing is
/// left `running` for a restart to recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_attempts_end_and_commit() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(data.path(), port).await;
    let http = crate::admin_client(data.path()).await;
    upload(&http, &server.base, "sleep", SLEEP.bytes()).await;
    let submitted = http
        .post(format!("{}/v1/tasks", server.base))
        .json(&json!({"plugin": "sleep", "input": 600}))
        .send()
        .await
        .unwrap();
    let id = submitted.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_json(&http, format!("{}/v1/tasks/{id}", server.base)).await["state"] != "running" {
        assert!(Instant::now() < deadline, "the task never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SAFETY: a plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let status = tokio::task::spawn_blocking(move || {
        let status = server.child.wait();
        (server, status)
    });
    let (server, status) = tokio::time::timeout(Duration::from_secs(20), status).await.unwrap().unwrap();
    assert!(status.unwrap().success(), "serve exits 0 after SIGTERM");
    drop(server);
    let store = taskhost::store::Store::open(&data.path().join("taskhost.redb"), true).unwrap();
    let record = store.get(id.parse().unwrap()).unwrap().unwrap();
    assert_eq!(record.state, taskhost::store::TaskState::Completed, "{record:?}");
    assert!(!record.history.iter().any(|t| t.reason.starts_with("recovered")), "{:?}", record.history);
}
