//! Rejoin and re-clone: a failed or diverged instance comes back as a standby
//! of the current primary (demote, rewinding when needed), falling back to a
//! re-clone when allowed; explicit re-clone and rejoin dry-run requests.
//! Never re-clones the most advanced copy. Pure.

use crate::api::{DbClusterStatus, RejoinData, Transition};

use super::ctx::Ctx;
use super::{
    busy_reason, event, history, instant_history, new_transition, reasons, refuse, Action,
    ActionFacts, EventType, HistoryKind, HistoryOutcome, Outcome, Request, RoleLabel, Step,
    TransitionKind, TransitionStep,
};

/// Why re-cloning `name` from `primary` would destroy the most advanced copy, if it would.
pub(crate) fn reclone_unsafe(ctx: &Ctx, name: &str, primary: &str) -> Option<String> {
    let (tl, lsn) = ctx.position(name);
    let (ptl, plsn) = ctx.position(primary);
    if !ctx.reachable(primary) || !ctx.runs_as_primary(primary) {
        return Some(format!(
            "{primary} (the primary) does not answer, so it cannot be the source"
        ));
    }
    // A standby streaming from the primary on its timeline holds nothing the
    // primary lacks: a higher figure only means the primary was polled first.
    let follows = tl == ptl && ctx.streams_from(name, primary);
    if (tl, lsn) > (ptl, plsn) && !follows {
        return Some(format!(
            "{name} has the most advanced copy of the data ({lsn} on timeline {tl}; primary {primary} is at {plsn} on timeline {ptl}): re-cloning it would destroy it"
        ));
    }
    None
}

/// Why `name` needs to rejoin the current primary, if it does.
pub(crate) fn needs_rejoin(
    ctx: &Ctx,
    st: &DbClusterStatus,
    name: &str,
    primary: &str,
) -> Option<String> {
    let a = ctx.agent(name)?;
    if ctx.runs_as_primary(name) {
        return Some(format!(
            "{name} runs as a primary but {primary} is the primary"
        ));
    }
    if a.operation.is_some() {
        return None;
    }
    let since = st
        .instances
        .iter()
        .find(|i| i.name == name)
        .and_then(|i| i.unhealthy_since.as_deref());
    let long = ctx.since(since) >= ctx.detection_ms();
    if !a.postgres_running && (a.fenced || long) {
        return Some(format!("postgres on {name} is stopped"));
    }
    if a.postgres_running && a.in_recovery && !ctx.streams_from(name, primary) && long {
        return Some(format!(
            "{name} has not streamed from {primary} for over {}",
            ctx.spec.failover.detection_timeout
        ));
    }
    None
}

/// Start an automatic rejoin or re-clone when an instance needs one; true when started.
pub(crate) fn automatic(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) -> bool {
    let Some(primary) = st.current_primary.clone() else {
        return false;
    };
    if !ctx.runs_as_primary(&primary) {
        return false;
    }
    let psys = ctx
        .agent(&primary)
        .and_then(|a| a.system_identifier.clone());
    for name in ctx
        .names
        .iter()
        .filter(|n| **n != primary && ctx.in_spec(n))
    {
        let sys = ctx.agent(name).and_then(|a| a.system_identifier.clone());
        let foreign = !ctx.busy(name) && matches!((&psys, &sys), (Some(p), Some(s)) if p != s);
        let why = if foreign {
            Some(format!(
                "{name} has system identifier {} but the primary {primary} has {}",
                sys.clone().unwrap_or_default(),
                psys.clone().unwrap_or_default()
            ))
        } else {
            needs_rejoin(ctx, st, name, &primary)
        };
        let Some(why) = why else { continue };
        if ctx.paused {
            st.blocked_by = Some(format!(
                "no automatic rejoin: {why}, and automation is paused ({})",
                ctx.paused_by()
            ));
            return false;
        }
        if foreign {
            if !ctx.spec.rejoin.allow_reclone {
                st.blocked_by = Some(format!(
                    "{why}; re-clone is not allowed (spec.rejoin.allowReclone=false)"
                ));
                return false;
            }
            if let Some(unsafe_why) = reclone_unsafe(ctx, name, &primary) {
                st.blocked_by = Some(format!("{why}; {unsafe_why}"));
                return false;
            }
            start_reclone(ctx, st, name, &primary, &why, out);
            return true;
        }
        let tr = new_transition(ctx, TransitionKind::Rejoin, Some(name), None, &why);
        out.push(event(
            Some(name),
            EventType::Normal,
            reasons::REJOIN_STARTED,
            &format!("rejoining {name} to {primary}: {why}"),
        ));
        st.transition = Some(tr);
        return true;
    }
    false
}

