//! Preparing a local cluster's directory: the DbCluster file, secrets
//! generated once, addresses and ports kept across restarts, per-instance
//! directories, and ownership for the user that runs postgres. Does file I/O.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rand::distr::{Alphanumeric, SampleString};

use super::ports::PortPicker;
use super::state::{write_private, Credentials, InstanceState, LocalState};
use crate::api::{keys, DbCluster, DbClusterSpec};

/// Preparing the directory failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read {path}: {source}")]
    ReadManifest {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a DbCluster manifest: {source}")]
    Manifest {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("{path} has kind {kind}; tandem local runs a DbCluster")]
    Kind { path: String, kind: String },
    #[error("invalid DbCluster {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no free port left below 32768 on 127.0.0.1")]
    NoPorts,
    #[error("no free loopback address block left: a socket is bound in each of 127.77.1.0/24 to 127.77.254.0/24")]
    NoAddresses,
    #[error("port {port} is in use on 127.0.0.1 (given by {flag})")]
    PortInUse { port: u16, flag: &'static str },
    #[error("a cluster is already running in {dir} (tandem local up, pid {pid}); stop it with tandem local down --dir {dir}")]
    AlreadyRunning { dir: String, pid: u32 },
    #[error("user {0} does not exist (needed to run postgres, which refuses to run as root)")]
    NoSuchUser(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Read a DbCluster manifest; Kubernetes-only fields are ignored.
pub fn read_manifest(path: &Path) -> Result<(String, DbClusterSpec), SetupError> {
    let text = std::fs::read_to_string(path).map_err(|source| SetupError::ReadManifest {
        path: path.display().to_string(),
        source,
    })?;
    let value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|source| SetupError::Manifest {
            path: path.display().to_string(),
            source,
        })?;
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    if kind != "DbCluster" {
        return Err(SetupError::Kind {
            path: path.display().to_string(),
            kind,
        });
    }
    let cluster: DbCluster =
        serde_yaml::from_value(value).map_err(|source| SetupError::Manifest {
            path: path.display().to_string(),
            source,
        })?;
    let name = cluster
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "main".to_string());
    validate(&name, &cluster.spec)?;
    Ok((name, cluster.spec.0))
}

/// The checks the API server would make from the CRD schema, for files that never meet one.
pub fn validate(name: &str, spec: &DbClusterSpec) -> Result<(), SetupError> {
    let invalid = |reason: String| SetupError::Invalid {
        name: name.to_string(),
        reason,
    };
    if !(1..=crate::api::MAX_INSTANCES).contains(&spec.instances) {
        return Err(invalid(format!(
            "instances must be 1 to 16, not {}",
            spec.instances
        )));
    }
    if spec.replication.mode == crate::api::ReplicationMode::Sync
        && spec.replication.sync_standbys >= spec.instances
    {
        return Err(invalid(format!(
            "replication.syncStandbys ({}) must be lower than instances ({})",
            spec.replication.sync_standbys, spec.instances
        )));
    }
    for o in &spec.instance_overrides {
        if o.ordinal < 0 || o.ordinal >= spec.instances {
            return Err(invalid(format!(
                "instanceOverrides ordinal {} does not exist (0 to {})",
                o.ordinal,
                spec.instances - 1
            )));
        }
        if let Some(p) = o.priority {
            if !(0..=9).contains(&p) {
                return Err(invalid(format!(
                    "priority of ordinal {} must be 0 to 9, not {p}",
                    o.ordinal
                )));
            }
        }
    }
    let mut problems = Vec::new();
    crate::controller::validate::check_parameters(spec, &mut problems);
    if let Some(cmd) = &spec.archive.command {
        if cmd.is_empty() || cmd.contains(['\n', '\r', '\0']) {
            problems.push("archive.command must be a single, non-empty line".to_string());
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems.join("; ")));
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(invalid(
            "metadata.name must be lowercase letters, digits and '-'".into(),
        ));
    }
    Ok(())
}

/// Files holding the secrets of a local cluster.
pub struct SecretFiles {
    pub token: PathBuf,
    pub superuser_password: PathBuf,
    pub replication_password: PathBuf,
}

