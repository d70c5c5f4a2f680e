//! Plugins on the wire: a version ([`PluginVersion`]), the answer to an
//! upload ([`PluginAdded`]), one plugin in detail ([`Plugin`]), the list
//! ([`PluginList`]) and the answers to rollback, delete and manifest
//! changes.

use super::time;
use crate::engine::TaskCounts;
use crate::registry::{self, PluginDetail, VersionStatus};
use crate::store::TaskState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a version is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VersionState {
    /// Being compiled; not yet used for new tasks.
    Compiling,
    /// Ready: new tasks may resolve to it.
    Live,
    /// Validation or compilation failed (see `reason`).
    Failed,
}

/// One version of a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct PluginVersion {
    /// Version string.
    pub version: String,
    /// sha256 of the component, hex.
    pub digest: String,
    /// Component size in bytes.
    pub size: u64,
    /// For a script plugin, its language (`js`); absent for a component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// Uploaded.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Compiling, live or failed.
    pub state: VersionState,
    /// Why it failed.
    pub reason: Option<String>,
    /// How long compiling (or loading from the cache) took, in ms.
    pub load_ms: Option<f64>,
    /// Whether it came from the on-disk artifact cache.
    pub from_cache: bool,
    /// Whether its compiled code is in memory.
    pub loaded: bool,
}

impl From<&VersionStatus> for PluginVersion {
    fn from(v: &VersionStatus) -> Self {
        let (state, reason) = match &v.state {
            registry::VersionState::Compiling => (VersionState::Compiling, None),
            registry::VersionState::Live => (VersionState::Live, None),
            registry::VersionState::Failed(reason) => (VersionState::Failed, Some(reason.clone())),
        };
        Self {
            version: v.info.version.clone(),
            digest: v.info.digest.clone(),
            size: v.info.size,
            lang: v.info.script.clone(),
            created_at: time(v.info.created_at_ms),
            state,
            reason,
            load_ms: v.load_time.map(|d| d.as_secs_f64() * 1e3),
            from_cache: v.from_cache,
            loaded: v.loaded,
        }
    }
}

/// The answer to `POST /v1/plugins/{name}`: 201 a new version, 202 one
/// still compiling (`?wait=false`), 200 bytes identical to an existing
/// version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct PluginAdded {
    /// Plugin name.
    pub name: String,
    /// The version.
    #[serde(flatten)]
    pub version: PluginVersion,
    /// False when the bytes matched an existing version.
    pub created: bool,
}

impl PluginAdded {
    /// The answer for `status` of plugin `name`.
    pub fn new(name: &str, status: &VersionStatus, created: bool) -> Self {
        Self { name: name.to_owned(), version: PluginVersion::from(status), created }
    }
}

/// A version with its task counts (in [`Plugin`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct PluginVersionDetail {
    /// The version.
    #[serde(flatten)]
    pub version: PluginVersion,
    /// Tasks pinned to it, per state; states with none are left out.
    pub tasks: BTreeMap<TaskState, u64>,
    /// How its attempts ran since the host started (`null`: none ran).
    #[serde(default)]
    pub runs: Option<RunStats>,
}

/// How a plugin version's attempts ran: all of them since the host
/// started (`runs`), and quantiles over the last `recent` of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct RunStats {
    /// Attempts that ran since the host started.
    pub runs: u64,
    /// How many of the latest the quantiles cover (at most 256).
    pub recent: usize,
    /// Median run time, in milliseconds.
    pub run_ms_p50: f64,
    /// 95th percentile run time, in milliseconds.
    pub run_ms_p95: f64,
    /// Longest run time, in milliseconds.
    pub run_ms_max: f64,
    /// Median peak linear memory, in bytes.
    pub memory_bytes_p50: u64,
    /// Largest peak linear memory, in bytes.
    pub memory_bytes_max: u64,
    /// Largest peak of bytes held by the host for one attempt.
    pub host_bytes_max: u64,
}

