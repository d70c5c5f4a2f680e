//! The trust boundary's bookkeeping: API tokens (minted, checked,
//! revoked), the bootstrap admin token a new data directory gets, and the
//! audit log of admin and plugin actions. The API asks
//! [`Auth::authenticate`] who a request comes from and checks the scope
//! the route needs; what is kept goes through the store ([`Db`]).
//!
//! Tokens are held in memory (at most [`MAX_TOKENS`]) and in the store; a
//! revocation removes both before it is answered, so it holds from the
//! next request on.

mod scope;
mod token;

pub use scope::{Scope, Scopes};

use crate::names::{self, NameKind};
use crate::store::{AuditEntry, Db, StoreError, StoredToken, now_ms};
use crate::sync::{read, write};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use uuid::Uuid;

/// Most tokens a host keeps.
pub const MAX_TOKENS: usize = 10_000;

/// The operator's tenant, the one admin tokens belong to.
pub const DEFAULT_TENANT: &str = crate::tenant::DEFAULT;

/// The file in the data directory the bootstrap admin token is written to.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Name of the token the first `serve` on a data directory makes.
pub const BOOTSTRAP_NAME: &str = "admin";

/// Why a request was not let in, or a token change refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error(
        "this request needs a token: send `Authorization: Bearer <token>` (the first `taskhost serve` wrote an admin token to DATA/admin.token)"
    )]
    Missing,
    /// The header is not `Bearer <token>` or the token is not one.
    #[error("the Authorization header does not hold a taskhost token (`Bearer th_...`)")]
    Malformed,
    /// No such token, a wrong secret, or a revoked token.
    #[error("the token is not valid (unknown or revoked)")]
    Unknown,
    /// The token's expiry has passed.
    #[error("the token expired at {0}")]
    Expired(String),
    /// The token lacks the scope the request needs.
    #[error("this request needs a token with the `{needed}` scope")]
    Forbidden {
        /// The scope needed.
        needed: Scope,
    },
    /// A request refused whatever its token (e.g. from a browser while
    /// tokens are off).
    #[error("refused: {0}")]
    Refused(String),
    /// A token change that does not fit.
    #[error("{0}")]
    Invalid(String),
    /// No token has this id.
    #[error("no token has id `{0}`")]
    NotFound(String),
    /// [`MAX_TOKENS`] are stored.
    #[error("{MAX_TOKENS} tokens exist already; revoke some first")]
    TooMany,
    /// The operating system's random source failed.
    #[error("cannot draw a random token: {0}")]
    Random(getrandom::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the bootstrap token file failed.
    #[error("cannot write {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Who a request comes from: the token it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Caller {
    /// The token's id.
    pub token_id: String,
    /// The token's name.
    pub name: String,
    /// The tenant it acts in.
    pub tenant: String,
    /// What it may do.
    pub scopes: Scopes,
}

impl Caller {
    /// `Ok` when the caller may do what needs `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), AuthError> {
        if self.scopes.allows(scope) { Ok(()) } else { Err(AuthError::Forbidden { needed: scope }) }
    }
}

/// A token to make.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewToken {
    /// Its name (unique).
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its scopes (at least one).
    pub scopes: Scopes,
    /// When it stops working, if ever (ms since the epoch).
    pub expires_at_ms: Option<u64>,
}

impl NewToken {
    /// A token `name` with `scopes` in the default tenant, never expiring.
    pub fn new(name: impl Into<String>, scopes: Scopes) -> Self {
        Self { name: name.into(), tenant: DEFAULT_TENANT.into(), scopes, expires_at_ms: None }
    }

    /// The same, acting in `tenant`.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// The same, expiring at `at_ms`.
    pub fn expires_at_ms(mut self, at_ms: Option<u64>) -> Self {
        self.expires_at_ms = at_ms;
        self
    }
}

/// A token just made: the whole token string, which is shown this once.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Created {
    /// Its id.
    pub id: String,
    /// The token (`th_<id>_<secret>`).
    pub token: String,
    /// What was stored.
    pub stored: StoredToken,
}

