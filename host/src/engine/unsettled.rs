//! Writes of an attempt whose fate is unknown: its start or its outcome
//! failed in a way that may pass (PostgreSQL lost the connection, broke a
//! deadlock, or failed the group commit holding it), so it may or may not
//! have committed. redb's committer holds such a write and retries it
//! (`store/commit.rs`); PostgreSQL's writes carry closures spent by the
//! failed try, so here the task is read again, with a growing wait, until
//! it can be put where it belongs:
//!
//! - still queued at the version it was queued with: queued again;
//! - started by the failed start: back to the state it was started from,
//!   its attempt not counted (it never ran), and queued;
//! - still running after the failed outcome: recovered as after a crash,
//!   back to pending with the attempt counted (or failed once out of
//!   attempts), and queued or ended;
//! - moved on by the failed outcome: it committed after all; the children
//!   its effects created are admitted and its end is booked;
//! - moved on otherwise (a cancel): that write booked it.
//!
//! Until the host stops: then the next start's recovery settles it.

use super::ending::Endings;
use super::shared::Shared;
use crate::store::{Change, TaskRecord, TaskState, now_ms};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The first wait before a task is read again, and the longest.
const FIRST_WAIT: Duration = Duration::from_millis(50);
const LONGEST_WAIT: Duration = Duration::from_secs(5);

/// The reason of a task's move back after a start that failed.
const NOT_STARTED: &str = "not started: recording its start failed";

/// What was being written when the failure came.
#[derive(Debug, Clone)]
pub(crate) enum Unsettled {
    /// The start of a task queued at this version.
    Start(u64),
    /// The outcome of an attempt that started the task at version `at`,
    /// with the reason it gave (so a move another write made, such as a
    /// lapsed lease's reap, is not taken for it) and the lease it was
    /// written under: held (and renewed) until the task is settled, so no
    /// reap takes it meanwhile and no adoption runs it again.
    Outcome { at: u64, reason: String, lease: Option<crate::store::postgres::Lease> },
}

/// Settles task `id` on a task of its own; see the module docs.
pub(crate) fn settle(shared: Arc<Shared>, endings: Arc<Endings>, id: Uuid, what: Unsettled, why: String) {
    tokio::spawn(async move {
        let mut wait = FIRST_WAIT;
        while !shared.stopping() {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(LONGEST_WAIT);
            match settle_once(&shared, &endings, id, &what, &why).await {
                Ok(()) => break,
                Err(error) => tracing::warn!(%id, %error, "cannot settle a task whose write failed yet; trying again"),
            }
        }
        // Settled, the task moved and its lease went with it; a host that
        // stops first leaves it to lapse.
        if let Unsettled::Outcome { lease: Some(lease), .. } = &what {
            let mut leases = crate::sync::lock(&shared.leases);
            if shared.stopping() { leases.give_up(lease) } else { leases.release(lease) }
        }
    });
}

async fn settle_once(
    shared: &Shared,
    endings: &Arc<Endings>,
    id: Uuid,
    what: &Unsettled,
    why: &str,
) -> Result<(), crate::store::StoreError> {
    let Some(now) = shared.store.get(id).await? else { return Ok(()) };
    let moved_by = |reason: &str| now.history.last().is_some_and(|t| t.reason == reason);
    match *what {
        Unsettled::Start(queued) if now.version == queued => {
            if matches!(now.state, TaskState::Pending | TaskState::Retrying) {
                shared.enqueue(&now, now.next_run_at_ms, now_ms());
            }
        }
        // Started by the failed write, and never run: back to the state it
        // was started from, its attempt not counted (no move of it was
        // counted in the metrics either).
        Unsettled::Start(queued) if now.state == TaskState::Running && now.version == queued + 1 => {
            let from = now.history.last().and_then(|t| t.from).unwrap_or(TaskState::Pending);
            let back = Change::new(id, from, format!("{NOT_STARTED} ({why})"))
                .expect_version(now.version)
                .edit(|r| r.attempts = r.attempts.saturating_sub(1));
            let done = shared.store.transition(back).await?;
            shared.enqueue(&done, done.next_run_at_ms, now_ms());
        }
        // Moved back by an earlier try of the above that failed yet
        // committed.
        Unsettled::Start(queued)
            if now.version == queued + 2
                && matches!(now.state, TaskState::Pending | TaskState::Retrying)
                && now.history.last().is_some_and(|t| t.reason.starts_with(NOT_STARTED)) =>
        {
            shared.enqueue(&now, now.next_run_at_ms, now_ms());
        }
        // Ran, and its outcome is not recorded: recovered as after a
        // crash, the attempt counted.
        Unsettled::Outcome { at, .. } if now.state == TaskState::Running && now.version == at => {
            let lost = format!("recording its outcome failed ({why})");
            let done = shared.store.transition(crate::store::interrupted(&now, &lost)).await?;
            book(shared, endings, &done);
        }
        // The outcome committed after all: booked as its commit would
        // have been, with the children its effects created.
        Unsettled::Outcome { at, ref reason, .. } if now.version == at + 1 && moved_by(reason) => {
            endings.admit_late(&now).await?;
            book(shared, endings, &now);
        }
        // Another write moved it (a cancel, a re-submission), and booked
        // it.
        Unsettled::Start(_) | Unsettled::Outcome { .. } => {}
    }
    Ok(())
}

/// Queues task `done`, which left `running`, again, or books its end
/// (which counts its move).
pub(crate) fn book(shared: &Shared, endings: &Arc<Endings>, done: &TaskRecord) {
    if done.state.is_terminal() {
        endings.ended(done);
        return;
    }
    shared.metrics.moved(&done.queue, Some(TaskState::Running), done.state);
    if matches!(done.state, TaskState::Pending | TaskState::Retrying) {
        shared.enqueue(done, done.next_run_at_ms, now_ms());
    }
}
