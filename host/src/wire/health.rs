//! `GET /healthz`.

use crate::store::TaskState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The host is up, with its tasks per state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Health {
    /// Always `ok` (a host that is not answers nothing).
    pub status: String,
    /// Tasks per state, all queues.
    pub tasks: BTreeMap<TaskState, i64>,
}

impl Health {
    /// A healthy host with these task counts.
    pub fn new(counts: &HashMap<TaskState, i64>) -> Self {
        Self { status: "ok".into(), tasks: counts.iter().map(|(s, n)| (*s, *n)).collect() }
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
}
