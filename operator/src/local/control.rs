//! The control API of `tandem local up` (the other verbs talk to it): the
//! request and answer types, the axum server and the reqwest client. Does
//! network I/O.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot, watch};

use super::report::StatusReport;
use super::state::LocalState;
use crate::api::{DataDurability, DbClusterSpec, ReplicationMode, SynchronousCommit};

/// Path of the status call.
pub const PATH_STATUS: &str = "/status";
/// Path of the request call.
pub const PATH_REQUEST: &str = "/request";

/// A user request to the running cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "verb", rename_all = "camelCase")]
pub enum LocalRequest {
    /// Switch over to `to` (an instance or `any`).
    #[serde(rename_all = "camelCase")]
    Switchover {
        to: String,
        dry_run: bool,
        force: bool,
    },
    /// Pause automation.
    Pause,
    /// Resume automation.
    Unpause,
    /// Restart an instance or `all`.
    Restart { name: String },
    /// Rejoin an instance.
    #[serde(rename_all = "camelCase")]
    Rejoin { name: String, dry_run: bool },
    /// Re-clone an instance.
    Reclone { name: String },
    /// Promote a standby while the primary is down or unreachable.
    Promote { name: String, force: bool },
    /// Change durability settings.
    #[serde(rename_all = "camelCase")]
    Set {
        mode: Option<ReplicationMode>,
        synchronous_commit: Option<SynchronousCommit>,
        data_durability: Option<DataDurability>,
        sync_standbys: Option<i32>,
    },
    /// Send a signal to an instance's postgres or agent.
    Kill {
        name: String,
        signal: KillSignal,
        agent: bool,
    },
    /// Apply a changed manifest (`tandem local apply`).
    Apply {
        /// metadata.name of the manifest.
        name: String,
        spec: Box<DbClusterSpec>,
    },
    /// Stop the cluster.
    Down,
}

/// The signals fault injection may send (`tandem local kill --signal`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "UPPERCASE")]
#[value(rename_all = "UPPER")]
pub enum KillSignal {
    /// SIGKILL: the process dies at once.
    Kill,
    /// SIGSTOP: the process freezes (a hung node).
    Stop,
    /// SIGCONT: a frozen process goes on.
    Cont,
}

impl KillSignal {
    /// The name without the SIG prefix, as `kill -l` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kill => "KILL",
            Self::Stop => "STOP",
            Self::Cont => "CONT",
        }
    }
}

impl std::fmt::Display for KillSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A finished request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Outcome {
    /// One line saying what happened.
    pub message: String,
    /// Further lines (for example each precheck with its figure).
    #[serde(default)]
    pub detail: Vec<String>,
}

/// A refused or failed request: the first line and the detail.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Refusal {
    /// One line saying why.
    pub error: String,
    /// Further lines.
    #[serde(default)]
    pub detail: Vec<String>,
}

/// Talking to the control API failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the control API at {addr} does not answer: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("{message}")]
    Refused {
        message: String,
        detail: Vec<String>,
    },
    #[error("unexpected answer from the control API: {0}")]
    Protocol(String),
}

/// What the control server hands to the driver: a request and where to answer.
pub type Submission = (LocalRequest, oneshot::Sender<Result<Outcome, Refusal>>);

/// Shared state of the control server.
#[derive(Clone)]
pub struct ControlServer {
    token: String,
    requests: mpsc::Sender<Submission>,
    status: watch::Receiver<StatusReport>,
}

impl ControlServer {
    /// A server answering status from `status` and passing requests to `requests`.
    pub fn new(
        token: String,
        requests: mpsc::Sender<Submission>,
        status: watch::Receiver<StatusReport>,
    ) -> Self {
        Self {
            token,
            requests,
            status,
        }
    }

    /// The axum router.
    pub fn router(self) -> Router {
        Router::new()
            .route(PATH_STATUS, get(get_status))
            .route(PATH_REQUEST, post(post_request))
            .layer(DefaultBodyLimit::max(64 * 1024))
            .with_state(self)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some(given) = value.strip_prefix("Bearer ") else {
            return false;
        };
        given.as_bytes().ct_eq(self.token.as_bytes()).into()
    }
}

