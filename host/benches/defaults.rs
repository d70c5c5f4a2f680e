//! "Fast by default": the figures a user gets from the shipped settings,
//! in one table, with the old behaviour (execution slots held across the
//! start and outcome commits, `--claim-ahead 0`) and a tuned run beside
//! them for ratios:
//! 1. trivial tasks over HTTP (`POST /v1/tasks:batch`, 1,000 per request,
//!    4 clients), submit → all completed, on the real `taskhost serve`
//!    binary started with no tuning flags (every request's token checked),
//!    with each client a tenant of its own (tenant tokens, per-tenant
//!    names and fair shares), with 10 subscribers of `/v1/events` that
//!    never read and with 10 that read every event, with `--log-keep 0`
//!    (no task logs kept) and with `--no-auth` for the cost of the check;
//! 2. the in-process engine with `EngineConfig::default()`
//!    (1 and 2: medians of 3 interleaved rounds per setting);
//! 3. submit → start p50/p99 at a steady 1,000 tasks/s (beside it,
//!    interleaved: claimed after its submission's commit rather than in
//!    it, and the old behaviour) and at 10,000 tasks/s;
//! 4. restart to serving after SIGKILL with 1,000,000 stored tasks, and
//!    the host's RSS then (`BENCH_STORED_TASKS` sets the count);
//! 5. `taskhost run` of an 18 MB Python component (componentize-py),
//!    first run (compiles) and second run (artifact cache). Skipped when
//!    `BENCH_PY_COMPONENT` names no file (`./dev.sh bench` builds it);
//! 6. small API requests per second (`GET /v1/queues`), every request's
//!    token checked vs `--no-auth`: the per-request cost of the check;
//! 7. fairness across tenants: the queue wait (submitted → started) of a
//!    trickle of tasks, one every 20 ms, while a backlog of 20,000 tasks
//!    runs: the trickle in a tenant of its own vs in the backlog's tenant
//!    and queue (where it can only wait its turn).
//!
//! Run: `cargo bench -p taskhost --bench defaults` (or `./dev.sh bench`);
//! `BENCH_ROWS=1,2` runs only those groups, and `BENCH_DEFAULTS_ONLY=1`
//! only their shipped settings (for profiling one of them).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use taskhost::engine::{Engine, EngineConfig};
use taskhost_test_artifacts::{CLOCK, TRIVIAL};

mod common;
#[path = "common/server.rs"]
mod server;

use server::{admin_client, completed, free_port, serve, until_up};

const HTTP_TASKS: usize = 20_000;
const HTTP_BATCH: usize = 1_000;
const HTTP_CLIENTS: usize = 4;
/// Small requests per setting of row 6, and the clients sending them.
const REQUESTS: usize = 40_000;
const REQUEST_CLIENTS: usize = 8;
const ENGINE_TASKS: usize = 20_000;
/// Rounds of each throughput setting.
const ROUNDS: usize = 3;
const LATENCY_SECONDS: u64 = 2;
/// Rounds of the 1,000/s latency run per setting.
const LATENCY_ROUNDS: usize = 3;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(bench());
}

struct Row {
    figure: String,
    setting: String,
    value: String,
    ratio: String,
}

fn row(figure: &str, setting: &str, value: String, ratio: String) -> Row {
    eprintln!("({figure}, {setting}: {value})");
    Row { figure: figure.into(), setting: setting.into(), value, ratio }
}

