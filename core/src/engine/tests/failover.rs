//! Bootstrap, failure detection, fencing, candidate choice, promotion and RPO accounting.

use super::fixtures::*;
use crate::api::{InstanceRole, Phase, SyncStatus};
use crate::engine::{Action, ActionResult, InstanceObs, Observations, RoleLabel, StopMode};

#[test]
fn healthy_cluster_only_renews_the_primary_lease() {
    let mut f = cluster().instances(3).build();
    let actions = f.tick(1000);
    assert_eq!(
        actions,
        vec![Action::RenewLease {
            instance: "main-0".into(),
            ttl_ms: 10_000,
            challenge: None,
            epoch: 0,
            peers: vec!["main-1".into(), "main-2".into()],
        }]
    );
    assert_eq!(f.status.phase, Some(Phase::Healthy));
    assert_eq!(f.status.ready_instances.as_deref(), Some("3/3"));
    assert!(f.status.blocked_by.is_none());
    assert_eq!(f.status.instances[1].role, InstanceRole::Standby);
    assert_eq!(f.status.instances[1].lag_bytes, Some(0));
    let ready = f.status.condition("Ready").unwrap();
    assert_eq!(ready.status, "True");
}

#[test]
fn failover_waits_for_the_detection_timeout_when_the_primary_is_unreachable() {
    let mut f = cluster().instances(3).build();
    f.unreachable("main-0");
    f.tick(100);
    f.tick(2000);
    assert!(f.status.transition.is_none());
    let why = f.status.blocked_by.clone().unwrap();
    assert!(
        why.contains("main-0's agent does not answer") && why.contains("detectionTimeout 5s"),
        "{why}"
    );
}

#[test]
fn blocked_by_and_the_instance_status_say_why_the_agent_does_not_answer() {
    let mut f = cluster().instances(3).build();
    f.unreachable("main-0");
    f.inst("main-0").unanswered = Some(crate::api::AgentUnanswered::Unauthorized);
    f.tick(100);
    let why = f.status.blocked_by.clone().unwrap();
    assert!(
        why.contains("main-0's agent does not answer: it refuses the token (401"),
        "{why}"
    );
    assert_eq!(
        f.status.instances[0].agent_unanswered,
        Some(crate::api::AgentUnanswered::Unauthorized)
    );
    assert_eq!(f.status.instances[1].agent_unanswered, None);
}

#[test]
fn failover_fences_and_waits_for_the_lease_before_promoting_an_unreachable_primary() {
    let mut f = cluster().instances(3).build();
    f.ack_all(); // the last lease renewal succeeded
    f.tick(0);
    f.unreachable("main-0");
    f.tick(100);
    let actions = f.tick(5000);
    assert_eq!(f.step(), Some(("Failover".into(), "Fence".into())));
    assert!(has(&actions, |a| *a
        == Action::SetRole {
            instance: "main-0".into(),
            role: RoleLabel::Fenced
        }));
    assert!(has(&actions, |a| *a
        == Action::FenceInstance {
            instance: "main-0".into()
        }));
    assert!(promotes(&actions).is_none());
    // Its peers are told to vouch for it no more, under a higher epoch.
    for peer in ["main-1", "main-2"] {
        assert!(
            has(&actions, |a| *a
                == Action::StopVouching {
                    instance: peer.into(),
                    epoch: 1
                }),
            "{actions:#?}"
        );
    }
    // They last vouched for it at its last renewal (6.1 s before the next decision reads the answers).
    answer_stop_vouching(&mut f, 6100);
    let actions = f.tick(1000);
    assert!(promotes(&actions).is_none());
    let why = f.status.blocked_by.clone().unwrap_or_default();
    assert!(why.contains("lease runs out in"), "{why}");
    let actions = f.tick(4000); // 10.1 s since the last renewal: within the margin
    assert!(promotes(&actions).is_none(), "{actions:#?}");
    // TTL 10 s + margin 0.4 s after the last renewal and the last vouch.
    let actions = f.tick(400);
    assert_eq!(promotes(&actions).as_deref(), Some("main-1"));
    assert_eq!(f.step(), Some(("Failover".into(), "Promote".into())));
}

