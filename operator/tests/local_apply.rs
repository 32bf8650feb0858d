//! `tandem local apply` on real PostgreSQL: a reloadable parameter reaches
//! every instance (SHOW) with a Reconfigure history entry; a parameter that
//! needs a restart is applied by a rolling restart, standbys first and the
//! primary last by switchover, with no acknowledged write lost; afterwards
//! the demoted primary keeps no stale replication slot; a scale-in drops the
//! removed member's slot on the primary and a scale-out brings it back;
//! malformed or invalid manifests are refused and change nothing.

mod ha_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tandem_testkit::{poll_until_async, POLL};

use ha_support::cluster::LocalCluster;
use ha_support::ops::{assert_nothing_lost, expect_exit, healthy_with_writer, history_of, BOOT};

const BASE: &str = "  instances: 3\n  failover: {detectionTimeout: 3s, leaseTtl: 4s}";
/// A rolling restart of three instances with a switchover, on a loaded machine.
const ROLL: Duration = Duration::from_secs(240);

/// Write a manifest of cluster `name` next to the cluster's and return its path.
fn manifest(c: &LocalCluster, file: &str, name: &str, spec: &str) -> PathBuf {
    let path = c.manifest.with_file_name(file);
    let text = format!(
        "apiVersion: tandem.dev/v1alpha1\nkind: DbCluster\nmetadata:\n  name: {name}\nspec:\n{spec}\n"
    );
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn apply(c: &LocalCluster, path: &Path, code: i32) -> String {
    expect_exit(
        c,
        "apply",
        &["-f", path.to_str().expect("utf-8 path")],
        code,
    )
}

/// `SHOW name` on instance `inst`, straight from its postgres.
async fn show(c: &LocalCluster, inst: &str, name: &str) -> Option<String> {
    let db = c.direct(inst).connect().await.ok()?;
    let row = db.query_one(&format!("SHOW {name}"), &[]).await.ok()?;
    row.try_get(0).ok()
}

/// Wait until `SHOW name` answers `want` on every instance of `names`.
async fn wait_show_everywhere(c: &LocalCluster, names: &[String], name: &str, want: &str) {
    for inst in names {
        let got = poll_until_async(ROLL, POLL, || async {
            (show(c, inst, name).await.as_deref() == Some(want)).then_some(())
        })
        .await;
        assert!(
            got.is_some(),
            "{inst}: SHOW {name} never answered {want} (last: {:?})",
            show(c, inst, name).await
        );
    }
}

/// The physical slots on `inst`: (name, active).
async fn slots(c: &LocalCluster, inst: &str) -> Option<BTreeSet<(String, bool)>> {
    let db = c.direct(inst).connect().await.ok()?;
    let rows = db
        .query(
            "SELECT slot_name::text, active FROM pg_replication_slots WHERE slot_type = 'physical'",
            &[],
        )
        .await
        .ok()?;
    Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Wait until `inst` holds exactly the slots named `want` (active or not).
async fn wait_slots(c: &LocalCluster, inst: &str, want: &[&str]) -> BTreeSet<(String, bool)> {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let found = poll_until_async(Duration::from_secs(60), POLL, || async {
        let s = slots(c, inst).await?;
        let names: BTreeSet<String> = s.iter().map(|(n, _)| n.clone()).collect();
        (names == want).then_some(s)
    })
    .await;
    match found {
        Some(s) => s,
        None => panic!(
            "{inst} never held exactly the slots {want:?}: {:?}",
            slots(c, inst).await
        ),
    }
}

fn names(s: &Value) -> Vec<String> {
    s["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn slot(inst: &str) -> String {
    inst.replace('-', "_")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_parameters_reload_everywhere_then_restart_rolls_with_the_primary_last() {
    let c = LocalCluster::start("pa", BASE);
    let w = healthy_with_writer(&c).await;
    let s = c.status().expect("status");
    let all = names(&s);
    let old = c.primary().expect("primary");

    // A reloadable parameter: on every instance, no restart.
    let pids: Vec<Option<i32>> = all.iter().map(|n| c.postgres_pid(n)).collect();
    let m = manifest(
        &c,
        "reload.yaml",
        "pa",
        &format!("{BASE}\n  postgres:\n    parameters: {{log_min_duration_statement: \"250\"}}"),
    );
    let out = apply(&c, &m, 0);
    assert!(
        out.contains("postgres.parameters.log_min_duration_statement: (unset) → \"250\""),
        "{out}"
    );
    wait_show_everywhere(&c, &all, "log_min_duration_statement", "250ms").await;
    let s = c.wait_for("the Reconfigure entry", Duration::from_secs(60), |s| {
        history_of(s, "Reconfigure")
            .iter()
            .any(|e| e["outcome"] == "Succeeded")
    });
    let entry = &history_of(&s, "Reconfigure")[0];
    let msg = entry["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("parameters changed: log_min_duration_statement"),
        "{msg}"
    );
    assert!(!msg.contains("restart is pending"), "{msg}");
    assert_eq!(
        pids,
        all.iter().map(|n| c.postgres_pid(n)).collect::<Vec<_>>(),
        "a reload restarted postgres"
    );
    assert!(history_of(&s, "Restart").is_empty(), "{s}");

    // Applying the same manifest again changes nothing.
    let out = apply(&c, &m, 0);
    assert!(out.contains("unchanged"), "{out}");

    // Parameters that need a restart (max_connections, and archive_mode with
    // the archive command): a rolling restart, the primary last by switchover.
    let archive = c.manifest.with_file_name("archive");
    std::fs::create_dir_all(&archive).expect("archive dir");
    std::fs::set_permissions(
        &archive,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod archive dir");
    let m = manifest(
        &c,
        "restart.yaml",
        "pa",
        &format!(
            "{BASE}\n  postgres:\n    parameters: {{log_min_duration_statement: \"250\", max_connections: \"150\"}}\n  archive: {{command: \"cp %p {}/%f\"}}",
            archive.display()
        ),
    );
    apply(&c, &m, 0);
    let s = c.wait_for("the rolling restart", ROLL, |s| {
        history_of(s, "Restart")
            .iter()
            .any(|e| e["outcome"] == "Succeeded")
            && history_of(s, "Switchover")
                .iter()
                .any(|e| e["outcome"] == "Succeeded")
            && s["transition"].is_null()
    });
    let reconf = history_of(&s, "Reconfigure");
    let last = reconf.last().expect("second Reconfigure");
    let msg = last["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("parameters changed: archive_command, archive_mode, max_connections"),
        "{msg}"
    );
    assert!(msg.contains("a restart is pending on"), "{msg}");
    let restart = &history_of(&s, "Restart")[0];
    let msg = restart["message"].as_str().unwrap_or_default();
    let standbys: Vec<&String> = all.iter().filter(|n| **n != old).collect();
    // "a restarted (stopped smart); b restarted (stopped smart); old restarted by a switchover to c"
    let order: Vec<&str> = msg
        .split(": ")
        .nth(1)
        .unwrap_or_default()
        .split("; ")
        .collect();
    assert_eq!(order.len(), 3, "not every instance restarted: {msg}");
    assert!(
        order[0].starts_with(&format!("{} restarted", standbys[0]))
            && order[1].starts_with(&format!("{} restarted", standbys[1]))
            && order[2].starts_with(&format!("{old} restarted by a switchover to")),
        "not standbys first, primary last: {msg}"
    );
    wait_show_everywhere(&c, &all, "max_connections", "150").await;
    wait_show_everywhere(&c, &all, "archive_mode", "on").await;
    let new = c.primary().expect("primary after the restart");
    // The new primary archives: a switched WAL segment lands in the archive.
    let db = c.direct(&new).connect().await.expect("new primary");
    let seg: String = db
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .expect("pg_switch_wal")
        .get(0);
    let archived = tandem_testkit::poll_until(Duration::from_secs(60), POLL, || {
        archive.join(&seg).exists().then_some(())
    });
    assert!(
        archived.is_some(),
        "{seg} never reached {}",
        archive.display()
    );
    assert_ne!(new, old, "the primary was switched over");
    let s = c.wait_healthy(ROLL);
    assert!(
        s["instances"]
            .as_array()
            .is_some_and(|a| a.iter().all(|i| i["status"] == "running")),
        "{s}"
    );
    let log = w.stop().await;
    assert_nothing_lost(&c, &new, &log).await;

    // Slots after the switchover: the demoted primary keeps none of the
    // standbys that now stream from the new primary, which has theirs.
    let others: Vec<String> = all.iter().filter(|n| **n != new).cloned().collect();
    let on_new = wait_slots(&c, &new, &[&slot(&others[0]), &slot(&others[1])]).await;
    assert!(on_new.iter().all(|(_, active)| *active), "{on_new:?}");
    wait_slots(&c, &old, &[]).await;
    let sibling = others.iter().find(|n| **n != old).expect("sibling");
    wait_slots(&c, sibling, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_bad_manifests_whole_and_scales_in_and_out() {
    let mut c = LocalCluster::start("sc", BASE);
    c.wait_healthy(BOOT);
    let before = c.status().expect("status");
    let primary = c.primary().expect("primary");
    assert_eq!(primary, "sc-0");

    // Refused, each with a message, nothing changed.
    let garbage = c.manifest.with_file_name("garbage.yaml");
    std::fs::write(&garbage, "kind: DbCluster\nspec: [unclosed\n").unwrap();
    let out = apply(&c, &garbage, 1);
    assert!(
        out.contains("apply refused") && out.contains("nothing was changed"),
        "{out}"
    );
    let cases = [
        (
            "port.yaml",
            "sc",
            format!("{BASE}\n  postgres:\n    parameters: {{port: \"6000\"}}"),
            "managed by tandem",
        ),
        (
            "zero.yaml",
            "sc",
            "  instances: 0".to_string(),
            "instances must be 1 to 16",
        ),
        (
            "sync.yaml",
            "sc",
            "  instances: 2\n  replication: {mode: sync, syncStandbys: 2}".to_string(),
            "syncStandbys",
        ),
        (
            "other.yaml",
            "other",
            BASE.to_string(),
            "this directory runs sc",
        ),
    ];
    for (file, name, spec, why) in &cases {
        let m = manifest(&c, file, name, spec);
        let out = apply(&c, &m, 1);
        assert!(
            out.contains("apply refused") && out.contains(why),
            "{file}: {out}"
        );
    }
    let after = c.status().expect("status");
    assert_eq!(names(&after), names(&before));
    assert_eq!(
        after["history"], before["history"],
        "a refused apply left history"
    );
    assert_eq!(c.state()["instances"].as_array().map(Vec::len), Some(3));

    // Scale in 3 → 2: sc-2 stops, its slot on the primary goes.
    wait_slots(&c, &primary, &["sc_1", "sc_2"]).await;
    let m = manifest(
        &c,
        "two.yaml",
        "sc",
        "  instances: 2\n  failover: {detectionTimeout: 3s, leaseTtl: 4s}",
    );
    let out = apply(&c, &m, 0);
    assert!(out.contains("instances: 3 → 2"), "{out}");
    let s = c.wait_for("two instances", Duration::from_secs(60), |s| {
        names(s).len() == 2
    });
    assert_eq!(names(&s), ["sc-0", "sc-1"]);
    tandem_testkit::poll_until(Duration::from_secs(60), POLL, || {
        c.postgres_pid("sc-2").is_none().then_some(())
    })
    .expect("sc-2's postgres still runs after the scale-in");
    let left = wait_slots(&c, &primary, &["sc_1"]).await;
    assert!(
        left.iter().all(|(_, a)| *a),
        "the live standby's slot: {left:?}"
    );
    assert_eq!(c.state()["instances"].as_array().map(Vec::len), Some(2));

    // Scale out 2 → 3: sc-2 comes back (from its kept data directory) and streams.
    let m = manifest(&c, "three.yaml", "sc", BASE);
    apply(&c, &m, 0);
    c.wait_for("sc-2 streaming again", ROLL, |s| {
        names(s).len() == 3
            && s["instances"].as_array().is_some_and(|a| {
                a.iter().any(|i| {
                    i["name"] == "sc-2" && i["role"] == "standby" && i["status"] == "running"
                })
            })
    });
    let back = wait_slots(&c, &primary, &["sc_1", "sc_2"]).await;
    let active = poll_until_async(Duration::from_secs(60), POLL, || async {
        slots(&c, &primary)
            .await
            .filter(|s| s.iter().all(|(_, a)| *a))
    })
    .await;
    assert!(active.is_some(), "slots not all active again: {back:?}");

    // Scaled out to 4 by apply, then `local up` started again from its
    // 3-instance file: the 4th agent is stopped, not left unsupervised.
    let m = manifest(
        &c,
        "four.yaml",
        "sc",
        &BASE.replace("instances: 3", "instances: 4"),
    );
    apply(&c, &m, 0);
    c.wait_for("sc-3 streaming", ROLL, |s| {
        s["instances"].as_array().is_some_and(|a| {
            a.iter()
                .any(|i| i["name"] == "sc-3" && i["role"] == "standby" && i["status"] == "running")
        })
    });
    let pid = c.agent_pid("sc-3");
    assert!(pid > 0);
    c.kill_up();
    c.spawn_up();
    tandem_testkit::poll_until(Duration::from_secs(60), POLL, || {
        (!tandem_testkit::pid_alive(pid)).then_some(())
    })
    .expect("sc-3's agent still runs after local up started from the 3-instance file");
    let s = c.wait_healthy(BOOT);
    assert_eq!(names(&s), ["sc-0", "sc-1", "sc-2"]);
}
