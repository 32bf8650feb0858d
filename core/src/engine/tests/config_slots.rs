//! Configuration changes (the Reconfigure transition, then a rolling restart
//! for pending_restart) and the dropping of stale replication slots.

use std::collections::BTreeMap;

use super::fixtures::*;
use crate::engine::{Action, SlotReport, StopMode};

fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn configs(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Config { instance, .. } => Some(instance.clone()),
            _ => None,
        })
        .collect()
}

/// A 3-instance cluster whose agents report the parameters they applied.
fn reporting() -> Fixture {
    let mut f = cluster().instances(3).build();
    for n in ["main-0", "main-1", "main-2"] {
        f.agent(n).parameters = Some(BTreeMap::new());
    }
    f.settle();
    f
}

#[test]
fn changed_parameters_are_applied_to_every_instance_as_a_recorded_transition() {
    let mut f = reporting();
    assert!(f.status.transition.is_none());
    f.spec.postgres.parameters = params(&[("work_mem", "8MB")]);
    let a = f.tick(10);
    assert_eq!(
        f.step(),
        Some(("Reconfigure".into(), "ApplyParameters".into()))
    );
    let mut to = configs(&a);
    to.sort();
    assert_eq!(to, ["main-0", "main-1", "main-2"]);
    assert!(a.iter().all(|x| match x {
        Action::Config { parameters, .. } =>
            parameters.get("work_mem").map(String::as_str) == Some("8MB"),
        _ => true,
    }));
    assert!(has(
        &a,
        |x| matches!(x, Action::Event { reason, .. } if reason == "ReconfigureStarted")
    ));
    // Until every instance reports them, the transition waits.
    for x in a.iter().filter(|x| matches!(x, Action::Config { .. })) {
        f.ok(x.clone());
    }
    f.agent("main-0").parameters = Some(params(&[("work_mem", "8MB")]));
    f.agent("main-1").parameters = Some(params(&[("work_mem", "8MB")]));
    f.tick(10);
    assert!(f.status.transition.is_some());
    f.agent("main-2").parameters = Some(params(&[("work_mem", "8MB")]));
    let a = f.tick(10);
    assert!(f.status.transition.is_none());
    let h = f.last_history();
    assert_eq!(
        (h.kind.as_str(), h.outcome.as_str()),
        ("Reconfigure", "Succeeded")
    );
    assert!(
        h.message.contains("parameters changed: work_mem"),
        "{}",
        h.message
    );
    assert!(
        h.message.contains("main-0, main-1, main-2"),
        "{}",
        h.message
    );
    assert!(has(
        &a,
        |x| matches!(x, Action::Event { reason, .. } if reason == "ReconfigureCompleted")
    ));
    // Nothing more to do: no second transition, no more Config.
    let a = f.tick(10);
    assert!(f.status.transition.is_none());
    assert!(configs(&a).is_empty(), "{a:?}");
}

#[test]
fn a_parameter_needing_a_restart_is_followed_by_a_rolling_restart_primary_last() {
    let mut f = reporting();
    f.spec.postgres.parameters = params(&[("max_connections", "150")]);
    f.tick(10);
    f.ack_all();
    for n in ["main-0", "main-1", "main-2"] {
        f.agent(n).parameters = Some(params(&[("max_connections", "150")]));
        f.agent(n).pending_restart = true;
    }
    let a = f.tick(10);
    let h = f
        .status
        .history
        .iter()
        .rev()
        .find(|h| h.kind.as_str() == "Reconfigure")
        .unwrap();
    assert!(
        h.message
            .contains("a restart is pending on main-0, main-1, main-2"),
        "{}",
        h.message
    );
    assert_eq!(f.step(), Some(("Restart".into(), "RestartInstance".into())));
    let queue = &f.status.transition.as_ref().unwrap().data.restart.queue;
    assert_eq!(queue, &["main-1", "main-2", "main-0"]);
    assert!(has(
        &a,
        |x| matches!(x, Action::Restart { instance, mode: StopMode::Smart, .. } if instance == "main-1")
    ));
}

#[test]
fn a_failed_reconfigure_is_recorded_and_not_retried_at_once() {
    let mut f = reporting();
    f.spec.postgres.parameters = params(&[("work_mem", "lots")]);
    let a = f.tick(10);
    for x in a.iter().filter(|x| matches!(x, Action::Config { .. })) {
        f.fail(
            x.clone(),
            "invalid value for parameter \"work_mem\": \"lots\"",
        );
    }
    f.tick(10);
    assert!(f.status.transition.is_none());
    let h = f.last_history();
    assert_eq!(
        (h.kind.as_str(), h.outcome.as_str()),
        ("Reconfigure", "Failed")
    );
    assert!(h.message.contains("invalid value"), "{}", h.message);
    let a = f.tick(1000);
    assert!(f.status.transition.is_none());
    assert!(configs(&a).is_empty());
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap_or("")
        .contains("the last attempt failed"));
}

#[test]
fn parameter_changes_wait_while_paused() {
    let mut f = reporting();
    f.spec.paused = true;
    f.spec.postgres.parameters = params(&[("work_mem", "8MB")]);
    f.tick(10);
    assert!(f.status.transition.is_none());
    assert!(f
        .status
        .blocked_by
        .as_deref()
        .unwrap_or("")
        .contains("paused"));
}

#[test]
fn the_archive_command_is_one_of_the_parameters() {
    let mut f = reporting();
    f.spec.archive.command = Some("cp %p /a/%f".into());
    let a = f.tick(10);
    assert!(has(&a, |x| matches!(x, Action::Config { parameters, .. }
        if parameters.get("archive_mode").map(String::as_str) == Some("on")
        && parameters.get("archive_command").map(String::as_str) == Some("cp %p /a/%f"))));
}

