//! What every agent's health checks compare against: the standbys a primary
//! should have and the thresholds of the spec. An agent that reports other
//! settings (never told, restarted, the spec or the member list changed) is
//! sent them, so the agents' checks and the engine's prechecks agree. Pure.

use crate::api::agent::CheckSettings;

use super::ctx::Ctx;
use super::Action;

/// The settings instance `name`'s checks should use.
pub(crate) fn desired(ctx: &Ctx, name: &str) -> CheckSettings {
    let sw = &ctx.spec.switchover;
    let max_lag = i64::try_from(sw.max_lag_bytes.bytes()).unwrap_or(i64::MAX);
    CheckSettings {
        standbys: ctx
            .names
            .iter()
            .filter(|n| n.as_str() != name && ctx.in_spec(n))
            .cloned()
            .collect(),
        archive_ready_warning: i64::from(sw.archive_ready_warning),
        archive_ready_critical: i64::from(sw.archive_ready_critical),
        // The switchover precheck refuses a candidate lagging by more than
        // maxLagBytes: CRITICAL exactly then, WARNING from half of it.
        lag_warning_bytes: (max_lag / 2).max(1),
        lag_critical_bytes: max_lag.saturating_add(1),
    }
}

/// Send their settings to the answering agents that report others.
pub(crate) fn run(ctx: &Ctx, out: &mut Vec<Action>) {
    for name in &ctx.names {
        let Some(a) = ctx.agent(name) else { continue };
        let want = desired(ctx, name);
        if a.check_settings.as_ref() != Some(&want) {
            out.push(Action::Checks {
                instance: name.clone(),
                settings: want,
            });
        }
    }
}
