//! The local platform of `tandem local up`: [`Driver`] translates between
//! the shared HA loop ([`crate::platform::HaLoop`]) and local processes —
//! it observes the agents and processes (respawning dead agents as a
//! StatefulSet would), persists the status to DIR/status.json, moves the
//! endpoints, fences by killing processes — and answers user requests. Does I/O.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use std::convert::Infallible;

use crate::agent::client::AgentClient;
use crate::api::agent::{AgentStatus, Member, ToolLimits};
use crate::api::{
    keys, DataDurability, DbClusterSpec, DbClusterStatus, HistoryEntry, HistoryKind,
    ReplicationMode, SynchronousCommit, WalReceiverState,
};
use crate::engine::{
    self, Action, EventType, InstanceObs, Observations, PlatformState, Request, RoleLabel,
};
use crate::platform::{self as shared, AgentCall, HaLoop, Observe, Observed, Platform};

use super::control::{KillSignal, LocalRequest, Outcome, Refusal, Submission};
use super::procs::{self, AgentLaunch, Agents};
use super::report::{describe_progress, StatusReport};
use super::requests::{Pending, Recorded, Reply, Requests};
use super::state::{write_private, LocalState};

/// How often the loop runs.
pub const TICK: Duration = Duration::from_millis(200);
/// How long after its process died an agent is started again.
const RESPAWN_DELAY: Duration = Duration::from_secs(1);
/// How long a freshly started agent counts as starting.
const STARTING_GRACE: Duration = Duration::from_secs(15);

/// What survives a restart of `local up` besides state.json: the engine's status and the role labels.
#[derive(Serialize, Deserialize, Default)]
pub struct Persisted {
    pub status: DbClusterStatus,
    #[serde(default)]
    pub labels: BTreeMap<String, RoleLabel>,
    /// Changes made at runtime (pause, set) on top of the manifest.
    #[serde(default)]
    pub paused: Option<bool>,
    #[serde(default)]
    pub replication: Option<crate::api::ReplicationSpec>,
}

impl Persisted {
    /// File name inside DIR.
    pub const FILE: &'static str = "status.json";
}

/// One instance as the loop tracks it.
pub struct Tracked {
    pub launch: AgentLaunch,
    pub client: AgentClient,
    pub last_report: Option<AgentStatus>,
    pub last_seen: Option<Instant>,
    pub died_at: Option<Instant>,
    pub started_at: Option<Instant>,
    /// Its status polls.
    pub poll: super::poll::Poll,
}

/// The running local cluster.
pub struct Driver {
    pub name: String,
    pub dir: PathBuf,
    pub base_spec: DbClusterSpec,
    pub persisted: Persisted,
    pub state: LocalState,
    pub members: BTreeMap<String, Tracked>,
    pub agents: Agents,
    pub requests: Requests,
    pub rw: watch::Sender<Option<SocketAddr>>,
    pub ro: watch::Sender<Option<SocketAddr>>,
    pub report: watch::Sender<StatusReport>,
    pub last_saved: String,
    /// The history as the current pass found it (to tell which entries answer a request).
    pub before: Vec<HistoryEntry>,
}

impl Driver {
    /// The spec in force: the manifest plus runtime changes.
    pub fn spec(&self) -> DbClusterSpec {
        let mut s = self.base_spec.clone();
        if let Some(p) = self.persisted.paused {
            s.paused = p;
        }
        if let Some(r) = &self.persisted.replication {
            s.replication = r.clone();
        }
        s
    }

    fn addresses(&self) -> BTreeMap<String, Member> {
        self.members
            .iter()
            .map(|(n, m)| {
                (
                    n.clone(),
                    Member {
                        name: n.clone(),
                        host: m.launch.address.to_string(),
                        port: m.launch.pg_port,
                        agent_url: Some(format!("http://{}", m.launch.agent)),
                    },
                )
            })
            .collect()
    }

    fn pg_addr(&self, name: &str) -> Option<SocketAddr> {
        self.members
            .get(name)
            .map(|m| SocketAddr::new(m.launch.address, m.launch.pg_port))
    }

