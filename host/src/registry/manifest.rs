//! Capability manifests: what the operator grants one plugin beyond the
//! empty default, as TOML (a `NAME.toml` beside `NAME.wasm` in the watched
//! directory, or `PUT /v1/plugins/{name}/manifest`). A plugin can never set
//! its own.
//!
//! ```toml
//! models = ["minilm"]   # models it may call (inference)
//!
//! [limits]              # defaults for this plugin's tasks
//! fuel = 2_000_000_000
//! memory = "64MiB"
//! timeout = "5s"
//! max_output = "1MiB"
//! max_log = "256KiB"
//! host_memory = "16MiB" # what its tasks may make the host hold
//!
//! [[dirs]]              # preopened directories
//! host = "/srv/reports"
//! guest = "/reports"
//! mode = "ro"           # or "rw"
//!
//! [network]
//! allow = ["127.0.0.1:8080", "api.example.com:443"]   # outbound TCP/UDP
//! ```

use crate::units::{parse_duration, parse_size};
use crate::{DirGrant, Limits};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// A plugin's capability manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Default limits for the plugin's tasks.
    #[serde(default)]
    pub limits: ManifestLimits,
    /// Preopened directories.
    #[serde(default)]
    pub dirs: Vec<ManifestDir>,
    /// Outbound network.
    #[serde(default)]
    pub network: ManifestNetwork,
    /// Models the plugin may call.
    #[serde(default)]
    pub models: Vec<String>,
}

/// `[limits]`: sizes like `64MiB`, durations like `5s`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    /// Fuel per attempt.
    pub fuel: Option<u64>,
    /// Memory cap.
    pub memory: Option<String>,
    /// Wall-clock budget.
    pub timeout: Option<String>,
    /// Output cap.
    pub max_output: Option<String>,
    /// Cap per captured stream.
    pub max_log: Option<String>,
    /// The host budget per attempt.
    pub host_memory: Option<String>,
}

impl ManifestLimits {
    /// `defaults` with each limit this sets in its place.
    pub fn over(&self, defaults: &Limits) -> Result<Limits, String> {
        let l = self;
        let size = |v: &Option<String>, d: u64, what: &str| {
            v.as_deref().map_or(Ok(d), |s| parse_size(s).map_err(|e| format!("limits.{what}: {e}")))
        };
        Ok(Limits {
            fuel: l.fuel.unwrap_or(defaults.fuel),
            memory_bytes: size(&l.memory, defaults.memory_bytes, "memory")?,
            timeout: match &l.timeout {
                Some(t) => parse_duration(t).map_err(|e| format!("limits.timeout: {e}"))?,
                None => defaults.timeout,
            },
            max_output_bytes: size(&l.max_output, defaults.max_output_bytes, "max_output")?,
            max_log_bytes: size(&l.max_log, defaults.max_log_bytes, "max_log")?,
            host_bytes: size(&l.host_memory, defaults.host_bytes, "host_memory")?,
        })
    }
}

/// `[[dirs]]`: one preopened directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDir {
    /// Absolute host path of an existing directory.
    pub host: PathBuf,
    /// Absolute path the guest sees.
    pub guest: String,
    /// `ro` (default) or `rw`.
    #[serde(default)]
    pub mode: DirMode,
}

/// How a granted directory is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
#[non_exhaustive]
pub enum DirMode {
    /// `ro`: read only.
    #[default]
    ReadOnly,
    /// `rw`: read and write.
    ReadWrite,
}

impl DirMode {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "ro",
            Self::ReadWrite => "rw",
        }
    }
}

impl From<DirMode> for &'static str {
    fn from(mode: DirMode) -> Self {
        mode.as_str()
    }
}

impl TryFrom<String> for DirMode {
    type Error = String;

    fn try_from(mode: String) -> Result<Self, String> {
        match mode.as_str() {
            "ro" => Ok(Self::ReadOnly),
            "rw" => Ok(Self::ReadWrite),
            _ => Err(format!("dirs: mode `{mode}` must be `ro` or `rw`")),
        }
    }
}

