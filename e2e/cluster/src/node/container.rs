//! One container's life: build its env, start its process, run its probes,
//! record exits, restart it with back-off as the restart policy says, stop it
//! with its image's stop signal and a grace period. Its state goes to the
//! pod's shared `CState` for status and logs. I/O (processes, API reads).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, Service};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::Instant;

use super::ctx::{lock, CState, Ctx, PodShared, Run};
use super::env::{self, EnvInputs, Sources};
use super::identity::Identity;
use super::images::{self, Image};
use super::launch::{self, Mount, Namespaces};
use super::probes::{ExecCtx, Kind, Prober, Verdict};
use super::restart::{Backoff, Policy};
use super::{cgroup, events, volumes};

/// What the pod asks of its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep running.
    No,
    /// Stop: stop signal now, SIGKILL at the deadline.
    Graceful(Instant),
}

/// Everything one container task needs.
pub struct Spec {
    /// The node.
    pub ctx: Arc<Ctx>,
    /// The pod's shared state.
    pub shared: Arc<PodShared>,
    /// The pod when its containers were started.
    pub pod: Arc<Pod>,
    /// The container.
    pub container: Container,
    /// Its state.
    pub state: Arc<Mutex<CState>>,
    /// None: not in the image table.
    pub image: Option<Image>,
    /// Its pod IP.
    pub pod_ip: Ipv4Addr,
    /// Its mounts.
    pub mounts: Vec<Mount>,
    /// Its uid/gid.
    pub identity: Identity,
    /// Restart policy (for init containers: Never or OnFailure).
    pub policy: Policy,
    /// The pod's stop requests.
    pub stop: watch::Receiver<Stop>,
    /// Whether probes apply (main containers).
    pub probes: bool,
}

/// How a container task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exited and is not restarted, with this code.
    Exited(i32),
    /// Stopped because the pod stops.
    Stopped,
}

fn stopping(rx: &watch::Receiver<Stop>) -> bool {
    *rx.borrow() != Stop::No
}

async fn event(spec: &Spec, kind: events::Kind, reason: &str, note: String) {
    events::emit(
        &spec.ctx.events,
        &events::pod_ref(&spec.pod),
        kind,
        reason,
        note,
    )
    .await;
}

fn set(spec: &Spec, f: impl FnOnce(&mut CState)) {
    f(&mut lock(&spec.state));
    spec.shared.changed.notify_one();
}

/// Run the container until it is done for good or the pod stops.
pub async fn run(mut spec: Spec) -> Outcome {
    let name = spec.container.name.clone();
    let Some(image) = spec.image.clone() else {
        let img = spec.container.image.clone().unwrap_or_default();
        set(&spec, |c| {
            c.state = Run::Waiting {
                reason: "ErrImagePull".into(),
                message: Some(format!(
                    "image {img:?} is not in the test cluster's image table \
                     (repositories ending in tandem-operator or tandem-postgres)"
                )),
            }
        });
        event(
            &spec,
            events::Kind::Warning,
            "Failed",
            format!("Failed to pull image {img:?}: not in the test cluster's image table"),
        )
        .await;
        let _ = spec.stop.wait_for(|s| *s != Stop::No).await;
        return Outcome::Stopped;
    };
    let mut backoff = Backoff::default();
    loop {
        if stopping(&spec.stop) {
            return Outcome::Stopped;
        }
        let started = Instant::now();
        let code = match start(&spec, &image).await {
            Ok((child, env, path)) => supervise(&mut spec, &image, child, env, path).await,
            Err(StartError::Config(msg)) => {
                if !matches!(&lock(&spec.state).state, Run::Waiting { reason, .. } if reason == "CreateContainerConfigError")
                {
                    event(
                        &spec,
                        events::Kind::Warning,
                        "Failed",
                        format!("Error: {msg}"),
                    )
                    .await;
                }
                // The kubelet retries CreateContainerConfigError without counting a restart.
                set(&spec, |c| {
                    c.state = Run::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: Some(msg),
                    }
                });
                if wait_or_stop(&mut spec.stop, Duration::from_secs(2)).await {
                    return Outcome::Stopped;
                }
                continue;
            }
            Err(StartError::Start(msg)) => {
                tracing::warn!(container = %name, error = %msg, "cannot start container");
                event(
                    &spec,
                    events::Kind::Warning,
                    "Failed",
                    format!("Error: {msg}"),
                )
                .await;
                let now = Timestamp::now();
                set(&spec, |c| {
                    c.state = Run::Terminated {
                        exit_code: 128,
                        signal: None,
                        reason: "StartError".into(),
                        message: Some(msg),
                        started_at: None,
                        finished_at: now,
                        pid: None,
                    }
                });
                128
            }
        };
        if stopping(&spec.stop) {
            return Outcome::Stopped;
        }
        if !spec.policy.restarts(code) {
            return Outcome::Exited(code);
        }
        let delay = backoff.after_exit(started.elapsed());
        let pod_name = spec.shared.name.clone();
        set(&spec, |c| {
            c.last = Some(c.state.clone());
            c.state = Run::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {}s restarting failed container={name} pod={pod_name}",
                    delay.as_secs()
                )),
            };
        });
        event(
            &spec,
            events::Kind::Warning,
            "BackOff",
            format!("Back-off restarting failed container {name} in pod {pod_name}"),
        )
        .await;
        if wait_or_stop(&mut spec.stop, delay).await {
            return Outcome::Stopped;
        }
        set(&spec, |c| c.restart_count += 1);
    }
}

