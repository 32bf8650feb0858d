//! The agents as the Kubernetes platform reaches them: a trait (so tests can
//! script the answers) and its HTTP implementation over
//! [`crate::agent::client::AgentClient`], mapping the engine's agent actions
//! to agent API calls. Does network I/O.
//!
//! The mapping mirrors `crate::local::exec` (its `call` is private to the
//! local platform); keep both in step until they share one module.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use crate::agent::client::{AgentClient, ClientError};
use crate::api::agent::{
    self as proto, AgentStatus, ConfigRequest, DemoteRequest, FollowRequest, LeaseRequest, Member,
    PromoteRequest, RecloneRequest, RewindRequest, StopRequest, SyncStandbys,
};
use crate::api::DurationString;
use crate::engine::{Action, StopMode};

/// The bearer token of a cluster's agents; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Where one instance's agent answers.
#[derive(Clone, Debug)]
pub struct AgentTarget {
    /// Instance (pod) name.
    pub instance: String,
    /// `http://<pod IP>:<port>`.
    pub base_url: String,
    /// The cluster's agent token.
    pub token: Token,
}

/// Calls to agents. Implementations must bound every call in time.
pub trait AgentOps: Send + Sync + 'static {
    /// `GET /status`; `None` when the agent did not answer within `timeout`.
    fn status(
        &self,
        target: &AgentTarget,
        timeout: Duration,
    ) -> impl Future<Output = Option<AgentStatus>> + Send;

    /// Carry out one agent action; `Ok(detail)` or `Err(message)`.
    /// `members` gives every instance's postgres address.
    fn call(
        &self,
        target: &AgentTarget,
        action: &Action,
        members: &BTreeMap<String, Member>,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;
}

/// The agents over HTTP, with one cached client per address and token.
#[derive(Default)]
pub struct HttpAgents {
    clients: Mutex<HashMap<(String, String), AgentClient>>,
}

impl HttpAgents {
    fn client(&self, t: &AgentTarget) -> Result<AgentClient, String> {
        let key = (t.base_url.clone(), t.token.0.clone());
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let c = AgentClient::new(t.base_url.clone(), t.token.0.clone()).map_err(describe)?;
        // Pod IPs change as pods come and go: keep the cache small.
        if map.len() > 256 {
            map.clear();
        }
        map.insert(key, c.clone());
        Ok(c)
    }
}

impl AgentOps for HttpAgents {
    async fn status(&self, target: &AgentTarget, timeout: Duration) -> Option<AgentStatus> {
        let c = self.client(target).ok()?;
        tokio::time::timeout(timeout, c.status()).await.ok()?.ok()
    }

    async fn call(
        &self,
        target: &AgentTarget,
        action: &Action,
        members: &BTreeMap<String, Member>,
    ) -> Result<Option<String>, String> {
        let c = self.client(target)?;
        call(action, &c, members).await
    }
}

fn duration_ms(ms: u64) -> Option<DurationString> {
    format!("{ms}ms").parse().ok()
}

fn stop_mode(m: StopMode) -> proto::StopMode {
    match m {
        StopMode::Smart => proto::StopMode::Smart,
        StopMode::Fast => proto::StopMode::Fast,
        StopMode::Immediate => proto::StopMode::Immediate,
    }
}

fn member(members: &BTreeMap<String, Member>, name: &str) -> Result<Member, String> {
    members
        .get(name)
        .cloned()
        .ok_or_else(|| format!("unknown instance {name}"))
}

fn describe(e: ClientError) -> String {
    match &e {
        ClientError::Api { body, .. } if body.detail.is_empty() => body.error.clone(),
        ClientError::Api { body, .. } => format!("{}: {}", body.error, body.detail),
        _ => e.to_string(),
    }
}

async fn call(
    a: &Action,
    c: &AgentClient,
    members: &BTreeMap<String, Member>,
) -> Result<Option<String>, String> {
    let resp = match a {
        Action::Promote { .. } => match c.promote(&PromoteRequest::default()).await {
            // Already primary: the promotion happened (idempotent).
            Err(e) if e.code() == Some(proto::ERR_ALREADY_PRIMARY) => {
                return Ok(Some("already primary".into()))
            }
            other => other,
        },
        Action::Demote { primary, .. } => {
            c.demote(&DemoteRequest {
                primary: member(members, primary)?,
                timeout: None,
            })
            .await
        }
        Action::Follow { primary, .. } => {
            c.follow(&FollowRequest {
                primary: member(members, primary)?,
            })
            .await
        }
        Action::Rewind {
            source, dry_run, ..
        } => {
            c.rewind(&RewindRequest {
                source: member(members, source)?,
                dry_run: *dry_run,
            })
            .await
        }
        Action::Reclone { source, .. } => {
            c.reclone(&RecloneRequest {
                source: member(members, source)?,
            })
            .await
        }
        Action::Stop {
            mode, timeout_ms, ..
        } => {
            c.stop(&StopRequest {
                mode: stop_mode(*mode),
                timeout: duration_ms(*timeout_ms),
            })
            .await
        }
        Action::Start { .. } => c.start(&StopRequest::default()).await,
        Action::Restart {
            mode, timeout_ms, ..
        } => {
            c.restart(&StopRequest {
                mode: stop_mode(*mode),
                timeout: duration_ms(*timeout_ms),
            })
            .await
        }
        Action::Config {
            synchronous_commit,
            sync_quorum,
            sync_names,
            parameters,
            ..
        } => {
            let req = ConfigRequest {
                parameters: parameters.clone(),
                synchronous_commit: Some(synchronous_commit.clone()),
                synchronous_standbys: Some(SyncStandbys {
                    count: *sync_quorum,
                    names: sync_names.clone(),
                }),
                known_standbys: None,
            };
            return c
                .config(&req)
                .await
                .map(|r| {
                    (!r.pending_restart.is_empty())
                        .then(|| format!("pending restart: {}", r.pending_restart.join(", ")))
                })
                .map_err(describe);
        }
        Action::RenewLease { ttl_ms, .. } => {
            return tokio::time::timeout(
                Duration::from_secs(2),
                c.lease(&LeaseRequest { ttl_ms: *ttl_ms }),
            )
            .await
            .map_err(|_| "lease renewal timed out".to_string())?
            .map(|_| None)
            .map_err(describe)
        }
        Action::SetRole { .. }
        | Action::FenceInstance { .. }
        | Action::Event { .. }
        | Action::RequestDone { .. } => return Ok(None),
    };
    resp.map(|r| {
        let mut detail = r.message;
        if let Some(n) = r.rewind_needed {
            detail = format!("{detail} (rewind needed: {n})");
        }
        Some(detail)
    })
    .map_err(describe)
}
