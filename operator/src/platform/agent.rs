//! What both platforms share between the HA engine and the agents: an
//! agent's `/status` as the engine's report, and the engine's agent actions
//! as agent API calls. Does network I/O (the calls).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::agent::client::{AgentClient, ClientError};
use crate::api::agent::{
    self as proto, ActionResponse, AgentStatus, ChecksRequest, ConfigRequest, DemoteRequest,
    DropSlotsRequest, FollowRequest, LeaseRequest, Member, Peer, PromoteRequest, RecloneRequest,
    RewindRequest, StopRequest, StopVouchingRequest, SyncStandbys, ToolLimits,
};
use crate::api::{DurationString, InstanceRole, WalReceiverState};
use crate::engine::{
    Action, ActionFacts, AgentReport, Answer, ConnectedStandby, LeaseReport, SlotReport,
};

/// The engine's view of an agent's status answer.
pub fn report(s: &AgentStatus) -> AgentReport {
    AgentReport {
        // Running means answering in its role: a frozen server whose process
        // exists but does not answer counts as down.
        postgres_running: s.postgres_running && s.ready,
        in_recovery: s.role != InstanceRole::Primary,
        timeline: s.timeline,
        current_lsn: s.current_lsn,
        received_lsn: s.received_lsn,
        replayed_lsn: s.replayed_lsn,
        checkpoint_lsn: s.checkpoint_lsn,
        upstream: s.upstream.as_ref().map(|m| m.name.clone()),
        streaming: s
            .wal_receiver
            .as_ref()
            .is_some_and(|w| w.status == WalReceiverState::Streaming),
        standbys: s
            .downstreams
            .iter()
            .map(|d| ConnectedStandby {
                name: d.name.clone(),
                sync_state: d.sync_state.clone(),
                flush_lsn: d.flush_lsn,
            })
            .collect(),
        archive_ready: s.archive_ready,
        max_wal_senders: s.max_wal_senders,
        max_replication_slots: s.max_replication_slots,
        slots_used: Some(s.replication_slots_used),
        replication_to: s.replication_to.clone(),
        lease: Some(LeaseReport {
            held: s.lease.held,
            remaining_ms: s
                .lease
                .remaining_ms
                .and_then(|m| i64::try_from(m).ok())
                .unwrap_or(0),
            challenge: Some(s.lease.challenge),
            fence_lead_ms: s.lease.fence_lead_ms,
        }),
        vouched: s.vouched.as_ref().map(|v| {
            (
                v.primary.clone(),
                i64::try_from(v.ago_ms).unwrap_or(i64::MAX),
            )
        }),
        clean_shutdown: s.clean_shutdown,
        end_of_wal: s.end_of_wal,
        fenced: s.fenced,
        pending_restart: !s.pending_restart.is_empty(),
        system_identifier: s.system_identifier.clone(),
        synchronous_standby_names: s.synchronous_standby_names.clone(),
        synchronous_commit: s.synchronous_commit.clone(),
        parameters: s.parameters.clone(),
        slots: s
            .slots
            .iter()
            .map(|x| SlotReport {
                name: x.name.clone(),
                active: x.active,
            })
            .collect(),
        operation: s.operation.clone(),
        progress: s.progress.clone(),
        checks: s.checks.clone(),
        check_settings: s.check_settings.clone(),
        lag_seconds: s.lag_seconds,
        upstream_seen_ago_secs: s
            .wal_receiver
            .as_ref()
            .and_then(|w| w.last_message_ago_secs),
    }
}

fn duration_ms(ms: u64) -> Option<DurationString> {
    format!("{ms}ms").parse().ok()
}

fn member(members: &BTreeMap<String, Member>, name: &str) -> Result<Member, String> {
    members
        .get(name)
        .cloned()
        .ok_or_else(|| format!("unknown instance {name}"))
}

/// An agent client error as one line (the agent's category and detail).
pub fn describe(e: ClientError) -> String {
    match &e {
        ClientError::Api { body, .. } if body.detail.is_empty() => body.error.clone(),
        ClientError::Api { body, .. } => format!("{}: {}", body.error, body.detail),
        _ => e.to_string(),
    }
}

/// The peers of a renewal as agents reach them. Every one is named, even one
/// whose agent address is not known now (its empty address never answers):
/// leaving it out would let the primary extend its lease without the very
/// member the engine may tell to stop vouching.
fn peers(names: &[String], members: &BTreeMap<String, Member>) -> Vec<Peer> {
    names
        .iter()
        .map(|n| Peer {
            name: n.clone(),
            url: members
                .get(n)
                .and_then(|m| m.agent_url.clone())
                .unwrap_or_default(),
        })
        .collect()
}

/// What an action's answer established.
fn facts(r: &ActionResponse) -> ActionFacts {
    ActionFacts {
        escalated: r.escalated.unwrap_or(false),
        stopped_with: r.stopped_with,
        end_of_wal: r.end_of_wal,
        diverged_at: r.diverged_at,
        rewound_from: r.rewound_from,
        last_vouched_ago_ms: None,
        reclone_needed: r.reclone_needed.unwrap_or(false),
    }
}

