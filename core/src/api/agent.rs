//! The agent's HTTP protocol (DESIGN.md §4): path constants and the request
//! and response bodies, shared by the agent and its callers. Plain types, no I/O.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::replication::{SyncState, WalReceiverState, WalSenderState};
use super::status::{CheckState, HealthCheck, InstanceRole};
use super::units::{DurationString, Lsn};

/// Liveness: the agent is alive. No token.
pub const PATH_HEALTHZ: &str = "/healthz";
/// Readiness: postgres accepts connections in its expected role. No token.
pub const PATH_READYZ: &str = "/readyz";
/// Prometheus metrics. No token.
pub const PATH_METRICS: &str = "/metrics";
/// Full status of the instance ([`AgentStatus`]).
pub const PATH_STATUS: &str = "/status";
/// Promote this standby ([`PromoteRequest`]).
pub const PATH_PROMOTE: &str = "/promote";
/// Restart as a standby of another primary, rewinding if needed ([`DemoteRequest`]).
pub const PATH_DEMOTE: &str = "/demote";
/// Point this standby at another primary ([`FollowRequest`]).
pub const PATH_FOLLOW: &str = "/follow";
/// Run pg_rewind or say whether it is needed ([`RewindRequest`]).
pub const PATH_REWIND: &str = "/rewind";
/// Move the data directory aside and clone it again ([`RecloneRequest`]).
pub const PATH_RECLONE: &str = "/reclone";
/// `CHECKPOINT` now, before a planned stop (no body; answers [`ActionResponse`]).
pub const PATH_CHECKPOINT: &str = "/checkpoint";
/// Stop postgres ([`StopRequest`]); it stays stopped (fenced) until started.
pub const PATH_STOP: &str = "/stop";
/// Start postgres ([`StopRequest`] for the timeout).
pub const PATH_START: &str = "/start";
/// Stop then start postgres ([`StopRequest`]).
pub const PATH_RESTART: &str = "/restart";
/// Apply parameters and synchronous settings ([`ConfigRequest`]).
pub const PATH_CONFIG: &str = "/config";
/// Renew the primary lease ([`LeaseRequest`]).
pub const PATH_LEASE: &str = "/lease";
/// What the health checks compare against ([`ChecksRequest`]): sent by the operator when the agent reports other settings.
pub const PATH_CHECKS: &str = "/checks";
/// Asked of a standby by its primary: does it still follow it ([`VouchRequest`] → [`VouchResponse`])?
pub const PATH_VOUCH: &str = "/vouch";
/// Stop vouching for any primary of a lower epoch ([`StopVouchingRequest`]): asked before a promotion.
pub const PATH_STOP_VOUCHING: &str = "/stop-vouching";
/// Drop replication slots no member needs ([`DropSlotsRequest`]).
pub const PATH_DROP_SLOTS: &str = "/drop-slots";

/// The query of `GET /status`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusQuery {
    /// Probe postgres first (for a bounded time) and answer with that probe,
    /// so what an action or a fault changed a moment ago shows.
    #[serde(default)]
    pub fresh: bool,
}

/// The query string asking `GET /status` for a fresh probe ([`StatusQuery`]).
pub const STATUS_FRESH: &str = "fresh=true";

/// Most bytes a request body may have.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Every error answer: `{"error": "...", "detail": "..."}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    /// Fixed, machine-readable category (snake_case), see the `ERR_*` constants.
    pub error: String,
    /// What happened, for people, with the tool's own message where there is one.
    #[serde(default)]
    pub detail: String,
}

