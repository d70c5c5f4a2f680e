//! The API's view of the host's health: `GET /healthz` (503 `unhealthy`
//! with the reason while the store cannot write), and the guard that
//! refuses every write request with 503 `store_unwritable` and
//! `Retry-After` meanwhile, instead of letting it wait for the disk.

use super::ApiError;
use crate::engine::Engine;
use crate::wire;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Seconds a client is asked to wait while the store cannot write (the
/// store retries at least this often).
pub(crate) const UNWRITABLE_RETRY_AFTER: u32 = 5;

pub(crate) async fn healthz(State(engine): State<Engine>) -> Response {
    let counts = engine.state_counts();
    match engine.store_fault() {
        None => Json(wire::Health::new(&counts)).into_response(),
        Some(fault) => {
            let reason = format!("the store cannot write: {}", fault.reason);
            let body = wire::Health::unhealthy(&counts, reason, fault.since_ms);
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, UNWRITABLE_RETRY_AFTER.into());
            response
        }
    }
}

/// Refuses requests that write (any method but GET and HEAD) while the
/// store cannot write; the models file is not in the store, so its
/// endpoints pass.
pub(crate) async fn refuse_writes_while_unwritable(
    State(engine): State<Engine>,
    request: Request,
    next: Next,
) -> Response {
    let reads = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !reads
        && !request.uri().path().starts_with("/v1/models")
        && let Some(fault) = engine.store_fault()
    {
        return ApiError::unwritable(format!(
            "the store cannot write ({}); nothing was changed; try again once it recovered (GET /healthz)",
            fault.reason
        ))
        .into_response();
    }
    next.run(request).await
}
