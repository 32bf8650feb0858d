//! Rolling update of a cluster's pods after the StatefulSet's pod template
//! changed (image, resources…): the StatefulSet is `OnDelete`, so the HA loop
//! deletes outdated pods itself, one at a time and only while the cluster is
//! healthy — standbys first (highest ordinal first), then the primary after a
//! switchover has moved it away (`primaryUpdateMethod: switchover`). Pure.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::api::{keys, DbClusterSpec, DbClusterStatus, Phase, PrimaryUpdateMethod};
use crate::engine::{self, HistoryKind, HistoryOutcome};

/// The pod label the StatefulSet controller sets to the pod's template revision.
pub const LABEL_REVISION: &str = "controller-revision-hash";
/// Event reason when a pod is deleted to be recreated from the new template.
pub const REASON_ROLLING_UPDATE: &str = "RollingUpdate";
/// How long after a refused switchover the rollout asks for the next one (seconds).
const RETRY_SWITCHOVER_SECS: i64 = 300;

/// The next move of a rolling update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do now.
    Idle,
    /// Delete this (outdated, non-primary) pod: the StatefulSet recreates it.
    DeletePod(String),
    /// Only the primary is outdated: switch over to any standby first.
    SwitchoverAway,
    /// Only the primary is outdated and `primaryUpdateMethod: restart`: delete
    /// it (the engine fails over to a standby).
    DeletePrimary(String),
}

fn outdated<'a>(pods: &'a [Pod], revision: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
    pods.iter().filter(move |p| {
        p.labels()
            .get(LABEL_REVISION)
            .is_some_and(|r| r != revision)
    })
}

/// The next step, given the StatefulSet's `updateRevision`, the pods and the persisted status.
pub fn next(
    cluster: &str,
    spec: &DbClusterSpec,
    paused: bool,
    status: &DbClusterStatus,
    pods: &[Pod],
    update_revision: Option<&str>,
    now: jiff::Timestamp,
) -> Step {
    let Some(revision) = update_revision else {
        return Step::Idle;
    };
    let want = format!("{n}/{n}", n = spec.instances);
    let healthy = status.phase == Some(Phase::Healthy)
        && status.transition.is_none()
        && status.ready_instances.as_deref() == Some(want.as_str())
        && pods.iter().all(|p| p.metadata.deletion_timestamp.is_none());
    if paused || spec.paused || !healthy {
        return Step::Idle;
    }
    let Some(primary) = status.current_primary.as_deref() else {
        return Step::Idle;
    };
    let mut stale: Vec<(u32, String)> = outdated(pods, revision)
        .filter_map(|p| {
            let name = p.name_any();
            keys::instance_ordinal(cluster, &name).map(|o| (o, name))
        })
        .collect();
    stale.sort();
    if let Some((_, name)) = stale.iter().rev().find(|(_, n)| n != primary) {
        return Step::DeletePod(name.clone());
    }
    if !stale.iter().any(|(_, n)| n == primary) {
        return Step::Idle;
    }
    match spec.primary_update_method {
        PrimaryUpdateMethod::Restart => Step::DeletePrimary(primary.to_string()),
        PrimaryUpdateMethod::Switchover => {
            let refused_lately = status.history.iter().rev().any(|e| {
                e.kind == HistoryKind::Switchover
                    && e.outcome == HistoryOutcome::Refused
                    && e.started_at
                        .parse::<jiff::Timestamp>()
                        .is_ok_and(|t| now.duration_since(t).as_secs() < RETRY_SWITCHOVER_SECS)
            });
            if refused_lately {
                Step::Idle
            } else {
                Step::SwitchoverAway
            }
        }
    }
}

/// The request the rollout hands the engine to move the primary away.
pub fn switchover_request() -> engine::Request {
    engine::Request::Switchover {
        to: engine::SwitchoverTarget::Any,
        dry_run: false,
        force: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(i: u32, rev: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(format!("main-{i}"));
        p.metadata.labels = Some(BTreeMap::from([(
            LABEL_REVISION.to_string(),
            rev.to_string(),
        )]));
        p
    }

    fn healthy() -> DbClusterStatus {
        DbClusterStatus {
            phase: Some(Phase::Healthy),
            current_primary: Some("main-0".into()),
            ready_instances: Some("3/3".into()),
            ..DbClusterStatus::default()
        }
    }

    fn spec() -> DbClusterSpec {
        DbClusterSpec {
            instances: 3,
            ..DbClusterSpec::default()
        }
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::UNIX_EPOCH
    }

    #[test]
    fn outdated_standbys_go_first_highest_ordinal_first() {
        let pods = [pod(0, "a"), pod(1, "a"), pod(2, "a")];
        let s = next("main", &spec(), false, &healthy(), &pods, Some("b"), now());
        assert_eq!(s, Step::DeletePod("main-2".into()));
        let pods = [pod(0, "a"), pod(1, "a"), pod(2, "b")];
        let s = next("main", &spec(), false, &healthy(), &pods, Some("b"), now());
        assert_eq!(s, Step::DeletePod("main-1".into()));
    }

    #[test]
    fn the_primary_is_switched_away_last() {
        let pods = [pod(0, "a"), pod(1, "b"), pod(2, "b")];
        let s = next("main", &spec(), false, &healthy(), &pods, Some("b"), now());
        assert_eq!(s, Step::SwitchoverAway);
        let mut restart = spec();
        restart.primary_update_method = PrimaryUpdateMethod::Restart;
        let s = next("main", &restart, false, &healthy(), &pods, Some("b"), now());
        assert_eq!(s, Step::DeletePrimary("main-0".into()));
    }

    #[test]
    fn nothing_moves_unless_healthy_and_unpaused() {
        let pods = [pod(0, "a"), pod(1, "a"), pod(2, "a")];
        let mut degraded = healthy();
        degraded.ready_instances = Some("2/3".into());
        assert_eq!(
            next("main", &spec(), false, &degraded, &pods, Some("b"), now()),
            Step::Idle
        );
        assert_eq!(
            next("main", &spec(), true, &healthy(), &pods, Some("b"), now()),
            Step::Idle
        );
        assert_eq!(
            next("main", &spec(), false, &healthy(), &pods, None, now()),
            Step::Idle
        );
        let current = [pod(0, "b"), pod(1, "b"), pod(2, "b")];
        assert_eq!(
            next(
                "main",
                &spec(),
                false,
                &healthy(),
                &current,
                Some("b"),
                now()
            ),
            Step::Idle
        );
    }
}
