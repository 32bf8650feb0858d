//! Re-entrant bootstrap: an initialised data directory is just started in
//! the role it has; an empty one is initdb'd (primary) or cloned with
//! pg_basebackup (standby) into a scratch directory that is renamed into
//! place only when complete. Does I/O.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::api::agent::{slot_name, Member, ToolLimits};
use crate::pg::{self, conf, query, Tool, Watch};

use super::state::{lock, Agent};
use super::{AgentError, BadTarget, Conflict};

/// Bootstrap (retrying until it works), then leave postgres running.
pub async fn run(agent: Arc<Agent>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let result = {
            let _ops = agent.ops.lock().await;
            bootstrap_once(&agent).await
        };
        match result {
            Ok(()) => {
                *lock(&agent.operation) = None;
                agent.set_activity(None);
                agent.probe_now.notify_one();
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "bootstrap failed; retrying");
                agent.set_activity(Some(format!("bootstrap failed (retrying): {e}")));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// A sibling path of the data directory: `<dir><suffix>`.
pub fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// An empty directory owned by the run-as user with mode 0700 (replacing any leftover).
pub fn fresh_dir(agent: &Agent, dir: &Path) -> Result<(), AgentError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(pg::Error::io(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(pg::Error::io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(pg::Error::io(dir))?;
    agent.runner.chown(dir)?;
    Ok(())
}

/// Put a completed scratch directory in place of the (missing or empty) data directory.
pub fn install(scratch: &Path, dir: &Path) -> Result<(), AgentError> {
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(pg::Error::io(dir))?;
    }
    std::fs::rename(scratch, dir).map_err(pg::Error::io(dir))?;
    Ok(())
}

async fn bootstrap_once(agent: &Arc<Agent>) -> Result<(), AgentError> {
    let cfg = &agent.cfg;
    let dir = &cfg.data_dir;
    let mut steps = Vec::new();
    if conf::is_initialized(dir) {
        if !conf::is_standby(dir) {
            // The data directory of a primary, met by a (re)started agent: it
            // may have been replaced meanwhile. It stays stopped until the
            // operator says which it is: /start (still the primary) or
            // /demote (follow the new one). Two writable primaries never run.
            lock(&agent.pg).fenced = true;
            agent.step(
                "bootstrap",
                &mut steps,
                "data directory of a primary: postgres stays stopped until told to start or demote",
            );
            return Ok(());
        }
        agent.step(
            "bootstrap",
            &mut steps,
            "data directory exists: starting as standby",
        );
        agent.start_postgres(cfg.start_timeout).await?;
        return Ok(());
    }
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(Conflict::ForeignDataDir {
                dir: dir.to_path_buf(),
            }
            .into());
        }
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(pg::Error::io(parent))?;
    }
    let scratch = sibling(dir, ".bootstrap");
    fresh_dir(agent, &scratch)?;
    match &cfg.bootstrap_from {
        None => {
            agent.step("bootstrap", &mut steps, "initdb as the primary");
            initdb(agent, &scratch).await?;
        }
        Some(primary) => {
            agent.step(
                "bootstrap",
                &mut steps,
                format!("clone from {} with pg_basebackup", primary.address()),
            );
            clone_into(agent, &scratch, primary, &ToolLimits::default()).await?;
        }
    }
    install(&scratch, dir)?;
    agent.step("bootstrap", &mut steps, "start postgres");
    agent.start_postgres(cfg.start_timeout).await?;
    Ok(())
}

async fn initdb(agent: &Agent, scratch: &Path) -> Result<(), AgentError> {
    let cfg = &agent.cfg;
    let pwfile = cfg.run_dir.join("initdb.pw");
    conf::write_owned(&agent.runner, &pwfile, &cfg.superuser_password)?;
    let args: Vec<OsString> = vec![
        "-D".into(),
        scratch.into(),
        "--data-checksums".into(),
        "--auth=scram-sha-256".into(),
        "--username".into(),
        cfg.superuser.clone().into(),
        "--pwfile".into(),
        pwfile.clone().into(),
        "--encoding=UTF8".into(),
        "--locale=C.UTF-8".into(),
        "--no-instructions".into(),
    ];
    let result = agent
        .runner
        .run(Tool::Initdb, &args, None, Duration::from_secs(600))
        .await;
    conf::remove_if_exists(&pwfile)?;
    result?;
    conf::write_owned(
        &agent.runner,
        &scratch.join("postgresql.conf"),
        &conf::postgresql_conf(None),
    )?;
    conf::write_owned(
        &agent.runner,
        &scratch.join("pg_hba.conf"),
        &conf::pg_hba_conf(&cfg.superuser, &cfg.replication_user),
    )?;
    let sql = format!(
        "CREATE ROLE \"{}\" WITH REPLICATION LOGIN PASSWORD {};\n",
        cfg.replication_user.replace('"', "\"\""),
        conf::sql_literal(&cfg.replication_password)
    );
    let args: Vec<OsString> = vec![
        "--single".into(),
        "-D".into(),
        scratch.into(),
        "postgres".into(),
    ];
    let out = agent
        .runner
        .run(
            Tool::Postgres,
            &args,
            Some(sql.as_bytes()),
            Duration::from_secs(120),
        )
        .await?;
    if out.contains("ERROR") {
        return Err(pg::Error::ToolFailed {
            tool: "postgres --single".into(),
            status: "creating the replication role".into(),
            output: out,
        }
        .into());
    }
    Ok(())
}

/// pg_basebackup `source` into the empty `target`, through this instance's
/// slot on the source, and make it a standby of `source`.
pub async fn clone_into(
    agent: &Agent,
    target: &Path,
    source: &Member,
    limits: &ToolLimits,
) -> Result<(), AgentError> {
    let cfg = &agent.cfg;
    let slot = slot_name(&cfg.instance);
    let client = agent
        .member_client(source, Duration::from_secs(5))
        .await
        .map_err(|source_err| BadTarget::Lost {
            address: source.address(),
            source: Box::new(source_err),
        })?;
    query::ensure_slot(&client, &slot).await?;
    drop(client);
    let args: Vec<OsString> = vec![
        "-D".into(),
        target.into(),
        "-h".into(),
        source.host.clone().into(),
        "-p".into(),
        source.port.to_string().into(),
        "-U".into(),
        cfg.replication_user.clone().into(),
        "-X".into(),
        "stream".into(),
        "-c".into(),
        "fast".into(),
        "-S".into(),
        slot.clone().into(),
        "-w".into(),
        "--progress".into(),
    ];
    let watch = Watch {
        limit: limits.clone_timeout.as_ref().map(|d| d.duration()),
        stall: limits.stall(),
    };
    // The slot can still be held for a moment by the walsender of this
    // instance's previous (just stopped) walreceiver.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match agent.run_long(Tool::PgBasebackup, &args, watch).await {
            Ok(_) => break,
            Err(pg::Error::ToolFailed { output, .. })
                if attempts < 10 && output.contains("is active for PID") =>
            {
                tracing::info!(slot = %slot, "slot still active; retrying pg_basebackup");
                fresh_dir(agent, target)?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    standby_files(agent, target, source)
}

/// Write standby.signal, primary_conninfo, the slot and the upstream record into `dir`.
pub fn standby_files(agent: &Agent, dir: &Path, primary: &Member) -> Result<(), AgentError> {
    let cfg = &agent.cfg;
    let conninfo = conf::primary_conninfo(
        primary,
        &cfg.replication_user,
        &cfg.instance,
        agent.runner.passfile(),
    );
    conf::set_standby(
        &agent.runner,
        dir,
        Some((primary, conninfo, slot_name(&cfg.instance))),
    )?;
    lock(&agent.pg).fenced = false;
    Ok(())
}
