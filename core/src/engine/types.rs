//! What the engine is given: observations of every instance, user requests,
//! and the results of actions issued earlier. Plain data, no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::agent::CheckSettings;
pub use crate::api::SyncState;
use crate::api::{AgentUnanswered, HealthCheck, Lsn};

use super::action::{Action, RoleLabel};

/// Everything the platform learned since the last decision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observations {
    /// The DbCluster's name: instances are `<cluster>-<ordinal>`.
    pub cluster: String,
    /// metadata.generation of the DbCluster, copied to status.observedGeneration.
    #[serde(default)]
    pub generation: Option<i64>,
    /// The annotation `tandem.dev/paused=true` is set (spec.paused is read from the spec).
    #[serde(default)]
    pub paused_annotation: bool,
    /// One entry per instance the platform knows of; an instance of the spec
    /// that is missing here counts as not observed (agent unreachable).
    #[serde(default)]
    pub instances: Vec<InstanceObs>,
    /// Pending user requests (annotations / local control API), oldest first.
    #[serde(default)]
    pub requests: Vec<Request>,
    /// Outcomes of actions issued by earlier decisions that finished since.
    #[serde(default)]
    pub results: Vec<ActionResult>,
    /// How long a role label change may take to reach the platform's routing
    /// (ms): on Kubernetes kube-proxy applies endpoint changes at most once
    /// per its minimum sync period, 0 locally. A switchover lets this pass
    /// between dropping the old primary's label and stopping it, so the new
    /// primary's label is applied at once instead of after that period.
    #[serde(default)]
    pub service_settle_ms: u64,
}

/// What the platform knows about one instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceObs {
    /// Instance name (`<cluster>-<ordinal>`).
    pub name: String,
    /// What the platform (kubelet / local process table) says about the pod or process.
    #[serde(default)]
    pub platform: PlatformState,
    /// The role label / local endpoint role currently set for it.
    #[serde(default)]
    pub label: Option<RoleLabel>,
    /// The agent's status report of this poll; `None` when the agent did not answer.
    #[serde(default)]
    pub agent: Option<AgentReport>,
    /// Why the agent did not answer this poll, when the platform asked it and knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unanswered: Option<AgentUnanswered>,
    /// The instance runs from an outdated definition (Kubernetes: its pod's
    /// template revision is not the StatefulSet's update revision): the
    /// engine recreates it when the cluster is healthy (rolling update).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outdated: bool,
    /// The platform is deleting it (a pod in its termination grace period).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
    /// Its node is cordoned (Kubernetes: `spec.unschedulable`, as `kubectl
    /// drain` sets it): a primary there is switched over before it is evicted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unschedulable: bool,
}

/// The platform's knowledge of the process or pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PlatformState {
    /// Running as far as the platform knows.
    #[default]
    Running,
    /// Definitively dead: the platform saw its processes end (the local
    /// process exited; the kubelet reported its containers terminated). Its
    /// postgres cannot accept writes: failover need not wait for the
    /// detection timeout or the lease.
    Gone,
    /// Being created / restarted; not yet running.
    Starting,
    /// No longer there as far as the platform's API says (pod deleted or
    /// missing, replaced by a new pod, node lost), but nothing proves its
    /// processes stopped: failover may start at once, promotion still waits
    /// for the old primary's lease to run out.
    Vanished,
}