/// Carry out one agent action on `c`: its answer, or `Err(message)`.
/// `members` gives every instance's postgres and agent addresses, `limits`
/// the time limits of pg_rewind and pg_basebackup (`spec.rejoin`).
pub async fn call(
    a: &Action,
    c: &AgentClient,
    members: &BTreeMap<String, Member>,
    limits: &ToolLimits,
) -> Result<Answer, String> {
    let resp = match a {
        Action::Promote { .. } => match c.promote(&PromoteRequest::default()).await {
            // Already primary: the promotion happened (idempotent).
            Err(e) if e.code() == Some(proto::ERR_ALREADY_PRIMARY) => {
                return Ok(Some("already primary".to_string()).into())
            }
            other => other,
        },
        Action::Demote { primary, .. } => {
            c.demote(&DemoteRequest {
                primary: member(members, primary)?,
                timeout: None,
                limits: limits.clone(),
            })
            .await
        }
        Action::Follow {
            primary, cascade, ..
        } => {
            c.follow(&FollowRequest {
                primary: member(members, primary)?,
                cascade: *cascade,
            })
            .await
        }
        Action::Rewind {
            source, dry_run, ..
        } => {
            c.rewind(&RewindRequest {
                source: member(members, source)?,
                dry_run: *dry_run,
                limits: limits.clone(),
            })
            .await
        }
        Action::Reclone { source, .. } => {
            c.reclone(&RecloneRequest {
                source: member(members, source)?,
                limits: limits.clone(),
            })
            .await
        }
        Action::Checkpoint { .. } => c.checkpoint().await,
        Action::DropSlots { slots, .. } => {
            c.drop_slots(&DropSlotsRequest {
                slots: slots.clone(),
            })
            .await
        }
        Action::Stop {
            mode,
            timeout_ms,
            smart_timeout_ms,
            ..
        } => {
            c.stop(&StopRequest {
                mode: *mode,
                timeout: duration_ms(*timeout_ms),
                smart_timeout: smart_timeout_ms.and_then(duration_ms),
            })
            .await
        }
        Action::Start { .. } => c.start(&StopRequest::default()).await,
        Action::Restart {
            mode,
            timeout_ms,
            smart_timeout_ms,
            ..
        } => {
            c.restart(&StopRequest {
                mode: *mode,
                timeout: duration_ms(*timeout_ms),
                smart_timeout: smart_timeout_ms.and_then(duration_ms),
            })
            .await
        }
        Action::Config {
            synchronous_commit,
            sync_quorum,
            sync_names,
            parameters,
            ..
        } => {
            let req = ConfigRequest {
                parameters: parameters.clone(),
                synchronous_commit: Some(synchronous_commit.clone()),
                synchronous_standbys: Some(SyncStandbys {
                    count: *sync_quorum,
                    names: sync_names.clone(),
                }),
                known_standbys: None,
                complete: true,
            };
            return c
                .config(&req)
                .await
                .map(|r| {
                    (!r.pending_restart.is_empty())
                        .then(|| format!("pending restart: {}", r.pending_restart.join(", ")))
                        .into()
                })
                .map_err(describe);
        }
        Action::RenewLease {
            ttl_ms,
            challenge,
            epoch,
            peers: names,
            ..
        } => {
            let req = LeaseRequest {
                ttl_ms: *ttl_ms,
                challenge: *challenge,
                epoch: *epoch,
                peers: peers(names, members),
                // No member can be promoted: the engine never promotes over
                // this lease running out, so the agent may keep it itself.
                solo: names.is_empty(),
            };
            return tokio::time::timeout(Duration::from_secs(2), c.lease(&req))
                .await
                .map_err(|_| "lease renewal timed out".to_string())?
                .map(|_| Answer::default())
                .map_err(describe);
        }
        Action::Checks { settings, .. } => {
            let req = ChecksRequest {
                settings: settings.clone(),
                members: settings
                    .standbys
                    .iter()
                    .filter_map(|n| members.get(n).cloned())
                    .collect(),
            };
            return c
                .checks(&req)
                .await
                .map(|r| Some(r.message).into())
                .map_err(describe);
        }
        Action::StopVouching { epoch, .. } => {
            return c
                .stop_vouching(&StopVouchingRequest { epoch: *epoch })
                .await
                .map(|r| Answer {
                    detail: Some(format!(
                        "vouches for no primary below epoch {}",
                        r.known_epoch
                    )),
                    facts: ActionFacts {
                        last_vouched_ago_ms: Some(r.last_vouched_ago_ms),
                        ..ActionFacts::default()
                    },
                })
                .map_err(describe);
        }
        Action::SetRole { .. }
        | Action::FenceInstance { .. }
        | Action::Recreate { .. }
        | Action::Event { .. }
        | Action::RequestDone { .. } => return Ok(Answer::default()),
    };
    resp.map(|r| {
        let mut detail = r.message.clone();
        if let Some(n) = r.rewind_needed {
            detail = format!("{detail} (rewind needed: {n})");
        }
        Answer {
            detail: Some(detail),
            facts: facts(&r),
        }
    })
    .map_err(describe)
}
