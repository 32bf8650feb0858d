//! Rolling restart, durability levels, scale up / down, status reporting, history bound.

use super::fixtures::*;
use crate::api::{InstanceRole, Phase};
use crate::engine::{
    decide, sync_standby_names, Action, AgentReport, Request, RestartTarget, RoleLabel, StopMode,
};

fn restart_all() -> Request {
    Request::Restart {
        target: RestartTarget::All,
    }
}

/// A restart as spec.restart has it by default: smart for 10s, then fast for 60s.
fn restart_of(name: &str) -> Action {
    Action::Restart {
        instance: name.into(),
        mode: StopMode::Smart,
        timeout_ms: 60_000,
        smart_timeout_ms: Some(10_000),
    }
}

#[test]
fn rolling_restart_does_standbys_first_then_switches_the_primary_over() {
    let mut f = cluster().instances(3).build();
    f.request(restart_all());
    let a = f.tick(10);
    assert!(has(&a, |x| *x == restart_of("main-1")));
    assert!(!has(&a, |x| *x == restart_of("main-0")));
    f.ok(restart_of("main-1"));
    let a = f.tick(10);
    assert!(has(&a, |x| *x == restart_of("main-2")));
    f.ok(restart_of("main-2"));
    let a = f.tick(10);
    assert!(
        !has(&a, |x| *x == restart_of("main-0")),
        "the primary is switched over, not restarted"
    );
    assert_eq!(
        f.step(),
        Some(("Switchover".into(), "DropPrimaryLabel".into()))
    );
    let h = f.last_history();
    assert_eq!(
        (h.kind.as_str(), h.outcome.as_str()),
        ("Restart", "Succeeded")
    );
    assert!(
        h.message.contains(
            "main-1 restarted; main-2 restarted; main-0 restarted by a switchover to main-1"
        ),
        "{}",
        h.message
    );
}

#[test]
fn a_standby_whose_agent_misses_polls_during_a_rolling_restart_is_waited_for_not_failed() {
    let mut f = cluster().instances(3).build();
    f.request(restart_all());
    f.tick(10);
    f.ok(restart_of("main-1"));
    let a = f.tick(10);
    assert!(has(&a, |x| *x == restart_of("main-2")));
    // main-2 restarts for a while, then misses a few polls (a busy machine).
    f.tick(6000);
    let report = f.inst("main-2").agent.clone();
    f.unreachable("main-2");
    f.tick(1000);
    f.tick(1000);
    assert_eq!(f.step(), Some(("Restart".into(), "RestartInstance".into())));
    let why = f.status.blocked_by.clone().unwrap_or_default();
    assert!(why.contains("restart of main-2 waits for"), "{why}");
    // It answers again, with the restart done.
    f.inst("main-2").agent = report;
    f.ok(restart_of("main-2"));
    f.tick(10);
    let h = f.history_of("Restart");
    assert!(
        h.message.contains("main-2 restarted") && !h.message.contains("failed"),
        "{}",
        h.message
    );
}

#[test]
fn a_standby_whose_agent_stays_silent_for_the_detection_timeout_fails_its_restart() {
    let mut f = cluster().instances(3).build();
    f.request(restart_all());
    f.tick(10);
    f.ok(restart_of("main-1"));
    f.tick(10);
    f.unreachable("main-2");
    f.tick(4000);
    assert_eq!(f.step(), Some(("Restart".into(), "RestartInstance".into())));
    f.tick(1100);
    let h = f.history_of("Restart");
    assert!(
        h.message
            .contains("main-2 failed: its agent does not answer"),
        "{}",
        h.message
    );
}

#[test]
fn rolling_restart_restarts_the_primary_in_place_when_asked() {
    let mut f = cluster().instances(2).primary_restart_in_place().build();
    f.request(restart_all());
    f.tick(10);
    f.ok(restart_of("main-1"));
    let a = f.tick(10);
    assert!(has(&a, |x| *x == restart_of("main-0")));
    f.ok(restart_of("main-0"));
    f.tick(10);
    assert!(f.status.transition.is_none());
    assert_eq!(f.last_history().outcome, "Succeeded");
}

#[test]
fn restart_escalates_to_immediate_when_the_stop_fails() {
    let mut f = cluster().instances(2).build();
    f.request(Request::Restart {
        target: RestartTarget::Instance("main-1".into()),
    });
    f.tick(10);
    f.fail(restart_of("main-1"), "shutdown timed out");
    let a = f.tick(10);
    assert!(has(&a, |x| *x
        == Action::Restart {
            instance: "main-1".into(),
            mode: StopMode::Immediate,
            timeout_ms: 60_000,
            smart_timeout_ms: None,
        }));
}