    pub(crate) fn save(&mut self) {
        let Ok(text) = serde_json::to_string_pretty(&self.persisted) else {
            return;
        };
        if text == self.last_saved {
            return;
        }
        let path = self.dir.join(Persisted::FILE);
        match write_private(&path, text.as_bytes()) {
            Ok(()) => self.last_saved = text,
            Err(e) => warn!(path = %path.display(), error = %e, "cannot persist status"),
        }
    }

    /// Start agents whose process is gone (after a short delay), as a StatefulSet restarts pods.
    fn respawn(&mut self) {
        let primary = self.persisted.status.current_primary.clone();
        let names: Vec<String> = self.members.keys().cloned().collect();
        for name in names {
            let alive = self.agents.pid(&name).is_some();
            let Some(m) = self.members.get_mut(&name) else {
                continue;
            };
            if alive {
                m.died_at = None;
                continue;
            }
            // As when a pod goes: nothing of the instance survives its agent,
            // not even backends the postmaster's death orphaned (a frozen one
            // never notices it); until they are gone the instance is only
            // out of view (see `instances`).
            let killed = procs::kill_server(&m.launch.data_dir);
            if killed > 0 {
                warn!(instance = %name, killed, "agent gone: killed what was left of its postgres");
            }
            let died = *m.died_at.get_or_insert_with(Instant::now);
            if died.elapsed() < RESPAWN_DELAY {
                continue;
            }
            let source = match &primary {
                Some(p) if *p != name => Some(p.clone()),
                Some(_) => None,
                None if keys::instance_ordinal(&self.name, &name) == Some(0) => None,
                None => Some(keys::instance_name(&self.name, 0)),
            };
            let from = source.and_then(|s| {
                self.members
                    .get(&s)
                    .map(|sm| SocketAddr::new(sm.launch.address, sm.launch.pg_port).to_string())
            });
            let Some(m) = self.members.get_mut(&name) else {
                continue;
            };
            match self.agents.start(&m.launch, from.as_deref()) {
                Ok(pid) => {
                    m.died_at = None;
                    m.started_at = Some(Instant::now());
                    if let Some(i) = self.state.instances.iter_mut().find(|i| i.name == name) {
                        i.agent_pid = pid;
                    }
                    if let Err(e) = self.state.save(&self.dir) {
                        warn!(error = %e, "cannot update state.json");
                    }
                }
                Err(e) => warn!(instance = %name, error = %e, "cannot start agent"),
            }
        }
    }

    async fn instances(&mut self) -> Vec<InstanceObs> {
        // During a transition each step waits on what the last one changed,
        // and a request's prechecks judge the cluster as it is when it was
        // made (a standby's lag compares two agents' probes): ask for a probe
        // begun now rather than the agent's latest, up to a probe interval old.
        let fresh = self.persisted.status.transition.is_some() || !self.requests.pending.is_empty();
        let answers = super::poll::poll_all(
            self.members
                .iter_mut()
                .map(|(n, m)| (n.as_str(), &mut m.poll, &m.client)),
            fresh,
        )
        .await;
        let mut out = Vec::new();
        for (name, polled) in answers {
            let unanswered = polled.as_ref().err().copied();
            let answer = polled.ok();
            let alive = self.agents.pid(&name).is_some();
            let label = self.persisted.labels.get(&name).copied();
            let Some(m) = self.members.get_mut(&name) else {
                continue;
            };
            if let Some(s) = &answer {
                m.last_seen = Some(Instant::now());
                m.last_report = Some(s.clone());
            }
            let platform = if !alive {
                // The agent's end proves nothing of postgres: a fence or a
                // node loss kills both, and a frozen server's processes die
                // when the kernel gets to them. Until then it is only gone
                // from view, and promotion waits.
                if procs::server_gone(&m.launch.data_dir) {
                    PlatformState::Gone
                } else {
                    PlatformState::Vanished
                }
            } else if answer.is_none() && m.started_at.is_some_and(|t| t.elapsed() < STARTING_GRACE)
            {
                PlatformState::Starting
            } else {
                PlatformState::Running
            };
            if !alive {
                m.last_report = None;
            }
            out.push(InstanceObs {
                name,
                platform,
                label,
                agent: answer.as_ref().map(shared::report),
                unanswered,
                ..InstanceObs::default()
            });
        }
        out
    }

