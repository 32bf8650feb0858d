//! Node drain (DESIGN.md §1 rows 6 and 8): `kubectl drain` of the primary's
//! node under a writer leads to a switchover — not a failover — while the
//! `<name>-primary` PodDisruptionBudget keeps the primary's pod from
//! eviction; then the old primary's pod is evicted and the drain completes,
//! with no acknowledged row lost. A test binary of its own, so that no other
//! test runs while a node is cordoned.

use std::time::Duration;

use tandem::api::{keys, HistoryKind, HistoryOutcome};
use tandem_e2e::*;

const READY: Duration = Duration::from_secs(600);
const MOVE: Duration = Duration::from_secs(300);

/// Uncordon the node when dropped, whatever the test did.
struct Uncordon(String);

impl Drop for Uncordon {
    fn drop(&mut self) {
        let _ = std::process::Command::new(kubectl_bin())
            .args(["uncordon", &self.0])
            .status();
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn drain_of_the_primary_node_switches_over_then_evicts_it_without_loss() {
    with_temp_ns("drain", |client, ns| async move {
        let name = healthy_example(&client, &ns, "minimal.yaml", READY).await;
        let old = primary(&client, &ns, &name).await;
        let node = node_of(&client, &ns, &old)
            .await
            .expect("node of the primary");
        start_sql_pod_off(
            &client,
            &ns,
            &name,
            "writer",
            &writer_script(300, 400),
            &node,
        )
        .await
        .expect("writer");
        eventually("writer acknowledged 30 rows", MOVE, || async {
            (acknowledged(&pod_logs(&client, &ns, "writer").await.ok()?).len() >= 30).then_some(())
        })
        .await
        .expect("writes flowing");

        let _uncordon = Uncordon(node.clone());
        let drain = kubectl(&[
            "drain",
            &node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=300s",
        ])
        .await
        .expect("kubectl drain");
        if !drain.ok() {
            dump(&ns).await;
        }
        assert!(
            drain.ok(),
            "drain did not complete: {}\n{}",
            drain.stdout,
            drain.stderr
        );
        eprintln!("drain: {}", drain.stdout);

        // A switchover moved the primary off the node before its pod went.
        let st = status(&client, &ns, &name).await.expect("status");
        let new = st.current_primary.clone().expect("a primary");
        assert_ne!(new, old, "the primary is still {old}");
        assert_ne!(node_of(&client, &ns, &new).await.ok(), Some(node.clone()));
        let moved = st.history.iter().find(|h| {
            h.kind == HistoryKind::Switchover
                && h.outcome == HistoryOutcome::Succeeded
                && h.from.as_deref() == Some(old.as_str())
        });
        assert!(
            moved.is_some(),
            "no switchover away from {old}: {:?}",
            st.history
        );
        assert!(
            !st.history.iter().any(|h| h.kind == HistoryKind::Failover),
            "a drain must not fail over: {:?}",
            st.history
        );
        wait_event(&client, &ns, &name, "NodeDrain", MOVE)
            .await
            .expect("NodeDrain event");
        wait_rw_on(&client, &ns, &name, &new, MOVE)
            .await
            .expect("rw on the new primary");

        let lost = lost_acknowledged(&client, &ns, &name, "writer", Duration::from_secs(450))
            .await
            .expect("writer finished");
        assert!(
            lost.is_empty(),
            "acknowledged rows lost in the drain: {lost:?}"
        );

        // Uncordoned, the evicted instance comes back as a standby.
        drop(_uncordon);
        let healthy = wait_healthy(&client, &ns, &name, READY)
            .await
            .expect("healthy after the node is back");
        assert_eq!(
            healthy.status.and_then(|s| s.current_primary).as_deref(),
            Some(new.as_str())
        );
        let labels = role_labels(&client, &ns, &name).await.expect("labels");
        assert_eq!(
            labels.get(&old).map(String::as_str),
            Some(keys::ROLE_STANDBY),
            "{labels:?}"
        );
    })
    .await;
}
