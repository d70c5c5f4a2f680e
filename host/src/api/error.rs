//! The API's error format: `{"error": {"code": "...", "message": "..."}}`
//! ([`crate::wire::ErrorBody`]) with the matching HTTP status.

use crate::engine::EngineError;
use crate::store::StoreError;
use crate::wire::{ErrorBody, ErrorCode};
use axum::extract::FromRequestParts;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// Seconds after which a refused request may be tried again (sent as
    /// `Retry-After` with 429 and 503 answers).
    pub(crate) retry_after: Option<u32>,
}

impl ApiError {
    /// A refusal with `code`, answered with the status the code publishes.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None }
    }

    /// The HTTP status: the one [`ErrorCode::status`] publishes.
    pub(crate) fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The host is at a bound (a full queue): try again in a second.
    pub(crate) fn overloaded(message: impl Into<String>) -> Self {
        Self { retry_after: Some(1), ..Self::new(ErrorCode::Overloaded, message) }
    }

    /// The store cannot write now (a full disk): try again later.
    pub(crate) fn unwritable(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(super::health::UNWRITABLE_RETRY_AFTER),
            ..Self::new(ErrorCode::StoreUnwritable, message)
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// The error's body.
    pub(crate) fn body(self) -> ErrorBody {
        ErrorBody::new(self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && self.retry_after.is_none() {
            // The client sees the message; the operator must see it too.
            tracing::error!(%status, code = self.code.as_str(), message = %self.message, "request failed");
        }
        let retry_after = self.retry_after;
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        if e.is_overloaded() {
            return Self::overloaded(e.to_string());
        }
        if let EngineError::Store(store) = &e
            && store.io_fault().is_some()
        {
            // The disk refused a write (or the file is being reopened
            // after one): this passes, so it is a 503 with Retry-After.
            return match store {
                StoreError::Unwritable { .. } => Self::unwritable(e.to_string()),
                _ => Self {
                    retry_after: Some(super::health::UNWRITABLE_RETRY_AFTER),
                    ..Self::new(ErrorCode::StoreUnavailable, e.to_string())
                },
            };
        }
        if let EngineError::Store(store) = &e
            && store.is_unsettled()
        {
            // PostgreSQL failed the write in a way that passes (a lost
            // connection, a deadlock it broke, the batch it was grouped
            // in failing): the same request may succeed a second later.
            return Self { retry_after: Some(1), ..Self::new(ErrorCode::StoreUnavailable, e.to_string()) };
        }
        if let EngineError::QuotaExceeded { retry_after_secs, .. } = &e {
            let retry_after = *retry_after_secs;
            return Self { retry_after, ..Self::new(ErrorCode::QuotaExceeded, e.to_string()) };
        }
        let code = match &e {
            EngineError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            EngineError::UnknownTenant(_) => ErrorCode::NotFound,
            EngineError::QuotaExceeded { .. } => unreachable!("answered above"),
            EngineError::UnknownPlugin(_) => ErrorCode::UnknownPlugin,
            EngineError::InvalidPlugin(_) => ErrorCode::InvalidPlugin,
            EngineError::NotFound(_) => ErrorCode::NotFound,
            EngineError::Forbidden(_) => ErrorCode::Forbidden,
            EngineError::Conflict(_) => ErrorCode::Conflict,
            EngineError::Unavailable(_) => ErrorCode::Unavailable,
            EngineError::Overloaded(_) => ErrorCode::Overloaded,
            EngineError::LimitReached(_) => ErrorCode::LimitReached,
            EngineError::CompileTimeout(_) => ErrorCode::CompileTimeout,
            EngineError::Store(_) => ErrorCode::StorageError,
        };
        Self::new(code, e.to_string())
    }
}

/// A name that is not one (400, `invalid_request`).
impl From<crate::names::NameError> for ApiError {
    fn from(e: crate::names::NameError) -> Self {
        Self::invalid(e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => Self::invalid(format!("the JSON body does not fit: {}", e.body_text())),
            JsonRejection::JsonSyntaxError(e) => {
                Self::new(ErrorCode::MalformedJson, format!("the body is not valid JSON: {}", e.body_text()))
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with `content-type: application/json`",
            ),
            JsonRejection::BytesRejection(e) => body_rejection(e.status(), e.body_text()),
            other => Self::invalid(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::invalid(format!("bad query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        // A path that does not decode (not UTF-8, not the type) is the
        // client's; the other rejections are routing mistakes, ours.
        let code = if r.status().is_client_error() { ErrorCode::InvalidRequest } else { ErrorCode::InternalError };
        Self::new(code, format!("bad path: {}", r.body_text()))
    }
}

/// [`axum::extract::Path`], refusing in the API's error shape (axum's own
/// answers a bad path, e.g. `%FF`, in plain text).
#[derive(Debug)]
pub(crate) struct Path<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

pub(crate) fn body_rejection(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(ErrorCode::PayloadTooLarge, format!("the body is too large: {text}"))
    } else {
        ApiError::new(ErrorCode::BadBody, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_is_a_503_with_retry_after_and_the_error_shape() {
        let response = ApiError::from(EngineError::Store(StoreError::Busy { capacity: 4 })).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "1");
        let plain = ApiError::from(EngineError::Conflict("c".into())).into_response();
        assert_eq!(plain.status(), StatusCode::CONFLICT);
        assert!(plain.headers().get(axum::http::header::RETRY_AFTER).is_none());
    }

    #[test]
    fn a_store_that_cannot_write_is_a_503_with_retry_after_not_a_500() {
        let refused = EngineError::Store(StoreError::Unwritable { reason: "No space left on device".into() });
        let response = ApiError::from(refused).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "5");
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let failed = ApiError::from(EngineError::Store(StoreError::Storage(redb::Error::Io(io))));
        assert_eq!((failed.status(), failed.code), (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StoreUnavailable));
        let poisoned = ApiError::from(EngineError::Store(StoreError::Storage(redb::Error::PreviousIo)));
        assert_eq!((poisoned.status(), poisoned.retry_after), (StatusCode::SERVICE_UNAVAILABLE, Some(5)));
        // A PostgreSQL failure that passes (here a lost connection).
        let lost = StoreError::Postgres(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()));
        let passing = ApiError::from(EngineError::Store(lost)).into_response();
        assert_eq!(passing.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(passing.headers()[axum::http::header::RETRY_AFTER], "1");
        let refused = ApiError::from(EngineError::Store(StoreError::Postgres(sqlx::Error::RowNotFound)));
        assert_eq!(refused.status(), StatusCode::INTERNAL_SERVER_ERROR, "a failure that does not pass");
        let corrupt = ApiError::from(EngineError::Store(StoreError::Corrupt("bad".into())));
        assert_eq!(corrupt.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
