//! User requests of a local cluster on their way through the engine: the
//! pending ones (handed to the engine each decision), and the accepted ones
//! whose answer waits for their transition to finish. Pure bookkeeping.

use tokio::sync::oneshot;

use crate::api::{
    CheckState, DbClusterStatus, HistoryEntry, HistoryKind, HistoryOutcome, TransitionKind,
};
use crate::engine::Request;

use super::control::{Outcome, Refusal};

/// Where to send a request's answer.
pub type Reply = oneshot::Sender<Result<Outcome, Refusal>>;

/// A request the engine has not answered yet.
pub struct Pending {
    pub request: Request,
    pub reply: Option<Reply>,
}

/// An accepted request waiting for its transition to finish.
pub struct Waiting {
    pub kind: TransitionKind,
    pub started_at: String,
    pub reply: Reply,
}

/// A change made outside the engine's requests (pause, unpause, a new
/// replication setting) waiting for the history entry the engine writes for
/// it: answered with that entry.
pub struct Recorded {
    /// The kinds of entry that answer it.
    pub kinds: Vec<HistoryKind>,
    /// The history when the change was made.
    pub before: Vec<HistoryEntry>,
    pub reply: Reply,
}

/// Requests in flight.
#[derive(Default)]
pub struct Requests {
    pub pending: Vec<Pending>,
    pub waiting: Vec<Waiting>,
    pub recorded: Vec<Recorded>,
}

/// History kinds the engine writes for changes, not for requests.
const NOT_REQUESTED: [HistoryKind; 3] = [
    HistoryKind::DurabilityChange,
    HistoryKind::Pause,
    HistoryKind::Unpause,
];

/// Entries of `after` that are not in `before` (history only grows at the end).
pub fn new_entries<'a>(before: &[HistoryEntry], after: &'a [HistoryEntry]) -> &'a [HistoryEntry] {
    match before.last() {
        None => after,
        Some(last) => match after.iter().rposition(|e| e == last) {
            Some(i) => &after[i + 1..],
            None => after,
        },
    }
}

fn lines(e: &HistoryEntry) -> Vec<String> {
    e.checks
        .iter()
        .map(|c| {
            let state = match c.state {
                CheckState::Ok => "OK",
                CheckState::Warning => "WARNING",
                CheckState::Critical => "CRITICAL",
            };
            format!("{}: {state} ({})", c.name, c.message)
        })
        .collect()
}

/// The answer a finished history entry gives.
pub fn answer(e: &HistoryEntry) -> Result<Outcome, Refusal> {
    let detail = lines(e);
    match e.outcome {
        HistoryOutcome::Succeeded => Ok(Outcome {
            message: e.message.clone(),
            detail,
        }),
        HistoryOutcome::DryRun => {
            if e.checks.iter().any(|c| c.state == CheckState::Critical) {
                Err(Refusal {
                    error: e.message.clone(),
                    detail,
                })
            } else {
                Ok(Outcome {
                    message: e.message.clone(),
                    detail,
                })
            }
        }
        _ => Err(Refusal {
            error: e.message.clone(),
            detail,
        }),
    }
}

impl Requests {
    /// The requests to hand to the engine.
    pub fn for_engine(&self) -> Vec<Request> {
        self.pending.iter().map(|p| p.request.clone()).collect()
    }

    /// The engine answered `request` (RequestDone) in a decision that produced `status`.
    pub fn done(&mut self, request: &Request, before: &[HistoryEntry], status: &DbClusterStatus) {
        let Some(i) = self.pending.iter().position(|p| &p.request == request) else {
            return;
        };
        let p = self.pending.remove(i);
        let Some(reply) = p.reply else { return };
        let fresh = new_entries(before, &status.history);
        // Refused or reported at once (a "Started" entry only marks the
        // beginning of a transition, e.g. a re-clone: its answer comes later).
        if let Some(e) = fresh.iter().rev().find(|e| {
            // Entries no request writes (a refused durability change) answer none.
            !NOT_REQUESTED.contains(&e.kind)
                && e.outcome != HistoryOutcome::Succeeded
                && e.outcome != HistoryOutcome::Started
                && e.duration_ms == 0
        }) {
            let _ = reply.send(answer(e));
            return;
        }
        if let Some(t) = &status.transition {
            self.waiting.push(Waiting {
                kind: t.kind,
                started_at: t.started_at.clone(),
                reply,
            });
            return;
        }
        match fresh
            .iter()
            .rev()
            .find(|e| !NOT_REQUESTED.contains(&e.kind))
        {
            Some(e) => {
                let _ = reply.send(answer(e));
            }
            None => {
                let _ = reply.send(Ok(Outcome {
                    message: "request accepted".into(),
                    detail: vec![],
                }));
            }
        }
    }

    /// Answer the changes whose history entry has been written.
    fn finish_recorded(&mut self, status: &DbClusterStatus) {
        let mut still = Vec::new();
        for r in self.recorded.drain(..) {
            let entry = new_entries(&r.before, &status.history)
                .iter()
                .find(|e| r.kinds.contains(&e.kind) && e.outcome != HistoryOutcome::Started);
            match entry {
                Some(e) => {
                    let _ = r.reply.send(answer(e));
                }
                None => still.push(r),
            }
        }
        self.recorded = still;
    }

