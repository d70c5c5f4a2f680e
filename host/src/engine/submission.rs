//! Submission: checks a new task against the host's rules, resolves and
//! pins its plugin version, and builds the record to commit. Nothing here
//! writes; a refused task changes nothing.

use super::EngineError;
use super::runner::{Cap, CapSource};
use super::shared::Shared;
use crate::Limits;
use crate::names::NameKind;
use crate::registry::Pin;
use crate::store::{InputFrom, StoredLimits, TaskRecord, TaskState, Transition, now_ms};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A task to submit.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    /// `name` (latest version, pinned now) or `name@version`.
    pub plugin: String,
    /// Input bytes.
    pub input: Vec<u8>,
    /// Queue (default `default`); created on first use.
    pub queue: Option<String>,
    /// 0–9, higher runs first (default 0).
    pub priority: Option<u8>,
    /// A second submission with the same key returns the first task.
    pub idempotency_key: Option<String>,
    /// Most attempts (1–100).
    pub max_attempts: Option<u32>,
    /// Wall-clock budget per attempt, ms.
    pub timeout_ms: Option<u64>,
    /// Fuel per attempt.
    pub fuel: Option<u64>,
    /// Memory cap per attempt, bytes.
    pub memory_bytes: Option<u64>,
    /// Start no sooner than this many ms from now.
    pub delay_ms: Option<u64>,
    /// Start no sooner than this time (ms since the Unix epoch).
    pub run_at_ms: Option<u64>,
    /// POST the record here when the task ends (http or https, through
    /// the egress guard).
    pub callback_url: Option<String>,
    /// Where to fetch the input when the task starts, instead of `input`
    /// (which must then be empty).
    pub input_url: Option<String>,
    /// The submitting task, for flows.
    pub parent_id: Option<Uuid>,
    /// The bytes of each attempt's transcript to keep, within the host's
    /// ceiling (default: the host's default).
    pub log_keep_bytes: Option<u64>,
    /// Where the task's spans hang: its submission span (set by the
    /// engine when traces are on).
    pub trace: Option<crate::trace::TraceParent>,
    /// An ad-hoc script to run instead of a named plugin: it becomes a
    /// version of the tenant's reserved ad-hoc plugin, and `plugin` only
    /// names the tenant (any plugin key of it).
    pub script: Option<super::AdHocScript>,
}

/// Longest idempotency key, in bytes.
pub(crate) const MAX_KEY: usize = 256;

/// Longest `input_url`, in bytes.
pub(crate) const MAX_INPUT_URL: usize = 8 * 1024;

/// The longest delay, in ms: `delay_ms` (from the API or a plugin's
/// child), how far ahead `run_at` may be, and a repeating flow's
/// `every_ms`. 36,500 days (about 100 years): every cron schedule (whose
/// years end at 2100) fits, and every time the engine stores stays far
/// inside what RFC 3339 can write.
pub const MAX_DELAY_MS: u64 = 36_500 * 24 * 60 * 60 * 1000;

pub(crate) struct Submission {
    shared: Arc<Shared>,
}

