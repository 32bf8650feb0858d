//! The Kubernetes controller (`tandem operator`): flags, wiring of the
//! reconcile pipeline, leader election, metrics and shutdown. Does I/O.
//!
//! Reconcile is a pipeline, one module per step: [`observe`] → [`validate`] →
//! [`build`] (pure) → [`apply`] (server-side apply, one field manager) → the
//! cluster's [`ha`] loop, which writes its status. A refused spec stops at
//! validate: a Warning Event and the [`status`] Ready=False, InvalidSpec.

pub mod apply;
pub mod build;
pub mod error;
pub mod ha;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod reconcile;
pub mod status;
pub mod stores;
pub mod validate;
pub mod watched;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::api::{keys, DurationString};
pub use error::Error;
pub use reconcile::{
    error_policy, error_policy_watched, reconcile, reconcile_watched, Context, ReconcileConfig,
};
pub use watched::WatchedDbCluster;

/// Flags of `tandem operator`; each has an environment variable fallback.
#[derive(Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Address of the operator's own HTTP server (/metrics, /healthz).
    #[arg(long, env = "TANDEM_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,

    /// Logging (default format: json).
    #[command(flatten)]
    pub log: crate::logging::LogArgs,

    /// Image with PostgreSQL and tandem used when a DbCluster sets no spec.image.
    #[arg(
        long,
        env = "TANDEM_POSTGRES_IMAGE",
        default_value = "tandem-postgres:dev"
    )]
    pub postgres_image: String,

    /// Watch DbClusters in this namespace only (all namespaces when absent).
    #[arg(long, env = "TANDEM_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Requeue interval after a successful reconcile.
    #[arg(long, env = "TANDEM_REQUEUE_INTERVAL", default_value = "60s")]
    pub requeue_interval: DurationString,

    /// How often the HA loop polls each cluster's agents and decides.
    #[arg(long, env = "TANDEM_HA_INTERVAL", default_value = "1s")]
    pub ha_interval: DurationString,

    /// How long one agent status poll may take.
    #[arg(long, env = "TANDEM_AGENT_TIMEOUT", default_value = "800ms")]
    pub agent_timeout: DurationString,

    /// How many clusters' HA passes may run at once.
    #[arg(long, env = "TANDEM_HA_MAX_CONCURRENT", default_value_t = 16)]
    pub ha_max_concurrent: usize,

    /// How long a pod label change may take to reach the Services' routing:
    /// kube-proxy's minimum sync period (`--iptables-min-sync-period`, 1s by
    /// default). A switchover waits this long after taking the target out of
    /// `-ro` and again between dropping the old primary's label and stopping
    /// it, so that `-rw` moves to the new primary in one sync (0s: no wait, the
    /// new label may then wait for kube-proxy).
    #[arg(long, env = "TANDEM_SERVICE_SETTLE", default_value = "1s")]
    pub service_settle: DurationString,

    /// Leader election among operator replicas.
    #[command(flatten)]
    pub leader: Box<LeaderArgs>,
}

/// Leader election flags of `tandem operator`.
#[derive(Args, Debug, Clone)]
pub struct LeaderArgs {
    /// Elect a leader among replicas with a Lease (disable only for a single replica).
    #[arg(
        long,
        env = "TANDEM_LEADER_ELECT",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub leader_elect: bool,

    /// Name of the leader election Lease.
    #[arg(long, env = "TANDEM_LEASE_NAME", default_value = "tandem-operator")]
    pub lease_name: String,

    /// Namespace of the leader election Lease (the operator's namespace).
    #[arg(long, env = "TANDEM_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease (its pod name); the hostname when absent.
    #[arg(long, env = "TANDEM_IDENTITY")]
    pub identity: Option<String>,

    /// How long the Lease stays valid without renewal.
    #[arg(long, env = "TANDEM_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: DurationString,

    /// How often the leader renews the Lease and followers retry.
    #[arg(long, env = "TANDEM_LEASE_RENEW_EVERY", default_value = "5s")]
    pub lease_renew_every: DurationString,
}

/// Name of the controller in Events.
pub const CONTROLLER_NAME: &str = "tandem-operator";

