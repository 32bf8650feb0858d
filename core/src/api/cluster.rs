//! The `DbCluster` spec: its fields, defaults and schema validation. The
//! custom resource around it (kind, group, status subresource) is declared by
//! the operator, which wraps this spec.

use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use super::units::{ByteSize, DurationString};

/// Highest number of instances a cluster may have.
pub const MAX_INSTANCES: i32 = 16;
/// Priority given to instances without an override.
pub const DEFAULT_PRIORITY: i32 = 5;

/// The desired state of a highly available PostgreSQL cluster: one primary and streaming standbys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.replication.mode == 'async' || self.replication.syncStandbys < self.instances",
        "message": "replication.syncStandbys must be lower than instances: a synchronous cluster needs that many standbys besides the primary"
    },
    {
        "rule": "self.instanceOverrides.all(o, o.ordinal < self.instances)",
        "message": "instanceOverrides[].ordinal must name an existing instance (0 to instances-1)"
    },
    {
        "rule": "self.instanceOverrides.all(a, self.instanceOverrides.exists_one(b, b.ordinal == a.ordinal))",
        "message": "instanceOverrides may name each ordinal only once"
    }
]))]
pub struct DbClusterSpec {
    /// Number of PostgreSQL instances: one primary, the rest standbys (1 to 16).
    #[serde(default = "default_instances")]
    #[schemars(range(min = 1, max = 16))]
    pub instances: i32,

    /// Container image with PostgreSQL and the tandem agent. Defaults to the image the operator was configured with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// PostgreSQL settings.
    #[serde(default)]
    pub postgres: PostgresSpec,

    /// Persistent storage of each instance's data directory, immutable once the cluster exists. The volumes outlive the DbCluster: deleting it keeps them, and a DbCluster created again with the same name in the same namespace adopts their data (the instance with the most advanced copy becomes the primary).
    #[serde(default)]
    pub storage: StorageSpec,

    /// Replication durability: asynchronous or synchronous streaming.
    #[serde(default)]
    pub replication: ReplicationSpec,

    /// Automatic failover when the primary fails.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// Planned switchover prechecks and timeouts.
    #[serde(default)]
    pub switchover: SwitchoverSpec,

    /// How a failed or diverged instance rejoins the cluster.
    #[serde(default)]
    pub rejoin: RejoinSpec,

    /// How an instance is stopped when it is restarted (on request or for a parameter change).
    #[serde(default)]
    pub restart: RestartSpec,

    /// How the primary is restarted when a change needs a restart: `switchover` (default) promotes a standby first; `restart` restarts it in place.
    #[serde(default)]
    pub primary_update_method: PrimaryUpdateMethod,

    /// Per-instance settings, by ordinal (instance `<name>-<ordinal>`).
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub instance_overrides: Vec<InstanceOverride>,

    /// WAL archiving.
    #[serde(default)]
    pub archive: ArchiveSpec,

    /// Pause automation: no automatic failover, rejoin, rolling restart or rolling update while true (same as the annotation tandem.dev/paused=true). Requests (switchover, restart, rejoin, re-clone, promote) and spec changes still run.
    #[serde(default)]
    pub paused: bool,

    /// Compute resources of the PostgreSQL container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

fn default_instances() -> i32 {
    3
}

impl Default for DbClusterSpec {
    fn default() -> Self {
        Self {
            instances: default_instances(),
            image: None,
            postgres: PostgresSpec::default(),
            storage: StorageSpec::default(),
            replication: ReplicationSpec::default(),
            failover: FailoverSpec::default(),
            switchover: SwitchoverSpec::default(),
            rejoin: RejoinSpec::default(),
            restart: RestartSpec::default(),
            primary_update_method: PrimaryUpdateMethod::default(),
            instance_overrides: Vec::new(),
            archive: ArchiveSpec::default(),
            paused: false,
            resources: None,
        }
    }
}

/// PostgreSQL settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// postgresql.conf parameters, as strings (for example max_connections: "200"). Settings tandem manages itself (port, listen_addresses, primary_conninfo, synchronous_standby_names, synchronous_commit, wal_log_hints, hot_standby, archive_mode, archive_command) are refused.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

/// Persistent storage of each instance. Immutable once created: a
/// StatefulSet's volume claim templates cannot change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self == oldSelf",
        "message": "spec.storage is immutable: the volumes of existing instances keep their size and class (the StatefulSet's volume claim templates cannot change); to grow a volume, expand its PersistentVolumeClaim directly"
    }
]))]
pub struct StorageSpec {
    /// Size of each instance's volume, as a Kubernetes quantity (for example 10Gi).
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,