    /// Answer the waiters whose transition is over.
    pub fn finish(&mut self, status: &DbClusterStatus) {
        self.finish_recorded(status);
        let current = status
            .transition
            .as_ref()
            .map(|t| (t.kind, t.started_at.clone()));
        let mut still = Vec::new();
        for w in self.waiting.drain(..) {
            if current.as_ref() == Some(&(w.kind, w.started_at.clone())) {
                still.push(w);
                continue;
            }
            let entry = status
                .history
                .iter()
                .rev()
                .find(|e| e.kind == w.kind && e.started_at == w.started_at);
            let result = match entry {
                Some(e) => answer(e),
                None => match status.history.last() {
                    Some(e) => answer(e),
                    None => Ok(Outcome {
                        message: format!("{} finished", w.kind),
                        detail: vec![],
                    }),
                },
            };
            let _ = w.reply.send(result);
        }
        self.waiting = still;
    }

    /// Answer everything still open with `why` (shutting down).
    pub fn abandon(&mut self, why: &str) {
        for p in self.pending.drain(..) {
            if let Some(r) = p.reply {
                let _ = r.send(Err(Refusal {
                    error: why.to_string(),
                    detail: vec![],
                }));
            }
        }
        for w in self.waiting.drain(..) {
            let _ = w.reply.send(Err(Refusal {
                error: why.to_string(),
                detail: vec![],
            }));
        }
        for r in self.recorded.drain(..) {
            let _ = r.reply.send(Err(Refusal {
                error: why.to_string(),
                detail: vec![],
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Transition, TransitionData, TransitionStep};

    fn entry(
        kind: HistoryKind,
        outcome: HistoryOutcome,
        started_at: &str,
        duration_ms: i64,
    ) -> HistoryEntry {
        HistoryEntry {
            duration_ms,
            ..HistoryEntry::new(
                kind,
                outcome,
                started_at.into(),
                format!("{kind} {outcome}"),
            )
        }
    }

    #[test]
    fn a_started_reclone_waits_for_its_transition_instead_of_answering_refused() {
        let request = Request::Reclone {
            instance: "main-1".into(),
        };
        let (tx, mut rx) = oneshot::channel();
        let mut r = Requests::default();
        r.pending.push(Pending {
            request: request.clone(),
            reply: Some(tx),
        });
        let mut status = DbClusterStatus {
            transition: Some(Transition {
                kind: TransitionKind::Reclone,
                target: Some("main-1".into()),
                from: None,
                step: TransitionStep::Reclone,
                started_at: "t0".into(),
                reason: String::new(),
                data: TransitionData::default(),
            }),
            ..DbClusterStatus::default()
        };
        status.history.push(entry(
            HistoryKind::Reclone,
            HistoryOutcome::Started,
            "t0",
            0,
        ));
        r.done(&request, &[], &status);
        assert!(
            rx.try_recv().is_err(),
            "answered before the re-clone finished"
        );
        assert_eq!(r.waiting.len(), 1);

        let before = status.history.clone();
        status.transition = None;
        status.history.push(entry(
            HistoryKind::Reclone,
            HistoryOutcome::Succeeded,
            "t0",
            3000,
        ));
        assert_eq!(new_entries(&before, &status.history).len(), 1);
        r.finish(&status);
        let answer = rx.try_recv().expect("answered once finished");
        assert!(answer.is_ok(), "{answer:?}");
    }

    #[test]
    fn a_change_waits_for_its_own_entry_and_a_refused_durability_change_answers_no_request() {
        let mut r = Requests::default();
        let (tx, mut rx) = oneshot::channel();
        r.recorded.push(Recorded {
            kinds: vec![HistoryKind::DurabilityChange],
            before: vec![],
            reply: tx,
        });
        let request = Request::Restart {
            target: crate::engine::RestartTarget::All,
        };
        let (rtx, mut rrx) = oneshot::channel();
        r.pending.push(Pending {
            request: request.clone(),
            reply: Some(rtx),
        });
        let mut status = DbClusterStatus::default();
        status.history.push(entry(
            HistoryKind::Pause,
            HistoryOutcome::Succeeded,
            "t0",
            0,
        ));
        r.finish(&status);
        assert!(rx.try_recv().is_err(), "a pause entry answers no set");
        status.history.push(entry(
            HistoryKind::DurabilityChange,
            HistoryOutcome::Refused,
            "t1",
            0,
        ));
        r.done(&request, &[], &status);
        let answer = rrx.try_recv().expect("answered");
        assert!(
            answer.is_ok(),
            "the restart is not answered by the durability refusal: {answer:?}"
        );
        r.finish(&status);
        let answer = rx.try_recv().expect("the set is answered");
        assert!(answer.is_err(), "refused: {answer:?}");
    }
}
