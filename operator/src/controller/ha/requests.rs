//! User requests by annotation on a DbCluster (DESIGN.md §1): the
//! `tandem.dev/*` annotations read into engine requests, and the annotations
//! to remove once the engine answered a request. Only reading: a value that
//! does not read becomes [`Request::Unreadable`], and whether a named
//! instance exists, like every other refusal, is the engine's to decide. Pure.

use std::collections::BTreeMap;

use crate::api::keys;
use crate::engine::{Request, RestartTarget, SwitchoverTarget};

/// What the annotations of one DbCluster ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Requests in a fixed order (switchover, dry-run, rejoin, reclone,
    /// restart), then the values that do not read.
    pub requests: Vec<Request>,
    /// `tandem.dev/paused=true`.
    pub paused: bool,
}

fn unreadable(key: &str, value: &str, must: &str) -> Request {
    Request::Unreadable {
        source: key.into(),
        value: value.into(),
        reason: format!("{key}={value:?} refused: the value must be {must}"),
    }
}

fn instance_value(
    cluster: &str,
    key: &str,
    value: &str,
    extra: Option<&str>,
) -> Result<Option<String>, Request> {
    let v = value.trim();
    if extra.is_some_and(|e| v == e) {
        return Ok(None);
    }
    if keys::instance_ordinal(cluster, v).is_some() {
        return Ok(Some(v.to_string()));
    }
    let must = match extra {
        Some(e) => format!("an instance name of {cluster} (e.g. {cluster}-1) or {e:?}"),
        None => format!("an instance name of {cluster} (e.g. {cluster}-1)"),
    };
    Err(unreadable(key, value, &must))
}

fn flag(key: &str, value: &str) -> Result<bool, Request> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(unreadable(key, value, "\"true\" or \"false\"")),
    }
}

/// Read the request annotations of cluster `cluster`.
pub fn parse(cluster: &str, annotations: &BTreeMap<String, String>) -> Parsed {
    let mut out = Parsed::default();
    let mut unread = Vec::new();
    let get = |k: &str| annotations.get(k).map(String::as_str);
    let force = match get(keys::ANN_FORCE).map(|v| flag(keys::ANN_FORCE, v)) {
        None => false,
        Some(Ok(f)) => f,
        Some(Err(r)) => {
            unread.push(r);
            false
        }
    };
    for (key, dry_run) in [
        (keys::ANN_SWITCHOVER, false),
        (keys::ANN_SWITCHOVER_DRY_RUN, true),
    ] {
        let Some(v) = get(key) else { continue };
        match instance_value(cluster, key, v, Some(keys::ANY)) {
            Ok(target) => out.requests.push(Request::Switchover {
                to: target.map_or(SwitchoverTarget::Any, SwitchoverTarget::Instance),
                dry_run,
                force,
            }),
            Err(r) => unread.push(r),
        }
    }
    if let Some(v) = get(keys::ANN_PROMOTE) {
        match instance_value(cluster, keys::ANN_PROMOTE, v, None) {
            Ok(Some(instance)) => out.requests.push(Request::Promote { instance, force }),
            Ok(None) => {}
            Err(r) => unread.push(r),
        }
    }
    for (key, dry_run) in [(keys::ANN_REJOIN, false), (keys::ANN_REJOIN_DRY_RUN, true)] {
        let Some(v) = get(key) else { continue };
        match instance_value(cluster, key, v, None) {
            Ok(Some(instance)) => out.requests.push(Request::Rejoin { instance, dry_run }),
            Ok(None) => {}
            Err(r) => unread.push(r),
        }
    }
    if let Some(v) = get(keys::ANN_RECLONE) {
        match instance_value(cluster, keys::ANN_RECLONE, v, None) {
            Ok(Some(instance)) => out.requests.push(Request::Reclone { instance }),
            Ok(None) => {}
            Err(r) => unread.push(r),
        }
    }
    if let Some(v) = get(keys::ANN_RESTART) {
        match instance_value(cluster, keys::ANN_RESTART, v, Some(keys::ALL)) {
            Ok(target) => out.requests.push(Request::Restart {
                target: target.map_or(RestartTarget::All, RestartTarget::Instance),
            }),
            Err(r) => unread.push(r),
        }
    }
    if let Some(v) = get(keys::ANN_PAUSED) {
        match flag(keys::ANN_PAUSED, v) {
            Ok(p) => out.paused = p,
            Err(r) => unread.push(r),
        }
    }
    out.requests.append(&mut unread);
    out
}

