//! Observe step: read what exists for a DbCluster (its Secrets' presence and
//! its pods). Does I/O against the API server, read-only.

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::{Api, Client};

use super::build::SecretKind;
use super::error::Error;
use crate::api::keys;

/// What the API server holds for one cluster.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Secrets of the cluster that exist (created by tandem or by the user).
    pub existing_secrets: Vec<SecretKind>,
    /// The cluster's pods (label `tandem.dev/cluster=<name>`).
    pub pods: Vec<Pod>,
}

impl Observed {
    /// Secrets that do not exist yet and must be generated.
    pub fn missing_secrets(&self) -> Vec<SecretKind> {
        SecretKind::ALL
            .into_iter()
            .filter(|k| !self.existing_secrets.contains(k))
            .collect()
    }
}

/// Read the cluster's Secrets (metadata only: their values are never read)
/// and pods.
pub async fn observe(client: &Client, namespace: &str, cluster: &str) -> Result<Observed, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut existing_secrets = Vec::new();
    for kind in SecretKind::ALL {
        let name = kind.name(cluster);
        let found = secrets
            .get_metadata_opt(&name)
            .await
            .map_err(|e| Error::kube("get", "Secret", &name, e))?;
        if found.is_some() {
            existing_secrets.push(kind);
        }
    }
    let selector = format!("{}={cluster}", keys::LABEL_CLUSTER);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::kube("list", "Pod", &selector, e))?
        .items;
    Ok(Observed {
        existing_secrets,
        pods,
    })
}
