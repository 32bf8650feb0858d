//! The reconcile pipeline (observe → validate → build → apply, then the HA
//! loop of the cluster, or the status of a refused spec) and the error
//! policy. Does I/O through the steps that need it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};

use super::build::build_children;
use super::error::{backoff, Category, Error, Invalid};
use super::metrics::Metrics;
use super::status::{patch_status, refused_status};
use super::validate::{validate, Defaults};
use super::watched::WatchedDbCluster;
use super::{apply, observe};
use crate::api::DbCluster;

/// Event notes are limited to 1 kB by the API.
const EVENT_NOTE_MAX: usize = 1000;

/// Settings of the reconcile loop, parsed once from the flags.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// Defaults for fields the spec may leave out.
    pub defaults: Defaults,
    /// Requeue interval after a successful reconcile.
    pub requeue: Duration,
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events on DbClusters.
    pub recorder: Recorder,
    /// Reconcile counters.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub config: ReconcileConfig,
    /// Consecutive transient failures per cluster (namespace/name), for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The HA loops: each valid cluster gets one, and it owns the status.
    pub ha: Arc<HaRegistry>,
}

/// The HA loops of the running operator.
pub type HaRegistry = super::ha::Registry<super::ha::KubeClient, super::ha::HttpAgents>;

impl Context {
    /// A context with no failures recorded, starting an HA loop in `ha` per valid cluster.
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        config: ReconcileConfig,
        ha: Arc<HaRegistry>,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            config,
            failures: Mutex::new(HashMap::new()),
            ha,
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // A poisoned map only holds counters: keep using it.
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key(dc: &DbCluster) -> String {
    format!("{}/{}", dc.namespace().unwrap_or_default(), dc.name_any())
}

/// Reconcile one DbCluster as the watch delivered it: a readable one goes
/// through [`reconcile`]; one the operator cannot deserialize is reported on
/// its own (a WARN log and a Warning Event naming the field) and waits for a
/// change, while every other cluster carries on.
pub async fn reconcile_watched(
    obj: Arc<WatchedDbCluster>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let unreadable = match &obj.parsed {
        Ok(dc) => return reconcile(dc.clone(), ctx).await,
        Err(e) => e.clone(),
    };
    let started = Instant::now();
    let error = Error::Unreadable(unreadable);
    ctx.metrics
        .record(Some(error.category()), started.elapsed());
    let cluster = obj.metadata.name.clone().unwrap_or_default();
    let namespace = obj.metadata.namespace.clone().unwrap_or_default();
    tracing::warn!(%cluster, %namespace, category = error.category().as_label(), error = %error, "DbCluster not readable");
    publish_warning(
        &obj.object_ref(&()),
        &cluster,
        &ctx,
        error.category().event_reason(),
        "Read",
        error.to_string(),
    )
    .await;
    Err(error)
}

/// [`error_policy`] for the watched form; an unreadable object waits for a change.
pub fn error_policy_watched(
    obj: Arc<WatchedDbCluster>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    match &obj.parsed {
        Ok(dc) => error_policy(dc.clone(), error, ctx),
        Err(_) => Action::await_change(),
    }
}

/// Reconcile one DbCluster; counts the outcome in the metrics.
pub async fn reconcile(dc: Arc<DbCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let cluster = dc.name_any();
    let namespace = dc.namespace().unwrap_or_default();
    let result = run_pipeline(&dc, &ctx).await;
    ctx.metrics.record(
        result.as_ref().err().map(Error::category),
        started.elapsed(),
    );
    match &result {
        Ok(_) => {
            ctx.failures().remove(&key(&dc));
            tracing::debug!(%cluster, %namespace, "reconciled");
        }
        Err(e) => {
            tracing::warn!(%cluster, %namespace, category = e.category().as_label(), error = %e, "reconcile failed");
            // A refused spec has already been reported with its own Event.
            if e.category() != Category::InvalidSpec {
                warn(
                    &dc,
                    &ctx,
                    e.category().event_reason(),
                    "Reconcile",
                    e.to_string(),
                )
                .await;
            }
        }
    }
    result
}

/// Publish a Warning Event on the DbCluster; best effort (the log has it too).
async fn warn(dc: &DbCluster, ctx: &Context, reason: &str, action: &str, note: String) {
    publish_warning(
        &dc.object_ref(&()),
        &dc.name_any(),
        ctx,
        reason,
        action,
        note,
    )
    .await;
}

async fn publish_warning(
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
    cluster: &str,
    ctx: &Context,
    reason: &str,
    action: &str,
    mut note: String,
) {
    if note.len() > EVENT_NOTE_MAX {
        let mut cut = EVENT_NOTE_MAX;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, regarding).await {
        tracing::warn!(%cluster, error = %e, "could not publish event");
    }
}

async fn run_pipeline(dc: &DbCluster, ctx: &Context) -> Result<Action, Error> {
    if dc.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the children.
        return Ok(Action::await_change());
    }
    let namespace = dc.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = dc.name_any();
    let observed = observe::observe(&ctx.client, &namespace, &name).await?;
    let mut cluster = match validate(dc, &ctx.config.defaults) {
        Ok(cluster) => cluster,
        Err(Error::InvalidSpec(invalid)) => {
            refuse(dc, ctx, &invalid).await?;
            return Err(Error::InvalidSpec(invalid));
        }
        Err(e) => return Err(e),
    };
    let keep = ctx.ha.keep_instances(&namespace, &name);
    cluster.spec.instances = replicas(dc, keep);
    let children = build_children(&cluster, &observed.missing_secrets(), &mut rand::rng());
    let applied = apply::apply(&ctx.client, &cluster, children, &observed.pods).await;
    // The HA loop is the single writer of this cluster's status, and it runs
    // whatever the apply did: a child the API server refuses (an immutable
    // StatefulSet field, RBAC, a webhook) must not leave a running primary
    // unfenced and without failover.
    ctx.ha.ensure(&namespace, &name);
    applied?;
    Ok(Action::requeue(ctx.config.requeue))
}