#[test]
fn an_agent_that_fences_before_its_lease_ends_is_promoted_over_sooner_and_the_engine_wakes_then() {
    let mut f = cluster().instances(3).build();
    // main-0's agent says it fences 300 ms before its lease's end.
    f.agent("main-0").lease = Some(crate::engine::LeaseReport {
        held: true,
        remaining_ms: 10_000,
        challenge: Some(1),
        fence_lead_ms: Some(300),
    });
    f.ack_all();
    f.tick(0); // the last renewal, at t
    let t = f.now;
    assert_eq!(
        f.status.lease.as_ref().and_then(|l| l.fence_lead_ms),
        Some(300),
        "{:?}",
        f.status.lease
    );
    f.unreachable("main-0");
    f.tick(100);
    let d = f.peek();
    // Detection ends 5 s after the primary was first seen unreachable (t + 100 ms).
    assert_eq!(
        d.wake_at.map(|w| w.as_millisecond()),
        Some(f.now + 5000),
        "{:?}",
        d.wake_at
    );
    f.tick(5000);
    assert_eq!(f.step(), Some(("Failover".into(), "Fence".into())));
    answer_stop_vouching(&mut f, 6100); // they last vouched at t
    let actions = f.tick(1000);
    assert!(promotes(&actions).is_none());
    // TTL 10 s + 1 % + 50 ms: no margin for a fence that ends before the lease does.
    let d = f.peek();
    assert_eq!(
        d.wake_at.map(|w| w.as_millisecond() - t),
        Some(10_150),
        "{:?}",
        f.status.blocked_by
    );
    let actions = f.tick(t + 10_149 - f.now);
    assert!(promotes(&actions).is_none(), "{actions:#?}");
    let actions = f.tick(1);
    assert_eq!(promotes(&actions).as_deref(), Some("main-1"));
}

#[test]
fn the_lease_margin_covers_the_fence_an_agent_does_not_finish_before_the_end() {
    use crate::engine::{fence_lead_ms, lease_margin_ms, FENCE_TAKES_MS};
    // An agent that says nothing fences at the end: its whole fence is in the margin.
    assert_eq!(lease_margin_ms(10_000, None), 100 + 50 + FENCE_TAKES_MS);
    assert_eq!(lease_margin_ms(10_000, Some(0)), 100 + 50 + FENCE_TAKES_MS);
    assert_eq!(lease_margin_ms(10_000, Some(300)), 150);
    // A lead above what the fence takes buys nothing more.
    assert_eq!(lease_margin_ms(10_000, Some(5000)), 150);
    // A short lease is fenced at most a quarter TTL early; the rest stays in the margin.
    assert_eq!(fence_lead_ms(300, 800), 200);
    assert_eq!(lease_margin_ms(800, Some(200)), 8 + 50 + 100);
    assert_eq!(fence_lead_ms(300, 10_000), 300);
}

#[test]
fn failover_promotes_at_once_when_the_platform_reports_the_primary_gone() {
    let mut f = cluster().instances(3).build();
    f.gone("main-0");
    let actions = f.tick(10);
    assert!(has(&actions, |a| *a
        == Action::SetRole {
            instance: "main-0".into(),
            role: RoleLabel::Fenced
        }));
    assert!(!has(&actions, |a| matches!(
        a,
        Action::FenceInstance { .. }
    )));
    f.ack_all();
    let actions = f.tick(10);
    assert_eq!(promotes(&actions).as_deref(), Some("main-1"));
    f.promoted("main-1", 2);
    let actions = f.tick(10);
    assert!(has(&actions, |a| *a
        == Action::SetRole {
            instance: "main-1".into(),
            role: RoleLabel::Primary
        }));
    // The sibling is pointed at the new primary with its label, not a pass later.
    assert!(
        has(&actions, |a| *a
            == Action::Follow {
                instance: "main-2".into(),
                primary: "main-1".into(),
                cascade: false
            }),
        "{actions:?}"
    );
    assert!(!has(
        &actions,
        |a| matches!(a, Action::Follow { instance, .. } if instance == "main-0")
    ));
    assert_eq!(f.status.current_primary.as_deref(), Some("main-1"));
    f.ack_all();
    f.tick(10);
    assert!(f.status.transition.is_none());
    let h = f.last_history();
    assert_eq!(
        (h.kind.as_str(), h.outcome.as_str()),
        ("Failover", "Succeeded")
    );
    assert_eq!(h.from.as_deref(), Some("main-0"));
    assert_eq!(h.to.as_deref(), Some("main-1"));
}

