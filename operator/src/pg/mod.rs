//! PostgreSQL operations: queries, the pg_ctl / initdb / pg_rewind /
//! pg_basebackup runner, pg_controldata and pg_waldump readings,
//! configuration and signal files. Does I/O.

pub mod bins;
pub mod conf;
pub mod control;
pub mod process;
pub mod query;
pub mod replcheck;
pub mod runner;
pub mod timeline;
pub mod wal;

use std::path::PathBuf;

pub use runner::{RunAs, Runner, Tool, Watch};

/// What can go wrong talking to PostgreSQL or running its tools.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable PostgreSQL binary directory.
    #[error("PostgreSQL binaries not found: {0}")]
    BinariesNotFound(String),
    /// The run-as user does not exist or cannot be looked up.
    #[error("user {user:?} cannot be used to run postgres: {reason}")]
    User { user: String, reason: String },
    /// A tool could not be started at all.
    #[error("could not start {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// A tool ran and failed; `output` is its own message.
    #[error("{tool} failed ({status}): {output}")]
    ToolFailed {
        tool: String,
        status: String,
        output: String,
    },
    /// A tool did not finish in time and was killed.
    #[error("{tool} did not finish within {seconds}s and was killed")]
    Timeout { tool: String, seconds: u64 },
    /// A tool made no progress for the stall timeout and was killed.
    #[error(
        "{tool} made no progress for {seconds}s (stall timeout; last at {last}) and was killed"
    )]
    Stalled {
        tool: String,
        seconds: u64,
        last: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A query failed or postgres could not be reached.
    #[error("{context}: {source}")]
    Sql {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Connecting or querying took too long.
    #[error("{0} timed out")]
    SqlTimeout(String),
    /// postgres exited while starting, with its last log lines.
    #[error("postgres exited while starting ({status}): {log}")]
    StartFailed { status: String, log: String },
    /// postgres did not accept connections in time.
    #[error("postgres did not accept connections within {0}s")]
    StartTimeout(u64),
    /// A parameter name that is not an identifier.
    #[error("invalid parameter name {0:?}")]
    InvalidParameter(String),
    /// Sending a signal failed.
    #[error("could not signal postgres: {0}")]
    Signal(nix::Error),
}

impl Error {
    /// Fixed category for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::BinariesNotFound(_) => "binaries_not_found",
            Error::User { .. } => "user",
            Error::Spawn { .. } => "spawn",
            Error::ToolFailed { .. } => "tool_failed",
            Error::Timeout { .. } => "timeout",
            Error::Stalled { .. } => "stalled",
            Error::Io { .. } => "io",
            Error::Sql { .. } => "sql",
            Error::SqlTimeout(_) => "sql_timeout",
            Error::StartFailed { .. } => "start_failed",
            Error::StartTimeout(_) => "start_timeout",
            Error::InvalidParameter(_) => "invalid_parameter",
            Error::Signal(_) => "signal",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