    /// StorageClass of the volumes; the cluster's default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> String {
    "10Gi".to_string()
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// Replication durability.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// `async`: the primary does not wait for standbys. `sync`: commits wait for `syncStandbys` standbys (quorum ANY n).
    #[serde(default)]
    pub mode: ReplicationMode,

    /// synchronous_commit on the primary in sync mode: on, remote_write, remote_apply or local.
    #[serde(default)]
    pub synchronous_commit: SynchronousCommit,

    /// How many standbys must confirm each commit in sync mode (synchronous_standby_names = ANY n (...)); must be lower than instances.
    #[serde(default = "default_sync_standbys")]
    #[schemars(range(min = 1, max = 15))]
    pub sync_standbys: i32,

    /// In sync mode, what happens while fewer standbys stream than needed: `preferred` drops to asynchronous commits until one returns; `required` keeps writes blocked rather than risk losing an acknowledged commit.
    #[serde(default)]
    pub data_durability: DataDurability,
}

fn default_sync_standbys() -> i32 {
    1
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        Self {
            mode: ReplicationMode::default(),
            synchronous_commit: SynchronousCommit::default(),
            sync_standbys: default_sync_standbys(),
            data_durability: DataDurability::default(),
        }
    }
}

/// Replication mode (also a `tandem local set` flag value).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// The primary does not wait for standbys.
    #[default]
    Async,
    /// Commits wait for synchronous standbys.
    Sync,
}

/// Values of PostgreSQL's synchronous_commit that tandem accepts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SynchronousCommit {
    /// Wait until standbys flushed the commit to disk.
    #[default]
    On,
    /// Wait until standbys wrote the commit (not yet flushed).
    RemoteWrite,
    /// Wait until standbys applied the commit (visible to their queries).
    RemoteApply,
    /// Wait only for the local flush.
    Local,
}

impl SynchronousCommit {
    /// The value as PostgreSQL spells it.
    pub fn as_pg(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::RemoteWrite => "remote_write",
            Self::RemoteApply => "remote_apply",
            Self::Local => "local",
        }
    }
}

/// What sync mode does while too few standbys stream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataDurability {
    /// Drop to asynchronous commits while no synchronous standby is there.
    #[default]
    Preferred,
    /// Keep writes blocked until a synchronous standby is back.
    Required,
}

/// Automatic failover.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Promote a standby automatically when the primary fails.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// How long the primary must be unhealthy before it counts as failed (for example 5s, 500ms).
    #[serde(default = "default_detection_timeout")]
    pub detection_timeout: DurationString,

    /// Extra wait after detection before acting.
    #[serde(default = "default_zero_duration")]
    pub delay: DurationString,

    /// Time-to-live of the primary's fencing lease: an isolated primary stops accepting writes once it has not been renewed for this long.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: DurationString,
}

fn default_true() -> bool {
    true
}

fn duration(s: &str) -> DurationString {
    s.parse()
        .unwrap_or_else(|_| unreachable!("built-in duration {s} parses"))
}

fn default_detection_timeout() -> DurationString {
    duration("5s")
}

fn default_zero_duration() -> DurationString {
    duration("0s")
}

fn default_lease_ttl() -> DurationString {
    duration("10s")
}

fn default_shutdown_timeout() -> DurationString {
    duration("60s")
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            detection_timeout: default_detection_timeout(),
            delay: default_zero_duration(),
            lease_ttl: default_lease_ttl(),
        }
    }
}

