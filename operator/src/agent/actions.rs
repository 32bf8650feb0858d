//! The agent's replication actions: promote, demote, follow, rewind and
//! re-clone (process and settings actions are in `ops`). Each validates
//! before it changes anything, is idempotent where it can be, and logs its
//! steps. Does I/O.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::agent::*;
use crate::pg::{self, conf, query};

use super::bootstrap::{clone_into, fresh_dir, install, sibling, standby_files};
use super::judge::Plan;
use super::standby::STREAM_TIMEOUT;
use super::state::Agent;
use super::{AgentError, BadTarget, Conflict, Unavailable};

/// How often a promotion in progress is checked.
const PROMOTE_POLL: Duration = Duration::from_millis(5);

fn timeout_or(t: &Option<crate::api::DurationString>, default: Duration) -> Duration {
    t.as_ref().map(|d| d.duration()).unwrap_or(default)
}

/// Promote this standby. The answer goes out as soon as the server left
/// recovery on a new timeline: every moment between that and the caller's
/// next step (the `-rw` label) is a moment without writes. The rest of the
/// promotion, [`after_promotion`], runs after the answer, still before any
/// other action.
pub async fn promote(agent: Arc<Agent>, req: PromoteRequest) -> Result<ActionResponse, AgentError> {
    let mut steps = Vec::new();
    if !agent.postgres_running() {
        return Err(Unavailable::NotRunning {
            before: "promoting",
        }
        .into());
    }
    let client = agent
        .local_client(Duration::from_secs(5))
        .await
        .map_err(Unavailable::NoAnswer)?;
    let (in_recovery, before) = query::recovery_timeline(&client).await?;
    if !in_recovery {
        return Err(AgentError::AlreadyPrimary {
            instance: agent.cfg.instance.clone(),
            timeline: before.unwrap_or(0),
        });
    }
    let wait = timeout_or(&req.timeout, Duration::from_secs(60));
    agent.step("promote", &mut steps, "pg_promote(wait => false)");
    let sql = |context: &'static str| {
        move |source| pg::Error::Sql {
            context: context.into(),
            source,
        }
    };
    let row = client
        .query_one("SELECT pg_promote(false)", &[])
        .await
        .map_err(sql("pg_promote"))?;
    let signalled: bool = row.try_get(0).map_err(sql("pg_promote"))?;
    if !signalled {
        return Err(Conflict::PromoteNotSignalled.into());
    }
    // pg_promote(wait => true) looks only every 100 ms.
    let deadline = Instant::now() + wait;
    let timeline = loop {
        let (in_recovery, timeline) = query::recovery_timeline(&client).await?;
        if !in_recovery && timeline > before {
            break timeline;
        }
        if Instant::now() > deadline {
            return Err(if in_recovery {
                Conflict::PromotionTimeout {
                    seconds: wait.as_secs(),
                }
            } else {
                Conflict::NoNewTimeline
            }
            .into());
        }
        tokio::time::sleep(PROMOTE_POLL).await;
    };
    agent.probe_now.notify_one();
    agent.step(
        "promote",
        &mut steps,
        format!("left recovery; timeline {}", timeline.unwrap_or(0)),
    );
    Ok(ActionResponse {
        changed: true,
        message: format!("{} is now the primary", agent.cfg.instance),
        steps,
        timeline,
        ..Default::default()
    })
}

/// The rest of a promotion, after its answer: clear the standby settings a
/// primary ignores (a later restart must not find them), and make the new
/// timeline durable in pg_control (pg_rewind against this server reads it
/// from there; a rewind also checkpoints its source before it starts).
pub async fn after_promotion(agent: Arc<Agent>) -> Result<(), AgentError> {
    let mut steps = Vec::new();
    let client = agent
        .local_client(Duration::from_secs(5))
        .await
        .map_err(Unavailable::NoAnswer)?;
    query::alter_system(&client, "primary_conninfo", None).await?;
    query::alter_system(&client, "primary_slot_name", None).await?;
    query::reload(&client).await?;
    conf::remove_if_exists(&agent.cfg.data_dir.join(conf::UPSTREAM_FILE))?;
    agent.step("promote", &mut steps, "cleared the standby settings");
    tokio::spawn(async move {
        if let Err(e) = client.batch_execute("CHECKPOINT").await {
            tracing::warn!(error = %e, "CHECKPOINT after promotion failed");
        }
    });
    agent.step("promote", &mut steps, "checkpoint started");
    Ok(())
}

