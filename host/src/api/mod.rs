//! The HTTP API (`taskhost serve`): JSON in and out, every error in one
//! shape. Handlers only translate; the engine decides.

mod error;
mod flows;
mod models;
#[cfg(test)]
mod proptests;

pub(crate) use error::{ApiError, Path};

use crate::engine::{Engine, ListFilter, NewTask};
use crate::registry::{MAX_PLUGIN_BYTES, Manifest, VersionState, VersionStatus};
use crate::store::{QueueConfig, TaskRecord, TaskState};
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::UNIX_EPOCH;
use uuid::Uuid;

/// Largest task-submission body (one task).
pub const MAX_TASK_BODY: usize = 8 << 20;
/// Largest batch-submission body.
pub const MAX_BATCH_BODY: usize = 64 << 20;
/// Most tasks in one batch.
pub const MAX_BATCH: usize = 10_000;

/// The router for an engine.
pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/plugins/{name}", post(add_plugin).get(get_plugin).layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES)))
        .route("/v1/plugins/{name}/latest", put(set_latest))
        .route("/v1/plugins/{name}/manifest", put(put_manifest))
        .route("/v1/plugins/{name}/versions/{version}", axum::routing::delete(delete_version))
        .route("/v1/tasks", post(submit).get(list_tasks).layer(DefaultBodyLimit::max(MAX_TASK_BODY)))
        .route("/v1/tasks:batch", post(submit_batch).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/history", get(history))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .route("/v1/tasks/{id}/retry", post(resubmit))
        .route("/v1/flows", post(flows::submit).layer(DefaultBodyLimit::max(MAX_TASK_BODY)))
        .route("/v1/flows/{id}", get(flows::get))
        .route("/v1/flows/{id}/cancel", post(flows::cancel))
        .route("/v1/models", get(models::list).post(models::put))
        .route("/v1/models/{name}", get(models::get).delete(models::remove))
        .route("/v1/queues", get(list_queues))
        .route("/v1/queues/{name}", put(set_queue))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see README.md") })
        .with_state(engine)
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

async fn healthz(State(engine): State<Engine>) -> Json<Value> {
    let counts: serde_json::Map<String, Value> =
        engine.state_counts().into_iter().map(|(s, n)| (s.as_str().to_owned(), json!(n))).collect();
    Json(json!({"status": "ok", "tasks": counts}))
}

async fn metrics(State(engine): State<Engine>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], engine.metrics_text()).into_response()
}

async fn list_plugins(State(engine): State<Engine>) -> ApiResult<Json<Value>> {
    let mut plugins = Vec::new();
    for name in engine.plugins() {
        if let Ok(detail) = engine.plugin_detail(&name) {
            plugins.push(json!({
                "name": name,
                "latest": detail.latest,
                "versions": detail.versions.iter().map(version_json).collect::<Vec<_>>(),
            }));
        }
    }
    Ok(Json(json!({"plugins": plugins})))
}

