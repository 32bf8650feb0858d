//! The HA state machine's vocabulary as types: transition kinds and their
//! steps (the table of transitions), history kinds and outcomes, and the
//! typed facts a transition keeps to resume (`status.transition.data`).
//! The JSON names are those the string-typed status used; `data` written by
//! that version (every value a string) is still read. Plain types: no I/O.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::agent::StopMode;
use super::cluster::ReplicationSpec;
use super::units::Lsn;

/// Implements `as_str`, `Display` and comparison with text for a unit enum
/// whose serde names are its variant names.
macro_rules! named {
    ($ty:ident { $($variant:ident),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The name used in status and messages.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($variant),)+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

/// What a transition does (`status.transition.kind`).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum TransitionKind {
    /// Waiting for the first primary (or adopting existing data).
    Bootstrap,
    /// The primary failed: fence it, promote the best standby, label it.
    Failover,
    /// A planned move of the primary role.
    Switchover,
    /// An instance comes back as a standby of the primary (rewind when needed).
    Rejoin,
    /// Checks whether a rejoin would need a rewind, changing nothing.
    RejoinDryRun,
    /// An instance's data directory is replaced by a copy of the primary's.
    Reclone,
    /// A rolling restart, standbys first.
    Restart,
    /// spec.replication changed: the primary gets the new synchronous settings
    /// and the standbys' sync state is confirmed.
    DurabilityChange,
    /// Changed parameters (spec.postgres.parameters, the archive settings)
    /// are applied to every instance with a reload; a rolling restart
    /// follows for those that need one.
    Reconfigure,
}

named!(TransitionKind {
    Bootstrap,
    Failover,
    Switchover,
    Rejoin,
    RejoinDryRun,
    Reclone,
    Restart,
    DurabilityChange,
    Reconfigure
});

/// The step a transition is carrying out (`status.transition.step`); which
/// steps each kind has is [`TransitionKind::steps`].
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum TransitionStep {
    /// Bootstrap: until an instance runs as the primary.
    WaitPrimary,
    /// Failover: drop the old primary's label and make sure it cannot write.
    Fence,
    /// Failover, switchover: promote the target.
    Promote,
    /// Failover, switchover: label the promoted target primary.
    Label,
    /// Switchover: `CHECKPOINT` on the primary while it still takes writes,
    /// so that the shutdown checkpoint after the label drop has little to write.
    Checkpoint,
    /// Switchover: take the target out of the read-only Service, then stop
    /// new connections to the primary.
    DropPrimaryLabel,
    /// Switchover: stop the primary (fast, then immediate).
    StopPrimary,
    /// Switchover: until the target received the shutdown checkpoint.
    WaitShutdownCheckpoint,
    /// Switchover: the old primary and the siblings follow the target.
    Follow,
    /// Switchover: restore the old primary (nothing was promoted).
    RollBack,
    /// Rejoin: restart as a standby of the primary, rewinding when needed.
    Demote,
    /// Rejoin (after a failed rewind), re-clone: pg_basebackup from the primary.
    Reclone,
    /// Rejoin dry-run: pg_rewind --dry-run.
    RewindCheck,
    /// Restart: restart the first queued instance.
    RestartInstance,
    /// Durability change: apply the new synchronous settings on the primary (a reload).
    ApplyDurability,
    /// Durability change: until the primary reports them and its standbys the
    /// sync state they imply (pg_stat_replication.sync_state).
    ConfirmSync,
    /// Reconfigure: apply the parameters on every instance (ALTER SYSTEM, reload).
    ApplyParameters,
}

named!(TransitionStep {
    WaitPrimary,
    Fence,
    Promote,
    Label,
    Checkpoint,
    DropPrimaryLabel,
    StopPrimary,
    WaitShutdownCheckpoint,
    Follow,
    RollBack,
    Demote,
    Reclone,
    RewindCheck,
    RestartInstance,
    ApplyDurability,
    ConfirmSync,
    ApplyParameters
});

impl TransitionKind {
    /// The table of transitions: each kind's steps, the first one first.
    pub fn steps(self) -> &'static [TransitionStep] {
        use TransitionStep as S;
        match self {
            Self::Bootstrap => &[S::WaitPrimary],
            Self::Failover => &[S::Fence, S::Promote, S::Label],
            Self::Switchover => &[
                S::DropPrimaryLabel,
                S::Checkpoint,
                S::StopPrimary,
                S::WaitShutdownCheckpoint,
                S::Promote,
                S::Label,
                S::Follow,
                S::RollBack,
            ],
            Self::Rejoin => &[S::Demote, S::Reclone],
            Self::RejoinDryRun => &[S::RewindCheck],
            Self::Reclone => &[S::Reclone],
            Self::Restart => &[S::RestartInstance],
            Self::DurabilityChange => &[S::ApplyDurability, S::ConfirmSync],
            Self::Reconfigure => &[S::ApplyParameters],
        }
    }

    /// The step a new transition of this kind starts with.
    pub fn first_step(self) -> TransitionStep {
        match self {
            Self::Bootstrap => TransitionStep::WaitPrimary,
            Self::Failover => TransitionStep::Fence,
            Self::Switchover => TransitionStep::DropPrimaryLabel,
            Self::Rejoin => TransitionStep::Demote,
            Self::RejoinDryRun => TransitionStep::RewindCheck,
            Self::Reclone => TransitionStep::Reclone,
            Self::Restart => TransitionStep::RestartInstance,
            Self::DurabilityChange => TransitionStep::ApplyDurability,
            Self::Reconfigure => TransitionStep::ApplyParameters,
        }
    }

    /// Whether `step` is one of this kind's steps.
    pub fn has_step(self, step: TransitionStep) -> bool {
        self.steps().contains(&step)
    }
}

