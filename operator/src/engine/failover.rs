//! Automatic failover: detection (detectionTimeout, delay, or at once when the
//! platform knows the primary is gone), fencing, promotion of the best
//! standby, relabelling, and RPO accounting in history. Pure.

use crate::api::{DbClusterStatus, Lsn, Transition};

use super::ctx::{secs, Ctx};
use super::prechecks::failover_candidate;
use super::{
    event, history, kinds, new_transition, outcomes, reasons, Action, EventType, RoleLabel, Step,
    StopMode,
};

pub(crate) const FIRST_STEP: &str = STEP_FENCE;
pub(crate) const STEP_FENCE: &str = "Fence";
pub(crate) const STEP_PROMOTE: &str = "Promote";
pub(crate) const STEP_LABEL: &str = "Label";

/// Why the current primary counts as failed, or `None` while it is healthy.
pub(crate) fn primary_problem(ctx: &Ctx, primary: &str) -> Option<String> {
    if ctx.gone(primary) {
        Some(format!("the platform reports {primary} gone"))
    } else if !ctx.reachable(primary) {
        Some(format!("{primary}'s agent does not answer"))
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
    let since = st
        .instances
        .iter()
        .find(|i| i.name == primary)
        .and_then(|i| i.unhealthy_since.as_deref());
    let elapsed = ctx.since(since);
    // A platform that knows the process is dead needs no detection window.
    let wait = if ctx.gone(primary) {
        ctx.delay_ms()
    } else {
        ctx.detection_ms() + ctx.delay_ms()
    };
    if elapsed >= wait {
        Some(Ok(format!("{problem} for {}", secs(elapsed))))
    } else {
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
        kinds::FAILOVER,
        Some(&candidate),
        Some(&primary),
        &reason,
    );
    let old = st.instances.iter().find(|i| i.name == primary);
    if let Some(lsn) = old.and_then(|i| i.lsn.clone()) {
        tr.data.insert("oldPrimaryLsn".into(), lsn);
    }
    if let Some(tl) = old.and_then(|i| i.timeline) {
        tr.data.insert("oldTimeline".into(), tl.to_string());
    }
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

/// Advance a failover.
pub(crate) fn step(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    out: &mut Vec<Action>,
) -> Step {
    let Some(old) = tr.from.clone() else {
        return Step::finish(history(
            ctx,
            tr,
            outcomes::FAILED,
            "failover without an old primary",
        ));
    };
    match tr.step.as_str() {
        STEP_FENCE => fence(ctx, st, tr, &old, out),
        STEP_PROMOTE => promote(ctx, st, tr, &old, out),
        _ => label(ctx, st, tr, &old, out),
    }
}

fn set_data(st: &mut DbClusterStatus, key: &str, value: String) {
    if let Some(t) = st.transition.as_mut() {
        t.data.insert(key.to_string(), value);
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
    if tr.data.contains_key("stopConfirmed") {
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
    let ttl = ctx.ttl_ms();
    let renewed = match &st.lease {
        Some(l) if l.holder == old => Some(l.renewed_at.as_str()),
        // Never renewed in this status: count from the failover's start.
        _ => Some(tr.started_at.as_str()),
    };
    let elapsed = ctx.since(renewed);
    if elapsed >= ttl {
        return Ok(format!(
            "{old}'s lease ran out ({} since its last renewal, TTL {})",
            secs(elapsed),
            secs(ttl)
        ));
    }
    Err(format!(
        "waiting for {old} to be fenced: {}; its lease runs out in {}",
        if ctx.reachable(old) {
            "its agent has not confirmed postgres stopped"
        } else {
            "its agent does not answer"
        },
        secs(ttl - elapsed)
    ))
}

fn fence(
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
    let label_gone = tr.data.contains_key("labelDropped")
        || ctx.succeeded(&drop)
        || ctx
            .obs(old)
            .and_then(|o| o.label)
            .is_some_and(|l| l != RoleLabel::Primary);
    if label_gone {
        set_data(st, "labelDropped", "true".into());
    } else {
        out.push(drop);
    }
    let stop = Action::Stop {
        instance: old.to_string(),
        mode: StopMode::Immediate,
        timeout_ms: u64::try_from(ctx.detection_ms().max(1000)).unwrap_or(1000),
    };
    if ctx.succeeded(&stop) {
        set_data(st, "stopConfirmed", "true".into());
    }
    let tr_now = st.transition.clone().unwrap_or_else(|| tr.clone());
    let fenced = fenced(ctx, st, &tr_now, old);
    if fenced.is_err() && !ctx.gone(old) {
        if ctx.reachable(old) {
            out.push(stop);
        } else {
            out.push(Action::FenceInstance {
                instance: old.to_string(),
            });
        }
    }
    match (label_gone, fenced) {
        (true, Ok(how)) => {
            // Choose with the freshest positions: standbys received until the end.
            let failed = failed_list(&tr_now);
            // Candidates that failed once may be retried when nobody else is left.
            let pick = failover_candidate(ctx, st, old, &failed)
                .or_else(|_| failover_candidate(ctx, st, old, &[]));
            match pick {
                Ok(c) => {
                    if let Some(t) = st.transition.as_mut() {
                        t.target = Some(c.clone());
                        t.data.insert("fencedBy".into(), how);
                        t.data.remove("promoteIssued");
                        if let Some(lsn) = ctx.lsn(&c) {
                            t.data.insert("candidateLsn".into(), lsn.to_string());
                        }
                    }
                    st.target_primary = Some(c);
                    Step::Goto(STEP_PROMOTE)
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
                    Step::finish(history(ctx, &tr_now, outcomes::FAILED, &message))
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

fn failed_list(tr: &Transition) -> Vec<String> {
    tr.data
        .get("failedCandidates")
        .map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn promote(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    old: &str,
    out: &mut Vec<Action>,
) -> Step {
    let Some(c) = tr.target.clone() else {
        return Step::Goto(STEP_FENCE);
    };
    if ctx.runs_as_primary(&c) {
        set_data(
            st,
            "promotedTimeline",
            ctx.timeline(&c).unwrap_or(0).to_string(),
        );
        return Step::Goto(STEP_LABEL);
    }
    let promote = Action::Promote {
        instance: c.clone(),
    };
    if let Some(message) = ctx.failure(&promote) {
        if ctx.runs_as_standby(&c) || ctx.gone(&c) {
            // It definitively did not promote: another candidate may.
            out.push(event(
                Some(&c),
                EventType::Warning,
                reasons::PROMOTION_FAILED,
                &format!("promoting {c} failed: {message}"),
            ));
            let mut failed = failed_list(tr);
            failed.push(c.clone());
            set_data(st, "failedCandidates", failed.join(","));
            return Step::Goto(STEP_FENCE);
        }
    }
    if !ctx.reachable(&c) {
        // Never asked: pick another at once. Asked: it may have promoted; its
        // lease (renewed with the promotion) must run out before anyone else is.
        let issued = tr.data.contains_key("promoteIssued");
        let waited = ctx.since(tr.data.get("stepStartedAt").map(String::as_str));
        let bound = ctx.ttl_ms() + ctx.detection_ms();
        if !issued || waited >= bound {
            let mut failed = failed_list(tr);
            failed.push(c.clone());
            set_data(st, "failedCandidates", failed.join(","));
            return Step::Goto(STEP_FENCE);
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
        out.push(Action::RenewLease {
            instance: c.clone(),
            ttl_ms: u64::try_from(ctx.ttl_ms()).unwrap_or(u64::MAX),
        });
        out.push(Action::Start {
            instance: c.clone(),
        });
        st.blocked_by = Some(format!("starting postgres on {c} before promoting it"));
        return Step::Wait;
    }
    // Durability settings first: they take effect the moment it leaves recovery.
    out.push(super::durability::config_for(ctx, &c));
    out.push(Action::RenewLease {
        instance: c.clone(),
        ttl_ms: u64::try_from(ctx.ttl_ms()).unwrap_or(u64::MAX),
    });
    set_data(st, "promoteIssued", "true".into());
    out.push(promote);
    let _ = old;
    Step::Wait
}

fn label(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    old: &str,
    out: &mut Vec<Action>,
) -> Step {
    let Some(c) = tr.target.clone() else {
        return Step::Goto(STEP_FENCE);
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
        return Step::Wait;
    }
    let old_lsn: Option<Lsn> = tr.data.get("oldPrimaryLsn").and_then(|s| s.parse().ok());
    let promoted: Option<Lsn> = tr.data.get("candidateLsn").and_then(|s| s.parse().ok());
    let lost = match (old_lsn, promoted) {
        _ if ctx.sync_required() => Some(0),
        (Some(o), Some(p)) => Some(i64::try_from(o.bytes_after(p)).unwrap_or(i64::MAX)),
        _ => None,
    };
    let message = format!(
        "promoted {c} after {old} failed ({}); fenced: {}; old primary last LSN {}, promoted at {}, {}",
        tr.reason,
        tr.data.get("fencedBy").map(String::as_str).unwrap_or("-"),
        old_lsn.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()),
        promoted.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()),
        match lost {
            Some(0) if ctx.sync_required() => "no acknowledged commit lost (sync, dataDurability required)".to_string(),
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
    let mut entry = history(ctx, tr, outcomes::SUCCEEDED, &message);
    entry.old_primary_lsn = old_lsn.map(|l| l.to_string());
    entry.promoted_lsn = promoted.map(|l| l.to_string());
    entry.bytes_possibly_lost = lost;
    Step::finish(entry)
}
