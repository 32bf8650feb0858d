//! The one HA loop both platforms run: observe → `engine::decide` → persist
//! the status → act. A [`Platform`] (the Kubernetes controller's
//! `controller::ha::cycle::KubePlatform`, `tandem local`'s
//! `local::driver::Driver`) only translates: it reads the cluster into
//! [`Observations`], writes the status, and carries out the platform's own
//! moves (role labels, fencing, recreating, Events, clearing requests); agent
//! calls run in the background through [`exec::Executor`] and their results
//! feed the next pass. Every decision is the engine's. Does I/O through the
//! platform.

pub mod agent;
pub mod exec;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tracing::{info, instrument, warn, Instrument};

use crate::api::agent::{Member, ToolLimits};
use crate::api::{DbClusterSpec, DbClusterStatus};
use crate::engine::{
    self, Action, ActionResult, EventType, Observations, Outcome, Request, RoleLabel,
};

pub use agent::{call, describe, report};
pub use exec::{AgentCall, Executor};

/// What a platform read for one pass.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The spec in force.
    pub spec: DbClusterSpec,
    /// The status as last persisted: the state machine resumes from it.
    pub status: DbClusterStatus,
    /// Instances, requests and the rest; `results` is filled in by the loop.
    pub obs: Observations,
    /// Every instance's postgres address as the other members reach it (for agent calls).
    pub members: BTreeMap<String, Member>,
}

/// What observing came to.
#[derive(Debug)]
pub enum Observe<S> {
    /// A pass can decide from this.
    Ready(Box<Observed>),
    /// Nothing to decide, and why (the platform's own reasons: cluster gone, spec invalid…).
    Skip(S),
}

/// What one pass came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass<S> {
    /// Decided and acted. `transition`: one is in progress (pass again soon);
    /// `keep_instances`: how many ordinals the platform must keep; `wake_at`:
    /// pass again by then (a condition the engine waits on ends by the clock).
    Decided {
        transition: bool,
        keep_instances: u32,
        wake_at: Option<Timestamp>,
    },
    /// Observing said there is nothing to decide.
    Skipped(S),
}

/// One platform's translation between the engine and the world. Every method
/// is bounded in time by the implementation.
pub trait Platform: Send {
    /// Why a pass has nothing to decide.
    type Skip: Send;
    /// Why observing or persisting failed.
    type Error: std::fmt::Display + Send;

    /// Read the cluster for one pass.
    fn observe(
        &mut self,
        now: Timestamp,
    ) -> impl Future<Output = Result<Observe<Self::Skip>, Self::Error>> + Send;

