//! Leader election on a coordination.k8s.io Lease, so two operator replicas
//! never act at once. The decision is pure; [`Elector`] does the I/O with
//! resourceVersion-based optimistic concurrency.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Renewing took longer than the renew deadline allows.
    #[error("renewing the lease timed out")]
    Timeout,
    /// A call to the API server failed.
    #[error("{action} lease {name}: {source}")]
    Kube {
        /// get, create, replace.
        action: &'static str,
        /// The Lease's name.
        name: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
}

/// Where and how long to hold the lease.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (and followers retry).
    pub renew_every: Duration,
}

impl LeaseSettings {
    /// A leader that could not renew for this long steps down, before any
    /// other replica may consider the lease expired.
    pub fn renew_deadline(&self) -> Duration {
        self.duration.mul_f64(2.0 / 3.0)
    }
}

/// What to do with the lease as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No lease exists: create it holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else holds it and it is live: wait.
    Follow {
        /// The current holder.
        holder: String,
    },
}

/// Decide from the lease and how long its record has stayed unchanged as
/// seen by this replica. Expiry is measured on the local clock since the
/// record last changed (as client-go does), so clock skew between nodes does
/// not matter.
pub fn decide(
    lease: Option<&Lease>,
    identity: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(default_duration);
    if unchanged_for >= duration {
        Decision::TakeOver
    } else {
        Decision::Follow { holder }
    }
}

/// Runs leader election for one replica.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The last (holder, renewTime) seen and when it was first seen.
    observed: Option<((String, Option<Timestamp>), Instant)>,
}

impl Elector {
    /// An elector for the settings' Lease.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    fn unchanged_for(&mut self, lease: Option<&Lease>) -> Duration {
        let spec = lease.and_then(|l| l.spec.clone()).unwrap_or_default();
        let record = (
            spec.holder_identity.unwrap_or_default(),
            spec.renew_time.map(|t| t.0),
        );
        let now = Instant::now();
        match &self.observed {
            Some((seen, since)) if *seen == record => now.duration_since(*since),
            _ => {
                self.observed = Some((record, now));
                Duration::ZERO
            }
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, taking_over: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs().max(1) as i32),
            acquire_time: if taking_over {
                Some(now.clone())
            } else {
                previous
                    .and_then(|p| p.acquire_time.clone())
                    .or(Some(now.clone()))
            },
            renew_time: Some(now),
            lease_transitions: Some(if taking_over {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    fn err(&self, action: &'static str, source: kube::Error) -> LeaderError {
        LeaderError::Kube {
            action,
            name: self.settings.name.clone(),
            source: Box::new(source),
        }
    }

    /// Acquire or renew the lease; `Ok(true)` when this replica holds it now.
    /// A write that loses a race (409 Conflict) is `Ok(false)`.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let name = self.settings.name.clone();
        let current = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| self.err("get", e))?;
        let unchanged_for = self.unchanged_for(current.as_ref());
        let decision = decide(
            current.as_ref(),
            &self.settings.identity,
            unchanged_for,
            self.settings.duration,
        );
        let result = match (decision, current) {
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None, true)),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (Decision::Follow { holder }, _) => {
                tracing::debug!(%holder, "lease held by another replica");
                return Ok(false);
            }
            (decision, Some(mut lease)) => {
                let taking_over = decision == Decision::TakeOver;
                if taking_over {
                    tracing::info!(identity = %self.settings.identity, "taking over the leader lease");
                }
                lease.spec = Some(self.spec(lease.spec.as_ref(), taking_over));
                // metadata.resourceVersion from the read makes this a compare-and-swap.
                self.api
                    .replace(&name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (_, None) => return Ok(false),
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => Ok(false),
            Err(e) => Err(self.err("write", e)),
        }
    }

    /// Give the lease up (if still ours) so another replica takes over at once.
    pub async fn release(&self) -> Result<(), LeaderError> {
        let name = &self.settings.name;
        let Some(mut lease) = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| self.err("get", e))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(()),
            Err(e) => Err(self.err("release", e)),
        }
    }

    /// Campaign and renew until `shutdown` turns true or leadership is lost.
    /// `leader` is true exactly while this replica may act. On shutdown a held
    /// lease is released.
    pub async fn run(mut self, leader: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut last_renewal: Option<Instant> = None;
        loop {
            let leading = *leader.borrow();
            // A leader's attempt may not outlive its renew deadline: it must
            // stop acting before any follower may take the lease over.
            let budget = match (leading, last_renewal) {
                (true, Some(t)) => {
                    (t + self.settings.renew_deadline()).saturating_duration_since(Instant::now())
                }
                _ => self.settings.renew_every,
            };
            let attempt = match tokio::time::timeout(budget, self.try_acquire_or_renew()).await {
                Ok(result) => result,
                Err(_) => Err(LeaderError::Timeout),
            };
            match attempt {
                Ok(true) => {
                    last_renewal = Some(Instant::now());
                    if !leading {
                        tracing::info!(identity = %self.settings.identity, "became leader");
                        leader.send_replace(true);
                    }
                }
                Ok(false) if leading => {
                    tracing::warn!("leader lease taken by another replica; stepping down");
                    leader.send_replace(false);
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "leader election call failed");
                    let overdue =
                        last_renewal.is_some_and(|t| t.elapsed() >= self.settings.renew_deadline());
                    if leading && overdue {
                        tracing::warn!("could not renew the leader lease in time; stepping down");
                        leader.send_replace(false);
                        return;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.renew_every) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            match self.release().await {
                Ok(()) => tracing::info!("released the leader lease"),
                Err(e) => tracing::warn!(error = %e, "could not release the leader lease"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn lease(holder: Option<&str>, duration: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: duration,
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn absent_lease_is_created() {
        assert_eq!(decide(None, "a", Duration::ZERO, D), Decision::Create);
    }

    #[test]
    fn own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&lease(Some("a"), Some(15))), "a", D * 9, D),
            Decision::Renew
        );
    }

    #[test]
    fn live_lease_of_another_replica_is_followed() {
        assert_eq!(
            decide(
                Some(&lease(Some("b"), Some(15))),
                "a",
                Duration::from_secs(14),
                D
            ),
            Decision::Follow { holder: "b".into() }
        );
    }

    #[test]
    fn expired_lease_of_another_replica_is_taken_over() {
        assert_eq!(
            decide(
                Some(&lease(Some("b"), Some(15))),
                "a",
                Duration::from_secs(15),
                D
            ),
            Decision::TakeOver
        );
    }

    #[test]
    fn released_lease_is_taken_over_at_once() {
        assert_eq!(
            decide(Some(&lease(None, Some(1))), "a", Duration::ZERO, D),
            Decision::TakeOver
        );
    }

    #[test]
    fn holder_duration_wins_over_our_default() {
        let l = lease(Some("b"), Some(60));
        assert_eq!(
            decide(Some(&l), "a", Duration::from_secs(30), D),
            Decision::Follow { holder: "b".into() }
        );
    }

    #[test]
    fn leader_steps_down_before_others_may_take_over() {
        let s = LeaseSettings {
            name: "l".into(),
            namespace: "n".into(),
            identity: "a".into(),
            duration: D,
            renew_every: Duration::from_secs(5),
        };
        assert!(s.renew_deadline() < s.duration);
        assert!(s.renew_every < s.renew_deadline());
    }
}
