//! Planned switchover steps (requests and prechecks are in `plan`): the
//! target leaves `-ro`, drop the primary's label → checkpoint (and let the
//! label change reach the platform's routing) → stop the primary (fast, escalating) → wait for the shutdown checkpoint on
//! the target → promote → label → old primary and siblings follow; rollback
//! while nothing was promoted. Pure.

use crate::api::{DbClusterStatus, Lsn, SwitchoverData, Transition};

use super::ctx::{secs, Ctx};
use super::Outcome;
use super::{
    event, history, reasons, Action, EventType, HistoryOutcome, RoleLabel, Step, StopMode,
    TransitionStep,
};

/// The two ends of a switchover and how long its current step has run.
pub(crate) struct Ends {
    old: String,
    target: String,
    elapsed: i64,
}

/// A switchover step: `drop_label`, `checkpoint`, `stop`, `wait_checkpoint`, `promote`, `label`, `follow` or `rollback`.
type StepFn = fn(&Ctx, &mut DbClusterStatus, &Transition, &Ends, &mut Vec<Action>) -> Step;

/// Carry out one step of a switchover, unless the old primary failed before
/// it shut down cleanly (failover then takes over).
pub(crate) fn step(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    out: &mut Vec<Action>,
    f: StepFn,
) -> Step {
    let (Some(old), Some(target)) = (tr.from.clone(), tr.target.clone()) else {
        return Step::finish(history(
            ctx,
            tr,
            HistoryOutcome::Failed,
            "switchover without source or target",
        ));
    };
    let elapsed = ctx.since(tr.data.step_started_at.as_deref());
    let before_promotion = matches!(
        tr.step,
        TransitionStep::Checkpoint
            | TransitionStep::DropPrimaryLabel
            | TransitionStep::StopPrimary
            | TransitionStep::WaitShutdownCheckpoint
    );
    if before_promotion
        && (ctx.vanished(&old) || (!ctx.reachable(&old) && elapsed >= ctx.detection_ms()))
    {
        // The old primary failed mid-way: leave it to failover, which fences it first.
        let message = format!("switchover to {target} abandoned: {old} stopped answering before it shut down cleanly; failover takes over");
        out.push(event(
            Some(&old),
            EventType::Warning,
            reasons::SWITCHOVER_ROLLED_BACK,
            &message,
        ));
        st.target_primary = st.current_primary.clone();
        return Step::finish(history(ctx, tr, HistoryOutcome::Failed, &message));
    }
    f(
        ctx,
        st,
        tr,
        &Ends {
            old,
            target,
            elapsed,
        },
        out,
    )
}

/// Record a fact of the switchover in progress.
fn set(st: &mut DbClusterStatus, f: impl FnOnce(&mut SwitchoverData)) {
    if let Some(t) = st.transition.as_mut() {
        f(&mut t.data.switchover);
    }
}

/// Roll back, saying why.
fn roll_back(st: &mut DbClusterStatus, why: String) -> Step {
    set(st, |d| d.rollback_reason = Some(why));
    Step::Goto(TransitionStep::RollBack)
}

/// Step `Checkpoint`: write the primary's dirty buffers while it still takes
/// writes on the connections it has, so that the shutdown checkpoint, which
/// runs after writes stopped, is short. Only an optimisation: its failure, or
/// one taking longer than the shutdown timeout, does not hold the switchover
/// up. The stop also waits until the label drop had `service_settle_ms` to
/// reach the routing (kube-proxy syncs at most once per its minimum sync
/// period): the new primary's label, a few hundred ms after the stop, is
/// then applied at once. Clients on established connections keep writing
/// meanwhile; new connections are refused from the label drop on.
pub(crate) fn checkpoint(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    e: &Ends,
    out: &mut Vec<Action>,
) -> Step {
    if !tr.data.switchover.old_label_dropped {
        // Resumed from the earlier order, which checkpointed before the label drop.
        return Step::Goto(TransitionStep::DropPrimaryLabel);
    }
    let checkpoint = Action::Checkpoint {
        instance: e.old.clone(),
    };
    let checkpointed = tr.data.switchover.checkpointed
        || ctx.result(&checkpoint).is_some()
        || e.elapsed >= ctx.shutdown_ms();
    if !checkpointed {
        out.push(checkpoint);
        return Step::Wait;
    }
    set(st, |d| d.checkpointed = true);
    if settling(ctx, st, e.elapsed, |waited| {
        format!(
            "letting the label change of {} reach the Service routing ({waited}) before it is stopped",
            e.old
        )
    }) {
        return Step::Wait;
    }
    Step::Goto(TransitionStep::StopPrimary)
}

