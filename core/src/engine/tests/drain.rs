//! Node drains: a primary on a cordoned node is switched over to a standby on
//! a schedulable node (not failed over), never while paused, and the reason
//! is said when no standby can take over.

use super::fixtures::*;
use crate::api::TransitionKind;
use crate::engine::{reasons, Action};

#[test]
fn primary_on_a_cordoned_node_is_switched_over_to_a_standby_elsewhere() {
    let mut f = cluster().instances(3).build();
    f.inst("main-0").unschedulable = true;
    // main-1 shares the cordoned node: main-2 is the one to take over.
    f.inst("main-1").unschedulable = true;
    let a = f.tick(100);
    let t = f.status.transition.as_ref().expect("a switchover started");
    assert_eq!(t.kind, TransitionKind::Switchover);
    assert_eq!(t.target.as_deref(), Some("main-2"));
    assert!(t.reason.contains("node drain"), "{}", t.reason);
    assert!(has(
        &a,
        |x| matches!(x, Action::Event { reason, .. } if reason == reasons::NODE_DRAIN)
    ));
    assert!(promotes(&a).is_none());
}

#[test]
fn a_cordoned_standby_or_a_paused_cluster_starts_nothing() {
    let mut f = cluster().instances(3).build();
    f.inst("main-1").unschedulable = true;
    f.tick(100);
    assert!(f.status.transition.is_none());

    let mut f = cluster().instances(3).paused().build();
    f.inst("main-0").unschedulable = true;
    f.tick(100);
    assert!(f.status.transition.is_none());
    let b = f.status.blocked_by.clone().unwrap_or_default();
    assert!(b.contains("cordoned") && b.contains("paused"), "{b}");
}

#[test]
fn with_every_standby_cordoned_too_the_drain_waits_and_says_why() {
    let mut f = cluster().instances(2).build();
    f.inst("main-0").unschedulable = true;
    f.inst("main-1").unschedulable = true;
    f.tick(100);
    assert!(f.status.transition.is_none());
    let b = f.status.blocked_by.clone().unwrap_or_default();
    assert!(
        b.contains("no standby on a schedulable node") && b.contains("there is none"),
        "{b}"
    );
}
