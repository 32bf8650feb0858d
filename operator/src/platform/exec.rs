//! Carrying out the engine's agent actions in the background, for both
//! platforms: one task per action (the call is the platform's
//! [`AgentCall`]), results sent back for the next decision; an identical
//! action still in flight is not sent twice. Does I/O through the calls.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn, Instrument};

use crate::engine::{Action, ActionResult, Answer};

/// One agent call as a platform makes it: the agent's answer or `Err(message)`.
pub type AgentCall = BoxFuture<'static, Result<Answer, String>>;

/// Runs agent calls in the background and collects their results.
pub struct Executor {
    in_flight: HashSet<String>,
    /// Signalled when an action other than a lease renewal finishes.
    pub finished: Arc<Notify>,
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

    /// How many calls are running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
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

    /// Wait (at most `timeout`) until every call has finished: whether all
    /// did, and the results that came in meanwhile.
    pub async fn settle(&mut self, timeout: Duration) -> (bool, Vec<ActionResult>) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((k, r))) => {
                    self.in_flight.remove(&k);
                    out.push(r);
                }
                _ => return (false, out),
            }
        }
        (true, out)
    }

    /// Run `call`, which carries out `action`, unless an identical action is running.
    pub fn spawn(&mut self, action: Action, call: AgentCall) {
        let k = key(&action);
        if !self.in_flight.insert(k.clone()) {
            return;
        }
        let tx = self.tx.clone();
        let finished = self.finished.clone();
        debug!(call = %short(&action), "agent call");
        let task = async move {
            let started = Instant::now();
            let ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let lease = matches!(action, Action::RenewLease { .. });
            let result = match call.await {
                Ok(answer) => {
                    if lease {
                        debug!(call = %short(&action), "lease renewed");
                    } else {
                        info!(call = %short(&action), ms = ms(), detail = answer.detail.as_deref().unwrap_or(""), "action done");
                    }
                    ActionResult::answered(action, answer)
                }
                Err(message) => {
                    warn!(call = %short(&action), ms = ms(), error = %message, "action failed");
                    ActionResult::failed(action, message)
                }
            };
            let _ = tx.send((k, result));
            if !lease {
                finished.notify_one();
            }
        };
        // The task keeps the caller's span (cluster, instance, action).
        tokio::spawn(task.in_current_span());
    }
}

/// A short description of an action for logs.
pub fn short(a: &Action) -> String {
    let s = key(a);
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}
