//! The agent's shared state: configuration, the runner, the postgres child
//! and its supervision flags, the last probe, the lease. Connections helpers.
//! Does I/O (connections, the run directory).

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::api::agent::{AgentStatus, LeaseState, Member};
use crate::pg::{self, conf, process::PgChild, query, Runner};

use super::lease::Lease;
use super::stopped::StoppedCache;
use super::{epoch, metrics::Metrics, AgentError, Config};

/// Supervision state of the postgres child.
#[derive(Default)]
pub struct PgState {
    /// The running postmaster, taken out while it is being stopped on purpose.
    pub child: Option<PgChild>,
    /// Incremented at every start, so a crash watcher knows whether its child is still current.
    pub generation: u64,
    /// Stopped on request: not restarted after exits.
    pub fenced: bool,
    /// Whether the agent wants postgres up (false before bootstrap and during actions).
    pub want_running: bool,
    pub crash_count: u64,
    pub last_crash: Option<String>,
}

/// The agent.
pub struct Agent {
    pub cfg: Config,
    pub runner: Runner,
    /// Serialises actions (and crash restarts): one at a time.
    pub ops: tokio::sync::Mutex<()>,
    pub pg: Mutex<PgState>,
    pub status: RwLock<AgentStatus>,
    /// When the agent started: its challenges count from here.
    pub started: Instant,
    /// The primary lease.
    pub lease: Mutex<Lease>,
    /// The highest lease epoch this agent knows (kept in `epoch_file`).
    pub known_epoch: Mutex<u64>,
    /// Serialises the changes of `known_epoch` with what depends on it
    /// (renewals, stop-vouching), so each is checked and kept as one step.
    pub epoch_writes: tokio::sync::Mutex<()>,
    pub epoch_file: std::path::PathBuf,
    /// The last vouch this agent gave: the primary and when. Held while a
    /// vouch is decided and recorded, so `/stop-vouching` reads it after
    /// every vouch decided under the old epoch.
    pub last_vouch: Mutex<Option<(String, Instant)>>,
    /// What the health checks compare against, as the operator last sent it (`POST /checks`).
    pub checks: Mutex<Option<crate::api::agent::ChecksRequest>>,
    /// Primary: whether each expected standby took a replication connection
    /// from it, and when that was measured.
    pub replication_to: Mutex<std::collections::BTreeMap<String, (bool, std::time::Instant)>>,
    /// Wakes the replication-connection check early (new settings).
    pub recheck_replication: tokio::sync::Notify,
    pub activity: Mutex<Option<String>>,
    /// The long operation running now (bootstrap or an action); callers leave the instance alone meanwhile.
    pub operation: Mutex<Option<String>>,
    /// How far the pg_basebackup or pg_rewind running now got.
    pub progress: Mutex<Option<crate::api::agent::ToolProgress>>,
    pub metrics: Metrics,
    /// What the last stop left in the data directory (read once per stop).
    pub stopped: tokio::sync::Mutex<Option<StoppedCache>>,
    /// Wakes the probe loop early (after an action).
    pub probe_now: tokio::sync::Notify,
    /// Probes started so far (the probe loop counts them).
    pub probes_started: AtomicU64,
    /// The count of the latest probe whose result /status serves.
    pub probed: tokio::sync::watch::Sender<u64>,
    /// Generations of children that crashed and should be restarted.
    pub crashed: tokio::sync::mpsc::UnboundedSender<u64>,
}

