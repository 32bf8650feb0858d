//! A member's side of vouching (DESIGN.md §3, fencing lease; the argument is
//! in docs/agent.md): `/vouch` tells a primary whether this instance still
//! follows it, `/stop-vouching` raises the known epoch, kept on disk before
//! the answer, so this member never vouches for an older primary again, even
//! after a restart. The decision is pure; its facts are read from the agent.

use std::time::Instant;

use crate::api::agent::{StopVouchingRequest, StopVouchingResponse, VouchRequest, VouchResponse};
use crate::api::InstanceRole;
use crate::pg::conf;

use super::state::{lock, Agent};
use super::AgentError;

/// What the vouch decision looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The long operation running now (a promotion, a follow, a rewind…).
    pub operation: Option<String>,
    /// postgres runs and its last probe saw it in recovery.
    pub in_recovery: bool,
    /// The member this standby is configured to follow (`/status.upstream`).
    pub upstream: Option<String>,
    /// Its timeline, as its last probe saw it.
    pub timeline: Option<i64>,
    /// The highest lease epoch it knows.
    pub known_epoch: u64,
}

fn refuse(reason: String) -> VouchResponse {
    VouchResponse {
        vouch: false,
        reason,
    }
}

/// Vouch only as a running standby that follows the asking primary, on its
/// timeline, and knows no higher epoch than the request's; not while an
/// operation may be changing what it follows or promoting it.
pub fn decide(f: &Facts, req: &VouchRequest) -> VouchResponse {
    if let Some(op) = &f.operation {
        return refuse(format!("busy with {op}"));
    }
    if !f.in_recovery {
        return refuse("not running as a standby".into());
    }
    match f.upstream.as_deref() {
        Some(up) if up == req.primary => {}
        Some(up) => return refuse(format!("follows {up}, not {}", req.primary)),
        None => return refuse("has no configured upstream".into()),
    }
    match f.timeline {
        Some(tl) if tl == req.timeline => {}
        Some(tl) => {
            return refuse(format!(
                "on timeline {tl}, not {} as {} is",
                req.timeline, req.primary
            ))
        }
        None => return refuse("its timeline is unknown".into()),
    }
    if req.epoch < f.known_epoch {
        return refuse(format!(
            "knows lease epoch {}, {} asks with {}",
            f.known_epoch, req.primary, req.epoch
        ));
    }
    VouchResponse {
        vouch: true,
        reason: String::new(),
    }
}

/// The facts of this agent now.
fn facts(agent: &Agent) -> Facts {
    let (role, timeline) = agent
        .status
        .read()
        .map(|s| (s.role, s.timeline))
        .unwrap_or((InstanceRole::Unknown, None));
    let dir = &agent.cfg.data_dir;
    Facts {
        operation: lock(&agent.operation).clone(),
        in_recovery: agent.postgres_running() && role == InstanceRole::Standby,
        upstream: conf::is_standby(dir)
            .then(|| conf::read_upstream(dir).map(|m| m.name))
            .flatten(),
        timeline,
        known_epoch: *lock(&agent.known_epoch),
    }
}

/// `POST /vouch`.
pub async fn vouch(agent: &Agent, req: &VouchRequest) -> VouchResponse {
    let mut last = lock(&agent.last_vouch);
    let answer = decide(&facts(agent), req);
    if answer.vouch {
        *last = Some((req.primary.clone(), Instant::now()));
    }
    drop(last);
    tracing::debug!(
        primary = %req.primary,
        timeline = req.timeline,
        epoch = req.epoch,
        vouch = answer.vouch,
        reason = %answer.reason,
        "vouch asked"
    );
    answer
}

/// `POST /stop-vouching`: from now on vouch for no primary below `epoch`.
pub async fn stop_vouching(
    agent: &Agent,
    req: &StopVouchingRequest,
) -> Result<StopVouchingResponse, AgentError> {
    let _epoch = agent.epoch_writes.lock().await;
    let raised = agent.raise_known_epoch(req.epoch).await?;
    let known = *lock(&agent.known_epoch);
    // Read after the raise: a vouch decided under the old epoch held this
    // lock until it was recorded, and any later one sees the new epoch.
    let since_start = agent.started.elapsed();
    let ago = lock(&agent.last_vouch)
        .as_ref()
        .map_or(since_start, |(_, at)| at.elapsed().min(since_start));
    tracing::info!(
        known_epoch = known,
        raised,
        last_vouched_ago_ms = ago.as_millis() as u64,
        "stop-vouching"
    );
    Ok(StopVouchingResponse {
        known_epoch: known,
        last_vouched_ago_ms: u64::try_from(ago.as_millis()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby() -> Facts {
        Facts {
            operation: None,
            in_recovery: true,
            upstream: Some("db-0".into()),
            timeline: Some(3),
            known_epoch: 5,
        }
    }

    fn ask(primary: &str, timeline: i64, epoch: u64) -> VouchRequest {
        VouchRequest {
            primary: primary.into(),
            timeline,
            epoch,
        }
    }

    #[test]
    fn a_standby_vouches_for_the_primary_it_follows() {
        let a = decide(&standby(), &ask("db-0", 3, 5));
        assert!(a.vouch && a.reason.is_empty(), "{a:?}");
        assert!(decide(&standby(), &ask("db-0", 3, 9)).vouch);
    }

    #[test]
    fn no_vouch_for_another_primary_timeline_or_an_older_epoch() {
        let a = decide(&standby(), &ask("db-1", 3, 5));
        assert!(!a.vouch && a.reason.contains("follows db-0"), "{a:?}");
        let a = decide(&standby(), &ask("db-0", 2, 5));
        assert!(!a.vouch && a.reason.contains("timeline 3"), "{a:?}");
        let a = decide(&standby(), &ask("db-0", 3, 4));
        assert!(!a.vouch && a.reason.contains("epoch 5"), "{a:?}");
    }

    #[test]
    fn no_vouch_unless_running_as_a_settled_standby() {
        let f = Facts {
            in_recovery: false,
            ..standby()
        };
        assert!(!decide(&f, &ask("db-0", 3, 5)).vouch);
        let f = Facts {
            operation: Some("promote".into()),
            ..standby()
        };
        let a = decide(&f, &ask("db-0", 3, 5));
        assert!(!a.vouch && a.reason.contains("promote"), "{a:?}");
        let f = Facts {
            upstream: None,
            ..standby()
        };
        assert!(!decide(&f, &ask("db-0", 3, 5)).vouch);
        let f = Facts {
            timeline: None,
            ..standby()
        };
        assert!(!decide(&f, &ask("db-0", 3, 5)).vouch);
    }
}