/// The annotations that carried `request` (removed once the engine answered it).
pub fn annotations_of(request: &Request) -> &'static [&'static str] {
    match request {
        Request::Switchover { dry_run: false, .. } => &[keys::ANN_SWITCHOVER, keys::ANN_FORCE],
        Request::Switchover { dry_run: true, .. } => &[keys::ANN_SWITCHOVER_DRY_RUN],
        Request::Promote { .. } => &[keys::ANN_PROMOTE, keys::ANN_FORCE],
        Request::Rejoin { dry_run: false, .. } => &[keys::ANN_REJOIN],
        Request::Rejoin { dry_run: true, .. } => &[keys::ANN_REJOIN_DRY_RUN],
        Request::Reclone { .. } => &[keys::ANN_RECLONE],
        Request::Restart { .. } => &[keys::ANN_RESTART],
        // Cleared by its own key and value (`Request::Unreadable::source`).
        Request::Unreadable { .. } => &[],
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
        assert!(!p
            .requests
            .iter()
            .any(|r| matches!(r, Request::Unreadable { .. })));
    }

    #[test]
    fn dry_run_any_and_restart_all_and_paused() {
        let p = parse(
            "main",
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
    fn malformed_values_are_unreadable_requests_and_ask_nothing_else() {
        let p = parse(
            "main",
            &ann(&[
                (keys::ANN_SWITCHOVER, "other-1"),
                (keys::ANN_RECLONE, "any"),
                (keys::ANN_RESTART, ""),
                (keys::ANN_PAUSED, "yes"),
                (keys::ANN_FORCE, "1"),
            ]),
        );
        assert!(!p.paused);
        let unread: Vec<(&str, &str)> = p
            .requests
            .iter()
            .map(|r| match r {
                Request::Unreadable { source, value, .. } => (source.as_str(), value.as_str()),
                other => panic!("only unreadable requests expected, got {other:?}"),
            })
            .collect();
        assert_eq!(
            unread,
            vec![
                (keys::ANN_FORCE, "1"),
                (keys::ANN_SWITCHOVER, "other-1"),
                (keys::ANN_RECLONE, "any"),
                (keys::ANN_RESTART, ""),
                (keys::ANN_PAUSED, "yes"),
            ]
        );
        let Request::Unreadable { reason, .. } = &p.requests[1] else {
            unreachable!()
        };
        assert!(
            reason.contains("must be an instance name of main"),
            "{reason}"
        );
    }

    #[test]
    fn an_instance_beyond_the_spec_is_the_engine_s_to_refuse() {
        let p = parse("main", &ann(&[(keys::ANN_REJOIN, "main-7")]));
        assert_eq!(
            p.requests,
            vec![Request::Rejoin {
                instance: "main-7".into(),
                dry_run: false
            }]
        );
    }

    #[test]
    fn rejoin_dry_run_reads_and_clears_its_own_annotation() {
        let p = parse(
            "main",
            &ann(&[
                (keys::ANN_REJOIN_DRY_RUN, "main-1"),
                (keys::ANN_REJOIN, "main-2"),
            ]),
        );
        let dry = Request::Rejoin {
            instance: "main-1".into(),
            dry_run: true,
        };
        assert_eq!(
            p.requests,
            vec![
                Request::Rejoin {
                    instance: "main-2".into(),
                    dry_run: false
                },
                dry.clone()
            ]
        );
        assert_eq!(annotations_of(&dry), &[keys::ANN_REJOIN_DRY_RUN]);
        let bad = parse("main", &ann(&[(keys::ANN_REJOIN_DRY_RUN, "any")]));
        assert!(
            matches!(&bad.requests[..], [Request::Unreadable { source, .. }] if source == keys::ANN_REJOIN_DRY_RUN),
            "{bad:?}"
        );
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
