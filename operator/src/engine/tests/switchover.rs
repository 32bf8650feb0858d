//! Switchover: prechecks with figures, refusals, dry-run, every step, rollback.

use super::fixtures::*;
use crate::api::{CheckState, Phase};
use crate::engine::{Action, Request, RoleLabel, StopMode, SwitchoverTarget};

/// Run a request and check that it was refused with `message` and nothing else changed.
fn assert_refused(f: &mut Fixture, req: Request, message: &str) {
    let baseline = f.peek();
    f.request(req);
    let d = f.peek();
    let h = d.status.history.last().unwrap();
    assert_eq!(h.outcome, "Refused");
    assert!(
        h.message.contains(message),
        "{:?} does not contain {message:?}",
        h.message
    );
    let mut without = d.status.clone();
    without.history.pop();
    assert_eq!(
        without, baseline.status,
        "a refused request changes nothing else"
    );
    assert!(only_answers(&d.actions, &baseline.actions));
    assert!(has(&d.actions, |a| matches!(a, Action::RequestDone { .. })));
    assert!(has(
        &d.actions,
        |a| matches!(a, Action::Event { reason, .. } if reason == "SwitchoverRefused")
    ));
    f.tick(10);
}

fn to(name: &str, force: bool) -> Request {
    Request::Switchover {
        to: if name == "any" {
            SwitchoverTarget::Any
        } else {
            SwitchoverTarget::Instance(name.into())
        },
        dry_run: false,
        force,
    }
}

#[test]
fn switchover_refused_for_an_unknown_instance() {
    let mut f = cluster().instances(3).build();
    assert_refused(
        &mut f,
        to("main-3", false),
        "instance main-3 does not exist (instances: main-0, main-1, main-2)",
    );
}

#[test]
fn switchover_refused_when_the_target_is_already_primary() {
    let mut f = cluster().instances(3).build();
    assert_refused(&mut f, to("main-0", false), "main-0 is already the primary");
}

#[test]
fn switchover_refused_to_a_learner() {
    let mut f = cluster().instances(3).priority(2, 0).build();
    assert_refused(
        &mut f,
        to("main-2", false),
        "main-2 has priority 0 (learner) and cannot be promoted",
    );
}

#[test]
fn switchover_refused_when_the_candidate_lags_too_much() {
    let mut f = cluster().instances(3).build();
    f.agent("main-1").received_lsn = Some(lsn("0/3000000"));
    assert_refused(
        &mut f,
        to("main-1", false),
        "main-1 lags main-0 by 33554432 bytes (max 16777216)",
    );
    assert_refused(&mut f, to("main-1", true), "lags main-0");
}

#[test]
fn switchover_refused_when_archive_backlog_critical_and_force_overrides_only_that() {
    let mut f = cluster().instances(3).build();
    f.agent("main-0").archive_ready = Some(130);
    assert_refused(
        &mut f,
        to("main-1", false),
        "switchover refused: 130 archive-ready files on main-0 (critical at 128); --force overrides this check",
    );
    f.request(to("main-1", true));
    f.tick(10);
    assert_eq!(
        f.step(),
        Some(("Switchover".into(), "DropPrimaryLabel".into()))
    );
}

#[test]
fn switchover_refused_when_the_candidate_lacks_wal_senders() {
    let mut f = cluster().instances(3).build();
    f.agent("main-1").max_wal_senders = Some(1);
    assert_refused(
        &mut f,
        to("main-1", false),
        "main-1 has max_wal_senders 1, 2 needed",
    );
}

#[test]
fn switchover_refused_when_the_candidate_lacks_replication_slots() {
    let mut f = cluster().instances(3).build();
    f.agent("main-1").max_replication_slots = Some(1);
    assert_refused(
        &mut f,
        to("main-1", false),
        "main-1 has max_replication_slots 1 (0 in use), 2 needed",
    );
}

#[test]
fn switchover_refused_when_the_primary_cannot_reach_the_candidate_for_replication() {
    let mut f = cluster().instances(3).build();
    f.agent("main-0")
        .replication_to
        .insert("main-1".into(), false);
    assert_refused(
        &mut f,
        to("main-1", false),
        "main-0 cannot open a replication connection to main-1",
    );
}

