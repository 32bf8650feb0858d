//! What a rejoin of this running server onto a source would do — nothing,
//! repoint it, rewind it or re-clone it — judged from both servers' timeline
//! histories and WAL positions without stopping anything (pg_rewind's own
//! --dry-run needs postgres stopped). Does I/O (SQL on both servers).

use std::time::Duration;

use crate::api::agent::Member;
use crate::api::Lsn;
use crate::pg::query;
use crate::pg::timeline::{self, Position, Verdict};

use super::state::Agent;
use super::{AgentError, BadTarget};

/// What a rejoin onto the source would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Streams from the source on its timeline already.
    Nothing { reason: String },
    /// No rewind: repoint it at the source (reload, restart if needed).
    Follow { reason: String },
    /// pg_rewind first.
    Rewind { diverged_at: Lsn, reason: String },
    /// Only a re-clone brings it back.
    Reclone { reason: String },
}

impl Plan {
    /// The answer, for people.
    pub fn describe(&self, name: &str, source: &str) -> String {
        match self {
            Plan::Nothing { reason } => {
                format!("a rejoin would change nothing: {name} {reason}")
            }
            Plan::Follow { reason } => format!(
                "no rewind is needed: a rejoin would point {name} at {source} as it is ({reason})"
            ),
            Plan::Rewind { reason, .. } => {
                format!("a rewind is needed: a rejoin would rewind {name} from {source} ({reason})")
            }
            Plan::Reclone { reason } => format!(
                "a rewind cannot bring {name} back: a rejoin would re-clone it from {source} ({reason})"
            ),
        }
    }
}

impl Agent {
    /// Judge a rejoin of this running postgres onto `source`.
    pub async fn judge_running(&self, source: &Member) -> Result<Plan, AgentError> {
        let local = self.local_client(Duration::from_secs(5)).await?;
        let here = query::timeline_reading(&local).await?;
        drop(local);
        let remote = self
            .member_client(source, Duration::from_secs(5))
            .await
            .map_err(|e| BadTarget::Lost {
                address: source.address(),
                source: Box::new(e),
            })?;
        let there = query::timeline_reading(&remote).await?;
        drop(remote);
        if here.system_identifier != there.system_identifier {
            return Ok(Plan::Reclone {
                reason: format!(
                    "system identifier {} differs from the source's {}",
                    here.system_identifier, there.system_identifier
                ),
            });
        }
        let position = |r: &query::TimelineReading| Position {
            history: timeline::history(r.timeline, &r.history),
            lsn: r.lsn.unwrap_or_default(),
        };
        let verdict = timeline::judge(&position(&here), &position(&there));
        Ok(match verdict {
            Verdict::Unrelated { reason } => Plan::Reclone { reason },
            Verdict::Rewind { reason, .. } if !here.rewindable => Plan::Reclone {
                reason: format!(
                    "{reason}; pg_rewind needs wal_log_hints=on or data checksums, and both are off"
                ),
            },
            Verdict::Rewind {
                diverged_at,
                reason,
            } => Plan::Rewind {
                diverged_at,
                reason,
            },
            Verdict::NoRewind { reason } => {
                let streams = here.in_recovery
                    && self
                        .wait_streaming(source, Duration::from_millis(500))
                        .await;
                if streams {
                    Plan::Nothing {
                        reason: format!(
                            "streams from {} on timeline {} ({reason})",
                            source.name, here.timeline
                        ),
                    }
                } else {
                    Plan::Follow { reason }
                }
            }
        })
    }
}
