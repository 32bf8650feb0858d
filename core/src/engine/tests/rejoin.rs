//! Rejoin (no rewind / rewind / re-clone fallback), explicit re-clone, rejoin dry-run.

use super::fixtures::*;
use crate::api::Phase;
use crate::engine::{Action, Outcome, Request, RoleLabel};

fn rejoin(name: &str, dry_run: bool) -> Request {
    Request::Rejoin {
        instance: name.into(),
        dry_run,
    }
}

fn reclone(name: &str) -> Request {
    Request::Reclone {
        instance: name.into(),
    }
}

/// main-1 is primary on timeline 2 after a failover; main-0 is back as a stale primary.
fn after_failover() -> Fixture {
    let mut f = cluster().instances(3).build();
    f.gone("main-0");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.promoted("main-1", 2);
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.streams("main-2", "main-1");
    f.tick(10);
    assert_eq!(f.status.current_primary.as_deref(), Some("main-1"));
    assert!(f.status.transition.is_none());
    f
}

fn old_primary_returns(f: &mut Fixture, running_as_primary: bool) {
    *f.inst("main-0") = primary_obs("main-0", 3);
    f.inst("main-0").label = Some(RoleLabel::Fenced);
    if !running_as_primary {
        let a = f.agent("main-0");
        a.postgres_running = false;
        a.fenced = true;
    }
}

#[test]
fn returned_old_primary_running_as_primary_is_fenced_and_rejoined() {
    let mut f = after_failover();
    old_primary_returns(&mut f, true);
    f.inst("main-0").label = Some(RoleLabel::Primary);
    let a = f.tick(10);
    assert_eq!(f.step(), Some(("Rejoin".into(), "Demote".into())));
    assert_eq!(f.status.phase, Some(Phase::Rejoining));
    assert!(has(&a, |x| *x
        == Action::SetRole {
            instance: "main-0".into(),
            role: RoleLabel::Fenced
        }));
    let demote = Action::Demote {
        instance: "main-0".into(),
        primary: "main-1".into(),
    };
    assert!(has(&a, |x| *x == demote));
    f.ok(demote);
    f.streams("main-0", "main-1");
    f.tick(10);
    let h = f.last_history();
    assert_eq!(
        (h.kind.as_str(), h.outcome.as_str()),
        ("Rejoin", "Succeeded")
    );
}

#[test]
fn paused_cluster_does_not_rejoin_automatically_and_says_why() {
    let mut f = after_failover();
    f.spec.paused = true;
    old_primary_returns(&mut f, false);
    let a = f.tick(10);
    assert!(f.status.transition.is_none());
    assert!(!has(&a, |x| matches!(x, Action::Demote { .. })));
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap()
        .contains("no automatic rejoin"));
}

#[test]
fn failed_rewind_falls_back_to_reclone_with_history_and_event() {
    let mut f = after_failover();
    old_primary_returns(&mut f, false);
    f.tick(10);
    f.fail(
        Action::Demote {
            instance: "main-0".into(),
            primary: "main-1".into(),
        },
        "pg_rewind: source and target clusters are from different systems",
    );
    let a = f.tick(10);
    assert_eq!(f.step(), Some(("Rejoin".into(), "Reclone".into())));
    let reclone = Action::Reclone {
        instance: "main-0".into(),
        source: "main-1".into(),
    };
    assert!(has(&a, |x| *x == reclone));
    assert!(has(
        &a,
        |x| matches!(x, Action::Event { reason, .. } if reason == "RecloneStarted")
    ));
    let started = f
        .status
        .history
        .iter()
        .rev()
        .find(|h| h.kind == "Reclone")
        .unwrap();
    assert_eq!(started.outcome, "Started");
    assert!(started.message.contains("different systems"));
    f.ok(reclone);
    f.agent("main-0").fenced = false;
    f.streams("main-0", "main-1");
    f.tick(10);
    assert_eq!(f.last_history().outcome, "Succeeded");
    assert!(f.status.transition.is_none());
}

