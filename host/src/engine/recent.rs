//! The host's recent throughput and latency: cumulative counts of ended
//! tasks, queue waits and run times, sampled every 2 seconds for the last
//! 10 minutes. The web console's charts start from them, so they show the
//! last minutes the moment the page opens.

use crate::sync::lock;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often a sample is taken.
pub(crate) const EVERY: Duration = Duration::from_secs(2);
/// Samples kept: 10 minutes and one (rates need a sample before the
/// first interval).
pub(crate) const KEPT: usize = 301;

/// Running totals since the host started, and the samples of them.
#[derive(Default)]
pub(crate) struct Recent {
    ended: AtomicU64,
    completed: AtomicU64,
    wait_us: AtomicU64,
    waits: AtomicU64,
    run_us: AtomicU64,
    runs: AtomicU64,
    samples: Mutex<VecDeque<crate::wire::RecentSample>>,
}

fn micros(secs: f64) -> u64 {
    (secs * 1e6).max(0.0) as u64
}

impl Recent {
    /// A task reached `completed` or `failed`.
    pub(crate) fn ended(&self, completed: bool) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        if completed {
            self.completed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A task waited `secs` in its queue before it started.
    pub(crate) fn waited(&self, secs: f64) {
        self.wait_us.fetch_add(micros(secs), Ordering::Relaxed);
        self.waits.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt ran for `secs`.
    pub(crate) fn ran(&self, secs: f64) {
        self.run_us.fetch_add(micros(secs), Ordering::Relaxed);
        self.runs.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a sample of the totals at `at_ms`, dropping the oldest past
    /// [`KEPT`].
    pub(crate) fn sample(&self, at_ms: u64) {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let sample = crate::wire::RecentSample {
            at_ms,
            ended: load(&self.ended),
            completed: load(&self.completed),
            queue_wait_us: load(&self.wait_us),
            queue_waits: load(&self.waits),
            run_us: load(&self.run_us),
            runs: load(&self.runs),
        };
        let mut samples = lock(&self.samples);
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples kept, oldest first.
    pub(crate) fn samples(&self) -> Vec<crate::wire::RecentSample> {
        lock(&self.samples).iter().cloned().collect()
    }
}

/// Samples every [`EVERY`] until the engine stops.
pub(crate) async fn run(shared: std::sync::Arc<super::shared::Shared>) {
    loop {
        shared.metrics.recent.sample(crate::store::now_ms());
        tokio::select! {
            () = shared.halted() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_samples_of_running_totals() {
        let recent = Recent::default();
        recent.ended(true);
        recent.ended(false);
        recent.waited(0.25);
        recent.ran(1.5);
        recent.ran(0.5);
        recent.sample(1_000);
        let first = &recent.samples()[0];
        assert_eq!((first.at_ms, first.ended, first.completed), (1_000, 2, 1));
        assert_eq!((first.queue_wait_us, first.queue_waits, first.run_us, first.runs), (250_000, 1, 2_000_000, 2));
        for i in 0..KEPT as u64 + 10 {
            recent.sample(2_000 + i);
        }
        let samples = recent.samples();
        assert_eq!(samples.len(), KEPT, "bounded");
        assert_eq!(samples[0].at_ms, 2_010, "the oldest went first");
        assert_eq!(samples.last().unwrap().at_ms, 2_000 + KEPT as u64 + 9);
    }
}
