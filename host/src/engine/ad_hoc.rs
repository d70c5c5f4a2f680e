//! Ad-hoc scripts: a submission that carries its own JavaScript or Python
//! source instead of naming a plugin. Off by default; a tenant's
//! `script_queues` quota names the queues that take them and
//! `max_script_bytes` caps their size.
//!
//! A script becomes a version of its tenant's reserved plugin
//! ([`AD_HOC_JS`] or [`AD_HOC_PYTHON`]), versioned by its source's hash
//! like any script plugin, so retries, recovery after a crash, history and
//! logs treat it like any plugin task. The same source submitted again is
//! the same version. A tenant keeps at most
//! [`EngineConfig::max_ad_hoc_scripts`](super::EngineConfig) versions of
//! each (default [`MAX_AD_HOC_SCRIPTS`]): past that, the oldest that no
//! unfinished task holds is deleted, and when every one is held the
//! submission is refused.

use super::{Engine, EngineError, NewTask};
use crate::registry::{Registry, RegistryError};
use crate::sandbox::{Language, MAX_SCRIPT_BYTES};
use std::sync::Arc;

/// The reserved plugin that holds a tenant's ad-hoc JavaScript.
pub const AD_HOC_JS: &str = "adhoc.js";
/// The reserved plugin that holds a tenant's ad-hoc Python.
pub const AD_HOC_PYTHON: &str = "adhoc.py";
/// Distinct ad-hoc scripts a tenant keeps per language, by default.
pub const MAX_AD_HOC_SCRIPTS: usize = 1_000;
/// The size cap of an ad-hoc script when its tenant sets none.
pub const DEFAULT_MAX_SCRIPT_BYTES: u64 = 64 * 1024;
/// Most queues one tenant's `script_queues` may name.
pub const MAX_SCRIPT_QUEUES: usize = 256;

/// A script carried by a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdHocScript {
    /// Its language.
    pub language: Language,
    /// Its source (UTF-8).
    pub source: Vec<u8>,
}

impl AdHocScript {
    /// A `language` script of `source`.
    pub fn new(language: Language, source: impl Into<Vec<u8>>) -> Self {
        Self { language, source: source.into() }
    }
}

/// The reserved plugin name (unqualified) of `language`'s ad-hoc scripts.
pub fn plugin_for(language: Language) -> &'static str {
    match language {
        Language::JavaScript => AD_HOC_JS,
        Language::Python => AD_HOC_PYTHON,
    }
}

/// Whether `key` (a tenant's plugin key) is a reserved ad-hoc plugin,
/// which no upload may name.
pub(crate) fn is_reserved(key: &str) -> bool {
    let name = crate::tenant::split(key).1;
    name == AD_HOC_JS || name == AD_HOC_PYTHON
}

/// Refuses an upload to a reserved name.
pub(crate) fn refuse_reserved(key: &str) -> Result<(), EngineError> {
    if is_reserved(key) {
        let name = crate::tenant::split(key).1;
        return Err(EngineError::InvalidRequest(format!(
            "plugin name `{name}` is reserved for ad-hoc scripts (submit {{\"script\": ...}} instead)"
        )));
    }
    Ok(())
}

/// Checks the ad-hoc settings of a tenant's quotas.
pub(crate) fn check_quotas(script_queues: Option<&[String]>, max_bytes: Option<u64>) -> Result<(), EngineError> {
    let invalid = |m: String| Err(EngineError::InvalidRequest(m));
    if let Some(max) = max_bytes
        && max > MAX_SCRIPT_BYTES as u64
    {
        return invalid(format!(
            "quota `max_script_bytes` {max} is over the host's script limit of {MAX_SCRIPT_BYTES}"
        ));
    }
    let Some(queues) = script_queues else { return Ok(()) };
    if queues.len() > MAX_SCRIPT_QUEUES {
        return invalid(format!("`script_queues` names {} queues; at most {MAX_SCRIPT_QUEUES}", queues.len()));
    }
    for queue in queues.iter().filter(|q| *q != "*") {
        crate::names::name(crate::names::NameKind::Queue, queue)
            .map_err(|e| EngineError::InvalidRequest(format!("`script_queues`: {e} (or `*` for every queue)")))?;
    }
    Ok(())
}

/// The locks that serialise a name's ad-hoc versions being added or
/// collected (striped: two tenants rarely wait on each other).
pub(crate) struct AdHocLocks(Vec<Arc<tokio::sync::Mutex<()>>>);

impl Default for AdHocLocks {
    fn default() -> Self {
        Self((0..16).map(|_| Arc::default()).collect())
    }
}

impl AdHocLocks {
    fn of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(name);
        self.0[(hash % self.0.len() as u64) as usize].clone()
    }
}

/// Refuses a task of a reserved ad-hoc plugin in a queue (a key) whose
/// tenant's `script_queues` does not name it: however the task names the
/// plugin (a script, `adhoc.js@HASH`, a child, a flow step, a retry).
pub(crate) fn check_queue(quotas: Option<&crate::store::TenantQuotas>, queue: &str) -> Result<(), EngineError> {
    let (tenant, local) = crate::tenant::split(queue);
    let allowed = quotas.and_then(|q| q.script_queues.as_deref()).unwrap_or_default();
    if allowed.iter().any(|q| q == "*" || q == local) {
        return Ok(());
    }
    Err(EngineError::Forbidden(format!(
        "queue `{local}` of tenant `{tenant}` does not take ad-hoc scripts \
         (an admin allows them with the tenant's `script_queues` quota, e.g. `taskhost tenants put {tenant} --script-queues '*'`)"
    )))
}

