//! Flow tests of the Kubernetes platform of the HA engine: the API server and
//! the agents are fakes that record every call in one journal (so order is
//! checked: status before actions), the agents simulate postgres roles. Time
//! is passed in, so detection timeouts and leases elapse without sleeping.

mod controller_ha_support;

use std::sync::Arc;
use std::time::Duration;

use controller_ha_support::*;
use tandem::api::keys;
use tandem::controller::ha::{HaConfig, Registry};
use tandem::engine::EventType;
use tandem_testkit::poll_until_async;

#[tokio::test]
async fn bootstrap_labels_the_running_primary_and_its_standbys() {
    let mut f = fixture();
    f.settled().await;
    let w = lock(&f.world);
    let st = status(&w);
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.instances.len(), 3);
    assert_eq!(st.ready_instances.as_deref(), Some("3/3"));
}

#[tokio::test]
async fn every_agent_is_told_its_expected_standbys_with_their_pod_addresses() {
    let mut f = fixture();
    f.settled().await;
    let w = lock(&f.world);
    let c = w.sims["main-0"]
        .checks
        .clone()
        .expect("main-0 told its checks");
    assert_eq!(c.settings.standbys, vec!["main-1", "main-2"]);
    assert_eq!(c.settings.archive_ready_critical, 128);
    let hosts: Vec<(&str, &str, u16)> = c
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.host.as_str(), m.port))
        .collect();
    assert_eq!(
        hosts,
        vec![
            ("main-1", "main-1.main-pods.ns.svc", 5432),
            ("main-2", "main-2.main-pods.ns.svc", 5432)
        ]
    );
    let c2 = w.sims["main-2"]
        .checks
        .clone()
        .expect("main-2 told its checks");
    assert_eq!(c2.settings.standbys, vec!["main-0", "main-1"]);
}

#[tokio::test]
async fn switchover_annotation_moves_the_primary_label_and_is_cleared() {
    let mut f = fixture();
    f.settled().await;
    f.annotate(keys::ANN_SWITCHOVER, "main-1");
    f.until(60, "switchover to main-1 finished", |w| {
        status(w).current_primary.as_deref() == Some("main-1")
            && status(w).transition.is_none()
            && label(w, "main-1") == Some("primary")
            && label(w, "main-0") == Some("standby")
    })
    .await;
    let w = lock(&f.world);
    let j = &w.journal;
    // The step is persisted before the primary is stopped; stop before promote; promote before the label.
    let first_status = j
        .iter()
        .position(|e| e.starts_with("status Switchover/"))
        .expect("status");
    let stop = position(j, "agent main-0 stop");
    let promote = position(j, "agent main-1 promote");
    let labelled = position(j, "label main-1=primary");
    assert!(
        first_status < stop && stop < promote && promote < labelled,
        "{j:#?}"
    );
    // The old primary's label left before its postgres was stopped (no new connections).
    let dropped = j
        .iter()
        .position(|e| e.starts_with("label main-0=") && e != "label main-0=primary")
        .expect("old primary's label dropped");
    assert!(dropped < stop, "{j:#?}");
    assert!(
        j.iter()
            .any(|e| e == "agent main-0 demote" || e == "agent main-0 start"),
        "{j:#?}"
    );
    assert!(
        has_event(&w, EventType::Normal, "SwitchoverStarted"),
        "{:?}",
        w.events
    );
    assert!(
        has_event(&w, EventType::Normal, "SwitchoverCompleted"),
        "{:?}",
        w.events
    );
    assert!(
        !annotated(&w, keys::ANN_SWITCHOVER),
        "trigger annotation removed"
    );
    let last = status(&w).history.last().cloned().expect("history");
    assert_eq!(
        (last.kind.as_str(), last.outcome.as_str()),
        ("Switchover", "Succeeded")
    );
}