#[test]
fn pending_restart_starts_a_rolling_restart_unless_paused() {
    let mut f = cluster().instances(3).paused().build();
    f.agent("main-2").pending_restart = true;
    f.tick(10);
    assert!(f.status.transition.is_none());
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap()
        .contains("restart is pending on main-2"));
    f.spec.paused = false;
    let a = f.tick(10);
    assert!(has(&a, |x| *x == restart_of("main-2")));
}

#[test]
fn restart_refused_for_unknown_instance_and_runs_while_paused() {
    let mut f = cluster().instances(3).build();
    f.request(Request::Restart {
        target: RestartTarget::Instance("main-9".into()),
    });
    f.tick(10);
    assert!(f
        .last_history()
        .message
        .contains("instance main-9 does not exist"));
    f.spec.paused = true;
    f.request(restart_all());
    let a = f.tick(10);
    assert_eq!(f.step(), Some(("Restart".into(), "RestartInstance".into())));
    assert!(has(&a, |x| *x == restart_of("main-1")));
}

fn config_of(a: &[Action], name: &str) -> Option<(String, String)> {
    a.iter().find_map(|x| match x {
        Action::Config {
            instance,
            synchronous_commit,
            synchronous_standby_names,
            ..
        } if instance == name => Some((
            synchronous_commit.clone(),
            synchronous_standby_names.clone(),
        )),
        _ => None,
    })
}

#[test]
fn sync_mode_sets_any_n_over_non_learner_standbys() {
    let mut f = cluster().instances(4).priority(3, 0).build();
    f.spec.replication.mode = crate::api::ReplicationMode::Sync;
    let a = f.tick(10);
    assert_eq!(
        config_of(&a, "main-0"),
        Some(("on".into(), "ANY 1 (\"main-1\", \"main-2\")".into()))
    );
    f.ack_all();
    for s in ["main-1", "main-2"] {
        set_sync_state(&mut f, s, crate::engine::SyncState::Quorum);
    }
    let a = f.tick(10);
    assert!(
        config_of(&a, "main-0").is_none(),
        "applied settings are not re-sent"
    );
    assert!(f.status.transition.is_none(), "{:?}", f.status.transition);
    f.spec.replication.mode = crate::api::ReplicationMode::Async;
    let a = f.tick(10);
    assert_eq!(
        config_of(&a, "main-0"),
        Some(("local".into(), String::new()))
    );
}

#[test]
fn preferred_durability_drops_sync_names_while_no_standby_streams_and_restores_them() {
    let mut f = cluster().instances(2).sync().build();
    assert_eq!(
        f.agent("main-0").synchronous_standby_names.as_deref(),
        Some("ANY 1 (\"main-1\")")
    );
    f.agent("main-1").streaming = false;
    let a = f.tick(10);
    assert_eq!(config_of(&a, "main-0").map(|c| c.1), Some(String::new()));
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap()
        .contains("dataDurability preferred"));
    f.ack_all();
    f.agent("main-1").streaming = true;
    let a = f.tick(10);
    assert_eq!(
        config_of(&a, "main-0").map(|c| c.1),
        Some("ANY 1 (\"main-1\")".into())
    );
}

#[test]
fn required_durability_never_drops_sync_names() {
    let mut f = cluster().instances(2).required().build();
    f.unreachable("main-1");
    let a = f.tick(10);
    assert!(config_of(&a, "main-0").is_none());
    assert_eq!(
        f.agent("main-0").synchronous_standby_names.as_deref(),
        Some("ANY 1 (\"main-1\")")
    );
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap()
        .contains("dataDurability required: 0 of 1"));
}

#[test]
fn sync_standbys_sets_the_quorum_size() {
    let mut f = cluster().instances(4).sync().sync_standbys(2).build();
    let a = f.tick(10);
    assert!(config_of(&a, "main-0").is_none(), "settled");
    assert_eq!(
        f.agent("main-0").synchronous_standby_names.as_deref(),
        Some("ANY 2 (\"main-1\", \"main-2\", \"main-3\")")
    );
    let sync = f.status.sync.clone().unwrap();
    assert_eq!((sync.quorum, sync.standbys.len()), (2, 3));
}

#[test]
fn sync_standby_names_quotes_names_and_is_empty_for_zero() {
    assert_eq!(
        sync_standby_names(2, &["a-1".into(), "a-2".into()]),
        "ANY 2 (\"a-1\", \"a-2\")"
    );
    assert_eq!(sync_standby_names(0, &["a-1".into()]), "");
}