/// `[network]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestNetwork {
    /// `host:port` entries the plugin may connect to.
    #[serde(default)]
    pub allow: Vec<String>,
}

impl Manifest {
    /// Parses and checks a TOML manifest.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| format!("invalid manifest: {e}"))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Checks every entry, naming the first that is wrong.
    pub fn check(&self) -> Result<(), String> {
        self.limits(&Limits::default())?;
        for dir in &self.dirs {
            if !dir.host.is_absolute() || !dir.host.is_dir() {
                return Err(format!("dirs: host `{}` is not an existing absolute directory", dir.host.display()));
            }
            if !dir.guest.starts_with('/') {
                return Err(format!("dirs: guest path `{}` must be absolute, e.g. `/data`", dir.guest));
            }
        }
        for entry in &self.network.allow {
            let (host, port) =
                entry.rsplit_once(':').ok_or_else(|| format!("network.allow: `{entry}` must be `host:port`"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!("network.allow: `{entry}` must be `host:port` with a port 1-65535"));
            }
        }
        Ok(())
    }

    /// The manifest as TOML text.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| format!("cannot write the manifest as TOML: {e}"))
    }

    /// This manifest's limits over `defaults`.
    pub fn limits(&self, defaults: &Limits) -> Result<Limits, String> {
        self.limits.over(defaults)
    }

    /// The directory grants.
    pub fn dir_grants(&self) -> Vec<DirGrant> {
        self.dirs
            .iter()
            .map(|d| DirGrant { host: d.host.clone(), guest: d.guest.clone(), writable: d.mode == DirMode::ReadWrite })
            .collect()
    }

    /// Resolves the allowed hosts to socket addresses (at task start, so
    /// DNS changes are picked up). Unresolvable entries grant nothing.
    pub async fn connect_grants(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for entry in &self.network.allow {
            match tokio::net::lookup_host(entry.as_str()).await {
                Ok(addrs) => out.extend(addrs),
                Err(error) => tracing::warn!(%entry, %error, "network grant does not resolve"),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_manifest() {
        let dir = std::env::temp_dir();
        let text = format!(
            "models = [\"m\"]\n[limits]\nmemory = \"64MiB\"\ntimeout = \"5s\"\n[[dirs]]\nhost = {:?}\nguest = \"/data\"\nmode = \"rw\"\n[network]\nallow = [\"127.0.0.1:80\"]\n",
            dir.display().to_string()
        );
        let m = Manifest::parse(&text).unwrap();
        let limits = m.limits(&Limits::default()).unwrap();
        assert_eq!((limits.memory_bytes, limits.timeout.as_secs()), (64 << 20, 5));
        assert!(m.dir_grants()[0].writable);
        assert_eq!(m.models, ["m"]);
    }

    #[test]
    fn a_full_manifest_round_trips_through_toml() {
        let text = format!(
            "models = [\"a\", \"b\"]\n[limits]\nfuel = 7\n[[dirs]]\nhost = {:?}\nguest = \"/d\"\n[network]\nallow = [\"h:1\"]\n",
            std::env::temp_dir().display().to_string()
        );
        let m = Manifest::parse(&text).unwrap();
        let again = Manifest::parse(&m.to_toml().unwrap()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn names_what_is_wrong() {
        let err = |t: &str| Manifest::parse(t).unwrap_err();
        assert!(err("colour = 1").contains("unknown field `colour`"));
        assert!(err("[limits]\nmemory = \"lots\"").contains("limits.memory: invalid size `lots`"));
        assert!(
            err("[[dirs]]\nhost = \"/nonexistent/x\"\nguest = \"/d\"").contains("not an existing absolute directory")
        );
        assert!(err("[[dirs]]\nhost = \"/tmp\"\nguest = \"d\"").contains("must be absolute"));
        assert!(err("[[dirs]]\nhost = \"/tmp\"\nguest = \"/d\"\nmode = \"x\"").contains("must be `ro` or `rw`"));
        assert!(err("[network]\nallow = [\"example.com\"]").contains("must be `host:port`"));
    }
}