/// Whether a label change made `elapsed` ms ago may still be on its way to
/// the Service routing (`service_settle_ms`); if so, wake when it has arrived
/// and say why in blockedBy (`why` gets "<elapsed> of <settle>").
fn settling(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    elapsed: i64,
    why: impl FnOnce(String) -> String,
) -> bool {
    let settle = i64::try_from(ctx.obs.service_settle_ms).unwrap_or(i64::MAX);
    if elapsed >= settle {
        return false;
    }
    ctx.wake_at(ctx.now - elapsed + settle);
    st.blocked_by = Some(why(format!("{} of {}", secs(elapsed), secs(settle))));
    true
}

/// Step `DropPrimaryLabel`: take the target out of `-ro`, and once that had
/// `service_settle_ms` to reach the routing, stop new connections to the
/// primary.
///
/// The target leaves `-ro` first so that the label it gets once promoted
/// changes one Service only. kube-proxy applies endpoint changes at most once
/// per its minimum sync period: when the target's move from `-ro` to `-rw`
/// changed both Services and `-ro`'s change came first, `-rw` waited for the
/// next period, a second more of write pause.
pub(crate) fn drop_label(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    e: &Ends,
    out: &mut Vec<Action>,
) -> Step {
    let withdraw = Action::SetRole {
        instance: e.target.clone(),
        role: RoleLabel::Unknown,
    };
    // Best effort: a label that could not be changed costs time, not safety.
    let withdrawn = tr.data.switchover.target_withdrawn
        || ctx.result(&withdraw).is_some()
        || ctx.obs(&e.target).and_then(|o| o.label) != Some(RoleLabel::Standby);
    if !withdrawn {
        out.push(withdraw);
        return Step::Wait;
    }
    set(st, |d| d.target_withdrawn = true);
    if settling(ctx, st, e.elapsed, |waited| {
        format!(
            "letting {} leave the read-only Service before {} leaves the read-write one ({waited})",
            e.target, e.old
        )
    }) {
        return Step::Wait;
    }
    let drop = Action::SetRole {
        instance: e.old.clone(),
        role: RoleLabel::Fenced,
    };
    let gone = ctx.succeeded(&drop)
        || ctx
            .obs(&e.old)
            .and_then(|o| o.label)
            .is_some_and(|l| l != RoleLabel::Primary);
    if gone {
        set(st, |d| d.old_label_dropped = true);
        return Step::Goto(TransitionStep::Checkpoint);
    }
    out.push(drop);
    Step::Wait
}

/// Step `StopPrimary`: stop the primary fast, then immediately; note its shutdown checkpoint.
pub(crate) fn stop(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    e: &Ends,
    out: &mut Vec<Action>,
) -> Step {
    let old = &e.old;
    let plan = ctx.switchover_stop();
    let mode = tr.data.switchover.stop_mode.unwrap_or(plan.first);
    let stop = plan.stop(old, mode);
    // Only the agent's answer counts: a postgres merely seen down (a
    // crash) may be restarted by its agent; a stopped one is held down.
    if let Some(Outcome::Succeeded { facts, .. }) = ctx.result(&stop) {
        let stopped_with = facts.stopped_with.unwrap_or(mode);
        set(st, |d| d.stopped_with = Some(stopped_with));
        let unclean = facts.escalated
            || mode == StopMode::Immediate
            || stopped_with == StopMode::Immediate
            || ctx.agent(old).and_then(|a| a.clean_shutdown) == Some(false);
        if unclean {
            // Its latest checkpoint is no shutdown checkpoint: WAL written
            // after it may never have reached the target.
            let end = facts
                .end_of_wal
                .or_else(|| ctx.agent(old).and_then(|a| a.end_of_wal));
            let Some(end) = end else {
                return roll_back(
                    st,
                    format!("{old} did not shut down cleanly and where its WAL ends is not known, so nothing proves {} has all of it", e.target),
                );
            };
            set(st, |d| {
                d.stop_escalated = true;
                d.checkpoint_lsn = Some(end);
            });
            return Step::Goto(TransitionStep::WaitShutdownCheckpoint);
        }
        // Without the agent's checkpoint location, the last position seen
        // before the stop is the best lower bound there is.
        let last_seen: Option<Lsn> = st
            .instances
            .iter()
            .find(|i| i.name == *old)
            .and_then(|i| i.lsn);
        let checkpoint = ctx
            .agent(old)
            .and_then(|a| a.checkpoint_lsn)
            .or(last_seen)
            .or(tr.data.old_primary_lsn);
        if let Some(c) = checkpoint {
            set(st, |d| d.checkpoint_lsn = Some(c));
        }
        return Step::Goto(TransitionStep::WaitShutdownCheckpoint);
    }
    if let Some(message) = ctx.failure(&stop) {
        if mode != StopMode::Immediate {
            set(st, |d| d.stop_mode = Some(StopMode::Immediate));
            out.push(plan.stop(old, StopMode::Immediate));
            return Step::Wait;
        }
        return roll_back(st, format!("{old} did not stop: {message}"));
    }
    out.push(stop);
    Step::Wait
}

