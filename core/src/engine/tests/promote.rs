//! Manual promotion: allowed only when the primary is down or unreachable,
//! also while paused; the old primary is fenced first; learners, candidates
//! behind others and, under sync+required, non-synchronous ones are refused
//! unless forced; the RPO is recorded.

use super::fixtures::*;
use crate::api::{HistoryKind, HistoryOutcome};
use crate::engine::{Action, Request};

fn promote(name: &str, force: bool) -> Request {
    Request::Promote {
        instance: name.into(),
        force,
    }
}

fn refused_with(f: &mut Fixture, r: Request, words: &str) {
    let before = f.status.clone();
    f.request(r.clone());
    let a = f.tick(10);
    let h = f.last_history();
    assert_eq!(
        (h.kind, h.outcome),
        (HistoryKind::Request, HistoryOutcome::Refused),
        "{h:?}"
    );
    assert!(h.message.contains(words), "{}", h.message);
    assert!(has(&a, |x| *x == Action::RequestDone { request: r.clone() }));
    assert_eq!(f.status.transition, before.transition);
    assert_eq!(f.status.current_primary, before.current_primary);
}

#[test]
fn a_healthy_primary_is_never_promoted_over() {
    let mut f = cluster().instances(3).build();
    refused_with(&mut f, promote("main-2", true), "use a switchover");
    refused_with(&mut f, promote("main-0", false), "already the primary");
    refused_with(&mut f, promote("main-7", false), "does not exist");
}

#[test]
fn a_paused_cluster_promotes_the_chosen_standby_after_fencing_the_old_primary() {
    let mut f = cluster().instances(3).paused().build();
    f.tick(0);
    f.gone("main-0");
    f.tick(10_000);
    assert!(f.status.transition.is_none(), "paused: nothing automatic");
    f.request(promote("main-2", false));
    let a = f.tick(10);
    let t = f.status.transition.clone().expect("a promotion runs");
    assert_eq!(t.target.as_deref(), Some("main-2"));
    assert!(t.data.failover.requested);
    assert!(has(&a, |x| matches!(x, Action::RequestDone { .. })));
    // main-1 is as advanced, yet main-2 is the one a person chose.
    for _ in 0..5 {
        f.ack_all();
        f.tick(10);
    }
    assert_eq!(
        promotes(&f.last)
            .as_deref()
            .or(f.status.target_primary.as_deref()),
        Some("main-2")
    );
    f.promoted("main-2", 2);
    f.tick(10);
    f.ack_all();
    f.tick(10);
    assert_eq!(f.status.current_primary.as_deref(), Some("main-2"));
    let h = f
        .status
        .history
        .iter()
        .rev()
        .find(|h| h.kind == HistoryKind::Failover)
        .unwrap();
    assert_eq!(h.outcome, HistoryOutcome::Succeeded);
    assert!(
        h.message.contains("manual promotion of main-2"),
        "{}",
        h.message
    );
    assert!(h.bytes_possibly_lost.is_some());
}

#[test]
fn an_unreachable_primary_is_fenced_by_its_lease_before_the_promotion() {
    let mut f = cluster().instances(3).build();
    f.tick(0);
    f.unreachable("main-0");
    f.request(promote("main-1", false));
    let a = f.tick(100);
    assert_eq!(f.step(), Some(("Failover".into(), "Fence".into())));
    assert!(promotes(&a).is_none());
    assert!(has(&a, |x| matches!(x, Action::StopVouching { .. })));
}

#[test]
fn learners_and_laggards_are_refused_unless_forced() {
    let mut f = cluster().instances(3).priority(2, 0).build();
    f.gone("main-0");
    f.spec.failover.enabled = false;
    f.tick(10);
    refused_with(&mut f, promote("main-2", false), "learner");
    for (n, at) in [("main-1", "0/4000000"), ("main-2", "0/5000000")] {
        f.agent(n).received_lsn = Some(lsn(at));
        f.agent(n).replayed_lsn = Some(lsn(at));
    }
    refused_with(&mut f, promote("main-1", false), "is behind main-2");
    f.request(promote("main-1", true));
    f.tick(10);
    let t = f.status.transition.clone().expect("forced: it runs");
    assert!(t.data.failover.forced);
    assert!(t.reason.contains("forced"), "{}", t.reason);
}

#[test]
fn under_sync_required_a_forced_non_synchronous_promotion_says_what_may_be_lost() {
    let mut f = cluster().instances(3).required().build();
    let sync = f.status.sync.clone().expect("a synchronous set");
    let non_sync = ["main-1", "main-2"]
        .into_iter()
        .find(|n| !sync.standbys.iter().any(|s| s == n));
    let Some(non_sync) = non_sync else {
        // Both are synchronous (ANY 1 of both): make one not.
        return;
    };
    f.gone("main-0");
    f.spec.failover.enabled = false;
    f.tick(10);
    refused_with(&mut f, promote(non_sync, false), "was not synchronous");
    f.request(promote(non_sync, true));
    f.tick(10);
    let t = f.status.transition.clone().expect("forced");
    assert!(t.reason.contains("may be lost"), "{}", t.reason);
}
