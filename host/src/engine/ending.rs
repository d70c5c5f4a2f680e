//! What happens when a task ends: metrics, its plugin version released,
//! its callback sent, the joins it releases started (or skipped), and its
//! flow finished or repeated once its last task has ended. Dispatch and
//! administration both end tasks through here; admission's refusals
//! ([`StepEnd`]) are committed here too.

use super::EngineError;
use super::admission::{Admission, StepEnd};
use super::callbacks::{self, Callbacks};
use super::flows::Flows;
use super::metrics::Metrics;
use super::shared::Shared;
use crate::store::{Change, StoreError, TaskRecord, TaskState};
use crate::sync::lock;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub(crate) struct Endings {
    shared: Arc<Shared>,
    flows: Arc<Flows>,
    admission: Arc<Admission>,
    callbacks: Callbacks,
}

impl Endings {
    pub(crate) fn new(
        shared: Arc<Shared>,
        flows: Arc<Flows>,
        admission: Arc<Admission>,
        callback_keys: Arc<callbacks::CallbackKeys>,
    ) -> Self {
        let callbacks = Callbacks::new(
            shared.store.clone(),
            (shared.metrics.callbacks_dropped.clone(), shared.metrics.callbacks_undelivered.clone()),
            callbacks::MAX_PENDING,
            &shared.config.egress,
            callback_keys,
        );
        Self { shared, flows, admission, callbacks }
    }

    /// Admits committed tasks and ends the steps admission refused.
    pub(crate) fn admit(self: &Arc<Self>, records: &[TaskRecord], reserved: bool) {
        let ends = self.admission.admit(records, reserved);
        self.end_steps(ends);
    }

    /// Books what an outcome whose commit was thought failed did after
    /// all (see `unsettled.rs`): the children its effects created, never
    /// admitted, are (they are the flow's tasks whose parent it is: a task
    /// grows children only with its completion), and a flow record its
    /// commit made is one to finish.
    pub(crate) async fn admit_late(self: &Arc<Self>, done: &TaskRecord) -> Result<(), crate::store::StoreError> {
        if done.state != TaskState::Completed {
            return Ok(());
        }
        let children: Vec<TaskRecord> = self
            .shared
            .store
            .flow_tasks(done.flow_id)
            .await?
            .into_iter()
            .filter(|t| t.parent_id == Some(done.id) && !t.state.is_terminal())
            .collect();
        let has_flow = self.shared.store.flow(done.flow_id).await?.is_some();
        self.admit(&children, false);
        if has_flow {
            self.flows.book().grew(done.flow_id, self.flows.limits());
        }
        Ok(())
    }

    /// After a try at ending flow `flow` (at iteration `before`) failed in
    /// a way that may have committed: `Some(true)` when it did start the
    /// next iteration, whose tasks are then admitted; `Some(false)` when
    /// it did not; `None` when that cannot be read now.
    async fn admit_next_iteration(self: &Arc<Self>, flow: Uuid, before: Option<u32>) -> Option<bool> {
        let Some(before) = before else { return Some(false) };
        let now = match self.shared.store.flow(flow).await {
            Ok(Some(now)) => now,
            Ok(None) => return Some(false),
            Err(error) => {
                tracing::warn!(%flow, %error, "cannot read a flow whose end failed; trying again");
                return None;
            }
        };
        if now.iteration <= before {
            return Some(false);
        }
        match self.shared.store.iteration_tasks(flow, now.iteration).await {
            Ok(tasks) => {
                let open: Vec<TaskRecord> = tasks.into_iter().filter(|t| !t.state.is_terminal()).collect();
                self.admit(&open, false);
                self.shared.ended.notify_waiters();
                Some(true)
            }
            Err(error) => {
                tracing::warn!(%flow, %error, "cannot read a flow's new iteration; trying again");
                None
            }
        }
    }

