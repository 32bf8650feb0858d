//! Steady state between transitions: renew the primary's lease, keep role
//! labels right, apply durability settings and parameters, point standbys
//! at the primary. Pure.

use crate::api::DbClusterStatus;

use super::ctx::Ctx;
use super::durability;
use super::{Action, RoleLabel, TransitionKind};

fn label(ctx: &Ctx, name: &str, role: RoleLabel, out: &mut Vec<Action>) {
    if ctx.obs(name).and_then(|o| o.label) != Some(role) {
        out.push(Action::SetRole {
            instance: name.to_string(),
            role,
        });
    }
}

/// Issue the steady-state actions.
pub(crate) fn run(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) {
    let Some(primary) = st.current_primary.clone() else {
        return;
    };
    // Failover and switchover own the primary and the labels until they
    // finish; only a promoted target (now currentPrimary) keeps its lease.
    let busy = match &st.transition {
        None => None,
        Some(t)
            if matches!(
                t.kind,
                TransitionKind::Failover | TransitionKind::Switchover | TransitionKind::Bootstrap
            ) =>
        {
            if t.target.as_deref() == Some(primary.as_str()) && ctx.runs_as_primary(&primary) {
                out.push(super::lease::renew(ctx, st, &primary));
            }
            return;
        }
        Some(t) => t.target.clone(),
    };
    let params = &super::reconfigure::parameters(ctx.spec);
    if busy.is_none() && !ctx.paused {
        if let Some(a) = ctx.agent(&primary).filter(|a| !a.postgres_running) {
            let since = st
                .instances
                .iter()
                .find(|i| i.name == primary)
                .and_then(|i| i.unhealthy_since.as_deref());
            if a.fenced || ctx.since(since) >= ctx.detection_ms() {
                // Nobody else was promoted: the primary it still is may start again
                // (its agent will not start a primary on its own without a lease).
                out.push(super::lease::renew(ctx, st, &primary));
                out.push(Action::Start {
                    instance: primary.clone(),
                });
            }
        }
    }
    // A durability change owns the primary's synchronous settings until it ends.
    let changing = st
        .transition
        .as_ref()
        .is_some_and(|t| t.kind == TransitionKind::DurabilityChange);
    if ctx.runs_as_primary(&primary) {
        out.push(super::lease::renew(ctx, st, &primary));
        label(ctx, &primary, RoleLabel::Primary, out);
    }
    if ctx.runs_as_primary(&primary) && !changing {
        let want = durability::desired(ctx, &primary);
        durability::record(ctx, st, &primary, &want);
        if let Some(a) = ctx.agent(&primary) {
            let differs = a.synchronous_standby_names.as_deref() != Some(want.names.as_str())
                || a.synchronous_commit.as_deref() != Some(want.synchronous_commit.as_str());
            if differs {
                out.push(Action::Config {
                    instance: primary.clone(),
                    synchronous_commit: want.synchronous_commit.clone(),
                    synchronous_standby_names: want.names.clone(),
                    sync_quorum: u32::try_from(want.quorum).unwrap_or(u32::MAX),
                    sync_names: want.standbys.clone(),
                    parameters: params.clone(),
                });
            }
        }
        if st.blocked_by.is_none() {
            st.blocked_by = want.note;
        }
    }
    for name in ctx.names.iter().filter(|n| **n != primary) {
        if busy.as_deref() == Some(name.as_str()) {
            continue;
        }
        let Some(a) = ctx.agent(name) else { continue };
        if ctx.runs_as_primary(name) {
            // Never two rw endpoints: a second primary leaves every Service.
            label(ctx, name, RoleLabel::Fenced, out);
            continue;
        }
        if !ctx.runs_as_standby(name) || ctx.busy(name) {
            continue;
        }
        label(ctx, name, RoleLabel::Standby, out);
        if a.upstream.as_deref() != Some(primary.as_str()) && ctx.runs_as_primary(&primary) {
            out.push(Action::Follow {
                instance: name.clone(),
                primary: primary.clone(),
                cascade: false,
            });
        }
        if ctx.priority(name) > 0 {
            // What it will need as primary, staged now (ignored in recovery):
            // a promotion need not wait for it.
            if let Some(config) = durability::before_promotion(ctx, name) {
                out.push(config);
            }
        }
    }
}
