//! Automatic failover: detection (detectionTimeout, delay, or at once when the
//! platform knows the primary is gone), fencing, promotion of the best
//! standby, relabelling, and RPO accounting in history. Pure.

use crate::api::{DbClusterStatus, FailoverData, Transition};

use super::ctx::{parse_ms, secs, Ctx};
use super::prechecks::failover_candidate;
use super::{
    event, history, new_transition, reasons, Action, EventType, HistoryOutcome, RoleLabel, Step,
    StopMode, TransitionKind, TransitionStep,
};

/// Why the current primary counts as failed, or `None` while it is healthy.
pub(crate) fn primary_problem(ctx: &Ctx, primary: &str) -> Option<String> {
    if ctx.vanished(primary) {
        Some(format!("the platform reports {primary} gone"))
    } else if !ctx.reachable(primary) {
        Some(ctx.unanswered(primary))
    } else if !ctx.running(primary) {
        Some(format!("postgres on {primary} is not running"))
    } else if !ctx.runs_as_primary(primary) {
        Some(format!("{primary} runs in recovery, not as the primary"))
    } else {
        None
    }
}

/// Whether the primary has failed long enough to act on: Ok(reason) to fail
/// over now, Err(why not yet) while waiting, or None when healthy.
pub(crate) fn failed_for_long_enough(
    ctx: &Ctx,
    st: &DbClusterStatus,
    primary: &str,
) -> Option<Result<String, String>> {
    let problem = primary_problem(ctx, primary)?;
    if let Some(restarting) = super::restart::in_place(ctx, st, primary) {
        return Some(Err(restarting));
    }
    if let Some(alive) = super::lease::kept_by_peers(ctx, st, primary) {
        return Some(Err(alive));
    }
    let since = st
        .instances
        .iter()
        .find(|i| i.name == primary)
        .and_then(|i| i.unhealthy_since.as_deref());
    let elapsed = ctx.since(since);
    // A platform that knows the process is dead needs no detection window.
    let wait = if ctx.vanished(primary) {
        ctx.delay_ms()
    } else {
        ctx.detection_ms() + ctx.delay_ms()
    };
    if elapsed >= wait {
        Some(Ok(format!("{problem} for {}", secs(elapsed))))
    } else {
        ctx.wake_at(ctx.now - elapsed + wait);
        Some(Err(format!(
            "{problem} for {}: failover after {} (detectionTimeout {}, delay {})",
            secs(elapsed),
            secs(wait),
            ctx.spec.failover.detection_timeout,
            ctx.spec.failover.delay
        )))
    }
}

/// Start a failover when the primary has failed; true when one started.
pub(crate) fn detect(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) -> bool {
    let Some(primary) = st.current_primary.clone() else {
        return false;
    };
    let reason = match failed_for_long_enough(ctx, st, &primary) {
        None => return false,
        Some(Err(waiting)) => {
            st.blocked_by = Some(waiting);
            return false;
        }
        Some(Ok(reason)) => reason,
    };
    if !ctx.spec.failover.enabled {
        st.blocked_by = Some(format!(
            "no failover: {reason}, and failover is disabled (spec.failover.enabled=false)"
        ));
        return false;
    }
    if ctx.paused {
        st.blocked_by = Some(format!(
            "no failover: {reason}, and automation is paused ({})",
            ctx.paused_by()
        ));
        return false;
    }
    let candidate = match failover_candidate(ctx, st, &primary, &[]) {
        Ok(c) => c,
        Err(why) => {
            st.blocked_by = Some(format!("no failover: {reason}; {why}"));
            return false;
        }
    };
    let mut tr = new_transition(
        ctx,
        TransitionKind::Failover,
        Some(&candidate),
        Some(&primary),
        &reason,
    );
    let old = st.instances.iter().find(|i| i.name == primary);
    tr.data.old_primary_lsn = old.and_then(|i| i.lsn);
    tr.data.failover.old_timeline = old.and_then(|i| i.timeline);
    st.target_primary = Some(candidate.clone());
    out.push(event(
        Some(&primary),
        EventType::Warning,
        reasons::FAILOVER_STARTED,
        &format!("failover from {primary}: {reason}; candidate {candidate}"),
    ));
    st.transition = Some(tr);
    true
}

/// Carry out one step of a failover (`f`: [`fence`], [`promote`], [`label`])
/// away from its old primary.
pub(crate) fn step(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    out: &mut Vec<Action>,
    f: impl FnOnce(&Ctx, &mut DbClusterStatus, &Transition, &str, &mut Vec<Action>) -> Step,
) -> Step {
    let Some(old) = tr.from.clone() else {
        return Step::finish(history(
            ctx,
            tr,
            HistoryOutcome::Failed,
            "failover without an old primary",
        ));
    };
    f(ctx, st, tr, &old, out)
}