/// Step `WaitShutdownCheckpoint`: until the target received the old primary's shutdown checkpoint.
pub(crate) fn wait_checkpoint(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    e: &Ends,
    _out: &mut Vec<Action>,
) -> Step {
    let (old, target) = (&e.old, &e.target);
    let checkpoint = tr.data.switchover.checkpoint_lsn;
    let escalated = tr.data.switchover.stop_escalated;
    let received = ctx.agent(target).and_then(|a| a.received_lsn);
    let caught_up = match (checkpoint, received) {
        // The end of its WAL: everything up to there.
        (Some(c), Some(r)) if escalated => r >= c,
        // A shutdown checkpoint record starts at c: past it.
        (Some(c), Some(r)) => r > c,
        (None, Some(_)) => !escalated,
        _ => false,
    };
    if caught_up {
        return Step::Goto(TransitionStep::Promote);
    }
    if escalated && e.elapsed >= ctx.shutdown_ms() {
        // What it wrote after its last send can no longer reach the target:
        // promoting would lose it. Abort; the old primary starts again.
        return roll_back(
            st,
            format!(
                "{old}'s stop escalated (it did not shut down cleanly) and {target} lacks WAL from {} to {}, the end of {old}'s WAL: promoting it would lose that",
                fmt(received),
                fmt(checkpoint)
            ),
        );
    }
    if e.elapsed >= ctx.shutdown_ms() {
        return roll_back(
            st,
            format!(
                "{target} did not receive {old}'s shutdown checkpoint {} within {} (received {})",
                fmt(checkpoint),
                secs(ctx.shutdown_ms()),
                fmt(received)
            ),
        );
    }
    st.blocked_by = Some(format!(
        "waiting for {target} to receive {old}'s shutdown checkpoint {} (received {})",
        fmt(checkpoint),
        fmt(received)
    ));
    Step::Wait
}

/// Step `Promote`: promote the target (durability settings first).
pub(crate) fn promote(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    _tr: &Transition,
    e: &Ends,
    out: &mut Vec<Action>,
) -> Step {
    let target = &e.target;
    if ctx.runs_as_primary(target) {
        if let Some(l) = ctx.lsn(target) {
            set(st, |d| d.promoted_lsn = Some(l));
        }
        return Step::Goto(TransitionStep::Label);
    }
    let promote = Action::promote_and_label(target);
    if let Some(message) = ctx.failure(&promote) {
        if ctx.runs_as_standby(target) {
            return roll_back(st, format!("promoting {target} failed: {message}"));
        }
    }
    // The siblings stream from the target while it is promoted.
    super::failover::siblings_cascade(ctx, target, &e.old, out);
    if let Some(config) = super::durability::before_promotion(ctx, target) {
        if !super::failover::config_first(ctx, st, target, config, out) {
            return Step::Wait;
        }
    }
    out.push(super::lease::renew(ctx, st, target));
    out.push(promote);
    Step::Wait
}

/// Step `Label`: the promoted target becomes currentPrimary and gets the primary label.
pub(crate) fn label(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    _tr: &Transition,
    e: &Ends,
    out: &mut Vec<Action>,
) -> Step {
    let target = &e.target;
    st.current_primary = Some(target.clone());
    st.target_primary = Some(target.clone());
    if let Some(tl) = ctx.timeline(target) {
        st.timeline = Some(tl);
    }
    let set = Action::SetRole {
        instance: target.clone(),
        role: RoleLabel::Primary,
    };
    if ctx.succeeded(&set) || ctx.obs(target).and_then(|o| o.label) == Some(RoleLabel::Primary) {
        return Step::Goto(TransitionStep::Follow);
    }
    out.push(set);
    // The siblings follow with the label, not a pass later: under
    // sync+required the new primary's first commit waits for one of them.
    super::failover::siblings_follow(ctx, target, &e.old, out);
    Step::Wait
}

/// "fast", or "fast (smart timed out)" when the stop escalated to it.
pub(crate) fn stop_note(first: StopMode, ended: StopMode) -> String {
    if ended > first {
        format!("{} ({} timed out)", ended.as_str(), first.as_str())
    } else {
        ended.as_str().to_string()
    }
}

