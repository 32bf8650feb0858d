//! The agent against real PostgreSQL: bootstrap, streaming, promote, demote,
//! rewind after divergence, and re-clone when a rewind is impossible.

mod agent_support;

use std::time::Duration;

use agent_support::*;
use tandem::api::agent::*;
use tandem::api::WalSenderState;

const T: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_primary_and_two_standbys_stream_rows_to_both() {
    let c = cluster_with("boot", 2).await;
    let p = c.agents[0].sql().await;
    p.batch_execute("CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 5)")
        .await
        .unwrap();
    for s in &c.agents[1..] {
        wait_rows(s, "t", &[1, 2, 3, 4, 5]).await;
    }
    // The primary's probe lists both standbys streaming, with their slots.
    let st = wait_for("both standbys in the primary's status", T, || async {
        let st = c.agents[0].status().await;
        let mut names: Vec<_> = st.downstreams.iter().map(|d| d.name.clone()).collect();
        names.sort();
        let ok = names == ["boot-1", "boot-2"]
            && st
                .downstreams
                .iter()
                .all(|d| d.state == WalSenderState::Streaming)
            && st.slots.len() == 2;
        ok.then_some(st)
    })
    .await;
    // What the engine needs for its decisions and prechecks.
    assert_eq!(st.timeline, Some(1));
    assert!(st.current_lsn.is_some() && st.postgres_running && !st.fenced);
    assert_eq!((st.max_wal_senders, st.wal_senders_used), (Some(10), 2));
    assert_eq!(
        (st.max_replication_slots, st.replication_slots_used),
        (Some(10), 2)
    );
    assert!(st
        .postgres_version
        .as_deref()
        .is_some_and(|v| !v.is_empty()));
    assert_eq!(st.synchronous_standby_names.as_deref(), Some(""));
    assert_eq!(st.crash_count, 0);
    for name in [
        "role",
        "replication_lag",
        "archive_ready",
        "downstream",
        "slots",
        "data_directory",
    ] {
        let c = st
            .check(name)
            .unwrap_or_else(|| panic!("check {name} missing: {st:?}"));
        assert_eq!(c.state, tandem::api::CheckState::Ok, "{c:?}");
    }
    assert!(c.agents[0].client.readyz().await.unwrap());
    assert!(c.agents[0].client.healthz().await.unwrap());
    let mut slots: Vec<_> = st.slots.iter().map(|s| s.name.clone()).collect();
    slots.sort();
    assert_eq!(slots, vec!["boot_1", "boot_2"]);
    // Checksums are on and the standby knows its upstream.
    let r = p.query_one("SHOW data_checksums", &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), "on");
    let r = p.query_one("SHOW wal_log_hints", &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), "on");
    let s1 = c.agents[1].status().await;
    assert_eq!(
        s1.upstream.as_ref().map(|m| m.name.as_str()),
        Some("boot-0")
    );
    assert_eq!(s1.system_identifier, st.system_identifier);
    assert!(s1.received_lsn.is_some() && s1.replayed_lsn.is_some());
    let s1 = wait_for("standby lag figures", T, || async {
        let s1 = c.agents[1].status().await;
        (s1.lag_bytes == Some(0) && s1.lag_seconds.is_some()).then_some(s1)
    })
    .await;
    for name in [
        "role",
        "replication_lag",
        "upstream",
        "archive_ready",
        "data_directory",
    ] {
        let c = s1
            .check(name)
            .unwrap_or_else(|| panic!("check {name} missing: {s1:?}"));
        assert_eq!(c.state, tandem::api::CheckState::Ok, "{c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_standby_then_demote_old_primary_to_follow_it() {
    let c = cluster_with("prom", 1).await;
    let (old, new) = (&c.agents[0], &c.agents[1]);
    old.sql()
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    wait_rows(new, "t", &[1, 2]).await;
    let tl_before = new.status().await.timeline.unwrap();

    // Planned: stop the old primary cleanly first, then promote.
    let r = old.client.stop(&StopRequest::default()).await.unwrap();
    assert_eq!(r.stopped_with, Some(StopMode::Fast));
    let r = new
        .client
        .promote(&PromoteRequest::default())
        .await
        .unwrap();
    assert!(r.changed);
    assert!(r.timeline.unwrap() > tl_before, "{r:?}");
    // The answer means writable now: the caller moves the -rw route on it.
    let recovering: bool = new
        .sql()
        .await
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!recovering, "promote answered while still in recovery");
    // A probe begun after the answer shows it.
    let fresh = new.client.fresh_status().await.unwrap();
    assert_eq!(
        (fresh.role, fresh.timeline),
        (tandem::api::InstanceRole::Primary, r.timeline),
        "{fresh:?}"
    );
    assert!(!old.status().await.postgres_running);
    // The standby settings are cleared after the answer.
    wait_for(
        "primary_conninfo cleared after the promotion",
        T,
        || async {
            let row = new
                .sql()
                .await
                .query_one("SELECT current_setting('primary_conninfo')", &[])
                .await
                .ok()?;
            row.get::<_, String>(0).is_empty().then_some(())
        },
    )
    .await;
    new.wait_ready("primary", T).await;
    new.sql()
        .await
        .execute("INSERT INTO t VALUES (3)", &[])
        .await
        .unwrap();

    let r = old
        .client
        .demote(&DemoteRequest {
            primary: new.member(),
            timeout: None,
            limits: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("demote: {e}\n{}", c.logs()));
    assert_eq!(r.rewind_needed, Some(false), "{r:?}");
    old.wait_ready("standby", T).await;
    wait_rows(old, "t", &[1, 2, 3]).await;
    wait_for("prom-0 among the new primary's downstreams", T, || async {
        let st = new.status().await;
        st.downstreams
            .iter()
            .any(|d| d.name == "prom-0" && d.state == WalSenderState::Streaming)
            .then_some(())
    })
    .await;
    let rows = new
        .sql()
        .await
        .query("SELECT application_name FROM pg_stat_replication", &[])
        .await
        .unwrap();
    assert!(rows.iter().any(|r| r.get::<_, String>(0) == "prom-0"));

    // Demote again: idempotent, nothing restarted.
    let pid = old.status().await.postgres_pid;
    let r = old
        .client
        .demote(&DemoteRequest {
            primary: new.member(),
            timeout: None,
            limits: Default::default(),
        })
        .await
        .unwrap();
    assert!(!r.changed, "{r:?}");
    assert_eq!(old.status().await.postgres_pid, pid);
}

/// Promote the standby while the old primary stays up and takes writes of its own.
async fn diverge(c: &Cluster) {
    let (old, new) = (&c.agents[0], &c.agents[1]);
    old.sql()
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    wait_rows(new, "t", &[1, 2]).await;
    new.client
        .promote(&PromoteRequest::default())
        .await
        .unwrap();
    new.wait_ready("primary", T).await;
    new.sql()
        .await
        .execute("INSERT INTO t VALUES (3)", &[])
        .await
        .unwrap();
    let o = old.sql().await;
    o.execute("INSERT INTO t VALUES (100)", &[]).await.unwrap();
    o.execute("CHECKPOINT", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demote_after_divergence_rewinds_and_drops_diverged_rows() {
    let c = cluster_with("div", 1).await;
    diverge(&c).await;
    let (old, new) = (&c.agents[0], &c.agents[1]);
    let r = old
        .client
        .demote(&DemoteRequest {
            primary: new.member(),
            timeout: None,
            limits: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("demote: {e}\n{}", c.logs()));
    assert_eq!(r.rewind_needed, Some(true), "{r:?}");
    assert!(r.steps.iter().any(|s| s.contains("rewind needed")), "{r:?}");
    old.wait_ready("standby", T).await;
    wait_rows(old, "t", &[1, 2, 3]).await;
    // The rewound instance is on its own port again, not the source's.
    let new_tl = new.status().await.timeline;
    assert_eq!(new_tl, Some(2));
    wait_for("the rewound standby on the new timeline", T, || async {
        (old.status().await.timeline == new_tl).then_some(())
    })
    .await;
    new.sql()
        .await
        .execute("INSERT INTO t VALUES (4)", &[])
        .await
        .unwrap();
    wait_rows(old, "t", &[1, 2, 3, 4]).await;
    // Rewinding a standby that already streams from the source changes nothing.
    let pid = old.status().await.postgres_pid;
    let r = old
        .client
        .rewind(&RewindRequest {
            source: new.member(),
            dry_run: false,
            limits: Default::default(),
        })
        .await
        .unwrap();
    assert!(!r.changed && r.rewind_needed == Some(false), "{r:?}");
    assert_eq!(old.status().await.postgres_pid, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclone_succeeds_when_rewind_is_impossible_and_keeps_one_old_copy() {
    let c = cluster_with("recl", 1).await;
    diverge(&c).await;
    let (old, new) = (&c.agents[0], &c.agents[1]);
    old.client.stop(&StopRequest::default()).await.unwrap();

    // Dry run while stopped: a rewind is needed.
    let r = old
        .client
        .rewind(&RewindRequest {
            source: new.member(),
            dry_run: true,
            limits: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("dry run: {e}\n{}", c.logs()));
    assert_eq!(r.rewind_needed, Some(true), "{r:?}");
    assert!(!r.changed);

    // Remove the WAL the rewind needs: pg_rewind must fail with its own message.
    let wal = old.data_dir.join("pg_wal");
    for e in std::fs::read_dir(&wal).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() && e.file_name().len() == 24 {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let err = old
        .client
        .rewind(&RewindRequest {
            source: new.member(),
            dry_run: false,
            limits: Default::default(),
        })
        .await
        .expect_err("rewind without WAL must fail");
    assert_eq!(err.code(), Some(ERR_REWIND_FAILED), "{err}");
    assert!(err.to_string().contains("pg_rewind"), "{err}");

    let r = old
        .client
        .reclone(&RecloneRequest {
            source: new.member(),
            limits: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("reclone: {e}\n{}", c.logs()));
    let aside = r.moved_aside_to.clone().expect("moved aside");
    assert!(std::path::Path::new(&aside).join("PG_VERSION").exists());
    old.wait_ready("standby", T).await;
    wait_rows(old, "t", &[1, 2, 3]).await;

    // A second re-clone keeps only the newest old copy.
    let r2 = old
        .client
        .reclone(&RecloneRequest {
            source: new.member(),
            limits: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("reclone 2: {e}\n{}", c.logs()));
    old.wait_ready("standby", T).await;
    let parent = old.data_dir.parent().unwrap();
    let copies: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pgdata.old-"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(r2.moved_aside_to.unwrap().ends_with(&copies[0]));
    wait_rows(old, "t", &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sibling_follows_promoted_standby_with_a_reload() {
    let c = promoted_second("fol").await;
    let (old, new, sib) = (&c.agents[0], &c.agents[1], &c.agents[2]);

    // Following a standby is refused: only a primary can be followed.
    let err = sib
        .client
        .follow(&FollowRequest {
            primary: Member {
                name: "fol-0".into(),
                host: "127.0.0.1".into(),
                port: old.pg_port,
                agent_url: None,
            },
            cascade: false,
        })
        .await
        .expect_err("the stopped old primary cannot be followed");
    assert_eq!(err.code(), Some(ERR_BAD_TARGET), "{err}");

    let pid = sib.status().await.postgres_pid;
    let r = sib
        .client
        .follow(&FollowRequest {
            primary: new.member(),
            cascade: false,
        })
        .await
        .unwrap_or_else(|e| panic!("follow: {e}\n{}", c.logs()));
    assert!(r.changed, "{r:?}");
    let st = sib.wait_ready("standby", T).await;
    assert_eq!(st.upstream.as_ref().map(|m| m.name.as_str()), Some("fol-1"));
    assert_eq!(
        st.postgres_pid, pid,
        "follow must not restart postgres: {r:?}"
    );
    new.sql()
        .await
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .unwrap();
    wait_rows(sib, "t", &[1, 2]).await;
    wait_for(
        "fol-2 in the new primary's pg_stat_replication",
        T,
        || async {
            let rows = new
                .sql()
                .await
                .query("SELECT application_name FROM pg_stat_replication", &[])
                .await
                .ok()?;
            rows.iter()
                .any(|r| r.get::<_, String>(0) == "fol-2")
                .then_some(())
        },
    )
    .await;
    // Again: nothing to do.
    let r = sib
        .client
        .follow(&FollowRequest {
            primary: new.member(),
            cascade: false,
        })
        .await
        .unwrap();
    assert!(!r.changed, "{r:?}");
}

/// A switchover's siblings: once the old primary stopped, a sibling streams
/// from the standby about to be promoted (`cascade`), and follows its
/// promotion over that connection: the new primary's first commit finds it
/// streaming, with no follow after the promotion and no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sibling_cascades_from_the_candidate_and_follows_its_promotion_without_a_new_follow() {
    let c = cluster_with("cas", 2).await;
    let (old, cand, sib) = (&c.agents[0], &c.agents[1], &c.agents[2]);
    old.sql()
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    wait_rows(cand, "t", &[1]).await;
    wait_rows(sib, "t", &[1]).await;
    old.client
        .stop(&StopRequest::default())
        .await
        .unwrap_or_else(|e| panic!("stop: {e}\n{}", c.logs()));

    // Without `cascade` a standby is no upstream.
    let err = sib
        .client
        .follow(&FollowRequest {
            primary: cand.member(),
            cascade: false,
        })
        .await
        .expect_err("a standby cannot be followed without cascade");
    assert_eq!(err.code(), Some(ERR_BAD_TARGET), "{err}");

    let pid = sib.status().await.postgres_pid;
    let r = sib
        .client
        .follow(&FollowRequest {
            primary: cand.member(),
            cascade: true,
        })
        .await
        .unwrap_or_else(|e| panic!("cascade: {e}\n{}", c.logs()));
    assert!(r.changed, "{r:?}");
    let st = sib.wait_ready("standby", T).await;
    assert_eq!(st.upstream.as_ref().map(|m| m.name.as_str()), Some("cas-1"));

    cand.client
        .promote(&PromoteRequest::default())
        .await
        .unwrap_or_else(|e| panic!("promote: {e}\n{}", c.logs()));
    cand.wait_ready("primary", T).await;
    cand.sql()
        .await
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .unwrap();
    wait_rows(sib, "t", &[1, 2]).await;
    let st = wait_for("cas-2 streaming timeline 2 from cas-1", T, || async {
        let st = sib.status().await;
        let w = st.wal_receiver.as_ref()?;
        let from_cand = w.sender_port == Some(i32::from(cand.pg_port));
        (w.status == tandem::api::WalReceiverState::Streaming
            && w.received_tli == Some(2)
            && from_cand)
            .then_some(st.clone())
    })
    .await;
    assert_eq!(
        st.postgres_pid, pid,
        "the cascade must not restart postgres"
    );
    // Nothing left to do for a follow of the new primary.
    let r = sib
        .client
        .follow(&FollowRequest {
            primary: cand.member(),
            cascade: false,
        })
        .await
        .unwrap();
    assert!(!r.changed, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_dry_run_of_a_running_standby_says_rewind_without_stopping_it() {
    let c = cluster_with("jdg", 2).await;
    let (old, sib, new) = (&c.agents[0], &c.agents[1], &c.agents[2]);
    old.sql()
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    wait_rows(new, "t", &[1, 2]).await;
    wait_rows(sib, "t", &[1, 2]).await;
    // A standby streaming from the primary: a rejoin changes nothing.
    let r = sib
        .client
        .rewind(&RewindRequest {
            source: old.member(),
            dry_run: true,
            limits: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("dry run: {e}\n{}", c.logs()));
    assert_eq!(
        (r.changed, r.rewind_needed, r.reclone_needed),
        (false, Some(false), Some(false)),
        "{r:?}"
    );
    assert!(r.message.contains("would change nothing"), "{r:?}");

    // jdg-2 is promoted while jdg-0 goes on writing and jdg-1 keeps
    // streaming those writes: jdg-1 is a running standby whose WAL went past
    // the point where timeline 1 ended in jdg-2's history.
    new.client
        .promote(&PromoteRequest::default())
        .await
        .unwrap();
    new.wait_ready("primary", T).await;
    new.sql()
        .await
        .execute("INSERT INTO t VALUES (3)", &[])
        .await
        .unwrap();
    old.sql()
        .await
        .execute("INSERT INTO t VALUES (100)", &[])
        .await
        .unwrap();
    wait_rows(sib, "t", &[1, 2, 100]).await;
    let pid = sib.status().await.postgres_pid;
    let r = sib
        .client
        .rewind(&RewindRequest {
            source: new.member(),
            dry_run: true,
            limits: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("dry run: {e}\n{}", c.logs()));
    assert_eq!(
        (r.changed, r.rewind_needed, r.reclone_needed),
        (false, Some(true), Some(false)),
        "{r:?}"
    );
    assert!(r.message.contains("a rejoin would rewind jdg-1"), "{r:?}");
    assert!(r.message.contains("diverged at WAL location"), "{r:?}");
    let at = r.diverged_at.expect("diverged_at");
    assert!(r.rewound_from.is_some_and(|end| end > at), "{r:?}");
    // Judged without stopping it: same postgres, still streaming from jdg-0.
    let st = sib.status().await;
    assert_eq!(st.postgres_pid, pid);
    assert!(st.postgres_running);
    assert_eq!(st.upstream.map(|m| m.name), Some("jdg-0".to_string()));

    // A rejoin does what the dry run said: it rewinds the running standby
    // (repointing it alone would leave it unable to stream).
    let r = sib
        .client
        .demote(&DemoteRequest {
            primary: new.member(),
            timeout: None,
            limits: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("demote: {e}\n{}", c.logs()));
    assert_eq!(r.rewind_needed, Some(true), "{r:?}");
    sib.wait_ready("standby", T).await;
    wait_rows(sib, "t", &[1, 2, 3]).await;
    let r = sib
        .client
        .rewind(&RewindRequest {
            source: new.member(),
            dry_run: true,
            limits: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(r.rewind_needed, Some(false), "{r:?}");
    assert!(r.message.contains("would change nothing"), "{r:?}");
}