/// Record a fact of the failover in progress.
fn set(st: &mut DbClusterStatus, f: impl FnOnce(&mut FailoverData)) {
    if let Some(t) = st.transition.as_mut() {
        f(&mut t.data.failover);
    }
}

/// The old primary can no longer accept writes, or why not yet.
pub(crate) fn fenced(
    ctx: &Ctx,
    st: &DbClusterStatus,
    tr: &Transition,
    old: &str,
) -> Result<String, String> {
    if ctx.gone(old) {
        return Ok(format!("the platform reports {old} gone"));
    }
    if tr.data.failover.stop_confirmed {
        return Ok(format!("{old}'s agent stopped postgres"));
    }
    if let Some(a) = ctx.agent(old) {
        if a.fenced && !a.postgres_running {
            return Ok(format!("{old}'s agent fenced postgres"));
        }
        if a.postgres_running && a.in_recovery {
            return Ok(format!("{old} runs in recovery"));
        }
    }
    // Neither a deleted pod nor a lost node proves the old postgres stopped:
    // only its lease running out does.
    super::lease::ran_out(ctx, st, tr, old).map_err(|lease| {
        format!(
            "waiting for {old} to be fenced: {}; {lease}",
            if ctx.reachable(old) {
                "its agent has not confirmed postgres stopped"
            } else if ctx.vanished(old) {
                "the platform no longer shows it, which does not prove its postgres stopped"
            } else {
                "its agent does not answer"
            },
        )
    })
}

/// Step `Fence`: drop the old primary's label, make sure it cannot write, choose the candidate.
pub(crate) fn fence(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    old: &str,
    out: &mut Vec<Action>,
) -> Step {
    let drop = Action::SetRole {
        instance: old.to_string(),
        role: RoleLabel::Fenced,
    };
    let label_gone = tr.data.failover.label_dropped
        || ctx.succeeded(&drop)
        || ctx
            .obs(old)
            .and_then(|o| o.label)
            .is_some_and(|l| l != RoleLabel::Primary);
    if label_gone {
        set(st, |d| d.label_dropped = true);
    } else {
        out.push(drop);
    }
    let stop = Action::Stop {
        instance: old.to_string(),
        mode: StopMode::Immediate,
        timeout_ms: u64::try_from(ctx.detection_ms().max(1000)).unwrap_or(1000),
        smart_timeout_ms: None,
    };
    if ctx.succeeded(&stop) {
        set(st, |d| d.stop_confirmed = true);
    }
    if !ctx.gone(old) && !tr.data.failover.stop_confirmed {
        super::lease::stop_vouching(ctx, st, tr, old, out);
    }
    let tr_now = st.transition.clone().unwrap_or_else(|| tr.clone());
    let fenced = fenced(ctx, st, &tr_now, old);
    if fenced.is_err() && !ctx.gone(old) {
        if ctx.reachable(old) {
            out.push(stop);
        } else if !tr_now.data.failover.fence_issued {
            // Once: on a partitioned node deleting the pod stops nothing, and
            // the recreated pod must not be deleted again and again.
            out.push(Action::FenceInstance {
                instance: old.to_string(),
            });
            set(st, |d| d.fence_issued = true);
        }
    }
    match (label_gone, fenced) {
        (true, Ok(how)) => {
            // Choose with the freshest positions: standbys received until the end.
            let failed = tr_now.data.failover.failed_candidates.clone();
            let requested = tr_now.data.failover.requested;
            // Candidates that failed once may be retried when nobody else is left.
            let pick = match (requested, tr_now.target.clone()) {
                // A person chose it: that one or none.
                (true, Some(c)) if failed.contains(&c) => {
                    let message =
                        format!("promotion of {c} failed; {old} stays fenced, promote another one");
                    out.push(event(
                        Some(&c),
                        EventType::Warning,
                        reasons::FAILOVER_FAILED,
                        &message,
                    ));
                    st.target_primary = st.current_primary.clone();
                    return Step::finish(history(ctx, &tr_now, HistoryOutcome::Failed, &message));
                }
                (true, Some(c)) => Ok(c),
                _ => failover_candidate(ctx, st, old, &failed)
                    .or_else(|_| failover_candidate(ctx, st, old, &[])),
            };
            match pick {
                Ok(c) => {
                    if let Some(t) = st.transition.as_mut() {
                        t.target = Some(c.clone());
                        let d = &mut t.data.failover;
                        d.fenced_by = Some(how);
                        if d.fenced_at.is_none() {
                            d.fenced_at = Some(ctx.stamp());
                        }
                        d.promote_issued = false;
                        if let Some(lsn) = ctx.lsn(&c) {
                            d.candidate_lsn = Some(lsn);
                        }
                    }
                    st.target_primary = Some(c);
                    Step::Goto(TransitionStep::Promote)
                }
                Err(why) if ctx.reachable(old) => {
                    // Nobody was promoted: give up and let the old primary start again.
                    let message = format!("failover from {old} abandoned: {why}; {old} answers again and stays the primary");
                    out.push(event(
                        Some(old),
                        EventType::Warning,
                        reasons::FAILOVER_FAILED,
                        &message,
                    ));
                    st.target_primary = Some(old.to_string());
                    Step::finish(history(ctx, &tr_now, HistoryOutcome::Failed, &message))
                }
                Err(why) => {
                    st.blocked_by = Some(format!("{old} is fenced ({how}) but {why}"));
                    Step::Wait
                }
            }
        }
        (false, _) => {
            st.blocked_by = Some(format!(
                "waiting for {old}'s primary role label to be removed"
            ));
            Step::Wait
        }
        (true, Err(why)) => {
            st.blocked_by = Some(why);
            Step::Wait
        }
    }
}