fn fmt(l: Option<Lsn>) -> String {
    l.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into())
}

/// Step `Follow`: the old primary and the siblings follow the target; whatever does not is left to rejoin.
pub(crate) fn follow(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    e: &Ends,
    out: &mut Vec<Action>,
) -> Step {
    let (old, target, elapsed) = (e.old.as_str(), e.target.as_str(), e.elapsed);
    let mut pending = Vec::new();
    let mut notes = Vec::new();
    for name in ctx.names.iter().filter(|n| n.as_str() != target) {
        if ctx.streams_from(name, target) {
            continue;
        }
        let action = if name == old {
            Action::Demote {
                instance: name.clone(),
                primary: target.to_string(),
            }
        } else {
            Action::Follow {
                instance: name.clone(),
                primary: target.to_string(),
                cascade: false,
            }
        };
        if ctx.succeeded(&action) {
            continue;
        }
        if let Some(m) = ctx.failure(&action) {
            notes.push(format!("{name} did not follow ({m}); it will be rejoined"));
            continue;
        }
        if !ctx.reachable(name) {
            if name == old {
                notes.push(format!("{name} does not answer; it will be rejoined"));
            }
            continue;
        }
        out.push(action);
        pending.push(name.clone());
    }
    if !pending.is_empty() && elapsed < ctx.shutdown_ms() {
        st.blocked_by = Some(format!(
            "waiting for {} to follow {target}",
            pending.join(", ")
        ));
        return Step::Wait;
    }
    // Stop re-issuing: whatever has not followed is left to rejoin.
    out.retain(|a| !matches!(a, Action::Demote { primary, .. } | Action::Follow { primary, .. } if primary == target && pending.iter().any(|p| Some(p.as_str()) == a.instance())));
    for p in pending {
        notes.push(format!(
            "{p} had not followed within {}",
            secs(ctx.shutdown_ms())
        ));
    }
    if let Some(m) = tr.data.switchover.stopped_with {
        notes.push(format!(
            "{old} stopped {}",
            stop_note(ctx.switchover_stop().first, m)
        ));
    }
    if tr.data.switchover.stop_escalated {
        notes.push(format!(
            "{old}'s stop escalated (it did not shut down cleanly); {target} had received all of its WAL (to {}) before it was promoted",
            fmt(tr.data.switchover.checkpoint_lsn)
        ));
    }
    let mut message = format!("switched over from {old} to {target} ({})", tr.reason);
    if !notes.is_empty() {
        message.push_str("; ");
        message.push_str(&notes.join("; "));
    }
    out.push(event(
        Some(target),
        EventType::Normal,
        reasons::SWITCHOVER_COMPLETED,
        &message,
    ));
    let mut entry = history(ctx, tr, HistoryOutcome::Succeeded, &message);
    entry.old_primary_lsn = tr
        .data
        .switchover
        .checkpoint_lsn
        .or(tr.data.old_primary_lsn);
    entry.promoted_lsn = tr.data.switchover.promoted_lsn;
    entry.bytes_possibly_lost = Some(0);
    Step::finish(entry)
}

/// Step `RollBack`: nothing was promoted; the old primary starts again and keeps its role.
pub(crate) fn rollback(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    e: &Ends,
    out: &mut Vec<Action>,
) -> Step {
    let (old, target) = (e.old.as_str(), e.target.as_str());
    let why = tr
        .data
        .switchover
        .rollback_reason
        .clone()
        .unwrap_or_default();
    if ctx.runs_as_primary(target) {
        // The target did promote after all: go forward, the old primary is stopped.
        return Step::Goto(TransitionStep::Label);
    }
    st.target_primary = Some(old.to_string());
    let set = Action::SetRole {
        instance: old.to_string(),
        role: RoleLabel::Primary,
    };
    if ctx.runs_as_primary(old) {
        if ctx.succeeded(&set) || ctx.obs(old).and_then(|o| o.label) == Some(RoleLabel::Primary) {
            let message =
                format!("switchover to {target} rolled back: {why}; {old} stays the primary");
            out.push(event(
                Some(old),
                EventType::Warning,
                reasons::SWITCHOVER_ROLLED_BACK,
                &message,
            ));
            return Step::finish(history(ctx, tr, HistoryOutcome::RolledBack, &message));
        }
        out.push(super::lease::renew(ctx, st, old));
        out.push(set);
        return Step::Wait;
    }
    out.push(super::lease::renew(ctx, st, old));
    out.push(Action::Start {
        instance: old.to_string(),
    });
    st.blocked_by = Some(format!(
        "rolling back the switchover to {target}: restarting {old} as the primary ({why})"
    ));
    Step::Wait
}
