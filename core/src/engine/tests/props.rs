//! Property tests: random sequences of failures, recoveries, requests and
//! operator restarts against the simulated cluster, checking DESIGN.md §3's
//! invariants and that every transition finishes once faults stop.

use proptest::prelude::*;

use super::sim::Sim;
use crate::api::{DataDurability, DbClusterSpec, InstanceOverride, ReplicationMode};
use crate::engine::{Action, Request, RestartTarget, SwitchoverTarget};

#[derive(Clone, Debug)]
enum Ev {
    Kill(usize),
    Partition(usize),
    CrashPg(usize, i64),
    Heal(usize),
    Lag(usize, bool),
    RewindBroken(usize),
    Archive(usize, i64),
    Pause(bool),
    Switchover(Option<usize>, bool, bool),
    Rejoin(usize, bool),
    Reclone(usize),
    Restart(Option<usize>),
    OperatorRestart(usize),
    /// The operator cannot reach this agent; the agents still reach each other.
    CutFromOperator(usize),
    /// The operator is down for this long: time passes, no decision is made.
    OperatorDown(i64),
    Wait(i64),
}

fn ev() -> impl Strategy<Value = Ev> {
    let i = 0usize..5;
    prop_oneof![
        2 => i.clone().prop_map(Ev::Kill),
        2 => i.clone().prop_map(Ev::Partition),
        2 => (i.clone(), 0i64..9000).prop_map(|(k, t)| Ev::CrashPg(k, t)),
        4 => i.clone().prop_map(Ev::Heal),
        1 => (i.clone(), any::<bool>()).prop_map(|(k, b)| Ev::Lag(k, b)),
        1 => i.clone().prop_map(Ev::RewindBroken),
        1 => (i.clone(), 0i64..200).prop_map(|(k, n)| Ev::Archive(k, n)),
        1 => any::<bool>().prop_map(Ev::Pause),
        3 => (proptest::option::of(i.clone()), any::<bool>(), any::<bool>()).prop_map(|(t, d, f)| Ev::Switchover(t, d, f)),
        1 => (i.clone(), any::<bool>()).prop_map(|(k, d)| Ev::Rejoin(k, d)),
        1 => i.clone().prop_map(Ev::Reclone),
        1 => proptest::option::of(i.clone()).prop_map(Ev::Restart),
        2 => (0usize..4).prop_map(Ev::OperatorRestart),
        2 => i.clone().prop_map(Ev::CutFromOperator),
        1 => (1000i64..60_000).prop_map(Ev::OperatorDown),
        3 => (100i64..4000).prop_map(Ev::Wait),
    ]
}

fn spec_of(instances: i32, mode: u8, learner: Option<i32>) -> DbClusterSpec {
    let mut spec = DbClusterSpec {
        instances,
        ..DbClusterSpec::default()
    };
    match mode {
        0 => {}
        1 => spec.replication.mode = ReplicationMode::Sync,
        _ => {
            spec.replication.mode = ReplicationMode::Sync;
            spec.replication.data_durability = DataDurability::Required;
        }
    }
    if let Some(o) = learner.filter(|o| *o > 0 && *o < instances) {
        spec.instance_overrides.push(InstanceOverride {
            ordinal: o,
            priority: Some(0),
        });
    }
    spec
}

fn name(k: usize) -> String {
    format!("main-{k}")
}

fn request_of(e: &Ev) -> Option<Request> {
    Some(match e {
        Ev::Switchover(t, dry_run, force) => Request::Switchover {
            to: t.map_or(SwitchoverTarget::Any, |k| {
                SwitchoverTarget::Instance(name(k))
            }),
            dry_run: *dry_run,
            force: *force,
        },
        Ev::Rejoin(k, dry_run) => Request::Rejoin {
            instance: name(*k),
            dry_run: *dry_run,
        },
        Ev::Reclone(k) => Request::Reclone { instance: name(*k) },
        Ev::Restart(t) => Request::Restart {
            target: t.map_or(RestartTarget::All, |k| RestartTarget::Instance(name(k))),
        },
        _ => return None,
    })
}

