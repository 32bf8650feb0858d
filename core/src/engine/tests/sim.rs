//! A small simulated cluster for property tests: instances with agents,
//! postgres, timelines, WAL positions, leases and labels; it builds the
//! engine's observations and applies its actions, and checks DESIGN.md §3's
//! invariants as it goes.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::api::{DbClusterSpec, DbClusterStatus, Lsn};
use crate::engine::{
    decide, Action, ActionResult, AgentReport, ConnectedStandby, Decision, InstanceObs,
    Observations, Outcome, PlatformState, Request, RoleLabel, SyncState,
};

#[derive(Clone, Debug)]
pub struct Inst {
    pub name: String,
    pub agent_up: bool,
    pub partitioned: bool,
    /// The operator cannot reach this agent, but the other agents can.
    pub cut_from_operator: bool,
    pub gone_known: bool,
    pub pg: bool,
    pub primary: bool,
    pub tli: i64,
    pub lsn: u64,
    pub upstream: Option<String>,
    pub label: Option<RoleLabel>,
    pub lease_until: i64,
    /// The epoch and peers of the last renewal it accepted.
    pub lease_epoch: u64,
    pub lease_peers: Vec<String>,
    /// The highest epoch it was told of (kept on disk: survives a restart).
    pub known_epoch: u64,
    /// Standby: the primary it last vouched for, and when.
    pub vouched: Option<(String, i64)>,
    pub fenced: bool,
    pub held_stopped: bool,
    pub crash_restart_at: Option<i64>,
    pub sync_names: String,
    pub sync_commit: String,
    pub repl_blocked: bool,
    pub rewind_broken: bool,
    pub archive_ready: i64,
}

pub struct Sim {
    pub spec: DbClusterSpec,
    pub status: DbClusterStatus,
    pub now: i64,
    pub insts: Vec<Inst>,
    /// Timeline → (parent timeline, LSN where it branched).
    pub parents: BTreeMap<i64, (i64, u64)>,
    /// Highest LSN acknowledged to a client.
    pub acked: u64,
    pub results: Vec<ActionResult>,
    pub requests: Vec<Request>,
    pub violations: Vec<String>,
    pub promotions: Vec<String>,
    /// The operator dies in the next round after persisting status, having
    /// carried out only this many of its actions.
    pub crash_next_round: Option<usize>,
    /// A broken agent, for the test that shows the checks catch it: standbys
    /// acknowledge `/stop-vouching` and go on vouching.
    pub ignore_stop_vouching: bool,
}

impl Sim {
    pub fn new(spec: DbClusterSpec) -> Self {
        let n = usize::try_from(spec.instances).unwrap();
        let insts = (0..n)
            .map(|i| Inst {
                name: format!("main-{i}"),
                agent_up: true,
                partitioned: false,
                cut_from_operator: false,
                gone_known: false,
                pg: true,
                primary: i == 0,
                tli: 1,
                lsn: 1000,
                upstream: (i != 0).then(|| "main-0".to_string()),
                label: None,
                lease_until: if i == 0 { 10_000 } else { 0 },
                lease_epoch: 0,
                lease_peers: Vec::new(),
                known_epoch: 0,
                vouched: None,
                fenced: false,
                held_stopped: false,
                crash_restart_at: None,
                sync_names: String::new(),
                sync_commit: "local".into(),
                repl_blocked: false,
                rewind_broken: false,
                archive_ready: 0,
            })
            .collect();
        Sim {
            spec,
            status: DbClusterStatus::default(),
            now: 1_000,
            insts,
            parents: BTreeMap::new(),
            acked: 1000,
            results: Vec::new(),
            requests: Vec::new(),
            violations: Vec::new(),
            promotions: Vec::new(),
            crash_next_round: None,
            ignore_stop_vouching: false,
        }
    }

    pub fn idx(&self, name: &str) -> Option<usize> {
        self.insts.iter().position(|i| i.name == name)
    }

    fn writable(&self, i: &Inst) -> bool {
        i.agent_up && i.pg && i.primary && i.lease_until > self.now
    }