#[tokio::test]
async fn a_replication_mode_change_of_the_spec_runs_as_a_durability_change_with_an_event() {
    let mut f = fixture();
    f.settled().await;
    {
        let mut w = lock(&f.world);
        let c = w.cluster.as_mut().expect("cluster");
        c.spec.replication.mode = tandem::api::ReplicationMode::Sync;
        c.metadata.generation = Some(2);
    }
    f.until(20, "the durability change finished", |w| {
        status(w).transition.is_none()
            && status(w)
                .history
                .iter()
                .any(|e| e.kind == "DurabilityChange")
    })
    .await;
    let w = lock(&f.world);
    let st = status(&w);
    let e = st
        .history
        .iter()
        .rev()
        .find(|e| e.kind == "DurabilityChange")
        .expect("history entry");
    assert_eq!(e.outcome, "Succeeded", "{e:?}");
    assert!(
        e.message
            .contains("sync state main-1 quorum, main-2 quorum"),
        "{e:?}"
    );
    assert_eq!(
        st.durability.as_ref().map(|d| d.applied.mode),
        Some(tandem::api::ReplicationMode::Sync)
    );
    assert!(
        has_event(&w, EventType::Normal, "DurabilityChanged"),
        "{:?}",
        w.events
    );
    // The step is in status before the primary is told.
    let j = &w.journal;
    let step = position(j, "status DurabilityChange/ApplyDurability");
    let config = position(j, "agent main-0 config");
    assert!(step < config, "{j:#?}");
    assert_eq!(
        w.sims["main-0"].sync.as_ref().map(|s| s.names.as_str()),
        Some("ANY 1 (\"main-1\", \"main-2\")")
    );
}

#[tokio::test]
async fn an_unmeetable_replication_change_is_refused_by_the_engine_and_the_cluster_stays_driven() {
    let mut f = fixture();
    {
        let mut w = lock(&f.world);
        let c = w.cluster.as_mut().expect("cluster");
        c.spec.instance_overrides = vec![tandem::api::InstanceOverride {
            ordinal: 2,
            priority: Some(0),
        }];
    }
    f.settled().await;
    {
        let mut w = lock(&f.world);
        let c = w.cluster.as_mut().expect("cluster");
        c.spec.replication.mode = tandem::api::ReplicationMode::Sync;
        c.spec.replication.sync_standbys = 2;
        c.metadata.generation = Some(2);
    }
    f.until(5, "the change refused", |w| {
        status(w)
            .history
            .iter()
            .any(|e| e.kind == "DurabilityChange" && e.outcome == "Refused")
    })
    .await;
    let w = lock(&f.world);
    let st = status(&w);
    assert_eq!(st.observed_generation, Some(2), "the new spec was driven");
    assert!(
        has_event(&w, EventType::Warning, "DurabilityRefused"),
        "{:?}",
        w.events
    );
    assert_eq!(
        st.durability.as_ref().map(|d| d.applied.mode),
        Some(tandem::api::ReplicationMode::Async),
        "nothing changed"
    );
    assert!(
        !w.journal.iter().any(|e| e == "agent main-0 config"),
        "{:?}",
        w.journal
    );
    assert!(st
        .blocked_by
        .as_deref()
        .is_some_and(|b| b.contains("only 1 standbys can be synchronous")));
}

#[tokio::test]
async fn pausing_by_annotation_is_recorded_and_a_restart_request_still_runs() {
    let mut f = fixture();
    f.settled().await;
    f.annotate(keys::ANN_PAUSED, "true");
    f.pass().await;
    f.annotate(keys::ANN_RESTART, "main-1");
    f.until(20, "the restart of main-1 finished", |w| {
        status(w)
            .history
            .iter()
            .any(|e| e.kind == "Restart" && e.outcome == "Succeeded")
    })
    .await;
    let w = lock(&f.world);
    let st = status(&w);
    assert!(st.paused);
    let pause = st
        .history
        .iter()
        .find(|e| e.kind == "Pause")
        .expect("pause in history");
    assert!(
        pause.message.contains("annotation tandem.dev/paused=true"),
        "{pause:?}"
    );
    assert!(has_event(&w, EventType::Normal, "Paused"), "{:?}", w.events);
    assert!(w.journal.iter().any(|e| e == "agent main-1 restart"));
}