/// Sleep `d`; true when the pod stops meanwhile.
async fn wait_or_stop(rx: &mut watch::Receiver<Stop>, d: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => None,
        _ = rx.wait_for(|s| *s != Stop::No) => Some(true),
    };
    stopped.unwrap_or_else(|| stopping(rx))
}

enum StartError {
    /// Env or config cannot be built (retried).
    Config(String),
    /// The process could not be started (counts as a crash).
    Start(String),
}

/// Secrets and ConfigMaps the container's env refers to.
async fn env_sources(ctx: &Ctx, ns: &str, c: &Container) -> Result<(Sources, Sources), String> {
    let mut secrets = BTreeMap::new();
    let mut cms = BTreeMap::new();
    for e in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
        if let Some(r) = &e.secret_key_ref {
            secrets.insert(r.name.clone(), ());
        }
        if let Some(r) = &e.config_map_key_ref {
            cms.insert(r.name.clone(), ());
        }
    }
    for f in c.env_from.iter().flatten() {
        if let Some(r) = &f.secret_ref {
            secrets.insert(r.name.clone(), ());
        }
        if let Some(r) = &f.config_map_ref {
            cms.insert(r.name.clone(), ());
        }
    }
    let to_string = |m: BTreeMap<String, Vec<u8>>| -> BTreeMap<String, String> {
        m.into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect()
    };
    let mut out_s = Sources::new();
    for name in secrets.keys() {
        if let Some(s) = volumes::get_secret(ctx, ns, name)
            .await
            .map_err(|e| e.to_string())?
        {
            out_s.insert(name.clone(), to_string(volumes::secret_data(&s)));
        }
    }
    let mut out_c = Sources::new();
    for name in cms.keys() {
        if let Some(c) = volumes::get_config_map(ctx, ns, name)
            .await
            .map_err(|e| e.to_string())?
        {
            out_c.insert(name.clone(), to_string(volumes::config_map_data(&c)));
        }
    }
    Ok((out_s, out_c))
}

/// The Services whose links go into a pod of `ns`.
fn link_services(ctx: &Ctx, ns: &str) -> Vec<Service> {
    ctx.services
        .state()
        .into_iter()
        .filter(|s| {
            let sns = s.metadata.namespace.as_deref();
            sns == Some(ns)
                || (sns == Some("default") && s.metadata.name.as_deref() == Some("kubernetes"))
        })
        .map(|s| (*s).clone())
        .collect()
}

