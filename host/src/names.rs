//! The one validator for names that users choose and that end up in
//! stored keys, URL path segments, file names (`NAME@VERSION.wasm`) and
//! metric labels: plugin, queue, model and flow step names (1-64 letters,
//! digits, `-`, `_`, `.`) and plugin versions (also `+`). Every name
//! starts with a letter or a digit, so none is `.` or `..` (which a URL
//! or a path resolves away), a hidden file, or an option to a command.

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
    /// A declared flow's step id.
    Step,
    /// An API token's name.
    Token,
    /// A tenant's name.
    Tenant,
}

impl NameKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plugin => "plugin name",
            Self::Queue => "queue name",
            Self::Model => "model name",
            Self::Version => "version",
            Self::Step => "step id",
            Self::Token => "token name",
            Self::Tenant => "tenant name",
        }
    }
}

/// A name that is empty, too long, has a character outside its set or
/// does not start with a letter or digit.
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
        let (kind, name) = (self.kind.as_str(), &self.name);
        let plus = if self.kind == NameKind::Version { ", `+`" } else { "" };
        write!(
            f,
            "invalid {kind} `{}`: use 1-64 letters, digits, `-`, `_`, `.`{plus}, starting with a letter or digit",
            name.escape_debug()
        )
    }
}

fn check(kind: NameKind, name: &str, extra: &str) -> Result<(), NameError> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || extra.contains(c));
    if ok { Ok(()) } else { Err(NameError { kind, name: name.to_owned() }) }
}

/// Checks a plugin, queue, model or step name.
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

    const KINDS: [NameKind; 4] = [NameKind::Plugin, NameKind::Queue, NameKind::Model, NameKind::Step];

    #[test]
    fn accepts_the_documented_set_and_nothing_else() {
        for ok in ["a", "word-count", "my_plugin.v2", "9lives", "a..b", "a.", &"x".repeat(64)] {
            for kind in KINDS {
                assert!(name(kind, ok).is_ok(), "{kind:?} {ok}");
            }
        }
        for bad in ["", "a b", "a/b", "a\\b", "ä", "a@1", "a+b", "a%2F", "a?b", "a#b", &"x".repeat(65)] {
            for kind in KINDS {
                assert!(name(kind, bad).is_err(), "{kind:?} {bad}");
            }
        }
        assert!(version("1.0.0+build.7").is_ok());
        assert!(version("1 0").is_err());
    }

    /// `.` and `..` are resolved away by URL clients and paths; a leading
    /// dot hides a file, a leading `-` reads as an option.
    #[test]
    fn no_name_is_a_path_step_a_hidden_file_or_an_option() {
        for bad in [".", "..", "...", ".hidden", "-rf", "--help", "_x", "+1"] {
            for kind in KINDS {
                assert!(name(kind, bad).is_err(), "{kind:?} {bad}");
            }
            assert!(version(bad).is_err(), "version {bad}");
        }
    }

    #[test]
    fn the_message_names_the_kind_and_the_name() {
        let e = name(NameKind::Queue, "bad queue!").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid queue name `bad queue!`: use 1-64 letters, digits, `-`, `_`, `.`, starting with a letter or digit"
        );
        assert!(name(NameKind::Model, "a b").unwrap_err().to_string().starts_with("invalid model name `a b`"));
        assert!(version("..").unwrap_err().to_string().contains("`.`, `+`, starting"));
        // A control character is shown escaped, never written raw.
        assert!(name(NameKind::Step, "a\nb").unwrap_err().to_string().contains("`a\\nb`"));
    }
}
