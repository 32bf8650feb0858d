//! What the engine asks platforms to do: one variant per agent API call
//! (DESIGN.md §4) plus the platform's own moves (labels, fencing, Events,
//! clearing requests). Plain data, no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::types::Request;

/// Value of the role label (`tandem.dev/role`) / the local endpoint role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleLabel {
    /// Selected by `<name>-rw` (the local rw endpoint).
    Primary,
    /// Selected by `<name>-ro` (the local ro endpoint).
    Standby,
    /// Out of service: selected by no Service.
    Fenced,
    /// Not known yet: selected by no Service.
    Unknown,
}

impl RoleLabel {
    /// The label value (`crate::api::keys::ROLE_*`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => crate::api::keys::ROLE_PRIMARY,
            Self::Standby => crate::api::keys::ROLE_STANDBY,
            Self::Fenced => crate::api::keys::ROLE_FENCED,
            Self::Unknown => crate::api::keys::ROLE_UNKNOWN,
        }
    }
}

/// pg_ctl shutdown mode: the agent protocol's, so both sides share one type.
pub use crate::api::agent::StopMode;

/// Kubernetes Event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// Something went as planned.
    Normal,
    /// Something was refused or failed.
    Warning,
}

/// One thing for a platform to do. Every variant names its target instance;
/// agent calls are idempotent, so a re-issued action (same step after a
/// restart) is safe to carry out again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "action")]
pub enum Action {
    /// Agent `POST /promote`. With `label`, the platform gives the instance
    /// the primary role label as soon as the agent answers that it left
    /// recovery on a new timeline, before the next decision: the `-rw`
    /// route then moves without waiting for a pass and a status write. The
    /// Label step that follows finds it done (or sets it, if that failed).
    Promote {
        instance: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        label: bool,
    },
    /// Agent `POST /demote {primary}`: stop, rewind if needed, start as a standby of `primary`.
    Demote { instance: String, primary: String },
    /// Agent `POST /follow {primary, cascade}`: point this standby at
    /// `primary`; with `cascade`, `primary` may be a standby about to be
    /// promoted, whose promotion this one then follows without reconnecting.
    Follow {
        instance: String,
        primary: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cascade: bool,
    },
    /// Agent `POST /rewind {source, dryRun}`.
    Rewind {
        instance: String,
        source: String,
        dry_run: bool,
    },
    /// Agent `POST /reclone {source}`: data directory moved aside, pg_basebackup, start as standby.
    Reclone { instance: String, source: String },
    /// Agent `POST /checkpoint`: `CHECKPOINT` now (before a planned stop).
    Checkpoint { instance: String },
    /// Agent `POST /stop {mode, timeout, smartTimeout}`; the agent keeps
    /// postgres stopped until told to start. The stop starts at `mode` and
    /// escalates smart → fast → immediate: the smart step waits at most
    /// `smart_timeout_ms`, each other step `timeout_ms`.
    Stop {
        instance: String,
        mode: StopMode,
        timeout_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        smart_timeout_ms: Option<u64>,
    },
    /// Agent `POST /start` (in the role its data directory has).
    Start { instance: String },
    /// Agent `POST /restart {mode, timeout, smartTimeout}` (the stop escalates as for `Stop`).
    Restart {
        instance: String,
        mode: StopMode,
        timeout_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        smart_timeout_ms: Option<u64>,
    },
    /// Agent `POST /config`: synchronous settings and parameters, applied with a reload.
    Config {
        instance: String,
        synchronous_commit: String,
        /// The rendered setting (`ANY 1 ("main-1", "main-2")`, "" for none).
        synchronous_standby_names: String,
        /// The same as a quorum: how many must confirm (0 = none)…
        sync_quorum: u32,
        /// …out of these standbys.
        sync_names: Vec<String>,
        parameters: BTreeMap<String, String>,
    },
    /// Agent `POST /lease {ttlMs, challenge, epoch, peers}`.
    RenewLease {
        instance: String,
        ttl_ms: u64,
        /// The challenge of the status answer this renewal was decided from.
        challenge: Option<u64>,
        epoch: u64,
        /// The members that may vouch for it (instance names).
        peers: Vec<String>,
    },
    /// Agent `POST /stop-vouching {epoch}`: vouch for no primary of a lower epoch.
    StopVouching { instance: String, epoch: u64 },
    /// Agent `POST /drop-slots {slots}`: drop these physical replication
    /// slots of members that no longer stream from this instance; the agent
    /// keeps any that is active when it looks.
    DropSlots {
        instance: String,
        slots: Vec<String>,
    },
    /// Agent `POST /checks`: what its health checks compare against (the
    /// standbys it should have, the thresholds of the spec).
    Checks {
        instance: String,
        settings: crate::api::agent::CheckSettings,
    },
    /// Platform: set the role label (Kubernetes) / repoint the local endpoints.
    SetRole { instance: String, role: RoleLabel },
    /// Platform: make sure the instance cannot write although its agent cannot be
    /// reached (delete the pod / kill the agent and postgres processes).
    FenceInstance { instance: String },
    /// Platform: replace the instance with one of its current definition
    /// (Kubernetes: delete the pod with its grace period, so that postgres
    /// stops cleanly and the StatefulSet recreates it from the new template).
    Recreate { instance: String },
    /// Platform: emit an Event (reason is a PascalCase constant of [`super::reasons`]).
    Event {
        instance: Option<String>,
        #[serde(rename = "type")]
        type_: EventType,
        reason: String,
        message: String,
    },
    /// Platform: the request was answered (accepted, refused or reported); clear it.
    RequestDone { request: Request },
}

