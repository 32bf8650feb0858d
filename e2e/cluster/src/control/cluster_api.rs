//! What `up` asks of the running control plane, always with a bound: a
//! component's health endpoint answers, the StorageClass exists, the nodes are
//! Ready, and a Service ClusterIP reaches an address behind it through
//! kube-proxy (the self-check that proves kube-proxy's rules work). I/O.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::io::AsyncWriteExt;

use super::components::{Component, Health};
use super::procs;
use crate::config::{ClusterConfig, PkiFile, GATEWAY};

/// A client of the API server as `admin` (DIR/kubeconfig).
pub async fn admin_client(cfg: &ClusterConfig) -> Result<Client> {
    let path = cfg.kubeconfig();
    let kubeconfig =
        Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", path.display()))?;
    Client::try_from(config).context("building the API client")
}

/// Fail with the end of its log when the process `up` just started has exited.
pub fn check_running(cfg: &ClusterConfig, name: &str, child: &mut Child) -> Result<()> {
    if let Some(status) = child
        .try_wait()
        .with_context(|| format!("waiting for {name}"))?
    {
        bail!(
            "{name} exited ({status}); the end of {}:\n{}",
            procs::log_file(&cfg.dir, name).display(),
            procs::log_tail(&cfg.dir, name, 25)
        );
    }
    Ok(())
}

fn http_client(cfg: &ClusterConfig, health: &Health) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5));
    let builder = match health {
        Health::ApiServer(_) => {
            let ca =
                std::fs::read(cfg.pki_cert(&PkiFile::Ca)).context("reading the CA certificate")?;
            let mut identity =
                std::fs::read(cfg.pki_cert(&PkiFile::Admin)).context("reading admin.crt")?;
            identity
                .extend(std::fs::read(cfg.pki_key(&PkiFile::Admin)).context("reading admin.key")?);
            builder
                .tls_certs_only(
                    [reqwest::Certificate::from_pem(&ca).context("the CA certificate")?],
                )
                .identity(reqwest::Identity::from_pem(&identity).context("the admin identity")?)
        }
        Health::SelfSigned(_) => builder.tls_danger_accept_invalid_certs(true),
        Health::Http(_) | Health::StorageClass(_) => builder,
    };
    builder.build().context("building an HTTP client")
}