fn slot(name: &str, active: bool) -> SlotReport {
    SlotReport {
        name: name.into(),
        active,
    }
}

fn drops(actions: &[Action]) -> Vec<(String, Vec<String>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::DropSlots { instance, slots } => Some((instance.clone(), slots.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_demoted_primary_drops_the_slots_of_standbys_that_stream_elsewhere() {
    let mut f = cluster().instances(3).build();
    // After a switchover to main-1: main-0 and main-2 stream from main-1;
    // main-0 still holds the slots they had on it.
    f.status.current_primary = Some("main-1".into());
    f.promoted("main-1", 2);
    f.streams("main-0", "main-1");
    f.streams("main-2", "main-1");
    f.agent("main-0").slots = vec![slot("main_1", false), slot("main_2", false)];
    f.agent("main-1").slots = vec![slot("main_0", true), slot("main_2", true)];
    let a = f.tick(10);
    assert_eq!(
        drops(&a),
        [(
            "main-0".to_string(),
            vec!["main_1".to_string(), "main_2".to_string()]
        )]
    );
}

#[test]
fn a_slot_still_needed_or_active_is_never_dropped() {
    let mut f = cluster().instances(3).build();
    // main-2 still streams from main-0 (a standby about to follow): its slot
    // there stays; main-1's slot on the primary stays though inactive.
    f.agent("main-0").slots = vec![
        slot("main_1", false),
        slot("main_2", true),
        slot("users_slot", false),
    ];
    f.streams("main-2", "main-1");
    f.agent("main-1").slots = vec![slot("main_2", true)];
    let a = f.tick(10);
    assert!(drops(&a).is_empty(), "{a:?}");
    // Paused: nothing is dropped either.
    f.spec.paused = true;
    f.agent("main-0").slots.push(slot("main_7", false));
    let a = f.tick(10);
    assert!(drops(&a).is_empty(), "{a:?}");
}

#[test]
fn the_slot_of_a_member_scaled_away_is_dropped_on_the_primary_once_inactive() {
    let mut f = cluster().instances(3).build();
    f.spec.instances = 2;
    f.agent("main-0").slots = vec![slot("main_1", true), slot("main_2", true)];
    let a = f.tick(10);
    assert!(drops(&a).is_empty(), "active: kept");
    f.agent("main-0").slots = vec![slot("main_1", true), slot("main_2", false)];
    let a = f.tick(10);
    assert_eq!(
        drops(&a),
        [("main-0".to_string(), vec!["main_2".to_string()])]
    );
    let done = Action::DropSlots {
        instance: "main-0".into(),
        slots: vec!["main_2".into()],
    };
    f.ok(done);
    let a = f.tick(10);
    assert!(has(
        &a,
        |x| matches!(x, Action::Event { reason, .. } if reason == "SlotsDropped")
    ));
}

#[test]
fn a_reconfigure_resumes_from_its_persisted_status_with_its_failures() {
    let mut f = reporting();
    f.spec.postgres.parameters = params(&[("work_mem", "8MB")]);
    let a = f.tick(10);
    let to_main_2 = a
        .iter()
        .find(|x| matches!(x, Action::Config { instance, .. } if instance == "main-2"))
        .cloned()
        .unwrap();
    f.fail(to_main_2, "disk full");
    f.tick(10);
    assert_eq!(
        f.step(),
        Some(("Reconfigure".into(), "ApplyParameters".into()))
    );
    // The operator restarts: only the persisted status survives.
    let text = serde_json::to_string(&f.status).unwrap();
    f.status = serde_json::from_str(&text).unwrap();
    f.agent("main-0").parameters = Some(params(&[("work_mem", "8MB")]));
    f.agent("main-1").parameters = Some(params(&[("work_mem", "8MB")]));
    let a = f.tick(10);
    assert!(f.status.transition.is_none(), "{:?}", f.status.transition);
    assert!(
        !configs(&a).contains(&"main-2".to_string()),
        "retried at once: {a:?}"
    );
    let h = f.last_history();
    assert_eq!(
        (h.kind.as_str(), h.outcome.as_str()),
        ("Reconfigure", "Failed")
    );
    assert!(
        h.message.contains("main-2 failed: disk full"),
        "{}",
        h.message
    );
    assert!(
        h.message
            .contains("applied with a reload on main-0, main-1"),
        "{}",
        h.message
    );
}

#[test]
fn a_rolling_restart_waits_for_a_pending_instance_that_is_busy_rather_than_leaving_it_out() {
    let mut f = reporting();
    f.spec.postgres.parameters = params(&[("max_connections", "150")]);
    f.tick(10);
    f.ack_all();
    for n in ["main-0", "main-1", "main-2"] {
        f.agent(n).parameters = Some(params(&[("max_connections", "150")]));
        f.agent(n).pending_restart = true;
    }
    f.agent("main-1").operation = Some("drop_slots".into());
    f.tick(10);
    assert!(
        f.status
            .transition
            .as_ref()
            .is_none_or(|t| t.kind.as_str() != "Restart"),
        "{:?}",
        f.status.transition
    );
    f.agent("main-1").operation = None;
    f.tick(10);
    assert_eq!(f.step(), Some(("Restart".into(), "RestartInstance".into())));
    let queue = &f.status.transition.as_ref().unwrap().data.restart.queue;
    assert_eq!(queue, &["main-1", "main-2", "main-0"]);
}
