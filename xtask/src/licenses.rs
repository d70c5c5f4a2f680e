//! `cargo xtask licenses`: every third-party package in Cargo.lock (all
//! targets and platforms, all features) must carry a licence expression the
//! allow-list satisfies, and no banned crate may be in the tree. It reads
//! `cargo metadata` only, so it needs no advisory database or network once
//! the crates are fetched (`cargo fetch`).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Licences (SPDX identifiers, or `LICENCE WITH EXCEPTION`) a dependency may
/// be used under. All permissive; add one only after reading it.
const ALLOWED: &[&str] = &[
    "0BSD",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSL-1.0",
    "CC0-1.0",
    // Community Data License Agreement, permissive: use, change and share
    // freely, keeping the licence text with shared data. Mozilla's root
    // certificates (webpki-root-certs, which rustls-platform-verifier
    // uses on some platforms) come under it.
    "CDLA-Permissive-2.0",
    "ISC",
    "MIT",
    // MIT without the attribution clause (OSI-approved); `borrow-or-share`,
    // under the test-only `jsonschema`, uses it.
    "MIT-0",
    "Unicode-3.0",
    "Unlicense",
    "Zlib",
];

/// Packages without a `license` expression whose `license-file` has been
/// read and accepted: (package name, why). Empty: every dependency declares one.
const LICENSE_FILE_EXCEPTIONS: &[(&str, &str)] = &[];

/// Crates that must not be in the tree at all: (name, why).
const BANNED: &[(&str, &str)] = &[
    ("openssl", "TLS is rustls (or none): no system OpenSSL to build against or patch"),
    ("openssl-sys", "TLS is rustls (or none): no system OpenSSL to build against or patch"),
    ("native-tls", "TLS is rustls (or none): native-tls pulls in OpenSSL on Linux"),
];

pub fn check(root: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--all-features", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .output()
        .map_err(|e| format!("running cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo metadata failed:\n{}", String::from_utf8_lossy(&output.stderr).trim_end()));
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata printed invalid JSON: {e}"))?;
    let packages = metadata["packages"].as_array().ok_or("cargo metadata printed no packages")?;

    let mut problems = Vec::new();
    let mut checked = 0;
    for package in packages {
        let name = package["name"].as_str().unwrap_or_default();
        let id = format!("{name} {}", package["version"].as_str().unwrap_or_default());
        if let Some((_, why)) = BANNED.iter().find(|(banned, _)| *banned == name) {
            problems.push(format!("{id}: banned crate ({why})"));
        }
        // Workspace members (no source) are this project's own code.
        if package["source"].is_null() {
            continue;
        }
        checked += 1;
        match (package["license"].as_str(), package["license_file"].as_str()) {
            (Some(expression), _) => match Expr::parse(expression) {
                Ok(expr) if expr.allowed(ALLOWED) => {}
                Ok(_) => problems.push(format!("{id}: licence `{expression}` is not allowed")),
                Err(e) => problems.push(format!("{id}: licence `{expression}` is not an SPDX expression: {e}")),
            },
            (None, Some(_)) if LICENSE_FILE_EXCEPTIONS.iter().any(|(n, _)| *n == name) => {}
            (None, Some(file)) => problems.push(format!(
                "{id}: no licence expression, only the file {file}; read it, then list the crate in \
                 LICENSE_FILE_EXCEPTIONS (xtask/src/licenses.rs)"
            )),
            (None, None) => problems.push(format!("{id}: no licence at all")),
        }
    }

    if problems.is_empty() {
        let banned: Vec<&str> = BANNED.iter().map(|(name, _)| *name).collect();
        println!("licences: {checked} packages checked, all allowed; no banned crate ({})", banned.join(", "));
        Ok(())
    } else {
        for problem in &problems {
            eprintln!("  {problem}");
        }
        Err(format!(
            "licences: {} problem(s) in {checked} packages against the policy in xtask/src/licenses.rs (allowed: {})",
            problems.len(),
            ALLOWED.join(", ")
        ))
    }
}