fn fail_primary_and_fence(f: &mut Fixture) -> Vec<Action> {
    f.gone("main-0");
    f.tick(10);
    f.ack_all();
    f.tick(10)
}

#[test]
fn failover_promotes_the_most_advanced_standby() {
    let mut f = cluster().instances(3).build();
    f.agent("main-2").received_lsn = Some(lsn("0/5000100"));
    assert_eq!(
        promotes(&fail_primary_and_fence(&mut f)).as_deref(),
        Some("main-2")
    );
}

#[test]
fn failover_prefers_higher_timeline_over_higher_lsn() {
    let mut f = cluster().instances(3).build();
    f.agent("main-1").timeline = Some(2);
    f.agent("main-2").received_lsn = Some(lsn("0/9000000"));
    assert_eq!(
        promotes(&fail_primary_and_fence(&mut f)).as_deref(),
        Some("main-1")
    );
}

#[test]
fn failover_prefers_priority_then_lowest_ordinal_when_positions_tie() {
    let mut f = cluster().instances(4).priority(3, 9).build();
    assert_eq!(
        promotes(&fail_primary_and_fence(&mut f)).as_deref(),
        Some("main-3")
    );
    let mut f = cluster().instances(4).build();
    assert_eq!(
        promotes(&fail_primary_and_fence(&mut f)).as_deref(),
        Some("main-1")
    );
}

#[test]
fn failover_never_promotes_a_learner_and_says_why() {
    let mut f = cluster().instances(3).priority(1, 0).build();
    f.unreachable("main-2");
    f.gone("main-0");
    let actions = f.tick(10);
    assert!(promotes(&actions).is_none());
    assert!(f.status.transition.is_none());
    let why = f.status.blocked_by.clone().unwrap();
    assert!(
        why.contains("main-1 has priority 0 (learner)") && why.contains("main-2 does not answer"),
        "{why}"
    );
    assert_eq!(f.status.phase, Some(Phase::Failed));
}

#[test]
fn failover_under_sync_required_promotes_only_a_synchronous_standby() {
    let mut f = cluster().instances(3).required().build();
    f.status.sync = Some(SyncStatus {
        primary: "main-0".into(),
        quorum: 1,
        standbys: vec!["main-1".into()],
    });
    f.agent("main-2").received_lsn = Some(lsn("0/6000000"));
    f.gone("main-0");
    f.tick(10);
    f.ack_all();
    let actions = f.tick(10);
    assert_eq!(promotes(&actions).as_deref(), Some("main-1"));
}

#[test]
fn failover_under_sync_required_waits_while_a_quorum_member_is_missing() {
    let mut f = cluster().instances(3).required().build();
    let sync = f.status.sync.clone().unwrap();
    assert_eq!((sync.quorum, sync.standbys.len()), (1, 2));
    f.unreachable("main-2");
    f.gone("main-0");
    let actions = f.tick(10);
    assert!(promotes(&actions).is_none());
    let why = f.status.blocked_by.clone().unwrap();
    assert!(
        why.contains("1 of the 2 synchronous standbys answer"),
        "{why}"
    );
}

#[test]
fn failover_records_rpo_accounting_in_history() {
    let mut f = cluster().instances(2).build();
    f.agent("main-1").received_lsn = Some(lsn("0/4000000"));
    f.agent("main-1").replayed_lsn = Some(lsn("0/4000000"));
    f.tick(10);
    f.gone("main-0");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.promoted("main-1", 2);
    f.tick(10);
    f.ack_all();
    f.tick(10);
    let h = f.last_history();
    assert_eq!(
        h.old_primary_lsn.map(|l| l.to_string()).as_deref(),
        Some("0/5000000")
    );
    assert_eq!(
        h.promoted_lsn.map(|l| l.to_string()).as_deref(),
        Some("0/4000000")
    );
    assert_eq!(h.bytes_possibly_lost, Some(0x100_0000));
    assert!(
        h.message.contains("16777216 bytes possibly lost"),
        "{}",
        h.message
    );
}

#[test]
fn failover_under_sync_required_records_no_acknowledged_loss() {
    let mut f = cluster().instances(3).required().build();
    f.gone("main-0");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.promoted("main-1", 2);
    f.tick(10);
    f.ack_all();
    f.tick(10);
    assert_eq!(f.last_history().bytes_possibly_lost, Some(0));
}

