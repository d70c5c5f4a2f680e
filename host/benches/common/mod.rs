//! What more than one benchmark measures the same way.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use taskhost::engine::{Engine, NewTask};
use taskhost::store::TaskState;

/// The allocator the `taskhost` binary uses (see `src/main.rs`), so the
/// engine benchmarks measure the engine as it ships.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A task of the `trivial` plugin.
pub fn trivial() -> NewTask {
    NewTask { plugin: "trivial".into(), input: b"x".to_vec(), ..NewTask::default() }
}

/// Submits `n` tasks (`make` makes each) from 64 concurrent submitters and waits until
/// the engine counts `n` completed; returns the time taken.
pub async fn submit_and_complete(engine: &Engine, n: usize, make: fn() -> NewTask) -> Duration {
    let started = Instant::now();
    let submitters: Vec<_> = (0..64)
        .map(|i| {
            let engine = engine.clone();
            // Spread `n` exactly over 64 submitters.
            let share = n / 64 + usize::from(i < n % 64);
            tokio::spawn(async move {
                for _ in 0..share {
                    engine.submit(make()).await.unwrap();
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.unwrap();
    }
    while engine.state_counts().get(&TaskState::Completed).copied().unwrap_or(0) < n as i64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    started.elapsed()
}

fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// Submit → start latencies of `clock` tasks submitted at `rate` per
/// second for `seconds`, in turn to each of `engines` (hosts serving one
/// store together, or one engine), sorted. Each task's output is the time
/// it started (this machine's clock, which every host here shares); the
/// outputs are read once the submissions ended, so waiting costs nothing
/// while they run.
#[allow(dead_code)] // Not every benchmark that includes this file times latency.
pub async fn latency(engines: &[Engine], rate: u64, seconds: u64) -> Vec<Duration> {
    let tick = Duration::from_micros(1_000_000 / rate.min(1_000));
    let per_tick = (rate / 1_000).max(1);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        ticker.tick().await;
        for _ in 0..per_tick {
            let engine = engines[pending.len() % engines.len()].clone();
            pending.push(tokio::spawn(async move {
                let submitted_at = unix_nanos();
                let task = NewTask { plugin: "clock".into(), ..NewTask::default() };
                (engine.submit(task).await.unwrap().record.id, submitted_at)
            }));
        }
    }
    let mut submitted = Vec::with_capacity(pending.len());
    for p in pending {
        submitted.push(p.await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut latencies: Vec<Duration> = Vec::with_capacity(submitted.len());
    for (id, submitted_at) in submitted {
        let output = loop {
            if let Some(output) = engines[0].output(id).await.unwrap() {
                break output;
            }
            assert!(Instant::now() < deadline, "the latency run's tasks did not all complete in 2 minutes");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let ran_at: u128 = String::from_utf8(output).unwrap().parse().unwrap();
        latencies.push(Duration::from_nanos(ran_at.saturating_sub(submitted_at) as u64));
    }
    latencies.sort();
    latencies
}
