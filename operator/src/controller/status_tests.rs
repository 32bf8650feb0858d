//! Unit tests of the status a refused spec gets.

use super::*;
use crate::api::{InstanceStatus, COND_PAUSED};
use crate::controller::build::fixtures::cluster;

fn ready_condition(s: &DbClusterStatus) -> Condition {
    match s.condition(COND_READY) {
        Some(c) => c.clone(),
        None => panic!("no Ready condition in {s:?}"),
    }
}

fn port_refused() -> Invalid {
    Invalid {
        problems: vec!["postgres.parameters.port is managed by tandem and cannot be set".into()],
    }
}

fn condition(type_: &str, status: &str, reason: &str, at: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        last_transition_time: Some(at.into()),
        observed_generation: Some(1),
    }
}

#[test]
fn invalid_spec_sets_ready_false_with_the_reason() {
    let f = cluster();
    let s = refused_status(&f.0, &port_refused(), "t0");
    let ready = ready_condition(&s);
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, REASON_INVALID_SPEC);
    assert!(ready.message.contains("postgres.parameters.port"));
    assert_eq!(ready.last_transition_time.as_deref(), Some("t0"));
    assert_eq!(s.phase, Some(Phase::Failed));
    assert_eq!(s.observed_generation, Some(1));
}

#[test]
fn a_refused_spec_keeps_what_the_ha_loop_wrote() {
    let mut f = cluster();
    f.0.status = Some(DbClusterStatus {
        phase: Some(Phase::SwitchingOver),
        current_primary: Some("main-0".into()),
        instances: vec![InstanceStatus {
            name: "main-0".into(),
            ..InstanceStatus::default()
        }],
        conditions: vec![condition(COND_PAUSED, "False", "AutomationActive", "t0")],
        ..DbClusterStatus::default()
    });
    let s = refused_status(&f.0, &port_refused(), "t1");
    assert_eq!(s.phase, Some(Phase::SwitchingOver));
    assert_eq!(s.current_primary.as_deref(), Some("main-0"));
    assert_eq!(s.instances.len(), 1);
    assert_eq!(
        s.condition(COND_PAUSED).map(|c| c.reason.as_str()),
        Some("AutomationActive")
    );
}

#[test]
fn ready_turning_false_is_a_transition_and_a_repeated_refusal_is_not() {
    let mut f = cluster();
    f.0.status = Some(DbClusterStatus {
        conditions: vec![condition(COND_READY, "True", "AllInstancesReady", "t0")],
        ..DbClusterStatus::default()
    });
    let refused = refused_status(&f.0, &port_refused(), "t1");
    assert_eq!(
        ready_condition(&refused).last_transition_time.as_deref(),
        Some("t1")
    );
    f.0.status = Some(refused);
    let again = refused_status(&f.0, &port_refused(), "t2");
    assert_eq!(
        ready_condition(&again).last_transition_time.as_deref(),
        Some("t1")
    );
}
