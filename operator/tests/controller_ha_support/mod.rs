//! Fakes for the HA loop's flow tests: an API server that holds one DbCluster
//! and its pods, agents that simulate postgres roles, one journal of every
//! call (to check order), and the fixture that drives passes with a fake clock.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tandem::api::agent::{AgentStatus, ChecksRequest, Downstream, LeaseState, Member, WalReceiver};
use tandem::api::Lsn;
use tandem::api::{keys, DbCluster, DbClusterStatus, InstanceRole};
use tandem::controller::error::Error;
use tandem::controller::ha::{
    AgentOps, AgentTarget, ClusterLoop, KubeOps, LoopConfig, Pass, Token,
};
use tandem::controller::validate::Defaults;
use tandem::engine::{Action, Answer, EventType};

/// 0/3000060.
pub const LSN: Lsn = Lsn(0x3000060);
/// A stopped server's shutdown checkpoint: standbys that received everything are past its start.
pub const CHECKPOINT: Lsn = Lsn(0x3000028);

/// One postgres as the fake agent simulates it.
#[derive(Clone, Debug, Default)]
pub struct Sim {
    pub answers: bool,
    pub running: bool,
    pub primary: bool,
    pub timeline: i64,
    pub upstream: Option<String>,
    /// synchronous_commit, synchronous_standby_names, the quorum and its
    /// members as the last Config set them.
    pub sync: Option<SimSync>,
    /// The parameters the last complete POST /config gave it.
    pub parameters: BTreeMap<String, String>,
    /// Parameters it was given that wait for a restart (max_connections).
    pub pending_restart: Vec<String>,
    /// What its health checks were last told (`POST /checks`), with the members' addresses.
    pub checks: Option<ChecksRequest>,
}

/// The synchronous settings a fake primary runs with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimSync {
    pub commit: String,
    pub names: String,
    pub quorum: u32,
    pub members: Vec<String>,
}

#[derive(Default)]
pub struct World {
    pub cluster: Option<DbCluster>,
    pub pods: Vec<Pod>,
    pub sims: BTreeMap<String, Sim>,
    pub journal: Vec<String>,
    pub events: Vec<(EventType, String, String)>,
    /// The StatefulSet's updateRevision.
    pub update_revision: Option<String>,
    /// The API server refuses status writes.
    pub refuse_status: bool,
    /// Reads of DbClusters in this namespace never answer (a dead or slow cluster).
    pub hang_namespace: Option<String>,
    /// How many `GET /status?fresh=true` polls the agents answered.
    pub fresh_polls: usize,
}

pub type Shared = Arc<Mutex<World>>;

pub fn lock(w: &Shared) -> std::sync::MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct FakeKube(pub Shared);
pub struct FakeAgents(pub Shared);

impl KubeOps for FakeKube {
    async fn get_cluster(&self, ns: &str, _: &str) -> Result<Option<DbCluster>, Error> {
        let hang = lock(&self.0).hang_namespace.as_deref() == Some(ns);
        if hang {
            std::future::pending::<()>().await;
        }
        Ok(lock(&self.0).cluster.clone())
    }
    async fn list_pods(&self, _: &str, _: &str) -> Result<Vec<Pod>, Error> {
        Ok(lock(&self.0).pods.clone())
    }
    async fn agent_token(&self, _: &str, _: &str) -> Result<Option<Token>, Error> {
        Ok(Some(Token("secret-token".into())))
    }
    async fn patch_status(&self, _: &DbCluster, status: &DbClusterStatus) -> Result<(), Error> {
        let mut w = lock(&self.0);
        if w.refuse_status {
            w.journal.push("status refused".into());
            return Err(Error::MissingMetadata(
                "status (refused by the fake API server)",
            ));
        }
        let step = status
            .transition
            .as_ref()
            .map(|t| format!("{}/{}", t.kind, t.step))
            .unwrap_or_default();
        w.journal.push(format!("status {step}"));
        if let Some(c) = w.cluster.as_mut() {
            c.status = Some(status.clone());
        }
        Ok(())
    }
    async fn set_role_label(&self, _: &str, pod: &str, role: &str) -> Result<(), Error> {
        let mut w = lock(&self.0);
        w.journal.push(format!("label {pod}={role}"));
        if let Some(p) = w
            .pods
            .iter_mut()
            .find(|p| p.metadata.name.as_deref() == Some(pod))
        {
            p.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(keys::LABEL_ROLE.into(), role.into());
        }
        Ok(())
    }
    async fn delete_pod(&self, _: &str, pod: &str, grace: Option<u32>) -> Result<(), Error> {
        let mut w = lock(&self.0);
        match grace {
            Some(0) => w.journal.push(format!("delete {pod}")),
            _ => w.journal.push(format!("delete-graceful {pod}")),
        }
        w.pods.retain(|p| p.metadata.name.as_deref() != Some(pod));
        if let Some(s) = w.sims.get_mut(pod) {
            s.answers = false;
            s.running = false;
        }
        Ok(())
    }
    async fn update_revision(&self, _: &str, _: &str) -> Result<Option<String>, Error> {
        Ok(lock(&self.0).update_revision.clone())
    }
    async fn remove_annotation(&self, _: &DbCluster, key: &str, value: &str) -> Result<(), Error> {
        let mut w = lock(&self.0);
        w.journal.push(format!("unannotate {key}"));
        if let Some(a) = w
            .cluster
            .as_mut()
            .and_then(|c| c.metadata.annotations.as_mut())
        {
            if a.get(key).map(String::as_str) == Some(value) {
                a.remove(key);
            }
        }
        Ok(())
    }
    async fn event(
        &self,
        _: &DbCluster,
        t: EventType,
        reason: &str,
        note: &str,
    ) -> Result<(), Error> {
        let mut w = lock(&self.0);
        w.journal.push(format!("event {reason}"));
        w.events.push((t, reason.into(), note.into()));
        Ok(())
    }
}

