//! The store's tables beside the tasks', tested on both backends:
//! plugins and their components (stored once per digest, removed once no
//! version references them), tokens, tenants, secrets, the audit log and
//! callbacks' outcomes, each kept across a reopen.

use super::*;

/// What the tests ask of the store's other tables, answered by either
/// backend.
pub(crate) trait Catalog {
    async fn plugins(&self) -> Vec<(String, PluginEntry)>;
    async fn blob(&self, digest: &str) -> Option<Vec<u8>>;
    async fn put_plugin_version(&self, name: &str, version: PluginVersion, bytes: Vec<u8>);
    async fn edit_plugin(&self, name: &str, edit: impl FnOnce(&mut PluginEntry) -> Vec<String> + Send + 'static);
    async fn tokens(&self) -> Vec<(String, StoredToken)>;
    async fn put_token(&self, id: &str, token: StoredToken);
    async fn remove_token(&self, id: &str) -> bool;
    async fn tenants(&self) -> Vec<(String, TenantRecord)>;
    async fn put_tenant(&self, name: &str, tenant: TenantRecord);
    async fn secret(&self, name: &str) -> Vec<u8>;
    async fn append_audit_keeping(&self, entry: AuditEntry, keep: u64);
    async fn audit(&self, before: Option<Uuid>, limit: usize) -> Vec<(Uuid, AuditEntry)>;
    async fn put_callback_outcome(&self, id: Uuid, outcome: CallbackOutcome);
    async fn callback_outcome(&self, id: Uuid) -> Option<CallbackOutcome>;
}

impl Catalog for Store {
    async fn plugins(&self) -> Vec<(String, PluginEntry)> {
        Store::plugins(self).unwrap()
    }
    async fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        Store::blob(self, digest).unwrap()
    }
    async fn put_plugin_version(&self, name: &str, version: PluginVersion, bytes: Vec<u8>) {
        Store::put_plugin_version(self, name.to_owned(), version, bytes, None).await.unwrap()
    }
    async fn edit_plugin(&self, name: &str, edit: impl FnOnce(&mut PluginEntry) -> Vec<String> + Send + 'static) {
        Store::edit_plugin(self, name.to_owned(), edit).await.unwrap()
    }
    async fn tokens(&self) -> Vec<(String, StoredToken)> {
        Store::tokens(self).unwrap()
    }
    async fn put_token(&self, id: &str, token: StoredToken) {
        Store::put_token(self, id.to_owned(), token).await.unwrap()
    }
    async fn remove_token(&self, id: &str) -> bool {
        Store::remove_token(self, id.to_owned()).await.unwrap()
    }
    async fn tenants(&self) -> Vec<(String, TenantRecord)> {
        Store::tenants(self).unwrap()
    }
    async fn put_tenant(&self, name: &str, tenant: TenantRecord) {
        Store::put_tenant(self, name.to_owned(), tenant).await.unwrap()
    }
    async fn secret(&self, name: &str) -> Vec<u8> {
        Store::secret(self, name).await.unwrap()
    }
    async fn append_audit_keeping(&self, entry: AuditEntry, keep: u64) {
        Store::append_audit_keeping(self, entry, keep).await.unwrap()
    }
    async fn audit(&self, before: Option<Uuid>, limit: usize) -> Vec<(Uuid, AuditEntry)> {
        Store::audit(self, before, limit).unwrap()
    }
    async fn put_callback_outcome(&self, id: Uuid, outcome: CallbackOutcome) {
        Store::put_callback_outcome(self, id, outcome).await.unwrap()
    }
    async fn callback_outcome(&self, id: Uuid) -> Option<CallbackOutcome> {
        Store::callback_outcome(self, id).unwrap()
    }
}

