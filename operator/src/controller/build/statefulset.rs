//! The cluster's StatefulSet: one pod per instance running `tandem agent`
//! with the env and mounts of the agent contract. No I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::KEY_POSTGRESQL_CONF;
use super::secrets::{SecretKind, KEY_USERNAME};
use super::services::{PORT_AGENT, PORT_POSTGRES};
use super::{child_meta, pod_labels, selector_labels};
use crate::api::{keys, Resources};
use crate::controller::validate::ValidCluster;

/// Name of the PVC template (and volume) holding the data directory.
pub const PGDATA_VOLUME: &str = "pgdata";
/// Where the `pgdata` volume is mounted.
pub const PGDATA_MOUNT: &str = "/var/lib/postgresql/data";
/// PGDATA: a subdirectory, because the volume's root may hold lost+found.
pub const DATA_DIR: &str = "/var/lib/postgresql/data/pgdata";
/// Name of the PostgreSQL container.
pub const CONTAINER: &str = "postgres";
/// User and group the pod runs as (the postgres user of the image).
pub const RUN_AS: i64 = 999;
/// Seconds added to the switchover shutdown timeout for the pod's grace period.
const GRACE_MARGIN_SECONDS: i64 = 15;
/// Smallest termination grace period: a fast shutdown with a checkpoint.
const MIN_GRACE_SECONDS: i64 = 30;

/// A mounted Secret or ConfigMap: volume name, mount directory.
struct Mount {
    volume: &'static str,
    dir: &'static str,
}

const SUPERUSER_MOUNT: Mount = Mount {
    volume: "superuser",
    dir: "/etc/tandem/superuser",
};
const REPLICATION_MOUNT: Mount = Mount {
    volume: "replication",
    dir: "/etc/tandem/replication",
};
const TOKEN_MOUNT: Mount = Mount {
    volume: "agent-token",
    dir: "/etc/tandem/token",
};
const CONFIG_MOUNT: Mount = Mount {
    volume: "config",
    dir: "/etc/tandem/config",
};

