//! `DbCluster.status`: the observed cluster and the HA state machine (the
//! transition in progress and the history of finished ones).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cluster::ReplicationSpec;
use super::transition::{
    HistoryKind, HistoryOutcome, TransitionData, TransitionKind, TransitionStep,
};
use super::units::Lsn;

/// Most history entries kept in status.
pub const HISTORY_LIMIT: usize = 20;

/// Observed state of a DbCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DbClusterStatus {
    /// Overall state of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The instance that is the writable primary now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,

    /// The instance that should be primary; differs from currentPrimary during a switchover or failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,

    /// PostgreSQL timeline of the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,

    /// Ready instances out of all, as shown by kubectl (for example 3/3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_instances: Option<String>,

    /// Whether automation (failover, rejoin) is paused.
    #[serde(default)]
    pub paused: bool,

    /// Why the operator would act but does not (paused, no eligible candidate, lagging candidate, lease not expired…), with the figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,

    /// Every instance as last observed.
    #[serde(default)]
    pub instances: Vec<InstanceStatus>,

    /// The largest lag of a standby behind the primary, in bytes (kubectl get -o wide: Lag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_bytes: Option<i64>,

    /// Each standby's synchronous state as the primary reports it, for example `main-1=quorum main-2=quorum` (kubectl get -o wide: Sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_states: Option<String>,

    /// The transition in progress, if any; its step is recorded before it is carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<Transition>,

    /// The last transitions and requests, newest last (at most 20).
    #[serde(default)]
    pub history: Vec<HistoryEntry>,

    /// Ready, PrimaryAvailable, ReplicationHealthy, Paused.
    #[serde(default)]
    pub conditions: Vec<Condition>,

    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The primary's fencing lease as the operator last renewed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,

    /// The synchronous standby set last confirmed on the primary (sync mode); failover under dataDurability required promotes only from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,

    /// The replication settings in force, and a change of spec.replication that was refused or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<DurabilityStatus>,
}

/// The replication settings the engine runs the primary with. A change of
/// spec.replication becomes `applied` once the primary confirmed it (a
/// DurabilityChange transition); a change that cannot be met is refused and
/// changes nothing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DurabilityStatus {
    /// The replication settings in force.
    pub applied: ReplicationSpec,
    /// spec.replication as last refused (it cannot be met with these instances); tried again whenever it could be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<ReplicationSpec>,
    /// spec.replication as last failed (the primary did not take it); tried again once spec.replication changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<ReplicationSpec>,
}

/// The primary's fencing lease, as the operator grants it: the longest the
/// holder may write without the operator is TTL past `renewedAt`, or TTL past
/// the moment a member of `peers` stopped vouching for it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseStatus {
    /// The instance holding the lease.
    pub holder: String,
    /// When the last renewal was sent (RFC 3339): it runs from the holder's
    /// status answer before it, so the holder's lease never outlasts this + TTL.
    pub renewed_at: String,
    /// The lease's time-to-live in milliseconds.
    pub ttl_ms: i64,
    /// The lease epoch: it grows before every promotion, and no member
    /// vouches for a primary of a lower one once told of it.
    #[serde(default)]
    pub epoch: u64,
    /// The members named as peers in every renewal sent to this holder: the
    /// peer list the holder has is one of those, so it contains all of these.
    #[serde(default)]
    pub peers: Vec<String>,
    /// How long before the lease's end the holder fences postgres, as its
    /// agent said when the renewal was sent; absent: at the end. The engine's
    /// margin covers only what is left of the fence after the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_lead_ms: Option<i64>,
}

/// A synchronous standby set confirmed on the primary.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// The primary the set was confirmed on.
    pub primary: String,
    /// How many of the standbys confirm each commit (ANY n); 0 when commits do not wait.
    pub quorum: i32,
    /// The standbys named in synchronous_standby_names.
    #[serde(default)]
    pub standbys: Vec<String>,
}

/// Overall state of a cluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Instances are being created and have not all become ready.
    Creating,
    /// A primary is writable and every standby streams.
    Healthy,
    /// A primary is writable but some instance is missing or behind.
    Degraded,
    /// The primary failed; a standby is being promoted.
    FailingOver,
    /// A planned switchover is running.
    SwitchingOver,
    /// An instance is rejoining as a standby (rewind).
    Rejoining,
    /// An instance is being re-cloned from the primary.
    Recloning,
    /// Automation is paused.
    Paused,
    /// No writable primary and nothing tandem can do on its own; see blockedBy and conditions.
    Failed,
}

/// One instance as observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Instance (pod) name.
    pub name: String,
    /// Role: primary, standby, learner, fenced, down or unknown.
    #[serde(default)]
    pub role: InstanceRole,
    /// PostgreSQL accepts connections in its expected role.
    #[serde(default)]
    pub ready: bool,
    /// Timeline PostgreSQL is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
    /// Current WAL position (received position on a standby).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<Lsn>,
    /// Bytes behind the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// Standby: seconds since the last replayed transaction committed on the primary (0 when all received WAL is replayed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// Standby: bytes received but not yet replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lag_bytes: Option<i64>,
    /// Standby: how it takes part in synchronous replication, as the primary's pg_stat_replication says (async, potential, sync, quorum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_state: Option<String>,
    /// The instance this standby streams from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Standby: last time its walreceiver heard from the upstream (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_last_seen: Option<String>,
    /// Promotion priority 0 to 9 (0 = learner).
    #[serde(default)]
    pub priority: i32,
    /// Last time the instance's agent answered (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Health checks, each OK, WARNING or CRITICAL with its figure.
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
    /// Since when the instance has not been healthy in its role (RFC 3339); absent while healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_since: Option<String>,
    /// Why the instance's agent did not answer the last poll; absent when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_unanswered: Option<AgentUnanswered>,
    /// While a re-clone (pg_basebackup) or rewind (pg_rewind) runs on it: bytes done and total, percent, and how long since it last moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<super::agent::ToolProgress>,
}

