//! `taskhost serve --store postgres://…` through the real binary: the
//! store in the database (a host on another data directory finds it all:
//! see `recovery.rs`'s PostgreSQL runs), one host at a time per database,
//! and a host that can no longer be sure it is the only one stops.

use crate::recovery::{free_port, start_with, upload};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Submits `body` to the server at `base`: the created task.
async fn submit(http: &reqwest::Client, base: &str, body: Value) -> Value {
    http.post(format!("{base}/v1/tasks")).json(&body).send().await.unwrap().json().await.unwrap()
}

/// Waits (at most `within`) for task `id` to complete on the server at
/// `base`: its record.
async fn completed(http: &reqwest::Client, base: &str, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let task: Value = http.get(format!("{base}/v1/tasks/{id}")).send().await.unwrap().json().await.unwrap();
        if task["state"] == "completed" {
            return task;
        }
        assert!(Instant::now() < deadline, "task {id} did not complete: {task}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the servers started in data directory `dir` logged.
fn serve_log(dir: &std::path::Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("serve-"))
        .map(|entry| std::fs::read_to_string(entry.path()).unwrap())
        .collect()
}

/// Starts `taskhost serve` on a new data directory `dir` with `extra`
/// flags, expecting it to refuse to start: what it printed and its exit
/// status (a start that runs on past 30 s fails the test instead of
/// hanging it).
async fn refused_start(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let start = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["serve", "--data", dir.to_str().unwrap(), "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(extra)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), start)
        .await
        .expect("the start was refused, not left running")
        .unwrap()
}

/// A second host on a database a host serves is refused, saying why, and
/// changes nothing: the first goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_on_a_database_is_refused_and_the_first_goes_on() {
    let url = taskhost_test_postgres::cluster().database("serve_second_host");
    let data = tempfile::tempdir().unwrap();
    let server = start_with(data.path(), free_port(), &["--store", &url]).await;
    let http = crate::admin_client(data.path()).await;
    upload(&http, &server.base, "sleep", taskhost_test_artifacts::SLEEP.bytes()).await;
    let other = tempfile::tempdir().unwrap();
    let refused = refused_start(other.path(), &["--store", &url]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("another taskhost host serves this PostgreSQL database"), "{stderr}");
    assert!(!stderr.contains(&url), "the URL (which may hold a password) is not repeated: {stderr}");
    let task = submit(&http, &server.base, json!({"plugin": "sleep", "input": 1})).await;
    // The first host goes on serving.
    completed(&http, &server.base, task["id"].as_str().unwrap(), Duration::from_secs(20)).await;
}

/// When the connection holding its engine lock fails (the server ended
/// its session, as a restart or a network cut would), a host stops with
/// the store's exit code, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_loses_its_engine_lock_stops() {
    let url = taskhost_test_postgres::cluster().database("serve_lock_lost");
    let data = tempfile::tempdir().unwrap();
    let mut server = start_with(data.path(), free_port(), &["--store", &url]).await;
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks AS l JOIN pg_database AS d ON d.oid = l.database
         WHERE d.datname = current_database() AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended('taskhost sole engine', 0)",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(ended, [true], "one session held the engine lock");
    let status = server.exited(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(3));
    let log = serve_log(data.path());
    assert!(log.contains("no longer sure to be the only one on its store"), "{log}");
}

/// The configuration file's `[server] store` names the database, reached
/// over TLS with the server's certificate verified: tasks run, and their
/// records are in that database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_keeps_its_store_in_the_database_its_file_names_over_tls() {
    let cluster = taskhost_test_postgres::tls_cluster();
    let tls = cluster.tls().unwrap();
    let db = cluster.new_database("serve_tls");
    let url = format!("{}?sslmode=verify-full&sslrootcert={}", cluster.tcp_url(&db).unwrap(), tls.ca.display());
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("taskhost.toml");
    std::fs::write(&config, format!("[server]\nstore = \"{url}\"\n")).unwrap();
    let server = start_with(data.path(), free_port(), &["--config", config.to_str().unwrap()]).await;
    let http = crate::admin_client(data.path()).await;
    upload(&http, &server.base, "sleep", taskhost_test_artifacts::SLEEP.bytes()).await;
    let task = submit(&http, &server.base, json!({"plugin": "sleep", "input": 1})).await;
    let id = task["id"].as_str().unwrap().to_owned();
    completed(&http, &server.base, &id, Duration::from_secs(20)).await;
    // The host lists itself, under the id its data directory keeps.
    let hosts: taskhost::wire::HostList =
        http.get(format!("{}/v1/hosts", server.base)).send().await.unwrap().json().await.unwrap();
    let id_file = std::fs::read_to_string(data.path().join("host-id")).unwrap();
    assert_eq!(hosts.hosts.len(), 1, "{hosts:?}");
    assert!(hosts.hosts[0].this && hosts.hosts[0].live && hosts.hosts[0].id == id_file.trim(), "{hosts:?}");
    let db = sqlx::PgPool::connect(&cluster.url(&db)).await.unwrap();
    let state: String = sqlx::query_scalar("SELECT state FROM taskhost_tasks WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(state, "completed");
    assert!(!data.path().join("taskhost.redb").exists(), "no redb store was made beside it");
}

