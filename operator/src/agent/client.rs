//! A typed async client of the agent API (reqwest), used by the local
//! platform, the operator and the tests. Does I/O (HTTP).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::agent::*;
use crate::api::AgentUnanswered;

/// What a call to an agent can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection to the agent could be made (refused, no route, DNS).
    #[error("agent at {url} unreachable: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The agent did not answer in time.
    #[error("agent at {url} did not answer in time: {source}")]
    Timeout {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The connection failed otherwise (reset, broken body, client set-up).
    #[error("agent at {url} unreachable: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The agent answered with an error.
    #[error("agent refused ({status}) {}: {}", body.error, body.detail)]
    Api { status: u16, body: ErrorBody },
    /// The answer was not what the protocol says.
    #[error("unexpected answer from the agent ({status}): {detail}")]
    Decode { status: u16, detail: String },
}

impl ClientError {
    /// A failure to talk to the agent at `url`, by what reqwest says of it.
    pub fn transport(url: String, source: reqwest::Error) -> Self {
        if source.is_timeout() {
            ClientError::Timeout { url, source }
        } else if source.is_connect() {
            ClientError::Connect { url, source }
        } else {
            ClientError::Transport { url, source }
        }
    }

    /// The agent's error category (`ERR_*`), when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(body.error.as_str()),
            _ => None,
        }
    }

    /// The HTTP status, when the agent answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            ClientError::Connect { .. }
            | ClientError::Timeout { .. }
            | ClientError::Transport { .. } => None,
        }
    }
}

/// Why a call got no usable answer, as the bounded reason the callers' status,
/// `blockedBy` and metrics carry (a 401 is a wrong token, not a dead agent).
pub fn unanswered(e: &ClientError) -> AgentUnanswered {
    match e {
        ClientError::Timeout { .. } => AgentUnanswered::Timeout,
        ClientError::Connect { source, .. } | ClientError::Transport { source, .. }
            if refused(source) =>
        {
            AgentUnanswered::ConnectionRefused
        }
        ClientError::Connect { .. } | ClientError::Transport { .. } => AgentUnanswered::Unreachable,
        ClientError::Api { status: 401, .. } | ClientError::Decode { status: 401, .. } => {
            AgentUnanswered::Unauthorized
        }
        ClientError::Api { .. } | ClientError::Decode { .. } => AgentUnanswered::BadAnswer,
    }
}

