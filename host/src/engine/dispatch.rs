//! Dispatch: the loop that claims ready tasks while the scheduler's
//! window has room, and one attempt from claim to recorded outcome: the
//! start transition (attempt counted, durable before anything runs), the
//! wait at the execution gate (a slot and room in the memory budget), the
//! run through the [`Runner`], the retry decision, and the commit of the
//! outcome with the attempt's flow effects. Only the run holds a slot:
//! the two commits overlap other tasks' runs through group commit. A task
//! submitted while nothing waits before it is claimed in its submission's
//! commit instead ([`Dispatch::claim_at_submit`]): one commit, not two,
//! before it starts.
//!
//! [`Runner`]: super::runner::Runner

use super::ending::Endings;
use super::fetch::InputFetcher;
use super::flows::{AttemptServices, Flows, gather};
use super::metrics::Metrics;
use super::retry::{RetryPolicy, is_retried};
use super::runner::Attempt;
use super::scheduler::{Charge, Entry};
use super::shared::{Shared, entry};
use super::submission::Submission;
use super::unsettled::{self, Unsettled};
use crate::sandbox::Transcript;
use crate::store::postgres::{Claimed, Lease};
use crate::store::{Change, InputFrom, StoreError, StoredFailure, TaskRecord, TaskState, now_ms, start};
use crate::sync::lock;
use crate::{CancelToken, FailureClass, TaskFailure, TaskReport};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(crate) struct Dispatch {
    shared: Arc<Shared>,
    /// Fetches the inputs of tasks submitted with an `input_url`.
    fetcher: InputFetcher,
    submission: Arc<Submission>,
    flows: Arc<Flows>,
    endings: Arc<Endings>,
}

/// A task claimed before its submission commits: what its queue was
/// charged, and the token that cancels it, tracked from before the commit.
pub(crate) struct Claim {
    queue: String,
    charge: Charge,
    token: CancelToken,
    claimed: Instant,
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

/// What an attempt runs with, besides its task and input.
struct RunWith<'s> {
    cancel: CancelToken,
    /// Its place in line for a slot ([`super::gate::Gate::ticket`]).
    ticket: u64,
    services: &'s Arc<AttemptServices>,
    transcript: Option<Transcript>,
    trace: crate::trace::Scope,
}

/// An attempt that ran.
struct Ran<'a> {
    report: TaskReport,
    /// Its run time.
    secs: f64,
    /// When its run began.
    started_ms: u64,
    /// The input's size (a fetched input's is known only now).
    input_len: u64,
    /// The memory its outcome holds until it is recorded.
    reserved: super::gate::Reserved<'a>,
}

/// Why a claimed attempt did not run.
enum NotRun {
    /// It failed (or was cancelled) before it ran.
    Failed(FailureClass, String),
    /// It failed before it ran in a way another attempt may not (its input
    /// could not be fetched): decided as a run's failure is.
    Retried(TaskFailure),
    /// The host is stopping.
    Stopping,
    /// A task of a cancelled flow, or a declared step claimed after a
    /// predecessor ended other than completed (or went missing): why it
    /// is cancelled without an attempt counted.
    Skipped(String),
}

/// The report of an attempt that failed before its run began.
fn unrun(failure: TaskFailure) -> TaskReport {
    TaskReport {
        result: Err(failure),
        logs: Vec::new(),
        stdout: Vec::new(),
        stderr: Vec::new(),
        fuel_consumed: None,
        elapsed: Duration::ZERO,
        host_bytes_peak: 0,
        memory_peak: 0,
    }
}

/// A claimed task the host stops before it runs: back to pending, its
/// attempt not counted.
fn not_started(record: &TaskRecord) -> Change {
    Change::new(record.id, TaskState::Pending, "not started: the host is stopping")
        .edit(|r| r.attempts = r.attempts.saturating_sub(1))
}

/// The reason of a move back to pending after a refused commit of effects.
const RUNS_AGAIN: &str = "runs again: its effects were not committed";

/// Uncounted runs again a task may have before a refused commit counts
/// as a failed attempt (the reservation and the commit's check should
/// agree on the second run; this bounds a disagreement).
const MAX_RUNS_AGAIN: usize = 3;

/// An attempt whose effects would have taken its flow past a limit that
/// other hosts' attempts reached meanwhile (`error`): back to pending to
/// run again, its attempt not counted (the next reserves against what
/// they committed, and is told the limit); after [`MAX_RUNS_AGAIN`] such
/// runs, a failed attempt (`HostError`) for `policy` to retry or not.
fn over_flow_limit(record: &TaskRecord, error: &StoreError, policy: &RetryPolicy) -> Change {
    // Its last moves back, in a row (between them only its starts).
    let before = record
        .history
        .iter()
        .rev()
        .filter(|t| t.to != TaskState::Running)
        .take_while(|t| t.reason.starts_with(RUNS_AGAIN))
        .count();
    if before >= MAX_RUNS_AGAIN {
        let failure = TaskFailure::new(
            FailureClass::HostError,
            format!("its effects were not committed {} times in a row: {error}", before + 1),
        );
        return decide(record, unrun(failure), policy);
    }
    Change::new(record.id, TaskState::Pending, format!("{RUNS_AGAIN}: {error}"))
        .edit(|r| r.attempts = r.attempts.saturating_sub(1))
}