/// The agent's `/status` answer, reduced to what the engine needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    /// postgres is up and accepts connections.
    pub postgres_running: bool,
    /// postgres is in recovery (a standby). Meaningless when not running.
    pub in_recovery: bool,
    /// Timeline (of the running server, or from pg_controldata when stopped).
    #[serde(default)]
    pub timeline: Option<i64>,
    /// pg_current_wal_lsn on a primary.
    #[serde(default)]
    pub current_lsn: Option<Lsn>,
    /// pg_last_wal_receive_lsn on a standby.
    #[serde(default)]
    pub received_lsn: Option<Lsn>,
    /// pg_last_wal_replay_lsn on a standby.
    #[serde(default)]
    pub replayed_lsn: Option<Lsn>,
    /// Latest checkpoint location from pg_controldata while postgres is stopped
    /// (after a clean shutdown this is the shutdown checkpoint).
    #[serde(default)]
    pub checkpoint_lsn: Option<Lsn>,
    /// While stopped: whether it shut down cleanly (None when not known).
    #[serde(default)]
    pub clean_shutdown: Option<bool>,
    /// While stopped after a stop that was not clean: where its WAL ends.
    #[serde(default)]
    pub end_of_wal: Option<Lsn>,
    /// The instance this standby's walreceiver streams from (application of primary_conninfo).
    #[serde(default)]
    pub upstream: Option<String>,
    /// The walreceiver is streaming.
    #[serde(default)]
    pub streaming: bool,
    /// Standbys connected to this server (pg_stat_replication).
    #[serde(default)]
    pub standbys: Vec<ConnectedStandby>,
    /// Files in pg_wal/archive_status with `.ready`.
    #[serde(default)]
    pub archive_ready: Option<i64>,
    /// max_wal_senders.
    #[serde(default)]
    pub max_wal_senders: Option<i64>,
    /// max_replication_slots.
    #[serde(default)]
    pub max_replication_slots: Option<i64>,
    /// Replication slots in use (existing) on this server.
    #[serde(default)]
    pub slots_used: Option<i64>,
    /// The physical replication slots on this server and whether each is active.
    #[serde(default)]
    pub slots: Vec<SlotReport>,
    /// For each other instance: can this instance open a replication connection to it
    /// (the switchover precheck "the demotion candidate can reach the promotion candidate").
    #[serde(default)]
    pub replication_to: BTreeMap<String, bool>,
    /// The agent's lease, when it holds or recently held one.
    #[serde(default)]
    pub lease: Option<LeaseReport>,
    /// Standby: the primary it last vouched for, and how long ago (ms).
    #[serde(default)]
    pub vouched: Option<(String, i64)>,
    /// The agent fenced postgres (lease ran out) and will not start it as primary until told.
    #[serde(default)]
    pub fenced: bool,
    /// A parameter change waits for a restart.
    #[serde(default)]
    pub pending_restart: bool,
    /// pg_control's database system identifier.
    #[serde(default)]
    pub system_identifier: Option<String>,
    /// synchronous_standby_names in effect.
    #[serde(default)]
    pub synchronous_standby_names: Option<String>,
    /// synchronous_commit in effect.
    #[serde(default)]
    pub synchronous_commit: Option<String>,
    /// The spec parameters as the agent last applied them; `None` if the agent does not report them.
    #[serde(default)]
    pub parameters: Option<BTreeMap<String, String>>,
    /// A long operation the agent is carrying out (initdb, basebackup, rewind,
    /// re-clone…); the engine leaves the instance alone meanwhile.
    #[serde(default)]
    pub operation: Option<String>,
    /// How far the agent's pg_basebackup or pg_rewind got, while one runs.
    #[serde(default)]
    pub progress: Option<crate::api::agent::ToolProgress>,
    /// The agent's health checks, copied to status.
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
    /// The settings its checks use; `None` until it was told them.
    #[serde(default)]
    pub check_settings: Option<CheckSettings>,
    /// Standby: seconds since the last replayed commit (0 when caught up).
    #[serde(default)]
    pub lag_seconds: Option<f64>,
    /// Standby: seconds since its walreceiver last heard from the upstream.
    #[serde(default)]
    pub upstream_seen_ago_secs: Option<f64>,
}

/// One replication slot as the agent saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotReport {
    pub name: String,
    /// A walsender uses it.
    pub active: bool,
}

/// One row of pg_stat_replication.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectedStandby {
    /// application_name: the standby's instance name.
    pub name: String,
    /// sync_state.
    #[serde(default)]
    pub sync_state: SyncState,
    /// flush_lsn.
    #[serde(default)]
    pub flush_lsn: Option<Lsn>,
}

/// The agent's lease as it reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseReport {
    /// It holds a valid lease now.
    pub held: bool,
    /// Milliseconds left on its own monotonic clock.
    #[serde(default)]
    pub remaining_ms: i64,
    /// The answer's instant on the agent's clock: a renewal echoes it.
    #[serde(default)]
    pub challenge: Option<u64>,
    /// How long before its lease's end it fences (`None`: at the end).
    #[serde(default)]
    pub fence_lead_ms: Option<u64>,
}