#[test]
fn failed_rewind_without_reclone_allowed_fails_with_the_reason() {
    let mut f = after_failover();
    f.spec.rejoin.allow_reclone = false;
    old_primary_returns(&mut f, false);
    f.tick(10);
    f.fail(
        Action::Demote {
            instance: "main-0".into(),
            primary: "main-1".into(),
        },
        "rewind failed",
    );
    let a = f.tick(10);
    assert!(!has(&a, |x| matches!(x, Action::Reclone { .. })));
    let h = f.last_history();
    assert_eq!(h.outcome, "Failed");
    assert!(h.message.contains("allowReclone=false"));
}

#[test]
fn rejoin_request_demotes_a_standby_to_the_primary() {
    let mut f = cluster().instances(3).build();
    f.request(rejoin("main-2", false));
    let a = f.tick(10);
    assert!(has(&a, |x| *x
        == Action::Demote {
            instance: "main-2".into(),
            primary: "main-0".into()
        }));
    assert!(has(&a, |x| matches!(x, Action::RequestDone { .. })));
}

#[test]
fn rejoin_dry_run_reports_whether_a_rewind_is_needed_and_changes_nothing() {
    let mut f = cluster().instances(3).build();
    f.request(rejoin("main-2", true));
    let a = f.tick(10);
    let check = Action::Rewind {
        instance: "main-2".into(),
        source: "main-0".into(),
        dry_run: true,
    };
    assert!(has(&a, |x| *x == check));
    assert!(!has(&a, |x| matches!(
        x,
        Action::Demote { .. } | Action::Reclone { .. }
    )));
    f.obs.results.push(crate::engine::ActionResult {
        action: check,
        outcome: Outcome::Succeeded {
            detail: Some("no rewind needed".into()),
            facts: Default::default(),
        },
    });
    f.tick(10);
    let h = f.last_history();
    assert_eq!(
        (h.kind.as_str(), h.outcome.as_str()),
        ("RejoinDryRun", "DryRun")
    );
    assert!(h.message.contains("no rewind needed"));
}

#[test]
fn rejoin_dry_run_runs_while_paused_and_says_a_needed_reclone_is_not_allowed() {
    let mut f = cluster().instances(3).paused().build();
    f.spec.rejoin.allow_reclone = false;
    f.request(rejoin("main-1", true));
    let a = f.tick(10);
    let check = Action::Rewind {
        instance: "main-1".into(),
        source: "main-0".into(),
        dry_run: true,
    };
    assert!(has(&a, |x| *x == check), "{a:?}");
    f.obs.results.push(crate::engine::ActionResult {
        action: check,
        outcome: Outcome::Succeeded {
            detail: Some("a rejoin would re-clone it (other system)".into()),
            facts: crate::engine::ActionFacts {
                reclone_needed: true,
                ..Default::default()
            },
        },
    });
    let a = f.tick(10);
    let h = f.last_history();
    assert_eq!(
        (h.kind.as_str(), h.outcome.as_str()),
        ("RejoinDryRun", "DryRun")
    );
    assert!(
        h.message
            .contains("allowReclone=false), so a rejoin would fail"),
        "{}",
        h.message
    );
    assert!(has(
        &a,
        |x| matches!(x, Action::Event { reason, .. } if reason == "RejoinDryRun")
    ));
    assert!(!has(&a, |x| matches!(
        x,
        Action::Demote { .. } | Action::Reclone { .. } | Action::Stop { .. }
    )));
    assert!(f.status.transition.is_none());
}

#[test]
fn rejoin_refused_for_the_primary_and_unknown_instances_and_runs_while_paused() {
    let mut f = cluster().instances(3).build();
    f.request(rejoin("main-0", false));
    f.tick(10);
    assert!(f
        .last_history()
        .message
        .contains("main-0 is the primary; switch over first"));
    f.request(rejoin("main-7", false));
    f.tick(10);
    assert!(f
        .last_history()
        .message
        .contains("instance main-7 does not exist (instances: main-0, main-1, main-2)"));
    f.obs.paused_annotation = true;
    f.request(rejoin("main-1", false));
    let a = f.tick(10);
    assert_eq!(f.step(), Some(("Rejoin".into(), "Demote".into())));
    assert!(has(
        &a,
        |x| matches!(x, Action::Demote { instance, .. } if instance == "main-1")
    ));
}

