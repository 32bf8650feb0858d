//! Pure builders of every child object of a DbCluster, gathered in one
//! [`Children`] value that apply unpacks field by field. No I/O.

pub mod config;
pub mod secrets;
pub mod services;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rand::{CryptoRng, Rng};

use super::validate::ValidCluster;
use crate::api::keys;
pub use secrets::SecretKind;

/// Every object tandem creates for one DbCluster. Apply consumes it whole, so
/// a child added here cannot be forgotten there.
#[derive(Debug, Clone)]
pub struct Children {
    /// `<name>-config`: rendered postgresql.conf lines.
    pub config_map: ConfigMap,
    /// The Secrets that do not exist yet (existing ones are never rebuilt).
    pub secrets: Vec<Secret>,
    /// `<name>-pods`: headless Service for stable pod DNS.
    pub service_pods: Service,
    /// `<name>-rw`: follows the primary.
    pub service_rw: Service,
    /// `<name>-ro`: streaming standbys.
    pub service_ro: Service,
    /// `<name>-r`: any ready instance.
    pub service_r: Service,
    /// `<name>`: at most one standby evicted at a time.
    pub pdb: PodDisruptionBudget,
    /// `<name>-primary`: the primary is never evicted (a drain waits until
    /// the engine has switched it over to a standby on another node).
    pub pdb_primary: PodDisruptionBudget,
    /// The instances.
    pub stateful_set: StatefulSet,
}

/// Build every child. `missing` lists the Secrets to create; their random
/// values are drawn from `rng`, which must be cryptographically secure.
pub fn build_children<R: Rng + CryptoRng>(
    cluster: &ValidCluster,
    missing: &[SecretKind],
    rng: &mut R,
) -> Children {
    Children {
        config_map: config::config_map(cluster),
        secrets: missing
            .iter()
            .map(|&kind| secrets::secret(cluster, kind, &secrets::random_value(kind, rng)))
            .collect(),
        service_pods: services::pods(cluster),
        service_rw: services::rw(cluster),
        service_ro: services::ro(cluster),
        service_r: services::r(cluster),
        pdb: services::pdb(cluster),
        pdb_primary: services::pdb_primary(cluster),
        stateful_set: statefulset::stateful_set(cluster),
    }
}

/// Labels on every child object.
pub fn cluster_labels(cluster: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cluster);
    labels.insert(keys::LABEL_APP_INSTANCE.into(), cluster.into());
    labels.insert(keys::LABEL_MANAGED_BY.into(), keys::MANAGED_BY.into());
    labels
}

/// Labels that select the cluster's pods.
pub fn selector_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (keys::LABEL_APP_NAME.to_string(), keys::APP_NAME.to_string()),
        (keys::LABEL_CLUSTER.to_string(), cluster.to_string()),
    ])
}

/// Labels of the pods the StatefulSet creates. The role and instance labels
/// are set per pod by the operator, not here.
pub fn pod_labels(cluster: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cluster);
    labels.insert(keys::LABEL_APP_INSTANCE.into(), cluster.into());
    labels
}

/// Metadata of a child: name, namespace, labels, controller owner reference.
pub fn child_meta(cluster: &ValidCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(cluster.namespace.clone()),
        labels: Some(cluster_labels(&cluster.name)),
        owner_references: Some(vec![cluster.owner.clone()]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Small fixtures for builder tests: `cluster().instances(3).sync()`.

    use kube::Resource;

    use crate::api::{DbCluster, DbClusterSpec, InstanceOverride, ReplicationMode};
    use crate::controller::validate::{validate, Defaults, ValidCluster};

    /// A DbCluster under construction.
    pub struct Fixture(pub DbCluster);

    /// `main` in namespace `db`, 3 instances, defaults everywhere.
    pub fn cluster() -> Fixture {
        let mut dc = DbCluster::new("main", DbClusterSpec::default().into());
        dc.meta_mut().namespace = Some("db".into());
        dc.meta_mut().uid = Some("uid-1".into());
        dc.meta_mut().generation = Some(1);
        Fixture(dc)
    }

    impl Fixture {
        pub fn instances(mut self, n: i32) -> Self {
            self.0.spec.instances = n;
            self
        }
        pub fn sync(mut self, standbys: i32) -> Self {
            self.0.spec.replication.mode = ReplicationMode::Sync;
            self.0.spec.replication.sync_standbys = standbys;
            self
        }
        pub fn priority(mut self, ordinal: i32, priority: i32) -> Self {
            self.0.spec.instance_overrides.push(InstanceOverride {
                ordinal,
                priority: Some(priority),
            });
            self
        }
        pub fn parameter(mut self, k: &str, v: &str) -> Self {
            self.0.spec.postgres.parameters.insert(k.into(), v.into());
            self
        }
        pub fn archive(mut self, command: &str) -> Self {
            self.0.spec.archive.command = Some(command.into());
            self
        }
        pub fn defaults() -> Defaults {
            Defaults {
                postgres_image: "example.org/tandem-postgres:17".into(),
            }
        }
        pub fn valid(self) -> ValidCluster {
            match validate(&self.0, &Self::defaults()) {
                Ok(v) => v,
                Err(e) => panic!("fixture should be valid: {e}"),
            }
        }
    }
}
