//! One DbCluster's HA loop on Kubernetes: [`KubePlatform`] translates
//! between the engine and the API server (the DbCluster, pods, token and
//! StatefulSet from the watch caches; the agents over HTTP; status writes,
//! role labels, pod deletion, Events, annotation removal) for the shared
//! [`crate::platform::HaLoop`]; [`ClusterLoop`] runs its passes and decides
//! again when a status write meets a newer object. Does I/O through
//! [`KubeOps`] and [`AgentOps`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tracing::{debug, info, instrument, warn};

use super::agents::{AgentOps, AgentTarget, Token};
use super::kube_ops::KubeOps;
use super::pods;
use super::requests;
use crate::api::agent::{Member, ToolLimits};
use crate::api::{keys, DbCluster, DbClusterStatus};
use crate::controller::error::{Category, Error};
use crate::controller::metrics::Metrics;
use crate::controller::validate::{validate, Defaults};
use crate::engine::{
    Action, EventType, InstanceObs, Observations, PlatformState, Request, RoleLabel,
};
use crate::platform::{self, AgentCall, HaLoop, Observe, Observed, Platform};

/// The pod label the StatefulSet controller sets to the pod's template revision.
pub const LABEL_REVISION: &str = "controller-revision-hash";

/// Settings of one cluster's loop.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// How long one agent status poll may take.
    pub poll_timeout: Duration,
    /// How long a new pod that has not answered yet counts as starting.
    pub starting_grace: Duration,
    /// The agents' HTTP port.
    pub agent_port: u16,
    /// Defaults for validation (a spec the reconcile refuses is not driven).
    pub defaults: Defaults,
    /// How long a role label change may take to reach kube-proxy's rules
    /// (`Observations::service_settle_ms`).
    pub service_settle: Duration,
}

/// What a pass came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Decided and acted; `transition` says whether one is in progress (poll
    /// again soon); `keep_instances` how many ordinals the StatefulSet must
    /// keep; `wake_at` when to pass again at the latest (the engine waits for
    /// the clock: a lease running out, a detection window).
    Done {
        transition: bool,
        keep_instances: u32,
        wake_at: Option<jiff::Timestamp>,
    },
    /// The spec is invalid: nothing was done (the reconcile reports it).
    Invalid,
    /// The DbCluster is deleted or being deleted: the loop ends.
    ClusterGone,
}

/// Why a Kubernetes pass has nothing to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// See [`Pass::Invalid`].
    Invalid,
    /// See [`Pass::ClusterGone`].
    ClusterGone,
}

/// How many times one pass decides when its status write meets a newer object.
pub const CONFLICT_ATTEMPTS: u32 = 3;

/// The loop of one DbCluster: the shared HA loop over [`KubePlatform`].
pub struct ClusterLoop<K, A> {
    ha: HaLoop<KubePlatform<K, A>>,
}

impl<K: KubeOps, A: AgentOps> ClusterLoop<K, A> {
    /// A loop for DbCluster `namespace/name`.
    pub fn new(
        kube: Arc<K>,
        agents: Arc<A>,
        namespace: &str,
        name: &str,
        config: LoopConfig,
    ) -> Self {
        Self {
            ha: HaLoop::new(KubePlatform::new(kube, agents, namespace, name, config)),
        }
    }

    /// The same loop, counting unanswered agent polls in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.ha.platform.metrics = Some(metrics);
        self
    }

    /// Resolves once the reads see a complete picture; `false` when they never will.
    pub async fn synced(&self) -> bool {
        self.ha.platform.kube.synced().await
    }

    /// Agent calls still running.
    pub fn in_flight(&self) -> usize {
        self.ha.in_flight()
    }

    /// Notified when an agent call (other than a lease renewal) or a platform
    /// action finished: a transition's next step need not wait for the next tick.
    pub fn finished(&self) -> Arc<tokio::sync::Notify> {
        self.ha.finished()
    }

    /// Wait (at most `timeout`) until every agent call has finished; their
    /// results go into the next pass.
    pub async fn settle(&mut self, timeout: Duration) -> bool {
        self.ha.settle(timeout).await
    }

    /// One pass: observe → decide → persist → act. When the status write
    /// finds the DbCluster changed since it was read (another writer, such as
    /// a newer leader), nothing is carried out: the pass reads the object
    /// again and decides again from it, up to [`CONFLICT_ATTEMPTS`] times.
    #[instrument(name = "ha_pass", skip_all)]
    pub async fn pass(&mut self, now: Timestamp) -> Result<Pass, Error> {
        let mut attempt = 1;
        loop {
            match self.ha.pass(now).await {
                Err(e) if e.category() == Category::Conflict && attempt < CONFLICT_ATTEMPTS => {
                    attempt += 1;
                    info!(
                        attempt,
                        "the DbCluster changed since it was read: reading it again and deciding again"
                    );
                }
                Err(e) => return Err(e),
                Ok(platform::Pass::Decided {
                    transition,
                    keep_instances,
                    wake_at,
                }) => {
                    return Ok(Pass::Done {
                        transition,
                        keep_instances,
                        wake_at,
                    })
                }
                Ok(platform::Pass::Skipped(Skip::Invalid)) => return Ok(Pass::Invalid),
                Ok(platform::Pass::Skipped(Skip::ClusterGone)) => return Ok(Pass::ClusterGone),
            }
        }
    }
}