#[test]
fn switchover_refused_when_the_candidate_does_not_answer() {
    let mut f = cluster().instances(3).build();
    f.unreachable("main-1");
    assert_refused(&mut f, to("main-1", false), "main-1 does not answer");
}

#[test]
fn switchover_refused_while_paused() {
    let mut f = cluster().instances(3).paused().build();
    assert_refused(
        &mut f,
        to("main-1", false),
        "automation is paused (spec.paused); unpause first",
    );
}

#[test]
fn switchover_refused_while_another_transition_runs() {
    let mut f = cluster().instances(3).build();
    f.switchover("main-1");
    f.tick(10);
    assert_refused(
        &mut f,
        to("main-2", false),
        "a Switchover of main-1 is in progress (step DropPrimaryLabel)",
    );
}

#[test]
fn switchover_dry_run_reports_every_precheck_with_figures_and_changes_nothing() {
    let mut f = cluster().instances(3).build();
    f.agent("main-0").archive_ready = Some(3);
    let baseline = f.peek();
    f.request(Request::Switchover {
        to: SwitchoverTarget::Instance("main-1".into()),
        dry_run: true,
        force: false,
    });
    let d = f.peek();
    let h = d.status.history.last().unwrap();
    assert_eq!(
        (h.kind.as_str(), h.outcome.as_str()),
        ("SwitchoverDryRun", "DryRun")
    );
    let names: Vec<&str> = h.checks.iter().map(|c| c.name.as_str()).collect();
    for n in [
        "primary_reachable",
        "archive_ready",
        "shutdown_timeout",
        "candidate_reachable",
        "candidate_priority",
        "candidate_lag",
        "wal_senders",
        "replication_slots",
        "replication_connection",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let archive = h.checks.iter().find(|c| c.name == "archive_ready").unwrap();
    assert_eq!((archive.state, archive.value), (CheckState::Ok, Some(3)));
    assert!(h.checks.iter().all(|c| c.state != CheckState::Critical));
    let mut without = d.status.clone();
    without.history.pop();
    assert_eq!(without, baseline.status);
    assert!(only_answers(&d.actions, &baseline.actions));
}

#[test]
fn switchover_dry_run_reports_a_failing_check_without_refusing_anything_else() {
    let mut f = cluster().instances(3).priority(2, 0).build();
    f.request(Request::Switchover {
        to: SwitchoverTarget::Instance("main-2".into()),
        dry_run: true,
        force: false,
    });
    f.tick(10);
    let h = f.last_history();
    assert_eq!(h.outcome, "DryRun");
    assert!(h
        .message
        .contains("main-2 has priority 0 (learner) and cannot be promoted"));
    assert!(f.status.transition.is_none());
}

/// Walk a switchover to main-1 through every step; returns the fixture at the end.
fn run_switchover(target: &str) -> Fixture {
    let mut f = cluster().instances(3).build();
    f.switchover(target);
    let a = f.tick(10);
    assert_eq!(f.status.phase, Some(Phase::SwitchingOver));
    assert!(has(&a, |a| *a
        == Action::SetRole {
            instance: "main-0".into(),
            role: RoleLabel::Fenced
        }));
    assert!(promotes(&a).is_none());
    f.ack_all();
    let a = f.tick(10);
    assert_eq!(f.step(), Some(("Switchover".into(), "StopPrimary".into())));
    let stop = Action::Stop {
        instance: "main-0".into(),
        mode: StopMode::Fast,
        timeout_ms: 60_000,
    };
    assert!(has(&a, |x| *x == stop));
    f.agent("main-0").postgres_running = false;
    let a = f.tick(10);
    assert_eq!(
        f.step(),
        Some(("Switchover".into(), "StopPrimary".into())),
        "a postgres seen down is not yet held down"
    );
    assert!(promotes(&a).is_none());
    f.ok(stop);
    f.agent("main-0").checkpoint_lsn = Some(lsn("0/5000028"));
    let a = f.tick(10);
    assert_eq!(
        f.step(),
        Some(("Switchover".into(), "WaitShutdownCheckpoint".into()))
    );
    assert!(
        promotes(&a).is_none(),
        "no promotion before the checkpoint arrived"
    );
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap()
        .contains("shutdown checkpoint 0/5000028"));
    let t = f
        .status
        .transition
        .as_ref()
        .unwrap()
        .target
        .clone()
        .unwrap();
    f.agent(&t).received_lsn = Some(lsn("0/50000A0"));
    let a = f.tick(10);
    assert_eq!(promotes(&a), Some(t.clone()));
    f.promoted(&t, 2);
    let a = f.tick(10);
    assert_eq!(f.status.current_primary.as_deref(), Some(t.as_str()));
    assert!(has(&a, |x| *x
        == Action::SetRole {
            instance: t.clone(),
            role: RoleLabel::Primary
        }));
    f.ack_all();
    let a = f.tick(10);
    assert_eq!(f.step(), Some(("Switchover".into(), "Follow".into())));
    assert!(has(&a, |x| *x
        == Action::Demote {
            instance: "main-0".into(),
            primary: t.clone()
        }));
    f.ack_all();
    f.tick(10);
    f
}

