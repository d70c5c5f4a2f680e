//! Durable engine benchmarks, printed as one table:
//! 1. sustained submit → completed throughput of a trivial plugin, every
//!    transition durably committed, with group commit on and off;
//! 2. submit → start latency at a steady 1,000 tasks/s, alone and while
//!    the largest test plugin is uploaded back to back;
//! 3. restart-to-serving time of `taskhost serve` after SIGKILL with
//!    100,000 tasks in the store, and its RSS then.
//!
//! Run: `cargo bench -p taskhost --bench engine` (or `./dev.sh bench`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use taskhost::SandboxConfig;
use taskhost::engine::{Engine, EngineConfig, NewTask};
use taskhost::store::TaskState;
use taskhost_test_artifacts::{CLOCK, TRIVIAL};

const THROUGHPUT_TASKS: usize = 40_000;
const UNGROUPED_TASKS: usize = 600;
const LATENCY_SECONDS: u64 = 5;
const STORED_TASKS: usize = 100_000;

mod common;
#[path = "common/server.rs"]
mod server;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(bench());
}

async fn open(dir: &std::path::Path, group_commit: bool, concurrency: usize) -> Engine {
    let config = EngineConfig {
        data_dir: dir.to_owned(),
        sandbox: SandboxConfig { pool_instances: 1024, ..SandboxConfig::default() },
        concurrency,
        group_commit,
        ..EngineConfig::default()
    };
    let engine = Engine::open(config).await.unwrap();
    engine.add_plugin("trivial", TRIVIAL.bytes(), None, true).await.unwrap();
    engine.add_plugin("clock", CLOCK.bytes(), None, true).await.unwrap();
    engine
}

/// Tasks per second of `n` trivial tasks, submit to completed.
async fn throughput(engine: &Engine, n: usize) -> f64 {
    n as f64 / common::submit_and_complete(engine, n, common::trivial).await.as_secs_f64()
}

fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

async fn bench() {
    println!("taskhost engine benchmark ({} CPUs)\n", std::thread::available_parallelism().map_or(1, |n| n.get()));

    // 1. Throughput, group commit on vs off.
    let dir = tempfile::tempdir().unwrap();
    let grouped = throughput(&open(dir.path(), true, 512).await, THROUGHPUT_TASKS).await;
    let dir_off = tempfile::tempdir().unwrap();
    let ungrouped = throughput(&open(dir_off.path(), false, 512).await, UNGROUPED_TASKS).await;
    println!("1. durable throughput, trivial plugin, submit -> completed (3 committed transitions per task)\n");
    println!("| mode | tasks | tasks/s | vs group commit |");
    println!("|---|---:|---:|---:|");
    println!("| group commit (default) | {THROUGHPUT_TASKS} | {grouped:.0} | 1.00x |");
    println!("| one commit per transition | {UNGROUPED_TASKS} | {ungrouped:.0} | {:.3}x |", ungrouped / grouped);

    // 2. Latency at a steady 1,000 tasks/s, alone and while plugins are
    // uploaded (hashed, parsed, compiled and stored) back to back.
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), true, 64).await;
    let quiet = latency(&engine).await;
    let big =
        taskhost_test_artifacts::ALL.iter().filter(|a| a.role != "hostile").max_by_key(|a| a.bytes().len()).unwrap();
    let bytes = big.bytes();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let uploader = {
        let (engine, stop, bytes) = (engine.clone(), stop.clone(), bytes.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // Distinct bytes each time (a trailing custom section), so
                // every upload is hashed, parsed and compiled.
                let mut bytes = bytes.clone();
                let tag = n.to_le_bytes();
                bytes.extend_from_slice(&[0x00, 6, 1, b'n']);
                bytes.extend_from_slice(&tag);
                engine.add_plugin("uploaded", bytes, None, true).await.unwrap();
                n += 1;
            }
            n
        })
    };
    let loaded = latency(&engine).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let uploads = uploader.await.unwrap();
    let sent = quiet.len();
    println!(
        "\n2. submit -> start latency at a steady 1,000 tasks/s ({sent} tasks over {LATENCY_SECONDS} s per row)\n"
    );
    println!("| while | p50 | p90 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    let row = |what: String, l: &[Duration]| {
        let pct = |p: usize| l[(l.len() * p / 100).min(l.len() - 1)];
        println!("| {what} | {} | {} | {} | {} |", ms(pct(50)), ms(pct(90)), ms(pct(99)), ms(*l.last().unwrap()));
    };
    row("nothing else".into(), &quiet);
    row(format!("uploading `{}` ({} KiB) back to back: {uploads} uploads", big.name, bytes.len() >> 10), &loaded);

    // 3. Restart after SIGKILL with 100,000 stored tasks.
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open(dir.path(), true, 512).await;
        let fill = Instant::now();
        let rate = throughput(&engine, STORED_TASKS).await;
        eprintln!("(filled {STORED_TASKS} tasks in {:.1} s at {rate:.0}/s)", fill.elapsed().as_secs_f64());
        engine.shutdown();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let restarted = server::restart_after_kill(dir.path()).await;
    println!("\n3. `taskhost serve` restarted after SIGKILL with {STORED_TASKS} stored tasks\n");
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| tasks reported by /healthz | {} |", restarted.completed);
    println!("| restart to serving (process start -> /healthz 200) | {} |", ms(restarted.to_serving));
    println!("| host RSS after restart | {:.1} MiB |", restarted.rss_kib as f64 / 1024.0);
    println!("| store file size | {:.1} MiB |", restarted.file_bytes as f64 / (1 << 20) as f64);
}

/// Submit → start latencies of `clock` tasks at 1,000/s for
/// `LATENCY_SECONDS`, sorted.
async fn latency(engine: &Engine) -> Vec<Duration> {
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = Vec::new();
    let until = Instant::now() + Duration::from_secs(LATENCY_SECONDS);
    while Instant::now() < until {
        ticker.tick().await;
        let engine = engine.clone();
        pending.push(tokio::spawn(async move {
            let submitted_at = unix_nanos();
            let task = NewTask { plugin: "clock".into(), ..NewTask::default() };
            let id = engine.submit(task).await.unwrap().record.id;
            let record = engine.wait(id, Duration::from_secs(30)).await.unwrap();
            assert_eq!(record.state, TaskState::Completed);
            let ran_at: u128 = String::from_utf8(engine.output(id).await.unwrap().unwrap()).unwrap().parse().unwrap();
            Duration::from_nanos(ran_at.saturating_sub(submitted_at) as u64)
        }));
    }
    let mut latencies = Vec::with_capacity(pending.len());
    for p in pending {
        latencies.push(p.await.unwrap());
    }
    latencies.sort();
    latencies
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
