//! The primary lease as the agent holds it (DESIGN.md §3, fencing lease;
//! docs/agent.md has the safety argument): one end instant on the agent's
//! monotonic clock, which operator renewals and peer vouching both move
//! forward and nothing moves back. Renewals count from the instant of the
//! status answer they echo (their challenge), so one delivered late extends
//! nothing; a renewal of a lower epoch than the agent knows is refused; the
//! epoch and peer list come from the renewal with the newest challenge only.
//! Pure: instants are passed in.

use std::time::{Duration, Instant};

use crate::api::agent::{LeaseRequest, LeaseSource, LeaseState, Peer};

use super::{AgentError, BadRequest};

/// Milliseconds from `start` to `now` on the monotonic clock: a challenge.
pub fn ms_since(start: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

/// How long before its lease's end this agent fences postgres (at most a
/// quarter of the TTL: `engine::fence_lead_ms`): the whole of the fence
/// (watcher, SIGKILL, every backend's exit) happens before the end, so the
/// engine's margin need not cover it.
pub const FENCE_LEAD_MS: u64 = crate::engine::FENCE_TAKES_MS as u64;

/// How long a vouch round waits for its answers: a quarter of the TTL, at least 200 ms.
pub fn round_timeout(ttl_ms: u64) -> Duration {
    Duration::from_millis((ttl_ms / 4).max(200))
}

/// The primary lease.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lease {
    /// When it runs out; None while it is not enforced (never granted, or
    /// already enforced: a fenced postgres needs a new grant).
    pub end: Option<Instant>,
    /// When it was last extended, and by whom.
    pub extended_at: Option<Instant>,
    pub extended_by: Option<LeaseSource>,
    /// What the renewal with the newest challenge said.
    pub terms: Option<Terms>,
}

/// The part of a renewal that only the newest one may set: a late renewal
/// must not install an older peer list or epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    /// Its challenge (or, without one, its arrival) in ms since the agent started.
    pub challenge: u64,
    pub ttl_ms: u64,
    pub epoch: u64,
    pub peers: Vec<Peer>,
    pub solo: bool,
}

/// What a renewal did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewed {
    /// The end moved.
    pub extended: bool,
    /// Its epoch and peers are the lease's now (it had the newest challenge).
    pub newest: bool,
    /// What is left of the lease after it (0: it had run out already).
    pub remaining_ms: u64,
}

/// A vouch round to run: the terms it asks under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    pub terms: Terms,
}

/// Refuse what a renewal may not do, before anything changes.
pub fn check(
    req: &LeaseRequest,
    known_epoch: u64,
    start: Instant,
    now: Instant,
) -> Result<(), AgentError> {
    if req.ttl_ms == 0 {
        return Err(BadRequest::ZeroLeaseTtl.into());
    }
    if req.solo && !req.peers.is_empty() {
        return Err(BadRequest::SoloWithPeers.into());
    }
    let now_ms = ms_since(start, now);
    if let Some(c) = req.challenge.filter(|c| *c > now_ms) {
        return Err(BadRequest::FutureChallenge {
            challenge: c,
            now: now_ms,
        }
        .into());
    }
    if req.epoch < known_epoch {
        return Err(AgentError::StaleEpoch {
            epoch: req.epoch,
            known: known_epoch,
        });
    }
    Ok(())
}

impl Lease {
    /// Apply a renewal that passed [`check`]: the lease runs `ttlMs` from its
    /// challenge's instant (or from `now` without one), never less than it did.
    pub fn renew(&mut self, req: &LeaseRequest, start: Instant, now: Instant) -> Renewed {
        let ttl = Duration::from_millis(req.ttl_ms);
        let (challenge, from) = match req.challenge {
            Some(c) => (c, start + Duration::from_millis(c)),
            None => (ms_since(start, now), now),
        };
        let extended = self.extend(from + ttl, LeaseSource::Operator, now);
        let newest = self.terms.as_ref().is_none_or(|t| challenge >= t.challenge);
        if newest {
            self.terms = Some(Terms {
                challenge,
                ttl_ms: req.ttl_ms,
                epoch: req.epoch,
                peers: req.peers.clone(),
                solo: req.solo,
            });
        }
        Renewed {
            extended,
            newest,
            remaining_ms: self.remaining_ms(now).unwrap_or(0),
        }
    }

