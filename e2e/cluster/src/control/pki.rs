//! The cluster's certificates and keys (rcgen, ECDSA P-256): one CA that signs
//! the API server's serving certificate, every client certificate (admin,
//! controller-manager, scheduler, kube-proxy, the API server's kubelet client,
//! one per node) and the node stand-ins' serving certificate; plus the
//! service-account signing key. Pure generation, then one write to `DIR/pki`
//! (keys 0600).

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::config::{ClusterConfig, PkiFile, CLUSTER_DOMAIN, GATEWAY, KUBERNETES_SERVICE_IP};

/// Who a client certificate authenticates as (CN = user, O = groups).
struct ClientIdentity {
    file: PkiFile,
    user: String,
    groups: Vec<&'static str>,
}

/// One PEM certificate and its key.
pub struct Pair {
    pub cert: String,
    pub key: String,
}

/// Everything `write` puts in `DIR/pki`.
pub struct Pki {
    ca: Pair,
    leaves: Vec<(PkiFile, Pair)>,
    service_account: Pair,
}

/// The API server serving certificate's names: every address a client dials.
fn apiserver_sans() -> Result<Vec<SanType>> {
    let mut sans = vec![
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V4(GATEWAY)),
        SanType::IpAddress(IpAddr::V4(KUBERNETES_SERVICE_IP)),
    ];
    let svc = format!("kubernetes.default.svc.{CLUSTER_DOMAIN}");
    for name in [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        &svc,
    ] {
        sans.push(SanType::DnsName(
            name.try_into().context("DNS name in a SAN")?,
        ));
    }
    Ok(sans)
}

/// The node stand-ins' serving certificate (their HTTPS port, which the API
/// server dials for logs and port-forward at the node's InternalIP).
fn kubelet_sans(nodes: &[String]) -> Result<Vec<SanType>> {
    let mut sans = vec![
        SanType::IpAddress(IpAddr::V4(GATEWAY)),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    for name in nodes.iter().map(String::as_str).chain(["localhost"]) {
        sans.push(SanType::DnsName(
            name.try_into().context("DNS name in a SAN")?,
        ));
    }
    Ok(sans)
}

fn base_params(common_name: &str, organizations: &[&str]) -> Result<CertificateParams> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).context("certificate parameters")?;
    let mut dn = DistinguishedName::new();
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // A fixed, wide validity: the cluster lives minutes, and a skewed clock must not matter.
    params.not_before = date_time_ymd(2000, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
    Ok(params)
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    organizations: &[&str],
    sans: Vec<SanType>,
    usage: &[ExtendedKeyUsagePurpose],
) -> Result<Pair> {
    let key = KeyPair::generate().context("generating a key")?;
    let mut params = base_params(common_name, organizations)?;
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usage.to_vec();
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("signing the certificate of {common_name}"))?;
    Ok(Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A self-signed CA: its PEM pair and the issuer that signs with it.
fn new_ca(common_name: &str) -> Result<(Pair, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate().context("generating a CA key")?;
    let mut params = base_params(common_name, &[])?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(&key)
        .with_context(|| format!("self-signing {common_name}"))?;
    let pair = Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    };
    Ok((pair, Issuer::new(params, key)))
}

