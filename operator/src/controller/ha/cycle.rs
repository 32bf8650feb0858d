//! One DbCluster's HA loop on Kubernetes, one pass at a time: observe (the
//! DbCluster, pods, token and StatefulSet from the watch caches; the agents
//! over HTTP) → `engine::decide` → persist status → act (agent
//! calls, role labels, pod deletion, Events, annotation removal). Does I/O
//! through [`KubeOps`] and [`AgentOps`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tokio::sync::mpsc;
use tracing::{debug, info, instrument, warn, Instrument};

use super::agents::{AgentOps, AgentTarget, Token};
use super::kube_ops::KubeOps;
use super::pods;
use super::requests::{self, Refusal};
use super::rollout;
use crate::api::agent::Member;
use crate::api::{keys, DbCluster, HistoryEntry, HistoryKind, HistoryOutcome};
use crate::controller::error::{Category, Error};
use crate::controller::metrics::Metrics;
use crate::controller::validate::{validate, Defaults};
use crate::engine::{
    self, reasons, Action, ActionResult, EventType, InstanceObs, Observations, PlatformState,
};

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
}

/// What a pass came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Decided and acted; `transition` says whether one is in progress (poll
    /// again soon); `keep_instances` how many ordinals the StatefulSet must keep.
    Done {
        transition: bool,
        keep_instances: u32,
    },
    /// The spec is invalid: nothing was done (the reconcile reports it).
    Invalid,
    /// The DbCluster is deleted or being deleted: the loop ends.
    ClusterGone,
}

/// The loop of one DbCluster.
pub struct ClusterLoop<K, A> {
    kube: Arc<K>,
    agents: Arc<A>,
    namespace: String,
    name: String,
    config: LoopConfig,
    results: Vec<ActionResult>,
    in_flight: HashSet<String>,
    tx: mpsc::UnboundedSender<(String, ActionResult)>,
    rx: mpsc::UnboundedReceiver<(String, ActionResult)>,
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
}

/// How many times one pass decides when its status write meets a newer object.
pub const CONFLICT_ATTEMPTS: u32 = 3;

