//! Supervision of the postgres child: start (instance settings on the
//! command line, agent-owned config files rewritten first), stop with
//! smart → fast → immediate escalation, and crash detection with restart
//! unless fenced. Does I/O.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::api::agent::{slot_name, StopMode};
use crate::pg::{conf, process, Tool};

use super::state::{lock, Agent};
use super::AgentError;

/// How a stop of a running postgres went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// The mode asked for.
    pub requested: StopMode,
    /// The last mode signalled (immediate also when a SIGKILL followed it).
    pub mode: StopMode,
    /// No mode was enough: the whole process group was SIGKILLed.
    pub killed: bool,
}

impl Stopped {
    /// postgres needed a harsher mode than asked for, or a SIGKILL.
    /// (Smart escalating to fast still shuts down cleanly: that is no escalation here.)
    pub fn escalated(&self) -> bool {
        self.killed || (self.mode == StopMode::Immediate && self.requested != StopMode::Immediate)
    }
}

fn signal_for(mode: StopMode) -> Signal {
    match mode {
        StopMode::Smart => Signal::SIGTERM,
        StopMode::Fast => Signal::SIGINT,
        StopMode::Immediate => Signal::SIGQUIT,
    }
}

fn escalation(from: StopMode) -> Vec<StopMode> {
    [StopMode::Smart, StopMode::Fast, StopMode::Immediate]
        .into_iter()
        .filter(|m| *m >= from)
        .collect()
}

impl Agent {
    /// Whether the postmaster is running (our child and not exited).
    pub fn postgres_running(&self) -> bool {
        lock(&self.pg)
            .child
            .as_ref()
            .is_some_and(|c| c.exit_status().is_none())
    }

