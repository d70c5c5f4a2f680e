//! The HTTP API (`taskhost serve`): JSON in and out, every body one of the
//! typed [`crate::wire`] structs, every error in one shape. Handlers only
//! translate; the engine decides. Every route but `/healthz` needs a
//! token with a named scope ([`Access`]). [`serve`] serves it under the bounds of
//! a [`ServeConfig`].

mod access;
mod console;
mod error;
mod events;
mod flows;
mod health;
mod metrics;
mod models;
mod openapi;
#[cfg(test)]
mod proptests;
mod reference;
mod serve;
mod standby;

pub use access::{Access, TENANT_HEADER};
pub(crate) use error::{ApiError, Path};
pub use openapi::openapi_json;
pub use serve::{ServeConfig, serve, serve_moving};
pub use standby::{standby_router, standing_by};

use crate::auth::Scope;
use crate::engine::{Engine, ListFilter, NewTask};
use crate::names::NameKind;
use crate::registry::{MAX_PLUGIN_BYTES, Manifest, RegistryError, VersionState};
use crate::store::{TaskRecord, TaskState};
use crate::tenant::Namespace;
use crate::wire;
use crate::wire::ErrorCode;
use access::{audited, guard, needs};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use uuid::Uuid;

/// Largest task-submission body (one task).
pub const MAX_TASK_BODY: usize = 8 << 20;
/// Largest batch-submission body.
pub const MAX_BATCH_BODY: usize = 64 << 20;
/// Most tasks in one batch.
pub const MAX_BATCH: usize = 10_000;

/// The router for an engine, behind `access`: every route but `/healthz`
/// needs a token with the scope it names (see [`Access`] and docs/security.md),
/// and works in the tenant the token acts in.
pub fn router(engine: Engine, access: Arc<Access>) -> Router {
    use Scope::{Admin, Metrics, Plugins, Read, Submit};
    let g = |need, route| guard(&access, &engine, need, route);
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::reference))
        .route("/metrics", g(needs(Metrics), get(metrics::metrics)))
        .route("/v1/stats/recent", g(needs(Metrics), get(recent_stats)))
        .route("/v1/hosts", g(needs(Metrics), get(list_hosts)))
        .route("/v1/plugins", g(needs(Read), get(list_plugins)))
        .route(
            "/v1/plugins/{name}",
            g(audited(Plugins, "plugin.upload"), post(add_plugin)).merge(g(needs(Read), get(get_plugin))),
        )
        .route("/v1/plugins/{name}/latest", g(audited(Plugins, "plugin.rollback"), put(set_latest)))
        .route("/v1/plugins/{name}/manifest", g(audited(Admin, "plugin.manifest"), put(put_manifest)))
        .route("/v1/plugins/{name}/versions/{version}", g(audited(Plugins, "plugin.delete"), delete(delete_version)))
        .route(
            "/v1/tasks",
            g(needs(Submit), post(submit))
                .merge(g(needs(Read), get(list_tasks)))
                .layer(DefaultBodyLimit::max(MAX_TASK_BODY)),
        )
        .route("/v1/tasks:batch", g(needs(Submit), post(submit_batch)).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)))
        .route("/v1/tasks/{id}", g(needs(Read), get(get_task)))
        .route("/v1/tasks/{id}/history", g(needs(Read), get(history)))
        .route("/v1/tasks/{id}/input", g(needs(Read), get(input)))
        .route("/v1/tasks/{id}/logs", g(needs(Read), get(logs)))
        .route("/v1/tasks/{id}/cancel", g(needs(Submit), post(cancel)))
        .route("/v1/tasks/{id}/retry", g(needs(Submit), post(resubmit)))
        .route("/v1/events", g(needs(Read), get(events::events)))
        .route(
            "/v1/flows",
            g(needs(Submit), post(flows::submit))
                .layer(DefaultBodyLimit::max(MAX_TASK_BODY))
                .merge(g(needs(Read), get(flows::list))),
        )
        .route("/v1/flows/{id}", g(needs(Read), get(flows::get)))
        .route("/v1/flows/{id}/cancel", g(needs(Submit), post(flows::cancel)))
        .route("/v1/models", g(needs(Read), get(models::list)).merge(g(audited(Admin, "model.put"), post(models::put))))
        .route(
            "/v1/models/{name}",
            g(needs(Read), get(models::get)).merge(g(audited(Admin, "model.delete"), delete(models::remove))),
        )
        .route("/v1/queues", g(needs(Read), get(list_queues)))
        .route("/v1/queues/{name}", g(audited(Admin, "queue.set"), put(set_queue)))
        .route(
            "/v1/tokens",
            g(needs(Admin), post(access::create_token)).merge(g(needs(Admin), get(access::list_tokens))),
        )
        .route("/v1/tokens/{id}", g(audited(Admin, "token.revoke"), delete(access::revoke_token)))
        .route("/v1/tenants", g(needs(Admin), get(access::list_tenants)))
        .route(
            "/v1/tenants/{name}",
            g(needs(Read), get(access::get_tenant)).merge(g(audited(Admin, "tenant.put"), put(access::put_tenant))),
        )
        .route("/v1/config", g(needs(Admin), get(config)))
        .route("/v1/audit", g(needs(Admin), get(access::audit)))
        .route("/v1/callbacks/secret", g(audited(Submit, "callbacks.secret"), get(access::callback_secret)))
        .merge(console::router())
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint; see README.md") })
        .layer(axum::middleware::from_fn_with_state(engine.clone(), health::refuse_writes_while_unwritable))
        .layer(Extension(access.clone()))
        .with_state(engine.clone())
}