#[tokio::test]
async fn unreachable_primary_agent_leads_to_pod_deletion_and_promotion() {
    let mut f = fixture();
    f.settled().await;
    f.agent_down("main-0");
    f.until(120, "failover promoted a standby", |w| {
        let p = status(w).current_primary;
        matches!(p.as_deref(), Some("main-1" | "main-2")) && status(w).transition.is_none()
    })
    .await;
    let w = lock(&f.world);
    let j = &w.journal;
    let new = status(&w).current_primary.expect("primary");
    let deleted = position(j, "delete main-0");
    let promote = position(j, &format!("agent {new} promote"));
    let labelled = position(j, &format!("label {new}=primary"));
    assert!(deleted < promote && promote < labelled, "{j:#?}");
    assert!(
        has_event(&w, EventType::Normal, "PrimaryPromoted")
            || has_event(&w, EventType::Warning, "PrimaryPromoted"),
        "{:?}",
        w.events
    );
    let failover = status(&w)
        .history
        .iter()
        .find(|e| e.kind == "Failover")
        .cloned()
        .expect("failover in history");
    assert_eq!(failover.outcome, "Succeeded", "{failover:?}");
    assert_eq!(failover.to.as_deref(), Some(new.as_str()));
}

#[tokio::test]
async fn a_primary_pod_recreated_between_two_passes_fails_over() {
    let mut f = fixture();
    f.settled().await;
    {
        // Deleted and recreated by the StatefulSet at once: the new pod's
        // agent answers and holds the primary's data stopped.
        let mut w = lock(&f.world);
        let pod = w
            .pods
            .iter_mut()
            .find(|p| p.metadata.name.as_deref() == Some("main-0"))
            .expect("main-0");
        pod.metadata.uid = Some("uid-0-replacement".into());
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .remove(keys::LABEL_ROLE);
        if let Some(s) = w.sims.get_mut("main-0") {
            s.running = false;
        }
    }
    f.until(120, "failover promoted a standby", |w| {
        let p = status(w).current_primary;
        matches!(p.as_deref(), Some("main-1" | "main-2")) && status(w).transition.is_none()
    })
    .await;
    let w = lock(&f.world);
    let failover = status(&w)
        .history
        .iter()
        .find(|e| e.kind == "Failover")
        .cloned()
        .expect("failover in history");
    assert_eq!(failover.outcome, "Succeeded", "{failover:?}");
    assert!(
        !w.journal.iter().any(|e| e == "agent main-0 start"),
        "the replaced primary was started in place: {:#?}",
        w.journal
    );
}

#[tokio::test]
async fn malformed_annotation_is_refused_with_a_warning_event_and_no_label_change() {
    let mut f = fixture();
    f.settled().await;
    f.annotate(keys::ANN_SWITCHOVER, "other-9");
    f.pass().await;
    f.pass().await;
    let w = lock(&f.world);
    assert!(
        has_event(&w, EventType::Warning, "RequestRefused"),
        "{:?}",
        w.events
    );
    assert!(
        !annotated(&w, keys::ANN_SWITCHOVER),
        "refused annotation removed"
    );
    assert!(
        !w.journal
            .iter()
            .any(|e| e.starts_with("label ") || e.starts_with("agent ")),
        "{:#?}",
        w.journal
    );
    let st = status(&w);
    assert_eq!(st.current_primary.as_deref(), Some("main-0"));
    let last = st.history.last().cloned().expect("history entry");
    assert_eq!(
        (last.kind.as_str(), last.outcome.as_str()),
        ("Request", "Refused")
    );
    assert!(last.message.contains("other-9"), "{}", last.message);
}

