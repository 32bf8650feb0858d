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
        // Running only once the agent knows in which role: a server whose
        // probe has not answered yet must not look like a primary.
        postgres_running: s.postgres_running
            && matches!(s.role, InstanceRole::Primary | InstanceRole::Standby),
        in_recovery: s.role == InstanceRole::Standby,
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

/// Parse `ANY n ("a", "b")` (as the engine renders synchronous_standby_names)
/// into a count and names; the empty string is count 0.
pub fn parse_sync_names(s: &str) -> Option<(u32, Vec<String>)> {
    let s = s.trim();
    if s.is_empty() {
        return Some((0, vec![]));
    }
    let rest = s.strip_prefix("ANY ")?;
    let (n, list) = rest.split_once(' ')?;
    let n: u32 = n.parse().ok()?;
    let list = list.trim().strip_prefix('(')?.strip_suffix(')')?;
    let names = list
        .split(',')
        .map(|x| x.trim().trim_matches('"').to_string())
        .filter(|x| !x.is_empty() && x != "*")
        .collect();
    Some((n, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_sync_names_parse_back() {
        let s = crate::engine::sync_standby_names(1, &["main-1".into(), "main-2".into()]);
        assert_eq!(
            parse_sync_names(&s),
            Some((1, vec!["main-1".into(), "main-2".into()]))
        );
        assert_eq!(parse_sync_names(""), Some((0, vec![])));
        assert_eq!(parse_sync_names("ANY 2 (*)"), Some((2, vec![])));
        assert_eq!(parse_sync_names("FIRST 1 (a)"), None);
    }
}