/// Missing or wrong bearer token (401).
pub const ERR_UNAUTHORIZED: &str = "unauthorized";
/// Malformed request body (400).
pub const ERR_BAD_REQUEST: &str = "bad_request";
/// Promote asked of an instance that is already the primary (409); nothing changed.
pub const ERR_ALREADY_PRIMARY: &str = "already_primary";
/// Demote or follow asked to follow this very instance (400).
pub const ERR_SELF_TARGET: &str = "self_target";
/// The named primary or source cannot be reached or is not usable (422).
pub const ERR_BAD_TARGET: &str = "bad_target";
/// The action does not fit the instance's state (409).
pub const ERR_CONFLICT: &str = "conflict";
/// A lease renewal of a lower epoch than the agent knows (409): it comes from
/// a deposed operator term and changed nothing.
pub const ERR_STALE_EPOCH: &str = "stale_epoch";
/// pg_rewind failed (500); detail has its message.
pub const ERR_REWIND_FAILED: &str = "rewind_failed";
/// An external tool or postgres failed (500); detail has its message.
pub const ERR_TOOL_FAILED: &str = "tool_failed";
/// postgres is not running or not reachable (503).
pub const ERR_UNAVAILABLE: &str = "unavailable";
/// Anything else (500).
pub const ERR_INTERNAL: &str = "internal";

/// Another member of the cluster, as this agent must reach it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Instance name (becomes `application_name`; its slot name is derived from it).
    pub name: String,
    /// Host other members use to reach its postgres.
    pub host: String,
    /// Its postgres port.
    pub port: u16,
    /// Its agent API (`http://host:port`), when the caller knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_url: Option<String>,
}

impl Member {
    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Physical replication slot name of an instance: `-` becomes `_`, lowercase.
pub fn slot_name(instance: &str) -> String {
    instance
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect()
}

/// Body of `POST /promote` (may be empty).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromoteRequest {
    /// How long to wait for the promotion to finish (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationString>,
}

/// Body of `POST /demote`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DemoteRequest {
    /// The primary to follow.
    pub primary: Member,
    /// Shutdown timeout per stop step (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationString>,
    /// Time limits of the pg_rewind a demote may run.
    #[serde(default)]
    pub limits: ToolLimits,
}

/// Body of `POST /follow`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FollowRequest {
    /// The primary to follow.
    pub primary: Member,
    /// `primary` may still be a standby, about to be promoted: stream from
    /// it now (cascading) and follow its promotion over the same connection,
    /// instead of reconnecting once it is primary.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cascade: bool,
}

/// Body of `POST /rewind`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RewindRequest {
    /// The primary to rewind from (and follow afterwards).
    pub source: Member,
    /// Only say whether a rewind is needed.
    #[serde(default)]
    pub dry_run: bool,
    /// Time limits of pg_rewind (and pg_basebackup, unused here).
    #[serde(default)]
    pub limits: ToolLimits,
}

/// Body of `POST /reclone`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecloneRequest {
    /// The primary to clone from (and follow afterwards).
    pub source: Member,
    /// Time limits of pg_basebackup.
    #[serde(default)]
    pub limits: ToolLimits,
}

/// Time limits of the long tools (pg_rewind, pg_basebackup), from `spec.rejoin`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ToolLimits {
    /// Longest a pg_rewind may run; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind_timeout: Option<DurationString>,
    /// Longest a pg_basebackup may run; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_timeout: Option<DurationString>,
    /// Stop either tool when its progress does not move for this long;
    /// absent: [`DEFAULT_STALL_TIMEOUT`]; `0s`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_timeout: Option<DurationString>,
}

/// The stall timeout when a request names none (as `spec.rejoin.stallTimeout`'s default).
pub const DEFAULT_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

impl ToolLimits {
    /// The stall timeout in force; `None`: never stalled.
    pub fn stall(&self) -> Option<std::time::Duration> {
        let d = self
            .stall_timeout
            .as_ref()
            .map_or(DEFAULT_STALL_TIMEOUT, |d| d.duration());
        (!d.is_zero()).then_some(d)
    }
}

