//! The one error body: `{"error": {"code": "...", "message": "..."}}`, with
//! the HTTP status saying the same thing. A batch item that is refused
//! carries the same `error` object (see [`super::BatchRefusal`]).

use serde::{Deserialize, Serialize};
use std::fmt;

/// What every refused request gets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// A refusal: a stable code for programs and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_request`, `malformed_json`, `not_found`,
    /// `unknown_plugin`, `conflict`, `payload_too_large`,
    /// `unsupported_media_type`, `invalid_plugin`, `unavailable`,
    /// `storage_error`, ...
    pub code: String,
    /// What is wrong and, where it can, what was expected.
    pub message: String,
}

impl ErrorDetail {
    /// An error with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into() }
    }
}

impl ErrorBody {
    /// The body of an error with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { error: ErrorDetail::new(code, message) }
    }
}

/// `code: message`, as the CLI prints it.
impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_error_body_has_one_shape() {
        let body = ErrorBody::new("not_found", "task x not found");
        let value = serde_json::to_value(&body).unwrap();
        assert_eq!(value, json!({"error": {"code": "not_found", "message": "task x not found"}}));
        assert_eq!(serde_json::from_value::<ErrorBody>(value).unwrap(), body);
        assert_eq!(body.error.to_string(), "not_found: task x not found");
    }
}
