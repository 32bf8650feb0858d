//! The Kubernetes API as the HA loop uses it: a small trait (so flow tests can
//! fake it and record every call) and its implementation over a kube
//! `Client`, which reads from the controller's watch caches
//! ([`crate::controller::stores`]) and writes to the API server. Does I/O.

use std::future::Future;

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder};
use kube::{Api, Client, Resource};

use super::agents::Token;
use crate::api::{keys, DbCluster, DbClusterStatus};
use crate::controller::apply::{apply_params, FIELD_MANAGER};
use crate::controller::error::Error;
use crate::controller::stores::{Stores, AGENT_TOKEN_KEY};
use crate::engine::EventType;

/// Event notes are limited to 1 kB by the API.
const EVENT_NOTE_MAX: usize = 1000;

/// Everything the HA loop asks of the API server.
pub trait KubeOps: Send + Sync + 'static {
    /// Resolves once the reads below see a complete picture (every watch
    /// cache listed once); `false` when they never will.
    fn synced(&self) -> impl Future<Output = bool> + Send {
        async { true }
    }

    /// The DbCluster, or `None` when it no longer exists.
    fn get_cluster(
        &self,
        ns: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<DbCluster>, Error>> + Send;

    /// The cluster's pods (label `tandem.dev/cluster=<name>`).
    fn list_pods(
        &self,
        ns: &str,
        cluster: &str,
    ) -> impl Future<Output = Result<Vec<Pod>, Error>> + Send;

    /// Key `token` of Secret `<cluster>-agent-token`, `None` while it does not exist.
    fn agent_token(
        &self,
        ns: &str,
        cluster: &str,
    ) -> impl Future<Output = Result<Option<Token>, Error>> + Send;

    /// The DbCluster as the API server holds it now (a read past any cache),
    /// after a status write was refused because the object changed.
    fn get_cluster_fresh(
        &self,
        ns: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<DbCluster>, Error>> + Send {
        self.get_cluster(ns, name)
    }

    /// Write the whole status on the status subresource, only if the object
    /// is still at `dc`'s resourceVersion: a writer that decided from an older
    /// object (a stale leader) gets a Conflict instead of overwriting a newer step.
    fn patch_status(
        &self,
        dc: &DbCluster,
        status: &DbClusterStatus,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Set label `tandem.dev/role` of a pod.
    fn set_role_label(
        &self,
        ns: &str,
        pod: &str,
        role: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Delete a pod: at once (`grace_seconds` 0, fencing) or with its own
    /// grace period (`None`, a rolling update); a pod already gone is fine.
    fn delete_pod(
        &self,
        ns: &str,
        pod: &str,
        grace_seconds: Option<u32>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// `status.updateRevision` of the cluster's StatefulSet, if it exists.
    fn update_revision(
        &self,
        ns: &str,
        cluster: &str,
    ) -> impl Future<Output = Result<Option<String>, Error>> + Send;

    /// Remove annotation `key` of the DbCluster if its value is still `value`.
    fn remove_annotation(
        &self,
        dc: &DbCluster,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Whether node `node` is cordoned (`spec.unschedulable`, as `kubectl
    /// drain` sets it); false when it cannot be read.
    fn node_unschedulable(&self, node: &str) -> impl Future<Output = bool> + Send {
        let _ = node;
        async { false }
    }

    /// Publish an Event on the DbCluster.
    fn event(
        &self,
        dc: &DbCluster,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// [`KubeOps`] over a kube client: reads from the watch caches, writes to the API server.
pub struct KubeClient {
    /// The client.
    pub client: Client,
    /// Publishes the Events.
    pub recorder: Recorder,
    /// The controller's watch caches.
    pub stores: Stores,
}

fn ns_of(dc: &DbCluster) -> Result<String, Error> {
    dc.meta()
        .namespace
        .clone()
        .ok_or(Error::MissingMetadata("namespace"))
}

fn name_of(dc: &DbCluster) -> String {
    dc.meta().name.clone().unwrap_or_default()
}

/// A JSON pointer segment (RFC 6901) for an annotation key.
pub fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Cut an Event note to the API's limit on a character boundary.
pub fn truncate_note(note: &str) -> String {
    let mut cut = note.len().min(EVENT_NOTE_MAX);
    while !note.is_char_boundary(cut) {
        cut -= 1;
    }
    note[..cut].to_string()
}

impl KubeOps for KubeClient {
    async fn synced(&self) -> bool {
        self.stores.synced().await
    }

    async fn get_cluster(&self, ns: &str, name: &str) -> Result<Option<DbCluster>, Error> {
        match self.stores.cluster(ns, name) {
            None => Ok(None),
            Some(w) => match &w.parsed {
                Ok(dc) => Ok(Some((**dc).clone())),
                Err(e) => Err(Error::Unreadable(e.clone())),
            },
        }
    }

    async fn get_cluster_fresh(&self, ns: &str, name: &str) -> Result<Option<DbCluster>, Error> {
        Api::<DbCluster>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| Error::kube("get", "DbCluster", name, e))
    }

    async fn list_pods(&self, ns: &str, cluster: &str) -> Result<Vec<Pod>, Error> {
        Ok(self.stores.pods(ns, cluster))
    }

    async fn node_unschedulable(&self, node: &str) -> bool {
        match Api::<Node>::all(self.client.clone()).get_opt(node).await {
            Ok(n) => n
                .and_then(|n| n.spec)
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            Err(e) => {
                tracing::debug!(%node, error = %e, "could not read the node");
                false
            }
        }
    }

    async fn agent_token(&self, ns: &str, cluster: &str) -> Result<Option<Token>, Error> {
        let name = keys::secret_agent_token(cluster);
        let secret = match self.stores.secret(ns, &name) {
            Some(s) => Some((*s).clone()),
            // Not a Secret tandem labelled (created by hand) or not there yet: ask.
            None => Api::<Secret>::namespaced(self.client.clone(), ns)
                .get_opt(&name)
                .await
                .map_err(|e| Error::kube("get", "Secret", &name, e))?,
        };
        Ok(secret
            .and_then(|s| s.data)
            .and_then(|d| d.get(AGENT_TOKEN_KEY).cloned())
            .and_then(|b| String::from_utf8(b.0).ok())
            .map(|t| Token(t.trim().to_string()))
            .filter(|t| !t.0.is_empty()))
    }

    async fn patch_status(&self, dc: &DbCluster, status: &DbClusterStatus) -> Result<(), Error> {
        let name = name_of(dc);
        let api = Api::<DbCluster>::namespaced(self.client.clone(), &ns_of(dc)?);
        let status = serde_json::to_value(status).map_err(|source| Error::Encode {
            kind: "DbClusterStatus",
            name: name.clone(),
            source,
        })?;
        // Conditional on the resourceVersion `dc` was read at.
        let body = crate::controller::status::status_apply_body(dc, status);
        api.patch_status(&name, &apply_params(), &Patch::Apply(&body))
            .await
            .map_err(|e| Error::kube("apply status", "DbCluster", &name, e))?;
        Ok(())
    }

    async fn set_role_label(&self, ns: &str, pod: &str, role: &str) -> Result<(), Error> {
        let body = serde_json::json!({"metadata": {"labels": {keys::LABEL_ROLE: role}}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .patch(pod, &params, &Patch::Merge(&body))
            .await
            .map_err(|e| Error::kube("patch", "Pod", pod, e))?;
        Ok(())
    }

    async fn delete_pod(
        &self,
        ns: &str,
        pod: &str,
        grace_seconds: Option<u32>,
    ) -> Result<(), Error> {
        let params = DeleteParams {
            grace_period_seconds: grace_seconds,
            ..DeleteParams::default()
        };
        match Api::<Pod>::namespaced(self.client.clone(), ns)
            .delete(pod, &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(Error::kube("delete", "Pod", pod, e)),
        }
    }

    async fn update_revision(&self, ns: &str, cluster: &str) -> Result<Option<String>, Error> {
        Ok(self
            .stores
            .stateful_set(ns, cluster)
            .and_then(|s| s.status.clone())
            .and_then(|s| s.update_revision)
            .filter(|r| !r.is_empty()))
    }

    async fn remove_annotation(&self, dc: &DbCluster, key: &str, value: &str) -> Result<(), Error> {
        let name = name_of(dc);
        let path = format!("/metadata/annotations/{}", pointer_segment(key));
        // `test` first: a value the user changed meanwhile is a new request, kept.
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "test", "path": path, "value": value},
            {"op": "remove", "path": path},
        ]))
        .map_err(|source| Error::Encode {
            kind: "JsonPatch",
            name: name.clone(),
            source,
        })?;
        match Api::<DbCluster>::namespaced(self.client.clone(), &ns_of(dc)?)
            .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
        {
            Ok(_) => Ok(()),
            // The test failed (changed or already removed) or the cluster is gone.
            Err(kube::Error::Api(s)) if s.code == 422 || s.is_not_found() => Ok(()),
            Err(e) => Err(Error::kube("patch", "DbCluster", &name, e)),
        }
    }

    async fn event(
        &self,
        dc: &DbCluster,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> Result<(), Error> {
        let event = Event {
            type_: match type_ {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: reason.into(),
            note: Some(truncate_note(note)),
            action: "HighAvailability".into(),
            secondary: None,
        };
        self.recorder
            .publish(&event, &dc.object_ref(&()))
            .await
            .map_err(|e| Error::kube("create", "Event", reason, e))
    }
}
