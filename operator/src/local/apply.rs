//! `tandem local apply`: a changed manifest for a running local cluster, as
//! `kubectl apply` gives one to the operator. The running `local up` checks
//! it as `local up` checks its file, takes it as the spec in force (fields
//! changed at runtime by `local set`/`pause` stay unless the manifest changes
//! them too, as with kubectl's three-way merge), and the engine does the rest
//! the same way for every field: parameters by a Reconfigure transition,
//! durability by its settings, failover settings at once. The instance count
//! is the platform's: new ordinals get a directory, ports and an agent (they
//! clone from the primary), ordinals scaled away are stopped once the engine
//! no longer keeps them (their data directory stays, as a PVC does). Does I/O.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tracing::{info, warn};

use crate::agent::client::AgentClient;
use crate::api::{keys, DbClusterSpec};
use crate::engine;

use super::control::{Outcome, Refusal};
use super::driver::{Driver, Tracked};
use super::procs::AgentLaunch;

/// What changed between two specs, one line per field (parameters one by one).
pub fn changes(old: &DbClusterSpec, new: &DbClusterSpec) -> Vec<String> {
    let mut out = Vec::new();
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return out;
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        if k == "postgres" {
            let (p, q) = (&old.postgres.parameters, &new.postgres.parameters);
            for name in engine::changed_parameters(p, q) {
                let show =
                    |v: Option<&String>| v.map_or("(unset)".to_string(), |v| format!("{v:?}"));
                out.push(format!(
                    "postgres.parameters.{name}: {} → {}",
                    show(p.get(&name)),
                    show(q.get(&name))
                ));
            }
            if old.postgres.parameters == new.postgres.parameters {
                out.push(format!("postgres: {} → {}", compact(x), compact(y)));
            }
            continue;
        }
        let local_only = matches!(k.as_str(), "image" | "storage" | "resources");
        out.push(format!(
            "{k}: {} → {}{}",
            compact(x),
            compact(y),
            if local_only {
                " (Kubernetes only: no effect on a local cluster)"
            } else {
                ""
            }
        ));
    }
    out
}

fn compact(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(unset)".into(),
        Some(v) => v.to_string(),
    }
}

impl Driver {
    /// Take `spec` (the manifest of cluster `name`) as the spec in force, or refuse it whole.
    pub fn apply(&mut self, name: &str, spec: DbClusterSpec) -> Result<Outcome, Refusal> {
        let refuse = |error: String, detail: Vec<String>| Err(Refusal { error, detail });
        if name != self.name {
            return refuse(
                format!(
                    "apply refused: the manifest is for cluster {name}, this directory runs {}",
                    self.name
                ),
                vec!["nothing was changed".into()],
            );
        }
        if let Err(e) = super::setup::validate(name, &spec) {
            return refuse(
                format!("apply refused: {e}"),
                vec!["nothing was changed".into()],
            );
        }
        let before = self.spec();
        let mut persisted_paused = self.persisted.paused;
        let mut persisted_replication = self.persisted.replication.clone();
        // A field the manifest changes replaces what `local pause`/`set` made of it.
        if spec.paused != self.base_spec.paused {
            persisted_paused = None;
        }
        if spec.replication != self.base_spec.replication {
            persisted_replication = None;
        }
        let mut after = spec.clone();
        if let Some(p) = persisted_paused {
            after.paused = p;
        }
        if let Some(r) = &persisted_replication {
            after.replication = r.clone();
        }
        if let Err(e) = super::setup::validate(name, &after) {
            return refuse(
                format!("apply refused: with the runtime changes of tandem local set/pause: {e}"),
                vec!["nothing was changed".into()],
            );
        }
        let lines = changes(&before, &after);
        self.base_spec = spec;
        self.persisted.paused = persisted_paused;
        self.persisted.replication = persisted_replication;
        self.save();
        if lines.is_empty() {
            return Ok(Outcome {
                message: format!("cluster {name} unchanged"),
                detail: vec![],
            });
        }
        info!(cluster = %name, changes = %lines.join("; "), "manifest applied");
        let mut detail = lines;
        if before.postgres.parameters != after.postgres.parameters
            || before.archive != after.archive
        {
            detail.push(
                "parameters: applied to every instance with a reload (Reconfigure in history); a rolling restart follows where PostgreSQL needs one".into(),
            );
        }
        if before.instances != after.instances {
            detail.push(format!(
                "instances {} → {}: new ones clone from the primary; removed ones are stopped (never the primary: it is switched over first) and keep their data directory",
                before.instances, after.instances
            ));
        }
        Ok(Outcome {
            message: format!("cluster {name} configured"),
            detail,
        })
    }

