//! Apply step: server-side apply of every child in a fixed order with one
//! field manager; Secrets are only ever created. Does I/O.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::build::Children;
use super::error::Error;
use super::validate::ValidCluster;
use crate::api::keys;

/// The one field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "tandem-operator";

/// Parameters of every server-side apply.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Apply every child, in this order: ConfigMap, Secrets (create only),
/// Services (`-pods`, `-rw`, `-ro`, `-r`), PodDisruptionBudget, StatefulSet
/// (last: its pods mount everything before it). Then label the pods that lack
/// their `tandem.dev/instance` label.
pub async fn apply(
    client: &Client,
    cluster: &ValidCluster,
    children: Children,
    pods: &[Pod],
) -> Result<(), Error> {
    let Children {
        config_map,
        secrets,
        service_pods,
        service_rw,
        service_ro,
        service_r,
        pdb,
        pdb_primary,
        stateful_set,
    } = children;
    let ns = &cluster.namespace;

    ssa::<ConfigMap>(client, ns, "ConfigMap", &config_map).await?;
    for secret in &secrets {
        create_secret(client, ns, secret).await?;
    }
    for service in [&service_pods, &service_rw, &service_ro, &service_r] {
        ssa::<Service>(client, ns, "Service", service).await?;
    }
    ssa::<PodDisruptionBudget>(client, ns, "PodDisruptionBudget", &pdb).await?;
    ssa::<PodDisruptionBudget>(client, ns, "PodDisruptionBudget", &pdb_primary).await?;
    ssa::<StatefulSet>(client, ns, "StatefulSet", &stateful_set).await?;
    label_instances(client, ns, pods).await
}

async fn ssa<K>(client: &Client, ns: &str, kind: &'static str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(&name, &apply_params(), &Patch::Apply(obj))
        .await
        .map_err(|e| Error::kube("apply", kind, &name, e))?;
    tracing::debug!(kind, name = %name, "applied");
    Ok(())
}

/// Create a Secret that did not exist when observed. If someone created it
/// since, theirs stays: a Secret is never overwritten.
async fn create_secret(client: &Client, ns: &str, secret: &Secret) -> Result<(), Error> {
    let name = secret.name_any();
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, secret).await {
        Ok(_) => {
            tracing::info!(secret = %name, "generated secret");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            tracing::info!(secret = %name, "secret appeared meanwhile; keeping it");
            Ok(())
        }
        Err(e) => Err(Error::kube("create", "Secret", &name, e)),
    }
}

/// Give each pod its `tandem.dev/instance` label. A merge patch, so that the
/// role label (written by the HA engine) is left alone.
async fn label_instances(client: &Client, ns: &str, pods: &[Pod]) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    for pod in pods {
        let name = pod.name_any();
        if pod.labels().get(keys::LABEL_INSTANCE) == Some(&name) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"labels": {keys::LABEL_INSTANCE: name}}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch(&name, &params, &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::kube("patch", "Pod", &name, e))?;
    }
    Ok(())
}