#[test]
fn crashed_postgres_restarted_by_its_agent_within_detection_timeout_is_no_failover() {
    let mut f = cluster().instances(3).build();
    f.agent("main-0").postgres_running = false;
    f.tick(100);
    f.tick(3000);
    assert!(f.status.transition.is_none());
    assert!(f.status.instances[0].unhealthy_since.is_some());
    f.agent("main-0").postgres_running = true;
    f.tick(500);
    assert!(f.status.instances[0].unhealthy_since.is_none());
    f.agent("main-0").postgres_running = false;
    f.tick(4000);
    assert!(
        f.status.transition.is_none(),
        "the window starts again after a recovery"
    );
}

#[test]
fn crash_loop_longer_than_detection_timeout_fails_over_after_stopping_postgres() {
    let mut f = cluster().instances(3).build();
    f.agent("main-0").postgres_running = false;
    f.tick(100);
    let actions = f.tick(5000);
    assert_eq!(f.step(), Some(("Failover".into(), "Fence".into())));
    let stop = Action::Stop {
        instance: "main-0".into(),
        mode: StopMode::Immediate,
        timeout_ms: 5000,
        smart_timeout_ms: None,
    };
    assert!(has(&actions, |a| *a == stop), "{actions:?}");
    f.ack_all();
    let actions = f.tick(10);
    assert_eq!(promotes(&actions).as_deref(), Some("main-1"));
    assert!(f
        .status
        .transition
        .as_ref()
        .unwrap()
        .data
        .failover
        .fenced_by
        .as_deref()
        .unwrap_or_default()
        .contains("stopped postgres"));
}

#[test]
fn paused_cluster_does_not_fail_over_and_says_why() {
    let mut f = cluster().instances(3).paused().build();
    f.gone("main-0");
    let actions = f.tick(10);
    assert!(f.status.transition.is_none());
    assert!(!has(&actions, |a| matches!(
        a,
        Action::SetRole { .. } | Action::Promote { .. }
    )));
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap()
        .contains("automation is paused (spec.paused)"));
    assert_eq!(f.status.phase, Some(Phase::Paused));
    assert_eq!(f.status.condition("Paused").unwrap().status, "True");
    f.spec.paused = false;
    f.obs.paused_annotation = true;
    f.tick(10);
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap()
        .contains("tandem.dev/paused=true"));
    f.obs.paused_annotation = false;
    f.tick(10);
    assert_eq!(f.step(), Some(("Failover".into(), "Fence".into())));
}

#[test]
fn disabled_failover_says_why() {
    let mut f = cluster().instances(3).failover_disabled().build();
    f.gone("main-0");
    f.tick(10);
    assert!(f.status.transition.is_none());
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap()
        .contains("failover is disabled"));
}

#[test]
fn failover_delay_is_waited_after_detection() {
    let mut f = cluster().instances(3).delay("2s").build();
    f.unreachable("main-0");
    f.tick(10);
    f.tick(6000);
    assert!(f.status.transition.is_none());
    f.tick(1100);
    assert_eq!(f.step(), Some(("Failover".into(), "Fence".into())));
}

#[test]
fn failed_promotion_moves_on_to_the_next_candidate() {
    let mut f = cluster().instances(3).build();
    let actions = fail_primary_and_fence(&mut f);
    assert_eq!(promotes(&actions).as_deref(), Some("main-1"));
    f.fail(Action::promote_and_label("main-1"), "promote timed out");
    let actions = f.tick(10);
    assert_eq!(promotes(&actions).as_deref(), Some("main-2"));
    assert!(has(
        &actions,
        |a| matches!(a, Action::Event { reason, .. } if reason == "PromotionFailed")
    ));
}

#[test]
fn a_primary_that_comes_back_fenced_is_rejoined_after_failover() {
    let mut f = cluster().instances(3).build();
    fail_primary_and_fence(&mut f);
    f.promoted("main-1", 2);
    f.tick(10);
    f.ack_all();
    f.tick(10);
    assert_eq!(f.status.current_primary.as_deref(), Some("main-1"));
    // main-0 comes back: its agent fenced postgres (no lease) and waits.
    *f.inst("main-0") = InstanceObs {
        platform: Default::default(),
        ..primary_obs("main-0", 3)
    };
    let a = f.agent("main-0");
    a.postgres_running = false;
    a.fenced = true;
    let actions = f.tick(10);
    assert_eq!(f.step(), Some(("Rejoin".into(), "Demote".into())));
    assert!(has(&actions, |a| *a
        == Action::Demote {
            instance: "main-0".into(),
            primary: "main-1".into()
        }));
    // main-2 was pointed at main-1 by the failover itself, with the label.
    assert_eq!(f.agent("main-2").upstream.as_deref(), Some("main-1"));
    assert!(!has(
        &actions,
        |a| matches!(a, Action::Follow { instance, .. } if instance == "main-2")
    ));
}

