//! The retention sweep: every `retention_interval`, the ended work past
//! its retention is deleted, in batches, with what it counted (the
//! tenant's stored bytes, the task gauges). Tasks outside any flow follow
//! their queue's `retain_for` / `retain_count`, else the host's; flows (each
//! deleted whole) follow the host's. See `store/retention.rs` for what a
//! unit is and what is deleted with it. On PostgreSQL the sweep also
//! deletes the shared rate buckets that have refilled (`engine/rates.rs`)
//! and folds the database's counts of tasks by state
//! (`store/postgres/state_counts.rs`).

use super::EngineError;
use super::metrics::Metrics;
use super::shared::Shared;
use crate::store::{QueueConfig, Retention, is_flow_group, now_ms};
use std::collections::HashMap;
use std::sync::Arc;

/// Most units one deletion takes (one write transaction).
const BATCH: usize = 256;

/// Most kept units one sweep passes over before it stops (the next sweep
/// looks at them again).
const MAX_PASSED_OVER: usize = 16_384;

/// The retention of `group`: the host's, with what a queue sets over it
/// (`retain_for_ms` of `u64::MAX` keeps forever).
fn rule(host: Retention, queues: &HashMap<String, QueueConfig>, group: &str) -> Retention {
    let Some(queue) = queues.get(group).filter(|_| !is_flow_group(group)) else {
        return host;
    };
    let keep_for_ms = match queue.retain_for_ms {
        Some(u64::MAX) => None,
        Some(ms) => Some(ms),
        None => host.keep_for_ms,
    };
    Retention::new(keep_for_ms, queue.retain_count.or(host.keep_count))
}

/// Sweeps every `retention_interval` until the engine stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    let every = shared.config.retention_interval;
    loop {
        tokio::select! {
            () = shared.halted() => return,
            () = tokio::time::sleep(every) => {}
        }
        // Beside other hosts, the leader sweeps. (A sweep of a leader
        // deposed meanwhile is harmless: each unit's deletion checks it
        // again under its locks.)
        if shared.store.postgres().is_some_and(|pg| pg.leads().is_none()) {
            continue;
        }
        if let Err(error) = sweep(&shared).await {
            tracing::warn!(%error, "deleting ended tasks past their retention failed; the next sweep tries again");
        }
        // And the shared rate buckets that have refilled (a missing one is
        // full), so the table holds only the keys drawn from lately; and
        // the database's counts of tasks by state are folded, so that
        // table holds a row per queue and state and few more.
        if let Some(pg) = shared.store.postgres() {
            match pg.drop_full_buckets().await {
                Ok(dropped) => tracing::debug!(dropped, "deleted full shared rate buckets"),
                Err(error) => {
                    tracing::warn!(%error, "deleting full shared rate buckets failed; the next sweep tries again")
                }
            }
            match pg.fold_state_counts().await {
                Ok(folded) => tracing::debug!(folded, "folded the counts of tasks by state"),
                Err(error) => {
                    tracing::warn!(%error, "folding the counts of tasks by state failed; the next sweep tries again")
                }
            }
        }
    }
}

/// Deletes what is past its retention now; returns how many tasks went.
pub(crate) async fn sweep(shared: &Shared) -> Result<u64, EngineError> {
    let mut deleted = 0;
    // Units kept this sweep (waiting for a callback, a flow still ending),
    // passed over so the ones behind them go.
    let mut kept = std::collections::HashSet::new();
    while !shared.stopping() && kept.len() < MAX_PASSED_OVER {
        let host = shared.config.retention;
        let queues: HashMap<String, QueueConfig> = shared.store.queues().await?.into_iter().collect();
        let found = shared.store.expired_past(move |group| rule(host, &queues, group), now_ms(), BATCH, &kept).await?;
        let full = found.len() == BATCH;
        if found.is_empty() {
            break;
        }
        let removed = shared.store.delete_expired(found).await?;
        kept.extend(removed.kept_units.iter().map(|u| (u.group.clone(), u.ended_at_ms, u.id)));
        for (queue, state, tenant, bytes) in &removed.tasks {
            shared.metrics.deleted(queue, *state);
            shared.metrics.expired.get_or_create(&Metrics::label(queue)).inc();
            shared.tenants.sub_stored(tenant, *bytes);
        }
        shared.metrics.flows_expired.inc_by(removed.flows);
        deleted += removed.tasks.len() as u64;
        if !full {
            break;
        }
    }
    if deleted > 0 {
        tracing::debug!(deleted, "deleted ended tasks past their retention");
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_sets_what_it_names_and_inherits_the_rest() {
        let host = Retention::new(Some(1_000), Some(50));
        let mut queues = HashMap::new();
        queues.insert("short".to_owned(), QueueConfig { retain_for_ms: Some(10), ..QueueConfig::default() });
        queues.insert("kept".to_owned(), QueueConfig { retain_for_ms: Some(u64::MAX), ..QueueConfig::default() });
        queues.insert("few".to_owned(), QueueConfig { retain_count: Some(3), ..QueueConfig::default() });
        assert_eq!(rule(host, &queues, "short"), Retention::new(Some(10), Some(50)));
        assert_eq!(rule(host, &queues, "kept"), Retention::new(None, Some(50)));
        assert_eq!(rule(host, &queues, "few"), Retention::new(Some(1_000), Some(3)));
        assert_eq!(rule(host, &queues, "other"), host);
        assert_eq!(rule(host, &queues, "@flows"), host);
        assert_eq!(rule(host, &queues, "acme/@flows"), host);
    }
}
