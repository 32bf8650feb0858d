//! Switchover prechecks with their figures, every refusal, and dry-run.

use super::fixtures::*;
use crate::api::CheckState;
use crate::engine::{Action, Request, SwitchoverTarget};

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
fn switchover_refused_when_the_candidate_does_not_stream_from_the_primary() {
    let mut f = cluster().instances(3).build();
    // Reconnecting after a restart of the primary: it would never receive the
    // shutdown checkpoint.
    f.agent("main-1").streaming = false;
    assert_refused(
        &mut f,
        to("main-1", false),
        "main-1 does not stream from main-0 now",
    );
}

#[test]
fn switchover_to_any_skips_a_standby_that_does_not_stream() {
    let mut f = cluster().instances(3).build();
    f.agent("main-1").streaming = false;
    f.request(to("any", false));
    f.tick(30);
    let tr = f.status.transition.clone().expect("a switchover started");
    assert_eq!(tr.kind, "Switchover");
    assert_eq!(tr.target.as_deref(), Some("main-2"));
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
fn a_switchover_refusal_says_why_the_candidate_does_not_answer() {
    let mut f = cluster().instances(3).build();
    f.unreachable("main-1");
    f.inst("main-1").unanswered = Some(crate::api::AgentUnanswered::Timeout);
    assert_refused(
        &mut f,
        to("main-1", false),
        "main-1 does not answer (timed out)",
    );
}

#[test]
fn switchover_runs_while_paused_but_its_prechecks_still_refuse() {
    let mut f = cluster().instances(3).paused().build();
    f.agent("main-1").streaming = false;
    assert_refused(&mut f, to("main-1", false), "main-1 does not stream");
    f.streams("main-1", "main-0");
    f.request(to("main-1", false));
    f.tick(10);
    assert_eq!(
        f.step(),
        Some(("Switchover".into(), "DropPrimaryLabel".into())),
        "a requested switchover runs while paused"
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