pub fn report(name: &str, sims: &BTreeMap<String, Sim>, token: &Token) -> Option<AgentStatus> {
    assert_eq!(
        token,
        &Token("secret-token".into()),
        "the agent token is passed"
    );
    let s = sims.get(name)?;
    if !s.answers {
        return None;
    }
    let member = |n: &str| Member {
        name: n.into(),
        host: format!("{n}.main-pods.ns.svc"),
        port: 5432,
        agent_url: None,
    };
    let mut st = AgentStatus {
        instance: name.into(),
        ready: s.running,
        postgres_running: s.running,
        timeline: Some(s.timeline),
        system_identifier: Some("7300000000000000001".into()),
        max_wal_senders: Some(10),
        max_replication_slots: Some(10),
        archive_ready: Some(0),
        data_dir: "/var/lib/postgresql/data/pgdata".into(),
        parameters: Some(s.parameters.clone()),
        pending_restart: s.pending_restart.clone(),
        check_settings: s.checks.as_ref().map(|c| c.settings.clone()),
        ..AgentStatus::default()
    };
    if s.running {
        st.synchronous_commit = s.sync.as_ref().map(|y| y.commit.clone());
        st.synchronous_standby_names = s.sync.as_ref().map(|y| y.names.clone());
    }
    if !s.running {
        st.role = InstanceRole::Fenced;
        st.fenced = true;
        st.checkpoint_lsn = Some(CHECKPOINT);
    } else if s.primary {
        st.role = InstanceRole::Primary;
        st.current_lsn = Some(LSN);
        st.lease = LeaseState {
            held: true,
            remaining_ms: Some(5000),
            ..LeaseState::default()
        };
        let member = |n: &String| {
            s.sync
                .as_ref()
                .is_some_and(|y| y.quorum > 0 && y.members.contains(n))
        };
        st.downstreams = sims
            .iter()
            .filter(|(_, o)| o.answers && o.running && o.upstream.as_deref() == Some(name))
            .map(|(n, _)| Downstream {
                name: n.clone(),
                state: "streaming".into(),
                sync_state: if member(n) { "quorum" } else { "async" }.into(),
                flush_lsn: Some(LSN),
                ..Downstream::default()
            })
            .collect();
    } else {
        st.role = InstanceRole::Standby;
        st.received_lsn = Some(LSN);
        st.replayed_lsn = Some(LSN);
        st.upstream = s.upstream.as_deref().map(member);
        let up_ok = s
            .upstream
            .as_ref()
            .and_then(|u| sims.get(u))
            .is_some_and(|u| u.answers && u.running && u.primary);
        st.wal_receiver = Some(WalReceiver {
            status: if up_ok { "streaming" } else { "stopped" }.into(),
            ..WalReceiver::default()
        });
    }
    Some(st)
}

impl AgentOps for FakeAgents {
    async fn status(&self, t: &AgentTarget, _: Duration) -> Option<AgentStatus> {
        let w = lock(&self.0);
        report(&t.instance, &w.sims, &t.token)
    }

