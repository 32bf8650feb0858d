//! Label, annotation and object-name conventions, in one place.

/// API group of every tandem resource.
pub const GROUP: &str = "tandem.dev";

/// `app.kubernetes.io/name` on every object tandem creates.
pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the DbCluster's name.
pub const LABEL_APP_INSTANCE: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/managed-by` on every child object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of `app.kubernetes.io/name`.
pub const APP_NAME: &str = "tandem";
/// Value of `app.kubernetes.io/managed-by`.
pub const MANAGED_BY: &str = "tandem-operator";

/// The cluster a pod belongs to.
pub const LABEL_CLUSTER: &str = "tandem.dev/cluster";
/// The pod (instance) name.
pub const LABEL_INSTANCE: &str = "tandem.dev/instance";
/// The role the operator gave the pod; the Services select on it. The operator is its only writer.
pub const LABEL_ROLE: &str = "tandem.dev/role";

/// Values of [`LABEL_ROLE`].
pub const ROLE_PRIMARY: &str = "primary";
pub const ROLE_STANDBY: &str = "standby";
pub const ROLE_FENCED: &str = "fenced";
pub const ROLE_UNKNOWN: &str = "unknown";

/// `tandem.dev/switchover=<instance>|any`: switch the primary over.
pub const ANN_SWITCHOVER: &str = "tandem.dev/switchover";
/// `tandem.dev/switchover-dry-run=<instance>|any`: run the switchover prechecks only.
pub const ANN_SWITCHOVER_DRY_RUN: &str = "tandem.dev/switchover-dry-run";
/// `tandem.dev/promote=<instance>`: make this standby primary while the primary is down or unreachable.
pub const ANN_PROMOTE: &str = "tandem.dev/promote";
/// `tandem.dev/force=true`: with a switchover, override the archive-backlog
/// precheck; with a promotion, promote a learner, a candidate behind others or,
/// under sync+required, one that was not synchronous.
pub const ANN_FORCE: &str = "tandem.dev/force";
/// `tandem.dev/restart=<instance>|all`: restart instances (standbys first).
pub const ANN_RESTART: &str = "tandem.dev/restart";
/// `tandem.dev/rejoin=<instance>`: rejoin an instance as a standby (rewind if needed).
pub const ANN_REJOIN: &str = "tandem.dev/rejoin";
/// `tandem.dev/rejoin-dry-run=<instance>`: say what a rejoin would do (nothing,
/// repoint, rewind or re-clone, and why) without doing it; works on a running standby.
pub const ANN_REJOIN_DRY_RUN: &str = "tandem.dev/rejoin-dry-run";
/// `tandem.dev/reclone=<instance>`: re-clone an instance from the primary.
pub const ANN_RECLONE: &str = "tandem.dev/reclone";
/// `tandem.dev/paused=true`: no automatic failover, rejoin or rolling restart; requests still run (same as `spec.paused`).
pub const ANN_PAUSED: &str = "tandem.dev/paused";

/// Every request annotation the operator acts on.
pub const REQUEST_ANNOTATIONS: &[&str] = &[
    ANN_SWITCHOVER,
    ANN_SWITCHOVER_DRY_RUN,
    ANN_PROMOTE,
    ANN_FORCE,
    ANN_RESTART,
    ANN_REJOIN,
    ANN_REJOIN_DRY_RUN,
    ANN_RECLONE,
];

/// Value accepted by switchover annotations to let tandem pick the candidate.
pub const ANY: &str = "any";
/// Value accepted by the restart annotation to restart every instance.
pub const ALL: &str = "all";

/// The agent's HTTP port in every pod.
pub const AGENT_PORT: u16 = 8000;
/// PostgreSQL's port in every pod.
pub const POSTGRES_PORT: u16 = 5432;

/// Name of instance `ordinal` of cluster `cluster` (the StatefulSet pod name).
pub fn instance_name(cluster: &str, ordinal: u32) -> String {
    format!("{cluster}-{ordinal}")
}

/// Ordinal of an instance name of `cluster`, if it is one.
pub fn instance_ordinal(cluster: &str, instance: &str) -> Option<u32> {
    let rest = instance.strip_prefix(cluster)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

/// `<name>-rw`: the Service that follows the primary.
pub fn service_rw(cluster: &str) -> String {
    format!("{cluster}-rw")
}
/// `<name>-ro`: the Service over streaming standbys.
pub fn service_ro(cluster: &str) -> String {
    format!("{cluster}-ro")
}
/// `<name>-r`: the Service over any ready instance.
pub fn service_r(cluster: &str) -> String {
    format!("{cluster}-r")
}
/// `<name>-pods`: the headless Service giving pods stable DNS names.
pub fn service_pods(cluster: &str) -> String {
    format!("{cluster}-pods")
}
/// `<name>-superuser`: the Secret with the superuser credentials.
pub fn secret_superuser(cluster: &str) -> String {
    format!("{cluster}-superuser")
}
/// `<name>-replication`: the Secret with the replication user's credentials.
pub fn secret_replication(cluster: &str) -> String {
    format!("{cluster}-replication")
}
/// `<name>-agent-token`: the Secret with the bearer token of the agents' API.
pub fn secret_agent_token(cluster: &str) -> String {
    format!("{cluster}-agent-token")
}
/// `<name>-config`: the ConfigMap with the rendered PostgreSQL parameters.
pub fn config_map(cluster: &str) -> String {
    format!("{cluster}-config")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_round_trip() {
        assert_eq!(instance_name("main", 2), "main-2");
        assert_eq!(instance_ordinal("main", "main-2"), Some(2));
        assert_eq!(instance_ordinal("main", "main-12"), Some(12));
        assert_eq!(instance_ordinal("main", "main-02"), None);
        assert_eq!(instance_ordinal("main", "main-"), None);
        assert_eq!(instance_ordinal("main", "other-1"), None);
        assert_eq!(instance_ordinal("main", "main-x"), None);
    }
}
