//! Administration: cancelling tasks and flows, re-submitting dead-letter
//! tasks, queue settings, and reading and listing records.

use super::EngineError;
use super::ending::Endings;
use super::flows::{FlowView, Flows};
use super::shared::Shared;
use crate::names::NameKind;
use crate::store::{Change, FlowState, Listing, QueueConfig, StoreError, TaskQuery, TaskRecord, TaskState, now_ms};
use crate::sync::lock;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Filter and page for [`Engine::list`](super::Engine::list).
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this state.
    pub state: Option<TaskState>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this plugin name.
    pub plugin: Option<String>,
    /// Only this tenant's tasks.
    pub tenant: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Continue after this task id (the last of the page before).
    pub cursor: Option<Uuid>,
    /// Newest first (default: oldest first).
    pub newest_first: bool,
    /// Count the tasks after the page (up to [`MORE_COUNTED`]).
    pub count_more: bool,
}

/// The most tasks after a page a listing counts.
pub const MORE_COUNTED: u64 = 10_000;

/// A page of tasks.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TaskList {
    /// The tasks, in the listing's order.
    pub tasks: Vec<TaskRecord>,
    /// The cursor of the next page, if any.
    pub next: Option<Uuid>,
    /// How many more tasks match after this page, counted up to
    /// [`MORE_COUNTED`], when asked (`count_more`).
    pub more: Option<u64>,
}

/// The settings a queue change asks for, checked: `retain_for` is a
/// duration or `forever`.
pub(crate) fn queue_config(change: &crate::wire::QueueChange) -> Result<QueueConfig, EngineError> {
    let retain_for_ms = match change.retain_for.as_deref().map(str::trim) {
        None => None,
        Some("forever") => Some(u64::MAX),
        Some(text) => {
            let keep = crate::units::parse_duration(text)
                .map_err(|e| EngineError::InvalidRequest(format!("retain_for: {e}, or `forever`")))?;
            Some(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX))
        }
    };
    let config = QueueConfig {
        concurrency: change.concurrency,
        weight: change.weight.unwrap_or(1),
        retain_for_ms,
        retain_count: change.retain_count,
    };
    check_queue(&config)?;
    Ok(config)
}

/// Refuses queue settings out of range.
pub(crate) fn check_queue(config: &QueueConfig) -> Result<(), EngineError> {
    if !(1..=1000).contains(&config.weight) {
        return Err(EngineError::InvalidRequest(format!("weight {} is out of range: expected 1-1000", config.weight)));
    }
    if config.concurrency == Some(0) {
        return Err(EngineError::InvalidRequest("concurrency must be at least 1 (omit it for no limit)".into()));
    }
    if config.retain_count == Some(0) {
        return Err(EngineError::InvalidRequest(
            "retain_count must be at least 1 (omit it for the host's default)".into(),
        ));
    }
    Ok(())
}

/// A queue with its settings and current depth.
#[derive(Debug, Clone)]
pub struct QueueInfo {
    /// Name.
    pub name: String,
    /// Settings.
    pub config: QueueConfig,
    /// Ready tasks.
    pub ready: usize,
    /// Delayed or retrying tasks.
    pub delayed: usize,
    /// Running tasks.
    pub running: usize,
}

/// How long `cancel` waits for a running task to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

pub(crate) struct Admin {
    shared: Arc<Shared>,
    flows: Arc<Flows>,
    endings: Arc<Endings>,
}

impl Admin {
    pub(crate) fn new(shared: Arc<Shared>, flows: Arc<Flows>, endings: Arc<Endings>) -> Self {
        Self { shared, flows, endings }
    }