    async fn poll_fresh(
        &self,
        t: &AgentTarget,
        _: Duration,
    ) -> Result<AgentStatus, Option<tandem::api::AgentUnanswered>> {
        let mut w = lock(&self.0);
        w.fresh_polls += 1;
        report(&t.instance, &w.sims, &t.token).ok_or(None)
    }

    async fn call(
        &self,
        t: &AgentTarget,
        action: &Action,
        members: &BTreeMap<String, Member>,
        _: &tandem::api::agent::ToolLimits,
    ) -> Result<tandem::engine::Answer, String> {
        let mut w = lock(&self.0);
        let name = t.instance.clone();
        if !w.sims.get(&name).is_some_and(|s| s.answers) {
            return Err(format!("agent of {name} unreachable"));
        }
        let tl = |w: &World, n: &str| w.sims.get(n).map_or(1, |s| s.timeline);
        match action {
            Action::RenewLease { .. } => return Ok(Answer::default()),
            Action::Config {
                synchronous_commit,
                synchronous_standby_names,
                sync_quorum,
                sync_names,
                parameters,
                ..
            } => {
                let s = w.sims.get_mut(&name).ok_or("no sim")?;
                let sync = Some(SimSync {
                    commit: synchronous_commit.clone(),
                    names: synchronous_standby_names.clone(),
                    quorum: *sync_quorum,
                    members: sync_names.clone(),
                });
                let mut changed = s.sync != sync;
                s.sync = sync;
                if s.parameters != *parameters {
                    if s.parameters.get("max_connections") != parameters.get("max_connections") {
                        s.pending_restart = vec!["max_connections".into()];
                    }
                    s.parameters = parameters.clone();
                    changed = true;
                }
                if changed {
                    w.journal.push(format!("agent {name} config"));
                }
                return Ok(Answer::default());
            }
            Action::Checks { settings, .. } => {
                let s = w.sims.get_mut(&name).ok_or("no sim")?;
                s.checks = Some(ChecksRequest {
                    settings: settings.clone(),
                    members: settings
                        .standbys
                        .iter()
                        .filter_map(|n| members.get(n).cloned())
                        .collect(),
                });
                return Ok(Answer::default());
            }
            Action::Promote { .. } => {
                let s = w.sims.get_mut(&name).ok_or("no sim")?;
                if !s.primary {
                    s.timeline += 1;
                }
                (s.primary, s.running, s.upstream) = (true, true, None);
            }
            Action::Stop { .. } => {
                w.sims.get_mut(&name).ok_or("no sim")?.running = false;
            }
            Action::Start { .. } | Action::Restart { .. } => {
                let s = w.sims.get_mut(&name).ok_or("no sim")?;
                s.running = true;
                s.pending_restart.clear();
            }
            Action::Demote { primary, .. }
            | Action::Rewind {
                source: primary, ..
            }
            | Action::Reclone {
                source: primary, ..
            } => {
                let timeline = tl(&w, primary);
                let s = w.sims.get_mut(&name).ok_or("no sim")?;
                (s.primary, s.running, s.timeline) = (false, true, timeline);
                s.upstream = Some(primary.clone());
                s.pending_restart.clear();
            }
            Action::Follow { primary, .. } => {
                w.sims.get_mut(&name).ok_or("no sim")?.upstream = Some(primary.clone());
            }
            _ => {}
        }
        w.journal.push(format!("agent {name} {}", verb(action)));
        Ok(Some("done".to_string()).into())
    }
}

pub fn verb(a: &Action) -> &'static str {
    match a {
        Action::Promote { .. } => "promote",
        Action::Demote { .. } => "demote",
        Action::Follow { .. } => "follow",
        Action::Stop { .. } => "stop",
        Action::Start { .. } => "start",
        Action::Restart { .. } => "restart",
        Action::Rewind { .. } => "rewind",
        Action::Reclone { .. } => "reclone",
        _ => "other",
    }
}

pub fn pod(i: u32) -> Pod {
    let mut p = Pod::default();
    let name = format!("main-{i}");
    p.metadata.name = Some(name.clone());
    p.metadata.namespace = Some("ns".into());
    p.metadata.uid = Some(format!("uid-{i}"));
    p.metadata.labels = Some(BTreeMap::from([
        (keys::LABEL_CLUSTER.to_string(), "main".to_string()),
        (keys::LABEL_INSTANCE.to_string(), name),
    ]));
    p.metadata.creation_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    p.status = Some(PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(format!("10.0.0.{}", i + 10)),
        ..PodStatus::default()
    });
    p
}

