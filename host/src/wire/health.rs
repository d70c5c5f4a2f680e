//! `GET /healthz`.

use crate::store::TaskState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The host's health, with its tasks per state. Served with 200 when
/// `status` is `ok`, with 503 when it is `unhealthy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct Health {
    /// `ok`; `unhealthy` while the store cannot write (a full disk);
    /// `standby` while another host serves its database.
    pub status: HealthStatus,
    /// Why the host is unhealthy (absent when it is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when it is unhealthy (RFC 3339; absent when it is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub since: Option<String>,
    /// Tasks per state, all queues.
    pub tasks: BTreeMap<TaskState, i64>,
}

/// Whether the host can do its work (`Health.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthStatus {
    /// Serving (200).
    Ok,
    /// Up but unable to do its work, e.g. the store cannot write (503).
    Unhealthy,
    /// Standing by (`serve --standby`): another host serves its
    /// PostgreSQL database, and this one takes over once that one stops
    /// (503).
    Standby,
}

impl Health {
    /// A healthy host with these task counts.
    pub fn new(counts: &HashMap<TaskState, i64>) -> Self {
        Self {
            status: HealthStatus::Ok,
            reason: None,
            since: None,
            tasks: counts.iter().map(|(s, n)| (*s, *n)).collect(),
        }
    }

    /// A host that is up but cannot do its work: `reason` since `since_ms`.
    pub fn unhealthy(counts: &HashMap<TaskState, i64>, reason: String, since_ms: u64) -> Self {
        Self {
            status: HealthStatus::Unhealthy,
            reason: Some(reason),
            since: Some(super::time(since_ms)),
            ..Self::new(counts)
        }
    }

    /// A host standing by for another (`serve --standby`): `reason` says
    /// who serves the database. It holds no tasks.
    pub fn standby(reason: String) -> Self {
        Self { status: HealthStatus::Standby, reason: Some(reason), since: None, tasks: BTreeMap::new() }
    }

    /// Whether `status` is `ok`.
    pub fn is_ok(&self) -> bool {
        self.status == HealthStatus::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn health_has_the_api_shape() {
        let health = Health::new(&HashMap::from([(TaskState::Running, 2), (TaskState::Pending, 0)]));
        let value = serde_json::to_value(&health).unwrap();
        assert_eq!(value, json!({"status": "ok", "tasks": {"pending": 0, "running": 2}}));
        assert_eq!(serde_json::from_value::<Health>(value).unwrap(), health);
    }

    #[test]
    fn a_standby_says_who_it_waits_for_and_holds_no_tasks() {
        let value = serde_json::to_value(Health::standby("host h serves".into())).unwrap();
        assert_eq!(value, json!({"status": "standby", "reason": "host h serves", "tasks": {}}));
    }

    #[test]
    fn an_unhealthy_host_says_why_and_since_when() {
        let health = Health::unhealthy(&HashMap::from([(TaskState::Pending, 1)]), "disk full".into(), 0);
        let value = serde_json::to_value(&health).unwrap();
        assert_eq!(
            value,
            json!({"status": "unhealthy", "reason": "disk full", "since": "1970-01-01T00:00:00.000Z", "tasks": {"pending": 1}})
        );
        assert!(!serde_json::from_value::<Health>(value).unwrap().is_ok());
    }
}