    /// Where `tli` branches off on the way to `head` (None if not an ancestor).
    fn switch_point(&self, head: i64, head_lsn: u64, tli: i64) -> Option<u64> {
        let (mut t, mut end) = (head, head_lsn);
        loop {
            if t == tli {
                return Some(end);
            }
            let (parent, at) = *self.parents.get(&t)?;
            end = at;
            t = parent;
        }
    }

    /// `i`'s WAL is a prefix of `p`'s history.
    fn compatible(&self, i: &Inst, p: &Inst) -> bool {
        self.switch_point(p.tli, p.lsn, i.tli)
            .is_some_and(|end| i.lsn <= end)
    }

    fn streaming(&self, i: &Inst) -> bool {
        let Some(up) = i.upstream.as_deref().and_then(|u| self.idx(u)) else {
            return false;
        };
        let p = &self.insts[up];
        i.agent_up
            && i.pg
            && !i.primary
            && !i.repl_blocked
            && p.agent_up
            && p.pg
            && p.primary
            && self.compatible(i, p)
    }

    pub fn observations(&self) -> Observations {
        let mut obs = Observations {
            cluster: "main".into(),
            requests: self.requests.clone(),
            results: self.results.clone(),
            ..Observations::default()
        };
        for (k, i) in self.insts.iter().enumerate() {
            let reachable = i.agent_up && !i.partitioned && !i.cut_from_operator;
            let agent = reachable.then(|| {
                let standbys = self
                    .insts
                    .iter()
                    .filter(|s| s.upstream.as_deref() == Some(i.name.as_str()) && self.streaming(s))
                    .map(|s| ConnectedStandby {
                        name: s.name.clone(),
                        sync_state: SyncState::Quorum,
                        flush_lsn: Some(Lsn(s.lsn)),
                    })
                    .collect();
                AgentReport {
                    postgres_running: i.pg,
                    in_recovery: !i.primary,
                    timeline: Some(i.tli),
                    current_lsn: (i.pg && i.primary).then_some(Lsn(i.lsn)),
                    received_lsn: (!i.primary).then_some(Lsn(i.lsn)),
                    replayed_lsn: (!i.primary).then_some(Lsn(i.lsn)),
                    checkpoint_lsn: (!i.pg).then_some(Lsn(i.lsn)),
                    upstream: if i.primary { None } else { i.upstream.clone() },
                    streaming: self.streaming(i),
                    standbys,
                    archive_ready: Some(i.archive_ready),
                    max_wal_senders: Some(10),
                    max_replication_slots: Some(10),
                    slots_used: Some(0),
                    replication_to: self
                        .insts
                        .iter()
                        .filter(|o| o.name != i.name)
                        .map(|o| (o.name.clone(), true))
                        .collect(),
                    fenced: i.fenced,
                    system_identifier: Some("7000".into()),
                    synchronous_standby_names: Some(i.sync_names.clone()),
                    synchronous_commit: Some(i.sync_commit.clone()),
                    vouched: i.vouched.as_ref().map(|(p, at)| (p.clone(), self.now - at)),
                    lease: Some(crate::engine::LeaseReport {
                        held: i.lease_until > self.now,
                        remaining_ms: (i.lease_until - self.now).max(0),
                        challenge: Some(u64::try_from(self.now).unwrap()),
                        // The engine then counts no margin for the fence; this
                        // model's agent is writable until the very end of its
                        // lease, the latest an agent that fences early may be.
                        fence_lead_ms: Some(crate::engine::FENCE_TAKES_MS as u64),
                    }),
                    ..AgentReport::default()
                }
            });
            let _ = k;
            obs.instances.push(InstanceObs {
                name: i.name.clone(),
                platform: if i.gone_known {
                    PlatformState::Gone
                } else {
                    PlatformState::Running
                },
                label: i.label,
                agent,
                unanswered: None,
                outdated: false,
                deleting: false,
                unschedulable: false,
            });
        }
        obs
    }

    pub fn decide(&self) -> Decision {
        let obs = self.observations();
        decide(
            &self.spec,
            &self.status,
            &obs,
            Timestamp::from_millisecond(self.now).unwrap(),
        )
    }

