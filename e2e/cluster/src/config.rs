//! The test cluster's configuration, written by `up` to `DIR/cluster.json`
//! and read by every other verb and by each node stand-in. One test cluster
//! runs on a machine at a time (the bridge and the address ranges are fixed).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The bridge every pod's veth is attached to; the host's side has [`GATEWAY`].
pub const BRIDGE: &str = "tkube0";
/// The host's address on the bridge: the pods' default gateway, where the API server also listens.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Pod addresses (RFC 2544 benchmarking range): node-N gets 198.18.N.0/24.
pub const POD_CIDR: &str = "198.18.0.0/16";
/// Service ClusterIPs; the `kubernetes` Service is 198.19.0.1.
pub const SERVICE_CIDR: &str = "198.19.0.0/16";
/// ClusterIP of the `kubernetes` Service.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// The API server's secure port (on [`GATEWAY`]: kube-apiserver binds one address).
pub const APISERVER_PORT: u16 = 6443;
/// Cluster DNS domain used in the pods' hosts files.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The node names.
pub const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// The files in `DIR/pki` (`<stem>.crt` and `<stem>.key`; the service-account
/// key pair is `sa.pub` and `sa.key`). All certificates are signed by `ca.crt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PkiFile {
    /// The cluster CA (also signs CSRs through the controller-manager).
    Ca,
    /// kube-apiserver's serving certificate.
    Apiserver,
    /// The node stand-ins' serving certificate (their HTTPS port) for GATEWAY, 127.0.0.1 and the node names.
    Kubelet,
    /// Client `admin`, group `system:masters` (DIR/kubeconfig).
    Admin,
    /// Client `system:kube-controller-manager`.
    ControllerManager,
    /// Client `system:kube-scheduler`.
    Scheduler,
    /// Client `system:kube-proxy`.
    Proxy,
    /// The API server's client certificate towards the node stand-ins (`kube-apiserver-kubelet-client`, `system:masters`).
    ApiserverKubeletClient,
    /// Client `system:node:<node>`, group `system:nodes` (DIR/<node>.kubeconfig).
    Node(String),
    /// The service-account token signing key (`sa.key`) and its public key (`sa.pub`).
    ServiceAccount,
    /// The front-proxy CA (aggregation layer: `--requestheader-client-ca-file`), as kubeadm makes it.
    FrontProxyCa,
    /// The API server's client certificate as the front proxy (`front-proxy-client`).
    FrontProxyClient,
}

impl PkiFile {
    /// The file name without extension.
    pub fn stem(&self) -> &str {
        match self {
            Self::Ca => "ca",
            Self::Apiserver => "apiserver",
            Self::Kubelet => "kubelet",
            Self::Admin => "admin",
            Self::ControllerManager => "kube-controller-manager",
            Self::Scheduler => "kube-scheduler",
            Self::Proxy => "kube-proxy",
            Self::ApiserverKubeletClient => "apiserver-kubelet-client",
            Self::Node(node) => node,
            Self::ServiceAccount => "sa",
            Self::FrontProxyCa => "front-proxy-ca",
            Self::FrontProxyClient => "front-proxy-client",
        }
    }
}

/// What `up` decided, for every other verb and for the node stand-ins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// The cluster's directory (absolute).
    pub dir: PathBuf,
    /// Directory of the upstream binaries (etcd, kube-apiserver, …, kubectl).
    pub kube_bin: PathBuf,
    /// The `tandem` binary the operator and postgres images map to.
    pub tandem_bin: PathBuf,
    /// PostgreSQL's binaries (the postgres image's `PG_BIN`).
    pub pg_bin: PathBuf,
    /// This program, to start node stand-ins again (`node … start`).
    pub self_bin: PathBuf,
    /// The node names, in order; node at index i uses pod subnet 198.18.(i+1).0/24.
    pub nodes: Vec<String>,
    /// cgroup v2 directory of the whole cluster; each node has `<root>/<node>`.
    pub cgroup_root: PathBuf,
    /// Host users that a pod's `runAsUser` maps to when the image's uid has no
    /// account on this machine (the postgres image's 999 → `postgres`).
    pub run_as: BTreeMap<u32, String>,
}

impl ClusterConfig {
    /// `DIR/cluster.json`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("cluster.json")
    }

    /// Read the configuration of the cluster in `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no test cluster in {} ({} missing): run make kube-up first",
                dir.display(),
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// Write `DIR/cluster.json`.
    pub fn save(&self) -> Result<()> {
        let path = Self::path(&self.dir);
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The admin kubeconfig (`DIR/kubeconfig`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// `DIR/logs`: one file per process.
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// `DIR/pids`: `<name>.pid` per process `up` started (control plane, node stand-ins).
    pub fn pids(&self) -> PathBuf {
        self.dir.join("pids")
    }

    /// `DIR/pki`: the CA, serving and client certificates, service-account keys.
    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// The API server's URL (it listens on [`GATEWAY`] only; the host reaches its own bridge address).
    pub fn apiserver_url(&self) -> String {
        format!("https://{GATEWAY}:{APISERVER_PORT}")
    }

    /// `DIR/pki/<stem>.crt` (`sa.pub` for the service-account key).
    pub fn pki_cert(&self, file: &PkiFile) -> PathBuf {
        match file {
            PkiFile::ServiceAccount => self.pki().join("sa.pub"),
            f => self.pki().join(format!("{}.crt", f.stem())),
        }
    }

    /// `DIR/pki/<stem>.key` (mode 0600).
    pub fn pki_key(&self, file: &PkiFile) -> PathBuf {
        self.pki().join(format!("{}.key", file.stem()))
    }

    /// `DIR/<name>.kubeconfig` of a control plane component (`kube-scheduler`, …)
    /// or of a node (`node-1`: user `system:node:node-1`, for a stand-in that
    /// wants the Node authorizer and NodeRestriction to apply to it).
    pub fn component_kubeconfig(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.kubeconfig"))
    }

    /// `DIR/volumes`: one directory per PersistentVolume (outlives pods).
    pub fn volumes(&self) -> PathBuf {
        self.dir.join("volumes")
    }

    /// `DIR/nodes/<node>`: a node stand-in's own state (pod sandboxes, secrets, logs).
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    /// The node's cgroup: freezing or killing it freezes or kills the stand-in and all its pods.
    pub fn node_cgroup(&self, node: &str) -> PathBuf {
        self.cgroup_root.join(node)
    }

    /// Index of `node` (0-based) or an error naming the known nodes.
    pub fn node_index(&self, node: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n == node)
            .with_context(|| format!("unknown node {node} (nodes: {})", self.nodes.join(", ")))
    }

    /// Pod subnet of `node`: 198.18.(index+1).0/24.
    pub fn node_pod_subnet(&self, node: &str) -> Result<(Ipv4Addr, u8)> {
        let i = self.node_index(node)?;
        let third = u8::try_from(i + 1).context("too many nodes")?;
        Ok((Ipv4Addr::new(198, 18, third, 0), 24))
    }
}
