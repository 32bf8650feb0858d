//! Re-clone progress and stall detection end to end on real PostgreSQL
//! through `tandem local`: pg_basebackup's progress shows in `tandem local
//! status` while a larger database is cloned, and a clone whose source stops
//! sending (its base-backup walsender SIGSTOPped) is stopped after
//! `spec.rejoin.stallTimeout` and reported, while the primary is untouched.

mod ha_support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tandem_testkit::signal;

use ha_support::cluster::LocalCluster;
use ha_support::ops::{expect_exit, history_of, instance, wait_standby_of, BOOT};

/// Thaws a SIGSTOPped process whatever happens to the test.
struct Thaw(Option<i32>);

impl Drop for Thaw {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            signal(pid, Signal::SIGCONT);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reclone_is_stopped_and_reported_with_its_progress() {
    let c = LocalCluster::start("cl", "  instances: 2\n  rejoin: {stallTimeout: 6s}");
    c.wait_healthy(BOOT);
    let p = c.direct("cl-0").connect().await.expect("primary");
    // ~120 MB: long enough a base backup to catch its walsender streaming files.
    p.batch_execute(
        "CREATE TABLE big AS SELECT g, repeat(md5(g::text), 30) AS pad \
         FROM generate_series(1, 120000) g; CHECKPOINT",
    )
    .await
    .expect("fill");
    c.wait_for("cl-1 to catch up", Duration::from_secs(120), |s| {
        instance(s, "cl-1")["lagBytes"].as_i64() == Some(0)
    });

    let dir = c.dir.clone();
    let cli = std::thread::spawn(move || {
        std::process::Command::new(ha_support::cluster::tandem())
            .args(["local", "reclone", "--dir"])
            .arg(&dir)
            .arg("cl-1")
            .output()
            .expect("reclone cli")
    });
    // The walsender serving the base backup, caught while it streams files.
    let started = Instant::now();
    let mut frozen = Thaw(None);
    while started.elapsed() < Duration::from_secs(60) {
        let rows = p
            .query(
                "SELECT pid FROM pg_stat_progress_basebackup \
                 WHERE phase = 'streaming database files'",
                &[],
            )
            .await
            .expect("progress view");
        if let Some(r) = rows.first() {
            let pid: i32 = r.get(0);
            signal(pid, Signal::SIGSTOP);
            frozen.0 = Some(pid);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sender = frozen.0.expect("never saw the base backup streaming");

    // Throttled (it runs 3 ms in every 300 ms), the clone still makes
    // progress: it shows in status, and it outlives the stall timeout.
    let throttled = Instant::now();
    let mut seen = None;
    let mut last = serde_json::Value::Null;
    let mut last_sent = Instant::now();
    while throttled.elapsed() < Duration::from_secs(40) {
        signal(sender, Signal::SIGCONT);
        tokio::time::sleep(Duration::from_millis(3)).await;
        signal(sender, Signal::SIGSTOP);
        last_sent = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Some(s) = c.status() else {
            last = serde_json::json!("status unreadable");
            continue;
        };
        let pr = &instance(&s, "cl-1")["progress"];
        let moving = pr["tool"] == "pg_basebackup"
            && pr["doneBytes"].as_u64().is_some_and(|d| d > 0)
            && pr["totalBytes"].as_u64().is_some_and(|t| t > 50 << 20)
            && pr["percent"].as_u64().is_some_and(|p| p < 100)
            && pr["sinceProgressMs"].as_u64().is_some_and(|ms| ms < 6000);
        last = serde_json::json!({
            "progress": pr,
            "cl-1": instance(&s, "cl-1"),
            "transition": s["transition"],
            "history": s["history"],
        });
        if moving && pr["elapsedMs"].as_u64().is_some_and(|ms| ms > 7500) {
            seen = Some(pr.clone());
            break;
        }
    }
    let Some(pr) = seen else {
        panic!("no moving clone progress in status past the stall timeout; last: {last}");
    };
    assert!(history_of(&c.status().expect("status"), "Reclone")
        .iter()
        .all(|e| e["outcome"] != "Failed"));
    let table = expect_exit(&c, "status", &[], 0);
    assert!(
        table.contains("pg_basebackup ") && table.contains("% ("),
        "status table lacks the clone's progress:\n{table}"
    );
    eprintln!("progress while throttled: {pr}\n{table}");

    // Now it stops sending altogether (left SIGSTOPped since its last
    // moment running, which is what the stall timeout counts from).
    let stalled_from = last_sent;
    // Stopped after the stall timeout, and said so.
    let s = c.wait_for(
        "the stalled re-clone to fail",
        Duration::from_secs(60),
        |s| {
            history_of(s, "Reclone")
                .iter()
                .any(|e| e["outcome"] == "Failed")
        },
    );
    let stalled_after = stalled_from.elapsed();
    let failed = history_of(&s, "Reclone")
        .into_iter()
        .find(|e| e["outcome"] == "Failed")
        .expect("failed entry");
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("pg_basebackup made no progress for 6s"),
        "{message}"
    );
    assert!(
        stalled_after >= Duration::from_secs(5) && stalled_after < Duration::from_secs(50),
        "{stalled_after:?}"
    );
    let out = cli.join().expect("cli thread");
    eprintln!("reclone cli: {}", ha_support::cluster::show(&out));
    drop(frozen);

    // The primary never noticed; a new re-clone brings cl-1 back.
    assert_eq!(c.primary().as_deref(), Some("cl-0"));
    p.execute("INSERT INTO big VALUES (0, 'after')", &[])
        .await
        .expect("primary writes");
    // (The automatic rejoin of the stopped cl-1 may be under way already,
    // in which case this request is refused as busy: either brings it back.)
    let again = c.cli("reclone", &["cl-1"]);
    eprintln!("second reclone: {}", ha_support::cluster::show(&again));
    wait_standby_of(&c, "cl-1", "cl-0", Duration::from_secs(180));
    let s1 = c.direct("cl-1").connect().await.expect("cl-1");
    let n: i64 = s1
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 120001);
}