fn refusal(status: StatusCode, error: impl Into<String>, detail: Vec<String>) -> Response {
    (
        status,
        Json(Refusal {
            error: error.into(),
            detail,
        }),
    )
        .into_response()
}

async fn get_status(State(s): State<ControlServer>, headers: HeaderMap) -> Response {
    if !s.authorized(&headers) {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
            vec![],
        );
    }
    let report = s.status.borrow().clone();
    Json(report).into_response()
}

async fn post_request(
    State(s): State<ControlServer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !s.authorized(&headers) {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
            vec![],
        );
    }
    let req: LocalRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "malformed request",
                vec![e.to_string()],
            )
        }
    };
    let (tx, rx) = oneshot::channel();
    if s.requests.send((req, tx)).await.is_err() {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster is shutting down",
            vec![],
        );
    }
    match rx.await {
        Ok(Ok(outcome)) => Json(outcome).into_response(),
        Ok(Err(r)) => refusal(StatusCode::CONFLICT, r.error, r.detail),
        Err(_) => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster stopped before answering",
            vec![],
        ),
    }
}

/// Client of a running `local up`.
pub struct ControlClient {
    addr: SocketAddr,
    token: String,
    http: reqwest::Client,
}

impl ControlClient {
    /// A client for the cluster described by `state`.
    pub fn new(state: &LocalState) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            addr: state.control,
            token: state.token.clone(),
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn unreachable(&self, e: reqwest::Error) -> ControlError {
        ControlError::Unreachable {
            addr: self.addr,
            reason: e.without_url().to_string(),
        }
    }

    /// The status report.
    pub async fn status(&self) -> Result<StatusReport, ControlError> {
        let resp = self
            .http
            .get(self.url(PATH_STATUS))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        decode(resp).await
    }

    /// Submit a request and wait for its outcome (requests like a switchover take a while).
    pub async fn request(&self, req: &LocalRequest) -> Result<Outcome, ControlError> {
        let resp = self
            .http
            .post(self.url(PATH_REQUEST))
            .bearer_auth(&self.token)
            .json(req)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        decode(resp).await
    }
}

async fn decode<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
) -> Result<T, ControlError> {
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ControlError::Protocol(e.without_url().to_string()))?;
    if status.is_success() {
        serde_json::from_slice(&bytes).map_err(|e| ControlError::Protocol(e.to_string()))
    } else {
        match serde_json::from_slice::<Refusal>(&bytes) {
            Ok(r) => Err(ControlError::Refused {
                message: r.error,
                detail: r.detail,
            }),
            Err(_) => Err(ControlError::Protocol(format!("HTTP {status}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_kill_carry_the_api_values_under_their_wire_names() {
        let set = LocalRequest::Set {
            mode: Some(ReplicationMode::Sync),
            synchronous_commit: Some(SynchronousCommit::RemoteWrite),
            data_durability: Some(DataDurability::Required),
            sync_standbys: Some(1),
        };
        let json = serde_json::to_value(&set).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"verb": "set", "mode": "sync", "synchronousCommit": "remote_write",
                "dataDurability": "required", "syncStandbys": 1})
        );
        assert_eq!(serde_json::from_value::<LocalRequest>(json).unwrap(), set);

        let kill = LocalRequest::Kill {
            name: "main-0".into(),
            signal: KillSignal::Stop,
            agent: true,
        };
        let json = serde_json::to_value(&kill).unwrap();
        assert_eq!(json["signal"], "STOP");
        assert_eq!(serde_json::from_value::<LocalRequest>(json).unwrap(), kill);
        assert!(serde_json::from_value::<LocalRequest>(
            serde_json::json!({"verb": "kill", "name": "main-0", "signal": "TERM", "agent": false})
        )
        .is_err());
    }
}
