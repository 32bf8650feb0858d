//! A change of spec.replication (mode, synchronousCommit, syncStandbys,
//! dataDurability) on a running cluster, as a transition: `ApplyDurability`
//! gives the primary the new synchronous settings (a reload), `ConfirmSync`
//! waits until the primary reports them and its streaming standbys the sync
//! state they imply (pg_stat_replication.sync_state), then the settings are
//! in force (status.durability.applied), with a history entry and a
//! `DurabilityChanged` Event. A change that cannot be met is refused whole
//! (history, a `DurabilityRefused` Event, blockedBy) and changes nothing; it
//! is tried again whenever it could be met. Requested by a person (the spec),
//! so it runs while automation is paused. Pure.

use crate::api::{
    DbClusterStatus, DurabilityStatus, HistoryKind, ReplicationMode, ReplicationSpec, SyncState,
    Transition,
};

use super::ctx::{required, secs, Ctx};
use super::durability::{config_with, desired_for, eligible_standbys, record, SyncSettings};
use super::{
    event, history, instant_history, new_transition, reasons, Action, EventType, HistoryOutcome,
    Step, TransitionKind, TransitionStep,
};

/// How long the primary may take to report the new settings, and its
/// standbys the sync state they imply, before the change counts as failed.
pub const CONFIRM_MS: i64 = 30_000;

/// "sync (synchronous_commit on, syncStandbys 1, dataDurability required)", "async".
pub(crate) fn describe(r: &ReplicationSpec) -> String {
    match r.mode {
        ReplicationMode::Async => "async".into(),
        ReplicationMode::Sync => format!(
            "sync (synchronous_commit {}, syncStandbys {}, dataDurability {})",
            r.synchronous_commit.as_pg(),
            r.sync_standbys,
            if required(r) { "required" } else { "preferred" }
        ),
    }
}

/// Why `r` cannot be met with `primary` as the primary, if it cannot.
pub(crate) fn unmeetable(ctx: &Ctx, r: &ReplicationSpec, primary: &str) -> Option<String> {
    if r.mode != ReplicationMode::Sync {
        return None;
    }
    let eligible = eligible_standbys(ctx, primary).len();
    let wanted = usize::try_from(r.sync_standbys.max(1)).unwrap_or(usize::MAX);
    (wanted > eligible).then(|| {
        format!(
            "syncStandbys {wanted} but only {eligible} standbys can be synchronous (instances besides the primary {primary} with priority > 0): {}",
            if required(r) {
                "every commit would wait forever"
            } else {
                "no more than that could ever confirm a commit"
            }
        )
    })
}

/// Start a durability change when spec.replication differs from the
/// settings in force, or refuse it; true when one started. Called only
/// while no transition runs.
pub(crate) fn check(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) -> bool {
    let spec = &ctx.spec.replication;
    let Some(d) = st.durability.as_mut() else {
        // First decision of this version: what the spec says is in force.
        st.durability = Some(DurabilityStatus {
            applied: spec.clone(),
            refused: None,
            failed: None,
        });
        return false;
    };
    if d.applied == *spec {
        d.refused = None;
        d.failed = None;
        return false;
    }
    let applied = d.applied.clone();
    let (refused, failed) = (d.refused.clone(), d.failed.clone());
    let Some(primary) = st.current_primary.clone() else {
        return false;
    };
    if failed.as_ref() == Some(spec) {
        note(
            st,
            format!(
                "the change of spec.replication to {} failed (see history); {primary} keeps {}; change spec.replication to try again",
                describe(spec),
                describe(&applied)
            ),
        );
        return false;
    }
    if let Some(why) = unmeetable(ctx, spec, &primary) {
        let message = format!(
            "durability change to {} refused: {why}; {primary} keeps {}",
            describe(spec),
            describe(&applied)
        );
        if refused.as_ref() != Some(spec) {
            let mut entry = instant_history(
                ctx,
                HistoryKind::DurabilityChange,
                Some(&primary),
                HistoryOutcome::Refused,
                &message,
            );
            entry.from = Some(primary.clone());
            st.push_history(entry);
            out.push(event(
                Some(&primary),
                EventType::Warning,
                reasons::DURABILITY_REFUSED,
                &message,
            ));
            if let Some(d) = st.durability.as_mut() {
                d.refused = Some(spec.clone());
            }
        }
        note(st, message);
        return false;
    }
    if !ctx.runs_as_primary(&primary) {
        note(
            st,
            format!(
                "the durability change to {} waits for {primary} to run as the primary",
                describe(spec)
            ),
        );
        return false;
    }
    let reason = format!(
        "spec.replication changed from {} to {}",
        describe(&applied),
        describe(spec)
    );
    let mut tr = new_transition(
        ctx,
        TransitionKind::DurabilityChange,
        Some(&primary),
        None,
        &reason,
    );
    tr.data.durability.durability_target = Some(spec.clone());
    tr.data.durability.durability_from = Some(applied);
    st.transition = Some(tr);
    true
}

fn note(st: &mut DbClusterStatus, message: String) {
    if st.blocked_by.is_none() {
        st.blocked_by = Some(message);
    }
}

/// The target of the change in progress and the primary it is applied on.
fn ends(st: &DbClusterStatus, tr: &Transition) -> Option<(ReplicationSpec, String)> {
    Some((
        tr.data.durability.durability_target.clone()?,
        st.current_primary.clone()?,
    ))
}

/// Whether `primary` reports the synchronous settings `want`.
fn reports(ctx: &Ctx, primary: &str, want: &SyncSettings) -> bool {
    ctx.agent(primary).is_some_and(|a| {
        a.synchronous_standby_names.as_deref() == Some(want.names.as_str())
            && a.synchronous_commit.as_deref() == Some(want.synchronous_commit.as_str())
    })
}

