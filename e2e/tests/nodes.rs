//! Node faults (DESIGN.md §8 `make kube-node`): the primary's node loses
//! power under a writer on the sync+required example; a standby is promoted
//! with no acknowledged row lost, and when the node comes back its pods
//! start again and the old primary rejoins as a standby. A test binary of its
//! own, so that no other test runs while a node is down; it needs the test
//! cluster's fault injection (kind has none), which its name and ignore
//! reason say.

use std::time::Duration;

use tandem_e2e::*;

const READY: Duration = Duration::from_secs(600);
const MOVE: Duration = Duration::from_secs(300);

#[tokio::test]
#[ignore = "needs the test cluster of DESIGN.md §8 and its node fault injection: make test"]
async fn testcluster_primary_node_power_loss_fails_over_without_loss_and_the_node_comes_back() {
    with_temp_ns("node-loss", |client, ns| async move {
        let name = healthy_example(&client, &ns, "sync.yaml", READY).await;
        let old = primary(&client, &ns, &name).await;
        let node = node_of(&client, &ns, &old)
            .await
            .expect("node of the primary");
        start_sql_pod_off(
            &client,
            &ns,
            &name,
            "writer",
            &writer_script(400, 400),
            &node,
        )
        .await
        .expect("writer");
        eventually("writer acknowledged 50 rows", MOVE, || async {
            (acknowledged(&pod_logs(&client, &ns, "writer").await.ok()?).len() >= 50).then_some(())
        })
        .await
        .expect("writes flowing");

        node_action(&node, "kill")
            .await
            .expect("kill the primary's node");
        let mut back = NodeBack::new(&node, "start");
        let new = eventually("a new primary", MOVE, || async {
            let p = status(&client, &ns, &name).await.ok()?.current_primary?;
            (p != old).then_some(p)
        })
        .await
        .expect("failover after the node's power loss");
        wait_rw_on(&client, &ns, &name, &new, MOVE)
            .await
            .expect("rw moved");

        node_action(&node, "start")
            .await
            .expect("power the node back on");
        back.disarm();
        let lost = lost_acknowledged(&client, &ns, &name, "writer", Duration::from_secs(450))
            .await
            .expect("writer finished");
        assert!(
            lost.is_empty(),
            "acknowledged rows lost with the node: {lost:?}"
        );

        expect_lossless_failover_and_rejoin(&client, &ns, &name, &old, &new, READY).await;
    })
    .await;
}
