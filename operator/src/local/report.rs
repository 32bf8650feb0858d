//! The status report of a cluster (`tandem local status [--json]`, `kubectl
//! tandem status`): its JSON shape (DESIGN.md §6, binding), built from a
//! `DbClusterStatus`, and the table of DESIGN.md §1 row 2 both print. Pure,
//! apart from writing the table to the given writer.

use std::io::Write;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::api::agent::ToolProgress;
use crate::api::{
    CheckState, DbClusterStatus, HealthCheck, HistoryEntry, InstanceRole, InstanceStatus, Lsn,
    Transition,
};

/// What `tandem local status --json` prints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// Cluster name.
    pub name: String,
    /// Phase (Creating, Healthy, Degraded, FailingOver…).
    pub phase: String,
    /// Current primary, if any.
    pub primary: Option<String>,
    /// Whether automation is paused.
    pub paused: bool,
    /// async or sync.
    pub mode: String,
    /// The transition in progress.
    pub transition: Option<Transition>,
    /// Why the engine would act but does not, with figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
    /// Every instance.
    pub instances: Vec<InstanceReport>,
    /// Finished transitions and requests, newest last.
    pub history: Vec<HistoryEntry>,
}

/// One row of the status table.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    /// Instance name.
    pub name: String,
    /// primary, standby, learner, fenced, down or unknown.
    pub role: String,
    /// running, stopped, unreachable, crashed…
    pub status: String,
    /// The instance it streams from.
    pub upstream: Option<String>,
    /// Timeline.
    pub timeline: Option<i64>,
    /// Current (primary) or received (standby) LSN.
    pub lsn: Option<Lsn>,
    /// Bytes behind the primary.
    pub lag_bytes: Option<i64>,
    /// Standby: seconds since the last replayed commit (0 when caught up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// Standby: bytes received but not replayed yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lag_bytes: Option<i64>,
    /// Standby: async, potential, sync or quorum (the primary's pg_stat_replication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_state: Option<String>,
    /// Standby: seconds since its walreceiver last heard from the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_seen_secs: Option<f64>,
    /// Promotion priority (0 = learner).
    pub priority: i32,
    /// Health checks.
    pub checks: Vec<HealthCheck>,
    /// Seconds since the agent last answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_secs: Option<f64>,
    /// Where its postgres listens (the instance's own loopback address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
    /// While pg_basebackup or pg_rewind runs on it: how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ToolProgress>,
}

/// A running tool's progress for people: `pg_basebackup 45% (12.0 MB of 26.7 MB)`.
pub fn describe_progress(p: &ToolProgress) -> String {
    let mut s = p.tool.clone();
    match (p.percent, p.done_bytes, p.total_bytes) {
        (Some(pc), Some(d), Some(t)) => s.push_str(&format!(
            " {pc}% ({} of {})",
            human_bytes(i64::try_from(d).unwrap_or(i64::MAX)),
            human_bytes(i64::try_from(t).unwrap_or(i64::MAX))
        )),
        _ => s.push_str(" starting"),
    }
    if p.since_progress_ms >= 5000 {
        s.push_str(&format!(
            ", no progress for {}s",
            p.since_progress_ms / 1000
        ));
    }
    s
}

/// Seconds from an RFC 3339 time to `now` (None when it does not parse).
fn secs_since(at: Option<&str>, now: jiff::Timestamp) -> Option<f64> {
    let t: jiff::Timestamp = at?.parse().ok()?;
    let ms = now.as_millisecond() - t.as_millisecond();
    Some((ms.max(0) as f64) / 1000.0)
}

/// The lowercase name of a role, as status and the table spell it.
pub fn role_name(r: InstanceRole) -> &'static str {
    match r {
        InstanceRole::Primary => "primary",
        InstanceRole::Standby => "standby",
        InstanceRole::Learner => "learner",
        InstanceRole::Fenced => "fenced",
        InstanceRole::Down => "down",
        InstanceRole::Unknown => "unknown",
    }
}