fn start_reclone(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    name: &str,
    primary: &str,
    why: &str,
    out: &mut Vec<Action>,
) {
    let message = format!("re-cloning {name} from {primary}: {why}");
    let mut entry = instant_history(
        ctx,
        HistoryKind::Reclone,
        Some(name),
        HistoryOutcome::Started,
        &message,
    );
    entry.from = Some(primary.to_string());
    st.push_history(entry);
    out.push(event(
        Some(name),
        EventType::Warning,
        reasons::RECLONE_STARTED,
        &message,
    ));
    st.transition = Some(new_transition(
        ctx,
        TransitionKind::Reclone,
        Some(name),
        None,
        why,
    ));
}

/// Common validation of rejoin / re-clone requests.
fn validate(ctx: &Ctx, st: &DbClusterStatus, what: &str, name: &str) -> Result<String, String> {
    if !ctx.exists(name) {
        return Err(format!(
            "instance {name} does not exist (instances: {})",
            ctx.name_list()
        ));
    }
    if let Some(why) = busy_reason(st, what) {
        return Err(why);
    }
    let Some(primary) = st.current_primary.clone() else {
        return Err(format!("{what} refused: the cluster has no primary"));
    };
    if name == primary {
        return Err(format!(
            "{what} refused: {name} is the primary; switch over first"
        ));
    }
    if !ctx.runs_as_primary(&primary) {
        return Err(format!(
            "{what} refused: the primary {primary} does not answer as a primary"
        ));
    }
    if !ctx.reachable(name) {
        return Err(format!("{what} refused: {}", ctx.unanswered(name)));
    }
    Ok(primary)
}

/// Answer `tandem.dev/rejoin=<name>` (with dry-run).
pub(crate) fn request_rejoin(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    req: &Request,
    name: &str,
    dry_run: bool,
    out: &mut Vec<Action>,
) {
    let kind = if dry_run {
        TransitionKind::RejoinDryRun
    } else {
        TransitionKind::Rejoin
    };
    if st
        .transition
        .as_ref()
        .is_some_and(|t| t.kind == kind && t.target.as_deref() == Some(name))
    {
        out.push(Action::RequestDone {
            request: req.clone(),
        });
        return;
    }
    match validate(
        ctx,
        st,
        if dry_run { "rejoin dry-run" } else { "rejoin" },
        name,
    ) {
        Err(why) => refuse(ctx, st, req, kind.into(), Some(name), &why, out),
        Ok(primary) => {
            let reason = if dry_run {
                "dry-run requested"
            } else {
                "requested"
            };
            st.transition = Some(new_transition(
                ctx,
                kind,
                Some(name),
                Some(&primary),
                reason,
            ));
            if !dry_run {
                out.push(event(
                    Some(name),
                    EventType::Normal,
                    reasons::REJOIN_STARTED,
                    &format!("rejoining {name} to {primary} (requested)"),
                ));
            }
            out.push(Action::RequestDone {
                request: req.clone(),
            });
        }
    }
}

/// Answer `tandem.dev/reclone=<name>`.
pub(crate) fn request_reclone(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    req: &Request,
    name: &str,
    out: &mut Vec<Action>,
) {
    if st
        .transition
        .as_ref()
        .is_some_and(|t| t.kind == TransitionKind::Reclone && t.target.as_deref() == Some(name))
    {
        out.push(Action::RequestDone {
            request: req.clone(),
        });
        return;
    }
    let checked = validate(ctx, st, "re-clone", name).and_then(|primary| {
        match reclone_unsafe(ctx, name, &primary) {
            Some(why) => Err(format!("re-clone refused: {why}")),
            None => Ok(primary),
        }
    });
    match checked {
        Err(why) => refuse(ctx, st, req, HistoryKind::Reclone, Some(name), &why, out),
        Ok(primary) => {
            start_reclone(ctx, st, name, &primary, "requested", out);
            out.push(Action::RequestDone {
                request: req.clone(),
            });
        }
    }
}

/// The instance a rejoin, re-clone or rejoin dry-run acts on, and the primary it joins.
pub(crate) struct Ends {
    name: String,
    primary: String,
}

/// A rejoin step: [`rewind_check`], [`demote`] or [`reclone`].
type StepFn = fn(&Ctx, &mut DbClusterStatus, &Transition, &Ends, &mut Vec<Action>) -> Step;