impl Catalog for PgStore {
    async fn plugins(&self) -> Vec<(String, PluginEntry)> {
        PgStore::plugins(self).await.unwrap()
    }
    async fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        PgStore::blob(self, digest).await.unwrap()
    }
    async fn put_plugin_version(&self, name: &str, version: PluginVersion, bytes: Vec<u8>) {
        PgStore::put_plugin_version(self, name, version, bytes).await.unwrap()
    }
    async fn edit_plugin(&self, name: &str, edit: impl FnOnce(&mut PluginEntry) -> Vec<String> + Send + 'static) {
        PgStore::edit_plugin(self, name, edit).await.unwrap()
    }
    async fn tokens(&self) -> Vec<(String, StoredToken)> {
        PgStore::tokens(self).await.unwrap()
    }
    async fn put_token(&self, id: &str, token: StoredToken) {
        PgStore::put_token(self, id, &token).await.unwrap()
    }
    async fn remove_token(&self, id: &str) -> bool {
        PgStore::remove_token(self, id).await.unwrap()
    }
    async fn tenants(&self) -> Vec<(String, TenantRecord)> {
        PgStore::tenants(self).await.unwrap()
    }
    async fn put_tenant(&self, name: &str, tenant: TenantRecord) {
        PgStore::put_tenant(self, name, &tenant).await.unwrap()
    }
    async fn secret(&self, name: &str) -> Vec<u8> {
        PgStore::secret(self, name).await.unwrap()
    }
    async fn append_audit_keeping(&self, entry: AuditEntry, keep: u64) {
        PgStore::append_audit_keeping(self, &entry, keep).await.unwrap()
    }
    async fn audit(&self, before: Option<Uuid>, limit: usize) -> Vec<(Uuid, AuditEntry)> {
        PgStore::audit(self, before, limit).await.unwrap()
    }
    async fn put_callback_outcome(&self, id: Uuid, outcome: CallbackOutcome) {
        PgStore::put_callback_outcome(self, id, &outcome).await.unwrap()
    }
    async fn callback_outcome(&self, id: Uuid) -> Option<CallbackOutcome> {
        PgStore::callback_outcome(self, id).await.unwrap()
    }
}

on_both! {
    plugin_versions_share_blobs_until_none_references_them => plugins_and_blobs;
    tokens_are_stored_replaced_and_removed => tokens;
    tenants_are_stored_and_replaced => tenants;
    a_secret_is_made_once_and_kept => secrets;
    the_audit_log_keeps_the_newest_and_pages_newest_first => audit;
    a_callbacks_latest_outcome_is_kept => callback_outcomes;
}

fn version(version: &str, digest: &str, size: u64) -> PluginVersion {
    PluginVersion { version: version.into(), digest: digest.into(), size, created_at_ms: 1, script: None }
}

async fn plugins_and_blobs<S: Catalog + Reopen>(store: S) {
    store.put_plugin_version("resize", version("1", "d1", 3), b"one".to_vec()).await;
    store.put_plugin_version("resize", version("2", "d2", 3), b"two".to_vec()).await;
    // The same bytes again, under another plugin: stored once, and the
    // first bytes stay.
    store.put_plugin_version("blur", version("1", "d1", 3), b"xxx".to_vec()).await;
    store
        .edit_plugin("resize", |entry| {
            entry.manifest = Some("[capabilities]".into());
            entry.latest = Some("1".into());
            Vec::new()
        })
        .await;
    let store = store.reopen().await;
    let plugins = store.plugins().await;
    let names: Vec<_> = plugins.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["blur", "resize"]);
    let resize = &plugins[1].1;
    assert_eq!(resize.versions, [version("1", "d1", 3), version("2", "d2", 3)]);
    assert_eq!((resize.latest.as_deref(), resize.manifest.as_deref()), (Some("1"), Some("[capabilities]")));
    assert_eq!(store.blob("d1").await.as_deref(), Some(&b"one"[..]));
    assert_eq!(store.blob("d2").await.as_deref(), Some(&b"two"[..]));
    assert_eq!(store.blob("d3").await, None);

    // Dropping resize's versions removes d2, not d1 (blur has it).
    store
        .edit_plugin("resize", |entry| {
            entry.versions.clear();
            vec!["d1".into(), "d2".into()]
        })
        .await;
    assert_eq!(store.blob("d1").await.as_deref(), Some(&b"one"[..]));
    assert_eq!(store.blob("d2").await, None);
    store
        .edit_plugin("blur", |entry| {
            entry.versions.clear();
            vec!["d1".into()]
        })
        .await;
    assert_eq!(store.blob("d1").await, None);
    // An edit of a plugin with no entry makes one.
    store
        .edit_plugin("new", |entry| {
            entry.manifest = Some("m".into());
            Vec::new()
        })
        .await;
    let plugins = store.plugins().await;
    let new = &plugins.iter().find(|(name, _)| name == "new").unwrap().1;
    assert!(new.versions.is_empty() && new.manifest.as_deref() == Some("m"));
}

