//! The typed state machine: every (kind, step) of the table runs its step and
//! any other pair fails the transition; a chain of steps stops at its bound
//! and says so; statuses written by the string-typed version (captured from
//! it in `data/legacy_statuses.json`) are read and resumed.

use super::fixtures::*;
use crate::api::{
    DbClusterStatus, HistoryOutcome, Transition, TransitionData, TransitionKind, TransitionStep,
};
use crate::engine::{Action, StopMode, MAX_STEPS_PER_DECISION};

const LEGACY: &str = include_str!("data/legacy_statuses.json");

fn legacy() -> Vec<DbClusterStatus> {
    serde_json::from_str(LEGACY).expect("statuses of the string-typed version are read")
}

/// The captured status whose transition is at `kind`/`step` (the first, or the one with `target`).
fn legacy_at(kind: TransitionKind, step: TransitionStep, target: &str) -> DbClusterStatus {
    legacy()
        .into_iter()
        .find(|s| {
            s.transition.as_ref().is_some_and(|t| {
                t.kind == kind && t.step == step && t.target.as_deref() == Some(target)
            })
        })
        .expect("captured")
}

fn transition(kind: TransitionKind, step: TransitionStep, f: &Fixture) -> Transition {
    Transition {
        kind,
        target: Some("main-1".into()),
        from: Some("main-0".into()),
        step,
        started_at: f.now().to_string(),
        reason: "test".into(),
        data: TransitionData::default(),
    }
}

#[test]
fn every_step_of_the_table_runs_and_a_step_of_another_kind_fails_the_transition() {
    for &kind in TransitionKind::ALL {
        assert!(kind.has_step(kind.first_step()), "{kind}");
        for &step in TransitionStep::ALL {
            let mut f = cluster().instances(3).build();
            f.status.transition = Some(transition(kind, step, &f));
            let before = f.status.history.len();
            f.tick(10);
            let foreign = f
                .status
                .history
                .iter()
                .skip(before)
                .find(|h| h.message.contains("has no step"));
            if kind.has_step(step) {
                assert!(foreign.is_none(), "{kind} {step}: {foreign:?}");
            } else {
                let h = foreign.unwrap_or_else(|| panic!("{kind} {step} ran a step"));
                assert_eq!(h.outcome, HistoryOutcome::Failed);
                assert_eq!(h.kind, kind);
            }
        }
    }
}

#[test]
fn a_chain_of_steps_stops_at_its_bound_and_says_so_in_blocked_by() {
    // Both candidates failed to promote in this very poll: fence and promote
    // hand over to each other without waiting.
    let mut f = cluster().instances(3).build();
    f.gone("main-0");
    let mut tr = transition(TransitionKind::Failover, TransitionStep::Promote, &f);
    tr.data.failover.label_dropped = true;
    f.status.transition = Some(tr);
    for c in ["main-1", "main-2"] {
        f.fail(Action::promote_and_label(c), "not promoted");
    }
    f.tick(10);
    let blocked = f.status.blocked_by.clone().unwrap_or_default();
    assert!(
        blocked.contains(&format!("went through {MAX_STEPS_PER_DECISION} steps")),
        "{blocked}"
    );
    assert!(f.status.transition.is_some(), "it goes on at the next poll");
}

