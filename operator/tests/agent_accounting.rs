//! The agent's accounting of what stops and rewinds did, against real
//! PostgreSQL: a stop that escalates says so and where the WAL ends; a rewind
//! says where the histories diverged and where this server's WAL ended.

mod agent_support;

use std::time::Duration;

use agent_support::*;
use tandem::api::agent::*;
use tandem::api::Lsn;

const T: Duration = Duration::from_secs(90);

async fn lsn(c: &tokio_postgres::Client, sql: &str) -> Lsn {
    let row = c.query_one(sql, &[]).await.expect(sql);
    row.get::<_, String>(0).parse().expect("an LSN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_escalates_reports_it_and_where_its_wal_ends() {
    let mut c = Cluster::new("esc");
    c.add("esc-0", None, &[]);
    let a = &c.agents[0];
    a.wait_ready("primary", T).await;

    // A clean stop: not escalated, shut down cleanly, no end of WAL to report.
    let r = a.client.stop(&StopRequest::default()).await.unwrap();
    assert_eq!(
        (r.stopped_with, r.escalated, r.end_of_wal),
        (Some(StopMode::Fast), Some(false), None),
        "{r:?}"
    );
    let st = wait_for("the clean shutdown in status", T, || async {
        let st = a.status().await;
        st.clean_shutdown.is_some().then_some(st)
    })
    .await;
    assert_eq!((st.clean_shutdown, st.end_of_wal), (Some(true), None));
    a.client.start(&StopRequest::default()).await.unwrap();
    a.wait_ready("primary", T).await;

    let db = a.sql().await;
    db.batch_execute("CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    db.execute("INSERT INTO t VALUES (1001)", &[])
        .await
        .unwrap();
    let committed = lsn(&db, "SELECT pg_current_wal_lsn()::text").await;
    // A checkpointer that cannot move: the fast stop's shutdown checkpoint
    // never comes, immediate cannot finish either, and the agent SIGKILLs.
    let row = db
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'",
            &[],
        )
        .await
        .unwrap();
    let checkpointer: i32 = row.get(0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(checkpointer),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let r = a
        .client
        .stop(&StopRequest {
            mode: StopMode::Fast,
            timeout: Some("1s".parse().unwrap()),
            smart_timeout: None,
        })
        .await
        .unwrap_or_else(|e| panic!("stop: {e}\n{}", c.logs()));
    assert_eq!(r.escalated, Some(true), "{r:?}");
    assert_eq!(r.stopped_with, Some(StopMode::Immediate), "{r:?}");
    let end = r
        .end_of_wal
        .unwrap_or_else(|| panic!("no end of WAL: {r:?}\n{}", c.logs()));
    assert!(
        end >= committed,
        "end of WAL {end} before the commit at {committed}"
    );
    assert!(
        end.bytes_after(committed) < 64 << 10,
        "end of WAL {end} far past the last commit at {committed}"
    );
    wait_for("the frozen checkpointer to be gone", T, || async {
        (!pid_alive(checkpointer)).then_some(())
    })
    .await;
    let st = wait_for("the unclean shutdown in status", T, || async {
        let st = a.status().await;
        st.clean_shutdown.is_some().then_some(st)
    })
    .await;
    assert_eq!(
        (st.clean_shutdown, st.end_of_wal),
        (Some(false), Some(end)),
        "{st:?}"
    );
    a.client.start(&StopRequest::default()).await.unwrap();
    a.wait_ready("primary", T).await;
    let db = a.sql().await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1001);
}

/// The switch point of `timeline` in the history file of the server at `c`.
async fn switch_point(c: &tokio_postgres::Client, timeline: i64) -> Lsn {
    let file = format!("pg_wal/{timeline:08X}.history");
    let row = c
        .query_one("SELECT pg_read_file($1)", &[&file])
        .await
        .expect("read the history file");
    let text: String = row.get(0);
    let last = text.lines().last().expect("a history line");
    last.split('\t')
        .nth(1)
        .expect("a switch point")
        .parse()
        .expect("an LSN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_reports_where_histories_diverged_and_where_its_wal_ended() {
    let c = cluster_with("acct", 1).await;
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
    let diverged = switch_point(&new.sql().await, 2).await;
    // The old primary goes on writing on its own timeline: this is what a rewind discards.
    let o = old.sql().await;
    o.execute("INSERT INTO t SELECT generate_series(100, 2000)", &[])
        .await
        .unwrap();
    let old_last = lsn(&o, "SELECT pg_current_wal_lsn()::text").await;
    assert!(old_last > diverged);
    drop(o);

    old.client.stop(&StopRequest::default()).await.unwrap();
    let dry = old
        .client
        .rewind(&RewindRequest {
            source: new.member(),
            dry_run: true,
            limits: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("dry run: {e}\n{}", c.logs()));
    assert_eq!(dry.rewind_needed, Some(true), "{dry:?}");
    assert_eq!(dry.diverged_at, Some(diverged), "{dry:?}");
    let from = dry.rewound_from.expect("rewoundFrom in the dry run");
    assert!(
        from >= old_last,
        "rewoundFrom {from} before the old primary's last LSN {old_last}"
    );

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
    assert_eq!(
        (r.diverged_at, r.rewound_from),
        (Some(diverged), Some(from)),
        "{r:?}"
    );
    old.wait_ready("standby", T).await;
    wait_rows(old, "t", &[1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_followed_a_promotion_reports_its_wal_end_on_the_new_timeline() {
    let c = promoted_second("tlw").await;
    let (new, sib) = (&c.agents[1], &c.agents[2]);
    sib.client
        .follow(&FollowRequest {
            primary: new.member(),
            cascade: false,
        })
        .await
        .unwrap_or_else(|e| panic!("follow: {e}\n{}", c.logs()));
    // Written on timeline 2 only; the sibling's last restartpoint is still on
    // timeline 1, so its WAL must be read on the newer one.
    let db = new.sql().await;
    db.execute("INSERT INTO t SELECT generate_series(2, 500)", &[])
        .await
        .unwrap();
    let written = lsn(&db, "SELECT pg_current_wal_lsn()::text").await;
    let want: Vec<i32> = (1..=500).collect();
    wait_rows(sib, "t", &want).await;
    let r = sib
        .client
        .stop(&StopRequest {
            mode: StopMode::Immediate,
            timeout: None,
            smart_timeout: None,
        })
        .await
        .unwrap();
    assert_eq!(
        (r.stopped_with, r.escalated),
        (Some(StopMode::Immediate), Some(false)),
        "{r:?}"
    );
    let end = r
        .end_of_wal
        .unwrap_or_else(|| panic!("no end of WAL: {r:?}\n{}", c.logs()));
    assert!(
        end >= written,
        "end of WAL {end} before {written}, written on timeline 2"
    );
    assert!(
        end.bytes_after(written) < 64 << 10,
        "end of WAL {end}, written {written}"
    );
}
