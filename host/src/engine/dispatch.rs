//! Dispatch: the loop that starts ready tasks when the scheduler has a
//! slot, and one attempt from start to recorded outcome: the start
//! transition (attempt counted), the run through the [`Runner`], the retry
//! decision, and the commit of the outcome with the attempt's flow effects.
//!
//! [`Runner`]: super::runner::Runner

use super::ending::Endings;
use super::flows::{AttemptServices, Flows, gather};
use super::metrics::Metrics;
use super::retry::{RetryPolicy, is_retried};
use super::runner::Attempt;
use super::scheduler::{Charge, Entry};
use super::shared::Shared;
use super::submission::Submission;
use crate::store::{Change, InputFrom, StoredFailure, TaskRecord, TaskState, now_ms};
use crate::sync::lock;
use crate::{CancelToken, FailureClass, TaskReport};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct Dispatch {
    shared: Arc<Shared>,
    submission: Arc<Submission>,
    flows: Arc<Flows>,
    endings: Arc<Endings>,
}

/// The transition that records how an attempt ended: completed, retrying
/// after a backoff, cancelled, or failed (with attempts exhausted when a
/// retried class ran out of them).
pub(crate) fn decide(record: &TaskRecord, report: TaskReport, retry: &RetryPolicy) -> Change {
    let id = record.id;
    let fuel_used = report.fuel_consumed;
    let host_bytes_used = Some(report.host_bytes_peak);
    match report.result {
        Ok(output) => Change::new(id, TaskState::Completed, "completed").output(output).edit(move |r| {
            r.error = None;
            r.fuel_used = fuel_used;
            r.host_bytes_used = host_bytes_used;
        }),
        Err(failure) => {
            let stored = StoredFailure {
                class: failure.class,
                retryable: failure.retryable,
                message: failure.message.clone(),
                backtrace: failure.backtrace.clone(),
            };
            let summary = failure.to_string();
            let retried = is_retried(failure.class, failure.retryable);
            let (to, reason, next_run) = if failure.class == FailureClass::Cancelled {
                (TaskState::Cancelled, "cancelled while running".to_owned(), None)
            } else if retried && record.attempts < record.max_attempts {
                let backoff = retry.backoff(record.attempts);
                let at = now_ms().saturating_add(u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX));
                (TaskState::Retrying, format!("{summary}; retrying in {} ms", backoff.as_millis()), Some(at))
            } else if retried {
                (TaskState::Failed, format!("{summary}; attempts exhausted"), None)
            } else {
                (TaskState::Failed, summary, None)
            };
            Change::new(id, to, reason).edit(move |r| {
                r.error = Some(stored);
                r.fuel_used = fuel_used;
                r.host_bytes_used = host_bytes_used;
                r.next_run_at_ms = next_run;
            })
        }
    }
}

/// A failure recorded before anything ran.
fn fail_before_run(record: &TaskRecord, class: FailureClass, message: String) -> Change {
    Change::new(record.id, TaskState::Failed, format!("{class}: {message}"))
        .edit(move |r| r.error = Some(StoredFailure { class, retryable: false, message, backtrace: None }))
}

impl Dispatch {
    pub(crate) fn new(
        shared: Arc<Shared>,
        submission: Arc<Submission>,
        flows: Arc<Flows>,
        endings: Arc<Endings>,
    ) -> Self {
        Self { shared, submission, flows, endings }
    }

    /// Starts tasks while the scheduler has slots, sleeping until the next
    /// due task or a wake-up, until the engine stops.
    pub(crate) async fn run(self: Arc<Self>) {
        let shared = &self.shared;
        while !shared.stopping() {
            let next_due = {
                let mut sched = lock(&shared.sched);
                let next_due = sched.promote_due(now_ms());
                while let Some((entry, charge)) = sched.next() {
                    // Tracked before it is spawned, so `close()` never finds
                    // `running` empty while an attempt is about to start.
                    let token = CancelToken::new();
                    lock(&shared.running).insert(entry.id, token.clone());
                    tokio::spawn(self.clone().execute(entry, charge, token));
                }
                next_due
            };
            let sleep = match next_due {
                Some(due) => Duration::from_millis(due.saturating_sub(now_ms()).max(1)),
                None => Duration::from_secs(3600),
            };
            let _ = tokio::time::timeout(sleep, shared.wake.notified()).await;
        }
    }

    fn stop_running(&self, id: uuid::Uuid) {
        let mut running = lock(&self.shared.running);
        running.remove(&id);
        if running.is_empty() {
            self.shared.idle.notify_waiters();
        }
    }

