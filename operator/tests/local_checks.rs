//! The agents' health checks on real PostgreSQL through `tandem local`: the
//! thresholds of the spec reach the agents (their archive check and the
//! switchover precheck agree), the primary expects every other member (the
//! downstream and slot checks fire when one is gone or its slot is missing),
//! the replication-connection precheck is measured by the primary's agent,
//! and the status table shows lag in seconds, replay lag and sync state.

mod ha_support;

use std::time::Duration;

use serde_json::Value;

use ha_support::cluster::{show, LocalCluster};
use ha_support::faults::{stop_standbys, wake_standbys};
use ha_support::ops::{expect_exit, instance, BOOT};

fn check<'a>(s: &'a Value, name: &str, check: &str) -> Option<&'a Value> {
    instance(s, name)["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == check)
}

fn check_is(s: &Value, name: &str, which: &str, state: &str) -> bool {
    check(s, name, which).is_some_and(|c| c["state"] == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_checks_follow_the_spec_and_expect_every_standby() {
    let c = LocalCluster::start(
        "ck",
        "  instances: 3\n  switchover: {archiveReadyWarning: 3, archiveReadyCritical: 5}",
    );
    c.wait_healthy(BOOT);
    c.wait_for(
        "the primary to see both standbys attached with their slots",
        Duration::from_secs(30),
        |s| {
            check(s, "ck-0", "downstream").is_some_and(|d| d["state"] == "OK" && d["value"] == 2)
                && check_is(s, "ck-0", "slots", "OK")
        },
    );

    // The replication-connection precheck is the primary agent's measurement.
    let out = expect_exit(&c, "switchover", &["--to", "ck-1", "--dry-run"], 0);
    assert!(
        out.contains("replication_connection: OK (ck-0 can open a replication connection to ck-1)"),
        "{out}"
    );

    // The table: the runbook columns, lag in seconds, replay lag, sync state, checks.
    let out = c.cli("status", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    for col in ["Lag (s)", "Replay lag", "Sync", "Upstream seen", "Checks"] {
        assert!(table.contains(col), "no {col} column:\n{table}");
    }
    let s = c.status().expect("status");
    let standby = instance(&s, "ck-1");
    assert!(standby["lagSeconds"].is_number(), "{standby}");
    assert_eq!(standby["replayLagBytes"], 0, "{standby}");
    assert_eq!(standby["syncState"], "async", "{standby}");
    assert!(standby["upstreamSeenSecs"].is_number(), "{standby}");

    // Thresholds of the spec, not the agent's defaults (64 / 128).
    let status_dir = c.dir.join("ck-0/pgdata/pg_wal/archive_status");
    let ready = |n: u32| {
        for i in 0..n {
            let f = status_dir.join(format!("0000000100000000000001{i:02X}.ready"));
            std::fs::write(&f, b"").expect("write .ready file");
        }
    };
    ready(4);
    c.wait_for(
        "the archive check to turn WARNING at 4 files (warning 3)",
        Duration::from_secs(30),
        |s| check_is(s, "ck-0", "archive_ready", "WARNING"),
    );
    ready(6);
    let s = c.wait_for(
        "the archive check to turn CRITICAL at 6 files (critical 5)",
        Duration::from_secs(30),
        |s| check_is(s, "ck-0", "archive_ready", "CRITICAL"),
    );
    let msg = check(&s, "ck-0", "archive_ready").unwrap()["message"].clone();
    assert!(msg.as_str().unwrap_or("").contains("critical 5"), "{msg}");
    // The precheck agrees with the agent's check.
    let out = expect_exit(&c, "switchover", &["--to", "ck-1"], 1);
    assert!(out.contains("(critical at 5)"), "{out}");
    for i in 0..6u32 {
        let _ =
            std::fs::remove_file(status_dir.join(format!("0000000100000000000001{i:02X}.ready")));
    }

    // A standby gone: the primary misses it, then its slot.
    stop_standbys(&c, &["ck-2".to_string()]);
    let s = c.wait_for(
        "the primary's downstream check to miss ck-2",
        Duration::from_secs(30),
        |s| check_is(s, "ck-0", "downstream", "WARNING"),
    );
    let d = check(&s, "ck-0", "downstream").unwrap();
    assert!(d["message"].as_str().unwrap_or("").contains("ck-2"), "{d}");
    let primary = c.direct("ck-0").connect().await.expect("connect ck-0");
    primary
        .execute("SELECT pg_drop_replication_slot('ck_2')", &[])
        .await
        .expect("drop ck-2's slot");
    c.wait_for(
        "the slots check to report ck-2's slot missing",
        Duration::from_secs(30),
        |s| {
            check(s, "ck-0", "slots").is_some_and(|c| {
                c["state"] == "WARNING"
                    && c["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("missing [\"ck_2\"]")
            })
        },
    );

    // Back: attached again with a slot, every check OK.
    wake_standbys(&c, &["ck-2".to_string()]);
    c.wait_for(
        "ck-2 attached again with its slot",
        Duration::from_secs(90),
        |s| {
            check(s, "ck-0", "downstream").is_some_and(|d| d["state"] == "OK" && d["value"] == 2)
                && check_is(s, "ck-0", "slots", "OK")
        },
    );
}
