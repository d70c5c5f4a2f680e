//! The flow endpoints: declare a flow, look at one as a tree with states
//! and timings ([`crate::wire::Flow`]), cancel one.

use super::{ApiError, ApiResult, Path, parse_id};
use crate::engine::{Engine, EngineError, FlowSpec, FlowView};
use crate::tenant::Namespace;
use crate::wire::Flow;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Flow `id`, when its tasks are `ns`'s: another tenant's flow answers
/// exactly as one that does not exist.
async fn owned(engine: &Engine, ns: &Namespace, id: uuid::Uuid) -> Result<FlowView, EngineError> {
    let view = engine.flow(id).await?;
    // Every task of a flow is of one tenant; a flow with none is no one's.
    let owned = view.tasks.first().is_some_and(|t| ns.owns(&t.plugin));
    if owned { Ok(view) } else { Err(EngineError::NotFound(id)) }
}

#[utoipa::path(
    post,
    path = "/v1/flows",
    operation_id = "submit_flow",
    tag = "flows",
    request_body(content = crate::engine::FlowSpec),
    responses(
        super::openapi::Refused,
        super::openapi::BodyRefused,
        (status = 201, description = "The flow, with its task tree", body = Flow),
        (status = 400, description = "A spec that does not fit or does not form a DAG (`invalid_request`)", body = crate::wire::ErrorBody),
        (status = 404, description = "A step names a plugin (or version) the tenant does not have (`unknown_plugin`, naming the step)", body = crate::wire::ErrorBody),
        (status = 429, description = "A tenant quota is used up (`quota_exceeded`)", body = crate::wire::ErrorBody, headers(("Retry-After" = u32, description = "Seconds until the quota allows it")))
    ),
    security(("token" = ["submit"]))
)]
pub(super) async fn submit(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    headers: axum::http::HeaderMap,
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
    let mut spec = spec.in_namespace(&ns)?;
    spec.trace = super::trace_parent(&headers);
    let view = engine.submit_flow(spec).await?;
    Ok((StatusCode::CREATED, Json(Flow::new(&view).in_namespace(&ns))).into_response())
}

/// `GET /v1/flows`'s query.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Flows per page, 1-100 (default 50).
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only flows in this state (`running`, `completed`, `failed`, `cancelled`).
    state: Option<String>,
}

/// The caller's flows, newest first.
#[utoipa::path(
    get,
    path = "/v1/flows",
    operation_id = "list_flows",
    tag = "flows",
    params(ListQuery),
    responses(
        super::openapi::Refused,
        (status = 200, description = "A page of the tenant's flows, newest first", body = crate::wire::FlowPage),
        (status = 400, description = "A bad limit, cursor or state (`invalid_request`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["read"]))
)]
pub(super) async fn list(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<crate::wire::FlowPage>> {
    let axum::extract::Query(query) = query?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(format!("limit {limit} is out of range: expected 1-100")));
    }
    let state = query
        .state
        .map(|s| {
            crate::store::FlowState::parse(&s).ok_or_else(|| {
                ApiError::invalid(format!("unknown flow state `{s}`; expected running, completed, failed or cancelled"))
            })
        })
        .transpose()?;
    let cursor = query.cursor.as_deref().map(parse_id).transpose()?;
    let page = super::read(&engine, async move |engine| {
        let owner = ns.clone();
        let (flows, next) = engine.flows_page(cursor, limit, state, move |plugin| owner.owns(plugin)).await?;
        let flows = flows.iter().map(|(flow, first)| crate::wire::FlowSummary::new(flow, first.as_ref(), &ns));
        Ok(crate::wire::FlowPage::new(flows.collect(), next))
    })
    .await?;
    Ok(Json(page))
}

#[utoipa::path(
    get,
    path = "/v1/flows/{id}",
    operation_id = "get_flow",
    tag = "flows",
    params(("id" = String, Path, description = "The flow id (a UUID)")),
    responses(
        super::openapi::Refused,
        (status = 200, description = "The flow with its task tree", body = Flow),
        (status = 404, description = "No such flow (`not_found`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["read"]))
)]
pub(super) async fn get(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(id): Path<String>,
) -> ApiResult<Json<Flow>> {
    let id = parse_id(&id)?;
    Ok(Json(
        super::read(&engine, async move |engine| Ok(Flow::new(&owned(engine, &ns, id).await?).in_namespace(&ns)))
            .await?,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/flows/{id}/cancel",
    operation_id = "cancel_flow",
    tag = "flows",
    params(("id" = String, Path, description = "The flow id (a UUID)")),
    responses(
        super::openapi::Refused,
        (status = 200, description = "The flow, with every unfinished task cancelled", body = Flow),
        (status = 404, description = "No such flow (`not_found`)", body = crate::wire::ErrorBody),
        (status = 409, description = "The flow has ended (`conflict`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["submit"]))
)]
pub(super) async fn cancel(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    Path(id): Path<String>,
) -> ApiResult<Json<Flow>> {
    let id = parse_id(&id)?;
    let ns2 = ns.clone();
    super::read(&engine, async move |engine| owned(engine, &ns2, id).await.map(drop)).await?;
    Ok(Json(Flow::new(&engine.cancel_flow(id).await?).in_namespace(&ns)))
}
