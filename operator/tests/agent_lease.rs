//! The fencing lease against real PostgreSQL: renewals bound to the status
//! answer they echo, epochs that only grow, a primary kept up by its peers'
//! vouching and fenced once one of them stops, and standbys that vouch only
//! for the primary they follow.

mod agent_support;

use std::time::{Duration, Instant};

use agent_support::*;
use tandem::api::agent::*;

const T: Duration = Duration::from_secs(90);

fn peer(a: &AgentProc) -> Peer {
    Peer {
        name: a.name.clone(),
        url: a.url(),
    }
}

/// Wait until the agent has fenced postgres; when that was seen.
async fn wait_fenced(a: &AgentProc, within: Duration) -> Instant {
    wait_for(&format!("{} fenced", a.name), within, || async {
        let st = a.client.status().await.ok()?;
        (st.fenced && !st.postgres_running).then(Instant::now)
    })
    .await
}

/// Wait until the agent's clock (its status challenge) has reached `ms`.
async fn wait_agent_clock(a: &AgentProc, ms: u64) {
    wait_for("the agent's clock", T, || async {
        (a.status().await.lease.challenge >= ms).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_with_an_old_challenge_cannot_extend_an_expired_lease() {
    let mut c = Cluster::new("lold");
    c.add("lold-0", None, &[]);
    let a = &c.agents[0];
    a.wait_ready("primary", T).await;
    let c0 = a.status().await.lease.challenge;
    // Decided 3s ago with a 4s TTL: 1s is left, not 4s from its arrival.
    wait_agent_clock(a, c0 + 3000).await;
    let sent = Instant::now();
    let r = a
        .client
        .lease(&LeaseRequest {
            ttl_ms: 4000,
            challenge: Some(c0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.changed, "{r:?}");
    let l = a.status().await.lease;
    assert!(l.held && l.remaining_ms.is_some_and(|m| m <= 1000), "{l:?}");
    let fenced = wait_fenced(a, T).await;
    assert!(
        fenced.duration_since(sent) < Duration::from_millis(2500),
        "fenced {:?} after a renewal whose lease had 1s left\n{}",
        fenced.duration_since(sent),
        c.logs()
    );
    // The same old answer's renewal again, once that lease's end has passed
    // (the agent fenced a little before it): the lease stays run out.
    let end = sent + Duration::from_millis(1000);
    tokio::time::sleep_until((end + Duration::from_millis(50)).into()).await;
    let r = a
        .client
        .lease(&LeaseRequest {
            ttl_ms: 4000,
            challenge: Some(c0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.message.contains("run out"), "{r:?}");
    let st = a.status().await;
    assert!(
        !st.lease.held && st.fenced && !st.postgres_running,
        "{st:?}"
    );
    assert!(
        connect(a.pg_port).await.is_err(),
        "a fenced primary answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_of_a_lower_epoch_is_refused_and_changes_nothing() {
    let mut c = Cluster::new("lep");
    c.add("lep-0", None, &[]);
    let a = &mut c.agents[0];
    a.wait_ready("primary", T).await;
    let challenge = Some(a.status().await.lease.challenge);
    a.client
        .lease(&LeaseRequest {
            ttl_ms: 60_000,
            challenge,
            epoch: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    let before = a.status().await.lease;
    assert_eq!((before.epoch, before.known_epoch), (5, 5), "{before:?}");
    let err = a
        .client
        .lease(&LeaseRequest {
            ttl_ms: 600_000,
            epoch: 4,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some(ERR_STALE_EPOCH)),
        "{err}"
    );
    // A challenge the agent never gave.
    let err = a
        .client
        .lease(&LeaseRequest {
            ttl_ms: 600_000,
            challenge: Some(before.challenge + 3_600_000),
            epoch: 6,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ERR_BAD_REQUEST), "{err}");
    let after = a.status().await.lease;
    assert_eq!((after.epoch, after.known_epoch), (5, 5), "{after:?}");
    assert_eq!(after.ttl_ms, Some(60_000));
    assert!(after.remaining_ms <= before.remaining_ms, "{after:?}");

    // The epoch is kept next to the data directory and read at start.
    let file = tandem_epoch_file(a);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), "5");
    a.respawn();
    wait_for("the restarted agent", T, || async {
        let st = a.client.status().await.ok()?;
        (st.lease.known_epoch == 5).then_some(())
    })
    .await;
    let err = a
        .client
        .lease(&LeaseRequest {
            ttl_ms: 60_000,
            epoch: 4,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ERR_STALE_EPOCH), "{err}");
}

fn tandem_epoch_file(a: &AgentProc) -> std::path::PathBuf {
    let mut s = a.data_dir.as_os_str().to_owned();
    s.push(".tandem-epoch");
    s.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_lives_on_its_peers_vouching_and_is_fenced_once_one_stops() {
    let c = cluster_with("vch", 2).await;
    let (p, s1, s2) = (&c.agents[0], &c.agents[1], &c.agents[2]);
    let ttl = Duration::from_millis(3000);
    let st = p.status().await;
    let renewed = Instant::now();
    p.client
        .lease(&LeaseRequest {
            ttl_ms: 3000,
            challenge: Some(st.lease.challenge),
            epoch: 1,
            peers: vec![peer(s1), peer(s2)],
            ..Default::default()
        })
        .await
        .unwrap();
    // No renewal for three TTLs: the standbys' vouching keeps the lease.
    // (Watched all along, not waited for: it must hold at every look.)
    let mut checks = 0;
    while renewed.elapsed() < 3 * ttl {
        let st = p.status().await;
        assert!(
            st.lease.held && st.postgres_running && !st.fenced,
            "the lease ran out with both peers vouching: {st:?}\n{}",
            c.logs()
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(checks > 10);
    let l = p.status().await.lease;
    assert_eq!(l.extended_by, Some(LeaseSource::Peers), "{l:?}");
    assert!(l.renewed_ago_ms.is_some_and(|ms| ms < 3000), "{l:?}");
    p.sql()
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    // One standby is told of a newer epoch (as before a promotion).
    let r = s1
        .client
        .stop_vouching(&StopVouchingRequest { epoch: 2 })
        .await
        .unwrap();
    let acked = Instant::now();
    assert_eq!(r.known_epoch, 2, "{r:?}");
    // It vouched a moment ago (rounds run every quarter TTL): the primary's
    // lease ends within TTL of that vouch, which is what the engine counts from.
    let ago = Duration::from_millis(r.last_vouched_ago_ms);
    assert!(ago < ttl / 2, "last vouched {ago:?} ago");
    let fenced = wait_fenced(p, T).await;
    assert!(
        fenced.duration_since(acked - ago) < ttl + Duration::from_millis(1000),
        "fenced {:?} after the standby's last vouch (TTL {ttl:?})",
        fenced.duration_since(acked - ago)
    );
    assert!(
        fenced.duration_since(acked) < ttl + Duration::from_millis(1500),
        "fenced {:?} after a peer stopped vouching (TTL {ttl:?})\n{}",
        fenced.duration_since(acked),
        c.logs()
    );
    assert!(
        connect(p.pg_port).await.is_err(),
        "a fenced primary answers"
    );
    assert!(
        p.log_text().contains("not every peer vouched"),
        "{}",
        p.log_text()
    );
    assert_eq!(s1.status().await.lease.known_epoch, 2);
    assert_eq!(s2.status().await.lease.known_epoch, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_vouches_only_for_its_primary_and_never_again_after_stop_vouching() {
    let mut c = cluster_with("vref", 1).await;
    let tl = c.agents[0].status().await.timeline.expect("a timeline");
    let primary = c.agents[0].name.clone();
    let ask = |primary: &str, timeline: i64, epoch: u64| VouchRequest {
        primary: primary.into(),
        timeline,
        epoch,
    };
    let (p, s) = (&c.agents[0], &c.agents[1]);
    let yes = s.client.vouch(&ask(&primary, tl, 0)).await.unwrap();
    assert!(yes.vouch, "{yes:?}");
    let no = s.client.vouch(&ask("vref-9", tl, 0)).await.unwrap();
    assert!(!no.vouch && no.reason.contains("follows"), "{no:?}");
    let no = s.client.vouch(&ask(&primary, tl + 1, 0)).await.unwrap();
    assert!(!no.vouch && no.reason.contains("timeline"), "{no:?}");
    let no = p.client.vouch(&ask(&primary, tl, 0)).await.unwrap();
    assert!(!no.vouch && no.reason.contains("standby"), "{no:?}");

    // Without the token nothing is answered and nothing changes.
    let http = reqwest::Client::new();
    for path in [PATH_VOUCH, PATH_STOP_VOUCHING] {
        let r = http
            .post(format!("{}{path}", s.url()))
            .json(&serde_json::json!({"primary": primary, "timeline": tl, "epoch": 99}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    let wrong = tandem::agent::client::AgentClient::new(s.url(), "wrong-token").unwrap();
    let err = wrong
        .stop_vouching(&StopVouchingRequest { epoch: 99 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ERR_UNAUTHORIZED), "{err}");
    assert_eq!(s.status().await.lease.known_epoch, 0);

    let r = s
        .client
        .stop_vouching(&StopVouchingRequest { epoch: 3 })
        .await
        .unwrap();
    assert_eq!(r.known_epoch, 3, "{r:?}");
    let no = s.client.vouch(&ask(&primary, tl, 2)).await.unwrap();
    assert!(!no.vouch && no.reason.contains("epoch 3"), "{no:?}");
    assert!(s.client.vouch(&ask(&primary, tl, 3)).await.unwrap().vouch);

    // A restarted agent remembers the epoch.
    c.agents[1].respawn();
    let s = &c.agents[1];
    s.wait_ready("standby", T).await;
    wait_for("the restarted standby to vouch again", T, || async {
        let a = s.client.vouch(&ask(&primary, tl, 3)).await.ok()?;
        a.vouch.then_some(())
    })
    .await;
    let no = s.client.vouch(&ask(&primary, tl, 2)).await.unwrap();
    assert!(!no.vouch && no.reason.contains("epoch 3"), "{no:?}");
    let r = s
        .client
        .stop_vouching(&StopVouchingRequest { epoch: 1 })
        .await
        .unwrap();
    assert_eq!(r.known_epoch, 3, "a lower epoch changes nothing: {r:?}");
    assert_eq!(s.status().await.lease.known_epoch, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solo_primary_keeps_its_lease_by_itself_and_one_with_no_peers_does_not() {
    let mut c = Cluster::new("solo");
    c.add("solo-0", None, &[]);
    let a = &c.agents[0];
    a.wait_ready("primary", T).await;
    let ttl = Duration::from_millis(1500);
    let renew = |solo: bool| async move {
        let challenge = Some(a.status().await.lease.challenge);
        a.client
            .lease(&LeaseRequest {
                ttl_ms: 1500,
                challenge,
                epoch: 1,
                solo,
                ..Default::default()
            })
            .await
            .unwrap()
    };
    renew(true).await;
    let renewed = Instant::now();
    // Watched all along: a solo lease must hold at every look.
    while renewed.elapsed() < 3 * ttl {
        let st = a.status().await;
        assert!(
            st.lease.held && st.postgres_running,
            "a solo lease ran out: {st:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.status().await.lease.extended_by, Some(LeaseSource::Peers));
    // The same primary told it has no peers (and is not solo): nobody vouches.
    renew(false).await;
    let sent = Instant::now();
    let fenced = wait_fenced(a, T).await;
    assert!(
        fenced.duration_since(sent) < ttl + Duration::from_millis(1500),
        "fenced only {:?} after its lease stopped being solo\n{}",
        fenced.duration_since(sent),
        c.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_takes_its_last_write_before_its_lease_ends_not_after() {
    let mut c = Cluster::new("lend");
    c.add("lend-0", None, &[]);
    let a = &c.agents[0];
    a.wait_ready("primary", T).await;
    let db = connect(a.pg_port).await.unwrap();
    db.batch_execute("CREATE TABLE w (i int)").await.unwrap();
    // The lease runs 3 s from the answer carrying this challenge: it ends
    // between `asked + 3 s` and `answered + 3 s`.
    let ttl = Duration::from_secs(3);
    let asked = Instant::now();
    let challenge = Some(a.status().await.lease.challenge);
    let answered = Instant::now();
    a.client
        .lease(&LeaseRequest {
            ttl_ms: 3000,
            challenge,
            ..Default::default()
        })
        .await
        .unwrap();
    // Write every 5 ms until the server refuses.
    let mut last_ack = answered;
    let mut i = 0;
    let refused = loop {
        i += 1;
        let w = tokio::time::timeout(
            Duration::from_secs(2),
            db.execute("INSERT INTO w VALUES ($1)", &[&i]),
        )
        .await;
        match w {
            Ok(Ok(_)) => last_ack = Instant::now(),
            _ => break Instant::now(),
        }
        assert!(asked.elapsed() < T, "never fenced\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    wait_fenced(a, T).await;
    // 300 ms: a quarter of a 3 s TTL is more.
    let lead = Duration::from_millis(tandem::agent::FENCE_LEAD_MS);
    // The fence comes `lead` before the end (its watcher looks every 100 ms):
    // the last acknowledged write is well before the lease's end, and the
    // server stops writing no earlier than the lead allows.
    assert!(
        last_ack + Duration::from_millis(100) <= asked + ttl,
        "last write acknowledged {:?} after the lease was asked for, its lease ends {ttl:?} after at the latest {:?}\n{}",
        last_ack.duration_since(asked),
        answered.duration_since(asked) + ttl,
        c.logs()
    );
    assert!(
        refused >= asked + ttl - lead,
        "fenced {:?} after the lease began, more than {lead:?} before its end\n{}",
        refused.duration_since(asked),
        c.logs()
    );
    let st = a.status().await;
    assert!(st.fenced && !st.postgres_running, "{st:?}");
}
