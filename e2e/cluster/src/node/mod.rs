//! The node stand-in: what a kubelet does, with local processes instead of
//! containers (Node registration and Lease, pods in network namespaces,
//! volumes, env, probes, status, logs, graceful deletion), and the fault
//! injection verbs. See docs/test-cluster.md, "Node stand-in".
//!
//! One process per node (`tandem-testcluster kubelet --dir DIR --node N`). It
//! lives in `<node cgroup>/kubelet`, each container in
//! `<node cgroup>/pods/<uid>/<container>`, so freezing or killing the node
//! cgroup freezes or kills the machine whole.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::config::ClusterConfig;
use crate::NodeAction;

mod actions;
mod atomic;
mod cgroup;
mod container;
mod ctx;
mod env;
mod events;
mod hosts;
mod hostsfile;
mod identity;
mod images;
mod launch;
mod logs;
mod manager;
mod mounts;
#[allow(clippy::module_inception)]
mod node;
mod pod;
mod probes;
mod restart;
mod run;
mod sandbox;
mod status;
mod volumes;

pub use actions::cleanup;

/// freeze | thaw | kill | start on `node`.
pub fn action(dir: &Path, node: &str, action: NodeAction) -> Result<()> {
    actions::action(dir, node, action)
}

/// Run the stand-in of `node` in the foreground until SIGTERM.
pub fn run_kubelet(dir: &Path, node: &str) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let index = cfg.node_index(node)?;
    // First of all: into the node's cgroup, so that freeze and kill reach this process.
    let ncg = cfg.node_cgroup(node);
    cgroup::create(&cgroup::kubelet(&ncg))?;
    cgroup::create(&ncg.join("pods"))?;
    cgroup::enter(&cgroup::kubelet(&ncg))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let node_dir = cfg.node_dir(node);
    std::fs::create_dir_all(node_dir.join("pods"))
        .with_context(|| format!("creating {}", node_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(cfg, node.to_string(), index))
}

async fn serve(cfg: ClusterConfig, node: String, index: usize) -> Result<()> {
    let kubeconfig = kube::config::Kubeconfig::read_from(cfg.kubeconfig())
        .with_context(|| format!("reading {}", cfg.kubeconfig().display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .context("kubeconfig")?;
    let client = kube::Client::try_from(config).context("API client")?;
    let (services, all_pods) = manager::cluster_caches(&client);
    let (subnet, _) = cfg.node_pod_subnet(&node)?;
    let ipam = sandbox::Ipam::new(cfg.node_dir(&node).join("ipam.json"), subnet);
    let events = events::recorder(client.clone(), &node);
    let ctx = Arc::new(ctx::Ctx {
        events,
        cfg,
        node,
        client,
        ipam,
        services,
        all_pods,
        pods: Mutex::new(Default::default()),
    });
    let port = logs::port(index);
    tracing::info!(node = %ctx.node, port, "node stand-in starting");
    let since = node::register(&ctx, port).await;
    let hb = ctx.clone();
    tokio::spawn(async move { node::heartbeat(&hb, port, since).await });
    let lg = ctx.clone();
    tokio::spawn(async move {
        if let Err(e) = logs::serve(lg, port).await {
            tracing::error!(error = %format!("{e:#}"), "the kubelet port is not served: kubectl logs will fail");
        }
    });
    tokio::spawn(hostsfile::run(ctx.clone()));
    tokio::spawn(manager::run(ctx.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Like a stopped kubelet: the pods' processes go on; `down` kills them by cgroup.
    tracing::info!(node = %ctx.node, "node stand-in stopping");
    Ok(())
}