    /// One control round: decide, persist, carry out the actions.
    pub fn round(&mut self) -> Decision {
        let d = self.decide();
        self.status = d.status.clone();
        self.results.clear();
        self.requests.clear();
        let done = self.crash_next_round.take();
        for (n, a) in d.actions.iter().enumerate() {
            if done.is_some_and(|k| n >= k) {
                // The operator died: the rest never runs and no result is seen.
                self.results.clear();
                break;
            }
            let outcome = self.apply(a);
            let label = match a {
                Action::Promote {
                    instance,
                    label: true,
                } if matches!(outcome, Outcome::Succeeded { .. }) => Some(Action::SetRole {
                    instance: instance.clone(),
                    role: RoleLabel::Primary,
                }),
                _ => None,
            };
            if !matches!(a, Action::Event { .. } | Action::RequestDone { .. }) {
                self.results.push(ActionResult {
                    action: a.clone(),
                    outcome,
                });
            }
            // As the platforms' loop does: the label with the promotion's answer.
            if let Some(set) = label {
                let outcome = self.apply(&set);
                self.results.push(ActionResult {
                    action: set,
                    outcome,
                });
            }
        }
        self.check("after actions");
        d
    }

    fn ok() -> Outcome {
        Outcome::Succeeded {
            detail: None,
            facts: Default::default(),
        }
    }

    fn fail(m: &str) -> Outcome {
        Outcome::Failed { message: m.into() }
    }