/// Switchover prechecks and timeouts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverSpec {
    /// Refuse a switchover while the candidate lags the primary by more than this (bytes or a size like 16Mi).
    #[serde(default = "default_max_lag")]
    pub max_lag_bytes: ByteSize,

    /// WAL files waiting to be archived on the primary at which a switchover is refused (overridable with tandem.dev/force=true) and the archive check turns CRITICAL.
    #[serde(default = "default_archive_ready_critical")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub archive_ready_critical: i32,

    /// WAL files waiting to be archived at which the archive check turns WARNING.
    #[serde(default = "default_archive_ready_warning")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub archive_ready_warning: i32,

    /// How long the old primary may take to shut down in fast mode during a switchover before the stop escalates to immediate.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: DurationString,

    /// How long the switchover's stop of the old primary first waits in smart mode for client sessions to end, before the fast stop (which rolls back open transactions). 0s (the default) starts at fast: writes pause for as short a time as possible.
    #[serde(default = "default_zero_duration")]
    pub smart_shutdown_timeout: DurationString,
}

fn default_max_lag() -> ByteSize {
    ByteSize(16 << 20)
}

fn default_archive_ready_critical() -> i32 {
    128
}

fn default_archive_ready_warning() -> i32 {
    64
}

impl Default for SwitchoverSpec {
    fn default() -> Self {
        Self {
            max_lag_bytes: default_max_lag(),
            archive_ready_critical: default_archive_ready_critical(),
            archive_ready_warning: default_archive_ready_warning(),
            shutdown_timeout: default_shutdown_timeout(),
            smart_shutdown_timeout: default_zero_duration(),
        }
    }
}

/// How a restart stops postgres: smart (client sessions may finish), then
/// fast (open transactions rolled back), then immediate, each bounded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartSpec {
    /// How long a restart waits in smart mode for client sessions to end before the fast stop; 0s starts at fast.
    #[serde(default = "default_smart_shutdown_timeout")]
    pub smart_shutdown_timeout: DurationString,

    /// How long the fast stop may take before it escalates to immediate.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: DurationString,
}

fn default_smart_shutdown_timeout() -> DurationString {
    duration("10s")
}

impl Default for RestartSpec {
    fn default() -> Self {
        Self {
            smart_shutdown_timeout: default_smart_shutdown_timeout(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

/// How failed instances rejoin.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejoinSpec {
    /// When pg_rewind cannot bring an instance back, move its data directory aside and re-clone it from the primary with pg_basebackup.
    #[serde(default = "default_true")]
    pub allow_reclone: bool,
    /// Longest a pg_rewind may run before it is stopped and the rejoin fails (e.g. `2h`). None by default: a rewind that makes progress runs as long as it needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind_timeout: Option<DurationString>,
    /// Longest a pg_basebackup (re-clone) may run before it is stopped and the re-clone fails (e.g. `6h`). None by default: a clone that makes progress runs as long as it needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_timeout: Option<DurationString>,
    /// A pg_rewind or pg_basebackup whose progress output does not move for this long is stopped and reported as stalled (history, Event). `0s` turns stall detection off.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout: DurationString,
}

fn default_stall_timeout() -> DurationString {
    duration("5m")
}

impl Default for RejoinSpec {
    fn default() -> Self {
        Self {
            allow_reclone: true,
            rewind_timeout: None,
            clone_timeout: None,
            stall_timeout: default_stall_timeout(),
        }
    }
}

impl RejoinSpec {
    /// The limits the agents apply to pg_rewind and pg_basebackup.
    pub fn limits(&self) -> super::agent::ToolLimits {
        super::agent::ToolLimits {
            rewind_timeout: self.rewind_timeout.clone(),
            clone_timeout: self.clone_timeout.clone(),
            stall_timeout: Some(self.stall_timeout.clone()),
        }
    }
}

/// How the primary is restarted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PrimaryUpdateMethod {
    /// Switch over to a standby, then restart the old primary as a standby.
    #[default]
    Switchover,
    /// Restart the primary in place (writes pause during the restart).
    Restart,
}

/// Settings of one instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceOverride {
    /// Ordinal of the instance (`<name>-<ordinal>`).
    #[schemars(range(min = 0, max = 15))]
    pub ordinal: i32,

    /// Promotion priority 0 to 9 (default 5). Failover and switchover=any prefer the most advanced standby, then the highest priority. 0 makes a learner: never promoted, never synchronous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 9))]
    pub priority: Option<i32>,
}

/// WAL archiving.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSpec {
    /// archive_command to run for each WAL segment (%p and %f as in PostgreSQL); archiving is off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub command: Option<String>,
}

