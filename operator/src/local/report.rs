//! The status report of a local cluster (`tandem local status [--json]`):
//! its JSON shape (DESIGN.md §6, binding) and the table of DESIGN.md §1 row 2.
//! Pure, apart from writing the table to the given writer.

use std::io::Write;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::api::agent::ToolProgress;
use crate::api::{HealthCheck, HistoryEntry, Lsn, Transition};

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
    let header = [
        "Name",
        "Role",
        "Status",
        "Upstream",
        "Timeline",
        "LSN",
        "Lag",
        "Priority",
        "Paused",
        "Last seen",
        "Address",
    ];
    let rows: Vec<[String; 11]> = r
        .instances
        .iter()
        .map(|i| {
            [
                i.name.clone(),
                i.role.clone(),
                i.status.clone(),
                i.upstream.clone().unwrap_or_default(),
                i.timeline.map(|t| t.to_string()).unwrap_or_default(),
                i.lsn.map(|l| l.to_string()).unwrap_or_default(),
                i.lag_bytes.map(human_bytes).unwrap_or_default(),
                i.priority.to_string(),
                if r.paused { "yes".into() } else { "no".into() },
                i.last_seen_secs
                    .map(|s| format!("{s:.1}s ago"))
                    .unwrap_or_else(|| "never".into()),
                i.address.map(|a| a.to_string()).unwrap_or_default(),
            ]
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
                .filter(|c| c.state != crate::api::CheckState::Ok)
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
            "Timeline",
            "LSN",
            "Lag",
            "Priority",
            "Paused",
            "Last seen",
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
}