/// Tokens and the audit log of one host.
pub struct Auth {
    store: Db,
    tokens: RwLock<HashMap<String, StoredToken>>,
    /// Serialises token changes, so two creations cannot both take a name.
    changes: tokio::sync::Mutex<()>,
}

impl Auth {
    /// The tokens stored in `store`.
    pub async fn load(store: Db) -> Result<Self, AuthError> {
        let tokens = store.tokens().await?.into_iter().collect();
        Ok(Self { store, tokens: RwLock::new(tokens), changes: tokio::sync::Mutex::new(()) })
    }

    /// Reads the tokens again from the store: those other hosts sharing
    /// it made or revoked (`serve --many-hosts`).
    pub async fn reload(&self) -> Result<(), AuthError> {
        let _change = self.changes.lock().await;
        let tokens = self.store.tokens().await?.into_iter().collect();
        *write(&self.tokens) = tokens;
        Ok(())
    }

    /// On a store with no token yet, makes an admin token and writes it to
    /// `DATA/admin.token` (mode 0600); the file's path when it did. The
    /// file is written (and synced) before the token is stored, so a start
    /// that fails in between leaves no token and the next start makes one.
    pub async fn bootstrap(&self, data_dir: &Path) -> Result<Option<PathBuf>, AuthError> {
        if !read(&self.tokens).is_empty() {
            return Ok(None);
        }
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        let _change = self.changes.lock().await;
        let (minted, stored) = self.prepare(NewToken::new(BOOTSTRAP_NAME, Scopes::of([Scope::Admin])), "serve")?;
        let (file, text) = (path.clone(), format!("{}\n", minted.token));
        crate::sync::blocking(move || crate::files::write_private(&file, text.as_bytes()))
            .await
            .map_err(|source| AuthError::File { path: path.clone(), source })?;
        self.commit(minted, stored).await?;
        Ok(Some(path))
    }

