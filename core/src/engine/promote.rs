//! Manual promotion (`tandem.dev/promote=<instance>`, `tandem local promote`):
//! a person makes a chosen standby primary when the primary is gone or
//! unreachable — also while paused, with failover disabled, or when the
//! sync+required rule blocks an automatic failover. It runs as a failover
//! to that instance (the old primary is fenced first, the RPO is recorded);
//! a learner, a less advanced candidate or, under sync+required, one that was
//! not synchronous is refused unless forced. Pure.

use crate::api::DbClusterStatus;

use super::ctx::Ctx;
use super::{
    event, new_transition, reasons, refuse, Action, EventType, HistoryKind, Request, TransitionKind,
};

/// Why `candidate` may not be promoted (None when it may), and what a forced
/// promotion would risk (for its message).
struct Verdict {
    refusal: Option<String>,
    risk: Option<String>,
}

fn verdict(ctx: &Ctx, st: &DbClusterStatus, candidate: &str, force: bool) -> Verdict {
    let mut unforced = Vec::new();
    let mut risk = None;
    if ctx.priority(candidate) <= 0 {
        unforced.push(format!("{candidate} is a learner (priority 0)"));
    }
    let (tl, lsn) = ctx.position(candidate);
    let ahead: Vec<String> = ctx
        .names
        .iter()
        .filter(|n| n.as_str() != candidate && ctx.runs_as_standby(n))
        .filter(|n| ctx.position(n) > (tl, lsn))
        .map(|n| format!("{n} ({})", ctx.position(n).1))
        .collect();
    if !ahead.is_empty() {
        unforced.push(format!(
            "{candidate} ({lsn}) is behind {}",
            ahead.join(", ")
        ));
        risk = Some(format!(
            "WAL {} received beyond {lsn} is lost",
            ahead.join(", ")
        ));
    }
    if ctx.sync_required() {
        let was_sync = st
            .sync
            .as_ref()
            .is_some_and(|s| s.quorum > 0 && s.standbys.iter().any(|n| n == candidate));
        if !was_sync {
            unforced.push(format!(
                "{candidate} was not synchronous (dataDurability required)"
            ));
            risk = Some(format!(
                "{candidate} was not synchronous: commits acknowledged after {lsn} may be lost although dataDurability is required"
            ));
        }
    }
    let refusal = (!unforced.is_empty() && !force).then(|| {
        format!(
            "promotion of {candidate} refused: {}; set tandem.dev/force=true (--force) to promote it anyway",
            unforced.join("; ")
        )
    });
    Verdict {
        refusal,
        risk: if force { risk } else { None },
    }
}

/// Answer a promotion request.
pub(crate) fn request(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    request: &Request,
    candidate: &str,
    force: bool,
    out: &mut Vec<Action>,
) {
    let no = |st: &mut DbClusterStatus, out: &mut Vec<Action>, why: String| {
        refuse(
            ctx,
            st,
            request,
            HistoryKind::Request,
            Some(candidate),
            &why,
            out,
        )
    };
    if let Some(tr) = &st.transition {
        let why = format!(
            "promotion of {candidate} refused: a {} is in progress (step {}); try again when it finishes",
            tr.kind, tr.step
        );
        return no(st, out, why);
    }
    if !ctx.exists(candidate) {
        let why = format!(
            "promotion refused: instance {candidate} does not exist (instances: {})",
            ctx.name_list()
        );
        return no(st, out, why);
    }
    let Some(primary) = st.current_primary.clone() else {
        return no(
            st,
            out,
            "promotion refused: the cluster has no primary yet".into(),
        );
    };
    if primary == candidate {
        return no(
            st,
            out,
            format!("promotion refused: {candidate} is already the primary"),
        );
    }
    if ctx.reachable(&primary) && ctx.runs_as_primary(&primary) {
        let why = format!(
            "promotion of {candidate} refused: the primary {primary} answers and runs; use a switchover"
        );
        return no(st, out, why);
    }
    if !ctx.reachable(candidate) || !ctx.runs_as_standby(candidate) {
        let why =
            format!("promotion of {candidate} refused: it does not run as a standby that answers");
        return no(st, out, why);
    }
    let v = verdict(ctx, st, candidate, force);
    if let Some(why) = v.refusal {
        return no(st, out, why);
    }
    let mut reason =
        format!("manual promotion of {candidate} requested ({primary} is down or unreachable)");
    if let Some(risk) = &v.risk {
        reason = format!("{reason}; forced: {risk}");
    }
    let mut tr = new_transition(
        ctx,
        TransitionKind::Failover,
        Some(candidate),
        Some(&primary),
        &reason,
    );
    let old = st.instances.iter().find(|i| i.name == primary);
    tr.data.old_primary_lsn = old.and_then(|i| i.lsn);
    tr.data.failover.old_timeline = old.and_then(|i| i.timeline);
    tr.data.failover.requested = true;
    tr.data.failover.forced = v.risk.is_some();
    st.target_primary = Some(candidate.to_string());
    st.transition = Some(tr);
    let type_ = if v.risk.is_some() {
        EventType::Warning
    } else {
        EventType::Normal
    };
    out.push(event(
        Some(candidate),
        type_,
        reasons::PROMOTION_REQUESTED,
        &reason,
    ));
    out.push(Action::RequestDone {
        request: request.clone(),
    });
}