fn version_json(v: &VersionStatus) -> Value {
    let (state, reason) = match &v.state {
        VersionState::Compiling => ("compiling", None),
        VersionState::Live => ("live", None),
        VersionState::Failed(reason) => ("failed", Some(reason.clone())),
    };
    json!({
        "version": v.info.version,
        "digest": v.info.digest,
        "size": v.info.size,
        "created_at": time(v.info.created_at_ms),
        "state": state,
        "reason": reason,
        "load_ms": v.load_time.map(|d| d.as_secs_f64() * 1e3),
        "from_cache": v.from_cache,
        "loaded": v.loaded,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    version: Option<String>,
    wait: Option<bool>,
}

async fn add_plugin(
    State(engine): State<Engine>,
    Path(name): Path<String>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Query(query) = query?;
    let body = body.map_err(|e| error::body_rejection(e.status(), e.body_text()))?;
    if body.is_empty() {
        return Err(ApiError::invalid("the body is empty: send the component (.wasm) bytes"));
    }
    let wait = query.wait.unwrap_or(true);
    let (status, created) = engine.add_plugin(&name, body.to_vec(), query.version, wait).await?;
    let code = match (created, &status.state) {
        (false, _) => StatusCode::OK,
        (true, VersionState::Compiling) => StatusCode::ACCEPTED,
        (true, _) => StatusCode::CREATED,
    };
    let mut body = version_json(&status);
    body["name"] = json!(name);
    body["created"] = json!(created);
    Ok((code, Json(body)).into_response())
}

async fn get_plugin(State(engine): State<Engine>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let (detail, counts) = engine.plugin(&name)?;
    let versions: Vec<Value> = detail
        .versions
        .iter()
        .map(|v| {
            let mut j = version_json(v);
            let tasks: serde_json::Map<String, Value> = counts
                .iter()
                .filter(|((version, _), _)| *version == v.info.version)
                .map(|((_, state), n)| (state.as_str().to_owned(), json!(n)))
                .collect();
            j["tasks"] = Value::Object(tasks);
            j
        })
        .collect();
    let manifest = detail.manifest.as_ref().and_then(|m| m.to_toml().ok());
    Ok(Json(json!({
        "name": name,
        "latest": detail.latest,
        "versions": versions,
        "manifest": manifest,
        "watch_error": detail.watch_error,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatestBody {
    version: String,
}

async fn set_latest(
    State(engine): State<Engine>,
    Path(name): Path<String>,
    body: Result<Json<LatestBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body?;
    engine.set_latest(&name, &body.version).await?;
    Ok(Json(json!({"name": name, "latest": body.version})))
}

async fn delete_version(
    State(engine): State<Engine>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    engine.delete_plugin_version(&name, &version).await?;
    Ok(Json(json!({"name": name, "deleted": version})))
}

async fn put_manifest(
    State(engine): State<Engine>,
    Path(name): Path<String>,
    body: Result<String, axum::extract::rejection::StringRejection>,
) -> ApiResult<Json<Value>> {
    let text = body.map_err(|e| ApiError::invalid(format!("the manifest must be UTF-8 TOML: {}", e.body_text())))?;
    let manifest = if text.trim().is_empty() { None } else { Some(Manifest::parse(&text).map_err(ApiError::invalid)?) };
    engine.set_manifest(&name, manifest).await?;
    Ok(Json(json!({"name": name, "manifest": text})))
}

/// `POST /v1/tasks` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitBody {
    plugin: String,
    input: Option<Value>,
    input_base64: Option<String>,
    queue: Option<String>,
    priority: Option<i64>,
    idempotency_key: Option<String>,
    max_attempts: Option<i64>,
    timeout_ms: Option<u64>,
    fuel: Option<u64>,
    memory_bytes: Option<u64>,
    delay_ms: Option<u64>,
    run_at: Option<String>,
    callback_url: Option<String>,
}

impl SubmitBody {
    fn into_task(self) -> Result<NewTask, ApiError> {
        let input = match (self.input, self.input_base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("give either input or input_base64, not both"));
            }
            (Some(value), None) => serde_json::to_vec(&value).expect("JSON values serialise"),
            (None, Some(b64)) => BASE64
                .decode(b64.as_bytes())
                .map_err(|e| ApiError::invalid(format!("input_base64 is not base64: {e}")))?,
            (None, None) => Vec::new(),
        };
        let priority = self
            .priority
            .map(|p| {
                u8::try_from(p).ok().filter(|p| *p <= 9).ok_or_else(|| {
                    ApiError::invalid(format!("priority {p} is out of range: expected 0-9 (higher runs first)"))
                })
            })
            .transpose()?;
        let max_attempts = self
            .max_attempts
            .map(|m| {
                u32::try_from(m)
                    .ok()
                    .filter(|m| (1..=100).contains(m))
                    .ok_or_else(|| ApiError::invalid(format!("max_attempts {m} is out of range: expected 1-100")))
            })
            .transpose()?;
        if self.timeout_ms == Some(0) {
            return Err(ApiError::invalid("timeout_ms must be greater than zero"));
        }
        let run_at_ms = self
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
        Ok(NewTask {
            plugin: self.plugin,
            input,
            queue: self.queue,
            priority,
            idempotency_key: self.idempotency_key,
            max_attempts,
            timeout_ms: self.timeout_ms,
            fuel: self.fuel,
            memory_bytes: self.memory_bytes,
            delay_ms: self.delay_ms,
            run_at_ms,
            callback_url: self.callback_url,
            parent_id: None,
        })
    }
}

async fn submit(State(engine): State<Engine>, body: Result<Json<SubmitBody>, JsonRejection>) -> ApiResult<Response> {
    let Json(body) = body?;
    let submitted = engine.submit(body.into_task()?).await?;
    let status = if submitted.created { StatusCode::CREATED } else { StatusCode::OK };
    let record = &submitted.record;
    Ok((status, Json(json!({"id": record.id, "state": record.state, "created": submitted.created}))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    tasks: Vec<Value>,
}

async fn submit_batch(
    State(engine): State<Engine>,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body?;
    if body.tasks.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!("{} tasks in one batch; at most {MAX_BATCH}", body.tasks.len())));
    }
    // Each item is validated and answered on its own.
    let mut slots: Vec<Option<Value>> = vec![None; body.tasks.len()];
    let mut tasks = Vec::new();
    for (i, item) in body.tasks.into_iter().enumerate() {
        let parsed = serde_json::from_value::<SubmitBody>(item)
            .map_err(|e| ApiError::invalid(format!("the task does not fit: {e}")))
            .and_then(SubmitBody::into_task);
        match parsed {
            Ok(task) => tasks.push((i, task)),
            Err(e) => slots[i] = Some(item_error(e)),
        }
    }
    let (indexes, tasks): (Vec<usize>, Vec<NewTask>) = tasks.into_iter().unzip();
    for (i, result) in indexes.into_iter().zip(engine.submit_batch(tasks).await) {
        slots[i] = Some(match result {
            Ok(s) => json!({"id": s.record.id, "state": s.record.state, "created": s.created}),
            Err(e) => item_error(e.into()),
        });
    }
    Ok(Json(json!({"results": slots})))
}

/// One batch item's error: the same shape as a whole-request error, with
/// the status it would have had.
fn item_error(e: ApiError) -> Value {
    json!({"status": e.status.as_u16(), "error": {"code": e.code, "message": e.message}})
}

pub(crate) fn parse_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|e| ApiError::invalid(format!("`{text}` is not a task id (a UUID): {e}")))
}

async fn get_task(State(engine): State<Engine>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&id)?;
    let record = engine.get(id)?;
    let output = if record.state == TaskState::Completed { engine.output(id)? } else { None };
    Ok(Json(task_json(&record, output.as_deref())))
}

