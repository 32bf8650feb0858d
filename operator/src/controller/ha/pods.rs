//! What the Kubernetes platform knows about each instance from its pod:
//! platform state (Running / Starting / Vanished / Gone), the role label, the pod IP.
//! Pure functions over `Pod` objects.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::keys;
use crate::engine::{PlatformState, RoleLabel};

/// The role label value as the engine knows it.
pub fn role_label(pod: &Pod) -> Option<RoleLabel> {
    match pod.labels().get(keys::LABEL_ROLE).map(String::as_str) {
        Some(keys::ROLE_PRIMARY) => Some(RoleLabel::Primary),
        Some(keys::ROLE_STANDBY) => Some(RoleLabel::Standby),
        Some(keys::ROLE_FENCED) => Some(RoleLabel::Fenced),
        Some(keys::ROLE_UNKNOWN) => Some(RoleLabel::Unknown),
        _ => None,
    }
}

/// The pod's IP once it has one.
pub fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
}

/// Whether the pod's containers have ended for good (phase Failed or Succeeded).
pub fn pod_ended(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

/// Whether the kubelet reported every container of the pod terminated.
pub fn containers_terminated(pod: &Pod) -> bool {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    !statuses.is_empty()
        && statuses
            .iter()
            .all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()))
}

/// The pod's platform state. `answered` says whether this pod (by uid) has
/// ever answered a poll; a pod that has not, and is younger than `grace`, is
/// still starting. `serving` says whether its agent reports postgres running
/// in this poll.
///
/// `Gone` (the engine may promote at once) only when the kubelet reported
/// the pod's containers ended: its phase is Failed/Succeeded, or every
/// container status is terminated. A pod being deleted whose postgres no
/// longer answers is `Vanished`: on a partitioned node deletion stops
/// nothing, so the engine waits for the fencing lease. A pod in its deletion
/// grace period whose postgres still serves is still `Running`.
///
/// A pod on a lost node (phase `Unknown`) is deliberately NOT `Gone` either:
/// its postgres may still be running, so the engine must wait for the
/// fencing lease, as for any unreachable agent.
pub fn platform_state(
    pod: &Pod,
    answered: bool,
    serving: bool,
    now: Timestamp,
    grace: Duration,
) -> PlatformState {
    if pod_ended(pod) {
        return PlatformState::Gone;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return if serving {
            PlatformState::Running
        } else if containers_terminated(pod) {
            PlatformState::Gone
        } else {
            PlatformState::Vanished
        };
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase == Some("Pending") || pod_ip(pod).is_none() {
        return PlatformState::Starting;
    }
    if !answered {
        let young = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| now.duration_since(t.0).try_into().ok())
            .is_some_and(|age: Duration| age < grace);
        if young {
            return PlatformState::Starting;
        }
    }
    PlatformState::Running
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(phase: &str, ip: Option<&str>, age_secs: i64) -> Pod {
        let now = Timestamp::from_second(1_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut p = Pod::default();
        p.metadata.name = Some("main-0".into());
        p.metadata.creation_timestamp = Some(Time(
            now.checked_sub(jiff::SignedDuration::from_secs(age_secs))
                .unwrap_or(now),
        ));
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            pod_ip: ip.map(str::to_string),
            ..PodStatus::default()
        });
        p
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn pending_pod_is_starting() {
        let p = pod("Pending", None, 300);
        assert_eq!(
            platform_state(&p, false, false, now(), GRACE),
            PlatformState::Starting
        );
    }

    #[test]
    fn young_pod_that_never_answered_is_starting_old_one_is_running() {
        let young = pod("Running", Some("10.0.0.1"), 5);
        assert_eq!(
            platform_state(&young, false, false, now(), GRACE),
            PlatformState::Starting
        );
        assert_eq!(
            platform_state(&young, true, true, now(), GRACE),
            PlatformState::Running
        );
        let old = pod("Running", Some("10.0.0.1"), 300);
        assert_eq!(
            platform_state(&old, false, false, now(), GRACE),
            PlatformState::Running
        );
    }

    #[test]
    fn only_a_pod_whose_containers_ended_is_gone() {
        let mut deleting = pod("Running", Some("10.0.0.1"), 300);
        deleting.metadata.deletion_timestamp = Some(Time(now()));
        // Deleted, its postgres silent, no word from the kubelet: it may still run.
        assert_eq!(
            platform_state(&deleting, true, false, now(), GRACE),
            PlatformState::Vanished
        );
        let mut ended = deleting.clone();
        if let Some(s) = ended.status.as_mut() {
            s.container_statuses = Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
                name: "postgres".into(),
                state: Some(k8s_openapi::api::core::v1::ContainerState {
                    terminated: Some(Default::default()),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
        }
        assert_eq!(
            platform_state(&ended, true, false, now(), GRACE),
            PlatformState::Gone
        );
        let failed = pod("Failed", Some("10.0.0.1"), 300);
        assert_eq!(
            platform_state(&failed, true, true, now(), GRACE),
            PlatformState::Gone
        );
        // In its grace period with postgres still serving: not gone yet.
        assert_eq!(
            platform_state(&deleting, true, true, now(), GRACE),
            PlatformState::Running
        );
        let unknown = pod("Unknown", Some("10.0.0.1"), 300);
        assert_eq!(
            platform_state(&unknown, true, false, now(), GRACE),
            PlatformState::Running
        );
    }
}