/// Wait until `component` is serving (or has exited, or `limit` passed).
pub async fn wait_healthy(
    cfg: &ClusterConfig,
    component: &Component,
    child: &mut Child,
    limit: Duration,
) -> Result<()> {
    let start = Instant::now();
    let http = http_client(cfg, &component.health)?;
    let mut last = String::from("no answer yet");
    while start.elapsed() < limit {
        check_running(cfg, component.name, child)?;
        let outcome = match &component.health {
            Health::Http(url) | Health::ApiServer(url) | Health::SelfSigned(url) => {
                match http.get(url).send().await {
                    Ok(r) if r.status().is_success() => return Ok(()),
                    Ok(r) => format!("{url}: {}", r.status()),
                    Err(e) => format!("{url}: {e}"),
                }
            }
            Health::StorageClass(name) => {
                let api: Api<StorageClass> = Api::all(admin_client(cfg).await?);
                match api.get_opt(name).await {
                    Ok(Some(_)) => return Ok(()),
                    Ok(None) => format!("StorageClass {name} not created yet"),
                    Err(e) => format!("StorageClass {name}: {e}"),
                }
            }
        };
        last = outcome;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!(
        "{} not healthy within {limit:?} ({last}); the end of {}:\n{}",
        component.name,
        procs::log_file(&cfg.dir, component.name).display(),
        procs::log_tail(&cfg.dir, component.name, 25)
    )
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Wait until every node of `cfg` is Ready, printing progress; a stand-in that
/// exits fails the wait at once.
pub async fn wait_nodes_ready(
    cfg: &ClusterConfig,
    client: &Client,
    stand_ins: &mut [(String, Child)],
    limit: Duration,
) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let start = Instant::now();
    let mut shown = String::new();
    loop {
        for (name, child) in stand_ins.iter_mut() {
            check_running(cfg, name, child)?;
        }
        let ready: Vec<String> = match api.list(&Default::default()).await {
            Ok(list) => list
                .items
                .iter()
                .filter(|n| node_ready(n))
                .filter_map(|n| n.metadata.name.clone())
                .filter(|n| cfg.nodes.contains(n))
                .collect(),
            Err(_) => Vec::new(),
        };
        let line = format!(
            "nodes Ready: {}/{} [{}]",
            ready.len(),
            cfg.nodes.len(),
            ready.join(" ")
        );
        if line != shown {
            println!("  {line}");
            shown = line;
        }
        if ready.len() == cfg.nodes.len() {
            return Ok(());
        }
        if start.elapsed() > limit {
            let logs: Vec<String> = cfg
                .nodes
                .iter()
                .filter(|n| !ready.contains(n))
                .map(|n| {
                    let name = super::components::kubelet_name(n);
                    format!(
                        "{}:\n{}",
                        procs::log_file(&cfg.dir, &name).display(),
                        procs::log_tail(&cfg.dir, &name, 15)
                    )
                })
                .collect();
            bail!(
                "the nodes were not Ready within {limit:?} ({shown}); the end of:\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const SELFCHECK_NS: &str = "tandem-testcluster-selfcheck";

/// Prove kube-proxy's rules: a selector-less Service whose EndpointSlice points
/// at a listener of ours on the gateway address must answer on its ClusterIP
/// from the host. The namespace is removed afterwards (also on failure).
pub async fn proxy_selfcheck(client: &Client, limit: Duration) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((GATEWAY, 0))
        .await
        .context("listening on the gateway address")?;
    let port = listener
        .local_addr()
        .context("the listener's address")?
        .port();
    let server = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let _ = sock.write_all(b"tandem-testcluster\n").await;
        }
    });
    let result = selfcheck_through(client, port, limit).await;
    server.abort();
    let ns: Api<Namespace> = Api::all(client.clone());
    let _ = ns.delete(SELFCHECK_NS, &DeleteParams::background()).await;
    result
}

async fn selfcheck_through(client: &Client, port: u16, limit: Duration) -> Result<()> {
    let ns: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(SELFCHECK_NS.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match ns.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            bail!("namespace {SELFCHECK_NS} still exists (being deleted from an earlier run?)")
        }
        Err(e) => return Err(e).context("creating the self-check namespace"),
    }
    let services: Api<Service> = Api::namespaced(client.clone(), SELFCHECK_NS);
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("probe".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("tcp".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let svc = services
        .create(&PostParams::default(), &svc)
        .await
        .context("creating the self-check Service")?;
    let cluster_ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the self-check Service has no ClusterIP")?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), SELFCHECK_NS);
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("probe-1".into()),
            labels: Some(BTreeMap::from([
                (
                    "kubernetes.io/service-name".to_string(),
                    "probe".to_string(),
                ),
                (
                    "endpointslice.kubernetes.io/managed-by".to_string(),
                    "tandem-testcluster".to_string(),
                ),
            ])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![GATEWAY.to_string()],
            ..Default::default()
        }]),
        ports: Some(vec![EndpointPort {
            name: Some("tcp".into()),
            port: Some(i32::from(port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    };
    slices
        .create(&PostParams::default(), &slice)
        .await
        .context("creating the self-check EndpointSlice")?;

    let target = format!("{cluster_ip}:80");
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match tokio::time::timeout(Duration::from_secs(2), read_banner(&target)).await {
            Ok(Ok(banner)) if banner.starts_with("tandem-testcluster") => return Ok(()),
            Ok(Ok(other)) => last = format!("unexpected answer {other:?}"),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("kube-proxy: ClusterIP {target} did not reach the endpoint {GATEWAY}:{port} within {limit:?} ({last})")
}

async fn read_banner(target: &str) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut sock = tokio::net::TcpStream::connect(target).await?;
    let mut buf = vec![0u8; 64];
    let n = sock.read(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
