//! `tandem local up`: prepares DIR, starts (or adopts) one agent per
//! instance, the rw / ro endpoints and the control API, and runs the driver
//! loop until Ctrl-C, SIGTERM or `tandem local down`. Does I/O.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::args::{UpArgs, EXIT_FAILED, EXIT_OK};
use super::control::ControlServer;
use super::driver::{tick, Driver, Persisted, Tracked, TICK};
use super::procs::{pid_alive, AgentLaunch, Agents};
use super::proxy::Endpoint;
use super::report::{print_table, StatusReport};
use super::setup;
use super::state::{write_private, LocalState};
use crate::agent::client::AgentClient;
use crate::api::Phase;
use crate::platform::HaLoop;

/// Superuser name of local clusters.
const SUPERUSER: &str = "postgres";
/// Replication user of local clusters.
const REPLICATION_USER: &str = "replicator";

fn fail(msg: impl std::fmt::Display) -> anyhow::Result<i32> {
    eprintln!("{msg}");
    Ok(EXIT_FAILED)
}

/// Run the cluster in the foreground; returns the exit code.
pub async fn run(args: UpArgs) -> anyhow::Result<i32> {
    args.log.init(
        crate::logging::LogFormat::Text,
        crate::logging::Output::Stderr,
    )?;
    let (name, spec) = match setup::read_manifest(&args.file) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if let Err(e) = std::fs::create_dir_all(&args.dir.dir) {
        return fail(format!("cannot create {}: {e}", args.dir.dir.display()));
    }
    let dir = match args.dir.dir.canonicalize() {
        Ok(d) => d,
        Err(e) => return fail(format!("cannot use {}: {e}", args.dir.dir.display())),
    };
    let previous = LocalState::load(&dir).ok();
    if let Some(p) = &previous {
        if p.pid != 0 && p.pid != std::process::id() && pid_alive(p.pid) {
            return fail(setup::SetupError::AlreadyRunning {
                dir: dir.display().to_string(),
                pid: p.pid,
            });
        }
        if p.name != name {
            return fail(format!(
                "{} holds cluster {}, not {name}: use another --dir (or remove this one)",
                dir.display(),
                p.name
            ));
        }
    }
    let run_as = match &args.run_as {
        Some(u) => Some(u.clone()),
        None if nix::unistd::geteuid().is_root() => Some("postgres".to_string()),
        None => None,
    };
    if let Some(u) = &run_as {
        if !matches!(nix::unistd::User::from_name(u), Ok(Some(_))) {
            return fail(setup::SetupError::NoSuchUser(u.clone()));
        }
    }
    let pg_bin = match crate::pg::bins::find_bin_dir(args.pg_bin.as_deref()) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    if let Err(e) = setup::open_for_postgres(&dir) {
        return fail(e);
    }
    let (files, token, superuser_pw, replication_pw) = match setup::secrets(&dir) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let layout = match setup::layout(
        &dir,
        &name,
        spec.instances,
        previous.as_ref(),
        args.rw_port,
        args.ro_port,
    ) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let setup::Layout {
        control,
        rw: rw_addr,
        ro: ro_addr,
        address_block,
        instances,
    } = layout;
    // Instances a `tandem local apply` added that this manifest does not
    // name: their agents would run on unsupervised. Stopped (SIGTERM: the
    // agent stops postgres fast); their data directories stay.
    for p in previous.iter().flat_map(|p| p.instances.iter()) {
        // The pid must still be that agent's (`--instance NAME` on its command line).
        let is_its_agent = std::fs::read(format!("/proc/{}/cmdline", p.agent_pid))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == p.name.as_bytes()));
        if !instances.iter().any(|i| i.name == p.name)
            && p.agent_pid != 0
            && pid_alive(p.agent_pid)
            && is_its_agent
        {
            warn!(instance = %p.name, pid = p.agent_pid, "not in the manifest: stopping its agent (its data directory stays)");
            if let Ok(pid) = i32::try_from(p.agent_pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
    let logs = dir.join("logs");
    if let Err(e) = std::fs::create_dir_all(&logs) {
        return fail(format!("cannot create {}: {e}", logs.display()));
    }
    let persisted: Persisted = std::fs::read_to_string(dir.join(Persisted::FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();

    let mut agents = Agents::default();
    let mut members = BTreeMap::new();
    for i in &instances {
        let launch = AgentLaunch {
            cluster: name.clone(),
            instance: i.name.clone(),
            data_dir: i.data_dir.clone(),
            address: i.address,
            pg_port: i.pg_port,
            agent: i.agent,
            token_file: files.token.clone(),
            superuser_password_file: files.superuser_password.clone(),
            replication_password_file: files.replication_password.clone(),
            pg_config_file: None,
            pg_bin: Some(pg_bin.clone()),
            run_as: run_as.clone(),
            log_file: logs.join(format!("{}.log", i.name)),
        };
        let client = AgentClient::new(format!("http://{}", i.agent), token.clone())?;
        let adopted = agents.adopt(&i.name, i.agent_pid);
        members.insert(
            i.name.clone(),
            Tracked {
                launch,
                client,
                last_report: None,
                last_seen: None,
                // Not adopted: start at the first tick.
                died_at: (!adopted).then(|| Instant::now() - Duration::from_secs(60)),
                started_at: None,
                poll: super::poll::Poll::new(),
            },
        );
    }

    let state = LocalState {
        name: name.clone(),
        control,
        rw: rw_addr,
        ro: ro_addr,
        superuser: setup::credentials(SUPERUSER, &superuser_pw),
        database: "postgres".into(),
        instances,
        pid: std::process::id(),
        token: token.clone(),
        replication: Some(setup::credentials(REPLICATION_USER, &replication_pw)),
        address_block,
    };
    if let Err(e) = state.save(&dir) {
        return fail(e);
    }
    let pgpass = dir.join("pgpass");
    if let Err(e) = write_private(&pgpass, pgpass_lines(&state, &superuser_pw).as_bytes()) {
        warn!(error = %e, "cannot write pgpass");
    }

    let (rw_tx, rw_rx) = watch::channel(None);
    let (ro_tx, ro_rx) = watch::channel(None);
    let rw = match Endpoint::bind("rw", rw_addr, rw_rx).await {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot listen on {rw_addr} (rw endpoint): {e}")),
    };
    let ro = match Endpoint::bind("ro", ro_addr, ro_rx).await {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot listen on {ro_addr} (ro endpoint): {e}")),
    };
    tokio::spawn(rw.serve());
    tokio::spawn(ro.serve());
    let (report_tx, report_rx) = watch::channel(StatusReport {
        name: name.clone(),
        ..Default::default()
    });
    let (req_tx, mut req_rx) = mpsc::channel(32);
    let listener = match tokio::net::TcpListener::bind(control).await {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot listen on {control} (control API): {e}")),
    };
    let router = ControlServer::new(token.clone(), req_tx, report_rx).router();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            warn!(error = %e, "control API stopped");
        }
    });

    info!(cluster = %name, dir = %dir.display(), rw = %rw_addr, ro = %ro_addr, control = %control, "local cluster starting");
    let driver = Driver {
        name: name.clone(),
        dir: dir.clone(),
        base_spec: spec,
        persisted,
        state,
        members,
        agents,
        requests: Default::default(),
        rw: rw_tx,
        ro: ro_tx,
        report: report_tx,
        last_saved: String::new(),
        before: Vec::new(),
    };
    let mut ha = HaLoop::new(driver);

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // An agent that exits (killed, crashed) is a child of this process: its
    // SIGCHLD lets the loop see it gone now, as a kubelet reports a container's end.
    let mut sigchld = signal(SignalKind::child())?;
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announced = false;
    let finished = ha.finished();
    // When a condition the engine waits on ends by the clock (a lease, a detection window).
    let mut wake_at: Option<jiff::Timestamp> = None;
    loop {
        tokio::select! {
            // A finished action lets a transition take its next step now.
            _ = finished.notified() => wake_at = tick(&mut ha).await,
            _ = tokio::time::sleep(crate::platform::until(wake_at)), if wake_at.is_some() => {
                wake_at = tick(&mut ha).await;
            }
            _ = interval.tick() => {
                wake_at = tick(&mut ha).await;
                let driver = &ha.platform;
                if !announced && driver.persisted.status.phase == Some(Phase::Healthy) {
                    announced = true;
                    banner(&dir, &driver.report.borrow(), &driver.state);
                }
            }
            Some(sub) = req_rx.recv() => {
                if ha.platform.submit(sub) {
                    break;
                }
                // A request is decided at once, not at the next tick.
                wake_at = tick(&mut ha).await;
            }
            _ = sigchld.recv() => {
                // Other children (psql of the switchover precheck) end too: only an agent's end counts.
                if ha.platform.agents.any_exited() {
                    wake_at = tick(&mut ha).await;
                }
            }
            _ = sigint.recv() => { info!("interrupted: stopping the cluster"); break; }
            _ = sigterm.recv() => { info!("terminated: stopping the cluster"); break; }
        }
    }
    ha.platform.shutdown().await;
    eprintln!(
        "cluster {name} stopped; its data stays in {} (tandem local up starts it again)",
        dir.display()
    );
    Ok(EXIT_OK)
}