/// The status word of an instance from what status says of it (a platform
/// that knows more, like the local process table, may put its own).
fn status_word(i: &InstanceStatus) -> String {
    if i.agent_unanswered.is_some() {
        return "unreachable".into();
    }
    match i.role {
        InstanceRole::Down => "down".into(),
        InstanceRole::Fenced => "fenced".into(),
        InstanceRole::Unknown => "unknown".into(),
        _ if i.ready => "running".into(),
        InstanceRole::Primary => "running (not writable)".into(),
        _ => "running (not streaming)".into(),
    }
}

impl InstanceReport {
    /// One row from an instance of status, as seen at `now`.
    pub fn from_status(i: &InstanceStatus, now: jiff::Timestamp) -> Self {
        InstanceReport {
            name: i.name.clone(),
            role: role_name(i.role).into(),
            status: match &i.progress {
                Some(p) => format!("{} ({})", status_word(i), describe_progress(p)),
                None => status_word(i),
            },
            upstream: i.upstream.clone(),
            timeline: i.timeline,
            lsn: i.lsn,
            lag_bytes: i.lag_bytes,
            lag_seconds: i.lag_seconds,
            replay_lag_bytes: i.replay_lag_bytes,
            sync_state: i.sync_state.clone(),
            upstream_seen_secs: secs_since(i.upstream_last_seen.as_deref(), now),
            priority: i.priority,
            checks: i.checks.clone(),
            last_seen_secs: secs_since(i.last_seen.as_deref(), now),
            address: None,
            progress: i.progress.clone(),
        }
    }
}

impl StatusReport {
    /// The report of cluster `name` (replication mode `mode`) from its status, as seen at `now`.
    pub fn from_status(name: &str, mode: &str, st: &DbClusterStatus, now: jiff::Timestamp) -> Self {
        StatusReport {
            name: name.to_string(),
            phase: st
                .phase
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "Creating".into()),
            primary: st.current_primary.clone(),
            paused: st.paused,
            mode: mode.to_string(),
            transition: st.transition.clone(),
            blocked_by: st.blocked_by.clone(),
            instances: st
                .instances
                .iter()
                .map(|i| InstanceReport::from_status(i, now))
                .collect(),
            history: st.history.clone(),
        }
    }
}

/// "OK", or the count of checks in each state that is not OK.
fn checks_summary(checks: &[HealthCheck]) -> String {
    let count = |s: CheckState| checks.iter().filter(|c| c.state == s).count();
    let (c, w) = (count(CheckState::Critical), count(CheckState::Warning));
    match (c, w) {
        _ if checks.is_empty() => String::new(),
        (0, 0) => "OK".into(),
        (0, w) => format!("{w} WARNING"),
        (c, 0) => format!("{c} CRITICAL"),
        (c, w) => format!("{c} CRITICAL, {w} WARNING"),
    }
}

