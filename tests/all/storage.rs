//! Storage faults through the real binary: a damaged, empty or foreign
//! store file ends `taskhost serve` with a clear error naming the file and
//! `taskhost store` (never a panic, never a new empty store over it);
//! `taskhost store check` finds the damage and `store repair` keeps a
//! backup and what can be read; a full disk (a small tmpfs) turns the
//! server unhealthy and refuses writes, then recovers without losing
//! anything acknowledged.

use crate::cli::taskhost_with_env;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use taskhost_test_artifacts::UPPERCASE;

const PAGE: usize = 4096;

fn taskhost(args: &[&str]) -> Output {
    taskhost_with_env(args, &[], b"")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    /// Never leaves a server running, even when an assertion failed.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// How a `taskhost serve` start ended.
enum Start {
    /// It answers `/healthz`.
    Up(Server),
    /// It exited first, with this output.
    Exited(Output),
}

async fn start(data: &Path) -> Start {
    let port = free_port();
    // Into a file, not a pipe: a server that runs on is never read.
    let stderr = tempfile::tempfile().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["serve", "--data", data.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = crate::http();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            use std::io::{Read, Seek};
            let mut stderr = stderr;
            let mut text = Vec::new();
            stderr.seek(std::io::SeekFrom::Start(0)).unwrap();
            stderr.read_to_end(&mut text).unwrap();
            return Start::Exited(Output { status, stdout: Vec::new(), stderr: text });
        }
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            return Start::Up(Server { child, base });
        }
        assert!(Instant::now() < deadline, "taskhost serve neither came up nor exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn up(data: &Path) -> Server {
    match start(data).await {
        Start::Up(server) => server,
        Start::Exited(out) => panic!("taskhost serve exited ({:?}): {}", out.status, text(&out.stderr)),
    }
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Option<String>, Value) {
    let response = http.post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn upload(http: &reqwest::Client, base: &str) {
    let response = http.post(format!("{base}/v1/plugins/uppercase")).body(UPPERCASE.bytes()).send().await.unwrap();
    assert!(response.status().is_success(), "uploading: {}", response.status());
}

async fn wait_ended(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, task) = get(http, format!("{base}/v1/tasks/{id}")).await;
        if ["completed", "failed", "cancelled"].contains(&task["state"].as_str().unwrap_or("")) {
            return task;
        }
        assert!(Instant::now() < deadline, "task {id} did not end: {task}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn marker(i: usize) -> String {
    format!("<input {i:05}>")
}

/// A data directory whose store holds `n` completed tasks, each input
/// carrying its marker; the server is stopped.
async fn store_with_tasks(n: usize) -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let server = up(data.path()).await;
    let http = crate::admin_client(data.path()).await;
    upload(&http, &server.base).await;
    let mut ids = Vec::new();
    for i in 0..n {
        let input = marker(i).repeat(20);
        let (status, _, task) =
            post(&http, format!("{}/v1/tasks", server.base), json!({"plugin": "uppercase", "input": input})).await;
        assert_eq!(status, 201, "{task}");
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(wait_ended(&http, &server.base, id).await["state"], "completed");
    }
    drop(server);
    data
}

fn store_file(data: &Path) -> PathBuf {
    data.join("taskhost.redb")
}

/// `bytes` with one page zeroed.
fn zeroed(bytes: &[u8], page: usize) -> Vec<u8> {
    let mut copy = bytes.to_vec();
    copy[page * PAGE..(page + 1) * PAGE].fill(0);
    copy
}

/// Asserts `serve` refused to start on the store with a clear error.
fn assert_refused(out: &Output, file: &Path, what: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{what}: not the store's exit code (101 is a panic): {stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{what}: the file is not named: {stderr}");
    assert!(stderr.contains("taskhost store check") && stderr.contains("taskhost store repair"), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
}

/// The pages of the live copy of the page holding `wanted` (earlier copies
/// are free pages nothing reads), found by `taskhost store check`.
fn live_page_with(data: &Path, original: &[u8], wanted: &str) -> usize {
    let file = store_file(data);
    let mut pages: Vec<usize> = original
        .windows(wanted.len())
        .enumerate()
        .filter(|(_, w)| *w == wanted.as_bytes())
        .map(|(at, _)| at / PAGE)
        .collect();
    pages.dedup();
    let live = pages.into_iter().find(|&page| {
        std::fs::write(&file, zeroed(original, page)).unwrap();
        taskhost(&["store", "check", "--data", data.to_str().unwrap()]).status.code() == Some(1)
    });
    std::fs::write(&file, original).unwrap();
    live.unwrap_or_else(|| panic!("no live page holds {wanted}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_file_ends_start_up_with_a_clear_error_never_a_panic() {
    let data = store_with_tasks(60).await;
    let file = store_file(data.path());
    let dir = data.path().to_str().unwrap();
    let original = std::fs::read(&file).unwrap();
    let pages = original.len() / PAGE;
    let live = live_page_with(data.path(), &original, &marker(30));
    let mut candidates = vec![0, live, pages / 3, pages / 2, 2 * pages / 3, pages - 1];
    candidates.dedup();
    let mut refused = 0;
    for page in candidates {
        let damaged = zeroed(&original, page);
        std::fs::write(&file, &damaged).unwrap();
        // `store check` says whether the page mattered; `serve` must agree.
        let check = taskhost(&["store", "check", "--data", dir]);
        match check.status.code() {
            Some(0) => match start(data.path()).await {
                Start::Up(server) => drop(server),
                Start::Exited(out) => {
                    panic!("page {page}: check found nothing, yet serve exited: {}", text(&out.stderr))
                }
            },
            Some(1) => {
                match start(data.path()).await {
                    Start::Exited(out) => assert_refused(&out, &file, &format!("page {page}")),
                    Start::Up(_) => panic!("page {page}: serve started on a store check finds damaged"),
                }
                assert_eq!(std::fs::read(&file).unwrap(), damaged, "page {page}: a refused start writes nothing");
                refused += 1;
            }
            other => panic!("page {page}: store check could not run ({other:?}): {}", text(&check.stderr)),
        }
    }
    assert!(refused >= 2, "the header and the live data page are damage serve must refuse ({refused} refused)");

    // An empty file is not a new store, nor is a foreign one.
    std::fs::write(&file, b"").unwrap();
    match start(data.path()).await {
        Start::Exited(out) => {
            assert_refused(&out, &file, "an empty file");
            assert!(text(&out.stderr).contains("empty"), "{}", text(&out.stderr));
        }
        Start::Up(_) => panic!("serve started a new store over an empty file"),
    }
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "the empty file was left as it was");
    std::fs::write(&file, vec![0x5a; 3 * PAGE]).unwrap();
    match start(data.path()).await {
        Start::Exited(out) => assert_refused(&out, &file, "a foreign file"),
        Start::Up(_) => panic!("serve started over a file that is not a store"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), vec![0x5a; 3 * PAGE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_check_finds_the_damage_and_repair_keeps_a_backup_and_what_it_can_read() {
    let data = store_with_tasks(60).await;
    let file = store_file(data.path());
    let dir = data.path().to_str().unwrap();
    let original = std::fs::read(&file).unwrap();
    let healthy = taskhost(&["store", "check", "--data", dir]);
    assert_eq!(healthy.status.code(), Some(0), "{}", text(&healthy.stdout));
    assert!(text(&healthy.stdout).contains("healthy"), "{}", text(&healthy.stdout));

    let damaged = zeroed(&original, live_page_with(data.path(), &original, &marker(30)));
    std::fs::write(&file, &damaged).unwrap();
    let check = taskhost(&["store", "check", "--data", dir]);
    let report = text(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{report}");
    assert!(report.contains("PROBLEM: redb's integrity check failed"), "{report}");
    assert!(report.contains("taskhost store repair"), "{report}");
    assert_eq!(std::fs::read(&file).unwrap(), damaged, "check changes nothing");

    let repair = taskhost(&["store", "repair", "--data", dir]);
    let report = text(&repair.stdout);
    assert_eq!(repair.status.code(), Some(1), "inputs were lost, so the exit says so: {report}");
    assert!(report.contains("LOST: inputs:"), "{report}");
    assert!(report.contains("tasks: kept 60 of 60"), "{report}");
    let backups: Vec<PathBuf> = std::fs::read_dir(data.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bak"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert!(report.contains(&backups[0].display().to_string()), "the report names the backup: {report}");
    assert_eq!(std::fs::read(&backups[0]).unwrap(), damaged, "the backup is the file as it was");

    // The repaired store starts, with every task.
    let after = taskhost(&["store", "check", "--data", dir]);
    assert!(!text(&after.stdout).contains("integrity check failed"), "{}", text(&after.stdout));
    let server = up(data.path()).await;
    let http = crate::admin_client(data.path()).await;
    let (status, page) = get(&http, format!("{}/v1/tasks?limit=1000", server.base)).await;
    assert_eq!(status, 200, "{page}");
    let tasks = page["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 60);
    assert!(tasks.iter().all(|t| t["state"] == "completed"), "{page}");

    // Another command refuses while the server holds the file.
    let busy = taskhost(&["store", "repair", "--data", dir]);
    assert_eq!(busy.status.code(), Some(2), "{}", text(&busy.stderr));
    assert!(text(&busy.stderr).contains("in use"), "{}", text(&busy.stderr));
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` where mounting is not permitted (not root, no
    /// CAP_SYS_ADMIN); `TASKHOST_REQUIRE_TMPFS=1` makes that a failure.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.path().to_str().unwrap()])
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs { dir }),
            other => {
                let why = match other {
                    Ok(out) => text(&out.stderr),
                    Err(e) => e.to_string(),
                };
                assert!(std::env::var_os("TASKHOST_REQUIRE_TMPFS").is_none(), "cannot mount a tmpfs: {why}");
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here ({why}); the store's unit tests cover this with a failing backend"
                );
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the file system holding `dir` to the last byte.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0xffu8; 64 << 10];
    loop {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    for size in [4096, 512, 1] {
        while file.write_all(&chunk[..size]).is_ok() {}
    }
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_the_server_unhealthy_and_loses_nothing_acknowledged() {
    let Some(disk) = Tmpfs::mount("48m") else { return };
    let data = disk.path().join("data");
    let server = up(&data).await;
    let base = server.base.clone();
    let http = crate::admin_client(&data).await;
    upload(&http, &base).await;
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let (status, _, task) =
            post(&http, format!("{base}/v1/tasks"), json!({"plugin": "uppercase", "input": marker(i)})).await;
        assert_eq!(status, 201, "{task}");
        acknowledged.push(task["id"].as_str().unwrap().to_owned());
    }
    let filler = fill(disk.path());

    // Submit until the store cannot write: each submission is acknowledged,
    // or waits (its commit is held until there is room), or is refused.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let submitter = tokio::spawn({
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        async move {
            let mut acked = Vec::new();
            // At most 400 of 64 KiB: far more than the disk has room for.
            for i in 0..400 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let input = marker(1000 + i).repeat((64 << 10) / 13);
                let (status, retry, body) =
                    post(&http, format!("{base}/v1/tasks"), json!({"plugin": "uppercase", "input": input})).await;
                match status {
                    201 => acked.push(body["id"].as_str().unwrap().to_owned()),
                    503 => {
                        assert_eq!(
                            (body["error"]["code"].as_str(), retry.as_deref()),
                            (Some("store_unwritable"), Some("5"))
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!("submission answered {other}: {body}"),
                }
            }
            acked
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = loop {
        let (status, health) = get(&http, format!("{base}/healthz")).await;
        if status == 503 {
            break health;
        }
        assert_eq!(status, 200, "{health}");
        assert!(Instant::now() < deadline, "the store never failed a write on the full disk");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(health["status"], "unhealthy");
    assert!(health["reason"].as_str().unwrap().contains("No space left on device"), "{health}");
    // Writes are refused meanwhile; reads go on.
    let (status, retry, refused) =
        post(&http, format!("{base}/v1/tasks"), json!({"plugin": "uppercase", "input": "x"})).await;
    assert_eq!((status, retry.as_deref()), (503, Some("5")), "{refused}");
    assert_eq!(refused["error"]["code"], "store_unwritable");
    let (status, record) = get(&http, format!("{base}/v1/tasks/{}", acknowledged[0])).await;
    assert_eq!(status, 200, "{record}");

    // Space is back: healthy again, and what waited is written.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, health) = get(&http, format!("{base}/healthz")).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never healthy again: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    acknowledged.extend(submitter.await.unwrap());
    for id in &acknowledged {
        assert_eq!(wait_ended(&http, &base, id).await["state"], "completed", "task {id}");
    }
    // And it is all on disk: a restart finds every acknowledged task.
    drop(server);
    let server = up(&data).await;
    for id in &acknowledged {
        let (status, task) = get(&http, format!("{}/v1/tasks/{id}", server.base)).await;
        assert_eq!((status, task["state"].as_str()), (200, Some("completed")), "task {id}: {task}");
    }
}
