//! The primary's fencing lease as the engine grants and counts it
//! (DESIGN.md §3, docs/agent.md "The primary lease"). A renewal echoes the
//! challenge of the holder's latest status answer, so the holder's lease runs
//! from that answer, never from a late delivery; it names the peers that may
//! vouch for the holder while the operator cannot renew; and it is recorded
//! as sent. Before a promotion a member of the holder's peer list is told to
//! stop vouching: from the moment it acknowledges, the holder can extend its
//! lease no more, so its lease provably ends TTL (plus a margin) after the
//! later of its last renewal and that acknowledgement. Pure.

use crate::api::{DbClusterStatus, LeaseStatus, Transition};

use super::ctx::{parse_ms, secs, stamp, Ctx};
use super::{Action, Outcome};

/// How long the agent's fence takes at most once it is due: its watcher
/// looks every 100 ms, then the SIGKILL and every backend's exit.
pub const FENCE_TAKES_MS: i64 = 300;

/// How long before its lease's end an agent fences postgres when it says it
/// fences `advertised_ms` early (`/status.lease.fenceLeadMs`): at most a
/// quarter of the TTL, so that a short lease is not fenced between renewals.
/// The agent and the engine both count with this.
pub fn fence_lead_ms(advertised_ms: u64, ttl_ms: u64) -> u64 {
    advertised_ms.min(ttl_ms / 4)
}

/// Extra time on every lease bound: two clocks run at slightly different
/// rates (1 % of the TTL), the stamps of two operator replicas' clocks
/// (50 ms), and the part of the agent's fence ([`FENCE_TAKES_MS`]) it does
/// not finish before the lease's end: all of it for an agent that fences at
/// the end (`lead_ms` None or 0), none for one that fences that long before.
pub fn margin_ms(ttl_ms: i64, lead_ms: Option<i64>) -> i64 {
    let lead = lead_ms.unwrap_or(0).clamp(0, FENCE_TAKES_MS);
    ttl_ms / 100 + 50 + (FENCE_TAKES_MS - lead)
}

/// The members that may vouch for `holder`: every other member of the spec
/// that can be promoted (learners are never promoted, so never asked).
pub(crate) fn peers(ctx: &Ctx, holder: &str) -> Vec<String> {
    ctx.names
        .iter()
        .filter(|n| n.as_str() != holder && ctx.priority(n) > 0)
        .cloned()
        .collect()
}

/// The renewal of `holder`'s lease now, recorded in `st.lease` as sent.
pub(crate) fn renew(ctx: &Ctx, st: &mut DbClusterStatus, holder: &str) -> Action {
    let peers = peers(ctx, holder);
    let ttl_ms = ctx.ttl_ms();
    let epoch = st.lease.as_ref().map_or(0, |l| l.epoch);
    // Every list sent to this holder may be the one it has: keep the members in all of them.
    let kept = match &st.lease {
        Some(l) if l.holder == holder => l
            .peers
            .iter()
            .filter(|p| peers.contains(p))
            .cloned()
            .collect(),
        _ => peers.clone(),
    };
    // How early the holder fences, as the agent this renewal goes to says;
    // an agent that does not say fences at the end.
    let lead = ctx
        .agent(holder)
        .and_then(|a| a.lease.as_ref())
        .and_then(|l| l.fence_lead_ms)
        .map(|a| fence_lead_ms(a, u64::try_from(ttl_ms).unwrap_or(0)))
        .and_then(|l| i64::try_from(l).ok());
    st.lease = Some(LeaseStatus {
        holder: holder.to_string(),
        renewed_at: ctx.stamp(),
        ttl_ms,
        epoch,
        peers: kept,
        fence_lead_ms: lead,
    });
    Action::RenewLease {
        instance: holder.to_string(),
        ttl_ms: u64::try_from(ttl_ms).unwrap_or(u64::MAX),
        challenge: ctx
            .agent(holder)
            .and_then(|a| a.lease.as_ref())
            .and_then(|l| l.challenge),
        epoch,
        peers,
    }
}

