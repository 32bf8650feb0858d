//! Status reporting: instances[] from the observations (role, lag, checks,
//! lastSeen, how long unhealthy), then phase, readiness and conditions. Pure.

use crate::api::{
    Condition, DbClusterStatus, InstanceRole, InstanceStatus, Phase, COND_PAUSED,
    COND_PRIMARY_AVAILABLE, COND_READY, COND_REPLICATION_HEALTHY,
};

use super::ctx::Ctx;
use super::{RoleLabel, TransitionKind};

/// Rebuild status.instances from this poll, keeping lastSeen and unhealthySince.
pub(crate) fn refresh_instances(ctx: &Ctx, st: &mut DbClusterStatus) {
    let primary = st.current_primary.clone();
    let primary_lsn = primary.as_deref().and_then(|p| ctx.lsn(p));
    let mut instances = Vec::new();
    for name in &ctx.names {
        let prev = st.instances.iter().find(|i| &i.name == name);
        let agent = ctx.agent(name);
        let is_primary = primary.as_deref() == Some(name.as_str());
        let healthy = match primary.as_deref() {
            Some(p) if p == name => ctx.runs_as_primary(name),
            Some(p) => ctx.streams_from(name, p),
            None => ctx.running(name),
        };
        let fenced_label = ctx.obs(name).and_then(|o| o.label) == Some(RoleLabel::Fenced);
        let role = match agent {
            None => InstanceRole::Down,
            Some(a) if !a.postgres_running => {
                if a.fenced || fenced_label {
                    InstanceRole::Fenced
                } else {
                    InstanceRole::Down
                }
            }
            Some(a) if !a.in_recovery => {
                if is_primary && !fenced_label {
                    InstanceRole::Primary
                } else {
                    InstanceRole::Fenced
                }
            }
            Some(_) if ctx.priority(name) <= 0 => InstanceRole::Learner,
            Some(_) => InstanceRole::Standby,
        };
        let lsn = ctx.lsn(name);
        let lag = match (primary_lsn, lsn) {
            (Some(p), Some(l)) if !is_primary => {
                Some(i64::try_from(p.bytes_after(l)).unwrap_or(i64::MAX))
            }
            (_, Some(_)) if is_primary => Some(0),
            _ => None,
        };
        let unhealthy_since = if healthy {
            None
        } else {
            prev.and_then(|p| p.unhealthy_since.clone())
                .or_else(|| Some(ctx.stamp()))
        };
        instances.push(InstanceStatus {
            name: name.clone(),
            role,
            ready: healthy,
            timeline: agent
                .and_then(|a| a.timeline)
                .or_else(|| prev.and_then(|p| p.timeline)),
            // Keep the last known position: failover accounts with it.
            lsn: lsn.or_else(|| prev.and_then(|p| p.lsn)),
            lag_bytes: lag,
            lag_seconds: agent
                .filter(|a| a.in_recovery && a.postgres_running)
                .and_then(|a| a.lag_seconds),
            replay_lag_bytes: agent
                .filter(|a| a.in_recovery && a.postgres_running)
                .and_then(|a| match (a.received_lsn, a.replayed_lsn) {
                    (Some(r), Some(p)) => Some(i64::try_from(r.bytes_after(p)).unwrap_or(i64::MAX)),
                    _ => None,
                }),
            sync_state: (!is_primary)
                .then(|| {
                    primary
                        .as_deref()
                        .and_then(|p| ctx.agent(p))
                        .and_then(|a| a.standbys.iter().find(|s| &s.name == name))
                        .map(|s| s.sync_state.to_string())
                })
                .flatten(),
            upstream: agent.and_then(|a| a.upstream.clone()),
            upstream_last_seen: agent
                .and_then(|a| a.upstream_seen_ago_secs)
                .map(|ago| super::ctx::stamp(ctx.now - (ago * 1000.0) as i64)),
            priority: ctx.priority(name),
            last_seen: if agent.is_some() {
                Some(ctx.stamp())
            } else {
                prev.and_then(|p| p.last_seen.clone())
            },
            checks: agent.map(|a| a.checks.clone()).unwrap_or_default(),
            unhealthy_since,
            agent_unanswered: ctx.obs(name).and_then(|o| o.unanswered),
            progress: agent.and_then(|a| a.progress.clone()),
        });
    }
    st.instances = instances;
    if let Some(tl) = primary
        .as_deref()
        .filter(|p| ctx.runs_as_primary(p))
        .and_then(|p| ctx.timeline(p))
    {
        st.timeline = Some(tl);
    }
}

fn set_condition(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) {
    let status = if ok { "True" } else { "False" };
    let generation = st.observed_generation;
    match st.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(ctx.stamp());
            }
            c.status = status.to_string();
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => st.conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time: Some(ctx.stamp()),
            observed_generation: generation,
        }),
    }
}