async fn bench() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let defaults = EngineConfig::default();
    eprintln!(
        "defaults here: concurrency {}, claim-ahead {}, memory budget {} MiB",
        defaults.concurrency,
        defaults.claim_ahead,
        defaults.memory_budget >> 20
    );
    let mut rows = Vec::new();
    let only = std::env::var("BENCH_ROWS").ok();
    let per_s = |r: f64| format!("{r:.0} tasks/s");
    let vs = |r: f64, base: f64| format!("{:.2}x", r / base);
    let wanted = |group: &str| only.as_deref().is_none_or(|o| o.split(',').any(|g| g.trim() == group));
    // The first setting of groups 1 and 2 is the shipped one.
    let kept = |n: usize| if std::env::var_os("BENCH_DEFAULTS_ONLY").is_some() { 1 } else { n };

    // 1. HTTP, the real binary; 2. the engine in-process. Each setting
    // runs ROUNDS times, interleaved, and the median is reported (the
    // disk's speed drifts during a run).
    if wanted("1") {
        use Senders::{OnePlugin, PluginEach, TenantEach};
        let settings: [HttpSetting; 9] = [
            ("defaults (`taskhost serve`, token checked on every request)", &[], OnePlugin, (0, 0)),
            ("defaults, 4 plugins of one tenant (a plugin per client)", &[], PluginEach, (0, 0)),
            ("defaults, 4 tenants (a tenant token and plugin per client)", &[], TenantEach, (0, 0)),
            ("defaults, 10 event subscribers never reading (dropped)", &[], OnePlugin, (0, 10)),
            ("defaults, 10 event subscribers reading every event", &[], OnePlugin, (10, 0)),
            ("--log-keep 0 (no task logs kept)", &["--log-keep", "0"], OnePlugin, (0, 0)),
            ("--no-auth (no token check)", &["--no-auth"], OnePlugin, (0, 0)),
            ("--claim-ahead 0 (slots held across commits, as before)", &["--claim-ahead", "0"], OnePlugin, (0, 0)),
            ("--concurrency 256", &["--concurrency", "256"], OnePlugin, (0, 0)),
        ];
        let settings = &settings[..kept(settings.len())];
        let mut rates = vec![Vec::new(); settings.len()];
        for _ in 0..ROUNDS {
            for (i, (_, flags, senders, subscribers)) in settings.iter().enumerate() {
                rates[i].push(http_throughput(flags, *senders, *subscribers).await);
            }
        }
        let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
        let figure = format!("trivial tasks over HTTP, tasks:batch, submit -> all completed (median of {ROUNDS})");
        for (i, (name, ..)) in settings.iter().enumerate() {
            rows.push(row(&figure, name, per_s(medians[i]), vs(medians[i], medians[0])));
        }
    }
    if wanted("2") {
        let settings = [
            ("EngineConfig::default()", EngineConfig::default()),
            (
                "claim_at_submit off (claimed after its commit)",
                EngineConfig { claim_at_submit: false, ..EngineConfig::default() },
            ),
            (
                "claim_ahead 0 (as before)",
                EngineConfig { claim_ahead: 0, claim_at_submit: false, ..EngineConfig::default() },
            ),
            ("concurrency 512", EngineConfig { concurrency: 512, ..EngineConfig::default() }),
        ];
        let settings = &settings[..kept(settings.len())];
        let mut rates = vec![Vec::new(); settings.len()];
        for _ in 0..ROUNDS {
            for (i, (_, config)) in settings.iter().enumerate() {
                rates[i].push(engine_throughput(config.clone()).await);
            }
        }
        let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
        let figure = format!("in-process engine, trivial plugin, submit -> completed (median of {ROUNDS})");
        for (i, (name, _)) in settings.iter().enumerate() {
            rows.push(row(&figure, name, per_s(medians[i]), vs(medians[i], medians[0])));
        }
    }

    // 3. Latency at steady rates, the old behaviour beside the default at
    // 1,000/s, interleaved in rounds (the disk's latency drifts).
    if wanted("3") {
        let settings = [
            ("defaults", 1_024usize, true),
            ("claim_at_submit off (claimed after its commit)", 1_024, false),
            ("claim_ahead 0 (as before)", 0, false),
        ];
        let engines = futures::future::join_all(settings.iter().map(|&(_, claim_ahead, claim_at_submit)| async move {
            let dir = tempfile::tempdir().unwrap();
            let engine =
                open(dir.path(), EngineConfig { claim_ahead, claim_at_submit, ..EngineConfig::default() }).await;
            (dir, engine)
        }))
        .await;
        let mut samples = vec![Vec::new(); settings.len()];
        for _ in 0..LATENCY_ROUNDS {
            for (i, (_, engine)) in engines.iter().enumerate() {
                samples[i].extend(common::latency(std::slice::from_ref(engine), 1_000, LATENCY_SECONDS).await);
            }
        }
        let p = |l: &mut Vec<Duration>, q: usize| {
            l.sort();
            l[(l.len() * q / 100).min(l.len() - 1)]
        };
        let base = p(&mut samples[0], 99);
        for (i, (name, ..)) in settings.iter().enumerate() {
            let l = &mut samples[i];
            let (p50, p99) = (p(l, 50), p(l, 99));
            rows.push(row(
                &format!("submit -> start at a steady 1000 tasks/s ({} tasks)", l.len()),
                name,
                format!("p50 {} / p99 {}", ms(p50), ms(p99)),
                format!("{:.2}x (p99)", p99.as_secs_f64() / base.as_secs_f64()),
            ));
        }
        let l = common::latency(std::slice::from_ref(&engines[0].1), 10_000, LATENCY_SECONDS).await;
        let pct = |q: usize| l[(l.len() * q / 100).min(l.len() - 1)];
        rows.push(row(
            &format!("submit -> start at a steady 10000 tasks/s ({} tasks)", l.len()),
            "defaults",
            format!("p50 {} / p99 {}", ms(pct(50)), ms(pct(99))),
            "-".into(),
        ));
        for (_, engine) in &engines {
            engine.shutdown();
        }
    }

    // 4. Restart with many stored tasks.
    if wanted("4") {
        let stored: usize = std::env::var("BENCH_STORED_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
        let (to_serving, rss, file) = restart(stored).await;
        let figure = format!("`taskhost serve` restart after SIGKILL, {stored} stored tasks");
        rows.push(row(&figure, "defaults", format!("{} to serving", ms(to_serving)), "-".into()));
        rows.push(row(
            &figure,
            "defaults",
            format!("RSS {:.1} MiB (store file {:.0} MiB)", rss as f64 / 1024.0, file as f64 / (1 << 20) as f64),
            "-".into(),
        ));
    }

    // 5. `taskhost run` of a large component, twice.
    if wanted("5") {
        match std::env::var_os("BENCH_PY_COMPONENT").filter(|p| Path::new(p).is_file()) {
            Some(component) => {
                let cache = tempfile::tempdir().unwrap();
                let size = std::fs::metadata(&component).unwrap().len();
                let first = run_once(Path::new(&component), cache.path());
                let second = (0..5).map(|_| run_once(Path::new(&component), cache.path())).min().unwrap();
                let figure = format!("`taskhost run` of a {:.1} MB Python component", size as f64 / 1e6);
                rows.push(row(&figure, "first run (compiles)", ms(first), "1.00x".into()));
                rows.push(row(
                    &figure,
                    "second run (artifact cache), best of 5",
                    ms(second),
                    format!("{:.4}x", second.as_secs_f64() / first.as_secs_f64()),
                ));
            }
            None => {
                eprintln!("(row 5 skipped: set BENCH_PY_COMPONENT to a componentize-py component; ./dev.sh bench does)")
            }
        }
    }

    // 6. What checking a token costs one request: small reads
    // (`GET /v1/queues`), token checked vs `--no-auth`, interleaved rounds.
    if wanted("6") {
        let settings: [(&str, &[&str]); 2] =
            [("defaults (token checked)", &[]), ("--no-auth (no token check)", &["--no-auth"])];
        let mut rates = vec![Vec::new(); settings.len()];
        for _ in 0..ROUNDS {
            for (i, (_, flags)) in settings.iter().enumerate() {
                rates[i].push(http_requests(flags).await);
            }
        }
        let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
        let figure = format!(
            "small API requests (GET /v1/queues, {REQUEST_CLIENTS} clients, keep-alive), requests/s (median of {ROUNDS})"
        );
        for (i, (name, _)) in settings.iter().enumerate() {
            rows.push(row(&figure, name, format!("{:.0} requests/s", medians[i]), vs(medians[i], medians[0])));
        }
    }

    // 7. A trickle beside another tenant's backlog, and inside it.
    if wanted("7") {
        let figure = format!("trickle queue wait (1 task / 20 ms) during a {HTTP_TASKS}-task backlog, p50 / p99");
        let mut p99s = Vec::new();
        for (name, own_tenant) in
            [("trickle in a tenant of its own", true), ("trickle in the backlog's tenant and queue", false)]
        {
            let mut waits = trickle_waits(own_tenant).await;
            waits.sort();
            let (p50, p99) = (waits[waits.len() / 2], waits[(waits.len() * 99 / 100).min(waits.len() - 1)]);
            p99s.push(p99.as_secs_f64().max(1e-3));
            // How many times the first setting's p99 this one's is.
            let ratio = format!("{:.2}x", p99s[p99s.len() - 1] / p99s[0]);
            rows.push(row(&figure, name, format!("{} / {} ({} tasks)", ms(p50), ms(p99), waits.len()), ratio));
        }
    }

    println!("taskhost defaults benchmark ({cpus} CPUs)\n");
    println!("| figure | settings | value | ratio |");
    println!("|---|---|---:|---:|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.figure, r.setting, r.value, r.ratio);
    }
}