/// One DbCluster as the Kubernetes platform sees it. What one pass read
/// (the object, its pods, the agents' addresses) is kept for its actions.
pub struct KubePlatform<K, A> {
    kube: Arc<K>,
    agents: Arc<A>,
    namespace: String,
    name: String,
    config: LoopConfig,
    /// Pod uids whose agent has answered at least once.
    answered: HashSet<String>,
    /// The pod uid last seen for each instance: a new uid means the pod was
    /// deleted and recreated between two passes.
    incarnations: BTreeMap<String, String>,
    /// The next read of the DbCluster bypasses any cache (a status write met a newer object).
    fresh: bool,
    /// The resourceVersion this loop's last status write replaced.
    replaced: Option<String>,
    /// Counts the polls agents did not answer, by reason.
    metrics: Option<Arc<Metrics>>,
    /// The DbCluster of this pass.
    dc: Option<DbCluster>,
    /// Its pods.
    pods: Vec<Pod>,
    /// Its agents, by instance.
    targets: BTreeMap<String, AgentTarget>,
}

impl<K: KubeOps, A: AgentOps> KubePlatform<K, A> {
    fn new(kube: Arc<K>, agents: Arc<A>, namespace: &str, name: &str, config: LoopConfig) -> Self {
        Self {
            kube,
            agents,
            namespace: namespace.into(),
            name: name.into(),
            config,
            answered: HashSet::new(),
            incarnations: BTreeMap::new(),
            fresh: false,
            replaced: None,
            metrics: None,
            dc: None,
            pods: Vec::new(),
            targets: BTreeMap::new(),
        }
    }

    /// The DbCluster from the watch cache, or from the API server when the
    /// cache cannot be trusted: a write met a newer object, or the cache still
    /// holds the object this loop's last status write replaced (the watch has
    /// not delivered that write yet; deciding from it would redo a step).
    async fn read_cluster(&mut self) -> Result<Option<DbCluster>, Error> {
        let fresh = std::mem::take(&mut self.fresh);
        if !fresh {
            let cached = self.kube.get_cluster(&self.namespace, &self.name).await?;
            let replaced = self.replaced.as_ref();
            let behind = cached
                .as_ref()
                .and_then(|dc| dc.metadata.resource_version.as_ref())
                .is_some_and(|rv| Some(rv) == replaced);
            if !behind {
                self.replaced = None;
                return Ok(cached);
            }
            debug!("the watch cache has not seen the last status write yet: reading the DbCluster");
        }
        self.kube
            .get_cluster_fresh(&self.namespace, &self.name)
            .await
    }

