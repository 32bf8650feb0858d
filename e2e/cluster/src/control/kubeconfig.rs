//! The kubeconfig files in DIR: `kubeconfig` (admin, everything embedded so it
//! works from any directory and after DIR moves) and `<component>.kubeconfig`
//! for the controller-manager, scheduler, kube-proxy and each node. Rendering
//! is pure; `write_all` writes them (0600).

use anyhow::{Context, Result};
use base64::Engine;
use serde_json::json;

use crate::config::{ClusterConfig, PkiFile};

use super::pki::{write_mode, Pki};

/// Render a kubeconfig for one user against the cluster's API server.
fn render(server: &str, ca_pem: &str, user: &str, cert_pem: &str, key_pem: &str) -> Result<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tandem-test", "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }}],
        "contexts": [{"name": "tandem-test", "context": {"cluster": "tandem-test", "user": user}}],
        "current-context": "tandem-test",
    });
    serde_yaml::to_string(&doc).context("rendering a kubeconfig")
}

/// The component kubeconfigs `write_all` makes: (file name stem, identity).
fn components(cfg: &ClusterConfig) -> Vec<(String, PkiFile)> {
    let mut v = vec![
        (
            "kube-controller-manager".to_string(),
            PkiFile::ControllerManager,
        ),
        ("kube-scheduler".to_string(), PkiFile::Scheduler),
        ("kube-proxy".to_string(), PkiFile::Proxy),
    ];
    for node in &cfg.nodes {
        v.push((node.clone(), PkiFile::Node(node.clone())));
    }
    v
}

/// Write `DIR/kubeconfig` and every `DIR/<component>.kubeconfig`.
pub fn write_all(cfg: &ClusterConfig, pki: &Pki) -> Result<()> {
    let server = cfg.apiserver_url();
    let mut files = vec![(cfg.kubeconfig(), "admin".to_string(), PkiFile::Admin)];
    for (name, id) in components(cfg) {
        files.push((cfg.component_kubeconfig(&name), name, id));
    }
    for (path, user, id) in files {
        let pair = pki
            .pair(&id)
            .with_context(|| format!("no certificate for {}", id.stem()))?;
        let text = render(&server, pki.ca_pem(), &user, &pair.cert, &pair.key)?;
        write_mode(&path, &text, 0o600)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_embeds_the_ca_and_the_client_certificate() {
        let text = render("https://198.18.0.1:6443", "CA", "admin", "CERT", "KEY").unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://198.18.0.1:6443"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        assert_eq!(v["users"][0]["user"]["client-key-data"], "S0VZ");
        assert_eq!(v["current-context"], "tandem-test");
    }
}
