//! Rolling update: once the platform reports instances that run from an
//! outdated definition (Kubernetes: a pod template the StatefulSet has since
//! changed; the StatefulSet is `OnDelete`), recreate them one at a time and
//! only while the cluster is healthy — standbys first, highest ordinal first,
//! then the primary, after a switchover has moved it away
//! (`primaryUpdateMethod: switchover`) or directly (`restart`: a failover).
//! Pure.

use crate::api::{keys, DbClusterStatus, Phase, PrimaryUpdateMethod};

use super::ctx::Ctx;
use super::{event, reasons, Action, EventType, HistoryKind, HistoryOutcome, Request};
use super::{SwitchoverTarget, TransitionKind};

/// How long after a refused switchover the rollout asks for the next one (ms).
const RETRY_SWITCHOVER_MS: i64 = 300_000;

/// The next move of a rolling update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to do now.
    Idle,
    /// Recreate this outdated standby.
    Recreate(String),
    /// Only the primary is outdated: switch over to any standby first.
    SwitchoverAway,
    /// Only the primary is outdated and `primaryUpdateMethod: restart`:
    /// recreate it (the engine fails over to a standby).
    RecreatePrimary(String),
}

fn healthy(ctx: &Ctx, status: &DbClusterStatus) -> bool {
    let want = format!("{n}/{n}", n = ctx.spec.instances);
    status.phase == Some(Phase::Healthy)
        && status.transition.is_none()
        && status.ready_instances.as_deref() == Some(want.as_str())
        && ctx.obs.instances.iter().all(|i| !i.deleting)
}

fn switchover_refused_lately(ctx: &Ctx, status: &DbClusterStatus) -> bool {
    status.history.iter().rev().any(|e| {
        e.kind == HistoryKind::Switchover
            && e.outcome == HistoryOutcome::Refused
            && ctx.since(Some(&e.started_at)) < RETRY_SWITCHOVER_MS
    })
}

/// The next step, from the observations and the persisted status.
pub(crate) fn next(ctx: &Ctx, status: &DbClusterStatus) -> Step {
    if ctx.paused || !healthy(ctx, status) {
        return Step::Idle;
    }
    let Some(primary) = status.current_primary.as_deref() else {
        return Step::Idle;
    };
    let mut stale: Vec<(u32, &str)> = ctx
        .obs
        .instances
        .iter()
        .filter(|i| i.outdated)
        .filter_map(|i| keys::instance_ordinal(&ctx.obs.cluster, &i.name).map(|o| (o, &*i.name)))
        .collect();
    stale.sort();
    if let Some((_, name)) = stale.iter().rev().find(|(_, n)| *n != primary) {
        return Step::Recreate(name.to_string());
    }
    if !stale.iter().any(|(_, n)| *n == primary) {
        return Step::Idle;
    }
    match ctx.spec.primary_update_method {
        PrimaryUpdateMethod::Restart => Step::RecreatePrimary(primary.to_string()),
        PrimaryUpdateMethod::Switchover if switchover_refused_lately(ctx, status) => Step::Idle,
        PrimaryUpdateMethod::Switchover => Step::SwitchoverAway,
    }
}

/// The switchover the rollout asks for to move an outdated primary away.
pub(crate) fn switchover_request() -> Request {
    Request::Switchover {
        to: SwitchoverTarget::Any,
        dry_run: false,
        force: false,
    }
}

/// Start the switchover of an outdated primary as if a user had asked for it
/// (same prechecks; a refusal is recorded and retried after a while).
pub(crate) fn switch_away(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) {
    let request = switchover_request();
    let from = st.current_primary.clone();
    super::handle_request(ctx, st, &request, out);
    // Nobody asked: there is no request to clear.
    out.retain(|a| !matches!(a, Action::RequestDone { request: r } if *r == request));
    if st
        .transition
        .as_ref()
        .is_some_and(|t| t.kind == TransitionKind::Switchover)
    {
        let message = format!(
            "rolling update: switching the outdated primary {} over before recreating it",
            from.as_deref().unwrap_or("?")
        );
        out.push(event(
            from.as_deref(),
            EventType::Normal,
            reasons::ROLLING_UPDATE,
            &message,
        ));
    }
}

/// Recreate the instance the step names (only when no transition runs).
pub(crate) fn recreate(step: &Step, out: &mut Vec<Action>) {
    let (Step::Recreate(instance) | Step::RecreatePrimary(instance)) = step else {
        return;
    };
    let message = format!("recreating {instance} from its updated definition");
    out.push(event(
        Some(instance),
        EventType::Normal,
        reasons::ROLLING_UPDATE,
        &message,
    ));
    out.push(Action::Recreate {
        instance: instance.clone(),
    });
}
