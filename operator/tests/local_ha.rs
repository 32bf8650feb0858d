//! HA end to end on real PostgreSQL: `tandem local` clusters under a writer
//! that commits numbered rows through the rw endpoint and records which
//! commits were acknowledged. Failover, switchover, pause, rejoin, re-clone,
//! durability, and a restarted `local up` in the middle of a transition.

mod ha_support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tandem_testkit::signal;

use ha_support::cluster::{show, with_role, LocalCluster};
use ha_support::faults::assert_refuses_writes;
use ha_support::ops::{assert_nothing_lost, healthy_with_writer, wait_ack_after, BOOT, FAILOVER};

fn history_kinds(s: &serde_json::Value) -> Vec<(String, String)> {
    s["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| {
                    (
                        e["kind"].as_str().unwrap_or("").to_string(),
                        e["outcome"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_to_named_and_any_moves_rw_and_loses_nothing() {
    let c = LocalCluster::start(
        "sw",
        "  instances: 3\n  instanceOverrides: [{ordinal: 2, priority: 0}]",
    );
    let w = healthy_with_writer(&c).await;
    wait_ack_after(&w, Instant::now(), Duration::from_secs(10)).await;
    assert_eq!(c.primary().as_deref(), Some("sw-0"));

    // Dry run: every precheck reported, nothing changes.
    let before = c.status().expect("status");
    let out = c.cli("switchover", &["--to", "sw-1", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for check in [
        "archive_ready",
        "candidate_lag",
        "wal_senders",
        "replication_slots",
        "replication_connection",
        "shutdown_timeout",
    ] {
        assert!(
            text.contains(check),
            "dry run does not report {check}:\n{text}"
        );
    }
    let after = c.status().expect("status");
    assert_eq!(after["primary"], before["primary"]);
    assert!(after["transition"].is_null());
    assert_eq!(
        history_kinds(&after).last(),
        Some(&("SwitchoverDryRun".to_string(), "DryRun".to_string()))
    );

    // Refusals change nothing.
    let refusals: [(&[&str], &str); 3] = [
        (
            &["--to", "sw-3"],
            "instance sw-3 does not exist (instances: sw-0, sw-1, sw-2)",
        ),
        (&["--to", "sw-0"], "sw-0 is already the primary"),
        (
            &["--to", "sw-2"],
            "sw-2 has priority 0 (learner) and cannot be promoted",
        ),
    ];
    for (args, message) in refusals {
        let out = c.cli("switchover", args);
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "expected {message:?} in:\n{err}");
        let s = c.status().expect("status");
        assert_eq!(s["primary"], "sw-0");
        assert!(
            s["transition"].is_null(),
            "a refused switchover started a transition"
        );
    }

    // Named switchover.
    let t = Instant::now();
    let out = c.cli("switchover", &["--to", "sw-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(c.primary().as_deref(), Some("sw-1"));
    wait_ack_after(&w, t + Duration::from_millis(1), Duration::from_secs(30)).await;
    let gap = w.snapshot().longest_gap_after(t);
    eprintln!("switchover write gap: {gap:?}");

    // `any` picks the best standby that is not a learner: sw-0.
    c.wait_healthy(BOOT);
    let out = c.cli("switchover", &["--to", "any"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(c.primary().as_deref(), Some("sw-0"));
    let s = c.wait_healthy(BOOT);
    assert_eq!(with_role(&s, "learner"), vec!["sw-2".to_string()]);

    let log = w.stop().await;
    assert_nothing_lost(&c, "sw-0", &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_refused_on_archive_backlog_until_forced() {
    let c = LocalCluster::start("ar", "  instances: 2");
    c.wait_healthy(BOOT);
    let status_dir = c.dir.join("ar-0/pgdata/pg_wal/archive_status");
    for i in 0..130 {
        let f = status_dir.join(format!("0000000100000000000001{i:02X}.ready"));
        std::fs::write(&f, b"").expect("write .ready file");
    }
    c.wait_for(
        "the archive check to turn CRITICAL",
        Duration::from_secs(30),
        |s| {
            s["instances"][0]["checks"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|ch| ch["name"] == "archive_ready" && ch["state"] == "CRITICAL")
            })
        },
    );
    let out = c.cli("switchover", &["--to", "ar-1"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("switchover refused: 130 archive-ready files on ar-0 (critical at 128); --force overrides this check"),
        "{err}"
    );
    assert_eq!(c.primary().as_deref(), Some("ar-0"));
    let out = c.cli("switchover", &["--to", "ar-1", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(c.primary().as_deref(), Some("ar-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_loss_under_sync_required_fails_over_and_loses_no_acknowledged_row() {
    let c = LocalCluster::start(
        "nl",
        "  instances: 3\n  replication: {mode: sync, dataDurability: required}",
    );
    let w = healthy_with_writer(&c).await;
    wait_ack_after(&w, Instant::now(), Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = c.primary().expect("primary");
    let agent = c.agent_pid(&old);
    let t = Instant::now();
    signal(agent, Signal::SIGKILL);
    let s = c.wait_for("a new primary", FAILOVER, |s| {
        s["primary"].as_str().is_some_and(|p| p != old)
    });
    let new = s["primary"].as_str().unwrap_or_default().to_string();
    let first = wait_ack_after(&w, t, FAILOVER).await;
    eprintln!(
        "node loss: first acknowledged write {:?} after the kill",
        first.duration_since(t)
    );
    // The old primary comes back by itself as a standby of the new one.
    c.wait_for(
        "the old primary to rejoin as a standby",
        Duration::from_secs(120),
        |s| {
            s["instances"].as_array().is_some_and(|a| {
                a.iter().any(|i| {
                    i["name"] == old.as_str()
                        && i["role"] == "standby"
                        && i["status"] == "running"
                        && i["upstream"] == new.as_str()
                })
            })
        },
    );
    let log = w.stop().await;
    assert_nothing_lost(&c, &new, &log).await;
    let s = c.status().expect("status");
    let failover = s["history"]
        .as_array()
        .and_then(|h| h.iter().rev().find(|e| e["kind"] == "Failover"))
        .cloned();
    let failover = failover.expect("a Failover in history");
    assert_eq!(failover["outcome"], "Succeeded");
    assert_eq!(failover["bytesPossiblyLost"], 0, "{failover}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_is_recovered_in_place_without_failover() {
    let c = LocalCluster::start("cr", "  instances: 3\n  failover: {detectionTimeout: 30s}");
    let w = healthy_with_writer(&c).await;
    wait_ack_after(&w, Instant::now(), Duration::from_secs(20)).await;
    let pid = c.postgres_pid("cr-0").expect("postgres of cr-0 runs");
    let t = Instant::now();
    signal(pid, Signal::SIGKILL);
    let first = wait_ack_after(&w, t, Duration::from_secs(30)).await;
    eprintln!(
        "postgres crash: first acknowledged write {:?} after the kill",
        first.duration_since(t)
    );
    let s = c.wait_healthy(BOOT);
    assert_eq!(s["primary"], "cr-0");
    assert!(
        !history_kinds(&s).iter().any(|(k, _)| k == "Failover"),
        "a crash within detectionTimeout must not fail over"
    );
    let log = w.stop().await;
    assert_nothing_lost(&c, "cr-0", &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_primary_is_replaced_and_accepts_no_writes_when_it_wakes() {
    let c = LocalCluster::start(
        "hg",
        "  instances: 3\n  failover: {detectionTimeout: 2s, leaseTtl: 3s}",
    );
    let w = healthy_with_writer(&c).await;
    wait_ack_after(&w, Instant::now(), Duration::from_secs(20)).await;
    let t = Instant::now();
    let out = c.cli("kill", &["hg-0", "--signal", "STOP"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let s = c.wait_for("a new primary", FAILOVER, |s| {
        s["primary"].as_str().is_some_and(|p| p != "hg-0")
    });
    let new = s["primary"].as_str().unwrap_or_default().to_string();
    wait_ack_after(&w, t, FAILOVER).await;
    let _ = c.cli("kill", &["hg-0", "--signal", "CONT"]);
    // Whatever it does now, the woken server must not take a write.
    assert_refuses_writes(&c.direct("hg-0"), "the old primary", Duration::from_secs(5)).await;
    c.wait_for(
        "the old primary to rejoin as a standby",
        Duration::from_secs(120),
        |s| {
            s["instances"].as_array().is_some_and(|a| {
                a.iter().any(|i| {
                    i["name"] == "hg-0"
                        && i["role"] == "standby"
                        && i["status"] == "running"
                        && i["upstream"] == new.as_str()
                })
            })
        },
    );
    let log = w.stop().await;
    assert_nothing_lost(&c, &new, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_without_a_running_cluster_say_how_to_start_one() {
    let dir = std::env::temp_dir().join(format!("tandem-ha-none-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let bin = ha_support::cluster::tandem();
    let verbs: [&[&str]; 10] = [
        &["status"],
        &["status", "--json"],
        &["switchover", "--to", "any"],
        &["pause"],
        &["unpause"],
        &["restart", "all"],
        &["rejoin", "main-1"],
        &["reclone", "main-1"],
        &["set", "--mode", "sync"],
        &["kill", "main-0"],
    ];
    let run = |v: &[&str]| {
        std::process::Command::new(&bin)
            .arg("local")
            .arg(v[0])
            .arg("--dir")
            .arg(&dir)
            .args(&v[1..])
            .output()
            .expect("run")
    };
    for v in verbs {
        let out = run(v);
        assert_eq!(out.status.code(), Some(1), "{v:?}: {}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with(&format!(
                "no cluster is running in {} (start one with tandem local up)",
                dir.display()
            )),
            "{v:?}: {err}"
        );
    }
    let usage: [&[&str]; 4] = [
        &["set", "--mode", "semi"],
        &["kill", "main-0", "--signal", "HUP"],
        &["switchover", "--bogus"],
        &["set"],
    ];
    for v in usage {
        let out = run(v);
        assert_eq!(out.status.code(), Some(2), "{v:?}: {}", show(&out));
    }
    let out = std::process::Command::new(&bin)
        .args(["local", "up", "--dir"])
        .arg(&dir)
        .args(["-f", "/nonexistent.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yaml"),
        "{}",
        show(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
