//! The real `taskhost serve` binary for the benchmarks that measure it:
//! starting it, waiting until it serves, reading its counts, and timing a
//! restart after SIGKILL.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `taskhost serve` on `dir` and `port`, with `extra` flags, quiet.
pub fn serve(dir: &Path, port: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["serve", "--data", dir.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A client sending the admin token the server on `dir` wrote at its
/// first start (waits for the file). (Not every benchmark that includes
/// this file sends requests that need a token.)
#[allow(dead_code)]
pub async fn admin_client(dir: &Path) -> reqwest::Client {
    let path = dir.join(taskhost::auth::ADMIN_TOKEN_FILE);
    let started = Instant::now();
    let token = loop {
        match taskhost::auth::read_token_file(&path) {
            Ok(token) if !token.is_empty() => break token,
            _ => assert!(started.elapsed() < Duration::from_secs(120), "no admin token in {}", path.display()),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    taskhost::tls::install_crypto_provider();
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

/// Waits until `/healthz` answers 200; gives how long that took.
pub async fn until_up(http: &reqwest::Client, base: &str) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the server did not come up");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Completed tasks, as `/healthz` counts them.
pub async fn completed(http: &reqwest::Client, base: &str) -> u64 {
    let health: serde_json::Value = http.get(format!("{base}/healthz")).send().await.unwrap().json().await.unwrap();
    health["tasks"]["completed"].as_u64().unwrap_or(0)
}

/// What a restart after SIGKILL measured.
pub struct Restarted {
    /// Process start to `/healthz` 200.
    pub to_serving: Duration,
    /// Completed tasks `/healthz` reported then.
    pub completed: u64,
    /// The server's RSS then, in KiB.
    pub rss_kib: u64,
    /// The store file's size in bytes.
    pub file_bytes: u64,
}

/// Starts `taskhost serve` on the store in `dir`, SIGKILLs it once it
/// serves, and times a second start to serving.
pub async fn restart_after_kill(dir: &Path) -> Restarted {
    let port = free_port();
    taskhost::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut first = serve(dir, port, &[]);
    until_up(&http, &base).await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let mut second = serve(dir, port, &[]);
    let to_serving = until_up(&http, &base).await;
    let completed = completed(&http, &base).await;
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", second.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0);
    let file_bytes = std::fs::metadata(dir.join("taskhost.redb")).map_or(0, |m| m.len());
    second.kill().unwrap();
    second.wait().unwrap();
    Restarted { to_serving, completed, rss_kib, file_bytes }
}
