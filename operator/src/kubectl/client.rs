//! The Kubernetes side of `kubectl tandem`: the client from the kubeconfig
//! as kubectl plugins take it (`--kubeconfig`, `KUBECONFIG`, `--context`,
//! `-n`), reading the DbCluster, setting request annotations, and waiting
//! (bounded) for the answer in status. Does Kubernetes API I/O.

use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::api::{keys, DbCluster};

use super::answer::{Answer, Progress, Tracker};
use super::Ask;

/// How often a waiting command reads the DbCluster again.
const POLL: Duration = Duration::from_millis(300);
/// After this long with the request annotation still set, say that no operator took it.
const NOT_TAKEN: Duration = Duration::from_secs(30);

/// What `kubectl tandem` can fail with (before an answer).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The kubeconfig cannot be read.
    #[error("cannot read the kubeconfig: {0}")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    /// No client configuration could be inferred.
    #[error("no Kubernetes configuration: {0}")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client cannot be built.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The DbCluster does not exist.
    #[error("no DbCluster {name} in namespace {namespace}")]
    NotFound { name: String, namespace: String },
    /// An API call failed.
    #[error("{what} failed: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    /// A request of the same kind is already pending.
    #[error("{key}={value} is already set on {name}: that request has not been answered yet")]
    Pending {
        name: String,
        key: &'static str,
        value: String,
    },
    /// No answer in time.
    #[error("no answer from the operator within {waited:?} (waiting for {what})")]
    Timeout { waited: Duration, what: String },
    /// JSON output could not be written.
    #[error("cannot encode the output: {0}")]
    Encode(#[source] serde_json::Error),
}