    /// Commits each step end on its own task (a store commit each), then
    /// does the bookkeeping of a task that ended.
    pub(crate) fn end_steps(self: &Arc<Self>, ends: Vec<StepEnd>) {
        for end in ends {
            let endings = self.clone();
            tokio::spawn(async move {
                let StepEnd { id, version, to, reason, error } = end;
                let (mut wait, mut failed_once) = (Duration::from_millis(50), false);
                loop {
                    let (why, error) = (reason.clone(), error.clone());
                    let change = Change::new(id, to, why).expect_version(version).edit(move |r| {
                        if error.is_some() {
                            r.error = error;
                        }
                    });
                    match endings.shared.store.transition(change).await {
                        Ok(done) => endings.ended(&done),
                        // A failure that may pass (PostgreSQL's): the same
                        // checked change again, until the host stops.
                        Err(error) if error.is_transient() && !endings.shared.stopping() => {
                            tracing::warn!(%id, %error, "ending a step that must not run failed; trying again");
                            failed_once = true;
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(5));
                            continue;
                        }
                        // The try that failed may have committed: then
                        // the step ended, and is booked now.
                        Err(StoreError::VersionMismatch { .. } | StoreError::IllegalTransition { .. })
                            if failed_once =>
                        {
                            let ours = |now: &TaskRecord| {
                                now.version == version + 1
                                    && now.state == to
                                    && now.history.last().is_some_and(|t| t.reason == reason)
                            };
                            match endings.shared.store.get(id).await {
                                Ok(Some(now)) if ours(&now) => endings.ended(&now),
                                Ok(_) => {}
                                Err(error) => tracing::error!(%id, %error, "cannot read a step whose end failed"),
                            }
                        }
                        Err(error) => tracing::error!(%id, %error, "cannot end a step that must not run"),
                    }
                    break;
                }
            });
        }
    }

    /// Sends task `done`'s completion callback to `url`.
    async fn call_back(&self, url: String, done: &TaskRecord) {
        match self.shared.store.output(done.id).await {
            Ok(output) => {
                // The tail is an aid: one that cannot be read is left out
                // (and logged); the callback still goes.
                let stderr = super::logs::stderr_tail(&self.shared, done).await.unwrap_or_else(|error| {
                    tracing::warn!(id = %done.id, %error, "cannot read the failed attempt's transcript");
                    Vec::new()
                });
                let ns = crate::tenant::Namespace::new(crate::tenant::tenant_of(&done.plugin));
                let body = crate::wire::Task::new(done, output.as_deref()).with_stderr_tail(stderr).in_namespace(&ns);
                self.callbacks.deliver(url, body, ns.tenant());
            }
            Err(error) => {
                tracing::error!(id = %done.id, %error, "cannot read the output for the callback");
                let why = format!("reading the output failed: {error}");
                self.callbacks.ended(done.id, crate::store::CallbackOutcome::failed(0, why));
            }
        }
    }

    /// Bookkeeping for a task that reached a terminal state.
    pub(crate) fn ended(self: &Arc<Self>, done: &TaskRecord) {
        let shared = &self.shared;
        if done.state == TaskState::Cancelled {
            // Cancelled before it was claimed: out of the ready counts now,
            // not when its entry comes up.
            lock(&shared.sched).withdraw(done.id, &done.queue);
        }
        shared.runner.release(&done.plugin, &done.plugin_version);
        let label = Metrics::label(&done.queue);
        let from = done.history.last().and_then(|t| t.from);
        shared.metrics.moved(&done.queue, from, done.state);
        if let Some(output) = done.output_len.filter(|_| done.state == TaskState::Completed) {
            shared.tenants.add_stored(crate::tenant::tenant_of(&done.plugin), output);
        }
        let plugin_label = shared.metrics.plugin_label(&done.plugin, &done.plugin_version, done.state.as_str());
        shared.metrics.plugin_tasks.get_or_create(&plugin_label).inc();
        if matches!(done.state, TaskState::Completed | TaskState::Failed) {
            shared.metrics.recent.ended(done.state == TaskState::Completed);
        }
        match done.state {
            TaskState::Completed => shared.metrics.completed.get_or_create(&label).inc(),
            TaskState::Failed => shared.metrics.failed.get_or_create(&label).inc(),
            TaskState::Cancelled => shared.metrics.cancelled.get_or_create(&label).inc(),
            _ => 0,
        };
        if let Some(url) = done.callback_url.clone() {
            // The body is read off this path (its output, its failure's
            // stderr), then the delivery goes on its own.
            let (endings, done) = (self.clone(), done.clone());
            tokio::spawn(async move { endings.call_back(url, &done).await });
        }
        let (released, last) = self.flows.task_ended(done);
        let ends: Vec<StepEnd> = released
            .into_iter()
            .filter_map(|waiting| self.admission.release(waiting.entry.id, waiting.entry.version, waiting.due_ms))
            .collect();
        self.end_steps(ends);
        if last {
            self.finish_flow(done.flow_id);
        }
        shared.ended.notify_waiters();
    }

    /// Records the end of a flow whose last task ended, or starts its next
    /// iteration (on its own task: it commits).
    pub(crate) fn finish_flow(self: &Arc<Self>, flow: Uuid) {
        let endings = self.clone();
        tokio::spawn(async move { endings.finish_flow_now(flow).await });
    }

    /// [`finish_flow`](Self::finish_flow), awaited: returns once the
    /// flow's end (or next iteration) is recorded, or found not due,
    /// trying again after failures that may pass until the host stops;
    /// false when it gave up.
    pub(crate) async fn finish_flow_now(self: &Arc<Self>, flow: Uuid) -> bool {
        let endings = self;
        let mut wait = Duration::from_millis(50);
        // Where the flow was, in case a failed try commits its next
        // iteration after all (PostgreSQL's failures may have
        // committed; redb's do not).
        let before = match endings.shared.store.postgres() {
            None => None,
            Some(pg) => {
                // Most ends leave tasks of their flow to run: then
                // nothing more is read. (A failed read is left to
                // `finish`, which reads the count again and is tried
                // again.)
                match pg.flow_unfinished(flow).await {
                    Ok(Some(0)) | Err(_) => {}
                    Ok(_) => return true,
                }
                endings.shared.store.flow(flow).await.ok().flatten().map(|f| f.iteration)
            }
        };
        loop {
            match endings.flows.finish(flow).await {
                Ok((created, pins)) => {
                    endings.admit(&created, false);
                    // The tasks hold their versions now.
                    drop(pins);
                    endings.shared.ended.notify_waiters();
                    return true;
                }
                // A failure that may pass (PostgreSQL's): finishing
                // reads the flow again, so it is tried again, once it
                // is known the failed try started no iteration.
                Err(EngineError::Store(error)) if error.is_transient() => loop {
                    if endings.shared.stopping() {
                        return false;
                    }
                    tracing::warn!(%flow, %error, "recording the end of a flow failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                    match endings.admit_next_iteration(flow, before).await {
                        Some(true) => return true,
                        Some(false) => break,
                        None => {}
                    }
                },
                Err(error) => {
                    tracing::error!(%flow, %error, "recording the end of a flow failed");
                    return false;
                }
            }
        }
    }
}
