//! The configuration on the wire: `GET /v1/config` ([`ConfigView`]): the
//! effective tenant quotas and queue settings, each with where it comes
//! from (the configuration file or the API), and the file's state.

use super::{Quotas, time};
use crate::store::{QueueConfig, TenantQuotas};
use serde::{Deserialize, Serialize};

/// Where a setting comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Source {
    /// The configuration file (`serve --config`); the API cannot change it.
    File,
    /// The API (or an earlier file), kept in the store.
    Api,
    /// The server's start options (`serve --retry-base`, ...) or their
    /// defaults.
    Serve,
}

impl Source {
    fn of(from_file: bool) -> Self {
        if from_file { Self::File } else { Self::Api }
    }
}

/// A tenant's effective quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ConfigTenant {
    /// The tenant.
    pub name: String,
    /// Its quotas.
    pub quotas: Quotas,
    /// Where they come from.
    pub source: Source,
}

impl ConfigTenant {
    /// Tenant `name`'s `quotas`, from the file or not.
    pub fn new(name: &str, quotas: &TenantQuotas, from_file: bool) -> Self {
        Self { name: name.to_owned(), quotas: quotas.into(), source: Source::of(from_file) }
    }
}

/// A queue's effective settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ConfigQueue {
    /// The queue's key (`NAME`, or `TENANT/NAME` in another tenant).
    pub name: String,
    /// Most of its tasks running at once.
    pub concurrency: Option<u32>,
    /// Its weight.
    pub weight: u32,
    /// How long its ended tasks outside flows are kept: a duration
    /// such as `7days`, or `forever` (`null`: the host's `--retain-for`).
    pub retain_for: Option<String>,
    /// How many of its ended tasks are kept (`null`: the host's).
    pub retain_count: Option<u64>,
    /// Where they come from.
    pub source: Source,
}

impl ConfigQueue {
    /// Queue `name`'s `config`, from the file or not.
    pub fn new(name: &str, config: &QueueConfig, from_file: bool) -> Self {
        Self {
            name: name.to_owned(),
            concurrency: config.concurrency,
            weight: config.weight,
            retain_for: crate::wire::queue::retain_text(config.retain_for_ms),
            retain_count: config.retain_count,
            source: Source::of(from_file),
        }
    }
}

/// `GET /v1/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ConfigView {
    /// The configuration file, if the server has one.
    pub file: Option<String>,
    /// When the file's settings now in force were applied.
    #[schema(format = DateTime)]
    pub applied_at: Option<String>,
    /// Why the last change to the file was refused (the settings applied
    /// before stay in force); `null` once a change applies.
    pub error: Option<String>,
    /// Every tenant's quotas.
    pub tenants: Vec<ConfigTenant>,
    /// Every queue's settings.
    pub queues: Vec<ConfigQueue>,
    /// The retry backoff in force.
    pub retry: ConfigRetry,
    /// The task defaults and ceilings in force (`null` on a host without
    /// a sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ConfigLimits>,
    /// The networks egress may reach although their class is refused.
    #[serde(default)]
    pub egress: ConfigEgress,
}

/// The task defaults (where a plugin's manifest sets none) and the host's
/// ceilings in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ConfigLimits {
    /// A task's limits when neither it nor its plugin's manifest sets them.
    pub defaults: super::TaskLimits,
    /// The most fuel one attempt may be given.
    pub max_fuel: u64,
    /// The most memory one attempt may be given, in bytes.
    pub max_memory_bytes: u64,
    /// The longest wall-clock budget of one attempt, in ms.
    pub max_timeout_ms: u64,
    /// The largest host budget of one attempt, in bytes.
    pub max_host_bytes: u64,
    /// `file` when the file's `[limits]` or `[ceilings]` sets any, else
    /// `serve`.
    pub source: Source,
}

impl ConfigLimits {
    /// `defaults` and `ceilings`, from the file or not.
    pub fn new(defaults: &crate::Limits, ceilings: &crate::Ceilings, from_file: bool) -> Self {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            defaults: super::TaskLimits::from(&crate::store::StoredLimits::from(defaults)),
            max_fuel: ceilings.fuel,
            max_memory_bytes: ceilings.memory_bytes,
            max_timeout_ms: ms(ceilings.timeout),
            max_host_bytes: ceilings.host_bytes,
            source: if from_file { Source::File } else { Source::Serve },
        }
    }
}

/// The egress allow-list in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ConfigEgress {
    /// Networks callbacks and input fetches may reach although they are
    /// loopback, private or otherwise refused.
    pub allow: Vec<String>,
    /// `file` when the file's `[egress]` sets it, else `serve`
    /// (`--egress-allow`).
    pub source: Source,
}

impl Default for ConfigEgress {
    fn default() -> Self {
        Self { allow: Vec::new(), source: Source::Serve }
    }
}

impl ConfigEgress {
    /// `allow`, from the file or not.
    pub fn new(allow: &[ipnet::IpNet], from_file: bool) -> Self {
        Self {
            allow: allow.iter().map(ToString::to_string).collect(),
            source: if from_file { Source::File } else { Source::Serve },
        }
    }
}

/// The retry backoff in force: attempt `n` waits a random time up to
/// `min(cap, base × 2^(n-1))`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ConfigRetry {
    /// The backoff base, e.g. `1s`.
    pub base: String,
    /// The longest backoff, e.g. `5m`.
    pub cap: String,
    /// `file` when the file's `[retry]` sets either, else `serve`.
    pub source: Source,
}

impl ConfigRetry {
    /// The backoff `policy`, from the file or not.
    pub fn new(policy: &crate::engine::RetryPolicy, from_file: bool) -> Self {
        Self {
            base: humantime::format_duration(policy.base).to_string(),
            cap: humantime::format_duration(policy.cap).to_string(),
            source: if from_file { Source::File } else { Source::Serve },
        }
    }
}

impl ConfigView {
    /// The view.
    pub fn new(
        file: Option<&std::path::Path>,
        applied_at_ms: Option<u64>,
        error: Option<String>,
        tenants: Vec<ConfigTenant>,
        queues: Vec<ConfigQueue>,
        retry: ConfigRetry,
    ) -> Self {
        Self {
            file: file.map(|f| f.display().to_string()),
            applied_at: applied_at_ms.map(time),
            error,
            tenants,
            queues,
            retry,
            limits: None,
            egress: ConfigEgress::default(),
        }
    }
}