    /// The local platform's upkeep after a pass: answer the requests whose
    /// transition ended, point the endpoints, publish the status report.
    fn after_pass(&mut self) {
        self.save();
        self.route();
        let spec = self.spec();
        // Published before any answer: a request's effect shows in
        // `tandem local status` by the time its command returns.
        self.publish(&spec);
        self.requests.finish(&self.persisted.status);
    }

    /// Answer `reply` once the engine has recorded a history entry of one of `kinds`.
    pub fn answer_when_recorded(&mut self, kinds: Vec<HistoryKind>, reply: Reply) {
        self.requests.recorded.push(Recorded {
            kinds,
            before: self.persisted.status.history.clone(),
            reply,
        });
    }

    /// Point the endpoints: rw at the instance labelled primary, ro at a streaming standby.
    fn route(&mut self) {
        let primary = self
            .persisted
            .labels
            .iter()
            .find(|(_, r)| **r == RoleLabel::Primary)
            .map(|(n, _)| n.clone());
        let rw = primary.as_deref().and_then(|p| self.pg_addr(p));
        self.rw.send_if_modified(|cur| {
            if *cur != rw {
                info!(endpoint = "rw", to = ?rw, "endpoint moved");
                *cur = rw;
                true
            } else {
                false
            }
        });
        let current_ro = *self.ro.borrow();
        let streaming: Vec<SocketAddr> = self
            .persisted
            .labels
            .iter()
            .filter(|(_, r)| **r == RoleLabel::Standby)
            .filter(|(n, _)| {
                self.members
                    .get(*n)
                    .and_then(|m| m.last_report.as_ref())
                    .is_some_and(|s| {
                        s.postgres_running
                            && s.wal_receiver
                                .as_ref()
                                .is_some_and(|w| w.status == WalReceiverState::Streaming)
                    })
            })
            .filter_map(|(n, _)| self.pg_addr(n))
            .collect();
        let ro = if current_ro.is_some_and(|c| streaming.contains(&c)) {
            current_ro
        } else {
            streaming.first().copied()
        };
        self.ro.send_if_modified(|cur| {
            if *cur != ro {
                *cur = ro;
                true
            } else {
                false
            }
        });
    }