/// A router with `/metrics` alone, open to anyone who can reach it (for
/// `serve --metrics-listen`, an address only the scraper reaches).
pub fn metrics_router(engine: Engine) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "only /metrics is served here") })
        .with_state(engine)
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// The recent throughput and latency, host-wide (as `/metrics` is).
#[utoipa::path(
    get,
    path = "/v1/stats/recent",
    operation_id = "recent_stats",
    tag = "host",
    responses(
        openapi::Refused,
        (status = 200, description = "Throughput and latency over the last minutes, host-wide", body = wire::RecentStats)
    ),
    security(("token" = ["metrics"]))
)]
async fn recent_stats(State(engine): State<Engine>) -> Json<wire::RecentStats> {
    Json(engine.recent_stats())
}

/// The hosts serving the store, with their models, load and heartbeat
/// age (on redb, this host alone).
#[utoipa::path(
    get,
    path = "/v1/hosts",
    operation_id = "list_hosts",
    tag = "host",
    responses(
        openapi::Refused,
        (status = 200, description = "The hosts serving the store, by id", body = wire::HostList)
    ),
    security(("token" = ["metrics"]))
)]
async fn list_hosts(State(engine): State<Engine>) -> ApiResult<Json<wire::HostList>> {
    Ok(Json(engine.hosts().await?))
}

/// The key of plugin `name` in `ns`, or the API's refusal of the name.
fn plugin_key(ns: &Namespace, name: &str) -> Result<String, ApiError> {
    Ok(ns.key(NameKind::Plugin, name)?)
}

/// Task `id`'s record, when it is one of `ns`'s tasks: another tenant's
/// task answers exactly as one that does not exist.
async fn owned(engine: &Engine, ns: &Namespace, id: Uuid) -> Result<TaskRecord, crate::engine::EngineError> {
    let record = engine.get(id).await?;
    if ns.owns(&record.plugin) { Ok(record) } else { Err(crate::engine::EngineError::NotFound(id)) }
}

