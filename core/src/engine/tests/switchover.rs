//! Switchover: every step, `any`, escalation, rollback, resumption.

use super::fixtures::*;
use crate::api::Phase;
use crate::engine::{Action, Request, RoleLabel, StopMode, SwitchoverTarget};

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
    f.switchover_checkpointed("main-1");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.fail(
        Action::Stop {
            instance: "main-0".into(),
            mode: StopMode::Fast,
            timeout_ms: 60_000,
            smart_timeout_ms: None,
        },
        "timed out",
    );
    let a = f.tick(10);
    assert!(has(&a, |x| *x
        == Action::Stop {
            instance: "main-0".into(),
            mode: StopMode::Immediate,
            timeout_ms: 60_000,
            smart_timeout_ms: None,
        }));
}

#[test]
fn switchover_rolls_back_when_the_target_misses_the_shutdown_checkpoint() {
    let mut f = cluster().instances(3).build();
    f.switchover_checkpointed("main-1");
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
    f.switchover_checkpointed("main-1");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.ack_all();
    f.agent("main-0").postgres_running = false;
    f.agent("main-1").received_lsn = Some(lsn("0/6000000"));
    f.tick(10);
    f.fail(Action::promote_and_label("main-1"), "not in recovery?");
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
        if seen.last() != Some(&step) {
            seen.push(step);
        }
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
            "Checkpoint",
            "StopPrimary",
            "WaitShutdownCheckpoint",
            "Promote",
            "Label",
            "Follow"
        ]
    );
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
    f.switchover_checkpointed("main-1");
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
            has(
                &a,
                |x| matches!(x, Action::RenewLease { instance, ttl_ms: 10_000, .. } if instance == "main-1")
            ),
            "{a:?}"
        );
        assert!(!has(
            &a,
            |x| matches!(x, Action::RenewLease { instance, .. } if instance == "main-0")
        ));
    }
}

