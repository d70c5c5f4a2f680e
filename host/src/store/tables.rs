//! Every redb table, as a typed constant. Values are postcard-encoded
//! records from `record.rs`; task ids are UUIDv7s stored as `u128`, so key
//! order is submission order.

use super::StoreError;
use redb::{ReadTransaction, TableDefinition, TableError, WriteTransaction};

/// Task id → [`TaskRecord`](super::TaskRecord) (metadata, state, history).
pub(crate) const TASKS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("tasks");
/// Task id → input bytes, written once at submission.
pub(crate) const INPUTS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("inputs");
/// Task id → output bytes, written once at completion.
pub(crate) const OUTPUTS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("outputs");
/// Idempotency key → task id, for tasks submitted from outside (the API):
/// one namespace for every client.
pub(crate) const IDEMPOTENCY: TableDefinition<'_, &str, u128> = TableDefinition::new("idempotency");
/// (flow id, idempotency key) → task id, for the tasks a flow grew (a
/// plugin's children): each flow its own namespace, apart from the API's,
/// so no client can claim a key a flow will give a child.
pub(crate) const FLOW_KEYS: TableDefinition<'_, (u128, &str), u128> = TableDefinition::new("flow_keys");
/// Plugin name → [`PluginEntry`](super::PluginEntry) (its versions).
pub(crate) const PLUGINS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("plugins");
/// sha256 digest (hex) → component bytes, deduplicated.
pub(crate) const BLOBS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("blobs");
/// Queue name → [`QueueConfig`](super::QueueConfig).
pub(crate) const QUEUES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("queues");
/// Compiled-artifact cache key (`digest-fingerprint`) → sha256 (hex) of the
/// artifact file the host wrote; only files matching it are ever loaded.
pub(crate) const CACHE: TableDefinition<'_, &str, &str> = TableDefinition::new("cache");
/// Flow id → [`FlowRecord`](super::FlowRecord), for flows that grew past
/// one task (children, or declared).
pub(crate) const FLOWS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("flows");
/// (flow id, task id) → (): every task of a flow except a root task
/// submitted from outside (whose id is the flow id).
pub(crate) const FLOW_TASKS: TableDefinition<'_, (u128, u128), ()> = TableDefinition::new("flow_tasks");
/// (flow id, key) → value: the flow's context store.
pub(crate) const CONTEXT: TableDefinition<'_, (u128, &str), &[u8]> = TableDefinition::new("context");
/// (state bucket, task id) → (): the unfinished tasks (one bucket) and the
/// tasks of each terminal state, in submission order (listing by state
/// reads only its bucket).
pub(crate) const BY_STATE: TableDefinition<'_, (u8, u128), ()> = TableDefinition::new("tasks_by_state");
/// (queue, task id) → (): each queue's tasks, in submission order.
pub(crate) const BY_QUEUE: TableDefinition<'_, (&str, u128), ()> = TableDefinition::new("tasks_by_queue");
/// (plugin name, task id) → (): each plugin's tasks, in submission order.
pub(crate) const BY_PLUGIN: TableDefinition<'_, (&str, u128), ()> = TableDefinition::new("tasks_by_plugin");
/// (flow id, iteration, task id) → (): the tasks a flow grew, by
/// iteration, so ending an iteration reads only its tasks (a root task,
/// whose id is the flow's, is read by its id).
pub(crate) const BY_ITERATION: TableDefinition<'_, (u128, u32, u128), ()> = TableDefinition::new("tasks_by_iteration");
/// Token id → [`StoredToken`](super::StoredToken): API tokens, each with
/// only the hash of its secret.
pub(crate) const TOKENS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tokens");
/// Tenant name → [`TenantRecord`](super::TenantRecord) as JSON (so a
/// quota added later reads in files written before it): the tenants an
/// admin made, beside the default one.
pub(crate) const TENANTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tenants");
/// Entry id (a UUIDv7, so time order) → [`AuditEntry`](super::AuditEntry).
pub(crate) const AUDIT: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("audit");
/// Secret name (e.g. `callbacks/default`) → random bytes the host made
/// once: keys it signs with.
pub(crate) const SECRETS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("secrets");
/// Task id → [`CallbackOutcome`](super::CallbackOutcome): how its
/// completion callback ended.
pub(crate) const CALLBACKS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("callbacks");
/// Each attempt's transcript (postcard [`crate::sandbox::AttemptLog`]),
/// by task and attempt.
pub(crate) const LOGS: TableDefinition<'_, (u128, u32), &[u8]> = TableDefinition::new("logs");
/// (group, end time in ms, unit id) → (): every ended unit of retention,
/// oldest first in each group — a task outside any flow under its queue,
/// a flow (with all its tasks) under its tenant's flow group (see
/// `retention.rs`).
pub(crate) const FINISHED: TableDefinition<'_, (&str, u64, u128), ()> = TableDefinition::new("finished");
/// `"schema"` → schema version; [`FLOW_KEYS_MOVED`] → 1 once the flows'
/// keys have their own table; [`FINISHED_BUILT`] → 1 once [`FINISHED`]
/// lists what files from before it hold.
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The [`META`] flag set once the flow-scoped keys that files before
/// [`FLOW_KEYS`] kept in [`IDEMPOTENCY`] were moved there. Independent of
/// the schema version: the move runs once, on whichever schema.
pub(crate) const FLOW_KEYS_MOVED: &str = "flow_keys_moved";

