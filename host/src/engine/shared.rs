//! The state every engine component shares: settings, the store, the
//! runner, the scheduler with its wake-up, the execution gate, the
//! metrics, the plugins' run history, the running attempts' cancel
//! tokens, the queue names the host knows, and the tenants. Components hold an
//! `Arc<Shared>`; none holds another component's private state.

use super::gate::Gate;
use super::metrics::Metrics;
use super::runner::Runner;
use super::scheduler::{Entry, Scheduler};
use super::{EngineConfig, EngineError};
use crate::CancelToken;
use crate::store::{Db, TaskRecord};
use crate::sync::lock;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

pub(crate) struct Shared {
    pub(crate) config: EngineConfig,
    pub(crate) store: Db,
    pub(crate) runner: Arc<dyn Runner>,
    pub(crate) sched: Mutex<Scheduler>,
    /// Execution slots and the memory budget, held only while a sandbox
    /// runs.
    pub(crate) gate: Gate,
    /// Wakes the dispatcher: a task became ready or a slot freed.
    pub(crate) wake: Notify,
    /// Signalled whenever a task or a flow ends.
    pub(crate) ended: Notify,
    pub(crate) metrics: Arc<Metrics>,
    /// Run time and memory of each plugin version's recent attempts.
    pub(crate) history: super::history::History,
    /// Cancel tokens of the attempts running now.
    pub(crate) running: Mutex<HashMap<Uuid, CancelToken>>,
    /// The transcripts of the attempts running now (their attempt
    /// numbers with them), until their outcome is recorded.
    pub(crate) transcripts: Mutex<HashMap<Uuid, (u32, crate::sandbox::Transcript)>>,
    /// Signalled when the last running attempt ends, and when a claim
    /// that waited to start did.
    pub(crate) idle: Notify,
    /// Claims waiting to start (an earlier attempt of their task still
    /// stopping here): the engine's close waits for them as for `running`.
    pub(crate) starting: std::sync::atomic::AtomicUsize,
    pub(crate) stopping: AtomicBool,
    /// Signalled when `stopping` is set.
    halting: Notify,
    /// Every queue a stored task or setting names.
    pub(crate) queues: QueueNames,
    /// The tenants, their quotas and what they keep.
    pub(crate) tenants: Arc<super::tenants::Tenants>,
    /// The submission rates a PostgreSQL store keeps: flows' on any,
    /// tenants' while hosts serve it together (see `engine/rates.rs`).
    pub(crate) rates: Option<Arc<super::rates::SharedRates>>,
    /// The retry backoff in force: the configuration file's `[retry]`,
    /// else `config.retry`.
    pub(crate) retry: std::sync::RwLock<super::RetryPolicy>,
    /// This host's id (its `host-id`): its name in a shared store.
    pub(crate) host: String,
    /// When the engine started, ms since the Unix epoch.
    pub(crate) started_ms: u64,
    /// On a shared store: the leases of the tasks this host claimed, until
    /// their outcomes commit (at most the scheduler's window).
    pub(crate) leases: Mutex<super::claims::Leases>,
    /// On a shared store: when tasks this host queued become due, so its
    /// claims look for them on time.
    pub(crate) due: Mutex<super::claims::DueTimes>,
    /// On a shared store: this host's last claim found tasks waiting, so a
    /// submission is not started with its commit (others come first; see
    /// `Dispatch::claim_at_submit`).
    pub(crate) backlogged: AtomicBool,
}

impl Shared {
    /// The retry backoff in force now.
    pub(crate) fn retry_policy(&self) -> super::RetryPolicy {
        *crate::sync::read(&self.retry)
    }

    pub(crate) fn new(
        config: EngineConfig,
        store: Db,
        runner: Arc<dyn Runner>,
        metrics: Arc<Metrics>,
        tenants: Arc<super::tenants::Tenants>,
        rates: Option<Arc<super::rates::SharedRates>>,
        host: String,
    ) -> Self {
        Self {
            host,
            started_ms: crate::store::now_ms(),
            sched: Mutex::new(Scheduler::new(config.concurrency).with_ahead(config.claim_ahead)),
            retry: std::sync::RwLock::new(config.retry),
            gate: Gate::new(config.concurrency, config.memory_budget, metrics.gate.clone()),
            config,
            store,
            runner,
            wake: Notify::new(),
            ended: Notify::new(),
            metrics,
            history: super::history::History::default(),
            running: Mutex::default(),
            transcripts: Mutex::default(),
            idle: Notify::new(),
            starting: std::sync::atomic::AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            halting: Notify::new(),
            queues: QueueNames::default(),
            tenants,
            rates,
            leases: Mutex::default(),
            due: Mutex::default(),
            backlogged: AtomicBool::new(false),
        }
    }