#[test]
fn every_failover_step_reissues_the_same_actions_when_decided_again() {
    let mut f = cluster().instances(3).build();
    f.gone("main-0");
    for _ in 0..8 {
        let before = f.peek();
        let again = crate::engine::decide(&f.spec, &before.status, &f.obs, f.now());
        assert_eq!(
            before
                .actions
                .iter()
                .filter(|a| !matches!(a, Action::Event { .. }))
                .collect::<Vec<_>>(),
            again
                .actions
                .iter()
                .filter(|a| !matches!(a, Action::Event { .. }))
                .collect::<Vec<_>>()
        );
        assert_eq!(before.status.transition, again.status.transition);
        f.tick(10);
        f.ack_all();
        if f.obs
            .results
            .iter()
            .any(|r| matches!(r.action, Action::Promote { .. }))
        {
            f.promoted("main-1", 2);
        }
    }
    assert!(f.status.transition.is_none());
    assert_eq!(f.status.current_primary.as_deref(), Some("main-1"));
}

#[test]
fn lost_results_after_an_operator_restart_do_not_stop_a_failover() {
    let mut f = cluster().instances(3).build();
    fail_primary_and_fence(&mut f);
    // The operator restarts: the Promote result is lost, but main-1 did promote.
    f.promoted("main-1", 2);
    let fresh = Observations {
        results: Vec::<ActionResult>::new(),
        ..f.obs.clone()
    };
    f.obs = fresh;
    f.tick(10);
    assert_eq!(f.status.current_primary.as_deref(), Some("main-1"));
    f.inst("main-1").label = Some(RoleLabel::Primary);
    f.tick(10);
    assert!(f.status.transition.is_none());
}

#[test]
fn failover_picks_another_candidate_when_the_chosen_one_never_got_the_promotion() {
    let mut f = cluster().instances(3).build();
    f.gone("main-0");
    f.tick(10);
    f.ack_all();
    f.unreachable("main-1");
    f.agent("main-2").received_lsn = Some(lsn("0/4000000"));
    f.agent("main-2").replayed_lsn = Some(lsn("0/4000000"));
    // main-1 was the candidate when the failover started, but is gone by the time it is fenced.
    let a = f.tick(10);
    assert_eq!(promotes(&a).as_deref(), Some("main-2"));
}

#[test]
fn failover_waits_a_lease_before_replacing_a_candidate_that_may_have_promoted() {
    let mut f = cluster().instances(3).build();
    let a = fail_primary_and_fence(&mut f);
    assert_eq!(promotes(&a).as_deref(), Some("main-1"));
    f.unreachable("main-1");
    let a = f.tick(1000);
    assert!(promotes(&a).is_none());
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap()
        .contains("waiting for main-1 to confirm its promotion"));
    let a = f.tick(14_500);
    assert_eq!(
        promotes(&a).as_deref(),
        Some("main-2"),
        "after lease TTL + detection timeout"
    );
}

#[test]
fn phase_is_degraded_while_detecting_and_failed_when_nothing_can_be_done() {
    let mut f = cluster().instances(2).priority(1, 0).build();
    f.unreachable("main-0");
    f.tick(10);
    assert_eq!(f.status.phase, Some(Phase::Degraded));
    assert_eq!(
        f.status.condition("PrimaryAvailable").unwrap().status,
        "False"
    );
    f.tick(6000);
    assert_eq!(f.status.phase, Some(Phase::Failed));
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap()
        .contains("priority 0 (learner)"));
}