async fn open(dir: &Path, config: EngineConfig) -> Engine {
    let engine = Engine::open(EngineConfig { data_dir: dir.to_owned(), ..config }).await.unwrap();
    engine.add_plugin("trivial", TRIVIAL.bytes(), None, true).await.unwrap();
    engine.add_plugin("clock", CLOCK.bytes(), None, true).await.unwrap();
    engine
}

async fn engine_throughput(config: EngineConfig) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), config).await;
    let rate =
        ENGINE_TASKS as f64 / common::submit_and_complete(&engine, ENGINE_TASKS, common::trivial).await.as_secs_f64();
    engine.shutdown();
    rate
}

/// A fresh `taskhost serve` with `extra` flags, serving: its data
/// directory, process, an admin client and its base URL.
async fn started(extra: &[&str]) -> (tempfile::TempDir, std::process::Child, reqwest::Client, String) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port, extra);
    let http = admin_client(dir.path()).await;
    let base = format!("http://127.0.0.1:{port}");
    until_up(&http, &base).await;
    (dir, server, http, base)
}

/// Requests per second of `GET /v1/queues` on a fresh `taskhost serve`
/// with `extra` flags, from [`REQUEST_CLIENTS`] keep-alive clients.
async fn http_requests(extra: &[&str]) -> f64 {
    let (_dir, mut server, http, base) = started(extra).await;
    let started = Instant::now();
    let clients: Vec<_> = (0..REQUEST_CLIENTS)
        .map(|_| {
            let (http, url) = (http.clone(), format!("{base}/v1/queues"));
            tokio::spawn(async move {
                for _ in 0..REQUESTS / REQUEST_CLIENTS {
                    let r = http.get(&url).send().await.unwrap();
                    assert!(r.status().is_success(), "GET /v1/queues: {}", r.status());
                    r.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let rate = REQUESTS as f64 / started.elapsed().as_secs_f64();
    server.kill().unwrap();
    server.wait().unwrap();
    rate
}

/// A client of a new tenant `name` (made by `admin`) with the `trivial`
/// plugin uploaded.
async fn tenant_client(admin: &reqwest::Client, base: &str, name: &str) -> reqwest::Client {
    let made = admin.put(format!("{base}/v1/tenants/{name}")).json(&serde_json::json!({})).send().await.unwrap();
    assert!(made.status().is_success(), "tenant: {}", made.status());
    let token = serde_json::json!({"name": name, "tenant": name, "scopes": ["plugins", "submit", "read"]});
    let created: serde_json::Value =
        admin.post(format!("{base}/v1/tokens")).json(&token).send().await.unwrap().json().await.unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {}", created["token"].as_str().unwrap());
    headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().unwrap());
    let client = reqwest::Client::builder().default_headers(headers).build().unwrap();
    let up = client.post(format!("{base}/v1/plugins/trivial")).body(TRIVIAL.bytes()).send().await.unwrap();
    assert!(up.status().is_success(), "upload: {}", up.status());
    client
}

/// A setting of row 1: its name, `serve`'s flags, who submits, and the
/// event subscribers (reading, never reading).
type HttpSetting = (&'static str, &'static [&'static str], Senders, (usize, usize));

/// Who the clients of [`http_throughput`] submit as.
#[derive(Debug, Clone, Copy)]
enum Senders {
    /// The admin, to one plugin.
    OnePlugin,
    /// The admin, each client to a plugin of its own (the same bytes).
    PluginEach,
    /// Each client a tenant of its own, with its own plugin.
    TenantEach,
}

/// Subscribers of `GET /v1/events` on `base`: `reading` that read every
/// event as it comes and `stalled` that never read (the server drops them
/// once they fall behind). Abort the handles to end them.
async fn subscribers(
    http: &reqwest::Client,
    base: &str,
    reading: usize,
    stalled: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = Vec::new();
    for i in 0..reading + stalled {
        let mut response = http.get(format!("{base}/v1/events")).send().await.unwrap();
        assert!(response.status().is_success(), "subscribe: {}", response.status());
        handles.push(tokio::spawn(async move {
            if i < reading {
                while let Ok(Some(_)) = response.chunk().await {}
            } else {
                std::future::pending::<()>().await;
            }
        }));
    }
    handles
}

/// Tasks per second over HTTP on a fresh `taskhost serve` with `extra`
/// flags and `(reading, stalled)` [`subscribers`] of the events: the time
/// from the first batch sent to the last task completed.
async fn http_throughput(extra: &[&str], senders: Senders, (reading, stalled): (usize, usize)) -> f64 {
    let (_dir, mut server, http, base) = started(extra).await;
    let watchers = subscribers(&http, &base, reading, stalled).await;
    let mut clients = Vec::new();
    for i in 0..HTTP_CLIENTS {
        let (client, plugin) = match senders {
            Senders::TenantEach => (tenant_client(&http, &base, &format!("t{i}")).await, "trivial".to_owned()),
            Senders::OnePlugin | Senders::PluginEach => {
                let plugin =
                    if matches!(senders, Senders::PluginEach) { format!("trivial{i}") } else { "trivial".into() };
                let up = http.post(format!("{base}/v1/plugins/{plugin}")).body(TRIVIAL.bytes()).send().await.unwrap();
                assert!(up.status().is_success(), "upload: {}", up.status());
                (http.clone(), plugin)
            }
        };
        let batch = serde_json::json!({
            "tasks": vec![serde_json::json!({"plugin": plugin, "input": "x"}); HTTP_BATCH]
        })
        .to_string();
        clients.push((client, batch));
    }
    let started = Instant::now();
    let clients: Vec<_> = clients
        .into_iter()
        .map(|(http, batch)| {
            let base = base.clone();
            tokio::spawn(
                async move { send_batches(&http, &base, &batch, HTTP_TASKS / HTTP_BATCH / HTTP_CLIENTS).await },
            )
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    while completed(&http, &base).await < HTTP_TASKS as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = HTTP_TASKS as f64 / started.elapsed().as_secs_f64();
    watchers.iter().for_each(tokio::task::JoinHandle::abort);
    server.kill().unwrap();
    server.wait().unwrap();
    rate
}

/// Sends `batch` (a `tasks:batch` body) `count` times, one after another.
async fn send_batches(http: &reqwest::Client, base: &str, batch: &str, count: usize) {
    for _ in 0..count {
        let r = http
            .post(format!("{base}/v1/tasks:batch"))
            .header("content-type", "application/json")
            .body(batch.to_owned())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "batch: {}", r.status());
    }
}

/// Queue waits (submitted → started) of a trickle of trivial tasks, one
/// every 20 ms, sent while [`HTTP_TASKS`] tasks of tenant `bulk` are
/// submitted and run: the trickle as tenant `trickle` (`own_tenant`) or
/// as `bulk` in its queue.
async fn trickle_waits(own_tenant: bool) -> Vec<Duration> {
    let (_dir, mut server, http, base) = started(&[]).await;
    let bulk = tenant_client(&http, &base, "bulk").await;
    let trickle = if own_tenant { tenant_client(&http, &base, "trickle").await } else { bulk.clone() };
    let batch = serde_json::json!({
        "tasks": vec![serde_json::json!({"plugin": "trivial", "input": "x"}); HTTP_BATCH]
    })
    .to_string();
    let backlog = {
        let (bulk, base) = (bulk.clone(), base.clone());
        tokio::spawn(async move { send_batches(&bulk, &base, &batch, HTTP_TASKS / HTTP_BATCH).await })
    };
    let mut ids = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let total = HTTP_TASKS as u64;
    loop {
        tick.tick().await;
        let task = serde_json::json!({"plugin": "trivial", "input": "t"});
        let submitted: serde_json::Value =
            trickle.post(format!("{base}/v1/tasks")).json(&task).send().await.unwrap().json().await.unwrap();
        ids.push(submitted["id"].as_str().unwrap().to_owned());
        if backlog.is_finished() && completed(&http, &base).await >= total {
            break;
        }
    }
    backlog.await.unwrap();
    let at = |v: &serde_json::Value| humantime::parse_rfc3339_weak(v.as_str().unwrap()).unwrap();
    let mut waits = Vec::with_capacity(ids.len());
    for id in &ids {
        let task = loop {
            let task: serde_json::Value =
                trickle.get(format!("{base}/v1/tasks/{id}")).send().await.unwrap().json().await.unwrap();
            if task["state"] == "completed" {
                break task;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        waits.push(at(&task["started_at"]).duration_since(at(&task["created_at"])).unwrap_or_default());
    }
    server.kill().unwrap();
    server.wait().unwrap();
    waits
}

/// Fills a store with `n` completed tasks, starts `taskhost serve` on it,
/// SIGKILLs it, and times the restart to serving; gives that, the RSS
/// (KiB) then and the store file's size.
async fn restart(n: usize) -> (Duration, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open(dir.path(), EngineConfig::default()).await;
        let fill = Instant::now();
        common::submit_and_complete(&engine, n, common::trivial).await;
        eprintln!("(filled {n} tasks in {:.1} s)", fill.elapsed().as_secs_f64());
        engine.shutdown();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let restarted = server::restart_after_kill(dir.path()).await;
    assert_eq!(restarted.completed, n as u64);
    (restarted.to_serving, restarted.rss_kib, restarted.file_bytes)
}

/// One `taskhost run` of `component` with the artifact cache in `cache`,
/// process start to exit.
fn run_once(component: &Path, cache: &Path) -> Duration {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["run", component.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "taskhost run: {}", String::from_utf8_lossy(&out.stderr));
    took
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