/// Step `ApplyDurability`: the new synchronous settings on the primary.
pub(crate) fn apply(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    out: &mut Vec<Action>,
) -> Step {
    let Some((target, primary)) = ends(st, tr) else {
        return Step::finish(history(
            ctx,
            tr,
            HistoryOutcome::Failed,
            "durability change without target settings or primary",
        ));
    };
    let elapsed = ctx.since(tr.data.step_started_at.as_deref());
    if !ctx.runs_as_primary(&primary) {
        if elapsed >= CONFIRM_MS {
            return fail(
                ctx,
                st,
                tr,
                &target,
                format!("{primary} did not run as the primary for {}", secs(elapsed)),
                out,
            );
        }
        st.blocked_by = Some(format!(
            "the durability change waits for {primary} to run as the primary"
        ));
        return Step::Wait;
    }
    let want = desired_for(ctx, &target, &primary);
    // Until the primary confirms, failover trusts only a set covering both.
    record(ctx, st, &primary, &want);
    if reports(ctx, &primary, &want) {
        return Step::Goto(TransitionStep::ConfirmSync);
    }
    let config = config_with(ctx, &primary, &want);
    if let Some(message) = ctx.failure(&config) {
        return fail(
            ctx,
            st,
            tr,
            &target,
            format!("{primary} did not take the new settings: {message}"),
            out,
        );
    }
    if elapsed >= CONFIRM_MS {
        return fail(
            ctx,
            st,
            tr,
            &target,
            format!(
                "{primary} did not report the new settings within {}",
                secs(CONFIRM_MS)
            ),
            out,
        );
    }
    out.push(config);
    Step::Wait
}

/// The failed change: history, Warning Event; the old settings stay in force
/// and it is not tried again until spec.replication changes.
fn fail(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    target: &ReplicationSpec,
    why: String,
    out: &mut Vec<Action>,
) -> Step {
    let message = format!("durability change to {} failed: {why}", describe(target));
    if let Some(d) = st.durability.as_mut() {
        d.failed = Some(target.clone());
    }
    out.push(event(
        tr.target.as_deref(),
        EventType::Warning,
        reasons::DURABILITY_CHANGE_FAILED,
        &message,
    ));
    Step::finish(history(ctx, tr, HistoryOutcome::Failed, &message))
}

/// Step `ConfirmSync`: the primary reports the settings and each streaming
/// standby the sync state they imply (quorum for a member of the synchronous
/// set, async otherwise).
pub(crate) fn confirm(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    out: &mut Vec<Action>,
) -> Step {
    let Some((target, primary)) = ends(st, tr) else {
        return Step::Goto(TransitionStep::ApplyDurability);
    };
    let want = desired_for(ctx, &target, &primary);
    if !reports(ctx, &primary, &want) {
        // Restarted, or the standbys that stream changed the set (preferred).
        return Step::Goto(TransitionStep::ApplyDurability);
    }
    record(ctx, st, &primary, &want);
    let standbys = ctx.agent(&primary).map(|a| &a.standbys);
    let mut states = Vec::new();
    let mut waiting = Vec::new();
    for name in ctx
        .names
        .iter()
        .filter(|n| **n != primary && ctx.in_spec(n) && ctx.streams_from(n, &primary))
    {
        let member = want.quorum > 0 && want.standbys.contains(name);
        let state = standbys
            .and_then(|s| s.iter().find(|c| c.name == *name))
            .map(|c| c.sync_state.clone());
        let ok = match &state {
            Some(SyncState::Quorum | SyncState::Sync) => member,
            Some(SyncState::Async) => !member,
            _ => false,
        };
        let shown = state
            .as_ref()
            .map_or("not listed", |s| s.as_str())
            .to_string();
        if ok {
            states.push(format!("{name} {shown}"));
        } else {
            waiting.push(format!(
                "{name} is {shown}, not {}",
                if member { "quorum" } else { "async" }
            ));
        }
    }
    let elapsed = ctx.since(tr.data.step_started_at.as_deref());
    let settings = format!(
        "{primary} runs synchronous_commit {}, synchronous_standby_names '{}'",
        want.synchronous_commit, want.names
    );
    if !waiting.is_empty() && elapsed < CONFIRM_MS {
        st.blocked_by = Some(format!(
            "durability change: {settings}; waiting for the standbys' sync state: {}",
            waiting.join(", ")
        ));
        return Step::Wait;
    }
    // The primary runs the new settings either way: they are in force.
    if let Some(d) = st.durability.as_mut() {
        d.applied = target.clone();
        d.refused = None;
        d.failed = None;
    }
    let from = tr
        .data
        .durability
        .durability_from
        .as_ref()
        .map(describe)
        .unwrap_or_else(|| "unknown".into());
    let sync_states = if states.is_empty() {
        "no standby streams".to_string()
    } else {
        format!("sync state {}", states.join(", "))
    };
    let mut message = format!(
        "durability changed from {from} to {}: {settings}; {sync_states}",
        describe(&target)
    );
    if let Some(n) = &want.note {
        message.push_str("; ");
        message.push_str(n);
    }
    if !waiting.is_empty() {
        let message = format!(
            "{message}; but within {} the sync state was not confirmed: {}",
            secs(CONFIRM_MS),
            waiting.join(", ")
        );
        out.push(event(
            Some(&primary),
            EventType::Warning,
            reasons::DURABILITY_CHANGE_FAILED,
            &message,
        ));
        return Step::finish(history(ctx, tr, HistoryOutcome::Failed, &message));
    }
    out.push(event(
        Some(&primary),
        EventType::Normal,
        reasons::DURABILITY_CHANGED,
        &message,
    ));
    Step::finish(history(ctx, tr, HistoryOutcome::Succeeded, &message))
}