fn action_key(a: &Action) -> String {
    serde_json::to_string(a).unwrap_or_else(|_| format!("{a:?}"))
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
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            kube,
            agents,
            namespace: namespace.into(),
            name: name.into(),
            config,
            results: Vec::new(),
            in_flight: HashSet::new(),
            tx,
            rx,
            answered: HashSet::new(),
            incarnations: BTreeMap::new(),
            fresh: false,
            replaced: None,
            metrics: None,
        }
    }

    /// The same loop, counting unanswered agent polls in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Resolves once the reads see a complete picture; `false` when they never will.
    pub async fn synced(&self) -> bool {
        self.kube.synced().await
    }

    /// Agent calls still running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn drain(&mut self) {
        while let Ok((k, r)) = self.rx.try_recv() {
            self.in_flight.remove(&k);
            self.results.push(r);
        }
    }

    /// Wait (at most `timeout`) until every agent call has finished; their
    /// results go into the next pass.
    pub async fn settle(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((k, r))) => {
                    self.in_flight.remove(&k);
                    self.results.push(r);
                }
                _ => return false,
            }
        }
        true
    }

    /// One pass: observe → decide → persist → act. When the status write
    /// finds the DbCluster changed since it was read (another writer, such as
    /// a newer leader), nothing is carried out: the pass reads the object
    /// again and decides again from it, up to [`CONFLICT_ATTEMPTS`] times.
    #[instrument(name = "ha_pass", skip_all)]
    pub async fn pass(&mut self, now: Timestamp) -> Result<Pass, Error> {
        self.drain();
        let mut attempt = 1;
        loop {
            match self.attempt(now).await {
                Err(e) if e.category() == Category::Conflict && attempt < CONFLICT_ATTEMPTS => {
                    attempt += 1;
                    info!(
                        attempt,
                        "the DbCluster changed since it was read: reading it again and deciding again"
                    );
                }
                other => return other,
            }
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

    async fn attempt(&mut self, now: Timestamp) -> Result<Pass, Error> {
        let Some(dc) = self.read_cluster().await? else {
            return Ok(Pass::ClusterGone);
        };
        if dc.metadata.deletion_timestamp.is_some() {
            return Ok(Pass::ClusterGone);
        }
        if validate(&dc, &self.config.defaults).is_err() {
            return Ok(Pass::Invalid);
        }
        let pods = self.kube.list_pods(&self.namespace, &self.name).await?;
        let token = self.kube.agent_token(&self.namespace, &self.name).await?;
        let targets = self.targets(&pods, token.as_ref());
        let instances = self.observe(&dc, &pods, &targets, now).await;
        let annotations = dc.annotations().clone();
        let instance_count = u32::try_from(dc.spec.instances).unwrap_or(0);
        let mut parsed = requests::parse(&self.name, instance_count, &annotations);
        let previous = dc.status.clone().unwrap_or_default();
        let revision = self
            .kube
            .update_revision(&self.namespace, &self.name)
            .await?;
        let rollout = rollout::next(
            &self.name,
            &dc.spec,
            parsed.paused,
            &previous,
            &pods,
            revision.as_deref(),
            now,
        );
        if rollout == rollout::Step::SwitchoverAway && parsed.requests.is_empty() {
            info!("rolling update: switching the outdated primary over first");
            parsed.requests.push(rollout::switchover_request());
        }

        let obs = Observations {
            cluster: self.name.clone(),
            generation: dc.metadata.generation,
            paused_annotation: parsed.paused,
            instances,
            requests: parsed.requests,
            results: std::mem::take(&mut self.results),
        };
        let decision = engine::decide(&dc.spec, &previous, &obs, now);
        let mut status = decision.status;
        for r in &parsed.refusals {
            status.push_history(HistoryEntry::new(
                HistoryKind::Request,
                HistoryOutcome::Refused,
                now.to_string(),
                r.reason.clone(),
            ));
        }
        self.log_step(&previous, &status);
        if dc.status.as_ref() != Some(&status) {
            // Persisted BEFORE any action: a restarted operator resumes this step.
            let written = self.kube.patch_status(&dc, &status).await;
            if written.is_ok() {
                self.replaced = dc.metadata.resource_version.clone();
            }
            if let Err(e) = written {
                // The decision was made from an outdated object: read it past any cache.
                self.fresh = e.category() == Category::Conflict;
                // Nothing was carried out: the engine sees the same results next pass.
                let mut results = obs.results;
                results.append(&mut self.results);
                self.results = results;
                return Err(e);
            }
        }
        let transition = status.transition.is_some();
        let keep_instances = decision.keep_instances;
        let members = self.members(&dc, &pods);
        for action in decision.actions {
            self.act(&dc, &pods, &targets, &members, &annotations, action)
                .await;
        }
        for r in &parsed.refusals {
            self.refuse(&dc, r).await;
        }
        if !transition {
            if let rollout::Step::DeletePod(pod) | rollout::Step::DeletePrimary(pod) = &rollout {
                self.roll(&dc, pod).await;
            }
        }
        Ok(Pass::Done {
            transition,
            keep_instances,
        })
    }

    fn log_step(&self, before: &crate::api::DbClusterStatus, after: &crate::api::DbClusterStatus) {
        let step =
            |s: &crate::api::DbClusterStatus| s.transition.as_ref().map(|t| (t.kind, t.step));
        if step(before) == step(after) {
            return;
        }
        match &after.transition {
            Some(t) => {
                info!(transition = %t.kind, step = %t.step, target = t.target.as_deref().unwrap_or(""), "transition step")
            }
            None => {
                info!("no transition in progress")
            }
        }
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
        }
    }

    async fn observe(
        &mut self,
        dc: &DbCluster,
        pods: &[Pod],
        targets: &BTreeMap<String, AgentTarget>,
        now: Timestamp,
    ) -> Vec<InstanceObs> {
        let timeout = self.config.poll_timeout;
        let polls = targets.values().map(|t| {
            let agents = self.agents.clone();
            let t = t.clone();
            async move { (t.instance.clone(), agents.poll(&t, timeout).await) }
        });
        let answers: BTreeMap<String, _> =
            futures::future::join_all(polls).await.into_iter().collect();
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
                PlatformState::Gone
            } else {
                pods::platform_state(
                    pod,
                    self.answered.contains(&uid),
                    answer.is_some_and(|a| a.postgres_running),
                    now,
                    self.config.starting_grace,
                )
            };
            out.push((
                ordinal,
                InstanceObs {
                    name,
                    platform,
                    label: pods::role_label(pod),
                    agent: answer.map(crate::platform::report),
                    unanswered,
                },
            ));
        }
        // An instance of the spec without a pod is gone (deleted, not yet recreated).
        let want = u32::try_from(dc.spec.instances).unwrap_or(0);
        for ordinal in 0..want {
            if !out.iter().any(|(o, _)| *o == ordinal) {
                out.push((
                    ordinal,
                    InstanceObs {
                        name: keys::instance_name(&self.name, ordinal),
                        platform: PlatformState::Gone,
                        label: None,
                        agent: None,
                        unanswered: None,
                    },
                ));
            }
        }
        out.sort_by_key(|(o, _)| *o);
        out.into_iter().map(|(_, i)| i).collect()
    }

    #[instrument(skip_all, fields(instance = action.instance().unwrap_or(""), action = action.kind()))]
    async fn act(
        &mut self,
        dc: &DbCluster,
        pods: &[Pod],
        targets: &BTreeMap<String, AgentTarget>,
        members: &BTreeMap<String, Member>,
        annotations: &BTreeMap<String, String>,
        action: Action,
    ) {
        let ns = self.namespace.clone();
        match &action {
            Action::SetRole { instance, role } => {
                let pod = pods.iter().find(|p| p.name_any() == *instance);
                let result = match pod {
                    None => ActionResult::failed(
                        action.clone(),
                        format!("pod {instance} does not exist"),
                    ),
                    Some(p) if pods::role_label(p) == Some(*role) => {
                        ActionResult::ok(action.clone())
                    }
                    Some(_) => match self.kube.set_role_label(&ns, instance, role.as_str()).await {
                        Ok(()) => {
                            info!(role = role.as_str(), "role label set");
                            ActionResult::ok(action.clone())
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot set the role label");
                            ActionResult::failed(action.clone(), e.to_string())
                        }
                    },
                };
                self.results.push(result);
            }
            Action::FenceInstance { instance } => {
                warn!("fencing: deleting the pod of an unreachable instance");
                let result = match self.kube.delete_pod(&ns, instance, Some(0)).await {
                    Ok(()) => ActionResult::ok(action.clone()),
                    Err(e) => ActionResult::failed(action.clone(), e.to_string()),
                };
                self.results.push(result);
            }
            Action::Event {
                instance: _,
                type_,
                reason,
                message,
            } => {
                match type_ {
                    EventType::Normal => {
                        info!(event = %reason, "{message}")
                    }
                    EventType::Warning => {
                        warn!(event = %reason, "{message}")
                    }
                }
                if let Err(e) = self.kube.event(dc, *type_, reason, message).await {
                    warn!(error = %e, "could not publish event");
                }
            }
            Action::RequestDone { request } => {
                for key in requests::annotations_of(request) {
                    if let Some(value) = annotations.get(*key) {
                        if let Err(e) = self.kube.remove_annotation(dc, key, value).await {
                            warn!(annotation = %key, error = %e, "cannot remove the request annotation");
                        }
                    }
                }
            }
            _ => {
                let Some(instance) = action.instance().map(str::to_string) else {
                    return;
                };
                let key = action_key(&action);
                if self.in_flight.contains(&key) {
                    return;
                }
                let Some(target) = targets.get(&instance).cloned() else {
                    self.results.push(ActionResult::failed(
                        action,
                        format!("the agent of {instance} cannot be reached (no pod IP or no agent token)"),
                    ));
                    return;
                };
                let members = members.clone();
                self.in_flight.insert(key.clone());
                let tx = self.tx.clone();
                let agents = self.agents.clone();
                debug!(call = %key, "agent call");
                let call = async move {
                    let result = match agents.call(&target, &action, &members).await {
                        Ok(detail) => ActionResult {
                            action,
                            outcome: engine::Outcome::Succeeded { detail },
                        },
                        Err(message) => {
                            warn!(error = %message, "agent call failed");
                            ActionResult::failed(action, message)
                        }
                    };
                    let _ = tx.send((key, result));
                };
                // The spawned call keeps this action's span (cluster, instance, action).
                tokio::spawn(call.in_current_span());
            }
        }
    }

    /// Delete an outdated pod (with its grace period: postgres stops cleanly);
    /// the StatefulSet recreates it from the new template.
    async fn roll(&self, dc: &DbCluster, pod: &str) {
        let note = format!("deleting {pod} to recreate it from the updated pod template");
        info!(instance = %pod, "rolling update: {note}");
        if let Err(e) = self
            .kube
            .event(dc, EventType::Normal, rollout::REASON_ROLLING_UPDATE, &note)
            .await
        {
            warn!(error = %e, "could not publish event");
        }
        if let Err(e) = self.kube.delete_pod(&self.namespace, pod, None).await {
            warn!(instance = %pod, error = %e, "rolling update: cannot delete the pod");
        }
    }

    async fn refuse(&self, dc: &DbCluster, r: &Refusal) {
        warn!(annotation = %r.key, "{}", r.reason);
        if let Err(e) = self
            .kube
            .event(dc, EventType::Warning, reasons::REQUEST_REFUSED, &r.reason)
            .await
        {
            warn!(error = %e, "could not publish event");
        }
        if let Err(e) = self.kube.remove_annotation(dc, &r.key, &r.value).await {
            warn!(annotation = %r.key, error = %e, "cannot remove the refused annotation");
        }
    }
}
