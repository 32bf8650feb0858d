//! Rolling restart: on request or when a parameter change needs one;
//! standbys first, then the primary by switchover or in place
//! (spec.primaryUpdateMethod); each stop escalates smart → fast → immediate
//! with the bounds of spec.restart. A request runs while automation is
//! paused (a person asked); the restart a parameter change needs waits. Pure.

use crate::api::{DbClusterStatus, PrimaryUpdateMethod, RestartData, Transition};

use super::ctx::Ctx;
use super::plan::{self, Plan};
use super::{
    busy_reason, event, history, new_transition, reasons, refuse, Action, EventType, HistoryKind,
    HistoryOutcome, Outcome, Request, RestartTarget, Step, StopMode, SwitchoverTarget,
    TransitionKind, TransitionStep,
};

/// Restart order: standbys by ordinal, the primary last.
fn order(ctx: &Ctx, st: &DbClusterStatus, names: &[String]) -> Vec<String> {
    let primary = st.current_primary.clone().unwrap_or_default();
    let mut v: Vec<String> = names.iter().filter(|n| **n != primary).cloned().collect();
    v.sort_by_key(|n| ctx.ordinal(n));
    if names.contains(&primary) {
        v.push(primary);
    }
    v
}

fn start(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    names: Vec<String>,
    reason: &str,
    out: &mut Vec<Action>,
) {
    let queue = order(ctx, st, &names);
    let mut tr = new_transition(
        ctx,
        TransitionKind::Restart,
        queue.first().map(String::as_str),
        None,
        reason,
    );
    tr.data.restart.queue = queue.clone();
    out.push(event(
        None,
        EventType::Normal,
        reasons::RESTART_STARTED,
        &format!("restarting {} ({reason})", queue.join(", ")),
    ));
    st.transition = Some(tr);
}

/// Answer `tandem.dev/restart=<name>|all`.
pub(crate) fn request(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    req: &Request,
    target: &RestartTarget,
    out: &mut Vec<Action>,
) {
    let to = match target {
        RestartTarget::Instance(n) => Some(n.as_str()),
        RestartTarget::All => None,
    };
    if let Some(n) = to {
        if !ctx.exists(n) {
            let message = format!(
                "instance {n} does not exist (instances: {})",
                ctx.name_list()
            );
            refuse(ctx, st, req, HistoryKind::Restart, Some(n), &message, out);
            return;
        }
    }
    if let Some(why) = busy_reason(st, "restart") {
        refuse(ctx, st, req, HistoryKind::Restart, to, &why, out);
        return;
    }
    let names = match to {
        Some(n) => vec![n.to_string()],
        None => ctx
            .names
            .iter()
            .filter(|n| ctx.in_spec(n))
            .cloned()
            .collect(),
    };
    start(ctx, st, names, "requested", out);
    out.push(Action::RequestDone {
        request: req.clone(),
    });
}

/// Start a rolling restart when an instance has a restart pending; true when started.
pub(crate) fn automatic(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) -> bool {
    let pending: Vec<String> = ctx
        .names
        .iter()
        .filter(|n| {
            ctx.in_spec(n)
                && ctx
                    .agent(n)
                    .is_some_and(|a| a.pending_restart && a.postgres_running)
        })
        .cloned()
        .collect();
    if pending.is_empty() || st.current_primary.is_none() {
        return false;
    }
    // One with an operation under way (a config, a slot drop) is waited for:
    // started without it, the rolling restart would leave it pending.
    if pending
        .iter()
        .any(|n| ctx.agent(n).is_some_and(|a| a.operation.is_some()))
    {
        return false;
    }
    if ctx.paused {
        st.blocked_by = Some(format!(
            "a restart is pending on {} but automation is paused ({})",
            pending.join(", "),
            ctx.paused_by()
        ));
        return false;
    }
    start(
        ctx,
        st,
        pending,
        "parameters changed that need a restart",
        out,
    );
    true
}

/// While the engine itself restarts the primary in place and its agent
/// answers, the primary being down is that restart, not a failure: why, or
/// `None`. Bounded by the longest the agent's stop can take (every step of
/// its escalation) plus a start, so a restart that never ends is a failure.
pub(crate) fn in_place(ctx: &Ctx, st: &DbClusterStatus, primary: &str) -> Option<String> {
    let tr = st.transition.as_ref()?;
    if tr.kind != TransitionKind::Restart
        || tr.step != TransitionStep::RestartInstance
        || tr.target.as_deref() != Some(primary)
        || !ctx.reachable(primary)
    {
        return None;
    }
    let plan = ctx.restart_stop();
    let bound = i64::try_from(
        plan.smart_ms
            .saturating_add(plan.fast_ms.saturating_mul(2))
            .saturating_add(RESTART_START_MS),
    )
    .unwrap_or(i64::MAX)
    .saturating_add(ctx.detection_ms());
    let elapsed = ctx.since(tr.data.step_started_at.as_deref());
    (elapsed < bound).then(|| {
        format!(
            "{primary} is being restarted in place (for {}, at most {} before it counts as failed)",
            super::ctx::secs(elapsed),
            super::ctx::secs(bound)
        )
    })
}

/// What a restart's start may take besides its stop (the agent's start timeout and a SIGKILL's wait).
const RESTART_START_MS: u64 = 90_000;

/// Record a fact of the restart in progress.
fn set(st: &mut DbClusterStatus, f: impl FnOnce(&mut RestartData)) {
    if let Some(t) = st.transition.as_mut() {
        f(&mut t.data.restart);
    }
}