/// How far a running pg_basebackup or pg_rewind got, from its `--progress` output.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolProgress {
    /// `pg_basebackup` or `pg_rewind`.
    pub tool: String,
    /// Bytes copied so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_bytes: Option<u64>,
    /// Bytes to copy in all (the tool's estimate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Percent done, as the tool says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// Milliseconds since the tool last made progress.
    #[serde(default)]
    pub since_progress_ms: u64,
    /// Milliseconds since it started.
    #[serde(default)]
    pub elapsed_ms: u64,
}

/// PostgreSQL shutdown mode.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    /// Wait for sessions to end.
    Smart,
    /// Roll back sessions and shut down cleanly.
    #[default]
    Fast,
    /// Abort; crash recovery at next start.
    Immediate,
}

impl StopMode {
    /// The name PostgreSQL uses.
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Body of `POST /stop`, `/start`, `/restart` (may be empty).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StopRequest {
    /// First stop mode; it escalates smart → fast → immediate on timeouts (default fast).
    #[serde(default)]
    pub mode: StopMode,
    /// Timeout of each stop step, and of the start (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationString>,
    /// With mode smart: how long the smart step may take before fast (default: `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart_timeout: Option<DurationString>,
}

/// `synchronous_standby_names` as a quorum: `ANY n (names…)`; empty names = `*`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SyncStandbys {
    /// How many standbys must confirm (ANY n); 0 turns synchronous replication off.
    pub count: u32,
    /// Candidate standby names (application_name); empty means any (`*`).
    #[serde(default)]
    pub names: Vec<String>,
}

impl SyncStandbys {
    /// The value of `synchronous_standby_names`.
    pub fn to_setting(&self) -> String {
        if self.count == 0 {
            return String::new();
        }
        let names = if self.names.is_empty() {
            "*".to_string()
        } else {
            self.names
                .iter()
                .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("ANY {} ({names})", self.count)
    }
}

/// Body of `POST /config`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigRequest {
    /// Parameters to set (ALTER SYSTEM); an empty value resets one.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// `synchronous_commit`: on, remote_write, remote_apply, local or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_commit: Option<String>,
    /// `synchronous_standby_names`; count 0 turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_standbys: Option<SyncStandbys>,
    /// The standbys this primary should have (for the downstream and slot checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_standbys: Option<Vec<String>>,
    /// `parameters` is the whole set the instance should run with: those a
    /// complete request set before and this one lacks are reset, and the set
    /// is what `/status` reports as `parameters` from then on.
    #[serde(default)]
    pub complete: bool,
}

/// Body of `POST /drop-slots`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DropSlotsRequest {
    /// Physical slots to drop; one that is active when the agent looks is kept.
    pub slots: Vec<String>,
}

/// What an agent's health checks compare against, from the cluster's spec:
/// the standbys a primary should have (the downstream and slot checks, and
/// the replication-connection precheck) and the thresholds of the checks.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CheckSettings {
    /// Every other member of the cluster (instance names); as primary it expects each to stream from it with a slot.
    #[serde(default)]
    pub standbys: Vec<String>,
    /// archive_ready: WARNING from this many ready files (spec.switchover.archiveReadyWarning).
    pub archive_ready_warning: i64,
    /// archive_ready: CRITICAL from this many (spec.switchover.archiveReadyCritical).
    pub archive_ready_critical: i64,
    /// replication_lag: WARNING from this many bytes (half of spec.switchover.maxLagBytes).
    pub lag_warning_bytes: i64,
    /// replication_lag: CRITICAL from this many bytes (spec.switchover.maxLagBytes: a switchover to it is refused).
    pub lag_critical_bytes: i64,
}

/// Body of `POST /checks`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChecksRequest {
    /// The settings.
    #[serde(flatten)]
    pub settings: CheckSettings,
    /// Where the standbys' postgres listen (for the replication-connection check).
    #[serde(default)]
    pub members: Vec<Member>,
}

/// Answer of `POST /config`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigResponse {
    /// Parameters written by this request.
    pub applied: Vec<String>,
    /// Parameters that only take effect after a restart.
    pub pending_restart: Vec<String>,
    /// Whether postgres was reloaded.
    pub reloaded: bool,
}

