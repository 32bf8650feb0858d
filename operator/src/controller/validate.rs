//! Semantic validation of a DbCluster into one typed value the builders use
//! (what the CRD schema cannot express). Pure: no I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use super::error::{Error, Invalid};
use crate::api::{keys, DbCluster, DbClusterSpec, ReplicationMode, MANAGED_PARAMETERS};

/// Longest DbCluster name: child names (`<name>-replication`, pod `<name>-15`,
/// the StatefulSet's controller-revision-hash label) must stay within 63 characters.
pub const MAX_NAME_LEN: usize = 40;

/// Operator-wide defaults the spec may leave out.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Image used when `spec.image` is absent.
    pub postgres_image: String,
}

/// A DbCluster that passed validation: everything the builders need, checked.
#[derive(Debug, Clone)]
pub struct ValidCluster {
    /// metadata.name.
    pub name: String,
    /// metadata.namespace.
    pub namespace: String,
    /// metadata.generation.
    pub generation: Option<i64>,
    /// Controller owner reference pointing at the DbCluster.
    pub owner: OwnerReference,
    /// Container image (spec.image or the operator's default).
    pub image: String,
    /// Automation paused by spec.paused or the tandem.dev/paused annotation.
    pub paused: bool,
    /// The spec as written (defaults applied by serde).
    pub spec: DbClusterSpec,
    /// `status.currentPrimary`: the pod the primary PodDisruptionBudget keeps.
    pub current_primary: Option<String>,
}

/// Check the object and resolve defaults.
pub fn validate(dc: &DbCluster, defaults: &Defaults) -> Result<ValidCluster, Error> {
    let name = dc.name_any();
    let namespace = dc.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let owner = dc
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let spec = &dc.spec;
    let mut problems = Vec::new();

    check_name(&name, &mut problems);
    check_parameters(spec, &mut problems);
    // On a running cluster a change of spec.replication that cannot be met
    // is the engine's to refuse (history, Event, the settings in force kept),
    // while the cluster stays driven; only a new cluster's is invalid here.
    let replication_change = dc
        .status
        .as_ref()
        .and_then(|s| s.durability.as_ref())
        .is_some_and(|d| d.applied != spec.replication);
    check_instances(spec, !replication_change, &mut problems);

    if spec.switchover.archive_ready_warning > spec.switchover.archive_ready_critical {
        problems.push(format!(
            "switchover.archiveReadyWarning ({}) must not exceed switchover.archiveReadyCritical ({})",
            spec.switchover.archive_ready_warning, spec.switchover.archive_ready_critical
        ));
    }
    if spec.failover.lease_ttl.duration().is_zero() {
        problems.push("failover.leaseTtl must be longer than 0s".to_string());
    }
    if let Some(cmd) = &spec.archive.command {
        if cmd.contains(['\n', '\r', '\0']) {
            problems.push("archive.command must be a single line".to_string());
        }
    }

    let image = spec
        .image
        .clone()
        .filter(|i| !i.trim().is_empty())
        .unwrap_or_else(|| defaults.postgres_image.clone());
    if image.trim().is_empty() {
        problems
            .push("spec.image is empty and the operator has no default postgres image".to_string());
    }

    if !problems.is_empty() {
        return Err(Error::InvalidSpec(Invalid { problems }));
    }
    let paused = spec.is_paused()
        || dc
            .annotations()
            .get(keys::ANN_PAUSED)
            .is_some_and(|v| v == "true");
    Ok(ValidCluster {
        name,
        namespace,
        generation: dc.meta().generation,
        owner,
        image,
        paused,
        current_primary: dc.status.as_ref().and_then(|s| s.current_primary.clone()),
        spec: spec.0.clone(),
    })
}

