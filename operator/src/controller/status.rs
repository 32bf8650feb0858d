//! Status step: compute DbCluster.status from what was applied and observed
//! (pure), and write it with server-side apply (I/O).

use k8s_openapi::api::core::v1::Pod;
use kube::api::Patch;
use kube::{Api, Client, ResourceExt};

use super::apply::apply_params;
use super::error::{Error, Invalid};
use super::validate::ValidCluster;
use crate::api::{
    keys, Condition, DbCluster, DbClusterStatus, InstanceRole, InstanceStatus, Phase, COND_PAUSED,
    COND_READY,
};

/// Reason of the Ready condition (and of the Warning Event) for a refused spec.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// Reason of Ready=True.
pub const REASON_ALL_READY: &str = "AllInstancesReady";
/// Reason of Ready=False while instances are missing or not ready.
pub const REASON_NOT_READY: &str = "InstancesNotReady";

/// What the reconcile came to.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Children were applied for this valid cluster.
    Applied(&'a ValidCluster),
    /// The spec was refused; nothing was touched.
    Invalid(&'a Invalid),
}

/// The status to write: the previous one (engine-owned fields kept) with the
/// controller's fields recomputed. `now` is an RFC 3339 timestamp.
pub fn desired_status(
    dc: &DbCluster,
    outcome: Outcome<'_>,
    pods: &[Pod],
    now: &str,
) -> DbClusterStatus {
    let previous = dc.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = dc.metadata.generation;
    let generation = dc.metadata.generation;
    match outcome {
        Outcome::Invalid(invalid) => {
            if status.phase.is_none() {
                status.phase = Some(Phase::Failed);
            }
            set_condition(
                &mut status.conditions,
                condition(
                    COND_READY,
                    false,
                    REASON_INVALID_SPEC,
                    &invalid.to_string(),
                    generation,
                ),
                now,
            );
        }
        Outcome::Applied(cluster) => {
            status.instances = instances(dc, cluster, pods, &previous.instances);
            let want = cluster.spec.instances;
            let ready = status
                .instances
                .iter()
                .filter(|i| i.ready && ordinal_of(&cluster.name, &i.name) < Some(want as u32))
                .count() as i32;
            let all_ready = ready >= want;
            status.ready_instances = Some(format!("{ready}/{want}"));
            status.paused = cluster.paused;
            status.phase = Some(phase(previous.phase, all_ready, cluster.paused));
            let msg = format!("{ready}/{want} instances ready");
            let (reason, ok) = if all_ready {
                (REASON_ALL_READY, true)
            } else {
                (REASON_NOT_READY, false)
            };
            set_condition(
                &mut status.conditions,
                condition(COND_READY, ok, reason, &msg, generation),
                now,
            );
            let (reason, msg) = if cluster.paused {
                (
                    "AutomationPaused",
                    "automatic failover and rejoin are paused",
                )
            } else {
                (
                    "AutomationActive",
                    "automatic failover and rejoin are active",
                )
            };
            set_condition(
                &mut status.conditions,
                condition(COND_PAUSED, cluster.paused, reason, msg, generation),
                now,
            );
        }
    }
    status
}

fn phase(previous: Option<Phase>, all_ready: bool, paused: bool) -> Phase {
    match previous {
        // Transitions belong to the HA engine; it ends them.
        Some(
            p @ (Phase::FailingOver | Phase::SwitchingOver | Phase::Rejoining | Phase::Recloning),
        ) => p,
        _ if paused => Phase::Paused,
        _ if all_ready => Phase::Healthy,
        None | Some(Phase::Creating) | Some(Phase::Failed) => Phase::Creating,
        Some(_) => Phase::Degraded,
    }
}

fn ordinal_of(cluster: &str, pod: &str) -> Option<u32> {
    keys::instance_ordinal(cluster, pod)
}

/// One entry per pod of the cluster, by ordinal; figures reported by agents
/// (LSN, timeline, checks) are kept from the previous status.
fn instances(
    dc: &DbCluster,
    cluster: &ValidCluster,
    pods: &[Pod],
    previous: &[InstanceStatus],
) -> Vec<InstanceStatus> {
    let mut out: Vec<(u32, InstanceStatus)> = pods
        .iter()
        .filter_map(|pod| {
            let name = pod.name_any();
            let ordinal = ordinal_of(&cluster.name, &name)?;
            let priority = dc.spec.priority_of(ordinal);
            let mut entry = previous
                .iter()
                .find(|i| i.name == name)
                .cloned()
                .unwrap_or_else(|| InstanceStatus {
                    name: name.clone(),
                    ..InstanceStatus::default()
                });
            entry.priority = priority;
            entry.ready = pod_ready(pod);
            entry.role = match pod.labels().get(keys::LABEL_ROLE).map(String::as_str) {
                Some(keys::ROLE_PRIMARY) => InstanceRole::Primary,
                Some(keys::ROLE_STANDBY) if priority == 0 => InstanceRole::Learner,
                Some(keys::ROLE_STANDBY) => InstanceRole::Standby,
                Some(keys::ROLE_FENCED) => InstanceRole::Fenced,
                _ => InstanceRole::Unknown,
            };
            Some((ordinal, entry))
        })
        .collect();
    out.sort_by_key(|(ordinal, _)| *ordinal);
    out.into_iter().map(|(_, i)| i).collect()
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: None,
        observed_generation: generation,
    }
}

/// Replace the condition of the same type, keeping lastTransitionTime when
/// its status did not change.
fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition, now: &str) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            new.last_transition_time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                Some(now.to_string())
            };
            *old = new;
        }
        None => {
            new.last_transition_time = Some(now.to_string());
            conditions.push(new);
        }
    }
}

/// The server-side apply body of a status write: the status, and the
/// resourceVersion of `dc`, which the API server takes as a precondition even
/// under force (a stale resourceVersion is a 409 Conflict), so a status
/// decided from an outdated object never overwrites a newer one.
pub fn status_apply_body(dc: &DbCluster, status: serde_json::Value) -> serde_json::Value {
    let mut metadata = serde_json::json!({"name": dc.name_any()});
    if let Some(rv) = &dc.metadata.resource_version {
        metadata["resourceVersion"] = serde_json::json!(rv);
    }
    serde_json::json!({
        "apiVersion": "tandem.dev/v1alpha1",
        "kind": "DbCluster",
        "metadata": metadata,
        "status": status,
    })
}

/// Write the status with server-side apply, unless it is unchanged; only
/// over the object it was computed from ([`status_apply_body`]).
pub async fn patch_status(
    client: &Client,
    dc: &DbCluster,
    status: DbClusterStatus,
) -> Result<(), Error> {
    if dc.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let name = dc.name_any();
    let ns = dc.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<DbCluster> = Api::namespaced(client.clone(), &ns);
    let status = serde_json::to_value(&status).map_err(|source| Error::Encode {
        kind: "DbClusterStatus",
        name: name.clone(),
        source,
    })?;
    let body = status_apply_body(dc, status);
    api.patch_status(&name, &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(|e| Error::kube("apply status", "DbCluster", &name, e))?;
    Ok(())
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
