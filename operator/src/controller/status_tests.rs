//! Unit tests of status computation.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use kube::api::ObjectMeta;

use super::*;
use crate::controller::build::fixtures::{cluster, Fixture};

fn pod(name: &str, ready: bool, role: Option<&str>) -> Pod {
    let mut labels = BTreeMap::from([("tandem.dev/cluster".to_string(), "main".to_string())]);
    if let Some(role) = role {
        labels.insert("tandem.dev/role".into(), role.into());
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}

fn ready_condition(s: &DbClusterStatus) -> Condition {
    match s.condition(COND_READY) {
        Some(c) => c.clone(),
        None => panic!("no Ready condition in {s:?}"),
    }
}

#[test]
fn new_cluster_without_pods_is_creating() {
    let f = cluster();
    let v = Fixture(f.0.clone()).valid();
    let s = desired_status(&f.0, Outcome::Applied(&v), &[], "2026-01-01T00:00:00Z");
    assert_eq!(s.phase, Some(Phase::Creating));
    assert_eq!(s.ready_instances.as_deref(), Some("0/3"));
    assert_eq!(s.observed_generation, Some(1));
    let ready = ready_condition(&s);
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, REASON_NOT_READY);
}

#[test]
fn phase_stays_creating_until_every_pod_is_ready() {
    let f = cluster();
    let v = Fixture(f.0.clone()).valid();
    let pods = [
        pod("main-1", true, Some("standby")),
        pod("main-0", true, Some("primary")),
        pod("main-2", false, None),
    ];
    let s = desired_status(&f.0, Outcome::Applied(&v), &pods, "t1");
    assert_eq!(s.phase, Some(Phase::Creating));
    assert_eq!(s.ready_instances.as_deref(), Some("2/3"));
    let names: Vec<&str> = s.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["main-0", "main-1", "main-2"]);
    assert_eq!(s.instances[0].role, InstanceRole::Primary);
    assert_eq!(s.instances[1].role, InstanceRole::Standby);
    assert_eq!(s.instances[2].role, InstanceRole::Unknown);
}

#[test]
fn all_ready_makes_the_cluster_healthy_and_ready() {
    let mut f = cluster().priority(2, 0);
    let v = Fixture(f.0.clone()).valid();
    let pods = [
        pod("main-0", true, Some("primary")),
        pod("main-1", true, Some("standby")),
        pod("main-2", true, Some("standby")),
    ];
    f.0.status = Some(desired_status(&f.0, Outcome::Applied(&v), &[], "t0"));
    let s = desired_status(&f.0, Outcome::Applied(&v), &pods, "t1");
    assert_eq!(s.phase, Some(Phase::Healthy));
    assert_eq!(s.ready_instances.as_deref(), Some("3/3"));
    assert_eq!(s.instances[2].role, InstanceRole::Learner);
    assert_eq!(s.instances[2].priority, 0);
    let ready = ready_condition(&s);
    assert_eq!(ready.status, "True");
    assert_eq!(ready.last_transition_time.as_deref(), Some("t1"));
}

#[test]
fn unchanged_condition_keeps_its_transition_time() {
    let mut f = cluster();
    let v = Fixture(f.0.clone()).valid();
    f.0.status = Some(desired_status(&f.0, Outcome::Applied(&v), &[], "t0"));
    let s = desired_status(&f.0, Outcome::Applied(&v), &[], "t1");
    assert_eq!(
        ready_condition(&s).last_transition_time.as_deref(),
        Some("t0")
    );
}

#[test]
fn invalid_spec_sets_ready_false_with_the_reason() {
    let f = cluster();
    let invalid = Invalid {
        problems: vec!["postgres.parameters.port is managed by tandem and cannot be set".into()],
    };
    let s = desired_status(&f.0, Outcome::Invalid(&invalid), &[], "t0");
    let ready = ready_condition(&s);
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, REASON_INVALID_SPEC);
    assert!(ready.message.contains("postgres.parameters.port"));
    assert_eq!(s.phase, Some(Phase::Failed));
}

#[test]
fn paused_cluster_reports_paused() {
    let mut f = cluster();
    f.0.spec.paused = true;
    let v = Fixture(f.0.clone()).valid();
    let s = desired_status(&f.0, Outcome::Applied(&v), &[], "t0");
    assert_eq!(s.phase, Some(Phase::Paused));
    assert!(s.paused);
    assert_eq!(
        s.condition(COND_PAUSED).map(|c| c.status.as_str()),
        Some("True")
    );
}

#[test]
fn engine_transition_phase_is_left_alone() {
    let mut f = cluster();
    f.0.status = Some(DbClusterStatus {
        phase: Some(Phase::SwitchingOver),
        ..DbClusterStatus::default()
    });
    let v = Fixture(f.0.clone()).valid();
    let s = desired_status(&f.0, Outcome::Applied(&v), &[], "t0");
    assert_eq!(s.phase, Some(Phase::SwitchingOver));
}