/// What a history entry records (`status.history[].kind`): a transition, or
/// a request answered at once.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum HistoryKind {
    /// The first primary was elected or adopted.
    Bootstrap,
    /// An automatic failover.
    Failover,
    /// A switchover.
    Switchover,
    /// A switchover dry-run report.
    SwitchoverDryRun,
    /// A rejoin.
    Rejoin,
    /// A rejoin dry-run report.
    RejoinDryRun,
    /// A re-clone.
    Reclone,
    /// A rolling restart.
    Restart,
    /// Parameters applied with a reload.
    Reconfigure,
    /// A request the operator could not read (a malformed annotation).
    Request,
    /// A change of spec.replication (applied, refused or failed).
    DurabilityChange,
    /// Automation was paused (spec.paused or the annotation tandem.dev/paused=true).
    Pause,
    /// Automation was resumed.
    Unpause,
}

named!(HistoryKind {
    Bootstrap,
    Failover,
    Switchover,
    SwitchoverDryRun,
    Rejoin,
    RejoinDryRun,
    Reclone,
    Restart,
    Reconfigure,
    Request,
    DurabilityChange,
    Pause,
    Unpause
});

impl From<TransitionKind> for HistoryKind {
    fn from(k: TransitionKind) -> Self {
        match k {
            TransitionKind::Bootstrap => Self::Bootstrap,
            TransitionKind::Failover => Self::Failover,
            TransitionKind::Switchover => Self::Switchover,
            TransitionKind::Rejoin => Self::Rejoin,
            TransitionKind::RejoinDryRun => Self::RejoinDryRun,
            TransitionKind::Reclone => Self::Reclone,
            TransitionKind::Restart => Self::Restart,
            TransitionKind::DurabilityChange => Self::DurabilityChange,
            TransitionKind::Reconfigure => Self::Reconfigure,
        }
    }
}

impl PartialEq<TransitionKind> for HistoryKind {
    fn eq(&self, other: &TransitionKind) -> bool {
        *self == HistoryKind::from(*other)
    }
}

/// How a transition or request ended (`status.history[].outcome`).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum HistoryOutcome {
    /// Done as asked.
    Succeeded,
    /// Tried and did not work (or was abandoned).
    Failed,
    /// Refused whole; nothing changed.
    Refused,
    /// Undone before it could finish; the old state is back.
    RolledBack,
    /// A dry-run report; nothing changed.
    DryRun,
    /// Marks the start of a transition whose end is recorded separately (a re-clone).
    Started,
}

named!(HistoryOutcome {
    Succeeded,
    Failed,
    Refused,
    RolledBack,
    DryRun,
    Started
});

/// What a transition needs to resume, by kind; every field is absent until set.
#[derive(Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionData {
    /// When the current step started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<String>,
    /// Failover, switchover: the old primary's last known WAL position when the transition started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_primary_lsn: Option<Lsn>,
    /// Failover facts.
    #[serde(flatten)]
    pub failover: FailoverData,
    /// Switchover facts.
    #[serde(flatten)]
    pub switchover: SwitchoverData,
    /// Rejoin and re-clone facts.
    #[serde(flatten)]
    pub rejoin: RejoinData,
    /// Rolling restart (and reconfigure: `done`, `failed`) facts.
    #[serde(flatten)]
    pub restart: RestartData,
    /// Durability change facts.
    #[serde(flatten)]
    pub durability: DurabilityData,
}

