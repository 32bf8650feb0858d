//! Helpers shared by the HA operation tests and `make bench`: waiting for the
//! writer, reading the persisted engine status, finding a standby's
//! walreceiver, and checks on rows and history. Does I/O (processes, files, SQL).

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_testkit::{poll_until, poll_until_async, POLL};

use super::cluster::LocalCluster;
use super::writer::{lost, prepare, stored_ids, WriteLog, Writer};

/// How long a 3-instance cluster may take to come up.
pub const BOOT: Duration = Duration::from_secs(120);
/// How long a failover may take in the tests (not a measurement).
pub const FAILOVER: Duration = Duration::from_secs(60);
/// Writer pace.
pub const WRITE_EVERY: Duration = Duration::from_millis(5);

/// Wait until healthy, create the table through rw, and start a writer.
pub async fn healthy_with_writer(c: &LocalCluster) -> Writer {
    healthy_with_writer_every(c, WRITE_EVERY).await
}

/// [`healthy_with_writer`] with a writer committing every `every` (`make bench`: 20 ms).
pub async fn healthy_with_writer_every(c: &LocalCluster, every: Duration) -> Writer {
    c.wait_healthy(BOOT);
    let rw = c.rw();
    let last = RefCell::new(None);
    let ready = poll_until_async(Duration::from_secs(30), POLL, || {
        let attempt = prepare(&rw);
        let last = &last;
        async move {
            match attempt.await {
                Ok(()) => Some(()),
                Err(e) => {
                    eprintln!("waiting for rw: {e}");
                    *last.borrow_mut() = Some(e);
                    None
                }
            }
        }
    })
    .await;
    if ready.is_none() {
        panic!("rw endpoint never accepted writes: {:?}", last.into_inner());
    }
    let w = Writer::start(rw, 0, every);
    wait_ack_after(&w, Instant::now(), Duration::from_secs(20)).await;
    w
}

/// Wait until the writer has an acknowledgement at or after `t`.
pub async fn wait_ack_after(w: &Writer, t: Instant, timeout: Duration) -> Instant {
    let acked = poll_until_async(timeout, Duration::from_millis(20), || {
        let at = w.snapshot().first_ack_after(t);
        async move { at }
    })
    .await;
    acked.unwrap_or_else(|| panic!("no write was acknowledged through rw within {timeout:?}"))
}

/// Every acknowledged row is on `name` (read straight from its postgres).
pub async fn assert_nothing_lost(c: &LocalCluster, name: &str, log: &WriteLog) {
    // The instance may still be finishing a restart: retry for a while.
    let target = c.direct(name);
    let last = RefCell::new(None);
    let stored = poll_until_async(Duration::from_secs(30), Duration::from_millis(250), || {
        let attempt = stored_ids(&target);
        let last = &last;
        async move {
            match attempt.await {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("reading rows from {name}: {e}; retrying");
                    *last.borrow_mut() = Some(e);
                    None
                }
            }
        }
    })
    .await
    .unwrap_or_else(|| panic!("cannot read rows from {name}: {:?}", last.borrow()));
    let missing = lost(log, &stored);
    assert!(
        missing.is_empty(),
        "{} acknowledged rows missing on {name} (of {} acknowledged): first {:?}",
        missing.len(),
        log.acked.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        !log.acked.is_empty(),
        "the writer never got an acknowledgement"
    );
}

/// The engine status persisted by `local up` (DIR/status.json), read straight from the file.
pub fn persisted(c: &LocalCluster) -> Option<Value> {
    let text = std::fs::read_to_string(c.dir.join("status.json")).ok()?;
    serde_json::from_str::<Value>(&text).ok()
}

/// Poll DIR/status.json (fast, no RPC) until a transition of `kind` is persisted.
pub fn wait_persisted_transition(c: &LocalCluster, kind: &str, timeout: Duration) -> Value {
    let found = poll_until(timeout, Duration::from_millis(2), || {
        persisted(c)
            .map(|p| p["status"]["transition"].clone())
            .filter(|t| t["kind"] == kind)
    });
    if let Some(t) = found {
        return t;
    }
    // The logs follow in the failure dump.
    panic!("no {kind} transition was persisted within {timeout:?}");
}

/// History entries of `kind`.
pub fn history_of(s: &Value, kind: &str) -> Vec<Value> {
    s["history"]
        .as_array()
        .map(|h| h.iter().filter(|e| e["kind"] == kind).cloned().collect())
        .unwrap_or_default()
}

/// The instance `name` of a status report.
pub fn instance<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .unwrap_or(&Value::Null)
}

/// Wait until `name` runs as a streaming standby of `primary`.
pub fn wait_standby_of(c: &LocalCluster, name: &str, primary: &str, timeout: Duration) -> Value {
    c.wait_for(
        &format!("{name} to run as a standby of {primary}"),
        timeout,
        |s| {
            let i = instance(s, name);
            i["role"] == "standby" && i["status"] == "running" && i["upstream"] == primary
        },
    )
}

/// The standbys in a status report (role standby or learner).
pub fn standbys(s: &Value) -> Vec<String> {
    s["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["role"] == "standby" || i["role"] == "learner")
                .filter_map(|i| i["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Pids of the children of `name`'s postmaster whose title contains `what`
/// (`walreceiver`, `walsender`…).
pub fn server_children(c: &LocalCluster, name: &str, what: &str) -> Vec<i32> {
    let Some(postmaster) = c.postgres_pid(name) else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Field 4 (after the parenthesised command) is the parent pid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid != Some(postmaster) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(what) {
            found.push(pid);
        }
    }
    found
}

/// Pid of the walreceiver of `name`'s postgres, if one runs.
pub fn walreceiver_pid(c: &LocalCluster, name: &str) -> Option<i32> {
    server_children(c, name, "walreceiver").first().copied()
}

/// Wait for `name`'s walreceiver and return its pid.
pub fn wait_walreceiver(c: &LocalCluster, name: &str, timeout: Duration) -> i32 {
    poll_until(timeout, Duration::from_millis(50), || {
        walreceiver_pid(c, name)
    })
    .unwrap_or_else(|| panic!("no walreceiver found for {name} within {timeout:?}"))
}

/// Copies of `name`'s data directory moved aside by a re-clone (`pgdata.old-*`).
pub fn moved_aside(c: &LocalCluster, name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(c.dir.join(name))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|f| f.to_string_lossy().starts_with("pgdata.old-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Run a CLI verb and insist on its exit code; returns stdout + stderr.
pub fn expect_exit(c: &LocalCluster, verb: &str, args: &[&str], code: i32) -> String {
    let out = c.cli(verb, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "tandem local {verb} {args:?}: {}",
        super::cluster::show(&out)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
