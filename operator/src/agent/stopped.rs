//! What a stopped data directory says of the stop that left it: whether it
//! shut down cleanly (pg_controldata) and, when it did not, where its valid
//! WAL ends (pg_waldump). Read once per stop and kept, so /status polls do
//! not read WAL again; the stop actions report it. Does I/O.

use std::time::SystemTime;

use crate::api::agent::{ActionResponse, StopMode};
use crate::api::Lsn;
use crate::pg::control::{self, ControlData};
use crate::pg::wal;

use super::state::{lock, Agent};
use super::supervisor::Stopped;
use super::AgentError;

/// The stopped server's pg_control and, after a stop that was not clean, its end of WAL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoppedState {
    /// pg_controldata's reading.
    pub control: ControlData,
    /// Where valid WAL ends; only after a stop that was not clean.
    pub end_of_wal: Option<Lsn>,
}

/// [`StoppedState`] of one stop: the postgres generation that stopped and
/// pg_control's modification time (a rewind or a crash recovery rewrites it).
pub struct StoppedCache {
    key: (u64, SystemTime),
    state: StoppedState,
}

/// How a stop went and what it left, for the action's answer.
#[derive(Clone, Debug, Default)]
pub struct StopReport {
    /// How the running postgres was stopped (None: it was not running).
    pub stopped: Option<Stopped>,
    /// The data directory after the stop.
    pub state: Option<StoppedState>,
}

impl StopReport {
    /// Whether pg_controldata says the server shut down cleanly.
    pub fn clean(&self) -> Option<bool> {
        self.state.as_ref().and_then(|s| s.control.clean_shutdown())
    }

    /// Where valid WAL ends after a stop that was not clean.
    pub fn end_of_wal(&self) -> Option<Lsn> {
        self.state.as_ref().and_then(|s| s.end_of_wal)
    }

    /// The mode that finally stopped postgres.
    pub fn stopped_with(&self) -> Option<StopMode> {
        self.stopped.map(|s| s.mode)
    }

    /// Put `stoppedWith`, `escalated` and `endOfWal` into an action's answer.
    pub fn fill(&self, r: &mut ActionResponse) {
        r.stopped_with = self.stopped_with();
        r.escalated = self.stopped.map(|s| s.escalated());
        r.end_of_wal = self.end_of_wal();
    }

    /// A step line for the action's list: how it stopped and what it left.
    pub fn describe(&self) -> String {
        let how = match self.stopped {
            None => "postgres was not running".to_string(),
            Some(s) if s.killed => format!(
                "{} did not finish in time; escalated to immediate, then SIGKILL",
                s.requested.as_str()
            ),
            Some(s) if s.mode > s.requested => format!(
                "{} did not finish in time; escalated to {}",
                s.requested.as_str(),
                s.mode.as_str()
            ),
            Some(s) => format!("stopped ({})", s.mode.as_str()),
        };
        match (self.clean(), self.end_of_wal()) {
            (Some(false), Some(end)) => format!("{how}; not a clean shutdown, WAL ends at {end}"),
            (Some(false), None) => format!("{how}; not a clean shutdown, end of WAL unknown"),
            _ => how,
        }
    }
}

impl Agent {
    /// Stop postgres (escalating) and read what the stop left.
    pub async fn stop_and_account(
        &self,
        mode: StopMode,
        step_timeout: std::time::Duration,
    ) -> Result<StopReport, AgentError> {
        self.stop_and_account_from(mode, step_timeout, step_timeout)
            .await
    }

    /// As [`Self::stop_and_account`], the smart step bounded by `smart_timeout`.
    pub async fn stop_and_account_from(
        &self,
        mode: StopMode,
        smart_timeout: std::time::Duration,
        step_timeout: std::time::Duration,
    ) -> Result<StopReport, AgentError> {
        let stopped = self
            .stop_postgres_from(mode, smart_timeout, step_timeout)
            .await?;
        Ok(StopReport {
            stopped,
            state: self.stopped_state().await,
        })
    }

    /// The end of valid WAL of the stopped data directory, clean shutdown or
    /// not (a clean one ends with its shutdown checkpoint record): what a
    /// rewind starts from.
    pub async fn wal_end(&self) -> Option<Lsn> {
        let state = self.stopped_state().await?;
        if state.end_of_wal.is_some() {
            return state.end_of_wal;
        }
        wal::end_of_wal(&self.runner, &self.cfg.data_dir, &state.control)
            .await
            .map_err(|e| tracing::warn!(error = %e, "the end of WAL before the rewind is unknown"))
            .ok()
    }

    /// The stopped data directory's state, read once per stop; None while
    /// postgres runs or when there is no readable cluster.
    pub async fn stopped_state(&self) -> Option<StoppedState> {
        if self.postgres_running() {
            return None;
        }
        let mut cache = self.stopped.lock().await;
        let generation = lock(&self.pg).generation;
        let file = self.cfg.data_dir.join("global/pg_control");
        let mtime = std::fs::metadata(&file).and_then(|m| m.modified()).ok()?;
        let key = (generation, mtime);
        if let Some(c) = cache.as_ref().filter(|c| c.key == key) {
            return Some(c.state.clone());
        }
        let control = match control::read(&self.runner, &self.cfg.data_dir).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "pg_controldata of the stopped server failed");
                return None;
            }
        };
        let end_of_wal = if control.clean_shutdown() == Some(false) {
            match wal::end_of_wal(&self.runner, &self.cfg.data_dir, &control).await {
                Ok(end) => {
                    tracing::info!(end_of_wal = %end, state = ?control.state, "stopped without a clean shutdown");
                    Some(end)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the end of WAL of the stopped server is unknown");
                    None
                }
            }
        } else {
            None
        };
        let state = StoppedState {
            control,
            end_of_wal,
        };
        *cache = Some(StoppedCache {
            key,
            state: state.clone(),
        });
        Some(state)
    }
}
