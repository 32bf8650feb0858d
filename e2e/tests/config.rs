//! Configuration changes on a real Kubernetes cluster: `kubectl patch` of
//! spec.postgres.parameters reaches every pod without recreating any (a
//! reload for a reloadable parameter, recorded as a Reconfigure), and a
//! parameter that needs a restart is applied by a rolling restart, standbys
//! first and the primary last by switchover. `#[ignore]`d like the rest of
//! e2e/: `make test` runs it on the test cluster of DESIGN.md §8.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use tandem::api::keys;
use tandem_e2e::*;

const READY: Duration = Duration::from_secs(600);
const MOVE: Duration = Duration::from_secs(300);

/// Pod name → uid of the cluster's pods.
async fn pod_uids(client: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{}={name}", keys::LABEL_CLUSTER)))
        .await
        .expect("list pods");
    pods.items
        .into_iter()
        .map(|p| {
            (
                p.metadata.name.unwrap_or_default(),
                p.metadata.uid.unwrap_or_default(),
            )
        })
        .collect()
}

/// `SHOW parameter` on every pod (through the headless Service's pod names): "pod=value" lines.
async fn show_everywhere(
    client: &Client,
    ns: &str,
    name: &str,
    parameter: &str,
    pod: &str,
) -> Vec<String> {
    let hosts: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "{}.{}",
                keys::instance_name(name, i),
                keys::service_pods(name)
            )
        })
        .collect();
    let script = format!(
        "set -e; for h in {}; do echo \"${{h%%.*}}=$(psql -h $h -Atc 'SHOW {parameter}')\"; done",
        hosts.join(" ")
    );
    let out = run_sql(client, ns, name, pod, &script, MOVE)
        .await
        .expect("SHOW on every pod");
    out.lines()
        .filter(|l| l.contains('='))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn parameter_changes_reach_every_pod_by_reload_or_rolling_restart_primary_last() {
    with_temp_ns("params", |client, ns| async move {
        let name = healthy_example(&client, &ns, "minimal.yaml", READY).await;
        let old = primary(&client, &ns, &name).await;
        let uids = pod_uids(&client, &ns, &name).await;
        assert_eq!(uids.len(), 3, "{uids:?}");

        patch_cluster(
            &ns,
            &name,
            r#"{"spec":{"postgres":{"parameters":{"work_mem":"12MB"}}}}"#,
        )
        .await
        .expect("kubectl patch");
        wait_event(&client, &ns, &name, "ReconfigureCompleted", MOVE)
            .await
            .expect("reconfigured");
        let shown = show_everywhere(&client, &ns, &name, "work_mem", "show-1").await;
        assert_eq!(
            shown,
            (0..3)
                .map(|i| format!("{}=12MB", keys::instance_name(&name, i)))
                .collect::<Vec<_>>()
        );
        let st = status(&client, &ns, &name).await.expect("status");
        assert!(
            st.history
                .iter()
                .any(|e| e.kind == "Reconfigure" && e.outcome == "Succeeded"),
            "{:?}",
            st.history
        );
        assert!(
            !st.history.iter().any(|e| e.kind == "Restart"),
            "{:?}",
            st.history
        );
        assert_eq!(
            pod_uids(&client, &ns, &name).await,
            uids,
            "a reload recreated pods"
        );

        patch_cluster(
            &ns,
            &name,
            r#"{"spec":{"postgres":{"parameters":{"work_mem":"12MB","max_connections":"150"}}}}"#,
        )
        .await
        .expect("kubectl patch");
        let st = eventually("the rolling restart and its switchover", MOVE, || async {
            let st = status(&client, &ns, &name).await.ok()?;
            let done = st
                .history
                .iter()
                .any(|e| e.kind == "Restart" && e.outcome == "Succeeded")
                && st
                    .history
                    .iter()
                    .any(|e| e.kind == "Switchover" && e.outcome == "Succeeded")
                && st.transition.is_none();
            done.then_some(st)
        })
        .await
        .expect("rolling restart");
        let restart = st
            .history
            .iter()
            .find(|e| e.kind == "Restart")
            .expect("restart entry");
        let standbys: Vec<String> = (0..3)
            .map(|i| keys::instance_name(&name, i))
            .filter(|n| *n != old)
            .collect();
        // "a restarted (stopped smart); b restarted (stopped smart); old restarted by a switchover to c"
        let parts: Vec<&str> = restart
            .message
            .split(": ")
            .nth(1)
            .unwrap_or_default()
            .split("; ")
            .collect();
        assert!(
            parts.len() == 3
                && parts[0].starts_with(&format!("{} restarted", standbys[0]))
                && parts[1].starts_with(&format!("{} restarted", standbys[1]))
                && parts[2].starts_with(&format!("{old} restarted by a switchover to")),
            "not standbys first, primary last: {}",
            restart.message
        );
        wait_healthy(&client, &ns, &name, MOVE)
            .await
            .expect("healthy after the rolling restart");
        let shown = show_everywhere(&client, &ns, &name, "max_connections", "show-2").await;
        assert_eq!(
            shown,
            (0..3)
                .map(|i| format!("{}=150", keys::instance_name(&name, i)))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            pod_uids(&client, &ns, &name).await,
            uids,
            "the rolling restart recreated pods"
        );
        assert_ne!(primary(&client, &ns, &name).await, old);
    })
    .await;
}