    fn publish(&mut self, spec: &DbClusterSpec) {
        let st = &self.persisted.status;
        // The mode in force (a refused or pending change is not).
        let mode = match st
            .durability
            .as_ref()
            .map_or(spec.replication.mode, |d| d.applied.mode)
        {
            ReplicationMode::Async => "async",
            ReplicationMode::Sync => "sync",
        };
        let mut report = StatusReport::from_status(&self.name, mode, st, jiff::Timestamp::now());
        // What the process table and the last answers tell beyond status.
        for r in &mut report.instances {
            let m = self.members.get(&r.name);
            let alive = m.is_some_and(|m| m.died_at.is_none());
            let rep = m.and_then(|m| m.last_report.as_ref());
            let fresh = m
                .and_then(|m| m.last_seen)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(2));
            let progress = st
                .instances
                .iter()
                .find(|i| i.name == r.name)
                .and_then(|i| i.progress.as_ref());
            r.status = match (alive, fresh, rep) {
                (true, true, Some(a)) if !a.postgres_running && progress.is_some() => {
                    format!(
                        "stopped ({})",
                        progress.map(describe_progress).unwrap_or_default()
                    )
                }
                (false, _, _) => "down".to_string(),
                (true, true, Some(a)) if a.fenced => "fenced".to_string(),
                (true, true, Some(a)) if a.postgres_running => "running".to_string(),
                (true, true, Some(a)) => a
                    .activity
                    .clone()
                    .map(|a| format!("stopped ({a})"))
                    .unwrap_or_else(|| "stopped".into()),
                (true, _, _)
                    if m.and_then(|m| m.started_at)
                        .is_some_and(|t| t.elapsed() < STARTING_GRACE) =>
                {
                    "starting".into()
                }
                _ => "unreachable".into(),
            };
            r.last_seen_secs = m
                .and_then(|m| m.last_seen)
                .map(|t| t.elapsed().as_secs_f64());
            r.address = self.pg_addr(&r.name);
        }
        self.report.send_replace(report);
    }

    /// Handle one control request; returns true when the cluster must stop.
    /// Requests for the engine go to it as they are: whether a named instance
    /// exists is the engine's to answer, like every other refusal.
    pub fn submit(&mut self, (req, reply): Submission) -> bool {
        let ok = |message: String| {
            Ok(Outcome {
                message,
                detail: vec![],
            })
        };
        let engine_request = match req {
            LocalRequest::Switchover { to, dry_run, force } => {
                let to = if to == keys::ANY {
                    engine::SwitchoverTarget::Any
                } else {
                    engine::SwitchoverTarget::Instance(to)
                };
                engine::Request::Switchover { to, dry_run, force }
            }
            LocalRequest::Rejoin { name, dry_run } => engine::Request::Rejoin {
                instance: name,
                dry_run,
            },
            LocalRequest::Reclone { name } => engine::Request::Reclone { instance: name },
            LocalRequest::Promote { name, force } => engine::Request::Promote {
                instance: name,
                force,
            },
            LocalRequest::Restart { name } => {
                let target = if name == keys::ALL {
                    engine::RestartTarget::All
                } else {
                    engine::RestartTarget::Instance(name)
                };
                engine::Request::Restart { target }
            }
            LocalRequest::Pause | LocalRequest::Unpause => {
                let pause = matches!(req, LocalRequest::Pause);
                self.persisted.paused = Some(pause);
                self.save();
                if self.persisted.status.paused == pause {
                    let _ = reply.send(ok(if pause {
                        "already paused: no automatic failover, rejoin or rolling restart".into()
                    } else {
                        "not paused: automatic failover, rejoin and rolling restarts are on".into()
                    }));
                } else {
                    // Answered by the engine's history entry, the status showing it.
                    let kind = if pause {
                        HistoryKind::Pause
                    } else {
                        HistoryKind::Unpause
                    };
                    self.answer_when_recorded(vec![kind], reply);
                }
                return false;
            }
            LocalRequest::Set {
                mode,
                synchronous_commit,
                data_durability,
                sync_standbys,
            } => {
                match self.set(mode, synchronous_commit, data_durability, sync_standbys) {
                    Ok(Some(answer)) => {
                        let _ = reply.send(Ok(answer));
                    }
                    Ok(None) => {
                        self.answer_when_recorded(vec![HistoryKind::DurabilityChange], reply)
                    }
                    Err(refusal) => {
                        let _ = reply.send(Err(refusal));
                    }
                }
                return false;
            }
            LocalRequest::Kill {
                name,
                signal,
                agent,
            } => {
                let _ = reply.send(self.kill(&name, signal, agent));
                return false;
            }
            LocalRequest::Apply { name, spec } => {
                let _ = reply.send(self.apply(&name, *spec));
                return false;
            }
            LocalRequest::Down => {
                let _ = reply.send(ok(format!("stopping cluster {}", self.name)));
                return true;
            }
        };
        self.requests.pending.push(Pending {
            request: engine_request,
            reply: Some(reply),
        });
        false
    }

    /// Change the replication settings in force: the engine runs the change
    /// as a DurabilityChange transition (or refuses it), whose history entry
    /// answers (`Ok(None)`); `Ok(Some(_))` when there is nothing to change.
    fn set(
        &mut self,
        mode: Option<ReplicationMode>,
        synchronous_commit: Option<SynchronousCommit>,
        durability: Option<DataDurability>,
        sync_standbys: Option<i32>,
    ) -> Result<Option<Outcome>, Refusal> {
        let refuse = |e: String| {
            Err(Refusal {
                error: e,
                detail: vec![],
            })
        };
        let mut r = self.spec().replication;
        if let Some(m) = mode {
            r.mode = m;
        }
        if let Some(s) = synchronous_commit {
            r.synchronous_commit = s;
        }
        if let Some(d) = durability {
            r.data_durability = d;
        }
        if let Some(n) = sync_standbys {
            r.sync_standbys = n;
        }
        let instances = self.base_spec.instances;
        if r.mode == ReplicationMode::Sync && r.sync_standbys >= instances {
            return refuse(format!(
                "set refused: syncStandbys {} needs more standbys than the cluster has ({instances} instances)",
                r.sync_standbys
            ));
        }
        self.change_replication(r)
    }

    /// Make `r` the replication settings of the spec in force (over the
    /// manifest's): the engine then runs a DurabilityChange to them, or
    /// refuses it. `Ok(None)`: answer with the engine's DurabilityChange
    /// history entry ([`Self::answer_when_recorded`]); `Ok(Some(_))`:
    /// nothing to change; `Err`: asked again for a change already refused.
    pub fn change_replication(
        &mut self,
        r: crate::api::ReplicationSpec,
    ) -> Result<Option<Outcome>, Refusal> {
        let before = self.spec().replication;
        let in_force = self
            .persisted
            .status
            .durability
            .as_ref()
            .map(|d| d.applied.clone());
        self.persisted.replication = Some(r.clone());
        self.save();
        if in_force.as_ref() == Some(&r) {
            // Nothing to change (a pending refused change is withdrawn).
            return Ok(Some(Outcome {
                message: "replication settings unchanged: they are in force".into(),
                detail: vec![],
            }));
        }
        if before == r {
            // Asked again: the engine has answered already (blockedBy says how).
            return match &self.persisted.status.blocked_by {
                Some(why) => Err(Refusal {
                    error: why.clone(),
                    detail: vec![],
                }),
                None => Ok(Some(Outcome {
                    message: "replication change already under way".into(),
                    detail: vec![],
                })),
            };
        }
        Ok(None)
    }

    fn kill(&mut self, name: &str, signal: KillSignal, agent: bool) -> Result<Outcome, Refusal> {
        let Some(m) = self.members.get(name) else {
            let names: Vec<String> = self.members.keys().cloned().collect();
            return Err(Refusal {
                error: format!(
                    "instance {name} does not exist (instances: {})",
                    names.join(", ")
                ),
                detail: vec![],
            });
        };
        let sig = match signal {
            KillSignal::Kill => Signal::SIGKILL,
            KillSignal::Stop => Signal::SIGSTOP,
            KillSignal::Cont => Signal::SIGCONT,
        };
        let data_dir = m.launch.data_dir.clone();
        if agent {
            self.agents
                .signal_agent(name, sig)
                .map(|()| Outcome {
                    message: format!("sent SIG{signal} to the agent of {name}"),
                    detail: vec![],
                })
                .map_err(|e| Refusal {
                    error: e.to_string(),
                    detail: vec![],
                })
        } else {
            procs::signal_postgres(name, &data_dir, sig)
                .map(|pid| Outcome {
                    message: format!("sent SIG{signal} to postgres of {name} (pid {pid})"),
                    detail: vec![],
                })
                .map_err(|e| Refusal {
                    error: e.to_string(),
                    detail: vec![],
                })
        }
    }

    /// Stop every agent (they stop postgres) and mark the cluster as not running.
    pub async fn shutdown(&mut self) {
        self.requests.abandon("the cluster is stopping");
        self.agents.stop_all(Duration::from_secs(90)).await;
        self.save();
        self.state.pid = 0;
        for i in &mut self.state.instances {
            i.agent_pid = 0;
        }
        if let Err(e) = self.state.save(&self.dir) {
            warn!(error = %e, "cannot update state.json");
        }
    }
}

