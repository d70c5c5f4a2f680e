//! The plugin registry: named, immutable, content-addressed versions,
//! persisted in the store and compiled in the sandbox. Tasks pin the
//! version they resolved at submission.

use crate::store::{PluginVersion, Store, now_ms};
use crate::{LoadError, Plugin, Sandbox};
use sha2_digest::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::RwLock;

/// Largest component accepted.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    #[error("invalid plugin name `{0}`: use 1-64 letters, digits, `-`, `_` or `.`")]
    BadName(String),
    #[error("unknown plugin `{0}`; upload it first with `POST /v1/plugins/{{name}}`")]
    Unknown(String),
    #[error("plugin `{name}` has no version `{version}` (known: {known})")]
    UnknownVersion {
        name: String,
        version: String,
        known: String,
    },
    #[error("the component is {size} bytes; the limit is {MAX_PLUGIN_BYTES}")]
    TooLarge { size: usize },
    #[error("invalid plugin: {0}")]
    Invalid(#[from] LoadError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A loaded version.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub(crate) info: PluginVersion,
    pub(crate) plugin: Plugin,
}

pub(crate) struct Registry {
    sandbox: Sandbox,
    store: Store,
    by_name: RwLock<HashMap<String, Vec<Loaded>>>,
}

pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Registry {
    /// Loads and compiles every stored version.
    pub(crate) async fn open(sandbox: Sandbox, store: Store) -> Result<Self, RegistryError> {
        let mut by_name: HashMap<String, Vec<Loaded>> = HashMap::new();
        for (name, entry) in store.plugins()? {
            for info in entry.versions {
                let bytes = store.blob(&info.digest)?.ok_or_else(|| {
                    crate::store::StoreError::Corrupt(format!(
                        "blob {} of plugin {name} is missing",
                        info.digest
                    ))
                })?;
                let plugin = compile(&sandbox, &name, &info.version, bytes).await?;
                by_name
                    .entry(name.clone())
                    .or_default()
                    .push(Loaded { info, plugin });
            }
        }
        Ok(Self {
            sandbox,
            store,
            by_name: RwLock::new(by_name),
        })
    }

    /// Adds a version (validated and compiled first). Identical bytes give
    /// back the existing version. Returns the version and whether it is new.
    pub(crate) async fn add(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(PluginVersion, bool), RegistryError> {
        if !valid_name(name) {
            return Err(RegistryError::BadName(name.to_owned()));
        }
        if bytes.len() > MAX_PLUGIN_BYTES {
            return Err(RegistryError::TooLarge { size: bytes.len() });
        }
        let digest = hex(&Sha256::digest(&bytes));
        if let Some(existing) = self.versions(name).into_iter().find(|v| v.digest == digest) {
            return Ok((existing, false));
        }
        let next = self
            .versions(name)
            .iter()
            .filter_map(|v| v.version.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let info = PluginVersion {
            version: next.to_string(),
            digest,
            size: bytes.len() as u64,
            created_at_ms: now_ms(),
        };
        let plugin = compile(&self.sandbox, name, &info.version, bytes.clone()).await?;
        self.store
            .put_plugin_version(name.to_owned(), info.clone(), bytes)
            .await?;
        let mut by_name = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        by_name.entry(name.to_owned()).or_default().push(Loaded {
            info: info.clone(),
            plugin,
        });
        Ok((info, true))
    }

    /// Resolves `name` (the latest version) or `name@version`.
    pub(crate) fn resolve(&self, spec: &str) -> Result<(String, Loaded), RegistryError> {
        let (name, version) = match spec.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (spec, None),
        };
        let by_name = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        let versions = by_name
            .get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RegistryError::Unknown(name.into()))?;
        let loaded = match version {
            None => versions.last(),
            Some(v) => versions.iter().find(|l| l.info.version == v),
        };
        loaded
            .cloned()
            .map(|l| (name.to_owned(), l))
            .ok_or_else(|| RegistryError::UnknownVersion {
                name: name.into(),
                version: version.unwrap_or_default().into(),
                known: versions
                    .iter()
                    .map(|l| l.info.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The compiled plugin of a pinned version.
    pub(crate) fn get(&self, name: &str, version: &str) -> Option<Plugin> {
        let by_name = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        by_name
            .get(name)?
            .iter()
            .find(|l| l.info.version == version)
            .map(|l| l.plugin.clone())
    }

    pub(crate) fn versions(&self, name: &str) -> Vec<PluginVersion> {
        let by_name = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        by_name
            .get(name)
            .map(|v| v.iter().map(|l| l.info.clone()).collect())
            .unwrap_or_default()
    }

    pub(crate) fn all(&self) -> Vec<(String, Vec<PluginVersion>)> {
        let by_name = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = by_name
            .iter()
            .map(|(n, v)| (n.clone(), v.iter().map(|l| l.info.clone()).collect()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

async fn compile(
    sandbox: &Sandbox,
    name: &str,
    version: &str,
    bytes: Vec<u8>,
) -> Result<Plugin, LoadError> {
    let (sandbox, name, version) = (sandbox.clone(), name.to_owned(), version.to_owned());
    // Compilation is CPU-bound: keep it off the async workers.
    tokio::task::spawn_blocking(move || sandbox.load(&name, &version, &bytes))
        .await
        .unwrap_or_else(|e| {
            Err(LoadError::Compile(format!(
                "the compiler thread failed: {e}"
            )))
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