#[test]
fn explicit_reclone_of_a_behind_standby_runs_and_records_why() {
    let mut f = cluster().instances(3).build();
    f.agent("main-2").received_lsn = Some(lsn("0/4000000"));
    f.agent("main-2").replayed_lsn = Some(lsn("0/4000000"));
    f.request(reclone("main-2"));
    let a = f.tick(10);
    assert_eq!(f.status.phase, Some(Phase::Recloning));
    let action = Action::Reclone {
        instance: "main-2".into(),
        source: "main-0".into(),
    };
    assert!(has(&a, |x| *x == action));
    assert!(has(
        &a,
        |x| matches!(x, Action::Event { reason, .. } if reason == "RecloneStarted")
    ));
    assert_eq!(f.last_history().outcome, "Started");
    f.ok(action);
    f.tick(10);
    assert_eq!(
        (
            f.last_history().kind.as_str(),
            f.last_history().outcome.as_str()
        ),
        ("Reclone", "Succeeded")
    );
}

#[test]
fn a_reclone_whose_agent_misses_polls_goes_on_and_one_silent_for_the_detection_timeout_fails() {
    let mut f = cluster().instances(3).build();
    f.agent("main-2").received_lsn = Some(lsn("0/4000000"));
    f.agent("main-2").replayed_lsn = Some(lsn("0/4000000"));
    f.request(reclone("main-2"));
    f.tick(10);
    let action = Action::Reclone {
        instance: "main-2".into(),
        source: "main-0".into(),
    };
    // Well past detectionTimeout into the clone, main-2 misses two polls.
    f.tick(8000);
    let report = f.inst("main-2").agent.clone();
    f.unreachable("main-2");
    f.tick(1000);
    f.tick(1000);
    assert_eq!(f.step(), Some(("Reclone".into(), "Reclone".into())));
    f.inst("main-2").agent = report;
    f.ok(action);
    f.tick(10);
    assert_eq!(
        (
            f.last_history().kind.as_str(),
            f.last_history().outcome.as_str()
        ),
        ("Reclone", "Succeeded")
    );
    // A second one, whose agent then stays silent.
    f.request(reclone("main-2"));
    f.tick(10);
    f.tick(3000);
    f.unreachable("main-2");
    f.tick(4000);
    assert_eq!(f.step(), Some(("Reclone".into(), "Reclone".into())));
    f.tick(1100);
    let h = f.last_history();
    assert_eq!(h.outcome, "Failed", "{}", h.message);
    assert!(
        h.message.contains("main-2 stopped answering"),
        "{}",
        h.message
    );
}

#[test]
fn reclone_refused_when_it_would_destroy_the_most_advanced_copy() {
    let mut f = cluster().instances(3).build();
    // Cut off from the primary with WAL the primary does not report having.
    f.agent("main-2").received_lsn = Some(lsn("0/6000000"));
    f.agent("main-2").streaming = false;
    f.request(reclone("main-2"));
    let a = f.tick(10);
    assert!(!has(&a, |x| matches!(x, Action::Reclone { .. })));
    let h = f.last_history();
    assert_eq!(h.outcome, "Refused");
    assert!(
        h.message
            .contains("main-2 has the most advanced copy of the data"),
        "{}",
        h.message
    );
}

#[test]
fn reclone_of_a_streaming_standby_polled_after_its_primary_runs() {
    // Agents answer at different instants: the standby's received LSN can be
    // past the primary's last polled one while it only holds the primary's WAL.
    let mut f = cluster().instances(3).build();
    f.agent("main-1").received_lsn = Some(lsn("0/5000A00"));
    f.request(reclone("main-1"));
    let a = f.tick(10);
    assert!(
        has(
            &a,
            |x| matches!(x, Action::Reclone { instance, .. } if instance == "main-1")
        ),
        "{a:?} {:?}",
        f.last_history()
    );
}