#[test]
fn a_cluster_is_healthy_only_once_every_role_label_is_in_place() {
    let mut f = cluster().instances(3).build();
    f.inst("main-2").label = None;
    let actions = f.tick(1000);
    assert!(
        actions.contains(&Action::SetRole {
            instance: "main-2".into(),
            role: RoleLabel::Standby
        }),
        "{actions:?}"
    );
    assert_eq!(
        f.status.phase,
        Some(Phase::Degraded),
        "the -ro Service lacks main-2"
    );
    f.ack_all();
    f.tick(1000);
    assert_eq!(f.status.phase, Some(Phase::Healthy));
}

fn answer_stop_vouching(f: &mut Fixture, ago_ms: u64) {
    f.ack_all();
    f.obs
        .results
        .retain(|r| !matches!(r.action, Action::StopVouching { .. }));
    for a in f.last.clone() {
        if matches!(a, Action::StopVouching { .. }) {
            f.obs.results.push(ActionResult::answered(
                a,
                crate::engine::Answer {
                    detail: None,
                    facts: crate::engine::ActionFacts {
                        last_vouched_ago_ms: Some(ago_ms),
                        ..Default::default()
                    },
                },
            ));
        }
    }
}

#[test]
fn a_vanished_primary_fails_over_at_once_but_is_promoted_over_only_after_its_lease() {
    let mut f = cluster().instances(3).build();
    f.tick(0); // renewal sent at t
    f.vanished("main-0");
    let actions = f.tick(100);
    assert_eq!(f.step(), Some(("Failover".into(), "Fence".into())));
    assert!(
        promotes(&actions).is_none(),
        "a deleted pod proves nothing: {actions:#?}"
    );
    let fences = |a: &[Action]| {
        a.iter()
            .filter(|x| matches!(x, Action::FenceInstance { .. }))
            .count()
    };
    assert_eq!(fences(&actions), 1);
    answer_stop_vouching(&mut f, 1100); // last vouched at t
    let actions = f.tick(1000);
    assert_eq!(
        fences(&actions),
        0,
        "the pod is deleted once, not on every pass"
    );
    assert!(promotes(&actions).is_none());
    let actions = f.tick(5000);
    assert_eq!(fences(&actions), 0);
    assert!(promotes(&actions).is_none());
    // t + 10.4 s: TTL and margin after the last renewal.
    let actions = f.tick(4400);
    assert_eq!(promotes(&actions).as_deref(), Some("main-1"));
}

#[test]
fn a_primary_only_the_operator_cannot_reach_is_kept_while_its_peers_vouch_for_it() {
    let mut f = cluster().instances(3).build();
    f.tick(0);
    f.unreachable("main-0");
    for _ in 0..20 {
        for s in ["main-1", "main-2"] {
            f.agent(s).vouched = Some(("main-0".into(), 1200));
        }
        let actions = f.tick(1000);
        assert!(f.status.transition.is_none(), "{:?}", f.status.transition);
        assert!(!has(&actions, |a| matches!(a, Action::StopVouching { .. })));
    }
    let why = f.status.blocked_by.clone().unwrap_or_default();
    assert!(
        why.contains("vouched for it") && why.contains("no failover"),
        "{why}"
    );
    // One peer no longer hears from it: it cannot extend its lease: fail over.
    f.agent("main-2").vouched = Some(("main-0".into(), 7000));
    f.tick(1000);
    f.tick(5000);
    assert_eq!(f.step(), Some(("Failover".into(), "Fence".into())));
}

#[test]
fn the_recorded_peers_are_those_of_every_renewal_sent_to_the_holder() {
    let mut f = cluster().instances(3).build();
    f.tick(1000);
    let peers = |f: &Fixture| f.status.lease.as_ref().map(|l| l.peers.clone()).unwrap();
    assert_eq!(peers(&f), ["main-1", "main-2"]);
    // main-2 becomes a learner: it is no peer any more…
    f.spec
        .instance_overrides
        .push(crate::api::InstanceOverride {
            ordinal: 2,
            priority: Some(0),
        });
    let actions = f.tick(1000);
    assert!(has(
        &actions,
        |a| matches!(a, Action::RenewLease { peers, .. } if peers == &["main-1".to_string()])
    ));
    assert_eq!(peers(&f), ["main-1"]);
    // …and back: main-0 may still hold the list without it, so it is not counted.
    f.spec.instance_overrides.clear();
    f.tick(1000);
    assert_eq!(peers(&f), ["main-1"]);
}