/// The [`META`] flag set once [`FINISHED`] was built from the tasks and
/// flows a file held before the index existed.
pub(crate) const FINISHED_BUILT: &str = "finished_built";

/// The layout version this build reads and writes. Version 2 files (before
/// flows), version 3 files (failure classes as text, no indexes) and
/// version 4 files (no host budget in the limits or the record) are
/// migrated in place on open. Version 6 records may take their input from
/// a URL ([`InputFrom::Url`](super::InputFrom)), which a build of version
/// 5 cannot read. Version 7 records end with the task's trace and its own
/// transcript cap; version 5 and 6 records are read as they are (and take
/// today's layout when next written), so those files open as they are and
/// are marked 7. Version 8 plugin versions may be scripts (their
/// language); older plugin entries are read as they are, and version 5-7
/// files are marked 8.
pub(crate) const SCHEMA_VERSION: u64 = 8;

/// The oldest schema whose files this build reads without migrating them:
/// `store check` and `store repair` treat them as today's.
pub(crate) const LAYOUT_SINCE: u64 = 5;

/// Calls `$m!` with every table a store holds besides [`META`].
macro_rules! every_table {
    ($m:ident) => {
        $m!(
            TASKS,
            INPUTS,
            OUTPUTS,
            IDEMPOTENCY,
            FLOW_KEYS,
            PLUGINS,
            BLOBS,
            QUEUES,
            CACHE,
            FLOWS,
            FLOW_TASKS,
            CONTEXT,
            BY_STATE,
            BY_QUEUE,
            BY_PLUGIN,
            BY_ITERATION,
            TOKENS,
            TENANTS,
            AUDIT,
            SECRETS,
            CALLBACKS,
            LOGS,
            FINISHED
        )
    };
}

/// Creates the tables `txn`'s file does not have yet.
pub(crate) fn create_all(txn: &WriteTransaction) -> Result<(), StoreError> {
    macro_rules! open {
        ($($table:ident),*) => { $( txn.open_table($table)?; )* };
    }
    every_table!(open);
    Ok(())
}

/// Whether `txn`'s file has every table.
pub(crate) fn all_exist(txn: &ReadTransaction) -> Result<bool, StoreError> {
    macro_rules! exists {
        ($($table:ident),*) => {
            $(
                match txn.open_table($table) {
                    Ok(_) => {}
                    Err(TableError::TableDoesNotExist(_)) => return Ok(false),
                    Err(e) => return Err(e.into()),
                }
            )*
        };
    }
    every_table!(exists);
    Ok(true)
}
