//! Planned switchover steps (requests and prechecks are in `plan`): drop label → stop the primary (fast, escalating) → wait for the
//! shutdown checkpoint on the target → promote → label → old primary and
//! siblings follow; rollback while nothing was promoted. Pure.

use crate::api::{DbClusterStatus, Lsn, Transition};

use super::ctx::{secs, Ctx};
use super::{event, history, outcomes, reasons, Action, EventType, RoleLabel, Step, StopMode};

pub(crate) const FIRST_STEP: &str = STEP_DROP_LABEL;
const STEP_DROP_LABEL: &str = "DropPrimaryLabel";
const STEP_STOP: &str = "StopPrimary";
const STEP_WAIT: &str = "WaitShutdownCheckpoint";
const STEP_PROMOTE: &str = "Promote";
const STEP_LABEL: &str = "Label";
const STEP_FOLLOW: &str = "Follow";
const STEP_ROLLBACK: &str = "RollBack";

fn set_data(st: &mut DbClusterStatus, key: &str, value: String) {
    if let Some(t) = st.transition.as_mut() {
        t.data.insert(key.to_string(), value);
    }
}

/// Advance a switchover.
pub(crate) fn step(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    out: &mut Vec<Action>,
) -> Step {
    let (Some(old), Some(target)) = (tr.from.clone(), tr.target.clone()) else {
        return Step::finish(history(
            ctx,
            tr,
            outcomes::FAILED,
            "switchover without source or target",
        ));
    };
    let step_elapsed = ctx.since(tr.data.get("stepStartedAt").map(String::as_str));
    let before_promotion = matches!(tr.step.as_str(), STEP_DROP_LABEL | STEP_STOP | STEP_WAIT);
    if before_promotion
        && (ctx.gone(&old) || (!ctx.reachable(&old) && step_elapsed >= ctx.detection_ms()))
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
        return Step::finish(history(ctx, tr, outcomes::FAILED, &message));
    }
    match tr.step.as_str() {
        STEP_DROP_LABEL => {
            let drop = Action::SetRole {
                instance: old.clone(),
                role: RoleLabel::Fenced,
            };
            let gone = ctx.succeeded(&drop)
                || ctx
                    .obs(&old)
                    .and_then(|o| o.label)
                    .is_some_and(|l| l != RoleLabel::Primary);
            if gone {
                return Step::Goto(STEP_STOP);
            }
            out.push(drop);
            Step::Wait
        }
        STEP_STOP => {
            let mode = if tr.data.get("stopMode").map(String::as_str) == Some("immediate") {
                StopMode::Immediate
            } else {
                StopMode::Fast
            };
            let stop = Action::Stop {
                instance: old.clone(),
                mode,
                timeout_ms: u64::try_from(ctx.shutdown_ms()).unwrap_or(u64::MAX),
            };
            // Only the agent's answer counts: a postgres merely seen down (a
            // crash) may be restarted by its agent; a stopped one is held down.
            if ctx.succeeded(&stop) {
                // Without the agent's checkpoint location, the last position seen
                // before the stop is the best lower bound there is.
                let last_seen: Option<Lsn> = st
                    .instances
                    .iter()
                    .find(|i| i.name == old)
                    .and_then(|i| i.lsn.as_deref())
                    .and_then(|s| s.parse().ok());
                let checkpoint = ctx
                    .agent(&old)
                    .and_then(|a| a.checkpoint_lsn)
                    .or(last_seen)
                    .or_else(|| tr.data.get("oldPrimaryLsn").and_then(|s| s.parse().ok()));
                if let Some(c) = checkpoint {
                    set_data(st, "checkpointLsn", c.to_string());
                }
                return Step::Goto(STEP_WAIT);
            }
            if let Some(message) = ctx.failure(&stop) {
                if mode == StopMode::Fast {
                    set_data(st, "stopMode", "immediate".into());
                    out.push(Action::Stop {
                        instance: old.clone(),
                        mode: StopMode::Immediate,
                        timeout_ms: u64::try_from(ctx.shutdown_ms()).unwrap_or(u64::MAX),
                    });
                    return Step::Wait;
                }
                set_data(
                    st,
                    "rollbackReason",
                    format!("{old} did not stop: {message}"),
                );
                return Step::Goto(STEP_ROLLBACK);
            }
            out.push(stop);
            Step::Wait
        }
        STEP_WAIT => {
            let checkpoint: Option<Lsn> = tr.data.get("checkpointLsn").and_then(|s| s.parse().ok());
            let received = ctx.agent(&target).and_then(|a| a.received_lsn);
            let caught_up = match (checkpoint, received) {
                (Some(c), Some(r)) => r > c,
                (None, Some(_)) => true,
                _ => false,
            };
            if caught_up {
                return Step::Goto(STEP_PROMOTE);
            }
            if step_elapsed >= ctx.shutdown_ms() {
                set_data(
                    st,
                    "rollbackReason",
                    format!(
                        "{target} did not receive {old}'s shutdown checkpoint {} within {} (received {})",
                        fmt(checkpoint),
                        secs(ctx.shutdown_ms()),
                        fmt(received)
                    ),
                );
                return Step::Goto(STEP_ROLLBACK);
            }
            st.blocked_by = Some(format!(
                "waiting for {target} to receive {old}'s shutdown checkpoint {} (received {})",
                fmt(checkpoint),
                fmt(received)
            ));
            Step::Wait
        }
        STEP_PROMOTE => {
            if ctx.runs_as_primary(&target) {
                if let Some(l) = ctx.lsn(&target) {
                    set_data(st, "promotedLsn", l.to_string());
                }
                return Step::Goto(STEP_LABEL);
            }
            let promote = Action::Promote {
                instance: target.clone(),
            };
            if let Some(message) = ctx.failure(&promote) {
                if ctx.runs_as_standby(&target) {
                    set_data(
                        st,
                        "rollbackReason",
                        format!("promoting {target} failed: {message}"),
                    );
                    return Step::Goto(STEP_ROLLBACK);
                }
            }
            // Durability settings first: they take effect the moment it leaves recovery.
            out.push(super::durability::config_for(ctx, &target));
            out.push(Action::RenewLease {
                instance: target.clone(),
                ttl_ms: u64::try_from(ctx.ttl_ms()).unwrap_or(u64::MAX),
            });
            out.push(promote);
            Step::Wait
        }
        STEP_LABEL => {
            st.current_primary = Some(target.clone());
            st.target_primary = Some(target.clone());
            if let Some(tl) = ctx.timeline(&target) {
                st.timeline = Some(tl);
            }
            let set = Action::SetRole {
                instance: target.clone(),
                role: RoleLabel::Primary,
            };
            if ctx.succeeded(&set)
                || ctx.obs(&target).and_then(|o| o.label) == Some(RoleLabel::Primary)
            {
                return Step::Goto(STEP_FOLLOW);
            }
            out.push(set);
            Step::Wait
        }
        STEP_FOLLOW => follow(ctx, st, tr, &old, &target, step_elapsed, out),
        _ => rollback(ctx, st, tr, &old, &target, out),
    }
}