#[tokio::test]
async fn switchover_to_the_current_primary_is_refused_and_changes_nothing() {
    let mut f = fixture();
    f.settled().await;
    f.annotate(keys::ANN_SWITCHOVER, "main-0");
    f.until(5, "request answered", |w| {
        !annotated(w, keys::ANN_SWITCHOVER)
    })
    .await;
    let w = lock(&f.world);
    assert!(
        has_event(&w, EventType::Warning, "SwitchoverRefused"),
        "{:?}",
        w.events
    );
    assert!(
        !w.journal
            .iter()
            .any(|e| e.starts_with("label ") || e.starts_with("agent ")),
        "{:#?}",
        w.journal
    );
    assert_eq!(status(&w).current_primary.as_deref(), Some("main-0"));
}

/// A request's prechecks (a candidate's lag compares two agents' probes)
/// judge the cluster as it is when the request was made, not from probes
/// up to an interval old: the pass that answers it polls fresh.
#[tokio::test]
async fn a_request_is_judged_on_probes_begun_after_it() {
    let mut f = fixture();
    f.settled().await;
    let before = lock(&f.world).fresh_polls;
    for _ in 0..3 {
        f.pass().await;
    }
    assert_eq!(
        lock(&f.world).fresh_polls,
        before,
        "a settled cluster without a request polls the agents' latest probes"
    );
    f.annotate(keys::ANN_SWITCHOVER_DRY_RUN, "main-2");
    f.until(5, "dry-run answered", |w| {
        !annotated(w, keys::ANN_SWITCHOVER_DRY_RUN)
    })
    .await;
    let w = lock(&f.world);
    assert!(
        w.fresh_polls >= before + 3,
        "the dry-run's pass did not ask every agent for a fresh probe: {} fresh polls before, {} after",
        before,
        w.fresh_polls
    );
    assert!(
        w.events.iter().any(|(_, r, _)| r == "SwitchoverDryRun"),
        "{:?}",
        w.events
    );
}

#[tokio::test]
async fn switchover_dry_run_reports_prechecks_and_changes_nothing() {
    let mut f = fixture();
    f.settled().await;
    f.annotate(keys::ANN_SWITCHOVER_DRY_RUN, "main-2");
    f.until(5, "dry-run answered", |w| {
        !annotated(w, keys::ANN_SWITCHOVER_DRY_RUN)
    })
    .await;
    let w = lock(&f.world);
    assert!(
        w.events.iter().any(|(_, r, _)| r == "SwitchoverDryRun"),
        "{:?}",
        w.events
    );
    assert!(
        !w.journal
            .iter()
            .any(|e| e.starts_with("label ") || e.starts_with("agent ")),
        "{:#?}",
        w.journal
    );
    let last = status(&w).history.last().cloned().expect("history");
    assert_eq!(last.outcome, "DryRun");
    assert!(!last.checks.is_empty(), "the report carries each precheck");
}

#[tokio::test]
async fn paused_annotation_stops_failover() {
    let mut f = fixture();
    f.settled().await;
    f.annotate(keys::ANN_PAUSED, "true");
    f.agent_down("main-0");
    // As many passes as the unpaused failover test allows itself.
    for _ in 0..120 {
        f.pass().await;
    }
    let w = lock(&f.world);
    assert!(status(&w).paused, "status says paused");
    assert_eq!(status(&w).current_primary.as_deref(), Some("main-0"));
    assert!(
        !w.journal
            .iter()
            .any(|e| e.starts_with("delete ") || e.ends_with(" promote")),
        "{:#?}",
        w.journal
    );
    assert!(
        annotated(&w, keys::ANN_PAUSED),
        "paused is a state, not a request: it stays"
    );
}