/// `GET /v1/plugins/{name}`: one plugin in detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct Plugin {
    /// Plugin name.
    pub name: String,
    /// What a plain name resolves to after a rollback (`null`: the newest).
    pub latest: Option<String>,
    /// Every version, oldest first, with task counts.
    pub versions: Vec<PluginVersionDetail>,
    /// The operator's capability manifest, as TOML.
    pub manifest: Option<String>,
    /// The watched directory's last problem with this name.
    pub watch_error: Option<String>,
}

impl Plugin {
    /// Plugin `name` from its registry `detail`, task `counts` by version
    /// and state, and each version's `runs`.
    pub fn new(
        name: &str,
        detail: &PluginDetail,
        counts: &TaskCounts,
        runs: impl Fn(&str) -> Option<RunStats>,
    ) -> Self {
        let versions = detail
            .versions
            .iter()
            .map(|v| PluginVersionDetail {
                version: PluginVersion::from(v),
                tasks: counts
                    .iter()
                    .filter(|((version, _), _)| *version == v.info.version)
                    .map(|((_, state), n)| (*state, *n))
                    .collect(),
                runs: runs(&v.info.version),
            })
            .collect();
        Self {
            name: name.to_owned(),
            latest: detail.latest.clone(),
            versions,
            manifest: detail.manifest.as_ref().and_then(|m| m.to_toml().ok()),
            watch_error: detail.watch_error.clone(),
        }
    }
}

/// One plugin in [`PluginList`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct PluginSummary {
    /// Plugin name.
    pub name: String,
    /// What a plain name resolves to after a rollback (`null`: the newest).
    pub latest: Option<String>,
    /// Every version, oldest first.
    pub versions: Vec<PluginVersion>,
}

impl PluginSummary {
    /// Plugin `name` from its registry `detail`.
    pub fn new(name: &str, detail: &PluginDetail) -> Self {
        Self {
            name: name.to_owned(),
            latest: detail.latest.clone(),
            versions: detail.versions.iter().map(PluginVersion::from).collect(),
        }
    }
}

/// `GET /v1/plugins`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct PluginList {
    /// Every plugin, by name.
    pub plugins: Vec<PluginSummary>,
}

impl PluginList {
    /// The list of `plugins`.
    pub fn new(plugins: Vec<PluginSummary>) -> Self {
        Self { plugins }
    }
}

/// `PUT /v1/plugins/{name}/latest` body: the version a plain name resolves
/// to from now on. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
#[schema(example = json!({"version": "2"}))]
pub struct LatestChange {
    /// An existing live version.
    pub version: String,
}

impl LatestChange {
    /// Make `version` the latest.
    pub fn new(version: impl Into<String>) -> Self {
        Self { version: version.into() }
    }
}

/// The answer to `PUT /v1/plugins/{name}/latest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct PluginLatest {
    /// Plugin name.
    pub name: String,
    /// The version a plain name now resolves to.
    pub latest: String,
}

impl PluginLatest {
    /// `name` now resolves to `latest`.
    pub fn new(name: impl Into<String>, latest: impl Into<String>) -> Self {
        Self { name: name.into(), latest: latest.into() }
    }
}

/// The answer to `DELETE /v1/plugins/{name}/versions/{version}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct VersionDeleted {
    /// Plugin name.
    pub name: String,
    /// The version deleted.
    pub deleted: String,
}

impl VersionDeleted {
    /// `version` of `name` is gone.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self { name: name.into(), deleted: version.into() }
    }
}

/// The answer to `PUT /v1/plugins/{name}/manifest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ManifestSet {
    /// Plugin name.
    pub name: String,
    /// The manifest TOML as sent (empty: cleared).
    pub manifest: String,
}