/// Body of `POST /lease`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRequest {
    /// Lease time to live in milliseconds, counted on the agent's monotonic clock.
    pub ttl_ms: u64,
    /// The `lease.challenge` of the `/status` answer this renewal was decided
    /// from: the lease runs `ttlMs` from the instant the agent gave that
    /// answer, so a renewal delivered late (a frozen agent that wakes up)
    /// cannot extend it. Without one the lease runs from the renewal's arrival.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<u64>,
    /// The cluster's lease epoch (it grows before every promotion); a renewal
    /// of a lower epoch than the agent knows is refused.
    #[serde(default)]
    pub epoch: u64,
    /// The members that may vouch for this primary while the operator does
    /// not renew: every other non-learner member. The lease is extended only
    /// when every one of them vouches.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// No other member can be promoted while this primary lives (a cluster of
    /// one, or one whose other members are all learners), so with no peers to
    /// ask the agent keeps its lease up by itself. The operator that says so
    /// promotes no one on this lease running out, only once it has seen
    /// postgres stop. Without it an empty peer list means nobody vouches: an
    /// operator that does not know about vouching (and sends no peers) keeps
    /// the lease it always had. Refused together with peers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub solo: bool,
}

/// A member's agent, as another agent reaches it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Instance name.
    pub name: String,
    /// Its agent API, `http://host:port`.
    pub url: String,
}

/// Body of `POST /vouch`, sent by a primary's agent to each peer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VouchRequest {
    /// The primary asking.
    pub primary: String,
    /// Its timeline.
    pub timeline: i64,
    /// The lease epoch of its last renewal by the operator.
    pub epoch: u64,
}

/// Answer of `POST /vouch`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VouchResponse {
    /// This member still follows that primary, on that timeline, and was not
    /// told of a higher epoch.
    pub vouch: bool,
    /// Why not, for people (empty when it vouches).
    #[serde(default)]
    pub reason: String,
}

/// Answer of `POST /stop-vouching`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StopVouchingResponse {
    /// The epoch it now knows.
    pub known_epoch: u64,
    /// How long ago it last vouched for any primary, or since the agent
    /// started if it has not since (it may have just before): the primary it
    /// vouched for can hold no lease from it beyond that instant + TTL.
    pub last_vouched_ago_ms: u64,
}

/// The last vouch a standby gave, as `/status` reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VouchedState {
    /// The primary it vouched for.
    pub primary: String,
    /// How long ago.
    pub ago_ms: u64,
}

/// Body of `POST /stop-vouching`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StopVouchingRequest {
    /// From now on, vouch for no primary whose epoch is lower than this. Kept
    /// on disk before the answer, so a restarted agent does not vouch again.
    pub epoch: u64,
}

/// The lease as the agent holds it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseState {
    /// A lease was granted and has not run out.
    pub held: bool,
    /// TTL of the last renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Milliseconds left (0 when expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<u64>,
    /// Milliseconds since the last renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_ago_ms: Option<u64>,
    /// This answer's instant on the agent's monotonic clock (ms since the agent
    /// started); a renewal decided from this answer echoes it.
    #[serde(default)]
    pub challenge: u64,
    /// The epoch of the last renewal this agent accepted.
    #[serde(default)]
    pub epoch: u64,
    /// The highest epoch this agent was told of: it vouches for no primary of a lower one.
    #[serde(default)]
    pub known_epoch: u64,
    /// Who extended the lease last: `operator` or `peers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_by: Option<LeaseSource>,
    /// This agent fences postgres this long (at most a quarter of the TTL)
    /// before its lease's end, so that it is stopped when the lease ends.
    /// Absent from agents that fence at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_lead_ms: Option<u64>,
}

/// Who extended a lease.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeaseSource {
    /// A renewal by the operator (`POST /lease`).
    Operator,
    /// Every peer vouched (`POST /vouch`).
    Peers,
}