    /// Runs one attempt of a task and records its outcome.
    async fn execute(self: Arc<Self>, queued: Entry, charge: Charge, token: CancelToken) {
        let shared = &self.shared;
        let started = Instant::now();
        let start = Change::new(queued.id, TaskState::Running, "started").expect_version(queued.version).edit(|r| {
            r.attempts += 1;
            r.started_at_ms = Some(now_ms());
        });
        let record = match shared.store.transition(start).await {
            Ok(record) => record,
            Err(error) => {
                // Cancelled or changed since it was queued: nothing to run.
                tracing::debug!(id = %queued.id, %error, "task not started");
                self.stop_running(queued.id);
                lock(&shared.sched).finished(&queued.queue, charge, 0.0);
                shared.wake.notify_one();
                return;
            }
        };
        let from = record.history.last().and_then(|t| t.from).unwrap_or(TaskState::Pending);
        shared.metrics.moved(&record.queue, Some(from), TaskState::Running);
        let ready_since = record.next_run_at_ms.unwrap_or(record.created_at_ms).max(record.created_at_ms);
        shared.metrics.queue_wait.observe(now_ms().saturating_sub(ready_since) as f64 / 1000.0);

        let services =
            Arc::new(AttemptServices::new(shared.clone(), self.submission.clone(), self.flows.clone(), record.clone()));
        let mut change = match self.input_of(&record) {
            Ok(input) => {
                let attempt = Attempt { input, cancel: token, services: services.clone(), budget: services.budget() };
                let report = shared.runner.run(&record, attempt).await;
                decide(&record, report, &shared.config.retry)
            }
            Err(message) => fail_before_run(&record, FailureClass::HostError, message),
        };
        let held = services.take();
        let completing = change.to == TaskState::Completed;
        let context_writes = !held.effects.context.is_empty();
        let has_effects = context_writes || held.effects.stop_repeating || !held.effects.children.is_empty();
        if completing {
            change = change.effects(held.effects);
        }
        let finished = shared.store.apply(change.expect_version(record.version)).await;
        // Children first, so the flow never looks finished in between.
        let applied = finished.as_ref().is_ok_and(|a| completing && a.effects_applied);
        let committed = match &finished {
            Ok(a) if applied => {
                self.endings.admit(&a.created, true);
                a.created.len() as u64
            }
            _ => 0,
        };
        // Admitted children hold their versions now; dropped ones need none.
        drop(held.pins);
        {
            // The flow's exact context size, read back after its writes.
            let size = if applied && context_writes {
                match shared.store.context_sizes_of(record.flow_id) {
                    Ok(size) => Some(size),
                    Err(error) => {
                        // The reservation is released; the next attempt
                        // that writes re-reads the size.
                        tracing::error!(flow = %record.flow_id, %error, "cannot read back the flow's context size");
                        None
                    }
                }
            } else {
                None
            };
            let mut book = self.flows.book();
            if applied && has_effects {
                // The commit created the flow's record: it must be finished.
                book.grew(record.flow_id);
            }
            book.unreserve_tasks(record.flow_id, held.tasks_reserved.saturating_sub(committed));
            book.settle_context(record.flow_id, held.context_reserved, size);
        }
        let finished = finished.map(|applied| applied.record);
        self.stop_running(record.id);
        let run_secs = started.elapsed().as_secs_f64();
        lock(&shared.sched).finished(&record.queue, charge, run_secs);
        shared.metrics.run_time.observe(run_secs);
        match finished {
            Ok(done) => {
                if done.state == TaskState::Retrying {
                    shared.metrics.moved(&done.queue, Some(TaskState::Running), TaskState::Retrying);
                    shared.metrics.retried.get_or_create(&Metrics::label(&done.queue)).inc();
                    shared.enqueue(&done, done.next_run_at_ms, now_ms());
                } else {
                    self.endings.ended(&done);
                }
                if let Some(fuel) = done.fuel_used {
                    shared.metrics.fuel_used.observe(fuel as f64);
                }
            }
            Err(error) => tracing::error!(id = %record.id, %error, "recording the outcome failed"),
        }
        shared.wake.notify_one();
    }