#[test]
fn statuses_of_the_string_typed_version_are_read_with_their_facts() {
    let all = legacy();
    assert_eq!(all.len(), 18);
    for st in &all {
        let again: DbClusterStatus =
            serde_json::from_value(serde_json::to_value(st).unwrap()).unwrap();
        assert_eq!(&again, st, "the typed form reads back as written");
    }

    let t = legacy_at(TransitionKind::Failover, TransitionStep::Promote, "main-1")
        .transition
        .unwrap();
    let d = &t.data.failover;
    assert!(d.label_dropped && d.stop_confirmed && d.promote_issued);
    assert_eq!(d.candidate_lsn, Some(lsn("0/5000000")));
    assert_eq!(d.old_timeline, Some(1));
    assert_eq!(
        d.fenced_by.as_deref(),
        Some("main-0's agent stopped postgres")
    );
    assert_eq!(t.data.old_primary_lsn, Some(lsn("0/5000000")));
    assert!(t.data.step_started_at.is_some());

    let t = legacy_at(TransitionKind::Failover, TransitionStep::Promote, "main-2")
        .transition
        .unwrap();
    assert_eq!(
        t.data.failover.failed_candidates,
        vec!["main-1".to_string()]
    );

    let t = legacy_at(
        TransitionKind::Switchover,
        TransitionStep::StopPrimary,
        "main-1",
    )
    .transition
    .unwrap();
    assert_eq!(t.data.switchover.stop_mode, Some(StopMode::Immediate));

    let t = legacy_at(TransitionKind::Switchover, TransitionStep::Follow, "main-1")
        .transition
        .unwrap();
    assert_eq!(t.data.switchover.checkpoint_lsn, Some(lsn("0/5000000")));
    assert_eq!(t.data.switchover.promoted_lsn, Some(lsn("0/6000000")));

    let t = legacy_at(TransitionKind::Rejoin, TransitionStep::Reclone, "main-0")
        .transition
        .unwrap();
    assert!(t.data.rejoin.issued && t.data.rejoin.reclone_issued);
    assert!(t.data.rejoin.rewind_failed.is_some());

    let t = legacy_at(
        TransitionKind::Restart,
        TransitionStep::RestartInstance,
        "main-2",
    )
    .transition
    .unwrap();
    let r = &t.data.restart;
    assert_eq!(r.queue, vec!["main-2".to_string(), "main-0".to_string()]);
    assert_eq!(r.done, vec!["main-1 restarted".to_string()]);
    assert!(r.failed.is_empty());
}

#[test]
fn legacy_restart_notes_count_only_a_failure_note_as_failed() {
    let data: TransitionData = serde_json::from_value(serde_json::json!({
        "done": "main-1 restarted in place because switchover refused: the check failed: lag; main-2 failed: its agent does not answer",
        "inPlace": "true",
        "mode": "immediate",
        "switchover": "a key nothing sets",
    }))
    .unwrap();
    assert_eq!(data.restart.failed, vec!["main-2".to_string()]);
    assert!(data.restart.in_place);
    assert_eq!(data.restart.mode, Some(StopMode::Immediate));

    let none: TransitionData = serde_json::from_value(serde_json::json!({
        "done": "main-1 restarted in place because the switchover failed: no standby"
    }))
    .unwrap();
    assert!(none.restart.failed.is_empty(), "{none:?}");
}

#[test]
fn an_operator_upgraded_mid_switchover_resumes_it_from_the_old_status() {
    let mut f = cluster().instances(3).build();
    f.status = legacy_at(
        TransitionKind::Switchover,
        TransitionStep::WaitShutdownCheckpoint,
        "main-1",
    );
    f.agent("main-0").postgres_running = false;
    f.agent("main-1").received_lsn = Some(lsn("0/5000100"));
    let a = f.tick(10);
    assert_eq!(promotes(&a).as_deref(), Some("main-1"));
    assert_eq!(f.step(), Some(("Switchover".into(), "Promote".into())));
}

#[test]
fn an_operator_upgraded_mid_failover_resumes_it_without_the_failed_candidate() {
    let mut f = cluster().instances(3).build();
    f.status = legacy_at(TransitionKind::Failover, TransitionStep::Promote, "main-2");
    f.gone("main-0");
    let a = f.tick(10);
    assert_eq!(promotes(&a).as_deref(), Some("main-2"));
    let t = f.status.transition.clone().unwrap();
    assert_eq!(
        t.data.failover.failed_candidates,
        vec!["main-1".to_string()]
    );
}