/// Before `old` is replaced: tell its reachable peers to vouch for it no
/// more (a higher epoch), and keep, from their answers, the earliest "last
/// vouched at": once a peer stopped, the old primary cannot extend its lease
/// past its last vouch from that peer + TTL.
pub(crate) fn stop_vouching(
    ctx: &Ctx,
    st: &mut DbClusterStatus,
    tr: &Transition,
    old: &str,
    out: &mut Vec<Action>,
) {
    let lease = st.lease.clone().filter(|l| l.holder == old);
    let current = st.lease.as_ref().map_or(0, |l| l.epoch);
    let epoch = tr.data.failover.vouch_epoch.unwrap_or(current + 1);
    if let Some(l) = st.lease.as_mut() {
        l.epoch = l.epoch.max(epoch);
    }
    let mut by = tr.data.failover.vouching_stopped_by.clone();
    let mut at = tr.data.failover.last_vouch_at.as_deref().and_then(parse_ms);
    for p in lease.iter().flat_map(|l| l.peers.iter()) {
        let action = Action::StopVouching {
            instance: p.clone(),
            epoch,
        };
        match ctx.result(&action) {
            Some(Outcome::Succeeded { facts, .. }) => {
                // The answer came before now: counting back from now is later, so safe.
                let ago = facts
                    .last_vouched_ago_ms
                    .and_then(|a| i64::try_from(a).ok())
                    .unwrap_or(0);
                let vouched = ctx.now.saturating_sub(ago);
                if at.is_none_or(|a| vouched < a) {
                    at = Some(vouched);
                    by = Some(p.clone());
                }
            }
            _ if ctx.reachable(p) && by.is_none() => out.push(action),
            _ => {}
        }
    }
    if let Some(t) = st.transition.as_mut() {
        let d = &mut t.data.failover;
        d.vouch_epoch = Some(epoch);
        d.vouching_stopped_by = by;
        d.last_vouch_at = at.map(stamp);
    }
}

/// Whether `primary`, which the operator cannot reach, is alive and keeps
/// its lease through its peers: every member of its peer list reports a
/// vouch for it within the last half TTL (it asks every quarter). Then there
/// is nothing to fail over: it is the operator that is cut off.
pub(crate) fn kept_by_peers(ctx: &Ctx, st: &DbClusterStatus, primary: &str) -> Option<String> {
    let lease = st.lease.as_ref().filter(|l| l.holder == primary)?;
    if lease.peers.is_empty() || ctx.vanished(primary) || ctx.reachable(primary) {
        return None;
    }
    let fresh = ctx.ttl_ms() / 2;
    let mut oldest = 0;
    for p in &lease.peers {
        let (vouched_for, ago) = ctx.agent(p).and_then(|a| a.vouched.clone())?;
        if vouched_for != primary || ago > fresh {
            return None;
        }
        oldest = oldest.max(ago);
    }
    Some(format!(
        "{primary} does not answer the operator, but every peer ({}) vouched for it within {}: it is alive and keeps its lease; no failover",
        lease.peers.join(", "),
        secs(oldest)
    ))
}

/// Whether `old`'s lease has provably run out: Ok(how) or Err(why not yet).
pub(crate) fn ran_out(
    ctx: &Ctx,
    st: &DbClusterStatus,
    tr: &Transition,
    old: &str,
) -> Result<String, String> {
    let ttl = ctx.ttl_ms();
    let Some(lease) = st.lease.as_ref().filter(|l| l.holder == old) else {
        // This status never renewed it: its agent holds no lease of ours
        // beyond one TTL from the failover's start.
        let margin = margin_ms(ttl, None);
        let elapsed = ctx.since(Some(&tr.started_at));
        ctx.wake_at(ctx.now - elapsed + ttl + margin);
        return if elapsed >= ttl + margin {
            Ok(format!(
                "{old} holds no lease of this cluster's ({} since the failover began)",
                secs(elapsed)
            ))
        } else {
            Err(format!(
                "its lease runs out in {}",
                secs(ttl + margin - elapsed)
            ))
        };
    };
    if lease.peers.is_empty() {
        return Err(format!(
            "its lease named no peer that could stop vouching, so nothing bounds it while its agent does not answer; promote by hand once {old} is known to be down"
        ));
    }
    let d = &tr.data.failover;
    let (Some(by), Some(at)) = (&d.vouching_stopped_by, &d.last_vouch_at) else {
        return Err(format!(
            "waiting for one of its peers ({}) to stop vouching for it",
            lease.peers.join(", ")
        ));
    };
    // A TTL lowered in the spec since the last renewal: the holder has that renewal's longer one.
    let ttl = lease.ttl_ms.max(ttl);
    let margin = margin_ms(ttl, lease.fence_lead_ms);
    let from = parse_ms(&lease.renewed_at)
        .unwrap_or(0)
        .max(parse_ms(at).unwrap_or(i64::MAX));
    let elapsed = ctx.now.saturating_sub(from);
    ctx.wake_at(from.saturating_add(ttl + margin));
    if elapsed >= ttl + margin {
        Ok(format!(
            "{old}'s lease ran out: {} since its last renewal and its last vouch from {by}, which no longer vouches (TTL {} + margin {})",
            secs(elapsed),
            secs(ttl),
            secs(margin)
        ))
    } else {
        Err(format!(
            "its lease runs out in {} ({by} no longer vouches for it)",
            secs(ttl + margin - elapsed)
        ))
    }
}