    /// Every peer of `round` vouched for requests sent at `sent_at`: the lease
    /// runs its TTL from then — unless the terms changed meanwhile (a newer
    /// renewal's peers were not asked) or it ran out already (the fence is due).
    pub fn vouched(&mut self, round: &Round, sent_at: Instant, now: Instant) -> bool {
        if self.terms.as_ref() != Some(&round.terms) || !self.held(now) {
            return false;
        }
        let until = sent_at + Duration::from_millis(round.terms.ttl_ms);
        self.extend(until, LeaseSource::Peers, now)
    }

    fn extend(&mut self, until: Instant, by: LeaseSource, now: Instant) -> bool {
        if self.end.is_some_and(|end| end >= until) {
            return false;
        }
        self.end = Some(until);
        self.extended_at = Some(now);
        self.extended_by = Some(by);
        true
    }

    /// Stop enforcing it (postgres was fenced, or it is no primary); the
    /// terms stay, so a late renewal still cannot install older ones.
    pub fn disarm(&mut self) {
        self.end = None;
    }

    /// It is enforced and has run out.
    #[cfg(test)]
    pub fn expired(&self, now: Instant) -> bool {
        self.end.is_some_and(|end| now >= end)
    }

    /// It is enforced and ends within the fence lead: postgres must go now.
    pub fn fence_due(&self, now: Instant) -> bool {
        let lead = self
            .terms
            .as_ref()
            .map_or(0, |t| crate::engine::fence_lead_ms(FENCE_LEAD_MS, t.ttl_ms));
        self.end
            .is_some_and(|end| now + Duration::from_millis(lead) >= end)
    }

    /// It is enforced and has not run out.
    pub fn held(&self, now: Instant) -> bool {
        self.end.is_some_and(|end| now < end)
    }

    fn remaining_ms(&self, now: Instant) -> Option<u64> {
        self.end
            .map(|end| u64::try_from(end.saturating_duration_since(now).as_millis()).unwrap_or(0))
    }

    /// The round the primary should run now, if one is due: the lease is held
    /// and has peers to ask (or is solo), its epoch is not below the highest
    /// known, and the last round started at least a quarter TTL ago. Rounds
    /// run while the operator renews too: a fresh vouch on every peer tells
    /// the operator the primary is alive and reaches them, so a primary only
    /// the operator cannot reach is not failed over.
    pub fn round_due(
        &self,
        now: Instant,
        last_round: Option<Instant>,
        known_epoch: u64,
    ) -> Option<Round> {
        let terms = self.terms.as_ref()?;
        let ttl = Duration::from_millis(terms.ttl_ms);
        self.end.filter(|end| *end > now)?;
        let asks = !terms.peers.is_empty() || terms.solo;
        let rested = last_round.is_none_or(|t| now.saturating_duration_since(t) >= ttl / 4);
        (asks && terms.epoch >= known_epoch && rested).then(|| Round {
            terms: terms.clone(),
        })
    }