async fn history(State(engine): State<Engine>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let record = engine.get(parse_id(&id)?)?;
    let history: Vec<Value> = record
        .history
        .iter()
        .map(|t| json!({"at": time(t.at_ms), "from": t.from, "to": t.to, "attempt": t.attempt, "reason": t.reason}))
        .collect();
    Ok(Json(json!({"id": record.id, "history": history})))
}

async fn cancel(State(engine): State<Engine>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let record = engine.cancel(parse_id(&id)?).await?;
    Ok(Json(task_json(&record, None)))
}

async fn resubmit(State(engine): State<Engine>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let record = engine.resubmit(parse_id(&id)?).await?;
    Ok(Json(task_json(&record, None)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    queue: Option<String>,
    plugin: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_tasks(
    State(engine): State<Engine>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
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
    let filter = ListFilter { state, queue: query.queue, plugin: query.plugin, limit: query.limit, cursor };
    let (page, next) = engine.list(&filter)?;
    let tasks: Vec<Value> = page.iter().map(|r| task_json(r, None)).collect();
    Ok(Json(json!({"tasks": tasks, "next_cursor": next})))
}

async fn list_queues(State(engine): State<Engine>) -> Json<Value> {
    let queues: Vec<Value> = engine
        .queues()
        .into_iter()
        .map(|q| {
            json!({"name": q.name, "concurrency": q.config.concurrency, "weight": q.config.weight,
                   "ready": q.ready, "delayed": q.delayed, "running": q.running})
        })
        .collect();
    Json(json!({"queues": queues}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueBody {
    concurrency: Option<u32>,
    weight: Option<u32>,
}

async fn set_queue(
    State(engine): State<Engine>,
    Path(name): Path<String>,
    body: Result<Json<QueueBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body?;
    let config = QueueConfig { concurrency: body.concurrency, weight: body.weight.unwrap_or(1) };
    engine.set_queue(&name, config.clone()).await?;
    Ok(Json(json!({"name": name, "concurrency": config.concurrency, "weight": config.weight})))
}

/// A task record as the API shows it (see [`crate::wire::Task`]).
pub(crate) fn task_json(record: &TaskRecord, output: Option<&[u8]>) -> Value {
    serde_json::to_value(crate::wire::Task::new(record, output)).expect("a task view always encodes")
}

pub(crate) use crate::wire::time;
