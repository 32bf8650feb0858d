//! Carrying out the engine's agent actions against local agents: one task per
//! action, results sent back for the next decision; identical actions still
//! in flight are not sent twice. Does network I/O.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::agent::client::{AgentClient, ClientError};
use crate::api::agent::{
    self as proto, ConfigRequest, DemoteRequest, FollowRequest, LeaseRequest, Member,
    PromoteRequest, RecloneRequest, RewindRequest, StopRequest, SyncStandbys,
};
use crate::api::DurationString;
use crate::engine::{Action, ActionResult, StopMode};

/// Runs agent calls in the background and collects their results.
pub struct Executor {
    in_flight: HashSet<String>,
    tx: mpsc::UnboundedSender<(String, ActionResult)>,
    rx: mpsc::UnboundedReceiver<(String, ActionResult)>,
}

impl Default for Executor {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            in_flight: HashSet::new(),
            tx,
            rx,
        }
    }
}

fn key(a: &Action) -> String {
    serde_json::to_string(a).unwrap_or_else(|_| format!("{a:?}"))
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

impl Executor {
    /// Whether an identical action is still running.
    pub fn busy(&self, a: &Action) -> bool {
        self.in_flight.contains(&key(a))
    }

    /// Whether any action on `instance` is running.
    pub fn busy_on(&self, instance: &str) -> bool {
        let needle = format!("\"instance\":\"{instance}\"");
        self.in_flight.iter().any(|k| k.contains(&needle))
    }

    /// Results finished since the last call.
    pub fn drain(&mut self) -> Vec<ActionResult> {
        let mut out = Vec::new();
        while let Ok((k, r)) = self.rx.try_recv() {
            self.in_flight.remove(&k);
            out.push(r);
        }
        out
    }

    /// Start `action` on `client`; `members` gives every instance's address.
    pub fn spawn(
        &mut self,
        action: Action,
        client: AgentClient,
        members: &BTreeMap<String, Member>,
    ) {
        let k = key(&action);
        if !self.in_flight.insert(k.clone()) {
            return;
        }
        let tx = self.tx.clone();
        let members = members.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let outcome = call(&action, &client, &members).await;
            let result = match outcome {
                Ok(detail) => {
                    if matches!(action, Action::RenewLease { .. }) {
                        tracing::debug!(action = %short(&action), "lease renewed");
                    } else {
                        info!(action = %short(&action), ms = started.elapsed().as_millis() as u64, detail = detail.as_deref().unwrap_or(""), "action done");
                    }
                    ActionResult {
                        action,
                        outcome: crate::engine::Outcome::Succeeded { detail },
                    }
                }
                Err(message) => {
                    warn!(action = %short(&action), ms = started.elapsed().as_millis() as u64, error = %message, "action failed");
                    ActionResult::failed(action, message)
                }
            };
            let _ = tx.send((k, result));
        });
    }
}

/// A short description of an action for logs.
pub fn short(a: &Action) -> String {
    let s = key(a);
    if s.len() > 200 {
        format!("{}…", &s[..200])
    } else {
        s
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
        ClientError::Api { body, .. } => {
            if body.detail.is_empty() {
                body.error.clone()
            } else {
                format!("{}: {}", body.error, body.detail)
            }
        }
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