/// StatefulSet replicas: `spec.instances`, but never fewer than the ordinals
/// the HA engine keeps, nor fewer than needed to keep the current primary's pod
/// (a primary on a scaled-away ordinal is switched over first).
pub fn replicas(dc: &DbCluster, keep: Option<u32>) -> i32 {
    let name = dc.name_any();
    let primary = dc
        .status
        .as_ref()
        .and_then(|s| s.current_primary.as_deref())
        .and_then(|p| crate::api::keys::instance_ordinal(&name, p))
        .map_or(0, |o| o.saturating_add(1));
    let floor = i32::try_from(primary.max(keep.unwrap_or(0))).unwrap_or(i32::MAX);
    dc.spec.instances.max(floor)
}

/// A refused spec: a Warning Event and Ready=False; no child is touched.
async fn refuse(dc: &DbCluster, ctx: &Context, invalid: &Invalid) -> Result<(), Error> {
    let reason = Category::InvalidSpec.event_reason();
    warn(dc, ctx, reason, "Validate", invalid.to_string()).await;
    let status = refused_status(dc, invalid, &Timestamp::now().to_string());
    patch_status(&ctx.client, dc, status).await
}

/// Invalid specs wait for a change; transient errors back off exponentially.
pub fn error_policy(dc: Arc<DbCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let category = error.category();
    if !category.is_transient() {
        return Action::await_change();
    }
    let failures = {
        let mut map = ctx.failures();
        let n = map.entry(key(&dc)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    Action::requeue(backoff(failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(instances: i32, primary: Option<&str>) -> DbCluster {
        let mut dc = DbCluster::new("main", crate::api::DbClusterSpec::default().into());
        dc.spec.instances = instances;
        dc.status = Some(crate::api::DbClusterStatus {
            current_primary: primary.map(str::to_string),
            ..Default::default()
        });
        dc
    }

    #[test]
    fn scale_down_keeps_the_primarys_pod_until_it_is_switched_over() {
        assert_eq!(replicas(&cluster(3, Some("main-0")), None), 3);
        assert_eq!(replicas(&cluster(2, Some("main-0")), Some(2)), 2);
        // The primary is main-2: scaling to 2 keeps 3 pods until the engine moved it.
        assert_eq!(replicas(&cluster(2, Some("main-2")), None), 3);
        assert_eq!(replicas(&cluster(2, Some("main-1")), Some(3)), 3);
        assert_eq!(replicas(&cluster(5, None), Some(3)), 5);
    }
}