#[tokio::test]
async fn nothing_is_carried_out_when_the_status_cannot_be_persisted() {
    let mut f = fixture();
    f.settled().await;
    f.annotate(keys::ANN_SWITCHOVER, "main-1");
    lock(&f.world).refuse_status = true;
    for _ in 0..3 {
        assert!(
            f.try_pass().await.is_err(),
            "a pass whose status is refused fails"
        );
    }
    {
        let w = lock(&f.world);
        assert!(
            !w.journal.iter().any(|e| e.starts_with("label ")
                || e.starts_with("agent ")
                || e.starts_with("event ")),
            "acted without a persisted step: {:#?}",
            w.journal
        );
        assert!(
            annotated(&w, keys::ANN_SWITCHOVER),
            "the request is still pending"
        );
    }
    // Once status can be written again the switchover runs from its first step.
    lock(&f.world).refuse_status = false;
    f.until(60, "switchover to main-1 finished", |w| {
        status(w).current_primary.as_deref() == Some("main-1") && status(w).transition.is_none()
    })
    .await;
}

#[tokio::test]
async fn a_hanging_cluster_does_not_hold_up_the_others() {
    let f = fixture();
    lock(&f.world).hang_namespace = Some("stuck".into());
    let registry = Registry::new(
        Arc::new(FakeKube(f.world.clone())),
        Arc::new(FakeAgents(f.world.clone())),
        HaConfig {
            interval: Duration::from_millis(20),
            // One pass at a time: the stuck cluster's pass must give its permit back.
            max_concurrent: 1,
            pass_timeout: Duration::from_millis(200),
            cluster: loop_config(),
        },
    );
    registry.ensure("stuck", "main");
    registry.ensure("ns", "main");
    let world = &f.world;
    let progressed = poll_until_async(Duration::from_secs(20), Duration::from_millis(20), || {
        let w = lock(world);
        let done = status(&w).current_primary.as_deref() == Some("main-0")
            && label(&w, "main-0") == Some("primary");
        async move { done.then_some(()) }
    })
    .await;
    assert!(
        progressed.is_some(),
        "the healthy cluster made no progress beside a stuck one"
    );
    assert!(
        registry.drives("stuck", "main"),
        "the stuck loop keeps trying"
    );
    registry.stop_all();
    assert!(!registry.drives("ns", "main"));
}

#[tokio::test]
async fn primary_in_its_deletion_grace_period_is_not_replaced_while_it_still_serves() {
    let mut f = fixture();
    f.settled().await;
    {
        let mut w = lock(&f.world);
        let pod = w
            .pods
            .iter_mut()
            .find(|p| p.metadata.name.as_deref() == Some("main-0"))
            .expect("pod");
        pod.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
    }
    for _ in 0..20 {
        f.pass().await;
    }
    {
        let w = lock(&f.world);
        assert_eq!(status(&w).current_primary.as_deref(), Some("main-0"));
        assert!(
            !w.journal.iter().any(|e| e.ends_with(" promote")),
            "{:#?}",
            w.journal
        );
    }
    // Its container stopped: now it is gone, and a standby takes over.
    f.agent_down("main-0");
    f.until(60, "failover after the old primary stopped", |w| {
        matches!(
            status(w).current_primary.as_deref(),
            Some("main-1" | "main-2")
        ) && status(w).transition.is_none()
    })
    .await;
}

/// Label every pod with template revision `rev`.
fn set_revision(f: &Fixture, rev: &str) {
    for p in &mut lock(&f.world).pods {
        p.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("controller-revision-hash".into(), rev.into());
    }
}