/// Restart as a standby of `primary`, rewinding first when the timelines diverged.
pub async fn demote(agent: Arc<Agent>, req: DemoteRequest) -> Result<ActionResponse, AgentError> {
    agent.validate_member(&req.primary, "primary")?;
    agent.check_primary(&req.primary, "primary").await?;
    // A running standby that does not need a rewind is only repointed; one
    // whose WAL went past the point where its timeline left the primary's
    // (it could never stream again) is stopped and rewound below.
    let diverged = match agent.postgres_running() && agent.in_recovery().await? {
        false => false,
        true => match agent.judge_running(&req.primary).await {
            Ok(Plan::Rewind { reason, .. }) => {
                tracing::info!(instance = %agent.cfg.instance, %reason, "running standby diverged: rewinding it");
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(instance = %agent.cfg.instance, error = %e, "rejoin check failed; following");
                false
            }
        },
    };
    if !diverged && agent.postgres_running() && agent.in_recovery().await? {
        let mut r = follow(
            agent,
            FollowRequest {
                primary: req.primary,
                cascade: false,
            },
        )
        .await?;
        r.message = format!("already a standby; {}", r.message);
        return Ok(r);
    }
    let mut steps = Vec::new();
    let timeout = timeout_or(&req.timeout, agent.cfg.stop_timeout);
    let last_lsn = agent.head_lsn().await;
    agent.step("demote", &mut steps, "stop postgres (fast)");
    let report = agent.stop_and_account(StopMode::Fast, timeout).await?;
    agent.step("demote", &mut steps, report.describe());
    let rewound_from = agent.wal_end().await.or(last_lsn);
    agent.step("demote", &mut steps, "pg_rewind --dry-run");
    let dry = agent.pg_rewind(&req.primary, true, &req.limits).await?;
    let mut diverged_at = dry.diverged_at;
    if dry.needed {
        agent.step(
            "demote",
            &mut steps,
            format!("rewind needed ({}): pg_rewind", dry.reason),
        );
        let done = agent.pg_rewind(&req.primary, false, &req.limits).await?;
        diverged_at = done.diverged_at.or(diverged_at);
    } else {
        agent.step(
            "demote",
            &mut steps,
            format!("no rewind needed ({})", dry.reason),
        );
    }
    agent
        .start_as_standby("demote", &req.primary, &mut steps)
        .await?;
    let mut r = ActionResponse {
        changed: true,
        message: format!(
            "{} is a standby of {}",
            agent.cfg.instance, req.primary.name
        ),
        steps,
        rewind_needed: Some(dry.needed),
        diverged_at,
        rewound_from: rewound_from.filter(|_| dry.needed),
        ..Default::default()
    };
    report.fill(&mut r);
    Ok(r)
}

