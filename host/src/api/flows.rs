//! The flow endpoints: declare a flow, look at one as a tree with states
//! and timings ([`crate::wire::Flow`]), cancel one.

use super::{ApiError, ApiResult, Path, parse_id};
use crate::engine::{Engine, FlowSpec};
use crate::wire::Flow;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub(super) async fn submit(
    State(engine): State<Engine>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    // Parsed here rather than by the extractor, so a spec that does not fit
    // gets serde's exact complaint.
    let spec: FlowSpec = serde_json::from_value(body).map_err(|e| {
        ApiError::invalid(format!(
            "the flow spec does not fit: {e} (expected {{\"steps\": STEP | {{\"series\": [...]}} | \
             {{\"parallel\": [...]}} | [...]}}, each STEP {{\"plugin\": ..., \"id\"?, \"input\"?, \"after\"?}})"
        ))
    })?;
    let view = engine.submit_flow(spec).await?;
    Ok((StatusCode::CREATED, Json(Flow::new(&view))).into_response())
}

pub(super) async fn get(State(engine): State<Engine>, Path(id): Path<String>) -> ApiResult<Json<Flow>> {
    let id = parse_id(&id)?;
    Ok(Json(super::read(&engine, move |engine| Ok(Flow::new(&engine.flow(id)?))).await?))
}

pub(super) async fn cancel(State(engine): State<Engine>, Path(id): Path<String>) -> ApiResult<Json<Flow>> {
    Ok(Json(Flow::new(&engine.cancel_flow(parse_id(&id)?).await?)))
}
