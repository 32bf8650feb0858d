//! Manual promotion on Kubernetes (DESIGN.md §1 row 17): with the cluster
//! paused, so that no automatic failover comes first, the primary's node is
//! frozen and `kubectl annotate dbcluster … tandem.dev/promote=<standby>`
//! makes that standby primary: the `-rw` Service moves to it, history and an
//! Event record it. A test binary of its own, so that no other test runs
//! while a node is frozen; it needs the test cluster's fault injection.

use std::time::Duration;

use tandem::api::{keys, HistoryKind, HistoryOutcome};
use tandem_e2e::*;

const READY: Duration = Duration::from_secs(600);
const MOVE: Duration = Duration::from_secs(300);

#[tokio::test]
#[ignore = "needs the test cluster of DESIGN.md §8 and its node fault injection: make test"]
async fn testcluster_promote_annotation_makes_the_chosen_standby_primary_while_paused() {
    with_temp_ns("promote", |client, ns| async move {
        let name = healthy_example(&client, &ns, "minimal.yaml", READY).await;
        let old = primary(&client, &ns, &name).await;
        let target = if old == keys::instance_name(&name, 1) {
            keys::instance_name(&name, 2)
        } else {
            keys::instance_name(&name, 1)
        };
        let out = run_sql(
            &client,
            &ns,
            &name,
            "write-1",
            &writer_script(20, 120),
            MOVE,
        )
        .await
        .expect("rows before");
        let before = acknowledged(&out);
        assert_eq!(before.len(), 20, "{out}");

        annotate(&client, &ns, &name, keys::ANN_PAUSED, Some("true"))
            .await
            .expect("pause");
        eventually("status says paused", MOVE, || async {
            status(&client, &ns, &name).await.ok()?.paused.then_some(())
        })
        .await
        .expect("paused");

        let node = node_of(&client, &ns, &old)
            .await
            .expect("node of the primary");
        node_action(&node, "freeze")
            .await
            .expect("freeze the primary's node");
        let mut thaw = NodeBack::new(&node, "thaw");
        // Paused: no failover; the engine sees the primary unreachable.
        eventually("the primary seen unreachable", MOVE, || async {
            let st = status(&client, &ns, &name).await.ok()?;
            st.instances
                .iter()
                .any(|i| i.name == old && i.agent_unanswered.is_some())
                .then_some(())
        })
        .await
        .expect("primary unreachable");
        assert_eq!(
            primary(&client, &ns, &name).await,
            old,
            "failed over while paused"
        );

        annotate(&client, &ns, &name, keys::ANN_PROMOTE, Some(&target))
            .await
            .expect("annotate promote");
        let note = wait_event(&client, &ns, &name, "PromotionRequested", MOVE)
            .await
            .expect("PromotionRequested event");
        assert!(note.contains(&target), "{note}");
        wait_rw_on(&client, &ns, &name, &target, MOVE)
            .await
            .expect("rw moved to the promoted standby");
        let st = eventually("the promotion recorded", MOVE, || async {
            let st = status(&client, &ns, &name).await.ok()?;
            (st.current_primary.as_deref() == Some(target.as_str())
                && st.transition.is_none()
                && st.history.iter().any(|h| {
                    h.kind == HistoryKind::Failover
                        && h.outcome == HistoryOutcome::Succeeded
                        && h.to.as_deref() == Some(target.as_str())
                }))
            .then_some(st)
        })
        .await
        .expect("promoted");
        let entry = st
            .history
            .iter()
            .rev()
            .find(|h| h.kind == HistoryKind::Failover)
            .expect("entry");
        assert!(
            entry.message.contains("manual promotion"),
            "{}",
            entry.message
        );
        assert!(st.paused, "promotion unpaused the cluster");
        assert!(
            !has_annotation(&client, &ns, &name, keys::ANN_PROMOTE)
                .await
                .expect("annotations"),
            "the promote request was not removed"
        );
        // The node back first: a SQL pod must not land on the frozen node.
        node_action(&node, "thaw").await.expect("thaw");
        thaw.disarm();
        // Writes go to the new primary, and the rows from before are there.
        // (Rows 1..=20 exist already: the writer adds 21..=25.)
        let out = run_sql(
            &client,
            &ns,
            &name,
            "write-2",
            &writer_script(25, 120),
            MOVE,
        )
        .await
        .expect("writes after");
        assert_eq!(acknowledged(&out).len(), 25, "{out}");
        let stored = rows(&client, &ns, &name, "read-1").await.expect("rows");
        assert!(
            before.iter().all(|r| stored.contains(r)),
            "rows lost: {stored:?}"
        );
        assert!(stored.contains(&25), "{stored:?}");

        // Automation on: the old primary rejoins.
        annotate(&client, &ns, &name, keys::ANN_PAUSED, None)
            .await
            .expect("unpause");
        wait_healthy(&client, &ns, &name, READY)
            .await
            .expect("healthy after the old primary rejoined");
        let labels = role_labels(&client, &ns, &name).await.expect("labels");
        assert_eq!(
            labels.get(&old).map(String::as_str),
            Some(keys::ROLE_STANDBY),
            "{labels:?}"
        );
    })
    .await;
}