/// A failure (or a cancel) recorded before anything ran.
fn fail_before_run(record: &TaskRecord, class: FailureClass, message: String) -> Change {
    let to = if class == FailureClass::Cancelled { TaskState::Cancelled } else { TaskState::Failed };
    Change::new(record.id, to, format!("{class}: {message}"))
        .edit(move |r| r.error = Some(StoredFailure { class, retryable: false, message, backtrace: None }))
}

impl Dispatch {
    pub(crate) fn new(
        shared: Arc<Shared>,
        submission: Arc<Submission>,
        flows: Arc<Flows>,
        endings: Arc<Endings>,
    ) -> Self {
        let fetcher = InputFetcher::new(&shared.config.egress);
        Self { shared, fetcher, submission, flows, endings }
    }

    /// Starts tasks while the scheduler has slots, sleeping until the next
    /// due task or a wake-up, until the engine stops. On a shared store
    /// the tasks come from claims (see `claims.rs`).
    pub(crate) async fn run(self: Arc<Self>) {
        if let Some(pg) = self.shared.store.postgres().cloned() {
            let (shared, endings) = (self.shared.clone(), self.endings.clone());
            return super::claims::run(self, shared, endings, pg).await;
        }
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
                    let ticket = shared.gate.ticket();
                    tokio::spawn(self.clone().execute(entry, charge, token, ticket));
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

    fn stop_running(&self, id: uuid::Uuid, run: u32) {
        {
            // Only this attempt's: a manual retry's next may be running.
            let mut transcripts = lock(&self.shared.transcripts);
            if transcripts.get(&id).is_some_and(|(r, _)| *r == run) {
                transcripts.remove(&id);
            }
        }
        let mut running = lock(&self.shared.running);
        running.remove(&id);
        if running.is_empty() {
            self.shared.idle.notify_waiters();
        }
    }

    /// Claims `record`, about to be submitted, when the scheduler would
    /// claim it next anyway (see [`Scheduler::claim_now`]): a plain task,
    /// due now, while nothing else waits (but tasks held by their queue's
    /// or tenant's cap) and the window has room. The
    /// caller commits it started through `Db::submit_started`, then hands
    /// the claim to [`Dispatch::run_claimed`] or, when no task was created
    /// or it was not started (PostgreSQL found other tasks startable, or a
    /// cap on its queue or tenant), to [`Dispatch::unclaim`]. On
    /// PostgreSQL the scheduler holds no queued tasks: the database decides
    /// in that commit whether nothing else waits, and a task of a plugin
    /// this host leaves to others is not claimed, nor is any while this
    /// host has as many tasks in flight as execution slots (the task would
    /// wait here anyway, other hosts' claims may take it, and claims in
    /// batches cost the database less) or its last claim filled up (tasks
    /// wait: they come first, and the commit's look for them would be
    /// wasted).
    ///
    /// [`Scheduler::claim_now`]: super::scheduler::Scheduler::claim_now
    pub(crate) fn claim_at_submit(&self, record: &TaskRecord) -> Option<Claim> {
        let shared = &self.shared;
        let due = record.next_run_at_ms.is_none_or(|at| at <= now_ms());
        let shared_store = shared.store.queues_tasks();
        let backlogged = shared_store && shared.backlogged.load(Ordering::Relaxed);
        if !shared.config.claim_at_submit
            || backlogged
            || shared.stopping()
            || !due
            || !record.after.is_empty()
            || record.state != TaskState::Pending
            || super::routing::leave_to_others(shared).contains(&record.plugin)
        {
            return None;
        }
        let claimed = Instant::now();
        let charge = {
            let mut sched = lock(&shared.sched);
            // Under the scheduler's lock, so a burst of submissions starts
            // no more than the slots with their commits.
            if shared_store && sched.in_flight() >= shared.gate.slot_count() {
                return None;
            }
            sched.claim_now(entry(record), now_ms())?
        };
        // Tracked before its commit, so a cancel finds it once it exists
        // and `close()` waits for it.
        let token = CancelToken::new();
        lock(&shared.running).insert(record.id, token.clone());
        let claim = Claim { queue: record.queue.clone(), charge, token, claimed };
        // `close()` sets `stopping` before it waits for `running` to empty:
        // seen here, the engine may not have waited for this claim.
        if shared.stopping() {
            self.unclaim(claim, record.id);
            return None;
        }
        Some(claim)
    }

    /// Runs a task committed as claimed (`record`, running), under `lease`
    /// on a shared store; `input` is its input when the caller still holds
    /// it (else it is read from the store).
    pub(crate) fn run_claimed(
        self: &Arc<Self>,
        claim: Claim,
        record: TaskRecord,
        lease: Option<Lease>,
        input: Option<Vec<u8>>,
    ) {
        let Claim { charge, token, claimed, .. } = claim;
        if let Some(lease) = &lease {
            lock(&self.shared.leases).hold(lease, token.clone());
        }
        let ticket = self.shared.gate.ticket();
        tokio::spawn(self.clone().attempt(record, charge, token, (claimed, ticket), lease, input));
    }

    /// Runs a task this host claimed from a shared store, its outcome
    /// recorded under the claim's lease. An earlier attempt of the task
    /// may still be stopping here (its lease was lost, and the task was
    /// taken back and claimed again): this one starts once it ended, or is
    /// given back if the host stops first.
    pub(crate) fn start_claimed(self: &Arc<Self>, claim: Claimed) {
        let Claimed { record, lease, input } = claim;
        let shared = &self.shared;
        let claimed = (Instant::now(), shared.gate.ticket());
        let charge = lock(&shared.sched).claimed(&record.queue);
        let token = CancelToken::new();
        lock(&shared.leases).hold(&lease, token.clone());
        // Tracked before it is spawned, so `close()` never finds `running`
        // empty while an attempt is about to start.
        if self.track(record.id, &token) {
            tokio::spawn(self.clone().attempt(record, charge, token, claimed, Some(lease), input));
            return;
        }
        // Counted until it runs or is given back, so `close()` waits for it.
        shared.starting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let this = self.clone();
        tokio::spawn(async move {
            let started = loop {
                let ended = this.shared.ended.notified();
                if this.shared.stopping() {
                    this.give_back(&record, charge, &lease).await;
                    break false;
                }
                if this.track(record.id, &token) {
                    break true;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), ended).await;
            };
            this.shared.starting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            this.shared.idle.notify_waiters();
            if started {
                this.attempt(record, charge, token, claimed, Some(lease), input).await;
            }
        });
    }