fn apply_fault(sim: &mut Sim, e: &Ev) {
    let n = sim.insts.len();
    let now = sim.now;
    match *e {
        Ev::Kill(k) if k < n => {
            // The lease lives in the agent's memory: it dies with it.
            let m = &mut sim.insts[k];
            m.agent_up = false;
            m.pg = false;
            m.gone_known = true;
            m.lease_until = 0;
            m.crash_restart_at = None;
        }
        Ev::Partition(k) if k < n => sim.insts[k].partitioned = true,
        Ev::CutFromOperator(k) if k < n => sim.insts[k].cut_from_operator = true,
        Ev::OperatorDown(ms) => {
            sim.results.clear();
            let mut left = ms;
            while left > 0 {
                let step = left.min(1000);
                sim.advance(step);
                sim.check("while the operator is down");
                left -= step;
            }
        }
        Ev::CrashPg(k, t) if k < n => {
            let m = &mut sim.insts[k];
            m.pg = false;
            m.crash_restart_at = Some(now + t);
        }
        Ev::Heal(k) if k < n => heal(sim, k),
        Ev::Lag(k, b) if k < n => sim.insts[k].repl_blocked = b,
        Ev::RewindBroken(k) if k < n => sim.insts[k].rewind_broken = true,
        Ev::Archive(k, a) if k < n => sim.insts[k].archive_ready = a,
        Ev::Pause(p) => sim.spec.paused = p,
        Ev::OperatorRestart(k) => {
            // In-flight results are lost; the next round carries out only k actions.
            sim.results.clear();
            sim.crash_next_round = Some(k);
        }
        _ => {}
    }
}

/// Bring an instance back as a restarted pod / process would come back.
fn heal(sim: &mut Sim, k: usize) {
    let now = sim.now;
    let m = &mut sim.insts[k];
    if !m.agent_up {
        m.agent_up = true;
        m.gone_known = false;
        // The agent never starts a primary without a lease.
        if m.primary {
            m.fenced = true;
        } else {
            m.pg = true;
        }
    }
    m.partitioned = false;
    m.cut_from_operator = false;
    m.repl_blocked = false;
    if m.crash_restart_at.take().is_some()
        && !m.held_stopped
        && !(m.primary && m.lease_until <= now)
    {
        m.pg = true;
    }
}

/// The one case where faults stopping does not bring every instance back:
/// an instance whose pg_rewind keeps failing holds a copy more advanced than
/// the primary's (a candidate that promoted and was then cut off, while the
/// old primary came back), and invariant 3 forbids re-cloning it. A person
/// decides; the engine says why in history.
fn keeps_a_copy_it_must_not_destroy(sim: &Sim) -> bool {
    sim.insts.iter().any(|i| i.rewind_broken)
        && sim
            .status
            .history
            .iter()
            .any(|h| h.message.contains("has the most advanced copy of the data"))
}

/// A refused request changes nothing but its history entry (and its Event / RequestDone).
fn check_refusal_changes_nothing(sim: &Sim) -> Result<(), TestCaseError> {
    let with = sim.decide();
    let mut quiet = sim.observations();
    quiet.requests.clear();
    let without = crate::engine::decide(
        &sim.spec,
        &sim.status,
        &quiet,
        jiff::Timestamp::from_millisecond(sim.now).unwrap(),
    );
    let refused = with
        .status
        .history
        .last()
        .is_some_and(|h| h.outcome == "Refused")
        && with.status.history.last() != without.status.history.last();
    if refused {
        let (mut a, mut b) = (with.status.clone(), without.status.clone());
        a.history.clear();
        b.history.clear();
        prop_assert_eq!(a, b, "a refused request changed the status");
        let strip = |v: &[Action]| -> Vec<Action> {
            v.iter()
                .filter(|x| !matches!(x, Action::Event { .. } | Action::RequestDone { .. }))
                .cloned()
                .collect()
        };
        prop_assert_eq!(
            strip(&with.actions),
            strip(&without.actions),
            "a refused request issued actions"
        );
    }
    Ok(())
}

fn converged(sim: &Sim) -> bool {
    let Some(p) = sim.status.current_primary.clone() else {
        return false;
    };
    let Some(pk) = sim.idx(&p) else { return false };
    let pi = &sim.insts[pk];
    sim.status.transition.is_none()
        && pi.pg
        && pi.primary
        && sim
            .insts
            .iter()
            .filter(|i| i.name != p)
            .all(|i| i.pg && !i.primary && i.upstream.as_deref() == Some(p.as_str()))
        && sim.status.instances.iter().all(|i| i.ready)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_random_failures_and_requests(
        instances in 2i32..=4,
        mode in 0u8..3,
        learner in proptest::option::of(1i32..4),
        events in proptest::collection::vec(ev(), 1..40),
    ) {
        let mut sim = Sim::new(spec_of(instances, mode, learner));
        for _ in 0..3 {
            sim.round();
            sim.advance(200);
        }
        prop_assert_eq!(sim.status.current_primary.as_deref(), Some("main-0"));
        for e in &events {
            apply_fault(&mut sim, e);
            if let Some(r) = request_of(e) {
                sim.requests.push(r);
                check_refusal_changes_nothing(&sim)?;
            }
            let wait = if let Ev::Wait(ms) = e { *ms } else { 300 };
            sim.round();
            sim.advance(wait);
            sim.round();
            sim.advance(100);
            prop_assert!(sim.violations.is_empty(), "{:?}", sim.violations);
        }
        // Faults stop: everything comes back, automation resumes.
        sim.spec.paused = false;
        for k in 0..sim.insts.len() {
            heal(&mut sim, k);
        }
        let mut rounds = 0;
        while !converged(&sim) && rounds < 400 {
            sim.round();
            sim.advance(500);
            rounds += 1;
        }
        prop_assert!(sim.violations.is_empty(), "{:?}", sim.violations);
        prop_assert!(
            converged(&sim) || keeps_a_copy_it_must_not_destroy(&sim),
            "not converged after faults stopped: status {:#?}\ninstances {:#?}",
            sim.status,
            sim.insts
        );
    }
}

