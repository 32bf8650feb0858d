//! The operator's Prometheus metrics and its HTTP endpoint (`/metrics`,
//! `/healthz`). The server does network I/O; the counters do none.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::error::Category;

/// Errors of the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("serve: {0}")]
    Serve(#[source] std::io::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    agent_unanswered: Family<ReasonLabels, Counter>,
    reconciles: Family<OutcomeLabels, Counter>,
    errors: Family<CategoryLabels, Counter>,
    duration: Histogram,
    leader: Gauge,
}

impl Metrics {
    /// Create the metrics and register them under the `tandem_operator` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            agent_unanswered: Family::default(),
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            leader: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("tandem_operator");
        sub.register(
            "reconciles",
            "Reconciles of DbClusters by outcome (success, error)",
            m.reconciles.clone(),
        );
        sub.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            m.errors.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            m.duration.clone(),
        );
        sub.register(
            "agent_unanswered",
            "Agent status polls of the HA loops that got no answer, by reason (timeout, connection_refused, unauthorized, bad_answer, unreachable)",
            m.agent_unanswered.clone(),
        );
        sub.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        m
    }

    /// Count one reconcile and its duration; `error` is its category when it failed.
    pub fn record(&self, error: Option<Category>, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        let outcome = if error.is_some() { "error" } else { "success" };
        self.reconciles
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        if let Some(category) = error {
            self.errors
                .get_or_create(&CategoryLabels {
                    category: category.as_label(),
                })
                .inc();
        }
    }

    /// Count one agent status poll that got no answer.
    pub fn agent_unanswered(&self, reason: crate::api::AgentUnanswered) {
        self.agent_unanswered
            .get_or_create(&ReasonLabels {
                reason: reason.as_label(),
            })
            .inc();
    }

    /// Record whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}

/// Encode the registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

async fn metrics_handler(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    match encode(&registry) {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The router of the operator's own port.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(registry)
}

/// Serve `/metrics` and `/healthz` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    axum::serve(listener, router(registry))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(MetricsError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_bounded_category() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.record(None, Duration::from_millis(3));
        m.record(Some(Category::InvalidSpec), Duration::from_millis(3));
        m.record(Some(Category::Api), Duration::from_millis(3));
        let text = encode(&registry).unwrap_or_default();
        assert!(
            text.contains("tandem_operator_reconciles_total{outcome=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tandem_operator_reconciles_total{outcome=\"error\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tandem_operator_reconcile_errors_total{category=\"invalid_spec\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tandem_operator_reconcile_duration_seconds_count 3"),
            "{text}"
        );
    }
}
