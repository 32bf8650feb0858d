//! Agent processes of a local cluster: start one `tandem agent` per instance
//! (as a StatefulSet would start a pod), notice when one is gone, adopt the
//! agents of an earlier `local up` that still run, signal postgres or an agent
//! for fault injection, and stop them all. Does process I/O.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tracing::{info, warn};

/// How to start the agent of one instance.
#[derive(Clone, Debug)]
pub struct AgentLaunch {
    /// Cluster name.
    pub cluster: String,
    /// Instance name.
    pub instance: String,
    /// PGDATA.
    pub data_dir: PathBuf,
    /// The loopback address its postgres and agent listen on and advertise.
    pub address: std::net::IpAddr,
    /// postgres port.
    pub pg_port: u16,
    /// Agent API address.
    pub agent: std::net::SocketAddr,
    /// Files with the token and passwords.
    pub token_file: PathBuf,
    pub superuser_password_file: PathBuf,
    pub replication_password_file: PathBuf,
    /// Extra postgresql.conf lines file.
    pub pg_config_file: Option<PathBuf>,
    /// PostgreSQL binaries.
    pub pg_bin: Option<PathBuf>,
    /// User running postgres.
    pub run_as: Option<String>,
    /// Log file of the agent (and its postgres).
    pub log_file: PathBuf,
}

/// Starting or signalling a process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot start the agent of {instance}: {source}")]
    Spawn {
        instance: String,
        source: std::io::Error,
    },
    #[error("cannot open log file {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
    #[error("{instance} has no running postgres (no postmaster.pid in {data_dir})")]
    NoPostgres { instance: String, data_dir: String },
    #[error("{instance} has no running agent")]
    NoAgent { instance: String },
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: i32, source: nix::Error },
}

enum Handle {
    Child(Child),
    Adopted(u32),
}

/// The agent processes of a cluster.
#[derive(Default)]
pub struct Agents {
    running: BTreeMap<String, Handle>,
}

/// Path of the `tandem` binary to run agents with.
fn tandem_binary() -> std::io::Result<PathBuf> {
    std::env::current_exe()
}