impl Submission {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Validates `task`, pins its plugin version and builds its record (a
    /// flow root; flows adjust the flow fields). The [`Pin`] keeps the
    /// version from being deleted: keep it until the task is admitted
    /// (then the task holds the version) or known not to be created.
    pub(crate) fn prepare(&self, task: NewTask) -> Result<(TaskRecord, Vec<u8>, Pin), EngineError> {
        let invalid = |m: String| Err(EngineError::InvalidRequest(m));
        let queue = task.queue.unwrap_or_else(|| "default".into());
        crate::tenant::check_key(NameKind::Queue, &queue).map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        let priority = task.priority.unwrap_or(0);
        if priority > 9 {
            return invalid(format!("priority {priority} is out of range: expected 0-9 (higher runs first)"));
        }
        let max_attempts = task.max_attempts.unwrap_or(self.shared.config.default_max_attempts);
        if !(1..=100).contains(&max_attempts) {
            return invalid(format!("max_attempts {max_attempts} is out of range: expected 1-100"));
        }
        let resolved = self.shared.runner.resolve(&task.plugin)?;
        let defaults = &resolved.defaults;
        let mut limits = Limits {
            fuel: task.fuel.unwrap_or(defaults.fuel),
            memory_bytes: task.memory_bytes.unwrap_or(defaults.memory_bytes),
            timeout: task.timeout_ms.map_or(defaults.timeout, Duration::from_millis),
            max_output_bytes: defaults.max_output_bytes,
            max_log_bytes: defaults.max_log_bytes,
            host_bytes: defaults.host_bytes,
        };
        if limits.fuel == 0 {
            return invalid("fuel must be greater than zero".into());
        }
        let caps = &resolved.caps;
        let plugin = &resolved.name;
        over_cap("fuel", task.fuel, caps.fuel, plugin, |n| n.to_string())?;
        over_cap("memory_bytes", task.memory_bytes, caps.memory_bytes, plugin, crate::units::format_size)?;
        let timeout = task.timeout_ms.map(Duration::from_millis);
        over_cap("timeout_ms", timeout, caps.timeout, plugin, |d| format!("{} ms", d.as_millis()))?;
        let tenant = crate::tenant::tenant_of(plugin);
        if let Some(quotas) = self.shared.tenants.quotas(tenant) {
            let asked = [task.fuel.is_some(), task.memory_bytes.is_some(), task.timeout_ms.is_some()];
            ceiling(tenant, "fuel", &mut limits.fuel, asked[0], quotas.max_fuel, "max_fuel")?;
            ceiling(
                tenant,
                "memory_bytes",
                &mut limits.memory_bytes,
                asked[1],
                quotas.max_memory_bytes,
                "max_memory_bytes",
            )?;
            let mut timeout_ms = u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX);
            ceiling(tenant, "timeout_ms", &mut timeout_ms, asked[2], quotas.max_timeout_ms, "max_timeout_ms")?;
            limits.timeout = Duration::from_millis(timeout_ms);
        }
        self.shared.runner.check_limits(&limits).map_err(EngineError::InvalidRequest)?;
        let now = now_ms();
        let next_run_at_ms = match (task.delay_ms, task.run_at_ms) {
            (Some(_), Some(_)) => {
                return invalid("give either delay_ms or run_at, not both".into());
            }
            (Some(delay), None) if delay > MAX_DELAY_MS => {
                return invalid(format!(
                    "delay_ms {delay} is out of range: expected at most {MAX_DELAY_MS} (36,500 days)"
                ));
            }
            (Some(delay), None) => Some(now + delay),
            (None, Some(at)) if at > now.saturating_add(MAX_DELAY_MS) => {
                let (at, latest) = (crate::wire::time(at), crate::wire::time(now.saturating_add(MAX_DELAY_MS)));
                return invalid(format!(
                    "run_at {at} is more than 36,500 days ahead; the latest accepted now is {latest}"
                ));
            }
            (None, Some(at)) => Some(at),
            (None, None) => None,
        };
        if let Some(key) = &task.idempotency_key
            && let (_, key) = crate::tenant::split_idempotency(key)
            && (key.is_empty() || key.len() > MAX_KEY || key.contains('\0'))
        {
            return invalid(format!("idempotency_key must be 1-{MAX_KEY} bytes, without NUL"));
        }
        // One tenant's task lives in its own queues only.
        let tenant = crate::tenant::tenant_of(&task.plugin);
        if crate::tenant::tenant_of(&queue) != tenant {
            return invalid(format!("queue `{queue}` belongs to another tenant than plugin `{}`", task.plugin));
        }
        for (field, url) in [("callback_url", &task.callback_url), ("input_url", &task.input_url)] {
            let Some(url) = url else { continue };
            match self.shared.config.egress.check_url(url) {
                Ok(_) => {}
                Err(crate::egress::EgressError::NotAUrl(e)) => {
                    return invalid(format!("{field} `{url}` is not a URL: {e}"));
                }
                Err(e) => return invalid(format!("{field} `{url}` is refused: {e}")),
            }
        }
        if task.input_url.as_ref().is_some_and(|url| url.len() > MAX_INPUT_URL) {
            return invalid(format!("input_url is longer than {MAX_INPUT_URL} bytes"));
        }
        if task.input_url.is_some() && !task.input.is_empty() {
            return invalid("give either an input or an input_url, not both".into());
        }
        let ceiling = self.shared.config.log_keep_ceiling;
        if let Some(keep) = task.log_keep_bytes
            && keep > ceiling
        {
            let size = crate::units::format_size;
            return invalid(format!(
                "log_keep_bytes {} is over this host's ceiling of {} (--log-keep-max)",
                size(keep),
                size(ceiling)
            ));
        }
        let keep = task.log_keep_bytes.unwrap_or(self.shared.config.log_keep_bytes);
        let needs = limits.memory_bytes.saturating_add(limits.host_bytes);
        let needs = needs.saturating_add(crate::sandbox::Transcript::most_for(keep));
        if !self.shared.gate.fits(needs) {
            let size = crate::units::format_size;
            return invalid(format!(
                "a task of `{plugin}` would reserve {} (memory_bytes {}, its host budget {} and its transcript) while it runs, \
                 more than this host's whole memory budget of {} (--memory-budget); ask for less memory",
                size(needs),
                size(limits.memory_bytes),
                size(limits.host_bytes),
                size(self.shared.gate.budget())
            ));
        }
        // An ad-hoc script's plugin runs only where scripts may, however
        // the task names it.
        if super::ad_hoc::is_reserved(&resolved.name) {
            let quotas = self.shared.tenants.quotas(crate::tenant::tenant_of(&queue));
            super::ad_hoc::check_queue(quotas.as_ref(), &queue)?;
        }
        // Last: a refused task reserves no queue.
        let tenant_queues = self.shared.tenants.quotas(crate::tenant::tenant_of(&queue)).and_then(|q| q.max_queues);
        self.shared.queues.admit(&queue, self.shared.config.max_queues, tenant_queues)?;
        let id = Uuid::now_v7();
        let record = TaskRecord {
            id,
            version: 1,
            state: TaskState::Pending,
            plugin: resolved.name,
            plugin_version: resolved.version,
            digest: resolved.digest,
            queue,
            priority,
            attempts: 0,
            max_attempts,
            limits: StoredLimits::from(&limits),
            error: None,
            created_at_ms: now,
            started_at_ms: None,
            finished_at_ms: None,
            next_run_at_ms,
            idempotency_key: task.idempotency_key,
            parent_id: task.parent_id,
            callback_url: task.callback_url,
            input_len: if task.input_url.is_some() { 0 } else { task.input.len() as u64 },
            output_len: None,
            fuel_used: None,
            host_bytes_used: None,
            history: vec![Transition {
                at_ms: now,
                from: None,
                to: TaskState::Pending,
                attempt: 0,
                reason: if next_run_at_ms.is_some() { "submitted (delayed)" } else { "submitted" }.into(),
            }],
            flow_id: id,
            depth: 0,
            after: Vec::new(),
            input_from: if task.input_url.is_some() { InputFrom::Url } else { InputFrom::Own },
            step: None,
            iteration: 0,
            log_keep_bytes: task.log_keep_bytes,
            trace: task.trace,
        };
        // A fetched input's URL is kept where its bytes would be.
        let input = match task.input_url {
            Some(url) => url.into_bytes(),
            None => task.input,
        };
        Ok((record, input, resolved.pin))
    }
}

