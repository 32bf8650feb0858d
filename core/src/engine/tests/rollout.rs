//! Rolling update of outdated instances: standbys first (highest ordinal
//! first), the primary last (switched away, or recreated under
//! `primaryUpdateMethod: restart`), only while healthy and not paused.

use super::fixtures::*;
use crate::api::{HistoryKind, HistoryOutcome, TransitionKind};
use crate::engine::{reasons, Action};

fn recreates(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Recreate { instance } => Some(instance.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn outdated_standbys_go_first_highest_ordinal_first() {
    let mut f = cluster().instances(3).build();
    for i in 0..3 {
        f.inst(&name(i)).outdated = true;
    }
    let d = f.peek();
    assert_eq!(recreates(&d.actions), ["main-2"]);
    assert!(has(
        &d.actions,
        |a| matches!(a, Action::Event { reason, .. } if reason == reasons::ROLLING_UPDATE)
    ));
    f.inst("main-2").outdated = false;
    assert_eq!(recreates(&f.peek().actions), ["main-1"]);
}

#[test]
fn the_primary_is_switched_away_last() {
    let mut f = cluster().instances(3).build();
    f.inst("main-0").outdated = true;
    let d = f.tick(100);
    assert!(recreates(&d).is_empty(), "{d:#?}");
    let t = f.status.transition.as_ref().expect("a switchover started");
    assert_eq!(t.kind, TransitionKind::Switchover);
    assert!(
        !has(&d, |a| matches!(a, Action::RequestDone { .. })),
        "nobody asked: nothing to clear: {d:#?}"
    );
}

#[test]
fn primary_update_method_restart_recreates_the_primary() {
    let mut f = cluster().instances(3).primary_restart_in_place().build();
    f.inst("main-0").outdated = true;
    let d = f.peek();
    assert_eq!(recreates(&d.actions), ["main-0"]);
    assert!(d.status.transition.is_none());
}

#[test]
fn nothing_moves_unless_healthy_and_unpaused() {
    let mut f = cluster().instances(3).build();
    f.inst("main-2").outdated = true;
    f.inst("main-1").deleting = true;
    assert!(
        recreates(&f.peek().actions).is_empty(),
        "an instance is being deleted"
    );
    f.inst("main-1").deleting = false;
    f.status.ready_instances = Some("2/3".into());
    assert!(
        recreates(&f.peek().actions).is_empty(),
        "not every instance is ready"
    );

    let mut p = cluster().instances(3).paused().build();
    p.inst("main-2").outdated = true;
    assert!(recreates(&p.peek().actions).is_empty(), "paused");

    let current = cluster().instances(3).build();
    assert!(
        recreates(&current.peek().actions).is_empty(),
        "nothing outdated"
    );
}

#[test]
fn a_refused_switchover_is_not_retried_at_once() {
    let mut f = cluster().instances(3).build();
    f.inst("main-0").outdated = true;
    // No standby can take over: the switchover is refused and recorded.
    for i in 1..3 {
        f.unreachable(&name(i));
    }
    f.tick(100);
    let refused = f
        .status
        .history
        .iter()
        .any(|e| e.kind == HistoryKind::Switchover && e.outcome == HistoryOutcome::Refused);
    assert!(refused, "{:#?}", f.status.history);
    let entries = f.status.history.len();
    // Healthy again a minute later: still no new attempt.
    for i in 1..3 {
        let o = standby_obs(&name(i), "main-0");
        *f.inst(&name(i)) = crate::engine::InstanceObs {
            outdated: false,
            ..o
        };
    }
    f.settle();
    f.tick(60_000);
    assert_eq!(f.status.history.len(), entries, "{:#?}", f.status.history);
    assert!(f.status.transition.is_none());
}