/// The loop settings of every fixture.
pub fn loop_config() -> LoopConfig {
    LoopConfig {
        poll_timeout: Duration::from_millis(500),
        starting_grace: Duration::from_secs(60),
        agent_port: keys::AGENT_PORT,
        defaults: Defaults {
            postgres_image: "postgres-image:test".into(),
        },
        service_settle: Duration::ZERO,
    }
}

pub struct Fixture {
    pub world: Shared,
    pub lp: ClusterLoop<FakeKube, FakeAgents>,
    pub now: Timestamp,
}

/// A 3-instance cluster whose postgres main-0 runs as primary and the others stream from it.
pub fn fixture() -> Fixture {
    let cluster: DbCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "tandem.dev/v1alpha1", "kind": "DbCluster",
        "metadata": {"name": "main", "namespace": "ns", "uid": "u-1", "generation": 1},
        "spec": {"instances": 3}
    }))
    .expect("fixture DbCluster");
    let mut sims = BTreeMap::new();
    for i in 0..3 {
        sims.insert(
            format!("main-{i}"),
            Sim {
                answers: true,
                running: true,
                primary: i == 0,
                timeline: 1,
                upstream: (i != 0).then(|| "main-0".to_string()),
                ..Sim::default()
            },
        );
    }
    let world = Arc::new(Mutex::new(World {
        cluster: Some(cluster),
        pods: (0..3).map(pod).collect(),
        sims,
        ..World::default()
    }));
    let config = loop_config();
    let lp = ClusterLoop::new(
        Arc::new(FakeKube(world.clone())),
        Arc::new(FakeAgents(world.clone())),
        "ns",
        "main",
        config,
    );
    Fixture {
        world,
        lp,
        now: Timestamp::from_second(1_800_000_000).expect("timestamp"),
    }
}

impl Fixture {
    /// One pass whose outcome the test inspects (agent calls are not awaited).
    pub async fn try_pass(&mut self) -> Result<Pass, Error> {
        self.now += SignedDuration::from_millis(500);
        self.lp.pass(self.now).await
    }

    pub async fn pass(&mut self) {
        self.now += SignedDuration::from_millis(500);
        let pass = self.lp.pass(self.now).await.expect("pass");
        assert!(matches!(pass, Pass::Done { .. }), "{pass:?}");
        assert!(
            self.lp.settle(Duration::from_secs(5)).await,
            "agent calls finish"
        );
    }

    /// Run passes until `cond` holds (at most `max` passes).
    pub async fn until(&mut self, max: usize, what: &str, cond: impl Fn(&World) -> bool) {
        for _ in 0..max {
            self.pass().await;
            if cond(&lock(&self.world)) {
                return;
            }
        }
        let w = lock(&self.world);
        panic!(
            "{what}: not reached after {max} passes; status {:#?}; journal {:#?}",
            w.cluster.as_ref().and_then(|c| c.status.as_ref()),
            w.journal
        );
    }

    pub async fn settled(&mut self) {
        self.until(40, "cluster settled with main-0 primary", |w| {
            status(w).current_primary.as_deref() == Some("main-0")
                && status(w).transition.is_none()
                && label(w, "main-0") == Some("primary")
                && label(w, "main-1") == Some("standby")
                && label(w, "main-2") == Some("standby")
        })
        .await;
        lock(&self.world).journal.clear();
    }

    pub fn agent_down(&self, name: &str) {
        if let Some(s) = lock(&self.world).sims.get_mut(name) {
            s.answers = false;
        }
    }

    pub fn annotate(&self, key: &str, value: &str) {
        let mut w = lock(&self.world);
        if let Some(c) = w.cluster.as_mut() {
            c.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(key.into(), value.into());
        }
    }
}

pub fn status(w: &World) -> DbClusterStatus {
    w.cluster
        .as_ref()
        .and_then(|c| c.status.clone())
        .unwrap_or_default()
}

pub fn label<'a>(w: &'a World, pod: &str) -> Option<&'a str> {
    w.pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(pod))?
        .metadata
        .labels
        .as_ref()?
        .get(keys::LABEL_ROLE)
        .map(String::as_str)
}

pub fn annotated(w: &World, key: &str) -> bool {
    w.cluster
        .as_ref()
        .and_then(|c| c.metadata.annotations.as_ref())
        .is_some_and(|a| a.contains_key(key))
}

pub fn position(journal: &[String], entry: &str) -> usize {
    journal
        .iter()
        .position(|e| e == entry)
        .unwrap_or_else(|| panic!("{entry:?} not in journal {journal:#?}"))
}

pub fn has_event(w: &World, t: EventType, reason: &str) -> bool {
    w.events.iter().any(|(et, r, _)| *et == t && r == reason)
}
