//! What a failed HA test prints about its local cluster (the Drop of
//! `LocalCluster` while the test panics), before anything is stopped:
//! `tandem local status`, the engine status `local up` persisted (phase,
//! transition, blockedBy, the latest history), the tail of `local up`'s log,
//! and per instance the tail of its agent's log and of the lines its
//! postgres wrote there. The whole logs and the persisted status are copied
//! under the cargo target directory (`failed/` in `CARGO_TARGET_TMPDIR`), kept
//! after the cluster's own directory is removed. Runs the CLI, reads and
//! copies files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tandem_testkit::{file_tail, last_lines, wait_exit};

/// Lines of `local up`'s log.
const UP_LINES: usize = 80;
/// Lines of each agent's log.
const AGENT_LINES: usize = 40;
/// Lines each postgres wrote.
const POSTGRES_LINES: usize = 20;
/// Latest history entries.
const HISTORY: usize = 8;
/// `tandem local status` answers within its own timeouts; a hung one is killed.
const STATUS_TIMEOUT: Duration = Duration::from_secs(20);

/// The whole dump of the cluster in `dir` (DIR of `tandem local up --dir`).
pub fn failure_dump(dir: &Path) -> String {
    let mut out = format!(
        "===== failure dump of the local cluster in {}\n",
        dir.display()
    );
    section(&mut out, "tandem local status", &cli_status(dir));
    section(
        &mut out,
        "engine status persisted by local up (status.json)",
        &persisted_summary(dir),
    );
    section(
        &mut out,
        "tandem local up",
        &file_tail(&dir.with_file_name("up.log"), UP_LINES),
    );
    for log in agent_logs(dir) {
        let name = log
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        section(
            &mut out,
            &format!("agent of {name}"),
            &file_tail(&log, AGENT_LINES),
        );
        section(
            &mut out,
            &format!("postgres of {name} (its lines in the agent's log)"),
            &postgres_lines(&log),
        );
    }
    out.push_str(&format!("----- whole logs\n{}\n", keep_logs(dir)));
    out.push_str("===== end of failure dump");
    out
}

/// Copy `local up`'s log, status.json and every agent log of the cluster in
/// `dir` to `CARGO_TARGET_TMPDIR/failed/<cluster directory>`; says where, or why not.
fn keep_logs(dir: &Path) -> String {
    let base = dir.parent().unwrap_or(dir);
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cluster".into());
    let dest = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("failed")
        .join(name);
    let mut files = vec![dir.with_file_name("up.log"), dir.join("status.json")];
    files.extend(agent_logs(dir));
    let copied = std::fs::create_dir_all(&dest).and_then(|()| {
        for f in files.iter().filter(|f| f.exists()) {
            if let Some(n) = f.file_name() {
                std::fs::copy(f, dest.join(n))?;
            }
        }
        Ok(())
    });
    match copied {
        Ok(()) => format!("copied to {}", dest.display()),
        Err(e) => format!("(not copied to {}: {e})", dest.display()),
    }
}

fn section(out: &mut String, title: &str, body: &str) {
    out.push_str(&format!("----- {title}\n{}\n", body.trim_end()));
}

/// `tandem local status` (the table), or how it failed.
fn cli_status(dir: &Path) -> String {
    let child = Command::new(super::cluster::tandem())
        .args(["local", "status", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return format!("(cannot run: {e})"),
    };
    if wait_exit(&mut child, STATUS_TIMEOUT).is_none() {
        let _ = child.kill();
    }
    match child.wait_with_output() {
        Ok(o) => format!(
            "{}{}(exit {:?})",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            o.status.code()
        ),
        Err(e) => format!("(no output: {e})"),
    }
}

/// The fields of the persisted status a reader needs first, as JSON.
fn persisted_summary(dir: &Path) -> String {
    let path = dir.join("status.json");
    let persisted = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str::<Value>(&text),
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    match persisted {
        Ok(p) => serde_json::to_string_pretty(&summary(&p)).unwrap_or_default(),
        Err(e) => format!("(unreadable {}: {e})", path.display()),
    }
}

/// Phase, primary, transition, blockedBy, the latest history and the role labels.
fn summary(persisted: &Value) -> Value {
    let s = &persisted["status"];
    let history = s["history"].as_array().cloned().unwrap_or_default();
    let latest = &history[history.len().saturating_sub(HISTORY)..];
    json!({
        "phase": s["phase"],
        "currentPrimary": s["currentPrimary"],
        "targetPrimary": s["targetPrimary"],
        "timeline": s["timeline"],
        "paused": persisted["paused"],
        "blockedBy": s["blockedBy"],
        "transition": s["transition"],
        "history (latest)": latest,
        "labels": persisted["labels"],
    })
}

/// DIR/logs/*.log (one per instance), sorted.
fn agent_logs(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir.join("logs"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    logs
}

/// The agent logs postgres's stderr under target `postgres`: its last lines.
fn postgres_lines(agent_log: &Path) -> String {
    let text = std::fs::read_to_string(agent_log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| is_postgres_line(l)).collect();
    last_lines(&lines.join("\n"), POSTGRES_LINES)
}

fn is_postgres_line(line: &str) -> bool {
    line.contains(" postgres: ")
}
