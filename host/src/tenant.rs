//! Tenants' namespaces: how a name a tenant chose (a plugin, a queue, an
//! idempotency key) becomes the key the engine, the registry and the store
//! use, and back.
//!
//! The [`DEFAULT`] tenant's keys are its names as they are (so a store
//! written before tenants existed reads unchanged); another tenant's are
//! `TENANT/NAME`. Names never hold a `/` ([`crate::names`]), so a key says
//! which tenant it belongs to, and no name of one tenant can be read as a
//! key of another. The API turns names into keys on the way in
//! ([`Namespace::key`]) and keys back into names on the way out
//! ([`Namespace::name_of`]); the engine and below see keys only.

use crate::names::{self, NameError, NameKind};

/// The tenant every object belonged to before tenants existed, and the
/// one the operator's own tokens act in.
pub const DEFAULT: &str = "default";

/// What separates a tenant from a name in a key.
const SEP: char = '/';

/// The key of `name` in `tenant` (no check: see [`Namespace::key`]).
pub(crate) fn qualify(tenant: &str, name: &str) -> String {
    if tenant == DEFAULT { name.to_owned() } else { format!("{tenant}{SEP}{name}") }
}

/// A key's tenant and name.
pub(crate) fn split(key: &str) -> (&str, &str) {
    key.split_once(SEP).unwrap_or((DEFAULT, key))
}

/// The tenant a key belongs to.
pub(crate) fn tenant_of(key: &str) -> &str {
    split(key).0
}

/// An idempotency key's tenant and the key as its tenant gave it.
pub(crate) fn split_idempotency(key: &str) -> (&str, &str) {
    key.split_once('\0').unwrap_or((DEFAULT, key))
}

/// Checks a key: a valid name, optionally after a valid tenant name and
/// `/`. The error shows the name part, as its owner wrote it.
pub(crate) fn check_key(kind: NameKind, key: &str) -> Result<(), NameError> {
    let (tenant, name) = split(key);
    names::name(kind, name)?;
    if key.contains(SEP) {
        // The default tenant's keys are bare names: `default/x` is none.
        names::name(NameKind::Tenant, tenant)?;
        if tenant == DEFAULT {
            return Err(NameError { kind, name: key.to_owned() });
        }
    }
    Ok(())
}

/// One tenant's view of the keys: what the API works in for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    tenant: String,
}

impl Namespace {
    /// The namespace of `tenant` (a valid tenant name).
    pub fn new(tenant: impl Into<String>) -> Self {
        Self { tenant: tenant.into() }
    }

    /// The namespace of [`DEFAULT`].
    pub fn default_tenant() -> Self {
        Self::new(DEFAULT)
    }

    /// Its tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The key of the name `name` of kind `kind`, which must be a valid
    /// name (so it holds no `/` and cannot reach into another tenant).
    pub fn key(&self, kind: NameKind, name: &str) -> Result<String, NameError> {
        names::name(kind, name)?;
        Ok(qualify(&self.tenant, name))
    }

    /// The key of `name@version` (a plugin reference), or of `name`.
    pub fn plugin_ref(&self, spec: &str) -> Result<String, NameError> {
        let (name, version) = match spec.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (spec, None),
        };
        let key = self.key(NameKind::Plugin, name)?;
        Ok(match version {
            Some(version) => {
                names::version(version)?;
                format!("{key}@{version}")
            }
            None => key,
        })
    }

    /// The key of an idempotency key: any string, so a separator that
    /// none holds (NUL, which the API refuses in keys) marks the tenant.
    pub fn idempotency_key(&self, key: &str) -> String {
        if self.tenant == DEFAULT { key.to_owned() } else { format!("{}\0{key}", self.tenant) }
    }

    /// Whether `key` belongs to this tenant.
    pub fn owns(&self, key: &str) -> bool {
        tenant_of(key) == self.tenant
    }

    /// The name `key` has in this tenant; `None` for another tenant's key.
    pub fn local<'a>(&self, key: &'a str) -> Option<&'a str> {
        let (tenant, name) = split(key);
        (tenant == self.tenant).then_some(name)
    }

    /// The name of one of this tenant's keys (a key of another tenant,
    /// which no answer should carry, is shown whole).
    pub fn name_of(&self, key: &str) -> String {
        self.local(key).unwrap_or(key).to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_tenant_keeps_its_names_and_others_are_prefixed() {
        let (default, a) = (Namespace::default_tenant(), Namespace::new("a"));
        assert_eq!(default.key(NameKind::Plugin, "resize").unwrap(), "resize");
        assert_eq!(a.key(NameKind::Plugin, "resize").unwrap(), "a/resize");
        assert_eq!(a.plugin_ref("resize@1.0").unwrap(), "a/resize@1.0");
        assert_eq!(split("a/resize"), ("a", "resize"));
        assert_eq!(split("resize"), (DEFAULT, "resize"));
        assert!(a.owns("a/resize") && !a.owns("resize") && !default.owns("a/resize") && default.owns("resize"));
        assert_eq!(a.local("a/q"), Some("q"));
        assert_eq!(a.local("b/q"), None);
        assert_eq!(default.local("a/q"), None);
        assert_eq!(a.name_of("a/q"), "q");
        assert_eq!(a.idempotency_key("k"), "a\0k");
        assert_eq!(default.idempotency_key("k"), "k");
    }

    /// No name reaches into another tenant: a `/` is not a name.
    #[test]
    fn a_name_cannot_name_another_tenants_key() {
        for ns in [Namespace::default_tenant(), Namespace::new("b")] {
            for bad in ["a/resize", "a/resize@1", "/x", "x/", "x@a/resize", "x@1/2"] {
                assert!(ns.key(NameKind::Plugin, bad).is_err() || ns.plugin_ref(bad).is_err(), "{bad}");
                assert!(ns.plugin_ref(bad).is_err(), "{bad}");
            }
        }
    }

    #[test]
    fn keys_are_checked_in_both_parts() {
        assert!(check_key(NameKind::Queue, "q").is_ok());
        assert!(check_key(NameKind::Queue, "a/q").is_ok());
        for bad in ["a/b/q", "/q", "a/", "-a/q", "a/q q", "default/q"] {
            assert!(check_key(NameKind::Queue, bad).is_err(), "{bad}");
        }
    }
}
