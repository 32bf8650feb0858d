//! Enforcing the primary lease (DESIGN.md §3, fencing lease): a primary whose
//! lease ends within the fence lead (`lease::FENCE_LEAD_MS`) on the agent's
//! own monotonic clock is fenced at once — its whole postgres process group
//! is killed, so that it is stopped when the lease ends, and it is not
//! started again as a primary until the operator says so. Does I/O.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::pg::conf;

use super::state::{lock, Agent};

/// How often the lease is checked; part of the fencing margin (docs/agent.md).
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Watch the lease forever.
pub async fn run(agent: Arc<Agent>) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let (due, ttl_ms) = {
            let lease = lock(&agent.lease);
            (
                lease.fence_due(Instant::now()),
                lease.terms.as_ref().map_or(0, |t| t.ttl_ms),
            )
        };
        if !due {
            continue;
        }
        // Only a primary is fenced: a standby cannot take writes.
        if conf::is_standby(&agent.cfg.data_dir) || !agent.postgres_running() {
            lock(&agent.lease).disarm();
            continue;
        }
        fence(&agent, ttl_ms);
    }
}

/// Take postgres down now, without waiting for a running action: SIGKILL to
/// the whole process group (a frozen server cannot handle a gentler signal).
fn fence(agent: &Agent, ttl_ms: u64) {
    let child = {
        let mut pg = lock(&agent.pg);
        pg.fenced = true;
        pg.want_running = false;
        pg.child.take()
    };
    lock(&agent.lease).disarm();
    agent.set_activity(Some(format!(
        "fenced: the primary lease ({ttl_ms}ms) ends within the fence lead; postgres stays stopped until told to start or demote"
    )));
    if let Some(child) = child {
        tracing::warn!(
            instance = %agent.cfg.instance,
            pid = child.pid(),
            ttl_ms,
            "primary lease about to run out: fencing postgres"
        );
        if let Err(e) = child.signal_group(Signal::SIGKILL) {
            tracing::error!(error = %e, "fencing postgres failed");
        }
    }
    agent.probe_now.notify_one();
}
