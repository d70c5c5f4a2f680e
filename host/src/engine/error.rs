//! The engine's errors: what the API turns into status codes.

use crate::registry::RegistryError;
use crate::store::StoreError;
use uuid::Uuid;

/// Why the engine refused or failed a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The request is malformed or out of range; nothing was written.
    #[error("{0}")]
    InvalidRequest(String),
    /// The plugin (or version) is not registered.
    #[error("{0}")]
    UnknownPlugin(String),
    /// The uploaded component cannot be a task plugin.
    #[error("{0}")]
    InvalidPlugin(String),
    /// No task with this id.
    #[error("task {0} not found")]
    NotFound(Uuid),
    /// What the caller asked for is not allowed here (e.g. an ad-hoc
    /// script in a queue that takes none).
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with the task's state.
    #[error("{0}")]
    Conflict(String),
    /// This engine does not offer what was asked (e.g. a plugin registry
    /// in an engine built without one).
    #[error("{0}")]
    Unavailable(String),
    /// A bounded queue is full; try again shortly.
    #[error("{0}")]
    Overloaded(String),
    /// The host keeps at most so many of something (queues, plugin
    /// names), and this request would add one more.
    #[error("{0}")]
    LimitReached(String),
    /// A tenant's quota refuses the request; nothing was written.
    #[error("tenant `{tenant}`: {message} (quota `{quota}`)")]
    QuotaExceeded {
        /// The tenant.
        tenant: String,
        /// The quota, as `GET /v1/tenants/{t}` names it.
        quota: &'static str,
        /// What was refused.
        message: String,
        /// When trying again may succeed (a rate), in seconds.
        retry_after_secs: Option<u32>,
    },
    /// No tenant of this name.
    #[error("no tenant `{0}`")]
    UnknownTenant(String),
    /// Compiling the uploaded component ran past the host's compile budget
    /// and was stopped.
    #[error("{0}")]
    CompileTimeout(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

/// What the store refused for the state a record is in (a lost race with
/// another request, or a record that is gone) is the request's conflict,
/// never a storage failure.
impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Self::NotFound(id),
            StoreError::IllegalTransition { .. } | StoreError::VersionMismatch { .. } => Self::Conflict(e.to_string()),
            StoreError::Refused(message) => Self::Conflict(message),
            other => Self::Store(other),
        }
    }
}

impl EngineError {
    /// Whether the request met a full queue and may succeed if tried again
    /// shortly (the API answers 503 with `Retry-After`).
    pub fn is_overloaded(&self) -> bool {
        matches!(self, Self::Store(StoreError::Busy { .. }) | Self::Overloaded(_))
    }
}

impl From<RegistryError> for EngineError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unknown(_) | RegistryError::UnknownVersion { .. } => Self::UnknownPlugin(e.to_string()),
            RegistryError::BadName(_)
            | RegistryError::BadVersion(_)
            | RegistryError::TooLarge { .. }
            | RegistryError::BadManifest(_) => Self::InvalidRequest(e.to_string()),
            RegistryError::VersionTaken { .. } | RegistryError::InUse { .. } => Self::Conflict(e.to_string()),
            RegistryError::Invalid(_) => Self::InvalidPlugin(e.to_string()),
            RegistryError::Script(ref error) => match error {
                crate::sandbox::ScriptError::PreInitialize { .. } | crate::sandbox::ScriptError::Load { .. } => {
                    Self::Unavailable(e.to_string())
                }
                _ => Self::InvalidPlugin(e.to_string()),
            },
            RegistryError::CompileTimeout { .. } => Self::CompileTimeout(e.to_string()),
            RegistryError::Busy => Self::Overloaded(e.to_string()),
            RegistryError::TooManyPlugins { .. } => Self::LimitReached(e.to_string()),
            RegistryError::Compiler(_) | RegistryError::Io { .. } => Self::Unavailable(e.to_string()),
            RegistryError::Store(s) => Self::Store(s),
        }
    }
}
