//! Unit tests of the StatefulSet builder against small fixtures.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};

use super::*;
use crate::controller::build::fixtures::cluster;

fn pod_spec(sts: &StatefulSet) -> PodSpec {
    sts.spec.template.spec.clone().unwrap_or_default()
}

fn postgres_container(sts: &StatefulSet) -> Container {
    pod_spec(sts)
        .containers
        .into_iter()
        .find(|c| c.name == CONTAINER)
        .unwrap_or_default()
}

fn env_map(c: &Container) -> BTreeMap<String, EnvVar> {
    c.env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect()
}

#[test]
fn replicas_follow_instances_with_parallel_ondelete_pods() {
    let sts = stateful_set(&cluster().instances(5).valid());
    let spec = sts.spec;
    assert_eq!(spec.replicas, Some(5));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(
        spec.update_strategy.and_then(|u| u.type_).as_deref(),
        Some("OnDelete")
    );
    assert_eq!(spec.service_name.as_deref(), Some("main-pods"));
}

#[test]
fn pod_template_has_cluster_labels_but_no_role() {
    let sts = stateful_set(&cluster().valid());
    let labels = sts
        .spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert_eq!(
        labels.get("tandem.dev/cluster").map(String::as_str),
        Some("main")
    );
    assert_eq!(
        labels.get("app.kubernetes.io/name").map(String::as_str),
        Some("tandem")
    );
    assert_eq!(
        labels.get("app.kubernetes.io/instance").map(String::as_str),
        Some("main")
    );
    assert!(!labels.contains_key("tandem.dev/role"));
}

#[test]
fn selector_matches_template_labels() {
    let sts = stateful_set(&cluster().valid());
    let spec = sts.spec;
    let template = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    for (k, v) in spec.selector.match_labels.unwrap_or_default() {
        assert_eq!(template.get(&k), Some(&v), "selector label {k}");
    }
}

#[test]
fn container_runs_the_agent_with_the_contract_env() {
    let sts = stateful_set(&cluster().valid());
    let c = postgres_container(&sts);
    assert_eq!(
        c.command,
        Some(vec!["tandem".to_string(), "agent".to_string()])
    );
    assert_eq!(c.image.as_deref(), Some("example.org/tandem-postgres:17"));
    let env = env_map(&c);
    let val = |k: &str| env.get(k).and_then(|e| e.value.clone());
    assert_eq!(val("TANDEM_CLUSTER").as_deref(), Some("main"));
    assert_eq!(
        val("TANDEM_DATA_DIR").as_deref(),
        Some("/var/lib/postgresql/data/pgdata")
    );
    assert_eq!(val("TANDEM_PG_PORT").as_deref(), Some("5432"));
    assert_eq!(val("TANDEM_PG_LISTEN").as_deref(), Some("*"));
    assert_eq!(val("TANDEM_LISTEN").as_deref(), Some("0.0.0.0:8000"));
    assert_eq!(
        val("TANDEM_ADVERTISE_HOST").as_deref(),
        Some("$(TANDEM_INSTANCE).main-pods.db.svc")
    );
    assert_eq!(
        val("TANDEM_TOKEN_FILE").as_deref(),
        Some("/etc/tandem/token/token")
    );
    assert_eq!(
        val("TANDEM_SUPERUSER_PASSWORD_FILE").as_deref(),
        Some("/etc/tandem/superuser/password")
    );
    assert_eq!(
        val("TANDEM_REPLICATION_PASSWORD_FILE").as_deref(),
        Some("/etc/tandem/replication/password")
    );
    assert_eq!(
        val("TANDEM_PG_CONFIG_FILE").as_deref(),
        Some("/etc/tandem/config/postgresql.conf")
    );
    assert_eq!(
        val("TANDEM_BOOTSTRAP_FROM").as_deref(),
        Some("main-0.main-pods.db.svc:5432")
    );
    assert_eq!(val("TANDEM_LOG_FORMAT").as_deref(), Some("json"));
    let field = |k: &str| {
        env.get(k)
            .and_then(|e| e.value_from.clone())
            .and_then(|f| f.field_ref)
            .map(|f| f.field_path)
    };
    assert_eq!(field("TANDEM_INSTANCE").as_deref(), Some("metadata.name"));
    assert_eq!(
        field("TANDEM_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    let secret = |k: &str| {
        env.get(k)
            .and_then(|e| e.value_from.clone())
            .and_then(|f| f.secret_key_ref)
            .map(|s| (s.name, s.key))
    };
    assert_eq!(
        secret("TANDEM_SUPERUSER"),
        Some(("main-superuser".into(), "username".into()))
    );
    assert_eq!(
        secret("TANDEM_REPLICATION_USER"),
        Some(("main-replication".into(), "username".into()))
    );
    // TANDEM_INSTANCE must come before TANDEM_ADVERTISE_HOST for $(…) expansion.
    let names: Vec<String> = c
        .env
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect();
    let pos = |k: &str| names.iter().position(|n| n == k);
    assert!(pos("TANDEM_INSTANCE") < pos("TANDEM_ADVERTISE_HOST"));
}

#[test]
fn secrets_and_config_are_mounted_as_files() {
    let sts = stateful_set(&cluster().valid());
    let spec = pod_spec(&sts);
    let volumes: BTreeMap<String, Volume> = spec
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    let secret_of = |v: &str| {
        volumes
            .get(v)
            .and_then(|v| v.secret.clone())
            .and_then(|s| s.secret_name)
    };
    assert_eq!(secret_of("superuser").as_deref(), Some("main-superuser"));
    assert_eq!(
        secret_of("replication").as_deref(),
        Some("main-replication")
    );
    assert_eq!(
        secret_of("agent-token").as_deref(),
        Some("main-agent-token")
    );
    assert_eq!(
        volumes
            .get("config")
            .and_then(|v| v.config_map.clone())
            .map(|c| c.name)
            .as_deref(),
        Some("main-config")
    );
    let mounts: BTreeMap<String, String> = postgres_container(&sts)
        .volume_mounts
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.name, m.mount_path))
        .collect();
    assert_eq!(
        mounts.get("pgdata").map(String::as_str),
        Some("/var/lib/postgresql/data")
    );
    assert_eq!(
        mounts.get("superuser").map(String::as_str),
        Some("/etc/tandem/superuser")
    );
    assert_eq!(
        mounts.get("replication").map(String::as_str),
        Some("/etc/tandem/replication")
    );
    assert_eq!(
        mounts.get("agent-token").map(String::as_str),
        Some("/etc/tandem/token")
    );
    assert_eq!(
        mounts.get("config").map(String::as_str),
        Some("/etc/tandem/config")
    );
}

