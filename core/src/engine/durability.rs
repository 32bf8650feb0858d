//! Durability: the synchronous settings the primary should have (async,
//! sync ANY n over non-learner standbys, preferred vs required), and the
//! synchronous set failover under sync+required may promote from. Pure.

use crate::api::{DataDurability, DbClusterStatus, ReplicationMode, ReplicationSpec, SyncStatus};

use super::ctx::Ctx;

/// synchronous_standby_names for quorum `n` over `names`: `ANY 1 ("main-1", "main-2")`; "" when n is 0.
pub fn sync_standby_names(n: usize, names: &[String]) -> String {
    if n == 0 || names.is_empty() {
        return String::new();
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("ANY {n} ({})", quoted.join(", "))
}

/// The primary's synchronous settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyncSettings {
    pub synchronous_commit: String,
    pub names: String,
    pub quorum: usize,
    pub standbys: Vec<String>,
    /// Why the settings are weaker or stricter than the spec asks, for blockedBy.
    pub note: Option<String>,
}

/// Non-learner standbys of `primary` that may be synchronous.
pub(crate) fn eligible_standbys(ctx: &Ctx, primary: &str) -> Vec<String> {
    ctx.names
        .iter()
        .filter(|n| n.as_str() != primary && ctx.in_spec(n) && ctx.priority(n) > 0)
        .cloned()
        .collect()
}

/// What synchronous settings `primary` should run with now.
pub(crate) fn desired(ctx: &Ctx, primary: &str) -> SyncSettings {
    desired_for(ctx, &ctx.replication, primary)
}

/// The synchronous settings `primary` would run with under `spec`.
pub(crate) fn desired_for(ctx: &Ctx, spec: &ReplicationSpec, primary: &str) -> SyncSettings {
    if spec.mode == ReplicationMode::Async {
        return SyncSettings {
            synchronous_commit: "local".into(),
            names: String::new(),
            quorum: 0,
            standbys: Vec::new(),
            note: None,
        };
    }
    let commit = spec.synchronous_commit.as_pg().to_string();
    let eligible = eligible_standbys(ctx, primary);
    let wanted = usize::try_from(spec.sync_standbys.max(1)).unwrap_or(1);
    let streaming = eligible
        .iter()
        .filter(|n| ctx.streams_from(n, primary))
        .count();
    match spec.data_durability {
        DataDurability::Required => {
            if eligible.is_empty() {
                // Keep writes blocked: a name no standby has.
                let placeholder = vec![format!("{}-no-eligible-standby", ctx.obs.cluster)];
                return SyncSettings {
                    synchronous_commit: commit,
                    names: sync_standby_names(1, &placeholder),
                    quorum: 1,
                    standbys: placeholder,
                    note: Some(
                        "sync mode with dataDurability required but no standby may be synchronous (all have priority 0): writes wait".into(),
                    ),
                };
            }
            let n = wanted.min(eligible.len());
            let note = (streaming < n).then(|| {
                format!(
                    "dataDurability required: {streaming} of {n} synchronous standbys stream; commits wait until enough return"
                )
            });
            SyncSettings {
                synchronous_commit: commit,
                names: sync_standby_names(n, &eligible),
                quorum: n,
                standbys: eligible,
                note,
            }
        }
        DataDurability::Preferred => {
            let n = wanted.min(streaming);
            let note = (n < wanted).then(|| {
                format!(
                    "dataDurability preferred: {streaming} standbys stream, commits wait for {n} (syncStandbys {wanted})"
                )
            });
            let standbys = if n == 0 { Vec::new() } else { eligible };
            SyncSettings {
                synchronous_commit: commit,
                names: sync_standby_names(n, &standbys),
                quorum: n,
                standbys,
                note,
            }
        }
    }
}

/// The Config action giving `instance` the settings it needs as primary.
pub(crate) fn config_for(ctx: &Ctx, instance: &str) -> super::Action {
    config_with(ctx, instance, &desired(ctx, instance))
}

/// The Config action giving `instance` the synchronous settings `want`.
pub(crate) fn config_with(ctx: &Ctx, instance: &str, want: &SyncSettings) -> super::Action {
    let want = want.clone();
    super::Action::Config {
        instance: instance.to_string(),
        synchronous_commit: want.synchronous_commit,
        synchronous_standby_names: want.names,
        sync_quorum: u32::try_from(want.quorum).unwrap_or(u32::MAX),
        sync_names: want.standbys,
        parameters: super::reconfigure::parameters(ctx.spec),
    }
}

/// The Config action `instance` still needs before it may be promoted, or
/// `None` when it already reports the synchronous settings it would have as
/// primary: they are staged on every standby beforehand (`steady`), since a
/// server in recovery ignores them. Parameters are the `Reconfigure`
/// transition's; each Config carries them too.
pub(crate) fn before_promotion(ctx: &Ctx, instance: &str) -> Option<super::Action> {
    let want = desired(ctx, instance);
    let a = ctx.agent(instance)?;
    let staged = a.synchronous_standby_names.as_deref() == Some(want.names.as_str())
        && a.synchronous_commit.as_deref() == Some(want.synchronous_commit.as_str());
    (!staged).then(|| config_for(ctx, instance))
}

/// Update status.sync before issuing `want` on `primary`: until the primary
/// confirms the new set, keep a set that covers both (more members, lower
/// quorum), so failover never trusts a set that was not in force.
pub(crate) fn record(ctx: &Ctx, st: &mut DbClusterStatus, primary: &str, want: &SyncSettings) {
    let confirmed = ctx
        .agent(primary)
        .and_then(|a| a.synchronous_standby_names.as_deref())
        == Some(want.names.as_str());
    let new = SyncStatus {
        primary: primary.to_string(),
        quorum: i32::try_from(want.quorum).unwrap_or(i32::MAX),
        standbys: want.standbys.clone(),
    };
    if confirmed {
        st.sync = Some(new);
        return;
    }
    let merged = match &st.sync {
        Some(old) if old.primary == primary => {
            let mut standbys = old.standbys.clone();
            for s in &new.standbys {
                if !standbys.contains(s) {
                    standbys.push(s.clone());
                }
            }
            SyncStatus {
                primary: primary.to_string(),
                quorum: if old.quorum == 0 || new.quorum == 0 {
                    old.quorum.max(new.quorum)
                } else {
                    old.quorum.min(new.quorum)
                },
                standbys,
            }
        }
        _ => new,
    };
    st.sync = Some(merged);
}
