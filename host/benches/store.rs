//! Listing tasks in a large store: `GET /v1/tasks` filters answered
//! through the store's indexes (by state, queue, plugin) against the full
//! scan the engine did before (read every record, keep the matches), at
//! 1,000,000 stored tasks, side by side in one run.
//!
//! The store is filled through the engine: 1,000,000 trivial tasks run to
//! completion in queue `bulk`, plus 500 tasks in queue `rare` and 500 that
//! fail (plugin `fail`). Each listing is timed 5 times (one page of up to
//! 100 tasks); the table shows medians.
//!
//! Run: `cargo bench -p taskhost --bench store` (or `./dev.sh bench`).
//! `STORE_BENCH_TASKS=100000` runs a smaller store.

use std::time::{Duration, Instant};
use taskhost::SandboxConfig;
use taskhost::engine::{Engine, EngineConfig, ListFilter, NewTask};
use taskhost::store::{Store, TaskRecord, TaskState};
use taskhost_test_artifacts::{FAIL, TRIVIAL};

const RARE: usize = 500;
const ROUNDS: usize = 5;
const PAGE: usize = 100;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(bench());
}

fn task(plugin: &str, queue: &str, input: &str) -> NewTask {
    NewTask {
        plugin: plugin.into(),
        input: input.as_bytes().to_vec(),
        queue: Some(queue.into()),
        max_attempts: Some(1),
        ..NewTask::default()
    }
}

/// Submits `n` tasks made by `make` in batches of 1,000 from 8 submitters.
async fn submit(engine: &Engine, n: usize, make: fn(usize) -> NewTask) {
    let submitters: Vec<_> = (0..8)
        .map(|s| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mine: Vec<usize> = (s..n).step_by(8).collect();
                for chunk in mine.chunks(1_000) {
                    for result in engine.submit_batch(chunk.iter().map(|&i| make(i)).collect()).await {
                        result.unwrap();
                    }
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.unwrap();
    }
}

async fn settle(engine: &Engine, ended: i64) {
    loop {
        let counts = engine.state_counts();
        let done: i64 = [TaskState::Completed, TaskState::Failed].iter().filter_map(|s| counts.get(s)).sum();
        if done >= ended {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The scan the engine did before the indexes: every record, in order.
fn scan(store: &Store, filter: &ListFilter) -> Vec<TaskRecord> {
    let mut page = Vec::new();
    store
        .scan(None, |r| {
            let keep = filter.state.is_none_or(|s| s == r.state)
                && filter.queue.as_deref().is_none_or(|q| q == r.queue)
                && filter.plugin.as_deref().is_none_or(|p| p == r.plugin);
            if keep {
                page.push(r);
            }
            page.len() <= PAGE
        })
        .unwrap();
    page.truncate(PAGE);
    page
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn bench() {
    let bulk: usize = std::env::var("STORE_BENCH_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        data_dir: dir.path().to_owned(),
        sandbox: SandboxConfig { pool_instances: 1024, ..SandboxConfig::default() },
        concurrency: 512,
        ..EngineConfig::default()
    };
    let engine = Engine::open(config).await.unwrap();
    engine.add_plugin("trivial", TRIVIAL.bytes(), None, true).await.unwrap();
    engine.add_plugin("fail", FAIL.bytes(), None, true).await.unwrap();
    let started = Instant::now();
    submit(&engine, bulk, |_| task("trivial", "bulk", "x")).await;
    submit(&engine, RARE, |_| task("trivial", "rare", "x")).await;
    submit(&engine, RARE, |_| task("fail", "bulk", "permanent:no")).await;
    let total = bulk + 2 * RARE;
    settle(&engine, total as i64).await;
    let filled = started.elapsed();
    engine.clone().close().await;
    drop(engine);
    let store = Store::open(&dir.path().join("taskhost.redb"), true).unwrap();
    let file = std::fs::metadata(dir.path().join("taskhost.redb")).map(|m| m.len()).unwrap_or(0);
    println!(
        "taskhost store benchmark: listing at {total} stored tasks ({} CPUs; filled in {:.0} s, file {} MiB)\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        filled.as_secs_f64(),
        file >> 20,
    );
    let filters: Vec<(&str, ListFilter)> = vec![
        ("state=failed", ListFilter { state: Some(TaskState::Failed), ..ListFilter::default() }),
        ("queue=rare", ListFilter { queue: Some("rare".into()), ..ListFilter::default() }),
        ("plugin=fail", ListFilter { plugin: Some("fail".into()), ..ListFilter::default() }),
        (
            "state=failed&queue=rare (no match)",
            ListFilter { state: Some(TaskState::Failed), queue: Some("rare".into()), ..ListFilter::default() },
        ),
        ("state=pending (none left)", ListFilter { state: Some(TaskState::Pending), ..ListFilter::default() }),
        ("no filter", ListFilter::default()),
    ];
    println!("| filter | matches on the page | indexed p50 ms | full scan p50 ms | scan / indexed |");
    println!("|---|---|---|---|---|");
    for (name, filter) in filters {
        let query = taskhost::store::TaskQuery {
            state: filter.state,
            queue: filter.queue.clone(),
            plugin: filter.plugin.clone(),
            ..Default::default()
        };
        let (mut indexed, mut scanned) = (Vec::new(), Vec::new());
        let mut found = 0;
        // Interleaved, so both see the same page cache.
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let (page, _) = store.list(&query, None, PAGE).unwrap();
            indexed.push(t.elapsed());
            let t = Instant::now();
            let full = scan(&store, &filter);
            scanned.push(t.elapsed());
            assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), full.iter().map(|r| r.id).collect::<Vec<_>>());
            found = page.len();
        }
        let (i, s) = (median(indexed), median(scanned));
        println!(
            "| `{name}` | {found} | {} | {} | {:.0}× |",
            ms(i),
            ms(s),
            s.as_secs_f64() / i.as_secs_f64().max(1e-9)
        );
    }
}
