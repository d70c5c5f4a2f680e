//! The models file (TOML) and one model's settings: parsing, defaults and
//! the checks that make a bad file fail with a message naming the model,
//! the field and what was expected.
//!
//! ```toml
//! [models.minilm]
//! path = "all-MiniLM-L6-v2/model.onnx"   # relative to this file
//! device = "auto"                         # cpu | cuda:N | auto
//! instances = 1                           # sessions per device
//! max_batch = 32                          # rows per run
//! max_delay = "0ms"                       # longest wait to fill a batch
//! preferred_batch = [8, 16, 32]           # dispatch at once at these sizes
//! timeout = "10s"                         # per call, queued + run
//! max_queue = 1024                        # calls waiting, then `overloaded`
//! plugins = ["embed"]                     # who may use it ("*": every plugin)
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// The CUDA provider on GPU N; the model fails if it cannot register.
    Cuda(u32),
    /// CUDA GPU 0 when the CUDA provider registers, else the CPU.
    Auto,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Auto => f.write_str("auto"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`: expected `cpu`, `cuda:N` (e.g. `cuda:0`) or `auto`")),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

/// One model's settings, as the models file and `POST /v1/models` take
/// them. Every field but `path` has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The `.onnx` file; relative paths are relative to the models file.
    #[schema(value_type = String, example = "models/classifier.onnx")]
    pub path: PathBuf,
    /// `cpu`, `cuda:N` or `auto` (default `cpu`).
    #[serde(default = "defaults::device")]
    #[schema(value_type = String, example = "cpu")]
    pub device: Device,
    /// Sessions (each with its own batch queue consumer) per device. Default 1.
    #[serde(default = "defaults::instances")]
    pub instances: u32,
    /// Most rows in one run. Default 32; 1 turns batching off.
    #[serde(default = "defaults::max_batch")]
    pub max_batch: u32,
    /// Longest a call waits for others to fill its batch. Default 0: a
    /// free instance runs what is queued at once, and calls that arrive
    /// while it is busy form the next batch. A few ms trade latency for
    /// larger batches under bursty load.
    #[serde(default = "defaults::max_delay", with = "duration")]
    #[schema(value_type = String, example = "2ms")]
    pub max_delay: Duration,
    /// Batch sizes dispatched as soon as that many rows wait.
    #[serde(default)]
    pub preferred_batch: Vec<u32>,
    /// Longest one call may take, queued and running. Default 10s.
    #[serde(default = "defaults::timeout", with = "duration")]
    #[schema(value_type = String, example = "10s")]
    pub timeout: Duration,
    /// Most calls waiting for this model; more are refused as
    /// `overloaded`. Default 1024.
    #[serde(default = "defaults::max_queue")]
    pub max_queue: u32,
    /// Plugins that may use the model, by key (`NAME` in the default
    /// tenant, `TENANT/NAME` in another); `"*"` grants every plugin of
    /// the default tenant, `"TENANT/*"` every plugin of TENANT. Default:
    /// none.
    #[serde(default)]
    pub plugins: Vec<String>,
    /// ONNX Runtime intra-op threads per session (default: ONNX Runtime's
    /// choice, one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

mod defaults {
    use super::Device;
    use std::time::Duration;
    pub(super) fn device() -> Device {
        Device::Cpu
    }
    pub(super) fn instances() -> u32 {
        1
    }
    pub(super) fn max_batch() -> u32 {
        32
    }
    pub(super) fn max_delay() -> Duration {
        Duration::ZERO
    }
    pub(super) fn timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn max_queue() -> u32 {
        1024
    }
}

/// Durations as human strings (`"2ms"`, `"10s"`) both ways.
mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration `{s}` ({e}): expected e.g. `0ms`, `2ms` or `10s`"))
        })
    }
}

/// Largest `max_batch` a model may set.
const MAX_BATCH_LIMIT: u32 = 4096;

impl ModelSpec {
    /// A spec with the defaults for everything but the path.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            device: defaults::device(),
            instances: defaults::instances(),
            max_batch: defaults::max_batch(),
            max_delay: defaults::max_delay(),
            preferred_batch: Vec::new(),
            timeout: defaults::timeout(),
            max_queue: defaults::max_queue(),
            plugins: Vec::new(),
            threads: None,
        }
    }

    /// Checks the settings that do not need the model file.
    pub(crate) fn check(&self, name: &str) -> Result<(), String> {
        check_name(name)?;
        let field = |what: &str| format!("model `{name}`: {what}");
        if self.path.as_os_str().is_empty() {
            return Err(field("`path` is empty; expected the model's .onnx file"));
        }
        if self.instances == 0 || self.instances > 64 {
            return Err(field(&format!("`instances` is {}; expected 1 to 64", self.instances)));
        }
        if self.max_batch == 0 || self.max_batch > MAX_BATCH_LIMIT {
            return Err(field(&format!("`max_batch` is {}; expected 1 to {MAX_BATCH_LIMIT}", self.max_batch)));
        }
        if let Some(&bad) = self.preferred_batch.iter().find(|&&n| n == 0 || n > self.max_batch) {
            return Err(field(&format!(
                "`preferred_batch` has {bad}; expected sizes from 1 to max_batch ({})",
                self.max_batch
            )));
        }
        if self.max_delay > Duration::from_secs(10) {
            return Err(field("`max_delay` is over 10s; expected a few milliseconds"));
        }
        if self.timeout.is_zero() {
            return Err(field("`timeout` is zero; expected a duration such as \"10s\""));
        }
        if self.max_queue == 0 {
            return Err(field("`max_queue` is 0; expected at least 1"));
        }
        if self.threads == Some(0) {
            return Err(field("`threads` is 0; expected at least 1, or leave it out"));
        }
        let not_a_plugin = |p: &&String| {
            let every = p.strip_suffix("/*").map(|t| crate::names::name(crate::names::NameKind::Tenant, t).is_ok());
            *p != "*" && every != Some(true) && crate::tenant::check_key(crate::names::NameKind::Plugin, p).is_err()
        };
        if let Some(bad) = self.plugins.iter().find(not_a_plugin) {
            return Err(field(&format!(
                "`plugins` has {bad:?}; expected plugin names (TENANT/NAME in a tenant), \"*\" or \"TENANT/*\""
            )));
        }
        Ok(())
    }

    /// Whether `plugin` (a key) was granted this model.
    pub(crate) fn permits(&self, plugin: &str) -> bool {
        let tenant = crate::tenant::tenant_of(plugin);
        self.plugins.iter().any(|p| p == plugin || self::every_plugin_of(p) == Some(tenant))
    }

    /// Whether any plugin of `tenant` is granted this model by name or by
    /// a wildcard.
    pub(crate) fn grants_tenant(&self, tenant: &str) -> bool {
        self.plugins.iter().any(|p| self::every_plugin_of(p) == Some(tenant) || crate::tenant::tenant_of(p) == tenant)
    }

    /// The model file, resolved against the models file's directory.
    pub(crate) fn resolved_path(&self, base: Option<&Path>) -> PathBuf {
        match base {
            Some(base) if self.path.is_relative() => base.join(&self.path),
            _ => self.path.clone(),
        }
    }
}

/// The tenant a grant gives every plugin of: `*` the default tenant's,
/// `TENANT/*` TENANT's.
pub(crate) fn every_plugin_of(grant: &str) -> Option<&str> {
    if grant == "*" { Some(crate::tenant::DEFAULT) } else { grant.strip_suffix("/*") }
}

/// Model names: what plugins pass to `inference.run`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    crate::names::name(crate::names::NameKind::Model, name).map_err(|e| e.to_string())
}

/// A whole models file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelsFile {
    #[serde(default)]
    pub(crate) models: BTreeMap<String, ModelSpec>,
}

impl ModelsFile {
    /// Parses and checks a models file's text.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let file: ModelsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, spec) in &file.models {
            spec.check(name)?;
        }
        Ok(file)
    }

    /// Reads a models file; a missing file has no models.
    pub(crate) fn read(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// Writes `spec` as `[models.NAME]` into the models file at `path`
/// (creating it), keeping everything else in the file as it was, comments
/// included; `None` removes the model. Atomic: a temporary file renamed
/// over the old one.
pub(crate) fn write_model(path: &Path, name: &str, spec: Option<&ModelSpec>) -> Result<(), String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{}: {e}", path.display()))?;
    let models = doc
        .entry("models")
        .or_insert_with(|| {
            let mut t = toml_edit::Table::new();
            t.set_implicit(true);
            toml_edit::Item::Table(t)
        })
        .as_table_mut()
        .ok_or_else(|| format!("{}: `models` is not a table", path.display()))?;
    match spec {
        Some(spec) => {
            let value = toml::to_string(spec).map_err(|e| e.to_string())?;
            let table: toml_edit::DocumentMut = value.parse().map_err(|e| format!("{e}"))?;
            models.insert(name, toml_edit::Item::Table(table.as_table().clone()));
        }
        None => {
            models.remove(name);
        }
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("models.toml")));
    std::fs::write(&tmp, doc.to_string()).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_full_specs() {
        let file = ModelsFile::parse(
            r#"
            [models.a]
            path = "a.onnx"

            [models.b]
            path = "/m/b.onnx"
            device = "cuda:1"
            instances = 2
            max_batch = 16
            max_delay = "5ms"
            preferred_batch = [4, 16]
            timeout = "1s"
            max_queue = 10
            plugins = ["*"]
            "#,
        )
        .unwrap();
        assert_eq!(file.models["a"], ModelSpec::new("a.onnx"));
        let b = &file.models["b"];
        assert_eq!(b.device, Device::Cuda(1));
        assert_eq!(b.max_delay, Duration::from_millis(5));
        assert!(b.permits("anything"));
        assert!(!file.models["a"].permits("anything"));
    }

    /// `*` grants the default tenant's plugins, `TENANT/*` a tenant's,
    /// and a name only that plugin (`TENANT/NAME` in a tenant).
    #[test]
    fn grants_reach_only_the_tenants_they_name() {
        let mut spec = ModelSpec::new("m.onnx");
        spec.plugins = vec!["*".into(), "b/*".into(), "c/embed".into()];
        assert!(spec.check("m").is_ok());
        assert!(spec.permits("resize") && spec.permits("b/resize") && spec.permits("c/embed"));
        assert!(!spec.permits("a/resize") && !spec.permits("c/other"));
        assert!(spec.grants_tenant("c") && spec.grants_tenant("b") && !spec.grants_tenant("a"));
        spec.plugins = vec!["default/*".into()];
        assert!(spec.check("m").is_ok(), "default/* is the same as *");
        assert!(spec.permits("x") && !spec.permits("a/x"));
        spec.plugins = vec!["a b/*".into()];
        assert!(spec.check("m").is_err());
    }

    #[test]
    fn bad_files_say_what_and_where() {
        let err = |text: &str| ModelsFile::parse(text).unwrap_err();
        assert!(err("[models.a]\npath = \"a\"\ndevice = \"tpu\"").contains("unknown device `tpu`"));
        assert!(err("[models.a]\npath = \"a\"\nmax_batch = 0").contains("model `a`: `max_batch` is 0"));
        assert!(err("[models.a]\npath = \"a\"\npreferred_batch = [64]").contains("`preferred_batch` has 64"));
        assert!(err("[models.a]\npath = \"a\"\nbatch = 3").contains("unknown field `batch`"));
        assert!(err("[models.\"a b\"]\npath = \"a\"").contains("invalid model name `a b`"));
        assert!(err("[models.\"..\"]\npath = \"a\"").contains("invalid model name `..`"));
        assert!(err("[models.a]\npath = \"a\"\nplugins = [\"..\"]").contains("`plugins` has \"..\""));
        assert!(err("[models.a]\ndevice = \"cpu\"").contains("missing field `path`"));
    }

    #[test]
    fn writing_a_model_keeps_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.toml");
        std::fs::write(&path, "# operator's notes\n[models.a]\npath = \"a.onnx\" # the first\n").unwrap();
        let mut spec = ModelSpec::new("b.onnx");
        spec.plugins = vec!["embed".into()];
        write_model(&path, "b", Some(&spec)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# operator's notes") && text.contains("# the first"), "{text}");
        let file = ModelsFile::parse(&text).unwrap();
        assert_eq!(file.models["b"], spec);
        write_model(&path, "a", None).unwrap();
        let file = ModelsFile::read(&path).unwrap();
        assert_eq!(file.models.keys().collect::<Vec<_>>(), ["b"]);
    }
}
