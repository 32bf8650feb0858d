//! The agent's error type and its HTTP mapping (`{"error","detail"}` with a
//! fitting status code). No I/O.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::agent::{self as proto, ErrorBody};
use crate::pg;

/// Everything an agent action or its startup can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Missing or wrong bearer token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// The request body is malformed or a value is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// Promote on a primary.
    #[error("{0}")]
    AlreadyPrimary(String),
    /// Asked to follow itself.
    #[error("{0}")]
    SelfTarget(String),
    /// The named primary or source cannot be used.
    #[error("{0}")]
    BadTarget(String),
    /// The action does not fit the instance's state.
    #[error("{0}")]
    Conflict(String),
    /// postgres is not running or cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// pg_rewind failed.
    #[error("pg_rewind failed: {0}")]
    RewindFailed(#[source] pg::Error),
    /// A PostgreSQL operation failed.
    #[error(transparent)]
    Pg(#[from] pg::Error),
    /// Startup configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

impl AgentError {
    /// The HTTP status and the fixed error category.
    pub fn classify(&self) -> (StatusCode, &'static str) {
        match self {
            AgentError::Unauthorized => (StatusCode::UNAUTHORIZED, proto::ERR_UNAUTHORIZED),
            AgentError::BadRequest(_) => (StatusCode::BAD_REQUEST, proto::ERR_BAD_REQUEST),
            AgentError::AlreadyPrimary(_) => (StatusCode::CONFLICT, proto::ERR_ALREADY_PRIMARY),
            AgentError::SelfTarget(_) => (StatusCode::BAD_REQUEST, proto::ERR_SELF_TARGET),
            AgentError::BadTarget(_) => (StatusCode::UNPROCESSABLE_ENTITY, proto::ERR_BAD_TARGET),
            AgentError::Conflict(_) => (StatusCode::CONFLICT, proto::ERR_CONFLICT),
            AgentError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, proto::ERR_UNAVAILABLE),
            AgentError::RewindFailed(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, proto::ERR_REWIND_FAILED)
            }
            AgentError::Pg(_) => (StatusCode::INTERNAL_SERVER_ERROR, proto::ERR_TOOL_FAILED),
            AgentError::Config(_) => (StatusCode::INTERNAL_SERVER_ERROR, proto::ERR_INTERNAL),
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let (status, error) = self.classify();
        let body = ErrorBody {
            error: error.to_string(),
            detail: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}
