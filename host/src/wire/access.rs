//! Tokens and the audit log on the wire: `POST /v1/tokens`
//! ([`TokenRequest`] in, [`TokenCreated`] out), `GET /v1/tokens`
//! ([`TokenList`]), `DELETE /v1/tokens/{id}` ([`TokenRevoked`]) and
//! `GET /v1/audit` ([`AuditPage`]) and `GET /v1/callbacks/secret`
//! ([`CallbackSecret`]).

use crate::store::{AuditEntry, StoredToken};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /v1/tokens` body. Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
#[schema(example = json!({"name": "ci-submitter", "scopes": ["submit", "read"], "expires_at": "2027-06-30T00:00:00Z"}))]
pub struct TokenRequest {
    /// A unique name for people, e.g. `ci-submitter`.
    pub name: String,
    /// Its scopes: `admin`, `plugins`, `submit`, `read`, `metrics`.
    pub scopes: Vec<String>,
    /// Its tenant (default: the tenant the request acts in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When it stops working (RFC 3339); never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

impl TokenRequest {
    /// A request for a token `name` with `scopes`.
    pub fn new(name: impl Into<String>, scopes: Vec<String>) -> Self {
        Self { name: name.into(), scopes, tenant: None, expires_at: None }
    }

    /// The same, in `tenant`, expiring at `expires_at`.
    pub fn with(mut self, tenant: Option<String>, expires_at: Option<String>) -> Self {
        self.tenant = tenant;
        self.expires_at = expires_at;
        self
    }
}

/// A token as listed: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct TokenInfo {
    /// Its id (16 hex digits; the token string starts `th_<id>_`).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// When it was made.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Name of the token that made it (`serve` for the bootstrap token).
    pub created_by: String,
    /// When it stops working, if ever.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

impl TokenInfo {
    /// The listing of stored token `id`.
    pub fn new(id: &str, token: &StoredToken) -> Self {
        Self {
            id: id.to_owned(),
            name: token.name.clone(),
            tenant: token.tenant.clone(),
            scopes: crate::auth::Scopes::from_bits(token.scopes).iter().map(|s| s.as_str().to_owned()).collect(),
            created_at: super::time(token.created_at_ms),
            created_by: token.created_by.clone(),
            expires_at: token.expires_at_ms.map(super::time),
        }
    }
}

/// The answer to `POST /v1/tokens`: the token, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct TokenCreated {
    /// What is stored of it.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The token itself: send it as `Authorization: Bearer <token>`. It
    /// cannot be shown again.
    pub token: String,
}

impl TokenCreated {
    /// Token `id` with its secret string.
    pub fn new(id: &str, stored: &StoredToken, token: String) -> Self {
        Self { info: TokenInfo::new(id, stored), token }
    }
}

/// `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct TokenList {
    /// Every token, by name.
    pub tokens: Vec<TokenInfo>,
}

impl TokenList {
    /// The list of `tokens`.
    pub fn new(tokens: Vec<TokenInfo>) -> Self {
        Self { tokens }
    }
}

/// The answer to `DELETE /v1/tokens/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct TokenRevoked {
    /// The revoked token.
    pub revoked: TokenInfo,
}

impl TokenRevoked {
    /// `token` (id `id`) was revoked.
    pub fn new(id: &str, token: &StoredToken) -> Self {
        Self { revoked: TokenInfo::new(id, token) }
    }
}

/// `GET /v1/callbacks/secret`: the key completion callbacks are signed
/// with (HMAC-SHA256; see docs/security.md "Signed callbacks").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct CallbackSecret {
    /// The tenant whose callbacks it signs.
    pub tenant: String,
    /// The key, hex.
    pub secret: String,
}

impl CallbackSecret {
    /// `tenant`'s key `secret`.
    pub fn new(tenant: impl Into<String>, secret: &[u8]) -> Self {
        Self { tenant: tenant.into(), secret: secret.iter().map(|b| format!("{b:02x}")).collect() }
    }
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct AuditRecord {
    /// Its id (pass as `before` for the next page).
    pub id: Uuid,
    /// When.
    #[schema(format = DateTime)]
    pub at: String,
    /// The acting token's id.
    pub token_id: String,
    /// The acting token's name.
    pub token_name: String,
    /// The tenant it acted in.
    pub tenant: String,
    /// What was done, e.g. `plugin.upload`.
    pub action: String,
    /// What it was done to.
    pub object: String,
}

impl AuditRecord {
    /// Entry `id`.
    pub fn new(id: Uuid, entry: &AuditEntry) -> Self {
        Self {
            id,
            at: super::time(entry.at_ms),
            token_id: entry.token_id.clone(),
            token_name: entry.token_name.clone(),
            tenant: entry.tenant.clone(),
            action: entry.action.clone(),
            object: entry.object.clone(),
        }
    }
}

/// `GET /v1/audit`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditRecord>,
    /// Pass as `before` for older entries; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<Uuid>,
}

impl AuditPage {
    /// A page of `entries`, `full` when more may follow.
    pub fn new(entries: Vec<AuditRecord>, full: bool) -> Self {
        let next_before = if full { entries.last().map(|e| e.id) } else { None };
        Self { entries, next_before }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_created_token_shows_its_secret_once_beside_its_listing() {
        let stored = StoredToken::new("ci".into(), "default".into(), 0b0100, [0; 32], 0, Some(1_000), "admin".into());
        let created = TokenCreated::new("0123456789abcdef", &stored, "th_x".into());
        let value = serde_json::to_value(&created).unwrap();
        assert_eq!(
            value,
            json!({"id": "0123456789abcdef", "name": "ci", "tenant": "default", "scopes": ["submit"],
                   "created_at": "1970-01-01T00:00:00.000Z", "created_by": "admin",
                   "expires_at": "1970-01-01T00:00:01.000Z", "token": "th_x"})
        );
        assert_eq!(serde_json::from_value::<TokenCreated>(value).unwrap(), created);
        // The listing never carries the secret or its hash.
        let listed = serde_json::to_string(&TokenInfo::new("0123456789abcdef", &stored)).unwrap();
        assert!(!listed.contains("th_x") && !listed.contains("hash"), "{listed}");
        assert!(serde_json::from_value::<TokenRequest>(json!({"name": "a", "scopes": [], "scope": 1})).is_err());
    }
}