fn token(name: &str) -> StoredToken {
    StoredToken::new(name.into(), "default".into(), 1, [7; 32], 1, None, "serve".into())
}

async fn tokens<S: Catalog + Reopen>(store: S) {
    store.put_token("b", token("two")).await;
    store.put_token("a", token("one")).await;
    store.put_token("c", token("three")).await;
    store.put_token("c", token("three again")).await;
    assert_eq!(
        store.tokens().await,
        vec![("a".into(), token("one")), ("b".into(), token("two")), ("c".into(), token("three again"))]
    );
    assert!(store.remove_token("a").await);
    assert!(!store.remove_token("a").await);
    let store = store.reopen().await;
    assert_eq!(store.tokens().await, vec![("b".into(), token("two")), ("c".into(), token("three again"))]);
}

async fn tenants<S: Catalog + Reopen>(store: S) {
    assert!(store.tenants().await.is_empty());
    let quotas = TenantQuotas {
        max_running: Some(2),
        script_queues: Some(vec!["*".into()]),
        max_stored_bytes: Some(u64::MAX),
        ..TenantQuotas::default()
    };
    store.put_tenant("b", TenantRecord::new("root".into(), TenantQuotas::default())).await;
    store.put_tenant("a", TenantRecord::new("root".into(), TenantQuotas::default())).await;
    let replaced = TenantRecord::new("root".into(), quotas);
    store.put_tenant("a", replaced.clone()).await;
    let store = store.reopen().await;
    let tenants = store.tenants().await;
    assert_eq!(tenants.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(tenants[0].1, replaced);
}

async fn secrets<S: Catalog + Reopen>(store: S) {
    let first = store.secret("callbacks/default").await;
    assert_eq!(first.len(), 32);
    assert_eq!(store.secret("callbacks/default").await, first);
    assert_ne!(store.secret("callbacks/tenants").await, first);
    let store = store.reopen().await;
    assert_eq!(store.secret("callbacks/default").await, first);
}

async fn audit<S: Catalog + Reopen>(store: S) {
    for n in 0..5 {
        let entry = AuditEntry::new("id".into(), "t".into(), "default".into(), "act".into(), n.to_string());
        store.append_audit_keeping(entry, 4).await;
    }
    let store = store.reopen().await;
    let page = store.audit(None, 2).await;
    let objects: Vec<_> = page.iter().map(|(_, e)| e.object.as_str()).collect();
    assert_eq!(objects, ["4", "3"]);
    let rest = store.audit(Some(page[1].0), 10).await;
    let objects: Vec<_> = rest.iter().map(|(_, e)| e.object.as_str()).collect();
    assert_eq!(objects, ["2", "1"], "the oldest past the 4 kept is gone");
}

async fn callback_outcomes<S: Catalog + Reopen>(store: S) {
    let id = Uuid::from_u128(7);
    assert_eq!(store.callback_outcome(id).await, None);
    store.put_callback_outcome(id, CallbackOutcome::failed(6, "refused")).await;
    store.put_callback_outcome(id, CallbackOutcome::delivered(1)).await;
    let store = store.reopen().await;
    let outcome = store.callback_outcome(id).await.unwrap();
    assert!(outcome.delivered && outcome.attempts == 1 && outcome.error.is_none());
    assert_eq!(store.callback_outcome(Uuid::from_u128(8)).await, None);
}
