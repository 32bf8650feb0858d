//! The operator under many DbClusters: `n` one-instance DbClusters applied
//! at once with kubectl; the time each takes to be healthy, the operator
//! leader's memory before and after, and its reconcile latency — from a
//! `kubectl patch` of a DbCluster's spec to the status that reports the new
//! generation (`status.observedGeneration`), one change at a time and all
//! `n` changed at once — timed by a watch on the namespace. Does I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use tandem::api::{DbCluster, Phase};
use tandem_e2e::{kubectl, operator_leader, operator_namespace};
use tandem_testkit::bench::{fmt_kib, Series};

use crate::cluster;

pub const NS: &str = "tandem-bench-scale";
/// How long all the DbClusters may take to be healthy, or a change to be reported.
const READY: Duration = Duration::from_secs(900);
/// Changes made one at a time.
const ONE_AT_A_TIME: usize = 10;

/// What the watch saw of one DbCluster.
#[derive(Default, Clone)]
struct Seen {
    healthy_at: Option<Instant>,
    /// When each observedGeneration was first reported.
    observed: Vec<(i64, Instant)>,
}

type Seens = Arc<Mutex<HashMap<String, Seen>>>;

fn name(i: usize) -> String {
    format!("scale-{i:02}")
}

/// What the scale run measured.
pub struct Scaled {
    healthy: Vec<Duration>,
    one: Vec<Duration>,
    burst: Vec<Duration>,
    n: usize,
    pub memory: Vec<String>,
    pub notes: Vec<String>,
}

impl Scaled {
    pub fn series(&self) -> Vec<Series> {
        let setup = format!("k8s {} dbc", self.n);
        let mut a = Series::new(
            "one-instance DbCluster applied → healthy",
            &setup,
            None,
            false,
        );
        a.samples = self.healthy.clone();
        let mut b = Series::new(
            "reconcile: spec patched → observedGeneration, one",
            &setup,
            None,
            false,
        );
        b.samples = self.one.clone();
        let mut c = Series::new(
            &format!("reconcile: all {} patched at once → observed", self.n),
            &setup,
            None,
            false,
        );
        c.samples = self.burst.clone();
        vec![a, b, c]
    }
}

fn watch(client: &Client, seens: Seens) -> tokio::task::JoinHandle<()> {
    let api: Api<DbCluster> = Api::namespaced(client.clone(), NS);
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let objs: Vec<DbCluster> = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => vec![o],
                _ => continue,
            };
            let now = Instant::now();
            let Ok(mut m) = seens.lock() else { return };
            for o in objs {
                let Some(n) = o.metadata.name.clone() else {
                    continue;
                };
                let seen = m.entry(n).or_default();
                if let Some(st) = &o.status {
                    let healthy = st.phase == Some(Phase::Healthy)
                        && st.ready_instances.as_deref() == Some("1/1");
                    if healthy && seen.healthy_at.is_none() {
                        seen.healthy_at = Some(now);
                    }
                    if let Some(g) = st.observed_generation {
                        if seen.observed.last().is_none_or(|(last, _)| *last < g) {
                            seen.observed.push((g, now));
                        }
                    }
                }
            }
        }
    })
}

fn snapshot(seens: &Seens) -> HashMap<String, Seen> {
    seens.lock().map(|m| m.clone()).unwrap_or_default()
}

/// When `name` first reported generation `g` or later, waiting at most READY.
async fn observed_at(seens: &Seens, name: &str, g: i64) -> Option<Instant> {
    tandem_testkit::poll_until_async(READY, Duration::from_millis(10), || {
        let at = snapshot(seens)
            .get(name)
            .and_then(|s| s.observed.iter().find(|(o, _)| *o >= g).map(|(_, at)| *at));
        async move { at }
    })
    .await
}