/// The target of a switchover request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SwitchoverTarget {
    /// A named instance.
    Instance(String),
    /// The engine picks, as failover does.
    Any,
}

/// The target of a restart request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RestartTarget {
    /// One instance.
    Instance(String),
    /// Every instance, standbys first.
    All,
}

/// A user request. The platform clears it when the engine answers with [`Action::RequestDone`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Request {
    /// `tandem.dev/switchover` (or `switchover-dry-run`), with `tandem.dev/force`.
    Switchover {
        to: SwitchoverTarget,
        dry_run: bool,
        force: bool,
    },
    /// `tandem.dev/rejoin=<instance>`.
    Rejoin { instance: String, dry_run: bool },
    /// `tandem.dev/reclone=<instance>`.
    Reclone { instance: String },
    /// `tandem.dev/restart=<instance>|all`.
    Restart { target: RestartTarget },
    /// `tandem.dev/promote=<instance>` (with `tandem.dev/force`): make this
    /// standby primary while the primary is down or unreachable.
    Promote { instance: String, force: bool },
    /// A request the platform could not read (an annotation with a malformed
    /// value): the engine refuses it like any other, and the platform clears it.
    Unreadable {
        /// Where it came from (the annotation key).
        source: String,
        /// The value as found (cleared only while it is unchanged).
        value: String,
        /// Why it cannot be read, for the user.
        reason: String,
    },
}

/// What an agent's answer established beyond success (stops and rewinds).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionFacts {
    /// Stop: postgres needed a harsher mode than asked, or a SIGKILL.
    #[serde(default)]
    pub escalated: bool,
    /// Stop, restart: the mode that finally stopped postgres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_with: Option<crate::api::agent::StopMode>,
    /// Stop that was not clean: where its WAL ends.
    #[serde(default)]
    pub end_of_wal: Option<Lsn>,
    /// Rewind: where this server's history diverged from its source's.
    #[serde(default)]
    pub diverged_at: Option<Lsn>,
    /// Rewind: the end of this server's WAL before the rewind.
    #[serde(default)]
    pub rewound_from: Option<Lsn>,
    /// Stop-vouching: how long before its answer it last vouched for a primary.
    #[serde(default)]
    pub last_vouched_ago_ms: Option<u64>,
    /// Rewind dry run: only a re-clone would bring the server back.
    #[serde(default)]
    pub reclone_needed: bool,
}

impl ActionFacts {
    /// Nothing beyond success.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A successful action's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// What the agent said, for people.
    pub detail: Option<String>,
    /// What it established.
    pub facts: ActionFacts,
}

impl From<Option<String>> for Answer {
    fn from(detail: Option<String>) -> Self {
        Self {
            detail,
            facts: ActionFacts::default(),
        }
    }
}

/// How an issued action ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum Outcome {
    /// Done; `detail` carries what the agent said (for example whether a rewind is needed).
    Succeeded {
        detail: Option<String>,
        #[serde(default, skip_serializing_if = "ActionFacts::is_empty")]
        facts: ActionFacts,
    },
    /// Failed, with the agent's or platform's message.
    Failed { message: String },
}

/// The result of an action issued by an earlier decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionResult {
    /// The action exactly as the engine issued it.
    pub action: Action,
    /// How it ended.
    pub outcome: Outcome,
}

impl ActionResult {
    /// A successful result.
    pub fn ok(action: Action) -> Self {
        Self {
            action,
            outcome: Outcome::Succeeded {
                detail: None,
                facts: ActionFacts::default(),
            },
        }
    }

    /// A successful result with the agent's answer.
    pub fn answered(action: Action, answer: Answer) -> Self {
        Self {
            action,
            outcome: Outcome::Succeeded {
                detail: answer.detail,
                facts: answer.facts,
            },
        }
    }

    /// A failed result.
    pub fn failed(action: Action, message: impl Into<String>) -> Self {
        Self {
            action,
            outcome: Outcome::Failed {
                message: message.into(),
            },
        }
    }
}

impl Observations {
    /// The observation of `name`, if the platform reported one.
    pub fn instance(&self, name: &str) -> Option<&InstanceObs> {
        self.instances.iter().find(|i| i.name == name)
    }
}
