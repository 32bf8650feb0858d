//! How `kubectl tandem` tells, from successive reads of a DbCluster, that the
//! operator answered a request and what the answer was: the request
//! annotation is gone (the operator removes it once the engine answered, after
//! writing status), then a refusal or report in the new history entries, or
//! the transition it started until that one ends. The same reading of
//! history as `tandem local`'s answers (`local::requests`). Pure.

use std::collections::BTreeMap;

use crate::api::{DbClusterStatus, HistoryEntry, HistoryOutcome, TransitionKind};
use crate::local::requests::{answer, new_entries};

/// The operator's answer to a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Done (or a dry run whose checks pass): exit 0.
    Done {
        message: String,
        detail: Vec<String>,
    },
    /// Refused or failed: exit 1.
    Refused {
        message: String,
        detail: Vec<String>,
    },
}

impl Answer {
    fn of(e: &HistoryEntry) -> Self {
        match answer(e) {
            Ok(o) => Answer::Done {
                message: o.message,
                detail: o.detail,
            },
            Err(r) => Answer::Refused {
                message: r.error,
                detail: r.detail,
            },
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Not answered yet; what it waits for, for people.
    Waiting(String),
    /// Answered.
    Answered(Answer),
}

/// Follows one request through the DbCluster's status.
#[derive(Debug, Clone)]
pub struct Tracker {
    before: Vec<HistoryEntry>,
    key: &'static str,
    transition: Option<(TransitionKind, String)>,
    taken: bool,
}

impl Tracker {
    /// A request carried by annotation `key`, set when status had `before` as its history.
    pub fn new(before: Vec<HistoryEntry>, key: &'static str) -> Self {
        Self {
            before,
            key,
            transition: None,
            taken: false,
        }
    }

    /// Whether the operator has taken the request (removed its annotation).
    pub fn taken(&self) -> bool {
        self.taken
    }

    /// Read one snapshot of the DbCluster.
    pub fn observe(
        &mut self,
        annotations: &BTreeMap<String, String>,
        status: &DbClusterStatus,
    ) -> Progress {
        if let Some((kind, started_at)) = self.transition.clone() {
            if let Some(t) = status
                .transition
                .as_ref()
                .filter(|t| t.kind == kind && t.started_at == started_at)
            {
                return Progress::Waiting(format!("{} at step {}", t.kind, t.step));
            }
            let entry = status
                .history
                .iter()
                .rev()
                .find(|e| e.kind == kind && e.started_at == started_at)
                .or_else(|| status.history.last());
            return Progress::Answered(match entry {
                Some(e) => Answer::of(e),
                None => Answer::Done {
                    message: format!("{kind} finished"),
                    detail: vec![],
                },
            });
        }
        if annotations.contains_key(self.key) {
            return Progress::Waiting("the operator to take the request".into());
        }
        self.taken = true;
        let fresh = new_entries(&self.before, &status.history);
        // Refused or reported at once; a "Started" entry only marks the
        // beginning of a transition (its answer comes when it ends).
        if let Some(e) = fresh.iter().rev().find(|e| {
            e.outcome != HistoryOutcome::Succeeded
                && e.outcome != HistoryOutcome::Started
                && e.duration_ms == 0
        }) {
            return Progress::Answered(Answer::of(e));
        }
        if let Some(t) = &status.transition {
            self.transition = Some((t.kind, t.started_at.clone()));
            return Progress::Waiting(format!("{} at step {}", t.kind, t.step));
        }
        Progress::Answered(match fresh.last() {
            Some(e) => Answer::of(e),
            None => Answer::Done {
                message: "request accepted".into(),
                detail: vec![],
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{keys, HistoryKind, Transition, TransitionData, TransitionStep};

    fn entry(
        kind: HistoryKind,
        outcome: HistoryOutcome,
        at: &str,
        ms: i64,
        msg: &str,
    ) -> HistoryEntry {
        HistoryEntry {
            duration_ms: ms,
            ..HistoryEntry::new(kind, outcome, at.into(), msg.into())
        }
    }

    fn pending() -> BTreeMap<String, String> {
        BTreeMap::from([(keys::ANN_SWITCHOVER.to_string(), "main-1".to_string())])
    }

    #[test]
    fn a_switchover_is_answered_when_its_transition_ends() {
        let old = entry(
            HistoryKind::Bootstrap,
            HistoryOutcome::Succeeded,
            "t0",
            900,
            "bootstrapped",
        );
        let mut st = DbClusterStatus {
            history: vec![old.clone()],
            ..Default::default()
        };
        let mut t = Tracker::new(st.history.clone(), keys::ANN_SWITCHOVER);
        assert!(matches!(t.observe(&pending(), &st), Progress::Waiting(_)));
        st.transition = Some(Transition {
            kind: TransitionKind::Switchover,
            target: Some("main-1".into()),
            from: Some("main-0".into()),
            step: TransitionStep::Promote,
            started_at: "t1".into(),
            reason: "requested".into(),
            data: TransitionData::default(),
        });
        let p = t.observe(&BTreeMap::new(), &st);
        assert_eq!(p, Progress::Waiting("Switchover at step Promote".into()));
        st.transition = None;
        st.history.push(entry(
            HistoryKind::Switchover,
            HistoryOutcome::Succeeded,
            "t1",
            800,
            "switched over from main-0 to main-1 (requested)",
        ));
        assert_eq!(
            t.observe(&BTreeMap::new(), &st),
            Progress::Answered(Answer::Done {
                message: "switched over from main-0 to main-1 (requested)".into(),
                detail: vec![]
            })
        );
    }

    #[test]
    fn a_refusal_answers_at_once_with_its_message() {
        let mut st = DbClusterStatus::default();
        let mut t = Tracker::new(vec![], keys::ANN_SWITCHOVER);
        st.history.push(entry(
            HistoryKind::Switchover,
            HistoryOutcome::Refused,
            "t1",
            0,
            "switchover refused: instance main-7 does not exist",
        ));
        match t.observe(&BTreeMap::new(), &st) {
            Progress::Answered(Answer::Refused { message, .. }) => {
                assert!(message.contains("main-7 does not exist"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn old_history_is_not_taken_for_the_answer() {
        let old = entry(
            HistoryKind::Switchover,
            HistoryOutcome::Refused,
            "t0",
            0,
            "an old refusal",
        );
        let st = DbClusterStatus {
            history: vec![old],
            ..Default::default()
        };
        let mut t = Tracker::new(st.history.clone(), keys::ANN_SWITCHOVER);
        assert_eq!(
            t.observe(&BTreeMap::new(), &st),
            Progress::Answered(Answer::Done {
                message: "request accepted".into(),
                detail: vec![]
            })
        );
    }
}