#[utoipa::path(
    get,
    path = "/v1/plugins",
    operation_id = "list_plugins",
    tag = "plugins",
    responses(
        openapi::Refused,
        (status = 200, description = "The tenant's plugins with their latest versions", body = wire::PluginList)
    ),
    security(("token" = ["read"]))
)]
async fn list_plugins(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
) -> ApiResult<Json<wire::PluginList>> {
    let plugins = engine
        .plugins()
        .into_iter()
        .filter_map(|key| {
            let name = ns.local(&key)?;
            engine.plugin_detail(&key).ok().map(|detail| wire::PluginSummary::new(name, &detail))
        })
        .collect();
    Ok(Json(wire::PluginList::new(plugins)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    /// The version to create (default: the next number).
    version: Option<String>,
    /// Answer once compiled (default `true`); `false` answers 202 at once.
    wait: Option<bool>,
    /// The body is a script in this language (`js` or `python`), not a component.
    lang: Option<String>,
}

/// An upload refused for its size, in the shape a body-limit refusal has.
fn too_large(e: RegistryError) -> ApiError {
    match e {
        RegistryError::TooLarge { .. } => {
            ApiError::new(ErrorCode::PayloadTooLarge, format!("the body is too large: {e}"))
        }
        other => crate::engine::EngineError::from(other).into(),
    }
}

/// Uploads a component, or a script with `?lang=js` or `?lang=python`. A full compile queue is refused (503,
/// `Retry-After`) before the body is read; the body then goes to a staging
/// file as it arrives, so an upload waiting to compile is not in memory.
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}",
    operation_id = "upload_plugin",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name"), UploadQuery),
    request_body(
        description = "The component (`.wasm`) bytes, or a script's source (UTF-8) with `?lang=`; any content type",
        content((openapi::Bytes = "application/wasm"), (String = "text/plain"))
    ),
    responses(
        openapi::Refused,
        (status = 201, description = "A new version, compiled", body = wire::PluginAdded),
        (status = 202, description = "A new version, still compiling (`wait=false`)", body = wire::PluginAdded),
        (status = 200, description = "The same bytes as an existing version: nothing new", body = wire::PluginAdded),
        (status = 400, description = "A bad name, version or `lang`, or an empty body (`invalid_request`)", body = crate::wire::ErrorBody),
        (status = 409, description = "The version exists with other bytes (`conflict`), or the plugin limit is reached (`limit_reached`)", body = crate::wire::ErrorBody),
        (status = 413, description = "Past the upload size limit (`payload_too_large`)", body = crate::wire::ErrorBody),
        (status = 422, description = "Not a valid task component or script (`invalid_plugin`, `compile_timeout`)", body = crate::wire::ErrorBody),
        (status = 429, description = "A tenant quota is used up (`quota_exceeded`)", body = crate::wire::ErrorBody, headers(("Retry-After" = u32, description = "Seconds until the quota allows it")))
    ),
    security(("token" = ["plugins"]))
)]
async fn add_plugin(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(name): Path<String>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    use futures::StreamExt as _;
    let Query(query) = query?;
    let script = query
        .lang
        .as_deref()
        .map(str::parse::<crate::sandbox::Language>)
        .transpose()
        .map_err(|e| ApiError::invalid(format!("lang: {e}")))?;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(size) = declared.filter(|size| *size > MAX_PLUGIN_BYTES as u64) {
        return Err(too_large(RegistryError::TooLarge { size }));
    }
    let key = plugin_key(&ns, &name)?;
    let (slot, mut staging) = engine.begin_plugin_upload(&key, query.version.as_deref()).await?;
    let mut body = body.into_data_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(ErrorCode::BadBody, format!("reading the body: {e}")))?;
        staging.write(&chunk).await.map_err(too_large)?;
    }
    let staged = staging.finish().await.map_err(too_large)?;
    if staged.size == 0 {
        return Err(ApiError::invalid(
            "the body is empty: send the component (.wasm) bytes, or a script with `?lang=`",
        ));
    }
    let wait = query.wait.unwrap_or(true);
    let (status, created) = engine.add_staged_plugin(slot, &key, staged, query.version, wait, script).await?;
    let code = match (created, &status.state) {
        (false, _) => StatusCode::OK,
        (true, VersionState::Compiling) => StatusCode::ACCEPTED,
        (true, _) => StatusCode::CREATED,
    };
    Ok((code, Json(wire::PluginAdded::new(&name, &status, created))).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/plugins/{name}",
    operation_id = "get_plugin",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        openapi::Refused,
        (status = 200, description = "The plugin's versions, manifest and run statistics", body = wire::Plugin),
        (status = 404, description = "No such plugin (`unknown_plugin`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["read"]))
)]
async fn get_plugin(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(name): Path<String>,
) -> ApiResult<Json<wire::Plugin>> {
    let key = plugin_key(&ns, &name)?;
    let wanted = key.clone();
    let (detail, counts) = read(&engine, async move |engine| engine.plugin(&wanted).await).await?;
    Ok(Json(wire::Plugin::new(&name, &detail, &counts, |version| engine.plugin_runs(&key, version))))
}

#[utoipa::path(
    put,
    path = "/v1/plugins/{name}/latest",
    operation_id = "set_latest_version",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    request_body(content = wire::LatestChange),
    responses(
        openapi::Refused,
        openapi::BodyRefused,
        (status = 200, description = "The version new tasks now run", body = wire::PluginLatest),
        (status = 400, description = "A malformed body (`invalid_request`, `malformed_json`)", body = crate::wire::ErrorBody),
        (status = 404, description = "No such plugin or version (`unknown_plugin`, `not_found`)", body = crate::wire::ErrorBody),
        (status = 409, description = "The version cannot be made latest (`conflict`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["plugins"]))
)]
async fn set_latest(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(name): Path<String>,
    body: Result<Json<wire::LatestChange>, JsonRejection>,
) -> ApiResult<Json<wire::PluginLatest>> {
    let Json(body) = body?;
    engine.set_latest(&plugin_key(&ns, &name)?, &body.version).await?;
    Ok(Json(wire::PluginLatest::new(name, body.version)))
}