/// A database server whose certificate the URL's authority did not sign is
/// refused at start (exit code 3), saying so, without repeating the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_refuses_a_database_whose_certificate_it_cannot_verify() {
    let cluster = taskhost_test_postgres::tls_cluster();
    let tls = cluster.tls().unwrap();
    let db = cluster.new_database("serve_tls_untrusted");
    let url = format!("{}?sslmode=verify-full&sslrootcert={}", cluster.tcp_url(&db).unwrap(), tls.other_ca.display());
    let data = tempfile::tempdir().unwrap();
    let refused = refused_start(data.path(), &["--store", &url]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(!stderr.contains(&tls.password), "the password is not repeated: {stderr}");
}

/// A host frozen (SIGSTOP) past its lease is taken over by a host starting
/// on the database: the tasks it was running are recovered and complete
/// there, once each. Resumed, the frozen host can write nothing (a
/// submission to it is not stored) and stops with the store's exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_host_is_taken_over_and_writes_nothing_when_it_resumes() {
    let url = taskhost_test_postgres::cluster().database("serve_frozen");
    let lease = ["--store", &url, "--store-lease", "10s"];
    let data = tempfile::tempdir().unwrap();
    let mut frozen = start_with(data.path(), free_port(), &lease).await;
    let http = crate::admin_client(data.path()).await;
    upload(&http, &frozen.base, "sleep", taskhost_test_artifacts::SLEEP.bytes()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let task = submit(&http, &frozen.base, json!({"plugin": "sleep", "input": 1500})).await;
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    // Frozen while it runs them.
    running(&http, &frozen.base, &ids[2..]).await;
    frozen.signal(libc::SIGSTOP);
    // While its lease is live, another host is refused; once it lapsed
    // (6 s after the last renewal), one takes over.
    let other = tempfile::tempdir().unwrap();
    let refused = refused_start(other.path(), &lease).await;
    assert_eq!(refused.status.code(), Some(3), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("another taskhost host serves"));
    tokio::time::sleep(Duration::from_secs(12)).await;
    // The database's tokens serve it; the first host's admin token is
    // copied where the client looks for one.
    let token = taskhost::auth::ADMIN_TOKEN_FILE;
    std::fs::copy(data.path().join(token), other.path().join(token)).unwrap();
    let taker = start_with(other.path(), free_port(), &lease).await;
    let other_http = crate::admin_client(other.path()).await;
    for id in &ids {
        let task = completed(&other_http, &taker.base, id, Duration::from_secs(30)).await;
        // Its first attempt was the frozen host's, counted.
        assert_eq!(task["attempts"], 2, "{task}");
    }
    // Resumed: what it tries to write is refused, and it stops.
    frozen.signal(libc::SIGCONT);
    let late = http
        .post(format!("{}/v1/tasks", frozen.base))
        .json(&json!({"plugin": "sleep", "input": 1, "idempotency_key": "after-resume"}))
        .send()
        .await;
    if let Ok(answer) = late {
        assert!(!answer.status().is_success(), "a deposed host accepted a task: {}", answer.status());
    }
    let status = frozen.exited(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(3));
    // Its attempts' outcomes were tried, and refused by the fence (without
    // it, they would have met the moved tasks' versions instead).
    let log = serve_log(data.path());
    assert!(log.contains("no longer the engine of this PostgreSQL database"), "{log}");
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM taskhost_tasks").fetch_one(&db).await.unwrap();
    assert_eq!(stored, 3, "nothing the resumed host was given was stored");
    for id in &ids {
        let history: Value =
            other_http.get(format!("{}/v1/tasks/{id}/history", taker.base)).send().await.unwrap().json().await.unwrap();
        let completions = history["history"]
            .as_array()
            .unwrap_or_else(|| panic!("{history}"))
            .iter()
            .filter(|t| t["to"] == "completed")
            .count();
        assert_eq!(completions, 1, "task {id} completed once: {history}");
    }
}

