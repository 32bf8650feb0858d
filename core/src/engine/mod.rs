//! The HA engine: `decide(spec, status, observations, now) -> Decision`.
//! Pure: no kube, no tokio, no I/O, no clock, no randomness. Platforms feed it
//! observations and carry out the actions it returns.
//!
//! Contract for platforms (Kubernetes and local):
//! 1. Each poll, build [`Observations`] (every instance's agent report or
//!    `None`, the platform's view of the pod/process, the role label, pending
//!    requests, and the results of actions finished since the last poll).
//! 2. Call [`decide`] with the last persisted status and the current time.
//! 3. Persist `Decision.status` BEFORE carrying out `Decision.actions` (this is
//!    what makes every transition resumable), then carry the actions out in
//!    order and report each result in the next poll's `Observations.results`
//!    (the action exactly as issued, with its outcome). Actions are
//!    idempotent: an identical action still in flight may be skipped.
//! 4. While `status.transition` is set, poll again soon (right after the
//!    actions finished): each step waits for the previous step's results.
//! 5. Keep `Decision.keep_instances` ordinals (0..n) alive; it is
//!    `spec.instances` except while the primary's ordinal is scaled away.
//!
//! Transitions (`status.transition.kind` / `.step`) are the enums
//! [`TransitionKind`] and [`TransitionStep`]; [`TransitionKind::steps`] lists
//! each kind's steps and `run_step` below maps every (kind, step) to the one
//! function that carries it out:
//! - `Bootstrap`: `WaitPrimary` (until an instance runs as primary; adopted).
//! - `Failover`: `Fence` → `Promote` → `Label`.
//! - `Switchover`: `DropPrimaryLabel` → `Checkpoint` → `StopPrimary` → `WaitShutdownCheckpoint`
//!   → `Promote` → `Label` → `Follow`, or `RollBack` before a promotion.
//! - `Rejoin`: `Demote` (→ `Reclone` when the rewind fails and re-clone is allowed).
//! - `Reclone`: `Reclone`. `RejoinDryRun`: `RewindCheck`.
//! - `Restart`: `RestartInstance` per queued instance (the primary last, by
//!   switchover unless `primaryUpdateMethod: restart`).
//! - `DurabilityChange`: `ApplyDurability` → `ConfirmSync` (spec.replication
//!   changed on a running cluster).
//! - `Reconfigure`: `ApplyParameters` (every instance; a `Restart` follows
//!   for those that report `pending_restart`).
//!
//! Pausing (spec.paused, annotation tandem.dev/paused) stops only what the
//! engine does on its own (failover, rejoin, rolling restarts and updates);
//! requests and spec changes still run.
//!
//! Besides transitions, the engine decides the rolling update of instances
//! the platform reports as outdated (`rollout`), drops the replication slots
//! no member needs any more (`slots`), and refuses requests the platform
//! could not read (`Request::Unreadable`): platforms only translate.

mod action;
mod checks;
mod ctx;
mod drain;
mod durability;
mod durability_change;
mod failover;
mod lease;
mod plan;
mod prechecks;
mod promote;
mod reconfigure;
mod rejoin;
mod report;
mod restart;
mod rollout;
mod slots;
mod steady;
mod switchover;
mod types;

#[cfg(test)]
mod tests;

pub use action::{reasons, Action, EventType, RoleLabel, StopMode};
pub use durability::sync_standby_names;
pub use lease::{fence_lead_ms, margin_ms as lease_margin_ms, FENCE_TAKES_MS};
pub use reconfigure::{changed as changed_parameters, parameters as desired_parameters};
pub use types::{
    ActionFacts, ActionResult, AgentReport, Answer, ConnectedStandby, InstanceObs, LeaseReport,
    Observations, Outcome, PlatformState, Request, RestartTarget, SlotReport, SwitchoverTarget,
    SyncState,
};

use jiff::Timestamp;

pub use crate::api::{HistoryKind, HistoryOutcome, TransitionKind, TransitionStep};

use crate::api::{DbClusterSpec, DbClusterStatus, HistoryEntry, Transition, TransitionData};

use ctx::Ctx;