    fn targets(&self, pods: &[Pod], token: Option<&Token>) -> BTreeMap<String, AgentTarget> {
        let Some(token) = token else {
            return BTreeMap::new();
        };
        pods.iter()
            // A pod in its deletion grace period is still asked: its postgres may still serve.
            .filter(|p| !pods::pod_ended(p))
            .filter_map(|p| {
                let ip = pods::pod_ip(p)?;
                let host = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip
                };
                Some((
                    p.name_any(),
                    AgentTarget {
                        instance: p.name_any(),
                        base_url: format!("http://{host}:{}", self.config.agent_port),
                        token: token.clone(),
                    },
                ))
            })
            .collect()
    }

    /// Every instance's postgres address as the other members reach it (pod DNS):
    /// the instances of the spec and any pod still there.
    fn members(&self, dc: &DbCluster, pods: &[Pod]) -> BTreeMap<String, Member> {
        let want = u32::try_from(dc.spec.instances).unwrap_or(0);
        (0..want)
            .map(|o| keys::instance_name(&self.name, o))
            .chain(
                pods.iter()
                    .map(|p| p.name_any())
                    .filter(|n| keys::instance_ordinal(&self.name, n).is_some()),
            )
            .map(|n| (n.clone(), self.member(&n)))
            .collect()
    }

    fn member(&self, instance: &str) -> Member {
        Member {
            name: instance.into(),
            host: format!(
                "{instance}.{}.{}.svc",
                keys::service_pods(&self.name),
                self.namespace
            ),
            port: keys::POSTGRES_PORT,
            agent_url: self.targets.get(instance).map(|t| t.base_url.clone()),
        }
    }

    /// Every instance: its pod (platform state, role label, whether it runs an
    /// outdated template or is being deleted) and its agent's answer;
    /// `requested`: a request waits in the annotations.
    async fn instances(
        &mut self,
        dc: &DbCluster,
        pods: &[Pod],
        revision: Option<&str>,
        now: Timestamp,
        requested: bool,
    ) -> Vec<InstanceObs> {
        let timeout = self.config.poll_timeout;
        // During a transition each step waits on the previous one's effect,
        // and a request's prechecks judge the cluster as it is when it was
        // made (a standby's lag compares two agents' probes): ask for a probe
        // begun now rather than the agent's latest, up to a probe interval old.
        let fresh = requested || dc.status.as_ref().is_some_and(|s| s.transition.is_some());
        let polls = self.targets.values().map(|t| {
            let agents = self.agents.clone();
            let t = t.clone();
            async move {
                let answer = if fresh {
                    agents.poll_fresh(&t, timeout).await
                } else {
                    agents.poll(&t, timeout).await
                };
                (t.instance.clone(), answer)
            }
        });
        let answers: BTreeMap<String, _> =
            futures::future::join_all(polls).await.into_iter().collect();
        // The nodes a drain has cordoned (a primary there is switched over).
        let mut cordoned = std::collections::BTreeSet::new();
        let nodes: std::collections::BTreeSet<String> = pods
            .iter()
            .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
            .collect();
        for node in nodes {
            if self.kube.node_unschedulable(&node).await {
                cordoned.insert(node);
            }
        }
        let mut out: Vec<(u32, InstanceObs)> = Vec::new();
        for pod in pods {
            let name = pod.name_any();
            let Some(ordinal) = keys::instance_ordinal(&self.name, &name) else {
                continue;
            };
            let polled = answers.get(&name);
            let answer = polled.and_then(|a| a.as_ref().ok());
            let unanswered = polled.and_then(|a| a.as_ref().err().copied().flatten());
            if let (Some(reason), Some(m)) = (unanswered, &self.metrics) {
                m.agent_unanswered(reason);
            }
            let uid = pod.uid().unwrap_or_default();
            if answer.is_some() {
                self.answered.insert(uid.clone());
            }
            // The pod was deleted and its replacement created between two
            // passes (a StatefulSet recreates a pod within a second): the
            // instance it ran is gone, as if this pass had seen no pod at all.
            let replaced = self
                .incarnations
                .insert(name.clone(), uid.clone())
                .is_some_and(|before| before != uid);
            let platform = if replaced {
                // A new pod proves nothing about the old one's postgres (a
                // force-deleted pod on a partitioned node still runs).
                PlatformState::Vanished
            } else {
                pods::platform_state(
                    pod,
                    self.answered.contains(&uid),
                    answer.is_some_and(|a| a.postgres_running),
                    now,
                    self.config.starting_grace,
                )
            };
            let outdated = revision
                .is_some_and(|want| pod.labels().get(LABEL_REVISION).is_some_and(|r| r != want));
            out.push((
                ordinal,
                InstanceObs {
                    name,
                    platform,
                    label: pods::role_label(pod),
                    agent: answer.map(platform::report),
                    unanswered,
                    outdated,
                    deleting: pod.metadata.deletion_timestamp.is_some(),
                    unschedulable: pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .is_some_and(|n| cordoned.contains(n)),
                },
            ));
        }
        // An instance of the spec without a pod has vanished (deleted, not yet
        // recreated): without the kubelet's word its postgres may still run.
        let want = u32::try_from(dc.spec.instances).unwrap_or(0);
        for ordinal in 0..want {
            if !out.iter().any(|(o, _)| *o == ordinal) {
                out.push((
                    ordinal,
                    InstanceObs {
                        name: keys::instance_name(&self.name, ordinal),
                        platform: PlatformState::Vanished,
                        ..InstanceObs::default()
                    },
                ));
            }
        }
        out.sort_by_key(|(o, _)| *o);
        out.into_iter().map(|(_, i)| i).collect()
    }

    async fn remove_annotation(&self, key: &str, value: &str) {
        let Some(dc) = &self.dc else { return };
        if let Err(e) = self.kube.remove_annotation(dc, key, value).await {
            warn!(annotation = %key, error = %e, "cannot remove the request annotation");
        }
    }
}

impl<K: KubeOps, A: AgentOps> Platform for KubePlatform<K, A> {
    type Skip = Skip;
    type Error = Error;