/// Run the operator until SIGTERM (or until it loses the leader lease, which is an error).
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    args.log.init(
        crate::logging::LogFormat::Json,
        crate::logging::Output::Stdout,
    )?;
    install_crypto_provider();
    let identity = match &args.leader.identity {
        Some(id) => id.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the hostname for the leader identity (or pass --identity)")?
            .trim()
            .to_string(),
    };
    let lease = leader::LeaseSettings {
        name: args.leader.lease_name.clone(),
        namespace: args.leader.lease_namespace.clone(),
        identity: identity.clone(),
        duration: args.leader.lease_duration.duration(),
        renew_every: args.leader.lease_renew_every.duration(),
    };
    anyhow::ensure!(
        lease.renew_every < lease.renew_deadline(),
        "--lease-renew-every must be shorter than two thirds of --lease-duration"
    );
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;

    let mut registry = Registry::default();
    let metrics = Arc::new(metrics::Metrics::new(&mut registry));
    let registry = Arc::new(registry);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        shutdown_tx.send_replace(true);
    });

    let server = tokio::spawn(metrics::serve(
        args.metrics_listen,
        registry,
        until_true(shutdown_rx.clone()),
    ));

    let (leader_tx, leader_rx) = watch::channel(false);
    let elector = if args.leader.leader_elect {
        let elector = leader::Elector::new(client.clone(), lease);
        Some(tokio::spawn(elector.run(leader_tx, shutdown_rx.clone())))
    } else {
        leader_tx.send_replace(true);
        None
    };

    tracing::info!(%identity, "waiting for the leader lease");
    let mut became_leader = leader_rx.clone();
    tokio::select! {
        _ = became_leader.wait_for(|l| *l) => {}
        _ = until_true(shutdown_rx.clone()) => {}
    }
    let mut lost_leadership = false;
    if !*shutdown_rx.borrow() {
        metrics.set_leader(true);
        tracing::info!(%identity, "leading: starting the controller");
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.into(),
                instance: Some(identity.clone()),
            },
        );
        let defaults = validate::Defaults {
            postgres_image: args.postgres_image.clone(),
        };
        let (stores, writers) = stores::stores();
        let ha = Arc::new(
            ha::Registry::new(
                Arc::new(ha::KubeClient {
                    client: client.clone(),
                    recorder: recorder.clone(),
                    stores: stores.clone(),
                }),
                Arc::new(ha::HttpAgents::default()),
                ha_config(&args, defaults.clone()),
            )
            .with_metrics(metrics.clone()),
        );
        let ctx = Arc::new(Context::new(
            client.clone(),
            recorder,
            metrics.clone(),
            ReconcileConfig {
                defaults,
                requeue: args.requeue_interval.duration(),
            },
            ha.clone(),
        ));
        let stop = {
            let shutdown = shutdown_rx.clone();
            let leader = leader_rx.clone();
            async move {
                tokio::select! {
                    _ = until_true(shutdown) => {}
                    _ = until_false(leader) => {}
                }
            }
        };
        let watches = Watches { stores, writers };
        run_controller(client, args.watch_namespace.as_deref(), watches, ctx, stop).await;
        // Only the leader acts: no HA loop outlives the controller.
        ha.stop_all();
        metrics.set_leader(false);
        lost_leadership = !*shutdown_rx.borrow();
    }
    if lost_leadership {
        anyhow::bail!("lost the leader lease; exiting so that only the new leader acts");
    }
    if let Some(elector) = elector {
        // Releases the lease so that another replica takes over at once.
        elector.await.context("leader election task")?;
    }
    server.await.context("metrics server task")??;
    tracing::info!("stopped");
    Ok(())
}

fn ha_config(args: &OperatorArgs, defaults: validate::Defaults) -> ha::HaConfig {
    let interval = args
        .ha_interval
        .duration()
        .max(std::time::Duration::from_millis(100));
    ha::HaConfig {
        interval,
        max_concurrent: args.ha_max_concurrent,
        // A pass polls with its own timeouts; this only frees a stuck pass's permit.
        pass_timeout: (interval * 10).max(std::time::Duration::from_secs(10)),
        cluster: ha::LoopConfig {
            poll_timeout: args.agent_timeout.duration(),
            starting_grace: std::time::Duration::from_secs(60),
            agent_port: keys::AGENT_PORT,
            defaults,
            service_settle: args.service_settle.duration(),
        },
    }
}

async fn until_true(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone: treat it as the signal.
    let _ = rx.wait_for(|v| *v).await;
}