    /// The lease as `/status` shows it; `challenge` is this instant.
    pub fn state(&self, start: Instant, now: Instant, known_epoch: u64) -> LeaseState {
        LeaseState {
            held: self.held(now),
            ttl_ms: self.terms.as_ref().map(|t| t.ttl_ms),
            remaining_ms: self.remaining_ms(now),
            renewed_ago_ms: self.extended_at.map(|t| ms_since(t, now)),
            challenge: ms_since(start, now),
            epoch: self.terms.as_ref().map_or(0, |t| t.epoch),
            known_epoch,
            extended_by: self.extended_by,
            fence_lead_ms: Some(FENCE_LEAD_MS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn req(ttl_ms: u64, challenge: Option<u64>, epoch: u64, peers: &[&str]) -> LeaseRequest {
        LeaseRequest {
            ttl_ms,
            challenge,
            epoch,
            peers: peers
                .iter()
                .map(|n| Peer {
                    name: n.to_string(),
                    url: format!("http://{n}:8000"),
                })
                .collect(),
            solo: false,
        }
    }

    #[test]
    fn a_challenged_renewal_runs_from_the_answer_it_echoes() {
        let start = Instant::now();
        let mut l = Lease::default();
        // Decided from the answer at 1000ms, arriving at 1800ms: ends at 1000 + 1000.
        let r = l.renew(&req(1000, Some(1000), 0, &[]), start, start + ms(1800));
        assert!(r.extended && r.newest);
        assert_eq!(r.remaining_ms, 200);
        assert_eq!(l.end, Some(start + ms(2000)));
        // Without a challenge it runs from its arrival.
        l.renew(&req(1000, None, 0, &[]), start, start + ms(1900));
        assert_eq!(l.end, Some(start + ms(2900)));
    }

    #[test]
    fn the_fence_is_due_its_lead_before_the_end_and_at_most_a_quarter_ttl_early() {
        let start = Instant::now();
        let mut l = Lease::default();
        assert!(
            !l.fence_due(start + ms(1_000_000)),
            "never granted: never enforced"
        );
        l.renew(&req(10_000, Some(0), 0, &[]), start, start + ms(10));
        assert!(!l.fence_due(start + ms(9_699)));
        assert!(l.fence_due(start + ms(9_700)), "300 ms before the end");
        assert!(l.held(start + ms(9_700)) && !l.expired(start + ms(9_700)));
        // A short lease: a quarter of it.
        let mut l = Lease::default();
        l.renew(&req(800, Some(0), 0, &[]), start, start + ms(10));
        assert!(!l.fence_due(start + ms(599)));
        assert!(l.fence_due(start + ms(600)));
        // What /status tells the engine.
        assert_eq!(
            l.state(start, start + ms(10), 0).fence_lead_ms,
            Some(FENCE_LEAD_MS)
        );
        l.disarm();
        assert!(!l.fence_due(start + ms(10_000)), "disarmed");
    }

    #[test]
    fn a_late_renewal_never_shortens_nor_revives_the_lease() {
        let start = Instant::now();
        let mut l = Lease::default();
        l.renew(&req(1000, Some(5000), 0, &[]), start, start + ms(5100));
        // An older answer's renewal arriving now: the end stays.
        let r = l.renew(&req(1000, Some(3000), 0, &[]), start, start + ms(5200));
        assert!(!r.extended && !r.newest);
        assert_eq!(l.end, Some(start + ms(6000)));
        // After the lease ran out, an old challenge does not bring it back.
        let now = start + ms(6500);
        assert!(l.expired(now));
        let r = l.renew(&req(1000, Some(5400), 0, &[]), start, now);
        assert_eq!(r.remaining_ms, 0);
        assert!(l.expired(now) && !l.held(now));
    }

    #[test]
    fn a_stale_renewal_still_arms_a_lease_that_was_not_enforced() {
        // A primary that never had a lease, given one that ended already:
        // the operator counts it as given, so it is enforced (fenced at once).
        let start = Instant::now();
        let mut l = Lease::default();
        l.renew(&req(1000, Some(0), 0, &[]), start, start + ms(3000));
        assert!(l.expired(start + ms(3000)));
    }

    #[test]
    fn only_the_newest_renewal_sets_epoch_and_peers() {
        let start = Instant::now();
        let mut l = Lease::default();
        l.renew(
            &req(1000, Some(2000), 3, &["b", "c"]),
            start,
            start + ms(2100),
        );
        // Delivered late: older challenge, old peer list.
        let r = l.renew(&req(1000, Some(1500), 3, &["b"]), start, start + ms(2200));
        assert!(!r.newest);
        let t = l.terms.clone().unwrap();
        assert_eq!((t.challenge, t.peers.len()), (2000, 2));
    }

    #[test]
    fn renewals_are_checked_before_anything_changes() {
        let start = Instant::now();
        let now = start + ms(1000);
        let kind = |r: Result<(), AgentError>| r.map_err(|e| e.classify().1);
        assert_eq!(
            kind(check(&req(1000, Some(1000), 4, &[]), 4, start, now)),
            Ok(())
        );
        assert_eq!(
            kind(check(&req(1000, Some(1001), 4, &[]), 4, start, now)),
            Err("bad_request")
        );
        assert_eq!(
            kind(check(&req(1000, None, 3, &[]), 4, start, now)),
            Err("stale_epoch")
        );
        assert_eq!(
            kind(check(&req(0, None, 4, &[]), 4, start, now)),
            Err("bad_request")
        );
        let mut solo = req(1000, None, 4, &["b"]);
        solo.solo = true;
        assert_eq!(kind(check(&solo, 4, start, now)), Err("bad_request"));
    }

    #[test]
    fn vouching_extends_from_when_the_round_was_sent() {
        let start = Instant::now();
        let mut l = Lease::default();
        l.renew(&req(1000, Some(0), 1, &["b"]), start, start);
        let now = start + ms(600);
        let round = l.round_due(now, None, 1).expect("half the TTL is gone");
        // The answers come 150ms later; the lease counts from the sending.
        assert!(l.vouched(&round, now, now + ms(150)));
        assert_eq!(l.end, Some(now + ms(1000)));
        assert_eq!(l.extended_by, Some(LeaseSource::Peers));
        // A stale round (sent before the last extension) extends nothing.
        assert!(!l.vouched(&round, start + ms(100), now + ms(200)));
    }

    #[test]
    fn a_round_under_old_terms_or_after_the_end_extends_nothing() {
        let start = Instant::now();
        let mut l = Lease::default();
        l.renew(&req(1000, Some(0), 1, &["b"]), start, start);
        let round = l.round_due(start + ms(600), None, 1).unwrap();
        // A newer renewal added a peer the round did not ask.
        l.renew(
            &req(1000, Some(100), 1, &["b", "c"]),
            start,
            start + ms(650),
        );
        assert!(!l.vouched(&round, start + ms(600), start + ms(700)));
        // Answers that arrive after the lease ran out do not revive it.
        let round = l.round_due(start + ms(700), None, 1).unwrap();
        assert!(!l.vouched(&round, start + ms(700), start + ms(1200)));
        assert!(l.expired(start + ms(1200)));
    }

    #[test]
    fn rounds_run_while_the_lease_is_held_at_most_every_quarter_ttl() {
        let start = Instant::now();
        let mut l = Lease::default();
        l.renew(&req(1000, Some(0), 2, &["b"]), start, start);
        assert!(l.round_due(start + ms(100), None, 2).is_some());
        assert!(l.round_due(start + ms(501), None, 2).is_some());
        let last = Some(start + ms(600));
        assert!(l.round_due(start + ms(800), last, 2).is_none());
        assert!(l.round_due(start + ms(850), last, 2).is_some());
        // A higher epoch is known: this primary was deposed, it asks no one.
        assert!(l.round_due(start + ms(600), None, 3).is_none());
        // Expired, or never enforced: nothing to extend.
        assert!(l.round_due(start + ms(1000), None, 2).is_none());
        l.disarm();
        assert!(l.round_due(start + ms(600), None, 2).is_none());
    }

    #[test]
    fn without_peers_only_a_solo_lease_extends_itself() {
        let start = Instant::now();
        let mut l = Lease::default();
        l.renew(&req(1000, Some(0), 0, &[]), start, start);
        assert!(l.round_due(start + ms(600), None, 0).is_none());
        let mut solo = req(1000, Some(10), 0, &[]);
        solo.solo = true;
        l.renew(&solo, start, start + ms(20));
        let round = l.round_due(start + ms(600), None, 0).expect("solo");
        assert!(l.vouched(&round, start + ms(600), start + ms(600)));
    }

    #[test]
    fn status_shows_the_lease_and_this_answers_challenge() {
        let start = Instant::now();
        let mut l = Lease::default();
        let st = l.state(start, start + ms(42), 7);
        assert_eq!(
            (st.held, st.challenge, st.known_epoch, st.ttl_ms),
            (false, 42, 7, None)
        );
        l.renew(&req(1000, Some(40), 7, &[]), start, start + ms(42));
        let st = l.state(start, start + ms(540), 7);
        assert!(st.held);
        assert_eq!(st.remaining_ms, Some(500));
        assert_eq!(st.renewed_ago_ms, Some(498));
        assert_eq!((st.ttl_ms, st.epoch), (Some(1000), 7));
        assert_eq!(st.extended_by, Some(LeaseSource::Operator));
    }
}