    fn apply(&mut self, a: &Action) -> Outcome {
        let Some(k) = a.instance().and_then(|n| self.idx(n)) else {
            return Self::ok();
        };
        let cut = self.insts[k].partitioned || self.insts[k].cut_from_operator;
        if a.is_agent_call() && (!self.insts[k].agent_up || cut) {
            return Self::fail("agent unreachable");
        }
        let now = self.now;
        match a {
            Action::Promote { instance, .. } => {
                let i = self.insts[k].clone();
                if i.primary && i.pg {
                    return Self::ok();
                }
                if !i.pg {
                    return Self::fail("postgres is not running");
                }
                if self.spec.priority_of(u32::try_from(k).unwrap()) <= 0 {
                    self.violations.push(format!("promoted learner {instance}"));
                }
                let required = self.spec.replication.mode == crate::api::ReplicationMode::Sync
                    && self.spec.replication.data_durability
                        == crate::api::DataDurability::Required;
                if required && i.lsn < self.acked {
                    self.violations.push(format!(
                        "promoted {instance} at {} but {} was acknowledged",
                        i.lsn, self.acked
                    ));
                }
                let tli = self
                    .insts
                    .iter()
                    .map(|x| x.tli)
                    .chain(self.parents.keys().copied())
                    .max()
                    .unwrap_or(1)
                    + 1;
                self.parents.insert(tli, (i.tli, i.lsn));
                let me = &mut self.insts[k];
                me.primary = true;
                me.tli = tli;
                me.upstream = None;
                self.promotions.push(instance.clone());
                Self::ok()
            }
            Action::Demote { primary, .. } | Action::Follow { primary, .. } => {
                let Some(p) = self.idx(primary) else {
                    return Self::fail("no such primary");
                };
                let pi = self.insts[p].clone();
                let cascade = matches!(a, Action::Follow { cascade: true, .. });
                if cascade && pi.pg && !pi.primary {
                    // Streaming from a standby about to be promoted: it must
                    // have all this one has, or this one could never follow it.
                    let me = &self.insts[k];
                    if !me.pg || me.primary {
                        return Self::fail("not a running standby");
                    }
                    if me.tli != pi.tli || me.lsn > pi.lsn {
                        self.violations.push(format!(
                            "{} cascaded from {primary}, which lacks its WAL",
                            me.name
                        ));
                    }
                    self.insts[k].upstream = Some(primary.clone());
                    return Self::ok();
                }
                if !(pi.pg && pi.primary) {
                    return Self::fail("upstream is not a running primary");
                }
                let demote = matches!(a, Action::Demote { .. });
                let me = self.insts[k].clone();
                if !demote && (!me.pg || me.primary) {
                    return Self::fail("not a running standby");
                }
                if demote && !self.compatible(&me, &pi) {
                    if me.rewind_broken {
                        return Self::fail("pg_rewind failed");
                    }
                    let lsn = me.lsn.min(pi.lsn);
                    let m = &mut self.insts[k];
                    m.tli = pi.tli;
                    m.lsn = lsn;
                }
                let m = &mut self.insts[k];
                if demote {
                    m.pg = true;
                    m.primary = false;
                    m.fenced = false;
                    m.held_stopped = false;
                }
                m.upstream = Some(primary.clone());
                Self::ok()
            }
            Action::Rewind { .. } => Outcome::Succeeded {
                detail: Some("checked".into()),
                facts: Default::default(),
            },
            Action::Reclone { source, instance } => {
                let Some(p) = self.idx(source) else {
                    return Self::fail("no source");
                };
                let pi = self.insts[p].clone();
                if !(pi.pg && pi.primary) {
                    return Self::fail("source is not a running primary");
                }
                let me = &self.insts[k];
                if (me.tli, me.lsn) > (pi.tli, pi.lsn) {
                    self.violations
                        .push(format!("re-cloned {instance}, more advanced than {source}"));
                }
                let m = &mut self.insts[k];
                m.tli = pi.tli;
                m.lsn = pi.lsn;
                m.pg = true;
                m.primary = false;
                m.fenced = false;
                m.held_stopped = false;
                m.rewind_broken = false;
                m.upstream = Some(source.clone());
                Self::ok()
            }
            Action::Stop { .. } => {
                let m = &mut self.insts[k];
                m.pg = false;
                m.held_stopped = true;
                Self::ok()
            }
            Action::Start { .. } => {
                let m = &mut self.insts[k];
                if m.primary && m.lease_until <= now {
                    return Self::fail("no lease: will not start as primary");
                }
                m.pg = true;
                m.held_stopped = false;
                m.fenced = false;
                Self::ok()
            }
            Action::Restart { .. } | Action::Checkpoint { .. } => Self::ok(),
            Action::Config {
                synchronous_commit,
                synchronous_standby_names,
                sync_quorum,
                sync_names,
                ..
            } => {
                let rendered = crate::engine::sync_standby_names(
                    usize::try_from(*sync_quorum).unwrap(),
                    sync_names,
                );
                if &rendered != synchronous_standby_names {
                    self.violations.push(format!(
                        "Config {rendered:?} != {synchronous_standby_names:?}"
                    ));
                }
                let m = &mut self.insts[k];
                m.sync_names = synchronous_standby_names.clone();
                m.sync_commit = synchronous_commit.clone();
                Self::ok()
            }
            Action::RenewLease {
                ttl_ms,
                challenge,
                epoch,
                peers,
                ..
            } => {
                let m = &mut self.insts[k];
                if *epoch < m.known_epoch {
                    return Self::fail("renewal of a lower epoch");
                }
                // The challenge is this round's status answer: the lease runs from it.
                let from = challenge.map_or(now, |c| i64::try_from(c).unwrap());
                m.lease_until = m.lease_until.max(from + i64::try_from(*ttl_ms).unwrap());
                m.lease_epoch = *epoch;
                m.lease_peers = peers.clone();
                Self::ok()
            }
            Action::Checks { .. } => Self::ok(),
            Action::StopVouching { epoch, .. } => {
                let m = &mut self.insts[k];
                if !self.ignore_stop_vouching {
                    m.known_epoch = m.known_epoch.max(*epoch);
                }
                // Never vouched since the simulation began: as if just before it.
                let ago = m.vouched.as_ref().map_or(now, |(_, at)| now - at);
                Outcome::Succeeded {
                    detail: None,
                    facts: crate::engine::ActionFacts {
                        last_vouched_ago_ms: Some(u64::try_from(ago).unwrap()),
                        ..Default::default()
                    },
                }
            }
            Action::SetRole { role, .. } => {
                self.insts[k].label = Some(*role);
                Self::ok()
            }
            Action::FenceInstance { .. } => {
                let m = &mut self.insts[k];
                if m.partitioned || m.cut_from_operator {
                    // As on a partitioned node: deleting the pod stops nothing there.
                    return Self::ok();
                }
                m.agent_up = false;
                m.pg = false;
                m.gone_known = true;
                m.lease_until = 0;
                m.crash_restart_at = None;
                Self::ok()
            }
            // The simulator runs no outdated instance: nothing is ever recreated.
            // The simulator reports no slots: nothing is ever dropped.
            Action::Event { .. }
            | Action::RequestDone { .. }
            | Action::Recreate { .. }
            | Action::DropSlots { .. } => Self::ok(),
        }
    }

