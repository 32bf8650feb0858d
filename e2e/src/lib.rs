//! End-to-end suite for tandem against the Kubernetes cluster in KUBECONFIG.
//! The suite itself lives in `tests/` (every test `#[ignore]`d: `make e2e`
//! runs them with `--ignored` on kind); this crate holds the shared helpers:
//! temporary namespaces, waiting on conditions with timeouts (the testkit's
//! bounded waits, never bare sleeps), applying the examples, SQL through `<name>-rw` from a pod, and
//! reading Services' endpoints and Events. Does I/O against the cluster.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{await_condition as kube_await, Condition};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tandem::api::{keys, DbCluster, DbClusterStatus, Phase};
use tandem_testkit::poll_until_async;

pub mod kubectl;
pub mod sql;

pub use kubectl::*;
pub use sql::*;

/// What can go wrong in a helper.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// A call to the API server failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was attempted.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A condition did not hold in time.
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        secs: u64,
    },
    /// A manifest could not be read or parsed.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// A command-line tool could not be run or failed.
    #[error("{command}: {message}")]
    Tool {
        /// The command line.
        command: String,
        /// What went wrong (exit code and stderr).
        message: String,
    },
    /// A SQL pod failed.
    #[error("sql pod {pod} failed: {logs}")]
    Sql {
        /// The pod.
        pod: String,
        /// Its output.
        logs: String,
    },
}

/// Result of a helper.
pub type Result<T> = std::result::Result<T, E2eError>;

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> E2eError {
    let what = what.into();
    move |source| E2eError::Kube { what, source }
}

/// The namespace the chart was installed into (`make e2e` sets it).
pub fn operator_namespace() -> String {
    std::env::var("E2E_OPERATOR_NAMESPACE").unwrap_or_else(|_| "tandem-system".into())
}

/// Where the suite runs (`E2E_PLATFORM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// The test cluster of DESIGN.md §8 (`make test`): real control plane, pods as processes.
    TestCluster,
    /// kind with real images (`make e2e`).
    Kind,
}

/// The platform `E2E_PLATFORM` names (`testcluster` or `kind`, the default).
pub fn platform() -> Platform {
    match std::env::var("E2E_PLATFORM").as_deref() {
        Ok("testcluster") => Platform::TestCluster,
        _ => Platform::Kind,
    }
}

/// Fault injection on a node of the test cluster, as `make kube-node
/// NODE=<node> ACTION=<action>` does (`freeze`, `thaw`, `kill`, `start`).
pub async fn node_action(node: &str, action: &str) -> Result<()> {
    let command = format!("node {node} {action}");
    if platform() != Platform::TestCluster {
        return Err(E2eError::Tool {
            command,
            message: "node faults need the test cluster (E2E_PLATFORM=testcluster)".into(),
        });
    }
    let bin = testcluster_bin();
    let dir = std::env::var("KUBE_DIR").map_err(|_| E2eError::Tool {
        command: command.clone(),
        message: "KUBE_DIR (the test cluster's directory) is not set".into(),
    })?;
    let out = run(
        &bin,
        &["node", "--dir", &dir, "--node", node, "--action", action],
    )
    .await?;
    if out.ok() {
        Ok(())
    } else {
        Err(E2eError::Tool {
            command,
            message: format!("exit {}: {}", out.code, out.stderr.trim()),
        })
    }
}

/// The `tandem-testcluster` binary (`E2E_TESTCLUSTER_BIN`, else the debug build).
fn testcluster_bin() -> String {
    std::env::var("E2E_TESTCLUSTER_BIN").unwrap_or_else(|_| {
        repo_path("target/debug/tandem-testcluster")
            .to_string_lossy()
            .into_owned()
    })
}

/// Undoes a node fault when dropped, whatever the test did (a panic
/// included): runs the node `action` (`thaw`, `start`) synchronously,
/// unless [`NodeBack::disarm`]ed because the test already did.
pub struct NodeBack {
    node: Option<String>,
    action: &'static str,
}

impl NodeBack {
    /// Run `action` on `node` when dropped.
    pub fn new(node: &str, action: &'static str) -> Self {
        Self {
            node: Some(node.to_string()),
            action,
        }
    }