#[test]
fn switchover_to_a_named_standby_runs_every_step_in_order() {
    let f = run_switchover("main-1");
    assert!(f.status.transition.is_none());
    let h = f.last_history();
    assert_eq!(
        (h.kind.as_str(), h.outcome.as_str()),
        ("Switchover", "Succeeded")
    );
    assert_eq!(
        (h.from.as_deref(), h.to.as_deref()),
        (Some("main-0"), Some("main-1"))
    );
}

#[test]
fn switchover_to_any_picks_the_most_advanced_eligible_standby() {
    let mut f = cluster().instances(3).build();
    f.agent("main-2").received_lsn = Some(lsn("0/5000010"));
    f.switchover("any");
    f.tick(10);
    assert_eq!(
        f.status.transition.as_ref().unwrap().target.as_deref(),
        Some("main-2")
    );
    let f = run_switchover("any");
    assert_eq!(f.status.current_primary.as_deref(), Some("main-1"));
}

#[test]
fn switchover_to_any_skips_candidates_that_fail_prechecks() {
    let mut f = cluster().instances(3).build();
    f.agent("main-1").max_wal_senders = Some(0);
    f.switchover("any");
    f.tick(10);
    assert_eq!(
        f.status.transition.as_ref().unwrap().target.as_deref(),
        Some("main-2")
    );
}

#[test]
fn switchover_escalates_to_an_immediate_stop_when_the_fast_stop_fails() {
    let mut f = cluster().instances(3).build();
    f.switchover("main-1");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.fail(
        Action::Stop {
            instance: "main-0".into(),
            mode: StopMode::Fast,
            timeout_ms: 60_000,
        },
        "timed out",
    );
    let a = f.tick(10);
    assert!(has(&a, |x| *x
        == Action::Stop {
            instance: "main-0".into(),
            mode: StopMode::Immediate,
            timeout_ms: 60_000
        }));
}

#[test]
fn switchover_rolls_back_when_the_target_misses_the_shutdown_checkpoint() {
    let mut f = cluster().instances(3).build();
    f.switchover("main-1");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.ack_all();
    f.agent("main-0").postgres_running = false;
    f.agent("main-0").checkpoint_lsn = Some(lsn("0/5000028"));
    f.tick(10);
    let a = f.tick(61_000);
    assert_eq!(f.step(), Some(("Switchover".into(), "RollBack".into())));
    assert!(promotes(&a).is_none());
    assert!(has(&a, |x| *x
        == Action::Start {
            instance: "main-0".into()
        }));
    f.agent("main-0").postgres_running = true;
    let a = f.tick(10);
    assert!(has(&a, |x| *x
        == Action::SetRole {
            instance: "main-0".into(),
            role: RoleLabel::Primary
        }));
    f.ack_all();
    f.tick(10);
    let h = f.last_history();
    assert_eq!(h.outcome, "RolledBack");
    assert!(
        h.message
            .contains("did not receive main-0's shutdown checkpoint"),
        "{}",
        h.message
    );
    assert_eq!(f.status.current_primary.as_deref(), Some("main-0"));
}

