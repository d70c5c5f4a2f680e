//! The API of a host standing by (`serve --standby`): while another host
//! serves its PostgreSQL database, `/healthz` answers 503 `standby` and
//! every other request 503 `unavailable` with `Retry-After`, each naming
//! the host that serves. A load balancer's health check sends traffic to
//! the serving host only; once this one takes over, the engine's router
//! replaces this one on the same socket. Like `/healthz`, its answers
//! need no token: they tell only the serving host's id and term.

use super::ApiError;
use crate::store::postgres::StandbyState;
use crate::wire::{self, ErrorCode};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

/// Seconds a client is asked to wait before trying a standby again.
const RETRY_AFTER: u32 = 1;

/// The router of a host standing by; `seen` says what it sees.
pub fn standby_router(seen: watch::Receiver<StandbyState>) -> Router {
    Router::new().route("/healthz", get(healthz)).fallback(refuse).with_state(seen)
}

/// What a standby sees, in words.
pub fn standing_by(state: &StandbyState) -> String {
    match state {
        StandbyState::Held(Some(l)) if l.live => format!(
            "standing by: host {} serves this PostgreSQL database (term {}); this host takes over once it stops",
            l.host, l.term.0
        ),
        StandbyState::Held(Some(l)) => format!(
            "standing by: host {} (term {}) stopped renewing its hold on this PostgreSQL database; a standby takes \
             over",
            l.host, l.term.0
        ),
        StandbyState::Held(None) => {
            "standing by: another host serves this PostgreSQL database; this host takes over once it stops".to_owned()
        }
        StandbyState::TakingOver => "taking over this PostgreSQL database: starting".to_owned(),
        _ => "standing by: looking whether another host serves this PostgreSQL database".to_owned(),
    }
}

async fn healthz(State(seen): State<watch::Receiver<StandbyState>>) -> Response {
    let reason = standing_by(&seen.borrow());
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(wire::Health::standby(reason))).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, RETRY_AFTER.into());
    response
}

async fn refuse(State(seen): State<watch::Receiver<StandbyState>>) -> Response {
    let why = standing_by(&seen.borrow());
    let message = format!("this host is {why}: send requests to the serving host; nothing was changed");
    ApiError { retry_after: Some(RETRY_AFTER), ..ApiError::new(ErrorCode::Unavailable, message) }.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::{Leader, Term};
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::Value;
    use std::time::Duration;
    use tower::ServiceExt as _;

    async fn send(app: &Router, method: &str, uri: &str) -> (StatusCode, Option<String>, Value) {
        let request = Request::builder().method(method).uri(uri).body(Body::from("{}")).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let retry = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn every_request_is_refused_naming_the_serving_host() {
        let (tell, seen) = watch::channel(StandbyState::Looking);
        let app = standby_router(seen);
        let (status, retry, health) = send(&app, "GET", "/healthz").await;
        assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")));
        assert_eq!(health["status"], "standby", "{health}");
        let leader = Leader { host: "h-1".into(), term: Term(7), live: true, left: Duration::from_secs(9) };
        tell.send_replace(StandbyState::Held(Some(leader)));
        for (method, uri) in [("POST", "/v1/tasks"), ("GET", "/v1/tasks/x"), ("GET", "/metrics")] {
            let (status, retry, body) = send(&app, method, uri).await;
            assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")), "{uri}");
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("host h-1 serves") && message.contains("term 7"), "{message}");
        }
        let (_, _, health) = send(&app, "GET", "/healthz").await;
        assert!(health["reason"].as_str().unwrap().contains("h-1"), "{health}");
        tell.send_replace(StandbyState::TakingOver);
        let (status, _, health) = send(&app, "GET", "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(health["reason"].as_str().unwrap().starts_with("taking over"), "{health}");
    }
}