/// Answer of every action.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActionResponse {
    /// Whether the action changed anything (false when it was already done).
    pub changed: bool,
    /// What happened, for people.
    pub message: String,
    /// The steps carried out, in order.
    #[serde(default)]
    pub steps: Vec<String>,
    /// Rewind only: whether a rewind is (dry run) or was needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind_needed: Option<bool>,
    /// Rewind dry run only: a rewind cannot bring this server back (another
    /// system, no shared timeline, or no `wal_log_hints`/checksums): a rejoin would re-clone it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclone_needed: Option<bool>,
    /// Stop only: the mode that finally stopped postgres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_with: Option<StopMode>,
    /// Stop only: postgres needed more than its requested mode, or a SIGKILL,
    /// to stop: its checkpoint location is not a shutdown checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated: Option<bool>,
    /// Stop only, after a stop that was not clean: the end of the WAL it wrote
    /// (the end of its last valid record, read with pg_waldump).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_wal: Option<Lsn>,
    /// Rewind / demote only: where pg_rewind found this server's history
    /// diverged from its source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged_at: Option<Lsn>,
    /// Rewind / demote only: the end of this server's WAL before the rewind;
    /// `discardedBytes` = this − `divergedAt` (what the rewind threw away).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewound_from: Option<Lsn>,
    /// Reclone only: where the previous data directory was moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_aside_to: Option<String>,
    /// Promote only: the new timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
}

/// A standby connected to this primary (`pg_stat_replication`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Downstream {
    /// application_name (the instance name).
    pub name: String,
    /// Client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    /// startup, catchup, streaming…
    pub state: WalSenderState,
    /// async, potential, sync, quorum.
    pub sync_state: SyncState,
    /// Sent, written, flushed, replayed LSNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<Lsn>,
    /// Lags in seconds as postgres measures them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_lag_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_lag_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lag_seconds: Option<f64>,
    /// Bytes between this primary's current LSN and the standby's replay LSN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
}

/// A replication slot on this instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    /// Slot name.
    pub name: String,
    /// A walsender uses it now.
    pub active: bool,
    /// Oldest WAL it keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_lsn: Option<Lsn>,
}

/// The walreceiver of a standby (`pg_stat_wal_receiver`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WalReceiver {
    /// streaming, starting, waiting…
    pub status: WalReceiverState,
    /// Host and port it streams from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_port: Option<i32>,
    /// Slot it uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_name: Option<String>,
    /// Seconds since it last heard from the upstream (`last_msg_receipt_time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_ago_secs: Option<f64>,
    /// Timeline it receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_tli: Option<i64>,
}