impl Action {
    /// The promotion of a failover or switchover: `instance` is labelled
    /// primary as soon as its agent answers that it was promoted.
    pub fn promote_and_label(instance: &str) -> Self {
        Self::Promote {
            instance: instance.to_string(),
            label: true,
        }
    }

    /// The action's name, a bounded value for span fields and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Promote { .. } => "promote",
            Self::Demote { .. } => "demote",
            Self::Follow { .. } => "follow",
            Self::Rewind { .. } => "rewind",
            Self::Reclone { .. } => "reclone",
            Self::Checkpoint { .. } => "checkpoint",
            Self::Stop { .. } => "stop",
            Self::Start { .. } => "start",
            Self::Restart { .. } => "restart",
            Self::Config { .. } => "config",
            Self::RenewLease { .. } => "renew_lease",
            Self::StopVouching { .. } => "stop_vouching",
            Self::DropSlots { .. } => "drop_slots",
            Self::Checks { .. } => "checks",
            Self::SetRole { .. } => "set_role",
            Self::FenceInstance { .. } => "fence",
            Self::Recreate { .. } => "recreate",
            Self::Event { .. } => "event",
            Self::RequestDone { .. } => "request_done",
        }
    }

    /// The instance the action acts on, if any.
    pub fn instance(&self) -> Option<&str> {
        match self {
            Self::Promote { instance, .. }
            | Self::Demote { instance, .. }
            | Self::Follow { instance, .. }
            | Self::Rewind { instance, .. }
            | Self::Reclone { instance, .. }
            | Self::Checkpoint { instance }
            | Self::Stop { instance, .. }
            | Self::Start { instance }
            | Self::Restart { instance, .. }
            | Self::Config { instance, .. }
            | Self::RenewLease { instance, .. }
            | Self::StopVouching { instance, .. }
            | Self::DropSlots { instance, .. }
            | Self::Checks { instance, .. }
            | Self::SetRole { instance, .. }
            | Self::FenceInstance { instance }
            | Self::Recreate { instance } => Some(instance),
            Self::Event { instance, .. } => instance.as_deref(),
            Self::RequestDone { .. } => None,
        }
    }

    /// Whether this action is a call to the instance's agent.
    pub fn is_agent_call(&self) -> bool {
        !matches!(
            self,
            Self::SetRole { .. }
                | Self::FenceInstance { .. }
                | Self::Recreate { .. }
                | Self::Event { .. }
                | Self::RequestDone { .. }
        )
    }
}

/// Event reasons (PascalCase constants).
pub mod reasons {
    pub const FAILOVER_STARTED: &str = "FailoverStarted";
    pub const FAILOVER_BLOCKED: &str = "FailoverBlocked";
    pub const PRIMARY_FENCED: &str = "PrimaryFenced";
    pub const PRIMARY_PROMOTED: &str = "PrimaryPromoted";
    pub const PROMOTION_FAILED: &str = "PromotionFailed";
    pub const FAILOVER_FAILED: &str = "FailoverFailed";
    pub const SWITCHOVER_STARTED: &str = "SwitchoverStarted";
    pub const SWITCHOVER_REFUSED: &str = "SwitchoverRefused";
    pub const SWITCHOVER_DRY_RUN: &str = "SwitchoverDryRun";
    pub const SWITCHOVER_COMPLETED: &str = "SwitchoverCompleted";
    pub const SWITCHOVER_ROLLED_BACK: &str = "SwitchoverRolledBack";
    pub const REJOIN_STARTED: &str = "RejoinStarted";
    pub const REJOIN_COMPLETED: &str = "RejoinCompleted";
    pub const REJOIN_FAILED: &str = "RejoinFailed";
    pub const REJOIN_DRY_RUN: &str = "RejoinDryRun";
    pub const RECLONE_STARTED: &str = "RecloneStarted";
    pub const RECLONE_COMPLETED: &str = "RecloneCompleted";
    pub const RECLONE_FAILED: &str = "RecloneFailed";
    pub const RESTART_STARTED: &str = "RestartStarted";
    pub const RESTART_COMPLETED: &str = "RestartCompleted";
    pub const RESTART_FAILED: &str = "RestartFailed";
    pub const ROLLING_UPDATE: &str = "RollingUpdate";
    /// The primary's node is cordoned: switching over before it is evicted.
    pub const NODE_DRAIN: &str = "NodeDrain";
    pub const PROMOTION_REQUESTED: &str = "PromotionRequested";
    pub const REWIND_DISCARDED: &str = "RewindDiscarded";
    pub const REQUEST_REFUSED: &str = "RequestRefused";
    pub const PRIMARY_ELECTED: &str = "PrimaryElected";
    pub const DURABILITY_CHANGED: &str = "DurabilityChanged";
    pub const DURABILITY_REFUSED: &str = "DurabilityRefused";
    pub const DURABILITY_CHANGE_FAILED: &str = "DurabilityChangeFailed";
    pub const PAUSED: &str = "Paused";
    pub const UNPAUSED: &str = "Unpaused";
    pub const RECONFIGURE_STARTED: &str = "ReconfigureStarted";
    pub const RECONFIGURE_COMPLETED: &str = "ReconfigureCompleted";
    pub const RECONFIGURE_FAILED: &str = "ReconfigureFailed";
    pub const SLOTS_DROPPED: &str = "SlotsDropped";
}
