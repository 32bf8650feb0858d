//! A read-only view over one decision's inputs (spec, observations, now) with
//! the small questions every part of the engine asks. Pure, no I/O.

use std::cell::Cell;

use jiff::Timestamp;

use crate::api::keys::{instance_name, instance_ordinal};
use crate::api::{
    DataDurability, DbClusterSpec, DbClusterStatus, DurationString, Lsn, ReplicationMode,
    ReplicationSpec, TransitionKind,
};

use super::types::{AgentReport, InstanceObs, Observations, Outcome, PlatformState};
use super::{Action, StopMode};

/// Inputs of one decision.
pub(crate) struct Ctx<'a> {
    pub spec: &'a DbClusterSpec,
    pub obs: &'a Observations,
    pub now: i64,
    /// Instances of the spec, by ordinal.
    pub names: Vec<String>,
    pub paused: bool,
    /// The replication settings the primary is run with now: those in force
    /// (status.durability.applied), or the target of a durability change in progress.
    pub replication: ReplicationSpec,
    /// The replication settings last confirmed on the primary.
    pub applied: ReplicationSpec,
    /// The earliest instant (ms) after now at which a condition this
    /// decision waits on ends by the clock alone (a lease running out, a
    /// detection window passing): the platform decides again then.
    wake: Cell<Option<i64>>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        spec: &'a DbClusterSpec,
        obs: &'a Observations,
        status: &DbClusterStatus,
        now: Timestamp,
    ) -> Self {
        let count = u32::try_from(spec.instances.max(1)).unwrap_or(1);
        // A primary beyond the spec's count stays until it has been switched away.
        let primary_end = status
            .current_primary
            .as_deref()
            .and_then(|p| instance_ordinal(&obs.cluster, p))
            .map_or(0, |o| o.saturating_add(1));
        let names = (0..count.max(primary_end))
            .map(|o| instance_name(&obs.cluster, o))
            .collect();
        let applied = status
            .durability
            .as_ref()
            .map_or_else(|| spec.replication.clone(), |d| d.applied.clone());
        let replication = status
            .transition
            .as_ref()
            .filter(|t| t.kind == TransitionKind::DurabilityChange)
            .and_then(|t| t.data.durability.durability_target.clone())
            .unwrap_or_else(|| applied.clone());
        Ctx {
            spec,
            obs,
            now: now.as_millisecond(),
            names,
            paused: spec.paused || obs.paused_annotation,
            replication,
            applied,
            wake: Cell::new(None),
        }
    }

    /// A condition waited on ends at `at_ms` by the clock alone: decide again then.
    pub fn wake_at(&self, at_ms: i64) {
        if at_ms > self.now && self.wake.get().is_none_or(|w| at_ms < w) {
            self.wake.set(Some(at_ms));
        }
    }

    /// The earliest instant given to [`Ctx::wake_at`].
    pub fn wake(&self) -> Option<i64> {
        self.wake.get()
    }

    /// Why automation is paused, for messages.
    pub fn paused_by(&self) -> &'static str {
        if self.spec.paused {
            "spec.paused"
        } else {
            "annotation tandem.dev/paused=true"
        }
    }

    pub fn obs(&self, name: &str) -> Option<&'a InstanceObs> {
        self.obs.instance(name)
    }

    /// The agent's report, when it answered this poll.
    pub fn agent(&self, name: &str) -> Option<&'a AgentReport> {
        self.obs(name).and_then(|o| o.agent.as_ref())
    }

    pub fn reachable(&self, name: &str) -> bool {
        self.agent(name).is_some()
    }

    /// "<name>'s agent does not answer", with the reason when the platform knows it.
    pub fn unanswered(&self, name: &str) -> String {
        format!(
            "{name}'s agent does not answer{}",
            self.why_unanswered(name)
        )
    }

    /// Why `name`'s agent did not answer, as a suffix for "… does not answer"
    /// ("" when the platform does not know).
    pub fn why_unanswered(&self, name: &str) -> &'static str {
        self.obs(name)
            .and_then(|o| o.unanswered)
            .map_or("", |u| u.explain())
    }

    /// The platform saw its processes end: proof that it cannot write.
    pub fn gone(&self, name: &str) -> bool {
        self.obs(name)
            .is_some_and(|o| o.platform == PlatformState::Gone)
    }

    /// The platform no longer has it, with or without proof that its
    /// processes ended: enough to start a failover at once, not to promote.
    pub fn vanished(&self, name: &str) -> bool {
        self.obs(name)
            .is_some_and(|o| matches!(o.platform, PlatformState::Gone | PlatformState::Vanished))
    }

    /// postgres answers through its agent.
    pub fn running(&self, name: &str) -> bool {
        self.agent(name).is_some_and(|a| a.postgres_running)
    }

    /// Runs as a primary (out of recovery).
    pub fn runs_as_primary(&self, name: &str) -> bool {
        self.agent(name)
            .is_some_and(|a| a.postgres_running && !a.in_recovery)
    }

    /// Runs as a standby (in recovery).
    pub fn runs_as_standby(&self, name: &str) -> bool {
        self.agent(name)
            .is_some_and(|a| a.postgres_running && a.in_recovery)
    }

    /// Streams from `primary`.
    pub fn streams_from(&self, name: &str, primary: &str) -> bool {
        self.agent(name).is_some_and(|a| {
            a.postgres_running
                && a.in_recovery
                && a.streaming
                && a.upstream.as_deref() == Some(primary)
        })
    }

    pub fn ordinal(&self, name: &str) -> u32 {
        instance_ordinal(&self.obs.cluster, name).unwrap_or(u32::MAX)
    }

    /// The agent is busy with a long operation (clone, rewind…).
    pub fn busy(&self, name: &str) -> bool {
        self.agent(name).is_some_and(|a| a.operation.is_some())
    }

    /// Named by the spec (ordinal below spec.instances).
    pub fn exists(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name) && self.in_spec(name)
    }

    /// Ordinal below spec.instances (not being scaled away).
    pub fn in_spec(&self, name: &str) -> bool {
        i64::from(self.ordinal(name)) < i64::from(self.spec.instances)
    }

    /// Instances the platform must keep (0..n).
    pub fn keep_instances(&self, status: &DbClusterStatus) -> u32 {
        let spec = u32::try_from(self.spec.instances.max(1)).unwrap_or(1);
        let primary_end = status
            .current_primary
            .as_deref()
            .and_then(|p| instance_ordinal(&self.obs.cluster, p))
            .map_or(0, |o| o.saturating_add(1));
        spec.max(primary_end)
    }

    /// "main-0, main-1, main-2" (the spec's instances).
    pub fn name_list(&self) -> String {
        self.names
            .iter()
            .filter(|n| self.in_spec(n))
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn priority(&self, name: &str) -> i32 {
        self.spec.priority_of(self.ordinal(name))
    }

    pub fn timeline(&self, name: &str) -> Option<i64> {
        self.agent(name).and_then(|a| a.timeline)
    }

    /// The furthest WAL position the instance has: its write position on a
    /// primary, what it received (or replayed) on a standby, its checkpoint when stopped.
    pub fn lsn(&self, name: &str) -> Option<Lsn> {
        let a = self.agent(name)?;
        if a.postgres_running && !a.in_recovery {
            return a.current_lsn;
        }
        [
            a.received_lsn,
            a.replayed_lsn,
            a.current_lsn,
            a.checkpoint_lsn,
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// (timeline, lsn) for comparing how advanced two copies are.
    pub fn position(&self, name: &str) -> (i64, Lsn) {
        (
            self.timeline(name).unwrap_or(0),
            self.lsn(name).unwrap_or_default(),
        )
    }

    /// Sync with dataDurability required: in force, or being put in force (the stricter rule holds while either does).
    pub fn sync_required(&self) -> bool {
        required(&self.replication) || required(&self.applied)
    }

    pub fn detection_ms(&self) -> i64 {
        ms_of(self.spec.failover.detection_timeout.duration())
    }
    pub fn delay_ms(&self) -> i64 {
        ms_of(self.spec.failover.delay.duration())
    }
    pub fn ttl_ms(&self) -> i64 {
        ms_of(self.spec.failover.lease_ttl.duration()).max(1)
    }
    pub fn shutdown_ms(&self) -> i64 {
        ms_of(self.spec.switchover.shutdown_timeout.duration()).max(1)
    }

    /// How a switchover stops the old primary (smart first only when
    /// spec.switchover.smartShutdownTimeout is set: it lengthens the write pause).
    pub fn switchover_stop(&self) -> StopPlan {
        StopPlan::new(
            &self.spec.switchover.smart_shutdown_timeout,
            &self.spec.switchover.shutdown_timeout,
        )
    }

    /// How a restart stops an instance (spec.restart).
    pub fn restart_stop(&self) -> StopPlan {
        StopPlan::new(
            &self.spec.restart.smart_shutdown_timeout,
            &self.spec.restart.shutdown_timeout,
        )
    }

    /// The outcome of `action` reported in this poll's results.
    pub fn result(&self, action: &Action) -> Option<&'a Outcome> {
        self.obs
            .results
            .iter()
            .rev()
            .find(|r| &r.action == action)
            .map(|r| &r.outcome)
    }

    pub fn succeeded(&self, action: &Action) -> bool {
        matches!(self.result(action), Some(Outcome::Succeeded { .. }))
    }

    /// The failure message of `action`, if it failed.
    pub fn failure(&self, action: &Action) -> Option<&'a str> {
        match self.result(action) {
            Some(Outcome::Failed { message }) => Some(message),
            _ => None,
        }
    }

    pub fn stamp(&self) -> String {
        stamp(self.now)
    }

    /// Milliseconds from a recorded RFC 3339 time to now (0 when unparsable).
    pub fn since(&self, recorded: Option<&str>) -> i64 {
        recorded
            .and_then(parse_ms)
            .map(|t| (self.now - t).max(0))
            .unwrap_or(0)
    }
}

