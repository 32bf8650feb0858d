//! The Kubernetes platform of the HA engine: one task per DbCluster polls the
//! agents, asks `engine::decide`, persists status and carries out the actions
//! (DESIGN.md §2, §3). Only the Lease leader runs it; while it runs for a
//! cluster, it is the only writer of that cluster's status. Does I/O.
//!
//! - [`requests`]: the `tandem.dev/*` request annotations (pure).
//! - [`pods`]: pod facts → platform state, role label (pure).
//! - [`agents`]: the agents behind a trait, and over HTTP.
//! - [`kube_ops`]: the API server behind a trait, and over a kube client
//!   (reads from the controller's watch caches).
//! - [`cycle`]: one pass observe → decide → persist → act.

pub mod agents;
pub mod cycle;
pub mod kube_ops;
pub mod pods;
pub mod requests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};

pub use agents::{AgentOps, AgentTarget, HttpAgents, Token};
pub use cycle::{ClusterLoop, LoopConfig, Pass};
pub use kube_ops::{KubeClient, KubeOps};

/// While a transition runs, poll at least this often (each step waits for the previous step's results).
const TRANSITION_INTERVAL: Duration = Duration::from_millis(250);

/// Settings of the HA loops, parsed once from the flags.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// Poll interval of each cluster.
    pub interval: Duration,
    /// How many clusters may be in a pass at once.
    pub max_concurrent: usize,
    /// Longest a pass may take before it is abandoned (its permit freed).
    pub pass_timeout: Duration,
    /// Per-cluster loop settings.
    pub cluster: LoopConfig,
}

/// The running HA loops, one per DbCluster (key `namespace/name`).
pub struct Registry<K, A> {
    kube: Arc<K>,
    agents: Arc<A>,
    config: HaConfig,
    permits: Arc<Semaphore>,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Per cluster: how many ordinals the engine last said to keep (shared with reconcile).
    keep: Arc<Mutex<HashMap<String, u32>>>,
    /// The operator's metrics, when the loops count into them.
    metrics: Option<Arc<crate::controller::metrics::Metrics>>,
    /// Per cluster: wakes its loop before its next tick (a pod of it changed).
    wakers: Arc<Mutex<HashMap<String, Arc<tokio::sync::Notify>>>>,
}

impl<K: KubeOps, A: AgentOps> Registry<K, A> {
    /// No loop runs yet.
    pub fn new(kube: Arc<K>, agents: Arc<A>, config: HaConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        Self {
            kube,
            agents,
            config,
            permits,
            tasks: Mutex::new(HashMap::new()),
            keep: Arc::new(Mutex::new(HashMap::new())),
            metrics: None,
            wakers: Arc::default(),
        }
    }

    /// The same registry; its loops count unanswered agent polls in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::controller::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        lock(&self.tasks)
    }

    /// Start the loop of `namespace/name` unless it runs.
    pub fn ensure(&self, namespace: &str, name: &str) {
        let key = format!("{namespace}/{name}");
        let mut tasks = self.tasks();
        if tasks.get(&key).is_some_and(|t| !t.is_finished()) {
            return;
        }
        info!(cluster = %name, %namespace, "starting the HA loop");
        let mut lp = ClusterLoop::new(
            self.kube.clone(),
            self.agents.clone(),
            namespace,
            name,
            self.config.cluster.clone(),
        );
        if let Some(m) = &self.metrics {
            lp = lp.with_metrics(m.clone());
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        lock(&self.wakers).insert(key.clone(), wake.clone());
        // Every line of the loop, its passes and its agent calls carries the cluster.
        let span = tracing::info_span!("ha_loop", cluster = %name, %namespace);
        let task = tokio::spawn(
            drive(
                lp,
                self.permits.clone(),
                self.config.clone(),
                Keep {
                    map: self.keep.clone(),
                    key: key.clone(),
                    wakers: self.wakers.clone(),
                },
                wake,
            )
            .instrument(span),
        );
        tasks.insert(key, task);
    }

    /// Wakes the loops' next passes (a watch saw one of their pods change).
    pub fn wakers(&self) -> Wakers {
        Wakers(self.wakers.clone())
    }

    /// Whether the loop of `namespace/name` runs.
    pub fn drives(&self, namespace: &str, name: &str) -> bool {
        self.tasks()
            .get(&format!("{namespace}/{name}"))
            .is_some_and(|t| !t.is_finished())
    }

    /// How many ordinals the StatefulSet must keep for `namespace/name`, when
    /// its loop has decided at least once (more than `spec.instances` while the
    /// primary's ordinal is being scaled away and switched over first).
    pub fn keep_instances(&self, namespace: &str, name: &str) -> Option<u32> {
        lock(&self.keep)
            .get(&format!("{namespace}/{name}"))
            .copied()
    }

    /// Stop every loop (leadership lost or shutting down). Status was persisted
    /// before every action, so the next leader resumes where these stopped.
    pub fn stop_all(&self) {
        for (_, t) in self.tasks().drain() {
            t.abort();
        }
    }
}