    /// Let `ms` pass: agents enforce leases, restart crashed postgres, the primary writes.
    /// Primaries holding a lease ask their peers to vouch (every quarter
    /// TTL; once per step here); when every peer does, the lease runs a TTL
    /// from now.
    fn vouch(&mut self) {
        let ttl = self.spec.failover.lease_ttl.duration().as_millis() as i64;
        let now = self.now;
        for k in 0..self.insts.len() {
            let m = self.insts[k].clone();
            let asks = m.agent_up && m.pg && m.primary && !m.partitioned;
            if !asks || m.lease_until <= now {
                continue;
            }
            let mut all = true;
            for p in &m.lease_peers {
                let Some(j) = self.idx(p) else {
                    all = false;
                    continue;
                };
                let s = &mut self.insts[j];
                let yes = s.agent_up
                    && !s.partitioned
                    && !s.primary
                    && s.upstream.as_deref() == Some(m.name.as_str())
                    && s.tli == m.tli
                    && m.lease_epoch >= s.known_epoch;
                if yes {
                    s.vouched = Some((m.name.clone(), now));
                }
                all &= yes;
            }
            if all {
                self.insts[k].lease_until = self.insts[k].lease_until.max(now + ttl);
            }
        }
    }

    pub fn advance(&mut self, ms: i64) {
        // Vouching runs all the time; once per step of at most TTL/2 is enough here.
        self.vouch();
        self.now += ms;
        let now = self.now;
        for m in &mut self.insts {
            if m.agent_up && m.pg && m.primary && m.lease_until <= now {
                m.pg = false;
                m.fenced = true;
            }
            if let Some(t) = m.crash_restart_at {
                if m.agent_up && !m.pg && t <= now {
                    m.crash_restart_at = None;
                    if !(m.held_stopped || (m.primary && m.lease_until <= now)) {
                        m.pg = true;
                    }
                }
            }
        }
        let writers: Vec<usize> = (0..self.insts.len())
            .filter(|&k| self.writable(&self.insts[k]))
            .collect();
        if let [w] = writers[..] {
            self.insts[w].lsn += 100;
            let primary = self.insts[w].clone();
            let mut confirmed = Vec::new();
            for k in 0..self.insts.len() {
                if self.insts[k].upstream.as_deref() == Some(primary.name.as_str())
                    && self.streaming(&self.insts[k])
                {
                    self.insts[k].lsn = primary.lsn;
                    confirmed.push(self.insts[k].name.clone());
                }
            }
            let quorum = parse_quorum(&primary.sync_names);
            let acked_by = match &quorum {
                Some((n, names)) => confirmed.iter().filter(|c| names.contains(c)).count() >= *n,
                None => true,
            };
            if acked_by {
                self.acked = self.acked.max(primary.lsn);
            }
        }
        self.check("after time passed");
    }

    pub fn check(&mut self, when: &str) {
        let writers: Vec<String> = self
            .insts
            .iter()
            .filter(|i| self.writable(i))
            .map(|i| i.name.clone())
            .collect();
        if writers.len() > 1 {
            self.violations.push(format!(
                "two writable primaries {writers:?} {when} at {}",
                self.now
            ));
        }
    }
}

/// `ANY n ("a", "b")` → (n, [a, b]).
fn parse_quorum(names: &str) -> Option<(usize, Vec<String>)> {
    let rest = names.strip_prefix("ANY ")?;
    let (n, list) = rest.split_once(' ')?;
    let n = n.parse().ok()?;
    let list = list.trim_start_matches('(').trim_end_matches(')');
    Some((
        n,
        list.split(", ")
            .map(|s| s.trim_matches('"').to_string())
            .collect(),
    ))
}