/// Most steps one decision runs through; a transition still moving then
/// goes on at the next poll, and `blockedBy` says so.
pub const MAX_STEPS_PER_DECISION: usize = 16;

/// What the engine decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The new status: persist it before carrying out `actions`.
    pub status: DbClusterStatus,
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// How many instances (ordinals 0..n) the platform must keep: `spec.instances`,
    /// or more while the primary's ordinal is being scaled away (it is switched over first).
    pub keep_instances: u32,
    /// When to decide again at the latest, because a condition this
    /// decision waited on (a lease running out, a detection window) ends
    /// then by the clock alone; `None`: at the platform's own pace.
    pub wake_at: Option<Timestamp>,
}

/// The one entry point: decide what to do now.
pub fn decide(
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    obs: &Observations,
    now: Timestamp,
) -> Decision {
    let ctx = Ctx::new(spec, obs, status, now);
    let mut st = status.clone();
    let mut out = Vec::new();
    st.blocked_by = None;
    if status.paused != ctx.paused {
        record_pause(&ctx, &mut st, &mut out);
    }
    st.paused = ctx.paused;
    if obs.generation.is_some() {
        st.observed_generation = obs.generation;
    }

    report::refresh_instances(&ctx, &mut st);

    if st.current_primary.is_none() && st.transition.is_none() {
        st.transition = Some(new_transition(
            &ctx,
            TransitionKind::Bootstrap,
            None,
            None,
            "new cluster",
        ));
    }
    // From the persisted status: the rollout moves only a cluster that was healthy.
    let rollout = rollout::next(&ctx, status);
    drive(&ctx, &mut st, &mut out);

    for request in &obs.requests {
        let before = st.transition.clone();
        handle_request(&ctx, &mut st, request, &mut out);
        if st.transition != before {
            drive(&ctx, &mut st, &mut out);
        }
    }
    if rollout == rollout::Step::SwitchoverAway
        && obs.requests.is_empty()
        && st.transition.is_none()
    {
        rollout::switch_away(&ctx, &mut st, &mut out);
        drive(&ctx, &mut st, &mut out);
    }

    // A person changed spec.replication: not automation, so also while paused.
    if st.transition.is_none() && durability_change::check(&ctx, &mut st, &mut out) {
        drive(&ctx, &mut st, &mut out);
    }

    if st.transition.is_none() && automatic(&ctx, &mut st, &mut out) {
        drive(&ctx, &mut st, &mut out);
    }

    steady::run(&ctx, &mut st, &mut out);
    slots::run(&ctx, &st, &mut out);
    checks::run(&ctx, &mut out);
    if st.transition.is_none() {
        rollout::recreate(&rollout, &mut out);
    }
    report::summarize(&ctx, &mut st);

    Decision {
        keep_instances: ctx.keep_instances(&st),
        wake_at: ctx
            .wake()
            .and_then(|ms| Timestamp::from_millisecond(ms).ok()),
        status: st,
        actions: out,
    }
}

/// Automation was paused or resumed since the last decision: a history entry and an Event.
fn record_pause(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) {
    let (kind, reason, message) = if ctx.paused {
        (
            HistoryKind::Pause,
            reasons::PAUSED,
            format!(
                "automation paused ({}): no automatic failover, rejoin or rolling restart; requests (switchover, restart, rejoin, re-clone, promote) still run",
                ctx.paused_by()
            ),
        )
    } else {
        (
            HistoryKind::Unpause,
            reasons::UNPAUSED,
            "automation resumed: automatic failover, rejoin and rolling restarts are on again"
                .to_string(),
        )
    };
    st.push_history(instant_history(
        ctx,
        kind,
        None,
        HistoryOutcome::Succeeded,
        &message,
    ));
    out.push(event(None, EventType::Normal, reason, &message));
}

/// What a step decided.
pub(crate) enum Step {
    /// Stay in this step; its actions were pushed.
    Wait,
    /// Go to this step of the same transition now.
    Goto(TransitionStep),
    /// The transition is over; record this entry.
    Finish(Box<HistoryEntry>),
}

impl Step {
    /// Finish with this history entry.
    pub(crate) fn finish(entry: HistoryEntry) -> Self {
        Step::Finish(Box::new(entry))
    }
}

