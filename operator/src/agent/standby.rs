//! Helpers the actions share: checking a member before acting on it,
//! slots on the primary, waiting for streaming, pg_rewind, and starting a
//! stopped data directory as a standby. Does I/O.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::agent::*;
use crate::api::{Lsn, WalReceiverState};
use crate::pg::runner::Progress;
use crate::pg::{self, conf, control, query, Tool, Watch};

use super::bootstrap::standby_files;
use super::state::{lock, Agent};
use super::{AgentError, BadRequest, BadTarget, Conflict, Unavailable};

/// What pg_rewind said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewindOutcome {
    /// A rewind is (dry run) or was needed.
    pub needed: bool,
    /// pg_rewind's lines about timelines and divergence, for people.
    pub reason: String,
    /// `servers diverged at WAL location X on timeline N`: where this
    /// server's history left its source's (printed when the timelines differ).
    pub diverged_at: Option<Lsn>,
}

impl RewindOutcome {
    /// Read pg_rewind's output.
    pub fn parse(out: &str) -> RewindOutcome {
        let reason = out
            .lines()
            .filter(|l| {
                l.contains("diverged") || l.contains("no rewind required") || l.contains("timeline")
            })
            .collect::<Vec<_>>()
            .join("; ");
        let diverged_at = out.lines().find_map(|l| {
            let rest =
                &l[l.find("diverged at WAL location ")? + "diverged at WAL location ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        });
        RewindOutcome {
            needed: !out.contains("no rewind required"),
            reason,
            diverged_at,
        }
    }
}

/// How long a standby may take to stream after it was started.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// How often [`Agent::wait_streaming`] looks.
const STREAM_POLL: Duration = Duration::from_millis(20);

impl Agent {
    pub fn validate_member(&self, m: &Member, what: &'static str) -> Result<(), AgentError> {
        if m.name.is_empty() || m.host.is_empty() || m.port == 0 {
            return Err(BadRequest::IncompleteMember { what }.into());
        }
        if self.cfg.is_me(m) {
            return Err(AgentError::SelfTarget {
                what,
                name: m.name.clone(),
                address: m.address(),
            });
        }
        Ok(())
    }

    /// The system identifier of our data directory (pg_controldata works while stopped).
    pub async fn own_system_identifier(&self) -> Result<String, AgentError> {
        control::read(&self.runner, &self.cfg.data_dir)
            .await?
            .system_identifier
            .ok_or_else(|| Conflict::NoSystemIdentifier.into())
    }

    /// The target must answer, be a primary and belong to our cluster.
    pub async fn check_primary(&self, m: &Member, what: &'static str) -> Result<(), AgentError> {
        self.check_identity(m, what, true).await
    }

    /// The target must answer and belong to our cluster: a primary, or a
    /// standby to cascade from.
    pub async fn check_member(&self, m: &Member, what: &'static str) -> Result<(), AgentError> {
        self.check_identity(m, what, false).await
    }

    async fn check_identity(
        &self,
        m: &Member,
        what: &'static str,
        primary: bool,
    ) -> Result<(), AgentError> {
        let client = self
            .member_client(m, Duration::from_secs(5))
            .await
            .map_err(|source| BadTarget::Unreachable {
                what,
                name: m.name.clone(),
                address: m.address(),
                source: Box::new(source),
            })?;
        let (in_recovery, sysid) = query::identity(&client).await?;
        if primary && in_recovery {
            return Err(BadTarget::NotPrimary {
                what,
                name: m.name.clone(),
                address: m.address(),
            }
            .into());
        }
        let ours = self.own_system_identifier().await?;
        if ours != sysid {
            return Err(BadTarget::ForeignCluster {
                what,
                name: m.name.clone(),
                theirs: sysid,
                ours,
            }
            .into());
        }
        Ok(())
    }

    pub async fn ensure_slot_on(&self, m: &Member) -> Result<(), AgentError> {
        let client = self
            .member_client(m, Duration::from_secs(5))
            .await
            .map_err(|source| BadTarget::Lost {
                address: m.address(),
                source: Box::new(source),
            })?;
        query::ensure_slot(&client, &slot_name(&self.cfg.instance)).await?;
        Ok(())
    }

    /// Wait until the walreceiver streams from `m`, looking every
    /// [`STREAM_POLL`] over one connection (each answer that waits on this
    /// is on a failover's or switchover's path).
    pub async fn wait_streaming(&self, m: &Member, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut client = None;
        while Instant::now() < deadline {
            if client
                .as_ref()
                .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
            {
                client = self.local_client(Duration::from_secs(2)).await.ok();
            }
            if let Some(c) = &client {
                match query::wal_receiver(c).await {
                    Ok(Some(w)) => {
                        if w.status == WalReceiverState::Streaming
                            && w.sender_port == Some(i32::from(m.port))
                            && w.sender_host.as_deref() == Some(m.host.as_str())
                        {
                            return true;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => client = None,
                }
            }
            tokio::time::sleep(STREAM_POLL).await;
        }
        false
    }

    /// The newest WAL position of the running postgres (current on a
    /// primary, received on a standby); None when it does not answer.
    pub async fn head_lsn(&self) -> Option<Lsn> {
        if !self.postgres_running() {
            return None;
        }
        let c = self.local_client(Duration::from_secs(2)).await.ok()?;
        query::head_lsn(&c).await.ok().flatten()
    }

    pub async fn in_recovery(&self) -> Result<bool, AgentError> {
        let c = self
            .local_client(Duration::from_secs(5))
            .await
            .map_err(Unavailable::NoAnswer)?;
        Ok(query::identity(&c).await?.0)
    }

    /// When the stopped data directory was not shut down cleanly (a crash, a
    /// kill -9, a lost node), replay its WAL to the end in single-user mode
    /// so that it is: same timeline, nothing promoted.
    async fn finish_crash_recovery(&self, limits: &ToolLimits) -> Result<(), pg::Error> {
        let c = control::read(&self.runner, &self.cfg.data_dir).await?;
        if c.clean_shutdown() == Some(true) {
            return Ok(());
        }
        let state = c.state.unwrap_or_default();
        tracing::info!(instance = %self.cfg.instance, %state, "finishing crash recovery before pg_rewind");
        let args: Vec<OsString> = vec![
            "--single".into(),
            "-D".into(),
            self.cfg.data_dir.clone().into(),
            "template1".into(),
        ];
        // Single-user mode prints nothing while it replays: only the rewind's time limit applies.
        let watch = Watch {
            limit: limits.rewind_timeout.as_ref().map(|d| d.duration()),
            stall: None,
        };
        self.runner
            .run_watched(Tool::Postgres, &args, watch, &|_| {})
            .await?;
        Ok(())
    }

    /// Run a long tool under `watch`, its progress shown in `/status` meanwhile.
    pub async fn run_long(
        &self,
        tool: Tool,
        args: &[OsString],
        watch: Watch,
    ) -> Result<String, pg::Error> {
        let name = tool.name().to_string();
        let report = |p: Progress| {
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            *lock(&self.progress) = Some(ToolProgress {
                tool: name.clone(),
                done_bytes: p.reading.map(|r| r.done_bytes),
                total_bytes: p.reading.map(|r| r.total_bytes),
                percent: p.reading.map(|r| r.percent),
                since_progress_ms: ms(p.since_progress),
                elapsed_ms: ms(p.elapsed),
            });
        };
        let out = self.runner.run_watched(tool, args, watch, &report).await;
        *lock(&self.progress) = None;
        out
    }

    /// pg_rewind from `source`; `dry_run` only asks. Whether a rewind is/was
    /// needed, and where the histories diverged.
    pub async fn pg_rewind(
        &self,
        source: &Member,
        dry_run: bool,
        limits: &ToolLimits,
    ) -> Result<RewindOutcome, AgentError> {
        // pg_rewind compares timelines from the source's pg_control, which a
        // fresh promotion only updates at its next checkpoint.
        let client = self
            .member_client(source, Duration::from_secs(5))
            .await
            .map_err(|e| BadTarget::Lost {
                address: source.address(),
                source: Box::new(e),
            })?;
        client
            .batch_execute("CHECKPOINT")
            .await
            .map_err(|source| pg::Error::Sql {
                context: "CHECKPOINT on the rewind source".into(),
                source,
            })?;
        drop(client);
        // pg_rewind (and above all its --dry-run, which skips the step) needs a
        // cleanly shut down target: finish the crash recovery of a killed
        // primary first, as pg_rewind itself would.
        self.finish_crash_recovery(limits)
            .await
            .map_err(AgentError::RewindFailed)?;
        let conninfo = format!(
            "host={} port={} user={} dbname=postgres connect_timeout=10",
            conf::conninfo_value(&source.host),
            source.port,
            conf::conninfo_value(&self.cfg.superuser)
        );
        let mut args: Vec<OsString> = vec![
            "--target-pgdata".into(),
            self.cfg.data_dir.clone().into(),
            "--source-server".into(),
            conninfo.into(),
        ];
        if dry_run {
            args.push("--dry-run".into());
        } else {
            args.push("--progress".into());
        }
        let watch = Watch {
            limit: limits.rewind_timeout.as_ref().map(|d| d.duration()),
            stall: limits.stall(),
        };
        let out = self
            .run_long(Tool::PgRewind, &args, watch)
            .await
            .map_err(AgentError::RewindFailed)?;
        Ok(RewindOutcome::parse(&out))
    }

    /// Stopped data directory → standby of `primary`, started and streaming.
    pub async fn start_as_standby(
        self: &Arc<Self>,
        action: &str,
        primary: &Member,
        steps: &mut Vec<String>,
    ) -> Result<(), AgentError> {
        self.step(
            action,
            steps,
            format!("configure as standby of {}", primary.name),
        );
        standby_files(self, &self.cfg.data_dir, primary)?;
        self.step(action, steps, "ensure the replication slot on the primary");
        self.ensure_slot_on(primary).await?;
        self.step(action, steps, "start postgres");
        lock(&self.pg).fenced = false;
        self.start_postgres(self.cfg.start_timeout).await?;
        self.step(action, steps, "wait for streaming");
        if !self.wait_streaming(primary, STREAM_TIMEOUT).await {
            return Err(Conflict::NotStreaming {
                primary: primary.name.clone(),
                seconds: STREAM_TIMEOUT.as_secs(),
            }
            .into());
        }
        self.step(action, steps, format!("streaming from {}", primary.name));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewind_output_says_whether_and_where_histories_diverged() {
        let out = "pg_rewind: servers diverged at WAL location 0/3000148 on timeline 1\n\
                   pg_rewind: rewinding from last common checkpoint at 0/2000060 on timeline 1\n\
                   pg_rewind: Done!";
        let r = RewindOutcome::parse(out);
        assert!(r.needed);
        assert_eq!(r.diverged_at, Some(Lsn(0x3000148)));
        assert!(
            r.reason.contains("diverged at WAL location 0/3000148"),
            "{r:?}"
        );
        let r = RewindOutcome::parse(
            "pg_rewind: servers diverged at WAL location 0/5000000 on timeline 2\n\
             pg_rewind: no rewind required",
        );
        assert!(!r.needed);
        assert_eq!(r.diverged_at, Some(Lsn(0x5000000)));
        let r = RewindOutcome::parse(
            "pg_rewind: source and target cluster are on the same timeline\n\
             pg_rewind: no rewind required",
        );
        assert_eq!((r.needed, r.diverged_at), (false, None));
    }
}