#[test]
fn scale_down_never_removes_the_primary_it_switches_over_first() {
    let mut f = cluster().instances(3).build();
    // Make main-2 the primary.
    f.status.current_primary = Some("main-2".into());
    for (n, p) in [("main-0", "main-2"), ("main-1", "main-2")] {
        *f.inst(n) = standby_obs(n, p);
    }
    *f.inst("main-2") = primary_obs("main-2", 3);
    f.settle();
    f.spec.instances = 2;
    let d = f.peek();
    assert_eq!(d.keep_instances, 3);
    f.tick(10);
    let tr = f.status.transition.clone().unwrap();
    assert_eq!(
        (tr.kind.as_str(), tr.from.as_deref()),
        ("Switchover", Some("main-2"))
    );
    assert!(tr.reason.contains("scale down to 2 instances"));
}

#[test]
fn scale_up_points_new_instances_at_the_primary() {
    let mut f = cluster().instances(2).build();
    f.spec.instances = 3;
    f.obs.instances.push(standby_obs("main-2", "main-0"));
    f.agent("main-2").upstream = None;
    f.agent("main-2").streaming = false;
    let d = f.peek();
    assert_eq!(d.keep_instances, 3);
    assert!(has(&d.actions, |x| *x
        == Action::Follow {
            instance: "main-2".into(),
            primary: "main-0".into(),
            cascade: false
        }));
}

#[test]
fn status_reports_roles_lag_and_conditions() {
    let mut f = cluster().instances(4).priority(3, 0).build();
    f.unreachable("main-2");
    f.agent("main-1").received_lsn = Some(lsn("0/4FFFF00"));
    f.agent("main-1").replayed_lsn = Some(lsn("0/4FFFF00"));
    f.tick(10);
    let roles: Vec<InstanceRole> = f.status.instances.iter().map(|i| i.role).collect();
    assert_eq!(
        roles,
        [
            InstanceRole::Primary,
            InstanceRole::Standby,
            InstanceRole::Down,
            InstanceRole::Learner
        ]
    );
    assert_eq!(f.status.instances[1].lag_bytes, Some(256));
    assert_eq!(f.status.instances[3].priority, 0);
    assert!(
        f.status.instances[2].last_seen.is_some(),
        "lastSeen is kept while unreachable"
    );
    assert_eq!(f.status.phase, Some(Phase::Degraded));
    assert_eq!(
        f.status.condition("ReplicationHealthy").unwrap().status,
        "False"
    );
    assert_eq!(
        f.status.condition("PrimaryAvailable").unwrap().status,
        "True"
    );
    assert_eq!(f.status.ready_instances.as_deref(), Some("3/4"));
}

#[test]
fn history_is_bounded_to_twenty_entries() {
    let mut f = cluster().instances(3).build();
    for _ in 0..25 {
        f.request(Request::Reclone {
            instance: "main-0".into(),
        });
        f.tick(10);
    }
    assert_eq!(f.status.history.len(), 20);
}

#[test]
fn decide_is_deterministic() {
    let f = cluster().instances(3).sync().build();
    let a = decide(&f.spec, &f.status, &f.obs, f.now());
    let b = decide(&f.spec, &f.status, &f.obs, f.now());
    assert_eq!(a, b);
}

#[test]
fn a_rolling_restart_yields_to_failover_when_the_primary_fails() {
    let mut f = cluster().instances(3).build();
    f.request(restart_all());
    f.tick(10);
    f.gone("main-0");
    f.tick(10);
    let h = f
        .status
        .history
        .iter()
        .rev()
        .find(|h| h.kind == "Restart")
        .unwrap();
    assert_eq!(h.outcome, "Failed");
    assert!(h.message.contains("abandoned: the primary main-0 failed"));
    assert_eq!(f.step(), Some(("Failover".into(), "Fence".into())));
}

#[test]
fn bootstrap_waits_for_the_first_primary_then_records_it() {
    let mut f = cluster().instances(2).build();
    f.status = Default::default();
    f.agent("main-0").postgres_running = false;
    f.unreachable("main-1");
    f.tick(100);
    assert_eq!(f.status.phase, Some(Phase::Creating));
    assert!(f.status.current_primary.is_none());
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap()
        .contains("first primary"));
    f.agent("main-0").postgres_running = true;
    let actions = f.tick(100);
    assert_eq!(f.status.current_primary.as_deref(), Some("main-0"));
    assert_eq!(f.last_history().kind, "Bootstrap");
    assert_eq!(f.last_history().outcome, "Succeeded");
    assert!(has(
        &actions,
        |a| matches!(a, Action::RenewLease { instance, .. } if instance == "main-0")
    ));
}

