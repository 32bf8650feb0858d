//! Status step of the reconcile: what it writes of DbCluster.status, which is
//! only the verdict on a refused spec (Ready=False, reason InvalidSpec;
//! computed from the previous status, pure), and the status write by
//! server-side apply over the object it was computed from (I/O). Everything
//! else in the status of a valid cluster is written by its HA loop, the only
//! writer once the spec is accepted.

use kube::api::Patch;
use kube::{Api, Client, ResourceExt};

use super::apply::apply_params;
use super::error::{Error, Invalid};
use crate::api::{Condition, DbCluster, DbClusterStatus, Phase, COND_READY};

/// Reason of the Ready condition (and of the Warning Event) for a refused spec.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";

/// The status to write for a refused spec: the previous one (the HA loop's
/// fields kept, a running transition's phase too) with Ready=False naming
/// what to fix, and phase Failed when there was none yet. `now` is an
/// RFC 3339 timestamp.
pub fn refused_status(dc: &DbCluster, invalid: &Invalid, now: &str) -> DbClusterStatus {
    let mut status = dc.status.clone().unwrap_or_default();
    status.observed_generation = dc.metadata.generation;
    if status.phase.is_none() {
        status.phase = Some(Phase::Failed);
    }
    let ready = Condition {
        type_: COND_READY.into(),
        status: "False".into(),
        reason: REASON_INVALID_SPEC.into(),
        message: invalid.to_string(),
        last_transition_time: None,
        observed_generation: dc.metadata.generation,
    };
    set_condition(&mut status.conditions, ready, now);
    status
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
