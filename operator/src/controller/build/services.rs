//! The cluster's Services (`-rw`, `-ro`, `-r`, headless `-pods`) and its
//! PodDisruptionBudget. No I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{child_meta, selector_labels};
use crate::api::keys;
use crate::controller::validate::ValidCluster;

/// Name of the PostgreSQL port on Services and containers.
pub const PORT_POSTGRES: &str = "postgres";
/// Name of the agent's HTTP port.
pub const PORT_AGENT: &str = "agent";

/// `<name>-rw`: the primary only.
pub fn rw(cluster: &ValidCluster) -> Service {
    client_service(
        cluster,
        keys::service_rw(&cluster.name),
        Some(keys::ROLE_PRIMARY),
    )
}

/// `<name>-ro`: streaming standbys only.
pub fn ro(cluster: &ValidCluster) -> Service {
    client_service(
        cluster,
        keys::service_ro(&cluster.name),
        Some(keys::ROLE_STANDBY),
    )
}

/// `<name>-r`: any ready instance.
pub fn r(cluster: &ValidCluster) -> Service {
    client_service(cluster, keys::service_r(&cluster.name), None)
}

/// `<name>-pods`: headless, listing pods before they are ready so that
/// standbys can reach a primary that is still starting.
pub fn pods(cluster: &ValidCluster) -> Service {
    Service {
        metadata: child_meta(cluster, keys::service_pods(&cluster.name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&cluster.name)),
            ports: Some(vec![
                port(PORT_POSTGRES, keys::POSTGRES_PORT),
                port(PORT_AGENT, keys::AGENT_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn client_service(cluster: &ValidCluster, name: String, role: Option<&str>) -> Service {
    let mut selector: BTreeMap<String, String> = selector_labels(&cluster.name);
    if let Some(role) = role {
        selector.insert(keys::LABEL_ROLE.into(), role.into());
    }
    Service {
        metadata: child_meta(cluster, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![port(PORT_POSTGRES, keys::POSTGRES_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn port(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(number),
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// At most one standby down for voluntary disruptions (drains, evictions):
/// the other standbys keep running while one pod moves. A count
/// (`minAvailable`: standbys − 1), not `maxUnavailable`: the latter would be
/// reckoned against the StatefulSet's replicas, primary included, and allow
/// no eviction at all.
pub fn pdb(cluster: &ValidCluster) -> PodDisruptionBudget {
    let mut labels = selector_labels(&cluster.name);
    labels.insert(keys::LABEL_ROLE.into(), keys::ROLE_STANDBY.into());
    PodDisruptionBudget {
        metadata: child_meta(cluster, cluster.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int((cluster.spec.instances - 2).max(0))),
            selector: Some(LabelSelector {
                match_labels: Some(labels),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// `<name>-primary`: the primary's pod is not evicted (CloudNativePG's
/// primary budget): a drain of its node retries the eviction while the
/// engine switches over to a standby elsewhere; once `status.currentPrimary`
/// names the new primary this budget follows it and the old pod may go. It
/// selects the pod by name rather than by role label, which a switchover
/// drops before the old primary has stopped. A single instance has nowhere to
/// switch to: its budget lets a drain evict it.
pub fn pdb_primary(cluster: &ValidCluster) -> PodDisruptionBudget {
    let mut labels = selector_labels(&cluster.name);
    match &cluster.current_primary {
        Some(p) => labels.insert(keys::LABEL_INSTANCE.into(), p.clone()),
        None => labels.insert(keys::LABEL_ROLE.into(), keys::ROLE_PRIMARY.into()),
    };
    let (min_available, max_unavailable) = if cluster.spec.instances > 1 {
        (Some(IntOrString::Int(1)), None)
    } else {
        (None, Some(IntOrString::Int(1)))
    };
    PodDisruptionBudget {
        metadata: child_meta(cluster, format!("{}-primary", cluster.name)),
        spec: Some(PodDisruptionBudgetSpec {
            min_available,
            max_unavailable,
            selector: Some(LabelSelector {
                match_labels: Some(labels),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::build::fixtures::cluster;

    fn selector(s: &Service) -> BTreeMap<String, String> {
        s.spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default()
    }

    #[test]
    fn rw_selects_the_primary_and_ro_the_standbys() {
        let c = cluster().valid();
        assert_eq!(rw(&c).metadata.name.as_deref(), Some("main-rw"));
        assert_eq!(
            selector(&rw(&c)).get("tandem.dev/role").map(String::as_str),
            Some("primary")
        );
        assert_eq!(
            selector(&ro(&c)).get("tandem.dev/role").map(String::as_str),
            Some("standby")
        );
        assert_eq!(
            selector(&rw(&c))
                .get("tandem.dev/cluster")
                .map(String::as_str),
            Some("main")
        );
    }

    #[test]
    fn r_selects_every_instance_of_the_cluster() {
        let c = cluster().valid();
        let sel = selector(&r(&c));
        assert_eq!(
            sel.get("tandem.dev/cluster").map(String::as_str),
            Some("main")
        );
        assert!(!sel.contains_key("tandem.dev/role"));
    }

    #[test]
    fn headless_service_publishes_not_ready_pods() {
        let c = cluster().valid();
        let spec = pods(&c).spec.unwrap_or_default();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let ports: Vec<i32> = spec
            .ports
            .unwrap_or_default()
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(ports, vec![5432, 8000]);
    }

    #[test]
    fn pdb_allows_one_standby_down() {
        let c = cluster().valid();
        let spec = pdb(&c).spec.unwrap_or_default();
        // Three instances: two standbys, one may go.
        assert_eq!(spec.min_available, Some(IntOrString::Int(1)));
        assert!(spec.max_unavailable.is_none());
        let sel = spec
            .selector
            .and_then(|s| s.match_labels)
            .unwrap_or_default();
        assert_eq!(
            sel.get(keys::LABEL_ROLE).map(String::as_str),
            Some("standby")
        );
    }

    #[test]
    fn primary_pdb_keeps_the_current_primary_pod_by_name() {
        let mut c = cluster().valid();
        let p = pdb_primary(&c);
        assert_eq!(p.metadata.name.as_deref(), Some("main-primary"));
        let spec = p.spec.unwrap_or_default();
        assert_eq!(spec.min_available, Some(IntOrString::Int(1)));
        let sel = spec
            .selector
            .and_then(|s| s.match_labels)
            .unwrap_or_default();
        assert_eq!(
            sel.get(keys::LABEL_ROLE).map(String::as_str),
            Some("primary")
        );

        c.current_primary = Some("main-2".into());
        let spec = pdb_primary(&c).spec.unwrap_or_default();
        let sel = spec
            .selector
            .and_then(|s| s.match_labels)
            .unwrap_or_default();
        assert_eq!(
            sel.get(keys::LABEL_INSTANCE).map(String::as_str),
            Some("main-2")
        );
        assert_eq!(sel.get(keys::LABEL_ROLE), None);

        // One instance cannot switch over: a drain may evict it.
        c.spec.instances = 1;
        let spec = pdb_primary(&c).spec.unwrap_or_default();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert!(spec.min_available.is_none());
    }
}
