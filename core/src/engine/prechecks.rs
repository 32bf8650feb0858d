//! Whom to promote: failover candidate choice (timeline and received LSN,
//! then priority, then lowest ordinal; only synchronous standbys under
//! sync+required) and the switchover prechecks of DESIGN.md §1 row 7, each
//! with its figure. Pure.

use std::cmp::Ordering;

use crate::api::{CheckState, DbClusterStatus, HealthCheck};

use super::ctx::Ctx;

/// Order candidates: most advanced first, then highest priority, then lowest ordinal.
pub(crate) fn better(ctx: &Ctx, a: &str, b: &str) -> Ordering {
    ctx.position(b)
        .cmp(&ctx.position(a))
        .then(ctx.priority(b).cmp(&ctx.priority(a)))
        .then(ctx.ordinal(a).cmp(&ctx.ordinal(b)))
}

/// Why `name` cannot be promoted in a failover from `old`, if it cannot.
fn failover_ineligible(ctx: &Ctx, st: &DbClusterStatus, name: &str) -> Option<String> {
    if !ctx.in_spec(name) {
        return Some(format!("{name} is being scaled away"));
    }
    if ctx.priority(name) <= 0 {
        return Some(format!("{name} has priority 0 (learner)"));
    }
    if !ctx.reachable(name) {
        return Some(format!(
            "{name} does not answer{}",
            ctx.why_unanswered(name)
        ));
    }
    if !ctx.runs_as_standby(name) {
        return Some(format!("{name} does not run as a standby"));
    }
    if ctx.sync_required() {
        let was_sync = st
            .sync
            .as_ref()
            .is_some_and(|s| s.quorum > 0 && s.standbys.iter().any(|n| n == name));
        if !was_sync {
            return Some(format!(
                "{name} was not synchronous (dataDurability required)"
            ));
        }
    }
    None
}

/// The failover candidate among the standbys of `old`, or why there is none.
pub(crate) fn failover_candidate(
    ctx: &Ctx,
    st: &DbClusterStatus,
    old: &str,
    exclude: &[String],
) -> Result<String, String> {
    let mut reasons = Vec::new();
    let mut eligible = Vec::new();
    for name in ctx.names.iter().filter(|n| n.as_str() != old) {
        if exclude.contains(name) {
            reasons.push(format!("{name} failed to promote"));
        } else if let Some(why) = failover_ineligible(ctx, st, name) {
            reasons.push(why);
        } else {
            eligible.push(name.clone());
        }
    }
    if ctx.sync_required() {
        // ANY n over m names: an acknowledged commit is on n of them, so only
        // m - n + 1 answering members are sure to include it.
        if let Some(sync) = &st.sync {
            let m = sync.standbys.len();
            let n = usize::try_from(sync.quorum.max(1)).unwrap_or(1);
            let answering = sync
                .standbys
                .iter()
                .filter(|s| ctx.reachable(s) && ctx.runs_as_standby(s))
                .count();
            let needed = (m + 1).saturating_sub(n);
            if answering < needed {
                return Err(format!(
                    "no candidate is sure to hold every acknowledged commit: {answering} of the {m} synchronous standbys answer, ANY {n} needs {needed} (dataDurability required)"
                ));
            }
        }
    }
    eligible.sort_by(|a, b| better(ctx, a, b));
    match eligible.into_iter().next() {
        Some(c) => Ok(c),
        None if reasons.is_empty() => {
            Err("no eligible candidate: the cluster has no standby".into())
        }
        None => Err(format!("no eligible candidate: {}", reasons.join("; "))),
    }
}

fn check(name: &str, state: CheckState, value: Option<i64>, message: String) -> HealthCheck {
    HealthCheck {
        name: name.to_string(),
        state,
        value,
        message,
    }
}

fn ok_or(ok: bool) -> CheckState {
    if ok {
        CheckState::Ok
    } else {
        CheckState::Critical
    }
}

