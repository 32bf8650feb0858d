//! Prometheus metrics of the agent (prometheus-client): postgres up, role,
//! timeline, lag, archive backlog, check states, crashes. No I/O.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::agent::AgentStatus;
use crate::api::{CheckState, InstanceRole};

type Labels = Vec<(String, String)>;

/// The agent's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    up: Gauge,
    role: Family<Labels, Gauge>,
    timeline: Gauge,
    lag_bytes: Gauge,
    archive_ready: Gauge,
    check: Family<Labels, Gauge>,
    /// Unexpected postgres exits.
    pub crashes: Counter,
}

const ROLES: [(InstanceRole, &str); 6] = [
    (InstanceRole::Primary, "primary"),
    (InstanceRole::Standby, "standby"),
    (InstanceRole::Learner, "learner"),
    (InstanceRole::Fenced, "fenced"),
    (InstanceRole::Down, "down"),
    (InstanceRole::Unknown, "unknown"),
];

impl Metrics {
    /// Register every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            up: Gauge::default(),
            role: Family::default(),
            timeline: Gauge::default(),
            lag_bytes: Gauge::default(),
            archive_ready: Gauge::default(),
            check: Family::default(),
            crashes: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tandem_postgres_up",
            "postgres runs and answers",
            m.up.clone(),
        );
        registry.register(
            "tandem_role",
            "1 for the instance's current role",
            m.role.clone(),
        );
        registry.register("tandem_timeline", "PostgreSQL timeline", m.timeline.clone());
        registry.register(
            "tandem_lag_bytes",
            "standby: bytes behind its upstream",
            m.lag_bytes.clone(),
        );
        registry.register(
            "tandem_archive_ready_files",
            "WAL files waiting to be archived",
            m.archive_ready.clone(),
        );
        registry.register(
            "tandem_check_state",
            "health check state: 0 OK, 1 WARNING, 2 CRITICAL",
            m.check.clone(),
        );
        registry.register(
            "tandem_postgres_crashes",
            "unexpected postgres exits",
            m.crashes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Update from a probe.
    pub fn observe(&self, st: &AgentStatus) {
        self.up.set(i64::from(st.ready));
        for (role, name) in ROLES {
            self.role
                .get_or_create(&vec![("role".to_string(), name.to_string())])
                .set(i64::from(st.role == role));
        }
        self.timeline.set(st.timeline.unwrap_or(0));
        self.lag_bytes.set(st.lag_bytes.unwrap_or(0));
        self.archive_ready.set(st.archive_ready.unwrap_or(0));
        for c in &st.checks {
            let v = match c.state {
                CheckState::Ok => 0,
                CheckState::Warning => 1,
                CheckState::Critical => 2,
            };
            self.check
                .get_or_create(&vec![("check".to_string(), c.name.clone())])
                .set(v);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
