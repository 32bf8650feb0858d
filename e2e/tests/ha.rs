//! HA behaviour on a real Kubernetes cluster: readiness, switchover by
//! annotation, dry-run, failover on primary pod loss without losing
//! acknowledged rows, rejoin, pause, refused annotations, re-clone, sync
//! mode change. Every test is `#[ignore]`d: `make test` runs them with
//! `--ignored` on the test cluster of DESIGN.md §8 and `make e2e` on kind,
//! against the cluster in KUBECONFIG with the chart installed.

use std::time::Duration;

use tandem::api::keys;
use tandem_e2e::*;

const READY: Duration = Duration::from_secs(600);
const MOVE: Duration = Duration::from_secs(180);

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn minimal_cluster_becomes_healthy_and_rw_follows_the_primary() {
    with_temp_ns("ready", |client, ns| async move {
        let name = healthy_example(&client, &ns, "minimal.yaml", READY).await;
        let p = primary(&client, &ns, &name).await;
        wait_rw_on(&client, &ns, &name, &p, MOVE)
            .await
            .expect("rw on primary");
        let labels = role_labels(&client, &ns, &name).await.expect("labels");
        assert_eq!(
            labels.values().filter(|r| *r == keys::ROLE_PRIMARY).count(),
            1,
            "{labels:?}"
        );
        assert_eq!(
            labels.values().filter(|r| *r == keys::ROLE_STANDBY).count(),
            2,
            "{labels:?}"
        );
        let out = run_sql(
            &client,
            &ns,
            &name,
            "write-1",
            &writer_script(10, 120),
            MOVE,
        )
        .await
        .expect("writes through -rw");
        assert_eq!(acknowledged(&out).len(), 10, "{out}");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn switchover_by_annotation_moves_rw_and_dry_run_changes_nothing() {
    with_temp_ns("switchover", |client, ns| async move {
        let name = healthy_example(&client, &ns, "minimal.yaml", READY).await;
        let old = primary(&client, &ns, &name).await;
        let target = if old == keys::instance_name(&name, 1) {
            keys::instance_name(&name, 2)
        } else {
            keys::instance_name(&name, 1)
        };
        run_sql(
            &client,
            &ns,
            &name,
            "write-1",
            &writer_script(20, 120),
            MOVE,
        )
        .await
        .expect("rows before");

        // Dry-run: a report, no move.
        annotate(
            &client,
            &ns,
            &name,
            keys::ANN_SWITCHOVER_DRY_RUN,
            Some(&target),
        )
        .await
        .expect("annotate");
        wait_event(&client, &ns, &name, "SwitchoverDryRun", MOVE)
            .await
            .expect("dry-run event");
        eventually("dry-run annotation removed", MOVE, || async {
            (!has_annotation(&client, &ns, &name, keys::ANN_SWITCHOVER_DRY_RUN)
                .await
                .ok()?)
            .then_some(())
        })
        .await
        .expect("dry-run answered");
        assert_eq!(
            primary(&client, &ns, &name).await,
            old,
            "dry-run changed the primary"
        );
        assert_eq!(
            service_pods(&client, &ns, &keys::service_rw(&name))
                .await
                .expect("rw"),
            vec![old.clone()]
        );

        // The real switchover, its role labels watched as it goes.
        let labels_seen = {
            let (client, ns, name, target) =
                (client.clone(), ns.clone(), name.clone(), target.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..2400 {
                    if let Ok(l) = role_labels(&client, &ns, &name).await {
                        let done = l.get(&target).map(String::as_str) == Some(keys::ROLE_PRIMARY);
                        if seen.last() != Some(&l) {
                            seen.push(l);
                        }
                        if done {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                seen
            })
        };
        annotate(&client, &ns, &name, keys::ANN_SWITCHOVER, Some(&target))
            .await
            .expect("annotate");
        wait_rw_on(&client, &ns, &name, &target, MOVE)
            .await
            .expect("rw moved to the target");
        // The target left -ro (for a settle period, 1 s) while the old
        // primary was still behind -rw: its promotion label then changes -rw
        // alone, in one kube-proxy sync.
        let seen = labels_seen.await.expect("label watch");
        assert!(
            seen.iter().any(|l| {
                l.get(&old).map(String::as_str) == Some(keys::ROLE_PRIMARY)
                    && l.get(&target).map(String::as_str) == Some(keys::ROLE_UNKNOWN)
            }),
            "the target never left -ro before the old primary left -rw: {seen:?}"
        );
        wait_event(&client, &ns, &name, "SwitchoverCompleted", MOVE)
            .await
            .expect("completed event");
        let healthy = wait_healthy(&client, &ns, &name, READY)
            .await
            .expect("healthy after");
        assert_eq!(
            healthy.status.and_then(|s| s.current_primary),
            Some(target.clone())
        );
        assert!(!has_annotation(&client, &ns, &name, keys::ANN_SWITCHOVER)
            .await
            .expect("get"));
        let rows = rows(&client, &ns, &name, "read-1")
            .await
            .expect("rows after");
        assert_eq!(
            rows,
            (1..=20).collect::<Vec<i64>>(),
            "rows survive a switchover"
        );
        let labels = role_labels(&client, &ns, &name).await.expect("labels");
        assert_eq!(
            labels.get(&old).map(String::as_str),
            Some(keys::ROLE_STANDBY),
            "old primary follows: {labels:?}"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn primary_pod_loss_fails_over_without_losing_acknowledged_rows_and_old_primary_rejoins() {
    with_temp_ns("failover", |client, ns| async move {
        let name = healthy_example(&client, &ns, "sync.yaml", READY).await;
        let old = primary(&client, &ns, &name).await;
        start_sql_pod(&client, &ns, &name, "writer", &writer_script(400, 300))
            .await
            .expect("writer");
        eventually("writer acknowledged 50 rows", MOVE, || async {
            (acknowledged(&pod_logs(&client, &ns, "writer").await.ok()?).len() >= 50).then_some(())
        })
        .await
        .expect("writes flowing");

        kill_pod(&client, &ns, &old).await.expect("kill primary");
        let new = eventually("a new primary", MOVE, || async {
            let p = status(&client, &ns, &name).await.ok()?.current_primary?;
            (p != old).then_some(p)
        })
        .await
        .expect("failover");
        wait_rw_on(&client, &ns, &name, &new, MOVE)
            .await
            .expect("rw moved");
        wait_event(&client, &ns, &name, "PrimaryPromoted", MOVE)
            .await
            .expect("promoted event");

        // The writer finishes through the new primary.
        let lost = lost_acknowledged(&client, &ns, &name, "writer", Duration::from_secs(330))
            .await
            .expect("writer finished");
        assert!(
            lost.is_empty(),
            "acknowledged rows lost in failover: {lost:?}"
        );

        // The old pod comes back (StatefulSet) and rejoins as a standby.
        expect_lossless_failover_and_rejoin(&client, &ns, &name, &old, &new, READY).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn paused_cluster_does_not_fail_over() {
    with_temp_ns("paused", |client, ns| async move {
        let name = healthy_example(&client, &ns, "minimal.yaml", READY).await;
        let old = primary(&client, &ns, &name).await;
        annotate(&client, &ns, &name, keys::ANN_PAUSED, Some("true"))
            .await
            .expect("pause");
        eventually("status says paused", MOVE, || async {
            status(&client, &ns, &name).await.ok()?.paused.then_some(())
        })
        .await
        .expect("paused");
        kill_pod(&client, &ns, &old).await.expect("kill primary");
        // Far past detectionTimeout + lease: still no failover. A bounded observation, not a sync sleep.
        let moved = eventually(
            "a failover despite pause",
            Duration::from_secs(45),
            || async {
                let p = status(&client, &ns, &name).await.ok()?.current_primary?;
                (p != old).then_some(p)
            },
        )
        .await;
        assert!(moved.is_err(), "failover happened while paused: {moved:?}");
        let refused = events(&client, &ns, &name).await.expect("events");
        assert!(
            !refused.iter().any(|(_, r, _)| r == "PrimaryPromoted"),
            "{refused:?}"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn bad_annotations_are_refused_with_an_event_and_change_nothing() {
    with_temp_ns("refused", |client, ns| async move {
        let name = healthy_example(&client, &ns, "minimal.yaml", READY).await;
        let old = primary(&client, &ns, &name).await;
        let labels_before = role_labels(&client, &ns, &name).await.expect("labels");

        annotate(
            &client,
            &ns,
            &name,
            keys::ANN_SWITCHOVER,
            Some("nonexistent-7"),
        )
        .await
        .expect("annotate");
        let note = wait_event(&client, &ns, &name, "RequestRefused", MOVE)
            .await
            .expect("refused event");
        assert!(note.contains("nonexistent-7"), "{note}");
        eventually("refused annotation removed", MOVE, || async {
            (!has_annotation(&client, &ns, &name, keys::ANN_SWITCHOVER)
                .await
                .ok()?)
            .then_some(())
        })
        .await
        .expect("removed");

        annotate(&client, &ns, &name, keys::ANN_SWITCHOVER, Some(&old))
            .await
            .expect("annotate");
        wait_event(&client, &ns, &name, "SwitchoverRefused", MOVE)
            .await
            .expect("switchover to the primary refused");

        assert_eq!(primary(&client, &ns, &name).await, old);
        assert_eq!(
            role_labels(&client, &ns, &name).await.expect("labels"),
            labels_before
        );
        let st = status(&client, &ns, &name).await.expect("status");
        assert!(
            st.history.iter().any(|e| e.outcome == "Refused"),
            "{:?}",
            st.history
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn reclone_annotation_reclones_a_standby_and_keeps_the_data() {
    with_temp_ns("reclone", |client, ns| async move {
        let name = healthy_example(&client, &ns, "minimal.yaml", READY).await;
        run_sql(
            &client,
            &ns,
            &name,
            "write-1",
            &writer_script(20, 120),
            MOVE,
        )
        .await
        .expect("rows");
        let primary = primary(&client, &ns, &name).await;
        let standby = (0..3)
            .map(|i| keys::instance_name(&name, i))
            .find(|n| *n != primary)
            .expect("a standby");
        annotate(&client, &ns, &name, keys::ANN_RECLONE, Some(&standby))
            .await
            .expect("annotate");
        wait_event(&client, &ns, &name, "RecloneCompleted", READY)
            .await
            .expect("re-cloned");
        let st = wait_healthy(&client, &ns, &name, READY)
            .await
            .expect("healthy after")
            .status
            .expect("status");
        assert_eq!(st.current_primary.as_deref(), Some(primary.as_str()));
        assert!(
            st.history
                .iter()
                .any(|e| e.kind == "Reclone" && e.outcome == "Succeeded"),
            "{:?}",
            st.history
        );
        assert!(!has_annotation(&client, &ns, &name, keys::ANN_RECLONE)
            .await
            .expect("get"));
        let rows = rows(&client, &ns, &name, "read-1").await.expect("rows");
        assert_eq!(rows, (1..=20).collect::<Vec<i64>>());
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn switching_to_sync_replication_applies_without_a_restart() {
    with_temp_ns("sync", |client, ns| async move {
        let name = healthy_example(&client, &ns, "minimal.yaml", READY).await;
        // Healthy is written before kube-proxy has programmed the -rw rule: wait for the endpoint, retry the connection.
        let p = primary(&client, &ns, &name).await;
        wait_rw_on(&client, &ns, &name, &p, MOVE)
            .await
            .expect("rw on primary");
        let started = run_sql(
            &client,
            &ns,
            &name,
            "started",
            "for i in $(seq 1 30); do psql -qAt -c 'SELECT pg_postmaster_start_time()' && exit 0; sleep 1; done; exit 1",
            MOVE,
        )
        .await
        .expect("start time");
        let out = patch_cluster(
            &ns,
            &name,
            r#"{"spec":{"replication":{"mode":"sync","syncStandbys":1}}}"#,
        )
        .await
        .expect("kubectl patch");
        assert!(out.ok(), "kubectl patch refused: {}", out.stderr);
        // Applied with a reload: the primary reports the setting, and its postmaster did not restart.
        let out = run_sql(
            &client,
            &ns,
            &name,
            "sync-check",
            "until [ -n \"$(psql -qAt -c 'SHOW synchronous_standby_names')\" ]; do sleep 1; done; \
             psql -qAt -c 'SHOW synchronous_standby_names' -c 'SELECT pg_postmaster_start_time()'",
            MOVE,
        )
        .await
        .expect("synchronous_standby_names set on the primary");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() >= 2 && !lines[0].is_empty(), "{out:?}");
        assert_eq!(lines[1], started.trim(), "the primary restarted: {out:?}");
        let out = run_sql(&client, &ns, &name, "write-1", &writer_script(5, 120), MOVE)
            .await
            .expect("writes commit with a synchronous standby");
        assert_eq!(acknowledged(&out).len(), 5, "{out}");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn learner_and_paused_examples_become_ready_and_take_writes() {
    with_temp_ns("examples", |client, ns| async move {
        expect_operator(&client).await.expect("operator running");
        let learner = apply_example(&client, &ns, "learner.yaml")
            .await
            .expect("apply learner");
        let paused = apply_example(&client, &ns, "paused.yaml")
            .await
            .expect("apply paused");
        for name in [&learner, &paused] {
            wait_healthy(&client, &ns, name, READY)
                .await
                .expect("healthy");
            let p = primary(&client, &ns, name).await;
            wait_rw_on(&client, &ns, name, &p, MOVE)
                .await
                .expect("rw on primary");
            let out = run_sql(
                &client,
                &ns,
                name,
                &format!("write-{name}"),
                &writer_script(5, 120),
                MOVE,
            )
            .await
            .expect("writes through -rw");
            assert_eq!(acknowledged(&out).len(), 5, "{name}: {out}");
        }
        let st = status(&client, &ns, &learner).await.expect("status");
        let two = keys::instance_name(&learner, 2);
        let inst = st
            .instances
            .iter()
            .find(|i| i.name == two)
            .expect("learner in status");
        assert_eq!(inst.priority, 0, "{inst:?}");
        assert_eq!(
            st.current_primary.as_deref(),
            Some(keys::instance_name(&learner, 0).as_str())
        );
        assert!(status(&client, &ns, &paused).await.expect("status").paused);
    })
    .await;
}