/// Carry out one step of a rejoin, re-clone or rejoin dry-run, while both the
/// instance and the primary answer (it fails when one stays silent).
pub(crate) fn step(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    out: &mut Vec<Action>,
    f: StepFn,
) -> Step {
    let Some(name) = tr.target.clone() else {
        return Step::finish(history(
            ctx,
            tr,
            HistoryOutcome::Failed,
            "rejoin without an instance",
        ));
    };
    let Some(primary) = st.current_primary.clone() else {
        return Step::finish(history(
            ctx,
            tr,
            HistoryOutcome::Failed,
            "no primary to rejoin to",
        ));
    };
    let source_gone = !ctx.runs_as_primary(&primary);
    if !ctx.reachable(&name) || source_gone {
        let step_elapsed = ctx.since(tr.data.step_started_at.as_deref());
        let who = if source_gone { &primary } else { &name };
        // A primary that answers but runs in recovery counts from the step's start.
        let quiet = if ctx.reachable(who) {
            step_elapsed
        } else {
            super::report::silent_for(ctx, st, who, step_elapsed)
        };
        if super::report::waited_out_detection(ctx, quiet) {
            let message = format!("{} of {name} failed: {who} stopped answering", tr.kind);
            out.push(event(
                Some(&name),
                EventType::Warning,
                reasons::REJOIN_FAILED,
                &message,
            ));
            return Step::finish(history(ctx, tr, HistoryOutcome::Failed, &message));
        }
        st.blocked_by = Some(format!("{} of {name} waits for {who} to answer", tr.kind));
        return Step::Wait;
    }
    f(ctx, st, tr, &Ends { name, primary }, out)
}

/// Record a fact of the rejoin or re-clone in progress.
fn set(st: &mut DbClusterStatus, f: impl FnOnce(&mut RejoinData)) {
    if let Some(t) = st.transition.as_mut() {
        f(&mut t.data.rejoin);
    }
}

/// Step `RewindCheck` (rejoin dry-run): pg_rewind --dry-run, reported in history.
pub(crate) fn rewind_check(
    ctx: &Ctx,
    _st: &mut DbClusterStatus,
    tr: &Transition,
    e: &Ends,
    out: &mut Vec<Action>,
) -> Step {
    let (name, primary) = (&e.name, &e.primary);
    let check = Action::Rewind {
        instance: name.clone(),
        source: primary.clone(),
        dry_run: true,
    };
    match ctx.result(&check) {
        Some(Outcome::Succeeded { detail, facts }) => {
            let mut message = format!(
                "rejoin dry-run of {name} to {primary}: {}",
                detail
                    .clone()
                    .unwrap_or_else(|| "the rewind check passed".into())
            );
            if facts.reclone_needed && !ctx.spec.rejoin.allow_reclone {
                message.push_str(
                    "; re-clone is not allowed (spec.rejoin.allowReclone=false), so a rejoin would fail",
                );
            }
            out.push(event(
                Some(name),
                EventType::Normal,
                reasons::REJOIN_DRY_RUN,
                &message,
            ));
            Step::finish(history(ctx, tr, HistoryOutcome::DryRun, &message))
        }
        Some(Outcome::Failed { message }) => {
            let message = format!("rejoin dry-run of {name} to {primary}: {message}");
            out.push(event(
                Some(name),
                EventType::Warning,
                reasons::REJOIN_DRY_RUN,
                &message,
            ));
            Step::finish(history(ctx, tr, HistoryOutcome::Failed, &message))
        }
        None => {
            out.push(check);
            Step::Wait
        }
    }
}

/// Step `Demote` (rejoin): restart as a standby of the primary, rewinding when
/// needed; a failed rewind falls back to a re-clone when that is allowed and safe.
pub(crate) fn demote(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    e: &Ends,
    out: &mut Vec<Action>,
) -> Step {
    let (name, primary) = (&e.name, &e.primary);
    if ctx.obs(name).and_then(|o| o.label) == Some(RoleLabel::Primary) {
        out.push(Action::SetRole {
            instance: name.clone(),
            role: RoleLabel::Fenced,
        });
    }
    let demote = Action::Demote {
        instance: name.clone(),
        primary: primary.clone(),
    };
    // Streaming already, the demote's answer (with what its rewind
    // discarded) follows in a moment; without it (an operator restarted
    // meanwhile) the rejoin is over all the same after a while.
    let answer_lost = tr.data.rejoin.issued
        && ctx.streams_from(name, primary)
        && ctx.since(tr.data.step_started_at.as_deref()) >= ctx.shutdown_ms();
    if ctx.succeeded(&demote) || answer_lost {
        let mut message = format!("{name} rejoined {primary} as a standby ({})", tr.reason);
        if let Some(Outcome::Succeeded { facts, .. }) = ctx.result(&demote) {
            if let Some(note) = account_rewind(st, name, facts, out) {
                message = format!("{message}; {note}");
            }
        }
        out.push(event(
            Some(name),
            EventType::Normal,
            reasons::REJOIN_COMPLETED,
            &message,
        ));
        return Step::finish(history(ctx, tr, HistoryOutcome::Succeeded, &message));
    }
    if let Some(message) = ctx.failure(&demote) {
        return rewind_failed(ctx, st, tr, e, message, out);
    }
    set(st, |d| d.issued = true);
    out.push(demote);
    Step::Wait
}