impl ManifestSet {
    /// `name`'s manifest is now `manifest`.
    pub fn new(name: impl Into<String>, manifest: impl Into<String>) -> Self {
        Self { name: name.into(), manifest: manifest.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;
    use serde_json::json;
    use std::collections::HashMap;
    use std::time::Duration;

    fn status(version: &str, state: registry::VersionState) -> VersionStatus {
        VersionStatus {
            info: store::PluginVersion {
                version: version.into(),
                digest: "ab".repeat(32),
                size: 1024,
                created_at_ms: 0,
                script: None,
            },
            state,
            load_time: Some(Duration::from_micros(1500)),
            from_cache: false,
            loaded: true,
        }
    }

    #[test]
    fn versions_and_uploads_have_the_api_shape() {
        let failed = PluginVersion::from(&status("2", registry::VersionState::Failed("no world".into())));
        let value = serde_json::to_value(&failed).unwrap();
        assert_eq!((value["state"].as_str(), value["reason"].as_str()), (Some("failed"), Some("no world")));
        assert_eq!(value["load_ms"], 1.5);
        let added = PluginAdded::new("up", &status("1", registry::VersionState::Live), true);
        let value = serde_json::to_value(&added).unwrap();
        assert_eq!((value["name"].as_str(), value["version"].as_str()), (Some("up"), Some("1")));
        assert_eq!((value["state"].as_str(), value["created"].as_bool()), (Some("live"), Some(true)));
        assert!(value["reason"].is_null());
        assert_eq!(serde_json::from_value::<PluginAdded>(value).unwrap(), added);
    }

    #[test]
    fn a_plugin_with_task_counts_round_trips() {
        let detail = PluginDetail {
            versions: vec![status("1", registry::VersionState::Live), status("2", registry::VersionState::Compiling)],
            latest: Some("1".into()),
            manifest: None,
            watch_error: None,
        };
        let counts: TaskCounts =
            HashMap::from([(("1".to_owned(), TaskState::Completed), 4), (("1".to_owned(), TaskState::Failed), 1)]);
        let runs = |version: &str| {
            (version == "1").then_some(RunStats {
                runs: 5,
                recent: 5,
                run_ms_p50: 1.5,
                run_ms_p95: 2.0,
                run_ms_max: 3.0,
                memory_bytes_p50: 1 << 20,
                memory_bytes_max: 2 << 20,
                host_bytes_max: 100,
            })
        };
        let plugin = Plugin::new("up", &detail, &counts, runs);
        let value = serde_json::to_value(&plugin).unwrap();
        assert_eq!(value["versions"][0]["tasks"], json!({"completed": 4, "failed": 1}));
        assert_eq!(
            (value["versions"][0]["runs"]["runs"].as_u64(), value["versions"][0]["runs"]["run_ms_p50"].as_f64()),
            (Some(5), Some(1.5))
        );
        assert!(value["versions"][1]["runs"].is_null());
        assert_eq!(value["versions"][1]["tasks"], json!({}));
        assert_eq!((value["versions"][1]["state"].as_str(), value["latest"].as_str()), (Some("compiling"), Some("1")));
        assert!(value["manifest"].is_null() && value["watch_error"].is_null());
        assert_eq!(serde_json::from_value::<Plugin>(value).unwrap(), plugin);
        let list = PluginList::new(vec![PluginSummary::new("up", &detail)]);
        let value = serde_json::to_value(&list).unwrap();
        assert_eq!(value["plugins"][0]["versions"][1]["version"], "2");
        assert!(value["plugins"][0]["versions"][0].get("tasks").is_none());
        assert_eq!(serde_json::from_value::<PluginList>(value).unwrap(), list);
    }

    #[test]
    fn the_small_answers() {
        let cases = [
            (serde_json::to_value(LatestChange::new("1")).unwrap(), json!({"version": "1"})),
            (serde_json::to_value(PluginLatest::new("p", "1")).unwrap(), json!({"name": "p", "latest": "1"})),
            (serde_json::to_value(VersionDeleted::new("p", "2")).unwrap(), json!({"name": "p", "deleted": "2"})),
            (serde_json::to_value(ManifestSet::new("p", "")).unwrap(), json!({"name": "p", "manifest": ""})),
        ];
        for (got, expected) in cases {
            assert_eq!(got, expected);
        }
        assert!(serde_json::from_value::<LatestChange>(json!({"version": "1", "x": 1})).is_err());
    }
}
