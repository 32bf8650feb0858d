//! Maintenance by hand on real PostgreSQL through `tandem local`: pause is
//! shown at once and recorded, requests still run while paused, a slow
//! in-place restart of the primary (a smart stop waiting for a session,
//! longer than detectionTimeout) is no failover, and a durability change is
//! a transition (history, sync state confirmed) or a refusal that changes
//! nothing.

mod ha_support;

use std::time::{Duration, Instant};

use ha_support::cluster::LocalCluster;
use ha_support::faults::wait_sync_states;
use ha_support::ops::{expect_exit, history_of, BOOT};

fn last_of(s: &serde_json::Value, kind: &str) -> serde_json::Value {
    history_of(s, kind)
        .last()
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} entry in {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_shows_at_once_is_recorded_and_a_switchover_still_runs_while_paused() {
    let c = LocalCluster::start("mp", "  instances: 2\n  failover: {detectionTimeout: 2s}");
    c.wait_healthy(BOOT);
    let old = c.primary().expect("primary");

    expect_exit(&c, "pause", &[], 0);
    // No wait: the command returns once status says so.
    let s = c.status().expect("status");
    assert_eq!(s["paused"], true, "{s}");
    let table = expect_exit(&c, "status", &[], 0);
    assert!(table.contains("paused yes"), "{table}");
    let e = last_of(&s, "Pause");
    assert_eq!(e["outcome"], "Succeeded");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m
                .contains("requests (switchover, restart, rejoin, re-clone, promote) still run")),
        "{e}"
    );

    let out = expect_exit(&c, "switchover", &["--to", "any"], 0);
    assert!(out.contains("switched over"), "{out}");
    let s = c.status().expect("status");
    assert_ne!(s["primary"], old.as_str(), "{s}");
    assert_eq!(s["paused"], true);

    expect_exit(&c, "unpause", &[], 0);
    let s = c.status().expect("status");
    assert_eq!(s["paused"], false, "{s}");
    assert_eq!(last_of(&s, "Unpause")["outcome"], "Succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restart_in_place_longer_than_detection_timeout_is_no_failover() {
    // A smart stop waits up to 6s for a client session; detectionTimeout is 1s.
    let c = LocalCluster::start(
        "mr",
        "  instances: 2\n  primaryUpdateMethod: restart\n  failover: {detectionTimeout: 1s, leaseTtl: 3s}\n  restart: {smartShutdownTimeout: 6s, shutdownTimeout: 20s}",
    );
    c.wait_healthy(BOOT);
    let primary = c.primary().expect("primary");
    let held = c
        .direct(&primary)
        .connect()
        .await
        .expect("a client session");
    held.batch_execute("SELECT 1").await.expect("session works");
    let timeline = c.status().expect("status")["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == primary.as_str()))
        .map(|i| i["timeline"].clone())
        .expect("timeline");

    let dir = c.dir.clone();
    let name = primary.clone();
    let started = Instant::now();
    let restart = std::thread::spawn(move || {
        std::process::Command::new(ha_support::cluster::tandem())
            .args(["local", "restart", "--dir"])
            .arg(&dir)
            .arg(&name)
            .output()
            .expect("run tandem local restart")
    });
    while !restart.is_finished() {
        let s = c.status().expect("status answers during the restart");
        assert_eq!(
            s["primary"],
            primary.as_str(),
            "the primary changed during its own restart: {s}"
        );
        assert!(history_of(&s, "Failover").is_empty(), "a failover: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = restart.join().expect("restart thread");
    let took = started.elapsed();
    assert!(out.status.success(), "{}", ha_support::cluster::show(&out));
    assert!(
        took > Duration::from_secs(5),
        "the smart stop did not wait for the session ({took:?}): the test proves nothing"
    );
    let s = c.status().expect("status");
    let e = last_of(&s, "Restart");
    assert_eq!(e["outcome"], "Succeeded", "{e}");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains(&format!(
            "{primary} restarted (stopped fast (smart timed out))"
        ))),
        "{e}"
    );
    assert_eq!(s["primary"], primary.as_str());
    assert!(history_of(&s, "Failover").is_empty(), "{s}");
    let after = s["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == primary.as_str()))
        .map(|i| i["timeline"].clone())
        .expect("timeline");
    assert_eq!(after, timeline, "restarted in place: same timeline");
    assert!(
        held.batch_execute("SELECT 1").await.is_err(),
        "the fast stop ends the session"
    );
    c.wait_healthy(BOOT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_change_is_a_recorded_transition_and_an_unmeetable_one_is_refused() {
    // dc-2 is a learner: never synchronous.
    let c = LocalCluster::start(
        "dc",
        "  instances: 3\n  instanceOverrides: [{ordinal: 2, priority: 0}]",
    );
    c.wait_healthy(BOOT);
    let p = c.primary().expect("primary");

    let out = expect_exit(
        &c,
        "set",
        &["--mode", "sync", "--data-durability", "required"],
        0,
    );
    assert!(
        out.contains("durability changed from async to sync"),
        "{out}"
    );
    let s = c.status().expect("status");
    assert_eq!(s["mode"], "sync");
    let e = last_of(&s, "DurabilityChange");
    assert_eq!(e["outcome"], "Succeeded", "{e}");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("sync state dc-1 quorum, dc-2 async"),
        "{e}"
    );
    wait_sync_states(&c, &p, |st| {
        st.iter().filter(|s| *s == "quorum").count() == 1
    })
    .await;
    let names = || async {
        let client = c.direct(&p).connect().await.expect("connect");
        let row = client
            .query_one("SHOW synchronous_standby_names", &[])
            .await
            .expect("show");
        row.get::<_, String>(0)
    };
    assert_eq!(names().await, "ANY 1 (\"dc-1\")");

    // Two synchronous standbys of one that can be: refused, nothing changes.
    let out = c.cli("set", &["--sync-standbys", "2"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        ha_support::cluster::show(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused: syncStandbys 2 but only 1 standbys can be synchronous"),
        "{err}"
    );
    let s = c.status().expect("status");
    assert_eq!(last_of(&s, "DurabilityChange")["outcome"], "Refused");
    assert!(s["transition"].is_null(), "{s}");
    assert_eq!(
        names().await,
        "ANY 1 (\"dc-1\")",
        "a refusal changes nothing"
    );

    let out = expect_exit(&c, "set", &["--mode", "async", "--sync-standbys", "1"], 0);
    assert!(out.contains("to async"), "{out}");
    wait_sync_states(&c, &p, |st| {
        st.len() == 2 && st.iter().all(|s| s == "async")
    })
    .await;
    assert_eq!(names().await, "");
    let s = c.status().expect("status");
    assert_eq!(s["mode"], "async");
    assert_eq!(last_of(&s, "DurabilityChange")["outcome"], "Succeeded");
}
