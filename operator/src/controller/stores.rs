//! The watch caches the controller is triggered by and the HA loops read
//! from: DbClusters, the clusters' pods, the managed Secrets and
//! StatefulSets, one watch per kind for both. An HA pass then costs no API
//! read (the agents are still polled). Building the watches does no I/O;
//! they list and watch while the controller polls them.

use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};

use super::watched::WatchedDbCluster;
use crate::api::keys;

/// Key of the agent token in Secret `<cluster>-agent-token`.
pub const AGENT_TOKEN_KEY: &str = "token";

/// The readers, cheap to clone, shared by the controller and every HA loop.
#[derive(Clone)]
pub struct Stores {
    /// Every watched DbCluster, readable or not.
    pub clusters: Store<WatchedDbCluster>,
    /// Pods carrying label `tandem.dev/cluster`.
    pub pods: Store<Pod>,
    /// Secrets managed by tandem; only the agent token's value is kept.
    pub secrets: Store<Secret>,
    /// StatefulSets managed by tandem.
    pub stateful_sets: Store<StatefulSet>,
}

/// The writing halves, consumed by [`Writers::streams`].
pub struct Writers {
    clusters: reflector::store::Writer<WatchedDbCluster>,
    pods: reflector::store::Writer<Pod>,
    secrets: reflector::store::Writer<Secret>,
    stateful_sets: reflector::store::Writer<StatefulSet>,
}

/// Empty stores and their writers.
pub fn stores() -> (Stores, Writers) {
    let (clusters, clusters_w) = reflector::store();
    let (pods, pods_w) = reflector::store();
    let (secrets, secrets_w) = reflector::store();
    let (stateful_sets, stateful_sets_w) = reflector::store();
    (
        Stores {
            clusters,
            pods,
            secrets,
            stateful_sets,
        },
        Writers {
            clusters: clusters_w,
            pods: pods_w,
            secrets: secrets_w,
            stateful_sets: stateful_sets_w,
        },
    )
}

/// A watched kind's stream: every object it touches, after it is in the store.
pub type Touched<K> = std::pin::Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send>>;

/// The watch streams that fill the stores (and trigger the controller).
pub struct Streams {
    /// DbClusters (applied objects: the controller's own trigger).
    pub clusters: Touched<WatchedDbCluster>,
    /// Pods with label `tandem.dev/cluster`.
    pub pods: Touched<Pod>,
    /// Secrets with the managed-by label.
    pub secrets: Touched<Secret>,
    /// StatefulSets with the managed-by label.
    pub stateful_sets: Touched<StatefulSet>,
}

/// Only what the HA loop reads of a Secret is cached: the agent token of a
/// `-agent-token` Secret; the credentials' values never stay in memory.
fn keep_only_the_token(s: &mut Secret) {
    let is_token = s.name_any().ends_with(&keys::secret_agent_token(""));
    match (&mut s.data, is_token) {
        (Some(data), true) => data.retain(|k, _| k == AGENT_TOKEN_KEY),
        (data, _) => *data = None,
    }
    s.string_data = None;
}

impl Writers {
    /// Watch streams over these APIs, each writing its store.
    pub fn streams(
        self,
        clusters: Api<WatchedDbCluster>,
        pods: Api<Pod>,
        secrets: Api<Secret>,
        stateful_sets: Api<StatefulSet>,
    ) -> Streams {
        let managed = watcher::Config::default().labels(&format!(
            "{}={}",
            keys::LABEL_MANAGED_BY,
            keys::MANAGED_BY
        ));
        let pods_config = watcher::Config::default().labels(keys::LABEL_CLUSTER);
        Streams {
            clusters: Box::pin(
                watcher(clusters, watcher::Config::default())
                    .reflect(self.clusters)
                    .applied_objects(),
            ),
            pods: Box::pin(
                watcher(pods, pods_config)
                    .reflect(self.pods)
                    .touched_objects(),
            ),
            secrets: Box::pin(
                watcher(secrets, managed.clone())
                    .map_ok(|e| e.modify(keep_only_the_token))
                    .reflect(self.secrets)
                    .touched_objects(),
            ),
            stateful_sets: Box::pin(
                watcher(stateful_sets, managed)
                    .reflect(self.stateful_sets)
                    .touched_objects(),
            ),
        }
    }
}