    /// A task's input: its own, or its predecessors' outputs (one as is,
    /// several gathered into a JSON array).
    fn input_of(&self, record: &TaskRecord) -> Result<Vec<u8>, String> {
        let store = &self.shared.store;
        if record.input_from == InputFrom::Own || record.after.is_empty() {
            return store
                .input(record.id)
                .map_err(|e| format!("reading the input: {e}"))?
                .ok_or_else(|| "the task's input is missing from the store".into());
        }
        let mut outputs = Vec::with_capacity(record.after.len());
        for dep in &record.after {
            let output = store.output(*dep).map_err(|e| format!("reading the output of {dep}: {e}"))?;
            outputs.push(output.ok_or_else(|| format!("task {dep} has no output to pass on"))?);
        }
        Ok(if outputs.len() == 1 { outputs.remove(0) } else { gather(&outputs) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskFailure;
    use crate::engine::testing::{Harness, Script, report};

    fn failure(class: FailureClass, retryable: bool) -> TaskFailure {
        TaskFailure { class, retryable, message: "boom".into(), backtrace: None }
    }

    #[test]
    fn the_retry_decision_follows_the_class_and_the_attempts_left() {
        let retry = RetryPolicy { base: Duration::from_millis(10), cap: Duration::from_millis(10) };
        let mut record = crate::store::tests::record(1, None);
        record.attempts = 1;
        record.max_attempts = 3;
        let to = |r: &TaskRecord, f| decide(r, report(Err(f)), &retry).to;
        assert_eq!(decide(&record, report(Ok(b"x".to_vec())), &retry).to, TaskState::Completed);
        assert_eq!(to(&record, failure(FailureClass::Trap, false)), TaskState::Retrying);
        assert_eq!(to(&record, failure(FailureClass::PluginError, true)), TaskState::Retrying);
        assert_eq!(to(&record, failure(FailureClass::PluginError, false)), TaskState::Failed);
        assert_eq!(to(&record, failure(FailureClass::FuelExhausted, false)), TaskState::Failed);
        assert_eq!(to(&record, failure(FailureClass::Cancelled, false)), TaskState::Cancelled);
        record.attempts = 3;
        let exhausted = decide(&record, report(Err(failure(FailureClass::Timeout, false))), &retry);
        assert_eq!(exhausted.to, TaskState::Failed);
        assert!(exhausted.reason.ends_with("attempts exhausted"), "{}", exhausted.reason);
    }

    #[tokio::test]
    async fn a_task_is_retried_until_it_completes() {
        let h = Harness::new().await;
        let id = h.submit("echo", Script::FailTimes(2, b"done".to_vec())).await;
        let done = h.wait(id).await;
        assert_eq!((done.state, done.attempts), (TaskState::Completed, 3));
        assert_eq!(h.output(id).as_deref(), Some(&b"done"[..]));
        let states: Vec<TaskState> = done.history.iter().map(|t| t.to).collect();
        use TaskState::*;
        assert_eq!(states, [Pending, Running, Retrying, Running, Retrying, Running, Completed]);
        assert_eq!(h.held("echo"), 0, "an ended task releases its version");
    }

    /// The disk fills while a task runs: its outcome waits for room instead
    /// of failing (so the task never sticks in `running`), submissions are
    /// refused meanwhile, and once there is room the outcome is recorded
    /// and the engine goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outcome_the_disk_refused_is_recorded_once_there_is_room() {
        use crate::engine::{EngineError, NewTask};
        use crate::store::StoreError;
        use std::sync::atomic::{AtomicBool, Ordering};
        let full = Arc::new(AtomicBool::new(false));
        let h = Harness::on_disk(full.clone()).await;
        let id = h.submit("echo", Script::AwaitGate(b"late".to_vec())).await;
        h.wait_state(id, TaskState::Running).await;
        full.store(true, Ordering::SeqCst);
        h.runner.gate.add_permits(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.engine.store_fault().is_none() {
            assert!(Instant::now() < deadline, "the outcome's commit never failed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(h.engine.get(id).unwrap().state, TaskState::Running, "reads go on; nothing recorded yet");
        let task = NewTask { plugin: "echo".into(), ..NewTask::default() };
        let refused = h.engine.submit(task).await.unwrap_err();
        assert!(matches!(refused, EngineError::Store(StoreError::Unwritable { .. })), "{refused}");

        full.store(false, Ordering::SeqCst);
        let done = h.wait(id).await;
        assert_eq!((done.state, done.attempts), (TaskState::Completed, 1));
        assert_eq!(h.output(id).as_deref(), Some(&b"late"[..]));
        assert!(h.engine.store_fault().is_none());
        let next = h.submit("echo", Script::Complete(b"next".to_vec())).await;
        assert_eq!(h.wait(next).await.state, TaskState::Completed);
        assert_eq!(h.held("echo"), 0);
    }

    #[tokio::test]
    async fn a_task_out_of_attempts_fails_with_its_last_error() {
        let h = Harness::new().await;
        let id = h.submit("echo", Script::FailTimes(10, Vec::new())).await;
        let done = h.wait(id).await;
        assert_eq!((done.state, done.attempts), (TaskState::Failed, 3));
        assert_eq!(done.error.unwrap().class, "trap");
    }
}
