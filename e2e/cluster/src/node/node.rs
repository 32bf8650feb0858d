//! The Node object and its heartbeats: register (or reuse) the Node with its
//! labels, pod CIDR, addresses, capacity and kubelet endpoint; renew the Lease
//! `kube-node-lease/<node>` and post the Node's status every 10 s. I/O (API).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::ctx::Ctx;
use crate::config::GATEWAY;

/// CPU cores each node reports.
pub const CPUS: u64 = 2;
/// Memory each node reports (8Gi).
pub const MEMORY_BYTES: u64 = 8 << 30;
/// The kubelet version reported.
pub const KUBELET_VERSION: &str = "v1.37.2";
/// How often the Lease and the status are renewed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// The Lease's duration.
pub const LEASE_SECONDS: i32 = 40;
const LEASE_NAMESPACE: &str = "kube-node-lease";

fn capacity() -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity(CPUS.to_string())),
        ("memory".to_string(), Quantity("8Gi".into())),
        ("pods".to_string(), Quantity("110".into())),
        ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
    ])
}

fn conditions(ready_since: Timestamp, now: Timestamp) -> Vec<NodeCondition> {
    let c =
        |kind: &str, status: &str, reason: &str, message: &str, since: Timestamp| NodeCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(Time(since)),
        };
    vec![
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
            ready_since,
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
            ready_since,
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
            ready_since,
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "tandem test cluster node stand-in is posting ready status",
            ready_since,
        ),
    ]
}

fn status(ctx: &Ctx, port: u16, ready_since: Timestamp) -> NodeStatus {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: GATEWAY.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: ctx.node.clone(),
            },
        ]),
        allocatable: Some(capacity()),
        capacity: Some(capacity()),
        conditions: Some(conditions(ready_since, Timestamp::now())),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id,
            container_runtime_version: "tandem://0.1.0".into(),
            kernel_version: kernel,
            kube_proxy_version: KUBELET_VERSION.into(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: format!("tandem-testcluster-{}", ctx.node),
            operating_system: "linux".into(),
            os_image: "tandem test cluster node stand-in".into(),
            system_uuid: format!("tandem-testcluster-{}", ctx.node),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Create the Node, or reuse the one a previous run registered; returns when
/// the Node and its status are posted (retries until the API answers).
pub async fn register(ctx: &Ctx, port: u16) -> Timestamp {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let (subnet, bits) = ctx
        .cfg
        .node_pod_subnet(&ctx.node)
        .unwrap_or((std::net::Ipv4Addr::new(198, 18, 0, 0), 24));
    let cidr = format!("{subnet}/{bits}");
    let mut delay = Duration::from_millis(200);
    loop {
        let result = async {
            if api.get_opt(&ctx.node).await?.is_none() {
                let node = Node {
                    metadata: ObjectMeta {
                        name: Some(ctx.node.clone()),
                        labels: Some(BTreeMap::from([
                            ("kubernetes.io/hostname".to_string(), ctx.node.clone()),
                            ("kubernetes.io/os".to_string(), "linux".to_string()),
                            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
                            ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
                            ("beta.kubernetes.io/arch".to_string(), "amd64".to_string()),
                        ])),
                        ..ObjectMeta::default()
                    },
                    spec: Some(NodeSpec {
                        pod_cidr: Some(cidr.clone()),
                        pod_cidrs: Some(vec![cidr.clone()]),
                        ..NodeSpec::default()
                    }),
                    status: None,
                };
                match api.create(&PostParams::default(), &node).await {
                    Ok(_) => tracing::info!(node = %ctx.node, "node registered"),
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(e),
                }
            } else {
                tracing::info!(node = %ctx.node, "reusing the existing Node");
            }
            let since = Timestamp::now();
            post_status(ctx, port, since).await?;
            Ok::<_, kube::Error>(since)
        }
        .await;
        match result {
            Ok(since) => return since,
            Err(e) => {
                tracing::warn!(node = %ctx.node, error = %e, "registering the node");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn post_status(ctx: &Ctx, port: u16, since: Timestamp) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let body = serde_json::json!({ "status": status(ctx, port, since) });
    api.patch_status(&ctx.node, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map(|_| ())
}

async fn renew_lease(ctx: &Ctx) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
    let now = MicroTime(Timestamp::now());
    let body = serde_json::json!({ "spec": {
        "holderIdentity": ctx.node,
        "leaseDurationSeconds": LEASE_SECONDS,
        "renewTime": now,
    }});
    match api
        .patch(&ctx.node, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let owner = Api::<Node>::all(ctx.client.clone())
                .get_opt(&ctx.node)
                .await?
                .and_then(|n| n.metadata.uid)
                .map(|uid| OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: ctx.node.clone(),
                    uid,
                    ..OwnerReference::default()
                });
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(ctx.node.clone()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: owner.map(|o| vec![o]),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(ctx.node.clone()),
                    lease_duration_seconds: Some(LEASE_SECONDS),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether the Node's Ready condition is True in the API now (true when unknown).
async fn ready_in_api(ctx: &Ctx) -> bool {
    let api: Api<Node> = Api::all(ctx.client.clone());
    match api.get_opt(&ctx.node).await {
        Ok(Some(n)) => n
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        _ => true,
    }
}

/// Renew the Lease and post the status every [`HEARTBEAT`], until the process ends.
pub async fn heartbeat(ctx: &Ctx, port: u16, since: Timestamp) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    // After a freeze the missed ticks do not all fire at once.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since = since;
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if let Err(e) = renew_lease(ctx).await {
            tracing::warn!(node = %ctx.node, error = %e, "lease renewal");
        }
        // After a silence (frozen, API down) the node lifecycle controller may
        // have set Ready to Unknown: posting True again is a new transition.
        if last_ok.elapsed() > HEARTBEAT * 2 && !ready_in_api(ctx).await {
            since = Timestamp::now();
        }
        match post_status(ctx, port, since).await {
            Ok(()) => last_ok = tokio::time::Instant::now(),
            Err(e) => tracing::warn!(node = %ctx.node, error = %e, "node status"),
        }
    }
}