    /// Keep members 0..keep (the engine's `keep_instances`: the spec's count,
    /// or more while the primary is switched away from an ordinal scaled
    /// away): add the missing ones, stop those beyond.
    pub fn scale(&mut self, keep: u32) {
        let want = keep.max(1);
        for ordinal in 0..want {
            let name = keys::instance_name(&self.name, ordinal);
            if !self.members.contains_key(&name) {
                if let Err(e) = self.add_member(ordinal) {
                    warn!(instance = %name, error = %e, "cannot add instance");
                }
            }
        }
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|n| keys::instance_ordinal(&self.name, n).is_some_and(|o| o >= want))
            .cloned()
            .collect();
        for name in gone {
            info!(instance = %name, "scaled away: stopping its agent (its data directory stays)");
            let _ = self.agents.signal_agent(&name, Signal::SIGCONT);
            let _ = self.agents.signal_agent(&name, Signal::SIGTERM);
            self.members.remove(&name);
            self.persisted.labels.remove(&name);
            self.state.instances.retain(|i| i.name != name);
            if let Err(e) = self.state.save(&self.dir) {
                warn!(error = %e, "cannot update state.json");
            }
        }
    }

    fn add_member(&mut self, ordinal: u32) -> Result<(), String> {
        let Some(template) = self.members.values().next().map(|m| m.launch.clone()) else {
            return Err("no instance to take the launch settings from".into());
        };
        let i = super::setup::add_instance(&self.dir, &self.state, ordinal)
            .map_err(|e| e.to_string())?;
        let logs = template
            .log_file
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| self.dir.join("logs"));
        let launch = AgentLaunch {
            instance: i.name.clone(),
            data_dir: i.data_dir.clone(),
            address: i.address,
            pg_port: i.pg_port,
            agent: i.agent,
            log_file: logs.join(format!("{}.log", i.name)),
            ..template
        };
        let client = AgentClient::new(format!("http://{}", i.agent), self.state.token.clone())
            .map_err(|e| e.to_string())?;
        info!(instance = %i.name, pg = %SocketAddr::new(i.address, i.pg_port), "instance added: it clones from the primary");
        self.members.insert(
            i.name.clone(),
            Tracked {
                launch,
                client,
                last_report: None,
                last_seen: None,
                died_at: Some(Instant::now() - Duration::from_secs(60)),
                started_at: None,
                poll: super::poll::Poll::new(),
            },
        );
        self.state.instances.push(i);
        self.state
            .instances
            .sort_by_key(|i| keys::instance_ordinal(&self.name, &i.name));
        self.state.save(&self.dir).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::changes;
    use crate::api::DbClusterSpec;

    #[test]
    fn changes_name_each_parameter_and_field() {
        let old = DbClusterSpec::default();
        let mut new = old.clone();
        new.instances = old.instances + 1;
        new.postgres
            .parameters
            .insert("work_mem".into(), "8MB".into());
        new.image = Some("x".into());
        let c = changes(&old, &new);
        assert!(
            c.iter()
                .any(|l| l == "postgres.parameters.work_mem: (unset) → \"8MB\""),
            "{c:?}"
        );
        assert!(c.iter().any(|l| l.starts_with("instances: ")), "{c:?}");
        assert!(c.iter().any(|l| l.contains("Kubernetes only")), "{c:?}");
        assert!(changes(&old, &old).is_empty());
    }
}