impl Engine {
    /// Checks what needs no write: the queue takes scripts and the script
    /// fits its tenant's cap.
    pub(super) fn check_ad_hoc(&self, task: &NewTask, script: &AdHocScript) -> Result<(), EngineError> {
        let tenant = crate::tenant::tenant_of(&task.plugin);
        let queue = task.queue.clone().unwrap_or_else(|| "default".into());
        if crate::tenant::tenant_of(&queue) != tenant {
            return Err(EngineError::InvalidRequest(format!(
                "queue `{queue}` belongs to another tenant than `{tenant}`"
            )));
        }
        let quotas = self.inner.shared.tenants.quotas(tenant);
        check_queue(quotas.as_ref(), &queue)?;
        let cap = quotas.and_then(|q| q.max_script_bytes).unwrap_or(DEFAULT_MAX_SCRIPT_BYTES);
        let size = script.source.len() as u64;
        if size > cap {
            return Err(EngineError::InvalidRequest(format!(
                "the script is {size} bytes; tenant `{tenant}` takes ad-hoc scripts of at most {cap} (`max_script_bytes`)"
            )));
        }
        Ok(())
    }

    /// Turns `task`'s script into a version of its tenant's ad-hoc plugin
    /// and points `task` at it. The returned guard keeps the version from
    /// being collected: hold it until the submission has pinned it. The
    /// work runs on a task of its own, so a caller that goes away never
    /// leaves a collection half done.
    pub(super) async fn ad_hoc(
        &self,
        task: &mut NewTask,
        script: AdHocScript,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, EngineError> {
        // The tenant is `task.plugin`'s (the API names the tenant's ad-hoc
        // plugin there), as for any task.
        let tenant = crate::tenant::tenant_of(&task.plugin).to_owned();
        let name = crate::tenant::qualify(&tenant, plugin_for(script.language));
        let digest = crate::registry::sha256_hex(&script.source);
        let version = digest[..12].to_owned();
        let registry = self.registry()?.clone();
        let lock = self.inner.ad_hoc.of(&name);
        let most = self.inner.shared.config.max_ad_hoc_scripts;
        let spec = format!("{name}@{version}");
        task.plugin = spec.clone();
        let guard = super::detached(async move {
            let guard = lock.lock_owned().await;
            match registry.resolve(&spec) {
                // The same source again: its version is there already.
                Ok((_, loaded)) if loaded.info.digest == digest => return Ok(guard),
                Ok(_) => {
                    return Err(EngineError::Conflict(format!(
                        "`{spec}` holds another script than this one (its hash differs past the version's 12 digits)"
                    )));
                }
                Err(_) => {}
            }
            make_room(&registry, &name, &tenant, most).await?;
            registry.add_script(&name, script.language, script.source, None, true).await?;
            Ok(guard)
        })
        .await?;
        Ok(guard)
    }
}

/// Deletes the oldest of `name`'s versions that nothing holds while it has
/// `most` or more, making room for one; refuses when every one is held.
async fn make_room(registry: &Arc<Registry>, name: &str, tenant: &str, most: usize) -> Result<(), EngineError> {
    let Some(detail) = registry.detail(name) else { return Ok(()) };
    let most = most.max(1);
    if detail.versions.len() < most {
        return Ok(());
    }
    let mut versions = detail.versions;
    versions.sort_by_key(|v| v.info.created_at_ms);
    let excess = versions.len() + 1 - most;
    let mut deleted = 0;
    for version in &versions {
        if deleted == excess {
            break;
        }
        match registry.delete(name, &version.info.version).await {
            // Gone already (deleted by its tenant meanwhile) counts too.
            Ok(()) | Err(RegistryError::Unknown(_) | RegistryError::UnknownVersion { .. }) => deleted += 1,
            Err(RegistryError::InUse { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if deleted == excess {
        return Ok(());
    }
    Err(EngineError::LimitReached(format!(
        "tenant `{tenant}` has {most} distinct ad-hoc scripts held by unfinished tasks (the most it keeps); \
         submit again when some have ended"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_are_refused_for_uploads_in_every_tenant() {
        for key in ["adhoc.js", "adhoc.py", "acme/adhoc.js"] {
            let e = refuse_reserved(key).unwrap_err().to_string();
            assert!(e.contains("reserved for ad-hoc scripts"), "{e}");
        }
        refuse_reserved("adhoc").unwrap();
        refuse_reserved("acme/transform.js").unwrap();
    }

    #[test]
    fn the_quotas_are_checked() {
        check_quotas(Some(&["*".into(), "scripts".into()]), Some(1024)).unwrap();
        let e = check_quotas(Some(&["bad queue".into()]), None).unwrap_err().to_string();
        assert!(e.contains("`script_queues`") && e.contains("bad queue"), "{e}");
        let e = check_quotas(None, Some(MAX_SCRIPT_BYTES as u64 + 1)).unwrap_err().to_string();
        assert!(e.contains("max_script_bytes"), "{e}");
        let many: Vec<String> = (0..=MAX_SCRIPT_QUEUES).map(|i| format!("q{i}")).collect();
        assert!(check_quotas(Some(&many), None).is_err());
    }
}