/// An SPDX licence expression: `A OR (B AND C WITH exception)`.
#[derive(Debug, PartialEq)]
enum Expr {
    License(String),
    With(String, String),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl Expr {
    /// Parses an expression with the SPDX precedence (WITH, then AND, then
    /// OR). Also accepts what older crates wrote: `/` for OR, and operators
    /// in lower case.
    fn parse(expression: &str) -> Result<Self, String> {
        let spaced = expression.replace('(', " ( ").replace(')', " ) ").replace('/', " OR ");
        let tokens: Vec<&str> = spaced.split_whitespace().collect();
        let mut parser = Parser { tokens: &tokens, at: 0 };
        let expr = parser.or()?;
        match parser.peek() {
            None => Ok(expr),
            Some(token) => Err(format!("unexpected `{token}`")),
        }
    }

    /// Whether the licences in `allowed` satisfy the expression: one branch
    /// of an OR, every part of an AND; `X WITH E` only if listed as such.
    fn allowed(&self, allowed: &[&str]) -> bool {
        match self {
            Expr::License(id) => allowed.contains(&id.as_str()),
            Expr::With(id, exception) => allowed.contains(&format!("{id} WITH {exception}").as_str()),
            Expr::And(parts) => parts.iter().all(|p| p.allowed(allowed)),
            Expr::Or(parts) => parts.iter().any(|p| p.allowed(allowed)),
        }
    }
}

struct Parser<'a> {
    tokens: &'a [&'a str],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.tokens.get(self.at).copied()
    }

    fn eat(&mut self, operator: &str) -> bool {
        let found = self.peek().is_some_and(|t| t.eq_ignore_ascii_case(operator));
        self.at += usize::from(found);
        found
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut parts = vec![self.and()?];
        while self.eat("OR") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Expr::Or(parts) })
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut parts = vec![self.with()?];
        while self.eat("AND") {
            parts.push(self.with()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Expr::And(parts) })
    }

    fn with(&mut self) -> Result<Expr, String> {
        if self.eat("(") {
            let inner = self.or()?;
            return if self.eat(")") { Ok(inner) } else { Err("missing `)`".into()) };
        }
        let id = self.id()?;
        Ok(if self.eat("WITH") { Expr::With(id, self.id()?) } else { Expr::License(id) })
    }

    fn id(&mut self) -> Result<String, String> {
        match self.peek() {
            None => Err("expression ends early".into()),
            Some(t) if ["(", ")"].contains(&t) || ["AND", "OR", "WITH"].iter().any(|op| t.eq_ignore_ascii_case(op)) => {
                Err(format!("expected a licence, found `{t}`"))
            }
            Some(t) => {
                self.at += 1;
                Ok(t.to_owned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(expression: &str) -> bool {
        Expr::parse(expression).unwrap().allowed(&["MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception"])
    }

    #[test]
    fn parses_with_spdx_precedence() {
        let lic = |s: &str| Expr::License(s.into());
        assert_eq!(
            Expr::parse("A OR B AND C WITH E").unwrap(),
            Expr::Or(vec![lic("A"), Expr::And(vec![lic("B"), Expr::With("C".into(), "E".into())])])
        );
        assert_eq!(
            Expr::parse("(A OR B) AND C").unwrap(),
            Expr::And(vec![Expr::Or(vec![lic("A"), lic("B")]), lic("C")])
        );
        assert_eq!(Expr::parse("MIT/Apache-2.0").unwrap(), Expr::parse("MIT OR Apache-2.0").unwrap());
        assert_eq!(Expr::parse("Apache-2.0 / MIT").unwrap(), Expr::parse("Apache-2.0 or MIT").unwrap());
    }

    #[test]
    fn or_needs_one_branch_and_needs_all() {
        assert!(allowed("MIT"));
        assert!(allowed("GPL-3.0-only OR MIT"));
        assert!(allowed("MIT OR GPL-3.0-only"));
        assert!(!allowed("GPL-3.0-only"));
        assert!(allowed("MIT AND Apache-2.0"));
        assert!(!allowed("MIT AND BSD-3-Clause"));
        assert!(allowed("(MIT OR Apache-2.0) AND (Apache-2.0 OR BSD-3-Clause)"));
        assert!(!allowed("(MIT OR Apache-2.0) AND (GPL-2.0-only OR BSD-3-Clause)"));
        assert!(allowed("Unlicense/MIT"));
    }

    #[test]
    fn exceptions_must_be_allowed_as_pairs() {
        assert!(allowed("Apache-2.0 WITH LLVM-exception"));
        assert!(allowed("Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT"));
        assert!(!allowed("MIT WITH LLVM-exception"));
        assert!(!allowed("GPL-2.0-only WITH Classpath-exception-2.0"));
    }

    #[test]
    fn rejects_malformed_expressions() {
        for bad in ["", "MIT OR", "(MIT", "MIT)", "OR MIT", "MIT Apache-2.0", "MIT WITH", "MIT AND AND Apache-2.0"] {
            assert!(Expr::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_policy_lists_are_consistent() {
        for id in ALLOWED {
            assert!(Expr::parse(id).unwrap().allowed(ALLOWED), "{id} does not allow itself");
        }
        for (name, _) in LICENSE_FILE_EXCEPTIONS {
            assert!(!BANNED.iter().any(|(banned, _)| banned == name), "{name} is both banned and excepted");
        }
    }
}
