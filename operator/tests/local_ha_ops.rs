//! HA operations end to end on real PostgreSQL through `tandem local`: pause,
//! the lag precheck, rejoin with a rewind and the re-clone fallback, explicit
//! re-clone (also while paused), durability changes at runtime, a restarted `local up` in the
//! middle of a transition, restarts and bad input. Each test runs its own
//! 3-instance cluster under an acknowledged-writes writer.

mod ha_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tandem_testkit::{poll_until_async, postmaster_pid, signal, POLL};

use ha_support::cluster::LocalCluster;
use ha_support::faults::{
    assert_refuses_writes, diverge, stop_standbys, wait_sync_states, wake, wake_standbys,
};
use ha_support::ops::{
    assert_nothing_lost, expect_exit, healthy_with_writer, history_of, instance, moved_aside,
    wait_ack_after, wait_persisted_transition, wait_standby_of, wait_walreceiver, BOOT, FAILOVER,
};
use ha_support::writer::stored_ids;

const FAST: &str = "  instances: 3\n  failover: {detectionTimeout: 2s, leaseTtl: 3s}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_cluster_keeps_a_frozen_primary_until_unpaused_then_fails_over() {
    let c = LocalCluster::start(
        "pz",
        &format!("{FAST}\n  replication: {{mode: sync, dataDurability: required}}"),
    );
    let w = healthy_with_writer(&c).await;
    let old = c.primary().expect("primary");
    expect_exit(&c, "pause", &[], 0);
    c.wait_for("paused", Duration::from_secs(10), |s| s["paused"] == true);
    expect_exit(&c, "kill", &[&old, "--signal", "STOP", "--agent"], 0);
    expect_exit(&c, "kill", &[&old, "--signal", "STOP"], 0);

    // Well over detectionTimeout + leaseTtl (2s + 3s): status answers, nothing is promoted.
    let frozen = Instant::now();
    let mut blocked = None;
    while frozen.elapsed() < Duration::from_secs(12) {
        let s = c
            .status()
            .expect("status answers while the primary is frozen");
        assert_eq!(s["primary"], old.as_str(), "promoted while paused: {s}");
        assert_eq!(s["paused"], true);
        assert!(
            !history_of(&s, "Failover")
                .iter()
                .any(|e| e["outcome"] == "Succeeded"),
            "a failover while paused"
        );
        if let Some(b) = s["blockedBy"].as_str() {
            blocked = Some(b.to_string());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let blocked = blocked.expect("status never said why no failover happens");
    assert!(blocked.contains("paused"), "blockedBy: {blocked}");
    let table = expect_exit(&c, "status", &[], 0);
    assert!(table.contains("paused yes"), "{table}");

    let t = Instant::now();
    expect_exit(&c, "unpause", &[], 0);
    let s = c.wait_for("a new primary", FAILOVER, |s| {
        s["primary"].as_str().is_some_and(|p| p != old)
    });
    let new = s["primary"].as_str().unwrap_or_default().to_string();
    wait_ack_after(&w, t, FAILOVER).await;

    wake(&c, &old);
    assert_refuses_writes(&c.direct(&old), &old, Duration::from_secs(5)).await;
    wait_standby_of(&c, &old, &new, Duration::from_secs(120));
    let log = w.stop().await;
    assert_nothing_lost(&c, &new, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_refused_when_the_candidate_lags_and_nothing_changes() {
    let c = LocalCluster::start("lg", "  instances: 3\n  switchover: {maxLagBytes: 1Ki}");
    let w = healthy_with_writer(&c).await;
    let log = w.stop().await;
    let receiver = wait_walreceiver(&c, "lg-1", Duration::from_secs(20));
    signal(receiver, Signal::SIGSTOP);
    let client = c.rw().connect().await.expect("rw");
    client
        .execute(
            "INSERT INTO tandem_writes (id) SELECT g FROM generate_series(20000000, 20000999) g",
            &[],
        )
        .await
        .expect("batch");
    // Asked at once: the request's pass judges probes begun after it, not
    // the agents' latest (up to a probe interval old, the primary's from
    // before the batch), so the lag it finds is the batch.
    let before = c.status().expect("status");
    let out = expect_exit(&c, "switchover", &["--to", "lg-1"], 1);
    assert!(out.contains("switchover refused"), "{out}");
    assert!(out.contains("lg-1 lags lg-0 by"), "{out}");
    assert!(out.contains("(max 1024)"), "{out}");
    c.wait_for("lg-1 to lag in status", Duration::from_secs(30), |s| {
        instance(s, "lg-1")["lagBytes"]
            .as_i64()
            .is_some_and(|l| l > 1024)
    });
    let after = c.status().expect("status");
    assert_eq!(after["primary"], "lg-0");
    assert!(after["transition"].is_null());
    assert_eq!(after["mode"], before["mode"]);
    let last = after["history"].as_array().and_then(|h| h.last()).cloned();
    let last = last.expect("history");
    assert_eq!(last["kind"], "Switchover");
    assert_eq!(last["outcome"], "Refused");

    // Once it catches up, the same switchover goes through.
    signal(receiver, Signal::SIGCONT);
    c.wait_for("lg-1 to catch up", Duration::from_secs(60), |s| {
        instance(s, "lg-1")["lagBytes"]
            .as_i64()
            .is_some_and(|l| l <= 1024)
    });
    expect_exit(&c, "switchover", &["--to", "lg-1"], 0);
    assert_eq!(c.primary().as_deref(), Some("lg-1"));
    c.wait_healthy(BOOT);
    assert_nothing_lost(&c, "lg-1", &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sibling_standby_holds_a_switchover_for_seconds_not_a_minute() {
    // The old primary's shutdown waits until each connected standby confirmed
    // its shutdown checkpoint; a standby whose walreceiver hangs never does,
    // and its walsender gives up only at wal_sender_timeout (60 s by
    // PostgreSQL's default, 5 s as tandem sets it). The switchover itself
    // then waits a while for hs-2 to follow; the writes need not.
    let c = LocalCluster::start("hs", "  instances: 3");
    let w = healthy_with_writer(&c).await;
    let receiver = wait_walreceiver(&c, "hs-2", Duration::from_secs(20));
    signal(receiver, Signal::SIGSTOP);
    let t = Instant::now();
    let cli = c
        .command("switchover", &["--to", "hs-1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tandem local switchover");
    c.wait_for("hs-1 to be the primary", Duration::from_secs(90), |s| {
        s["primary"] == "hs-1"
    });
    wait_ack_after(&w, Instant::now(), FAILOVER).await;
    let gap = w.snapshot().longest_gap_after(t);
    signal(receiver, Signal::SIGCONT);
    let out = cli.wait_with_output().expect("switchover exits");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        gap < Duration::from_secs(12),
        "writes paused {gap:?} with hs-2 hung: {text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("switched over from hs-0 to hs-1"), "{text}");
    wait_standby_of(&c, "hs-2", "hs-1", Duration::from_secs(60));
    c.wait_healthy(BOOT);
    let log = w.stop().await;
    assert_nothing_lost(&c, "hs-1", &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diverged_old_primary_is_rewound_when_it_rejoins() {
    let c = LocalCluster::start("rw", FAST);
    let w = healthy_with_writer(&c).await;
    let (old, new, diverged) = diverge(&c).await;
    let out = expect_exit(&c, "rejoin", &[&old, "--dry-run"], 0);
    assert!(out.contains("a rewind is needed"), "{out}");
    let s = c.status().expect("status");
    assert_ne!(
        instance(&s, &old)["status"],
        "running",
        "dry-run changed it"
    );

    let t = Instant::now();
    expect_exit(&c, "unpause", &[], 0);
    wait_standby_of(&c, &old, &new, Duration::from_secs(120));
    // It streams before the demote's answer (what its rewind discarded) is recorded.
    let s = c.wait_for("the rejoin to finish", Duration::from_secs(60), |s| {
        s["transition"].is_null()
    });
    wait_ack_after(&w, t, FAILOVER).await;
    assert!(
        moved_aside(&c, &old).is_empty(),
        "rewound, not re-cloned, was expected"
    );
    assert!(history_of(&s, "Reclone").is_empty(), "{}", s["history"]);
    let rejoined = history_of(&s, "Rejoin");
    assert!(
        rejoined
            .iter()
            .any(|e| e["outcome"] == "Succeeded"
                && e["message"].as_str().unwrap_or("").contains(&old)),
        "{rejoined:?}"
    );
    let failover = history_of(&s, "Failover");
    let failover = failover.last().expect("a failover in history");
    // The accounting uses the last LSN polled from the old primary, so it
    // cannot see a batch committed just before the freeze: it must be there,
    // but it is a lower bound.
    assert!(
        failover["oldPrimaryLsn"].is_string()
            && failover["promotedLsn"].is_string()
            && failover["bytesPossiblyLost"].is_i64(),
        "the failover has no RPO accounting: {failover}"
    );
    eprintln!("failover accounting: {failover}");
    // The rows only the old primary had are gone from it: it follows the new history.
    let on_old = stored_ids(&c.direct(&old)).await.expect("rows on old");
    // Once it rejoined, the entry says what its rewind really threw away: at
    // least the WAL of the acknowledged rows it alone had (a heap insert of a
    // bigint row is more than 50 bytes of WAL), and never less than the
    // lower bound the failover recorded.
    let discarded = failover["bytesDiscarded"].as_i64().unwrap_or_else(|| {
        panic!("the failover entry does not say what the rewind discarded: {failover}")
    });
    let lower = failover["bytesPossiblyLost"].as_i64().unwrap_or(0);
    let rows = i64::try_from(diverged.len()).unwrap_or(i64::MAX);
    assert!(
        discarded >= rows * 50 && discarded >= lower,
        "{discarded} bytes discarded for {rows} acknowledged rows lost (lower bound {lower}): {failover}"
    );
    eprintln!("{rows} acknowledged rows lost on the old timeline: its rewind discarded {discarded} bytes (bytesPossiblyLost said {lower})");
    assert!(
        diverged.iter().all(|i| !on_old.contains(i)),
        "the rejoined instance still has rows of its abandoned timeline"
    );
    let log = w.stop().await;
    let on_new = stored_ids(&c.direct(&new)).await.expect("rows on new");
    let after: Vec<i64> = log
        .acked
        .iter()
        .filter(|(_, at)| *at > t)
        .map(|(id, _)| *id)
        .filter(|id| !on_new.contains(id))
        .collect();
    assert!(
        after.is_empty(),
        "rows acknowledged after the failover lost: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rewind_falls_back_to_reclone_and_keeps_the_old_data_aside() {
    let c = LocalCluster::start("rf", FAST);
    let w = healthy_with_writer(&c).await;
    let (old, new, _) = diverge(&c).await;
    // Remove the WAL pg_rewind would read on the old primary.
    let wal = c.dir.join(&old).join("pgdata/pg_wal");
    let mut removed = 0;
    for e in std::fs::read_dir(&wal)
        .expect("pg_wal")
        .filter_map(|e| e.ok())
    {
        let n = e.file_name().to_string_lossy().to_string();
        if n.len() == 24 && n.chars().all(|ch| ch.is_ascii_hexdigit()) {
            std::fs::remove_file(e.path()).expect("remove WAL segment");
            removed += 1;
        }
    }
    assert!(removed > 0, "no WAL segment found in {}", wal.display());
    expect_exit(&c, "unpause", &[], 0);
    wait_standby_of(&c, &old, &new, Duration::from_secs(180));
    // It streams before the re-clone's answer comes back and the rejoin is recorded.
    let s = c.wait_for("the rejoin to finish", Duration::from_secs(60), |s| {
        s["transition"].is_null()
    });
    let aside = moved_aside(&c, &old);
    assert_eq!(
        aside.len(),
        1,
        "expected one pgdata.old-<timestamp>: {aside:?}"
    );
    assert!(
        aside[0].join("PG_VERSION").exists(),
        "the old data directory was not kept"
    );
    // The fallback is written down: a Reclone entry saying the rewind
    // failed, then the rejoin finishing by re-cloning.
    let reclones = history_of(&s, "Reclone");
    assert!(
        reclones.iter().any(|e| {
            let m = e["message"].as_str().unwrap_or("");
            m.contains(&format!("re-cloning {old} from {new}")) && m.contains("rewind")
        }),
        "history does not say the rewind failed: {}",
        s["history"]
    );
    assert!(
        history_of(&s, "Rejoin").iter().any(|e| {
            e["outcome"] == "Succeeded"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("{old} re-cloned from {new}"))
        }),
        "{}",
        s["history"]
    );
    eprintln!("re-clone fallback: {reclones:?}");
    let t = Instant::now();
    wait_ack_after(&w, t, FAILOVER).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclone_of_a_standby_moves_its_data_aside_and_refuses_the_primary() {
    let c = LocalCluster::start("rc", "  instances: 3");
    let w = healthy_with_writer(&c).await;
    let out = expect_exit(&c, "reclone", &["rc-0"], 1);
    assert!(
        out.contains("rc-0 is the primary; switch over first"),
        "{out}"
    );
    let out = expect_exit(&c, "reclone", &["rc-7"], 1);
    assert!(
        out.contains("instance rc-7 does not exist (instances: rc-0, rc-1, rc-2)"),
        "{out}"
    );
    assert!(
        moved_aside(&c, "rc-1").is_empty(),
        "a refused re-clone changed rc-1"
    );
    // A running standby is judged without being stopped.
    let out = expect_exit(&c, "rejoin", &["rc-1", "--dry-run"], 0);
    assert!(out.contains("a rejoin would change nothing"), "{out}");
    let s = c.status().expect("status");
    assert_eq!(
        instance(&s, "rc-1")["status"],
        "running",
        "dry-run changed it"
    );
    assert_eq!(instance(&s, "rc-1")["upstream"], "rc-0");
    let dry = history_of(&s, "RejoinDryRun");
    assert!(
        dry.iter().any(|e| e["outcome"] == "DryRun"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("streams from rc-0")),
        "{dry:?}"
    );

    // rc-1's reported position can be newer than the primary's (each agent
    // reports its own, at its own time) and the engine then refuses to
    // re-clone what looks like the most advanced copy: stop writing and let
    // the two reports agree first.
    let log = w.stop().await;
    c.wait_for(
        "rc-1 and rc-0 to report one LSN",
        Duration::from_secs(30),
        |s| {
            instance(s, "rc-1")["lsn"].is_string()
                && instance(s, "rc-1")["lsn"] == instance(s, "rc-0")["lsn"]
        },
    );
    let before = log.acked_ids();
    // A requested re-clone runs while automation is paused: a person asked.
    expect_exit(&c, "pause", &[], 0);
    expect_exit(&c, "reclone", &["rc-1"], 0);
    assert_eq!(moved_aside(&c, "rc-1").len(), 1);
    let s = wait_standby_of(&c, "rc-1", "rc-0", BOOT);
    assert_eq!(s["paused"], true);
    expect_exit(&c, "unpause", &[], 0);
    assert!(
        history_of(&s, "Reclone")
            .iter()
            .any(|e| e["outcome"] == "Succeeded"),
        "{}",
        s["history"]
    );
    let rc1 = c.direct("rc-1");
    let complete = poll_until_async(Duration::from_secs(30), POLL, || async {
        let on = stored_ids(&rc1).await.ok()?;
        before.iter().all(|i| on.contains(i)).then_some(())
    })
    .await;
    assert!(complete.is_some(), "re-cloned rc-1 lacks acknowledged rows");
    assert_nothing_lost(&c, "rc-0", &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_required_blocks_writes_without_standbys_and_preferred_keeps_writing() {
    let c = LocalCluster::start("du", "  instances: 3");
    let w = healthy_with_writer(&c).await;
    let sb = vec!["du-1".to_string(), "du-2".to_string()];
    expect_exit(
        &c,
        "set",
        &["--mode", "sync", "--data-durability", "required"],
        0,
    );
    c.wait_for("mode sync", Duration::from_secs(20), |s| {
        s["mode"] == "sync"
    });
    wait_sync_states(&c, "du-0", |st| {
        st.iter().any(|s| s == "sync" || s == "quorum")
    })
    .await;

    // required: with every standby gone, nothing is acknowledged.
    stop_standbys(&c, &sb);
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let late = w
        .snapshot()
        .first_ack_after(down + Duration::from_millis(500));
    assert!(
        late.is_none(),
        "a commit was acknowledged with no standby running"
    );
    let woke = Instant::now();
    wake_standbys(&c, &sb);
    wait_ack_after(&w, woke, Duration::from_secs(60)).await;
    c.wait_healthy(BOOT);

    // preferred: writes continue without standbys.
    expect_exit(&c, "set", &["--data-durability", "preferred"], 0);
    stop_standbys(&c, &sb);
    let down = Instant::now();
    wait_ack_after(&w, down + Duration::from_secs(1), Duration::from_secs(30)).await;
    wake_standbys(&c, &sb);
    c.wait_healthy(BOOT);
    wait_sync_states(&c, "du-0", |st| {
        st.iter().any(|s| s == "sync" || s == "quorum")
    })
    .await;

    expect_exit(&c, "set", &["--mode", "async"], 0);
    c.wait_for("mode async", Duration::from_secs(20), |s| {
        s["mode"] == "async"
    });
    wait_sync_states(&c, "du-0", |st| {
        st.len() == 2 && st.iter().all(|s| s == "async")
    })
    .await;
    let log = w.stop().await;
    assert_nothing_lost(&c, "du-0", &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_local_up_finishes_an_interrupted_switchover_and_failover() {
    let mut c = LocalCluster::start(
        "ru",
        &format!("{FAST}\n  replication: {{mode: sync, dataDurability: required}}"),
    );
    let w = healthy_with_writer(&c).await;

    // Switchover: kill `local up` once the transition is persisted.
    let mut sw = std::process::Command::new(ha_support::cluster::tandem())
        .args(["local", "switchover", "--to", "ru-1", "--dir"])
        .arg(&c.dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("switchover");
    let tr = wait_persisted_transition(&c, "Switchover", Duration::from_secs(30));
    c.kill_up();
    eprintln!("killed local up during switchover step {}", tr["step"]);
    let _ = sw.wait();
    c.spawn_up();
    let s = c.wait_healthy(BOOT);
    let done = history_of(&s, "Switchover");
    let done = done.last().expect("the switchover is in history");
    match done["outcome"].as_str() {
        Some("Succeeded") => assert_eq!(s["primary"], "ru-1"),
        Some("RolledBack") => assert_eq!(s["primary"], "ru-0"),
        other => panic!("switchover ended {other:?}: {done}"),
    }
    let t = Instant::now();
    wait_ack_after(&w, t, FAILOVER).await;

    // Failover: node loss of the primary, then kill `local up` mid-failover.
    let old = c.primary().expect("primary");
    signal(c.agent_pid(&old), Signal::SIGKILL);
    let tr = wait_persisted_transition(&c, "Failover", FAILOVER);
    c.kill_up();
    eprintln!("killed local up during failover step {}", tr["step"]);
    c.spawn_up();
    let s = c.wait_for("a new primary", FAILOVER, |s| {
        s["primary"].as_str().is_some_and(|p| p != old) && s["transition"].is_null()
    });
    let new = s["primary"].as_str().unwrap_or_default().to_string();
    wait_standby_of(&c, &old, &new, Duration::from_secs(120));
    c.wait_healthy(BOOT);
    let t = Instant::now();
    wait_ack_after(&w, t, FAILOVER).await;
    let log = w.stop().await;
    assert_nothing_lost(&c, &new, &log).await;
}

/// Postmaster pid of every instance whose pid file names a live process.
fn pids(c: &LocalCluster) -> BTreeMap<String, i32> {
    ["rs-0", "rs-1", "rs-2"]
        .iter()
        .filter_map(|n| c.postgres_pid(n).map(|p| (n.to_string(), p)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_one_then_all_standbys_first_and_bad_input_exit_codes() {
    let c = LocalCluster::start("rs", "  instances: 3");
    let w = healthy_with_writer(&c).await;
    let before = pids(&c);
    assert_eq!(before.len(), 3);
    expect_exit(&c, "restart", &["rs-1"], 0);
    let s = c.wait_healthy(BOOT);
    let after = pids(&c);
    assert_ne!(
        after.get("rs-1"),
        before.get("rs-1"),
        "rs-1 was not restarted"
    );
    assert_eq!(after.get("rs-0"), before.get("rs-0"));
    assert_eq!(after.get("rs-2"), before.get("rs-2"));
    assert_eq!(s["primary"], "rs-0");

    // restart all: watch when each postmaster changes.
    let initial = pids(&c);
    let primary = c.primary().expect("primary");
    let watch_dir = c.dir.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let watcher = std::thread::spawn(move || {
        let mut changed: BTreeMap<String, Instant> = BTreeMap::new();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            for (n, p) in &initial {
                if postmaster_pid(&watch_dir.join(n).join("pgdata")) != Some(*p) {
                    changed.entry(n.clone()).or_insert_with(Instant::now);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        changed
    });
    expect_exit(&c, "restart", &["all"], 0);
    let s = c.wait_healthy(BOOT);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let changed = watcher.join().expect("watcher");
    assert_eq!(
        changed.len(),
        3,
        "not every instance restarted: {changed:?}"
    );
    let primary_at = changed[&primary];
    for (n, at) in &changed {
        assert!(
            *at <= primary_at,
            "{n} restarted after the primary {primary}"
        );
    }
    assert!(
        history_of(&s, "Restart")
            .iter()
            .any(|e| e["outcome"] == "Succeeded"),
        "{}",
        s["history"]
    );

    // Bad input: refused (1) or usage (2), and nothing changes.
    let unknown = "instance rs-9 does not exist (instances: rs-0, rs-1, rs-2)";
    for (verb, args) in [
        ("restart", vec!["rs-9"]),
        ("rejoin", vec!["rs-9"]),
        ("reclone", vec!["rs-9"]),
        ("kill", vec!["rs-9"]),
        ("switchover", vec!["--to", "rs-9"]),
    ] {
        let out = expect_exit(&c, verb, &args, 1);
        assert!(out.contains(unknown), "{verb}: {out}");
    }
    let usage: [(&str, &[&str]); 6] = [
        ("restart", &[]),
        ("set", &["--sync-standbys", "0"]),
        ("set", &["--synchronous-commit", "maybe"]),
        ("set", &["--data-durability", "sometimes"]),
        ("kill", &["rs-0", "--signal", "TERM"]),
        ("status", &["--bogus"]),
    ];
    for (verb, args) in usage {
        expect_exit(&c, verb, args, 2);
    }
    let now = c.wait_healthy(BOOT);
    assert_eq!(now["primary"], s["primary"]);
    assert_eq!(now["mode"], "async");
    let log = w.stop().await;
    let p = now["primary"].as_str().unwrap_or_default().to_string();
    assert_nothing_lost(&c, &p, &log).await;
}

/// `tandem local promote` (issue 9): refused while the primary runs (use a
/// switchover) and for an unknown instance; with automation paused and the
/// primary's agent and postgres frozen, promoting a chosen standby fences the
/// old primary first, moves rw and loses no acknowledged write (sync +
/// required), and the history says it was a manual promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_promotion_while_paused_fences_the_old_primary_and_moves_rw() {
    let c = LocalCluster::start(
        "mp",
        &format!("{FAST}\n  replication: {{mode: sync, dataDurability: required}}"),
    );
    let w = healthy_with_writer(&c).await;
    let old = c.primary().expect("primary");
    let standby = ["mp-0", "mp-1", "mp-2"]
        .into_iter()
        .find(|n| *n != old)
        .expect("a standby");
    let out = expect_exit(&c, "promote", &[standby], 1);
    assert!(out.contains("use a switchover"), "{out}");
    let out = expect_exit(&c, "promote", &["mp-7"], 1);
    assert!(out.contains("does not exist"), "{out}");

    expect_exit(&c, "pause", &[], 0);
    c.wait_for("paused", Duration::from_secs(10), |s| s["paused"] == true);
    expect_exit(&c, "kill", &[&old, "--signal", "STOP", "--agent"], 0);
    expect_exit(&c, "kill", &[&old, "--signal", "STOP"], 0);
    // Paused: nothing happens by itself.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(c.status().expect("status")["primary"], old.as_str());

    let t = Instant::now();
    // The synchronous standby may be either one; force covers the other.
    let out = expect_exit(&c, "promote", &[standby, "--force"], 0);
    eprintln!("{out}");
    let s = c.wait_for("the promoted standby as primary", FAILOVER, |s| {
        s["primary"] == standby && s["transition"].is_null()
    });
    wait_ack_after(&w, t, FAILOVER).await;
    let failover = history_of(&s, "Failover");
    let entry = failover.last().expect("a failover entry");
    assert_eq!(entry["outcome"], "Succeeded", "{entry}");
    assert!(
        entry["message"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("manual promotion of {standby}")),
        "{entry}"
    );
    assert_eq!(s["paused"], true, "the promotion does not unpause");
    wake(&c, &old);
    let log = w.stop().await;
    assert_nothing_lost(&c, standby, &log).await;
}
