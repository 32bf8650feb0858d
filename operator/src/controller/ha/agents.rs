//! The agents as the Kubernetes platform reaches them: a trait (so tests can
//! script the answers) and its HTTP implementation over
//! [`crate::agent::client::AgentClient`], mapping the engine's agent actions
//! to agent API calls. Does network I/O.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use crate::agent::client::AgentClient;
use crate::api::agent::{AgentStatus, Member, ToolLimits};
use crate::api::AgentUnanswered;
use crate::engine::{Action, Answer};

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

    /// `GET /status`, or why the agent did not answer within `timeout`
    /// (`Err(None)` when this implementation cannot tell why).
    fn poll(
        &self,
        target: &AgentTarget,
        timeout: Duration,
    ) -> impl Future<Output = Result<AgentStatus, Option<AgentUnanswered>>> + Send {
        async move { self.status(target, timeout).await.ok_or(None) }
    }

    /// As [`AgentOps::poll`], answered from a probe begun after the call
    /// (`GET /status?fresh=true`): during a transition each step waits on
    /// what the previous one changed, which the agent's periodic probe shows
    /// up to a probe interval later.
    fn poll_fresh(
        &self,
        target: &AgentTarget,
        timeout: Duration,
    ) -> impl Future<Output = Result<AgentStatus, Option<AgentUnanswered>>> + Send {
        self.poll(target, timeout)
    }

    /// Carry out one agent action: the agent's answer or `Err(message)`.
    /// `members` gives every instance's postgres address, `limits` the
    /// time limits of pg_rewind and pg_basebackup.
    fn call(
        &self,
        target: &AgentTarget,
        action: &Action,
        members: &BTreeMap<String, Member>,
        limits: &ToolLimits,
    ) -> impl Future<Output = Result<Answer, String>> + Send;
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
        let c = AgentClient::new(t.base_url.clone(), t.token.0.clone())
            .map_err(crate::platform::describe)?;
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
        self.poll(target, timeout).await.ok()
    }

    async fn poll(
        &self,
        target: &AgentTarget,
        timeout: Duration,
    ) -> Result<AgentStatus, Option<AgentUnanswered>> {
        let c = self
            .client(target)
            .map_err(|_| Some(AgentUnanswered::Unreachable))?;
        match tokio::time::timeout(timeout, c.status()).await {
            Err(_) => Err(Some(AgentUnanswered::Timeout)),
            Ok(r) => r.map_err(|e| Some(crate::agent::client::unanswered(&e))),
        }
    }

    async fn poll_fresh(
        &self,
        target: &AgentTarget,
        timeout: Duration,
    ) -> Result<AgentStatus, Option<AgentUnanswered>> {
        let c = self
            .client(target)
            .map_err(|_| Some(AgentUnanswered::Unreachable))?;
        match tokio::time::timeout(timeout, c.fresh_status()).await {
            Err(_) => Err(Some(AgentUnanswered::Timeout)),
            Ok(r) => r.map_err(|e| Some(crate::agent::client::unanswered(&e))),
        }
    }

    async fn call(
        &self,
        target: &AgentTarget,
        action: &Action,
        members: &BTreeMap<String, Member>,
        limits: &ToolLimits,
    ) -> Result<Answer, String> {
        let c = self.client(target)?;
        crate::platform::call(action, &c, members, limits).await
    }
}