#[test]
fn switchover_rolls_back_when_promotion_fails() {
    let mut f = cluster().instances(3).build();
    f.switchover("main-1");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.ack_all();
    f.agent("main-0").postgres_running = false;
    f.agent("main-1").received_lsn = Some(lsn("0/6000000"));
    f.tick(10);
    f.fail(
        Action::Promote {
            instance: "main-1".into(),
        },
        "not in recovery?",
    );
    f.tick(10);
    assert_eq!(f.step(), Some(("Switchover".into(), "RollBack".into())));
}

#[test]
fn switchover_resumes_from_every_step_after_an_operator_restart() {
    // At each step, drop the results (an operator restart loses them) and check
    // that the same step's actions come again.
    let mut f = cluster().instances(3).build();
    f.switchover("main-1");
    f.tick(10);
    let mut seen = Vec::new();
    for _ in 0..12 {
        let Some((_, step)) = f.step() else { break };
        seen.push(step);
        let again = f.peek();
        assert_eq!(
            again.status.transition.as_ref().map(|t| &t.step),
            f.status.transition.as_ref().map(|t| &t.step)
        );
        f.ack_all();
        f.agent("main-0").postgres_running = !matches!(
            f.step().unwrap().1.as_str(),
            "StopPrimary" | "WaitShutdownCheckpoint" | "Promote" | "Label" | "Follow"
        );
        if f.step().unwrap().1 == "WaitShutdownCheckpoint" {
            f.agent("main-1").received_lsn = Some(lsn("0/6000000"));
        }
        if f.last.iter().any(|a| matches!(a, Action::Promote { .. })) {
            f.promoted("main-1", 2);
        }
        if f.last.iter().any(|a| matches!(a, Action::Demote { .. })) {
            f.streams("main-0", "main-1");
        }
        f.tick(10);
    }
    assert!(
        f.status.transition.is_none(),
        "finished; steps seen {seen:?}"
    );
    assert_eq!(
        seen,
        [
            "DropPrimaryLabel",
            "StopPrimary",
            "WaitShutdownCheckpoint",
            "Promote",
            "Label",
            "Follow"
        ]
    );
}

#[test]
fn switchover_refused_before_the_cluster_has_a_primary() {
    let mut f = cluster().instances(2).build();
    f.status = Default::default();
    f.agent("main-0").postgres_running = false;
    f.tick(10);
    f.request(to("main-1", false));
    f.tick(10);
    assert!(f
        .last_history()
        .message
        .contains("switchover refused: a Bootstrap is in progress"));
}

#[test]
fn actions_and_requests_round_trip_through_json() {
    let a = Action::Event {
        instance: None,
        type_: crate::engine::EventType::Warning,
        reason: "SwitchoverRefused".into(),
        message: "m".into(),
    };
    let text = serde_json::to_string(&a).unwrap();
    assert!(text.contains("\"type\":\"Warning\""), "{text}");
    assert_eq!(serde_json::from_str::<Action>(&text).unwrap(), a);
    let r = to("any", true);
    assert_eq!(
        serde_json::from_str::<Request>(&serde_json::to_string(&r).unwrap()).unwrap(),
        r
    );
}

#[test]
fn the_new_primary_keeps_its_lease_while_the_old_one_is_still_rejoining() {
    let mut f = cluster().instances(3).build();
    f.switchover("main-1");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.ack_all();
    f.agent("main-0").postgres_running = false;
    f.agent("main-1").received_lsn = Some(lsn("0/6000000"));
    f.tick(10);
    f.promoted("main-1", 2);
    f.tick(10);
    f.ack_all();
    f.tick(10);
    assert_eq!(f.step(), Some(("Switchover".into(), "Follow".into())));
    // The Demote of main-0 takes a while: no result comes back.
    for _ in 0..5 {
        let a = f.tick(3000);
        assert_eq!(f.step(), Some(("Switchover".into(), "Follow".into())));
        assert!(
            has(&a, |x| *x
                == Action::RenewLease {
                    instance: "main-1".into(),
                    ttl_ms: 10_000
                }),
            "{a:?}"
        );
        assert!(!has(
            &a,
            |x| matches!(x, Action::RenewLease { instance, .. } if instance == "main-0")
        ));
    }
}
