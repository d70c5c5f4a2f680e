//! Hot-loading benchmarks, printed as one table:
//! 1. upload → first task served on the new version, for a ~100 KB and a
//!    ~5 MB component, cold (compiled) and from the artifact cache;
//! 2. tasks/s while new versions are uploaded and swapped in continuously,
//!    against the same load without swaps, and the failed-task count.
//!
//! Run: `cargo bench -p taskhost --bench registry` (or `./dev.sh bench`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use taskhost::SandboxConfig;
use taskhost::engine::{Engine, EngineConfig, NewTask};
use taskhost::store::TaskState;
use taskhost_test_artifacts::{BIG_TABLE, TRIVIAL, UPPERCASE};

const LOAD_SECONDS: u64 = 6;
const SWAP_EVERY: Duration = Duration::from_millis(250);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(bench());
}

async fn open(dir: &std::path::Path) -> Engine {
    let mut sandbox = SandboxConfig { pool_instances: 256, ..SandboxConfig::default() };
    // As `taskhost serve` runs it: one compile thread.
    sandbox.parallel_compilation = false;
    let config = EngineConfig { data_dir: dir.to_owned(), sandbox, concurrency: 64, ..EngineConfig::default() };
    Engine::open(config).await.unwrap()
}

/// Upload, then submit and wait for the first task on that version.
async fn upload_to_served(engine: &Engine, name: &str, bytes: Vec<u8>, input: &str) -> Duration {
    let started = Instant::now();
    let (version, _) = engine.add_plugin(name, bytes, None, true).await.unwrap();
    let task =
        NewTask { plugin: format!("{name}@{}", version.info.version), input: input.into(), ..NewTask::default() };
    let id = engine.submit(task).await.unwrap().record.id;
    let record = engine.wait(id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(record.state, TaskState::Completed, "{:?}", record.error);
    started.elapsed()
}

/// The component with a custom section appended: same code, new digest.
fn variant(bytes: &[u8], n: u64) -> Vec<u8> {
    let name = b"taskhost-bench";
    let payload = n.to_le_bytes();
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(section.len() as u8); // LEB128 size (< 128)
    out.extend_from_slice(&section);
    out
}

/// Runs trivial tasks flat out for LOAD_SECONDS; returns (tasks/s, failed).
#[derive(Clone, Copy, PartialEq)]
enum Swaps {
    None,
    /// Upload a new version (compiled) every SWAP_EVERY.
    Upload,
    /// Flip `latest` between two live versions every 10 ms.
    Rollback,
}

async fn load(engine: &Engine, swaps: Swaps) -> (f64, u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..128)
        .map(|_| {
            let (engine, stop, completed, failed) = (engine.clone(), stop.clone(), completed.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let task = NewTask { plugin: "app".into(), input: b"x".to_vec(), ..NewTask::default() };
                    let id = engine.submit(task).await.unwrap().record.id;
                    let record = engine.wait(id, Duration::from_secs(60)).await.unwrap();
                    let counter = if record.state == TaskState::Completed { &completed } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let swapper = (swaps != Swaps::None).then(|| {
        let (engine, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move {
            let base = TRIVIAL.bytes();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if swaps == Swaps::Upload {
                    engine.add_plugin("app", variant(&base, 1000 + n), None, true).await.unwrap();
                    tokio::time::sleep(SWAP_EVERY).await;
                } else {
                    engine.set_latest("app", if n.is_multiple_of(2) { "1" } else { "2" }).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            n
        })
    });
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(LOAD_SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let swaps = match swapper {
        Some(s) => s.await.unwrap(),
        None => 0,
    };
    let rate = completed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (rate, failed.load(Ordering::Relaxed), swaps)
}

async fn bench() {
    println!("taskhost registry benchmark ({} CPUs)\n", std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("1. upload -> first task served on the new version\n");
    println!("| component | size | cold (compile) | from the artifact cache | cold / cached |");
    println!("|---|---:|---:|---:|---:|");
    for (label, artifact, input) in
        [("uppercase (~100 KB)", UPPERCASE, "x"), ("big-table (~5 MB, mostly data)", BIG_TABLE, "12345")]
    {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path()).await;
        let bytes = artifact.bytes();
        let cold = upload_to_served(&engine, "cold", bytes.clone(), input).await;
        // Same bytes under another name: same digest, so the compiled
        // artifact comes from the on-disk cache.
        let cached = upload_to_served(&engine, "warm", bytes.clone(), input).await;
        let (compiled, hits) = engine.plugin_load_counts();
        assert_eq!((compiled, hits), (1, 1), "expected one compile and one cache hit");
        println!(
            "| {label} | {:.0} KB | {:.1} ms | {:.1} ms | {:.1}x |",
            bytes.len() as f64 / 1000.0,
            cold.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3,
            cold.as_secs_f64() / cached.as_secs_f64()
        );
        engine.close().await;
    }

    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    engine.add_plugin("app", TRIVIAL.bytes(), None, true).await.unwrap();
    engine.add_plugin("app", variant(&TRIVIAL.bytes(), 0), None, true).await.unwrap();
    let (steady, steady_failed, _) = load(&engine, Swaps::None).await;
    let (flipped, flip_failed, flips) = load(&engine, Swaps::Rollback).await;
    let (swapped, swap_failed, swaps) = load(&engine, Swaps::Upload).await;
    println!("\n2. trivial tasks for {LOAD_SECONDS} s each, 128 concurrent clients, 64 workers\n");
    println!("| run | tasks/s | failed tasks | swaps | vs no swaps |");
    println!("|---|---:|---:|---:|---:|");
    println!("| no swaps | {steady:.0} | {steady_failed} | 0 | 1.00x |");
    println!(
        "| `latest` flipped between two live versions every 10 ms | {flipped:.0} | {flip_failed} | {flips} | {:.3}x |",
        flipped / steady
    );
    println!(
        "| a new version uploaded, compiled and swapped in every {} ms | {swapped:.0} | {swap_failed} | {swaps} | {:.3}x |",
        SWAP_EVERY.as_millis(),
        swapped / steady
    );
    engine.close().await;
}
