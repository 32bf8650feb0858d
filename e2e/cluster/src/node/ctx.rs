//! What every part of one node stand-in shares: the configuration, the API
//! client, the pod IP allocator, the cluster-wide Service and Pod caches (for
//! hosts files and service env) and the registry of the pods this node runs
//! with their containers' live state (for status, logs and hosts files). No I/O.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::reflector::Store;

use super::sandbox::Ipam;
use crate::config::ClusterConfig;

/// The node's shared state.
pub struct Ctx {
    /// The cluster.
    pub cfg: ClusterConfig,
    /// This node's name.
    pub node: String,
    /// The API (admin credentials).
    pub client: kube::Client,
    /// Pod IPs of this node.
    pub ipam: Ipam,
    /// Every Service of the cluster.
    pub services: Store<Service>,
    /// Every Pod of the cluster.
    pub all_pods: Store<Pod>,
    /// The pods this stand-in runs, by uid.
    pub pods: Mutex<BTreeMap<String, Arc<PodShared>>>,
    /// Events about pods.
    pub events: kube::runtime::events::Recorder,
}

impl Ctx {
    /// `<node dir>/pods/<uid>`: volumes, hosts file, logs of one pod.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.node_dir(&self.node).join("pods").join(uid)
    }

    /// The node cgroup.
    pub fn node_cgroup(&self) -> PathBuf {
        self.cfg.node_cgroup(&self.node)
    }

    /// The pod with `namespace`/`name` if this node runs it.
    pub fn find_pod(&self, namespace: &str, name: &str) -> Option<Arc<PodShared>> {
        lock(&self.pods)
            .values()
            .find(|p| p.namespace == namespace && p.name == name)
            .cloned()
    }
}

/// Lock a mutex, recovering from poisoning.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One pod this node runs.
pub struct PodShared {
    /// metadata.uid.
    pub uid: String,
    /// metadata.namespace.
    pub namespace: String,
    /// metadata.name.
    pub name: String,
    /// Main containers, in spec order.
    pub containers: Vec<Arc<Mutex<CState>>>,
    /// Init containers, in spec order.
    pub init: Vec<Arc<Mutex<CState>>>,
    /// Signalled when a container's state changed (status to patch).
    pub changed: tokio::sync::Notify,
    /// The pod's hosts file and names once its sandbox exists.
    pub hosts: Mutex<Option<HostsTarget>>,
}

impl PodShared {
    /// The container `name` (main or init).
    pub fn container(&self, name: &str) -> Option<Arc<Mutex<CState>>> {
        self.containers
            .iter()
            .chain(&self.init)
            .find(|c| lock(c).name == name)
            .cloned()
    }
}

/// Where a pod's hosts file is and what it is for.
#[derive(Debug, Clone)]
pub struct HostsTarget {
    /// The file bind-mounted over /etc/hosts.
    pub path: PathBuf,
    /// spec.hostname or the pod name.
    pub hostname: String,
    /// spec.subdomain.
    pub subdomain: Option<String>,
    /// The pod IP.
    pub ip: Ipv4Addr,
    /// The content last written.
    pub written: String,
}

/// A container's state as status reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Run {
    /// Not running.
    Waiting {
        /// ContainerCreating, CrashLoopBackOff, ErrImagePull, CreateContainerConfigError…
        reason: String,
        /// Details.
        message: Option<String>,
    },
    /// Its process runs.
    Running {
        /// When it started.
        started_at: Timestamp,
        /// Host pid.
        pid: u32,
    },
    /// Its process ended.
    Terminated {
        /// Exit code (128+n for signal n).
        exit_code: i32,
        /// The signal, if one killed it.
        signal: Option<i32>,
        /// Completed, Error, StartError, Unknown.
        reason: String,
        /// Details.
        message: Option<String>,
        /// When it had started.
        started_at: Option<Timestamp>,
        /// When it ended.
        finished_at: Timestamp,
        /// Host pid it had.
        pid: Option<u32>,
    },
}

/// One container's live state.
#[derive(Debug, Clone)]
pub struct CState {
    /// Container name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// Restarts so far.
    pub restart_count: i32,
    /// Now.
    pub state: Run,
    /// The previous run's end.
    pub last: Option<Run>,
    /// Readiness.
    pub ready: bool,
    /// Started (startup probe passed).
    pub started: bool,
    /// Its log file.
    pub log: PathBuf,
}

impl CState {
    /// A container not started yet.
    pub fn new(name: &str, image: &str, log: PathBuf) -> CState {
        CState {
            name: name.into(),
            image: image.into(),
            restart_count: 0,
            state: Run::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last: None,
            ready: false,
            started: false,
            log,
        }
    }

    /// Whether its process runs now.
    pub fn running(&self) -> bool {
        matches!(self.state, Run::Running { .. })
    }
}