/// Run the transition in progress as far as the observations allow, at most
/// [`MAX_STEPS_PER_DECISION`] steps.
fn drive(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) {
    for _ in 0..MAX_STEPS_PER_DECISION {
        let Some(tr) = st.transition.clone() else {
            return;
        };
        let yields_to_failover = matches!(
            tr.kind,
            TransitionKind::Rejoin
                | TransitionKind::RejoinDryRun
                | TransitionKind::Reclone
                | TransitionKind::Restart
                | TransitionKind::DurabilityChange
                | TransitionKind::Reconfigure
        );
        let primary_failed = st.current_primary.as_deref().is_some_and(|p| {
            failover::failed_for_long_enough(ctx, st, p).is_some_and(|r| r.is_ok())
        });
        let step = if yields_to_failover && primary_failed {
            // Failover comes first; this can be redone afterwards.
            let message = format!(
                "{} abandoned: the primary {} failed",
                tr.kind,
                st.current_primary.clone().unwrap_or_default()
            );
            Step::finish(history(ctx, &tr, HistoryOutcome::Failed, &message))
        } else {
            run_step(ctx, st, &tr, out)
        };
        match step {
            Step::Wait => return,
            Step::Goto(next) => {
                if let Some(t) = st.transition.as_mut() {
                    t.step = next;
                    t.data.step_started_at = Some(ctx.stamp());
                }
            }
            Step::Finish(entry) => {
                let entry = *entry;
                // A step may have replaced the transition (restart → switchover).
                if st.transition.as_ref().map(|t| (t.kind, &t.started_at))
                    == Some((tr.kind, &tr.started_at))
                {
                    st.transition = None;
                }
                st.push_history(entry);
            }
        }
    }
    if let Some(t) = &st.transition {
        st.blocked_by = Some(format!(
            "the {} went through {MAX_STEPS_PER_DECISION} steps in one decision without waiting (now at step {}); it goes on at the next poll",
            t.kind, t.step
        ));
    }
}