    /// The test undid the fault itself: nothing to do when dropped.
    pub fn disarm(&mut self) {
        self.node = None;
    }
}

impl Drop for NodeBack {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            let dir = std::env::var("KUBE_DIR").unwrap_or_default();
            let _ = std::process::Command::new(testcluster_bin())
                .args([
                    "node",
                    "--dir",
                    &dir,
                    "--node",
                    &node,
                    "--action",
                    self.action,
                ])
                .status();
        }
    }
}

/// The node pod `pod` is bound to.
pub async fn node_of(client: &Client, ns: &str, pod: &str) -> Result<String> {
    let p = Api::<Pod>::namespaced(client.clone(), ns)
        .get(pod)
        .await
        .map_err(kube_err(format!("get pod {pod}")))?;
    p.spec
        .and_then(|s| s.node_name)
        .ok_or_else(|| E2eError::Tool {
            command: format!("node of {pod}"),
            message: "the pod is not bound to a node".into(),
        })
}

/// The postgres image DbClusters use (the chart's `postgresImage`).
pub fn postgres_image() -> String {
    std::env::var("E2E_POSTGRES_IMAGE").unwrap_or_else(|_| "tandem-postgres:dev".into())
}

/// A client for the cluster in KUBECONFIG.
pub async fn client() -> Result<Client> {
    // Both ring and aws-lc-rs are linked in: pick one for the process, as the binaries do.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_default()
        .await
        .map_err(kube_err("connecting (KUBECONFIG)"))
}

/// How often [`eventually`] probes, and how soon a watch ended by the API server is started again.
pub const POLL: Duration = Duration::from_millis(500);

/// Wait until `cond` holds for object `name`, at most `timeout`. A watch the
/// API server ends (for example "too old resource version") is started again.
pub async fn await_condition<K>(
    api: Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl Condition<K> + Clone,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let last_error = std::cell::RefCell::new(String::new());
    let outcome = poll_until_async(timeout, POLL, || {
        let (api, cond, last_error) = (api.clone(), cond.clone(), &last_error);
        async move {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, kube_await(api, name, cond)).await {
                Ok(Ok(found)) => Some(found),
                Ok(Err(e)) => {
                    *last_error.borrow_mut() = format!(" (last watch error: {e})");
                    None
                }
                Err(_) => None,
            }
        }
    })
    .await;
    match outcome {
        Some(Some(obj)) => Ok(obj),
        Some(None) => Err(E2eError::Timeout {
            what: format!("{what} (object {name} deleted)"),
            secs: timeout.as_secs(),
        }),
        None => Err(E2eError::Timeout {
            what: format!("{what}{}", last_error.borrow()),
            secs: timeout.as_secs(),
        }),
    }
}

/// Poll `probe` every [`POLL`] until it returns `Some`, at most `timeout`
/// (the testkit's bounded wait, failing with [`E2eError::Timeout`]).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until_async(timeout, POLL, probe)
        .await
        .ok_or_else(|| E2eError::Timeout {
            what: what.into(),
            secs: timeout.as_secs(),
        })
}

/// Run `test` in a fresh namespace that is deleted afterwards, even when the test panics.
pub async fn with_temp_ns<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let client = client().await.expect("a Kubernetes cluster in KUBECONFIG");
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000_000)
        .unwrap_or(0);
    let ns = format!("e2e-{prefix}-{suffix}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut obj = Namespace::default();
    obj.metadata.name = Some(ns.clone());
    namespaces
        .create(&PostParams::default(), &obj)
        .await
        .expect("create the test namespace");
    let outcome = std::panic::AssertUnwindSafe(test(client.clone(), ns.clone()))
        .catch_unwind()
        .await;
    if outcome.is_err() {
        kubectl::dump(&ns).await;
    }
    if std::env::var_os("E2E_KEEP_NAMESPACES").is_none() {
        let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Fail unless the operator's Deployment has an available replica.
pub async fn expect_operator(client: &Client) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &operator_namespace());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list operator deployments"))?;
    let name = list
        .items
        .iter()
        .filter_map(|d| d.metadata.name.clone())
        .find(|n| n.contains("tandem"))
        .ok_or_else(|| E2eError::Timeout {
            what: format!("an operator Deployment in {}", operator_namespace()),
            secs: 0,
        })?;
    await_condition(
        api,
        &name,
        "operator available",
        Duration::from_secs(120),
        |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref())
                .and_then(|s| s.available_replicas)
                .unwrap_or(0)
                > 0
        },
    )
    .await
    .map(|_| ())
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The path of a file in the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    repo_root().join(rel)
}

