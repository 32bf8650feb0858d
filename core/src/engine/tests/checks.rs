//! The settings of the agents' health checks: the expected standbys and the
//! thresholds of the spec reach every agent, again whenever they differ.

use super::fixtures::*;
use crate::engine::Action;

fn checks_for(actions: &[Action], who: &str) -> Option<crate::api::agent::CheckSettings> {
    actions.iter().find_map(|a| match a {
        Action::Checks { instance, settings } if instance == who => Some(settings.clone()),
        _ => None,
    })
}

#[test]
fn every_agent_learns_its_expected_standbys_and_the_spec_thresholds() {
    let mut f = cluster().instances(3).build();
    // build() acknowledged the first round: the agents report what they were sent.
    let s = f
        .agent("main-0")
        .check_settings
        .clone()
        .expect("main-0 was told");
    assert_eq!(s.standbys, vec!["main-1".to_string(), "main-2".to_string()]);
    assert_eq!(s.archive_ready_warning, 64);
    assert_eq!(s.archive_ready_critical, 128);
    assert_eq!(s.lag_critical_bytes, (16 << 20) + 1);
    assert_eq!(
        f.agent("main-2").check_settings.as_ref().unwrap().standbys,
        vec!["main-0".to_string(), "main-1".to_string()]
    );
    // Nothing to send while they agree.
    let a = f.tick(1000);
    assert!(
        !a.iter().any(|x| matches!(x, Action::Checks { .. })),
        "{a:?}"
    );

    // A threshold changed in the spec reaches every agent.
    f.spec.switchover.archive_ready_critical = 10;
    f.spec.switchover.archive_ready_warning = 5;
    let a = f.tick(1000);
    for n in ["main-0", "main-1", "main-2"] {
        let s = checks_for(&a, n).unwrap_or_else(|| panic!("{n} not told: {a:?}"));
        assert_eq!((s.archive_ready_warning, s.archive_ready_critical), (5, 10));
    }

    // A restarted agent (it reports no settings) is told again.
    f.ack_all();
    f.tick(100);
    f.agent("main-1").check_settings = None;
    let a = f.tick(1000);
    assert!(checks_for(&a, "main-1").is_some(), "{a:?}");
    assert!(checks_for(&a, "main-0").is_none(), "{a:?}");
}

#[test]
fn scaling_out_changes_the_primary_s_expected_standbys() {
    let mut f = cluster().instances(3).build();
    f.spec.instances = 4;
    let a = f.tick(1000);
    let s = checks_for(&a, "main-0").expect("main-0 told of main-3");
    assert_eq!(s.standbys, vec!["main-1", "main-2", "main-3"]);
}

#[test]
fn status_sums_up_the_standbys_lag_and_sync_state_for_kubectl_wide() {
    let mut f = cluster().instances(3).build();
    f.agent("main-2").received_lsn = Some(lsn("0/4FFF000"));
    f.agent("main-2").replayed_lsn = Some(lsn("0/4FFE000"));
    f.agent("main-2").lag_seconds = Some(2.5);
    f.tick(1000);
    assert_eq!(f.status.max_lag_bytes, Some(0x1000));
    assert_eq!(
        f.status.sync_states.as_deref(),
        Some("main-1=async main-2=async")
    );
    let i = &f.status.instances[2];
    assert_eq!(i.lag_seconds, Some(2.5));
    assert_eq!(i.replay_lag_bytes, Some(0x1000));
    assert_eq!(i.sync_state.as_deref(), Some("async"));
    assert_eq!(f.status.instances[0].sync_state, None);
}