/// What the rewind of `name` discarded, from the agent's figures: recorded in
/// the history entry of the failover away from it (its RPO made exact) and
/// in an Event. Returns the note for the rejoin's own entry.
fn account_rewind(
    st: &mut DbClusterStatus,
    name: &str,
    facts: &ActionFacts,
    out: &mut Vec<Action>,
) -> Option<String> {
    let (Some(diverged), Some(end)) = (facts.diverged_at, facts.rewound_from) else {
        return None;
    };
    let bytes = i64::try_from(end.bytes_after(diverged)).unwrap_or(i64::MAX);
    let note = format!(
        "its rewind discarded {bytes} bytes of WAL (from {diverged}, where its history diverged, to {end})"
    );
    let failover = st.history.iter_mut().rev().find(|h| {
        h.kind == HistoryKind::Failover
            && h.from.as_deref() == Some(name)
            && h.bytes_discarded.is_none()
    });
    if let Some(h) = failover {
        h.bytes_discarded = Some(bytes);
        h.message = format!("{}; when {name} rejoined, {note}", h.message);
    }
    let type_ = if bytes > 0 {
        EventType::Warning
    } else {
        EventType::Normal
    };
    out.push(event(
        Some(name),
        type_,
        reasons::REWIND_DISCARDED,
        &format!("{name}: {note}"),
    ));
    Some(note)
}

/// The rewind of a rejoin failed: re-clone when allowed and safe, or end the rejoin.
fn rewind_failed(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    e: &Ends,
    message: &str,
    out: &mut Vec<Action>,
) -> Step {
    let (name, primary) = (&e.name, &e.primary);
    let failed = format!("rejoining {name} to {primary} failed: {message}");
    out.push(event(
        Some(name),
        EventType::Warning,
        reasons::REJOIN_FAILED,
        &failed,
    ));
    if !ctx.spec.rejoin.allow_reclone {
        return Step::finish(history(
            ctx,
            tr,
            HistoryOutcome::Failed,
            &format!("{failed}; re-clone is not allowed (spec.rejoin.allowReclone=false)"),
        ));
    }
    if let Some(why) = reclone_unsafe(ctx, name, primary) {
        return Step::finish(history(
            ctx,
            tr,
            HistoryOutcome::Failed,
            &format!("{failed}; not re-cloning: {why}"),
        ));
    }
    let message = format!("re-cloning {name} from {primary}: {failed}");
    let mut entry = instant_history(
        ctx,
        HistoryKind::Reclone,
        Some(name),
        HistoryOutcome::Started,
        &message,
    );
    entry.from = Some(primary.clone());
    st.push_history(entry);
    out.push(event(
        Some(name),
        EventType::Warning,
        reasons::RECLONE_STARTED,
        &message,
    ));
    set(st, |d| d.rewind_failed = Some(message));
    Step::Goto(TransitionStep::Reclone)
}

/// Step `Reclone` (re-clone, or rejoin after a failed rewind): pg_basebackup
/// from the primary, checked once more right before the data directory goes.
pub(crate) fn reclone(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    e: &Ends,
    out: &mut Vec<Action>,
) -> Step {
    let (name, primary) = (&e.name, &e.primary);
    let reclone = Action::Reclone {
        instance: name.clone(),
        source: primary.clone(),
    };
    let issued = tr.data.rejoin.reclone_issued;
    // A standby re-cloned on request streams before and after: only the
    // agent's answer says it is done, unless that answer was lost (an
    // operator restarted meanwhile) and it streams with nothing under way.
    let answer_lost = issued
        && ctx.streams_from(name, primary)
        && ctx.agent(name).is_some_and(|a| a.operation.is_none())
        && ctx.since(tr.data.step_started_at.as_deref()) >= ctx.shutdown_ms();
    if ctx.succeeded(&reclone) || answer_lost {
        let message = format!("{name} re-cloned from {primary} ({})", tr.reason);
        out.push(event(
            Some(name),
            EventType::Normal,
            reasons::RECLONE_COMPLETED,
            &message,
        ));
        return Step::finish(history(ctx, tr, HistoryOutcome::Succeeded, &message));
    }
    if let Some(message) = ctx.failure(&reclone) {
        let message = format!("re-cloning {name} from {primary} failed: {message}");
        out.push(event(
            Some(name),
            EventType::Warning,
            reasons::RECLONE_FAILED,
            &message,
        ));
        return Step::finish(history(ctx, tr, HistoryOutcome::Failed, &message));
    }
    if !issued {
        // Checked again right before the data directory goes.
        if let Some(why) = reclone_unsafe(ctx, name, primary) {
            return Step::finish(history(
                ctx,
                tr,
                HistoryOutcome::Refused,
                &format!("re-clone refused: {why}"),
            ));
        }
    }
    set(st, |d| d.reclone_issued = true);
    out.push(reclone);
    Step::Wait
}