/// The StatefulSet of a cluster.
pub fn stateful_set(cluster: &ValidCluster) -> StatefulSet {
    let name = &cluster.name;
    let spec = &cluster.spec;
    let grace = (spec.switchover.shutdown_timeout.duration().as_secs() as i64)
        .saturating_add(GRACE_MARGIN_SECONDS)
        .max(MIN_GRACE_SECONDS);
    StatefulSet {
        metadata: child_meta(cluster, name.clone()),
        spec: StatefulSetSpec {
            replicas: Some(spec.instances),
            service_name: Some(keys::service_pods(name)),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(name)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container(cluster)],
                    volumes: Some(volumes(cluster)),
                    affinity: Some(anti_affinity(name)),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        fs_group_change_policy: Some("OnRootMismatch".into()),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    termination_grace_period_seconds: Some(grace),
                    // The agent holds no Kubernetes credentials (DESIGN.md §2).
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![pgdata_claim(cluster)]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

fn container(cluster: &ValidCluster) -> Container {
    Container {
        name: CONTAINER.into(),
        image: Some(cluster.image.clone()),
        command: Some(vec!["tandem".into(), "agent".into()]),
        env: Some(agent_env(cluster)),
        ports: Some(vec![
            container_port(PORT_POSTGRES, keys::POSTGRES_PORT),
            container_port(PORT_AGENT, keys::AGENT_PORT),
        ]),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        resources: cluster.spec.resources.as_ref().map(resources),
        volume_mounts: Some(vec![
            VolumeMount {
                name: PGDATA_VOLUME.into(),
                mount_path: PGDATA_MOUNT.into(),
                ..VolumeMount::default()
            },
            read_only_mount(&SUPERUSER_MOUNT),
            read_only_mount(&REPLICATION_MOUNT),
            read_only_mount(&TOKEN_MOUNT),
            read_only_mount(&CONFIG_MOUNT),
        ]),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The env of the agent contract (notes/agent-contract.md).
pub fn agent_env(cluster: &ValidCluster) -> Vec<EnvVar> {
    let name = &cluster.name;
    let ns = &cluster.namespace;
    let pods = keys::service_pods(name);
    let first = keys::instance_name(name, 0);
    vec![
        value("TANDEM_CLUSTER", name),
        field("TANDEM_INSTANCE", "metadata.name"),
        field("TANDEM_NAMESPACE", "metadata.namespace"),
        value("TANDEM_DATA_DIR", DATA_DIR),
        value("TANDEM_PG_PORT", &keys::POSTGRES_PORT.to_string()),
        value("TANDEM_PG_LISTEN", "*"),
        value("TANDEM_LISTEN", &format!("0.0.0.0:{}", keys::AGENT_PORT)),
        // $(VAR) is expanded by the kubelet from the variable defined above.
        value(
            "TANDEM_ADVERTISE_HOST",
            &format!("$(TANDEM_INSTANCE).{pods}.{ns}.svc"),
        ),
        value("TANDEM_TOKEN_FILE", &format!("{}/token", TOKEN_MOUNT.dir)),
        secret_key(
            "TANDEM_SUPERUSER",
            &SecretKind::Superuser.name(name),
            KEY_USERNAME,
        ),
        value(
            "TANDEM_SUPERUSER_PASSWORD_FILE",
            &format!("{}/password", SUPERUSER_MOUNT.dir),
        ),
        secret_key(
            "TANDEM_REPLICATION_USER",
            &SecretKind::Replication.name(name),
            KEY_USERNAME,
        ),
        value(
            "TANDEM_REPLICATION_PASSWORD_FILE",
            &format!("{}/password", REPLICATION_MOUNT.dir),
        ),
        // One template serves every ordinal: the agent of ordinal 0 sees its
        // own address here and initdb's instead (see the agent contract).
        value(
            "TANDEM_BOOTSTRAP_FROM",
            &format!("{first}.{pods}.{ns}.svc:{}", keys::POSTGRES_PORT),
        ),
        value(
            "TANDEM_PG_CONFIG_FILE",
            &format!("{}/{KEY_POSTGRESQL_CONF}", CONFIG_MOUNT.dir),
        ),
        value("TANDEM_LOG_FORMAT", "json"),
    ]
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A user name from a Secret; optional so that a user-supplied Secret without
/// `username` falls back to the agent's default.
fn secret_key(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(true),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(PORT_AGENT.into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn read_only_mount(m: &Mount) -> VolumeMount {
    VolumeMount {
        name: m.volume.into(),
        mount_path: m.dir.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Secret files readable by the pod's group (fsGroup) only.
const SECRET_MODE: i32 = 0o440;

fn volumes(cluster: &ValidCluster) -> Vec<Volume> {
    let secret = |m: &Mount, kind: SecretKind| Volume {
        name: m.volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(kind.name(&cluster.name)),
            default_mode: Some(SECRET_MODE),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    vec![
        secret(&SUPERUSER_MOUNT, SecretKind::Superuser),
        secret(&REPLICATION_MOUNT, SecretKind::Replication),
        secret(&TOKEN_MOUNT, SecretKind::AgentToken),
        Volume {
            name: CONFIG_MOUNT.volume.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: keys::config_map(&cluster.name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ]
}

/// Prefer spreading instances over nodes; still schedule when there are fewer nodes.
fn anti_affinity(cluster: &str) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(cluster)),
                            ..LabelSelector::default()
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn pgdata_claim(cluster: &ValidCluster) -> PersistentVolumeClaim {
    let storage = &cluster.spec.storage;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(PGDATA_VOLUME.into()),
            labels: Some(pod_labels(&cluster.name)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

#[cfg(test)]
#[path = "statefulset_tests.rs"]
mod tests;

/// The spec's compute resources as the pod spec carries them.
fn resources(r: &Resources) -> ResourceRequirements {
    let quantities = |m: &BTreeMap<String, crate::api::Quantity>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.0.clone())))
                .collect()
        })
    };
    ResourceRequirements {
        limits: quantities(&r.limits),
        requests: quantities(&r.requests),
        ..ResourceRequirements::default()
    }
}
