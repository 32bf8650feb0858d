//! Configuration changes on a running cluster: when an instance reports
//! parameters other than the spec's (spec.postgres.parameters and the
//! archive settings), a `Reconfigure` transition applies them to every
//! instance (ALTER SYSTEM and a reload through the agent's `POST /config`)
//! and records what changed; parameters that only take effect after a
//! restart leave `pending_restart` set, and the rolling restart (`restart`)
//! follows: standbys first, the primary last. Pure.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{DbClusterSpec, DbClusterStatus, Transition};

use super::ctx::Ctx;
use super::{
    durability, event, history, new_transition, reasons, Action, EventType, HistoryKind,
    HistoryOutcome, Step, TransitionKind,
};

/// How long after a failed reconfigure the same parameters are tried again (ms).
const RETRY_FAILED_MS: i64 = 300_000;

/// The parameters every instance should run with: spec.postgres.parameters
/// plus archive_mode/archive_command when spec.archive.command is set (a
/// command removed later is reset with the other parameters that left the spec).
pub fn parameters(spec: &DbClusterSpec) -> BTreeMap<String, String> {
    let mut p = spec.postgres.parameters.clone();
    if let Some(command) = &spec.archive.command {
        p.insert("archive_mode".into(), "on".into());
        p.insert("archive_command".into(), command.clone());
    }
    p
}

/// Names whose value differs between two parameter sets (set, changed or removed).
pub fn changed(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// In-spec instances whose running postgres reports other parameters than `want`.
fn drifted(ctx: &Ctx, want: &BTreeMap<String, String>) -> Vec<String> {
    ctx.names
        .iter()
        .filter(|n| ctx.in_spec(n) && !ctx.busy(n))
        .filter(|n| {
            ctx.agent(n).is_some_and(|a| {
                a.postgres_running && a.parameters.as_ref().is_some_and(|p| p != want)
            })
        })
        .cloned()
        .collect()
}

/// A reconfigure of the same parameters failed lately: wait before the next try.
fn failed_lately(ctx: &Ctx, st: &DbClusterStatus, reason: &str) -> bool {
    st.history.iter().rev().any(|e| {
        e.kind == HistoryKind::Reconfigure
            && e.outcome == HistoryOutcome::Failed
            && e.message.contains(reason)
            && ctx.since(Some(&e.started_at)) < RETRY_FAILED_MS
    })
}

/// Start a reconfigure when an instance runs with other parameters than the spec's; true when started.
pub(crate) fn automatic(ctx: &Ctx, st: &mut DbClusterStatus, out: &mut Vec<Action>) -> bool {
    if st.current_primary.is_none() {
        return false;
    }
    let want = parameters(ctx.spec);
    let names = drifted(ctx, &want);
    let Some(first) = names.first() else {
        return false;
    };
    let have = ctx
        .agent(first)
        .and_then(|a| a.parameters.clone())
        .unwrap_or_default();
    let reason = format!("parameters changed: {}", changed(&have, &want).join(", "));
    if ctx.paused {
        st.blocked_by = Some(format!(
            "{reason} on {} but automation is paused ({}): applied after unpause",
            names.join(", "),
            ctx.paused_by()
        ));
        return false;
    }
    if failed_lately(ctx, st, &reason) {
        st.blocked_by = Some(format!(
            "{reason}: the last attempt failed (see history); tried again {}s after it",
            RETRY_FAILED_MS / 1000
        ));
        return false;
    }
    let tr = new_transition(ctx, TransitionKind::Reconfigure, None, None, &reason);
    out.push(event(
        None,
        EventType::Normal,
        reasons::RECONFIGURE_STARTED,
        &format!("applying {reason} to {}", names.join(", ")),
    ));
    st.transition = Some(tr);
    true
}

/// The Config action that gives `name` the spec's parameters with the
/// synchronous settings it has (or would need as primary) today.
fn config(ctx: &Ctx, st: &DbClusterStatus, name: &str) -> Action {
    let primary = st.current_primary.as_deref() == Some(name);
    if primary || ctx.priority(name) > 0 {
        return durability::config_for(ctx, name);
    }
    Action::Config {
        instance: name.to_string(),
        synchronous_commit: ctx.spec.replication.synchronous_commit.as_pg().to_string(),
        synchronous_standby_names: String::new(),
        sync_quorum: 0,
        sync_names: Vec::new(),
        parameters: parameters(ctx.spec),
    }
}

/// Apply the parameters on every instance that runs; done when each reports them (or failed).
pub(crate) fn step(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    out: &mut Vec<Action>,
) -> Step {
    let want = parameters(ctx.spec);
    let mut failed = tr.data.restart.failed.clone();
    let mut notes = tr.data.restart.done.clone();
    let mut waiting = false;
    let mut applied = Vec::new();
    let mut skipped = Vec::new();
    for name in ctx.names.iter().filter(|n| ctx.in_spec(n)) {
        if failed.contains(name) {
            continue;
        }
        let Some(a) = ctx.agent(name).filter(|a| a.postgres_running) else {
            // It gets them when it runs again (a new reconfigure).
            skipped.push(name.clone());
            continue;
        };
        if a.parameters.as_ref().is_none_or(|p| *p == want) {
            applied.push(name.clone());
            continue;
        }
        if ctx.busy(name) {
            waiting = true;
            continue;
        }
        let action = config(ctx, st, name);
        if let Some(message) = ctx.failure(&action) {
            failed.push(name.clone());
            notes.push(format!("{name} failed: {message}"));
            continue;
        }
        waiting = true;
        if !ctx.succeeded(&action) {
            out.push(action);
        }
    }
    if let Some(t) = st.transition.as_mut() {
        t.data.restart.failed = failed.clone();
        t.data.restart.done = notes.clone();
    }
    if waiting {
        return Step::Wait;
    }
    let pending: Vec<String> = ctx
        .names
        .iter()
        .filter(|n| ctx.agent(n).is_some_and(|a| a.pending_restart))
        .cloned()
        .collect();
    let mut message = format!("{}: applied with a reload on {}", tr.reason, list(&applied));
    if !pending.is_empty() {
        message.push_str(&format!(
            "; a restart is pending on {} (a rolling restart follows, the primary last)",
            pending.join(", ")
        ));
    }
    if !skipped.is_empty() {
        message.push_str(&format!(
            "; not running now: {} (applied when it runs again)",
            skipped.join(", ")
        ));
    }
    if !notes.is_empty() {
        message.push_str(&format!("; {}", notes.join("; ")));
    }
    let ok = failed.is_empty();
    out.push(event(
        None,
        if ok {
            EventType::Normal
        } else {
            EventType::Warning
        },
        if ok {
            reasons::RECONFIGURE_COMPLETED
        } else {
            reasons::RECONFIGURE_FAILED
        },
        &message,
    ));
    Step::finish(history(
        ctx,
        tr,
        if ok {
            HistoryOutcome::Succeeded
        } else {
            HistoryOutcome::Failed
        },
        &message,
    ))
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "no instance".into()
    } else {
        names.join(", ")
    }
}