    /// Persist the decided status; called before any action of the decision.
    /// An error means nothing of the decision is carried out.
    fn persist(
        &mut self,
        status: &DbClusterStatus,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Set the instance's role label (Kubernetes) / endpoint role (local).
    fn set_role(
        &mut self,
        instance: &str,
        role: RoleLabel,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Make sure the instance cannot write although its agent does not answer.
    fn fence(&mut self, instance: &str) -> impl Future<Output = Result<(), String>> + Send;

    /// Replace the instance with one of its current definition (rolling update).
    fn recreate(&mut self, instance: &str) -> impl Future<Output = Result<(), String>> + Send;

    /// Publish an Event (the loop has already logged it).
    fn event(
        &mut self,
        instance: Option<&str>,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> impl Future<Output = ()> + Send;

    /// The engine answered `request` in the decision that produced `status`: clear it.
    fn request_done(
        &mut self,
        request: &Request,
        status: &DbClusterStatus,
    ) -> impl Future<Output = ()> + Send;

    /// The call to the instance's agent that carries out `action`, or why the
    /// agent cannot be reached.
    fn agent_call(
        &self,
        action: &Action,
        members: &BTreeMap<String, Member>,
        limits: &ToolLimits,
    ) -> Result<AgentCall, String>;
}

/// The loop of one cluster on one platform.
pub struct HaLoop<P> {
    /// The platform (its own state is reachable for what lies outside the loop).
    pub platform: P,
    exec: Executor,
    results: Vec<ActionResult>,
}

impl<P: Platform> HaLoop<P> {
    /// A loop over `platform`.
    pub fn new(platform: P) -> Self {
        Self {
            platform,
            exec: Executor::default(),
            results: Vec::new(),
        }
    }

    /// Agent calls still running.
    pub fn in_flight(&self) -> usize {
        self.exec.in_flight()
    }

    /// Notified when an agent call other than a lease renewal finishes, or a
    /// platform action (role label, fencing) succeeded: the next step of a
    /// transition need not wait for the next tick.
    pub fn finished(&self) -> Arc<tokio::sync::Notify> {
        self.exec.finished.clone()
    }

    /// Wait (at most `timeout`) until every agent call has finished; their
    /// results go into the next pass. False when some are still running.
    pub async fn settle(&mut self, timeout: Duration) -> bool {
        let (done, results) = self.exec.settle(timeout).await;
        self.results.extend(results);
        done
    }

    /// One pass: observe → decide → persist → act.
    pub async fn pass(&mut self, now: Timestamp) -> Result<Pass<P::Skip>, P::Error> {
        let drained = self.exec.drain();
        self.label_promoted(&drained).await;
        self.results.extend(drained);
        let observed = match self.platform.observe(now).await? {
            Observe::Ready(o) => *o,
            Observe::Skip(s) => return Ok(Pass::Skipped(s)),
        };
        let Observed {
            spec,
            status: previous,
            mut obs,
            members,
        } = observed;
        obs.results = std::mem::take(&mut self.results);
        let decision = engine::decide(&spec, &previous, &obs, now);
        log_step(&previous, &decision.status);
        // Persisted BEFORE any action: a restarted operator or `local up` resumes this step.
        if decision.status != previous {
            if let Err(e) = self.platform.persist(&decision.status).await {
                // Nothing was carried out: the engine sees the same results next pass.
                let mut results = obs.results;
                results.append(&mut self.results);
                self.results = results;
                return Err(e);
            }
        }
        let limits = spec.rejoin.limits();
        for action in decision.actions {
            self.act(action, &members, &limits, &decision.status).await;
        }
        Ok(Pass::Decided {
            transition: decision.status.transition.is_some(),
            keep_instances: decision.keep_instances,
            wake_at: decision.wake_at,
        })
    }

    /// A promotion answered as done whose action asks for the label: set it
    /// now, before this pass observes, decides and persists (the Label step
    /// of the next decision finds the result).
    async fn label_promoted(&mut self, drained: &[ActionResult]) {
        for r in drained {
            let Action::Promote {
                instance,
                label: true,
            } = &r.action
            else {
                continue;
            };
            if !matches!(r.outcome, Outcome::Succeeded { .. }) {
                continue;
            }
            let set = Action::SetRole {
                instance: instance.clone(),
                role: RoleLabel::Primary,
            };
            let span = tracing::info_span!("act", instance = %instance, action = set.kind());
            let done = self
                .platform
                .set_role(instance, RoleLabel::Primary)
                .instrument(span)
                .await;
            self.results.push(match done {
                Ok(()) => ActionResult::ok(set),
                Err(why) => {
                    warn!(instance = %instance, error = %why, "labelling the promoted instance failed");
                    ActionResult::failed(set, why)
                }
            });
        }
    }

    #[instrument(skip_all, fields(instance = action.instance().unwrap_or(""), action = action.kind()))]
    async fn act(
        &mut self,
        action: Action,
        members: &BTreeMap<String, Member>,
        limits: &ToolLimits,
        status: &DbClusterStatus,
    ) {
        let done = match &action {
            Action::SetRole { instance, role } => self.platform.set_role(instance, *role).await,
            Action::FenceInstance { instance } => self.platform.fence(instance).await,
            Action::Recreate { instance } => self.platform.recreate(instance).await,
            Action::Event {
                instance,
                type_,
                reason,
                message,
            } => {
                match type_ {
                    EventType::Normal => info!(event = %reason, "{message}"),
                    EventType::Warning => warn!(event = %reason, "{message}"),
                }
                let instance = instance.as_deref();
                self.platform.event(instance, *type_, reason, message).await;
                return;
            }
            Action::RequestDone { request } => {
                self.platform.request_done(request, status).await;
                return;
            }
            _ => {
                if !self.exec.busy(&action) {
                    match self.platform.agent_call(&action, members, limits) {
                        Ok(call) => self.exec.spawn(action, call),
                        Err(why) => self.results.push(ActionResult::failed(action, why)),
                    }
                }
                return;
            }
        };
        let result = match done {
            Ok(()) => {
                // The next step waits for this result: a loop that passes on
                // `finished` takes it now, not at its next tick.
                self.exec.finished.notify_one();
                ActionResult::ok(action)
            }
            Err(why) => {
                warn!(error = %why, "platform action failed");
                ActionResult::failed(action, why)
            }
        };
        self.results.push(result);
    }
}

/// How long from now until `at` (zero when it passed; a day when there is none).
pub fn until(at: Option<Timestamp>) -> Duration {
    at.map_or(Duration::from_secs(86_400), |t| {
        let ms = t.as_millisecond() - Timestamp::now().as_millisecond();
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    })
}

/// Log a change of transition step.
fn log_step(before: &DbClusterStatus, after: &DbClusterStatus) {
    let step = |s: &DbClusterStatus| s.transition.as_ref().map(|t| (t.kind, t.step));
    if step(before) == step(after) {
        return;
    }
    match &after.transition {
        Some(t) => {
            info!(transition = %t.kind, step = %t.step, target = t.target.as_deref().unwrap_or(""), "transition step")
        }
        None => info!("no transition in progress"),
    }
}