    /// The caller an `Authorization` header value names.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Caller, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let presented = token::parse(token.trim()).ok_or(AuthError::Malformed)?;
        let tokens = read(&self.tokens);
        let stored = tokens.get(presented.id).ok_or(AuthError::Unknown)?;
        if !token::matches(presented.secret, &stored.secret_hash) {
            return Err(AuthError::Unknown);
        }
        if let Some(at) = stored.expires_at_ms.filter(|at| *at <= now_ms()) {
            return Err(AuthError::Expired(crate::wire::time(at)));
        }
        Ok(Caller {
            token_id: presented.id.to_owned(),
            name: stored.name.clone(),
            tenant: stored.tenant.clone(),
            scopes: Scopes::from_bits(stored.scopes),
        })
    }

    /// Makes a token on behalf of `by` (who must be an admin).
    pub async fn create(&self, by: &Caller, new: NewToken) -> Result<Created, AuthError> {
        by.require(Scope::Admin)?;
        self.mint(new, &by.name).await
    }

    async fn mint(&self, new: NewToken, created_by: &str) -> Result<Created, AuthError> {
        let _change = self.changes.lock().await;
        self.forget_expired().await?;
        let (minted, stored) = self.prepare(new, created_by)?;
        self.commit(minted, stored).await
    }

    /// Removes the tokens whose expiry has passed (they let no one in),
    /// so they neither hold their names nor count toward [`MAX_TOKENS`].
    /// The caller holds `changes`.
    async fn forget_expired(&self) -> Result<(), AuthError> {
        let now = now_ms();
        let expired: Vec<String> = read(&self.tokens)
            .iter()
            .filter(|(_, t)| t.expires_at_ms.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.store.remove_token(id.clone()).await?;
            write(&self.tokens).remove(&id);
        }
        Ok(())
    }

    /// Checks a new token and draws its secret; the caller holds `changes`.
    fn prepare(&self, new: NewToken, created_by: &str) -> Result<(token::Minted, StoredToken), AuthError> {
        names::name(NameKind::Token, &new.name).map_err(|e| AuthError::Invalid(e.to_string()))?;
        names::name(NameKind::Tenant, &new.tenant).map_err(|e| AuthError::Invalid(e.to_string()))?;
        // What spans tenants is the operator's: a tenant's token has
        // neither `admin` nor `metrics` (whose series name every tenant).
        for operator in [Scope::Admin, Scope::Metrics] {
            if new.tenant != DEFAULT_TENANT && new.scopes.contains(operator) {
                return Err(AuthError::Invalid(format!(
                    "a token of tenant `{}` cannot have the `{operator}` scope: it spans tenants (only `{DEFAULT_TENANT}` tokens may)",
                    new.tenant
                )));
            }
        }
        if new.scopes.is_empty() {
            return Err(AuthError::Invalid("a token needs at least one scope".into()));
        }
        if new.expires_at_ms.is_some_and(|at| at <= now_ms()) {
            return Err(AuthError::Invalid("the expiry is in the past".into()));
        }
        {
            let tokens = read(&self.tokens);
            if tokens.len() >= MAX_TOKENS {
                return Err(AuthError::TooMany);
            }
            if tokens.values().any(|t| t.name == new.name) {
                return Err(AuthError::Invalid(format!("a token named `{}` exists already", new.name)));
            }
        }
        let minted = token::mint().map_err(AuthError::Random)?;
        let stored = StoredToken::new(
            new.name,
            new.tenant,
            new.scopes.bits(),
            minted.secret_hash,
            now_ms(),
            new.expires_at_ms,
            created_by.to_owned(),
        );
        Ok((minted, stored))
    }

    /// Stores a prepared token and lets it in.
    async fn commit(&self, minted: token::Minted, stored: StoredToken) -> Result<Created, AuthError> {
        self.store.put_token(minted.id.clone(), stored.clone()).await?;
        write(&self.tokens).insert(minted.id.clone(), stored.clone());
        Ok(Created { id: minted.id, token: minted.token, stored })
    }

    /// Every token (without secrets), by name.
    pub fn list(&self) -> Vec<(String, StoredToken)> {
        let mut tokens: Vec<_> = read(&self.tokens).iter().map(|(id, t)| (id.clone(), t.clone())).collect();
        tokens.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        tokens
    }

    /// Revokes token `id`: it is refused from the next request on.
    pub async fn revoke(&self, id: &str) -> Result<StoredToken, AuthError> {
        let _change = self.changes.lock().await;
        let stored = read(&self.tokens).get(id).cloned().ok_or_else(|| AuthError::NotFound(id.to_owned()))?;
        self.store.remove_token(id.to_owned()).await?;
        write(&self.tokens).remove(id);
        Ok(stored)
    }

    /// Appends `action` on `object` by `by` to the audit log.
    pub async fn record(&self, by: &Caller, action: &str, object: &str) -> Result<(), AuthError> {
        let entry =
            AuditEntry::new(by.token_id.clone(), by.name.clone(), by.tenant.clone(), action.into(), object.into());
        Ok(self.store.append_audit(entry).await?)
    }

    /// Up to `limit` audit entries older than `before`, newest first.
    pub async fn audit(&self, before: Option<Uuid>, limit: usize) -> Result<Vec<(Uuid, AuditEntry)>, AuthError> {
        Ok(self.store.audit(before, limit).await?)
    }
}