/// Phase, readiness and conditions.
pub(crate) fn summarize(ctx: &Ctx, st: &mut DbClusterStatus) {
    let standbys = || {
        st.instances
            .iter()
            .filter(|i| Some(&i.name) != st.current_primary.as_ref())
    };
    st.max_lag_bytes = standbys().filter_map(|i| i.lag_bytes).max();
    let states: Vec<String> = standbys()
        .filter_map(|i| i.sync_state.as_ref().map(|s| format!("{}={s}", i.name)))
        .collect();
    st.sync_states = (!states.is_empty()).then(|| states.join(" "));
    let total = st.instances.iter().filter(|i| ctx.in_spec(&i.name)).count();
    let ready = st.instances.iter().filter(|i| i.ready).count();
    st.ready_instances = Some(format!("{ready}/{total}"));
    let primary = st.current_primary.clone();
    let primary_ok = primary.as_deref().is_some_and(|p| ctx.runs_as_primary(p));
    let not_streaming: Vec<String> = st
        .instances
        .iter()
        .filter(|i| Some(&i.name) != primary.as_ref() && !i.ready)
        .map(|i| i.name.clone())
        .collect();
    let replication_ok = primary_ok && not_streaming.is_empty();
    // Healthy means the Services route as the roles say: the primary carries
    // the primary label and every ready standby the standby label.
    let labels_ok = primary.as_deref().is_some_and(|p| {
        ctx.obs(p).and_then(|o| o.label) == Some(RoleLabel::Primary)
            && st
                .instances
                .iter()
                .filter(|i| i.name != p && i.ready)
                .all(|i| ctx.obs(&i.name).and_then(|o| o.label) == Some(RoleLabel::Standby))
    });
    let waiting_for_detection = primary.as_deref().is_some_and(|p| {
        matches!(
            super::failover::failed_for_long_enough(ctx, st, p),
            Some(Err(_))
        )
    });
    st.phase = Some(match st.transition.as_ref().map(|t| t.kind) {
        Some(TransitionKind::Bootstrap) => Phase::Creating,
        Some(TransitionKind::Failover) => Phase::FailingOver,
        Some(TransitionKind::Switchover) => Phase::SwitchingOver,
        Some(TransitionKind::Rejoin | TransitionKind::RejoinDryRun) => Phase::Rejoining,
        Some(TransitionKind::Reclone) => Phase::Recloning,
        Some(TransitionKind::Restart | TransitionKind::DurabilityChange) | None if ctx.paused => {
            Phase::Paused
        }
        // Within the detection window the primary may still come back.
        _ if !primary_ok && !waiting_for_detection => Phase::Failed,
        _ if replication_ok && ready == total && labels_ok => Phase::Healthy,
        _ => Phase::Degraded,
    });
    let blocked = st.blocked_by.clone().unwrap_or_default();
    set_condition(
        ctx,
        st,
        COND_PRIMARY_AVAILABLE,
        primary_ok,
        if primary_ok {
            "PrimaryWritable"
        } else {
            "NoWritablePrimary"
        },
        match (&primary, primary_ok) {
            (Some(p), true) => format!("{p} accepts writes"),
            (Some(p), false) => format!("{p} does not accept writes. {blocked}"),
            (None, _) => format!("no primary yet. {blocked}"),
        },
    );
    set_condition(
        ctx,
        st,
        COND_REPLICATION_HEALTHY,
        replication_ok,
        if replication_ok {
            "AllStreaming"
        } else {
            "NotStreaming"
        },
        if replication_ok {
            "every standby streams from the primary".into()
        } else if not_streaming.is_empty() {
            "no writable primary to stream from".into()
        } else {
            format!(
                "not streaming from the primary: {}",
                not_streaming.join(", ")
            )
        },
    );
    let all_ready = primary_ok && ready == total;
    set_condition(
        ctx,
        st,
        COND_READY,
        all_ready,
        if all_ready { "AllReady" } else { "NotAllReady" },
        format!("{ready}/{total} instances ready"),
    );
    let paused = ctx.paused;
    set_condition(
        ctx,
        st,
        COND_PAUSED,
        paused,
        if paused {
            "AutomationPaused"
        } else {
            "AutomationActive"
        },
        if paused {
            format!(
                "no automatic failover, rejoin or rolling restart ({}); requests still run",
                ctx.paused_by()
            )
        } else {
            "automatic failover, rejoin and rolling restarts are active".into()
        },
    );
}

/// How long `name`'s agent has not answered, at most `step_elapsed` (the
/// time the step waiting on it has run); 0 while it answers. One poll that
/// goes unanswered (a busy machine) is silence of one poll, not of the
/// whole step.
pub(crate) fn silent_for(ctx: &Ctx, st: &DbClusterStatus, name: &str, step_elapsed: i64) -> i64 {
    if ctx.reachable(name) {
        return 0;
    }
    let last_seen = st
        .instances
        .iter()
        .find(|i| i.name == name)
        .and_then(|i| i.last_seen.as_deref());
    match last_seen {
        Some(_) => ctx.since(last_seen).min(step_elapsed),
        None => step_elapsed,
    }
}

/// Whether a wait of `quiet` ms has lasted `detectionTimeout`; until it
/// has, the engine is woken when it will have.
pub(crate) fn waited_out_detection(ctx: &Ctx, quiet: i64) -> bool {
    if quiet >= ctx.detection_ms() {
        return true;
    }
    ctx.wake_at(ctx.now - quiet + ctx.detection_ms());
    false
}
