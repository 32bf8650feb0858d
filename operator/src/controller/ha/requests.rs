//! User requests by annotation on a DbCluster (DESIGN.md §1): parsing the
//! `tandem.dev/*` annotations into engine requests, refusing malformed values,
//! and the annotations to remove once the engine answered a request. Pure.

use std::collections::BTreeMap;

use crate::api::keys;
use crate::engine::{Request, RestartTarget, SwitchoverTarget};

/// A malformed annotation: refused whole (Warning Event, history entry), then removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The annotation key.
    pub key: String,
    /// Its value as found (removal is conditional on it being unchanged).
    pub value: String,
    /// Why it was refused, for the user.
    pub reason: String,
}

/// What the annotations of one DbCluster ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Well-formed requests, in a fixed order (switchover, dry-run, rejoin, reclone, restart).
    pub requests: Vec<Request>,
    /// `tandem.dev/paused=true`.
    pub paused: bool,
    /// Malformed annotations.
    pub refusals: Vec<Refusal>,
}

fn instance_value(
    cluster: &str,
    instances: u32,
    key: &str,
    value: &str,
    extra: Option<&str>,
) -> Result<Option<String>, Refusal> {
    let v = value.trim();
    if extra.is_some_and(|e| v == e) {
        return Ok(None);
    }
    let allowed = match extra {
        Some(e) => format!("an instance name of {cluster} (e.g. {cluster}-1) or {e:?}"),
        None => format!("an instance name of {cluster} (e.g. {cluster}-1)"),
    };
    match keys::instance_ordinal(cluster, v) {
        Some(o) if o < instances => Ok(Some(v.to_string())),
        Some(_) => Err(Refusal {
            key: key.into(),
            value: value.into(),
            reason: format!(
                "{key}={value:?} refused: instance {v} does not exist ({cluster} has {instances} instances)"
            ),
        }),
        None => Err(Refusal {
            key: key.into(),
            value: value.into(),
            reason: format!("{key}={value:?} refused: the value must be {allowed}"),
        }),
    }
}

fn flag(key: &str, value: &str) -> Result<bool, Refusal> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Refusal {
            key: key.into(),
            value: value.into(),
            reason: format!("{key}={value:?} refused: the value must be \"true\" or \"false\""),
        }),
    }
}

/// Parse the request annotations of cluster `cluster` with `instances` instances.
pub fn parse(cluster: &str, instances: u32, annotations: &BTreeMap<String, String>) -> Parsed {
    let mut out = Parsed::default();
    let get = |k: &str| annotations.get(k).map(String::as_str);
    let force = match get(keys::ANN_FORCE).map(|v| flag(keys::ANN_FORCE, v)) {
        None => false,
        Some(Ok(f)) => f,
        Some(Err(r)) => {
            out.refusals.push(r);
            false
        }
    };
    for (key, dry_run) in [
        (keys::ANN_SWITCHOVER, false),
        (keys::ANN_SWITCHOVER_DRY_RUN, true),
    ] {
        let Some(v) = get(key) else { continue };
        match instance_value(cluster, instances, key, v, Some(keys::ANY)) {
            Ok(target) => out.requests.push(Request::Switchover {
                to: target.map_or(SwitchoverTarget::Any, SwitchoverTarget::Instance),
                dry_run,
                force,
            }),
            Err(r) => out.refusals.push(r),
        }
    }
    if let Some(v) = get(keys::ANN_REJOIN) {
        match instance_value(cluster, instances, keys::ANN_REJOIN, v, None) {
            Ok(Some(instance)) => out.requests.push(Request::Rejoin {
                instance,
                dry_run: false,
            }),
            Ok(None) => {}
            Err(r) => out.refusals.push(r),
        }
    }
    if let Some(v) = get(keys::ANN_RECLONE) {
        match instance_value(cluster, instances, keys::ANN_RECLONE, v, None) {
            Ok(Some(instance)) => out.requests.push(Request::Reclone { instance }),
            Ok(None) => {}
            Err(r) => out.refusals.push(r),
        }
    }
    if let Some(v) = get(keys::ANN_RESTART) {
        match instance_value(cluster, instances, keys::ANN_RESTART, v, Some(keys::ALL)) {
            Ok(target) => out.requests.push(Request::Restart {
                target: target.map_or(RestartTarget::All, RestartTarget::Instance),
            }),
            Err(r) => out.refusals.push(r),
        }
    }
    if let Some(v) = get(keys::ANN_PAUSED) {
        match flag(keys::ANN_PAUSED, v) {
            Ok(p) => out.paused = p,
            Err(r) => out.refusals.push(r),
        }
    }
    out
}

/// The annotations that carried `request` (removed once the engine answered it).
pub fn annotations_of(request: &Request) -> &'static [&'static str] {
    match request {
        Request::Switchover { dry_run: false, .. } => &[keys::ANN_SWITCHOVER, keys::ANN_FORCE],
        Request::Switchover { dry_run: true, .. } => &[keys::ANN_SWITCHOVER_DRY_RUN],
        Request::Rejoin { .. } => &[keys::ANN_REJOIN],
        Request::Reclone { .. } => &[keys::ANN_RECLONE],
        Request::Restart { .. } => &[keys::ANN_RESTART],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn switchover_to_an_instance_with_force() {
        let p = parse(
            "main",
            3,
            &ann(&[(keys::ANN_SWITCHOVER, "main-2"), (keys::ANN_FORCE, "true")]),
        );
        assert_eq!(
            p.requests,
            vec![Request::Switchover {
                to: SwitchoverTarget::Instance("main-2".into()),
                dry_run: false,
                force: true
            }]
        );
        assert!(p.refusals.is_empty());
    }

    #[test]
    fn dry_run_any_and_restart_all_and_paused() {
        let p = parse(
            "main",
            3,
            &ann(&[
                (keys::ANN_SWITCHOVER_DRY_RUN, "any"),
                (keys::ANN_RESTART, "all"),
                (keys::ANN_PAUSED, "true"),
            ]),
        );
        assert_eq!(
            p.requests,
            vec![
                Request::Switchover {
                    to: SwitchoverTarget::Any,
                    dry_run: true,
                    force: false
                },
                Request::Restart {
                    target: RestartTarget::All
                }
            ]
        );
        assert!(p.paused);
    }

    #[test]
    fn malformed_values_are_refused_and_ask_nothing() {
        let p = parse(
            "main",
            3,
            &ann(&[
                (keys::ANN_SWITCHOVER, "other-1"),
                (keys::ANN_REJOIN, "main-7"),
                (keys::ANN_RECLONE, "any"),
                (keys::ANN_RESTART, ""),
                (keys::ANN_PAUSED, "yes"),
                (keys::ANN_FORCE, "1"),
            ]),
        );
        assert!(p.requests.is_empty(), "{:?}", p.requests);
        assert!(!p.paused);
        let refused: Vec<&str> = p.refusals.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            refused,
            vec![
                keys::ANN_FORCE,
                keys::ANN_SWITCHOVER,
                keys::ANN_REJOIN,
                keys::ANN_RECLONE,
                keys::ANN_RESTART,
                keys::ANN_PAUSED
            ]
        );
        assert!(p.refusals[2].reason.contains("does not exist"));
    }

    #[test]
    fn a_switchover_clears_its_force_annotation_too() {
        let r = Request::Switchover {
            to: SwitchoverTarget::Any,
            dry_run: false,
            force: true,
        };
        assert_eq!(annotations_of(&r), &[keys::ANN_SWITCHOVER, keys::ANN_FORCE]);
    }
}
