//! The primary's vouch rounds (DESIGN.md §3, fencing lease; the argument is
//! in docs/agent.md): while this agent runs postgres as the primary and its
//! lease has peers, it asks every peer concurrently whether it still follows
//! it every quarter TTL (also while the operator renews), and
//! extends the lease from the instant it sent the requests only when every
//! peer vouched. Does I/O (HTTP to the peers).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::agent::client::AgentClient;
use crate::api::agent::{Peer, VouchRequest};
use crate::api::InstanceRole;

use super::fence::CHECK_EVERY;
use super::lease::{round_timeout, Round};
use super::state::{lock, Agent};

/// Run vouch rounds forever.
pub async fn run(agent: Arc<Agent>) {
    let mut last_round: Option<Instant> = None;
    let mut clients: HashMap<String, AgentClient> = HashMap::new();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let now = Instant::now();
        let known = *lock(&agent.known_epoch);
        let Some(round) = lock(&agent.lease).round_due(now, last_round, known) else {
            continue;
        };
        let Some(timeline) = primary_timeline(&agent) else {
            continue;
        };
        last_round = Some(now);
        run_round(&agent, &round, timeline, &mut clients).await;
    }
}

/// This instance's timeline while postgres runs as the primary (as its last probe saw it).
fn primary_timeline(agent: &Agent) -> Option<i64> {
    if !agent.postgres_running() {
        return None;
    }
    let st = agent.status.read().ok()?;
    (st.role == InstanceRole::Primary)
        .then_some(st.timeline)
        .flatten()
}

/// One round: ask every peer, extend when all vouch.
async fn run_round(
    agent: &Agent,
    round: &Round,
    timeline: i64,
    clients: &mut HashMap<String, AgentClient>,
) {
    let terms = &round.terms;
    let req = VouchRequest {
        primary: agent.cfg.instance.clone(),
        timeline,
        epoch: terms.epoch,
    };
    let sent_at = Instant::now();
    let asks = terms.peers.iter().map(|p| {
        let client = client_for(agent, clients, p);
        let req = req.clone();
        async move { (p, ask(client, &req, terms.ttl_ms).await) }
    });
    let answers = futures::future::join_all(asks.collect::<Vec<_>>()).await;
    let refusals: Vec<String> = answers
        .into_iter()
        .filter_map(|(p, a)| a.err().map(|why| format!("{}: {why}", p.name)))
        .collect();
    if !refusals.is_empty() {
        tracing::info!(
            epoch = terms.epoch,
            timeline,
            refusals = %refusals.join("; "),
            "not every peer vouched: lease not extended"
        );
        return;
    }
    let extended = lock(&agent.lease).vouched(round, sent_at, Instant::now());
    tracing::debug!(
        epoch = terms.epoch,
        peers = terms.peers.len(),
        solo = terms.solo,
        extended,
        "every peer vouched"
    );
}

/// A client of `p`'s agent (kept between rounds), with this agent's token.
fn client_for(
    agent: &Agent,
    clients: &mut HashMap<String, AgentClient>,
    p: &Peer,
) -> Result<AgentClient, String> {
    if let Some(c) = clients.get(&p.url) {
        return Ok(c.clone());
    }
    // From the address this agent serves on, as a pod's own address would be.
    let ip = agent.cfg.listen.ip();
    let local = (!ip.is_unspecified()).then_some(ip);
    let c = AgentClient::from_address(p.url.clone(), agent.cfg.token.clone(), local)
        .map_err(|e| e.to_string())?;
    clients.insert(p.url.clone(), c.clone());
    Ok(c)
}

/// Ask one peer; Ok when it vouched, else why not.
async fn ask(
    client: Result<AgentClient, String>,
    req: &VouchRequest,
    ttl_ms: u64,
) -> Result<(), String> {
    let client = client?;
    match tokio::time::timeout(round_timeout(ttl_ms), client.vouch(req)).await {
        Err(_) => Err(format!("no answer within {:?}", round_timeout(ttl_ms))),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(a)) if a.vouch => Ok(()),
        Ok(Ok(a)) => Err(a.reason),
    }
}