/// Reads a token from a file written by [`Auth::bootstrap`] (or by hand):
/// its first line, trimmed.
pub fn read_token_file(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    /// An admin caller, as a token would make it.
    fn admin() -> Caller {
        Caller {
            token_id: "x".into(),
            name: "root".into(),
            tenant: DEFAULT_TENANT.into(),
            scopes: Scopes::of([Scope::Admin]),
        }
    }

    async fn auth() -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb"), true).unwrap();
        (dir, Auth::load(Db::Redb(store)).await.unwrap())
    }

    #[tokio::test]
    async fn the_first_start_writes_a_private_admin_token_and_later_ones_do_not() {
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, auth) = auth().await;
        let path = auth.bootstrap(dir.path()).await.unwrap().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let token = read_token_file(&path).unwrap();
        let caller = auth.authenticate(Some(&bearer(&token))).unwrap();
        assert_eq!((caller.name.as_str(), caller.tenant.as_str()), (BOOTSTRAP_NAME, DEFAULT_TENANT));
        assert!(caller.scopes.allows(Scope::Metrics));
        assert_eq!(auth.bootstrap(dir.path()).await.unwrap(), None);
        assert_eq!(read_token_file(&path).unwrap(), token);
    }

    #[tokio::test]
    async fn bad_headers_wrong_secrets_and_revoked_tokens_are_refused() {
        let (_dir, auth) = auth().await;
        let admin = admin();
        let created = auth.create(&admin, NewToken::new("ci", Scopes::of([Scope::Submit]))).await.unwrap();
        let caller = auth.authenticate(Some(&bearer(&created.token))).unwrap();
        assert_eq!(
            caller.require(Scope::Read).unwrap_err().to_string(),
            AuthError::Forbidden { needed: Scope::Read }.to_string()
        );
        assert!(caller.require(Scope::Submit).is_ok());
        assert!(matches!(auth.authenticate(None), Err(AuthError::Missing)));
        for header in ["Basic abc", "Bearer", "Bearer nope", "token th_x"] {
            assert!(matches!(auth.authenticate(Some(header.as_bytes())), Err(AuthError::Malformed)), "{header}");
        }
        let wrong = format!("{}x", created.token);
        assert!(matches!(auth.authenticate(Some(&bearer(&wrong))), Err(AuthError::Unknown)));
        // A non-admin cannot make tokens.
        assert!(matches!(
            auth.create(&caller, NewToken::new("more", Scopes::of([Scope::Admin]))).await,
            Err(AuthError::Forbidden { needed: Scope::Admin })
        ));
        auth.revoke(&created.id).await.unwrap();
        assert!(matches!(auth.authenticate(Some(&bearer(&created.token))), Err(AuthError::Unknown)));
        assert!(matches!(auth.revoke(&created.id).await, Err(AuthError::NotFound(_))));
    }

    #[tokio::test]
    async fn names_scopes_tenants_and_expiry_are_checked() {
        let (_dir, auth) = auth().await;
        let admin = admin();
        let read = Scopes::of([Scope::Read]);
        auth.create(&admin, NewToken::new("a", read)).await.unwrap();
        let refused = [
            NewToken::new("a", read),
            NewToken::new("bad name", read),
            NewToken::new("b", Scopes::default()),
            NewToken::new("b", Scopes::of([Scope::Admin])).tenant("other"),
            NewToken::new("b", Scopes::of([Scope::Read, Scope::Metrics])).tenant("other"),
            NewToken::new("b", read).expires_at_ms(Some(1)),
        ];
        for new in refused {
            assert!(matches!(auth.create(&admin, new.clone()).await, Err(AuthError::Invalid(_))), "{new:?}");
        }
        assert_eq!(auth.list().len(), 1);
        // An expired token is refused with its expiry.
        let soon = auth.create(&admin, NewToken::new("soon", read).expires_at_ms(Some(now_ms() + 50))).await.unwrap();
        assert!(auth.authenticate(Some(&bearer(&soon.token))).is_ok());
        tokio::time::sleep(std::time::Duration::from_millis(80)).await;
        assert!(matches!(auth.authenticate(Some(&bearer(&soon.token))), Err(AuthError::Expired(_))));
        // An expired token holds its name no longer: the next creation
        // removes it.
        assert_eq!(auth.list().len(), 2);
        auth.create(&admin, NewToken::new("soon", read)).await.unwrap();
        assert_eq!(auth.list().iter().filter(|(_, t)| t.name == "soon").count(), 1);
        assert!(matches!(auth.authenticate(Some(&bearer(&soon.token))), Err(AuthError::Unknown)));
    }
}