/// The final env of the container: the image's, HOSTNAME, HOME, then the spec's.
async fn build_env(spec: &Spec, image: &Image) -> Result<Vec<(String, String)>, String> {
    let ns = spec.shared.namespace.as_str();
    let (secrets, cms) = env_sources(&spec.ctx, ns, &spec.container).await?;
    let services = link_services(&spec.ctx, ns);
    let spec_env = env::container_env(&EnvInputs {
        pod: &spec.pod,
        container: &spec.container,
        pod_ip: spec.pod_ip,
        host_ip: crate::config::GATEWAY,
        services: &services,
        secrets: &secrets,
        config_maps: &cms,
        allocatable: (super::node::CPUS, super::node::MEMORY_BYTES),
    })
    .map_err(|e| e.to_string())?;
    let hostname = super::pod::hostname(&spec.pod);
    let mut out: Vec<(String, String)> = image.env.clone();
    let mut put = |k: String, v: String| match out.iter_mut().find(|(n, _)| *n == k) {
        Some(e) => e.1 = v,
        None => out.push((k, v)),
    };
    put("HOSTNAME".into(), hostname);
    put("HOME".into(), spec.identity.home.clone());
    for (k, v) in spec_env {
        put(k, v);
    }
    Ok(out)
}

type Started = (tokio::process::Child, Vec<(String, String)>, String);

async fn start(spec: &Spec, image: &Image) -> Result<Started, StartError> {
    let env = build_env(spec, image).await.map_err(StartError::Config)?;
    let c = &spec.container;
    let command = c.command.as_ref().map(|v| env::expand_all(v, &env));
    let args = c.args.as_ref().map(|v| env::expand_all(v, &env));
    let argv = images::argv(image, command.as_deref(), args.as_deref());
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| images::default_path(&spec.ctx.cfg));
    let Some(first) = argv.first() else {
        return Err(StartError::Start(
            "no command: the image has no entrypoint".into(),
        ));
    };
    let program = images::resolve_program(first, &path, &spec.ctx.cfg).ok_or_else(|| {
        StartError::Start(format!(
            "exec: {first:?}: executable file not found in $PATH ({path})"
        ))
    })?;
    let cg = cgroup::container(&spec.ctx.node_cgroup(), &spec.shared.uid, &c.name);
    cgroup::create(&cg).map_err(|e| StartError::Start(format!("{e:#}")))?;
    let log = lock(&spec.state).log.clone();
    let output = open_log(&log).map_err(|e| StartError::Start(format!("{e:#}")))?;
    let workdir = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let child = launch::spawn(launch::Spec {
        program,
        argv,
        env: env.clone(),
        workdir: PathBuf::from(workdir),
        uid: spec.identity.uid,
        gid: spec.identity.gid,
        groups: spec.identity.groups.clone(),
        cgroup: cg,
        ns: Namespaces::New {
            netns: super::sandbox::netns_path(&spec.shared.uid),
            hostname: super::pod::hostname(&spec.pod),
            mounts: spec.mounts.clone(),
        },
        output: Some(output),
    })
    .map_err(|e| StartError::Start(format!("{e:#}")))?;
    Ok((child, env, path))
}

/// A new log file for this run; the previous run's becomes `<name>.previous.log`.
fn open_log(log: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    if log.exists() {
        let prev = super::logs::previous_path(log);
        std::fs::rename(log, &prev).with_context(|| format!("keeping {}", prev.display()))?;
    }
    std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))
}

fn probers(c: &Container, started: Instant) -> Vec<Prober> {
    let mut v = Vec::new();
    if let Some(p) = &c.startup_probe {
        v.push(Prober::new(Kind::Startup, p.clone(), started));
    }
    if let Some(p) = &c.liveness_probe {
        v.push(Prober::new(Kind::Liveness, p.clone(), started));
    }
    if let Some(p) = &c.readiness_probe {
        v.push(Prober::new(Kind::Readiness, p.clone(), started));
    }
    v
}

