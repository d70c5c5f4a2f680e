//! Tenants: the namespaces an admin made beside [`tenant::DEFAULT`], their
//! quotas, and the bytes each keeps. Submissions are checked here (a token
//! bucket per tenant, its stored unfinished tasks, its stored bytes); the
//! submission checks a task's limits against the tenant's ceilings, the
//! engine an upload against its plugin quotas, and the scheduler holds
//! each tenant's cap on running tasks ([`Scheduler::configure_tenant`]).
//!
//! [`Scheduler::configure_tenant`]: super::scheduler::Scheduler::configure_tenant

use super::EngineError;
use super::rates::{SharedRates, Take, tenant_key};
use super::stored_bytes::StoredBytes;
use crate::store::{Db, TenantQuotas, TenantRecord};
use crate::sync::{lock, read, write};
use crate::tenant;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Most tenants a host keeps.
pub const MAX_TENANTS: usize = 10_000;

/// A tenant's submission bucket: tokens left and when they were counted.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub(crate) struct Tenants {
    store: Db,
    known: RwLock<HashMap<String, TenantRecord>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Tasks each tenant submitted that are not yet counted as stored
    /// (between their check and their admission).
    pending: Mutex<HashMap<String, u64>>,
    /// Bytes of task inputs, outputs and logs each tenant keeps in the store
    /// (counted at start-up, then as tasks are admitted, complete and are
    /// deleted; on PostgreSQL, the totals of every host's changes).
    pub(crate) stored: StoredBytes,
    /// The rates a PostgreSQL store keeps (see `engine/rates.rs`); used
    /// for tenants' while hosts serve it together (then `buckets` stays
    /// empty).
    rates: Option<Arc<SharedRates>>,
    /// Serialises changes, so two creations cannot both pass the count.
    changes: tokio::sync::Mutex<()>,
}

/// A tenant's submissions counted as pending until dropped (once the
/// tasks are admitted, or refused); nothing for a tenant without the
/// quota.
pub(crate) struct Pending(Option<(Arc<Tenants>, String, u64)>);

impl Drop for Pending {
    fn drop(&mut self) {
        let Some((tenants, tenant, n)) = self.0.take() else { return };
        let mut pending = lock(&tenants.pending);
        if let Some(count) = pending.get_mut(&tenant) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                pending.remove(&tenant);
            }
        }
    }
}

impl Tenants {
    /// The tenants stored in `store`, with the rates it keeps.
    pub(crate) async fn load(store: Db, rates: Option<Arc<SharedRates>>) -> Result<Self, EngineError> {
        let known = store.tenants().await?.into_iter().collect();
        Ok(Self {
            known: RwLock::new(known),
            buckets: Mutex::default(),
            pending: Mutex::default(),
            stored: StoredBytes::default(),
            rates,
            store,
            changes: tokio::sync::Mutex::new(()),
        })
    }

    /// The tenants' rates the store keeps: hosts serve it together.
    fn tenants_rates(&self) -> Option<&SharedRates> {
        self.rates.as_deref().filter(|r| r.for_tenants())
    }

    /// Whether `name` is a tenant (the default one always is).
    pub(crate) fn exists(&self, name: &str) -> bool {
        name == tenant::DEFAULT || read(&self.known).contains_key(name)
    }

    /// Tenant `name`'s record; the default tenant has one without quotas
    /// until an admin sets some.
    pub(crate) fn get(&self, name: &str) -> Option<TenantRecord> {
        let known = read(&self.known).get(name).cloned();
        known.or_else(|| (name == tenant::DEFAULT).then(|| TenantRecord::new("serve".into(), TenantQuotas::default())))
    }

    /// Tenant `name`'s quotas, when it has a record.
    pub(crate) fn quotas(&self, name: &str) -> Option<TenantQuotas> {
        read(&self.known).get(name).map(|r| r.quotas.clone())
    }

    /// Counts `bytes` more kept by `tenant`.
    pub(crate) fn add_stored(&self, tenant: &str, bytes: u64) {
        self.stored.add(tenant, bytes);
    }

    /// Counts `bytes` fewer kept by `tenant` (deleted).
    pub(crate) fn sub_stored(&self, tenant: &str, bytes: u64) {
        self.stored.sub(tenant, bytes);
    }

    /// The bytes `tenant` keeps.
    pub(crate) fn stored_of(&self, tenant: &str) -> u64 {
        self.stored.of(tenant)
    }

    /// Refuses `bytes` more for `tenant` past its `max_stored_bytes`.
    pub(crate) fn check_stored(&self, tenant: &str, bytes: u64) -> Result<(), EngineError> {
        let Some(max) = read(&self.known).get(tenant).and_then(|r| r.quotas.max_stored_bytes) else {
            return Ok(());
        };
        let kept = self.stored_of(tenant);
        if kept.saturating_add(bytes) > max {
            return Err(exceeded(
                tenant,
                "max_stored_bytes",
                format!(
                    "it keeps {kept} bytes of inputs, outputs and logs; {bytes} more would pass the quota of {max}"
                ),
            ));
        }
        Ok(())
    }