#[utoipa::path(
    delete,
    path = "/v1/plugins/{name}/versions/{version}",
    operation_id = "delete_plugin_version",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name"), ("version" = String, Path, description = "The version to delete")),
    responses(
        openapi::Refused,
        (status = 200, description = "The version is deleted", body = wire::VersionDeleted),
        (status = 404, description = "No such plugin or version (`unknown_plugin`, `not_found`)", body = crate::wire::ErrorBody),
        (status = 409, description = "The version is the latest, or tasks still pin it (`conflict`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["plugins"]))
)]
async fn delete_version(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<wire::VersionDeleted>> {
    engine.delete_plugin_version(&plugin_key(&ns, &name)?, &version).await?;
    Ok(Json(wire::VersionDeleted::new(name, version)))
}

#[utoipa::path(
    put,
    path = "/v1/plugins/{name}/manifest",
    operation_id = "set_manifest",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    request_body(content = String, description = "The capability manifest (TOML): grants, limits, egress", content_type = "application/toml"),
    responses(
        openapi::Refused,
        (status = 200, description = "The manifest is in force", body = wire::ManifestSet),
        (status = 400, description = "Not UTF-8 TOML, or a manifest that does not fit (`invalid_request`)", body = crate::wire::ErrorBody),
        (status = 409, description = "The plugin limit is reached (`limit_reached`)", body = crate::wire::ErrorBody),
        (status = 413, description = "The manifest is past 2 MiB (`payload_too_large`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["admin"]))
)]
async fn put_manifest(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(name): Path<String>,
    body: Result<String, axum::extract::rejection::StringRejection>,
) -> ApiResult<Json<wire::ManifestSet>> {
    let text = body.map_err(|e| ApiError::invalid(format!("the manifest must be UTF-8 TOML: {}", e.body_text())))?;
    let manifest = if text.trim().is_empty() { None } else { Some(Manifest::parse(&text).map_err(ApiError::invalid)?) };
    engine.set_manifest(&plugin_key(&ns, &name)?, manifest).await?;
    Ok(Json(wire::ManifestSet::new(name, text)))
}

/// A submission ([`wire::TaskSubmission`]) checked and turned into the
/// engine's [`NewTask`], its names made `ns`'s keys.
fn new_task(body: wire::TaskSubmission, ns: &Namespace) -> Result<NewTask, ApiError> {
    let given = [body.input.is_some(), body.input_base64.is_some(), body.input_url.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ApiError::invalid("give at most one of input, input_base64 and input_url"));
    }
    let input = match (body.input, body.input_base64) {
        (Some(_), Some(_)) => unreachable!("refused above"),
        (Some(value), None) => serde_json::to_vec(&value).expect("JSON values serialise"),
        (None, Some(b64)) => {
            BASE64.decode(b64.as_bytes()).map_err(|e| ApiError::invalid(format!("input_base64 is not base64: {e}")))?
        }
        (None, None) => Vec::new(),
    };
    let priority = body
        .priority
        .map(|p| {
            u8::try_from(p).ok().filter(|p| *p <= 9).ok_or_else(|| {
                ApiError::invalid(format!("priority {p} is out of range: expected 0-9 (higher runs first)"))
            })
        })
        .transpose()?;
    let max_attempts = body
        .max_attempts
        .map(|m| {
            u32::try_from(m)
                .ok()
                .filter(|m| (1..=100).contains(m))
                .ok_or_else(|| ApiError::invalid(format!("max_attempts {m} is out of range: expected 1-100")))
        })
        .transpose()?;
    if body.timeout_ms == Some(0) {
        return Err(ApiError::invalid("timeout_ms must be greater than zero"));
    }
    let run_at_ms = body
        .run_at
        .map(|text| {
            humantime::parse_rfc3339_weak(&text)
                .map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64)
                .map_err(|e| {
                    ApiError::invalid(format!(
                        "run_at `{text}` is not an RFC 3339 time ({e}), e.g. 2026-01-31T12:00:00Z"
                    ))
                })
        })
        .transpose()?;
    if body.idempotency_key.as_deref().is_some_and(|k| k.contains('\0')) {
        return Err(ApiError::invalid("idempotency_key must not hold NUL"));
    }
    let (plugin, script) = match (body.plugin, body.script) {
        (Some(plugin), None) => (ns.plugin_ref(&plugin)?, None),
        (None, Some(script)) => {
            let language: crate::sandbox::Language = script.lang.parse().map_err(|_| {
                ApiError::invalid(format!(
                    "script.lang `{}` is not a script language: expected js or python",
                    script.lang
                ))
            })?;
            let plugin = ns.key(NameKind::Plugin, crate::engine::ad_hoc_plugin(language))?;
            (plugin, Some(crate::engine::AdHocScript::new(language, script.source)))
        }
        (Some(_), Some(_)) => return Err(ApiError::invalid("give either a plugin or a script, not both")),
        (None, None) => return Err(ApiError::invalid("give a plugin (or an ad-hoc script)")),
    };
    Ok(NewTask {
        plugin,
        script,
        input,
        queue: Some(ns.key(NameKind::Queue, body.queue.as_deref().unwrap_or("default"))?),
        priority,
        idempotency_key: body.idempotency_key.map(|key| ns.idempotency_key(&key)),
        max_attempts,
        timeout_ms: body.timeout_ms,
        fuel: body.fuel,
        memory_bytes: body.memory_bytes,
        delay_ms: body.delay_ms,
        run_at_ms,
        callback_url: body.callback_url,
        input_url: body.input_url,
        parent_id: None,
        log_keep_bytes: body.log_keep_bytes,
        trace: None,
    })
}