/// `kubectl apply -f deploy/examples/<file>` in `ns`, as a user does; returns
/// the DbCluster's name.
pub async fn apply_example(_client: &Client, ns: &str, file: &str) -> Result<String> {
    let path = repo_path(&format!("deploy/examples/{file}"));
    let path = path.to_string_lossy();
    let out = kubectl_ok(&["apply", "-n", ns, "-f", &path, "-o", "name"]).await?;
    let name = out
        .lines()
        .find_map(|l| l.strip_prefix("dbcluster.tandem.dev/"))
        .ok_or_else(|| E2eError::Manifest {
            path: path.to_string(),
            message: format!("kubectl apply printed no DbCluster: {out:?}"),
        })?;
    Ok(name.trim().to_string())
}

/// The status of DbCluster `name`.
pub async fn status(client: &Client, ns: &str, name: &str) -> Result<DbClusterStatus> {
    Ok(Api::<DbCluster>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(kube_err(format!("get DbCluster {name}")))?
        .status
        .unwrap_or_default())
}

/// Wait until every instance is ready, a primary is set and no transition runs.
pub async fn wait_healthy(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<DbCluster> {
    let api: Api<DbCluster> = Api::namespaced(client.clone(), ns);
    await_condition(
        api,
        name,
        &format!("{name} healthy"),
        timeout,
        |dc: Option<&DbCluster>| {
            let Some(dc) = dc else { return false };
            let want = format!("{n}/{n}", n = dc.spec.instances);
            dc.status.as_ref().is_some_and(|s| {
                s.current_primary.is_some()
                    && s.transition.is_none()
                    && s.ready_instances.as_deref() == Some(want.as_str())
                    && matches!(s.phase, Some(Phase::Healthy | Phase::Paused))
            })
        },
    )
    .await
}

/// The current primary of DbCluster `name`; panics (a test failure) when there is none.
pub async fn primary(client: &Client, ns: &str, name: &str) -> String {
    status(client, ns, name)
        .await
        .expect("status")
        .current_primary
        .expect("a current primary")
}

/// With the operator running, `kubectl apply` example `file` in `ns` and wait
/// (at most `timeout`) until the cluster is healthy; its name. Panics on failure.
pub async fn healthy_example(client: &Client, ns: &str, file: &str, timeout: Duration) -> String {
    expect_operator(client).await.expect("operator running");
    let name = apply_example(client, ns, file).await.expect("apply");
    wait_healthy(client, ns, &name, timeout)
        .await
        .expect("healthy");
    name
}

/// After a failover from `old` to `new` under sync+required: wait (at most
/// `timeout`) until the cluster is healthy again, then check that `new` is
/// primary, that history records the failover with 0 bytes possibly lost,
/// and that `old` rejoined as a standby. Panics (a test failure) otherwise.
pub async fn expect_lossless_failover_and_rejoin(
    client: &Client,
    ns: &str,
    name: &str,
    old: &str,
    new: &str,
    timeout: Duration,
) {
    let st = wait_healthy(client, ns, name, timeout)
        .await
        .expect("healthy again")
        .status
        .expect("status");
    assert_eq!(st.current_primary.as_deref(), Some(new));
    let failover = st
        .history
        .iter()
        .rev()
        .find(|e| e.kind == "Failover")
        .expect("failover in history");
    assert_eq!(
        failover.bytes_possibly_lost,
        Some(0),
        "sync+required loses nothing: {failover:?}"
    );
    let labels = role_labels(client, ns, name).await.expect("labels");
    assert_eq!(
        labels.get(old).map(String::as_str),
        Some(keys::ROLE_STANDBY),
        "the old primary rejoins as a standby: {labels:?}"
    );
}

/// `kubectl patch dbcluster/<name> --type=merge -p <patch>` in `ns`, whatever its exit code.
pub async fn patch_cluster(ns: &str, name: &str, patch: &str) -> Result<Output> {
    let target = format!("dbcluster/{name}");
    kubectl(&["patch", "-n", ns, &target, "--type=merge", "-p", patch]).await
}

/// Set (Some) or remove (None) an annotation on the DbCluster with
/// `kubectl annotate`, as a user makes a request.
pub async fn annotate(
    _client: &Client,
    ns: &str,
    name: &str,
    key: &str,
    value: Option<&str>,
) -> Result<()> {
    let arg = match value {
        Some(v) => format!("{key}={v}"),
        None => format!("{key}-"),
    };
    let target = format!("dbcluster/{name}");
    kubectl_ok(&["annotate", "-n", ns, &target, &arg, "--overwrite"]).await?;
    Ok(())
}

/// Whether the DbCluster still carries annotation `key`.
pub async fn has_annotation(client: &Client, ns: &str, name: &str, key: &str) -> Result<bool> {
    let dc = Api::<DbCluster>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(kube_err(format!("get DbCluster {name}")))?;
    Ok(dc.metadata.annotations.is_some_and(|a| a.contains_key(key)))
}

/// The pods behind a Service's ready endpoints (from its EndpointSlices).
pub async fn service_pods(client: &Client, ns: &str, service: &str) -> Result<Vec<String>> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map_err(kube_err(format!("list endpoint slices of {service}")))?;
    let mut pods: Vec<String> = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .filter_map(|e| e.target_ref.as_ref().and_then(|r| r.name.clone()))
        .collect();
    pods.sort();
    pods.dedup();
    Ok(pods)
}