#[test]
fn reclone_refused_for_the_primary() {
    let mut f = cluster().instances(3).build();
    f.request(reclone("main-0"));
    f.tick(10);
    assert!(f.last_history().message.contains("main-0 is the primary"));
}

#[test]
fn instance_from_another_system_is_recloned_automatically() {
    let mut f = cluster().instances(3).build();
    f.agent("main-2").system_identifier = Some("9999".into());
    f.agent("main-2").received_lsn = Some(lsn("0/1000000"));
    f.agent("main-2").replayed_lsn = Some(lsn("0/1000000"));
    let a = f.tick(10);
    assert_eq!(f.step(), Some(("Reclone".into(), "Reclone".into())));
    assert!(has(
        &a,
        |x| matches!(x, Action::Reclone { instance, .. } if instance == "main-2")
    ));
}

#[test]
fn standby_not_streaming_past_detection_timeout_is_rejoined() {
    let mut f = cluster().instances(3).build();
    f.agent("main-2").streaming = false;
    f.tick(10);
    assert!(f.status.transition.is_none());
    f.tick(5100);
    assert_eq!(f.step(), Some(("Rejoin".into(), "Demote".into())));
}

#[test]
fn instance_busy_with_a_long_operation_is_left_alone() {
    let mut f = cluster().instances(3).build();
    let a = f.agent("main-2");
    a.postgres_running = false;
    a.operation = Some("basebackup".into());
    f.tick(10);
    let a = f.tick(6000);
    assert!(f.status.transition.is_none());
    assert!(!has(&a, |x| x.instance() == Some("main-2")));
}

#[test]
fn rejoin_refused_when_the_instance_agent_does_not_answer() {
    let mut f = cluster().instances(3).build();
    f.unreachable("main-2");
    f.request(rejoin("main-2", false));
    f.tick(10);
    assert_eq!(f.last_history().outcome, "Refused");
    assert!(f
        .last_history()
        .message
        .contains("main-2's agent does not answer"));
}

#[test]
fn reclone_runs_while_paused() {
    let mut f = cluster().instances(3).paused().build();
    f.request(reclone("main-2"));
    let a = f.tick(10);
    assert!(has(
        &a,
        |x| matches!(x, Action::Reclone { instance, .. } if instance == "main-2")
    ));
    assert_eq!(f.step(), Some(("Reclone".into(), "Reclone".into())));
}

#[test]
fn what_the_rewind_discarded_is_recorded_in_the_failover_entry_and_an_event() {
    let mut f = after_failover();
    let failover = f
        .status
        .history
        .iter()
        .rposition(|h| h.kind == crate::api::HistoryKind::Failover)
        .expect("a failover entry");
    assert!(f.status.history[failover].write_window_ms.is_some());
    old_primary_returns(&mut f, false);
    f.tick(10);
    assert_eq!(f.step(), Some(("Rejoin".into(), "Demote".into())));
    let demote = Action::Demote {
        instance: "main-0".into(),
        primary: "main-1".into(),
    };
    f.obs.results.push(crate::engine::ActionResult::answered(
        demote,
        crate::engine::Answer {
            detail: Some("rewound".into()),
            facts: crate::engine::ActionFacts {
                diverged_at: Some(lsn("0/5000000")),
                rewound_from: Some(lsn("0/5000800")),
                ..Default::default()
            },
        },
    ));
    let a = f.tick(10);
    let entry = &f.status.history[failover];
    assert_eq!(entry.bytes_discarded, Some(0x800));
    assert!(
        entry.message.contains("discarded 2048 bytes"),
        "{}",
        entry.message
    );
    assert!(has(
        &a,
        |x| matches!(x, crate::engine::Action::Event { reason, .. } if reason == crate::engine::reasons::REWIND_DISCARDED)
    ));
    let rejoin = f.last_history();
    assert_eq!(rejoin.kind, crate::api::HistoryKind::Rejoin);
    assert!(
        rejoin.message.contains("discarded 2048 bytes"),
        "{}",
        rejoin.message
    );
}