/// The caller's W3C `traceparent`, which the submission's span continues.
/// A malformed one is ignored (a new trace starts), as the W3C
/// recommendation asks.
pub(crate) fn trace_parent(headers: &axum::http::HeaderMap) -> Option<crate::trace::TraceParent> {
    let value = headers.get("traceparent")?;
    match value.to_str().map_err(|_| crate::trace::ParentError::Malformed).and_then(crate::trace::TraceParent::parse) {
        Ok(parent) => Some(parent),
        Err(error) => {
            tracing::debug!(%error, "ignoring the request's traceparent");
            None
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/tasks",
    operation_id = "submit_task",
    tag = "tasks",
    params(("traceparent" = Option<String>, Header, description = "A W3C trace context the submission continues")),
    request_body(content = wire::TaskSubmission),
    responses(
        openapi::Refused,
        openapi::BodyRefused,
        (status = 201, description = "The task is accepted", body = wire::Submitted),
        (status = 200, description = "A task with this idempotency key exists: that task", body = wire::Submitted),
        (status = 400, description = "A field out of range or a malformed body (`invalid_request`, `malformed_json`)", body = crate::wire::ErrorBody),
        (status = 403, description = "An ad-hoc script in a queue that takes none (`forbidden`)", body = crate::wire::ErrorBody),
        (status = 404, description = "No such plugin (`unknown_plugin`)", body = crate::wire::ErrorBody),
        (status = 409, description = "A queue limit is reached, or the tenant's ad-hoc scripts are all held (`limit_reached`)", body = crate::wire::ErrorBody),
        (status = 413, description = "The body is past 8 MiB (`payload_too_large`)", body = crate::wire::ErrorBody),
        (status = 415, description = "Not `application/json` (`unsupported_media_type`)", body = crate::wire::ErrorBody),
        (status = 429, description = "A tenant quota is used up (`quota_exceeded`, with `Retry-After`)", body = crate::wire::ErrorBody, headers(("Retry-After" = u32, description = "Seconds until the quota allows it")))
    ),
    security(("token" = ["submit"]))
)]
async fn submit(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    headers: axum::http::HeaderMap,
    body: Result<Json<wire::TaskSubmission>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    let task = NewTask { trace: trace_parent(&headers), ..new_task(body, &ns)? };
    let submitted = engine.submit(task).await?;
    let status = if submitted.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(wire::Submitted::from(&submitted))).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/tasks:batch",
    operation_id = "submit_batch",
    tag = "tasks",
    request_body(content = wire::BatchSubmission),
    responses(
        openapi::Refused,
        openapi::BodyRefused,
        (status = 200, description = "One answer per item, in order: accepted or refused with its error", body = wire::BatchAnswer),
        (status = 400, description = "A malformed body or more than 10,000 tasks (`invalid_request`, `malformed_json`)", body = crate::wire::ErrorBody),
        (status = 413, description = "The body is past 64 MiB (`payload_too_large`)", body = crate::wire::ErrorBody),
        (status = 429, description = "A tenant quota is used up (`quota_exceeded`)", body = crate::wire::ErrorBody, headers(("Retry-After" = u32, description = "Seconds until the quota allows it")))
    ),
    security(("token" = ["submit"]))
)]
async fn submit_batch(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    headers: axum::http::HeaderMap,
    body: Result<Json<wire::BatchSubmission>, JsonRejection>,
) -> ApiResult<Json<wire::BatchAnswer>> {
    let Json(body) = body?;
    let trace = trace_parent(&headers);
    if body.tasks.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!("{} tasks in one batch; at most {MAX_BATCH}", body.tasks.len())));
    }
    // Each item is validated and answered on its own.
    let mut slots: Vec<Option<wire::BatchItem>> = vec![None; body.tasks.len()];
    let mut tasks = Vec::new();
    for (i, item) in body.tasks.into_iter().enumerate() {
        let parsed = serde_json::from_value::<wire::TaskSubmission>(item)
            .map_err(|e| ApiError::invalid(format!("the task does not fit: {e}")))
            .and_then(|task| new_task(task, &ns))
            .map(|task| NewTask { trace, ..task });
        match parsed {
            Ok(task) => tasks.push((i, task)),
            Err(e) => slots[i] = Some(item_error(e)),
        }
    }
    let (indexes, tasks): (Vec<usize>, Vec<NewTask>) = tasks.into_iter().unzip();
    for (i, result) in indexes.into_iter().zip(engine.submit_batch(tasks).await) {
        slots[i] = Some(match result {
            Ok(s) => wire::BatchItem::Submitted(wire::Submitted::from(&s)),
            Err(e) => item_error(e.into()),
        });
    }
    // Every slot is filled: each item was refused or submitted.
    Ok(Json(wire::BatchAnswer::new(slots.into_iter().flatten().collect())))
}