impl Agents {
    /// Start the agent of `launch.instance`, with `bootstrap_from` the
    /// primary to clone from if its data directory is empty.
    pub fn start(
        &mut self,
        launch: &AgentLaunch,
        bootstrap_from: Option<&str>,
    ) -> Result<u32, ProcError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log_file)
            .map_err(|source| ProcError::Log {
                path: launch.log_file.display().to_string(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| ProcError::Log {
            path: launch.log_file.display().to_string(),
            source,
        })?;
        let exe = tandem_binary().map_err(|source| ProcError::Spawn {
            instance: launch.instance.clone(),
            source,
        })?;
        let mut cmd = Command::new(exe);
        cmd.arg("agent")
            .arg("--cluster")
            .arg(&launch.cluster)
            .arg("--instance")
            .arg(&launch.instance)
            .arg("--data-dir")
            .arg(&launch.data_dir)
            .arg("--pg-port")
            .arg(launch.pg_port.to_string())
            .arg("--pg-listen")
            .arg(pg_listen(launch.address))
            .arg("--listen")
            .arg(launch.agent.to_string())
            .arg("--advertise-host")
            .arg(launch.address.to_string())
            .arg("--token-file")
            .arg(&launch.token_file)
            .arg("--superuser-password-file")
            .arg(&launch.superuser_password_file)
            .arg("--replication-password-file")
            .arg(&launch.replication_password_file)
            .arg("--log-format")
            .arg("text")
            // The local platform polls every 200ms; fresher reports let a
            // transition take each step sooner.
            .arg("--probe-interval")
            .arg("200ms");
        if let Some(from) = bootstrap_from {
            cmd.arg("--bootstrap-from").arg(from);
        }
        if let Some(f) = &launch.pg_config_file {
            cmd.arg("--pg-config-file").arg(f);
        }
        if let Some(b) = &launch.pg_bin {
            cmd.arg("--pg-bin").arg(b);
        }
        if let Some(u) = &launch.run_as {
            cmd.arg("--run-as").arg(u);
        }
        // Agents get their own process group: Ctrl-C on the terminal reaches
        // `local up`, which then stops them in order.
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(false);
        // Keep the environment clean of the caller's secrets-bearing variables.
        for var in [
            "TANDEM_TOKEN",
            "TANDEM_SUPERUSER_PASSWORD",
            "TANDEM_REPLICATION_PASSWORD",
            "TANDEM_BOOTSTRAP_FROM",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().map_err(|source| ProcError::Spawn {
            instance: launch.instance.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        info!(instance = %launch.instance, pid, bootstrap_from = bootstrap_from.unwrap_or(""), "agent started");
        self.running
            .insert(launch.instance.clone(), Handle::Child(child));
        Ok(pid)
    }

    /// Take over an agent started by an earlier `local up` that still runs.
    pub fn adopt(&mut self, instance: &str, pid: u32) -> bool {
        if pid != 0 && pid_alive(pid) {
            info!(instance, pid, "adopted running agent");
            self.running
                .insert(instance.to_string(), Handle::Adopted(pid));
            true
        } else {
            false
        }
    }

    /// PID of the agent of `instance` if it runs.
    pub fn pid(&mut self, instance: &str) -> Option<u32> {
        let alive = match self.running.get_mut(instance)? {
            Handle::Child(c) => match c.try_wait() {
                Ok(None) => c.id(),
                Ok(Some(status)) => {
                    warn!(instance, %status, "agent exited");
                    None
                }
                Err(_) => None,
            },
            Handle::Adopted(pid) => pid_alive(*pid).then_some(*pid),
        };
        if alive.is_none() {
            self.running.remove(instance);
        }
        alive
    }

    /// Whether an agent started here has exited since it was last looked at
    /// (it is then forgotten, as [`Agents::pid`] does).
    pub fn any_exited(&mut self) -> bool {
        let started: Vec<String> = self
            .running
            .iter()
            .filter(|(_, h)| matches!(h, Handle::Child(_)))
            .map(|(n, _)| n.clone())
            .collect();
        let mut exited = false;
        for name in started {
            exited |= self.pid(&name).is_none();
        }
        exited
    }

    /// Send `sig` to the agent of `instance`.
    pub fn signal_agent(&mut self, instance: &str, sig: Signal) -> Result<(), ProcError> {
        let pid = self.pid(instance).ok_or_else(|| ProcError::NoAgent {
            instance: instance.to_string(),
        })?;
        send(pid, sig)
    }

    /// Stop every agent: SIGTERM (the agent stops postgres fast), then SIGKILL after `grace`.
    pub async fn stop_all(&mut self, grace: Duration) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in &names {
            if let Some(pid) = self.pid(name) {
                // SIGCONT first: a stopped agent cannot act on SIGTERM.
                let _ = send(pid, Signal::SIGCONT);
                let _ = send(pid, Signal::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if names.iter().all(|n| self.pid(n).is_none()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for name in &names {
            if let Some(pid) = self.pid(name) {
                warn!(instance = %name, pid, "agent did not stop in time: SIGKILL");
                let _ = send(pid, Signal::SIGKILL);
            }
        }
    }
}

/// postgres' listen_addresses: the instance's own address, and 127.0.0.1 on
/// the same (unique) port for tools that know an instance by its port alone.
/// Nothing of tandem connects there: members, endpoints and replication use
/// the instance's address, the one packet-filter rules cut.
fn pg_listen(address: std::net::IpAddr) -> String {
    if address == super::hosts::SHARED {
        address.to_string()
    } else {
        format!("{address},{}", super::hosts::SHARED)
    }
}

/// Whether a process with this pid exists (and is not a zombie we own).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    // A zombie still answers signal 0; read its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

fn send(pid: u32, sig: Signal) -> Result<(), ProcError> {
    let raw = i32::try_from(pid).map_err(|_| ProcError::Signal {
        pid: -1,
        source: nix::Error::EINVAL,
    })?;
    kill(Pid::from_raw(raw), sig).map_err(|source| ProcError::Signal { pid: raw, source })
}

/// PID of the postmaster running on `data_dir`, from postmaster.pid.
pub fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    pid_alive(pid).then_some(pid)
}

/// Whether nothing of the postgres server on `data_dir` can run any more:
/// no live process in its directory (a killed postmaster's backends outlive
/// it until they notice, and a frozen one never does).
pub fn server_gone(data_dir: &Path) -> bool {
    crate::pg::process::server_processes(data_dir).is_empty()
}

/// SIGKILL whatever is left of the server on `data_dir`, its postmaster dead
/// or not, orphaned backends included; how many processes were killed.
pub fn kill_server(data_dir: &Path) -> usize {
    let pids = crate::pg::process::server_processes(data_dir);
    for p in &pids {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    pids.len()
}

/// Send `sig` to the postgres of `instance`: the postmaster and each of its
/// children, so STOP freezes the whole server, as a hung machine would, and
/// KILL leaves no backend behind.
pub fn signal_postgres(instance: &str, data_dir: &Path, sig: Signal) -> Result<u32, ProcError> {
    let pid = postmaster_pid(data_dir).ok_or_else(|| ProcError::NoPostgres {
        instance: instance.to_string(),
        data_dir: data_dir.display().to_string(),
    })?;
    let raw = i32::try_from(pid).map_err(|_| ProcError::Signal {
        pid: -1,
        source: nix::Error::EINVAL,
    })?;
    crate::pg::process::signal_server(raw, sig)
        .map(|()| pid)
        .map_err(|_| ProcError::Signal {
            pid: raw,
            source: nix::Error::EPERM,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_listens_on_its_address_and_127_0_0_1() {
        assert_eq!(
            pg_listen("127.77.4.2".parse().unwrap()),
            "127.77.4.2,127.0.0.1"
        );
        assert_eq!(pg_listen(super::super::hosts::SHARED), "127.0.0.1");
    }

    #[test]
    fn dead_and_missing_pids_are_not_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }

    #[test]
    fn postmaster_pid_needs_a_live_process() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(postmaster_pid(dir.path()), None);
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n/data\n", std::process::id()),
        )
        .unwrap();
        assert_eq!(postmaster_pid(dir.path()), Some(std::process::id()));
        std::fs::write(dir.path().join("postmaster.pid"), "999999999\n").unwrap();
        assert_eq!(postmaster_pid(dir.path()), None);
    }
}