/// Point this standby at `primary`: reload, restart only when needed.
pub async fn follow(agent: Arc<Agent>, req: FollowRequest) -> Result<ActionResponse, AgentError> {
    let p = &req.primary;
    agent.validate_member(p, "primary")?;
    let running = agent.postgres_running();
    if running && !agent.in_recovery().await? {
        return Err(Conflict::IsPrimary {
            instance: agent.cfg.instance.clone(),
            primary: p.name.clone(),
        }
        .into());
    }
    if !running && !conf::is_standby(&agent.cfg.data_dir) {
        return Err(Conflict::IsStoppedPrimary {
            instance: agent.cfg.instance.clone(),
            primary: p.name.clone(),
        }
        .into());
    }
    if req.cascade {
        agent.check_member(p, "primary").await?;
    } else {
        agent.check_primary(p, "primary").await?;
    }
    let mut steps = Vec::new();
    let current = conf::read_upstream(&agent.cfg.data_dir);
    if running
        && current.as_ref() == Some(p)
        && agent.wait_streaming(p, Duration::from_millis(500)).await
    {
        return Ok(ActionResponse {
            changed: false,
            message: format!("already streaming from {}", p.name),
            ..Default::default()
        });
    }
    agent.step(
        "follow",
        &mut steps,
        "ensure the replication slot on the primary",
    );
    agent.ensure_slot_on(p).await?;
    if !running {
        standby_files(&agent, &agent.cfg.data_dir, p)?;
        agent.step("follow", &mut steps, "configured; start postgres");
        agent.start_postgres(agent.cfg.start_timeout).await?;
    } else {
        let client = agent.local_client(Duration::from_secs(5)).await?;
        let conninfo = conf::primary_conninfo(
            p,
            &agent.cfg.replication_user,
            &agent.cfg.instance,
            agent.runner.passfile(),
        );
        agent.step(
            "follow",
            &mut steps,
            "ALTER SYSTEM SET primary_conninfo; reload",
        );
        query::alter_system(&client, "primary_conninfo", Some(&conninfo)).await?;
        query::alter_system(
            &client,
            "primary_slot_name",
            Some(&slot_name(&agent.cfg.instance)),
        )
        .await?;
        conf::write_upstream(&agent.runner, &agent.cfg.data_dir, p)?;
        query::reload(&client).await?;
    }
    if !agent.wait_streaming(p, Duration::from_secs(15)).await {
        agent.step("follow", &mut steps, "not streaming after reload: restart");
        agent
            .stop_postgres(StopMode::Fast, agent.cfg.stop_timeout)
            .await?;
        agent.start_postgres(agent.cfg.start_timeout).await?;
        if !agent.wait_streaming(p, STREAM_TIMEOUT).await {
            return Err(Conflict::NotStreamingAfterRestart {
                primary: p.name.clone(),
            }
            .into());
        }
    }
    agent.step("follow", &mut steps, format!("streaming from {}", p.name));
    Ok(ActionResponse {
        changed: true,
        message: format!("{} follows {}", agent.cfg.instance, p.name),
        steps,
        ..Default::default()
    })
}

/// pg_rewind from `source` (or only say whether it is needed), then run as its standby.
pub async fn rewind(agent: Arc<Agent>, req: RewindRequest) -> Result<ActionResponse, AgentError> {
    agent.validate_member(&req.source, "source")?;
    agent.check_primary(&req.source, "source").await?;
    let mut steps = Vec::new();
    if req.dry_run && agent.postgres_running() {
        // pg_rewind --dry-run needs postgres stopped: judge from the
        // timeline histories instead, and leave it running.
        agent.step(
            "rewind",
            &mut steps,
            "compare timeline histories (postgres keeps running)",
        );
        let plan = agent.judge_running(&req.source).await?;
        let (rewind_needed, reclone_needed, diverged_at) = match &plan {
            Plan::Nothing { .. } | Plan::Follow { .. } => (false, false, None),
            Plan::Rewind { diverged_at, .. } => (true, false, Some(*diverged_at)),
            Plan::Reclone { .. } => (true, true, None),
        };
        return Ok(ActionResponse {
            changed: false,
            message: plan.describe(&agent.cfg.instance, &req.source.name),
            steps,
            rewind_needed: Some(rewind_needed),
            reclone_needed: Some(reclone_needed),
            diverged_at,
            rewound_from: agent.head_lsn().await.filter(|_| rewind_needed),
            ..Default::default()
        });
    }
    if req.dry_run {
        let rewound_from = agent.wal_end().await;
        agent.step("rewind", &mut steps, "pg_rewind --dry-run");
        let dry = agent.pg_rewind(&req.source, true, &req.limits).await?;
        return Ok(ActionResponse {
            changed: false,
            message: if dry.needed {
                format!("a rewind is needed: {}", dry.reason)
            } else {
                format!("no rewind is needed: {}", dry.reason)
            },
            steps,
            rewind_needed: Some(dry.needed),
            diverged_at: dry.diverged_at,
            rewound_from: rewound_from.filter(|_| dry.needed),
            ..Default::default()
        });
    }
    if agent.postgres_running()
        && agent.in_recovery().await?
        && conf::read_upstream(&agent.cfg.data_dir).as_ref() == Some(&req.source)
        && agent
            .wait_streaming(&req.source, Duration::from_millis(500))
            .await
    {
        return Ok(ActionResponse {
            changed: false,
            message: format!(
                "already streaming from {}: on its timeline, nothing to rewind",
                req.source.name
            ),
            rewind_needed: Some(false),
            ..Default::default()
        });
    }
    let last_lsn = agent.head_lsn().await;
    agent.step("rewind", &mut steps, "stop postgres (fast)");
    let report = agent
        .stop_and_account(StopMode::Fast, agent.cfg.stop_timeout)
        .await?;
    agent.step("rewind", &mut steps, report.describe());
    let rewound_from = agent.wal_end().await.or(last_lsn);
    agent.step("rewind", &mut steps, "pg_rewind");
    let done = agent.pg_rewind(&req.source, false, &req.limits).await?;
    agent.step(
        "rewind",
        &mut steps,
        format!("pg_rewind done: {}", done.reason),
    );
    agent
        .start_as_standby("rewind", &req.source, &mut steps)
        .await?;
    let mut r = ActionResponse {
        changed: done.needed,
        message: format!("rewound from {}; streaming", req.source.name),
        steps,
        rewind_needed: Some(done.needed),
        diverged_at: done.diverged_at,
        rewound_from: rewound_from.filter(|_| done.needed),
        ..Default::default()
    };
    report.fill(&mut r);
    Ok(r)
}

