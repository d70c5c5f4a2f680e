//! The API's door: every route but `/healthz` names the [`Scope`] it
//! needs ([`guard`]); the bearer token is checked before the handler runs
//! (401 without a valid one, 403 naming the scope it lacks), the caller
//! and the tenant [`Namespace`] it acts in are handed to the handler, and
//! a successful admin or plugin action is appended to the audit log. Also
//! the token, tenant and audit routes.
//!
//! A request acts in its token's tenant; an admin token may act in
//! another by sending [`TENANT_HEADER`].

use super::{ApiError, ApiResult, Path};
use crate::auth::{Auth, AuthError, Caller, NewToken, Scope, Scopes};
use crate::engine::Engine;
use crate::tenant::Namespace;
use crate::wire;
use crate::wire::ErrorCode;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde::Deserialize;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// The header an admin sends to act in another tenant.
pub const TENANT_HEADER: &str = "taskhost-tenant";

/// How the API lets requests in.
pub struct Access {
    auth: Arc<Auth>,
    /// Every request is let in as an admin (`serve --no-auth`).
    open: bool,
}

impl Access {
    /// Requests need a valid token of `auth`.
    pub fn tokens(auth: Arc<Auth>) -> Arc<Self> {
        Arc::new(Self { auth, open: false })
    }

    /// Every request is let in with every scope, as `anonymous`; only for a
    /// host no one else can reach. The audit log still records actions.
    pub fn open(auth: Arc<Auth>) -> Arc<Self> {
        Arc::new(Self { auth, open: true })
    }

    /// Open access over `engine`'s store, for the API's unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(engine: &Engine) -> Arc<Self> {
        // A redb store's reads answer at once: nothing here waits.
        let auth = futures::executor::block_on(Auth::load(engine.store())).expect("the tokens load");
        Self::open(Arc::new(auth))
    }

    fn caller(&self, headers: &axum::http::HeaderMap) -> Result<Caller, AuthError> {
        if self.open {
            // Without tokens only a program on this machine may call: a
            // browser's request (it sends `Origin`) or one for another name
            // (DNS rebinding) would let any web page drive the host.
            if headers.contains_key(header::ORIGIN) {
                return Err(AuthError::Refused(
                    "a request with an Origin header (from a browser) under --no-auth".into(),
                ));
            }
            // (A request without `Host` is not a browser's.)
            let host = headers.get(header::HOST).map(|h| h.to_str().unwrap_or_default());
            if let Some(host) = host.filter(|host| !crate::egress::is_loopback_host(host)) {
                return Err(AuthError::Refused(format!(
                    "a request for host `{host}` under --no-auth (only loopback names)"
                )));
            }
            return Ok(Caller {
                token_id: "-".into(),
                name: "anonymous".into(),
                tenant: crate::auth::DEFAULT_TENANT.into(),
                scopes: Scopes::of([Scope::Admin]),
            });
        }
        self.auth.authenticate(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
    }
}

/// What a route needs: a scope, and the audit action its success records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Need {
    scope: Scope,
    action: Option<&'static str>,
}

/// A route that needs `scope` and records nothing.
pub(crate) fn needs(scope: Scope) -> Need {
    Need { scope, action: None }
}

/// A route that needs `scope` and, when it succeeds, appends `action` on
/// its path to the audit log.
pub(crate) fn audited(scope: Scope, action: &'static str) -> Need {
    Need { scope, action: Some(action) }
}

/// `route` behind the door: only callers with `need`'s scope reach it.
pub(crate) fn guard(
    access: &Arc<Access>,
    engine: &Engine,
    need: Need,
    route: MethodRouter<Engine>,
) -> MethodRouter<Engine> {
    route.route_layer(axum::middleware::from_fn_with_state((access.clone(), engine.clone(), need), check))
}

/// The tenant a request acts in: its token's, or (for an admin) the one
/// [`TENANT_HEADER`] names.
fn namespace(engine: &Engine, caller: &Caller, headers: &axum::http::HeaderMap) -> Result<Namespace, ApiError> {
    let Some(value) = headers.get(TENANT_HEADER) else {
        return Ok(Namespace::new(caller.tenant.clone()));
    };
    let tenant = value.to_str().map_err(|_| ApiError::invalid(format!("the {TENANT_HEADER} header is not text")))?;
    if tenant == caller.tenant {
        return Ok(Namespace::new(tenant));
    }
    caller.require(Scope::Admin).map_err(|_| {
        ApiError::new(ErrorCode::Forbidden, format!("only an admin token may act in another tenant ({TENANT_HEADER})"))
    })?;
    crate::names::name(crate::names::NameKind::Tenant, tenant)?;
    if !engine.tenant_exists(tenant) {
        return Err(crate::engine::EngineError::UnknownTenant(tenant.to_owned()).into());
    }
    Ok(Namespace::new(tenant))
}