fn human_bytes(b: i64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Write the status table (like `repmgr cluster show`) to `out`.
pub fn print_table(r: &StatusReport, out: &mut dyn Write) {
    let _ = writeln!(
        out,
        "Cluster {}  phase {}  primary {}  mode {}  paused {}",
        r.name,
        r.phase,
        r.primary.as_deref().unwrap_or("none"),
        r.mode,
        if r.paused { "yes" } else { "no" }
    );
    if let Some(t) = &r.transition {
        let _ = writeln!(
            out,
            "Transition {} {} step {} ({})",
            t.kind,
            t.target.as_deref().unwrap_or(""),
            t.step,
            t.reason
        );
    }
    if let Some(b) = &r.blocked_by {
        let _ = writeln!(out, "Blocked: {b}");
    }
    let with_address = r.instances.iter().any(|i| i.address.is_some());
    let mut header = vec![
        "Name",
        "Role",
        "Status",
        "Upstream",
        "Upstream seen",
        "Timeline",
        "LSN",
        "Lag",
        "Lag (s)",
        "Replay lag",
        "Sync",
        "Priority",
        "Paused",
        "Last seen",
        "Checks",
    ];
    if with_address {
        header.push("Address");
    }
    let rows: Vec<Vec<String>> = r
        .instances
        .iter()
        .map(|i| {
            let mut row = vec![
                i.name.clone(),
                i.role.clone(),
                i.status.clone(),
                i.upstream.clone().unwrap_or_default(),
                i.upstream_seen_secs
                    .map(|s| format!("{s:.1}s ago"))
                    .unwrap_or_default(),
                i.timeline.map(|t| t.to_string()).unwrap_or_default(),
                i.lsn.map(|l| l.to_string()).unwrap_or_default(),
                i.lag_bytes.map(human_bytes).unwrap_or_default(),
                i.lag_seconds.map(|s| format!("{s:.1}")).unwrap_or_default(),
                i.replay_lag_bytes.map(human_bytes).unwrap_or_default(),
                i.sync_state.clone().unwrap_or_default(),
                i.priority.to_string(),
                if r.paused { "yes".into() } else { "no".into() },
                i.last_seen_secs
                    .map(|s| format!("{s:.1}s ago"))
                    .unwrap_or_else(|| "never".into()),
                checks_summary(&i.checks),
            ];
            if with_address {
                row.push(i.address.map(|a| a.to_string()).unwrap_or_default());
            }
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!(" {c:<w$} "))
            .collect::<Vec<_>>()
            .join("|")
            .trim_end()
            .to_string()
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(out, "{}", line(&header));
    let _ = writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    let warnings: Vec<String> = r
        .instances
        .iter()
        .flat_map(|i| {
            i.checks
                .iter()
                .filter(|c| c.state != CheckState::Ok)
                .map(move |c| format!("{}: {} {:?}: {}", i.name, c.name, c.state, c.message))
        })
        .collect();
    for w in warnings {
        let _ = writeln!(out, "{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_instance_with_the_runbook_columns() {
        let r = StatusReport {
            name: "main".into(),
            phase: "Healthy".into(),
            primary: Some("main-0".into()),
            mode: "async".into(),
            instances: vec![
                InstanceReport {
                    name: "main-0".into(),
                    role: "primary".into(),
                    status: "running".into(),
                    timeline: Some(1),
                    lsn: Some(Lsn(0x3000060)),
                    lag_bytes: Some(0),
                    priority: 5,
                    last_seen_secs: Some(0.3),
                    address: Some("127.77.3.1:24001".parse().unwrap()),
                    ..Default::default()
                },
                InstanceReport {
                    name: "main-1".into(),
                    role: "standby".into(),
                    status: "running".into(),
                    upstream: Some("main-0".into()),
                    lag_bytes: Some(2048),
                    priority: 0,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut out = Vec::new();
        print_table(&r, &mut out);
        let text = String::from_utf8(out).unwrap();
        for needle in [
            "Name",
            "Role",
            "Upstream",
            "Upstream seen",
            "Timeline",
            "LSN",
            "Lag",
            "Lag (s)",
            "Replay lag",
            "Sync",
            "Priority",
            "Paused",
            "Last seen",
            "Checks",
            "Address",
        ] {
            assert!(text.contains(needle), "missing column {needle}:\n{text}");
        }
        assert!(
            text.contains("main-1")
                && text.contains("2.0 kB")
                && text.contains("0/3000060")
                && text.contains("127.77.3.1:24001"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "name",
            "phase",
            "primary",
            "paused",
            "mode",
            "transition",
            "instances",
            "history",
        ] {
            assert!(json.get(key).is_some(), "status --json lacks {key}");
        }
        for key in [
            "name", "role", "status", "upstream", "timeline", "lsn", "lagBytes", "priority",
            "checks",
        ] {
            assert!(
                json["instances"][0].get(key).is_some(),
                "instance lacks {key}"
            );
        }
    }

    fn table(r: &StatusReport) -> String {
        let mut out = Vec::new();
        print_table(r, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn cell<'a>(text: &'a str, row: &str, column: &str) -> &'a str {
        let mut lines = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("Name"));
        let header: Vec<&str> = lines.next().unwrap().split('|').map(str::trim).collect();
        let col = header
            .iter()
            .position(|h| *h == column)
            .unwrap_or_else(|| panic!("no {column}"));
        let line = lines
            .find(|l| l.split('|').next().map(str::trim) == Some(row))
            .unwrap_or_else(|| panic!("no row {row}:\n{text}"));
        line.split('|').map(str::trim).nth(col).unwrap_or("")
    }

    #[test]
    fn a_table_from_status_shows_lag_seconds_replay_lag_sync_state_and_checks() {
        let now: jiff::Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let st = DbClusterStatus {
            phase: Some(crate::api::Phase::Degraded),
            current_primary: Some("main-0".into()),
            paused: true,
            instances: vec![
                InstanceStatus {
                    name: "main-0".into(),
                    role: InstanceRole::Primary,
                    ready: true,
                    timeline: Some(2),
                    lsn: Some(Lsn(0x3000060)),
                    lag_bytes: Some(0),
                    priority: 5,
                    last_seen: Some("2026-01-01T00:00:09.5Z".into()),
                    checks: vec![HealthCheck {
                        name: "downstream".into(),
                        state: CheckState::Warning,
                        value: Some(1),
                        message: "1 attached, missing [\"main-2\"]".into(),
                    }],
                    ..Default::default()
                },
                InstanceStatus {
                    name: "main-1".into(),
                    role: InstanceRole::Standby,
                    ready: true,
                    lag_bytes: Some(4096),
                    lag_seconds: Some(1.25),
                    replay_lag_bytes: Some(1024),
                    sync_state: Some("quorum".into()),
                    upstream: Some("main-0".into()),
                    upstream_last_seen: Some("2026-01-01T00:00:08Z".into()),
                    priority: 5,
                    last_seen: Some("2026-01-01T00:00:09Z".into()),
                    checks: vec![HealthCheck {
                        name: "role".into(),
                        state: CheckState::Ok,
                        value: None,
                        message: "standby".into(),
                    }],
                    ..Default::default()
                },
                InstanceStatus {
                    name: "main-2".into(),
                    role: InstanceRole::Down,
                    agent_unanswered: Some(crate::api::AgentUnanswered::Timeout),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let r = StatusReport::from_status("main", "sync", &st, now);
        let text = table(&r);
        assert!(
            text.starts_with("Cluster main  phase Degraded  primary main-0  mode sync  paused yes"),
            "{text}"
        );
        assert_eq!(cell(&text, "main-1", "Lag"), "4.0 kB");
        assert_eq!(cell(&text, "main-1", "Lag (s)"), "1.2");
        assert_eq!(cell(&text, "main-1", "Replay lag"), "1.0 kB");
        assert_eq!(cell(&text, "main-1", "Sync"), "quorum");
        assert_eq!(cell(&text, "main-1", "Upstream"), "main-0");
        assert_eq!(cell(&text, "main-1", "Upstream seen"), "2.0s ago");
        assert_eq!(cell(&text, "main-1", "Last seen"), "1.0s ago");
        assert_eq!(cell(&text, "main-1", "Checks"), "OK");
        assert_eq!(cell(&text, "main-1", "Paused"), "yes");
        assert_eq!(cell(&text, "main-0", "Role"), "primary");
        assert_eq!(cell(&text, "main-0", "Timeline"), "2");
        assert_eq!(cell(&text, "main-0", "LSN"), "0/3000060");
        assert_eq!(cell(&text, "main-0", "Checks"), "1 WARNING");
        assert_eq!(cell(&text, "main-2", "Status"), "unreachable");
        assert_eq!(cell(&text, "main-2", "Role"), "down");
        assert_eq!(cell(&text, "main-2", "Last seen"), "never");
        // The check that is not OK is spelled out under the table.
        assert!(
            text.contains("main-0: downstream Warning: 1 attached, missing [\"main-2\"]"),
            "{text}"
        );
        // No instance has a local address: no Address column (Kubernetes).
        assert!(!text.contains("Address"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["instances"][1]["lagSeconds"], 1.25);
        assert_eq!(json["instances"][1]["replayLagBytes"], 1024);
        assert_eq!(json["instances"][1]["syncState"], "quorum");
    }
}