/// Wait until `<name>-rw` points at exactly `pod`.
pub async fn wait_rw_on(
    client: &Client,
    ns: &str,
    name: &str,
    pod: &str,
    timeout: Duration,
) -> Result<()> {
    let service = keys::service_rw(name);
    eventually(
        &format!("{service} endpoints = [{pod}]"),
        timeout,
        || async {
            let pods = service_pods(client, ns, &service).await.ok()?;
            (pods == [pod.to_string()]).then_some(())
        },
    )
    .await
}

/// Events (events.k8s.io) regarding DbCluster `name`: (type, reason, note).
pub async fn events(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Vec<(String, String, String)>> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list events"))?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("DbCluster") && r.name.as_deref() == Some(name)
            })
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect())
}

/// Wait until an Event with `reason` regards DbCluster `name`; returns its note.
pub async fn wait_event(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> Result<String> {
    eventually(&format!("event {reason} on {name}"), timeout, || async {
        events(client, ns, name)
            .await
            .ok()?
            .into_iter()
            .find(|(_, r, _)| r == reason)
            .map(|(_, _, note)| note)
    })
    .await
}

/// Role label of each pod of the cluster.
pub async fn role_labels(
    client: &Client,
    ns: &str,
    cluster: &str,
) -> Result<BTreeMap<String, String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{}={cluster}", keys::LABEL_CLUSTER)))
        .await
        .map_err(kube_err("list pods"))?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| {
            let role = p.metadata.labels.as_ref()?.get(keys::LABEL_ROLE)?.clone();
            Some((p.metadata.name?, role))
        })
        .collect())
}

/// Delete a pod at once (the failure the suite injects).
pub async fn kill_pod(client: &Client, ns: &str, pod: &str) -> Result<()> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(pod, &params)
        .await
        .map_err(kube_err(format!("delete pod {pod}")))?;
    Ok(())
}

/// The chart's leader Lease (values `leaderElection.leaseName`).
pub const LEADER_LEASE: &str = "tandem-operator";

/// The operator replica holding the leader Lease.
pub async fn operator_leader(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), &operator_namespace())
        .get(LEADER_LEASE)
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}