/// Why an agent did not answer a status poll: a bounded value (status,
/// `blockedBy`, metric label).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AgentUnanswered {
    /// No answer within the poll timeout.
    Timeout,
    /// Nothing listens at the agent's address (connection refused).
    ConnectionRefused,
    /// The agent refused the bearer token (401): the token does not match.
    Unauthorized,
    /// The agent answered, but not as the agent protocol says (another status, a body that does not decode).
    BadAnswer,
    /// Any other transport failure (no route, reset, DNS).
    Unreachable,
}

impl AgentUnanswered {
    /// snake_case label value for metrics.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ConnectionRefused => "connection_refused",
            Self::Unauthorized => "unauthorized",
            Self::BadAnswer => "bad_answer",
            Self::Unreachable => "unreachable",
        }
    }

    /// How `blockedBy` says it, after "<instance>'s agent does not answer".
    pub fn explain(self) -> &'static str {
        match self {
            Self::Timeout => " (timed out)",
            Self::ConnectionRefused => " (connection refused: nothing listens at its address)",
            Self::Unauthorized => ": it refuses the token (401, the token does not match)",
            Self::BadAnswer => ": its answer is not the agent protocol's",
            Self::Unreachable => " (network error)",
        }
    }
}

/// Role of an instance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceRole {
    /// The writable primary.
    Primary,
    /// A streaming standby that can be promoted.
    Standby,
    /// A standby with priority 0: never promoted, never synchronous.
    Learner,
    /// Taken out of service so it cannot accept writes.
    Fenced,
    /// Not running or not reachable.
    Down,
    /// Not observed yet.
    #[default]
    Unknown,
}

/// One health check of an instance (as `repmgr node check` prints them).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Check name: role, replication_lag, archive_ready, upstream, downstream, slots, data_directory.
    pub name: String,
    /// OK, WARNING or CRITICAL.
    pub state: CheckState,
    /// The figure behind the state (bytes, files, count), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
    /// Human-readable explanation.
    #[serde(default)]
    pub message: String,
}

/// Result of a health check.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckState {
    /// Fine.
    Ok,
    /// Needs attention.
    Warning,
    /// Blocks operations or endangers data.
    Critical,
}

/// A transition in progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// What is happening.
    pub kind: TransitionKind,
    /// The instance the transition acts on (the promotion target, the instance to rejoin…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The instance the transition moves away from (the old primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The step being carried out; recorded before it runs so a restarted operator resumes it.
    pub step: TransitionStep,
    /// When the transition started (RFC 3339).
    pub started_at: String,
    /// Why it started.
    #[serde(default)]
    pub reason: String,
    /// Step-specific facts the transition needs to resume (for example the old primary's last LSN).
    #[serde(default, skip_serializing_if = "TransitionData::is_empty")]
    pub data: TransitionData,
}

/// A finished transition or request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// What it was.
    pub kind: HistoryKind,
    /// The instance it moved away from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The instance it acted on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// How it ended.
    pub outcome: HistoryOutcome,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// How long it took, in milliseconds.
    #[serde(default)]
    pub duration_ms: i64,
    /// What happened, with the figures (for failovers the RPO accounting).
    #[serde(default)]
    pub message: String,
    /// Failover only: last LSN known for the old primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_primary_lsn: Option<Lsn>,
    /// Failover only: LSN of the promoted standby when it was promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_lsn: Option<Lsn>,
    /// Failover only: bytes that may have been lost (0 under sync with dataDurability
    /// required), from the last LSN polled: a lower bound of what the old primary wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_possibly_lost: Option<i64>,
    /// Failover only, once the old primary rejoined: the WAL its rewind
    /// actually discarded (from where its history diverged to its end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_discarded: Option<i64>,
    /// Failover only: the longest the old primary may have accepted writes
    /// after it was first seen failing (until its agent confirmed the stop,
    /// the platform saw it end, or its lease provably ran out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_window_ms: Option<i64>,
    /// Switchover and dry-run: every precheck with its figure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<HealthCheck>,
}

/// A status condition, as in Kubernetes' metav1.Condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, PrimaryAvailable, ReplicationHealthy or Paused.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// CamelCase reason.
    #[serde(default)]
    pub reason: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// When status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Condition types.
pub const COND_READY: &str = "Ready";
pub const COND_PRIMARY_AVAILABLE: &str = "PrimaryAvailable";
pub const COND_REPLICATION_HEALTHY: &str = "ReplicationHealthy";
pub const COND_PAUSED: &str = "Paused";

impl HistoryEntry {
    /// An entry with no instance, duration, positions or checks.
    pub fn new(
        kind: HistoryKind,
        outcome: HistoryOutcome,
        started_at: String,
        message: String,
    ) -> Self {
        HistoryEntry {
            kind,
            from: None,
            to: None,
            outcome,
            started_at,
            duration_ms: 0,
            message,
            old_primary_lsn: None,
            promoted_lsn: None,
            bytes_possibly_lost: None,
            bytes_discarded: None,
            write_window_ms: None,
            checks: Vec::new(),
        }
    }
}

impl DbClusterStatus {
    /// Append to history, keeping at most [`HISTORY_LIMIT`] entries.
    pub fn push_history(&mut self, entry: HistoryEntry) {
        self.history.push(entry);
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }

    /// Condition of this type, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
