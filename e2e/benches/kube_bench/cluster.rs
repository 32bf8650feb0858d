//! What the Kubernetes bench needs of the cluster beyond the e2e helpers:
//! DbClusters applied with kubectl from a manifest written to a temporary
//! file, the `-rw` ClusterIP and the superuser's credentials as a writer on
//! the host uses them, and the memory of a pod's processes read from the
//! node stand-in's cgroup (pods are processes on this machine). Does I/O.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::{Api, Client};
use tandem::api::keys;
use tandem_e2e::{kubectl, kubectl_ok};
use tandem_testkit::bench::memory_kib;
use tandem_testkit::writer::Target;

/// `kubectl create namespace ns` unless it exists.
pub async fn ensure_namespace(ns: &str) {
    if kubectl(&["get", "namespace", ns])
        .await
        .is_ok_and(|o| o.ok())
    {
        return;
    }
    kubectl_ok(&["create", "namespace", ns])
        .await
        .unwrap_or_else(|e| panic!("create namespace {ns}: {e}"));
}

/// `kubectl apply -n ns -f <manifest>`, the manifest written to a temporary file.
pub async fn apply(ns: &str, manifest: &str) {
    let dir = tandem_testkit::TestDir::new("kube-bench");
    let path = dir.path().join("manifest.yaml");
    std::fs::write(&path, manifest).expect("write the manifest");
    let path = path.to_string_lossy().into_owned();
    kubectl_ok(&["apply", "-n", ns, "-f", &path])
        .await
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
}

/// A DbCluster manifest: `instances` instances, 1Gi each, `extra` appended to its spec.
pub fn dbcluster(name: &str, instances: u32, extra: &str) -> String {
    format!(
        "apiVersion: tandem.dev/v1alpha1\nkind: DbCluster\nmetadata:\n  name: {name}\nspec:\n  instances: {instances}\n  storage: {{size: 1Gi}}{extra}\n"
    )
}

/// Where a client on the host writes: the `-rw` Service's ClusterIP with the superuser's credentials.
pub async fn rw_target(client: &Client, ns: &str, cluster: &str) -> Target {
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(&keys::service_rw(cluster))
        .await
        .unwrap_or_else(|e| panic!("get the -rw Service of {cluster}: {e}"));
    let host = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_else(|| panic!("the -rw Service of {cluster} has no ClusterIP"));
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&keys::secret_superuser(cluster))
        .await
        .unwrap_or_else(|e| panic!("get the superuser Secret of {cluster}: {e}"));
    let field = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_else(|| panic!("the superuser Secret of {cluster} has no {k}"))
    };
    Target {
        host,
        port: keys::POSTGRES_PORT,
        user: field("username"),
        password: field("password"),
        dbname: "postgres".into(),
    }
}

/// Where cgroup v2 is mounted.
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// The directory named `name` at most `depth` levels below `dir`.
fn find_dir(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let subdirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    if let Some(hit) = subdirs
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == name))
    {
        return Some(hit.clone());
    }
    if depth == 0 {
        return None;
    }
    subdirs.iter().find_map(|d| find_dir(d, name, depth - 1))
}

/// Every pid in `dir` and below.
fn pids_below(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids_below(&e.path(), out);
            }
        }
    }
}

/// RSS and peak RSS (KiB) of the processes of pod `pod` whose command line
/// contains `program` (e.g. "tandem operator", "tandem agent"), from the
/// node stand-in's cgroup `<node>/pods/<uid>`.
pub async fn pod_memory(client: &Client, ns: &str, pod: &str, program: &str) -> Option<(u64, u64)> {
    let p = Api::<Pod>::namespaced(client.clone(), ns)
        .get(pod)
        .await
        .ok()?;
    let uid = p.metadata.uid?;
    let dir = find_dir(&cgroup2_mount()?, &uid, 5)?;
    let mut pids = Vec::new();
    pids_below(&dir, &mut pids);
    let mut total = None::<(u64, u64)>;
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(program) {
            continue;
        }
        if let Some((rss, hwm)) = memory_kib(pid) {
            let (r, h) = total.unwrap_or((0, 0));
            total = Some((r + rss, h + hwm));
        }
    }
    total
}