    /// Cancels a task: at once when pending or retrying; a running task is
    /// interrupted within an epoch tick and this returns once it ended.
    pub(crate) async fn cancel(&self, id: Uuid) -> Result<TaskRecord, EngineError> {
        let shared = &self.shared;
        let deadline = Instant::now() + CANCEL_WAIT;
        let mut interrupted = false;
        loop {
            let record = shared.task(id).await?;
            match record.state {
                TaskState::Pending | TaskState::Retrying => {
                    let change =
                        Change::new(id, TaskState::Cancelled, "cancelled by request").expect_version(record.version);
                    match shared.store.transition(change).await {
                        Ok(done) => {
                            self.endings.ended(&done);
                            return Ok(done);
                        }
                        // It moved (e.g. a worker started it): look again.
                        Err(StoreError::VersionMismatch { .. } | StoreError::IllegalTransition { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                TaskState::Running => {
                    let ended = shared.ended.notified();
                    let token = lock(&shared.running).get(&id).cloned();
                    match token {
                        Some(token) => {
                            token.cancel();
                            interrupted = true;
                        }
                        // Not running here: on a shared store another host
                        // runs it under a lease, which this change ends.
                        // That host's outcome is then refused (fenced) and
                        // its next renewal finds the lease gone and stops
                        // the attempt.
                        None if shared.store.queues_tasks() && !interrupted => {
                            let change = Change::new(id, TaskState::Cancelled, "cancelled by request")
                                .expect_version(record.version);
                            match shared.store.transition(change).await {
                                Ok(done) => {
                                    self.endings.ended(&done);
                                    return Ok(done);
                                }
                                Err(StoreError::VersionMismatch { .. } | StoreError::IllegalTransition { .. }) => {
                                    continue;
                                }
                                Err(e) => return Err(e.into()),
                            }
                        }
                        None => {}
                    }
                    if Instant::now() > deadline {
                        return Err(EngineError::Conflict(format!(
                            "task {id} did not stop within {} s",
                            CANCEL_WAIT.as_secs()
                        )));
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(50), ended).await;
                }
                // We interrupted it and it has ended (cancelled, or it
                // finished first): report how it ended.
                _ if interrupted => return Ok(record),
                state => {
                    return Err(EngineError::Conflict(format!("task {id} already ended ({state})")));
                }
            }
        }
    }

    /// Re-submits a failed (dead-letter) task: back to pending with its
    /// attempts reset; its history is kept.
    pub(crate) async fn resubmit(&self, id: Uuid, version: Option<String>) -> Result<TaskRecord, EngineError> {
        if let Some(version) = &version {
            crate::names::version(version).map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        }
        let shared = &self.shared;
        let record = shared.task(id).await?;
        if record.state != TaskState::Failed {
            return Err(EngineError::Conflict(format!(
                "only failed tasks can be re-submitted; task {id} is {}",
                record.state
            )));
        }
        // A task of a cancelled flow would be cancelled as it started.
        if shared.store.in_cancelled_flow(&record).await? {
            return Err(EngineError::Conflict(format!(
                "task {id} cannot be re-submitted: its flow {} was cancelled",
                record.flow_id
            )));
        }
        // A task that failed before it could start (what it waits for could
        // not be read) may still wait for tasks that have not ended.
        let waiting = self.flows.unfinished_deps(&record)?;
        if !waiting.is_empty() {
            return Err(EngineError::Conflict(format!(
                "task {id} waits for {} unfinished task(s); re-submit it once they have ended",
                waiting.len()
            )));
        }
        // It runs the version it pinned (or the one asked for), which must
        // still be there (and stays, until the task holds it again).
        let resolved = match &version {
            None => {
                let pinned = format!("{}@{}", record.plugin, record.plugin_version);
                shared.runner.resolve(&pinned).map_err(|e| {
                    EngineError::Conflict(format!(
                        "task {id} cannot be re-submitted: {pinned}, the version it is pinned to, is gone ({e})"
                    ))
                })?
            }
            Some(version) => shared.runner.resolve(&format!("{}@{version}", record.plugin))?,
        };
        let reason = match &version {
            None => "re-submitted from the dead-letter set".to_owned(),
            Some(v) => format!("re-submitted from the dead-letter set on version {v}"),
        };
        let (version, digest) = (resolved.version.clone(), resolved.digest.clone());
        let change = Change::new(id, TaskState::Pending, reason).expect_version(record.version).edit(move |r| {
            r.attempts = 0;
            r.error = None;
            r.finished_at_ms = None;
            r.next_run_at_ms = None;
            r.plugin_version = version;
            r.digest = digest;
        });
        let done = match shared.store.transition(change).await {
            Ok(done) => done,
            // Another request (a concurrent re-submission) moved it first.
            Err(StoreError::VersionMismatch { .. } | StoreError::IllegalTransition { .. }) => {
                let now = shared.task(id).await.map_or_else(|_| "gone".to_owned(), |r| r.state.to_string());
                return Err(EngineError::Conflict(format!(
                    "task {id} changed while it was being re-submitted (another request re-submitted or cancelled \
                     it first); it is {now} now"
                )));
            }
            Err(other) => return Err(other.into()),
        };
        shared.metrics.moved(&done.queue, Some(TaskState::Failed), TaskState::Pending);
        shared.runner.hold(&done.plugin, &done.plugin_version);
        drop(resolved);
        self.flows.book().reopened(done.flow_id, self.flows.limits());
        shared.enqueue(&done, None, now_ms());
        Ok(done)
    }

    /// Cancels a flow: no further task or iteration starts, and every
    /// unfinished task is cancelled (running ones interrupted).
    pub(crate) async fn cancel_flow(&self, id: Uuid) -> Result<FlowView, EngineError> {
        let unfinished = self.flows.cancel(id).await?;
        // Those waiting first: a running task's end, its cancel's too, may
        // release a join waiting for it, which would then start before its
        // own cancel.
        let (running, waiting): (Vec<_>, Vec<_>) = unfinished.into_iter().partition(|(_, running)| *running);
        for tasks in [waiting, running] {
            let cancels = tasks.into_iter().map(|(task, _)| self.cancel(task));
            for result in futures::future::join_all(cancels).await {
                match result {
                    // Ended on its own meanwhile: nothing to cancel.
                    Ok(_) | Err(EngineError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.shared.ended.notify_waiters();
        self.flows.view(id).await
    }

    /// Sets a queue's concurrency limit and weight.
    pub(crate) async fn set_queue(&self, name: &str, config: QueueConfig) -> Result<(), EngineError> {
        crate::tenant::check_key(NameKind::Queue, name).map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        check_queue(&config)?;
        let tenant_queues = self.shared.tenants.quotas(crate::tenant::tenant_of(name)).and_then(|q| q.max_queues);
        self.shared.queues.admit(name, self.shared.config.max_queues, tenant_queues)?;
        self.shared.store.set_queue(name.to_owned(), config.clone()).await?;
        lock(&self.shared.sched).configure(name, config);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Every known queue.
    pub(crate) fn queues(&self) -> Vec<QueueInfo> {
        let sched = lock(&self.shared.sched);
        sched
            .depths()
            .into_iter()
            .map(|(name, d)| QueueInfo {
                config: sched.config(&name).unwrap_or_default(),
                name,
                ready: d.ready,
                delayed: d.delayed,
                running: d.running,
            })
            .collect()
    }

    /// Lists tasks in submission order; returns the page and the cursor of
    /// the next one.
    pub(crate) async fn list(&self, filter: &ListFilter) -> Result<TaskList, EngineError> {
        let query = TaskQuery {
            state: filter.state,
            queue: filter.queue.clone(),
            plugin: filter.plugin.clone(),
            tenant: filter.tenant.clone(),
        };
        let listing = Listing {
            after: filter.cursor,
            limit: filter.limit.unwrap_or(100).clamp(1, 1000),
            newest_first: filter.newest_first,
            count_up_to: if filter.count_more { MORE_COUNTED } else { 1 },
        };
        let listed = self.shared.store.list_page(&query, &listing).await?;
        let next = if listed.more > 0 { listed.tasks.last().map(|r| r.id) } else { None };
        Ok(TaskList { next, more: filter.count_more.then_some(listed.more), tasks: listed.tasks })
    }

    /// Waits until the task has ended, or `timeout` passed.
    pub(crate) async fn wait(&self, id: Uuid, timeout: Duration) -> Result<TaskRecord, EngineError> {
        let shared = &self.shared;
        let ended = shared
            .wait_until(timeout, || async move { Ok(Some(shared.task(id).await?).filter(|r| r.state.is_terminal())) })
            .await?;
        match ended {
            Some(record) => Ok(record),
            None => shared.task(id).await,
        }
    }

    /// Waits until a flow ends or `timeout` passes; returns its view.
    pub(crate) async fn wait_flow(&self, id: Uuid, timeout: Duration) -> Result<FlowView, EngineError> {
        let flows = &self.flows;
        self.shared
            .wait_until(timeout, || async move { Ok((flows.state(id).await? != FlowState::Running).then_some(())) })
            .await?;
        self.flows.view(id).await
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::testing::{Script, on_both};
    use crate::store::{QueueConfig, TaskState};

    on_both! {
        async fn cancelling_a_delayed_task_ends_it_at_once_and_a_second_cancel_conflicts(h) {
            let id = h.submit_delayed("echo", Script::Complete(Vec::new()), 60_000).await;
            let done = h.engine.cancel(id).await.unwrap();
            assert_eq!(done.state, TaskState::Cancelled);
            assert!(h.engine.cancel(id).await.unwrap_err().to_string().contains("already ended (cancelled)"));
        }

        async fn cancelling_a_running_task_interrupts_it(h) {
            let id = h.submit("echo", Script::RunUntilCancelled).await;
            h.wait_state(id, TaskState::Running).await;
            let done = h.engine.cancel(id).await.unwrap();
            assert_eq!(done.state, TaskState::Cancelled);
        }

        /// Twenty concurrent re-submissions of one failed task: one wins, the
        /// others lost the race and get a conflict (they once got a storage
        /// error: "cannot go from pending to pending").
        async fn concurrent_resubmissions_have_one_winner_and_conflicts(h) {
            let id = h.submit("echo", Script::FailTimes(3, b"ok".to_vec())).await;
            assert_eq!(h.wait(id).await.state, TaskState::Failed);
            let tries = (0..20).map(|_| {
                let engine = h.engine.clone();
                tokio::spawn(async move { engine.resubmit(id).await })
            });
            let mut won = 0;
            for result in futures::future::join_all(tries).await {
                match result.unwrap() {
                    Ok(_) => won += 1,
                    Err(crate::engine::EngineError::Conflict(m)) => {
                        assert!(
                            m.contains("only failed tasks") || m.contains("changed while it was being re-submitted"),
                            "{m}"
                        );
                    }
                    Err(other) => panic!("a lost race must be a conflict: {other:?}"),
                }
            }
            assert_eq!(won, 1);
            assert_eq!(h.wait(id).await.state, TaskState::Completed);
        }

        async fn a_dead_letter_task_runs_again_from_its_first_attempt(h) {
            let id = h.submit("echo", Script::FailTimes(3, b"ok".to_vec())).await;
            assert_eq!(h.wait(id).await.state, TaskState::Failed);
            assert!(h.engine.resubmit(id).await.is_ok());
            let done = h.wait(id).await;
            assert_eq!((done.state, done.attempts), (TaskState::Completed, 1));
            assert!(h.engine.resubmit(id).await.unwrap_err().to_string().contains("only failed tasks"));
        }
    }

    on_both! {
        tweak = |c: &mut crate::engine::EngineConfig| c.max_queues = 1;

        async fn a_setting_for_a_new_queue_past_the_limit_is_refused(h) {
            h.engine.set_queue("a", QueueConfig::default()).await.unwrap();
            let refused = h.engine.set_queue("b", QueueConfig::default()).await.unwrap_err();
            assert!(matches!(refused, crate::engine::EngineError::LimitReached(_)), "{refused:?}");
            let stored = h.shared.store.queues().await.unwrap();
            assert!(stored.iter().all(|(name, _)| name == "a"), "a refusal writes nothing: {stored:?}");
            h.engine.set_queue("a", QueueConfig { weight: 3, ..QueueConfig::default() }).await.unwrap();
            let stored = h.shared.store.queues().await.unwrap();
            assert_eq!(stored.iter().find(|(name, _)| name == "a").map(|(_, c)| c.weight), Some(3));
        }
    }
}