/// Walk a switchover to main-1 through every step; returns the fixture at the end.
fn run_switchover(target: &str) -> Fixture {
    let mut f = cluster().instances(3).build();
    f.switchover_checkpointed(target);
    let a = f.tick(10);
    assert_eq!(f.status.phase, Some(Phase::SwitchingOver));
    assert!(has(&a, |a| *a
        == Action::Checkpoint {
            instance: "main-0".into(),
        }));
    assert!(promotes(&a).is_none());
    f.ack_all();
    let a = f.tick(10);
    assert_eq!(f.step(), Some(("Switchover".into(), "StopPrimary".into())));
    let stop = Action::Stop {
        instance: "main-0".into(),
        mode: StopMode::Fast,
        timeout_ms: 60_000,
        smart_timeout_ms: None,
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
    let sibling = ["main-1", "main-2"]
        .into_iter()
        .find(|n| *n != t)
        .unwrap_or_default();
    // The sibling streams from the target while it is promoted.
    assert!(
        has(&a, |x| *x
            == Action::Follow {
                instance: sibling.into(),
                primary: t.clone(),
                cascade: true
            }),
        "{a:?}"
    );
    assert!(
        !has(
            &a,
            |x| matches!(x, Action::Follow { instance, .. } if instance == "main-0")
        ),
        "the stopped old primary is not pointed anywhere before the promotion: {a:?}"
    );
    f.promoted(&t, 2);
    let a = f.tick(10);
    assert_eq!(f.status.current_primary.as_deref(), Some(t.as_str()));
    assert!(has(&a, |x| *x
        == Action::SetRole {
            instance: t.clone(),
            role: RoleLabel::Primary
        }));
    // A sibling the cascade did not reach (unanswered here) follows in the
    // same pass as the label.
    assert!(
        has(&a, |x| *x
            == Action::Follow {
                instance: sibling.into(),
                primary: t.clone(),
                cascade: false
            }),
        "{a:?}"
    );
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

/// Drive a switchover to main-1 up to the old primary's stop, answered as
/// escalated with its WAL ending at `end`.
fn stop_escalated(end: &str) -> Fixture {
    let mut f = cluster().instances(3).build();
    f.switchover_checkpointed("main-1");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    let stop = Action::Stop {
        instance: "main-0".into(),
        mode: StopMode::Fast,
        timeout_ms: 60_000,
        smart_timeout_ms: None,
    };
    assert!(has(&f.last, |x| *x == stop));
    f.agent("main-0").postgres_running = false;
    // Its latest checkpoint is an old one, below what main-1 has.
    f.agent("main-0").checkpoint_lsn = Some(lsn("0/4000000"));
    f.agent("main-0").clean_shutdown = Some(false);
    f.obs.results.push(crate::engine::ActionResult::answered(
        stop,
        crate::engine::Answer {
            detail: Some("stopped with immediate".into()),
            facts: crate::engine::ActionFacts {
                escalated: true,
                end_of_wal: Some(lsn(end)),
                ..Default::default()
            },
        },
    ));
    f.tick(10);
    assert_eq!(
        f.step(),
        Some(("Switchover".into(), "WaitShutdownCheckpoint".into()))
    );
    f
}

#[test]
fn an_escalated_stop_is_not_trusted_the_target_must_have_all_the_wal() {
    let mut f = stop_escalated("0/5000100");
    // main-1 is past the old checkpoint but short of the end of the WAL: no promotion.
    f.agent("main-1").received_lsn = Some(lsn("0/5000050"));
    let a = f.tick(10);
    assert!(promotes(&a).is_none(), "{a:#?}");
    let why = f.status.blocked_by.clone().unwrap_or_default();
    assert!(why.contains("0/5000100"), "{why}");
    // It has it all: promoted, and the history says how it was verified.
    f.agent("main-1").received_lsn = Some(lsn("0/5000100"));
    let a = f.tick(10);
    assert_eq!(promotes(&a).as_deref(), Some("main-1"));
    f.promoted("main-1", 2);
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.ack_all();
    f.tick(70_000);
    let h = f
        .status
        .history
        .iter()
        .rev()
        .find(|h| h.kind.as_str() == "Switchover")
        .expect("a switchover entry");
    assert_eq!(h.outcome.as_str(), "Succeeded");
    assert!(
        h.message.contains("did not shut down cleanly"),
        "{}",
        h.message
    );
}

#[test]
fn an_escalated_stop_whose_wal_the_target_lacks_rolls_back_and_loses_nothing() {
    let mut f = stop_escalated("0/5000100");
    f.agent("main-1").received_lsn = Some(lsn("0/5000050"));
    f.tick(10);
    let a = f.tick(61_000);
    assert!(promotes(&a).is_none());
    assert_eq!(f.step(), Some(("Switchover".into(), "RollBack".into())));
    f.agent("main-0").postgres_running = true;
    f.tick(10);
    f.ack_all();
    f.tick(10);
    let h = f.last_history();
    assert_eq!(h.outcome, "RolledBack");
    assert!(h.message.contains("lacks WAL"), "{}", h.message);
    assert_eq!(f.status.current_primary.as_deref(), Some("main-0"));
}

#[test]
fn an_unclean_stop_without_the_end_of_its_wal_rolls_back() {
    let mut f = cluster().instances(3).build();
    f.switchover_checkpointed("main-1");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.agent("main-0").postgres_running = false;
    f.agent("main-0").clean_shutdown = Some(false);
    f.ok(Action::Stop {
        instance: "main-0".into(),
        mode: StopMode::Fast,
        timeout_ms: 60_000,
        smart_timeout_ms: None,
    });
    let a = f.tick(10);
    assert!(promotes(&a).is_none());
    assert_eq!(f.step(), Some(("Switchover".into(), "RollBack".into())));
}

#[test]
fn switchover_takes_the_target_out_of_ro_then_drops_the_label_then_checkpoints_before_the_stop() {
    let mut f = cluster().instances(3).build();
    f.switchover("main-1");
    let a = f.tick(10);
    let withdraw = Action::SetRole {
        instance: "main-1".into(),
        role: RoleLabel::Unknown,
    };
    assert!(has(&a, |x| *x == withdraw), "{a:?}");
    assert!(
        !has(
            &a,
            |x| matches!(x, Action::SetRole { instance, .. } if instance == "main-0")
        ),
        "{a:?}"
    );
    f.ack_all();
    let a = f.tick(10);
    let drop = Action::SetRole {
        instance: "main-0".into(),
        role: RoleLabel::Fenced,
    };
    let checkpoint = Action::Checkpoint {
        instance: "main-0".into(),
    };
    assert!(has(&a, |x| *x == drop), "{a:?}");
    assert!(
        !has(&a, |x| matches!(
            x,
            Action::Checkpoint { .. } | Action::Stop { .. }
        )),
        "{a:?}"
    );
    f.ack_all();
    // Established connections still write while it checkpoints.
    let a = f.tick(10);
    assert!(has(&a, |x| *x == checkpoint), "{a:?}");
    assert!(!has(&a, |x| matches!(x, Action::Stop { .. })), "{a:?}");
    let a = f.tick(500);
    assert_eq!(f.step(), Some(("Switchover".into(), "Checkpoint".into())));
    assert!(!has(&a, |x| matches!(x, Action::Stop { .. })));
    // A failed checkpoint only costs a longer shutdown checkpoint.
    f.fail(checkpoint, "could not write");
    let a = f.tick(10);
    assert!(has(
        &a,
        |x| matches!(x, Action::Stop { instance, .. } if instance == "main-0")
    ));
}

#[test]
fn a_checkpoint_slower_than_the_shutdown_timeout_does_not_hold_the_switchover_up() {
    let mut f = cluster().instances(3).build();
    f.switchover_checkpointed("main-1");
    let a = f.tick(61_000);
    assert!(has(
        &a,
        |x| matches!(x, Action::Stop { instance, .. } if instance == "main-0")
    ));
}

#[test]
fn the_stop_waits_until_the_label_drop_had_time_to_reach_the_service_routing() {
    let mut f = cluster().instances(3).build();
    f.obs.service_settle_ms = 1_000;
    f.switchover_checkpointed("main-1");
    f.ok(Action::Checkpoint {
        instance: "main-0".into(),
    });
    let a = f.tick(300);
    assert!(!has(&a, |x| matches!(x, Action::Stop { .. })), "{a:?}");
    assert_eq!(f.step(), Some(("Switchover".into(), "Checkpoint".into())));
    let why = f.status.blocked_by.clone().unwrap_or_default();
    assert!(
        why.contains("main-0") && why.contains("Service routing"),
        "{why}"
    );
    let a = f.tick(400);
    assert!(!has(&a, |x| matches!(x, Action::Stop { .. })), "{a:?}");
    let a = f.tick(400);
    assert!(has(
        &a,
        |x| matches!(x, Action::Stop { instance, .. } if instance == "main-0")
    ));
}

#[test]
fn a_switchover_resumed_at_checkpoint_from_the_earlier_order_drops_the_label_before_the_stop() {
    // The earlier order ran Checkpoint first: a transition saved there has its label on.
    let mut f = cluster().instances(3).build();
    f.switchover("main-1");
    f.tick(10);
    if let Some(t) = f.status.transition.as_mut() {
        t.step = crate::api::TransitionStep::Checkpoint;
        t.data.switchover.old_label_dropped = false;
    }
    let a = f.tick(10);
    assert_eq!(
        f.step(),
        Some(("Switchover".into(), "DropPrimaryLabel".into()))
    );
    assert!(!has(&a, |x| matches!(x, Action::Stop { .. })), "{a:?}");
    f.ack_all();
    let a = f.tick(10);
    assert!(has(&a, |x| *x
        == Action::SetRole {
            instance: "main-0".into(),
            role: RoleLabel::Fenced
        }));
    assert!(!has(&a, |x| matches!(x, Action::Stop { .. })), "{a:?}");
}

#[test]
fn the_target_leaves_ro_a_settle_period_before_the_old_primary_leaves_rw() {
    // kube-proxy applies endpoint changes once per its minimum sync period:
    // the target's promotion label then changes `-rw` alone.
    let mut f = cluster().instances(3).build();
    f.obs.service_settle_ms = 1_000;
    f.switchover("main-1");
    let a = f.tick(10);
    let withdraw = Action::SetRole {
        instance: "main-1".into(),
        role: RoleLabel::Unknown,
    };
    let drop = Action::SetRole {
        instance: "main-0".into(),
        role: RoleLabel::Fenced,
    };
    assert!(has(&a, |x| *x == withdraw), "{a:?}");
    f.ack_all();
    let a = f.tick(300);
    assert!(!has(&a, |x| *x == drop), "{a:?}");
    assert!(!has(&a, |x| *x == withdraw), "{a:?}");
    let why = f.status.blocked_by.clone().unwrap_or_default();
    assert!(why.contains("main-1") && why.contains("read-only"), "{why}");
    // Resumed by a restarted operator: the withdrawal is not asked again.
    f.obs.results.clear();
    let a = f.tick(400);
    assert!(!has(&a, |x| *x == drop || *x == withdraw), "{a:?}");
    let a = f.tick(400);
    assert!(has(&a, |x| *x == drop), "{a:?}");
    assert_eq!(
        f.status
            .transition
            .as_ref()
            .map(|t| t.data.switchover.target_withdrawn),
        Some(true)
    );
}

#[test]
fn a_target_whose_label_cannot_change_still_switches_over() {
    let mut f = cluster().instances(3).build();
    f.switchover("main-1");
    f.tick(10);
    f.fail(
        Action::SetRole {
            instance: "main-1".into(),
            role: RoleLabel::Unknown,
        },
        "cannot set the role label: the server is busy",
    );
    let a = f.tick(10);
    assert!(has(&a, |x| *x
        == Action::SetRole {
            instance: "main-0".into(),
            role: RoleLabel::Fenced
        }));
}

#[test]
fn a_target_outside_ro_is_not_relabelled_before_its_promotion() {
    let mut f = cluster().instances(3).build();
    f.inst("main-1").label = Some(RoleLabel::Unknown);
    f.switchover("main-1");
    let a = f.tick(10);
    assert!(
        !has(
            &a,
            |x| matches!(x, Action::SetRole { instance, .. } if instance == "main-1")
        ),
        "{a:?}"
    );
    assert!(has(&a, |x| *x
        == Action::SetRole {
            instance: "main-0".into(),
            role: RoleLabel::Fenced
        }));
}

/// Up to the pass that promotes main-1, with main-2 its sibling.
fn at_promotion() -> Fixture {
    let mut f = cluster().instances(3).build();
    f.switchover_checkpointed("main-1");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    f.agent("main-0").postgres_running = false;
    f.ok(Action::Stop {
        instance: "main-0".into(),
        mode: StopMode::Fast,
        timeout_ms: 60_000,
        smart_timeout_ms: None,
    });
    f.agent("main-0").checkpoint_lsn = Some(lsn("0/5000028"));
    f.tick(10);
    f.agent("main-1").received_lsn = Some(lsn("0/50000A0"));
    f
}

#[test]
fn a_sibling_that_cascaded_from_the_target_needs_no_follow_after_the_promotion() {
    let mut f = at_promotion();
    let a = f.tick(10);
    assert_eq!(promotes(&a).as_deref(), Some("main-1"));
    let cascade = Action::Follow {
        instance: "main-2".into(),
        primary: "main-1".into(),
        cascade: true,
    };
    assert!(has(&a, |x| *x == cascade), "{a:?}");
    // It streams from main-1 and follows its promotion on its own.
    f.ok(cascade);
    f.agent("main-2").upstream = Some("main-1".into());
    f.promoted("main-1", 2);
    let a = f.tick(10);
    assert_eq!(f.status.current_primary.as_deref(), Some("main-1"));
    assert!(
        !has(
            &a,
            |x| matches!(x, Action::Follow { instance, .. } if instance == "main-2")
        ),
        "{a:?}"
    );
}

#[test]
fn a_failed_cascade_is_not_resent_in_the_pass_that_reports_it_and_the_label_pass_follows() {
    let mut f = at_promotion();
    let a = f.tick(10);
    let cascade = Action::Follow {
        instance: "main-2".into(),
        primary: "main-1".into(),
        cascade: true,
    };
    assert!(has(&a, |x| *x == cascade), "{a:?}");
    f.fail(cascade.clone(), "main-1 does not answer");
    let a = f.tick(10);
    assert!(!has(&a, |x| *x == cascade), "{a:?}");
    f.promoted("main-1", 2);
    let a = f.tick(10);
    assert!(
        has(&a, |x| *x
            == Action::Follow {
                instance: "main-2".into(),
                primary: "main-1".into(),
                cascade: false
            }),
        "{a:?}"
    );
}

/// Drive a switchover to main-1 until its promotion is asked for.
fn up_to_promotion() -> Fixture {
    let mut f = cluster().instances(3).build();
    f.switchover_checkpointed("main-1");
    f.tick(10);
    f.ack_all();
    f.tick(10);
    let stop = Action::Stop {
        instance: "main-0".into(),
        mode: StopMode::Fast,
        timeout_ms: 60_000,
        smart_timeout_ms: None,
    };
    f.agent("main-0").postgres_running = false;
    f.agent("main-0").checkpoint_lsn = Some(lsn("0/5000028"));
    f.ok(stop);
    f.tick(10);
    f.agent("main-1").received_lsn = Some(lsn("0/50000A0"));
    f.tick(10);
    f
}

#[test]
fn the_promotion_asks_for_the_label_with_its_answer_and_the_label_step_takes_it_as_done() {
    let mut f = up_to_promotion();
    assert!(has(&f.last, |x| *x
        == Action::Promote {
            instance: "main-1".into(),
            label: true
        }));
    // The loop labelled main-1 when the promotion answered, before this decision.
    f.promoted("main-1", 2);
    f.ok(Action::promote_and_label("main-1"));
    f.ok(Action::SetRole {
        instance: "main-1".into(),
        role: RoleLabel::Primary,
    });
    f.inst("main-1").label = Some(RoleLabel::Primary);
    let a = f.tick(10);
    assert_eq!(f.status.current_primary.as_deref(), Some("main-1"));
    assert_eq!(f.step(), Some(("Switchover".into(), "Follow".into())));
    assert!(
        !has(&a, |x| matches!(x, Action::SetRole { .. })),
        "labelled twice: {a:?}"
    );
    // The old primary and the sibling are pointed at main-1 in the same decision.
    assert!(has(&a, |x| *x
        == Action::Demote {
            instance: "main-0".into(),
            primary: "main-1".into()
        }));
    assert!(has(&a, |x| *x
        == Action::Follow {
            instance: "main-2".into(),
            primary: "main-1".into(),
            cascade: false
        }));
}

#[test]
fn a_label_the_promotion_could_not_set_is_set_by_the_label_step() {
    let mut f = up_to_promotion();
    f.promoted("main-1", 2);
    f.ok(Action::promote_and_label("main-1"));
    f.fail(
        Action::SetRole {
            instance: "main-1".into(),
            role: RoleLabel::Primary,
        },
        "the API server did not answer",
    );
    let a = f.tick(10);
    assert_eq!(f.step(), Some(("Switchover".into(), "Label".into())));
    assert!(has(&a, |x| *x
        == Action::SetRole {
            instance: "main-1".into(),
            role: RoleLabel::Primary
        }));
}
