//! Admission of committed tasks: counts each in its flow and against its
//! plugin version, then schedules it, or parks it until the tasks it joins
//! have ended. A declared step released by its last predecessor is checked
//! here: it runs if every predecessor completed, and is skipped otherwise.
//! Plain submissions, children, flow iterations and recovery all come
//! through here.

use super::EngineError;
use super::flows::Flows;
use super::metrics::Metrics;
use super::shared::{Shared, entry};
use crate::store::{InputFrom, StoredFailure, TaskRecord, TaskState, now_ms};
use std::sync::Arc;
use uuid::Uuid;

/// A task admission decided to end instead of running: a step whose
/// predecessor did not complete (cancelled), or one whose dependencies
/// could not be read (failed, loudly, rather than left pending).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepEnd {
    pub(crate) id: Uuid,
    pub(crate) version: u64,
    pub(crate) to: TaskState,
    pub(crate) reason: String,
    pub(crate) error: Option<StoredFailure>,
}

impl StepEnd {
    fn failed(id: Uuid, version: u64, error: &EngineError) -> Self {
        let message = format!("reading what this task waits for failed: {error}");
        Self {
            id,
            version,
            to: TaskState::Failed,
            reason: format!("host error: {message}"),
            error: Some(StoredFailure {
                class: crate::FailureClass::HostError,
                retryable: false,
                message,
                backtrace: None,
            }),
        }
    }
}

pub(crate) struct Admission {
    shared: Arc<Shared>,
    flows: Arc<Flows>,
}

impl Admission {
    pub(crate) fn new(shared: Arc<Shared>, flows: Arc<Flows>) -> Self {
        Self { shared, flows }
    }

    /// Bookkeeping for tasks just committed (`reserved`: an attempt already
    /// counted them in their flow). Returns the steps to end instead.
    pub(crate) fn admit(&self, records: &[TaskRecord], reserved: bool) -> Vec<StepEnd> {
        let shared = &self.shared;
        let limits = self.flows.limits();
        let mut ends = Vec::new();
        let mut ready = Vec::with_capacity(records.len());
        let mut book = self.flows.book();
        for record in records {
            book.created(record.flow_id, reserved, !record.is_flow_root(), limits);
            shared.runner.hold(&record.plugin, &record.plugin_version);
            shared.metrics.moved(&record.queue, None, TaskState::Pending);
            shared.tenants.add_stored(crate::tenant::tenant_of(&record.plugin), record.input_len);
            shared.metrics.submitted.get_or_create(&Metrics::label(&record.queue)).inc();
        }
        for record in records {
            if shared.store.queues_tasks() {
                // Started in its submission's commit: its submitter runs
                // it, and no claim needs waking.
                if record.state != TaskState::Running {
                    // The store's claims wait for what it joins.
                    ready.push(record);
                }
                continue;
            }
            // Under the book lock, a task that ends after this read finds
            // the waiter registered; one that ended before is not waited
            // for.
            match self.flows.unfinished_deps(record) {
                // Claimed in its submission's commit: its submitter runs it.
                Ok(_) if record.state == TaskState::Running => {}
                Ok(pending) if pending.is_empty() => ready.push(record),
                Ok(pending) => book.wait(entry(record), record.next_run_at_ms, &pending),
                Err(error) => {
                    tracing::error!(id = %record.id, %error, "cannot read a task's dependencies; failing it");
                    ends.push(StepEnd::failed(record.id, record.version, &error));
                }
            }
        }
        drop(book);
        ends.extend(self.schedule_ready(ready, now_ms()));
        ends
    }

    /// Schedules tasks that wait for nothing. A pending declared step whose
    /// predecessors have ended is checked first (and skipped if one of them
    /// did not complete). A store that queues tasks is given them all: its
    /// claims wait for what they join, and a claimed step checks its
    /// predecessors then (see `dispatch.rs`).
    pub(crate) fn schedule_ready<'a>(&self, ready: impl IntoIterator<Item = &'a TaskRecord>, now: u64) -> Vec<StepEnd> {
        let mut ends = Vec::new();
        let checked_here = !self.shared.store.queues_tasks();
        for record in ready {
            if checked_here && record.state == TaskState::Pending && is_declared_step(record) {
                ends.extend(self.release(record.id, record.version, None));
            } else {
                self.shared.enqueue(record, record.next_run_at_ms, now);
            }
        }
        ends
    }

    /// A declared step whose predecessors have all ended: scheduled if
    /// they all completed, else ended as skipped. A failed read fails the
    /// step (it is never left pending, nor started early).
    pub(crate) fn release(&self, id: Uuid, version: u64, due_ms: Option<u64>) -> Option<StepEnd> {
        match self.check_released(id) {
            Ok(None) => None,
            Ok(Some((record, None))) => {
                self.shared.enqueue(&record, due_ms.or(record.next_run_at_ms), now_ms());
                None
            }
            Ok(Some((record, Some(reason)))) => {
                Some(StepEnd { id, version: record.version, to: TaskState::Cancelled, reason, error: None })
            }
            Err(error) => {
                tracing::error!(%id, %error, "cannot read a released step or its predecessors; failing it");
                Some(StepEnd::failed(id, version, &error))
            }
        }
    }

    /// The released task, if still pending, and why it is skipped, if it
    /// is.
    fn check_released(&self, id: Uuid) -> Result<Option<(TaskRecord, Option<String>)>, EngineError> {
        let store = &self.shared.store;
        let Some(record) = store.get_now(id)? else { return Ok(None) };
        if record.state != TaskState::Pending {
            return Ok(None);
        }
        if record.input_from == InputFrom::Outputs {
            for dep in record.after.clone() {
                if let Some(reason) = skipped_by(dep, store.get_now(dep)?.as_ref()) {
                    return Ok(Some((record, Some(reason))));
                }
            }
        }
        Ok(Some((record, None)))
    }
}