/// Note what happened to an instance.
fn note(st: &mut DbClusterStatus, line: String) {
    set(st, |d| d.done.push(line));
}

/// Note that the restart of `name` failed, and why.
fn note_failed(st: &mut DbClusterStatus, name: &str, why: &str) {
    note(st, format!("{name} failed: {why}"));
    set(st, |d| d.failed.push(name.to_string()));
}

/// "restart (reason): what happened to each instance".
fn summary(tr: &Transition, d: &RestartData) -> String {
    format!("restart ({}): {}", tr.reason, d.done.join("; "))
}

/// Move to the next instance of the queue, or finish.
fn advance(ctx: &Ctx, st: &mut DbClusterStatus, tr: &Transition, out: &mut Vec<Action>) -> Step {
    let mut queue = tr.data.restart.queue.clone();
    if !queue.is_empty() {
        queue.remove(0);
    }
    let next = queue.first().cloned();
    if let Some(t) = st.transition.as_mut() {
        t.data.restart.queue = queue;
        t.data.restart.mode = None;
        t.target = next.clone();
    }
    if next.is_some() {
        return Step::Goto(TransitionStep::RestartInstance);
    }
    let data = st
        .transition
        .as_ref()
        .map(|t| t.data.restart.clone())
        .unwrap_or_default();
    let failed = !data.failed.is_empty();
    let message = summary(tr, &data);
    out.push(event(
        None,
        if failed {
            EventType::Warning
        } else {
            EventType::Normal
        },
        if failed {
            reasons::RESTART_FAILED
        } else {
            reasons::RESTART_COMPLETED
        },
        &message,
    ));
    Step::finish(history(
        ctx,
        tr,
        if failed {
            HistoryOutcome::Failed
        } else {
            HistoryOutcome::Succeeded
        },
        &message,
    ))
}

/// Advance a rolling restart.
pub(crate) fn step(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    out: &mut Vec<Action>,
) -> Step {
    let Some(name) = tr.target.clone() else {
        return advance(ctx, st, tr, out);
    };
    let primary = st.current_primary.clone().unwrap_or_default();
    if name == primary
        && ctx.spec.primary_update_method == PrimaryUpdateMethod::Switchover
        && !tr.data.restart.in_place
    {
        match plan::plan(ctx, st, &SwitchoverTarget::Any, false) {
            Plan::Go { target, .. } => {
                // The switchover restarts the old primary as a standby.
                note(st, format!("{name} restarted by a switchover to {target}"));
                let tr_now = st.transition.clone().unwrap_or_else(|| tr.clone());
                let message = summary(tr, &tr_now.data.restart);
                out.push(event(
                    None,
                    EventType::Normal,
                    reasons::RESTART_COMPLETED,
                    &message,
                ));
                let entry = history(ctx, &tr_now, HistoryOutcome::Succeeded, &message);
                plan::start(
                    ctx,
                    st,
                    &name,
                    &target,
                    "rolling restart of the primary",
                    out,
                );
                return Step::finish(entry);
            }
            Plan::Refused { message, .. } => {
                note(st, format!("{name} restarted in place because {message}"));
                set(st, |d| d.in_place = true);
            }
        }
    }
    let plan = ctx.restart_stop();
    let mode = tr.data.restart.mode.unwrap_or(plan.first);
    let restart = plan.restart(&name, mode);
    if !ctx.reachable(&name) && ctx.result(&restart).is_none() {
        // A poll it did not answer (a busy machine) is no failure yet.
        let elapsed = ctx.since(tr.data.step_started_at.as_deref());
        let quiet = super::report::silent_for(ctx, st, &name, elapsed);
        if super::report::waited_out_detection(ctx, quiet) {
            note_failed(st, &name, "its agent does not answer");
            return advance(ctx, st, tr, out);
        }
        st.blocked_by = Some(format!(
            "restart of {name} waits for {} (for {} of detectionTimeout {})",
            ctx.unanswered(&name),
            super::ctx::secs(quiet),
            ctx.spec.failover.detection_timeout
        ));
        return Step::Wait;
    }
    if name == primary && !ctx.runs_as_primary(&name) {
        // Nobody else is promoted while it restarts: its lease must not run
        // out in the middle (a smart stop may take longer than the TTL).
        // While it still runs as primary the steady state renews it.
        out.push(super::lease::renew(ctx, st, &name));
    }
    if let Some(Outcome::Succeeded { facts, .. }) = ctx.result(&restart) {
        let how = facts
            .stopped_with
            .map(|m| format!(" (stopped {})", super::switchover::stop_note(mode, m)))
            .unwrap_or_default();
        note(st, format!("{name} restarted{how}"));
        return advance(ctx, st, tr, out);
    }
    if let Some(message) = ctx.failure(&restart) {
        if mode != StopMode::Immediate {
            set(st, |d| d.mode = Some(StopMode::Immediate));
            out.push(plan.restart(&name, StopMode::Immediate));
            return Step::Wait;
        }
        note_failed(st, &name, message);
        return advance(ctx, st, tr, out);
    }
    if name == primary && !ctx.runs_as_primary(&name) {
        // Why no failover although the primary is down.
        st.blocked_by = in_place(ctx, st, &name).map(|why| format!("no failover: {why}"));
    }
    out.push(restart);
    Step::Wait
}