/// A merge patch of a spec field the operator reports (as `kubectl patch`
/// sends it, through the client so that no process start is timed); the
/// generation it made.
async fn patch(client: &Client, i: usize, round: usize) -> Result<i64, String> {
    let detection = 5 + round;
    let p =
        serde_json::json!({"spec": {"failover": {"detectionTimeout": format!("{detection}s")}}});
    let api: Api<DbCluster> = Api::namespaced(client.clone(), NS);
    let dc = api
        .patch(&name(i), &PatchParams::default(), &Patch::Merge(&p))
        .await
        .map_err(|e| e.to_string())?;
    dc.metadata
        .generation
        .ok_or_else(|| "the patched DbCluster has no generation".to_string())
}

async fn operator_memory(client: &Client, when: &str) -> String {
    let leader = operator_leader(client).await.unwrap_or_default();
    match cluster::pod_memory(client, &operator_namespace(), &leader, "tandem operator").await {
        Some((rss, hwm)) => format!(
            "{:<15} {:<28} RSS {:>10}  (peak {})",
            "k8s operator",
            when,
            fmt_kib(rss),
            fmt_kib(hwm)
        ),
        None => format!("{:<15} {when:<28} not found", "k8s operator"),
    }
}

/// Apply `n` one-instance DbClusters, measure, delete them.
pub async fn run(client: &Client, n: usize) -> Scaled {
    eprintln!("== {n} one-instance DbClusters in {NS}");
    cluster::ensure_namespace(NS).await;
    let mut memory = vec![operator_memory(client, "leader, before").await];
    let mut notes = Vec::new();
    let seens: Seens = Arc::default();
    let watching = watch(client, seens.clone());
    let manifest: String = (0..n)
        .map(|i| cluster::dbcluster(&name(i), 1, ""))
        .collect::<Vec<_>>()
        .join("---\n");
    let applied = Instant::now();
    cluster::apply(NS, &manifest).await;
    let all = tandem_testkit::poll_until_async(READY, Duration::from_millis(200), || {
        let s = snapshot(&seens);
        let done = (0..n).all(|i| s.get(&name(i)).is_some_and(|x| x.healthy_at.is_some()));
        async move { done.then_some(()) }
    })
    .await;
    let s = snapshot(&seens);
    let healthy: Vec<Duration> = (0..n)
        .filter_map(|i| s.get(&name(i))?.healthy_at)
        .map(|at| at.duration_since(applied))
        .collect();
    if all.is_none() {
        notes.push(format!(
            "only {} of {n} DbClusters were healthy within {READY:?}",
            healthy.len()
        ));
    }
    eprintln!(
        "  {} of {n} healthy, the last after {:.1} s",
        healthy.len(),
        healthy
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
    );
    memory.push(operator_memory(client, &format!("leader, {n} DbClusters")).await);

    // One change at a time.
    let mut one = Vec::new();
    for i in 0..n.min(ONE_AT_A_TIME) {
        let t = Instant::now();
        match patch(client, i, 1).await {
            Ok(g) => match observed_at(&seens, &name(i), g).await {
                Some(at) => one.push(at.duration_since(t)),
                None => notes.push(format!("{} never reported generation {g}", name(i))),
            },
            Err(e) => notes.push(format!("patch {}: {e}", name(i))),
        }
    }
    // All at once: the patches are issued together.
    let started: Vec<_> = (0..n)
        .map(|i| async move {
            let t = Instant::now();
            (i, t, patch(client, i, 2).await)
        })
        .collect();
    let results = futures::future::join_all(started).await;
    let mut burst = Vec::new();
    for (i, t, r) in results {
        match r {
            Ok(g) => match observed_at(&seens, &name(i), g).await {
                Some(at) => burst.push(at.duration_since(t)),
                None => notes.push(format!("{} never reported generation {g}", name(i))),
            },
            Err(e) => notes.push(format!("patch {}: {e}", name(i))),
        }
    }
    memory.push(operator_memory(client, "leader, after the changes").await);
    watching.abort();
    let _ = kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=600s"]).await;
    Scaled {
        healthy,
        one,
        burst,
        n,
        memory,
        notes,
    }
}