fn check_name(name: &str, problems: &mut Vec<String>) {
    // Service names are DNS-1035 labels: a letter first.
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        problems.push(format!(
            "metadata.name {name:?} must start with a lowercase letter (it names Services)"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        problems.push(format!(
            "metadata.name {name:?} is {} characters long; at most {MAX_NAME_LEN} leave room for the names of pods, Services and Secrets",
            name.len()
        ));
    }
}

/// The parameters' names and values (shared with `tandem local`'s manifest checks).
pub(crate) fn check_parameters(spec: &DbClusterSpec, problems: &mut Vec<String>) {
    for (key, value) in &spec.postgres.parameters {
        let lower = key.to_ascii_lowercase();
        if MANAGED_PARAMETERS.contains(&lower.as_str()) {
            problems.push(format!(
                "postgres.parameters.{key} is managed by tandem and cannot be set"
            ));
        } else if !is_parameter_name(key) {
            problems.push(format!(
                "postgres.parameters.{key:?} is not a PostgreSQL parameter name (letters, digits, _ and .)"
            ));
        }
        if value.contains(['\n', '\r', '\0']) {
            problems.push(format!("postgres.parameters.{key} must be a single line"));
        }
    }
}

fn is_parameter_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn check_instances(spec: &DbClusterSpec, sync_standbys: bool, problems: &mut Vec<String>) {
    let instances = spec.instances;
    if !(1..=crate::api::MAX_INSTANCES).contains(&instances) {
        problems.push(format!(
            "instances must be between 1 and {}, not {instances}",
            crate::api::MAX_INSTANCES
        ));
        return;
    }
    let mut seen = std::collections::BTreeSet::new();
    for o in &spec.instance_overrides {
        if o.ordinal < 0 || o.ordinal >= instances {
            problems.push(format!(
                "instanceOverrides ordinal {} names no instance (0 to {})",
                o.ordinal,
                instances - 1
            ));
        }
        if !seen.insert(o.ordinal) {
            problems.push(format!(
                "instanceOverrides names ordinal {} twice",
                o.ordinal
            ));
        }
        if let Some(p) = o.priority {
            if !(0..=9).contains(&p) {
                problems.push(format!(
                    "instanceOverrides ordinal {}: priority must be 0 to 9, not {p}",
                    o.ordinal
                ));
            }
        }
    }
    let promotable = (0..instances as u32)
        .filter(|&ord| spec.priority_of(ord) > 0)
        .count() as i32;
    if promotable == 0 {
        problems.push(
            "every instance has priority 0: at least one must be able to be primary".to_string(),
        );
    }
    if sync_standbys && spec.replication.mode == ReplicationMode::Sync {
        // One promotable instance is the primary; learners are never synchronous.
        let sync_capable = (promotable - 1).max(0);
        if spec.replication.sync_standbys > sync_capable {
            problems.push(format!(
                "replication.syncStandbys is {} but only {sync_capable} standbys can be synchronous (instances with priority > 0 besides the primary); lower syncStandbys or add instances",
                spec.replication.sync_standbys
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::build::fixtures::{cluster, Fixture};

    fn problems(f: Fixture) -> Vec<String> {
        match validate(&f.0, &Fixture::defaults()) {
            Err(Error::InvalidSpec(invalid)) => invalid.problems,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => Vec::new(),
        }
    }

    #[test]
    fn default_cluster_is_valid_and_gets_the_default_image() {
        let v = cluster().valid();
        assert_eq!(v.image, "example.org/tandem-postgres:17");
        assert_eq!(v.namespace, "db");
        assert!(!v.paused);
    }

    #[test]
    fn managed_parameters_are_refused() {
        let p = problems(cluster().parameter("synchronous_standby_names", "*"));
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("synchronous_standby_names is managed by tandem"),
            "{p:?}"
        );
        assert_eq!(problems(cluster().parameter("Port", "5433")).len(), 1);
    }

    #[test]
    fn multi_line_parameter_values_are_refused() {
        let p = problems(cluster().parameter("work_mem", "4MB\nport = 1"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("single line"));
    }

    #[test]
    fn malformed_parameter_names_are_refused() {
        assert_eq!(problems(cluster().parameter("work mem", "4MB")).len(), 1);
        assert!(problems(cluster().parameter("auto_explain.log_min_duration", "1s")).is_empty());
    }

    #[test]
    fn sync_mode_needs_enough_promotable_standbys() {
        assert!(problems(cluster().instances(3).sync(2)).is_empty());
        // ordinal 2 is a learner: only one standby can be synchronous.
        let p = problems(cluster().instances(3).sync(2).priority(2, 0));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("syncStandbys is 2 but only 1"), "{p:?}");
        assert!(problems(cluster().instances(3).sync(1).priority(2, 0)).is_empty());
    }

    #[test]
    fn a_cluster_of_learners_is_refused() {
        let p = problems(cluster().instances(1).priority(0, 0));
        assert!(
            p.iter()
                .any(|m| m.contains("every instance has priority 0")),
            "{p:?}"
        );
    }

    #[test]
    fn overrides_must_name_existing_distinct_ordinals() {
        assert_eq!(problems(cluster().instances(3).priority(3, 1)).len(), 1);
        assert_eq!(problems(cluster().priority(1, 1).priority(1, 2)).len(), 1);
    }

    #[test]
    fn warning_threshold_above_critical_is_refused() {
        let mut f = cluster();
        f.0.spec.switchover.archive_ready_warning = 200;
        assert_eq!(problems(f).len(), 1);
    }

    #[test]
    fn long_or_numeric_names_are_refused() {
        let mut f = cluster();
        f.0.metadata.name = Some("a".repeat(MAX_NAME_LEN + 1));
        assert_eq!(problems(f).len(), 1);
        let mut f = cluster();
        f.0.metadata.name = Some("1db".into());
        assert_eq!(problems(f).len(), 1);
    }

    #[test]
    fn pause_annotation_pauses() {
        let mut f = cluster();
        f.0.metadata.annotations =
            Some([(keys::ANN_PAUSED.to_string(), "true".to_string())].into());
        assert!(f.valid().paused);
    }

    #[test]
    fn missing_namespace_is_a_metadata_error_not_a_spec_error() {
        let mut f = cluster();
        f.0.metadata.namespace = None;
        assert!(matches!(
            validate(&f.0, &Fixture::defaults()),
            Err(Error::MissingMetadata("namespace"))
        ));
    }
}