    /// Tracks the attempt `token` cancels as task `id`'s running one,
    /// unless another attempt of it runs here.
    fn track(&self, id: uuid::Uuid, token: &CancelToken) -> bool {
        match lock(&self.shared.running).entry(id) {
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert(token.clone());
                true
            }
            std::collections::hash_map::Entry::Occupied(_) => false,
        }
    }

    /// Gives back a claim that never started (the host stopped first): the
    /// task goes back to pending, its attempt not counted, as an attempt
    /// the host stops before it runs does.
    async fn give_back(&self, record: &TaskRecord, charge: Charge, lease: &Lease) {
        let shared = &self.shared;
        match shared.store.finish(lease.clone(), not_started(record).expect_version(record.version)).await {
            Ok(_) => lock(&shared.leases).release(lease),
            Err(error) => {
                tracing::warn!(id = %record.id, %error, "giving back a claimed task failed; it is taken back once its lease lapses");
                lock(&shared.leases).give_up(lease);
            }
        }
        lock(&shared.sched).finished(&record.queue, charge, 0.0);
    }

    /// Gives back the claim of task `id`, whose submission created nothing
    /// (refused, failed, or an existing task found by its key).
    pub(crate) fn unclaim(&self, claim: Claim, id: uuid::Uuid) {
        self.stop_running(id, 0);
        lock(&self.shared.sched).finished(&claim.queue, claim.charge, 0.0);
        self.shared.wake.notify_one();
    }

    /// Claims a queued task, then runs its attempt.
    async fn execute(self: Arc<Self>, queued: Entry, charge: Charge, token: CancelToken, ticket: u64) {
        let shared = &self.shared;
        let claimed = (Instant::now(), ticket);
        let record = match shared.store.transition(start(queued.id, queued.version)).await {
            Ok(record) => record,
            Err(error) => {
                // Cancelled or changed since it was queued: nothing to run.
                tracing::debug!(id = %queued.id, %error, "task not started");
                self.stop_running(queued.id, 0);
                lock(&shared.sched).finished(&queued.queue, charge, 0.0);
                shared.wake.notify_one();
                if error.is_unsettled() {
                    // It may or may not have started.
                    let what = Unsettled::Start(queued.version);
                    unsettled::settle(shared.clone(), self.endings.clone(), queued.id, what, error.to_string());
                }
                return;
            }
        };
        self.attempt(record, charge, token, claimed, None, None).await;
    }

    /// Runs one attempt of a claimed task (`record`, running since
    /// `claimed.0`, its place in line for a slot `claimed.1`) and records
    /// its outcome (under `lease`, a shared store's claim). `input`: the
    /// task's own input, when its claim read it already.
    async fn attempt(
        self: Arc<Self>,
        record: TaskRecord,
        charge: Charge,
        token: CancelToken,
        (claimed, ticket): (Instant, u64),
        lease: Option<Lease>,
        input: Option<Vec<u8>>,
    ) {
        let shared = &self.shared;
        let from = record.history.last().and_then(|t| t.from).unwrap_or(TaskState::Pending);
        shared.metrics.moved(&record.queue, Some(from), TaskState::Running);
        let traces = &shared.config.traces;
        let mut attempt_span = traces.child("attempt", record.trace);
        attempt_span.set_with(|set| {
            set("taskhost.task.id", record.id.to_string().into());
            set("taskhost.task.attempt", i64::from(record.attempts).into());
            set("taskhost.plugin", record.plugin.clone().into());
            set("taskhost.plugin.version", record.plugin_version.clone().into());
            set("taskhost.queue", record.queue.clone().into());
        });
        let trace = crate::trace::Scope::new(traces, attempt_span.context());

        let services = Arc::new(AttemptServices::new(
            shared.clone(),
            self.submission.clone(),
            self.flows.clone(),
            record.clone(),
            attempt_span.context(),
        ));
        let mut run_secs = 0.0;
        // Memory the outcome holds stays reserved until it is recorded.
        let mut reserved = None;
        // Time spent waiting for a slot or memory is not charged.
        let mut waited = Duration::ZERO;
        // Followers read the attempt's lines from here until its outcome
        // is recorded (with them).
        let keep = record.log_keep_bytes.unwrap_or(shared.config.log_keep_bytes);
        let transcript = (keep > 0).then(|| Transcript::new(keep));
        let run = record.runs();
        if let Some(t) = &transcript {
            lock(&shared.transcripts).insert(record.id, (run, t.clone()));
        }
        let ran = match self.skipped(&record).await {
            Ok(None) => {
                let with = RunWith {
                    cancel: token,
                    ticket,
                    services: &services,
                    transcript: transcript.clone(),
                    trace: trace.clone(),
                };
                self.gated_run(&record, input, with, &mut waited).await
            }
            Ok(Some(reason)) => Err(NotRun::Skipped(reason)),
            Err(not_run) => Err(not_run),
        };
        let mut change = match ran {
            Ok(ran) => {
                run_secs = ran.secs;
                reserved = Some(ran.reserved);
                let (run_started, input_len) = (ran.started_ms, ran.input_len);
                decide(&record, ran.report, &shared.retry_policy()).edit(move |r| {
                    r.started_at_ms = Some(run_started);
                    if r.input_from == InputFrom::Url {
                        r.input_len = input_len;
                    }
                })
            }
            Err(NotRun::Failed(class, message)) => fail_before_run(&record, class, message),
            Err(NotRun::Retried(failure)) => decide(&record, unrun(failure), &shared.retry_policy()),
            // As a step skipped before it was claimed: no attempt counted.
            Err(NotRun::Skipped(reason)) => {
                Change::new(record.id, TaskState::Cancelled, reason).edit(|r| r.attempts = r.attempts.saturating_sub(1))
            }
            Err(NotRun::Stopping) => {
                // Claimed but never run: to run after the restart.
                not_started(&record)
            }
        };
        // The queue's slot is free before the outcome's commit.
        lock(&shared.sched).ran(&record.queue, run_secs);
        shared.wake.notify_one();
        let held = services.take();
        let mut completing = change.to == TaskState::Completed;
        let context_writes = !held.effects.context.is_empty();
        let has_effects = context_writes || held.effects.stop_repeating || !held.effects.children.is_empty();
        if completing {
            change = change.effects(held.effects);
        }
        let log = transcript.as_ref().map(Transcript::finish);
        if let Some(log) = &log {
            change = change.log(run, log);
        }
        let log_bytes = change.log.as_ref().map_or(0, |(_, bytes)| bytes.len() as u64);
        let mut commit_span = trace.child("commit");
        let (store, held_lease, version) = (&shared.store, &lease, record.version);
        let commit = move |change: Change| async move {
            let change = change.expect_version(version);
            let reason = change.reason.clone();
            let finished = match held_lease {
                Some(lease) => store.finish(lease.clone(), change).await,
                None => store.apply(change).await,
            };
            (finished, reason)
        };
        let (mut finished, mut reason) = commit(change).await;
        // Other hosts' attempts of the flow committed first and left no
        // room for this one's effects: it runs again, not counted, and
        // reserves against what they committed.
        let again = matches!(&finished, Err(StoreError::OverFlowLimit { .. }));
        if let Err(error @ StoreError::OverFlowLimit { .. }) = &finished {
            tracing::warn!(id = %record.id, %error, "the attempt's effects were refused; it runs again");
            // (Counted as a refusal once the plugin is told, by its next
            // attempt's reservation.)
            let mut rerun = over_flow_limit(&record, error, &shared.retry_policy());
            if let Some(log) = &log {
                rerun = rerun.log(run, log);
            }
            completing = false;
            (finished, reason) = commit(rerun).await;
        }
        // Held on while the outcome is unsettled (see `unsettled.rs`); one
        // refused keeps its row, which lapses.
        if let Some(lease) = &lease {
            match &finished {
                Ok(_) => lock(&shared.leases).release(lease),
                Err(error) if error.is_unsettled() => {}
                Err(_) => lock(&shared.leases).give_up(lease),
            }
        }
        match &finished {
            Ok(applied) => {
                let state = applied.record.state.as_str();
                commit_span.set("taskhost.task.state", state);
                attempt_span.set("taskhost.task.state", state);
                // A task put back to pending (the host stopped) keeps its
                // last attempt's error: only an attempt that failed says so.
                let failed =
                    matches!(applied.record.state, TaskState::Failed | TaskState::Retrying | TaskState::Cancelled);
                if let Some(error) = applied.record.error.as_ref().filter(|_| failed) {
                    attempt_span.fail_with(|| format!("{}: {}", error.class, error.message));
                    // A cancellation is counted as one, not as a failure.
                    if applied.record.state != TaskState::Cancelled {
                        shared.metrics.attempt_failed(&applied.record.queue, error.class);
                    }
                }
            }
            Err(error) => commit_span.fail_with(|| error.to_string()),
        }
        commit_span.end();
        if finished.is_ok() && log_bytes > 0 {
            shared.tenants.add_stored(crate::tenant::tenant_of(&record.plugin), log_bytes);
        }
        // A fetched input counts as its size once known and recorded (as
        // retention and the start-up scan count it).
        if let Ok(applied) = &finished
            && record.input_from == InputFrom::Url
            && applied.record.input_len != record.input_len
        {
            let tenant = crate::tenant::tenant_of(&record.plugin);
            match applied.record.input_len.checked_sub(record.input_len) {
                Some(more) => shared.tenants.add_stored(tenant, more),
                None => shared.tenants.sub_stored(tenant, record.input_len - applied.record.input_len),
            }
        }
        drop(reserved);
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
                match shared.store.context_sizes_of(record.flow_id).await {
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
                book.grew(record.flow_id, self.flows.limits());
            }
            book.unreserve_tasks(record.flow_id, held.tasks_reserved.saturating_sub(committed));
            book.settle_context(record.flow_id, held.context_reserved, size);
        }
        let finished = finished.map(|applied| applied.record);
        self.stop_running(record.id, run);
        let cost = claimed.elapsed().saturating_sub(waited);
        lock(&shared.sched).settled(&record.queue, charge, cost.as_secs_f64());
        shared.metrics.worker_seconds.get_or_create(&Metrics::label(&record.queue)).inc_by(cost.as_secs_f64());
        shared.metrics.run_time.observe(run_secs);
        shared.metrics.recent.ran(run_secs);
        match finished {
            Ok(done) => {
                if done.state == TaskState::Pending {
                    // Not started before the host stopped: it runs after
                    // the restart (the store has it pending); or to run
                    // again now.
                    shared.metrics.moved(&done.queue, Some(TaskState::Running), TaskState::Pending);
                    if again {
                        shared.enqueue(&done, None, now_ms());
                    }
                } else if done.state == TaskState::Retrying {
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
            // The lease was lost (the task was taken back, and is another
            // claim's now): nothing was written, and the reap booked it.
            Err(error) if error.is_fenced() => {
                tracing::warn!(id = %record.id, %error, "the attempt's outcome was refused: this host lost its lease");
            }
            Err(error) => {
                tracing::error!(id = %record.id, %error, "recording the outcome failed");
                if error.is_unsettled() {
                    let what = Unsettled::Outcome { at: record.version, reason, lease };
                    unsettled::settle(shared.clone(), self.endings.clone(), record.id, what, error.to_string());
                }
            }
        }
        shared.wake.notify_one();
    }

    /// Waits at the gate for a slot and room for the task's memory, reads
    /// its input (unless its claim did), then runs it. A task that can
    /// never fit, one cancelled while it waits, one whose input cannot be
    /// read, and one the host stops before it runs give why they did not
    /// run.
    async fn gated_run<'a>(
        &'a self,
        record: &TaskRecord,
        input: Option<Vec<u8>>,
        RunWith { cancel, ticket, services, transcript, trace }: RunWith<'_>,
        waited: &mut Duration,
    ) -> Result<Ran<'a>, NotRun> {
        let shared = &self.shared;
        let needs = record.limits.memory_bytes.saturating_add(record.limits.host_bytes);
        let needs = needs.saturating_add(transcript.as_ref().map_or(0, Transcript::most));
        let waiting = Instant::now();
        let entered = tokio::select! {
            entered = shared.gate.enter(needs, record.priority, ticket) => entered.ok_or_else(|| {
                let size = crate::units::format_size;
                NotRun::Failed(FailureClass::HostError, format!(
                    "the task reserves {} (its memory limit, its host budget and its transcript), more than this host's memory \
                     budget of {}",
                    size(needs),
                    size(shared.gate.budget())
                ))
            }),
            () = cancel.cancelled() => {
                Err(NotRun::Failed(FailureClass::Cancelled, "the task was cancelled before it ran".into()))
            }
            () = shared.halted() => Err(NotRun::Stopping),
        };
        *waited = waiting.elapsed();
        let (slot, mut reserved) = entered?;
        let input = self.input_of(record, input).await?;
        let input_len = input.len() as u64;
        // Ready since its last move before this start (submitted, retried,
        // retried by hand, put back at a restart), or its delay if later.
        let moved = record.history.iter().rev().nth(1).map_or(record.created_at_ms, |t| t.at_ms);
        let ready_since = record.next_run_at_ms.unwrap_or(0).max(moved);
        let started_ms = now_ms();
        let wait = started_ms.saturating_sub(ready_since) as f64 / 1000.0;
        shared.metrics.queue_wait.observe(wait);
        shared.metrics.recent.waited(wait);
        let at = crate::trace::at_ms;
        shared.config.traces.child_at("queue wait", record.trace, at(ready_since)).end_at(at(started_ms));
        let started = Instant::now();
        let attempt_transcript = transcript.clone();
        let attempt =
            Attempt { input, cancel, services: services.clone(), budget: services.budget(), transcript, trace };
        let report = shared.runner.run(record, attempt).await;
        drop(slot);
        let output_len = report.result.as_ref().map_or(0, |o| o.len() as u64);
        // Ended now, so its unfinished lines are counted as the lines the
        // commit holds (a second finish at the commit changes nothing).
        let transcript_held = attempt_transcript.as_ref().map_or(0, |t| {
            t.finish();
            t.held()
        });
        reserved.shrink_to(input_len + output_len + report.host_bytes_peak + transcript_held);
        let secs = started.elapsed().as_secs_f64();
        shared.history.record(&record.plugin, &record.plugin_version, secs, report.memory_peak, report.host_bytes_peak);
        Ok(Ran { report, secs, started_ms, input_len, reserved })
    }

    /// Why a task must not run: its flow was cancelled, or it is a
    /// declared step one of whose predecessors did not complete. A failed
    /// read of its flow is a failed attempt (retried by its policy); of a
    /// predecessor, it fails the task before it runs. On redb the flow
    /// book checked the predecessors before queueing it (see
    /// `admission.rs`); a shared store's claim takes it once its
    /// predecessors ended, however.
    async fn skipped(&self, record: &TaskRecord) -> Result<Option<String>, NotRun> {
        // A flow's cancel marks the flow, then cancels its tasks one by
        // one: a task of the flow that became startable in between (a
        // join its dependency's end released, a child claimed just before
        // its cancel) must not start. (Its first task, the root, is not
        // checked here: that would be a read for every task. A root
        // claimed in between runs, and is interrupted by its cancel.)
        let cancelled = self.shared.store.in_cancelled_flow(record).await.map_err(|e| {
            NotRun::Retried(TaskFailure {
                class: FailureClass::HostError,
                retryable: true,
                message: format!("reading the task's flow failed: {e}"),
                backtrace: None,
            })
        })?;
        if cancelled {
            return Ok(Some("cancelled with its flow before it ran".into()));
        }
        if !super::admission::is_declared_step(record) {
            return Ok(None);
        }
        for &dep in &record.after {
            let found = self.shared.store.get(dep).await.map_err(|e| {
                NotRun::Failed(FailureClass::HostError, format!("reading what this task waits for failed: {e}"))
            })?;
            if let Some(reason) = super::admission::skipped_by(dep, found.as_ref()) {
                return Ok(Some(reason));
            }
        }
        Ok(None)
    }

    /// A task's input: its own (`read` already, or read now), its
    /// predecessors' outputs (one as is, several gathered into a JSON
    /// array), or fetched from its URL.
    async fn input_of(&self, record: &TaskRecord, read: Option<Vec<u8>>) -> Result<Vec<u8>, NotRun> {
        let store = &self.shared.store;
        let host_error = |message: String| NotRun::Failed(FailureClass::HostError, message);
        if record.input_from == InputFrom::Own || record.input_from == InputFrom::Url || record.after.is_empty() {
            let own = match read {
                Some(own) => own,
                None => store
                    .input(record.id)
                    .await
                    .map_err(|e| host_error(format!("reading the input: {e}")))?
                    .ok_or_else(|| host_error("the task's input is missing from the store".into()))?,
            };
            if record.input_from != InputFrom::Url {
                return Ok(own);
            }
            let url = String::from_utf8(own).map_err(|_| host_error("the stored input_url is not UTF-8".into()))?;
            let cap = super::fetch::MAX_FETCHED_INPUT.min(record.limits.memory_bytes);
            return self.fetcher.fetch(&url, cap).await.map_err(|message| {
                NotRun::Retried(TaskFailure {
                    class: FailureClass::InputFetchFailed,
                    retryable: true,
                    message,
                    backtrace: None,
                })
            });
        }
        let mut outputs = Vec::with_capacity(record.after.len());
        for dep in &record.after {
            let output =
                store.output(*dep).await.map_err(|e| host_error(format!("reading the output of {dep}: {e}")))?;
            outputs.push(output.ok_or_else(|| host_error(format!("task {dep} has no output to pass on")))?);
        }
        Ok(if outputs.len() == 1 { outputs.remove(0) } else { gather(&outputs) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskFailure;
    use crate::engine::EngineConfig;
    use crate::engine::NewTask;
    use crate::engine::testing::{Harness, Script, input, on_both, report};
    use crate::store::QueueConfig;

    /// A commit refused for its flow's bounds runs the task again, not
    /// counted, three times in a row; the fourth counts as a failed
    /// attempt, for the retry policy.
    #[test]
    fn a_refused_commit_runs_again_uncounted_at_most_three_times_in_a_row() {
        let mut record = crate::store::tests::record(1, None);
        (record.state, record.attempts) = (TaskState::Running, 1);
        let flow = record.flow_id;
        let error = StoreError::OverFlowLimit { flow, limit: crate::store::FlowLimit::Tasks, total: 6, bound: 5 };
        for _ in 0..MAX_RUNS_AGAIN {
            let mut change = over_flow_limit(&record, &error, &RetryPolicy::default());
            assert_eq!(change.to, TaskState::Pending);
            assert!(change.reason.contains("to 6 tasks, over its limit of 5"), "{}", change.reason);
            let edit = change.edit.take().unwrap();
            let mut edited = record.clone();
            edit(&mut edited);
            assert_eq!(edited.attempts, 0, "not counted");
            let at = crate::store::Transition {
                at_ms: 0,
                from: Some(TaskState::Running),
                to: TaskState::Pending,
                attempt: 1,
                reason: change.reason.clone(),
            };
            record.history.push(at.clone());
            // Started again between them.
            record.history.push(crate::store::Transition {
                from: Some(TaskState::Pending),
                to: TaskState::Running,
                ..at
            });
        }
        let change = over_flow_limit(&record, &error, &RetryPolicy::default());
        assert_eq!(change.to, TaskState::Retrying, "counted, and retried by the policy");
        assert!(change.reason.contains("not committed 4 times in a row"), "{}", change.reason);
        // Any other move ends the row.
        let last = record.history.last().unwrap().clone();
        record.history.push(crate::store::Transition { to: TaskState::Retrying, reason: "failed".into(), ..last });
        assert_eq!(over_flow_limit(&record, &error, &RetryPolicy::default()).to, TaskState::Pending);
    }

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
        assert_eq!(h.engine.get(id).await.unwrap().state, TaskState::Running, "reads go on; nothing recorded yet");
        let task = NewTask { plugin: "echo".into(), ..NewTask::default() };
        let refused = h.engine.submit(task).await.unwrap_err();
        assert!(matches!(refused, EngineError::Store(StoreError::Unwritable { .. })), "{refused}");

        full.store(false, Ordering::SeqCst);
        let done = h.wait(id).await;
        assert_eq!((done.state, done.attempts), (TaskState::Completed, 1));
        assert_eq!(h.output(id).await.as_deref(), Some(&b"late"[..]));
        assert!(h.engine.store_fault().is_none());
        let next = h.submit("echo", Script::Complete(b"next".to_vec())).await;
        assert_eq!(h.wait(next).await.state, TaskState::Completed);
        assert_eq!(h.held("echo"), 0);
    }

    /// Waits until exactly one of `a` and `b` has entered its run, and
    /// checks the other does not follow while the first holds the slot.
    async fn one_runs(h: &Harness, a: uuid::Uuid, b: uuid::Uuid) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.runner.calls(a) + h.runner.calls(b) == 0 {
            assert!(Instant::now() < deadline, "neither task ran");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(h.runner.calls(a) + h.runner.calls(b), 1, "one slot, one run");
    }

    /// With one execution slot, a task whose outcome cannot be committed
    /// (the disk is full) holds no slot: the next task, claimed ahead,
    /// runs meanwhile. Before, the slot was held across both commits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slot_is_not_held_while_an_outcome_waits_for_its_commit() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let full = Arc::new(AtomicBool::new(false));
        let h = Harness::on_disk_with(full.clone(), |c| c.concurrency = 1).await;
        let a = h.submit("echo", Script::AwaitGate(b"a".to_vec())).await;
        let b = h.submit("echo", Script::AwaitGate(b"b".to_vec())).await;
        // Both are claimed (durably started); only one runs.
        h.wait_state(a, TaskState::Running).await;
        h.wait_state(b, TaskState::Running).await;
        one_runs(&h, a, b).await;
        let first = if h.runner.calls(a) == 1 { a } else { b };
        let second = if first == a { b } else { a };
        full.store(true, Ordering::SeqCst);
        h.runner.gate.add_permits(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.runner.calls(second) == 0 || h.engine.store_fault().is_none() {
            assert!(Instant::now() < deadline, "the second task never ran while the first's outcome waited");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(h.engine.get(first).await.unwrap().state, TaskState::Running, "its outcome is not recorded yet");
        full.store(false, Ordering::SeqCst);
        assert_eq!(h.wait(first).await.state, TaskState::Completed);
        assert_eq!(h.wait(second).await.state, TaskState::Completed);
        assert_eq!(h.runner.most_active.load(Ordering::SeqCst), 1, "one slot: never two runs at once");
    }

    /// A task submitted while nothing waits is committed already claimed:
    /// one commit before it starts, its two moves in its history and on
    /// the event feed. One that would wait (its queue at its cap) is not,
    /// but a task waiting only for its queue's cap does not hold back
    /// another queue's; a submission that creates nothing gives its claim
    /// back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_host_claims_a_task_in_its_submissions_commit() {
        use crate::store::StoreError;
        let h = Harness::new().await;
        lock(&h.shared.sched).configure("held", QueueConfig { concurrency: Some(1), ..QueueConfig::default() });
        let mut events = h.store().subscribe(None);
        let task = |queue: &str, s: Script| NewTask {
            plugin: "echo".into(),
            input: input(&s),
            queue: Some(queue.into()),
            ..NewTask::default()
        };
        let first = h.engine.submit(task("held", Script::AwaitGate(b"a".to_vec()))).await.unwrap().record;
        assert_eq!((first.state, first.attempts, first.version), (TaskState::Running, 1, 2));
        let moves: Vec<_> = first.history.iter().map(|t| (t.from, t.to, t.attempt)).collect();
        assert_eq!(moves, [(None, TaskState::Pending, 0), (Some(TaskState::Pending), TaskState::Running, 1)]);
        for (from, to, attempt) in moves {
            let event = events.live.recv().await.unwrap();
            assert_eq!((event.id, event.from, event.to, event.attempt), (first.id, from, to, attempt));
        }
        let second = h.engine.submit(task("held", Script::Complete(b"b".to_vec()))).await.unwrap().record;
        assert_eq!(second.state, TaskState::Pending, "its queue is at its cap");
        // The second, held by its queue's cap, would not be claimed next:
        // a task of another queue is claimed with its commit beside it.
        let third = h.engine.submit(task("default", Script::Complete(b"c".to_vec()))).await.unwrap().record;
        assert_eq!(third.state, TaskState::Running, "the task waiting before it is held by its queue's cap");
        assert_eq!(h.wait(third.id).await.state, TaskState::Completed);
        h.runner.gate.add_permits(1);
        for id in [first.id, second.id] {
            assert_eq!(h.wait(id).await.state, TaskState::Completed);
            assert_eq!(h.runner.calls(id), 1);
        }

        // A submission refused by the store keeps no claim and writes
        // nothing, not even its idempotency key.
        let keyed = |s: Script| NewTask { idempotency_key: Some("k".into()), ..task("held", s) };
        let record = h.engine.inner.submission.prepare(keyed(Script::Complete(Vec::new()))).unwrap().0;
        let claim = h.engine.inner.dispatch.claim_at_submit(&record).expect("idle: claimed");
        let wrong = start(record.id, record.version + 1);
        let refused = h.store().submit_then(record.clone(), Vec::new(), wrong).await.unwrap_err();
        assert!(matches!(refused, StoreError::VersionMismatch { .. }), "{refused}");
        assert!(h.store().get(record.id).unwrap().is_none(), "a refused submission writes nothing");
        assert_eq!(h.store().task_by_key("k").unwrap(), None, "nor its key");
        h.engine.inner.dispatch.unclaim(claim, record.id);
        assert!(lock(&h.shared.running).is_empty());
        // Two submissions of one key at once (in a queue without a cap,
        // so both are claimed): one task, run once; the other submission
        // gives its claim back.
        let both = || NewTask { queue: Some("default".into()), ..keyed(Script::Complete(b"k".to_vec())) };
        let (a, b) = tokio::join!(h.engine.submit(both()), h.engine.submit(both()));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.record.id, b.record.id);
        assert!(a.created != b.created, "one created it");
        assert_eq!(h.wait(a.record.id).await.state, TaskState::Completed);
        assert_eq!(h.runner.calls(a.record.id), 1);
        // The queue's one slot is free again: the next task is claimed.
        let next = h.engine.submit(task("held", Script::Complete(b"d".to_vec()))).await.unwrap().record;
        assert_eq!(next.state, TaskState::Running);
        assert_eq!(h.wait(next.id).await.state, TaskState::Completed);
        assert_eq!(lock(&h.shared.sched).in_flight(), 0, "every claim settled");
    }

    on_both! {
        tweak = |c: &mut EngineConfig| c.concurrency = 1;

        /// A task cancelled while it waits for a slot ends `cancelled`
        /// without running.
        async fn a_task_cancelled_while_it_waits_for_a_slot_never_runs(h) {
            let a = h.submit("echo", Script::AwaitGate(b"a".to_vec())).await;
            let b = h.submit("echo", Script::AwaitGate(b"b".to_vec())).await;
            h.wait_state(b, TaskState::Running).await;
            h.wait_state(a, TaskState::Running).await;
            one_runs(&h, a, b).await;
            let waiting = if h.runner.calls(a) == 1 { b } else { a };
            h.engine.cancel(waiting).await.unwrap();
            let done = h.wait(waiting).await;
            assert_eq!(done.state, TaskState::Cancelled);
            assert_eq!(h.runner.calls(waiting), 0);
            h.runner.gate.add_permits(1);
            let other = if waiting == a { b } else { a };
            assert_eq!(h.wait(other).await.state, TaskState::Completed);
        }
    }

    // On both stores: what dispatch does whatever the store.
    on_both! {
        async fn a_task_is_retried_until_it_completes(h) {
            let id = h.submit("echo", Script::FailTimes(2, b"done".to_vec())).await;
            let done = h.wait(id).await;
            assert_eq!((done.state, done.attempts), (TaskState::Completed, 3));
            assert_eq!(h.output(id).await.as_deref(), Some(&b"done"[..]));
            let states: Vec<TaskState> = done.history.iter().map(|t| t.to).collect();
            use TaskState::*;
            assert_eq!(states, [Pending, Running, Retrying, Running, Retrying, Running, Completed]);
            assert_eq!(h.held("echo"), 0, "an ended task releases its version");
        }

        async fn a_task_out_of_attempts_fails_with_its_last_error(h) {
            let id = h.submit("echo", Script::FailTimes(10, Vec::new())).await;
            let done = h.wait(id).await;
            assert_eq!((done.state, done.attempts), (TaskState::Failed, 3));
            assert_eq!(done.error.unwrap().class, "trap");
        }
    }

    on_both! {
        tweak = |c: &mut EngineConfig| c.concurrency = 3;

        async fn runs_never_exceed_the_slots_however_many_are_claimed(h) {
            let mut ids = Vec::new();
            for _ in 0..40 {
                ids.push(h.submit("echo", Script::Sleep(2, b"ok".to_vec())).await);
            }
            for id in ids {
                assert_eq!(h.wait(id).await.state, TaskState::Completed);
            }
            let most = h.runner.most_active.load(std::sync::atomic::Ordering::SeqCst);
            assert!((1..=3).contains(&most), "{most} ran at once");
        }
    }

    on_both! {
        tweak = |c: &mut EngineConfig| {
            c.concurrency = 8;
            c.memory_budget = 400 << 20;
        };

        /// Each task reserves its memory limit plus its host budget (192 MiB
        /// by default); a budget of 400 MiB lets two run at once whatever
        /// the slots, the rest wait and all complete, and the metrics show
        /// it.
        async fn tasks_whose_memory_does_not_fit_wait_and_then_all_complete(h) {
            // Submitted at once, so that more are claimed than fit (one at
            // a time, on PostgreSQL each could end before the next came).
            let submits = (0..12).map(|_| h.submit("echo", Script::Sleep(20, b"ok".to_vec())));
            let ids = futures::future::join_all(submits).await;
            for id in ids {
                assert_eq!(h.wait(id).await.state, TaskState::Completed);
            }
            assert_eq!(h.runner.most_active.load(std::sync::atomic::Ordering::SeqCst), 2);
            let gate = &h.shared.metrics.gate;
            assert!(gate.waits.get() > 0, "some waited for room");
            // An outcome's memory is given back just after its commit.
            let deadline = Instant::now() + Duration::from_secs(5);
            while gate.reserved.get() != 0 {
                assert!(Instant::now() < deadline, "{} bytes still reserved", gate.reserved.get());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            assert_eq!(gate.waiting.get(), 0);
            assert_eq!(gate.budget.get(), 400 << 20);
        }
    }

    on_both! {
        tweak = |c: &mut EngineConfig| c.memory_budget = 100 << 20;

        async fn a_task_that_could_never_fit_the_memory_budget_is_refused(h) {
            let task = crate::engine::NewTask { plugin: "echo".into(), ..crate::engine::NewTask::default() };
            let refused = h.engine.submit(task).await.unwrap_err().to_string();
            assert!(refused.contains("more than this host's whole memory budget of 100 MiB"), "{refused}");
            let small = crate::engine::NewTask {
                plugin: "echo".into(),
                memory_bytes: Some(16 << 20),
                ..crate::engine::NewTask::default()
            };
            // 16 MiB + the 64 MiB host budget fit.
            let id = h.engine.submit(small).await.unwrap().record.id;
            assert_eq!(h.wait(id).await.state, TaskState::Completed);
        }
    }
}