#[test]
fn renewals_echo_the_challenge_and_are_counted_from_when_they_are_sent() {
    let mut f = cluster().instances(3).build();
    f.agent("main-0").lease = Some(crate::engine::LeaseReport {
        held: true,
        remaining_ms: 9000,
        challenge: Some(4242),
        fence_lead_ms: None,
    });
    let actions = f.tick(1000);
    assert!(
        has(&actions, |a| matches!(
            a,
            Action::RenewLease {
                challenge: Some(4242),
                ..
            }
        )),
        "{actions:#?}"
    );
    let sent = f.status.lease.clone().unwrap();
    assert_eq!(sent.holder, "main-0");
    assert_eq!(sent.peers, vec!["main-1".to_string(), "main-2".to_string()]);
    // No result came back: the renewal still counts as sent (it may have arrived).
    assert_eq!(crate::engine::ctx::parse_ms(&sent.renewed_at), Some(f.now));
}

#[test]
fn standbys_carry_the_synchronous_settings_they_would_need_as_primary() {
    let mut f = cluster().instances(3).required().build();
    assert_eq!(
        f.agent("main-1").synchronous_standby_names.as_deref(),
        Some("ANY 1 (\"main-0\", \"main-2\")")
    );
    assert_eq!(
        f.agent("main-2").synchronous_standby_names.as_deref(),
        Some("ANY 1 (\"main-0\", \"main-1\")")
    );
    // Staged: a failover promotes at once, with no configuration in between.
    let actions = fail_primary_and_fence(&mut f);
    assert_eq!(promotes(&actions).as_deref(), Some("main-1"));
    assert!(!has(&actions, |a| matches!(a, Action::Config { .. })));
}

#[test]
fn under_sync_required_a_candidate_is_promoted_only_once_its_synchronous_settings_apply() {
    let mut f = cluster().instances(3).required().build();
    f.agent("main-1").synchronous_standby_names = Some(String::new());
    f.agent("main-2").synchronous_standby_names = Some(String::new());
    let actions = fail_primary_and_fence(&mut f);
    assert!(promotes(&actions).is_none(), "{actions:?}");
    assert!(has(&actions, |a| matches!(
        a,
        Action::Config { instance, synchronous_standby_names, .. }
            if instance == "main-1" && synchronous_standby_names == "ANY 1 (\"main-0\", \"main-2\")"
    )));
    assert!(
        f.status
            .blocked_by
            .as_deref()
            .is_some_and(|b| b.contains("before promoting")),
        "{:?}",
        f.status.blocked_by
    );
    f.ack_all();
    let actions = f.tick(10);
    assert_eq!(promotes(&actions).as_deref(), Some("main-1"));
}

#[test]
fn under_async_replication_the_settings_go_with_the_promotion() {
    let mut f = cluster().instances(3).build();
    f.agent("main-1").synchronous_commit = Some("on".into());
    let actions = fail_primary_and_fence(&mut f);
    assert_eq!(promotes(&actions).as_deref(), Some("main-1"));
    assert!(has(&actions, |a| matches!(
        a,
        Action::Config { instance, .. } if instance == "main-1"
    )));
}

#[test]
fn a_failover_whose_promotion_brought_the_label_finishes_and_points_the_siblings_at_once() {
    let mut f = cluster().instances(3).build();
    let actions = fail_primary_and_fence(&mut f);
    assert!(has(&actions, |x| *x == Action::promote_and_label("main-1")));
    f.promoted("main-1", 2);
    // The loop labelled main-1 when the promotion answered, then observed.
    f.ok(Action::promote_and_label("main-1"));
    f.ok(Action::SetRole {
        instance: "main-1".into(),
        role: RoleLabel::Primary,
    });
    f.inst("main-1").label = Some(RoleLabel::Primary);
    let a = f.tick(10);
    assert!(f.status.transition.is_none(), "{:?}", f.step());
    assert_eq!(f.status.current_primary.as_deref(), Some("main-1"));
    assert_eq!(f.last_history().outcome, "Succeeded");
    assert!(!has(&a, |x| matches!(x, Action::SetRole { .. })), "{a:?}");
    let follows = a
        .iter()
        .filter(|x| {
            **x == Action::Follow {
                instance: "main-2".into(),
                primary: "main-1".into(),
                cascade: false,
            }
        })
        .count();
    assert_eq!(
        follows, 1,
        "the sibling follows in the same decision: {a:?}"
    );
}