/// Step `Promote`: promote the candidate, or choose another when it cannot be.
pub(crate) fn promote(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    _old: &str,
    out: &mut Vec<Action>,
) -> Step {
    let Some(c) = tr.target.clone() else {
        return Step::Goto(TransitionStep::Fence);
    };
    if ctx.runs_as_primary(&c) {
        set(st, |d| {
            d.promoted_timeline = Some(ctx.timeline(&c).unwrap_or(0))
        });
        return Step::Goto(TransitionStep::Label);
    }
    let promote = Action::promote_and_label(&c);
    if let Some(message) = ctx.failure(&promote) {
        if ctx.runs_as_standby(&c) || ctx.gone(&c) {
            // It definitively did not promote: another candidate may.
            out.push(event(
                Some(&c),
                EventType::Warning,
                reasons::PROMOTION_FAILED,
                &format!("promoting {c} failed: {message}"),
            ));
            set_failed(st, tr, &c);
            return Step::Goto(TransitionStep::Fence);
        }
    }
    if !ctx.reachable(&c) {
        // Never asked: pick another at once. Asked: it may have promoted; its
        // lease (renewed with the promotion) must run out before anyone else is.
        let issued = tr.data.failover.promote_issued;
        let waited = ctx.since(tr.data.step_started_at.as_deref());
        let bound = ctx.ttl_ms() + ctx.detection_ms();
        if !issued || waited >= bound {
            set_failed(st, tr, &c);
            return Step::Goto(TransitionStep::Fence);
        }
        st.blocked_by = Some(format!(
            "waiting for {c} to confirm its promotion: its agent does not answer; another candidate is chosen in {}",
            secs(bound - waited)
        ));
        return Step::Wait;
    }
    if !ctx.running(&c) {
        // Stopped (crashed, or back after a promotion it may have done): start
        // it in whatever role its data directory has, then go on.
        out.push(super::lease::renew(ctx, st, &c));
        out.push(Action::Start {
            instance: c.clone(),
        });
        st.blocked_by = Some(format!("starting postgres on {c} before promoting it"));
        return Step::Wait;
    }
    if let Some(config) = super::durability::before_promotion(ctx, &c) {
        if !config_first(ctx, st, &c, config, out) {
            return Step::Wait;
        }
    }
    out.push(super::lease::renew(ctx, st, &c));
    set(st, |d| d.promote_issued = true);
    out.push(promote);
    Step::Wait
}

/// Durability settings first: they take effect the moment `c` leaves
/// recovery. Under sync + required a commit acknowledged before they do
/// would have waited for no standby, so the promotion waits for them
/// (true: promote now, with `config` issued alongside when that is safe).
pub(crate) fn config_first(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    c: &str,
    config: Action,
    out: &mut Vec<Action>,
) -> bool {
    if !ctx.sync_required() || ctx.succeeded(&config) {
        out.push(config);
        return true;
    }
    st.blocked_by = Some(format!(
        "applying the synchronous settings on {c} before promoting it (dataDurability required)"
    ));
    out.push(config);
    false
}

/// `candidate` did not promote: add it to the failed candidates.
fn set_failed(st: &mut DbClusterStatus, tr: &Transition, candidate: &str) {
    let mut failed = tr.data.failover.failed_candidates.clone();
    failed.push(candidate.to_string());
    set(st, |d| d.failed_candidates = failed);
}

