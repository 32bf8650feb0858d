//! Enforcing the primary lease (DESIGN.md §3, fencing lease): a primary whose
//! lease ran out on the agent's own monotonic clock is fenced at once — its
//! whole postgres process group is stopped, immediately, and it is not
//! started again as a primary until the operator says so. Does I/O.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::pg::conf;

use super::state::{lock, Agent};

/// How often the lease is checked.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Whether a lease granted at `at` for `ttl_ms` has run out at `now`.
pub fn expired(at: Instant, ttl_ms: u64, now: Instant) -> bool {
    now.saturating_duration_since(at) >= Duration::from_millis(ttl_ms)
}

/// Watch the lease forever.
pub async fn run(agent: Arc<Agent>) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let lease = *lock(&agent.lease);
        let Some((at, ttl)) = lease else { continue };
        if !expired(at, ttl, Instant::now()) {
            continue;
        }
        // Only a primary is fenced: a standby cannot take writes.
        if conf::is_standby(&agent.cfg.data_dir) || !agent.postgres_running() {
            *lock(&agent.lease) = None;
            continue;
        }
        fence(&agent, ttl);
    }
}

/// Take postgres down now, without waiting for a running action: SIGKILL to
/// the whole process group (a frozen server cannot handle a gentler signal).
fn fence(agent: &Agent, ttl: u64) {
    let child = {
        let mut pg = lock(&agent.pg);
        pg.fenced = true;
        pg.want_running = false;
        pg.child.take()
    };
    *lock(&agent.lease) = None;
    agent.set_activity(Some(format!(
        "fenced: the primary lease ({ttl}ms) ran out; postgres stays stopped until told to start or demote"
    )));
    if let Some(child) = child {
        tracing::warn!(
            instance = %agent.cfg.instance,
            pid = child.pid(),
            ttl_ms = ttl,
            "primary lease ran out: fencing postgres"
        );
        if let Err(e) = child.signal_group(Signal::SIGKILL) {
            tracing::error!(error = %e, "fencing postgres failed");
        }
    }
    agent.probe_now.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_runs_out_after_its_ttl() {
        let at = Instant::now();
        assert!(!expired(at, 1000, at + Duration::from_millis(999)));
        assert!(expired(at, 1000, at + Duration::from_millis(1000)));
        assert!(!expired(at, 1000, at));
    }
}
