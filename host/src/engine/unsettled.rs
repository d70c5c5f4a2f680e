//! Writes of an attempt whose fate is unknown: its start or its outcome
//! failed in a way that may pass (PostgreSQL lost the connection, broke a
//! deadlock, or failed the group commit holding it), so it may or may not
//! have committed. redb's committer holds such a write and retries it
//! (`store/commit.rs`); PostgreSQL's writes carry closures spent by the
//! failed try, so here the task is read again, with a growing wait, until
//! it can be put where it belongs:
//!
//! - still queued at the version it was queued with: queued again;
//! - started (by this host) and not ended: recovered as after a crash,
//!   back to pending with the attempt counted, or failed once out of
//!   attempts, and then queued or ended;
//! - ended or moved on: the commit went through; its end is booked.
//!
//! Until the host stops: then the next start's recovery settles it.

use super::ending::Endings;
use super::shared::Shared;
use crate::store::{TaskRecord, TaskState, now_ms};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The first wait before a task is read again, and the longest.
const FIRST_WAIT: Duration = Duration::from_millis(50);
const LONGEST_WAIT: Duration = Duration::from_secs(5);

/// What was being written when the failure came.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unsettled {
    /// The start of a task queued at this version.
    Start(u64),
    /// The outcome of an attempt that started the task at this version.
    Outcome(u64),
}

/// Settles task `id` on a task of its own; see the module docs.
pub(crate) fn settle(shared: Arc<Shared>, endings: Arc<Endings>, id: Uuid, what: Unsettled, why: String) {
    tokio::spawn(async move {
        let mut wait = FIRST_WAIT;
        while !shared.stopping() {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(LONGEST_WAIT);
            match settle_once(&shared, &endings, id, what, &why).await {
                Ok(()) => return,
                Err(error) => tracing::warn!(%id, %error, "cannot settle a task whose write failed yet; trying again"),
            }
        }
    });
}

async fn settle_once(
    shared: &Shared,
    endings: &Arc<Endings>,
    id: Uuid,
    what: Unsettled,
    why: &str,
) -> Result<(), crate::store::StoreError> {
    let Some(now) = shared.store.get(id).await? else { return Ok(()) };
    let started = match what {
        Unsettled::Start(queued) if now.version == queued => {
            if matches!(now.state, TaskState::Pending | TaskState::Retrying) {
                shared.enqueue(&now, now.next_run_at_ms, now_ms());
            }
            return Ok(());
        }
        // Started by the failed write: nobody runs it.
        Unsettled::Start(queued) => now.state == TaskState::Running && now.version == queued + 1,
        Unsettled::Outcome(at) => now.state == TaskState::Running && now.version == at,
    };
    if started {
        let lost = format!("recording its start or outcome failed ({why})");
        let done = shared.store.transition(crate::store::interrupted(&now, &lost)).await?;
        shared.metrics.moved(&done.queue, Some(TaskState::Running), done.state);
        book(shared, endings, &done);
        return Ok(());
    }
    if let Unsettled::Outcome(at) = what
        && now.version == at + 1
    {
        // The outcome committed after all: book it as its commit would have.
        shared.metrics.moved(&now.queue, Some(TaskState::Running), now.state);
        book(shared, endings, &now);
    }
    // Otherwise another write moved it (a cancel, a re-submission), and
    // booked it.
    Ok(())
}

/// Queues task `done` again, or books its end.
fn book(shared: &Shared, endings: &Arc<Endings>, done: &TaskRecord) {
    match done.state {
        TaskState::Pending | TaskState::Retrying => shared.enqueue(done, done.next_run_at_ms, now_ms()),
        _ if done.state.is_terminal() => endings.ended(done),
        _ => {}
    }
}
