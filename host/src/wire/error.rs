//! The one error body: `{"error": {"code": "...", "message": "..."}}`, with
//! the HTTP status saying the same thing, and [`ErrorCode`], every code it
//! can carry. A batch item that is refused carries the same `error` object
//! (see [`super::BatchRefusal`]).

use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};

/// Declares [`ErrorCode`] and its table in one place: each variant's doc
/// comment is its published meaning, beside its wire name and status.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])+ $variant:ident = $code:literal, $status:literal;)+) => {
        /// Every `code` an error body can carry: what a program matches on.
        /// The message says the particulars; the HTTP status agrees with
        /// the code ([`ErrorCode::status`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl ErrorCode {
            /// Every code, in the order the OpenAPI document lists them.
            pub const ALL: &[ErrorCode] = &[$(Self::$variant),+];

            /// The code as it is sent, e.g. `not_found`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)+
                }
            }

            /// The HTTP status that comes with the code.
            pub fn status(self) -> u16 {
                match self {
                    $(Self::$variant => $status,)+
                }
            }

            /// What the code means (its doc comment).
            pub fn meaning(self) -> &'static str {
                match self {
                    $(Self::$variant => concat!($($doc),+),)+
                }
            }
        }
    };
}

error_codes! {
    /// The request is well-formed but its values are wrong.
    InvalidRequest = "invalid_request", 400;
    /// The body is not JSON.
    MalformedJson = "malformed_json", 400;
    /// The body could not be read.
    BadBody = "bad_body", 400;
    /// No token, or a malformed, unknown, revoked or expired one.
    Unauthorized = "unauthorized", 401;
    /// The token's scope or tenant does not allow this.
    Forbidden = "forbidden", 403;
    /// No such task, flow, plugin version, queue, model, token, tenant or
    /// endpoint.
    NotFound = "not_found", 404;
    /// The task or flow step names a plugin (or version) this tenant does
    /// not have.
    UnknownPlugin = "unknown_plugin", 404;
    /// This host serves no models.
    NoModels = "no_models", 404;
    /// The request body did not arrive in time (the connection is closed).
    RequestTimeout = "request_timeout", 408;
    /// The object's state does not allow this (e.g. cancelling an ended
    /// task, deleting a version a task uses).
    Conflict = "conflict", 409;
    /// A count limit is reached (queues, plugin names, tokens).
    LimitReached = "limit_reached", 409;
    /// The body is larger than allowed.
    PayloadTooLarge = "payload_too_large", 413;
    /// The body's content type is not the one expected.
    UnsupportedMediaType = "unsupported_media_type", 415;
    /// The upload is not a component (or script) this host can run.
    InvalidPlugin = "invalid_plugin", 422;
    /// Compiling the upload took longer than the compile budget.
    CompileTimeout = "compile_timeout", 422;
    /// ONNX Runtime cannot load the model.
    InvalidModel = "invalid_model", 422;
    /// A tenant's quota refuses it; `Retry-After` says when to try again
    /// (for a rate).
    QuotaExceeded = "quota_exceeded", 429;
    /// The store failed.
    StorageError = "storage_error", 500;
    /// The host failed; the operator's log has the same message.
    InternalError = "internal_error", 500;
    /// A bounded queue is full; try again after `Retry-After`.
    Overloaded = "overloaded", 503;
    /// This host does not offer what was asked, or could not do it now
    /// (e.g. start a compile process, write an upload to disk).
    Unavailable = "unavailable", 503;
    /// The store cannot write (e.g. a full disk); try again after
    /// `Retry-After`.
    StoreUnwritable = "store_unwritable", 503;
    /// The store is reopening its file after a fault; try again after
    /// `Retry-After`.
    StoreUnavailable = "store_unavailable", 503;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string enum whose description is the table of codes, statuses and
/// meanings.
impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        let mut description = String::from(
            "Every code an error body can carry: what a program matches on (the message says the particulars). \
             A client should treat a code it does not know by its HTTP status.\n\n| code | status | meaning |\n|---|---|---|\n",
        );
        for code in Self::ALL {
            let meaning = code.meaning().split_whitespace().collect::<Vec<_>>().join(" ");
            description.push_str(&format!("| `{code}` | {} | {meaning} |\n", code.status()));
        }
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .enum_values(Some(Self::ALL.iter().map(|code| code.as_str())))
            .description(Some(description))
            .into()
    }
}

impl utoipa::ToSchema for ErrorCode {}

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
    /// Machine-readable: one of the `ErrorCode` values. Kept as a string
    /// on the wire so that a client reads a code a newer server added.
    #[schema(value_type = ErrorCode)]
    pub code: String,
    /// What is wrong and, where it can, what was expected.
    pub message: String,
}

impl ErrorDetail {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code: code.as_str().to_owned(), message: message.into() }
    }
}

impl ErrorBody {
    /// The body of an error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
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
        let body = ErrorBody::new(ErrorCode::NotFound, "task x not found");
        let value = serde_json::to_value(&body).unwrap();
        assert_eq!(value, json!({"error": {"code": "not_found", "message": "task x not found"}}));
        assert_eq!(serde_json::from_value::<ErrorBody>(value).unwrap(), body);
        assert_eq!(body.error.to_string(), "not_found: task x not found");
    }

    #[test]
    fn every_code_is_listed_once_with_its_serde_name_and_an_error_status() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert!(!ErrorCode::ALL[i + 1..].contains(code), "{code} twice");
            // The published name is the one serde sends and reads.
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
            assert_eq!(serde_json::from_value::<ErrorCode>(json!(code.as_str())).unwrap(), *code);
            assert!((400..600).contains(&code.status()), "{code}");
            assert!(code.meaning().len() > 10, "{code}");
        }
    }
}