/// Secret files under DIR/secrets, generated once and never overwritten.
pub fn secrets(dir: &Path) -> Result<(SecretFiles, String, String, String), SetupError> {
    let sdir = dir.join("secrets");
    std::fs::create_dir_all(&sdir).map_err(io(&sdir))?;
    std::fs::set_permissions(&sdir, std::fs::Permissions::from_mode(0o700)).map_err(io(&sdir))?;
    let files = SecretFiles {
        token: sdir.join("token"),
        superuser_password: sdir.join("superuser-password"),
        replication_password: sdir.join("replication-password"),
    };
    let mut values = Vec::new();
    for f in [
        &files.token,
        &files.superuser_password,
        &files.replication_password,
    ] {
        let v = match std::fs::read_to_string(f) {
            Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
            _ => {
                let v = Alphanumeric.sample_string(&mut rand::rng(), 32);
                write_private(f, v.as_bytes()).map_err(io(f))?;
                v
            }
        };
        values.push(v);
    }
    let replication = values.pop().unwrap_or_default();
    let superuser = values.pop().unwrap_or_default();
    let token = values.pop().unwrap_or_default();
    Ok((files, token, superuser, replication))
}

/// Where a local cluster listens: control API, endpoints, and each instance.
#[derive(Debug)]
pub struct Layout {
    pub control: SocketAddr,
    pub rw: SocketAddr,
    pub ro: SocketAddr,
    /// The block of the instances' addresses (None: all on 127.0.0.1).
    pub address_block: Option<Ipv4Addr>,
    pub instances: Vec<InstanceState>,
}

/// Addresses, ports and paths for every instance, keeping those of an earlier run of this directory.
pub fn layout(
    dir: &Path,
    name: &str,
    instances: i32,
    previous: Option<&LocalState>,
    rw_port: Option<u16>,
    ro_port: Option<u16>,
) -> Result<Layout, SetupError> {
    let mut picker = PortPicker::new(std::process::id());
    let rw = endpoint(rw_port, previous.map(|p| p.rw), "--rw-port", &mut picker)?;
    let ro = endpoint(ro_port, previous.map(|p| p.ro), "--ro-port", &mut picker)?;
    let control = endpoint(None, previous.map(|p| p.control), "control", &mut picker)?;
    let address_block = match previous {
        // A cluster keeps its addresses: its standbys' primary_conninfo names them.
        Some(p) => p.address_block,
        None => Some(super::hosts::pick_block(std::process::id()).ok_or(SetupError::NoAddresses)?),
    };
    let mut out = Vec::new();
    for ordinal in 0..instances.max(0) as u32 {
        let iname = keys::instance_name(name, ordinal);
        let prev = previous.and_then(|p| p.instance(&iname));
        let address = super::hosts::instance_address(address_block, ordinal);
        let (pg_port, agent_port) = instance_ports(prev, &mut picker)?;
        let idir = dir.join(&iname);
        std::fs::create_dir_all(&idir).map_err(io(&idir))?;
        std::fs::set_permissions(&idir, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&idir))?;
        out.push(InstanceState {
            name: iname,
            address,
            pg_port,
            agent: SocketAddr::new(address, agent_port),
            data_dir: idir.join("pgdata"),
            agent_pid: prev.map(|p| p.agent_pid).unwrap_or(0),
        });
    }
    Ok(Layout {
        control,
        rw,
        ro,
        address_block,
        instances: out,
    })
}

/// The state of a new instance of a running cluster (a scale-up by
/// `tandem local apply`): its directory made, fresh ports that none of the
/// cluster's endpoints and instances use, its address from the cluster's block.
pub fn add_instance(
    dir: &Path,
    state: &LocalState,
    ordinal: u32,
) -> Result<InstanceState, SetupError> {
    let mut picker = PortPicker::new(std::process::id().wrapping_add(ordinal));
    for a in [state.control, state.rw, state.ro] {
        picker.reserve(a.port());
    }
    for i in &state.instances {
        picker.reserve(i.pg_port);
        picker.reserve(i.agent.port());
    }
    let iname = keys::instance_name(&state.name, ordinal);
    let address = super::hosts::instance_address(state.address_block, ordinal);
    let (pg_port, agent_port) = instance_ports(None, &mut picker)?;
    let idir = dir.join(&iname);
    std::fs::create_dir_all(&idir).map_err(io(&idir))?;
    std::fs::set_permissions(&idir, std::fs::Permissions::from_mode(0o755)).map_err(io(&idir))?;
    Ok(InstanceState {
        name: iname,
        address,
        pg_port,
        agent: SocketAddr::new(address, agent_port),
        data_dir: idir.join("pgdata"),
        agent_pid: 0,
    })
}

