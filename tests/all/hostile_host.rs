//! The host around the sandbox under hostile plugins and clients, through
//! the real binary on loopback: what a task makes the host hold is counted
//! against its host budget, limits are the operator's, and a guest stuck in
//! file I/O holds a bounded pool, not host threads, and running tasks'
//! memory limits stay within the host's memory budget. Throughout, the host's
//! RSS, threads and open files stay under stated bounds, `/healthz`
//! answers, and every accepted task ends.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use taskhost_test_artifacts::{ALLOC_FOREVER, HOST_HOG, READ_FILE, UPPERCASE};

struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(extra: &[&str]) -> Server {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["serve", "--data", data.path().to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .args(["--retry-base", "10ms", "--retry-cap", "20ms"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = crate::admin_client(data.path()).await;
    let server = Server { child, base: format!("http://127.0.0.1:{port}"), http, _data: data };
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.http.get(format!("{}/healthz", server.base)).send().await.is_err() {
        assert!(Instant::now() < deadline, "taskhost serve did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

impl Server {
    async fn upload(&self, name: &str, bytes: Vec<u8>) {
        let response = self.http.post(format!("{}/v1/plugins/{name}", self.base)).body(bytes).send().await.unwrap();
        assert!(response.status().is_success(), "uploading {name}: {}", response.status());
    }

    async fn manifest(&self, name: &str, toml: &str) {
        let url = format!("{}/v1/plugins/{name}/manifest", self.base);
        let response = self.http.put(url).body(toml.to_owned()).send().await.unwrap();
        assert!(response.status().is_success(), "manifest of {name}: {}", response.status());
    }

    async fn submit(&self, body: Value) -> (u16, Value) {
        let response = self.http.post(format!("{}/v1/tasks", self.base)).json(&body).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn task(&self, id: &str) -> Value {
        self.http.get(format!("{}/v1/tasks/{id}", self.base)).send().await.unwrap().json().await.unwrap()
    }

    /// Waits for `id` to end, checking `/healthz` answers on the way.
    async fn ended(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let task = self.task(id).await;
            if ["completed", "failed", "cancelled"].contains(&task["state"].as_str().unwrap()) {
                return task;
            }
            self.healthy().await;
            assert!(Instant::now() < deadline, "task {id} never ended: {task}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn healthy(&self) {
        let answer =
            tokio::time::timeout(Duration::from_secs(5), self.http.get(format!("{}/healthz", self.base)).send()).await;
        assert!(answer.is_ok_and(|r| r.is_ok_and(|r| r.status().is_success())), "/healthz did not answer in 5 s");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A `/proc/PID/status` field, in its own unit (kB for memory).
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// `text` as a submission's raw input bytes (`input` would be JSON).
fn raw(text: &str) -> String {
    BASE64.encode(text)
}

/// A task's output as text, whether the API shows it as JSON or base64.
fn output_text(task: &Value) -> String {
    match (&task["output"], task["output_base64"].as_str()) {
        (Value::String(text), _) => text.clone(),
        (_, Some(b64)) => String::from_utf8(BASE64.decode(b64).unwrap()).unwrap(),
        (other, None) => other.to_string(),
    }
}

/// `O_NONBLOCK` on Linux.
const O_NONBLOCK: i32 = 0o4000;

/// What a task's error says: its class and message.
fn error_of(task: &Value) -> (String, String) {
    let error = &task["error"];
    (error["class"].as_str().unwrap_or("").to_owned(), error["message"].as_str().unwrap_or("").to_owned())
}

/// The RSS a host may reach in these tests: its pools and engine (about
/// 100-200 MiB), the tasks' own memories, and their host budgets.
const RSS_BOUND_KIB: u64 = 768 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_task_makes_the_host_hold_is_counted_against_its_host_budget() {
    let server = start(&[]).await;
    server.upload("host-hog", HOST_HOG.bytes()).await;
    // A small memory limit, as in the report: the host must not hold GiBs
    // for a task allowed 32 MiB.
    server.manifest("host-hog", "[limits]\nmemory = \"32MiB\"\n").await;
    let submit = |input: String| {
        let server = &server;
        async move {
            let (status, body) =
                server.submit(json!({"plugin": "host-hog", "input_base64": raw(&input), "max_attempts": 1})).await;
            assert_eq!(status, 201, "{body}");
            body["id"].as_str().unwrap().to_owned()
        }
    };
    // Empty log records: free under the log cap, not under the budget.
    // Four floods of children from one reused 6 MiB buffer, at once, and a
    // child over the input cap.
    let logs = submit("logs 30000000".into()).await;
    let mut children = Vec::new();
    for _ in 0..4 {
        children.push(submit(format!("children 100 {}", 6 << 20)).await);
    }
    let oversized = submit(format!("children 1 {}", 10 << 20)).await;
    // Set then delete one key of 100 KiB ten times: the bytes come back.
    let context = submit(format!("context 10 {}", 100 << 10)).await;
    let mut peak_rss = 0;
    let mut ids = vec![logs.clone(), context.clone(), oversized.clone()];
    ids.extend(children.iter().cloned());
    for id in &ids {
        let task = server.ended(id).await;
        peak_rss = peak_rss.max(proc_status(server.pid(), "VmHWM:"));
        match id {
            id if *id == logs => {
                let (class, message) = error_of(&task);
                assert_eq!(class, "host budget exceeded", "{task}");
                assert!(message.contains("a log record needs 48 more bytes"), "{message}");
                let used = task["host_bytes_used"].as_u64().unwrap();
                assert!(used <= 64 << 20 && used > 60 << 20, "the budget's peak is recorded: {used}");
                assert_eq!(task["limits"]["host_bytes"], 64 << 20);
            }
            id if *id == context => assert_eq!(output_text(&task), "ok", "{task}"),
            id if *id == oversized => {
                let output = output_text(&task);
                let cap =
                    "accepted 0; refused: permanent: limit exceeded: a child's input may be at most 8388608 bytes";
                assert!(output.starts_with(cap), "{output}");
            }
            _ => {
                // At most ten 6 MiB children fit 64 MiB; the eleventh is
                // refused with the reason, and the parent ends normally.
                let output = output_text(&task);
                assert!(output.starts_with("accepted 10; refused: "), "{output}");
                assert!(output.contains("host budget of 67108864 bytes would be passed: a child needs"), "{output}");
            }
        }
    }
    assert!(peak_rss < RSS_BOUND_KIB, "host RSS peaked at {} MiB", peak_rss >> 10);

    // A join's outputs are copies the host holds for the guest: ten 4 MiB
    // outputs do not fit a 16 MiB budget, and the continuation ends in the
    // budget's class.
    server.manifest("host-hog", "[limits]\nmemory = \"64MiB\"\nhost_memory = \"16MiB\"\n").await;
    let joiner = submit(format!("join 10 {}", 4 << 20)).await;
    let then = server.ended(&joiner).await;
    let then = output_text(&then);
    let joined = server.ended(&then).await;
    let (class, message) = error_of(&joined);
    assert_eq!(class, "host budget exceeded", "{joined}");
    assert!(message.contains("the joined tasks' outputs"), "{message}");
    server.healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_over_the_manifest_or_the_hosts_ceilings_are_refused_naming_them() {
    let server = start(&["--max-timeout", "20s"]).await;
    server.upload("upper", UPPERCASE.bytes()).await;
    server.manifest("upper", "[limits]\nfuel = 1000000\nmemory = \"16MiB\"\ntimeout = \"1s\"\n").await;
    let refused = |body: Value, field: &'static str, by: &'static str| {
        let server = &server;
        async move {
            let (status, answer) = server.submit(body).await;
            assert_eq!(status, 400, "{answer}");
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.starts_with(field) && message.contains(by), "{message}");
        }
    };
    let manifest = "(set by plugin `upper`'s manifest)";
    refused(json!({"plugin": "upper", "timeout_ms": 25_000}), "timeout_ms 25000 ms is over", manifest).await;
    refused(json!({"plugin": "upper", "fuel": u64::MAX}), "fuel 18446744073709551615 is over", manifest).await;
    refused(json!({"plugin": "upper", "memory_bytes": 4u64 << 30}), "memory_bytes 4 GiB is over", manifest).await;
    // Without a manifest limit, the operator's ceiling applies.
    server.manifest("upper", "").await;
    let host = "(set by this host's ceiling)";
    refused(json!({"plugin": "upper", "timeout_ms": 25_000}), "timeout_ms 25000 ms is over the most", host).await;
    refused(json!({"plugin": "upper", "fuel": u64::MAX}), "fuel", host).await;
    // Lower than the caps is the submitter's choice; nothing refused was stored.
    let (status, body) = server.submit(json!({"plugin": "upper", "input": "ok", "timeout_ms": 900})).await;
    assert_eq!(status, 201, "{body}");
    let done = server.ended(body["id"].as_str().unwrap()).await;
    assert_eq!((done["output"].as_str(), done["limits"]["timeout_ms"].as_u64()), (Some("OK"), Some(900)));
    let page: Value = server.http.get(format!("{}/v1/tasks", server.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "refused submissions wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_stuck_reading_a_fifo_hold_a_bounded_pool_not_the_host() {
    let server = start(&["--guest-file-threads", "4", "--concurrency", "16"]).await;
    let granted = tempfile::tempdir().unwrap();
    let fifo = granted.path().join("pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::fs::write(granted.path().join("plain.txt"), "plain").unwrap();
    server.upload("files", READ_FILE.bytes()).await;
    server.upload("upper", UPPERCASE.bytes()).await;
    let manifest = format!("[limits]\ntimeout = \"300ms\"\n[[dirs]]\nhost = {:?}\nguest = \"/d\"\n", granted.path());
    server.manifest("files", &manifest).await;
    let threads_before = proc_status(server.pid(), "Threads:");
    let files_before = open_files(server.pid());
    let mut stuck = Vec::new();
    for _ in 0..60 {
        let (status, body) =
            server.submit(json!({"plugin": "files", "input_base64": raw("/d/pipe"), "max_attempts": 1})).await;
        assert_eq!(status, 201, "{body}");
        stuck.push(body["id"].as_str().unwrap().to_owned());
    }
    // Four readers take the pool's threads and time out; the others time
    // out queued behind them, or, once the pool is seen to be exhausted,
    // fail at once saying so (instead of queueing more).
    let mut refused = 0;
    for id in &stuck {
        let task = server.ended(id).await;
        match error_of(&task) {
            (class, _) if class == "timeout" => {}
            (class, message) if class == "host error" => {
                assert!(
                    message.starts_with("guest file I/O is unavailable: all 4 threads for it are taken"),
                    "{message}"
                );
                refused += 1;
            }
            _ => panic!("a stuck reader ended as {task}"),
        }
    }
    assert!(refused > 0, "the exhausted pool was never noticed");
    // The host's own work carries on: tasks without file I/O run, the API
    // answers, and threads and files stay bounded (4 stuck readers, not 60).
    let (_, body) = server.submit(json!({"plugin": "upper", "input": "still here"})).await;
    let done = server.ended(body["id"].as_str().unwrap()).await;
    assert_eq!(done["output"], "STILL HERE");
    let threads = proc_status(server.pid(), "Threads:");
    assert!(threads <= threads_before + 16, "threads grew from {threads_before} to {threads}");
    let files = open_files(server.pid());
    assert!(files <= files_before + 24, "open files grew from {files_before} to {files}");
    // With the pool full, further guest file I/O fails the task, not the
    // host.
    let (_, body) =
        server.submit(json!({"plugin": "files", "input_base64": raw("/d/plain.txt"), "max_attempts": 1})).await;
    let waited = server.ended(body["id"].as_str().unwrap()).await;
    assert_eq!(error_of(&waited).0, "host error", "{waited}");
    server.healthy().await;
    // Releasing the readers frees the pool: file I/O works again. One
    // writer's open lets every reader blocked in its open go on (to EOF);
    // non-blocking, so it cannot hang if none is left.
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::OpenOptions::new().write(true).custom_flags(O_NONBLOCK).open(&fifo);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) =
            server.submit(json!({"plugin": "files", "input_base64": raw("/d/plain.txt"), "max_attempts": 1})).await;
        let task = server.ended(body["id"].as_str().unwrap()).await;
        if output_text(&task) == "READ: plain" {
            break;
        }
        assert!(Instant::now() < deadline, "file I/O never recovered: {task}");
    }
}

/// Sixteen tasks that each touch memory up to their 128 MiB limit, under a
/// 600 MiB memory budget: each reserves 128 MiB plus its 64 MiB host
/// budget, so three run at once although eight slots are free. The rest
/// wait, every task ends, the reserved memory never passes the budget, the
/// host's peak RSS stays under what three (not eight, about 1 GiB) such
/// tasks need, and the metrics and the plugin's run history show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_whose_memory_does_not_fit_the_budget_wait_and_all_end() {
    let server = start(&["--memory-budget", "600MiB", "--concurrency", "8"]).await;
    server.upload("alloc", ALLOC_FOREVER.bytes()).await;
    let before = proc_status(server.pid(), "VmRSS:");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (http, url, stop) = (server.http.clone(), format!("{}/metrics", server.base), stop.clone());
        tokio::spawn(async move {
            let mut most: f64 = 0.0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let text = http.get(&url).send().await.unwrap().text().await.unwrap();
                most = most.max(crate::metric_value(&text, "taskhost_memory_reserved_bytes"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    let mut ids = Vec::new();
    for _ in 0..16 {
        let (status, body) = server.submit(json!({"plugin": "alloc", "memory_bytes": 128 << 20})).await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let task = server.ended(id).await;
        assert_eq!(error_of(&task).0, "memory limit exceeded", "{task}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let most_reserved = sampler.await.unwrap();
    assert!(most_reserved > 0.0, "the sampler saw tasks running");
    assert!(most_reserved <= (600u64 << 20) as f64, "reserved {most_reserved} bytes, past the budget");
    let text = server.http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(crate::metric_value(&text, "taskhost_memory_budget_bytes"), (600u64 << 20) as f64);
    assert!(crate::metric_value(&text, "taskhost_memory_waits_total") > 0.0, "some tasks waited:\n{text}");
    assert_eq!(crate::metric_value(&text, "taskhost_memory_reserved_bytes"), 0.0);
    let grown = proc_status(server.pid(), "VmHWM:").saturating_sub(before);
    assert!(grown < 640 << 10, "peak RSS grew {grown} KiB: more than three 128 MiB tasks at once");

    let plugin: Value =
        server.http.get(format!("{}/v1/plugins/alloc", server.base)).send().await.unwrap().json().await.unwrap();
    let runs = &plugin["versions"][0]["runs"];
    assert_eq!(runs["runs"], 16, "{plugin}");
    let peak = runs["memory_bytes_max"].as_u64().unwrap();
    assert!((100 << 20..=128 << 20).contains(&peak), "peak linear memory {peak}");
}