/// One batch item's error: the same shape as a whole-request error, with
/// the status it would have had.
fn item_error(e: ApiError) -> wire::BatchItem {
    let status = e.status().as_u16();
    wire::BatchItem::Refused(wire::BatchRefusal::new(status, e.body().error))
}

/// Runs a read of the engine, answering its error as the API does. The
/// store keeps reads whose cost grows with what is stored (a plugin's
/// task counts, a page of records, a flow's tree) off the async workers;
/// `blocking` runs the rest of one (a transcript's lines) on tokio's
/// blocking pool.
pub(crate) async fn read<T: Send + 'static>(
    engine: &Engine,
    read: impl AsyncFnOnce(&Engine) -> Result<T, crate::engine::EngineError>,
) -> ApiResult<T> {
    Ok(read(engine).await?)
}

/// Runs a synchronous read of the engine on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    engine: &Engine,
    read: impl FnOnce(&Engine) -> Result<T, crate::engine::EngineError> + Send + 'static,
) -> ApiResult<T> {
    let engine = engine.clone();
    match tokio::task::spawn_blocking(move || read(&engine)).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(ApiError::new(ErrorCode::InternalError, format!("a read failed: {e}"))),
    }
}

pub(crate) fn parse_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|e| ApiError::invalid(format!("`{text}` is not a task id (a UUID): {e}")))
}

#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    operation_id = "get_task",
    tag = "tasks",
    params(("id" = String, Path, description = "The task id (a UUID)")),
    responses(
        openapi::Refused,
        (status = 200, description = "The task with its output", body = wire::Task),
        (status = 400, description = "Not a task id (`invalid_request`)", body = crate::wire::ErrorBody),
        (status = 404, description = "No such task (`not_found`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["read"]))
)]
async fn get_task(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(id): Path<String>,
) -> ApiResult<Json<wire::Task>> {
    let id = parse_id(&id)?;
    let task = read(&engine, async move |engine| {
        let record = owned(engine, &ns, id).await?;
        let output = if record.state == TaskState::Completed { engine.output(id).await? } else { None };
        let callback = if record.callback_url.is_some() { engine.callback_outcome(id).await? } else { None };
        // The tail is an aid: a transcript that cannot be read leaves it
        // out (and is logged) rather than failing the whole record.
        let stderr = engine.stderr_tail(&record).await.unwrap_or_else(|error| {
            tracing::warn!(%id, %error, "cannot read the failed attempt's transcript");
            Vec::new()
        });
        Ok(wire::Task::new(&record, output.as_deref())
            .with_callback(&record, callback.as_ref())
            .with_stderr_tail(stderr)
            .in_namespace(&ns))
    })
    .await?;
    Ok(Json(task))
}

