//! What a token may do: its [`Scope`]s, kept as a small bit set
//! ([`Scopes`]). `admin` includes every other scope.

use std::fmt;

/// One power a token can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// Tokens, tenants, manifests and grants, models, queue settings, the
    /// audit log, every tenant; includes every other scope. Only tokens
    /// of the default tenant may hold it.
    Admin,
    /// Upload plugins, roll back and delete versions.
    Plugins,
    /// Submit, cancel and retry tasks and flows.
    Submit,
    /// Read records, outputs, history, plugins, queues, models.
    Read,
    /// Read `/metrics` (every tenant's series: only tokens of the default
    /// tenant may hold it).
    Metrics,
}

impl Scope {
    /// Every scope, in the order they are listed.
    pub const ALL: [Scope; 5] = [Scope::Admin, Scope::Plugins, Scope::Submit, Scope::Read, Scope::Metrics];

    /// The scope's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Plugins => "plugins",
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Metrics => "metrics",
        }
    }

    /// The scope named `name`, if any.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << Scope::ALL.iter().position(|s| *s == self).expect("every scope is in ALL")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// The set of `scopes`.
    pub fn of(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self(scopes.into_iter().fold(0, |bits, s| bits | s.bit()))
    }

    /// The set stored as `bits`; bits of no scope are dropped.
    pub fn from_bits(bits: u8) -> Self {
        Self(bits & Self::of(Scope::ALL).0)
    }

    /// The set as stored.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether the set holds `scope` itself.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether a holder of this set may do what needs `scope`: it holds
    /// it, or holds `admin`.
    pub fn allows(self, scope: Scope) -> bool {
        self.contains(scope) || self.contains(Scope::Admin)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes held, in [`Scope::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Parses scope names, refusing an unknown one by name.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut scopes = Vec::new();
        for name in names {
            let scope = Scope::parse(name).ok_or_else(|| {
                let known: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope `{name}`; expected one of {}", known.join(", "))
            })?;
            scopes.push(scope);
        }
        Ok(Self::of(scopes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_allows_everything_and_others_only_themselves() {
        let admin = Scopes::of([Scope::Admin]);
        assert!(Scope::ALL.iter().all(|s| admin.allows(*s)));
        let submit = Scopes::of([Scope::Submit, Scope::Read]);
        assert!(submit.allows(Scope::Submit) && submit.allows(Scope::Read));
        assert!(!submit.allows(Scope::Plugins) && !submit.allows(Scope::Admin) && !submit.allows(Scope::Metrics));
        assert_eq!(submit.iter().collect::<Vec<_>>(), [Scope::Submit, Scope::Read]);
    }

    #[test]
    fn names_and_bits_round_trip_and_unknown_names_are_refused() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
            assert_eq!(Scopes::from_bits(Scopes::of([scope]).bits()), Scopes::of([scope]));
        }
        assert_eq!(Scopes::parse(["read", "metrics"]).unwrap(), Scopes::of([Scope::Read, Scope::Metrics]));
        let error = Scopes::parse(["read", "root"]).unwrap_err();
        assert!(error.contains("`root`") && error.contains("admin, plugins, submit, read, metrics"), "{error}");
        assert_eq!(Scopes::from_bits(0xff), Scopes::of(Scope::ALL));
    }
}