    /// Queues a task to run once `due_ms` (if any) has passed. On a
    /// shared store the database is the queue (claims take what is
    /// startable): only its due time is kept, to claim on time.
    pub(crate) fn enqueue(&self, record: &TaskRecord, due_ms: Option<u64>, now_ms: u64) {
        if self.store.queues_tasks() {
            if let Some(due) = due_ms.filter(|due| *due > now_ms) {
                lock(&self.due).add(due);
            }
        } else {
            lock(&self.sched).enqueue(entry(record), due_ms, now_ms);
        }
        self.wake.notify_one();
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Stops the engine: nothing new starts.
    pub(crate) fn halt(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.halting.notify_waiters();
        self.wake.notify_one();
    }

    /// Resolves once the engine is stopping.
    pub(crate) async fn halted(&self) {
        loop {
            let notified = self.halting.notified();
            if self.stopping() {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once no attempt runs nor waits to start.
    pub(crate) async fn at_rest(&self) {
        loop {
            let idle = self.idle.notified();
            if lock(&self.running).is_empty() && self.starting.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Reads a task that must exist.
    pub(crate) async fn task(&self, id: Uuid) -> Result<TaskRecord, EngineError> {
        self.store.get(id).await?.ok_or(EngineError::NotFound(id))
    }

    /// Re-checks `check` after each end (or every 100 ms) until it gives a
    /// value, or `None` once `timeout` passed. One loop for
    /// waiting on a task and on a flow.
    pub(crate) async fn wait_until<T, F>(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> F,
    ) -> Result<Option<T>, EngineError>
    where
        F: std::future::Future<Output = Result<Option<T>, EngineError>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ended = self.ended.notified();
            if let Some(value) = check().await? {
                return Ok(Some(value));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let _ = tokio::time::timeout_at(deadline.min(now + Duration::from_millis(100)), ended).await;
        }
    }
}

/// The queue names the host knows, bounded by
/// [`EngineConfig::max_queues`]: each one is a label value of the queue
/// metrics and an entry in the scheduler, so a client (or a plugin's
/// children) naming ever new queues must meet a limit. Queues are never
/// forgotten while the host runs.
#[derive(Debug, Default)]
pub(crate) struct QueueNames(Mutex<HashSet<String>>);

impl QueueNames {
    /// A queue that exists already (stored tasks and settings, at start):
    /// never refused, even past the limit.
    pub(crate) fn known(&self, name: &str) {
        let mut names = lock(&self.0);
        if !names.contains(name) {
            names.insert(name.to_owned());
        }
    }

    /// Admits `name`: a known queue, or a new one while fewer than `max`
    /// are known and its tenant has fewer than `tenant_max`. A tenant's
    /// `default` queue is never refused (one per tenant, and tenants are
    /// bounded), so one tenant's queues cannot keep another from its own.
    /// A refusal names the limit.
    pub(crate) fn admit(&self, name: &str, max: usize, tenant_max: Option<u32>) -> Result<(), EngineError> {
        let mut names = lock(&self.0);
        if names.contains(name) {
            return Ok(());
        }
        let (tenant, local) = crate::tenant::split(name);
        if local != "default"
            && let Some(tenant_max) = tenant_max
        {
            let count = names.iter().filter(|n| crate::tenant::tenant_of(n) == tenant).count();
            // Its `default` queue counts whether it exists yet or not.
            let default_known = names.contains(&crate::tenant::qualify(tenant, "default"));
            let count = count + usize::from(!default_known);
            if count >= tenant_max as usize {
                return Err(super::tenants::exceeded(
                    tenant,
                    "max_queues",
                    format!("queue `{local}` would be a new queue, and the tenant has {count} (counting `default`)"),
                ));
            }
        }
        if local != "default" && names.len() >= max {
            return Err(EngineError::LimitReached(format!(
                "queue `{name}` would be a new queue, and this host already has {} queues, the most it keeps \
                 (max_queues = {max}); use an existing queue",
                names.len()
            )));
        }
        names.insert(name.to_owned());
        Ok(())
    }

    /// How many queues are known.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

/// A task's place in the scheduler.
pub(crate) fn entry(record: &TaskRecord) -> Entry {
    Entry { id: record.id, version: record.version, priority: record.priority, queue: record.queue.clone() }
}

#[cfg(test)]
mod tests {
    use super::QueueNames;

    #[test]
    fn queue_names_past_the_limit_are_refused_naming_it_and_known_ones_always_pass() {
        let queues = QueueNames::default();
        queues.admit("a", 2, None).unwrap();
        queues.admit("b", 2, None).unwrap();
        queues.admit("a", 2, None).unwrap();
        let refused = queues.admit("c", 2, None).unwrap_err().to_string();
        assert!(refused.contains("queue `c` would be a new queue") && refused.contains("max_queues = 2"), "{refused}");
        assert_eq!(queues.len(), 2, "a refusal adds nothing");
        // Queues stored before the limit was lowered still work.
        queues.known("old");
        queues.admit("old", 2, None).unwrap();
        assert!(queues.admit("d", 2, None).is_err());
        // A tenant's `default` queue is never refused; its other queues
        // meet its own quota (counting `default`) and the host's limit.
        queues.admit("t/default", 2, None).unwrap();
        assert!(queues.admit("t/x", 2, None).is_err(), "the host's limit");
        let queues = QueueNames::default();
        queues.admit("t/x", 100, Some(2)).unwrap();
        let refused = queues.admit("t/y", 100, Some(2)).unwrap_err().to_string();
        assert!(refused.contains("quota `max_queues`"), "{refused}");
        queues.admit("t/default", 100, Some(2)).unwrap();
        queues.admit("u/y", 100, Some(2)).unwrap();
    }
}
