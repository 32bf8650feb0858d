//! Fixture builders: `cluster().instances(3).sync().build()` gives a settled,
//! healthy cluster (main-0 primary) whose observations tests then change.

use jiff::Timestamp;

use crate::api::{
    DataDurability, DbClusterSpec, DbClusterStatus, InstanceOverride, Lsn, PrimaryUpdateMethod,
    ReplicationMode,
};
use crate::engine::{
    decide, Action, ActionResult, AgentReport, ConnectedStandby, Decision, InstanceObs,
    Observations, PlatformState, Request, RoleLabel, SwitchoverTarget, SyncState,
};

pub const START_MS: i64 = 1_700_000_000_000;

pub fn lsn(s: &str) -> Lsn {
    s.parse().unwrap()
}

pub fn name(i: u32) -> String {
    format!("main-{i}")
}

pub struct ClusterBuilder {
    spec: DbClusterSpec,
}

pub fn cluster() -> ClusterBuilder {
    ClusterBuilder {
        spec: DbClusterSpec::default(),
    }
}

impl ClusterBuilder {
    pub fn instances(mut self, n: i32) -> Self {
        self.spec.instances = n;
        self
    }
    pub fn sync(mut self) -> Self {
        self.spec.replication.mode = ReplicationMode::Sync;
        self
    }
    pub fn required(mut self) -> Self {
        self.spec.replication.mode = ReplicationMode::Sync;
        self.spec.replication.data_durability = DataDurability::Required;
        self
    }
    pub fn sync_standbys(mut self, n: i32) -> Self {
        self.spec.replication.sync_standbys = n;
        self
    }
    pub fn priority(mut self, ordinal: i32, priority: i32) -> Self {
        self.spec.instance_overrides.push(InstanceOverride {
            ordinal,
            priority: Some(priority),
        });
        self
    }
    pub fn paused(mut self) -> Self {
        self.spec.paused = true;
        self
    }
    pub fn primary_restart_in_place(mut self) -> Self {
        self.spec.primary_update_method = PrimaryUpdateMethod::Restart;
        self
    }
    pub fn failover_disabled(mut self) -> Self {
        self.spec.failover.enabled = false;
        self
    }
    pub fn delay(mut self, d: &str) -> Self {
        self.spec.failover.delay = d.parse().unwrap();
        self
    }

    /// A settled healthy cluster: main-0 primary, the others streaming.
    pub fn build(self) -> Fixture {
        let spec = self.spec;
        let n = u32::try_from(spec.instances).unwrap();
        let mut obs = Observations {
            cluster: "main".into(),
            ..Observations::default()
        };
        for i in 0..n {
            obs.instances.push(if i == 0 {
                primary_obs(&name(0), n)
            } else {
                standby_obs(&name(i), &name(0))
            });
        }
        let mut f = Fixture {
            spec,
            status: DbClusterStatus::default(),
            obs,
            now: START_MS,
            last: Vec::new(),
        };
        f.settle();
        assert_eq!(f.status.current_primary.as_deref(), Some("main-0"));
        f
    }
}

pub fn primary_obs(me: &str, n: u32) -> InstanceObs {
    InstanceObs {
        name: me.into(),
        platform: PlatformState::Running,
        label: Some(RoleLabel::Primary),
        unanswered: None,
        outdated: false,
        deleting: false,
        unschedulable: false,
        agent: Some(AgentReport {
            postgres_running: true,
            in_recovery: false,
            timeline: Some(1),
            current_lsn: Some(lsn("0/5000000")),
            standbys: (0..n)
                .map(name)
                .filter(|s| s != me)
                .map(|s| ConnectedStandby {
                    name: s,
                    sync_state: SyncState::Async,
                    flush_lsn: Some(lsn("0/5000000")),
                })
                .collect(),
            archive_ready: Some(0),
            max_wal_senders: Some(10),
            max_replication_slots: Some(10),
            slots_used: Some(i64::from(n) - 1),
            replication_to: (0..n)
                .map(name)
                .filter(|s| s != me)
                .map(|s| (s, true))
                .collect(),
            system_identifier: Some("7000".into()),
            synchronous_standby_names: Some(String::new()),
            synchronous_commit: Some("local".into()),
            ..AgentReport::default()
        }),
    }
}

