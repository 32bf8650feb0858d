//! The agent's error type and its HTTP mapping (`{"error","detail"}` with a
//! fitting status code). Each refusal carries what it is about as typed
//! fields; the detail text is their rendering. No I/O.

use std::path::PathBuf;

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
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    /// Promote on a primary.
    #[error("{instance} is already a primary (timeline {timeline}); nothing was changed")]
    AlreadyPrimary {
        /// This instance.
        instance: String,
        /// The timeline it is on.
        timeline: i64,
    },
    /// Asked to follow (or clone from) itself.
    #[error("{what} {name} ({address}) is this instance itself; nothing was changed")]
    SelfTarget {
        /// The role of the member in the request (`primary`, `source`).
        what: &'static str,
        /// Its name.
        name: String,
        /// Its `host:port`.
        address: String,
    },
    /// The named primary or source cannot be used.
    #[error(transparent)]
    BadTarget(#[from] BadTarget),
    /// The action does not fit the instance's state.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// postgres is not running or cannot be reached.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// pg_rewind failed.
    #[error("pg_rewind failed: {0}")]
    RewindFailed(#[source] pg::Error),
    /// A PostgreSQL operation failed.
    #[error(transparent)]
    Pg(#[from] pg::Error),
    /// Startup configuration is unusable.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// A lease renewal of a lower epoch than the agent knows.
    #[error("lease epoch {epoch} is older than epoch {known}, which this agent knows; nothing was changed")]
    StaleEpoch {
        /// The renewal's epoch.
        epoch: u64,
        /// The highest epoch this agent knows.
        known: u64,
    },
    /// The known lease epoch cannot be read or kept.
    #[error(transparent)]
    Epoch(#[from] super::epoch::EpochError),
    /// The task carrying out an action panicked or was cancelled.
    #[error("{action} task failed: {source}")]
    TaskFailed {
        /// The action (`promote`, `demote`…).
        action: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// A request that is malformed or asks for a value the agent refuses (400).
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    /// The body is not the protocol's JSON.
    #[error("malformed request body: {0}")]
    MalformedBody(#[source] serde_json::Error),
    /// A member lacks its name, host or port.
    #[error("{what} needs a name, a host and a port")]
    IncompleteMember {
        /// The role of the member in the request (`primary`, `source`).
        what: &'static str,
    },
    /// A parameter the agent manages itself.
    #[error("{name} is managed by the agent and cannot be set; nothing was changed")]
    ManagedParameter {
        /// The parameter.
        name: String,
    },
    /// A `synchronous_commit` value PostgreSQL does not have.
    #[error("synchronous_commit {value:?} is not one of {allowed:?}; nothing was changed")]
    SynchronousCommit {
        /// The value asked for.
        value: String,
        /// The values there are.
        allowed: &'static [&'static str],
    },
    /// Parameters PostgreSQL does not know.
    #[error("unknown parameters {names:?}; nothing was changed")]
    UnknownParameters {
        /// Their names.
        names: Vec<String>,
    },
    /// ALTER SYSTEM refused a value.
    #[error("{name}: {source}")]
    Parameter {
        /// The parameter.
        name: String,
        #[source]
        source: pg::Error,
    },
    /// A lease of no time.
    #[error("ttlMs must be positive")]
    ZeroLeaseTtl,
    /// A renewal echoing a status answer the agent has not given yet.
    #[error("challenge {challenge} is from the future (the agent's clock is at {now}); nothing was changed")]
    FutureChallenge {
        /// The challenge sent.
        challenge: u64,
        /// The agent's clock now (ms since it started).
        now: u64,
    },
    /// A renewal both solo and with peers.
    #[error("a solo lease has no peers; nothing was changed")]
    SoloWithPeers,
    /// Health-check thresholds that do not make sense.
    #[error("bad check thresholds: {detail}")]
    Thresholds {
        /// The values and what is wrong with them.
        detail: String,
    },
}

/// The primary or source named in a request cannot be used (422).
#[derive(Debug, thiserror::Error)]
pub enum BadTarget {
    /// It does not answer, before anything was changed.
    #[error("{what} {name} at {address} cannot be reached: {source}; nothing was changed")]
    Unreachable {
        /// The role of the member in the request (`primary`, `source`).
        what: &'static str,
        /// Its name.
        name: String,
        /// Its `host:port`.
        address: String,
        #[source]
        source: Box<pg::Error>,
    },
    /// It does not answer, in the middle of an action.
    #[error("cannot reach {address}: {source}")]
    Lost {
        /// Its `host:port`.
        address: String,
        #[source]
        source: Box<pg::Error>,
    },
    /// It is in recovery.
    #[error(
        "{what} {name} at {address} is not a primary (it is in recovery); nothing was changed"
    )]
    NotPrimary {
        /// The role of the member in the request (`primary`, `source`).
        what: &'static str,
        /// Its name.
        name: String,
        /// Its `host:port`.
        address: String,
    },
    /// Its system identifier is not ours.
    #[error("{what} {name} belongs to another cluster (system identifier {theirs}, ours {ours}); nothing was changed")]
    ForeignCluster {
        /// The role of the member in the request (`primary`, `source`).
        what: &'static str,
        /// Its name.
        name: String,
        /// Its system identifier.
        theirs: String,
        /// Ours.
        ours: String,
    },
}

/// The action does not fit the instance's state (409).
#[derive(Debug, thiserror::Error)]
pub enum Conflict {
    /// The data directory holds something other than a cluster.
    #[error("{} is not empty and holds no PostgreSQL cluster; refusing to touch it", dir.display())]
    ForeignDataDir {
        /// The data directory.
        dir: PathBuf,
    },
    /// Bootstrap has not made a cluster yet.
    #[error("the data directory holds no cluster (bootstrap has not finished)")]
    NotBootstrapped,
    /// pg_promote did not return in time.
    #[error("promotion did not finish within {seconds}s")]
    PromotionTimeout {
        /// How long it was given.
        seconds: u64,
    },
    /// pg_promote could not signal the postmaster.
    #[error("pg_promote could not signal the postmaster to promote")]
    PromoteNotSignalled,
    /// Promoted, but still in recovery or on the old timeline.
    #[error("postgres did not leave recovery onto a new timeline")]
    NoNewTimeline,
    /// Follow asked of a primary.
    #[error("{instance} is a primary; use demote to make it follow {primary}")]
    IsPrimary {
        /// This instance.
        instance: String,
        /// The primary it was asked to follow.
        primary: String,
    },
    /// Follow asked of a stopped primary.
    #[error("{instance} is a stopped primary; use demote to make it follow {primary}")]
    IsStoppedPrimary {
        /// This instance.
        instance: String,
        /// The primary it was asked to follow.
        primary: String,
    },
    /// Restarted to follow, but does not stream.
    #[error("not streaming from {primary} after a restart")]
    NotStreamingAfterRestart {
        /// The primary it follows.
        primary: String,
    },
    /// pg_controldata printed no system identifier.
    #[error("pg_controldata shows no system identifier")]
    NoSystemIdentifier,
    /// Started as a standby, but does not stream.
    #[error("started as a standby of {primary} but it is not streaming after {seconds}s")]
    NotStreaming {
        /// The primary it follows.
        primary: String,
        /// How long it was given.
        seconds: u64,
    },
}

/// postgres is not running or does not answer (503).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// postgres is stopped.
    #[error("postgres is not running; start it before {before}")]
    NotRunning {
        /// What needs it running (`promoting`…).
        before: &'static str,
    },
    /// postgres runs but a connection fails.
    #[error("postgres does not answer: {0}")]
    NoAnswer(#[source] pg::Error),
}

/// Flags or files the agent cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A secret file cannot be read.
    #[error("{what} file {}: {source}", path.display())]
    SecretFile {
        /// Which secret.
        what: &'static str,
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A secret file is empty.
    #[error("{what} file {} is empty", path.display())]
    EmptySecret {
        /// Which secret.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A secret given neither as a file nor as a value.
    #[error("set {flag} or {env}")]
    MissingSecret {
        /// Its file flag.
        flag: &'static str,
        /// Its environment variable.
        env: &'static str,
    },
    /// An address without `:port`.
    #[error("{address:?} is not host:port")]
    NotHostPort {
        /// The address given.
        address: String,
    },
    /// An address whose port is not a number.
    #[error("{address:?} has no valid port")]
    BadPort {
        /// The address given.
        address: String,
    },
    /// The current directory (for a relative data directory) cannot be read.
    #[error("current directory: {0}")]
    CurrentDir(#[source] std::io::Error),
    /// The archive thresholds are the wrong way round.
    #[error("--archive-ready-warning must not exceed --archive-ready-critical")]
    ArchiveThresholds,
}

impl AgentError {
    /// The HTTP status and the fixed error category.
    pub fn classify(&self) -> (StatusCode, &'static str) {
        match self {
            AgentError::Unauthorized => (StatusCode::UNAUTHORIZED, proto::ERR_UNAUTHORIZED),
            AgentError::BadRequest(_) => (StatusCode::BAD_REQUEST, proto::ERR_BAD_REQUEST),
            AgentError::AlreadyPrimary { .. } => (StatusCode::CONFLICT, proto::ERR_ALREADY_PRIMARY),
            AgentError::SelfTarget { .. } => (StatusCode::BAD_REQUEST, proto::ERR_SELF_TARGET),
            AgentError::BadTarget(_) => (StatusCode::UNPROCESSABLE_ENTITY, proto::ERR_BAD_TARGET),
            AgentError::Conflict(_) => (StatusCode::CONFLICT, proto::ERR_CONFLICT),
            AgentError::StaleEpoch { .. } => (StatusCode::CONFLICT, proto::ERR_STALE_EPOCH),
            AgentError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, proto::ERR_UNAVAILABLE),
            AgentError::RewindFailed(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, proto::ERR_REWIND_FAILED)
            }
            AgentError::Pg(_) => (StatusCode::INTERNAL_SERVER_ERROR, proto::ERR_TOOL_FAILED),
            AgentError::Config(_) | AgentError::Epoch(_) | AgentError::TaskFailed { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, proto::ERR_INTERNAL)
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_category_and_render_their_fields() {
        let e = AgentError::from(BadTarget::NotPrimary {
            what: "primary",
            name: "main-1".into(),
            address: "h:5432".into(),
        });
        assert_eq!(
            e.classify(),
            (StatusCode::UNPROCESSABLE_ENTITY, proto::ERR_BAD_TARGET)
        );
        assert_eq!(
            e.to_string(),
            "primary main-1 at h:5432 is not a primary (it is in recovery); nothing was changed"
        );
        let e = AgentError::from(Unavailable::NotRunning {
            before: "promoting",
        });
        assert_eq!(e.classify().1, proto::ERR_UNAVAILABLE);
        assert_eq!(
            e.to_string(),
            "postgres is not running; start it before promoting"
        );
        let e = AgentError::from(ConfigError::MissingSecret {
            flag: "--token-file",
            env: "TANDEM_TOKEN",
        });
        assert_eq!(
            e.to_string(),
            "configuration: set --token-file or TANDEM_TOKEN"
        );
    }
}