    async fn observe(&mut self, now: Timestamp) -> Result<Observe<Skip>, Error> {
        let Some(dc) = self.read_cluster().await? else {
            return Ok(Observe::Skip(Skip::ClusterGone));
        };
        if dc.metadata.deletion_timestamp.is_some() {
            return Ok(Observe::Skip(Skip::ClusterGone));
        }
        if validate(&dc, &self.config.defaults).is_err() {
            return Ok(Observe::Skip(Skip::Invalid));
        }
        let pods = self.kube.list_pods(&self.namespace, &self.name).await?;
        let token = self.kube.agent_token(&self.namespace, &self.name).await?;
        let revision = self
            .kube
            .update_revision(&self.namespace, &self.name)
            .await?;
        self.targets = self.targets(&pods, token.as_ref());
        let parsed = requests::parse(&self.name, dc.annotations());
        let requested = !parsed.requests.is_empty();
        let instances = self
            .instances(&dc, &pods, revision.as_deref(), now, requested)
            .await;
        let obs = Observations {
            cluster: self.name.clone(),
            generation: dc.metadata.generation,
            paused_annotation: parsed.paused,
            instances,
            requests: parsed.requests,
            results: Vec::new(),
            service_settle_ms: u64::try_from(self.config.service_settle.as_millis())
                .unwrap_or(u64::MAX),
        };
        let observed = Observed {
            spec: dc.spec.0.clone(),
            status: dc.status.clone().unwrap_or_default(),
            obs,
            members: self.members(&dc, &pods),
        };
        self.dc = Some(dc);
        self.pods = pods;
        Ok(Observe::Ready(Box::new(observed)))
    }

    async fn persist(&mut self, status: &DbClusterStatus) -> Result<(), Error> {
        let Some(dc) = &self.dc else {
            return Ok(());
        };
        match self.kube.patch_status(dc, status).await {
            Ok(()) => {
                self.replaced = dc.metadata.resource_version.clone();
                Ok(())
            }
            Err(e) => {
                // The decision was made from an outdated object: read it past any cache.
                self.fresh = e.category() == Category::Conflict;
                Err(e)
            }
        }
    }

    async fn set_role(&mut self, instance: &str, role: RoleLabel) -> Result<(), String> {
        let Some(pod) = self.pods.iter().find(|p| p.name_any() == instance) else {
            return Err(format!("pod {instance} does not exist"));
        };
        if pods::role_label(pod) == Some(role) {
            return Ok(());
        }
        self.kube
            .set_role_label(&self.namespace, instance, role.as_str())
            .await
            .map_err(|e| format!("cannot set the role label: {e}"))?;
        info!(role = role.as_str(), "role label set");
        Ok(())
    }

    async fn fence(&mut self, instance: &str) -> Result<(), String> {
        warn!("fencing: deleting the pod of an unreachable instance");
        self.kube
            .delete_pod(&self.namespace, instance, Some(0))
            .await
            .map_err(|e| e.to_string())
    }

    async fn recreate(&mut self, instance: &str) -> Result<(), String> {
        // With its grace period: postgres stops cleanly; the StatefulSet
        // recreates the pod from the updated template.
        info!("rolling update: deleting the pod to recreate it from the updated pod template");
        self.kube
            .delete_pod(&self.namespace, instance, None)
            .await
            .map_err(|e| format!("cannot delete the pod: {e}"))
    }

    async fn event(
        &mut self,
        _instance: Option<&str>,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        let Some(dc) = &self.dc else { return };
        if let Err(e) = self.kube.event(dc, type_, reason, message).await {
            warn!(error = %e, "could not publish event");
        }
    }

    async fn request_done(&mut self, request: &Request, _status: &DbClusterStatus) {
        let Some(annotations) = self.dc.as_ref().map(|dc| dc.annotations().clone()) else {
            return;
        };
        if let Request::Unreadable { source, value, .. } = request {
            self.remove_annotation(source, value).await;
            return;
        }
        for key in requests::annotations_of(request) {
            if let Some(value) = annotations.get(*key) {
                self.remove_annotation(key, value).await;
            }
        }
    }

    fn agent_call(
        &self,
        action: &Action,
        members: &BTreeMap<String, Member>,
        limits: &ToolLimits,
    ) -> Result<AgentCall, String> {
        let instance = action.instance().unwrap_or_default();
        let Some(target) = self.targets.get(instance).cloned() else {
            return Err(format!(
                "the agent of {instance} cannot be reached (no pod IP or no agent token)"
            ));
        };
        let agents = self.agents.clone();
        let action = action.clone();
        let members = members.clone();
        let limits = limits.clone();
        Ok(Box::pin(async move {
            agents.call(&target, &action, &members, &limits).await
        }))
    }
}