/// Watch a running process until it exits; returns its exit code.
async fn supervise(
    spec: &mut Spec,
    image: &Image,
    mut child: tokio::process::Child,
    env: Vec<(String, String)>,
    path: String,
) -> i32 {
    let pid = child.id().unwrap_or(0);
    let started_at = Timestamp::now();
    let started = Instant::now();
    let c = spec.container.clone();
    let has_startup = c.startup_probe.is_some() && spec.probes;
    let has_readiness = c.readiness_probe.is_some() && spec.probes;
    set(spec, |s| {
        s.state = Run::Running { started_at, pid };
        s.started = !has_startup;
        s.ready = !has_startup && !has_readiness;
    });
    tracing::info!(pod = %spec.shared.name, container = %c.name, pid, "container started");
    event(
        spec,
        events::Kind::Normal,
        "Started",
        format!("Started container {}", c.name),
    )
    .await;
    let mut probes = if spec.probes {
        probers(&c, started)
    } else {
        Vec::new()
    };
    let exec = ExecCtx {
        pid,
        identity: spec.identity.clone(),
        cgroup: cgroup::container(&spec.ctx.node_cgroup(), &spec.shared.uid, &c.name),
        env,
        path,
        cfg: spec.ctx.cfg.clone(),
    };
    let grace_default = spec
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    let mut killing: Option<Instant> = None;
    let status = loop {
        let startup_done = !has_startup || lock(&spec.state).started;
        let due = probes
            .iter()
            .filter(|p| (p.kind == Kind::Startup) != startup_done)
            .map(Prober::next)
            .min();
        let wake = match (due, killing) {
            (Some(d), Some(k)) => d.min(k),
            (Some(d), None) => d,
            (None, Some(k)) => k,
            (None, None) => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            st = child.wait() => break st,
            r = spec.stop.changed(), if killing.is_none() => {
                if r.is_err() {
                    // The pod task is gone: stop at once.
                    killing = Some(Instant::now());
                } else if let Stop::Graceful(deadline) = *spec.stop.borrow() {
                    signal(pid, image.stop_signal);
                    killing = Some(deadline);
                }
                if killing.is_some() {
                    event(spec, events::Kind::Normal, "Killing", format!("Stopping container {}", c.name)).await;
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if killing.is_some_and(|k| Instant::now() >= k) {
                    let _ = cgroup::kill(&exec.cgroup);
                    killing = Some(Instant::now() + Duration::from_secs(3600));
                    continue;
                }
                for p in probes.iter_mut() {
                    if (p.kind == Kind::Startup) == startup_done || p.next() > Instant::now() {
                        continue;
                    }
                    let (verdict, detail) = p.run(&c, spec.pod_ip, &exec).await;
                    if !detail.is_empty() {
                        tracing::debug!(pod = %spec.shared.name, container = %c.name, probe = ?p.kind, detail = %detail, "probe failed");
                    }
                    if verdict == Some(Verdict::Failed) {
                        let what = match p.kind {
                            Kind::Startup => "Startup",
                            Kind::Liveness => "Liveness",
                            Kind::Readiness => "Readiness",
                        };
                        event(spec, events::Kind::Warning, "Unhealthy", format!("{what} probe failed: {detail}")).await;
                    }
                    match (p.kind, verdict) {
                        (Kind::Startup, Some(Verdict::Passed)) => set(spec, |s| {
                            s.started = true;
                            s.ready = !has_readiness;
                        }),
                        (Kind::Readiness, Some(v)) => set(spec, |s| s.ready = v == Verdict::Passed),
                        (Kind::Startup | Kind::Liveness, Some(Verdict::Failed)) if killing.is_none() => {
                            tracing::info!(pod = %spec.shared.name, container = %c.name, probe = ?p.kind, detail = %detail, "probe failed: killing the container");
                            event(spec, events::Kind::Normal, "Killing", format!("Container {} failed {:?} probe, will be restarted", c.name, p.kind)).await;
                            signal(pid, image.stop_signal);
                            let g = p.grace().unwrap_or(grace_default).max(0) as u64;
                            killing = Some(Instant::now() + Duration::from_secs(g));
                            set(spec, |s| s.ready = false);
                        }
                        _ => {}
                    }
                }
            }
        }
    };
    // The container's other processes go with its main process (as with a PID namespace).
    let _ = cgroup::kill(&exec.cgroup);
    cgroup::wait_empty_async(&exec.cgroup, Duration::from_secs(5)).await;
    let finished_at = Timestamp::now();
    let (code, sig) = match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(c), _) => (c, None),
                (None, Some(sig)) => (128 + sig, Some(sig)),
                (None, None) => (255, None),
            }
        }
        Err(_) => (255, None),
    };
    tracing::info!(pod = %spec.shared.name, container = %c.name, pid, code, "container exited");
    set(spec, |s| {
        s.ready = false;
        s.started = false;
        s.state = Run::Terminated {
            exit_code: code,
            signal: sig,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: Some(started_at),
            finished_at,
            pid: Some(pid),
        };
    });
    code
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        if p > 0 {
            let _ = kill(Pid::from_raw(p), sig);
        }
    }
}
