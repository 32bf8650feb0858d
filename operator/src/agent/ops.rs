//! The agent's process and settings actions: stop, start, restart, config,
//! lease. Idempotent; validated before anything changes. Does I/O.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::agent::*;
use crate::pg::{self, query};

use super::lease;
use super::state::{lock, Agent};
use super::{AgentError, BadRequest, Conflict, Unavailable};

/// Parameters the agent owns: set on postgres' command line or by follow/demote.
const AGENT_OWNED: [&str; 7] = [
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "primary_conninfo",
    "primary_slot_name",
    "wal_log_hints",
    "cluster_name",
];

const SYNC_COMMIT: [&str; 5] = ["on", "remote_write", "remote_apply", "local", "off"];

fn step_timeout(agent: &Agent, req: &StopRequest) -> Duration {
    req.timeout
        .as_ref()
        .map(|d| d.duration())
        .unwrap_or(agent.cfg.stop_timeout)
}

fn smart_timeout(agent: &Agent, req: &StopRequest) -> Duration {
    req.smart_timeout
        .as_ref()
        .map(|d| d.duration())
        .unwrap_or_else(|| step_timeout(agent, req))
}

/// Stop postgres and keep it stopped (fenced) until started.
pub async fn stop(agent: Arc<Agent>, req: StopRequest) -> Result<ActionResponse, AgentError> {
    let mut steps = Vec::new();
    {
        let mut pg = lock(&agent.pg);
        pg.fenced = true;
        pg.want_running = false;
    }
    agent.step(
        "stop",
        &mut steps,
        format!("stop postgres ({})", req.mode.as_str()),
    );
    let report = agent
        .stop_and_account_from(
            req.mode,
            smart_timeout(&agent, &req),
            step_timeout(&agent, &req),
        )
        .await?;
    let message = match report.stopped {
        None => format!("{}; it stays stopped", report.describe()),
        Some(_) => report.describe(),
    };
    agent.step("stop", &mut steps, message.clone());
    let mut r = ActionResponse {
        changed: report.stopped.is_some(),
        message,
        steps,
        ..Default::default()
    };
    report.fill(&mut r);
    Ok(r)
}

/// `CHECKPOINT` now: before a planned stop, so that the shutdown checkpoint
/// (written once nobody can write any more) has little left to do.
pub async fn checkpoint(agent: Arc<Agent>) -> Result<ActionResponse, AgentError> {
    if !agent.postgres_running() {
        return Err(Unavailable::NotRunning {
            before: "a checkpoint",
        }
        .into());
    }
    let client = agent
        .local_client(Duration::from_secs(5))
        .await
        .map_err(Unavailable::NoAnswer)?;
    let started = Instant::now();
    client
        .batch_execute("CHECKPOINT")
        .await
        .map_err(sql_err("CHECKPOINT"))?;
    let message = format!("checkpoint done in {} ms", started.elapsed().as_millis());
    tracing::info!(instance = %agent.cfg.instance, "{message}");
    Ok(ActionResponse {
        changed: true,
        message,
        ..Default::default()
    })
}

/// Start postgres (and clear the fence).
pub async fn start(agent: Arc<Agent>, req: StopRequest) -> Result<ActionResponse, AgentError> {
    let mut steps = Vec::new();
    if !pg::conf::is_initialized(&agent.cfg.data_dir) {
        return Err(Conflict::NotBootstrapped.into());
    }
    lock(&agent.pg).fenced = false;
    agent.step("start", &mut steps, "start postgres");
    let timeout = req
        .timeout
        .as_ref()
        .map(|d| d.duration())
        .unwrap_or(agent.cfg.start_timeout);
    let changed = agent.start_postgres(timeout).await?;
    Ok(ActionResponse {
        changed,
        message: if changed {
            "started".into()
        } else {
            "postgres was already running".into()
        },
        steps,
        ..Default::default()
    })
}