/// Whether `record` is a declared step: it runs on its predecessors'
/// outputs, and only if they all completed.
pub(crate) fn is_declared_step(record: &TaskRecord) -> bool {
    record.input_from == InputFrom::Outputs && !record.after.is_empty()
}

/// Why a declared step is skipped because of its predecessor `dep`
/// (`found` as read): it is missing, or it ended other than completed.
pub(crate) fn skipped_by(dep: Uuid, found: Option<&TaskRecord>) -> Option<String> {
    let Some(d) = found else { return Some(format!("skipped: predecessor {dep} is missing")) };
    (d.state != TaskState::Completed).then(|| {
        let step = d.step.clone().unwrap_or_else(|| d.id.to_string());
        format!("skipped: step `{step}` ended {}", d.state)
    })
}

#[cfg(test)]
mod tests {
    use crate::engine::NewTask;
    use crate::engine::testing::{Harness, Script, input};
    use crate::store::{StoredFailure, TaskRecord, TaskState};
    use crate::sync::lock;

    /// A running task, and a join on it committed (not yet admitted) as an
    /// attempt would commit it.
    async fn join_on_a_running_task(h: &Harness) -> (TaskRecord, TaskRecord) {
        let dep = h.submit("echo", Script::RunUntilCancelled).await;
        let dep = h.wait_state(dep, TaskState::Running).await;
        let task =
            NewTask { plugin: "echo".into(), input: input(&Script::Complete(b"j".to_vec())), ..NewTask::default() };
        let (mut record, bytes, _pin) = h.engine.inner.submission.prepare(task).unwrap();
        (record.flow_id, record.after, record.depth) = (dep.flow_id, vec![dep.id], 1);
        let join = h.store().submit(record, bytes).await.unwrap().record;
        (dep, join)
    }

    fn ready_tasks(h: &Harness) -> usize {
        lock(&h.shared.sched).depths().iter().map(|(_, d)| d.ready).sum()
    }

    #[tokio::test]
    async fn a_failed_dependency_read_fails_the_task_instead_of_starting_it_early() {
        let h = Harness::new().await;
        let (dep, join) = join_on_a_running_task(&h).await;
        h.store().fail_next_reads(1);
        let ends = h.engine.inner.admission.admit(std::slice::from_ref(&join), false);
        assert_eq!(ends.len(), 1, "{ends:?}");
        assert_eq!((ends[0].id, ends[0].to), (join.id, TaskState::Failed));
        assert!(ends[0].reason.contains("injected failure"), "{}", ends[0].reason);
        assert_eq!(ready_tasks(&h), 0, "the join must not be scheduled while its dependency runs");
        h.engine.inner.endings.end_steps(ends);
        let done = h.wait(join.id).await;
        let StoredFailure { class, .. } = done.error.unwrap();
        assert_eq!((done.state, class), (TaskState::Failed, crate::FailureClass::HostError));
        // Re-submitting it while what it joins still runs is refused; once
        // that has ended, it runs.
        let refused = h.engine.resubmit(join.id).await.unwrap_err().to_string();
        assert!(refused.contains("waits for 1 unfinished task"), "{refused}");
        h.engine.cancel(dep.id).await.unwrap();
        h.engine.resubmit(join.id).await.unwrap();
        assert_eq!(h.wait(join.id).await.state, TaskState::Completed);
    }

    #[tokio::test]
    async fn a_dependency_read_that_works_parks_the_join_until_the_end() {
        let h = Harness::new().await;
        let (dep, join) = join_on_a_running_task(&h).await;
        assert!(h.engine.inner.admission.admit(std::slice::from_ref(&join), false).is_empty());
        assert_eq!(ready_tasks(&h), 0);
        h.engine.cancel(dep.id).await.unwrap();
        assert_eq!(h.wait(join.id).await.state, TaskState::Completed);
    }

    #[tokio::test]
    async fn a_failed_read_of_a_released_step_fails_it_instead_of_leaving_it_pending() {
        let h = Harness::new().await;
        let id = h.submit_delayed("echo", Script::Complete(Vec::new()), 60_000).await;
        let record = h.engine.get(id).await.unwrap();
        h.store().fail_next_reads(1);
        let end = h.engine.inner.admission.release(id, record.version, None).expect("an end, not silence");
        assert_eq!(end.to, TaskState::Failed);
        assert!(end.reason.contains("injected failure"), "{}", end.reason);
        // Read normally, the same task is scheduled.
        assert!(h.engine.inner.admission.release(id, record.version, Some(0)).is_none());
        assert_eq!(h.wait(id).await.state, TaskState::Completed);
    }
}
