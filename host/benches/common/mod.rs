//! What more than one benchmark measures the same way.

use std::time::{Duration, Instant};
use taskhost::engine::{Engine, NewTask};
use taskhost::store::TaskState;

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