/// What a failover keeps between steps.
#[derive(Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverData {
    /// The old primary's role label is gone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub label_dropped: bool,
    /// The old primary's agent confirmed postgres stopped.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stop_confirmed: bool,
    /// The promotion of the current candidate was asked for.
    #[serde(default, skip_serializing_if = "is_false")]
    pub promote_issued: bool,
    /// Candidates whose promotion failed, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_candidates: Vec<String>,
    /// How the old primary was fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_by: Option<String>,
    /// The candidate's WAL position when it was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_lsn: Option<Lsn>,
    /// The old primary's timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_timeline: Option<i64>,
    /// The promoted candidate's timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_timeline: Option<i64>,
    /// The lease epoch this failover promotes under (peers are told to vouch
    /// for no primary of a lower one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouch_epoch: Option<u64>,
    /// A peer of the old primary that acknowledged it stopped vouching…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouching_stopped_by: Option<String>,
    /// …and when it last vouched before that (RFC 3339): the old primary
    /// holds no lease beyond TTL after the later of this and its last renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_vouch_at: Option<String>,
    /// The platform was asked once to fence the old primary (delete its pod).
    #[serde(default, skip_serializing_if = "is_false")]
    pub fence_issued: bool,
    /// When the old primary was known to accept writes no more (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_at: Option<String>,
    /// A person asked for this promotion (the target is theirs, not chosen).
    #[serde(default, skip_serializing_if = "is_false")]
    pub requested: bool,
    /// …and forced it past a refusal (learner, behind, not synchronous).
    #[serde(default, skip_serializing_if = "is_false")]
    pub forced: bool,
}

/// What a switchover keeps between steps.
#[derive(Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverData {
    /// The stop escalated to this mode (immediate after a failed fast stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_mode: Option<StopMode>,
    /// The old primary's shutdown checkpoint (or the best lower bound known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_lsn: Option<Lsn>,
    /// The target's WAL position once promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_lsn: Option<Lsn>,
    /// Why the switchover is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_reason: Option<String>,
    /// The mode that finally stopped the old primary (smart, fast or immediate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_with: Option<StopMode>,
    /// The old primary did not shut down cleanly (the stop escalated past
    /// its mode, or to a SIGKILL): `checkpointLsn` is then the end of its
    /// WAL, which the target must have received whole.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stop_escalated: bool,
    /// The old primary's role label is gone (`DropPrimaryLabel` done): its
    /// stop may follow once the change settled.
    #[serde(default, skip_serializing_if = "is_false")]
    pub old_label_dropped: bool,
    /// The target left the read-only Service (or its label could not be
    /// changed): the old primary's label drop may follow once that settled.
    #[serde(default, skip_serializing_if = "is_false")]
    pub target_withdrawn: bool,
    /// The pre-stop CHECKPOINT answered (or ran out of time).
    #[serde(default, skip_serializing_if = "is_false")]
    pub checkpointed: bool,
}

/// What a rejoin or re-clone keeps between steps.
#[derive(Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejoinData {
    /// The demote was asked for.
    #[serde(default, skip_serializing_if = "is_false")]
    pub issued: bool,
    /// The re-clone was asked for (the data directory may be gone already).
    #[serde(default, skip_serializing_if = "is_false")]
    pub reclone_issued: bool,
    /// Why the rejoin fell back to a re-clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind_failed: Option<String>,
}

/// What a rolling restart keeps between instances.
#[derive(Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartData {
    /// Instances still to restart, the current one first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<String>,
    /// What happened to each instance done so far, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<String>,
    /// Instances whose restart failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// The current instance's stop escalated to this mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<StopMode>,
    /// The primary is restarted in place (no switchover).
    #[serde(default, skip_serializing_if = "is_false")]
    pub in_place: bool,
}

/// What a durability change keeps between steps.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DurabilityData {
    /// The replication settings being applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability_target: Option<ReplicationSpec>,
    /// The replication settings in force before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability_from: Option<ReplicationSpec>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl TransitionData {
    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Read both today's typed values and the all-strings map of the first
