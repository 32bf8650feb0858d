//! Carrying out the engine's agent actions against local agents: one task per
//! action (the call itself is [`crate::platform::call`]), results sent back for
//! the next decision; identical actions still in flight are not sent twice.
//! Does network I/O.

use std::collections::{BTreeMap, HashSet};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::agent::client::AgentClient;
use crate::api::agent::Member;
use crate::engine::{Action, ActionResult};

/// Runs agent calls in the background and collects their results.
pub struct Executor {
    in_flight: HashSet<String>,
    /// Signalled when an action other than a lease renewal finishes, so the
    /// next step of a transition need not wait for the next tick.
    pub finished: std::sync::Arc<tokio::sync::Notify>,
    tx: mpsc::UnboundedSender<(String, ActionResult)>,
    rx: mpsc::UnboundedReceiver<(String, ActionResult)>,
}

impl Default for Executor {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            in_flight: HashSet::new(),
            finished: Default::default(),
            tx,
            rx,
        }
    }
}

fn key(a: &Action) -> String {
    serde_json::to_string(a).unwrap_or_else(|_| format!("{a:?}"))
}

impl Executor {
    /// Whether an identical action is still running.
    pub fn busy(&self, a: &Action) -> bool {
        self.in_flight.contains(&key(a))
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
        let finished = self.finished.clone();
        let members = members.clone();
        // The spawned call keeps the caller's span (cluster, instance, action).
        let call = async move {
            let started = std::time::Instant::now();
            let outcome = crate::platform::call(&action, &client, &members).await;
            let result = match outcome {
                Ok(detail) => {
                    if matches!(action, Action::RenewLease { .. }) {
                        tracing::debug!(call = %short(&action), "lease renewed");
                    } else {
                        info!(call = %short(&action), ms = started.elapsed().as_millis() as u64, detail = detail.as_deref().unwrap_or(""), "action done");
                    }
                    ActionResult {
                        action,
                        outcome: crate::engine::Outcome::Succeeded { detail },
                    }
                }
                Err(message) => {
                    warn!(call = %short(&action), ms = started.elapsed().as_millis() as u64, error = %message, "action failed");
                    ActionResult::failed(action, message)
                }
            };
            let step = !matches!(result.action, Action::RenewLease { .. });
            let _ = tx.send((k, result));
            if step {
                finished.notify_one();
            }
        };
        tokio::spawn(tracing::Instrument::in_current_span(call));
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