/// Compute resources of a container, as Kubernetes spells them: resource
/// name (`cpu`, `memory`…) → quantity.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// The most of each resource the container may use.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
    /// What the container is guaranteed (defaults to the limits).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
}

/// A Kubernetes quantity (`500m`, `2Gi`, `1`), kept as written; checked by the
/// API server when the pod is created.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Quantity(pub String);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            Integer(i64),
            Number(f64),
        }
        Ok(Quantity(match Written::deserialize(d)? {
            Written::Text(s) => s,
            Written::Integer(i) => i.to_string(),
            Written::Number(f) => f.to_string(),
        }))
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A Kubernetes quantity: a number with an optional suffix (m, k, M, G, Ki, Mi, Gi…).",
            "x-kubernetes-int-or-string": true
        })
    }
}

/// postgresql.conf settings that tandem manages and users may not set.
pub const MANAGED_PARAMETERS: &[&str] = &[
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "synchronous_commit",
    "wal_log_hints",
    "hot_standby",
    "archive_mode",
    "archive_command",
    "data_directory",
    "hba_file",
    "ident_file",
];

impl DbClusterSpec {
    /// Priority of the instance with this ordinal (overrides, else the default).
    pub fn priority_of(&self, ordinal: u32) -> i32 {
        self.instance_overrides
            .iter()
            .find(|o| o.ordinal >= 0 && o.ordinal as u32 == ordinal)
            .and_then(|o| o.priority)
            .unwrap_or(DEFAULT_PRIORITY)
    }

    /// Whether automation is paused by the spec (the annotation is checked by callers).
    pub fn is_paused(&self) -> bool {
        self.paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spec_gets_documented_defaults() {
        let spec: DbClusterSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, DbClusterSpec::default());
        assert_eq!(spec.instances, 3);
        assert_eq!(spec.replication.mode, ReplicationMode::Async);
        assert_eq!(spec.failover.detection_timeout.duration().as_secs(), 5);
        assert_eq!(spec.switchover.max_lag_bytes.bytes(), 16 << 20);
        assert_eq!(spec.switchover.archive_ready_critical, 128);
        assert!(spec.rejoin.allow_reclone);
        assert_eq!(spec.primary_update_method, PrimaryUpdateMethod::Switchover);
    }

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        let r: Resources =
            serde_json::from_str(r#"{"limits":{"cpu":2,"memory":"1Gi"},"requests":{"cpu":0.5}}"#)
                .unwrap();
        assert_eq!(r.limits["cpu"], Quantity("2".into()));
        assert_eq!(r.limits["memory"], Quantity("1Gi".into()));
        assert_eq!(r.requests["cpu"], Quantity("0.5".into()));
        assert_eq!(
            serde_json::to_string(&r.limits).unwrap(),
            r#"{"cpu":"2","memory":"1Gi"}"#
        );
    }

    #[test]
    fn priorities_come_from_overrides() {
        let spec: DbClusterSpec =
            serde_json::from_str(r#"{"instanceOverrides":[{"ordinal":2,"priority":0}]}"#).unwrap();
        assert_eq!(spec.priority_of(2), 0);
        assert_eq!(spec.priority_of(1), DEFAULT_PRIORITY);
    }

    #[test]
    fn bad_values_are_refused_when_parsed() {
        assert!(
            serde_json::from_str::<DbClusterSpec>(r#"{"failover":{"detectionTimeout":"5"}}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<DbClusterSpec>(r#"{"replication":{"mode":"semi"}}"#).is_err()
        );
        assert!(serde_json::from_str::<DbClusterSpec>(
            r#"{"replication":{"synchronousCommit":"remote_apply"}}"#
        )
        .is_ok());
    }
}
