//! Queues on the wire: `GET /v1/queues` ([`QueueList`]) and
//! `PUT /v1/queues/{name}` ([`QueueChange`] in, [`QueueSettings`] out).

use crate::engine::QueueInfo;
use crate::store::QueueConfig;
use serde::{Deserialize, Serialize};

/// A queue with its settings and depth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct Queue {
    /// Name.
    pub name: String,
    /// Most tasks of this queue running at once (`null`: only the global
    /// limit applies).
    pub concurrency: Option<u32>,
    /// Share of the workers relative to other queues with work.
    pub weight: u32,
    /// How long its ended tasks outside flows are kept: a duration
    /// such as `7days`, or `forever` (`null`: the host's `--retain-for`).
    pub retain_for: Option<String>,
    /// How many of the latest ended tasks outside any flow are kept
    /// (`null`: the host's `--retain-count`).
    pub retain_count: Option<u64>,
    /// Ready tasks.
    pub ready: u64,
    /// Delayed or retrying tasks.
    pub delayed: u64,
    /// Running tasks.
    pub running: u64,
}

impl From<&QueueInfo> for Queue {
    fn from(q: &QueueInfo) -> Self {
        Self {
            name: q.name.clone(),
            concurrency: q.config.concurrency,
            weight: q.config.weight,
            retain_for: retain_text(q.config.retain_for_ms),
            retain_count: q.config.retain_count,
            ready: q.ready as u64,
            delayed: q.delayed as u64,
            running: q.running as u64,
        }
    }
}

/// A stored `retain_for` as the API shows it: `forever`, or a duration
/// such as `7days` (as `retain_for` takes it).
pub(crate) fn retain_text(ms: Option<u64>) -> Option<String> {
    ms.map(|ms| match ms {
        u64::MAX => "forever".to_owned(),
        ms => humantime::format_duration(std::time::Duration::from_millis(ms)).to_string(),
    })
}

/// `GET /v1/queues`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct QueueList {
    /// Every queue.
    pub queues: Vec<Queue>,
}

impl QueueList {
    /// The list of `queues`.
    pub fn new(queues: &[QueueInfo]) -> Self {
        Self { queues: queues.iter().map(Queue::from).collect() }
    }
}

/// `PUT /v1/queues/{name}` body. Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
#[schema(example = json!({"concurrency": 4, "weight": 2, "retain_for": "3d"}))]
pub struct QueueChange {
    /// Most tasks of this queue running at once (`null`: no limit but the
    /// global one).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Share relative to other queues (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// How long an ended task outside any flow is kept: a duration such
    /// as `"3d"` or `"12h"`, or `"forever"` (default: the host's).
    #[serde(default)]
    pub retain_for: Option<String>,
    /// How many of the latest ended tasks outside any flow are kept
    /// (default: the host's).
    #[serde(default)]
    pub retain_count: Option<u64>,
}

impl QueueChange {
    /// A change to `concurrency` and `weight`.
    pub fn new(concurrency: Option<u32>, weight: Option<u32>) -> Self {
        Self { concurrency, weight, retain_for: None, retain_count: None }
    }

    /// The same change, also setting the retention.
    pub fn retain(mut self, retain_for: Option<String>, retain_count: Option<u64>) -> Self {
        self.retain_for = retain_for;
        self.retain_count = retain_count;
        self
    }
}

/// The answer to `PUT /v1/queues/{name}`: the settings now in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct QueueSettings {
    /// Name.
    pub name: String,
    /// Most tasks running at once.
    pub concurrency: Option<u32>,
    /// Share relative to other queues.
    pub weight: u32,
    /// How long its ended tasks outside flows are kept: a duration
    /// such as `7days`, or `forever` (`null`: the host's `--retain-for`).
    pub retain_for: Option<String>,
    /// How many ended tasks outside any flow are kept (`null`: the
    /// host's default).
    pub retain_count: Option<u64>,
}

impl QueueSettings {
    /// Queue `name` set to `config`.
    pub fn new(name: impl Into<String>, config: &QueueConfig) -> Self {
        Self {
            name: name.into(),
            concurrency: config.concurrency,
            weight: config.weight,
            retain_for: crate::wire::queue::retain_text(config.retain_for_ms),
            retain_count: config.retain_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queues_have_the_api_shape() {
        let info = QueueInfo {
            name: "bulk".into(),
            config: QueueConfig { concurrency: Some(2), weight: 3, ..QueueConfig::default() },
            ready: 5,
            delayed: 1,
            running: 2,
        };
        let list = QueueList::new(&[info]);
        let value = serde_json::to_value(&list).unwrap();
        assert_eq!(
            value,
            json!({"queues": [{
                "name": "bulk", "concurrency": 2, "weight": 3, "retain_for": null, "retain_count": null,
                "ready": 5, "delayed": 1, "running": 2
            }]})
        );
        assert_eq!(serde_json::from_value::<QueueList>(value).unwrap(), list);
        let settings = QueueSettings::new("q", &QueueConfig::default());
        assert_eq!(
            serde_json::to_value(&settings).unwrap(),
            json!({"name": "q", "concurrency": null, "weight": 1, "retain_for": null, "retain_count": null})
        );
        let change: QueueChange = serde_json::from_value(json!({"weight": 2})).unwrap();
        assert_eq!(change, QueueChange::new(None, Some(2)));
        assert!(serde_json::from_value::<QueueChange>(json!({"weigth": 2})).is_err());
    }
}