#[test]
fn simulation_reports_two_writable_primaries() {
    let mut sim = Sim::new(spec_of(3, 0, None));
    sim.round();
    sim.insts[1].lease_until = sim.now + 10_000;
    sim.insts[1].primary = true;
    sim.check("forced");
    assert_eq!(sim.violations.len(), 1, "{:?}", sim.violations);
}

#[test]
fn simulation_fails_over_after_node_loss_and_rejoins_the_old_primary() {
    let mut sim = Sim::new(spec_of(3, 2, None));
    for _ in 0..3 {
        sim.round();
        sim.advance(200);
    }
    apply_fault(&mut sim, &Ev::Kill(0));
    for _ in 0..5 {
        sim.round();
        sim.advance(100);
    }
    assert_eq!(sim.promotions.len(), 1, "{:?}", sim.status);
    let history = sim.status.history.last().unwrap();
    assert_eq!(
        (history.kind.as_str(), history.bytes_possibly_lost),
        ("Failover", Some(0))
    );
    heal(&mut sim, 0);
    let mut rounds = 0;
    while !converged(&sim) && rounds < 100 {
        sim.round();
        sim.advance(500);
        rounds += 1;
    }
    assert!(converged(&sim), "{:#?}", sim.status);
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    assert!(sim
        .status
        .history
        .iter()
        .any(|h| h.kind == "Rejoin" && h.outcome == "Succeeded"));
}

fn settled(instances: i32, mode: u8) -> Sim {
    let mut sim = Sim::new(spec_of(instances, mode, None));
    for _ in 0..3 {
        sim.round();
        sim.advance(200);
    }
    sim
}

#[test]
fn an_operator_outage_leaves_the_primary_writable() {
    for instances in 1..=3 {
        let mut sim = settled(instances, 2);
        apply_fault(&mut sim, &Ev::OperatorDown(60_000));
        let p = &sim.insts[0];
        assert!(
            p.pg && !p.fenced && p.lease_until > sim.now,
            "{instances} instances: the primary was fenced during the outage: {p:?}"
        );
        sim.round();
        assert!(sim.promotions.is_empty());
        assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    }
}

#[test]
fn a_primary_cut_off_from_the_operator_only_is_not_failed_over() {
    let mut sim = settled(3, 2);
    apply_fault(&mut sim, &Ev::CutFromOperator(0));
    for _ in 0..60 {
        sim.round();
        sim.advance(500);
    }
    assert!(sim.promotions.is_empty(), "{:?}", sim.status.history);
    assert!(sim.insts[0].lease_until > sim.now, "{:?}", sim.insts[0]);
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
}

/// The checks catch a broken vouching rule: standbys that acknowledge
/// `/stop-vouching` and go on vouching keep an old primary writable next to
/// the promoted one once it is cut off from the operator and one peer.
#[test]
fn standbys_that_go_on_vouching_after_stop_vouching_break_the_invariant() {
    let run = |broken: bool| {
        let mut sim = settled(3, 0);
        sim.ignore_stop_vouching = broken;
        // main-0 no longer reaches the operator, and main-1 stops following
        // it for a while: main-0 cannot extend its lease, the engine fails over.
        sim.insts[0].cut_from_operator = true;
        sim.insts[1].upstream = None;
        for _ in 0..80 {
            sim.round();
            if sim.status.transition.is_some() && sim.insts[1].upstream.is_none() {
                // main-1 follows it again while the failover waits for its lease.
                sim.insts[1].upstream = Some("main-0".into());
            }
            sim.advance(300);
        }
        (sim.promotions.clone(), sim.violations.clone())
    };
    let (promotions, violations) = run(false);
    assert!(violations.is_empty(), "{violations:?}");
    assert!(!promotions.is_empty(), "the failover must happen");
    let (promotions, violations) = run(true);
    assert!(
        !violations.is_empty(),
        "a broken vouching rule went unnoticed (promotions {promotions:?})"
    );
}
