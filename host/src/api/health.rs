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

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health",
    tag = "host",
    responses(
        (status = 200, description = "The host can write; task counts by state", body = wire::Health),
        (status = 503, description = "The store cannot write: why and since when (with `Retry-After`)", body = wire::Health)
    )
)]
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

#[cfg(test)]
mod tests {
    use crate::engine::testing::Harness;
    use crate::store::QueueConfig;
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode, header};
    use serde_json::Value;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    use tower::ServiceExt as _;

    async fn send(app: &axum::Router, method: Method, uri: &str, body: &str) -> (StatusCode, Option<String>, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let retry_after = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, retry_after, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_the_store_cannot_write_health_is_503_and_writes_are_refused_but_reads_go_on() {
        let full = Arc::new(AtomicBool::new(false));
        let h = Harness::on_disk(full.clone()).await;
        let app = crate::api::router(h.engine.clone(), crate::api::Access::for_tests(&h.engine));
        let task = r#"{"plugin": "echo", "input": {"Complete": [111]}}"#;
        let (status, _, submitted) = send(&app, Method::POST, "/v1/tasks", task).await;
        assert_eq!(status, StatusCode::CREATED, "{submitted}");
        let id = submitted["id"].as_str().unwrap().to_owned();
        h.wait(id.parse().unwrap()).await;

        full.store(true, Ordering::SeqCst);
        // A write meets the full disk (one answered at once: a queue setting).
        let config = QueueConfig { concurrency: Some(1), weight: 1, ..QueueConfig::default() };
        assert!(h.store().set_queue("q".into(), config).await.is_err());
        let (status, retry, health) = send(&app, Method::GET, "/healthz", "").await;
        assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("5")), "{health}");
        assert_eq!(health["status"], "unhealthy");
        assert!(health["reason"].as_str().unwrap().contains("No space left on device"), "{health}");
        assert!(health["since"].is_string() && health["tasks"].is_object(), "{health}");
        for (method, uri, body) in [
            (Method::POST, "/v1/tasks".to_owned(), task),
            (Method::POST, "/v1/tasks:batch".to_owned(), r#"{"tasks": []}"#),
            (Method::POST, format!("/v1/tasks/{id}/cancel"), ""),
            (Method::PUT, "/v1/queues/q".to_owned(), r#"{"concurrency": 2}"#),
            (Method::POST, "/v1/flows".to_owned(), "{}"),
        ] {
            let (status, retry, error) = send(&app, method, &uri, body).await;
            assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("5")), "{uri}: {error}");
            assert_eq!(error["error"]["code"], "store_unwritable", "{uri}: {error}");
        }
        let (status, _, record) = send(&app, Method::GET, &format!("/v1/tasks/{id}"), "").await;
        assert_eq!((status, record["state"].as_str()), (StatusCode::OK, Some("completed")), "reads go on");

        full.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _, health) = send(&app, Method::GET, "/healthz", "").await;
            if status == StatusCode::OK {
                assert_eq!(health["status"], "ok");
                assert!(health.get("reason").is_none(), "{health}");
                break;
            }
            assert!(Instant::now() < deadline, "never healthy again: {health}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, _, again) = send(&app, Method::POST, "/v1/tasks", task).await;
        assert_eq!(status, StatusCode::CREATED, "{again}");
    }
}