/// Answer of `GET /status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Instance name.
    pub instance: String,
    /// primary, standby, fenced (stopped on request), down (not running) or unknown.
    pub role: InstanceRole,
    /// postgres accepts connections in its role.
    pub ready: bool,
    /// postgres (the postmaster) is running as the agent's child.
    pub postgres_running: bool,
    /// The postmaster's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_pid: Option<i32>,
    /// Times postgres exited without being asked to.
    pub crash_count: u64,
    /// The last unexpected exit (RFC 3339 and exit description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_crash: Option<String>,
    /// Stopped on request: not restarted until started, demoted or re-cloned.
    pub fenced: bool,
    /// What the agent is doing now (bootstrap, an action) or last failed at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<String>,
    /// The data directory.
    pub data_dir: String,
    /// server_version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<String>,
    /// The database system identifier (same on every member of a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// Timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
    /// Current WAL LSN (primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_lsn: Option<Lsn>,
    /// Last received LSN (standby).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_lsn: Option<Lsn>,
    /// Last replayed LSN (standby).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_lsn: Option<Lsn>,
    /// Standby: bytes behind its upstream's current LSN (or received − replayed when the upstream cannot be asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// Standby: seconds since the last replayed transaction's commit time (0 when all received WAL is replayed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// Standby: the primary it is configured to follow (from primary_conninfo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Member>,
    /// Standby: its walreceiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_receiver: Option<WalReceiver>,
    /// Primary: connected standbys.
    #[serde(default)]
    pub downstreams: Vec<Downstream>,
    /// Replication slots.
    #[serde(default)]
    pub slots: Vec<Slot>,
    /// `*.ready` files in pg_wal/archive_status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_ready: Option<i64>,
    /// max_wal_senders and senders in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wal_senders: Option<i64>,
    #[serde(default)]
    pub wal_senders_used: i64,
    /// max_replication_slots and slots in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replication_slots: Option<i64>,
    #[serde(default)]
    pub replication_slots_used: i64,
    /// Current synchronous_standby_names and synchronous_commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_standby_names: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_commit: Option<String>,
    /// Parameters changed but waiting for a restart.
    #[serde(default)]
    pub pending_restart: Vec<String>,
    /// The parameters this instance was last given as a whole (`POST /config`
    /// with `complete`); empty before the first such request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, String>>,
    /// The health checks: role, replication_lag, archive_ready, upstream, downstream, slots, data_directory.
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
    /// The settings the checks use, as last sent by the operator; absent
    /// until then (the agent's flags apply and it expects no standbys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_settings: Option<CheckSettings>,
    /// Primary: whether it can open a replication connection to each expected
    /// standby (what it needs to follow one after a switchover), measured
    /// every few seconds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replication_to: BTreeMap<String, bool>,
    /// The primary lease.
    #[serde(default)]
    pub lease: LeaseState,
    /// Standby: the last time it vouched for a primary (a primary asks its
    /// peers every quarter of its lease TTL, so a fresh vouch says the primary
    /// is alive and reaches this member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouched: Option<VouchedState>,
    /// When this was observed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<String>,
    /// While postgres is stopped: the latest checkpoint location from pg_controldata
    /// (after a clean shutdown, the shutdown checkpoint a switchover target must have received).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_lsn: Option<Lsn>,
    /// While postgres is stopped: whether pg_controldata says it shut down cleanly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_shutdown: Option<bool>,
    /// While postgres is stopped after a stop that was not clean: the end of
    /// the WAL it wrote (pg_waldump).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_wal: Option<Lsn>,
    /// The long operation the agent is carrying out now (bootstrap, demote, rewind, reclone…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// While pg_basebackup or pg_rewind runs: how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ToolProgress>,
}

impl AgentStatus {
    /// The check of this name, if computed.
    pub fn check(&self, name: &str) -> Option<&HealthCheck> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The worst check state (OK when there are none).
    pub fn worst_check(&self) -> CheckState {
        self.checks
            .iter()
            .map(|c| c.state)
            .max()
            .unwrap_or(CheckState::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_only_use_allowed_characters() {
        assert_eq!(slot_name("main-0"), "main_0");
        assert_eq!(slot_name("Db.X-1"), "db_x_1");
    }

    #[test]
    fn sync_standbys_render_as_quorum() {
        let s = SyncStandbys {
            count: 1,
            names: vec![],
        };
        assert_eq!(s.to_setting(), "ANY 1 (*)");
        let s = SyncStandbys {
            count: 2,
            names: vec!["a-1".into(), "a-2".into()],
        };
        assert_eq!(s.to_setting(), "ANY 2 (\"a-1\", \"a-2\")");
        assert_eq!(
            SyncStandbys {
                count: 0,
                names: vec![]
            }
            .to_setting(),
            ""
        );
    }

    #[test]
    fn empty_stop_request_defaults_to_fast() {
        let r: StopRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r.mode, StopMode::Fast);
        let r: RewindRequest =
            serde_json::from_str(r#"{"source":{"name":"a","host":"h","port":1},"dryRun":true}"#)
                .unwrap();
        assert!(r.dry_run);
    }
}
