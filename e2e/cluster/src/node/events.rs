//! Kubernetes Events about pods, as a kubelet reports them (Started, Killing,
//! Unhealthy, BackOff, Failed, FailedMount), so that `kubectl describe` and the
//! e2e failure dumps show what happened on the node. I/O (API); failures are
//! logged, never fatal.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The recorder of a node's stand-in (reporting controller `kubelet`, instance = node).
pub fn recorder(client: kube::Client, node: &str) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: "kubelet".into(),
            instance: Some(node.to_string()),
        },
    )
}

/// The reference of `pod` for its Events.
pub fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// Whether the Event is a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Normal.
    Normal,
    /// Warning.
    Warning,
}

/// Publish an Event about `pod`.
pub async fn emit(rec: &Recorder, pod: &ObjectReference, kind: Kind, reason: &str, note: String) {
    let ev = Event {
        type_: match kind {
            Kind::Normal => EventType::Normal,
            Kind::Warning => EventType::Warning,
        },
        reason: reason.into(),
        note: Some(note.chars().take(1024).collect()),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = rec.publish(&ev, pod).await {
        tracing::debug!(reason, error = %e, "event");
    }
}