/// One pass of the shared loop over the local platform, then its upkeep;
/// when to pass again at the latest, if the engine waits for the clock.
#[tracing::instrument(name = "ha_pass", skip_all, fields(cluster = %ha.platform.name))]
pub async fn tick(ha: &mut HaLoop<Driver>) -> Option<jiff::Timestamp> {
    let wake_at = match ha.pass(jiff::Timestamp::now()).await {
        Ok(crate::platform::Pass::Decided {
            keep_instances,
            wake_at,
            ..
        }) => {
            ha.platform.scale(keep_instances);
            wake_at
        }
        Ok(crate::platform::Pass::Skipped(never)) => match never {},
        Err(never) => match never {},
    };
    ha.platform.after_pass();
    wake_at
}

impl Platform for Driver {
    type Skip = Infallible;
    type Error = Infallible;

    async fn observe(&mut self, _now: jiff::Timestamp) -> Result<Observe<Infallible>, Infallible> {
        self.respawn();
        // The primary's agent reports whether it can open a replication
        // connection to each standby (the switchover precheck), as on Kubernetes.
        let instances = self.instances().await;
        let requests = self.requests.for_engine();
        self.before = self.persisted.status.history.clone();
        Ok(Observe::Ready(Box::new(Observed {
            spec: self.spec(),
            status: self.persisted.status.clone(),
            obs: Observations {
                cluster: self.name.clone(),
                generation: None,
                paused_annotation: false,
                instances,
                requests,
                results: Vec::new(),
                // The local endpoints move at once.
                service_settle_ms: 0,
            },
            members: self.addresses(),
        })))
    }