/// DIR/pgpass: the superuser's password for the endpoints (127.0.0.1) and each instance's address.
fn pgpass_lines(state: &LocalState, password: &str) -> String {
    let mut hosts = std::collections::BTreeSet::from([super::hosts::SHARED]);
    hosts.extend(state.instances.iter().map(|i| i.address));
    hosts
        .iter()
        .map(|h| format!("{h}:*:*:{SUPERUSER}:{password}\n"))
        .collect()
}

fn banner(dir: &Path, report: &StatusReport, state: &LocalState) {
    let mut out = Vec::new();
    print_table(report, &mut out);
    let pass = dir.join("pgpass");
    println!(
        "\n{}\nrw (primary):  PGPASSFILE={} psql \"host={} port={} user={} dbname={}\"\nro (standby):  PGPASSFILE={} psql \"host={} port={} user={} dbname={}\"\n\nstatus:        tandem local status --dir {}\nswitchover:    tandem local switchover --dir {} --to any\nstop:          Ctrl-C, or tandem local down --dir {}\n",
        String::from_utf8_lossy(&out),
        pass.display(),
        state.rw.ip(),
        state.rw.port(),
        state.superuser.user,
        state.database,
        pass.display(),
        state.ro.ip(),
        state.ro.port(),
        state.superuser.user,
        state.database,
        dir.display(),
        dir.display(),
        dir.display(),
    );
}
