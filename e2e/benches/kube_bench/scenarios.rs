//! The Kubernetes bench's fault scenarios on one DbCluster under the rw
//! writer: the primary's pod deleted as a user deletes it, the primary's
//! node frozen (and thawed once a standby took over), and a switchover by
//! annotation; and the count of acknowledged writes lost. Does I/O.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use tandem::api::{keys, Phase};
use tandem_e2e::{
    annotate, has_annotation, kubectl_ok, node_action, node_of, operator_leader,
    operator_namespace, primary, service_pods, status, wait_healthy, wait_rw_on, NodeBack,
};
use tandem_testkit::bench::{fmt_duration, fmt_kib};
use tandem_testkit::poll_until_async;
use tandem_testkit::writer::{lost, prepare, stored_ids, Target, Writer};

use crate::cluster;

/// How long a cluster may take to be created or healthy again.
const READY: Duration = Duration::from_secs(600);
/// How long a failover or switchover may take.
const MOVE: Duration = Duration::from_secs(180);
/// Ids of the connect-per-write writer of the n-th switchover start after n times this (the main writer's stay below).
const FRESH_IDS: i64 = 1_000_000_000;

/// The scenarios, in the order a run goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    PodDeleted,
    NodeFrozen,
    Switchover,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [
        Scenario::PodDeleted,
        Scenario::NodeFrozen,
        Scenario::Switchover,
    ];

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::PodDeleted => "poddelete",
            Scenario::NodeFrozen => "nodefreeze",
            Scenario::Switchover => "switchover",
        }
    }

    /// The table row.
    pub fn what(self) -> &'static str {
        match self {
            Scenario::PodDeleted => {
                "kubectl delete pod <primary>: longest gap between acked writes"
            }
            Scenario::NodeFrozen => "primary's node frozen → write on new primary",
            Scenario::Switchover => "switchover annotation: longest gap between acked writes",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// What one run measured.
pub struct Measured {
    pub took: Duration,
    pub note: Option<String>,
    /// A second figure of the same run, as (table row, value).
    pub also: Option<(&'static str, Duration)>,
}

/// The row of the switchover's connect-per-write client.
pub const FRESH_ROW: &str = "  the same, a new connection per write: longest gap";

/// A DbCluster under the rw writer, and the acknowledged writes found lost so far.
pub struct Bench {
    client: Client,
    ns: String,
    pub name: String,
    target: Target,
    pub w: Writer,
    lost: BTreeSet<i64>,
    /// Switchovers run so far (each one's connect-per-write client gets ids of its own).
    switchovers: i64,
}

impl Bench {
    /// Apply a 3-instance DbCluster `name` (spec `extra`), wait until it is
    /// healthy and rw takes writes, and start the writer.
    pub async fn start(
        client: &Client,
        ns: &str,
        name: &str,
        extra: &str,
        every: Duration,
    ) -> Self {
        cluster::ensure_namespace(ns).await;
        cluster::apply(ns, &cluster::dbcluster(name, 3, extra)).await;
        wait_healthy(client, ns, name, READY)
            .await
            .unwrap_or_else(|e| panic!("{name} healthy: {e}"));
        let p = primary(client, ns, name).await;
        wait_rw_on(client, ns, name, &p, MOVE)
            .await
            .unwrap_or_else(|e| panic!("{name}-rw on {p}: {e}"));
        let target = cluster::rw_target(client, ns, name).await;
        // kube-proxy may program the ClusterIP a moment after the endpoint shows.
        let prepared = poll_until_async(MOVE, Duration::from_millis(250), || {
            let t = target.clone();
            async move { prepare(&t).await.ok() }
        })
        .await;
        assert!(
            prepared.is_some(),
            "cannot create the writer's table through {name}-rw"
        );
        let w = Writer::start(target.clone(), 0, every);
        Self {
            client: client.clone(),
            ns: ns.into(),
            name: name.into(),
            target,
            w,
            lost: BTreeSet::new(),
            switchovers: 0,
        }
    }

    /// Run `s` once.
    pub async fn run(&mut self, s: Scenario) -> Result<Measured, String> {
        match s {
            Scenario::PodDeleted => self.pod_deleted().await,
            Scenario::NodeFrozen => self.node_frozen().await,
            Scenario::Switchover => self.switchover().await,
        }
    }

    /// Once the cluster is healthy again: how many acknowledged writes are
    /// not on the primary that were not already counted.
    pub async fn new_losses(&mut self) -> usize {
        self.healthy().await;
        let acked = self.w.snapshot();
        let stored = poll_until_async(MOVE, Duration::from_millis(250), || {
            let t = self.target.clone();
            async move { stored_ids(&t).await.ok() }
        })
        .await
        .unwrap_or_else(|| panic!("cannot read the rows through {}-rw", self.name));
        let missing = lost(&acked, &stored);
        let before = self.lost.len();
        self.lost.extend(missing);
        self.lost.len() - before
    }

    /// Wait until the cluster is healthy, no transition runs and `-rw`
    /// points at the primary its status names (read anew each time: right
    /// after a fault the status may still name the old one).
    async fn healthy(&self) -> String {
        let want = "3/3";
        let last = std::cell::RefCell::new(String::new());
        let found = tandem_e2e::eventually("healthy with -rw on the primary", READY, || async {
            let st = status(&self.client, &self.ns, &self.name).await.ok()?;
            let p = st.current_primary.clone()?;
            let pods = service_pods(&self.client, &self.ns, &keys::service_rw(&self.name))
                .await
                .ok()?;
            *last.borrow_mut() = format!(
                "primary {p}, phase {:?}, ready {:?}, transition {:?}, rw endpoints {pods:?}",
                st.phase,
                st.ready_instances,
                st.transition.as_ref().map(|t| format!("{:?}", t.kind))
            );
            let healthy = st.transition.is_none()
                && st.ready_instances.as_deref() == Some(want)
                && matches!(st.phase, Some(Phase::Healthy));
            (healthy && pods == [p.clone()]).then_some(p)
        })
        .await;
        found.unwrap_or_else(|e| panic!("{}: {e}; last seen: {}", self.name, last.borrow()))
    }

    /// Healthy, every pod Ready (a pod recreated by the last scenario turns
    /// Ready some seconds after it answers, and each such endpoint change
    /// takes one of kube-proxy's syncs, at most one per second), writes
    /// flowing, and quiet for longer than kube-proxy's minimum sync period:
    /// the primary. A scenario thus starts from a steady cluster.
    async fn steady(&self) -> String {
        let p = self.healthy().await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let selector = format!("{}={}", keys::LABEL_CLUSTER, self.name);
        tandem_e2e::eventually("every pod Ready", READY, || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            let ready = |pod: &Pod| {
                pod.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            };
            (list.items.len() == 3 && list.items.iter().all(ready)).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let now = Instant::now();
        let bound = self.w.snapshot().in_flight_bound();
        self.w
            .first_new_ack(now, bound, MOVE)
            .await
            .unwrap_or_else(|| panic!("no write acknowledged through {}-rw", self.name));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        p
    }

    /// The first write issued after `t` and acknowledged, or an error.
    async fn first_new_ack(&self, t: Instant, bound: i64) -> Result<Duration, String> {
        self.w
            .first_new_ack(t, bound, MOVE)
            .await
            .ok_or_else(|| format!("no write acknowledged within {MOVE:?}"))
    }

    async fn new_primary(&self, old: &str) -> Result<String, String> {
        tandem_e2e::eventually("a new primary", MOVE, || async {
            let p = status(&self.client, &self.ns, &self.name)
                .await
                .ok()?
                .current_primary?;
            (p != old).then_some(p)
        })
        .await
        .map_err(|e| e.to_string())
    }

    async fn pod_deleted(&mut self) -> Result<Measured, String> {
        let old = self.steady().await;
        let t = Instant::now();
        // As a user deletes it: the pod's grace period lets the agent stop
        // postgres, and the old primary may acknowledge writes meanwhile, so
        // the figure is the longest time without an acknowledged write.
        kubectl_ok(&["delete", "pod", "-n", &self.ns, &old, "--wait=false"])
            .await
            .map_err(|e| e.to_string())?;
        let now = match self.new_primary(&old).await {
            Ok(_) => self.healthy().await,
            Err(_) => old.clone(),
        };
        let bound = self.w.snapshot().in_flight_bound();
        self.first_new_ack(Instant::now(), bound).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let gap = self.w.snapshot().longest_gap_after(t);
        eprintln!(
            "  pod {old} deleted: longest write gap {}, primary now {now}",
            fmt_duration(gap)
        );
        Ok(Measured {
            took: gap,
            note: (now == old).then(|| format!("{old} came back as the primary")),
            also: None,
        })
    }

    /// A standby on another node than `avoid`.
    async fn standby_off(&self, primary: &str, avoid: &str) -> Option<String> {
        for i in 0..3 {
            let n = keys::instance_name(&self.name, i);
            if n == primary {
                continue;
            }
            if node_of(&self.client, &self.ns, &n).await.ok()?.as_str() != avoid {
                return Some(n);
            }
        }
        None
    }

    async fn node_frozen(&mut self) -> Result<Measured, String> {
        let mut old = self.steady().await;
        let mut node = node_of(&self.client, &self.ns, &old)
            .await
            .map_err(|e| e.to_string())?;
        // The operator's leader on the same node would be frozen too: that is
        // the operator's own failover, measured by the e2e suite, not this.
        let leader = operator_leader(&self.client).await.unwrap_or_default();
        let leader_node = node_of(&self.client, &operator_namespace(), &leader)
            .await
            .unwrap_or_default();
        let mut note = None;
        if leader_node == node {
            let to = self
                .standby_off(&old, &node)
                .await
                .ok_or("every standby shares the operator leader's node")?;
            self.switch_to(&to).await?;
            note = Some(format!(
                "{old} shared {node} with the operator leader: switched over to {to} first"
            ));
            old = self.steady().await;
            node = node_of(&self.client, &self.ns, &old)
                .await
                .map_err(|e| e.to_string())?;
        }
        let bound = self.w.snapshot().in_flight_bound();
        let t = Instant::now();
        let thaw = NodeBack::new(&node, "thaw");
        node_action(&node, "freeze")
            .await
            .map_err(|e| e.to_string())?;
        let took = self.first_new_ack(t, bound).await;
        let new = self.new_primary(&old).await;
        drop(thaw);
        let took = took?;
        eprintln!(
            "  {node} (primary {old}) frozen: first write on the new primary {} after {}",
            new.as_deref().unwrap_or("?"),
            fmt_duration(took)
        );
        new?;
        Ok(Measured {
            took,
            note,
            also: None,
        })
    }

    /// Switch over to `to` by annotation and wait until rw points there.
    async fn switch_to(&self, to: &str) -> Result<(), String> {
        annotate(
            &self.client,
            &self.ns,
            &self.name,
            keys::ANN_SWITCHOVER,
            Some(to),
        )
        .await
        .map_err(|e| e.to_string())?;
        wait_rw_on(&self.client, &self.ns, &self.name, to, MOVE)
            .await
            .map_err(|e| e.to_string())
    }

    async fn switchover(&mut self) -> Result<Measured, String> {
        let old = self.steady().await;
        let to = (0..3)
            .map(|i| keys::instance_name(&self.name, i))
            .find(|n| *n != old)
            .ok_or("no standby")?;
        // A client without a pool beside the writer: each write on a new
        // connection, which -rw refuses from the label drop on.
        self.switchovers += 1;
        let fresh = Writer::start_connecting_each_time(
            self.target.clone(),
            FRESH_IDS * self.switchovers,
            Duration::from_millis(50),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        self.switch_to(&to).await?;
        let moved = Instant::now();
        tandem_e2e::eventually("the switchover annotation answered", MOVE, || async {
            (!has_annotation(&self.client, &self.ns, &self.name, keys::ANN_SWITCHOVER)
                .await
                .ok()?)
            .then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        let bound = self.w.snapshot().in_flight_bound();
        self.first_new_ack(Instant::now(), bound).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let gap = self.w.snapshot().longest_gap_after(t);
        let fresh_log = fresh.stop().await;
        if fresh_log.first_ack_after(t).is_none() {
            return Err(
                "the connect-per-write client acknowledged no write after the switchover".into(),
            );
        }
        let fresh_gap = fresh_log.longest_gap_after(t);
        eprintln!(
            "  switchover {old} → {to}: longest write gap {} (a new connection per write: {}; rw moved after {})",
            fmt_duration(gap),
            fmt_duration(fresh_gap),
            fmt_duration(moved.duration_since(t))
        );
        Ok(Measured {
            took: gap,
            note: None,
            also: Some((FRESH_ROW, fresh_gap)),
        })
    }

    /// RSS of the operator leader and of each agent, as table lines.
    pub async fn memory(&self, label: &str) -> Vec<String> {
        let mut out = Vec::new();
        let show = |what: &str, m: Option<(u64, u64)>| match m {
            Some((rss, hwm)) => format!(
                "{label:<15} {what:<28} RSS {:>10}  (peak {})",
                fmt_kib(rss),
                fmt_kib(hwm)
            ),
            None => format!("{label:<15} {what:<28} not found"),
        };
        let leader = operator_leader(&self.client).await.unwrap_or_default();
        out.push(show(
            "operator (leader)",
            cluster::pod_memory(
                &self.client,
                &operator_namespace(),
                &leader,
                "tandem operator",
            )
            .await,
        ));
        for i in 0..3 {
            let pod = keys::instance_name(&self.name, i);
            out.push(show(
                &format!("agent {pod}"),
                cluster::pod_memory(&self.client, &self.ns, &pod, "tandem agent").await,
            ));
        }
        out
    }

    /// Stop the writer and delete the DbCluster (its pods free the nodes for the next setup).
    pub async fn finish(self) {
        let log = self.w.stop().await;
        eprintln!(
            "{}: {} writes acknowledged, {} failed or unknown",
            self.name,
            log.acked.len(),
            log.failed.len()
        );
        let target = format!("dbcluster/{}", self.name);
        let _ = kubectl_ok(&[
            "delete",
            "-n",
            &self.ns,
            &target,
            "--wait=true",
            "--timeout=300s",
        ])
        .await;
    }
}