/// Move the data directory aside (keeping one old copy), clone it again from `source`, start as its standby.
pub async fn reclone(agent: Arc<Agent>, req: RecloneRequest) -> Result<ActionResponse, AgentError> {
    let src = &req.source;
    agent.validate_member(src, "source")?;
    agent
        .member_client(src, Duration::from_secs(5))
        .await
        .map_err(|source| BadTarget::Unreachable {
            what: "source",
            name: src.name.clone(),
            address: src.address(),
            source: Box::new(source),
        })?;
    let dir = agent.cfg.data_dir.clone();
    let mut steps = Vec::new();
    agent.step("reclone", &mut steps, "stop postgres (fast)");
    let report = agent
        .stop_and_account(StopMode::Fast, agent.cfg.stop_timeout)
        .await?;
    agent.step("reclone", &mut steps, report.describe());
    let mut moved = None;
    if dir.exists() {
        let stamp = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%S%.3fZ")
            .to_string();
        let old = sibling(&dir, &format!(".old-{stamp}"));
        agent.step(
            "reclone",
            &mut steps,
            format!("move the data directory to {}", old.display()),
        );
        std::fs::rename(&dir, &old).map_err(pg::Error::io(&dir))?;
        remove_old_copies(&dir, &old)?;
        moved = Some(old.display().to_string());
    }
    let scratch = sibling(&dir, ".bootstrap");
    fresh_dir(&agent, &scratch)?;
    agent.step(
        "reclone",
        &mut steps,
        format!("pg_basebackup from {}", src.address()),
    );
    clone_into(&agent, &scratch, src, &req.limits).await?;
    install(&scratch, &dir)?;
    agent.start_as_standby("reclone", src, &mut steps).await?;
    let mut r = ActionResponse {
        changed: true,
        message: format!("re-cloned from {}; streaming", src.name),
        steps,
        moved_aside_to: moved,
        ..Default::default()
    };
    report.fill(&mut r);
    Ok(r)
}

/// Delete every `<dir>.old-*` but `keep`.
fn remove_old_copies(dir: &std::path::Path, keep: &std::path::Path) -> Result<(), AgentError> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Ok(());
    };
    let prefix = format!("{}.old-", name.to_string_lossy());
    for e in std::fs::read_dir(parent).map_err(pg::Error::io(parent))? {
        let e = e.map_err(pg::Error::io(parent))?;
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(&prefix) && p != keep {
            tracing::info!(path = %p.display(), "removing an older data directory copy");
            std::fs::remove_dir_all(&p).map_err(pg::Error::io(&p))?;
        }
    }
    Ok(())
}