fn fmt(l: Option<Lsn>) -> String {
    l.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into())
}

fn follow(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    old: &str,
    target: &str,
    elapsed: i64,
    out: &mut Vec<Action>,
) -> Step {
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
    let mut entry = history(ctx, tr, outcomes::SUCCEEDED, &message);
    entry.old_primary_lsn = tr
        .data
        .get("checkpointLsn")
        .or(tr.data.get("oldPrimaryLsn"))
        .cloned();
    entry.promoted_lsn = tr.data.get("promotedLsn").cloned();
    entry.bytes_possibly_lost = Some(0);
    Step::finish(entry)
}

fn rollback(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    old: &str,
    target: &str,
    out: &mut Vec<Action>,
) -> Step {
    let why = tr.data.get("rollbackReason").cloned().unwrap_or_default();
    if ctx.runs_as_primary(target) {
        // The target did promote after all: go forward, the old primary is stopped.
        return Step::Goto(STEP_LABEL);
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
            return Step::finish(history(ctx, tr, outcomes::ROLLED_BACK, &message));
        }
        out.push(Action::RenewLease {
            instance: old.to_string(),
            ttl_ms: u64::try_from(ctx.ttl_ms()).unwrap_or(u64::MAX),
        });
        out.push(set);
        return Step::Wait;
    }
    out.push(Action::RenewLease {
        instance: old.to_string(),
        ttl_ms: u64::try_from(ctx.ttl_ms()).unwrap_or(u64::MAX),
    });
    out.push(Action::Start {
        instance: old.to_string(),
    });
    st.blocked_by = Some(format!(
        "rolling back the switchover to {target}: restarting {old} as the primary ({why})"
    ));
    Step::Wait
}