/// Stop (escalating) and start again.
pub async fn restart(agent: Arc<Agent>, req: StopRequest) -> Result<ActionResponse, AgentError> {
    let mut steps = Vec::new();
    agent.step(
        "restart",
        &mut steps,
        format!("stop postgres ({})", req.mode.as_str()),
    );
    let report = agent
        .stop_and_account_from(
            req.mode,
            smart_timeout(&agent, &req),
            step_timeout(&agent, &req),
        )
        .await?;
    agent.step("restart", &mut steps, report.describe());
    lock(&agent.pg).fenced = false;
    agent.step("restart", &mut steps, "start postgres");
    agent.start_postgres(agent.cfg.start_timeout).await?;
    let mut r = ActionResponse {
        changed: true,
        message: "restarted".into(),
        steps,
        ..Default::default()
    };
    report.fill(&mut r);
    Ok(r)
}

fn sql_err(context: &str) -> impl FnOnce(tokio_postgres::Error) -> pg::Error + '_ {
    move |source| pg::Error::Sql {
        context: context.into(),
        source,
    }
}

/// Apply parameters and synchronous settings with ALTER SYSTEM and a reload.
pub async fn config(agent: Arc<Agent>, req: ConfigRequest) -> Result<ConfigResponse, AgentError> {
    for k in req.parameters.keys() {
        if AGENT_OWNED.contains(&k.as_str()) {
            return Err(BadRequest::ManagedParameter { name: k.clone() }.into());
        }
    }
    // The synchronous settings first: a parameter refused further down
    // must not keep the durability settings from being applied.
    let mut settings: Vec<(String, Option<String>)> = Vec::new();
    if let Some(sc) = &req.synchronous_commit {
        if !SYNC_COMMIT.contains(&sc.as_str()) {
            return Err(BadRequest::SynchronousCommit {
                value: sc.clone(),
                allowed: &SYNC_COMMIT,
            }
            .into());
        }
        settings.push(("synchronous_commit".into(), Some(sc.clone())));
    }
    if let Some(s) = &req.synchronous_standbys {
        settings.push(("synchronous_standby_names".into(), Some(s.to_setting())));
    }
    settings.extend(
        req.parameters
            .iter()
            .map(|(k, v)| (k.clone(), (!v.is_empty()).then(|| v.clone()))),
    );
    if req.complete {
        // Parameters given as a whole before and absent now are reset.
        let before = pg::conf::read_parameters(&agent.cfg.data_dir).unwrap_or_default();
        for k in before.keys() {
            if !req.parameters.contains_key(k)
                && !AGENT_OWNED.contains(&k.as_str())
                && !settings.iter().any(|(n, _)| n == k)
            {
                settings.push((k.clone(), None));
            }
        }
    }
    if !agent.postgres_running() {
        return Err(Unavailable::NotRunning {
            before: "changing its configuration",
        }
        .into());
    }
    let client = agent
        .local_client(Duration::from_secs(5))
        .await
        .map_err(Unavailable::NoAnswer)?;
    let names: Vec<String> = settings.iter().map(|(k, _)| k.clone()).collect();
    let row = client
        .query_one(
            "SELECT ARRAY(SELECT n FROM unnest($1::text[]) n WHERE n NOT IN (SELECT name FROM pg_settings))",
            &[&names],
        )
        .await
        .map_err(sql_err("check parameter names"))?;
    let unknown: Vec<String> = row.try_get(0).map_err(sql_err("check parameter names"))?;
    if !unknown.is_empty() {
        return Err(BadRequest::UnknownParameters { names: unknown }.into());
    }
    let row = client
        .query_one("SELECT pg_conf_load_time()::text", &[])
        .await
        .map_err(sql_err("pg_conf_load_time"))?;
    let loaded_before: String = row.try_get(0).map_err(sql_err("pg_conf_load_time"))?;
    for (k, v) in &settings {
        tracing::info!(parameter = %k, reset = v.is_none(), "ALTER SYSTEM");
        query::alter_system(&client, k, v.as_deref())
            .await
            .map_err(|source| BadRequest::Parameter {
                name: k.clone(),
                source,
            })?;
    }
    if let Some(known) = req.known_standbys {
        super::expect::set_standbys(&agent, known);
    }
    query::reload(&client).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let row = client
            .query_one("SELECT pg_conf_load_time()::text", &[])
            .await
            .map_err(sql_err("pg_conf_load_time"))?;
        let now: String = row.try_get(0).map_err(sql_err("pg_conf_load_time"))?;
        if now != loaded_before || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pending_restart = query::pending_restart(&client).await?;
    // Recorded only now: a probe that sees the spec's parameters in this file
    // also sees the pending_restart they caused, so the engine never takes an
    // instance that still needs a restart for one that is done.
    if req.complete {
        let text = serde_json::to_string_pretty(&req.parameters).unwrap_or_default();
        pg::conf::write_owned(
            &agent.runner,
            &agent.cfg.data_dir.join(pg::conf::PARAMETERS_FILE),
            &text,
        )?;
    }
    agent.probe_now.notify_one();
    Ok(ConfigResponse {
        applied: names,
        pending_restart,
        reloaded: true,
    })
}