impl Stores {
    /// Resolves once every store holds a complete first list; `false` when
    /// one never will (its watch was dropped).
    pub async fn synced(&self) -> bool {
        self.clusters.wait_until_ready().await.is_ok()
            && self.pods.wait_until_ready().await.is_ok()
            && self.secrets.wait_until_ready().await.is_ok()
            && self.stateful_sets.wait_until_ready().await.is_ok()
    }

    /// DbCluster `ns/name` as last watched.
    pub fn cluster(&self, ns: &str, name: &str) -> Option<Arc<WatchedDbCluster>> {
        self.clusters.get(&ObjectRef::new(name).within(ns))
    }

    /// The pods of cluster `ns/cluster` (label `tandem.dev/cluster=<cluster>`).
    pub fn pods(&self, ns: &str, cluster: &str) -> Vec<Pod> {
        self.pods
            .state_filter(|p| {
                p.namespace().as_deref() == Some(ns)
                    && p.labels().get(keys::LABEL_CLUSTER).map(String::as_str) == Some(cluster)
            })
            .into_iter()
            .map(|p| (*p).clone())
            .collect()
    }

    /// Secret `ns/name` if tandem manages it (only its token kept).
    pub fn secret(&self, ns: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&ObjectRef::new(name).within(ns))
    }

    /// StatefulSet `ns/name` if tandem manages it.
    pub fn stateful_set(&self, ns: &str, name: &str) -> Option<Arc<StatefulSet>> {
        self.stateful_sets.get(&ObjectRef::new(name).within(ns))
    }
}

impl Stores {
    /// Stores already synced with these objects and no watch behind them
    /// (a fixed snapshot: for tests and tools that drive the HA loop by hand).
    pub fn from_objects(
        clusters: Vec<WatchedDbCluster>,
        pods: Vec<Pod>,
        secrets: Vec<Secret>,
        stateful_sets: Vec<StatefulSet>,
    ) -> Self {
        fn fill<K>(w: &mut reflector::store::Writer<K>, objects: Vec<K>)
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone + Default,
        {
            w.apply_watcher_event(&watcher::Event::Init);
            for o in objects {
                w.apply_watcher_event(&watcher::Event::InitApply(o));
            }
            w.apply_watcher_event(&watcher::Event::InitDone);
        }
        let (stores, mut w) = stores();
        fill(&mut w.clusters, clusters);
        fill(&mut w.pods, pods);
        let mut secrets = secrets;
        secrets.iter_mut().for_each(keep_only_the_token);
        fill(&mut w.secrets, secrets);
        fill(&mut w.stateful_sets, stateful_sets);
        stores
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(name: &str, keys: &[&str]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("db".into());
        s.data = Some(
            keys.iter()
                .map(|k| (k.to_string(), ByteString(b"value".to_vec())))
                .collect::<BTreeMap<_, _>>(),
        );
        s
    }

    #[test]
    fn only_the_agent_token_value_is_cached() {
        let stores = Stores::from_objects(
            vec![],
            vec![],
            vec![
                secret("main-agent-token", &["token", "other"]),
                secret("main-superuser", &["username", "password"]),
            ],
            vec![],
        );
        let token = stores
            .secret("db", "main-agent-token")
            .and_then(|s| s.data.clone());
        assert_eq!(
            token.map(|d| d.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["token".to_string()])
        );
        let creds = stores.secret("db", "main-superuser");
        assert!(
            creds.is_some_and(|s| s.data.is_none()),
            "credentials never stay in memory"
        );
    }

    #[test]
    fn pods_are_the_clusters_in_its_namespace() {
        let pod = |name: &str, ns: &str, cluster: &str| {
            let mut p = Pod::default();
            p.metadata.name = Some(name.into());
            p.metadata.namespace = Some(ns.into());
            p.metadata.labels = Some(BTreeMap::from([(
                keys::LABEL_CLUSTER.to_string(),
                cluster.to_string(),
            )]));
            p
        };
        let stores = Stores::from_objects(
            vec![],
            vec![
                pod("main-0", "db", "main"),
                pod("main-0", "other", "main"),
                pod("aux-0", "db", "aux"),
            ],
            vec![],
            vec![],
        );
        let pods = stores.pods("db", "main");
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].namespace().as_deref(), Some("db"));
    }
}
