//! Switchover requests: validation, target choice (`any` picks as failover
//! does), the prechecks with their figures, dry-run reports and refusals, and
//! the switchover a scale-down needs before the primary's ordinal goes. Pure.

use crate::api::{DbClusterStatus, HealthCheck};

use super::ctx::Ctx;
use super::prechecks::{better, first_failure, primary_checks, target_checks};
use super::{
    busy_reason, event, instant_history, new_transition, reasons, refuse, Action, EventType,
    HistoryKind, HistoryOutcome, Request, SwitchoverTarget, TransitionKind,
};

/// Outcome of choosing and checking a target.
pub(crate) enum Plan {
    Go {
        target: String,
        checks: Vec<HealthCheck>,
    },
    Refused {
        target: Option<String>,
        checks: Vec<HealthCheck>,
        message: String,
    },
}

/// Validate and precheck a switchover from the current primary.
pub(crate) fn plan(ctx: &Ctx, st: &DbClusterStatus, to: &SwitchoverTarget, force: bool) -> Plan {
    let refused = |target: Option<&str>, checks: Vec<HealthCheck>, message: String| Plan::Refused {
        target: target.map(str::to_string),
        checks,
        message,
    };
    let Some(primary) = st.current_primary.clone() else {
        return refused(
            None,
            vec![],
            "switchover refused: the cluster has no primary yet".into(),
        );
    };
    let mut checks = primary_checks(ctx, &primary, force);
    let target = match to {
        SwitchoverTarget::Instance(name) => {
            if !ctx.exists(name) {
                return refused(
                    Some(name),
                    vec![],
                    format!(
                        "instance {name} does not exist (instances: {})",
                        ctx.name_list()
                    ),
                );
            }
            if *name == primary {
                return refused(Some(name), vec![], format!("{name} is already the primary"));
            }
            name.clone()
        }
        SwitchoverTarget::Any => {
            let mut standbys: Vec<String> = ctx
                .names
                .iter()
                .filter(|n| **n != primary && ctx.in_spec(n))
                .cloned()
                .collect();
            standbys.sort_by(|a, b| better(ctx, a, b));
            let passing = standbys
                .iter()
                .find(|n| first_failure(&target_checks(ctx, &primary, n)).is_none());
            match passing.or(standbys.first()) {
                Some(t) => t.clone(),
                None => {
                    return refused(
                        None,
                        checks,
                        "switchover refused: the cluster has no standby".into(),
                    )
                }
            }
        }
    };
    checks.extend(target_checks(ctx, &primary, &target));
    match first_failure(&checks) {
        Some(why) => {
            let message = format!("switchover refused: {why}");
            refused(Some(&target), checks, message)
        }
        None => Plan::Go { target, checks },
    }
}

/// Answer a switchover request (start, dry-run report, or refusal).
pub(crate) fn request(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    req: &Request,
    to: &SwitchoverTarget,
    dry_run: bool,
    force: bool,
    out: &mut Vec<Action>,
) {
    let kind = if dry_run {
        HistoryKind::SwitchoverDryRun
    } else {
        HistoryKind::Switchover
    };
    if !dry_run {
        if let Some(tr) = &st.transition {
            if tr.kind == TransitionKind::Switchover
                && matches!(to, SwitchoverTarget::Instance(t) if Some(t) == tr.target.as_ref())
            {
                // Already accepted (the platform had not cleared the request yet).
                out.push(Action::RequestDone {
                    request: req.clone(),
                });
                return;
            }
        }
        if let Some(why) = busy_reason(st, "switchover") {
            let to_name = match to {
                SwitchoverTarget::Instance(n) => Some(n.as_str()),
                SwitchoverTarget::Any => None,
            };
            refuse(ctx, st, req, kind, to_name, &why, out);
            return;
        }
    }
    match plan(ctx, st, to, force) {
        Plan::Refused {
            target,
            checks,
            message,
        } => {
            if dry_run {
                let mut entry = instant_history(
                    ctx,
                    kind,
                    target.as_deref(),
                    HistoryOutcome::DryRun,
                    &message,
                );
                entry.from = st.current_primary.clone();
                entry.checks = checks;
                st.push_history(entry);
                out.push(event(
                    target.as_deref(),
                    EventType::Warning,
                    reasons::SWITCHOVER_DRY_RUN,
                    &message,
                ));
                out.push(Action::RequestDone {
                    request: req.clone(),
                });
            } else {
                refuse(ctx, st, req, kind, target.as_deref(), &message, out);
                if let Some(last) = st.history.last_mut() {
                    last.from = st.current_primary.clone();
                    last.checks = checks;
                }
            }
        }
        Plan::Go { target, checks } => {
            let from = st.current_primary.clone().unwrap_or_default();
            if dry_run {
                let message = format!(
                    "switchover from {from} to {target} would proceed: every precheck passed"
                );
                let mut entry =
                    instant_history(ctx, kind, Some(&target), HistoryOutcome::DryRun, &message);
                entry.from = Some(from);
                entry.checks = checks;
                st.push_history(entry);
                out.push(event(
                    Some(&target),
                    EventType::Normal,
                    reasons::SWITCHOVER_DRY_RUN,
                    &message,
                ));
                out.push(Action::RequestDone {
                    request: req.clone(),
                });
                return;
            }
            start(ctx, st, &from, &target, "requested", out);
            out.push(Action::RequestDone {
                request: req.clone(),
            });
        }
    }
}

/// Start a switchover that passed its prechecks.
pub(crate) fn start(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    from: &str,
    target: &str,
    reason: &str,
    out: &mut Vec<Action>,
) {
    let mut tr = new_transition(
        ctx,
        TransitionKind::Switchover,
        Some(target),
        Some(from),
        reason,
    );
    tr.data.old_primary_lsn = ctx.lsn(from);
    st.target_primary = Some(target.to_string());
    st.transition = Some(tr);
    out.push(event(
        Some(target),
        EventType::Normal,
        reasons::SWITCHOVER_STARTED,
        &format!("switchover from {from} to {target} ({reason})"),
    ));
}

/// The primary's ordinal is scaled away: switch over first; true when started.
pub(crate) fn scale_down(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) -> bool {
    let Some(primary) = st.current_primary.clone() else {
        return false;
    };
    if ctx.in_spec(&primary) {
        return false;
    }
    if ctx.paused {
        st.blocked_by = Some(format!(
            "scale down waits: {primary} is the primary and must be switched over first, but automation is paused ({}): request the switchover (tandem.dev/switchover=any) or unpause",
            ctx.paused_by()
        ));
        return false;
    }
    match plan(ctx, st, &SwitchoverTarget::Any, false) {
        Plan::Go { target, .. } => {
            start(
                ctx,
                st,
                &primary,
                &target,
                &format!("scale down to {} instances", ctx.spec.instances),
                out,
            );
            true
        }
        Plan::Refused { message, .. } => {
            st.blocked_by = Some(format!("scale down waits: {primary} is the primary and must be switched over first; {message}"));
            false
        }
    }
}
