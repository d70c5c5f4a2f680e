//! Tenants on the wire: `GET /v1/tenants` ([`TenantList`]),
//! `PUT /v1/tenants/{name}` ([`TenantChange`] in, [`Tenant`] out) and
//! `GET /v1/tenants/{name}` ([`Tenant`], with what it uses now).

use super::time;
use crate::store::{TenantQuotas, TenantRecord};
use serde::{Deserialize, Serialize};

/// A tenant's quotas; `null` is no quota of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Quotas {
    /// Task (or flow) submissions per second.
    #[serde(default)]
    pub submit_per_sec: Option<u32>,
    /// Submissions allowed at once beyond the rate (default: one second's
    /// worth).
    #[serde(default)]
    pub submit_burst: Option<u32>,
    /// Tasks running at once.
    #[serde(default)]
    pub max_running: Option<u32>,
    /// Tasks stored and not yet finished.
    #[serde(default)]
    pub max_unfinished: Option<u64>,
    /// Bytes of task inputs, outputs and logs kept in the store.
    #[serde(default)]
    pub max_stored_bytes: Option<u64>,
    /// Plugin names.
    #[serde(default)]
    pub max_plugins: Option<u32>,
    /// Versions one plugin keeps.
    #[serde(default)]
    pub max_plugin_versions: Option<u32>,
    /// Size of one uploaded component, in bytes.
    #[serde(default)]
    pub max_plugin_bytes: Option<u64>,
    /// Fuel one task may be given.
    #[serde(default)]
    pub max_fuel: Option<u64>,
    /// Memory one task may be given, in bytes.
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
    /// Wall-clock time one attempt may be given, in ms.
    #[serde(default)]
    pub max_timeout_ms: Option<u64>,
    /// Queues (its `default` queue is never refused).
    #[serde(default)]
    pub max_queues: Option<u32>,
    /// Tasks one flow may create in all (lowers the host's flow limit).
    #[serde(default)]
    pub max_flow_tasks: Option<u64>,
    /// Submissions between a flow's first tasks and the deepest.
    #[serde(default)]
    pub max_flow_depth: Option<u32>,
    /// Children (and joins) one attempt may submit.
    #[serde(default)]
    pub max_children_per_task: Option<u32>,
    /// Bytes of keys plus values in one flow's context.
    #[serde(default)]
    pub max_flow_context_bytes: Option<u64>,
    /// Queues that take ad-hoc scripts (submissions carrying
    /// `{"script": {"lang", "source"}}`); `"*"` is every queue. `null`:
    /// none (the default).
    #[serde(default)]
    pub script_queues: Option<Vec<String>>,
    /// Size of one ad-hoc script, in bytes (default 64 KiB, at most 1 MiB).
    #[serde(default)]
    pub max_script_bytes: Option<u64>,
}

impl From<&TenantQuotas> for Quotas {
    fn from(q: &TenantQuotas) -> Self {
        Self {
            submit_per_sec: q.submit_per_sec,
            submit_burst: q.submit_burst,
            max_running: q.max_running,
            max_unfinished: q.max_unfinished,
            max_stored_bytes: q.max_stored_bytes,
            max_plugins: q.max_plugins,
            max_plugin_versions: q.max_plugin_versions,
            max_plugin_bytes: q.max_plugin_bytes,
            max_fuel: q.max_fuel,
            max_memory_bytes: q.max_memory_bytes,
            max_timeout_ms: q.max_timeout_ms,
            max_queues: q.max_queues,
            max_flow_tasks: q.max_flow_tasks,
            max_flow_depth: q.max_flow_depth,
            max_children_per_task: q.max_children_per_task,
            max_flow_context_bytes: q.max_flow_context_bytes,
            script_queues: q.script_queues.clone(),
            max_script_bytes: q.max_script_bytes,
        }
    }
}

impl From<&Quotas> for TenantQuotas {
    fn from(q: &Quotas) -> Self {
        Self {
            submit_per_sec: q.submit_per_sec,
            submit_burst: q.submit_burst,
            max_running: q.max_running,
            max_unfinished: q.max_unfinished,
            max_stored_bytes: q.max_stored_bytes,
            max_plugins: q.max_plugins,
            max_plugin_versions: q.max_plugin_versions,
            max_plugin_bytes: q.max_plugin_bytes,
            max_fuel: q.max_fuel,
            max_memory_bytes: q.max_memory_bytes,
            max_timeout_ms: q.max_timeout_ms,
            max_queues: q.max_queues,
            max_flow_tasks: q.max_flow_tasks,
            max_flow_depth: q.max_flow_depth,
            max_children_per_task: q.max_children_per_task,
            max_flow_context_bytes: q.max_flow_context_bytes,
            script_queues: q.script_queues.clone(),
            max_script_bytes: q.max_script_bytes,
        }
    }
}

/// What a tenant uses now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct Usage {
    /// Tasks stored and not yet finished.
    pub unfinished: u64,
    /// Tasks ready to run.
    pub ready: u64,
    /// Tasks waiting for their time (delayed or retrying).
    pub delayed: u64,
    /// Tasks running.
    pub running: u64,
    /// Plugins.
    pub plugins: u64,
    /// Bytes of task inputs, outputs and logs kept.
    pub stored_bytes: u64,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct Tenant {
    /// Its name.
    pub name: String,
    /// When it was made.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The token that made it.
    pub created_by: String,
    /// Its quotas.
    pub quotas: Quotas,
    /// What it uses now (`GET /v1/tenants/{name}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl Tenant {
    /// Tenant `name` as stored, with `usage` when known.
    pub fn new(name: impl Into<String>, record: &TenantRecord, usage: Option<&Usage>) -> Self {
        Self {
            name: name.into(),
            created_at: time(record.created_at_ms),
            created_by: record.created_by.clone(),
            quotas: Quotas::from(&record.quotas),
            usage: usage.cloned(),
        }
    }
}

/// `GET /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct TenantList {
    /// Every tenant, the default one first.
    pub tenants: Vec<Tenant>,
}

impl TenantList {
    /// The list of `tenants`.
    pub fn new(tenants: Vec<Tenant>) -> Self {
        Self { tenants }
    }
}

/// `PUT /v1/tenants/{name}` body: the tenant's quotas (all of them: one
/// left out is no quota). Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
#[schema(example = json!({"quotas": {"submit_per_sec": 100, "max_unfinished": 10000, "max_plugins": 20}}))]
pub struct TenantChange {
    /// The quotas.
    #[serde(default)]
    pub quotas: Quotas,
}

impl TenantChange {
    /// A change setting `quotas`.
    pub fn new(quotas: Quotas) -> Self {
        Self { quotas }
    }
}
