//! The probe loop: every second (or right after an action) query postgres
//! with tokio-postgres, compute the health checks, publish /status and the
//! metrics. Does I/O; the checks themselves are pure.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use crate::api::agent::{slot_name, AgentStatus, Member, VouchedState};
use crate::api::{CheckState, HealthCheck, InstanceRole, Lsn, WalReceiverState};
use crate::pg::{conf, query};

use super::state::{lock, Agent};

/// Thresholds of the checks.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub archive_warning: i64,
    pub archive_critical: i64,
    pub lag_warning: i64,
    pub lag_critical: i64,
}

struct Conns {
    local: Option<Client>,
    upstream: Option<(String, Client)>,
    /// Primary: since when each standby has been seen attached.
    attached: std::collections::BTreeMap<String, std::time::Instant>,
}

/// Probe forever.
pub async fn run(agent: Arc<Agent>) {
    let mut conns = Conns {
        local: None,
        upstream: None,
        attached: Default::default(),
    };
    loop {
        let count = agent.probes_started.fetch_add(1, Ordering::SeqCst) + 1;
        let st = probe_once(&agent, &mut conns).await;
        agent.metrics.observe(&st);
        if let Ok(mut s) = agent.status.write() {
            *s = st;
        }
        agent.probed.send_replace(count);
        tokio::select! {
            _ = tokio::time::sleep(agent.cfg.probe_interval) => {}
            _ = agent.probe_now.notified() => {}
        }
    }
}

async fn probe_once(agent: &Agent, conns: &mut Conns) -> AgentStatus {
    let cfg = &agent.cfg;
    let mut st = AgentStatus {
        instance: cfg.instance.clone(),
        data_dir: cfg.data_dir.display().to_string(),
        observed_at: Some(jiff::Timestamp::now().to_string()),
        ..Default::default()
    };
    // Read before postgres is asked: POST /config writes this file only once
    // its reload took effect, so parameters that match the spec here come with
    // the pending_restart they caused.
    let parameters = conf::read_parameters(&cfg.data_dir);
    let running = agent.postgres_running();
    let mut observed = None;
    if running {
        if conns.local.as_ref().is_none_or(|c| c.is_closed()) {
            conns.local = agent.local_client(Duration::from_secs(2)).await.ok();
        }
        if let Some(client) = &conns.local {
            match tokio::time::timeout(Duration::from_secs(3), query::observe(client)).await {
                Ok(Ok(o)) => observed = Some(o),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "probe failed");
                    conns.local = None;
                }
                Err(_) => conns.local = None,
            }
        }
    } else {
        conns.local = None;
    }
    let standby_files = conf::is_standby(&cfg.data_dir);
    if let Some(o) = observed {
        st.role = if o.in_recovery {
            InstanceRole::Standby
        } else {
            InstanceRole::Primary
        };
        st.ready = o.in_recovery == standby_files;
        st.postgres_version = Some(o.version);
        st.system_identifier = Some(o.system_identifier);
        st.timeline = o.timeline;
        st.current_lsn = o.current_lsn;
        st.received_lsn = o.received_lsn;
        st.replayed_lsn = o.replayed_lsn;
        st.lag_bytes = o.receive_replay_gap;
        st.lag_seconds = o.lag_seconds;
        st.wal_receiver = o.wal_receiver;
        st.downstreams = o.downstreams;
        st.replication_slots_used = o.slots.len() as i64;
        st.slots = o.slots;
        st.max_wal_senders = Some(o.max_wal_senders);
        st.wal_senders_used = o.wal_senders_used;
        st.max_replication_slots = Some(o.max_replication_slots);
        st.synchronous_standby_names = Some(o.synchronous_standby_names);
        st.synchronous_commit = Some(o.synchronous_commit);
        st.pending_restart = o.pending_restart;
    }
    if standby_files {
        st.upstream = conf::read_upstream(&cfg.data_dir);
    }
    if st.role == InstanceRole::Standby {
        if let (Some(up), Some(replayed)) = (st.upstream.clone(), st.replayed_lsn) {
            if let Some(head) = upstream_head(agent, conns, &up).await {
                st.lag_bytes = Some(head.bytes_after(replayed) as i64);
            }
        }
    }
    if !running && conf::is_initialized(&cfg.data_dir) {
        if let Some(stopped) = agent.stopped_state().await {
            let c = stopped.control;
            st.checkpoint_lsn = c.checkpoint_lsn;
            st.clean_shutdown = c.clean_shutdown();
            st.end_of_wal = stopped.end_of_wal;
            st.timeline = st.timeline.or(c.timeline);
            st.system_identifier = st.system_identifier.or(c.system_identifier);
        }
    }
    st.archive_ready = conf::archive_ready_count(&cfg.data_dir);
    st.parameters = parameters;
    overlay_live(agent, &mut st);
    let thresholds = super::expect::thresholds(agent);
    let known = super::expect::standbys(agent);
    st.check_settings = super::expect::settings(agent);
    if st.role == InstanceRole::Primary {
        let before = conns.attached.len();
        conns
            .attached
            .retain(|n, _| st.downstreams.iter().any(|d| d.name == *n));
        let mut changed = conns.attached.len() != before;
        for d in &st.downstreams {
            if !conns.attached.contains_key(&d.name) {
                conns
                    .attached
                    .insert(d.name.clone(), std::time::Instant::now());
                changed = true;
            }
        }
        if changed {
            agent.recheck_replication.notify_one();
        }
        st.replication_to = super::expect::replication_report(agent, &conns.attached);
    } else {
        conns.attached.clear();
    }
    st.checks = checks(&st, thresholds, &known, conf::is_initialized(&cfg.data_dir));
    st
}