impl Pki {
    /// Generate a fresh CA and every certificate the cluster needs.
    pub fn generate(nodes: &[String]) -> Result<Self> {
        let (ca, issuer) = new_ca("tandem-testcluster-ca")?;
        // The aggregation layer's CA is separate, as kubeadm makes it: a
        // client of the cluster CA must not pass for the front proxy.
        let (front_proxy_ca, front_proxy) = new_ca("tandem-testcluster-front-proxy-ca")?;

        let server = [ExtendedKeyUsagePurpose::ServerAuth];
        let client = [ExtendedKeyUsagePurpose::ClientAuth];
        let mut leaves = vec![
            (
                PkiFile::Apiserver,
                leaf(&issuer, "kube-apiserver", &[], apiserver_sans()?, &server)?,
            ),
            (
                PkiFile::Kubelet,
                leaf(
                    &issuer,
                    "tandem-testcluster-kubelet",
                    &[],
                    kubelet_sans(nodes)?,
                    &server,
                )?,
            ),
        ];
        let front_proxy_client = leaf(&front_proxy, "front-proxy-client", &[], vec![], &client)?;
        leaves.push((PkiFile::FrontProxyCa, front_proxy_ca));
        leaves.push((PkiFile::FrontProxyClient, front_proxy_client));
        let mut clients = vec![
            ClientIdentity {
                file: PkiFile::Admin,
                user: "admin".into(),
                groups: vec!["system:masters"],
            },
            ClientIdentity {
                file: PkiFile::ControllerManager,
                user: "system:kube-controller-manager".into(),
                groups: vec![],
            },
            ClientIdentity {
                file: PkiFile::Scheduler,
                user: "system:kube-scheduler".into(),
                groups: vec![],
            },
            ClientIdentity {
                file: PkiFile::Proxy,
                user: "system:kube-proxy".into(),
                groups: vec![],
            },
            ClientIdentity {
                file: PkiFile::ApiserverKubeletClient,
                user: "kube-apiserver-kubelet-client".into(),
                groups: vec!["system:masters"],
            },
        ];
        for node in nodes {
            clients.push(ClientIdentity {
                file: PkiFile::Node(node.clone()),
                user: format!("system:node:{node}"),
                groups: vec!["system:nodes"],
            });
        }
        for c in clients {
            let pair = leaf(&issuer, &c.user, &c.groups, vec![], &client)?;
            leaves.push((c.file, pair));
        }

        let sa_key = KeyPair::generate().context("generating the service-account key")?;
        let service_account = Pair {
            cert: sa_key.public_key_pem(),
            key: sa_key.serialize_pem(),
        };
        Ok(Self {
            ca,
            leaves,
            service_account,
        })
    }

    /// The CA certificate (PEM), for embedding in kubeconfigs.
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert
    }

    /// The certificate and key of `file`, for embedding in kubeconfigs.
    pub fn pair(&self, file: &PkiFile) -> Option<&Pair> {
        self.leaves.iter().find(|(f, _)| f == file).map(|(_, p)| p)
    }

    /// Write every file into `cfg.pki()`: `<name>.crt` 0644, `<name>.key` 0600.
    pub fn write(&self, cfg: &ClusterConfig) -> Result<()> {
        std::fs::create_dir_all(cfg.pki())
            .with_context(|| format!("creating {}", cfg.pki().display()))?;
        write_pair(cfg, &PkiFile::Ca, &self.ca)?;
        write_pair(cfg, &PkiFile::ServiceAccount, &self.service_account)?;
        for (file, pair) in &self.leaves {
            write_pair(cfg, file, pair)?;
        }
        Ok(())
    }
}

fn write_pair(cfg: &ClusterConfig, file: &PkiFile, pair: &Pair) -> Result<()> {
    write_mode(&cfg.pki_cert(file), &pair.cert, 0o644)?;
    write_mode(&cfg.pki_key(file), &pair.key, 0o600)
}

/// Write `text` to `path`, created with `mode` (never briefly world-readable).
pub fn write_mode(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_gets_a_certificate() {
        let nodes = vec!["node-1".to_string(), "node-2".to_string()];
        let pki = Pki::generate(&nodes).unwrap();
        for f in [
            PkiFile::Apiserver,
            PkiFile::Kubelet,
            PkiFile::Admin,
            PkiFile::ControllerManager,
            PkiFile::Scheduler,
            PkiFile::Proxy,
            PkiFile::ApiserverKubeletClient,
            PkiFile::Node("node-2".into()),
            PkiFile::FrontProxyCa,
            PkiFile::FrontProxyClient,
        ] {
            let p = pki.pair(&f).unwrap();
            assert!(p.cert.starts_with("-----BEGIN CERTIFICATE-----"));
            assert!(p.key.contains("PRIVATE KEY"));
        }
        assert!(pki.service_account.cert.contains("PUBLIC KEY"));
    }
}