fn refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// Client of one agent.
#[derive(Clone, Debug)]
pub struct AgentClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AgentClient {
    /// A client for the agent at `base` (like `http://127.0.0.1:8000`) with its bearer token.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Result<Self, ClientError> {
        Self::from_address(base, token, None)
    }

    /// A client whose connections leave from `local` (an agent calling its
    /// peers from the address it serves on, so that a partition of that
    /// address cuts its calls too).
    pub fn from_address(
        base: impl Into<String>,
        token: impl Into<String>,
        local: Option<std::net::IpAddr>,
    ) -> Result<Self, ClientError> {
        let base: String = base.into();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(3600))
            .local_address(local)
            .build()
            .map_err(|source| ClientError::transport(base.clone(), source))?;
        Ok(AgentClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.into(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
    ) -> Result<T, ClientError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| ClientError::transport(url.clone(), source))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::transport(url, source))?;
        if (200..300).contains(&status) {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                status,
                detail: e.to_string(),
            })
        } else {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => Err(ClientError::Api { status, body }),
                Err(_) => Err(ClientError::Decode {
                    status,
                    detail: String::from_utf8_lossy(&bytes).into_owned(),
                }),
            }
        }
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        self.send(self.http.post(&url).json(body), url).await
    }

    /// `GET /healthz`: whether the agent answers.
    pub async fn healthz(&self) -> Result<bool, ClientError> {
        let url = self.url(PATH_HEALTHZ);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| ClientError::transport(url, source))?;
        Ok(resp.status().is_success())
    }

    /// `GET /readyz`: whether postgres is ready in its role.
    pub async fn readyz(&self) -> Result<bool, ClientError> {
        let url = self.url(PATH_READYZ);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| ClientError::transport(url, source))?;
        Ok(resp.status().is_success())
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = self.url(PATH_METRICS);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| ClientError::transport(url.clone(), source))?;
        resp.text()
            .await
            .map_err(|source| ClientError::transport(url, source))
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<AgentStatus, ClientError> {
        let url = self.url(PATH_STATUS);
        self.send(self.http.get(&url), url).await
    }

    /// `GET /status?fresh=true`: the answer of a probe begun after the call.
    pub async fn fresh_status(&self) -> Result<AgentStatus, ClientError> {
        let url = format!("{}?{STATUS_FRESH}", self.url(PATH_STATUS));
        self.send(self.http.get(&url), url).await
    }

    /// `POST /checkpoint`.
    pub async fn checkpoint(&self) -> Result<ActionResponse, ClientError> {
        self.post(PATH_CHECKPOINT, &serde_json::json!({})).await
    }

    /// `POST /promote`.
    pub async fn promote(&self, req: &PromoteRequest) -> Result<ActionResponse, ClientError> {
        self.post(PATH_PROMOTE, req).await
    }

    /// `POST /demote`.
    pub async fn demote(&self, req: &DemoteRequest) -> Result<ActionResponse, ClientError> {
        self.post(PATH_DEMOTE, req).await
    }

    /// `POST /follow`.
    pub async fn follow(&self, req: &FollowRequest) -> Result<ActionResponse, ClientError> {
        self.post(PATH_FOLLOW, req).await
    }

    /// `POST /rewind`.
    pub async fn rewind(&self, req: &RewindRequest) -> Result<ActionResponse, ClientError> {
        self.post(PATH_REWIND, req).await
    }

    /// `POST /reclone`.
    pub async fn reclone(&self, req: &RecloneRequest) -> Result<ActionResponse, ClientError> {
        self.post(PATH_RECLONE, req).await
    }

    /// `POST /stop`.
    pub async fn stop(&self, req: &StopRequest) -> Result<ActionResponse, ClientError> {
        self.post(PATH_STOP, req).await
    }

    /// `POST /start`.
    pub async fn start(&self, req: &StopRequest) -> Result<ActionResponse, ClientError> {
        self.post(PATH_START, req).await
    }

    /// `POST /restart`.
    pub async fn restart(&self, req: &StopRequest) -> Result<ActionResponse, ClientError> {
        self.post(PATH_RESTART, req).await
    }

    /// `POST /config`.
    pub async fn config(&self, req: &ConfigRequest) -> Result<ConfigResponse, ClientError> {
        self.post(PATH_CONFIG, req).await
    }

    /// `POST /drop-slots`.
    pub async fn drop_slots(&self, req: &DropSlotsRequest) -> Result<ActionResponse, ClientError> {
        self.post(PATH_DROP_SLOTS, req).await
    }

    /// `POST /checks`: what the health checks compare against.
    pub async fn checks(&self, req: &ChecksRequest) -> Result<ActionResponse, ClientError> {
        self.post(PATH_CHECKS, req).await
    }

    /// `POST /lease`.
    pub async fn lease(&self, req: &LeaseRequest) -> Result<ActionResponse, ClientError> {
        self.post(PATH_LEASE, req).await
    }

    /// `POST /vouch`: does this member still follow the asking primary?
    pub async fn vouch(&self, req: &VouchRequest) -> Result<VouchResponse, ClientError> {
        self.post(PATH_VOUCH, req).await
    }

    /// `POST /stop-vouching`: vouch for no primary below `epoch` from now on.
    pub async fn stop_vouching(
        &self,
        req: &StopVouchingRequest,
    ) -> Result<StopVouchingResponse, ClientError> {
        self.post(PATH_STOP_VOUCHING, req).await
    }
}
