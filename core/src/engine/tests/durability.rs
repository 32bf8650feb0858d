//! spec.replication changed on a running cluster: a DurabilityChange
//! transition (apply on the primary, confirm the settings and the standbys'
//! sync state) with history and a DurabilityChanged Event; a change that
//! cannot be met is refused and changes nothing; a failed one is not retried
//! until the spec changes again.

use super::fixtures::*;
use crate::api::{HistoryKind, HistoryOutcome, ReplicationMode};
use crate::engine::{Action, SyncState};

fn reasons_of(a: &[Action]) -> Vec<String> {
    a.iter()
        .filter_map(|x| match x {
            Action::Event { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

fn config_on(a: &[Action], name: &str) -> Option<Action> {
    a.iter()
        .find(|x| matches!(x, Action::Config { instance, .. } if instance == name))
        .cloned()
}

#[test]
fn changing_the_mode_runs_a_durability_change_confirmed_by_the_sync_state() {
    let mut f = cluster().instances(3).build();
    assert_eq!(
        f.status.durability.as_ref().map(|d| d.applied.mode),
        Some(ReplicationMode::Async)
    );
    f.spec.replication.mode = ReplicationMode::Sync;
    let a = f.tick(10);
    assert_eq!(
        f.step(),
        Some(("DurabilityChange".into(), "ApplyDurability".into()))
    );
    let Some(Action::Config {
        synchronous_commit,
        synchronous_standby_names,
        ..
    }) = config_on(&a, "main-0")
    else {
        panic!("no config on the primary: {a:?}");
    };
    assert_eq!(synchronous_commit, "on");
    assert_eq!(synchronous_standby_names, "ANY 1 (\"main-1\", \"main-2\")");
    // Not in force before the primary confirms it.
    assert_eq!(
        f.status.durability.as_ref().map(|d| d.applied.mode),
        Some(ReplicationMode::Async)
    );

    f.ack_all();
    f.tick(10);
    assert_eq!(
        f.step(),
        Some(("DurabilityChange".into(), "ConfirmSync".into()))
    );
    assert!(
        f.status
            .blocked_by
            .as_deref()
            .is_some_and(|b| b.contains("main-1 is async, not quorum")),
        "{:?}",
        f.status.blocked_by
    );

    set_sync_state(&mut f, "main-1", SyncState::Quorum);
    set_sync_state(&mut f, "main-2", SyncState::Quorum);
    let a = f.tick(10);
    assert!(f.status.transition.is_none());
    let h = f.last_history();
    assert_eq!(h.kind, HistoryKind::DurabilityChange);
    assert_eq!(h.outcome, HistoryOutcome::Succeeded);
    assert!(
        h.message.contains(
            "from async to sync (synchronous_commit on, syncStandbys 1, dataDurability preferred)"
        ),
        "{}",
        h.message
    );
    assert!(
        h.message
            .contains("sync state main-1 quorum, main-2 quorum"),
        "{}",
        h.message
    );
    assert!(reasons_of(&a).contains(&"DurabilityChanged".to_string()));
    assert_eq!(
        f.status.durability.as_ref().map(|d| d.applied.clone()),
        Some(f.spec.replication.clone())
    );
    let sync = f.status.sync.clone().unwrap();
    assert_eq!(sync.quorum, 1);
    assert_eq!(sync.standbys, vec!["main-1", "main-2"]);

    // Nothing more to do while the spec stays.
    let a = f.tick(10);
    assert!(f.status.transition.is_none());
    assert!(config_on(&a, "main-0").is_none());
}

#[test]
fn sync_standbys_beyond_the_promotable_standbys_is_refused_and_changes_nothing() {
    let mut f = cluster().instances(3).required().priority(2, 0).build();
    let before = f.status.clone();
    f.spec.replication.sync_standbys = 2;
    let baseline = {
        let mut g = cluster().instances(3).required().priority(2, 0).build();
        g.now = f.now;
        g.tick(10)
    };
    let a = f.tick(10);
    assert!(f.status.transition.is_none());
    let h = f.last_history().clone();
    assert_eq!(h.kind, HistoryKind::DurabilityChange);
    assert_eq!(h.outcome, HistoryOutcome::Refused);
    assert!(
        h.message
            .contains("syncStandbys 2 but only 1 standbys can be synchronous"),
        "{}",
        h.message
    );
    assert!(reasons_of(&a).contains(&"DurabilityRefused".to_string()));
    assert!(
        only_answers(&a, &baseline),
        "a refused change issues nothing: {a:?}"
    );
    assert_eq!(
        f.status.durability.as_ref().map(|d| &d.applied),
        before.durability.as_ref().map(|d| &d.applied)
    );
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .is_some_and(|b| b.contains("refused")));

    // Refused once, not on every decision.
    let n = f.status.history.len();
    let a = f.tick(10);
    assert_eq!(f.status.history.len(), n);
    assert!(!reasons_of(&a).contains(&"DurabilityRefused".to_string()));

    // The learner becomes promotable: now it can be met, and it is.
    f.spec.instance_overrides.clear();
    f.tick(10);
    assert_eq!(
        f.step(),
        Some(("DurabilityChange".into(), "ApplyDurability".into()))
    );
}

#[test]
fn a_durability_change_runs_while_paused() {
    let mut f = cluster().instances(3).paused().build();
    f.spec.replication.mode = ReplicationMode::Sync;
    f.tick(10);
    assert_eq!(
        f.step(),
        Some(("DurabilityChange".into(), "ApplyDurability".into()))
    );
}

#[test]
fn a_failed_durability_change_keeps_the_old_settings_until_the_spec_changes_again() {
    let mut f = cluster().instances(3).build();
    f.spec.replication.mode = ReplicationMode::Sync;
    let a = f.tick(10);
    let config = config_on(&a, "main-0").unwrap();
    f.fail(config, "could not reload");
    let a = f.tick(10);
    assert!(f.status.transition.is_none());
    let h = f.last_history();
    assert_eq!(h.kind, HistoryKind::DurabilityChange);
    assert_eq!(h.outcome, HistoryOutcome::Failed);
    assert!(h.message.contains("could not reload"), "{}", h.message);
    assert!(reasons_of(&a).contains(&"DurabilityChangeFailed".to_string()));
    assert_eq!(
        f.status.durability.as_ref().map(|d| d.applied.mode),
        Some(ReplicationMode::Async)
    );
    let n = f.status.history.len();
    let a = f.tick(10);
    assert!(f.status.transition.is_none(), "not retried");
    assert!(config_on(&a, "main-0").is_none());
    assert_eq!(f.status.history.len(), n);

    f.spec.replication.synchronous_commit = crate::api::SynchronousCommit::RemoteApply;
    f.tick(10);
    assert_eq!(
        f.step(),
        Some(("DurabilityChange".into(), "ApplyDurability".into()))
    );
}

#[test]
fn failover_during_a_change_away_from_required_keeps_the_required_rule() {
    let mut f = cluster().instances(3).required().build();
    f.spec.replication.mode = ReplicationMode::Async;
    f.tick(10);
    assert_eq!(f.step().map(|s| s.0), Some("DurabilityChange".into()));
    // The primary fails before confirming async: the change yields to
    // failover, which still promotes only a synchronous standby.
    f.gone("main-0");
    f.tick(100);
    f.tick(100);
    assert_eq!(f.step().map(|s| s.0), Some("Failover".into()));
    assert!(f
        .status
        .history
        .iter()
        .any(|e| e.kind == HistoryKind::DurabilityChange && e.outcome == HistoryOutcome::Failed));
    let failover = f.status.transition.clone().unwrap();
    let target = failover.target.unwrap();
    assert!(
        f.status
            .sync
            .as_ref()
            .is_some_and(|s| s.standbys.contains(&target)),
        "{target} was not in the synchronous set {:?}",
        f.status.sync
    );
}
