//! The one validator for names that users choose and that end up in
//! stored keys, URLs and metric labels: plugin, queue and model names (1-64
//! of letters, digits, `-`, `_`, `.`) and plugin versions (also `+`).

use std::fmt;

/// What a name names, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameKind {
    /// A plugin name.
    Plugin,
    /// A queue name.
    Queue,
    /// A model name.
    Model,
    /// A plugin version.
    Version,
}

/// A name that is empty, too long or has a character outside its set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct NameError {
    /// What it names.
    pub kind: NameKind,
    /// The name as given.
    pub name: String,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match self.kind {
            NameKind::Plugin => write!(f, "invalid plugin name `{name}`: use 1-64 letters, digits, `-`, `_` or `.`"),
            NameKind::Queue => write!(f, "invalid queue name `{name}`: use 1-64 letters, digits, `-`, `_` or `.`"),
            NameKind::Model => {
                write!(f, "model name {name:?} is invalid: expected 1-64 characters of a-z, A-Z, 0-9, `-`, `_`, `.`")
            }
            NameKind::Version => write!(f, "invalid version `{name}`: use 1-64 letters, digits, `.`, `-`, `_` or `+`"),
        }
    }
}

fn check(kind: NameKind, name: &str, extra: &str) -> Result<(), NameError> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || extra.contains(c));
    if ok { Ok(()) } else { Err(NameError { kind, name: name.to_owned() }) }
}

/// Checks a plugin, queue or model name.
pub fn name(kind: NameKind, name: &str) -> Result<(), NameError> {
    check(kind, name, "")
}

/// Checks a plugin version.
pub fn version(version: &str) -> Result<(), NameError> {
    check(NameKind::Version, version, "+")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_set_and_nothing_else() {
        for ok in ["a", "word-count", "my_plugin.v2", &"x".repeat(64)] {
            assert!(name(NameKind::Plugin, ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "ä", "a@1", "a+b", &"x".repeat(65)] {
            assert!(name(NameKind::Queue, bad).is_err(), "{bad}");
        }
        assert!(version("1.0.0+build.7").is_ok());
        assert!(version("1 0").is_err());
    }

    #[test]
    fn the_message_names_the_kind_and_the_name() {
        let e = name(NameKind::Queue, "bad queue!").unwrap_err();
        assert_eq!(e.to_string(), "invalid queue name `bad queue!`: use 1-64 letters, digits, `-`, `_` or `.`");
        assert!(name(NameKind::Model, "a b").unwrap_err().to_string().contains("model name \"a b\" is invalid"));
    }
}