/// Drop the named physical replication slots that are not active. A slot
/// that is active (a walsender uses it) or gone already is left as it is
/// and named in the answer.
pub async fn drop_slots(
    agent: Arc<Agent>,
    req: DropSlotsRequest,
) -> Result<ActionResponse, AgentError> {
    if !agent.postgres_running() {
        return Err(Unavailable::NotRunning {
            before: "dropping replication slots",
        }
        .into());
    }
    let client = agent
        .local_client(Duration::from_secs(5))
        .await
        .map_err(Unavailable::NoAnswer)?;
    let mut dropped = Vec::new();
    let mut kept = Vec::new();
    for slot in &req.slots {
        // One statement: a slot that became active since the engine looked is not dropped.
        let n = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND slot_type = 'physical' AND NOT active",
                &[slot],
            )
            .await;
        match n {
            Ok(1) => {
                tracing::info!(slot = %slot, "replication slot dropped");
                dropped.push(slot.clone());
            }
            Ok(_) => kept.push(slot.clone()),
            // It became active between the look and the drop.
            Err(e) => {
                tracing::info!(slot = %slot, error = %e, "replication slot kept");
                kept.push(slot.clone());
            }
        }
    }
    agent.probe_now.notify_one();
    let mut message = format!("dropped {}", list_or_none(&dropped));
    if !kept.is_empty() {
        message.push_str(&format!("; kept (active or gone): {}", kept.join(", ")));
    }
    Ok(ActionResponse {
        changed: !dropped.is_empty(),
        message,
        ..Default::default()
    })
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Renew the primary lease (the rules are in `lease`, the argument in
/// docs/agent.md): refused whole when malformed, from the future or of an
/// older epoch; a higher epoch is kept on disk before the lease changes.
pub async fn lease(agent: Arc<Agent>, req: LeaseRequest) -> Result<ActionResponse, AgentError> {
    let arrived = Instant::now();
    let _epoch = agent.epoch_writes.lock().await;
    let known = *lock(&agent.known_epoch);
    lease::check(&req, known, agent.started, arrived)?;
    agent.raise_known_epoch(req.epoch).await?;
    let r = lock(&agent.lease).renew(&req, agent.started, arrived);
    let from = match req.challenge {
        Some(c) => format!("from challenge {c}"),
        None => "from its arrival".to_string(),
    };
    let mut message = if r.remaining_ms == 0 {
        format!(
            "the renewal ({}ms {from}) had run out on arrival; the lease is not held",
            req.ttl_ms
        )
    } else if r.extended {
        format!(
            "lease renewed for {}ms {from}: {}ms left",
            req.ttl_ms, r.remaining_ms
        )
    } else {
        format!(
            "lease not extended: it runs longer than {}ms {from} ({}ms left)",
            req.ttl_ms, r.remaining_ms
        )
    };
    if !r.newest {
        message.push_str("; a newer renewal was taken already: its epoch and peers stay");
    }
    Ok(ActionResponse {
        changed: r.extended,
        message,
        ..Default::default()
    })
}
