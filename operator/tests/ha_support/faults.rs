//! Fault injection and durability helpers of the HA operation tests:
//! freezing and waking instances, creating a diverged old primary, probing
//! that a woken server takes no write, pg_stat_replication on the primary.
//! Does I/O (CLI, signals, SQL).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tandem_testkit::{poll_until_async, signal, signal_group, POLL};

use super::cluster::{show, LocalCluster};
use super::ops::{expect_exit, instance, server_children, wait_persisted_transition, FAILOVER};
use super::writer::{stored_ids, Target};

/// Try a write straight on `target` for `window`: every attempt must fail (or not be acknowledged).
pub async fn assert_refuses_writes(target: &Target, who: &str, window: Duration) {
    let deadline = Instant::now() + window;
    let mut attempts = 0;
    while Instant::now() < deadline {
        if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(2), target.connect()).await
        {
            attempts += 1;
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                client.execute("INSERT INTO tandem_writes (id) VALUES (-1)", &[]),
            )
            .await;
            assert!(
                !matches!(r, Ok(Ok(_))),
                "{who} acknowledged a write after it woke up"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{who}: {attempts} direct write attempts, none acknowledged");
}

/// Wake a frozen instance: its agent first (which fences postgres at once,
/// killing the frozen server), then its postgres if it still exists. Either
/// may be gone already: the platform fences an agent that stopped answering
/// by killing it (and its postgres) and starts a new one, as Kubernetes
/// deletes a pod.
pub fn wake(c: &LocalCluster, name: &str) {
    for args in [
        &[name, "--signal", "CONT", "--agent"][..],
        &[name, "--signal", "CONT"][..],
    ] {
        let out = c.cli("kill", args);
        let err = String::from_utf8_lossy(&out.stderr);
        let gone = err.contains("has no running postgres") || err.contains("has no running agent");
        assert!(
            out.status.code() == Some(0) || (out.status.code() == Some(1) && gone),
            "waking {name}: {}",
            show(&out)
        );
        if out.status.code() == Some(1) {
            eprintln!("{name}: {}", err.trim());
        }
    }
}

/// Freeze the primary (agent and postgres) right after `batch` rows were
/// committed on it alone (its walsenders stopped first, so no standby has
/// them); wait for the failover, pause, and wake the old primary, which its
/// agent fences. Returns (old, new, ids only the old primary had).
pub async fn diverge(c: &LocalCluster) -> (String, String, Vec<i64>) {
    let old = c.primary().expect("primary");
    let senders = server_children(c, &old, "walsender");
    assert_eq!(senders.len(), 2, "walsenders of {old}: {senders:?}");
    for pid in &senders {
        signal(*pid, Signal::SIGSTOP);
    }
    let direct = c.direct(&old).connect().await.expect("connect to primary");
    let ids: Vec<i64> = (10_000_000..10_000_500).collect();
    direct
        .execute(
            "INSERT INTO tandem_writes (id) SELECT g FROM generate_series(10000000, 10000499) g",
            &[],
        )
        .await
        .expect("batch on the old primary alone");
    drop(direct);
    // Freeze the whole server (the postmaster leads its process group), then
    // its agent, straight away: through `tandem local kill` the second signal
    // can wait behind a poll of the first frozen process, and the failover
    // may fence the server before it is frozen.
    let postmaster = c.postgres_pid(&old).expect("postgres of the primary runs");
    let agent = c.agent_pid(&old);
    assert!(
        signal_group(postmaster, Signal::SIGSTOP),
        "freeze the old primary's postgres"
    );
    signal(agent, Signal::SIGSTOP);
    // Pause as soon as the failover starts: it finishes, but the old primary
    // is then left alone (no automatic rejoin) until the test unpauses.
    wait_persisted_transition(c, "Failover", FAILOVER);
    expect_exit(c, "pause", &[], 0);
    let s = c.wait_for("a new primary", FAILOVER, |s| {
        s["primary"].as_str().is_some_and(|p| p != old) && s["transition"].is_null()
    });
    let new = s["primary"].as_str().unwrap_or_default().to_string();
    wake(c, &old);
    c.wait_for(
        "the woken old primary to be fenced and stopped",
        Duration::from_secs(60),
        |s| {
            let i = instance(s, &old);
            let st = i["status"].as_str().unwrap_or("");
            s["paused"] == true && (st.starts_with("stopped") || st == "fenced")
        },
    );
    let on_new = stored_ids(&c.direct(&new)).await.expect("rows on new");
    let diverged: Vec<i64> = ids.into_iter().filter(|i| !on_new.contains(i)).collect();
    assert!(
        !diverged.is_empty(),
        "the new primary has every row of the batch: no divergence was created"
    );
    (old, new, diverged)
}

pub async fn sync_states(c: &LocalCluster, primary: &str) -> Vec<String> {
    let client = c.direct(primary).connect().await.expect("primary");
    client
        .query("SELECT sync_state FROM pg_stat_replication", &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
        .unwrap_or_default()
}

pub async fn wait_sync_states(c: &LocalCluster, primary: &str, pred: impl Fn(&[String]) -> bool) {
    let last = RefCell::new(Vec::new());
    let pred = &pred;
    let held = poll_until_async(Duration::from_secs(60), POLL, || {
        let last = &last;
        async move {
            let st = sync_states(c, primary).await;
            let ok = pred(&st);
            *last.borrow_mut() = st;
            ok.then_some(())
        }
    })
    .await;
    assert!(held.is_some(), "pg_stat_replication: {:?}", last.borrow());
}

/// Freeze every standby's agent and kill its postgres.
pub fn stop_standbys(c: &LocalCluster, names: &[String]) {
    for n in names {
        expect_exit(c, "kill", &[n, "--signal", "STOP", "--agent"], 0);
        expect_exit(c, "kill", &[n, "--signal", "KILL"], 0);
    }
}

pub fn wake_standbys(c: &LocalCluster, names: &[String]) {
    for n in names {
        expect_exit(c, "kill", &[n, "--signal", "CONT", "--agent"], 0);
    }
}
