//! Polling the agents' `/status` for the local loop without letting one that
//! stopped answering slow every pass down: a pass waits (at most the poll
//! timeout) only for agents that answered their previous poll; for one that
//! did not, a poll stays in flight across passes and its answer is taken by
//! the first pass after it arrives. A frozen agent then costs one timeout,
//! not one per pass, so the loop keeps its cadence and counts detection to
//! within a tick; a slow agent that does answer is never held unanswered
//! longer than its own delay. Does network I/O.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::agent::client::AgentClient;
use crate::api::agent::AgentStatus;
use crate::api::AgentUnanswered;

/// What one poll came to.
pub type Polled = Result<AgentStatus, AgentUnanswered>;

/// How long one status poll may take.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(600);

/// The polling of one agent.
#[derive(Default)]
pub struct Poll {
    in_flight: Option<JoinHandle<Polled>>,
    /// The previous poll was answered: the next pass waits for this one.
    answering: bool,
}

impl Poll {
    /// A new agent (or one started again): waited for, as one that answers.
    pub fn new() -> Self {
        Self {
            in_flight: None,
            answering: true,
        }
    }

    /// Start a poll unless one is in flight (`fresh`: ask for a probe begun now).
    fn start(&mut self, client: &AgentClient, fresh: bool) {
        if self.in_flight.is_some() {
            return;
        }
        let c = client.clone();
        self.in_flight = Some(tokio::spawn(async move {
            let poll = async {
                if fresh {
                    c.fresh_status().await
                } else {
                    c.status().await
                }
            };
            match tokio::time::timeout(POLL_TIMEOUT, poll).await {
                Err(_) => Err(AgentUnanswered::Timeout),
                Ok(r) => r.map_err(|e| crate::agent::client::unanswered(&e)),
            }
        }));
    }

    /// This pass's answer: waited for when the agent answered last time,
    /// taken only if already there otherwise.
    async fn take(&mut self) -> Polled {
        let ready = self.answering || self.in_flight.as_ref().is_some_and(|h| h.is_finished());
        let polled = match self.in_flight.take() {
            Some(h) if ready => h.await.unwrap_or(Err(AgentUnanswered::Timeout)),
            Some(h) => {
                self.in_flight = Some(h);
                Err(AgentUnanswered::Timeout)
            }
            None => Err(AgentUnanswered::Timeout),
        };
        self.answering = polled.is_ok();
        polled
    }
}

/// Poll every agent of `polls` (started where none is in flight) and
/// collect this pass's answers, in the order given.
pub async fn poll_all<'a>(
    polls: impl IntoIterator<Item = (&'a str, &'a mut Poll, &'a AgentClient)>,
    fresh: bool,
) -> Vec<(String, Polled)> {
    let pending: Vec<(&str, &mut Poll)> = polls
        .into_iter()
        .map(|(name, poll, client)| {
            poll.start(client, fresh);
            (name, poll)
        })
        .collect();
    let answers = pending.into_iter().map(|(name, poll)| async move {
        let polled = poll.take().await;
        (name.to_string(), polled)
    });
    futures::future::join_all(answers).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An agent address that accepts connections and never answers (a frozen agent).
    async fn silent() -> (AgentClient, tokio::net::TcpListener) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let c = AgentClient::new(format!("http://{addr}"), "t").expect("client");
        (c, l)
    }

    #[tokio::test]
    async fn a_silent_agent_costs_one_timeout_not_one_per_pass() {
        let (c, _listener) = silent().await;
        let mut p = Poll::new();
        let t = Instant::now();
        let first = poll_all([("a", &mut p, &c)], false).await;
        assert!(matches!(first[0].1, Err(AgentUnanswered::Timeout)));
        assert!(t.elapsed() >= POLL_TIMEOUT);
        // The next passes do not wait for it.
        for _ in 0..3 {
            let t = Instant::now();
            let again = poll_all([("a", &mut p, &c)], false).await;
            assert!(matches!(again[0].1, Err(AgentUnanswered::Timeout)));
            assert!(
                t.elapsed() < Duration::from_millis(100),
                "{:?}",
                t.elapsed()
            );
        }
    }
}
