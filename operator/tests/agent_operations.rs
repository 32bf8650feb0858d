//! The agent against real PostgreSQL: synchronous settings, stop escalation,
//! the archive backlog check, the check settings (`POST /checks`), refused
//! requests, crash restart, postgres dying with a SIGKILLed agent, and
//! parameters in status never ahead of the restart they need.

mod agent_support;

use std::time::{Duration, Instant};

use agent_support::*;
use tandem::api::agent::*;
use tandem::api::{CheckState, HealthCheck};

const T: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_on_and_off_changes_sync_state_and_reports_pending_restart() {
    let c = cluster_with("sync", 1).await;
    let (p, s) = (&c.agents[0], &c.agents[1]);
    let sync_state = |want: &'static str| async move {
        wait_for(&format!("sync_state {want}"), T, || async {
            let rows = p
                .sql()
                .await
                .query(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'sync-1'",
                    &[],
                )
                .await
                .ok()?;
            let got: String = rows.first()?.get(0);
            (got == want).then_some(())
        })
        .await
    };
    sync_state("async").await;

    let r = p
        .client
        .config(&ConfigRequest {
            synchronous_commit: Some("remote_apply".into()),
            synchronous_standbys: Some(SyncStandbys {
                count: 1,
                names: vec!["sync-1".into()],
            }),
            known_standbys: Some(vec!["sync-1".into()]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.reloaded && r.pending_restart.is_empty(), "{r:?}");
    sync_state("quorum").await;
    wait_for("sync settings in status", T, || async {
        let st = p.status().await;
        (st.synchronous_standby_names.as_deref() == Some("ANY 1 (\"sync-1\")")
            && st.synchronous_commit.as_deref() == Some("remote_apply"))
        .then_some(())
    })
    .await;
    // A synchronous commit returns and is visible on the standby at once (remote_apply).
    let db = p.sql().await;
    db.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert_eq!(rows(&s.sql().await, "t").await, vec![1]);

    let r = p
        .client
        .config(&ConfigRequest {
            synchronous_commit: Some("local".into()),
            synchronous_standbys: Some(SyncStandbys {
                count: 0,
                names: vec![],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.pending_restart.is_empty(), "{r:?}");
    sync_state("async").await;

    // A parameter that needs a restart is reported as pending.
    let mut parameters = std::collections::BTreeMap::new();
    parameters.insert("max_connections".to_string(), "50".to_string());
    let r = p
        .client
        .config(&ConfigRequest {
            parameters,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        r.pending_restart,
        vec!["max_connections".to_string()],
        "{r:?}"
    );
    wait_for("pending restart in status", T, || async {
        let st = p.status().await;
        (st.pending_restart == ["max_connections"]).then_some(())
    })
    .await;
    // Unknown parameters are refused whole.
    let mut bad = std::collections::BTreeMap::new();
    bad.insert("work_mem".to_string(), "8MB".to_string());
    bad.insert("no_such_parameter".to_string(), "1".to_string());
    let err = p
        .client
        .config(&ConfigRequest {
            parameters: bad,
            ..Default::default()
        })
        .await
        .expect_err("unknown parameter");
    assert_eq!(err.code(), Some(ERR_BAD_REQUEST), "{err}");
    let wm = db.query_one("SHOW work_mem", &[]).await.unwrap();
    assert_eq!(wm.get::<_, String>(0), "4MB");
    // After a restart nothing is pending any more.
    p.client.restart(&StopRequest::default()).await.unwrap();
    wait_for("no pending restart", T, || async {
        let st = p.status().await;
        (st.ready && st.pending_restart.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_stop_blocked_by_a_session_escalates_to_fast() {
    let mut c = Cluster::new("stop");
    c.add("stop-0", None, &[]);
    let a = &c.agents[0];
    let st = a.wait_ready("primary", T).await;
    let pid = st.postgres_pid.unwrap();
    let held = a.sql().await;
    held.execute("SELECT 1", &[]).await.unwrap();

    let started = Instant::now();
    let r = a
        .client
        .stop(&StopRequest {
            mode: StopMode::Smart,
            timeout: Some("2s".parse().unwrap()),
            smart_timeout: None,
        })
        .await
        .unwrap();
    assert_eq!(r.stopped_with, Some(StopMode::Fast), "{r:?}");
    // Smart escalating to fast still shuts down cleanly: no escalation past a clean stop.
    assert_eq!(r.escalated, Some(false), "{r:?}");
    assert!(r.message.contains("escalated to fast"), "{r:?}");
    // A fast stop is a clean shutdown: no end of WAL to account for.
    assert_eq!(r.end_of_wal, None, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        held.execute("SELECT 1", &[]).await.is_err(),
        "the session must be gone"
    );
    assert!(!pid_alive(pid));
    let st = a.status().await;
    assert!(st.fenced && !st.postgres_running, "{st:?}");
    assert_eq!(st.role, tandem::api::InstanceRole::Fenced);

    // Stop again: nothing to do.
    let r = a.client.stop(&StopRequest::default()).await.unwrap();
    assert!(!r.changed);
    let r = a.client.start(&StopRequest::default()).await.unwrap();
    assert!(r.changed);
    let st = a.wait_ready("primary", T).await;
    assert!(!st.fenced);
    let r = a
        .client
        .restart(&StopRequest {
            mode: StopMode::Fast,
            timeout: None,
            smart_timeout: None,
        })
        .await
        .unwrap();
    assert_eq!(r.stopped_with, Some(StopMode::Fast));
    let st2 = a.wait_ready("primary", T).await;
    assert_ne!(st2.postgres_pid, st.postgres_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_restart_waits_for_client_sessions_within_its_own_bound_but_not_for_the_agents() {
    // A primary and a standby: the standby's agent keeps a session on the
    // primary (its upstream probe), the primary's agent one of its own.
    let c = cluster_with("smart", 1).await;
    let p = &c.agents[0];
    p.wait_ready("primary", T).await;
    wait_for("the standby's agent session on the primary", T, || async {
        let rows = p
            .sql()
            .await
            .query(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'tandem-agent' AND client_addr IS NOT NULL",
                &[],
            )
            .await
            .ok()?;
        (!rows.is_empty()).then_some(())
    })
    .await;
    let started = Instant::now();
    let r = p
        .client
        .restart(&StopRequest {
            mode: StopMode::Smart,
            timeout: Some("30s".parse().unwrap()),
            smart_timeout: Some("20s".parse().unwrap()),
        })
        .await
        .unwrap();
    assert_eq!(
        r.stopped_with,
        Some(StopMode::Smart),
        "only the agents' sessions were open: {r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "{r:?}");
    p.wait_ready("primary", T).await;

    // A client session: smart waits for it only as long as its own bound.
    let held = p.sql().await;
    held.execute("SELECT 1", &[]).await.unwrap();
    let started = Instant::now();
    let r = p
        .client
        .restart(&StopRequest {
            mode: StopMode::Smart,
            timeout: Some("30s".parse().unwrap()),
            smart_timeout: Some("2s".parse().unwrap()),
        })
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.stopped_with, Some(StopMode::Fast), "{r:?}");
    assert_eq!(r.escalated, Some(false), "{r:?}");
    assert!(
        took >= Duration::from_secs(2),
        "smart did not wait: {took:?}"
    );
    assert!(
        took < Duration::from_secs(20),
        "the smart bound was not used: {took:?}"
    );
    assert!(held.execute("SELECT 1", &[]).await.is_err());
    p.wait_ready("primary", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_backlog_turns_the_check_critical_then_warning_then_ok() {
    let mut c = Cluster::new("arch");
    c.add("arch-0", None, &["--archive-ready-warning", "100"]);
    let a = &c.agents[0];
    a.wait_ready("primary", T).await;
    let status_dir = a.data_dir.join("pg_wal/archive_status");
    let file = |i: u32| status_dir.join(format!("00000001000000AA{i:08X}.ready"));
    for i in 0..130 {
        std::fs::write(file(i), "").unwrap();
    }
    let check = |want: CheckState, n: i64| async move {
        wait_for(&format!("archive_ready {want:?} {n}"), T, || async {
            let st = a.status().await;
            let c = st.check("archive_ready")?;
            (c.state == want && c.value == Some(n)).then(|| c.clone())
        })
        .await
    };
    let c130 = check(CheckState::Critical, 130).await;
    assert!(c130.message.contains("critical 128"), "{c130:?}");
    let m = a.client.metrics().await.unwrap();
    assert!(m.contains("tandem_archive_ready_files 130"), "{m}");
    assert!(
        m.contains("tandem_check_state{check=\"archive_ready\"} 2"),
        "{m}"
    );
    for i in 0..20 {
        std::fs::remove_file(file(i)).unwrap();
    }
    check(CheckState::Warning, 110).await;
    for i in 20..130 {
        std::fs::remove_file(file(i)).unwrap();
    }
    check(CheckState::Ok, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let c = cluster_with("bad", 1).await;
    let (p, s) = (&c.agents[0], &c.agents[1]);
    let before = p.status().await;
    let pid = before.postgres_pid;
    let base = format!("http://127.0.0.1:{}", p.http_port);
    let http = reqwest::Client::new();

    // No token, wrong token: 401, JSON error, nothing done.
    let r = http
        .post(format!("{base}{PATH_STOP}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error, ERR_UNAUTHORIZED);
    let r = http
        .get(format!("{base}{PATH_STATUS}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let wrong = tandem::agent::client::AgentClient::new(&base, "wrong-token").unwrap();
    let err = wrong.stop(&StopRequest::default()).await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(401), Some(ERR_UNAUTHORIZED))
    );
    let err = wrong.promote(&PromoteRequest::default()).await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    let r = http
        .post(format!("{base}{PATH_STOP}"))
        .header("Authorization", format!("Bearer {TOKEN}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Probes need no token.
    for path in [PATH_HEALTHZ, PATH_READYZ, PATH_METRICS] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }

    // Malformed JSON and oversized bodies.
    let r = http
        .post(format!("{base}{PATH_DEMOTE}"))
        .bearer_auth(TOKEN)
        .body("{\"primary\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error, ERR_BAD_REQUEST);
    assert!(body.detail.contains("malformed"), "{body:?}");
    let r = http
        .post(format!("{base}{PATH_CONFIG}"))
        .bearer_auth(TOKEN)
        .body(vec![b' '; MAX_BODY_BYTES + 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    let r = http
        .get(format!("{base}/no-such-call"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body: ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error, "not_found");

    // Promoting a primary, demoting to itself, an unknown primary.
    let err = p
        .client
        .promote(&PromoteRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some(ERR_ALREADY_PRIMARY))
    );
    assert!(err.to_string().contains("already a primary"), "{err}");
    let err = p
        .client
        .demote(&DemoteRequest {
            primary: p.member(),
            timeout: None,
            limits: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(400), Some(ERR_SELF_TARGET))
    );
    let ghost = Member {
        name: "ghost".into(),
        host: "127.0.0.1".into(),
        port: free_port(),
        agent_url: None,
    };
    let err = p
        .client
        .demote(&DemoteRequest {
            primary: ghost.clone(),
            timeout: None,
            limits: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(422), Some(ERR_BAD_TARGET))
    );
    assert!(err.to_string().contains("cannot be reached"), "{err}");
    // Demoting the primary to its own standby: refused, the standby is not a primary.
    let err = p
        .client
        .demote(&DemoteRequest {
            primary: s.member(),
            timeout: None,
            limits: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ERR_BAD_TARGET), "{err}");
    let err = s
        .client
        .follow(&FollowRequest {
            primary: ghost,
            cascade: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ERR_BAD_TARGET), "{err}");
    let err = p
        .client
        .rewind(&RewindRequest {
            source: s.member(),
            dry_run: true,
            limits: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ERR_BAD_TARGET), "{err}");
    let err = p
        .client
        .lease(&LeaseRequest {
            ttl_ms: 0,
            ..LeaseRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ERR_BAD_REQUEST));

    // Nothing changed.
    let after = p.wait_ready("primary", T).await;
    assert_eq!(after.postgres_pid, pid);
    assert!(!after.fenced);
    assert_eq!(after.timeline, before.timeline);
    let st = s.wait_ready("standby", T).await;
    assert_eq!(st.upstream.map(|m| m.name), Some("bad-0".to_string()));

    // The lease is recorded and visible.
    p.client
        .lease(&LeaseRequest {
            ttl_ms: 60_000,
            ..LeaseRequest::default()
        })
        .await
        .unwrap();
    let l = p.status().await.lease;
    assert!(l.held && l.ttl_ms == Some(60_000), "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_postgres_is_restarted_and_counted() {
    let mut c = Cluster::new("crash");
    c.add("crash-0", None, &[]);
    let a = &c.agents[0];
    let st = a.wait_ready("primary", T).await;
    let pid = st.postgres_pid.unwrap();
    assert!(tandem_testkit::signal(
        pid,
        nix::sys::signal::Signal::SIGKILL
    ));
    let st = wait_for("postgres restarted after the crash", T, || async {
        let st = a.status().await;
        (st.ready && st.postgres_pid.is_some_and(|p| p != pid) && st.crash_count == 1).then_some(st)
    })
    .await;
    assert!(st.last_crash.is_some());
    let m = a.client.metrics().await.unwrap();
    assert!(m.contains("tandem_postgres_crashes_total 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_agent_takes_its_postgres_down_and_restart_keeps_the_data() {
    let mut c = Cluster::new("kill");
    c.add("kill-0", None, &[]);
    let st = c.agents[0].wait_ready("primary", T).await;
    let pid = st.postgres_pid.unwrap();
    assert_eq!(c.agents[0].postmaster_pid(), Some(pid));
    let sysid = st.system_identifier.clone();
    c.agents[0]
        .sql()
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
        .await
        .unwrap();
    c.agents[0].kill_agent();
    let port = c.agents[0].pg_port;
    wait_for(
        "postgres to die with its agent",
        Duration::from_secs(20),
        || async { (!pid_alive(pid) && connect(port).await.is_err()).then_some(()) },
    )
    .await;

    // An agent started over a primary's data directory never re-initialises
    // it, and keeps postgres stopped until told: another instance may have
    // been promoted meanwhile, and two writable primaries must never run.
    c.agents[0].respawn();
    let held = wait_for("the agent to hold postgres stopped", T, || async {
        let st = c.agents[0].client.status().await.ok()?;
        (st.fenced && !st.postgres_running).then_some(st)
    })
    .await;
    assert!(
        connect(port).await.is_err(),
        "postgres must not run before it is told to start"
    );
    assert_eq!(held.system_identifier, sysid);
    c.agents[0]
        .client
        .start(&StopRequest::default())
        .await
        .unwrap_or_else(|e| panic!("start when told: {e}\n{}", c.agents[0].log_text()));
    let st = c.agents[0].wait_ready("primary", T).await;
    assert_eq!(st.system_identifier, sysid);
    assert_eq!(rows(&c.agents[0].sql().await, "t").await, vec![7]);
    assert!(c.agents[0]
        .log_text()
        .contains("data directory of a primary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_parameter_sets_are_recorded_and_parameters_left_out_are_reset() {
    let c = cluster_with("params", 0).await;
    let p = &c.agents[0];
    assert_eq!(
        p.status().await.parameters,
        Some(Default::default()),
        "nothing recorded yet"
    );
    let set = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let two = set(&[("work_mem", "8MB"), ("log_min_duration_statement", "250")]);
    p.client
        .config(&ConfigRequest {
            parameters: two.clone(),
            complete: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let show = |name: &'static str| async move {
        let db = p.sql().await;
        let r = db.query_one(&format!("SHOW {name}"), &[]).await.unwrap();
        r.get::<_, String>(0)
    };
    assert_eq!(show("work_mem").await, "8MB");
    assert_eq!(show("log_min_duration_statement").await, "250ms");
    wait_for("parameters in status", T, || async {
        (p.status().await.parameters.as_ref() == Some(&two)).then_some(())
    })
    .await;
    // The next whole set lacks log_min_duration_statement: it is reset.
    let one = set(&[("work_mem", "16MB")]);
    p.client
        .config(&ConfigRequest {
            parameters: one.clone(),
            complete: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(show("work_mem").await, "16MB");
    assert_eq!(show("log_min_duration_statement").await, "-1");
    wait_for("new parameters in status", T, || async {
        (p.status().await.parameters.as_ref() == Some(&one)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_slots_drops_inactive_slots_and_keeps_an_active_one() {
    let c = cluster_with("dslot", 1).await;
    let p = &c.agents[0];
    let db = p.sql().await;
    db.batch_execute("SELECT pg_create_physical_replication_slot('dslot_7')")
        .await
        .unwrap();
    wait_for("the standby's slot active", T, || async {
        let st = p.status().await;
        st.slots
            .iter()
            .any(|s| s.name == "dslot_1" && s.active)
            .then_some(())
    })
    .await;
    let r = p
        .client
        .drop_slots(&DropSlotsRequest {
            slots: vec!["dslot_1".into(), "dslot_7".into()],
        })
        .await
        .unwrap();
    assert!(r.changed, "{r:?}");
    assert!(r.message.contains("dropped dslot_7"), "{}", r.message);
    assert!(
        r.message.contains("kept (active or gone): dslot_1"),
        "{}",
        r.message
    );
    let left: Vec<String> = db
        .query(
            "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["dslot_1"]);
}

fn check_of(st: &AgentStatus, name: &str) -> Option<HealthCheck> {
    st.checks.iter().find(|c| c.name == name).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_settings_set_the_expected_standbys_and_thresholds_and_bad_ones_are_refused() {
    let c = cluster_with("chk", 1).await;
    let (p, s) = (&c.agents[0], &c.agents[1]);
    assert_eq!(p.status().await.check_settings, None, "never told yet");
    let settings = CheckSettings {
        standbys: vec!["chk-1".into()],
        archive_ready_warning: 1,
        archive_ready_critical: 2,
        lag_warning_bytes: 100,
        lag_critical_bytes: 200,
    };
    let r = p
        .client
        .checks(&ChecksRequest {
            settings: settings.clone(),
            members: vec![s.member()],
        })
        .await
        .unwrap();
    assert!(r.changed, "{r:?}");
    // Reported back, the standby attached, its slot there, and the primary's
    // replication connection to it measured.
    let st = wait_for(
        "the settings applied and the standby measured",
        T,
        || async {
            let st = p.status().await;
            (st.check_settings.as_ref() == Some(&settings)
                && st.replication_to.get("chk-1") == Some(&true)
                && check_of(&st, "downstream").is_some_and(|d| d.state == CheckState::Ok))
            .then_some(st)
        },
    )
    .await;
    let a = check_of(&st, "archive_ready").expect("archive check");
    assert!(a.message.contains("warning 1, critical 2"), "{a:?}");

    // Thresholds that do not make sense: 400, nothing changes.
    let err = p
        .client
        .checks(&ChecksRequest {
            settings: CheckSettings {
                archive_ready_warning: 5,
                archive_ready_critical: 2,
                ..settings.clone()
            },
            members: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(400), Some(ERR_BAD_REQUEST))
    );
    assert_eq!(p.status().await.check_settings.as_ref(), Some(&settings));

    // A standby expected that is not there: the downstream and slot checks say so.
    let more = CheckSettings {
        standbys: vec!["chk-1".into(), "chk-9".into()],
        ..settings.clone()
    };
    p.client
        .checks(&ChecksRequest {
            settings: more.clone(),
            members: vec![s.member()],
        })
        .await
        .unwrap();
    let st = wait_for("chk-9 missed", T, || async {
        let st = p.status().await;
        (st.check_settings.as_ref() == Some(&more)
            && check_of(&st, "downstream").is_some_and(|d| d.state == CheckState::Warning))
        .then_some(st)
    })
    .await;
    let d = check_of(&st, "downstream").unwrap();
    assert!(d.message.contains("chk-9"), "{d:?}");
    let slots = check_of(&st, "slots").unwrap();
    assert_eq!(slots.state, CheckState::Warning, "{slots:?}");
    assert!(slots.message.contains("missing [\"chk_9\"]"), "{slots:?}");
    assert!(
        !st.replication_to.contains_key("chk-9"),
        "{:?}",
        st.replication_to
    );
}

/// A status that shows the spec's parameters also shows the restart they
/// need: the engine takes "parameters match, no restart pending" for done, so
/// a probe that read the new parameters before postgres reloaded them would
/// leave that instance out of the rolling restart. (Going back, a status may
/// still show the old set for a moment after the reload: stale, not wrong.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_in_status_come_with_the_restart_they_need() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let c = cluster_with("pendrs", 0).await;
    let p = &c.agents[0];
    let needs_restart: std::collections::BTreeMap<String, String> =
        [("max_connections".to_string(), "150".to_string())].into();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // True from before the set is sent until before the reset is sent.
    let setting = std::sync::Arc::new(AtomicBool::new(false));
    let watcher = {
        let client = p.client.clone();
        let (stop, setting) = (stop.clone(), setting.clone());
        let want = needs_restart.clone();
        tokio::spawn(async move {
            let (mut seen, mut bad) = (0u32, Vec::new());
            while !stop.load(SeqCst) {
                let before = setting.load(SeqCst);
                let Ok(s) = client.fresh_status().await else {
                    continue;
                };
                if before && setting.load(SeqCst) && s.parameters.as_ref() == Some(&want) {
                    seen += 1;
                    if s.pending_restart.is_empty() {
                        bad.push(s.observed_at.clone());
                    }
                }
            }
            (seen, bad)
        })
    };
    for _ in 0..10 {
        setting.store(true, SeqCst);
        let r = p
            .client
            .config(&ConfigRequest {
                parameters: needs_restart.clone(),
                complete: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(r.pending_restart, vec!["max_connections".to_string()]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        setting.store(false, SeqCst);
        // Back to the running value: nothing pending any more.
        let r = p
            .client
            .config(&ConfigRequest {
                parameters: Default::default(),
                complete: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(r.pending_restart.is_empty(), "{:?}", r.pending_restart);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, SeqCst);
    let (seen, bad) = watcher.await.unwrap();
    assert!(seen > 0, "the watcher never saw the parameters applied");
    assert!(
        bad.is_empty(),
        "{} of {seen} statuses showed max_connections=150 applied with no restart pending (at {bad:?})",
        bad.len()
    );
}