impl<K, A> Drop for Registry<K, A> {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, t) in tasks.drain() {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wakes the HA loop of a cluster now rather than at its next tick: a pod
/// deleted, its containers ended or its readiness changed is seen at once.
#[derive(Clone)]
pub struct Wakers(Arc<Mutex<HashMap<String, Arc<tokio::sync::Notify>>>>);

impl Wakers {
    /// Wake the loop of `namespace/name`, if one runs.
    pub fn wake(&self, namespace: &str, name: &str) {
        if let Some(n) = lock(&self.0).get(&format!("{namespace}/{name}")) {
            n.notify_one();
        }
    }
}

/// Which DbCluster events are worth waking its HA loop for: a new
/// generation (the spec changed) or other `tandem.dev/` annotations (a
/// request, pause). The loop's own status writes change neither, so they wake
/// nothing.
#[derive(Default)]
pub struct ClusterChanges {
    seen: HashMap<String, Seen>,
}

/// A DbCluster's generation and `tandem.dev/` annotations, as last seen.
type Seen = (Option<i64>, Vec<(String, String)>);

impl ClusterChanges {
    /// Record `meta`; true when its generation or tandem annotations differ from the last seen.
    pub fn changed(
        &mut self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> bool {
        let key = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        );
        let annotations = meta
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| {
                k.strip_prefix(crate::api::keys::GROUP)
                    .is_some_and(|rest| rest.starts_with('/'))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let now = (meta.generation, annotations);
        self.seen.insert(key, now.clone()).as_ref() != Some(&now)
    }
}

/// Where a loop publishes its cluster's `keep_instances`.
struct Keep {
    map: Arc<Mutex<HashMap<String, u32>>>,
    key: String,
    /// The registry's wakers, this loop's removed when it ends.
    wakers: Arc<Mutex<HashMap<String, Arc<tokio::sync::Notify>>>>,
}

impl Keep {
    fn set(&self, n: u32) {
        lock(&self.map).insert(self.key.clone(), n);
    }
}

impl Drop for Keep {
    fn drop(&mut self) {
        lock(&self.map).remove(&self.key);
        lock(&self.wakers).remove(&self.key);
    }
}

async fn drive<K: KubeOps, A: AgentOps>(
    mut lp: ClusterLoop<K, A>,
    permits: Arc<Semaphore>,
    config: HaConfig,
    keep: Keep,
    wake: Arc<tokio::sync::Notify>,
) {
    // Before the watch caches listed once, no pod would look alive.
    if !lp.synced().await {
        return;
    }
    let mut failures: u32 = 0;
    let finished = lp.finished();
    loop {
        let outcome = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            tokio::time::timeout(config.pass_timeout, lp.pass(jiff::Timestamp::now())).await
        };
        let wait = match outcome {
            Ok(Ok(Pass::ClusterGone)) => {
                info!("DbCluster gone: HA loop ends");
                return;
            }
            Ok(Ok(Pass::Done {
                transition,
                keep_instances,
                wake_at,
            })) => {
                failures = 0;
                keep.set(keep_instances);
                let wait = if transition {
                    config.interval.min(TRANSITION_INTERVAL)
                } else {
                    config.interval
                };
                // A lease or detection window that ends sooner is acted on when it ends.
                wait.min(crate::platform::until(wake_at))
            }
            Ok(Ok(Pass::Invalid)) => {
                failures = 0;
                config.interval
            }
            Ok(Err(e)) => {
                failures = failures.saturating_add(1);
                warn!(error = %e, category = e.category().as_label(), "HA pass failed");
                crate::controller::error::backoff(failures).min(config.interval * 10)
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                warn!(
                    timeout_ms = config.pass_timeout.as_millis() as u64,
                    "HA pass timed out"
                );
                config.interval
            }
        };
        // A finished agent call or platform action (a promotion, a label
        // set) lets a transition take its next step now, as the local loop does.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = finished.notified(), if failures == 0 => {}
            _ = wake.notified(), if failures == 0 => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::ClusterChanges;

    fn meta(generation: i64, annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            namespace: Some("db".into()),
            name: Some("main".into()),
            generation: Some(generation),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn spec_changes_and_requests_wake_the_loop_and_status_writes_do_not() {
        let mut c = ClusterChanges::default();
        assert!(c.changed(&meta(1, &[])), "first sight");
        assert!(!c.changed(&meta(1, &[])), "a status write: same generation");
        assert!(c.changed(&meta(2, &[])), "the spec changed");
        assert!(c.changed(&meta(2, &[("tandem.dev/switchover", "main-1")])));
        assert!(!c.changed(&meta(2, &[("tandem.dev/switchover", "main-1")])));
        assert!(
            !c.changed(&meta(
                2,
                &[
                    ("tandem.dev/switchover", "main-1"),
                    ("kubectl.kubernetes.io/last-applied-configuration", "{}")
                ]
            )),
            "annotations of others are not requests"
        );
        assert!(c.changed(&meta(2, &[])), "the request was answered");
        assert!(!c.changed(&meta(2, &[("tandem.devx/other", "1")])));
    }
}
