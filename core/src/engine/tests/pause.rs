//! Pausing means "no automatic action": pause and unpause are recorded with
//! who paused, requests still run, an in-place restart of the primary that
//! outlasts detectionTimeout is no failure, and stops go smart → fast →
//! immediate with the spec's bounds, the mode that ended each recorded.

use super::fixtures::*;
use crate::api::{HistoryKind, HistoryOutcome};
use crate::engine::{Action, ActionFacts, ActionResult, Answer, Request, RestartTarget, StopMode};

fn events(a: &[Action], reason: &str) -> Vec<String> {
    a.iter()
        .filter_map(|x| match x {
            Action::Event {
                reason: r, message, ..
            } if r == reason => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn pause_and_unpause_are_recorded_in_history_and_events_with_who_paused() {
    let mut f = cluster().instances(3).build();
    f.obs.paused_annotation = true;
    let a = f.tick(10);
    assert!(f.status.paused);
    let h = f.last_history().clone();
    assert_eq!(h.kind, HistoryKind::Pause);
    assert_eq!(h.outcome, HistoryOutcome::Succeeded);
    assert!(
        h.message.contains("annotation tandem.dev/paused=true"),
        "{}",
        h.message
    );
    assert_eq!(events(&a, "Paused").len(), 1, "{a:?}");
    assert_eq!(f.status.phase, Some(crate::api::Phase::Paused));

    // Recorded once, not on every decision.
    let n = f.status.history.len();
    let a = f.tick(10);
    assert_eq!(f.status.history.len(), n);
    assert!(events(&a, "Paused").is_empty());

    // Also paused by the spec: still paused, nothing new; then both off.
    f.spec.paused = true;
    f.tick(10);
    assert_eq!(f.status.history.len(), n);
    f.obs.paused_annotation = false;
    f.spec.paused = false;
    let a = f.tick(10);
    assert!(!f.status.paused);
    assert_eq!(f.last_history().kind, HistoryKind::Unpause);
    assert_eq!(events(&a, "Unpaused").len(), 1);

    f.spec.paused = true;
    f.tick(10);
    assert!(f.last_history().message.contains("(spec.paused)"));
}

#[test]
fn every_request_runs_while_paused_but_nothing_automatic_starts() {
    let mut f = cluster().instances(3).paused().build();
    f.agent("main-2").pending_restart = true;
    f.tick(10);
    assert!(
        f.status.transition.is_none(),
        "no automatic rolling restart"
    );
    f.request(Request::Restart {
        target: RestartTarget::Instance("main-2".into()),
    });
    f.tick(10);
    assert_eq!(
        f.step(),
        Some(("Restart".into(), "RestartInstance".into())),
        "a requested restart runs while paused"
    );
}

/// main-0 restarted in place on request; returns the restart action issued.
fn restart_primary_in_place(f: &mut Fixture) -> Action {
    f.request(Request::Restart {
        target: RestartTarget::Instance("main-0".into()),
    });
    let a = f.tick(10);
    let restart = a
        .iter()
        .find(|x| matches!(x, Action::Restart { instance, .. } if instance == "main-0"))
        .cloned()
        .unwrap_or_else(|| panic!("no restart of main-0 in {a:?}"));
    assert!(
        has(
            &a,
            |x| matches!(x, Action::RenewLease { instance, .. } if instance == "main-0")
        ),
        "the lease is renewed while the engine restarts the primary: {a:?}"
    );
    restart
}

#[test]
fn an_in_place_restart_of_the_primary_longer_than_detection_timeout_is_no_failover() {
    let mut f = cluster().instances(3).primary_restart_in_place().build();
    let restart = restart_primary_in_place(&mut f);
    assert_eq!(
        restart,
        Action::Restart {
            instance: "main-0".into(),
            mode: StopMode::Smart,
            timeout_ms: 60_000,
            smart_timeout_ms: Some(10_000),
        }
    );
    // Smart waits for sessions: postgres is stopping, then starting, for
    // far longer than detectionTimeout (5s); its agent answers throughout.
    f.agent("main-0").postgres_running = false;
    for _ in 0..30 {
        let a = f.tick(1000);
        assert!(
            !has(&a, |x| matches!(x, Action::Promote { .. })),
            "promoted during the restart"
        );
        assert_eq!(
            f.step(),
            Some(("Restart".into(), "RestartInstance".into())),
            "{:?}",
            f.status.blocked_by
        );
    }
    assert!(
        f.status
            .blocked_by
            .as_deref()
            .is_some_and(|b| b.contains("being restarted in place")),
        "{:?}",
        f.status.blocked_by
    );
    assert_ne!(f.status.phase, Some(crate::api::Phase::Failed));
    f.agent("main-0").postgres_running = true;
    f.obs.results.push(ActionResult::answered(
        restart,
        Answer {
            detail: None,
            facts: ActionFacts {
                stopped_with: Some(StopMode::Fast),
                ..ActionFacts::default()
            },
        },
    ));
    f.tick(10);
    assert!(f.status.transition.is_none());
    let h = f.last_history();
    assert_eq!(h.kind, HistoryKind::Restart);
    assert_eq!(h.outcome, HistoryOutcome::Succeeded);
    assert!(
        h.message
            .contains("main-0 restarted (stopped fast (smart timed out))"),
        "{}",
        h.message
    );
    assert_eq!(f.status.current_primary.as_deref(), Some("main-0"));
    assert!(!f
        .status
        .history
        .iter()
        .any(|e| e.kind == HistoryKind::Failover));
}

#[test]
fn the_primary_lost_during_its_restart_still_fails_over() {
    let mut f = cluster().instances(3).primary_restart_in_place().build();
    restart_primary_in_place(&mut f);
    // Its agent is gone too: that is no restart, that is a lost node.
    f.gone("main-0");
    f.tick(100);
    f.tick(100);
    assert_eq!(f.step().map(|s| s.0), Some("Failover".into()));
    assert!(f
        .status
        .history
        .iter()
        .any(|e| e.kind == HistoryKind::Restart && e.outcome == HistoryOutcome::Failed));
}

#[test]
fn a_restart_that_never_ends_counts_as_a_failure_after_its_bound() {
    let mut f = cluster().instances(3).primary_restart_in_place().build();
    restart_primary_in_place(&mut f);
    f.agent("main-0").postgres_running = false;
    // smart 10s + 2 × fast 60s + start 90s + detection 5s
    for _ in 0..230 {
        f.tick(1000);
    }
    assert_eq!(f.step().map(|s| s.0), Some("Failover".into()));
}

#[test]
fn a_switchover_stops_fast_by_default_and_smart_first_when_asked() {
    let mut f = cluster().instances(3).build();
    f.switchover_checkpointed("main-1");
    let a = f.tick(10);
    let a = if has(&a, |x| matches!(x, Action::Stop { .. })) {
        a
    } else {
        f.ack_all();
        f.tick(10)
    };
    let fast = Action::Stop {
        instance: "main-0".into(),
        mode: StopMode::Fast,
        timeout_ms: 60_000,
        smart_timeout_ms: None,
    };
    assert!(has(&a, |x| *x == fast), "{a:?}");

    let mut f = cluster().instances(3).build();
    f.spec.switchover.smart_shutdown_timeout = "3s".parse().unwrap();
    f.switchover_checkpointed("main-1");
    let a = f.tick(10);
    let a = if has(&a, |x| matches!(x, Action::Stop { .. })) {
        a
    } else {
        f.ack_all();
        f.tick(10)
    };
    let smart = Action::Stop {
        instance: "main-0".into(),
        mode: StopMode::Smart,
        timeout_ms: 60_000,
        smart_timeout_ms: Some(3000),
    };
    assert!(has(&a, |x| *x == smart), "{a:?}");
    f.obs.results.push(ActionResult::answered(
        smart,
        Answer {
            detail: None,
            facts: ActionFacts {
                stopped_with: Some(StopMode::Fast),
                ..ActionFacts::default()
            },
        },
    ));
    let a0 = f.agent("main-0");
    a0.postgres_running = false;
    a0.checkpoint_lsn = Some(lsn("0/5000000"));
    a0.clean_shutdown = Some(true);
    f.tick(10);
    assert_eq!(
        f.status
            .transition
            .as_ref()
            .and_then(|t| t.data.switchover.stopped_with),
        Some(StopMode::Fast)
    );
    assert!(
        !f.status
            .transition
            .as_ref()
            .is_some_and(|t| t.data.switchover.stop_escalated),
        "smart escalating to fast is still a clean shutdown"
    );
}
