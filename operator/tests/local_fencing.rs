//! Fencing end to end on real PostgreSQL through `tandem local` (issue 11,
//! DESIGN.md §3 "Fencing lease"): each instance on its own loopback address,
//! links cut with packet-filter rules, the driver (the local operator) and
//! whole instances frozen, under the acknowledged-writes writer. A primary
//! survives its operator; an isolated primary stops taking writes within its
//! lease; no promotion races a live old primary. Timings: detectionTimeout
//! 2 s, leaseTtl 3 s (a test that must tell the lease from the platform's own
//! kill detects later than the lease runs out).

mod fencing_support;
mod ha_support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use fencing_support::{
    acks_after, addrs, agent_status_from, any_alive, client_address, direct_target, direct_writer,
    failover_count, freeze_driver, freeze_instance, hold_without_failover, instance_pids,
    kill_instance, margin, persisted_history, persisted_status, spec, DETECTION, TTL,
};
use ha_support::cluster::{show, LocalCluster};
use ha_support::faults::{assert_refuses_writes, wake};
use ha_support::ops::{
    assert_nothing_lost, expect_exit, healthy_with_writer, wait_ack_after, wait_standby_of, BOOT,
    FAILOVER,
};
use ha_support::writer::prepare;
use tandem_testkit::{poll_until_async, Partition};

/// Sync replication that never drops to async: no acknowledged row may be lost.
const SYNC_REQUIRED: &str = "  replication: {mode: sync, dataDurability: required}";

/// Create the writer's table through rw once the cluster is healthy.
async fn healthy_with_table(c: &LocalCluster) {
    c.wait_healthy(BOOT);
    let rw = c.rw();
    let ready = poll_until_async(Duration::from_secs(30), Duration::from_millis(200), || {
        let rw = rw.clone();
        async move { prepare(&rw).await.ok() }
    })
    .await;
    assert!(ready.is_some(), "the rw endpoint never accepted writes");
}

/// Wait until some standby other than `old` is the primary; its name.
fn wait_new_primary(c: &LocalCluster, old: &str) -> String {
    let s = c.wait_for(&format!("a primary other than {old}"), FAILOVER, |s| {
        s["primary"].as_str().is_some_and(|p| p != old) && s["transition"].is_null()
    });
    s["primary"].as_str().unwrap_or_default().to_string()
}

