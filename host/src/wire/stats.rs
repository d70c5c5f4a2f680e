//! `GET /v1/stats/recent`: the host's recent throughput and latency, as
//! running totals sampled every few seconds (the web console's charts).

use serde::{Deserialize, Serialize};

/// The samples kept (the last 10 minutes), oldest first. A rate over an
/// interval is the difference of two samples' totals over the difference
/// of their times; a mean wait or run time, the difference of the sums
/// over the difference of the counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct RecentStats {
    /// How often a sample is taken, ms.
    pub every_ms: u64,
    /// Oldest first.
    pub samples: Vec<RecentSample>,
    /// The host's execution slots: the most attempts that run at once
    /// (`--concurrency`).
    pub workers: u64,
    /// Of them, those running an attempt now.
    pub busy: u64,
}

impl RecentStats {
    /// Samples taken every `every_ms`, and the slots now: `busy` of
    /// `workers`.
    pub fn new(every_ms: u64, samples: Vec<RecentSample>, workers: u64, busy: u64) -> Self {
        Self { every_ms, samples, workers, busy }
    }
}

/// Running totals since the host started, at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct RecentSample {
    /// When it was taken, ms since the Unix epoch.
    pub at_ms: u64,
    /// Tasks that reached `completed` or `failed`.
    pub ended: u64,
    /// Of them, those that completed.
    pub completed: u64,
    /// The sum of tasks' waits in their queues (ready to started), µs.
    pub queue_wait_us: u64,
    /// How many waits the sum holds.
    pub queue_waits: u64,
    /// The sum of attempts' run times, µs.
    pub run_us: u64,
    /// How many attempts the sum holds.
    pub runs: u64,
}
