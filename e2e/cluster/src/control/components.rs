//! The upstream control plane processes: the command line of each (pure
//! functions of the cluster's configuration, so docs/test-cluster.md and the
//! tests can name every flag) and the health endpoint `up` waits on.

use std::path::{Path, PathBuf};

use crate::config::{
    ClusterConfig, PkiFile, APISERVER_PORT, CLUSTER_DOMAIN, GATEWAY, POD_CIDR, SERVICE_CIDR,
};

/// etcd's client and peer ports on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct EtcdPorts {
    pub client: u16,
    pub peer: u16,
}

/// How `up` checks that a component is serving.
#[derive(Debug, Clone)]
pub enum Health {
    /// Plain HTTP GET must answer 200.
    Http(String),
    /// HTTPS GET with the admin client certificate, verified against the cluster CA.
    ApiServer(String),
    /// HTTPS GET of a component's self-signed endpoint (anonymous /healthz).
    SelfSigned(String),
    /// The provisioner is serving once the StorageClass it creates exists.
    StorageClass(&'static str),
}

/// One process of the control plane.
#[derive(Debug, Clone)]
pub struct Component {
    /// Its name: `DIR/logs/<name>.log`, `DIR/pids/<name>.pid`.
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub health: Health,
}

fn p(path: PathBuf) -> String {
    path.to_string_lossy().into_owned()
}

fn flag(name: &str, value: impl std::fmt::Display) -> String {
    format!("--{name}={value}")
}

/// The service-account issuer: the in-cluster URL of the API server.
pub fn service_account_issuer() -> String {
    format!("https://kubernetes.default.svc.{CLUSTER_DOMAIN}")
}

/// etcd, client and peer on loopback only; fsync off (a test cluster's state
/// is thrown away, and 2 shared cores make fsync latency the API's bottleneck).
pub fn etcd(cfg: &ClusterConfig, ports: EtcdPorts) -> Component {
    let client = format!("http://127.0.0.1:{}", ports.client);
    let peer = format!("http://127.0.0.1:{}", ports.peer);
    Component {
        name: "etcd",
        program: cfg.kube_bin.join("etcd"),
        args: vec![
            flag("name", "tandem-test"),
            flag("data-dir", p(cfg.dir.join("etcd"))),
            flag("listen-client-urls", &client),
            flag("advertise-client-urls", &client),
            flag("listen-peer-urls", &peer),
            flag("initial-advertise-peer-urls", &peer),
            flag("initial-cluster", format!("tandem-test={peer}")),
            flag("initial-cluster-state", "new"),
            flag("unsafe-no-fsync", true),
            flag("log-level", "warn"),
        ],
        health: Health::Http(format!("{client}/health")),
    }
}

/// kube-apiserver on the gateway address only, RBAC + Node authorization, the
/// default admission plugins plus NodeRestriction (as kubeadm does).
pub fn apiserver(cfg: &ClusterConfig, ports: EtcdPorts) -> Component {
    let pki = |f: PkiFile| p(cfg.pki_cert(&f));
    let key = |f: PkiFile| p(cfg.pki_key(&f));
    Component {
        name: "kube-apiserver",
        program: cfg.kube_bin.join("kube-apiserver"),
        args: vec![
            flag("bind-address", GATEWAY),
            flag("advertise-address", GATEWAY),
            flag("secure-port", APISERVER_PORT),
            flag("etcd-servers", format!("http://127.0.0.1:{}", ports.client)),
            flag("service-cluster-ip-range", SERVICE_CIDR),
            flag("authorization-mode", "Node,RBAC"),
            flag("enable-admission-plugins", "NodeRestriction"),
            flag("client-ca-file", pki(PkiFile::Ca)),
            flag("tls-cert-file", pki(PkiFile::Apiserver)),
            flag("tls-private-key-file", key(PkiFile::Apiserver)),
            flag(
                "kubelet-client-certificate",
                pki(PkiFile::ApiserverKubeletClient),
            ),
            flag("kubelet-client-key", key(PkiFile::ApiserverKubeletClient)),
            flag("kubelet-certificate-authority", pki(PkiFile::Ca)),
            flag("kubelet-preferred-address-types", "InternalIP"),
            flag("allow-privileged", true),
            flag("enable-priority-and-fairness", true),
            flag("service-account-key-file", pki(PkiFile::ServiceAccount)),
            flag(
                "service-account-signing-key-file",
                key(PkiFile::ServiceAccount),
            ),
            flag("service-account-issuer", service_account_issuer()),
            // The aggregation layer's request headers (as kubeadm): the
            // controller-manager and scheduler read this CA from the
            // extension-apiserver-authentication ConfigMap.
            flag("requestheader-client-ca-file", pki(PkiFile::FrontProxyCa)),
            flag("requestheader-allowed-names", "front-proxy-client"),
            flag("requestheader-username-headers", "X-Remote-User"),
            flag("requestheader-group-headers", "X-Remote-Group"),
            flag("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
            flag("proxy-client-cert-file", pki(PkiFile::FrontProxyClient)),
            flag("proxy-client-key-file", key(PkiFile::FrontProxyClient)),
            flag("cert-dir", p(cfg.pki().join("apiserver-generated"))),
            flag("profiling", false),
            flag("v", 1),
        ],
        health: Health::ApiServer(format!("{}/readyz", cfg.apiserver_url())),
    }
}

/// kube-controller-manager with every default controller, a service account
/// per controller, and the cluster CA as CSR signer.
///
/// `--node-monitor-grace-period=20s` (default 50s): a frozen or killed node is
/// marked NotReady sooner; the stand-ins renew their Lease every 10 s.
pub fn controller_manager(cfg: &ClusterConfig) -> Component {
    let kubeconfig = p(cfg.component_kubeconfig("kube-controller-manager"));
    Component {
        name: "kube-controller-manager",
        program: cfg.kube_bin.join("kube-controller-manager"),
        args: vec![
            flag("kubeconfig", &kubeconfig),
            flag("authentication-kubeconfig", &kubeconfig),
            flag("authorization-kubeconfig", &kubeconfig),
            flag("controllers", "*"),
            flag("use-service-account-credentials", true),
            flag(
                "service-account-private-key-file",
                p(cfg.pki_key(&PkiFile::ServiceAccount)),
            ),
            flag("root-ca-file", p(cfg.pki_cert(&PkiFile::Ca))),
            flag("cluster-signing-cert-file", p(cfg.pki_cert(&PkiFile::Ca))),
            flag("cluster-signing-key-file", p(cfg.pki_key(&PkiFile::Ca))),
            flag("cluster-name", "tandem-test"),
            flag("allocate-node-cidrs", false),
            flag("leader-elect", false),
            flag("bind-address", "127.0.0.1"),
            flag("node-monitor-grace-period", "20s"),
            flag("profiling", false),
            flag("v", 1),
        ],
        health: Health::SelfSigned("https://127.0.0.1:10257/healthz".into()),
    }
}

/// kube-scheduler, default profile.
pub fn scheduler(cfg: &ClusterConfig) -> Component {
    let kubeconfig = p(cfg.component_kubeconfig("kube-scheduler"));
    Component {
        name: "kube-scheduler",
        program: cfg.kube_bin.join("kube-scheduler"),
        args: vec![
            flag("kubeconfig", &kubeconfig),
            flag("authentication-kubeconfig", &kubeconfig),
            flag("authorization-kubeconfig", &kubeconfig),
            flag("leader-elect", false),
            flag("bind-address", "127.0.0.1"),
            flag("profiling", false),
            flag("v", 1),
        ],
        health: Health::SelfSigned("https://127.0.0.1:10259/healthz".into()),
    }
}

/// One kube-proxy for the machine (all nodes share the host's network stack).
///
/// `--masquerade-all`: pods share one bridge and br_netfilter is not loaded,
/// so without SNAT the reply of pod B to pod A (A → ClusterIP → B) would go
/// straight over the bridge and A would drop it. `--bind-address` is only
/// kube-proxy's idea of the node IP (it binds nothing there); NodePorts are
/// limited to the gateway address; the conntrack settings leave the host's
/// sysctls as they are.
pub fn proxy(cfg: &ClusterConfig) -> Component {
    let node = cfg.nodes.first().map(String::as_str).unwrap_or("node-1");
    Component {
        name: "kube-proxy",
        program: cfg.kube_bin.join("kube-proxy"),
        args: vec![
            flag("kubeconfig", p(cfg.component_kubeconfig("kube-proxy"))),
            flag("proxy-mode", "iptables"),
            flag("hostname-override", node),
            flag("cluster-cidr", POD_CIDR),
            flag("masquerade-all", true),
            flag("bind-address", GATEWAY),
            flag("healthz-bind-address", "127.0.0.1:10256"),
            flag("metrics-bind-address", "127.0.0.1:10249"),
            flag("nodeport-addresses", format!("{GATEWAY}/32")),
            flag("iptables-localhost-nodeports", false),
            flag("conntrack-max-per-core", 0),
            flag("conntrack-tcp-timeout-established", "0s"),
            flag("conntrack-tcp-timeout-close-wait", "0s"),
            flag("profiling", false),
            flag("v", 1),
        ],
        // /livez, not /healthz: /healthz also fails while node-1 is missing
        // (NodeEligible); that rules work is what `up`'s ClusterIP self-check proves.
        health: Health::Http("http://127.0.0.1:10256/livez".into()),
    }
}

/// This program's PV provisioner loop.
pub fn provisioner(cfg: &ClusterConfig) -> Component {
    Component {
        name: "provisioner",
        program: cfg.self_bin.clone(),
        args: vec!["provisioner".into(), "--dir".into(), p(cfg.dir.clone())],
        health: Health::StorageClass(super::provisioner::STORAGE_CLASS),
    }
}

/// A node stand-in (`<self> kubelet --dir DIR --node NODE`), pid file `kubelet-<node>`.
pub fn kubelet_args(dir: &Path, node: &str) -> Vec<String> {
    vec![
        "kubelet".into(),
        "--dir".into(),
        p(dir.to_path_buf()),
        "--node".into(),
        node.into(),
    ]
}

/// The pid/log name of a node stand-in.
pub fn kubelet_name(node: &str) -> String {
    format!("kubelet-{node}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cfg() -> ClusterConfig {
        ClusterConfig {
            dir: "/tmp/kc".into(),
            kube_bin: "/kb".into(),
            tandem_bin: "/t".into(),
            pg_bin: "/pg".into(),
            self_bin: "/self".into(),
            nodes: vec!["node-1".into()],
            cgroup_root: "/cg".into(),
            run_as: BTreeMap::new(),
        }
    }

    #[test]
    fn apiserver_listens_on_the_gateway_with_rbac_and_service_account_keys() {
        let a = apiserver(
            &cfg(),
            EtcdPorts {
                client: 2379,
                peer: 2380,
            },
        )
        .args;
        for f in [
            "--bind-address=198.18.0.1",
            "--service-cluster-ip-range=198.19.0.0/16",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file=/tmp/kc/pki/sa.pub",
            "--service-account-signing-key-file=/tmp/kc/pki/sa.key",
            "--etcd-servers=http://127.0.0.1:2379",
        ] {
            assert!(a.iter().any(|x| x == f), "{f} missing from {a:?}");
        }
    }

    #[test]
    fn every_control_plane_listener_is_on_loopback_or_the_gateway() {
        let c = cfg();
        let ports = EtcdPorts {
            client: 2379,
            peer: 2380,
        };
        for comp in [
            etcd(&c, ports),
            controller_manager(&c),
            scheduler(&c),
            proxy(&c),
        ] {
            for a in &comp.args {
                if a.contains("bind-address") || a.contains("listen-") {
                    assert!(
                        a.contains("127.0.0.1") || a.contains("198.18.0.1"),
                        "{}: {a}",
                        comp.name
                    );
                }
            }
        }
    }
}