/// version (booleans as "true", lists comma-joined, numbers and LSNs as
/// text), so that an operator upgraded mid-transition resumes it. Keys that
/// nothing reads any more are ignored; a value that cannot be read counts as
/// absent, as it did.
impl<'de> Deserialize<'de> for TransitionData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut m = BTreeMap::<String, Value>::deserialize(d)?;
        let mut take = |k: &str| m.remove(k);
        Ok(TransitionData {
            step_started_at: take("stepStartedAt").and_then(text),
            old_primary_lsn: take("oldPrimaryLsn").and_then(lsn),
            failover: FailoverData {
                label_dropped: take("labelDropped").is_some_and(flag),
                stop_confirmed: take("stopConfirmed").is_some_and(flag),
                promote_issued: take("promoteIssued").is_some_and(flag),
                failed_candidates: take("failedCandidates").map(list).unwrap_or_default(),
                fenced_by: take("fencedBy").and_then(text),
                candidate_lsn: take("candidateLsn").and_then(lsn),
                old_timeline: take("oldTimeline").and_then(int),
                promoted_timeline: take("promotedTimeline").and_then(int),
                vouch_epoch: take("vouchEpoch")
                    .and_then(int)
                    .and_then(|e| u64::try_from(e).ok()),
                vouching_stopped_by: take("vouchingStoppedBy").and_then(text),
                last_vouch_at: take("lastVouchAt").and_then(text),
                fence_issued: take("fenceIssued").is_some_and(flag),
                fenced_at: take("fencedAt").and_then(text),
                requested: take("requested").is_some_and(flag),
                forced: take("forced").is_some_and(flag),
            },
            switchover: SwitchoverData {
                stop_mode: take("stopMode").and_then(stop_mode),
                checkpoint_lsn: take("checkpointLsn").and_then(lsn),
                promoted_lsn: take("promotedLsn").and_then(lsn),
                rollback_reason: take("rollbackReason").and_then(text),
                stopped_with: take("stoppedWith").and_then(stop_mode),
                stop_escalated: take("stopEscalated").is_some_and(flag),
                old_label_dropped: take("oldLabelDropped").is_some_and(flag),
                target_withdrawn: take("targetWithdrawn").is_some_and(flag),
                checkpointed: take("checkpointed").is_some_and(flag),
            },
            rejoin: RejoinData {
                issued: take("issued").is_some_and(flag),
                reclone_issued: take("recloneIssued").is_some_and(flag),
                rewind_failed: take("rewindFailed").and_then(text),
            },
            restart: restart_data(
                take("queue"),
                take("done"),
                take("failed"),
                take("mode"),
                take("inPlace"),
            ),
            durability: DurabilityData {
                durability_target: take("durabilityTarget").and_then(replication),
                durability_from: take("durabilityFrom").and_then(replication),
            },
        })
    }
}

fn restart_data(
    queue: Option<Value>,
    done: Option<Value>,
    failed: Option<Value>,
    mode: Option<Value>,
    in_place: Option<Value>,
) -> RestartData {
    let queue = queue.map(list).unwrap_or_default();
    let (done, failed) = match (done, failed) {
        (Some(Value::String(notes)), None) => legacy_notes(&notes),
        (done, failed) => (
            done.map(notes).unwrap_or_default(),
            failed.map(list).unwrap_or_default(),
        ),
    };
    RestartData {
        queue,
        done,
        failed,
        mode: mode.and_then(stop_mode),
        in_place: in_place.is_some_and(flag),
    }
}

/// The first version kept a restart's notes as one text ("a restarted; b
/// failed: why") and told failure by the word "failed" in it; a failure note
/// is "<instance> failed: …", so that is what counts now.
fn legacy_notes(notes: &str) -> (Vec<String>, Vec<String>) {
    if notes.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let failed = notes
        .split("; ")
        .filter_map(|n| n.split_once(" failed: ").map(|(who, _)| who))
        .filter(|who| !who.is_empty() && !who.contains(' '))
        .map(str::to_string)
        .collect();
    (vec![notes.to_string()], failed)
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn flag(v: Value) -> bool {
    match v {
        Value::Bool(b) => b,
        Value::String(s) => s == "true",
        _ => false,
    }
}

fn int(v: Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn lsn(v: Value) -> Option<Lsn> {
    match v {
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn replication(v: Value) -> Option<ReplicationSpec> {
    serde_json::from_value(v).ok()
}

fn stop_mode(v: Value) -> Option<StopMode> {
    serde_json::from_value(v).ok()
}

/// A list, or the first version's comma-joined text.
fn list(v: Value) -> Vec<String> {
    match v {
        Value::String(s) => s
            .split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect(),
        other => serde_json::from_value(other).unwrap_or_default(),
    }
}

/// Notes: a list, or the first version's single text.
fn notes(v: Value) -> Vec<String> {
    match v {
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::String(s) => vec![s],
        other => serde_json::from_value(other).unwrap_or_default(),
    }
}