async fn check(
    State((access, engine, need)): State<(Arc<Access>, Engine, Need)>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match access.caller(request.headers()).and_then(|c| c.require(need.scope).map(|()| c)) {
        Ok(caller) => caller,
        Err(e) => {
            let mut refused = ApiError::from(e).into_response();
            if refused.status() == StatusCode::UNAUTHORIZED {
                refused.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            }
            return refused;
        }
    };
    let ns = match namespace(&engine, &caller, request.headers()) {
        Ok(ns) => ns,
        Err(e) => return e.into_response(),
    };
    // The audit log names the tenant acted in.
    let caller = Caller { tenant: ns.tenant().to_owned(), ..caller };
    let object = request.uri().path_and_query().map_or_else(|| request.uri().path().to_owned(), |p| p.to_string());
    request.extensions_mut().insert(caller.clone());
    request.extensions_mut().insert(ns);
    let Some(action) = need.action else {
        return next.run(request).await;
    };
    // An audited action runs to its end on its own task, with its record:
    // a client that goes away mid-request must not leave an action done
    // (a compile that goes live, a version deleted) and unrecorded.
    let auth = access.auth.clone();
    let done = tokio::spawn(async move {
        let response = next.run(request).await;
        if response.status().is_success()
            && let Err(e) = auth.record(&caller, action, &object).await
        {
            // The action is done; the log must say its record is missing.
            tracing::error!(action, object, token = caller.name, error = %e, "cannot append to the audit log");
        }
        response
    });
    match done.await {
        Ok(response) => response,
        Err(e) => ApiError::new(ErrorCode::InternalError, format!("the request failed: {e}")).into_response(),
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match &e {
            AuthError::Missing | AuthError::Malformed | AuthError::Unknown | AuthError::Expired(_) => {
                ErrorCode::Unauthorized
            }
            AuthError::Forbidden { .. } | AuthError::Refused(_) => ErrorCode::Forbidden,
            AuthError::Invalid(_) => ErrorCode::InvalidRequest,
            AuthError::NotFound(_) => ErrorCode::NotFound,
            AuthError::TooMany => ErrorCode::LimitReached,
            AuthError::Store(_) => {
                let AuthError::Store(store) = e else { unreachable!() };
                return crate::engine::EngineError::Store(store).into();
            }
            _ => ErrorCode::InternalError,
        };
        Self::new(code, e.to_string())
    }
}

/// Makes a token, of the tenant the body names (default: the tenant the
/// request acts in).
#[utoipa::path(
    post,
    path = "/v1/tokens",
    operation_id = "create_token",
    tag = "access",
    request_body(content = crate::wire::TokenRequest),
    responses(
        super::openapi::Refused,
        super::openapi::BodyRefused,
        (status = 201, description = "The token; its secret is shown this once", body = crate::wire::TokenCreated),
        (status = 400, description = "A bad or taken name, a bad scope, tenant or expiry (`invalid_request`)", body = crate::wire::ErrorBody),
        (status = 409, description = "The token limit is reached (`limit_reached`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["admin"]))
)]
pub(crate) async fn create_token(
    State(engine): State<Engine>,
    Extension(access): Extension<Arc<Access>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<wire::TokenRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    let tenant = body.tenant.clone().unwrap_or_else(|| caller.tenant.clone());
    if !engine.tenant_exists(&tenant) {
        return Err(ApiError::invalid(format!(
            "tenant `{}` does not exist; make it first (PUT /v1/tenants/NAME, `taskhost tenants put NAME`)",
            tenant.escape_debug()
        )));
    }
    let scopes = Scopes::parse(body.scopes.iter().map(String::as_str)).map_err(ApiError::invalid)?;
    let expires_at_ms = body
        .expires_at
        .map(|text| {
            humantime::parse_rfc3339_weak(&text)
                .map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64)
                .map_err(|e| ApiError::invalid(format!("expires_at `{text}` is not an RFC 3339 time ({e})")))
        })
        .transpose()?;
    let new = NewToken::new(body.name, scopes).expires_at_ms(expires_at_ms).tenant(tenant);
    // On its own task, so a client that goes away cannot leave a token
    // stored but not recorded.
    let created = tokio::spawn(async move {
        let created = access.auth.create(&caller, new).await?;
        let object = format!("token {} ({})", created.id, created.stored.name);
        if let Err(e) = access.auth.record(&caller, "token.create", &object).await {
            tracing::error!(object, token = caller.name, error = %e, "cannot append to the audit log");
        }
        Ok::<_, AuthError>(created)
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::InternalError, format!("the request failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(wire::TokenCreated::new(&created.id, &created.stored, created.token)))
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/tokens",
    operation_id = "list_tokens",
    tag = "access",
    responses(
        super::openapi::Refused,
        (status = 200, description = "Every token (never its secret)", body = crate::wire::TokenList)
    ),
    security(("token" = ["admin"]))
)]
pub(crate) async fn list_tokens(Extension(access): Extension<Arc<Access>>) -> Json<wire::TokenList> {
    let tokens = access.auth.list().iter().map(|(id, t)| wire::TokenInfo::new(id, t)).collect();
    Json(wire::TokenList::new(tokens))
}

#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    operation_id = "revoke_token",
    tag = "access",
    params(("id" = String, Path, description = "The token id")),
    responses(
        super::openapi::Refused,
        (status = 200, description = "The token is revoked from the next request on", body = crate::wire::TokenRevoked),
        (status = 404, description = "No such token (`not_found`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["admin"]))
)]
pub(crate) async fn revoke_token(
    Extension(access): Extension<Arc<Access>>,
    Path(id): Path<String>,
) -> ApiResult<Json<wire::TokenRevoked>> {
    let revoked = access.auth.revoke(&id).await?;
    Ok(Json(wire::TokenRevoked::new(&id, &revoked)))
}

#[utoipa::path(
    get,
    path = "/v1/callbacks/secret",
    operation_id = "callback_secret",
    tag = "access",
    responses(
        super::openapi::Refused,
        (status = 200, description = "The key the tenant's callbacks are signed with", body = crate::wire::CallbackSecret)
    ),
    security(("token" = ["submit"]))
)]
pub(crate) async fn callback_secret(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
) -> ApiResult<Json<wire::CallbackSecret>> {
    Ok(Json(wire::CallbackSecret::new(ns.tenant(), &engine.callback_secret(ns.tenant()))))
}

