//! What the health checks compare against (`POST /checks`, sent by the
//! operator from the spec: the standbys this instance should have and the
//! thresholds), and, on a primary, the replication-connection check: can it
//! open the replication connection to each expected standby that it would
//! need to follow it after a switchover. Does I/O (psql, every few seconds).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::agent::{ActionResponse, CheckSettings, ChecksRequest};
use crate::api::InstanceRole;

use super::error::BadRequest;
use super::probe::Thresholds;
use super::state::{lock, Agent};
use super::AgentError;

/// How often a primary checks the replication connections to its standbys.
pub const REPLICATION_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Take new settings; answers whether they changed anything.
pub fn apply(agent: &Agent, req: ChecksRequest) -> Result<ActionResponse, AgentError> {
    let s = &req.settings;
    if s.archive_ready_warning < 0
        || s.lag_warning_bytes < 0
        || s.archive_ready_warning > s.archive_ready_critical
        || s.lag_warning_bytes > s.lag_critical_bytes
    {
        return Err(BadRequest::Thresholds {
            detail: format!(
                "archive ready warning {} / critical {}, lag warning {} / critical {} bytes: \
                 each must be at least 0 and the warning at most the critical; nothing was changed",
                s.archive_ready_warning,
                s.archive_ready_critical,
                s.lag_warning_bytes,
                s.lag_critical_bytes
            ),
        }
        .into());
    }
    let changed = {
        let mut cur = lock(&agent.checks);
        let changed = cur.as_ref() != Some(&req);
        *cur = Some(req);
        changed
    };
    if changed {
        tracing::info!(instance = %agent.cfg.instance, "health-check settings changed");
        agent.recheck_replication.notify_one();
        agent.probe_now.notify_one();
    }
    Ok(ActionResponse {
        changed,
        message: if changed {
            "check settings applied".into()
        } else {
            "check settings unchanged".into()
        },
        ..ActionResponse::default()
    })
}

/// `POST /config`'s `knownStandbys` (older callers): the standbys only, the
/// thresholds staying as they are.
pub fn set_standbys(agent: &Agent, standbys: Vec<String>) {
    let mut cur = lock(&agent.checks);
    let t = match cur.as_ref() {
        Some(r) => r.settings.clone(),
        None => CheckSettings {
            standbys: Vec::new(),
            archive_ready_warning: agent.cfg.archive_ready_warning,
            archive_ready_critical: agent.cfg.archive_ready_critical,
            lag_warning_bytes: agent.cfg.lag_warning_bytes,
            lag_critical_bytes: agent.cfg.lag_critical_bytes,
        },
    };
    let members = cur.as_ref().map(|r| r.members.clone()).unwrap_or_default();
    *cur = Some(ChecksRequest {
        settings: CheckSettings { standbys, ..t },
        members,
    });
}

/// The settings reported in /status: the ones sent, if any.
pub fn settings(agent: &Agent) -> Option<CheckSettings> {
    lock(&agent.checks).as_ref().map(|r| r.settings.clone())
}

/// The thresholds in force: the sent ones, else the agent's flags.
pub fn thresholds(agent: &Agent) -> Thresholds {
    match lock(&agent.checks).as_ref() {
        Some(r) => Thresholds {
            archive_warning: r.settings.archive_ready_warning,
            archive_critical: r.settings.archive_ready_critical,
            lag_warning: r.settings.lag_warning_bytes,
            lag_critical: r.settings.lag_critical_bytes,
        },
        None => Thresholds {
            archive_warning: agent.cfg.archive_ready_warning,
            archive_critical: agent.cfg.archive_ready_critical,
            lag_warning: agent.cfg.lag_warning_bytes,
            lag_critical: agent.cfg.lag_critical_bytes,
        },
    }
}

/// The standbys a primary should have (none until told).
pub fn standbys(agent: &Agent) -> Vec<String> {
    lock(&agent.checks)
        .as_ref()
        .map(|r| r.settings.standbys.clone())
        .unwrap_or_default()
}

/// What /status reports of the measurements: for each standby attached now,
/// the last result measured since it attached (`attached`: since when each
/// was seen streaming from here). A standby that just came back is not
/// reported until measured again, so a failure seen while it was down never
/// stands for it once it is back.
pub fn replication_report(
    agent: &Agent,
    attached: &BTreeMap<String, Instant>,
) -> BTreeMap<String, bool> {
    lock(&agent.replication_to)
        .iter()
        .filter(|(name, (_, at))| attached.get(*name).is_some_and(|since| at >= since))
        .map(|(name, (ok, _))| (name.clone(), *ok))
        .collect()
}

/// Check the replication connections while this instance is primary: every
/// [`REPLICATION_CHECK_EVERY`], every second while one fails (a standby that
/// was still starting), and at once when the settings or the attached
/// standbys change.
pub async fn run(agent: Arc<Agent>) {
    let psql = agent.cfg.bin_dir.join("psql");
    let mut last: Option<(Instant, Vec<String>)> = None;
    loop {
        let (primary, attached) = agent
            .status
            .read()
            .map(|s| {
                (
                    s.role == InstanceRole::Primary,
                    s.downstreams
                        .iter()
                        .map(|d| d.name.clone())
                        .collect::<Vec<_>>(),
                )
            })
            .unwrap_or_default();
        let failing = lock(&agent.replication_to).values().any(|(ok, _)| !ok);
        let due = match &last {
            None => true,
            Some((at, seen)) => {
                *seen != attached
                    || at.elapsed() >= REPLICATION_CHECK_EVERY
                    || (failing && at.elapsed() >= Duration::from_secs(1))
            }
        };
        if due {
            let members = lock(&agent.checks)
                .as_ref()
                .map(|r| {
                    r.members
                        .iter()
                        .filter(|m| r.settings.standbys.contains(&m.name))
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let mut result = BTreeMap::new();
            if primary {
                let user = &agent.cfg.replication_user;
                let password = &agent.cfg.replication_password;
                let checks = members.iter().map(|m| {
                    let psql = &psql;
                    async move {
                        let ok = crate::pg::replcheck::can_replicate(
                            psql, &m.host, m.port, user, password,
                        )
                        .await;
                        (m.name.clone(), (ok, Instant::now()))
                    }
                });
                result = futures::future::join_all(checks)
                    .await
                    .into_iter()
                    .collect();
            }
            *lock(&agent.replication_to) = result;
            last = Some((Instant::now(), attached));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = agent.recheck_replication.notified() => last = None,
        }
    }
}