/// The lease of `name`'s agent as the test's client sees it: (held, extendedBy).
async fn lease_of(c: &LocalCluster, name: &str, from: Ipv4Addr) -> Option<(bool, String)> {
    let s = agent_status_from(c, name, from).await?;
    let held = s["lease"]["held"].as_bool().unwrap_or(false);
    let by = s["lease"]["extendedBy"].as_str().unwrap_or("").to_string();
    Some((held, by))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_listens_on_its_own_address_and_replicates_over_it() {
    let c = LocalCluster::start("fa", &spec(2, DETECTION, ""));
    let s = c.wait_healthy(BOOT);
    let (p, sb) = (addrs(&c, "fa-0"), addrs(&c, "fa-1"));
    assert_ne!(p.ip, sb.ip, "two instances share {}", p.ip);
    for a in [p, sb] {
        assert_eq!(
            a.ip.octets()[..2],
            [127, 77],
            "{} is not in 127.77/16",
            a.ip
        );
        assert_eq!(
            a.agent.ip(),
            &a.ip,
            "the agent is not on its instance's address"
        );
    }
    let listed: Vec<String> = s["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(listed, vec![p.pg.to_string(), sb.pg.to_string()], "{s}");
    let table = expect_exit(&c, "status", &[], 0);
    assert!(table.contains(&p.pg.to_string()), "{table}");
    // The standby streams from the primary's own address.
    let standby = direct_target(&c, "fa-1").connect().await.expect("standby");
    let row = standby
        .query_one("SELECT sender_host FROM pg_stat_wal_receiver", &[])
        .await
        .expect("pg_stat_wal_receiver");
    assert_eq!(row.get::<_, String>(0), p.ip.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_operator_for_six_lease_ttls_leaves_the_primary_writable() {
    let c = LocalCluster::start("fo", &spec(3, DETECTION, ""));
    healthy_with_table(&c).await;
    let primary = c.primary().expect("primary");
    let postmaster = c.postgres_pid(&primary).expect("postmaster");
    let w = direct_writer(&c, &primary, 0);
    wait_ack_after(&w, Instant::now(), Duration::from_secs(20)).await;
    let failovers = failover_count(&c);

    let frozen = freeze_driver(&c);
    let stopped_at = Instant::now();
    let mut last_ack_check = Instant::now();
    while stopped_at.elapsed() < TTL * 6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        wait_ack_after(&w, last_ack_check, TTL).await;
        last_ack_check = Instant::now();
        assert_eq!(
            c.postgres_pid(&primary),
            Some(postmaster),
            "{primary}'s postgres was stopped while the operator was frozen"
        );
    }
    let gap = w.snapshot().longest_gap_after(stopped_at);
    assert!(
        gap < TTL,
        "writes stalled {gap:?} while the operator was frozen"
    );
    frozen.thaw();

    hold_without_failover(&c, &primary, TTL * 3, "after the operator resumed", || {
        assert_eq!(c.postgres_pid(&primary), Some(postmaster));
    })
    .await;
    wait_ack_after(&w, Instant::now(), TTL).await;
    assert_eq!(failover_count(&c), failovers);
    let log = w.stop().await;
    assert_nothing_lost(&c, &primary, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_while_the_operator_is_frozen_fails_over_when_it_resumes() {
    let c = LocalCluster::start("fk", &spec(3, DETECTION, SYNC_REQUIRED));
    let w = healthy_with_writer(&c).await;
    let old = c.primary().expect("primary");

    let frozen = freeze_driver(&c);
    kill_instance(&c, &old);
    tokio::time::sleep(TTL * 2).await;
    frozen.thaw();

    let new = wait_new_primary(&c, &old);
    wait_ack_after(&w, Instant::now(), Duration::from_secs(30)).await;
    let s = c.status().expect("status");
    let failovers = ha_support::ops::history_of(&s, "Failover");
    assert_eq!(failovers.len(), 1, "{failovers:?}");
    assert_eq!(failovers[0]["outcome"], "Succeeded", "{failovers:?}");
    wait_standby_of(&c, &old, &new, FAILOVER);
    let log = w.stop().await;
    assert_nothing_lost(&c, &new, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_cut_off_from_the_operator_only_keeps_its_lease_through_its_peers() {
    let c = LocalCluster::start("fd", &spec(3, DETECTION, ""));
    let w = healthy_with_writer(&c).await;
    let primary = c.primary().expect("primary");
    let postmaster = c.postgres_pid(&primary).expect("postmaster");
    let me = client_address(&c);
    let agent = addrs(&c, &primary).agent;
    let failovers = failover_count(&c);

    // The driver reaches agents from 127.0.0.1: that link to the primary's agent goes.
    let mut cut = Partition::new().expect("packet filter");
    let link = cut.cut(Ipv4Addr::LOCALHOST, agent).expect("cut");
    let from = Instant::now();
    let mut by_peers = false;
    while from.elapsed() < TTL * 4 {
        fencing_support::assert_no_failover(&c, &primary, failovers, "while cut off");
        if let Some((held, by)) = lease_of(&c, &primary, me).await {
            assert!(
                held,
                "{primary} lost its lease while only the operator was cut off"
            );
            by_peers |= by == "peers";
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        by_peers,
        "{primary}'s lease was never extended by its peers"
    );
    assert_eq!(c.postgres_pid(&primary), Some(postmaster));
    let gap = w.snapshot().longest_gap_after(from);
    assert!(gap < TTL, "writes through rw stalled {gap:?}");
    cut.restore(link).expect("restore");

    hold_without_failover(&c, &primary, TTL * 2, "after the link came back", || {}).await;
    let log = w.stop().await;
    assert_nothing_lost(&c, &primary, &log).await;
}

/// How an isolated primary's writes end: acknowledgements after the cut, by delay.
fn report_window(log: &ha_support::writer::WriteLog, cut_at: Instant) -> Duration {
    let after = acks_after(log, cut_at);
    let last = after.last().map(|(_, d)| *d).unwrap_or_default();
    eprintln!(
        "isolated primary: {} writes acknowledged after the cut, the last {last:?} after it",
        after.len()
    );
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_primary_refuses_writes_within_its_lease_and_rejoins_when_the_link_returns() {
    // Detection well after the lease: what stops the isolated primary's
    // writes is its own lease, not the platform killing it.
    let c = LocalCluster::start("fi", &spec(3, TTL * 2, ""));
    healthy_with_table(&c).await;
    let old = c.primary().expect("primary");
    let me = client_address(&c);
    let w = direct_writer(&c, &old, 0);
    wait_ack_after(&w, Instant::now(), Duration::from_secs(20)).await;

    let mut cut = Partition::new().expect("packet filter");
    let link = cut.isolate(addrs(&c, &old).ip, &[me]).expect("isolate");
    let cut_at = Instant::now();
    let new = wait_new_primary(&c, &old);
    let promoted_after = cut_at.elapsed();
    // Still isolated: nothing it answers its clients may be an acknowledged write.
    tokio::time::sleep(TTL).await;
    let last = report_window(&w.snapshot(), cut_at);
    assert!(
        last <= TTL + margin(),
        "{old} acknowledged a write {last:?} after it was cut off (lease {TTL:?} + margin {:?})",
        margin()
    );
    assert!(
        promoted_after >= TTL,
        "{new} was promoted {promoted_after:?} after the cut, before {old}'s lease could end"
    );
    cut.restore(link).expect("restore");

    wait_standby_of(&c, &old, &new, FAILOVER);
    let log = w.stop().await;
    let last = report_window(&log, cut_at);
    assert!(
        last <= TTL + margin(),
        "{old} acknowledged a write {last:?} after the cut"
    );
}

/// The WAL position of `name` (received on a standby, written on a primary), asked from the client address.
async fn wal_position(c: &LocalCluster, name: &str) -> i64 {
    let client = direct_target(c, name)
        .connect_from(client_address(c))
        .await
        .unwrap_or_else(|e| panic!("connect to {name}: {e}"));
    client
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END - '0/0')::bigint",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("WAL position of {name}: {e}"))
        .get(0)
}

/// While the primary's WAL grows, the standby receives none of it: the cut took.
async fn assert_replication_stalled(c: &LocalCluster, primary: &str, standby: &str) {
    let (p1, s1) = (
        wal_position(c, primary).await,
        wal_position(c, standby).await,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (p2, s2) = (
        wal_position(c, primary).await,
        wal_position(c, standby).await,
    );
    assert!(p2 > p1, "{primary}'s WAL did not grow under the writer");
    assert_eq!(s1, s2, "{standby} still receives WAL: the cut did not take");
    assert!(p2 > s2, "{standby} is not behind {primary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_cut_off_from_the_primary_only_causes_no_failover() {
    let c = LocalCluster::start("fs", &spec(2, DETECTION, ""));
    healthy_with_table(&c).await;
    let primary = c.primary().expect("primary");
    let standby = if primary == "fs-0" { "fs-1" } else { "fs-0" };
    let (p, sb) = (addrs(&c, &primary), addrs(&c, standby));
    let w = direct_writer(&c, &primary, 0);
    wait_ack_after(&w, Instant::now(), Duration::from_secs(20)).await;
    let failovers = failover_count(&c);

    // The agents' link: their two addresses (the calls an agent makes come
    // from its address once it binds them). A standby's walreceiver comes
    // from 127.0.0.1 (libpq cannot choose), so with one standby its link to
    // the primary's postgres is 127.0.0.1 → the primary's port (the rw
    // endpoint's too: the writer goes straight to the primary).
    let mut cut = Partition::new().expect("packet filter");
    cut.cut(p.ip, sb.ip).expect("cut agents");
    cut.cut(Ipv4Addr::LOCALHOST, p.pg).expect("cut replication");
    let from = Instant::now();
    hold_without_failover(
        &c,
        &primary,
        TTL * 4,
        "while the standby was cut off",
        || {},
    )
    .await;
    let gap = w.snapshot().longest_gap_after(from);
    assert!(gap < TTL, "writes on {primary} stalled {gap:?}");
    assert_replication_stalled(&c, &primary, standby).await;
    cut.heal().expect("restore");

    wait_standby_of(&c, standby, &primary, FAILOVER);
    assert_eq!(failover_count(&c), failovers);
    let log = w.stop().await;
    assert_nothing_lost(&c, &primary, &log).await;
}

/// How long after `since` the persisted status first showed the failover's
/// promotion (by the file's modification time, so no later than the
/// promotion itself), and whether any of `pids` still lived when it was seen
/// (so after the promotion had begun); watched every 5 ms.
async fn watch_promotion(c: &LocalCluster, pids: &[i32], since: SystemTime) -> (Duration, bool) {
    let found = poll_until_async(FAILOVER, Duration::from_millis(5), || {
        let seen = persisted_status(c).and_then(|(s, mtime)| {
            let t = &s["transition"];
            let promoting = t["kind"] == "Failover" && t["step"] != "Fence";
            promoting.then(|| (mtime, any_alive(pids)))
        });
        async move { seen }
    })
    .await;
    let (promoting_at, alive_then) = found.expect("no failover reached its promotion");
    let after = promoting_at.duration_since(since).unwrap_or(Duration::ZERO);
    (after, alive_then)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_primary_is_not_replaced_before_its_lease_ends_and_accepts_nothing_when_woken() {
    let c = LocalCluster::start("fz", &spec(3, DETECTION, ""));
    let w = healthy_with_writer(&c).await;
    let old = c.primary().expect("primary");
    let pids = instance_pids(&c, &old);
    let frozen = freeze_instance(&c, &old);
    let frozen_at = SystemTime::now();

    let (after, alive_then) = watch_promotion(&c, &pids, frozen_at).await;
    eprintln!(
        "promotion {after:?} after the freeze; a frozen process still lived when it was seen: {alive_then}"
    );
    assert!(
        after >= TTL || !alive_then,
        "promotion began {after:?} after {old} froze, within its lease ({TTL:?}), while a process of it still existed"
    );
    let new = wait_new_primary(&c, &old);
    drop(frozen);
    wake(&c, &old);
    assert_refuses_writes(&c.direct(&old), &old, TTL).await;
    wait_standby_of(&c, &old, &new, FAILOVER);
    let log = w.stop().await;
    eprintln!("{} rows acknowledged", log.acked.len());
}

/// The agent dies while its whole server is frozen: the postmaster dies
/// with it (PR_SET_PDEATHSIG), its frozen backends (each in a session of its
/// own) never notice. The instance is gone, and a standby may be promoted
/// before the lease ends, only once none of them is left to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_under_a_frozen_server_leaves_no_backend_behind_before_the_promotion() {
    let c = LocalCluster::start("fk", &spec(3, DETECTION, ""));
    let w = healthy_with_writer(&c).await;
    let old = c.primary().expect("primary");
    let pids = instance_pids(&c, &old);
    let pm = c.postgres_pid(&old).expect("postmaster");
    // The postmaster first, so that it forks nothing the list misses.
    let mut frozen = fencing_support::Frozen::new("postgres", vec![], vec![pm]);
    frozen.also(ha_support::ops::server_children(&c, &old, ""));
    let killed_at = SystemTime::now();
    assert!(
        tandem_testkit::signal(c.agent_pid(&old), nix::sys::signal::Signal::SIGKILL),
        "cannot kill {old}'s agent"
    );

    let (after, alive_then) = watch_promotion(&c, &pids, killed_at).await;
    eprintln!(
        "promotion {after:?} after the agent's end; a process of {old} still lived: {alive_then}"
    );
    assert!(
        !alive_then,
        "promotion began {after:?} after {old}'s agent died, while a backend of its frozen server still existed"
    );
    let new = wait_new_primary(&c, &old);
    drop(frozen);
    wait_standby_of(&c, &old, &new, FAILOVER);
    let log = w.stop().await;
    eprintln!("{} rows acknowledged", log.acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_whose_stop_hangs_and_escalates_loses_nothing_and_says_so() {
    let c = LocalCluster::start(
        "fh",
        &spec(
            3,
            DETECTION,
            &format!("{SYNC_REQUIRED}\n  switchover: {{shutdownTimeout: 3s}}"),
        ),
    );
    let w = healthy_with_writer(&c).await;
    let old = c.primary().expect("primary");
    // A session whose backend cannot act on the shutdown's SIGTERM.
    let session = direct_target(&c, &old).connect().await.expect("session");
    let backend: i32 = session
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    let hung = fencing_support::Frozen::new("a backend", vec![backend], vec![]);

    let out = c.cli("switchover", &["--to", "any"]);
    eprintln!("switchover: {}", show(&out));
    drop(hung);
    let agent_log =
        std::fs::read_to_string(c.dir.join("logs").join(format!("{old}.log"))).unwrap_or_default();
    assert!(
        agent_log.contains("escalating"),
        "{old}'s stop did not escalate: the hung backend did not hold up the fast shutdown"
    );
    c.wait_healthy(FAILOVER);
    let primary = c.primary().expect("primary");
    wait_ack_after(&w, Instant::now(), Duration::from_secs(30)).await;
    let log = w.stop().await;
    assert_nothing_lost(&c, &primary, &log).await;
    let (s, _) = persisted_status(&c).expect("status.json");
    let entries: Vec<serde_json::Value> = ["Switchover", "Failover"]
        .iter()
        .flat_map(|k| persisted_history(&s, k))
        .collect();
    let told = entries.iter().any(|e| {
        let m = e["message"].as_str().unwrap_or("").to_lowercase();
        m.contains("escalat") || m.contains("immediate") || m.contains("sigkill")
    });
    assert!(
        told,
        "the history does not say the stop escalated: {entries:#?}"
    );
}
