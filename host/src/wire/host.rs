//! Hosts on the wire: `GET /v1/hosts` ([`HostList`]): the hosts serving
//! the store, each with what it says of itself (version, start, models,
//! load) and how long ago it last said it, and the plugins whose models
//! no live host serves.

use serde::{Deserialize, Serialize};

/// The hosts serving the store, by id. On redb, the one host answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct HostList {
    /// By id.
    pub hosts: Vec<Host>,
    /// How often each host writes its heartbeat, ms.
    pub heartbeat_every_ms: u64,
    /// A host is `live` while its last heartbeat is younger than this, ms.
    pub live_within_ms: u64,
    /// Hosts serving together (`--many-hosts`): the plugins whose tasks no
    /// live serving host can run, as the answering host sees them: their
    /// manifest names models that no such host serves all of (ready).
    /// Their tasks wait until one does. Empty on a host serving alone,
    /// which runs every plugin's tasks itself.
    #[serde(default)]
    pub unserved: Vec<UnservedPlugin>,
}

impl HostList {
    /// `hosts`, beating every `every_ms`, live within `live_ms`.
    pub fn new(hosts: Vec<Host>, every_ms: u64, live_ms: u64) -> Self {
        Self { hosts, heartbeat_every_ms: every_ms, live_within_ms: live_ms, unserved: Vec::new() }
    }

    /// The same list naming the plugins no live host serves.
    pub fn with_unserved(self, unserved: Vec<UnservedPlugin>) -> Self {
        Self { unserved, ..self }
    }
}

/// A plugin whose tasks wait for a host that serves the models its
/// manifest names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct UnservedPlugin {
    /// The plugin (`tenant/name` outside the default tenant).
    pub plugin: String,
    /// The models its manifest names: a host runs its tasks only if it
    /// serves every one.
    pub needs: Vec<String>,
}

impl UnservedPlugin {
    /// Plugin `plugin`, needing `needs`.
    pub fn new(plugin: String, needs: Vec<String>) -> Self {
        Self { plugin, needs }
    }
}

/// A host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct Host {
    /// Its id (the `host-id` file in its data directory).
    pub id: String,
    /// Whether it is the host that answered.
    pub this: bool,
    /// Whether its last heartbeat is recent (see
    /// [`HostList::live_within_ms`]).
    pub live: bool,
    /// Since its last heartbeat, ms, on the database's clock.
    pub heartbeat_age_ms: u64,
    /// What it said of itself then (`null` when its report could not be
    /// read: written by a build that writes another format).
    pub report: Option<HostReport>,
}

impl Host {
    /// Host `id`, heard from `age_ms` ago, saying `report`.
    pub fn new(id: String, this: bool, live: bool, age_ms: u64, report: Option<HostReport>) -> Self {
        Self { id, this, live, heartbeat_age_ms: age_ms, report }
    }
}

/// What a host says of itself in each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct HostReport {
    /// taskhost's version it runs.
    pub version: String,
    /// When it started (RFC 3339, its own clock).
    pub started_at: String,
    /// The models it serves to plugins (`inference`), ready or not.
    #[serde(default)]
    pub models: Vec<HostModel>,
    /// Its execution slots and memory budget, and how much of them is in
    /// use.
    pub load: HostLoad,
    /// Whether it serves the store or stands by to take over (reports
    /// written before standbys were listed say neither: `serving`).
    #[serde(default)]
    pub role: HostRole,
}

impl HostReport {
    /// A serving host's report of `version`, started at `started_at`.
    pub fn new(version: String, started_at: String, models: Vec<HostModel>, load: HostLoad) -> Self {
        Self { version, started_at, models, load, role: HostRole::Serving }
    }

    /// The same report of a host standing by.
    pub fn standing_by(self) -> Self {
        Self { role: HostRole::Standby, ..self }
    }
}

/// What a host does for the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HostRole {
    /// It runs the engine.
    #[default]
    Serving,
    /// It waits to take over (`serve --standby`): it runs no tasks.
    Standby,
}

/// A model a host serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct HostModel {
    /// Its name.
    pub name: String,
    /// Whether it loaded and takes calls.
    pub ready: bool,
    /// The device it runs on (`cpu`, `cuda:0`), when ready.
    pub device: Option<String>,
}

impl HostModel {
    /// Model `name`, on `device` when ready.
    pub fn new(name: String, ready: bool, device: Option<String>) -> Self {
        Self { name, ready, device }
    }
}

/// A host's load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct HostLoad {
    /// Its execution slots (`--concurrency`).
    pub slots: u64,
    /// Of them, those running an attempt.
    pub busy: u64,
    /// Tasks ready to run in its schedule (waiting for a slot).
    pub ready: u64,
    /// Its memory budget for running tasks, bytes.
    pub memory_budget_bytes: u64,
    /// Of it, what running tasks' memory limits reserve now, bytes.
    pub memory_reserved_bytes: u64,
}

impl HostLoad {
    /// A load of `busy` of `slots`, `ready` waiting, `reserved` of
    /// `budget` bytes.
    pub fn new(slots: u64, busy: u64, ready: u64, budget: u64, reserved: u64) -> Self {
        Self { slots, busy, ready, memory_budget_bytes: budget, memory_reserved_bytes: reserved }
    }
}