/// An endpoint on 127.0.0.1: the port given by `flag`, else the previous one when free, else a new one.
fn endpoint(
    given: Option<u16>,
    prev: Option<SocketAddr>,
    flag: &'static str,
    picker: &mut PortPicker,
) -> Result<SocketAddr, SetupError> {
    let local = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    match (given, prev) {
        (Some(p), _) => {
            if !super::ports::is_free(p) {
                return Err(SetupError::PortInUse { port: p, flag });
            }
            picker.reserve(p);
            Ok(local(p))
        }
        (None, Some(a)) if super::ports::is_free(a.port()) => {
            picker.reserve(a.port());
            Ok(a)
        }
        _ => picker.pick().map(local).ok_or(SetupError::NoPorts),
    }
}

/// The postgres and agent ports of an instance: an agent that still runs
/// keeps its ports; otherwise they are reused when free, or picked anew.
fn instance_ports(
    prev: Option<&InstanceState>,
    picker: &mut PortPicker,
) -> Result<(u16, u16), SetupError> {
    let still_running = prev
        .map(|p| super::procs::pid_alive(p.agent_pid))
        .unwrap_or(false);
    match prev {
        Some(p)
            if still_running
                || (super::ports::is_free(p.pg_port) && super::ports::is_free(p.agent.port())) =>
        {
            picker.reserve(p.pg_port);
            picker.reserve(p.agent.port());
            Ok((p.pg_port, p.agent.port()))
        }
        _ => {
            let pg = picker.pick().ok_or(SetupError::NoPorts)?;
            let agent = picker.pick().ok_or(SetupError::NoPorts)?;
            Ok((pg, agent))
        }
    }
}

/// Make DIR traversable for the user that runs postgres (it must reach its data directory).
pub fn open_for_postgres(dir: &Path) -> Result<(), SetupError> {
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    let mode = meta.permissions().mode() | 0o711;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io(dir))?;
    // Parents must be traversable too (a temporary directory under /tmp is).
    Ok(())
}

/// Credentials for state.json.
pub fn credentials(user: &str, password: &str) -> Credentials {
    Credentials {
        user: user.to_string(),
        password: password.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("cluster.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn manifest_is_read_with_defaults_and_kubernetes_fields_ignored() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "apiVersion: tandem.dev/v1alpha1\nkind: DbCluster\nmetadata: {name: main, namespace: db, labels: {a: b}}\nspec:\n  instances: 3\n  storage: {size: 1Gi}\n",
        );
        let (name, spec) = read_manifest(&p).unwrap();
        assert_eq!(name, "main");
        assert_eq!(spec.instances, 3);
    }

    #[test]
    fn bad_manifests_are_refused_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "kind: Pod\nmetadata: {name: x}\n");
        assert!(read_manifest(&p)
            .unwrap_err()
            .to_string()
            .contains("kind Pod"));
        let p = write(
            d.path(),
            "kind: DbCluster\nmetadata: {name: main}\nspec: {instances: 20}\n",
        );
        assert!(read_manifest(&p)
            .unwrap_err()
            .to_string()
            .contains("instances must be 1 to 16"));
        let p = write(
            d.path(),
            "kind: DbCluster\nmetadata: {name: main}\nspec: {instances: 2, replication: {mode: sync, syncStandbys: 2}}\n",
        );
        assert!(read_manifest(&p)
            .unwrap_err()
            .to_string()
            .contains("syncStandbys"));
        let p = write(
            d.path(),
            "kind: DbCluster\nmetadata: {name: main}\nspec: {failover: {detectionTimeout: soon}}\n",
        );
        assert!(read_manifest(&p)
            .unwrap_err()
            .to_string()
            .contains("not a duration"));
    }

    #[test]
    fn secrets_are_generated_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let (_, t1, s1, r1) = secrets(d.path()).unwrap();
        let (_, t2, s2, r2) = secrets(d.path()).unwrap();
        assert_eq!((t1.clone(), s1.clone(), r1.clone()), (t2, s2, r2));
        assert_eq!(t1.len(), 32);
        assert_ne!(t1, s1);
    }
}
