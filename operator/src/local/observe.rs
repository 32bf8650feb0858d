//! Turning what the local platform sees (agent `/status` answers, the process
//! table) into the engine's observations. Pure conversions.

use crate::api::agent::AgentStatus;
use crate::api::{InstanceRole, Lsn};
use crate::engine::{AgentReport, ConnectedStandby, LeaseReport, SyncState};

fn lsn(s: &Option<String>) -> Option<Lsn> {
    s.as_deref().and_then(|s| s.parse().ok())
}

fn sync_state(s: &str) -> SyncState {
    match s {
        "sync" => SyncState::Sync,
        "quorum" => SyncState::Quorum,
        "potential" => SyncState::Potential,
        _ => SyncState::Async,
    }
}

/// The engine's view of an agent's status answer.
pub fn report(s: &AgentStatus) -> AgentReport {
    AgentReport {
        // Running means answering in its role: a frozen server whose process
        // exists but does not answer counts as down.
        postgres_running: s.postgres_running && s.ready,
        in_recovery: s.role != InstanceRole::Primary,
        timeline: s.timeline,
        current_lsn: lsn(&s.current_lsn),
        received_lsn: lsn(&s.received_lsn),
        replayed_lsn: lsn(&s.replayed_lsn),
        checkpoint_lsn: lsn(&s.checkpoint_lsn),
        upstream: s.upstream.as_ref().map(|m| m.name.clone()),
        streaming: s
            .wal_receiver
            .as_ref()
            .is_some_and(|w| w.status == "streaming"),
        standbys: s
            .downstreams
            .iter()
            .map(|d| ConnectedStandby {
                name: d.name.clone(),
                sync_state: sync_state(&d.sync_state),
                flush_lsn: lsn(&d.flush_lsn),
            })
            .collect(),
        archive_ready: s.archive_ready,
        max_wal_senders: s.max_wal_senders,
        max_replication_slots: s.max_replication_slots,
        slots_used: Some(s.replication_slots_used),
        replication_to: Default::default(),
        lease: Some(LeaseReport {
            held: s.lease.held,
            remaining_ms: s
                .lease
                .remaining_ms
                .and_then(|m| i64::try_from(m).ok())
                .unwrap_or(0),
        }),
        fenced: s.fenced,
        pending_restart: !s.pending_restart.is_empty(),
        system_identifier: s.system_identifier.clone(),
        synchronous_standby_names: s.synchronous_standby_names.clone(),
        synchronous_commit: s.synchronous_commit.clone(),
        parameters: None,
        operation: s.operation.clone(),
        checks: s.checks.clone(),
    }
}