#[tokio::test]
async fn template_change_rolls_standbys_first_then_the_primary_after_a_switchover() {
    let mut f = fixture();
    f.settled().await;
    set_revision(&f, "rev-a");
    lock(&f.world).update_revision = Some("rev-b".into());
    let mut deleted = Vec::new();
    for _ in 0..200 {
        f.pass().await;
        let mut w = lock(&f.world);
        let gone: Vec<String> = w
            .journal
            .iter()
            .filter_map(|e| e.strip_prefix("delete-graceful "))
            .map(str::to_string)
            .filter(|n| !deleted.contains(n))
            .collect();
        for name in gone {
            // The StatefulSet recreates the pod from the new template; its agent
            // comes back as a standby of the current primary.
            let i: u32 = name.trim_start_matches("main-").parse().expect("ordinal");
            let mut p = pod(i);
            p.metadata.uid = Some(format!("uid-{i}-b"));
            p.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert("controller-revision-hash".into(), "rev-b".into());
            w.pods.push(p);
            let primary = status(&w).current_primary.unwrap_or_default();
            let timeline = w.sims.get(&primary).map_or(1, |s| s.timeline);
            if let Some(s) = w.sims.get_mut(&name) {
                *s = Sim {
                    answers: true,
                    running: true,
                    primary: false,
                    timeline,
                    upstream: Some(primary),
                    ..Sim::default()
                };
            }
            deleted.push(name);
        }
        if deleted.len() == 3
            && status(&w).transition.is_none()
            && status(&w).ready_instances.as_deref() == Some("3/3")
        {
            break;
        }
    }
    assert_eq!(
        deleted,
        ["main-2", "main-1", "main-0"],
        "standbys first, the old primary last"
    );
    let w = lock(&f.world);
    let j = &w.journal;
    let promoted = j
        .iter()
        .position(|e| e == "agent main-1 promote" || e == "agent main-2 promote")
        .expect("the primary was switched over");
    assert!(position(j, "delete-graceful main-1") < promoted, "{j:#?}");
    assert!(promoted < position(j, "delete-graceful main-0"), "{j:#?}");
    assert!(
        !j.iter().any(|e| e.starts_with("delete main-")),
        "no fencing in a rollout: {j:#?}"
    );
    assert!(
        w.events.iter().any(|(_, r, _)| r == "RollingUpdate"),
        "{:?}",
        w.events
    );
}

#[tokio::test]
async fn parameter_change_is_pushed_to_every_agent_then_a_restart_rolls_with_the_primary_last() {
    let mut f = fixture();
    f.settled().await;
    let set = |w: &mut World, kv: &[(&str, &str)]| {
        if let Some(c) = w.cluster.as_mut() {
            c.spec.postgres.parameters = kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        }
    };
    set(&mut lock(&f.world), &[("work_mem", "8MB")]);
    f.until(30, "the reconfigure finished", |w| {
        status(w)
            .history
            .iter()
            .any(|e| e.kind == "Reconfigure" && e.outcome == "Succeeded")
    })
    .await;
    {
        let w = lock(&f.world);
        for i in 0..3 {
            position(&w.journal, &format!("agent main-{i} config"));
            assert_eq!(
                w.sims[&format!("main-{i}")]
                    .parameters
                    .get("work_mem")
                    .map(String::as_str),
                Some("8MB")
            );
        }
        assert!(
            has_event(&w, EventType::Normal, "ReconfigureCompleted"),
            "{:?}",
            w.events
        );
        assert!(
            !w.journal
                .iter()
                .any(|e| e.starts_with("delete") || e.ends_with(" restart")),
            "a reload deleted or restarted something: {:#?}",
            w.journal
        );
    }
    set(
        &mut lock(&f.world),
        &[("work_mem", "8MB"), ("max_connections", "150")],
    );
    f.until(80, "the rolling restart and its switchover finished", |w| {
        let st = status(w);
        st.history
            .iter()
            .any(|e| e.kind == "Restart" && e.outcome == "Succeeded")
            && st
                .history
                .iter()
                .any(|e| e.kind == "Switchover" && e.outcome == "Succeeded")
            && st.transition.is_none()
    })
    .await;
    let w = lock(&f.world);
    let restart1 = position(&w.journal, "agent main-1 restart");
    let restart2 = position(&w.journal, "agent main-2 restart");
    let stop0 = position(&w.journal, "agent main-0 stop");
    assert!(restart1 < restart2 && restart2 < stop0, "{:#?}", w.journal);
    assert!(
        !w.journal.iter().any(|e| e.starts_with("delete")),
        "{:#?}",
        w.journal
    );
    assert!(w.sims.values().all(|s| s.pending_restart.is_empty()));
    assert_ne!(status(&w).current_primary.as_deref(), Some("main-0"));
}
