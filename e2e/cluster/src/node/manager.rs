//! The pod manager: watch the pods bound to this node (fieldSelector
//! spec.nodeName), start one worker per new pod uid, hand each worker the
//! newest version of its pod, tell it when the pod is gone from the API.
//! Also the cluster-wide Service and Pod caches. I/O (API watches).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::{watch, Notify};

use super::ctx::Ctx;
use super::pod::{self, Update};

/// A reflector of every object of `api`, kept running in the background.
pub fn cache<K>(api: Api<K>, cfg: watcher::Config, notify: Option<Arc<Notify>>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, cfg).default_backoff().reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "watch");
            }
            if let Some(n) = &notify {
                n.notify_one();
            }
        }
    });
    store
}

/// The cluster-wide caches for hosts files and service links.
pub fn cluster_caches(client: &kube::Client) -> (Store<Service>, Store<Pod>) {
    (
        cache(Api::all(client.clone()), watcher::Config::default(), None),
        cache(Api::all(client.clone()), watcher::Config::default(), None),
    )
}

/// Remove what a previous run left for pods no longer bound here (deleted
/// while the stand-in was down): processes, sandbox, IP, files.
async fn collect_orphans(ctx: &Ctx, bound: &BTreeSet<String>) {
    let names = |dir: std::path::PathBuf| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let mut uids: BTreeSet<String> = ctx.ipam.holders().into_iter().collect();
    uids.extend(names(ctx.cfg.node_dir(&ctx.node).join("pods")));
    uids.extend(names(ctx.node_cgroup().join("pods")));
    for uid in uids.difference(bound) {
        tracing::info!(uid = %uid, "removing the leftovers of a pod no longer bound to this node");
        let cg = super::cgroup::pod(&ctx.node_cgroup(), uid);
        let _ = super::cgroup::kill(&cg);
        super::cgroup::wait_empty_async(&cg, Duration::from_secs(10)).await;
        let _ = super::cgroup::remove_tree(&cg);
        if let Err(e) = super::sandbox::teardown(uid).await {
            tracing::warn!(uid = %uid, error = %format!("{e:#}"), "sandbox teardown");
        }
        let _ = ctx.ipam.release(uid);
        let _ = std::fs::remove_dir_all(ctx.pod_dir(uid));
    }
}

struct WorkerHandle {
    tx: watch::Sender<Update>,
    task: tokio::task::JoinHandle<()>,
}

/// Run the pods bound to this node until the process ends.
pub async fn run(ctx: Arc<Ctx>) {
    let notify = Arc::new(Notify::new());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node));
    let mine = cache(
        Api::<Pod>::all(ctx.client.clone()),
        cfg,
        Some(notify.clone()),
    );
    for (what, ready) in [
        ("bound pods", mine.wait_until_ready().await.is_ok()),
        ("services", ctx.services.wait_until_ready().await.is_ok()),
        ("pods", ctx.all_pods.wait_until_ready().await.is_ok()),
    ] {
        if !ready {
            tracing::error!(cache = what, "watch ended before its first list");
        }
    }
    let bound: BTreeSet<String> = mine
        .state()
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    collect_orphans(&ctx, &bound).await;
    tracing::info!(node = %ctx.node, "watching the pods bound to this node");
    let mut workers: BTreeMap<String, WorkerHandle> = BTreeMap::new();
    // uids whose worker finished (final delete made): never started again.
    let mut done: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let pods = mine.state();
        let mut present = BTreeSet::new();
        for p in pods {
            let Some(uid) = p.metadata.uid.clone() else {
                continue;
            };
            present.insert(uid.clone());
            if done.contains(&uid) {
                continue;
            }
            match workers.get(&uid) {
                Some(w) => {
                    w.tx.send_if_modified(|cur| match cur {
                        Update::Pod(old)
                            if old.metadata.resource_version == p.metadata.resource_version =>
                        {
                            false
                        }
                        Update::Gone => false,
                        _ => {
                            *cur = Update::Pod(p.clone());
                            true
                        }
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(Update::Pod(p.clone()));
                    let task = tokio::spawn(pod::run(ctx.clone(), p.clone(), rx));
                    workers.insert(uid, WorkerHandle { tx, task });
                }
            }
        }
        for (uid, w) in &workers {
            if !present.contains(uid) {
                w.tx.send_if_modified(|cur| {
                    if matches!(cur, Update::Gone) {
                        false
                    } else {
                        *cur = Update::Gone;
                        true
                    }
                });
            }
        }
        let finished: Vec<String> = workers
            .iter()
            .filter(|(_, w)| w.task.is_finished())
            .map(|(u, _)| u.clone())
            .collect();
        for uid in finished {
            workers.remove(&uid);
            done.insert(uid);
        }
        done.retain(|u| present.contains(u));
    }
}