/// The task's input bytes as they were stored.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/input",
    operation_id = "task_input",
    tag = "tasks",
    params(("id" = String, Path, description = "The task id (a UUID)")),
    responses(
        openapi::Refused,
        (status = 200, description = "The task's input bytes", content_type = "application/octet-stream", body = openapi::Bytes),
        (status = 404, description = "No such task (`not_found`)", body = crate::wire::ErrorBody),
        (status = 409, description = "The input is not stored: it comes from a URL or from joined tasks (`conflict`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["read"]))
)]
async fn input(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let bytes = read(&engine, async move |engine| {
        let record = owned(engine, &ns, id).await?;
        match record.input_from {
            crate::store::InputFrom::Own => Ok(engine.input(id).await?.unwrap_or_default()),
            // The store holds the URL (which may carry credentials), or
            // nothing: the input is made when an attempt starts.
            crate::store::InputFrom::Url => Err(crate::engine::EngineError::Conflict(format!(
                "task {id} takes its input from a URL, fetched when each attempt starts; it is not stored"
            ))),
            crate::store::InputFrom::Outputs => Err(crate::engine::EngineError::Conflict(format!(
                "task {id} takes its input from the outputs of the tasks it waits for; it is not stored"
            ))),
        }
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/history",
    operation_id = "task_history",
    tag = "tasks",
    params(("id" = String, Path, description = "The task id (a UUID)")),
    responses(
        openapi::Refused,
        (status = 200, description = "Every state transition of the task", body = wire::History),
        (status = 404, description = "No such task (`not_found`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["read"]))
)]
async fn history(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(id): Path<String>,
) -> ApiResult<Json<wire::History>> {
    let record = owned(&engine, &ns, parse_id(&id)?).await?;
    Ok(Json(wire::History::new(&record)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    /// The attempt (its latest when absent).
    attempt: Option<u32>,
    /// Stream the lines as they are written (Server-Sent Events).
    follow: Option<bool>,
}

/// One attempt's lines, or (`follow=true`) a stream of them as they are
/// written until the task ends: Server-Sent Events named as
/// [`wire::LogEvent`]'s variants, each carrying the event as JSON.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/logs",
    operation_id = "task_logs",
    tag = "tasks",
    params(("id" = String, Path, description = "The task id (a UUID)"), LogsQuery),
    responses(
        openapi::Refused,
        (status = 200, description = "One attempt's lines; with `follow=true`, Server-Sent Events named as `LogEvent`'s variants until the task ends", content((wire::TaskLogs = "application/json"), (wire::LogEvent = "text/event-stream"))),
        (status = 400, description = "An attempt the task has not run (`invalid_request`)", body = crate::wire::ErrorBody),
        (status = 404, description = "No such task (`not_found`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["read"]))
)]
async fn logs(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let Query(query) = query?;
    let id = parse_id(&id)?;
    let record = owned(&engine, &ns, id).await?;
    if !query.follow.unwrap_or(false) {
        let logs = blocking(&engine, move |engine| engine.task_logs(&record, query.attempt)).await?;
        return Ok(Json(logs).into_response());
    }
    let events = engine.follow_logs(&record, query.attempt)?;
    let stream = futures::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        let sse = Event::default().event(event.name()).json_data(&event).map_err(axum::Error::new);
        Some((sse, events))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/cancel",
    operation_id = "cancel_task",
    tag = "tasks",
    params(("id" = String, Path, description = "The task id (a UUID)")),
    responses(
        openapi::Refused,
        (status = 200, description = "The task, cancelled (a running attempt is stopped)", body = wire::Task),
        (status = 404, description = "No such task (`not_found`)", body = crate::wire::ErrorBody),
        (status = 409, description = "The task has ended (`conflict`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["submit"]))
)]
async fn cancel(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(id): Path<String>,
) -> ApiResult<Json<wire::Task>> {
    // The tenant of a task never changes: checked once, it holds.
    let id = owned(&engine, &ns, parse_id(&id)?).await?.id;
    let record = engine.cancel(id).await?;
    Ok(Json(wire::Task::new(&record, None).in_namespace(&ns)))
}

#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/retry",
    operation_id = "retry_task",
    tag = "tasks",
    params(("id" = String, Path, description = "The task id (a UUID)")),
    request_body(content = Option<wire::RetryRequest>, description = "Optional: another plugin version to run it on"),
    responses(
        openapi::Refused,
        openapi::BodyRefused,
        (status = 200, description = "The task, pending again", body = wire::Task),
        (status = 404, description = "No such task or version (`not_found`, `unknown_plugin`)", body = crate::wire::ErrorBody),
        (status = 409, description = "The task has not failed: only a failed task is retried (`conflict`)", body = crate::wire::ErrorBody),
        (status = 429, description = "A tenant quota is used up (`quota_exceeded`)", body = crate::wire::ErrorBody, headers(("Retry-After" = u32, description = "Seconds until the quota allows it")))
    ),
    security(("token" = ["submit"]))
)]
async fn resubmit(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<wire::Task>> {
    // No body (or `{}`) retries on the pinned version.
    let version = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<wire::RetryRequest>(&body)
            .map_err(|e| ApiError::invalid(format!("the retry body is not {{\"version\"?: string}}: {e}")))?
            .version
    };
    let id = owned(&engine, &ns, parse_id(&id)?).await?.id;
    let record = engine.resubmit_on(id, version).await?;
    Ok(Json(wire::Task::new(&record, None).in_namespace(&ns)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only tasks in this state (`pending`, `running`, `completed`, ...).
    state: Option<String>,
    /// Only this queue's tasks.
    queue: Option<String>,
    /// Only this plugin's tasks.
    plugin: Option<String>,
    /// Tasks per page, 1-1000.
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// `newest` or `oldest` (the default).
    order: Option<String>,
    /// Count the tasks after the page (`more`).
    count: Option<bool>,
}

#[utoipa::path(
    get,
    path = "/v1/tasks",
    operation_id = "list_tasks",
    tag = "tasks",
    params(ListQuery),
    responses(
        openapi::Refused,
        (status = 200, description = "A page of tasks (without outputs) and the cursor of the next", body = wire::TaskPage),
        (status = 400, description = "A bad filter, limit or cursor (`invalid_request`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["read"]))
)]
async fn list_tasks(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<wire::TaskPage>> {
    let Query(query) = query?;
    let state = query
        .state
        .map(|s| {
            TaskState::parse(&s).ok_or_else(|| {
                let known: Vec<_> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::invalid(format!("unknown state `{s}`; expected one of {}", known.join(", ")))
            })
        })
        .transpose()?;
    if query.limit.is_some_and(|l| l == 0 || l > 1000) {
        return Err(ApiError::invalid("limit must be 1-1000"));
    }
    let cursor = query.cursor.as_deref().map(parse_id).transpose()?;
    let newest_first = match query.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => return Err(ApiError::invalid(format!("unknown order `{other}`; expected newest or oldest"))),
    };
    let key = |kind, name: Option<String>| name.map(|n| ns.key(kind, &n).map_err(ApiError::from)).transpose();
    let filter = ListFilter {
        state,
        queue: key(NameKind::Queue, query.queue)?,
        plugin: key(NameKind::Plugin, query.plugin)?,
        tenant: Some(ns.tenant().to_owned()),
        limit: query.limit,
        cursor,
        newest_first,
        count_more: query.count.unwrap_or(false),
    };
    let page = read(&engine, async move |engine| {
        let page = engine.list_page(&filter).await?;
        Ok(wire::TaskPage::new(&page.tasks, page.next).more(page.more).in_namespace(&ns))
    })
    .await?;
    Ok(Json(page))
}

#[utoipa::path(
    get,
    path = "/v1/config",
    operation_id = "get_config",
    tag = "host",
    responses(
        openapi::Refused,
        (status = 200, description = "The effective configuration and where each part comes from", body = wire::ConfigView)
    ),
    security(("token" = ["admin"]))
)]
async fn config(State(engine): State<Engine>) -> Json<wire::ConfigView> {
    Json(engine.config_view())
}

#[utoipa::path(
    get,
    path = "/v1/queues",
    operation_id = "list_queues",
    tag = "queues",
    responses(
        openapi::Refused,
        (status = 200, description = "The tenant's queues with their settings and depths", body = wire::QueueList)
    ),
    security(("token" = ["read"]))
)]
async fn list_queues(State(engine): State<Engine>, Extension(ns): Extension<Namespace>) -> Json<wire::QueueList> {
    let queues: Vec<_> = engine
        .queues()
        .into_iter()
        .filter_map(|mut queue| {
            queue.name = ns.local(&queue.name)?.to_owned();
            Some(queue)
        })
        .collect();
    Json(wire::QueueList::new(&queues))
}

#[utoipa::path(
    put,
    path = "/v1/queues/{name}",
    operation_id = "set_queue",
    tag = "queues",
    params(("name" = String, Path, description = "The queue's name")),
    request_body(content = wire::QueueChange),
    responses(
        openapi::Refused,
        openapi::BodyRefused,
        (status = 200, description = "The queue's settings now", body = wire::QueueSettings),
        (status = 400, description = "A setting out of range (`invalid_request`)", body = crate::wire::ErrorBody),
        (status = 409, description = "The queue limit is reached, or the configuration file manages it (`limit_reached`, `conflict`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["admin"]))
)]
async fn set_queue(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(name): Path<String>,
    body: Result<Json<wire::QueueChange>, JsonRejection>,
) -> ApiResult<Json<wire::QueueSettings>> {
    let Json(body) = body?;
    let config = crate::engine::queue_config(&body)?;
    let key = ns.key(NameKind::Queue, &name)?;
    engine.check_not_file_managed(None, Some(&key))?;
    engine.set_queue(&key, config.clone()).await?;
    Ok(Json(wire::QueueSettings::new(name, &config)))
}