#[utoipa::path(
    get,
    path = "/v1/tenants",
    operation_id = "list_tenants",
    tag = "access",
    responses(
        super::openapi::Refused,
        (status = 200, description = "Every tenant with its quotas", body = crate::wire::TenantList)
    ),
    security(("token" = ["admin"]))
)]
pub(crate) async fn list_tenants(State(engine): State<Engine>) -> Json<wire::TenantList> {
    let tenants = engine.tenants().iter().map(|(name, record)| wire::Tenant::new(name, record, None)).collect();
    Json(wire::TenantList::new(tenants))
}

/// A tenant with its usage: an admin reads any, a tenant's token its own
/// (another tenant's name answers as one that does not exist).
#[utoipa::path(
    get,
    path = "/v1/tenants/{name}",
    operation_id = "get_tenant",
    tag = "access",
    params(("name" = String, Path, description = "The tenant's name")),
    responses(
        super::openapi::Refused,
        (status = 200, description = "The tenant with its quotas and usage (a tenant's token reads its own)", body = crate::wire::Tenant),
        (status = 404, description = "No such tenant (`not_found`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["read"]))
)]
pub(crate) async fn get_tenant(
    State(engine): State<Engine>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<wire::Tenant>> {
    if name != caller.tenant && caller.require(Scope::Admin).is_err() {
        return Err(crate::engine::EngineError::UnknownTenant(name).into());
    }
    let (record, usage) = engine.tenant(&name)?;
    Ok(Json(wire::Tenant::new(name, &record, Some(&usage))))
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{name}",
    operation_id = "put_tenant",
    tag = "access",
    params(("name" = String, Path, description = "The tenant's name")),
    request_body(content = crate::wire::TenantChange),
    responses(
        super::openapi::Refused,
        super::openapi::BodyRefused,
        (status = 201, description = "A new tenant", body = crate::wire::Tenant),
        (status = 200, description = "The tenant's quotas, changed", body = crate::wire::Tenant),
        (status = 400, description = "A bad name or quota (`invalid_request`)", body = crate::wire::ErrorBody),
        (status = 409, description = "The configuration file manages the tenant (`conflict`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["admin"]))
)]
pub(crate) async fn put_tenant(
    State(engine): State<Engine>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<wire::TenantChange>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    engine.check_not_file_managed(Some(&name), None)?;
    let created = engine.put_tenant(&name, (&body.quotas).into(), &caller.name).await?;
    let (record, usage) = engine.tenant(&name)?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(wire::Tenant::new(name, &record, Some(&usage)))).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// The `next_before` of the previous page.
    before: Option<String>,
    /// Records per page, 1-1000 (default 100).
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "audit_log",
    tag = "access",
    params(AuditQuery),
    responses(
        super::openapi::Refused,
        (status = 200, description = "Admin and plugin actions, newest first", body = crate::wire::AuditPage),
        (status = 400, description = "A bad limit or cursor (`invalid_request`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["admin"]))
)]
pub(crate) async fn audit(
    Extension(access): Extension<Arc<Access>>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<wire::AuditPage>> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1-1000"));
    }
    let before = query.before.as_deref().map(super::parse_id).transpose()?;
    let entries = access.auth.audit(before, limit).await?;
    let full = entries.len() == limit;
    let records = entries.iter().map(|(id, e)| wire::AuditRecord::new(*id, e)).collect();
    Ok(Json(wire::AuditPage::new(records, full)))
}