/// Refuses a requested limit over its cap, naming the limit and who set
/// the cap. Limits are never silently clamped.
/// Holds a task's limit `value` to its tenant's ceiling `max` (the quota
/// `quota`): a value the submission asked for above it is refused (400,
/// naming the quota); a plugin's default above it is lowered to it.
fn ceiling(
    tenant: &str,
    field: &str,
    value: &mut u64,
    asked: bool,
    max: Option<u64>,
    quota: &str,
) -> Result<(), EngineError> {
    match max {
        Some(max) if *value > max && asked => Err(EngineError::InvalidRequest(format!(
            "{field} {value} is over tenant `{tenant}`'s ceiling of {max} (quota `{quota}`)"
        ))),
        Some(max) => {
            *value = (*value).min(max);
            Ok(())
        }
        None => Ok(()),
    }
}

fn over_cap<T: PartialOrd + Copy>(
    field: &str,
    asked: Option<T>,
    cap: Cap<T>,
    plugin: &str,
    show: impl Fn(T) -> String,
) -> Result<(), EngineError> {
    match asked {
        Some(asked) if asked > cap.most => {
            let by = match cap.set_by {
                CapSource::Manifest => format!("plugin `{plugin}`'s manifest"),
                CapSource::Host => "this host's ceiling".to_owned(),
            };
            Err(EngineError::InvalidRequest(format!(
                "{field} {} is over the most a task of `{plugin}` may be given: {} (set by {by})",
                show(asked),
                show(cap.most)
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::Harness;

    fn task(f: impl FnOnce(&mut NewTask)) -> NewTask {
        let mut t = NewTask { plugin: "echo".into(), ..NewTask::default() };
        f(&mut t);
        t
    }

    #[tokio::test]
    async fn refuses_what_is_out_of_range_naming_it() {
        let h = Harness::new().await;
        let submission = Submission::new(h.shared.clone());
        let refused = |t: NewTask| submission.prepare(t).unwrap_err().to_string();
        assert!(refused(task(|t| t.priority = Some(10))).contains("priority 10 is out of range"));
        assert!(refused(task(|t| t.max_attempts = Some(0))).contains("max_attempts 0 is out of range"));
        assert!(refused(task(|t| t.queue = Some("a b".into()))).contains("invalid queue name `a b`"));
        assert!(refused(task(|t| t.fuel = Some(0))).contains("fuel must be greater than zero"));
        let both = task(|t| {
            t.delay_ms = Some(1);
            t.run_at_ms = Some(1);
        });
        assert!(refused(both).contains("either delay_ms or run_at"));
        assert!(refused(task(|t| t.idempotency_key = Some(String::new()))).contains("idempotency_key must be"));
        let ftp = task(|t| t.callback_url = Some("ftp://example.com/x".into()));
        assert!(refused(ftp).contains("the scheme `ftp` is not allowed"));
        let metadata = task(|t| t.callback_url = Some("http://169.254.169.254/latest".into()));
        assert!(refused(metadata).contains("a link-local (or metadata) address"));
        assert!(refused(task(|t| t.plugin = "missing".into())).contains("unknown plugin `missing`"));
        assert!(h.store().task_count().unwrap() == 0, "a refusal writes nothing");
    }

    #[tokio::test]
    async fn refuses_limits_over_the_hosts_ceilings_naming_them() {
        let h = Harness::new().await;
        let submission = Submission::new(h.shared.clone());
        let refused = |t: NewTask| submission.prepare(t).unwrap_err().to_string();
        let fuel = refused(task(|t| t.fuel = Some(u64::MAX)));
        assert!(fuel.contains("fuel 18446744073709551615 is over the most a task of `echo` may be given"), "{fuel}");
        assert!(fuel.contains("(set by this host's ceiling)"), "{fuel}");
        let memory = refused(task(|t| t.memory_bytes = Some(8 << 30)));
        assert!(memory.contains("memory_bytes 8 GiB is over the most") && memory.contains("4 GiB"), "{memory}");
        let timeout = refused(task(|t| t.timeout_ms = Some(3_600_000)));
        assert!(
            timeout.contains("timeout_ms 3600000 ms is over the most") && timeout.contains("900000 ms"),
            "{timeout}"
        );
        // At the ceiling is allowed.
        assert!(submission.prepare(task(|t| t.timeout_ms = Some(900_000))).is_ok());
        assert_eq!(h.store().task_count().unwrap(), 0, "a refusal writes nothing");
    }

    #[test]
    fn a_manifest_caps_below_the_ceiling_and_never_above_it() {
        let ceilings = crate::Ceilings::default();
        let limits = Limits { fuel: 1_000_000, timeout: Duration::from_secs(3_600), ..Limits::default() };
        let caps = super::super::runner::Caps::with_manifest(&ceilings, &limits, [true, false, true]);
        assert_eq!((caps.fuel.most, caps.fuel.set_by), (1_000_000, CapSource::Manifest));
        assert_eq!((caps.memory_bytes.most, caps.memory_bytes.set_by), (ceilings.memory_bytes, CapSource::Host));
        assert_eq!((caps.timeout.most, caps.timeout.set_by), (ceilings.timeout, CapSource::Host), "over the ceiling");
        let refused = over_cap("fuel", Some(1_000_001), caps.fuel, "p", |n| n.to_string()).unwrap_err().to_string();
        assert!(refused.contains("fuel 1000001 is over the most a task of `p` may be given: 1000000"), "{refused}");
        assert!(refused.contains("(set by plugin `p`'s manifest)"), "{refused}");
    }

    #[tokio::test]
    async fn pins_the_resolved_version_and_applies_defaults() {
        let h = Harness::new().await;
        let submission = Submission::new(h.shared.clone());
        let (record, input, _pin) = submission
            .prepare(task(|t| {
                t.input = b"in".to_vec();
                t.delay_ms = Some(5_000);
                t.timeout_ms = Some(250);
            }))
            .unwrap();
        assert_eq!((record.plugin.as_str(), record.plugin_version.as_str()), ("echo", "1"));
        assert_eq!((record.queue.as_str(), record.priority, record.max_attempts), ("default", 0, 3));
        assert_eq!(record.limits.timeout_ms, 250);
        assert!(record.next_run_at_ms.unwrap() >= record.created_at_ms + 5_000);
        assert_eq!((record.flow_id, input.as_slice()), (record.id, &b"in"[..]));
        assert_eq!(record.history[0].reason, "submitted (delayed)");
    }

    /// A delay of about 10^15 ms once made every view of its task panic.
    /// Times are checked here, for the API and plugins' children alike.
    #[tokio::test]
    async fn times_past_the_longest_delay_are_refused() {
        let h = Harness::new().await;
        let submission = Submission::new(h.shared.clone());
        let refused = |t: NewTask| submission.prepare(t).unwrap_err().to_string();
        for delay in [MAX_DELAY_MS + 1, 1_000_000_000_000_000, u64::MAX] {
            let message = refused(task(|t| t.delay_ms = Some(delay)));
            assert!(message.contains(&format!("delay_ms {delay} is out of range")), "{message}");
        }
        let message = refused(task(|t| t.run_at_ms = Some(u64::MAX)));
        assert!(message.contains("run_at 18446744073709551615 is more than 36,500 days ahead"), "{message}");
        let far = now_ms() + MAX_DELAY_MS + 60_000;
        assert!(refused(task(|t| t.run_at_ms = Some(far))).contains("the latest accepted now is"));
        assert_eq!(h.store().task_count().unwrap(), 0);
        // The longest delay itself, and any time in the past, are fine.
        let (record, _, _) = submission.prepare(task(|t| t.delay_ms = Some(MAX_DELAY_MS))).unwrap();
        let at = record.next_run_at_ms.unwrap();
        assert!(crate::wire::time(at).ends_with('Z'), "{}", crate::wire::time(at));
        assert!(submission.prepare(task(|t| t.run_at_ms = Some(0))).is_ok());
    }

    #[tokio::test]
    async fn a_new_queue_past_the_limit_is_refused_naming_it() {
        let h = Harness::with_config(|c| c.max_queues = 2).await;
        let submission = Submission::new(h.shared.clone());
        let queue = |q: &str| task(|t| t.queue = Some(q.into()));
        submission.prepare(queue("a")).unwrap();
        submission.prepare(queue("b")).unwrap();
        let refused = submission.prepare(queue("c")).unwrap_err();
        assert!(matches!(refused, EngineError::LimitReached(_)), "{refused:?}");
        assert!(refused.to_string().contains("max_queues = 2"), "{refused}");
        // Known queues still take tasks; a refused task reserved nothing.
        submission.prepare(queue("a")).unwrap();
        assert!(submission.prepare(task(|t| t.queue = Some("d".into()))).is_err());
        assert!(submission.prepare(task(|t| t.priority = Some(99))).is_err());
        assert_eq!(h.shared.queues.len(), 2);
    }
}
