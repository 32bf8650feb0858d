//! The operator's own failure (issue 11 point 7): the leader replica's pod
//! is deleted at once while a cluster is healthy under a writer; the other
//! replica takes the leader Lease over, and meanwhile no primary is fenced
//! and nothing fails over: the primary keeps its fencing lease through its
//! peers while no operator renews it. A test binary of its own, so that no
//! other test runs while the operator changes leader. Needs the chart's two
//! replicas (charts/tandem-operator values `replicaCount: 2`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use tandem::api::keys;
use tandem_e2e::*;

const READY: Duration = Duration::from_secs(600);
const MOVE: Duration = Duration::from_secs(180);
/// Rows the writer commits: enough to keep writing through the leader change
/// (about 15 s) and the watch after it (it writes a few dozen a second).
const ROWS: u64 = 4000;
/// How long no-failover is watched after the new leader took over.
const SETTLE: Duration = Duration::from_secs(30);
/// The longest a writer may go without an acknowledgement (a fenced primary stalls it for good).
const WRITE_STALL: Duration = Duration::from_secs(10);

async fn leader(client: &Client) -> Option<String> {
    operator_leader(client).await
}

/// uid and container restarts of `pod`: a fenced primary's pod is deleted or its container restarted.
async fn incarnation(client: &Client, ns: &str, pod: &str) -> (String, i32) {
    let p = Api::<Pod>::namespaced(client.clone(), ns)
        .get(pod)
        .await
        .unwrap_or_else(|e| panic!("get pod {pod}: {e}"));
    let restarts = p
        .status
        .and_then(|s| s.container_statuses)
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    (p.metadata.uid.unwrap_or_default(), restarts)
}

/// Fail when the primary, the role labels or the primary's pod changed, or a failover ran.
async fn assert_unchanged(
    client: &Client,
    ns: &str,
    name: &str,
    primary: &str,
    labels: &BTreeMap<String, String>,
    pod: &(String, i32),
    failovers: usize,
) {
    let st = status(client, ns, name).await.expect("status");
    assert_eq!(
        st.current_primary.as_deref(),
        Some(primary),
        "primary moved"
    );
    let n = st.history.iter().filter(|e| e.kind == "Failover").count();
    assert_eq!(n, failovers, "a failover ran: {:?}", st.history.last());
    assert!(
        st.transition.as_ref().is_none_or(|t| t.kind != "Failover"),
        "a failover started: {:?}",
        st.transition
    );
    let now = role_labels(client, ns, name).await.expect("labels");
    assert_eq!(&now, labels, "role labels changed");
    assert_eq!(
        &incarnation(client, ns, primary).await,
        pod,
        "the primary's pod was deleted or its container restarted (fenced)"
    );
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed (two replicas): make test (test cluster) or make e2e (kind)"]
async fn operator_leader_pod_deleted_the_other_replica_takes_over_without_fencing_or_failover() {
    with_temp_ns("operator-leader", |client, ns| async move {
        let name = healthy_example(&client, &ns, "sync.yaml", READY).await;
        let primary = primary(&client, &ns, &name).await;
        let labels = role_labels(&client, &ns, &name).await.expect("labels");
        assert_eq!(
            labels.get(&primary).map(String::as_str),
            Some(keys::ROLE_PRIMARY)
        );
        let pod = incarnation(&client, &ns, &primary).await;
        let failovers = status(&client, &ns, &name)
            .await
            .expect("status")
            .history
            .iter()
            .filter(|e| e.kind == "Failover")
            .count();
        let old_leader = eventually("an operator leader", MOVE, || leader(&client))
            .await
            .expect("a leader holds the Lease");

        start_sql_pod(&client, &ns, &name, "writer", &writer_script(ROWS, 500))
            .await
            .expect("writer");
        eventually("writer acknowledged 20 rows", MOVE, || async {
            (acknowledged(&pod_logs(&client, &ns, "writer").await.ok()?).len() >= 20).then_some(())
        })
        .await
        .expect("writes flowing");

        kill_pod(&client, &operator_namespace(), &old_leader)
            .await
            .expect("delete the operator leader's pod");
        let deleted = Instant::now();
        // From the deletion until SETTLE after another replica took the
        // Lease: nothing fenced, nothing moved, and writes keep being acknowledged.
        let mut new_leader = None;
        let (mut acked, mut last_progress, mut stall) = (0, Instant::now(), Duration::ZERO);
        loop {
            assert_unchanged(&client, &ns, &name, &primary, &labels, &pod, failovers).await;
            let now = acknowledged(&pod_logs(&client, &ns, "writer").await.unwrap_or_default()).len();
            // A writer that committed all its rows has not stalled.
            if now > acked || now as u64 >= ROWS {
                (acked, last_progress) = (now, Instant::now());
            }
            stall = stall.max(last_progress.elapsed());
            if new_leader.is_none() {
                new_leader = leader(&client)
                    .await
                    .filter(|l| *l != old_leader)
                    .map(|l| (l, deleted.elapsed()));
            }
            match &new_leader {
                Some((_, at)) if deleted.elapsed() >= *at + SETTLE => break,
                None if deleted.elapsed() >= MOVE => panic!("no other replica took the Lease within {MOVE:?}"),
                _ => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (new_leader, took) = new_leader.unwrap_or_default();
        eprintln!("{new_leader} took over from {old_leader} {took:?} after the deletion; writes stalled at most {stall:?}");
        assert!(
            stall < WRITE_STALL,
            "no write acknowledged for {stall:?} while the operator changed leader"
        );
        let lost = lost_acknowledged(&client, &ns, &name, "writer", Duration::from_secs(600))
            .await
            .expect("writer finished");
        assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
        assert_unchanged(&client, &ns, &name, &primary, &labels, &pod, failovers).await;
    })
    .await;
}