pub fn standby_obs(me: &str, upstream: &str) -> InstanceObs {
    InstanceObs {
        name: me.into(),
        platform: PlatformState::Running,
        label: Some(RoleLabel::Standby),
        unanswered: None,
        outdated: false,
        deleting: false,
        unschedulable: false,
        agent: Some(AgentReport {
            postgres_running: true,
            in_recovery: true,
            timeline: Some(1),
            received_lsn: Some(lsn("0/5000000")),
            replayed_lsn: Some(lsn("0/5000000")),
            upstream: Some(upstream.into()),
            streaming: true,
            archive_ready: Some(0),
            max_wal_senders: Some(10),
            max_replication_slots: Some(10),
            slots_used: Some(0),
            system_identifier: Some("7000".into()),
            ..AgentReport::default()
        }),
    }
}

pub struct Fixture {
    pub spec: DbClusterSpec,
    pub status: DbClusterStatus,
    pub obs: Observations,
    pub now: i64,
    /// Actions of the last decision.
    pub last: Vec<Action>,
}

impl Fixture {
    pub fn now(&self) -> Timestamp {
        Timestamp::from_millisecond(self.now).unwrap()
    }

    /// Decide without applying anything.
    pub fn peek(&self) -> Decision {
        decide(&self.spec, &self.status, &self.obs, self.now())
    }

    /// Advance the clock by `ms`, decide, keep the new status. Results and
    /// requests are consumed.
    pub fn tick(&mut self, ms: i64) -> Vec<Action> {
        self.now += ms;
        let d = self.peek();
        self.status = d.status;
        self.obs.results.clear();
        self.obs.requests.clear();
        self.last = d.actions.clone();
        d.actions
    }

    /// Report every action of the last decision as succeeded and apply the
    /// effects that need no simulation (labels, config).
    pub fn ack_all(&mut self) {
        for a in self.last.clone() {
            match &a {
                Action::SetRole { instance, role } => self.inst(instance).label = Some(*role),
                // A follow answers once the standby streams from its new primary.
                Action::Follow {
                    instance, primary, ..
                } => {
                    let ag = self.agent(instance);
                    ag.upstream = Some(primary.clone());
                    ag.streaming = true;
                }
                Action::Config {
                    instance,
                    synchronous_commit,
                    synchronous_standby_names,
                    parameters,
                    ..
                } => {
                    let ag = self.agent(instance);
                    ag.synchronous_commit = Some(synchronous_commit.clone());
                    ag.synchronous_standby_names = Some(synchronous_standby_names.clone());
                    if ag.parameters.is_some() {
                        ag.parameters = Some(parameters.clone());
                    }
                }
                Action::Checks { instance, settings } => {
                    if let Some(ag) = self.inst(instance).agent.as_mut() {
                        ag.check_settings = Some(settings.clone());
                    }
                }
                _ => {}
            }
            if !matches!(a, Action::Event { .. } | Action::RequestDone { .. }) {
                self.obs.results.push(ActionResult::ok(a));
            }
        }
    }

    /// Run a few rounds with everything acknowledged.
    pub fn settle(&mut self) {
        for _ in 0..4 {
            self.tick(100);
            self.ack_all();
        }
        self.tick(100);
    }

    pub fn inst(&mut self, n: &str) -> &mut InstanceObs {
        self.obs.instances.iter_mut().find(|i| i.name == n).unwrap()
    }

    pub fn agent(&mut self, n: &str) -> &mut AgentReport {
        self.inst(n).agent.as_mut().unwrap()
    }

    /// The agent stops answering (partition or crash of the agent).
    pub fn unreachable(&mut self, n: &str) {
        self.inst(n).agent = None;
    }

    /// The platform knows the pod / process is dead.
    pub fn gone(&mut self, n: &str) {
        let i = self.inst(n);
        i.agent = None;
        i.platform = PlatformState::Gone;
    }

    /// The platform no longer shows it (pod deleted, node lost), with no
    /// proof that its processes ended.
    pub fn vanished(&mut self, n: &str) {
        let i = self.inst(n);
        i.agent = None;
        i.platform = PlatformState::Vanished;
    }

    pub fn request(&mut self, r: Request) {
        self.obs.requests.push(r);
    }