/// A stop's escalation: its first mode (smart when it has a smart step)
/// and the bound of each step, as the agent applies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StopPlan {
    pub first: StopMode,
    pub smart_ms: u64,
    pub fast_ms: u64,
}

impl StopPlan {
    fn new(smart: &DurationString, fast: &DurationString) -> Self {
        let smart_ms = u64::try_from(smart.duration().as_millis()).unwrap_or(u64::MAX);
        let fast_ms = u64::try_from(fast.duration().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        StopPlan {
            first: if smart_ms > 0 {
                StopMode::Smart
            } else {
                StopMode::Fast
            },
            smart_ms,
            fast_ms,
        }
    }

    fn smart(&self, mode: StopMode) -> Option<u64> {
        (mode == StopMode::Smart).then_some(self.smart_ms)
    }

    /// The stop of `instance` starting at `mode`.
    pub fn stop(&self, instance: &str, mode: StopMode) -> Action {
        Action::Stop {
            instance: instance.to_string(),
            mode,
            timeout_ms: self.fast_ms,
            smart_timeout_ms: self.smart(mode),
        }
    }

    /// The restart of `instance` starting at `mode`.
    pub fn restart(&self, instance: &str, mode: StopMode) -> Action {
        Action::Restart {
            instance: instance.to_string(),
            mode,
            timeout_ms: self.fast_ms,
            smart_timeout_ms: self.smart(mode),
        }
    }
}

/// Sync mode with dataDurability required.
pub(crate) fn required(r: &ReplicationSpec) -> bool {
    r.mode == ReplicationMode::Sync && r.data_durability == DataDurability::Required
}

fn ms_of(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 text of a millisecond timestamp.
pub(crate) fn stamp(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Milliseconds since the epoch of an RFC 3339 text.
pub(crate) fn parse_ms(s: &str) -> Option<i64> {
    s.parse::<Timestamp>().ok().map(|t| t.as_millisecond())
}

/// "1.5s", "250ms".
pub(crate) fn secs(ms: i64) -> String {
    if ms.abs() < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}