/// `/healthz` of the server at `base`: its status code and body.
async fn health(http: &reqwest::Client, base: &str) -> (u16, Value) {
    let answer = http.get(format!("{base}/healthz")).send().await.unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

/// The host id in data directory `dir`.
fn host_id(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("host-id")).unwrap().trim().to_owned()
}

/// Waits (at most 10 s) until the server at `base` stands by naming
/// `serving` (a host id) as the host that serves.
async fn standing_by_for(http: &reqwest::Client, base: &str, serving: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = health(http, base).await;
        assert_eq!((status, body["status"].as_str()), (503, Some("standby")), "{body}");
        if body["reason"].as_str().is_some_and(|why| why.contains(serving)) {
            return;
        }
        assert!(Instant::now() < deadline, "the standby does not name {serving}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most 10 s) until the server at `base` lists each of
/// `expected` (host id, role) as live in `GET /v1/hosts`.
async fn listed(http: &reqwest::Client, base: &str, expected: &[(String, taskhost::wire::HostRole)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list: taskhost::wire::HostList =
            http.get(format!("{base}/v1/hosts")).send().await.unwrap().json().await.unwrap();
        let found = expected.iter().all(|(id, role)| {
            list.hosts.iter().any(|h| &h.id == id && h.live && h.report.as_ref().is_some_and(|r| r.role == *role))
        });
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "{base} does not list {expected:?}: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (at most `within`) until one of `servers` serves (`/healthz`
/// 200): its index. (A request cut by a standby's switch counts as not
/// serving yet.)
async fn serving(http: &reqwest::Client, servers: &[&crate::recovery::Server], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        for (i, server) in servers.iter().enumerate() {
            let answer = http.get(format!("{}/healthz", server.base)).send().await;
            if answer.is_ok_and(|a| a.status() == 200) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no standby took over within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most 20 s) until the tasks `ids` run on the server at `base`.
async fn running(http: &reqwest::Client, base: &str, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in ids {
        loop {
            let task: Value = http.get(format!("{base}/v1/tasks/{id}")).send().await.unwrap().json().await.unwrap();
            if task["state"] == "running" {
                break;
            }
            assert!(Instant::now() < deadline, "task {id} never ran: {task}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Three hosts on one database, two of them `--standby`: the standbys
/// answer 503 naming the serving host. The serving host is SIGKILLed
/// mid-run: one standby takes over within seconds and completes its
/// tasks (the interrupted attempts counted) while the other waits on.
/// That one is frozen (SIGSTOP) past its lease mid-run: the last takes
/// over; resumed, the frozen host writes nothing and exits 3. Every task
/// completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_take_over_in_turn_and_every_task_completes_once() {
    let url = taskhost_test_postgres::cluster().database("serve_standbys");
    let lease = ["--store", &url, "--store-lease", "6s"];
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut first = start_with(dirs[0].path(), free_port(), &lease).await;
    let http = crate::admin_client(dirs[0].path()).await;
    upload(&http, &first.base, "sleep", taskhost_test_artifacts::SLEEP.bytes()).await;
    // The database's tokens serve every host: the first host's admin token
    // is copied where the client looks for one.
    let token = taskhost::auth::ADMIN_TOKEN_FILE;
    for dir in &dirs[1..] {
        std::fs::copy(dirs[0].path().join(token), dir.path().join(token)).unwrap();
    }
    let standby = [&lease[..], &["--standby"]].concat();
    let mut standbys = Vec::new();
    for dir in &dirs[1..] {
        standbys.push(start_with(dir.path(), free_port(), &standby).await);
    }
    for server in &standbys {
        standing_by_for(&http, &server.base, &host_id(dirs[0].path())).await;
        let refused = http.post(format!("{}/v1/tasks", server.base)).json(&json!({"plugin": "sleep"})).send().await;
        let refused = refused.unwrap();
        assert_eq!(refused.status().as_u16(), 503);
        assert_eq!(refused.headers()["retry-after"], "1");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
    }
    // The serving host lists the standbys, as such.
    use taskhost::wire::HostRole::{Serving, Standby};
    let roles =
        [(host_id(dirs[0].path()), Serving), (host_id(dirs[1].path()), Standby), (host_id(dirs[2].path()), Standby)];
    listed(&http, &first.base, &roles).await;
    let mut ids = Vec::new();
    let mut long = Vec::new();
    for n in 0..44 {
        let ms = if n < 4 { 2000 } else { 50 };
        let task = submit(&http, &first.base, json!({"plugin": "sleep", "input": ms})).await;
        let id = task["id"].as_str().unwrap().to_owned();
        if n < 4 {
            long.push(id.clone());
        }
        ids.push(id);
    }
    running(&http, &first.base, &long).await;
    first.signal(libc::SIGKILL);
    first.exited(Duration::from_secs(10)).await;
    let killed = Instant::now();
    let taker = serving(&http, &[&standbys[0], &standbys[1]], Duration::from_secs(20)).await;
    eprintln!("a standby served {:?} after the SIGKILL", killed.elapsed());
    let mut leader = standbys.remove(taker);
    let last = standbys.remove(0);
    let leader_dir = if taker == 0 { &dirs[1] } else { &dirs[2] };
    // The other waits on, naming the new host, which lists it.
    standing_by_for(&http, &last.base, &host_id(leader_dir.path())).await;
    let last_dir = if taker == 0 { &dirs[2] } else { &dirs[1] };
    listed(&http, &leader.base, &[(host_id(leader_dir.path()), Serving), (host_id(last_dir.path()), Standby)]).await;
    for id in &ids {
        let task = completed(&http, &leader.base, id, Duration::from_secs(30)).await;
        if long.contains(id) {
            assert_eq!(task["attempts"], 2, "the killed host's attempt counted: {task}");
        } else {
            // Run once, or once more if the kill cut its first attempt.
            assert!(matches!(task["attempts"].as_u64(), Some(1 | 2)), "{task}");
        }
    }
    // Frozen while it runs more: the last standby takes over once its
    // lease lapsed, and completes them.
    let mut frozen_ids = Vec::new();
    for _ in 0..3 {
        let task = submit(&http, &leader.base, json!({"plugin": "sleep", "input": 2000})).await;
        frozen_ids.push(task["id"].as_str().unwrap().to_owned());
    }
    running(&http, &leader.base, &frozen_ids).await;
    leader.signal(libc::SIGSTOP);
    serving(&http, &[&last], Duration::from_secs(40)).await;
    for id in &frozen_ids {
        let task = completed(&http, &last.base, id, Duration::from_secs(30)).await;
        assert_eq!(task["attempts"], 2, "the frozen host's attempt counted: {task}");
    }
    leader.signal(libc::SIGCONT);
    assert_eq!(leader.exited(Duration::from_secs(30)).await.code(), Some(3));
    assert!(serve_log(leader_dir.path()).contains("no longer the engine of this PostgreSQL database"));
    ids.extend(frozen_ids);
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM taskhost_tasks").fetch_one(&db).await.unwrap();
    assert_eq!(stored, i64::try_from(ids.len()).unwrap(), "nothing but the submitted tasks was stored");
    for id in &ids {
        let history: Value =
            http.get(format!("{}/v1/tasks/{id}/history", last.base)).send().await.unwrap().json().await.unwrap();
        let ends = history["history"].as_array().unwrap_or_else(|| panic!("{history}"));
        let completions = ends.iter().filter(|t| t["to"] == "completed").count();
        assert_eq!(completions, 1, "task {id} completed once: {history}");
    }
}

/// A standby told to stop (SIGTERM) while it waits exits at once, having
/// served nothing, and the serving host no longer lists it; `--standby`
/// without a database is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_stops_while_it_waits_and_needs_a_database() {
    let url = taskhost_test_postgres::cluster().database("serve_standby_stop");
    let data = tempfile::tempdir().unwrap();
    let serving = start_with(data.path(), free_port(), &["--store", &url]).await;
    let other = tempfile::tempdir().unwrap();
    let token = taskhost::auth::ADMIN_TOKEN_FILE;
    std::fs::copy(data.path().join(token), other.path().join(token)).unwrap();
    let mut standby = start_with(other.path(), free_port(), &["--store", &url, "--standby"]).await;
    let (status, _) = health(&crate::http(), &standby.base).await;
    assert_eq!(status, 503);
    let http = crate::admin_client(data.path()).await;
    listed(&http, &serving.base, &[(host_id(other.path()), taskhost::wire::HostRole::Standby)]).await;
    let (exit, took) = standby.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?} after {took:?}");
    let list: taskhost::wire::HostList =
        http.get(format!("{}/v1/hosts", serving.base)).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = list.hosts.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, [host_id(data.path())], "the standby's heartbeat went with it");
    let log = serve_log(other.path());
    assert!(log.contains("standing by") && log.contains("it took nothing over"), "{log}");
    let alone = tempfile::tempdir().unwrap();
    let refused = refused_start(alone.path(), &["--standby"]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--standby needs a PostgreSQL store"), "{stderr}");
}