impl PluginError {
    /// A second line telling what to do.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::NotFound { namespace, .. } => Some(format!(
                "kubectl get dbc -n {namespace} lists the DbClusters there; -n picks another namespace"
            )),
            Self::Pending { name, key, .. } => Some(format!(
                "wait for it (kubectl tandem status {name}) or withdraw it: kubectl annotate dbc {name} {key}-"
            )),
            Self::Timeout { .. } => Some(
                "the request may still be carried out; kubectl tandem status / history show it, \
                 and the operator's logs why it is slow"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// One DbCluster, through the API.
pub struct Target {
    api: Api<DbCluster>,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
}

impl Target {
    /// A client as kubectl would make it, for DbCluster `name`.
    pub async fn connect(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Self, PluginError> {
        let opts = KubeConfigOptions {
            context: context.map(str::to_string),
            cluster: None,
            user: None,
        };
        let config = match kubeconfig {
            Some(path) => {
                // KUBECONFIG may list several files, as kubectl reads it.
                let mut merged: Option<Kubeconfig> = None;
                for p in std::env::split_paths(path.as_os_str()) {
                    if p.as_os_str().is_empty() {
                        continue;
                    }
                    let k = Kubeconfig::read_from(&p).map_err(PluginError::Kubeconfig)?;
                    merged = Some(match merged {
                        None => k,
                        Some(m) => m.merge(k).map_err(PluginError::Kubeconfig)?,
                    });
                }
                match merged {
                    Some(k) => kube::Config::from_custom_kubeconfig(k, &opts)
                        .await
                        .map_err(PluginError::Kubeconfig)?,
                    // An empty KUBECONFIG: as if unset.
                    None => kube::Config::infer().await.map_err(PluginError::Infer)?,
                }
            }
            None if context.is_some() => kube::Config::from_kubeconfig(&opts)
                .await
                .map_err(PluginError::Kubeconfig)?,
            None => kube::Config::infer().await.map_err(PluginError::Infer)?,
        };
        let namespace = namespace
            .map(str::to_string)
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(PluginError::Client)?;
        Ok(Self {
            api: Api::namespaced(client, &namespace),
            name: name.to_string(),
            namespace,
        })
    }

    /// The DbCluster now.
    pub async fn get(&self) -> Result<DbCluster, PluginError> {
        match self.api.get_opt(&self.name).await {
            Ok(Some(dc)) => Ok(dc),
            Ok(None) => Err(PluginError::NotFound {
                name: self.name.clone(),
                namespace: self.namespace.clone(),
            }),
            Err(source) => Err(PluginError::Api {
                what: "reading the DbCluster",
                source,
            }),
        }
    }

    /// Set (Some) or remove (None) annotations with one merge patch.
    async fn annotate(&self, set: &[(&str, Option<String>)]) -> Result<(), PluginError> {
        let ann: serde_json::Map<String, serde_json::Value> = set
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.clone()
                        .map(serde_json::Value::String)
                        .unwrap_or(serde_json::Value::Null),
                )
            })
            .collect();
        let patch = serde_json::json!({"metadata": {"annotations": ann}});
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|source| PluginError::Api {
                what: "annotating the DbCluster",
                source,
            })
    }

    /// Ask for `ask` and wait (at most `timeout`) for the operator's answer.
    pub async fn request(&self, ask: &Ask, timeout: Duration) -> Result<Answer, PluginError> {
        let dc = self.get().await?;
        let annotations = dc.metadata.annotations.clone().unwrap_or_default();
        if let Some(v) = annotations.get(ask.answered_when_gone) {
            return Err(PluginError::Pending {
                name: self.name.clone(),
                key: ask.answered_when_gone,
                value: v.clone(),
            });
        }
        let before = dc.status.map(|s| s.history).unwrap_or_default();
        let mut tracker = Tracker::new(before, ask.answered_when_gone);
        self.annotate(&ask.set).await?;
        let started = Instant::now();
        let mut shown = String::new();
        let mut noted = false;
        loop {
            let dc = self.get().await?;
            let annotations = dc.metadata.annotations.clone().unwrap_or_default();
            let status = dc.status.unwrap_or_default();
            match tracker.observe(&annotations, &status) {
                Progress::Answered(a) => return Ok(a),
                Progress::Waiting(what) => {
                    if started.elapsed() >= timeout {
                        return Err(PluginError::Timeout {
                            waited: timeout,
                            what,
                        });
                    }
                    if what != shown {
                        eprintln!("waiting for {what}");
                        shown = what;
                    }
                    if !noted && started.elapsed() >= NOT_TAKEN && !tracker.taken() {
                        noted = true;
                        eprintln!(
                            "no operator has taken {}={} after {}s: is the operator running (kubectl get pods -A -l app.kubernetes.io/name=tandem-operator), and does its version know this request?",
                            ask.answered_when_gone,
                            ask.set.first().and_then(|(_, v)| v.as_deref()).unwrap_or(""),
                            NOT_TAKEN.as_secs()
                        );
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Pause (`on`) or unpause automation by annotation, and wait until status says so.
    pub async fn pause(&self, on: bool, timeout: Duration) -> Result<Answer, PluginError> {
        let dc = self.get().await?;
        if !on && dc.spec.paused {
            return Ok(Answer::Refused {
                message: format!(
                    "{} stays paused: its spec says paused: true (the annotation cannot override the spec)",
                    self.name
                ),
                detail: vec![format!(
                    "kubectl patch dbc {} --type merge -p '{{\"spec\":{{\"paused\":false}}}}'",
                    self.name
                )],
            });
        }
        let value = on.then(|| "true".to_string());
        self.annotate(&[(keys::ANN_PAUSED, value)]).await?;
        let started = Instant::now();
        loop {
            let dc = self.get().await?;
            let status = dc.status.unwrap_or_default();
            if status.paused == on {
                let (message, detail) = if on {
                    (
                        format!("{} paused: no automatic failover or rejoin", self.name),
                        vec![
                            "requests (switchover, restart, rejoin, re-clone, promote) still run"
                                .to_string(),
                        ],
                    )
                } else {
                    (
                        format!(
                            "{} unpaused: automatic failover and rejoin are active",
                            self.name
                        ),
                        vec![],
                    )
                };
                return Ok(Answer::Done { message, detail });
            }
            if started.elapsed() >= timeout {
                return Err(PluginError::Timeout {
                    waited: timeout,
                    what: format!("status.paused to become {on}"),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