/// Checks about the target alone (used to pick `any` and to report).
pub(crate) fn target_checks(ctx: &Ctx, primary: &str, target: &str) -> Vec<HealthCheck> {
    let mut checks = Vec::new();
    let reachable = ctx.runs_as_standby(target);
    checks.push(check(
        "candidate_reachable",
        ok_or(reachable),
        None,
        if reachable {
            format!("{target} answers and runs as a standby")
        } else if !ctx.reachable(target) {
            format!("{target} does not answer{}", ctx.why_unanswered(target))
        } else {
            format!("{target} does not run as a standby")
        },
    ));
    // Only a standby streaming from the primary now receives its shutdown
    // checkpoint; one still reconnecting (after a restart of the primary, say)
    // would leave the switchover waiting and then rolling back.
    let streaming = ctx.streams_from(target, primary);
    checks.push(check(
        "candidate_streaming",
        ok_or(streaming),
        None,
        if streaming {
            format!("{target} streams from {primary}")
        } else {
            format!("{target} does not stream from {primary} now")
        },
    ));
    let priority = ctx.priority(target);
    checks.push(check(
        "candidate_priority",
        ok_or(priority > 0),
        Some(i64::from(priority)),
        if priority > 0 {
            format!("{target} has priority {priority}")
        } else {
            format!("{target} has priority 0 (learner) and cannot be promoted")
        },
    ));
    let max_lag = i64::try_from(ctx.spec.switchover.max_lag_bytes.bytes()).unwrap_or(i64::MAX);
    match (
        ctx.lsn(primary),
        ctx.agent(target).and_then(|a| a.received_lsn),
    ) {
        (Some(p), Some(t)) => {
            let lag = i64::try_from(p.bytes_after(t)).unwrap_or(i64::MAX);
            checks.push(check(
                "candidate_lag",
                ok_or(lag <= max_lag),
                Some(lag),
                format!("{target} lags {primary} by {lag} bytes (max {max_lag})"),
            ));
        }
        _ => checks.push(check(
            "candidate_lag",
            CheckState::Critical,
            None,
            format!("the lag of {target} behind {primary} is not known"),
        )),
    }
    let needed = i64::try_from(ctx.names.iter().filter(|n| ctx.in_spec(n)).count())
        .unwrap_or(1)
        .saturating_sub(1);
    let agent = ctx.agent(target);
    match agent.and_then(|a| a.max_wal_senders) {
        Some(max) => checks.push(check(
            "wal_senders",
            ok_or(max >= needed),
            Some(max),
            format!("{target} has max_wal_senders {max}, {needed} needed"),
        )),
        None => checks.push(check(
            "wal_senders",
            CheckState::Warning,
            None,
            format!("{target} did not report max_wal_senders ({needed} needed)"),
        )),
    }
    match agent.and_then(|a| a.max_replication_slots) {
        Some(max) => {
            let used = agent.and_then(|a| a.slots_used).unwrap_or(0);
            checks.push(check(
                "replication_slots",
                ok_or(max >= needed),
                Some(max),
                format!(
                    "{target} has max_replication_slots {max} ({used} in use), {needed} needed"
                ),
            ))
        }
        None => checks.push(check(
            "replication_slots",
            CheckState::Warning,
            None,
            format!("{target} did not report max_replication_slots ({needed} needed)"),
        )),
    }
    match ctx
        .agent(primary)
        .and_then(|a| a.replication_to.get(target).copied())
    {
        Some(true) => checks.push(check(
            "replication_connection",
            CheckState::Ok,
            None,
            format!("{primary} can open a replication connection to {target}"),
        )),
        Some(false) => checks.push(check(
            "replication_connection",
            CheckState::Critical,
            None,
            format!("{primary} cannot open a replication connection to {target}"),
        )),
        None => checks.push(check(
            "replication_connection",
            CheckState::Warning,
            None,
            format!("{primary}'s agent did not report whether it can open a replication connection to {target}"),
        )),
    }
    checks
}

/// Checks about the primary (the demotion candidate).
pub(crate) fn primary_checks(ctx: &Ctx, primary: &str, force: bool) -> Vec<HealthCheck> {
    let mut checks = Vec::new();
    let up = ctx.runs_as_primary(primary);
    checks.push(check(
        "primary_reachable",
        ok_or(up),
        None,
        if up {
            format!("{primary} answers and runs as the primary")
        } else {
            format!("{primary} (the primary) does not answer as a primary")
        },
    ));
    let critical = i64::from(ctx.spec.switchover.archive_ready_critical);
    let ready = ctx
        .agent(primary)
        .and_then(|a| a.archive_ready)
        .unwrap_or(0);
    let (state, message) = if ready < critical {
        (
            CheckState::Ok,
            format!("{ready} archive-ready files on {primary} (critical at {critical})"),
        )
    } else if force {
        (
            CheckState::Warning,
            format!("{ready} archive-ready files on {primary} (critical at {critical}); overridden by --force"),
        )
    } else {
        (
            CheckState::Critical,
            format!("{ready} archive-ready files on {primary} (critical at {critical}); --force overrides this check"),
        )
    };
    checks.push(check("archive_ready", state, Some(ready), message));
    let timeout = ctx.shutdown_ms();
    checks.push(check(
        "shutdown_timeout",
        CheckState::Ok,
        Some(timeout),
        format!(
            "{primary} gets {} to shut down before the stop escalates",
            super::ctx::secs(timeout)
        ),
    ));
    checks
}

/// The first failing check's message.
pub(crate) fn first_failure(checks: &[HealthCheck]) -> Option<&str> {
    checks
        .iter()
        .find(|c| c.state == CheckState::Critical)
        .map(|c| c.message.as_str())
}