/// Step `Label`: label the promoted candidate primary, record the RPO accounting.
pub(crate) fn label(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    old: &str,
    out: &mut Vec<Action>,
) -> Step {
    let Some(c) = tr.target.clone() else {
        return Step::Goto(TransitionStep::Fence);
    };
    st.current_primary = Some(c.clone());
    st.target_primary = Some(c.clone());
    if let Some(tl) = ctx.timeline(&c) {
        st.timeline = Some(tl);
    }
    let set = Action::SetRole {
        instance: c.clone(),
        role: RoleLabel::Primary,
    };
    let labelled =
        ctx.succeeded(&set) || ctx.obs(&c).and_then(|o| o.label) == Some(RoleLabel::Primary);
    if !labelled {
        out.push(set);
        siblings_follow(ctx, &c, old, out);
        return Step::Wait;
    }
    let old_lsn = tr.data.old_primary_lsn;
    let promoted = tr.data.failover.candidate_lsn;
    let lost = match (old_lsn, promoted) {
        // Forced past the sync rule: the figure is what it is.
        _ if ctx.sync_required() && !tr.data.failover.forced => Some(0),
        (Some(o), Some(p)) => Some(i64::try_from(o.bytes_after(p)).unwrap_or(i64::MAX)),
        _ => None,
    };
    let message = format!(
        "promoted {c} after {old} failed ({}); fenced: {}; old primary last LSN {}, promoted at {}, {}",
        tr.reason,
        tr.data.failover.fenced_by.as_deref().unwrap_or("-"),
        old_lsn.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()),
        promoted.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()),
        match lost {
            Some(0) if ctx.sync_required() && !tr.data.failover.forced => "no acknowledged commit lost (sync, dataDurability required)".to_string(),
            Some(b) => format!("{b} bytes possibly lost"),
            None => "bytes possibly lost unknown".to_string(),
        }
    );
    out.push(event(
        Some(&c),
        EventType::Normal,
        reasons::PRIMARY_PROMOTED,
        &message,
    ));
    let mut entry = history(ctx, tr, HistoryOutcome::Succeeded, &message);
    entry.old_primary_lsn = old_lsn;
    entry.promoted_lsn = promoted;
    entry.bytes_possibly_lost = lost;
    entry.write_window_ms = write_window(st, tr, old);
    Step::finish(entry)
}

/// Point the running standbys other than the old primary at the promoted
/// `c` together with its label (failover: the steady pass would a pass
/// later; switchover: its Follow step would): under sync+required its first
/// commit waits for one of them to stream from it.
pub(crate) fn siblings_follow(ctx: &Ctx, c: &str, old: &str, out: &mut Vec<Action>) {
    point_siblings(ctx, c, old, false, out);
}

/// Point the running siblings at `c` while it is being promoted: each
/// cascades from it, then follows its promotion over the same connection, so
/// under sync+required one of them confirms the first commit without
/// reconnecting. Not re-sent in the pass that reports it failed; the plain
/// follow with the label covers a sibling it did not reach. Safe before the
/// promotion because no sibling has WAL that `c` lacks (the old primary
/// stopped and `c` received all of it).
pub(crate) fn siblings_cascade(ctx: &Ctx, c: &str, old: &str, out: &mut Vec<Action>) {
    point_siblings(ctx, c, old, true, out);
}

fn point_siblings(ctx: &Ctx, c: &str, old: &str, cascade: bool, out: &mut Vec<Action>) {
    for name in ctx.names.iter().filter(|n| *n != c && *n != old) {
        let follows = ctx
            .agent(name)
            .is_some_and(|a| a.upstream.as_deref() == Some(c));
        let follow = Action::Follow {
            instance: name.clone(),
            primary: c.to_string(),
            cascade,
        };
        let failed_now = cascade && ctx.failure(&follow).is_some();
        if ctx.runs_as_standby(name) && !ctx.busy(name) && !follows && !failed_now {
            out.push(follow);
        }
    }
}

/// From the old primary's first failed poll to when it was known fenced.
fn write_window(st: &DbClusterStatus, tr: &Transition, old: &str) -> Option<i64> {
    let failing = st
        .instances
        .iter()
        .find(|i| i.name == old)
        .and_then(|i| i.unhealthy_since.as_deref())
        .unwrap_or(&tr.started_at);
    let fenced = parse_ms(tr.data.failover.fenced_at.as_deref()?)?;
    Some(fenced.saturating_sub(parse_ms(failing)?).max(0))
}
