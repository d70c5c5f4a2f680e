//! The model endpoints: list the models (with ONNX Runtime's state and the
//! device each model actually runs on), add or replace one, remove one.

use super::{ApiError, ApiResult, Path};
use crate::engine::Engine;
use crate::inference::{ModelSpec, ModelView, Models, ModelsError};
use crate::tenant::Namespace;
use crate::wire::ErrorCode;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

fn models(engine: &Engine) -> ApiResult<Models> {
    engine
        .models()
        .cloned()
        .ok_or_else(|| ApiError::new(ErrorCode::NoModels, "this host serves no models (start it with `--models FILE`)"))
}

impl From<ModelsError> for ApiError {
    fn from(e: ModelsError) -> Self {
        let code = match &e {
            ModelsError::Invalid(_) => ErrorCode::InvalidRequest,
            ModelsError::Load(_) => ErrorCode::InvalidModel,
            ModelsError::Write(_) => ErrorCode::StorageError,
            ModelsError::NotFound(_) => ErrorCode::NotFound,
        };
        ApiError::new(code, e.to_string())
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

#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "list_models",
    tag = "models",
    responses(
        super::openapi::Refused,
        (status = 200, description = "ONNX Runtime's state and the models the tenant's plugins may use", body = crate::wire::ModelsView),
        (status = 404, description = "The host serves no models (`no_models`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["read"]))
)]
pub(super) async fn list(State(engine): State<Engine>, Extension(ns): Extension<Namespace>) -> ApiResult<Response> {
    let mut view = models(&engine)?.view();
    view.models = view.models.into_iter().filter_map(|m| in_namespace(m, &ns)).collect();
    Ok(Json(view).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/models/{name}",
    operation_id = "get_model",
    tag = "models",
    params(("name" = String, Path, description = "The model's name")),
    responses(
        super::openapi::Refused,
        (status = 200, description = "The model, its tensors and the device it runs on", body = ModelView),
        (status = 404, description = "No such model, or no models at all (`not_found`, `no_models`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["read"]))
)]
pub(super) async fn get(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let view = models(&engine)?
        .model(&name)
        .and_then(|view| in_namespace(view, &ns))
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no model named `{name}`")))?;
    Ok(Json(view).into_response())
}

/// `POST /v1/models`'s body: the model's name beside the fields of its
/// `[models.NAME]` table. The handler reads `name`, then the rest as a
/// [`ModelSpec`] (so a misspelt field gets serde's exact complaint).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct ModelPut {
    /// The name tasks call the model by.
    name: String,
    #[serde(flatten)]
    spec: ModelSpec,
}

/// `POST /v1/models` with `{"name": ..., "path": ..., ...}` (the fields of
/// a `[models.NAME]` table). Loads the model before anything changes.
#[utoipa::path(
    post,
    path = "/v1/models",
    operation_id = "put_model",
    tag = "models",
    request_body(content = ModelPut),
    responses(
        super::openapi::Refused,
        super::openapi::BodyRefused,
        (status = 201, description = "The model is loaded and in the models file", body = ModelView),
        (status = 200, description = "The model replaced one of the same name", body = ModelView),
        (status = 400, description = "A spec that does not fit (`invalid_request`)", body = crate::wire::ErrorBody),
        (status = 404, description = "The host serves no models (`no_models`)", body = crate::wire::ErrorBody),
        (status = 422, description = "ONNX Runtime cannot load the model (`invalid_model`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["admin"]))
)]
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
        .map_err(|e| ApiError::new(ErrorCode::InternalError, e.to_string()))??;
    let status = if replaced { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(view)).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/models/{name}",
    operation_id = "delete_model",
    tag = "models",
    params(("name" = String, Path, description = "The model's name")),
    responses(
        super::openapi::Refused,
        (status = 200, description = "The model is unloaded and out of the models file", body = crate::wire::ModelRemoved),
        (status = 404, description = "No such model (`not_found`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["admin"]))
)]
pub(super) async fn remove(State(engine): State<Engine>, Path(name): Path<String>) -> ApiResult<Response> {
    let models = models(&engine)?;
    let removed = name.clone();
    tokio::task::spawn_blocking(move || models.remove(&removed))
        .await
        .map_err(|e| ApiError::new(ErrorCode::InternalError, e.to_string()))??;
    Ok(Json(crate::wire::ModelRemoved::new(name)).into_response())
}