    /// Every tenant, by name, the default one first.
    pub(crate) fn list(&self) -> Vec<(String, TenantRecord)> {
        let mut out: Vec<_> = read(&self.known).iter().map(|(n, r)| (n.clone(), r.clone())).collect();
        if !out.iter().any(|(n, _)| n == tenant::DEFAULT) {
            out.push((tenant::DEFAULT.to_owned(), self.get(tenant::DEFAULT).expect("always")));
        }
        out.sort_by(|a, b| (a.0 != tenant::DEFAULT, &a.0).cmp(&(b.0 != tenant::DEFAULT, &b.0)));
        out
    }

    /// Reads the tenants again from the store: those other hosts sharing
    /// it made or changed (`serve --many-hosts`).
    pub(crate) async fn reload(&self) -> Result<(), EngineError> {
        let _change = self.changes.lock().await;
        let known: HashMap<String, TenantRecord> = self.store.tenants().await?.into_iter().collect();
        let mut now = write(&self.known);
        let changed: Vec<String> = known
            .iter()
            .filter(|(name, record)| now.get(*name) != Some(record))
            .map(|(name, _)| name.clone())
            .collect();
        *now = known;
        drop(now);
        // A changed rate starts from a full bucket, as here.
        let mut buckets = lock(&self.buckets);
        for name in changed {
            if let Some(rates) = self.tenants_rates() {
                rates.forget_here(&tenant_key(&name));
            }
            buckets.remove(&name);
        }
        Ok(())
    }

    /// Makes tenant `name`, or sets its quotas; whether it was made.
    pub(crate) async fn put(&self, name: &str, quotas: TenantQuotas, by: &str) -> Result<bool, EngineError> {
        crate::names::name(crate::names::NameKind::Tenant, name)
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        check_quotas(&quotas)?;
        let _change = self.changes.lock().await;
        let existing = read(&self.known).get(name).cloned();
        let created = existing.is_none();
        if created && read(&self.known).len() >= MAX_TENANTS {
            return Err(EngineError::LimitReached(format!("{MAX_TENANTS} tenants exist already")));
        }
        let record = match existing {
            Some(mut record) => {
                record.quotas = quotas;
                record
            }
            None => TenantRecord::new(by.to_owned(), quotas),
        };
        self.store.put_tenant(name.to_owned(), record.clone()).await?;
        write(&self.known).insert(name.to_owned(), record);
        // A changed rate starts from a full bucket.
        lock(&self.buckets).remove(name);
        if let Some(rates) = self.tenants_rates()
            && let Err(error) = rates.forget(&tenant_key(name)).await
        {
            tracing::warn!(
                tenant = name,
                %error,
                "the tenant's quotas are stored, but its shared submission bucket could not be \
                started full (it refills at its rate)"
            );
        }
        Ok(created)
    }