    /// Rewrite the files the agent owns in the data directory (configs copied
    /// from a clone or rewind source are replaced by this instance's).
    pub fn prepare_data_dir(&self) -> Result<(), AgentError> {
        let dir = &self.cfg.data_dir;
        conf::write_owned(
            &self.runner,
            &dir.join("postgresql.conf"),
            &conf::postgresql_conf(self.cfg.pg_config_file.as_deref()),
        )?;
        conf::write_owned(
            &self.runner,
            &dir.join("pg_hba.conf"),
            &conf::pg_hba_conf(&self.cfg.superuser, &self.cfg.replication_user),
        )?;
        if conf::is_standby(dir) {
            if let Some(up) = conf::read_upstream(dir) {
                let conninfo = conf::primary_conninfo(
                    &up,
                    &self.cfg.replication_user,
                    &self.cfg.instance,
                    self.runner.passfile(),
                );
                conf::edit_auto_conf(
                    &self.runner,
                    dir,
                    &[
                        ("primary_conninfo", Some(conninfo)),
                        ("primary_slot_name", Some(slot_name(&self.cfg.instance))),
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Start postgres and wait until it accepts connections; false when it already ran.
    pub async fn start_postgres(self: &Arc<Self>, timeout: Duration) -> Result<bool, AgentError> {
        if self.postgres_running() {
            return Ok(false);
        }
        self.prepare_data_dir()?;
        process::remove_stale_lockfile(&self.cfg.data_dir.join("postmaster.pid"));
        process::remove_stale_lockfile(
            &self
                .cfg
                .run_dir
                .join(format!(".s.PGSQL.{}.lock", self.cfg.pg_port)),
        );
        let c = &self.cfg;
        let mut cmd = self.runner.command(Tool::Postgres);
        let settings = [
            format!("port={}", c.pg_port),
            format!("listen_addresses={}", c.pg_listen),
            format!("unix_socket_directories={}", c.run_dir.display()),
            format!("cluster_name={}", c.instance),
            "wal_log_hints=on".to_string(),
        ];
        let mut args: Vec<OsString> = vec!["-D".into(), c.data_dir.clone().into()];
        for s in settings {
            args.push("-c".into());
            args.push(s.into());
        }
        tracing::info!(
            command = %crate::pg::runner::command_line(Tool::Postgres, &args),
            "starting postgres"
        );
        cmd.args(&args);
        let child = process::spawn_postgres(cmd)?;
        let generation = {
            let mut pg = lock(&self.pg);
            pg.generation += 1;
            pg.child = Some(child.clone());
            pg.want_running = true;
            pg.generation
        };
        tokio::spawn(watch(self.clone(), generation, child.clone()));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.exit_status() {
                return Err(crate::pg::Error::StartFailed {
                    status,
                    log: child.log_tail(),
                }
                .into());
            }
            if self.local_client(Duration::from_secs(2)).await.is_ok() {
                tracing::info!(pid = child.pid(), "postgres accepts connections");
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Err(crate::pg::Error::StartTimeout(timeout.as_secs()).into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stop postgres, escalating smart → fast → immediate (then SIGKILL) after
    /// `step_timeout` each; how it went, None when it was not running.
    pub async fn stop_postgres(
        &self,
        mode: StopMode,
        step_timeout: Duration,
    ) -> Result<Option<Stopped>, AgentError> {
        self.stop_postgres_from(mode, step_timeout, step_timeout)
            .await
    }

    /// As [`Self::stop_postgres`], the smart step (when `mode` is smart)
    /// bounded by `smart_timeout`. A smart stop first ends the sessions of
    /// tandem's own agents (this one's probe, the standbys' upstream probes):
    /// smart waits for client sessions, and those are not the clients'.
    pub async fn stop_postgres_from(
        &self,
        mode: StopMode,
        smart_timeout: Duration,
        step_timeout: Duration,
    ) -> Result<Option<Stopped>, AgentError> {
        if mode == StopMode::Smart && self.postgres_running() {
            self.end_agent_sessions().await;
        }
        let Some(child) = lock(&self.pg).child.take() else {
            return Ok(None);
        };
        if child.exit_status().is_some() {
            return Ok(None);
        }
        for m in escalation(mode) {
            tracing::info!(pid = child.pid(), mode = m.as_str(), "stopping postgres");
            child.signal(signal_for(m))?;
            let timeout = if m == StopMode::Smart {
                smart_timeout
            } else {
                step_timeout
            };
            if child.wait_timeout(timeout).await.is_some() {
                tracing::info!(mode = m.as_str(), "postgres stopped");
                return Ok(Some(Stopped {
                    requested: mode,
                    mode: m,
                    killed: false,
                }));
            }
            tracing::warn!(
                mode = m.as_str(),
                timeout_s = timeout.as_secs_f64(),
                "postgres did not stop in time; escalating"
            );
        }
        tracing::warn!(
            pid = child.pid(),
            "postgres ignored every stop mode: SIGKILL"
        );
        child.signal_group(Signal::SIGKILL)?;
        child.wait_timeout(Duration::from_secs(30)).await;
        Ok(Some(Stopped {
            requested: mode,
            mode: StopMode::Immediate,
            killed: true,
        }))
    }
}

impl Agent {
    /// End the sessions of tandem's agents on this server (best effort),
    /// before a smart stop that would wait for them.
    async fn end_agent_sessions(&self) {
        let Ok(client) = self.local_client(Duration::from_secs(1)).await else {
            return;
        };
        let ended = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid() \
                 AND backend_type = 'client backend'",
                &[&crate::pg::query::APPLICATION_NAME],
            )
            .await;
        match ended {
            Ok(row) => {
                let n: i64 = row.try_get(0).unwrap_or(0);
                tracing::debug!(
                    sessions = n,
                    "ended the agents' sessions before a smart stop"
                );
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not end the agents' sessions before a smart stop")
            }
        }
    }
}

/// Wait for the child of `generation` to exit; an exit nobody asked for is a
/// crash, handed to [`restarter`] when postgres should run.
async fn watch(agent: Arc<Agent>, generation: u64, child: process::PgChild) {
    let status = child.wait().await;
    let restart = {
        let mut pg = lock(&agent.pg);
        if pg.generation != generation || pg.child.is_none() {
            return;
        }
        pg.child = None;
        pg.crash_count += 1;
        pg.last_crash = Some(format!("{}: {status}", jiff::Timestamp::now()));
        tracing::error!(
            pid = child.pid(),
            status = %status,
            crash_count = pg.crash_count,
            log = %child.log_tail(),
            "postgres exited unexpectedly"
        );
        agent.metrics.crashes.inc();
        pg.want_running && !pg.fenced
    };
    agent.probe_now.notify_one();
    if restart {
        let _ = agent.crashed.send(generation);
    }
}

/// Restart postgres after crashes (unless fenced or stopped on purpose meanwhile).
pub async fn restarter(agent: Arc<Agent>, mut crashed: tokio::sync::mpsc::UnboundedReceiver<u64>) {
    let mut last_restart: Option<Instant> = None;
    while let Some(generation) = crashed.recv().await {
        let mut backoff = first_restart_delay(last_restart.map(|t| t.elapsed()));
        last_restart = Some(Instant::now());
        loop {
            tokio::time::sleep(backoff).await;
            let _ops = agent.ops.lock().await;
            {
                let pg = lock(&agent.pg);
                if pg.generation != generation
                    || pg.child.is_some()
                    || !pg.want_running
                    || pg.fenced
                {
                    break;
                }
            }
            tracing::info!("restarting postgres after a crash");
            match agent.start_postgres(agent.cfg.start_timeout).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "restart after crash failed");
                    // A child that was spawned has its own watcher, which takes over.
                    if lock(&agent.pg).generation != generation {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                }
            }
        }
    }
}

/// How long to wait before restarting after a crash: at once after an
/// isolated crash (every moment down is a moment without writes), with a
/// growing backoff when postgres crashes again soon after a restart.
fn first_restart_delay(since_last_restart: Option<Duration>) -> Duration {
    match since_last_restart {
        Some(d) if d < Duration::from_secs(5) => Duration::from_secs(1),
        _ => Duration::from_millis(20),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_isolated_crash_restarts_at_once_a_crash_loop_backs_off() {
        assert!(first_restart_delay(None) < Duration::from_millis(100));
        assert!(first_restart_delay(Some(Duration::from_secs(120))) < Duration::from_millis(100));
        assert_eq!(
            first_restart_delay(Some(Duration::from_secs(3))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_stop_escalated_when_it_needed_more_than_a_clean_shutdown() {
        let s = |requested, mode, killed| Stopped {
            requested,
            mode,
            killed,
        };
        assert!(!s(StopMode::Fast, StopMode::Fast, false).escalated());
        assert!(!s(StopMode::Immediate, StopMode::Immediate, false).escalated());
        // Smart → fast still writes a shutdown checkpoint.
        assert!(!s(StopMode::Smart, StopMode::Fast, false).escalated());
        assert!(s(StopMode::Smart, StopMode::Immediate, false).escalated());
        assert!(s(StopMode::Fast, StopMode::Immediate, false).escalated());
        assert!(s(StopMode::Immediate, StopMode::Immediate, true).escalated());
    }

    #[test]
    fn stop_escalates_from_the_requested_mode() {
        assert_eq!(
            escalation(StopMode::Smart),
            vec![StopMode::Smart, StopMode::Fast, StopMode::Immediate]
        );
        assert_eq!(escalation(StopMode::Immediate), vec![StopMode::Immediate]);
    }
}