/// Overlay what changes between probes: supervision, lease, activity.
pub fn overlay_live(agent: &Agent, st: &mut AgentStatus) {
    {
        let pg = lock(&agent.pg);
        let child = pg.child.as_ref().filter(|c| c.exit_status().is_none());
        st.postgres_running = child.is_some();
        st.postgres_pid = child.map(|c| c.pid());
        st.crash_count = pg.crash_count;
        st.last_crash = pg.last_crash.clone();
        st.fenced = pg.fenced;
    }
    if !st.postgres_running {
        st.ready = false;
        st.role = if st.fenced {
            InstanceRole::Fenced
        } else {
            InstanceRole::Down
        };
    }
    st.activity = lock(&agent.activity).clone();
    st.operation = lock(&agent.operation).clone();
    st.progress = lock(&agent.progress).clone();
    st.lease = agent.lease_state();
    st.vouched = lock(&agent.last_vouch)
        .as_ref()
        .map(|(primary, at)| VouchedState {
            primary: primary.clone(),
            ago_ms: u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
}

async fn upstream_head(agent: &Agent, conns: &mut Conns, up: &Member) -> Option<Lsn> {
    let key = up.address();
    if conns
        .upstream
        .as_ref()
        .is_none_or(|(k, c)| *k != key || c.is_closed())
    {
        conns.upstream = agent
            .member_client(up, Duration::from_secs(1))
            .await
            .ok()
            .map(|c| (key, c));
    }
    let (_, client) = conns.upstream.as_ref()?;
    match tokio::time::timeout(Duration::from_secs(2), query::head_lsn(client)).await {
        Ok(Ok(Some(lsn))) => Some(lsn),
        _ => {
            conns.upstream = None;
            None
        }
    }
}

fn check(name: &str, state: CheckState, value: Option<i64>, message: String) -> HealthCheck {
    HealthCheck {
        name: name.into(),
        state,
        value,
        message,
    }
}

fn level(v: i64, warning: i64, critical: i64) -> CheckState {
    if v >= critical {
        CheckState::Critical
    } else if v >= warning {
        CheckState::Warning
    } else {
        CheckState::Ok
    }
}

/// The health checks of `repmgr node check`, from one observation.
pub fn checks(
    st: &AgentStatus,
    t: Thresholds,
    known_standbys: &[String],
    data_dir_ok: bool,
) -> Vec<HealthCheck> {
    use CheckState::*;
    let mut out = Vec::new();
    let role = match st.role {
        InstanceRole::Primary | InstanceRole::Standby => {
            check("role", Ok, None, format!("{:?}", st.role).to_lowercase())
        }
        InstanceRole::Fenced => check("role", Warning, None, "fenced: stopped on request".into()),
        _ => check(
            "role",
            Critical,
            None,
            "postgres is not running or not answering".into(),
        ),
    };
    out.push(role);
    if st.role == InstanceRole::Standby {
        let lag = st.lag_bytes.unwrap_or(0);
        out.push(check(
            "replication_lag",
            level(lag, t.lag_warning, t.lag_critical),
            Some(lag),
            format!("{lag} bytes behind the upstream"),
        ));
        let streaming = st
            .wal_receiver
            .as_ref()
            .is_some_and(|w| w.status == WalReceiverState::Streaming);
        let up = st
            .upstream
            .as_ref()
            .map(|m| format!("{} ({})", m.name, m.address()))
            .unwrap_or_else(|| "an unknown upstream".into());
        out.push(if streaming {
            check("upstream", Ok, None, format!("streaming from {up}"))
        } else {
            check(
                "upstream",
                Critical,
                None,
                format!("not streaming from {up}"),
            )
        });
    } else if st.role == InstanceRole::Primary {
        out.push(check(
            "replication_lag",
            Ok,
            Some(0),
            "primary: no lag".into(),
        ));
    }
    if let Some(n) = st.archive_ready {
        out.push(check(
            "archive_ready",
            level(n, t.archive_warning, t.archive_critical),
            Some(n),
            format!(
                "{n} WAL files waiting to be archived (warning {}, critical {})",
                t.archive_warning, t.archive_critical
            ),
        ));
    }
    if st.role == InstanceRole::Primary {
        let attached: Vec<&str> = st.downstreams.iter().map(|d| d.name.as_str()).collect();
        let missing: Vec<&String> = known_standbys
            .iter()
            .filter(|k| !attached.contains(&k.as_str()))
            .collect();
        let n = attached.len() as i64;
        out.push(if known_standbys.is_empty() || missing.is_empty() {
            check("downstream", Ok, Some(n), format!("{n} standbys attached"))
        } else if missing.len() == known_standbys.len() {
            check(
                "downstream",
                Critical,
                Some(n),
                format!("no known standby attached (missing {missing:?})"),
            )
        } else {
            check(
                "downstream",
                Warning,
                Some(n),
                format!("{n} attached, missing {missing:?}"),
            )
        });
        let inactive: Vec<&str> = st
            .slots
            .iter()
            .filter(|s| !s.active)
            .map(|s| s.name.as_str())
            .collect();
        let slot_missing: Vec<String> = known_standbys
            .iter()
            .map(|k| slot_name(k))
            .filter(|s| !st.slots.iter().any(|x| x.name == *s))
            .collect();
        let bad = (inactive.len() + slot_missing.len()) as i64;
        out.push(if bad == 0 {
            check(
                "slots",
                Ok,
                Some(0),
                format!("{} slots, all active", st.slots.len()),
            )
        } else {
            check(
                "slots",
                Warning,
                Some(bad),
                format!("inactive {inactive:?}, missing {slot_missing:?}"),
            )
        });
    }
    out.push(if data_dir_ok {
        check("data_directory", Ok, None, st.data_dir.clone())
    } else {
        check(
            "data_directory",
            Critical,
            None,
            format!("{} holds no initialised cluster", st.data_dir),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Thresholds {
        Thresholds {
            archive_warning: 64,
            archive_critical: 128,
            lag_warning: 100,
            lag_critical: 1000,
        }
    }

    #[test]
    fn archive_backlog_levels_follow_thresholds() {
        let mut st = AgentStatus {
            role: InstanceRole::Primary,
            ..Default::default()
        };
        for (n, want) in [
            (0, CheckState::Ok),
            (64, CheckState::Warning),
            (130, CheckState::Critical),
        ] {
            st.archive_ready = Some(n);
            let c = checks(&st, t(), &[], true);
            let a = c.iter().find(|c| c.name == "archive_ready").unwrap();
            assert_eq!((a.state, a.value), (want, Some(n)));
        }
    }

    #[test]
    fn missing_known_standby_is_reported_on_primary() {
        let st = AgentStatus {
            role: InstanceRole::Primary,
            ..Default::default()
        };
        let c = checks(&st, t(), &["db-1".into()], true);
        let d = c.iter().find(|c| c.name == "downstream").unwrap();
        assert_eq!(d.state, CheckState::Critical);
        let s = c.iter().find(|c| c.name == "slots").unwrap();
        assert_eq!(s.state, CheckState::Warning);
        assert!(s.message.contains("db_1"));
    }

    #[test]
    fn down_instance_is_critical() {
        let st = AgentStatus {
            role: InstanceRole::Down,
            ..Default::default()
        };
        let c = checks(&st, t(), &[], false);
        assert!(c
            .iter()
            .all(|c| c.name == "role" || c.name == "data_directory"));
        assert!(c.iter().all(|c| c.state == CheckState::Critical));
    }
}