/// The table of transitions: the one function that carries out each step of
/// each kind. A step the kind does not have (a status edited by hand) ends
/// the transition as failed; it never runs another step.
fn run_step(ctx: &Ctx, st: &mut DbClusterStatus, tr: &Transition, out: &mut Vec<Action>) -> Step {
    use TransitionKind as K;
    use TransitionStep as S;
    match (tr.kind, tr.step) {
        (K::Bootstrap, S::WaitPrimary) => bootstrap(ctx, st, tr, out),
        (K::Failover, S::Fence) => failover::step(ctx, st, tr, out, failover::fence),
        (K::Failover, S::Promote) => failover::step(ctx, st, tr, out, failover::promote),
        (K::Failover, S::Label) => failover::step(ctx, st, tr, out, failover::label),
        (K::Switchover, S::Checkpoint) => {
            switchover::step(ctx, st, tr, out, switchover::checkpoint)
        }
        (K::Switchover, S::DropPrimaryLabel) => {
            switchover::step(ctx, st, tr, out, switchover::drop_label)
        }
        (K::Switchover, S::StopPrimary) => switchover::step(ctx, st, tr, out, switchover::stop),
        (K::Switchover, S::WaitShutdownCheckpoint) => {
            switchover::step(ctx, st, tr, out, switchover::wait_checkpoint)
        }
        (K::Switchover, S::Promote) => switchover::step(ctx, st, tr, out, switchover::promote),
        (K::Switchover, S::Label) => switchover::step(ctx, st, tr, out, switchover::label),
        (K::Switchover, S::Follow) => switchover::step(ctx, st, tr, out, switchover::follow),
        (K::Switchover, S::RollBack) => switchover::step(ctx, st, tr, out, switchover::rollback),
        (K::Rejoin, S::Demote) => rejoin::step(ctx, st, tr, out, rejoin::demote),
        (K::Rejoin | K::Reclone, S::Reclone) => rejoin::step(ctx, st, tr, out, rejoin::reclone),
        (K::RejoinDryRun, S::RewindCheck) => rejoin::step(ctx, st, tr, out, rejoin::rewind_check),
        (K::Restart, S::RestartInstance) => restart::step(ctx, st, tr, out),
        (K::DurabilityChange, S::ApplyDurability) => durability_change::apply(ctx, st, tr, out),
        (K::DurabilityChange, S::ConfirmSync) => durability_change::confirm(ctx, st, tr, out),
        (K::Reconfigure, S::ApplyParameters) => reconfigure::step(ctx, st, tr, out),
        (kind, step) => {
            debug_assert!(!kind.has_step(step), "{kind} {step} is in the table");
            let message = format!(
                "{kind} abandoned: it has no step {step} (its steps: {})",
                kind.steps()
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Step::finish(history(ctx, tr, HistoryOutcome::Failed, &message))
        }
    }
}

fn bootstrap(ctx: &Ctx, st: &mut DbClusterStatus, tr: &Transition, out: &mut Vec<Action>) -> Step {
    let best = ctx
        .names
        .iter()
        .filter(|n| ctx.runs_as_primary(n))
        .max_by(|a, b| {
            ctx.position(a)
                .cmp(&ctx.position(b))
                .then(ctx.ordinal(b).cmp(&ctx.ordinal(a)))
        })
        .cloned();
    let Some(primary) = best else {
        adopt_existing_data(ctx, st, out);
        return Step::Wait;
    };
    st.current_primary = Some(primary.clone());
    st.target_primary = Some(primary.clone());
    st.timeline = ctx.timeline(&primary);
    let message = format!(
        "{primary} is the primary (timeline {})",
        ctx.timeline(&primary).unwrap_or(1)
    );
    out.push(event(
        Some(&primary),
        EventType::Normal,
        reasons::PRIMARY_ELECTED,
        &message,
    ));
    let mut entry = history(ctx, tr, HistoryOutcome::Succeeded, &message);
    entry.to = Some(primary);
    Step::finish(entry)
}

/// No instance runs as a primary yet. When some hold a primary's data
/// directory, stopped by their agents until told (volumes kept from a
/// deleted DbCluster of the same name, or every pod restarted at once), the
/// cluster adopts that data instead of waiting for an initdb that will never
/// come: once every instance of the spec has reported, so that all copies are
/// compared, the most advanced one (timeline, then WAL position; the lowest
/// ordinal on a tie) is given a lease and started. Nothing is ever
/// re-initialized or overwritten here; the others rejoin it as after a failover.
fn adopt_existing_data(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) {
    let held: Vec<&String> = ctx
        .names
        .iter()
        .filter(|n| ctx.in_spec(n))
        .filter(|n| {
            ctx.agent(n)
                .is_some_and(|a| a.fenced && !a.postgres_running && a.operation.is_none())
        })
        .collect();
    if held.is_empty() {
        st.blocked_by = Some(format!(
            "waiting for the first primary: no instance runs as a primary yet ({} bootstraps with initdb)",
            ctx.names.first().map(String::as_str).unwrap_or("ordinal 0")
        ));
        return;
    }
    let silent: Vec<&str> = ctx
        .names
        .iter()
        .filter(|n| ctx.in_spec(n) && !ctx.reachable(n))
        .map(String::as_str)
        .collect();
    if !silent.is_empty() {
        st.blocked_by = Some(format!(
            "adopting existing data ({} held stopped): waiting for {} to report, to start the most advanced copy",
            held.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
            silent.join(", ")
        ));
        return;
    }
    let Some(best) = held.iter().max_by(|a, b| {
        ctx.position(a)
            .cmp(&ctx.position(b))
            .then(ctx.ordinal(b).cmp(&ctx.ordinal(a)))
    }) else {
        return;
    };
    let (timeline, lsn) = ctx.position(best);
    st.blocked_by = Some(format!(
        "adopting existing data: starting {best}, the most advanced copy (timeline {timeline}, {lsn})"
    ));
    out.push(lease::renew(ctx, st, best));
    out.push(Action::Start {
        instance: (*best).clone(),
    });
}

fn handle_request(ctx: &Ctx, st: &mut DbClusterStatus, request: &Request, out: &mut Vec<Action>) {
    match request {
        Request::Switchover { to, dry_run, force } => {
            plan::request(ctx, st, request, to, *dry_run, *force, out)
        }
        Request::Rejoin { instance, dry_run } => {
            rejoin::request_rejoin(ctx, st, request, instance, *dry_run, out)
        }
        Request::Reclone { instance } => rejoin::request_reclone(ctx, st, request, instance, out),
        Request::Restart { target } => restart::request(ctx, st, request, target, out),
        Request::Promote { instance, force } => {
            promote::request(ctx, st, request, instance, *force, out)
        }
        Request::Unreadable { reason, .. } => {
            refuse(ctx, st, request, HistoryKind::Request, None, reason, out)
        }
    }
}

/// Start what the cluster needs without being asked; true when a transition started.
fn automatic(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) -> bool {
    failover::detect(ctx, st, out)
        || plan::scale_down(ctx, st, out)
        || drain::automatic(ctx, st, out)
        || rejoin::automatic(ctx, st, out)
        || reconfigure::automatic(ctx, st, out)
        || restart::automatic(ctx, st, out)
}

/// A new transition starting now, at its kind's first step.
pub(crate) fn new_transition(
    ctx: &Ctx,
    kind: TransitionKind,
    target: Option<&str>,
    from: Option<&str>,
    reason: &str,
) -> Transition {
    Transition {
        kind,
        target: target.map(str::to_string),
        from: from.map(str::to_string),
        step: kind.first_step(),
        started_at: ctx.stamp(),
        reason: reason.to_string(),
        data: TransitionData {
            step_started_at: Some(ctx.stamp()),
            ..TransitionData::default()
        },
    }
}

/// A history entry for transition `tr` ending now.
pub(crate) fn history(
    ctx: &Ctx,
    tr: &Transition,
    outcome: HistoryOutcome,
    message: &str,
) -> HistoryEntry {
    let started_at = if tr.started_at.is_empty() {
        ctx.stamp()
    } else {
        tr.started_at.clone()
    };
    HistoryEntry {
        from: tr.from.clone(),
        to: tr.target.clone(),
        duration_ms: ctx.since(Some(&tr.started_at)),
        ..HistoryEntry::new(tr.kind.into(), outcome, started_at, message.to_string())
    }
}

/// A history entry for a request answered at once (refused, dry-run).
pub(crate) fn instant_history(
    ctx: &Ctx,
    kind: HistoryKind,
    to: Option<&str>,
    outcome: HistoryOutcome,
    message: &str,
) -> HistoryEntry {
    HistoryEntry {
        to: to.map(str::to_string),
        ..HistoryEntry::new(kind, outcome, ctx.stamp(), message.to_string())
    }
}

/// Refuse a request: history entry, Warning Event, request cleared. Nothing else changes.
pub(crate) fn refuse(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    request: &Request,
    kind: HistoryKind,
    to: Option<&str>,
    message: &str,
    out: &mut Vec<Action>,
) {
    st.push_history(instant_history(
        ctx,
        kind,
        to,
        HistoryOutcome::Refused,
        message,
    ));
    let reason = if kind == HistoryKind::Switchover {
        reasons::SWITCHOVER_REFUSED
    } else {
        reasons::REQUEST_REFUSED
    };
    out.push(event(to, EventType::Warning, reason, message));
    out.push(Action::RequestDone {
        request: request.clone(),
    });
}

pub(crate) fn event(
    instance: Option<&str>,
    type_: EventType,
    reason: &str,
    message: &str,
) -> Action {
    Action::Event {
        instance: instance.map(str::to_string),
        type_,
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

/// Why a request cannot run now (another transition is in progress), if it
/// cannot. Pausing does not stop requests: a person asked for them; it
/// stops only what the engine would do on its own.
pub(crate) fn busy_reason(st: &DbClusterStatus, what: &str) -> Option<String> {
    if let Some(tr) = &st.transition {
        let on = tr
            .target
            .as_deref()
            .map(|t| format!(" of {t}"))
            .unwrap_or_default();
        return Some(format!(
            "{what} refused: a {}{on} is in progress (step {}); try again when it finishes",
            tr.kind, tr.step
        ));
    }
    None
}