#[test]
fn probes_hit_the_agent_port() {
    let c = postgres_container(&stateful_set(&cluster().valid()));
    let path_of = |p: Option<Probe>| p.and_then(|p| p.http_get).and_then(|h| h.path);
    assert_eq!(
        path_of(c.liveness_probe.clone()).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        path_of(c.readiness_probe.clone()).as_deref(),
        Some("/readyz")
    );
    let port = c.readiness_probe.and_then(|p| p.http_get).map(|h| h.port);
    assert_eq!(port, Some(IntOrString::String("agent".into())));
    let ports: Vec<i32> = c
        .ports
        .unwrap_or_default()
        .iter()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, vec![5432, 8000]);
}

#[test]
fn pvc_template_uses_size_and_storage_class() {
    let mut f = cluster();
    f.0.spec.storage.size = "20Gi".into();
    f.0.spec.storage.storage_class_name = Some("fast".into());
    let sts = stateful_set(&f.valid());
    let claims = sts.spec.volume_claim_templates.unwrap_or_default();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].metadata.name.as_deref(), Some("pgdata"));
    let spec = claims[0].spec.clone().unwrap_or_default();
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    let size = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned());
    assert_eq!(size, Some(Quantity("20Gi".into())));
}

#[test]
fn pods_run_non_root_without_privileges() {
    let sts = stateful_set(&cluster().valid());
    let spec = pod_spec(&sts);
    let pod = spec.security_context.clone().unwrap_or_default();
    assert_eq!(pod.run_as_non_root, Some(true));
    assert_eq!(pod.run_as_user, Some(999));
    assert_eq!(pod.fs_group, Some(999));
    let c = postgres_container(&sts)
        .security_context
        .unwrap_or_default();
    assert_eq!(c.allow_privilege_escalation, Some(false));
    assert_eq!(c.run_as_non_root, Some(true));
    assert_eq!(
        c.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(spec.automount_service_account_token, Some(false));
}

#[test]
fn instances_prefer_different_nodes() {
    let spec = pod_spec(&stateful_set(&cluster().valid()));
    let terms = spec
        .affinity
        .and_then(|a| a.pod_anti_affinity)
        .and_then(|a| a.preferred_during_scheduling_ignored_during_execution)
        .unwrap_or_default();
    assert_eq!(terms.len(), 1);
    assert_eq!(
        terms[0].pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
}

#[test]
fn grace_period_covers_the_shutdown_timeout() {
    let spec = pod_spec(&stateful_set(&cluster().valid()));
    // default shutdownTimeout 60s + margin
    assert_eq!(spec.termination_grace_period_seconds, Some(75));
}

#[test]
fn resources_come_from_the_spec() {
    use k8s_openapi::api::core::v1::ResourceRequirements;
    let mut f = cluster();
    f.0.spec.resources = Some(crate::api::Resources {
        limits: BTreeMap::from([("memory".to_string(), crate::api::Quantity("1Gi".into()))]),
        requests: BTreeMap::from([("cpu".to_string(), crate::api::Quantity("500m".into()))]),
    });
    let c = postgres_container(&stateful_set(&f.valid()));
    let want = ResourceRequirements {
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("1Gi".into()),
        )])),
        requests: Some(BTreeMap::from([(
            "cpu".to_string(),
            Quantity("500m".into()),
        )])),
        ..ResourceRequirements::default()
    };
    assert_eq!(c.resources, Some(want));
}

#[test]
fn a_parameter_change_leaves_the_pod_template_alone() {
    // Parameters reach running pods through the agent (POST /config, a
    // reload, a rolling restart for pending_restart), never by recreating
    // every pod at once: the template must not depend on them.
    let before = stateful_set(&cluster().instances(3).valid());
    let after = stateful_set(
        &cluster()
            .instances(3)
            .parameter("work_mem", "8MB")
            .parameter("max_connections", "150")
            .archive("cp %p /archive/%f")
            .valid(),
    );
    assert_eq!(before.spec.template, after.spec.template);
}
