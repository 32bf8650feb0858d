//! Node drains: when the platform reports the primary's node cordoned (a
//! `kubectl drain` is under way or coming), switch over to the best standby
//! on a schedulable node before the drain can evict the primary (the
//! platform keeps the primary's pod from eviction meanwhile, as
//! CloudNativePG does with its primary PodDisruptionBudget). Pure.

use crate::api::DbClusterStatus;

use super::ctx::Ctx;
use super::plan::{plan, start, Plan};
use super::prechecks::better;
use super::{event, reasons, Action, EventType, SwitchoverTarget};

fn cordoned(ctx: &Ctx, name: &str) -> bool {
    ctx.obs(name).is_some_and(|o| o.unschedulable)
}

/// Switch the primary off a cordoned node; true when the switchover started.
pub(crate) fn automatic(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) -> bool {
    let Some(primary) = st.current_primary.clone() else {
        return false;
    };
    if !cordoned(ctx, &primary) || !ctx.runs_as_primary(&primary) {
        return false;
    }
    if ctx.paused {
        st.blocked_by = Some(format!(
            "the node of the primary {primary} is cordoned (drain) but automation is paused ({}): the drain waits until it is switched over by hand or unpaused",
            ctx.paused_by()
        ));
        return false;
    }
    let mut standbys: Vec<String> = ctx
        .names
        .iter()
        .filter(|n| **n != primary && ctx.in_spec(n) && !cordoned(ctx, n))
        .cloned()
        .collect();
    standbys.sort_by(|a, b| better(ctx, a, b));
    let mut refusal = None;
    for candidate in standbys {
        match plan(ctx, st, &SwitchoverTarget::Instance(candidate), false) {
            Plan::Go { target, .. } => {
                let reason = format!("node drain: the node of {primary} is cordoned");
                start(ctx, st, &primary, &target, &reason, out);
                out.push(event(
                    Some(&primary),
                    EventType::Normal,
                    reasons::NODE_DRAIN,
                    &format!("the node of the primary {primary} is cordoned: switching over to {target} before it is evicted"),
                ));
                return true;
            }
            Plan::Refused { message, .. } => {
                refusal.get_or_insert(message);
            }
        }
    }
    st.blocked_by = Some(format!(
        "the node of the primary {primary} is cordoned (drain), and no standby on a schedulable node can take over: {}",
        refusal.unwrap_or_else(|| "there is none".into())
    ));
    false
}