/// Lock a std mutex, recovering from poisoning (the data stays usable).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Remove `tandem-agent-<pid>` run directories of agents that are gone (killed ones leave theirs).
fn remove_stale_run_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("tandem-agent-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(dir = %e.path().display(), "removing the run directory of a gone agent");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Agent {
    /// Set up the run directory (socket, password file) and the runner.
    pub fn new(
        cfg: Config,
        crashed: tokio::sync::mpsc::UnboundedSender<u64>,
    ) -> Result<Agent, AgentError> {
        if cfg.run_dir_owned {
            remove_stale_run_dirs();
        }
        std::fs::create_dir_all(&cfg.run_dir).map_err(pg::Error::io(&cfg.run_dir))?;
        std::fs::set_permissions(&cfg.run_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(pg::Error::io(&cfg.run_dir))?;
        let passfile = cfg.run_dir.join("pgpass");
        let runner = Runner::new(
            cfg.bin_dir.clone(),
            cfg.run_as.clone(),
            Some(passfile.clone()),
        );
        runner.chown(&cfg.run_dir)?;
        let mut text = conf::passfile_line(&cfg.superuser, &cfg.superuser_password);
        text.push_str(&conf::passfile_line(
            &cfg.replication_user,
            &cfg.replication_password,
        ));
        conf::write_owned(&runner, &passfile, &text)?;
        let epoch_file = epoch::path(&cfg.data_dir);
        let known_epoch = epoch::load(&epoch_file)?;
        let status = AgentStatus {
            instance: cfg.instance.clone(),
            data_dir: cfg.data_dir.display().to_string(),
            ..Default::default()
        };
        Ok(Agent {
            metrics: Metrics::new(),
            cfg,
            runner,
            ops: tokio::sync::Mutex::new(()),
            pg: Mutex::new(PgState::default()),
            status: RwLock::new(status),
            started: Instant::now(),
            lease: Mutex::new(Lease::default()),
            known_epoch: Mutex::new(known_epoch),
            epoch_writes: tokio::sync::Mutex::new(()),
            epoch_file,
            last_vouch: Mutex::new(None),
            checks: Mutex::new(None),
            replication_to: Mutex::new(Default::default()),
            recheck_replication: tokio::sync::Notify::new(),
            activity: Mutex::new(None),
            // Bootstrap starts with the agent.
            operation: Mutex::new(Some("bootstrap".into())),
            progress: Mutex::new(None),
            stopped: tokio::sync::Mutex::new(None),
            probe_now: tokio::sync::Notify::new(),
            probes_started: AtomicU64::new(0),
            probed: tokio::sync::watch::Sender::new(0),
            crashed,
        })
    }

    /// The socket directory postgres listens in.
    pub fn socket_dir(&self) -> String {
        self.cfg.run_dir.display().to_string()
    }

    /// A superuser connection to the local postgres over its socket.
    pub async fn local_client(&self, timeout: Duration) -> Result<Client, pg::Error> {
        let dir = self.socket_dir();
        query::connect(&query::ConnectOpts {
            host: &dir,
            port: self.cfg.pg_port,
            user: &self.cfg.superuser,
            password: Some(&self.cfg.superuser_password),
            timeout,
        })
        .await
    }

    /// A superuser connection to another member.
    pub async fn member_client(&self, m: &Member, timeout: Duration) -> Result<Client, pg::Error> {
        query::connect(&query::ConnectOpts {
            host: &m.host,
            port: m.port,
            user: &self.cfg.superuser,
            password: Some(&self.cfg.superuser_password),
            timeout,
        })
        .await
    }

    /// Probe now and wait (at most `timeout`) until /status serves a probe
    /// that began after this call: what an action changed is then what the
    /// next status poll sees, so its caller can take the next step at once.
    pub async fn fresh_probe(&self, timeout: Duration) {
        let want = self.probes_started.load(Ordering::SeqCst) + 1;
        let mut probed = self.probed.subscribe();
        self.probe_now.notify_one();
        let _ = tokio::time::timeout(timeout, probed.wait_for(|done| *done >= want)).await;
    }

    /// Record what the agent is doing (shown in /status).
    pub fn set_activity(&self, what: Option<String>) {
        *lock(&self.activity) = what;
    }

    /// Log one step of an action and add it to its list.
    pub fn step(&self, action: &str, steps: &mut Vec<String>, text: impl Into<String>) {
        let text = text.into();
        tracing::info!(instance = %self.cfg.instance, action, step = %text, "step");
        self.set_activity(Some(format!("{action}: {text}")));
        steps.push(text);
    }

    /// The lease as seen now; its challenge is this instant.
    pub fn lease_state(&self) -> LeaseState {
        let known = *lock(&self.known_epoch);
        lock(&self.lease).state(self.started, Instant::now(), known)
    }

    /// Raise the known epoch to `epoch` (never lower it), kept on disk before
    /// this returns; true when it rose. Hold `epoch_writes` around it.
    pub async fn raise_known_epoch(&self, epoch: u64) -> Result<bool, AgentError> {
        {
            let mut known = lock(&self.known_epoch);
            if epoch <= *known {
                return Ok(false);
            }
            // Raised in memory first: from now on nothing of a lower epoch is
            // vouched for, even when keeping it on disk fails.
            *known = epoch;
        }
        let file = self.epoch_file.clone();
        tokio::task::spawn_blocking(move || epoch::store(&file, epoch))
            .await
            .map_err(|source| AgentError::TaskFailed {
                action: "keep the lease epoch",
                source,
            })??;
        tracing::info!(instance = %self.cfg.instance, epoch, "known lease epoch raised");
        Ok(true)
    }

    /// Stop postgres and remove the run directory; called once at exit.
    pub async fn shutdown(&self) {
        let _guard = self.ops.lock().await;
        lock(&self.pg).want_running = false;
        if let Err(e) = self
            .stop_postgres(crate::api::agent::StopMode::Fast, self.cfg.stop_timeout)
            .await
        {
            tracing::error!(error = %e, "stopping postgres at exit failed");
        }
        if self.cfg.run_dir_owned {
            let _ = std::fs::remove_dir_all(&self.cfg.run_dir);
        }
    }
}