    async fn persist(&mut self, status: &DbClusterStatus) -> Result<(), Infallible> {
        self.persisted.status = status.clone();
        self.save();
        Ok(())
    }

    async fn set_role(&mut self, instance: &str, role: RoleLabel) -> Result<(), String> {
        if self.persisted.labels.get(instance) != Some(&role) {
            info!(role = role.as_str(), "role label set");
            self.persisted.labels.insert(instance.to_string(), role);
            self.save();
            self.route();
        }
        Ok(())
    }

    async fn fence(&mut self, instance: &str) -> Result<(), String> {
        warn!("fencing: killing the agent and postgres of an unreachable instance");
        // postgres first: killing the agent first kills the postmaster
        // (PR_SET_PDEATHSIG) and orphans its children, which a frozen
        // server leaves behind still attached to its shared memory.
        if let Some(m) = self.members.get(instance) {
            let _ = procs::signal_postgres(instance, &m.launch.data_dir, Signal::SIGKILL);
            // And any backend the postmaster no longer parents.
            procs::kill_server(&m.launch.data_dir);
        }
        let _ = self.agents.signal_agent(instance, Signal::SIGKILL);
        Ok(())
    }

    async fn recreate(&mut self, instance: &str) -> Result<(), String> {
        Err(format!(
            "{instance} cannot be recreated: a local instance has no definition that changes"
        ))
    }

    async fn event(&mut self, _: Option<&str>, _: EventType, _: &str, _: &str) {
        // Locally an Event is its log line, which the loop has written.
    }

    async fn request_done(&mut self, request: &Request, status: &DbClusterStatus) {
        self.requests.done(request, &self.before, status);
    }

    fn agent_call(
        &self,
        action: &Action,
        members: &BTreeMap<String, Member>,
        limits: &ToolLimits,
    ) -> Result<AgentCall, String> {
        let name = action.instance().unwrap_or_default();
        let Some(m) = self.members.get(name) else {
            return Err(format!("unknown instance {name}"));
        };
        let client = m.client.clone();
        let action = action.clone();
        let members = members.clone();
        let limits = limits.clone();
        Ok(Box::pin(async move {
            shared::call(&action, &client, &members, &limits).await
        }))
    }
}

/// Receive control requests without waiting.
pub fn try_requests(rx: &mut mpsc::Receiver<Submission>) -> Vec<Submission> {
    let mut out = Vec::new();
    while let Ok(s) = rx.try_recv() {
        out.push(s);
    }
    out
}