    pub fn switchover(&mut self, to: &str) {
        self.request(Request::Switchover {
            to: if to == "any" {
                SwitchoverTarget::Any
            } else {
                SwitchoverTarget::Instance(to.into())
            },
            dry_run: false,
            force: false,
        });
    }

    /// Request a switchover to `to` and answer its first step, the target
    /// leaving `-ro` and then the drop of the old primary's label: the
    /// switchover is at `Checkpoint`, whose CHECKPOINT is not answered yet
    /// (the next tick asks for it again; the tick after its answer stops the
    /// old primary).
    pub fn switchover_checkpointed(&mut self, to: &str) {
        self.switchover(to);
        let a = self.tick(10);
        assert_eq!(
            self.step(),
            Some(("Switchover".into(), "DropPrimaryLabel".into()))
        );
        let target = self
            .status
            .transition
            .as_ref()
            .and_then(|t| t.target.clone())
            .unwrap_or_default();
        if self.inst(&target).label == Some(RoleLabel::Standby) {
            let withdraw = Action::SetRole {
                instance: target,
                role: RoleLabel::Unknown,
            };
            assert!(has(&a, |x| *x == withdraw), "{a:?}");
            self.ack_all();
            let settle = i64::try_from(self.obs.service_settle_ms).unwrap_or(0);
            self.tick(settle + 10);
        }
        let a = self.last.clone();
        let old = self.status.current_primary.clone().unwrap_or_default();
        let drop = Action::SetRole {
            instance: old.clone(),
            role: RoleLabel::Fenced,
        };
        assert!(has(&a, |x| *x == drop), "{a:?}");
        self.ack_all();
        let a = self.tick(10);
        assert_eq!(
            self.step(),
            Some(("Switchover".into(), "Checkpoint".into()))
        );
        let checkpoint = Action::Checkpoint { instance: old };
        assert!(has(&a, |x| *x == checkpoint), "{a:?}");
    }

    pub fn ok(&mut self, a: Action) {
        self.obs.results.push(ActionResult::ok(a));
    }

    pub fn fail(&mut self, a: Action, m: &str) {
        self.obs.results.push(ActionResult::failed(a, m));
    }

    /// Make `n` a promoted primary on timeline `tl`.
    pub fn promoted(&mut self, n: &str, tl: i64) {
        let a = self.agent(n);
        a.in_recovery = false;
        a.timeline = Some(tl);
        a.current_lsn = a.received_lsn;
        a.upstream = None;
        a.streaming = false;
    }

    /// Make `n` a standby streaming from `p`.
    pub fn streams(&mut self, n: &str, p: &str) {
        let a = self.agent(n);
        a.postgres_running = true;
        a.in_recovery = true;
        a.upstream = Some(p.into());
        a.streaming = true;
    }

    pub fn last_history(&self) -> &crate::api::HistoryEntry {
        self.status.history.last().unwrap()
    }

    /// The latest history entry of `kind`.
    pub fn history_of(&self, kind: &str) -> &crate::api::HistoryEntry {
        self.status
            .history
            .iter()
            .rev()
            .find(|h| h.kind.as_str() == kind)
            .unwrap_or_else(|| panic!("no {kind} in {:#?}", self.status.history))
    }

    pub fn step(&self) -> Option<(String, String)> {
        self.status
            .transition
            .as_ref()
            .map(|t| (t.kind.to_string(), t.step.to_string()))
    }
}

/// The primary main-0 reports `standby` with this sync state (pg_stat_replication).
pub fn set_sync_state(f: &mut Fixture, standby: &str, state: SyncState) {
    let primary = f.status.current_primary.clone().unwrap();
    for c in f.agent(&primary).standbys.iter_mut() {
        if c.name == standby {
            c.sync_state = state.clone();
        }
    }
}

pub fn has(actions: &[Action], f: impl Fn(&Action) -> bool) -> bool {
    actions.iter().any(f)
}

pub fn promotes(actions: &[Action]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::Promote { instance, .. } => Some(instance.clone()),
        _ => None,
    })
}

/// Only Events and RequestDone (a refusal or report changes nothing else).
pub fn only_answers(actions: &[Action], baseline: &[Action]) -> bool {
    let rest: Vec<&Action> = actions
        .iter()
        .filter(|a| !matches!(a, Action::Event { .. } | Action::RequestDone { .. }))
        .collect();
    let base: Vec<&Action> = baseline.iter().collect();
    rest == base
}
