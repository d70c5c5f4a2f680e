//! The model endpoints: list the models (with ONNX Runtime's state and the
//! device each model actually runs on), add or replace one, remove one.

use super::{ApiError, ApiResult, Path};
use crate::engine::Engine;
use crate::inference::{ModelSpec, ModelView, Models, ModelsError};
use crate::tenant::Namespace;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

fn models(engine: &Engine) -> ApiResult<Models> {
    engine.models().cloned().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "no_models", "this host serves no models (start it with `--models FILE`)")
    })
}

impl From<ModelsError> for ApiError {
    fn from(e: ModelsError) -> Self {
        let (status, code) = match &e {
            ModelsError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ModelsError::Load(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_model"),
            ModelsError::Write(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
            ModelsError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// A model as tenant `ns` sees it, if it sees it at all: another tenant
/// sees only models granted to its plugins, and of the plugins granted,
/// only its own (by their names in it; `*` for all of them), so no tenant
/// learns another's plugins.
fn in_namespace(mut view: ModelView, ns: &Namespace) -> Option<ModelView> {
    if ns.tenant() != crate::tenant::DEFAULT && !view.spec.grants_tenant(ns.tenant()) {
        return None;
    }
    let plugins = std::mem::take(&mut view.spec.plugins);
    view.spec.plugins = plugins
        .iter()
        .filter_map(|p| match crate::inference::every_plugin_of(p) {
            Some(tenant) => (tenant == ns.tenant()).then(|| "*".to_owned()),
            None => ns.local(p).map(str::to_owned),
        })
        .collect();
    Some(view)
}

pub(super) async fn list(State(engine): State<Engine>, Extension(ns): Extension<Namespace>) -> ApiResult<Response> {
    let mut view = models(&engine)?.view();
    view.models = view.models.into_iter().filter_map(|m| in_namespace(m, &ns)).collect();
    Ok(Json(view).into_response())
}

pub(super) async fn get(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let view = models(&engine)?
        .model(&name)
        .and_then(|view| in_namespace(view, &ns))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no model named `{name}`")))?;
    Ok(Json(view).into_response())
}

/// `POST /v1/models` with `{"name": ..., "path": ..., ...}` (the fields of
/// a `[models.NAME]` table). Loads the model before anything changes.
pub(super) async fn put(State(engine): State<Engine>, body: Result<Json<Value>, JsonRejection>) -> ApiResult<Response> {
    let Json(mut body) = body?;
    let name = match body.as_object_mut().and_then(|o| o.remove("name")) {
        Some(Value::String(name)) => name,
        _ => {
            return Err(ApiError::invalid(
                "`name` is missing; expected {\"name\": \"...\", \"path\": \"model.onnx\", ...}",
            ));
        }
    };
    let spec: ModelSpec = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(format!("the model settings do not fit: {e} (see README \"Inference\")")))?;
    let models = models(&engine)?;
    let replaced = models.model(&name).is_some();
    let view = tokio::task::spawn_blocking(move || models.put(&name, spec))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    let status = if replaced { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(view)).into_response())
}

pub(super) async fn remove(State(engine): State<Engine>, Path(name): Path<String>) -> ApiResult<Response> {
    let models = models(&engine)?;
    let removed = name.clone();
    tokio::task::spawn_blocking(move || models.remove(&removed))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Json(crate::wire::ModelRemoved::new(name)).into_response())
}