#[test]
fn bootstrap_adopts_the_most_advanced_of_two_primaries_and_fences_the_other() {
    let mut f = cluster().instances(2).build();
    f.status = Default::default();
    f.promoted("main-1", 2);
    let actions = f.tick(100);
    assert_eq!(f.status.current_primary.as_deref(), Some("main-1"));
    assert!(has(&actions, |a| *a
        == Action::SetRole {
            instance: "main-0".into(),
            role: RoleLabel::Fenced
        }));
}

/// `n` holds a primary's data directory, stopped by its agent until told.
fn held_primary(f: &mut Fixture, n: &str, timeline: i64, checkpoint: &str) {
    let a = f.agent(n);
    *a = AgentReport {
        postgres_running: false,
        fenced: true,
        timeline: Some(timeline),
        checkpoint_lsn: Some(lsn(checkpoint)),
        system_identifier: Some("7000".into()),
        ..AgentReport::default()
    };
}

#[test]
fn bootstrap_adopts_the_most_advanced_held_primary_once_every_instance_reported() {
    // A DbCluster deleted and created again: the volumes kept their data.
    let mut f = cluster().instances(3).build();
    f.status = Default::default();
    held_primary(&mut f, "main-0", 1, "0/5000000");
    held_primary(&mut f, "main-1", 2, "0/6000000");
    f.unreachable("main-2");
    let actions = f.tick(100);
    assert!(
        !has(&actions, |a| matches!(a, Action::Start { .. })),
        "{actions:?}"
    );
    let blocked = f.status.blocked_by.clone().unwrap_or_default();
    assert!(
        blocked.contains("adopting existing data") && blocked.contains("main-2"),
        "{blocked}"
    );
    // main-2 comes back as a standby: every copy is known, main-1's is the most advanced.
    f.obs.instances[2] = standby_obs("main-2", "main-0");
    let actions = f.tick(100);
    assert!(has(&actions, |a| *a
        == Action::Start {
            instance: "main-1".into()
        }));
    assert!(has(
        &actions,
        |a| matches!(a, Action::RenewLease { instance, .. } if instance == "main-1")
    ));
    assert!(!has(
        &actions,
        |a| matches!(a, Action::Start { instance } if instance == "main-0")
    ));
    // Once it runs, it is the primary and bootstrap is over.
    let a = f.agent("main-1");
    a.postgres_running = true;
    a.fenced = false;
    a.current_lsn = Some(lsn("0/6000000"));
    f.tick(100);
    assert_eq!(f.status.current_primary.as_deref(), Some("main-1"));
    assert_eq!(f.last_history().kind, "Bootstrap");
    assert_eq!(f.last_history().outcome, "Succeeded");
}

#[test]
fn bootstrap_of_a_held_primary_on_a_tie_starts_the_lowest_ordinal() {
    let mut f = cluster().instances(2).build();
    f.status = Default::default();
    held_primary(&mut f, "main-0", 1, "0/5000000");
    held_primary(&mut f, "main-1", 1, "0/5000000");
    let actions = f.tick(100);
    assert!(has(&actions, |a| *a
        == Action::Start {
            instance: "main-0".into()
        }));
    assert!(!has(
        &actions,
        |a| matches!(a, Action::Start { instance } if instance == "main-1")
    ));
}

#[test]
fn an_unreadable_request_is_refused_recorded_and_cleared() {
    let mut f = cluster().instances(3).build();
    let request = Request::Unreadable {
        source: "tandem.dev/switchover".into(),
        value: "main-one".into(),
        reason: "tandem.dev/switchover=\"main-one\" refused: the value must be an instance name"
            .into(),
    };
    f.request(request.clone());
    let before = f.status.clone();
    let d = f.tick(100);
    let e = f.last_history();
    assert_eq!(e.kind, crate::api::HistoryKind::Request);
    assert_eq!(e.outcome, crate::api::HistoryOutcome::Refused);
    assert!(e.message.contains("main-one"), "{e:?}");
    assert!(has(
        &d,
        |a| matches!(a, Action::Event { reason, .. } if reason == crate::engine::reasons::REQUEST_REFUSED)
    ));
    assert!(has(&d, |a| *a
        == Action::RequestDone {
            request: request.clone()
        }));
    assert_eq!(
        f.status.transition, before.transition,
        "nothing else changes"
    );
    assert_eq!(f.status.current_primary, before.current_primary);
}
