//! The per-pod `/etc/hosts` that stands in for cluster DNS: the pod's own
//! names, every Service's ClusterIP, and the per-pod names of pods with
//! `hostname` + `subdomain` (StatefulSet pods under a headless Service).
//! Rendering is pure; `write_in_place` rewrites a bind-mounted file.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, Service};

use crate::config::CLUSTER_DOMAIN;

/// The pod a hosts file is for.
pub struct HostsFor<'a> {
    /// Pod namespace.
    pub namespace: &'a str,
    /// spec.hostname or the pod name.
    pub hostname: &'a str,
    /// spec.subdomain.
    pub subdomain: Option<&'a str>,
    /// The pod's IP.
    pub ip: &'a str,
}

/// The hosts file of `me` given every Service and pod of the cluster.
pub fn render<'s, 'p>(
    me: &HostsFor<'_>,
    services: impl IntoIterator<Item = &'s Service>,
    pods: impl IntoIterator<Item = &'p Pod>,
) -> String {
    let d = CLUSTER_DOMAIN;
    let mut out = String::from(
        "# Kubernetes-managed hosts file (tandem test cluster node stand-in: no cluster DNS).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    match me.subdomain {
        Some(sub) => out.push_str(&format!(
            "{}\t{h}.{sub}.{ns}.svc.{d} {h}\n",
            me.ip,
            h = me.hostname,
            ns = me.namespace
        )),
        None => out.push_str(&format!("{}\t{}\n", me.ip, me.hostname)),
    }
    let mut lines = BTreeSet::new();
    for s in services {
        let (Some(name), Some(ns)) = (s.metadata.name.as_deref(), s.metadata.namespace.as_deref())
        else {
            continue;
        };
        let Some(ip) = s.spec.as_ref().and_then(|x| x.cluster_ip.as_deref()) else {
            continue;
        };
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let mut names = format!("{name}.{ns}.svc.{d} {name}.{ns}.svc {name}.{ns}");
        if ns == me.namespace {
            names.push(' ');
            names.push_str(name);
        }
        lines.insert(format!("{ip}\t{names}\n"));
    }
    for p in pods {
        let Some(spec) = p.spec.as_ref() else {
            continue;
        };
        let (Some(h), Some(sub)) = (spec.hostname.as_deref(), spec.subdomain.as_deref()) else {
            continue;
        };
        let Some(ns) = p.metadata.namespace.as_deref() else {
            continue;
        };
        let status = p.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded") | Some("Failed")) {
            continue;
        }
        let Some(ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .filter(|x| !x.is_empty())
        else {
            continue;
        };
        if ip == me.ip {
            // Its own line is above, with the short hostname.
            continue;
        }
        let mut names = format!("{h}.{sub}.{ns}.svc.{d} {h}.{sub}.{ns}.svc");
        if ns == me.namespace {
            names.push_str(&format!(" {h}.{sub}"));
        }
        lines.insert(format!("{ip}\t{names}\n"));
    }
    if let Some(sub) = me.subdomain {
        // Also the pod's own svc name without the cluster domain.
        lines.insert(format!(
            "{}\t{h}.{sub}.{ns}.svc {h}.{sub}\n",
            me.ip,
            h = me.hostname,
            ns = me.namespace
        ));
    }
    for l in lines {
        out.push_str(&l);
    }
    out
}

/// Replace the content of `path` without replacing the file (it is bind-mounted into the pod).
pub fn write_in_place(path: &Path, content: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(ns: &str, name: &str, ip: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn sts_pod(ns: &str, name: &str, ip: Option<&str>, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                hostname: Some(name.into()),
                subdomain: Some("main-pods".into()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ip: ip.map(Into::into),
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn hosts_resolve_services_and_statefulset_pods() {
        let me = HostsFor {
            namespace: "db",
            hostname: "main-0",
            subdomain: Some("main-pods"),
            ip: "198.18.1.2",
        };
        let services = vec![
            svc("db", "main-rw", "198.19.0.20"),
            svc("db", "main-pods", "None"),
            svc("other", "x", "198.19.0.30"),
        ];
        let pods = vec![
            sts_pod("db", "main-0", Some("198.18.1.2"), "Running"),
            sts_pod("db", "main-1", Some("198.18.2.2"), "Pending"),
            sts_pod("db", "main-2", None, "Pending"),
            sts_pod("db", "old", Some("198.18.3.9"), "Failed"),
        ];
        let h = render(&me, &services, &pods);
        assert!(h.contains("198.18.1.2\tmain-0.main-pods.db.svc.cluster.local main-0\n"));
        assert!(h.contains("198.18.1.2\tmain-0.main-pods.db.svc main-0.main-pods\n"));
        assert!(h.contains(
            "198.19.0.20\tmain-rw.db.svc.cluster.local main-rw.db.svc main-rw.db main-rw\n"
        ));
        assert!(h.contains("198.19.0.30\tx.other.svc.cluster.local x.other.svc x.other\n"));
        assert!(h.contains(
            "198.18.2.2\tmain-1.main-pods.db.svc.cluster.local main-1.main-pods.db.svc main-1.main-pods\n"
        ));
        assert!(!h.contains("main-2"));
        assert!(!h.contains("198.18.3.9"));
        assert!(!h.contains("None"));
        assert!(h.starts_with("# Kubernetes-managed"));
    }

    #[test]
    fn plain_pod_gets_its_hostname() {
        let me = HostsFor {
            namespace: "db",
            hostname: "sql",
            subdomain: None,
            ip: "198.18.1.3",
        };
        let h = render(&me, &Vec::<Service>::new(), &Vec::<Pod>::new());
        assert!(h.contains("198.18.1.3\tsql\n"));
    }
}
