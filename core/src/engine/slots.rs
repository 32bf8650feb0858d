//! Replication slots no member needs any more: a standby creates its slot
//! (named after it, `api::agent::slot_name`) on the instance it streams
//! from, so after a switchover the demoted primary keeps the slots of the
//! standbys that now stream from the new primary, and a member removed by a
//! scale-in leaves its slot on the primary. Each pins WAL without limit.
//! Between transitions the engine asks each instance's agent to drop the
//! inactive slots of members that are gone or stream from elsewhere; the
//! agent drops only a slot that is not active when it looks. Slots that are
//! not named after a member of this cluster (a user's, logical ones) are
//! never touched. Pure.

use crate::api::agent::slot_name;
use crate::api::keys::instance_name;
use crate::api::DbClusterStatus;

use super::ctx::Ctx;
use super::{event, reasons, Action, EventType};

/// The member of `cluster` a slot is named after, if any.
fn member_of(cluster: &str, slot: &str) -> Option<String> {
    let prefix = format!("{}_", slot_name(cluster));
    let rest = slot.strip_prefix(&prefix)?;
    let ordinal: u32 = rest.parse().ok()?;
    let name = instance_name(cluster, ordinal);
    (slot_name(&name) == slot).then_some(name)
}

/// Whether `member`'s slot on `holder` is needed no more.
fn stale(ctx: &Ctx, primary: &str, holder: &str, member: &str) -> bool {
    if member == holder || !ctx.in_spec(member) {
        // Nobody streams from itself; a member scaled away streams no more.
        return true;
    }
    if holder == primary {
        return false;
    }
    // On a standby (tandem does not cascade): stale once the member is the
    // primary, or is seen streaming from another instance.
    member == primary
        || ctx.agent(member).is_some_and(|a| {
            a.postgres_running
                && a.in_recovery
                && a.streaming
                && a.upstream.as_deref().is_some_and(|u| u != holder)
        })
}

/// Issue the drops, between transitions, while not paused.
pub(crate) fn run(ctx: &Ctx, st: &DbClusterStatus, out: &mut Vec<Action>) {
    if st.transition.is_some() || ctx.paused {
        return;
    }
    let Some(primary) = st.current_primary.as_deref() else {
        return;
    };
    if !ctx.runs_as_primary(primary) {
        return;
    }
    for o in &ctx.obs.instances {
        let holder = o.name.as_str();
        let Some(a) = o.agent.as_ref().filter(|a| a.postgres_running) else {
            continue;
        };
        if a.operation.is_some() || (holder != primary && !a.in_recovery) {
            continue;
        }
        let drop: Vec<String> = a
            .slots
            .iter()
            .filter(|s| !s.active)
            .filter(|s| {
                member_of(&ctx.obs.cluster, &s.name)
                    .is_some_and(|m| stale(ctx, primary, holder, &m))
            })
            .map(|s| s.name.clone())
            .collect();
        if drop.is_empty() {
            continue;
        }
        let action = Action::DropSlots {
            instance: holder.to_string(),
            slots: drop,
        };
        if ctx.succeeded(&action) {
            if let Action::DropSlots { slots, .. } = &action {
                out.push(event(
                    Some(holder),
                    EventType::Normal,
                    reasons::SLOTS_DROPPED,
                    &format!(
                        "dropped replication slots no member streams from on {holder}: {}",
                        slots.join(", ")
                    ),
                ));
            }
            continue;
        }
        out.push(action);
    }
}

#[cfg(test)]
mod tests {
    use super::member_of;

    #[test]
    fn slots_map_back_to_members_of_this_cluster_only() {
        assert_eq!(member_of("main", "main_2").as_deref(), Some("main-2"));
        assert_eq!(member_of("my-db", "my_db_0").as_deref(), Some("my-db-0"));
        assert_eq!(member_of("main", "main_02"), None);
        assert_eq!(member_of("main", "other_1"), None);
        assert_eq!(member_of("main", "main_x"), None);
        assert_eq!(member_of("main", "mainly_1"), None);
    }
}