async fn until_false(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| !*v).await;
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The watch caches and the writers that fill them, for [`run_controller`].
pub struct Watches {
    /// The readers (shared with the HA loops).
    pub stores: stores::Stores,
    /// Their writers.
    pub writers: stores::Writers,
}

/// Run the kube-rs Controller until `stop` resolves, letting running reconciles finish.
///
/// DbClusters are watched as [`WatchedDbCluster`], so that one object this
/// operator cannot deserialize is reported alone instead of failing the list
/// of all. DbClusters, pods, Secrets and StatefulSets are watched once, into
/// the stores the HA loops read. When `stop` resolves before the first list
/// ever succeeded (no CRD, no permission, no API server), nothing runs that
/// could finish: kube's runner would wait for its store forever, so return at
/// once.
async fn run_controller(
    client: Client,
    namespace: Option<&str>,
    watches: Watches,
    ctx: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let stop = stop.shared();
    let managed = watcher::Config::default().labels(&format!(
        "{}={}",
        keys::LABEL_MANAGED_BY,
        keys::MANAGED_BY
    ));
    let Watches { stores, writers } = watches;
    let streams = writers.streams(
        api::<WatchedDbCluster>(&client, namespace),
        api::<Pod>(&client, namespace),
        api::<Secret>(&client, namespace),
        api::<StatefulSet>(&client, namespace),
    );
    let store = stores.clusters.clone();
    let wakers = ctx.ha.wakers();
    // A spec change or a request annotation wakes the cluster's HA loop now
    // (its own status writes do not), not at its next tick.
    let cluster_wakers = ctx.ha.wakers();
    let mut changes = ha::ClusterChanges::default();
    let clusters = streams.clusters.inspect(move |event| {
        if let Ok(dc) = event {
            if changes.changed(&dc.metadata) {
                if let (Some(ns), Some(name)) = (&dc.metadata.namespace, &dc.metadata.name) {
                    cluster_wakers.wake(ns, name);
                }
            }
        }
    });
    let run = Controller::for_stream(clusters, stores.clusters)
        .owns_stream(streams.stateful_sets)
        .owns(api::<Service>(&client, namespace), managed.clone())
        .owns(api::<ConfigMap>(&client, namespace), managed.clone())
        .owns_stream(streams.secrets)
        .owns(api::<PodDisruptionBudget>(&client, namespace), managed)
        // Pods belong to the StatefulSet; a new one gets its instance label,
        // and the HA loops read their readiness from this watch's store.
        // A pod event also wakes the cluster's HA loop: a deleted pod or ended
        // containers are seen now, not at the loop's next tick.
        .watches_stream(streams.pods, move |pod: Pod| {
            let cluster = pod.labels().get(keys::LABEL_CLUSTER)?.clone();
            let ns = pod.namespace()?;
            wakers.wake(&ns, &cluster);
            Some(ObjectRef::<WatchedDbCluster>::new(&cluster).within(&ns))
        })
        .graceful_shutdown_on(stop.clone())
        .run(reconcile_watched, error_policy_watched, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconcile done"),
                Err(e) => log_controller_error(&e),
            }
        });
    let stopped_before_ready = async {
        stop.await;
        if store.wait_until_ready().now_or_never().is_none() {
            return;
        }
        // Ready: the graceful shutdown above finishes the running reconciles.
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = run => {}
        _ = stopped_before_ready => {
            tracing::warn!("stopping before the first DbCluster list succeeded");
        }
    }
}

/// A failed reconcile was logged (WARN) where it failed; what only the
/// controller sees — list and watch failures: no CRD, RBAC, no API server —
/// is logged here at WARN, or the operator would look healthy doing nothing.
fn log_controller_error(
    e: &kube::runtime::controller::Error<Error, kube::runtime::watcher::Error>,
) {
    use kube::runtime::controller::Error as E;
    match e {
        E::ReconcilerFailed(..) => tracing::debug!(error = %e, "reconcile failed"),
        E::ObjectNotFound(..) => tracing::debug!(error = %e, "controller event"),
        E::QueueError(source) => {
            tracing::warn!(error = %source, "watching DbClusters or their children failed; retrying")
        }
        E::RunnerError(_) => tracing::warn!(error = %e, "controller error"),
    }
}

/// kube and reqwest enable different rustls crypto providers, so rustls
/// cannot pick one by itself; install ring's. Already installed is fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
