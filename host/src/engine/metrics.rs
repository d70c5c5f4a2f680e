//! Prometheus metrics of one engine (its own registry, so several engines
//! in one process do not mix). Every label value is bounded: queues by
//! `max_queues`, plugin versions by [`PLUGIN_LABELS`], the rest are fixed
//! sets.

use crate::labels::{LabelBudget, OTHER};
use crate::store::TaskState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// A queue's labels: its tenant and its name in the tenant.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueLabel {
    pub(crate) tenant: String,
    pub(crate) queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PluginLabel {
    pub(crate) tenant: String,
    pub(crate) plugin: String,
    pub(crate) version: String,
    pub(crate) outcome: String,
}

/// A queue's labels and a failure class (`fuel exhausted`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FailureLabel {
    pub(crate) tenant: String,
    pub(crate) queue: String,
    pub(crate) class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FlowLabel {
    pub(crate) state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LimitLabel {
    pub(crate) limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub(crate) tenant: String,
    pub(crate) queue: String,
    pub(crate) state: String,
}

/// Plugin versions with their own `plugin_tasks` series; tasks of later
/// ones are counted under `plugin="_other", version="_other"`.
pub(crate) const PLUGIN_LABELS: usize = 1_000;

pub(crate) struct Metrics {
    registry: Registry,
    /// `name@version`s with their own `plugin_tasks` series.
    plugin_versions: LabelBudget,
    tasks: Family<StateLabel, Gauge>,
    pub(crate) submitted: Family<QueueLabel, Counter>,
    pub(crate) completed: Family<QueueLabel, Counter>,
    pub(crate) failed: Family<QueueLabel, Counter>,
    pub(crate) retried: Family<QueueLabel, Counter>,
    /// Attempts that ended in a failure, by queue and class.
    attempt_failures: Family<FailureLabel, Counter>,
    pub(crate) cancelled: Family<QueueLabel, Counter>,
    queue_depth: Family<QueueLabel, Gauge>,
    running: Family<QueueLabel, Gauge>,
    pub(crate) queue_wait: Histogram,
    pub(crate) run_time: Histogram,
    /// Worker time charged to each queue (what fair queuing shares out).
    pub(crate) worker_seconds: Family<QueueLabel, Counter<f64, AtomicU64>>,
    pub(crate) fuel_used: Histogram,
    pub(crate) registry_metrics: crate::registry::RegistryMetrics,
    pub(crate) plugin_tasks: Family<PluginLabel, Counter>,
    pub(crate) flows_ended: Family<FlowLabel, Counter>,
    pub(crate) flow_refusals: Family<LimitLabel, Counter>,
    pub(crate) callbacks_dropped: Counter,
    /// Ended tasks deleted past their retention, by queue.
    pub(crate) expired: Family<QueueLabel, Counter>,
    /// Ended flows deleted past their retention.
    pub(crate) flows_expired: Counter,
    /// Callbacks not delivered: refused by the egress policy, or given up
    /// after every attempt failed.
    pub(crate) callbacks_undelivered: super::callbacks::Undelivered,
    /// The execution gate's memory budget.
    pub(crate) gate: super::gate::GateMetrics,
    /// Tasks by (queue, state), kept in step with committed transitions.
    counts: Mutex<HashMap<(String, TaskState), i64>>,
    /// Running totals sampled for the recent charts.
    pub(crate) recent: super::recent::Recent,
}

impl Metrics {
    /// The engine's metrics, with the model registry's beside them.
    pub(crate) fn new(inference: Option<&crate::inference::InferenceMetrics>) -> Self {
        let mut registry = Registry::with_prefix("taskhost");
        if let Some(inference) = inference {
            inference.register(&mut registry);
        }
        let tasks = Family::<StateLabel, Gauge>::default();
        let submitted = Family::<QueueLabel, Counter>::default();
        let completed = Family::<QueueLabel, Counter>::default();
        let failed = Family::<QueueLabel, Counter>::default();
        let retried = Family::<QueueLabel, Counter>::default();
        let cancelled = Family::<QueueLabel, Counter>::default();
        let attempt_failures = Family::<FailureLabel, Counter>::default();
        let queue_depth = Family::<QueueLabel, Gauge>::default();
        let running = Family::<QueueLabel, Gauge>::default();
        let queue_wait = Histogram::new(exponential_buckets(0.0001, 4.0, 12));
        let run_time = Histogram::new(exponential_buckets(0.00001, 4.0, 14));
        let worker_seconds = Family::<QueueLabel, Counter<f64, AtomicU64>>::default();
        let fuel_used = Histogram::new(exponential_buckets(1000.0, 10.0, 9));
        let plugin_tasks = Family::<PluginLabel, Counter>::default();
        let flows_ended = Family::<FlowLabel, Counter>::default();
        let flow_refusals = Family::<LimitLabel, Counter>::default();
        let callbacks_dropped = Counter::default();
        let expired = Family::<QueueLabel, Counter>::default();
        let flows_expired = Counter::default();
        registry.register("tasks", "Tasks in the store by queue and state", tasks.clone());
        registry.register("tasks_submitted", "Tasks accepted", submitted.clone());
        registry.register("tasks_completed", "Tasks that completed", completed.clone());
        registry.register("tasks_failed", "Tasks that failed terminally", failed.clone());
        registry.register("tasks_retried", "Attempts that failed and were scheduled again", retried.clone());
        registry.register("tasks_cancelled", "Tasks cancelled", cancelled.clone());
        registry.register(
            "attempt_failures",
            "Attempts that ended in a failure (retried or not), by queue and failure class",
            attempt_failures.clone(),
        );
        registry.register("queue_depth", "Tasks waiting (ready or delayed) per queue", queue_depth.clone());
        registry.register("running", "Tasks running per queue", running.clone());
        registry.register("queue_wait_seconds", "Time from ready to started", queue_wait.clone());
        registry.register("run_seconds", "Run time of one attempt", run_time.clone());
        registry.register(
            "worker_seconds",
            "Worker time charged to a queue by fair queuing: each attempt's run and commits, not its wait for memory",
            worker_seconds.clone(),
        );
        registry.register("fuel_used", "Fuel used by one attempt", fuel_used.clone());
        let registry_metrics = crate::registry::RegistryMetrics::register(&mut registry);
        registry.register("tasks_expired", "Ended tasks deleted past their retention", expired.clone());
        registry.register("flows_expired", "Ended flows deleted past their retention", flows_expired.clone());
        registry.register("plugin_tasks", "Tasks ended, by plugin version and outcome", plugin_tasks.clone());
        registry.register("flows_ended", "Flows that ended (grown past one task), by state", flows_ended.clone());
        registry.register(
            "flow_limit_refusals",
            "Submissions or context writes refused by a flow limit, by limit",
            flow_refusals.clone(),
        );
        registry.register(
            "callbacks_dropped",
            "Completion callbacks dropped because too many deliveries were pending",
            callbacks_dropped.clone(),
        );
        let callbacks_undelivered = super::callbacks::Undelivered::default();
        registry.register(
            "callbacks_undelivered",
            "Completion callbacks not delivered, by reason (egress_refused, gave_up)",
            callbacks_undelivered.0.clone(),
        );
        let gate = super::gate::GateMetrics::default();
        registry.register("memory_budget_bytes", "The host memory budget running attempts share", gate.budget.clone());
        registry.register(
            "memory_reserved_bytes",
            "Memory reserved by running attempts (memory limit, host budget and transcript each)",
            gate.reserved.clone(),
        );
        registry.register(
            "memory_waiting",
            "Claimed attempts waiting for room in the memory budget",
            gate.waiting.clone(),
        );
        registry.register("memory_waits", "Attempts that waited for room in the memory budget", gate.waits.clone());
        Self {
            registry,
            gate,
            plugin_versions: LabelBudget::new(PLUGIN_LABELS),
            tasks,
            submitted,
            completed,
            failed,
            retried,
            attempt_failures,
            cancelled,
            queue_depth,
            running,
            queue_wait,
            run_time,
            worker_seconds,
            fuel_used,
            registry_metrics,
            plugin_tasks,
            flows_ended,
            flow_refusals,
            callbacks_dropped,
            expired,
            flows_expired,
            callbacks_undelivered,
            counts: Mutex::default(),
            recent: super::recent::Recent::default(),
        }
    }

    /// Counts an attempt of a task in `queue` that failed with `class`.
    pub(crate) fn attempt_failed(&self, queue: &str, class: crate::sandbox::FailureClass) {
        let QueueLabel { tenant, queue } = Self::label(queue);
        self.attempt_failures.get_or_create(&FailureLabel { tenant, queue, class: class.as_str().to_owned() }).inc();
    }

    /// Counts a refusal by a flow limit.
    pub(crate) fn refused(&self, limit: &str) {
        self.flow_refusals.get_or_create(&LimitLabel { limit: limit.to_owned() }).inc();
    }

    /// The `plugin_tasks` label of a task of `plugin@version` that ended
    /// `outcome` (within [`PLUGIN_LABELS`]).
    pub(crate) fn plugin_label(&self, plugin: &str, version: &str, outcome: &str) -> PluginLabel {
        let outcome = outcome.to_owned();
        let (tenant, name) = crate::tenant::split(plugin);
        let tenant = tenant.to_owned();
        // Ad-hoc scripts are one series per tenant, not one per script.
        let version = if super::ad_hoc::is_reserved(plugin) { "scripts" } else { version };
        if self.plugin_versions.admits(&format!("{plugin}@{version}")) {
            PluginLabel { tenant, plugin: name.to_owned(), version: version.to_owned(), outcome }
        } else {
            PluginLabel { tenant: OTHER.to_owned(), plugin: OTHER.to_owned(), version: OTHER.to_owned(), outcome }
        }
    }

    /// The labels of the queue with key `queue`.
    pub(crate) fn label(queue: &str) -> QueueLabel {
        let (tenant, queue) = crate::tenant::split(queue);
        QueueLabel { tenant: tenant.to_owned(), queue: queue.to_owned() }
    }

    /// Records a committed move of one task between states.
    pub(crate) fn moved(&self, queue: &str, from: Option<TaskState>, to: TaskState) {
        let mut counts = crate::sync::lock(&self.counts);
        if let Some(from) = from {
            *counts.entry((queue.to_owned(), from)).or_default() -= 1;
        }
        *counts.entry((queue.to_owned(), to)).or_default() += 1;
    }

    /// Counts `n` tasks found in `state` in `queue` at start-up.
    pub(crate) fn found(&self, queue: &str, state: TaskState, n: i64) {
        *crate::sync::lock(&self.counts).entry((queue.to_owned(), state)).or_default() += n;
    }

    /// Records a task deleted from the store in `state`.
    pub(crate) fn deleted(&self, queue: &str, state: TaskState) {
        let mut counts = crate::sync::lock(&self.counts);
        *counts.entry((queue.to_owned(), state)).or_default() -= 1;
    }

    /// Sets the counts of tasks to `read` (queue, state, count; a queue
    /// and state left out has none), as the store counted them across
    /// every host sharing it.
    pub(crate) fn set_counts(&self, read: Vec<(String, TaskState, u64)>) {
        let mut counts = crate::sync::lock(&self.counts);
        for n in counts.values_mut() {
            *n = 0;
        }
        for (queue, state, n) in read {
            counts.insert((queue, state), i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Tasks of `tenant` stored and not yet finished.
    pub(crate) fn unfinished_of(&self, tenant: &str) -> u64 {
        let counts = crate::sync::lock(&self.counts);
        let unfinished = counts
            .iter()
            .filter(|((queue, state), _)| !state.is_terminal() && crate::tenant::tenant_of(queue) == tenant)
            .map(|(_, n)| *n)
            .sum::<i64>();
        unfinished.max(0) as u64
    }

    /// Tasks per state, summed over queues.
    pub(crate) fn state_totals(&self) -> HashMap<TaskState, i64> {
        let counts = crate::sync::lock(&self.counts);
        let mut totals = HashMap::new();
        for ((_, state), n) in counts.iter() {
            *totals.entry(*state).or_default() += n;
        }
        totals
    }

    /// Renders the Prometheus text format, refreshing the gauges first.
    pub(crate) fn render(&self, depths: &[(String, super::scheduler::QueueDepth)]) -> String {
        {
            let counts = crate::sync::lock(&self.counts);
            for ((queue, state), n) in counts.iter() {
                let QueueLabel { tenant, queue } = Self::label(queue);
                let label = StateLabel { tenant, queue, state: state.as_str().to_owned() };
                self.tasks.get_or_create(&label).set(*n);
            }
        }
        for (queue, depth) in depths {
            let label = Self::label(queue);
            self.queue_depth.get_or_create(&label).set((depth.ready + depth.delayed) as i64);
            self.running.get_or_create(&label).set(depth.running as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plugin versions named without end (a watched directory saved over
    /// and over) keep `/metrics` bounded.
    #[test]
    fn plugin_versions_past_the_budget_share_one_series() {
        let metrics = Metrics::new(None);
        for v in 0..PLUGIN_LABELS + 500 {
            metrics.plugin_tasks.get_or_create(&metrics.plugin_label("p", &v.to_string(), "completed")).inc();
        }
        let text = metrics.render(&[]);
        assert_eq!(text.lines().filter(|l| l.starts_with("taskhost_plugin_tasks_total{")).count(), PLUGIN_LABELS + 1);
        let other = metrics.plugin_label("q", "1", "completed");
        assert_eq!((other.plugin.as_str(), other.version.as_str()), (OTHER, OTHER));
        assert_eq!(metrics.plugin_tasks.get_or_create(&other).get(), 500);
        assert_eq!(metrics.plugin_label("p", "7", "failed").version, "7", "admitted versions keep their label");
    }
}