    /// Takes one submission from `tenant`'s bucket, or refuses: this
    /// host's own bucket, or serving together, the database's.
    pub(crate) async fn take_submission(&self, tenant: &str) -> Result<(), EngineError> {
        let Some(quotas) = read(&self.known).get(tenant).map(|r| r.quotas.clone()) else {
            return Ok(());
        };
        let Some(rate) = quotas.submit_per_sec else { return Ok(()) };
        let size = quotas.submit_burst.unwrap_or(rate).max(1);
        let refused = |wait| EngineError::QuotaExceeded {
            tenant: tenant.to_owned(),
            quota: "submit_per_sec",
            message: format!("more than {rate} submissions per second (burst {size})"),
            retry_after_secs: Some(wait),
        };
        if let Some(rates) = self.tenants_rates() {
            return match rates.take(&tenant_key(tenant), rate, size).await? {
                Take::Taken => Ok(()),
                Take::Refused(wait) => Err(refused(Take::retry_after_secs(wait))),
            };
        }
        let (rate, size) = (f64::from(rate), f64::from(size));
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        let bucket = buckets.entry(tenant.to_owned()).or_insert(Bucket { tokens: size, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(size);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / rate.max(f64::MIN_POSITIVE)).ceil().clamp(1.0, 3600.0) as u32;
        Err(refused(wait))
    }

    /// Counts `n` more unfinished tasks of `tenant` as pending, or refuses
    /// when its stored unfinished tasks (`stored()`, read only for a
    /// tenant with the quota) and those pending would pass its quota.
    pub(crate) fn reserve_unfinished(
        self: &Arc<Self>,
        tenant: &str,
        stored: impl FnOnce() -> u64,
        n: u64,
    ) -> Result<Pending, EngineError> {
        let Some(max) = read(&self.known).get(tenant).and_then(|r| r.quotas.max_unfinished) else {
            return Ok(Pending(None));
        };
        // Read under the lock: a task admitted meanwhile is counted as
        // stored or still as pending (at worst both, for a moment), never
        // as neither, so the quota is never passed.
        let mut pending = lock(&self.pending);
        let stored = stored();
        let count = pending.entry(tenant.to_owned()).or_default();
        if stored + *count + n > max {
            let count = *count;
            if count == 0 {
                pending.remove(tenant);
            }
            return Err(EngineError::QuotaExceeded {
                tenant: tenant.to_owned(),
                quota: "max_unfinished",
                message: format!("{} unfinished tasks are stored or on their way; the quota is {max}", stored + count),
                retry_after_secs: None,
            });
        }
        *count += n;
        Ok(Pending(Some((self.clone(), tenant.to_owned(), n))))
    }
}

/// `tenant`'s `quota` refuses a request (not a rate: no wait helps).
pub(crate) fn exceeded(tenant: &str, quota: &'static str, message: String) -> EngineError {
    EngineError::QuotaExceeded { tenant: tenant.to_owned(), quota, message, retry_after_secs: None }
}

/// A quota of zero would refuse everything: say so rather than store it.
pub(crate) fn check_quotas(q: &TenantQuotas) -> Result<(), EngineError> {
    let zero = [
        ("submit_per_sec", q.submit_per_sec.map(u64::from)),
        ("submit_burst", q.submit_burst.map(u64::from)),
        ("max_running", q.max_running.map(u64::from)),
        ("max_unfinished", q.max_unfinished),
        ("max_stored_bytes", q.max_stored_bytes),
        ("max_plugins", q.max_plugins.map(u64::from)),
        ("max_plugin_versions", q.max_plugin_versions.map(u64::from)),
        ("max_plugin_bytes", q.max_plugin_bytes),
        ("max_fuel", q.max_fuel),
        ("max_memory_bytes", q.max_memory_bytes),
        ("max_timeout_ms", q.max_timeout_ms),
        ("max_queues", q.max_queues.map(u64::from)),
        ("max_flow_tasks", q.max_flow_tasks),
        ("max_flow_depth", q.max_flow_depth.map(u64::from)),
        ("max_children_per_task", q.max_children_per_task.map(u64::from)),
        ("max_flow_context_bytes", q.max_flow_context_bytes),
        ("max_script_bytes", q.max_script_bytes),
    ]
    .into_iter()
    .find(|(_, v)| *v == Some(0));
    super::check_script_quotas(q.script_queues.as_deref(), q.max_script_bytes)?;
    match zero {
        Some((name, _)) => Err(EngineError::InvalidRequest(format!(
            "quota `{name}` must be at least 1 (leave it out for no quota of the tenant's own)"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn tenants() -> (tempfile::TempDir, Arc<Tenants>) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb"), true).unwrap();
        (dir, Arc::new(Tenants::load(Db::Redb(store), None).await.unwrap()))
    }

    #[tokio::test]
    async fn tenants_are_made_listed_and_their_quotas_checked() {
        let (_dir, t) = tenants().await;
        assert!(t.exists(tenant::DEFAULT) && !t.exists("a"));
        assert!(t.put("a", TenantQuotas::default(), "root").await.unwrap());
        assert!(!t.put("a", TenantQuotas::default(), "root").await.unwrap(), "a second put changes it");
        assert!(t.exists("a"));
        let names: Vec<_> = t.list().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, [tenant::DEFAULT, "a"]);
        assert!(matches!(t.put("a b", TenantQuotas::default(), "root").await, Err(EngineError::InvalidRequest(_))));
        let zero = TenantQuotas { max_running: Some(0), ..TenantQuotas::default() };
        let e = t.put("a", zero, "root").await.unwrap_err().to_string();
        assert!(e.contains("`max_running` must be at least 1"), "{e}");
    }

    #[tokio::test]
    async fn the_bucket_allows_a_burst_then_refuses_with_a_wait() {
        let (_dir, t) = tenants().await;
        let quotas = TenantQuotas { submit_per_sec: Some(1), submit_burst: Some(3), ..TenantQuotas::default() };
        t.put("a", quotas, "root").await.unwrap();
        for _ in 0..3 {
            t.take_submission("a").await.unwrap();
        }
        match t.take_submission("a").await {
            Err(EngineError::QuotaExceeded { quota: "submit_per_sec", retry_after_secs: Some(1), .. }) => {}
            other => panic!("{other:?}"),
        }
        // Other tenants have their own buckets (the default none at all).
        for _ in 0..100 {
            t.take_submission(tenant::DEFAULT).await.unwrap();
        }
    }

    #[tokio::test]
    async fn unfinished_tasks_on_their_way_count_until_dropped() {
        let (_dir, t) = tenants().await;
        t.put("a", TenantQuotas { max_unfinished: Some(5), ..TenantQuotas::default() }, "root").await.unwrap();
        let first = t.reserve_unfinished("a", || 2, 3).unwrap();
        let e = t.reserve_unfinished("a", || 2, 1).err().unwrap().to_string();
        assert!(e.contains("5 unfinished tasks") && e.contains("quota `max_unfinished`"), "{e}");
        drop(first);
        let again = t.reserve_unfinished("a", || 2, 3).unwrap();
        assert!(lock(&t.pending).contains_key("a"));
        drop(again);
        assert!(lock(&t.pending).is_empty(), "nothing is held once admitted");
        // A tenant without the quota is not counted (nor its tasks read).
        let _free = t.reserve_unfinished(tenant::DEFAULT, || unreachable!(), 1_000_000).unwrap();
        assert!(lock(&t.pending).is_empty());
    }
}
