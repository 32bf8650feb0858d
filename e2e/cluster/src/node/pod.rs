//! One pod's life on this node, as a kubelet's pod worker: tear down what a
//! previous run of the stand-in left, make the sandbox, the volumes and the
//! hosts file, run init containers then the containers, keep the status and
//! the Secret/ConfigMap/token files current, and on deletion stop the
//! containers gracefully, remove the sandbox and make the final delete. I/O.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::container::{self, Outcome, Stop};
use super::ctx::{lock, CState, Ctx, HostsTarget, PodShared, Run};
use super::identity::{self, HostAccounts, Identity};
use super::images;
use super::mounts::{self, PodFiles};
use super::restart::Policy;
use super::status::{self, Transitions};
use super::volumes::{self, PodVolumes};
use super::{cgroup, hosts, sandbox};

/// What the pod manager tells a pod worker.
#[derive(Debug, Clone)]
pub enum Update {
    /// The pod as the API shows it now.
    Pod(Arc<Pod>),
    /// The pod is gone from the API (force-deleted): stop at once.
    Gone,
}

/// The pod's hostname: spec.hostname or its name (at most 63 characters).
pub fn hostname(pod: &Pod) -> String {
    let h = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    h.chars().take(63).collect()
}

fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

const RESOLV_CONF: &str =
    "# tandem test cluster: no cluster DNS; names resolve through /etc/hosts.\n\
nameserver 127.0.0.1\noptions attempts:1 timeout:1\n";

struct Worker {
    ctx: Arc<Ctx>,
    shared: Arc<PodShared>,
    pod: Arc<Pod>,
    rx: watch::Receiver<Update>,
    gone: bool,
    tr: Transitions,
    start_time: Timestamp,
    pod_ip: Option<Ipv4Addr>,
    sandbox_ready: bool,
    initialized: bool,
    init_failed: bool,
    terminated: bool,
    policy: Policy,
    last_patch: Option<serde_json::Value>,
}

/// Run pod `first` until it is deleted and torn down.
pub async fn run(ctx: Arc<Ctx>, first: Arc<Pod>, rx: watch::Receiver<Update>) {
    let uid = first.metadata.uid.clone().unwrap_or_default();
    let dir = ctx.pod_dir(&uid);
    let states = |cs: &[Container]| -> Vec<Arc<Mutex<CState>>> {
        cs.iter()
            .map(|c| {
                Arc::new(Mutex::new(CState::new(
                    &c.name,
                    c.image.as_deref().unwrap_or(""),
                    dir.join(format!("{}.log", c.name)),
                )))
            })
            .collect()
    };
    let spec = first.spec.clone().unwrap_or_default();
    let shared = Arc::new(PodShared {
        uid: uid.clone(),
        namespace: first.metadata.namespace.clone().unwrap_or_default(),
        name: first.metadata.name.clone().unwrap_or_default(),
        containers: states(&spec.containers),
        init: states(spec.init_containers.as_deref().unwrap_or(&[])),
        changed: tokio::sync::Notify::new(),
        hosts: Mutex::new(None),
    });
    lock(&ctx.pods).insert(uid.clone(), shared.clone());
    let start_time = first
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or_else(Timestamp::now, |t| t.0);
    let mut w = Worker {
        tr: Transitions::from_pod(&first),
        policy: Policy::parse(spec.restart_policy.as_deref()),
        ctx: ctx.clone(),
        shared,
        pod: first,
        rx,
        gone: false,
        start_time,
        pod_ip: None,
        sandbox_ready: false,
        initialized: false,
        init_failed: false,
        terminated: false,
        last_patch: None,
    };
    tracing::info!(pod = %w.shared.name, namespace = %w.shared.namespace, uid = %uid, "pod accepted");
    w.main().await;
    lock(&ctx.pods).remove(&uid);
    tracing::info!(pod = %w.shared.name, namespace = %w.shared.namespace, uid = %uid, "pod done");
}

impl Worker {
    fn uid(&self) -> String {
        self.shared.uid.clone()
    }

    fn stop_requested(&self) -> bool {
        self.gone || deleting(&self.pod)
    }

    /// Take the newest update; true when the pod must stop.
    fn absorb(&mut self) -> bool {
        match &*self.rx.borrow_and_update() {
            Update::Pod(p) => self.pod = p.clone(),
            Update::Gone => self.gone = true,
        }
        self.stop_requested()
    }

    /// Wait `d` or until the pod must stop; true when it must.
    async fn pause(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return self.stop_requested(),
                r = self.rx.changed() => {
                    if r.is_err() {
                        self.gone = true;
                        return true;
                    }
                    if self.absorb() {
                        return true;
                    }
                }
            }
        }
    }

    fn waiting_all(&self, reason: &str, message: Option<String>) {
        for c in self.shared.init.iter().chain(&self.shared.containers) {
            let mut c = lock(c);
            if matches!(c.state, Run::Waiting { .. }) {
                c.state = Run::Waiting {
                    reason: reason.into(),
                    message: message.clone(),
                };
            }
        }
    }

    async fn main(&mut self) {
        let phase = self.pod.status.as_ref().and_then(|s| s.phase.clone());
        if matches!(phase.as_deref(), Some("Succeeded") | Some("Failed")) {
            // Finished before this stand-in started: nothing runs, wait for the delete.
            while !self.stop_requested() {
                if self.pause(Duration::from_secs(3600)).await {
                    break;
                }
            }
            self.teardown().await;
            self.final_delete().await;
            return;
        }
        let old_pids = self.adopt();
        self.teardown().await;
        self.wait_reaped(&old_pids).await;
        if self.stop_requested() {
            self.final_delete().await;
            return;
        }
        self.patch().await;
        let Some(vols) = self.setup().await else {
            self.finish().await;
            return;
        };
        self.run_containers(vols).await;
        self.finish().await;
    }

    /// Pods that ran under a previous stand-in (a node restart): their
    /// containers count a restart, their last state is Unknown (exit 255).
    fn adopt(&mut self) -> Vec<u32> {
        let mut old_pids = Vec::new();
        let statuses = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        for st in statuses {
            let Some(c) = self.shared.container(&st.name) else {
                continue;
            };
            let ran = st
                .state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                || st.restart_count > 0;
            if !ran {
                continue;
            }
            if let Some(pid) = st
                .container_id
                .as_deref()
                .and_then(|id| id.strip_prefix("tandem://"))
                .and_then(|p| p.parse().ok())
            {
                old_pids.push(pid);
            }
            let mut c = lock(&c);
            c.restart_count = st.restart_count + 1;
            c.last = Some(Run::Terminated {
                exit_code: 255,
                signal: None,
                reason: "Unknown".into(),
                message: Some("the node stand-in restarted".into()),
                started_at: None,
                finished_at: Timestamp::now(),
                pid: None,
            });
            tracing::info!(pod = %self.shared.name, container = %c.name, "adopting a pod whose processes are gone");
        }
        old_pids
    }

    /// Wait (bounded) until the killed processes of a previous run are reaped:
    /// a zombie still answers kill(pid, 0), and postgres takes a lock file
    /// naming it for a live postmaster.
    async fn wait_reaped(&self, pids: &[u32]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids
            .iter()
            .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sandbox, pod files, volumes; None when the pod stopped meanwhile.
    async fn setup(&mut self) -> Option<PodVolumes> {
        let uid = self.uid();
        let ip = loop {
            match self.ctx.ipam.allocate(&uid) {
                Ok(ip) => match sandbox::setup(&uid, ip).await {
                    Ok(()) => break ip,
                    Err(e) => {
                        tracing::warn!(pod = %self.shared.name, error = %format!("{e:#}"), "sandbox");
                        self.waiting_all("ContainerCreating", Some(format!("{e:#}")));
                    }
                },
                Err(e) => self.waiting_all("ContainerCreating", Some(format!("{e:#}"))),
            }
            self.patch().await;
            if self.pause(Duration::from_secs(2)).await {
                return None;
            }
        };
        self.pod_ip = Some(ip);
        self.sandbox_ready = true;
        let dir = self.ctx.pod_dir(&uid);
        if let Err(e) = self.pod_files(ip) {
            tracing::warn!(pod = %self.shared.name, error = %format!("{e:#}"), "pod files");
        }
        self.patch().await;
        // The downward API's status.podIP in volumes needs the IP in the pod object.
        let mut pod = (*self.pod).clone();
        let st = pod.status.get_or_insert_with(Default::default);
        st.pod_ip = Some(ip.to_string());
        let mut last_mount_error: Option<String> = None;
        loop {
            match volumes::prepare(&self.ctx, &pod, &uid).await {
                Ok(v) => return Some(v),
                Err(e) => {
                    tracing::info!(pod = %self.shared.name, error = %e, dir = %dir.display(), "volumes not ready");
                    let msg = e.to_string();
                    if last_mount_error.as_deref() != Some(msg.as_str()) {
                        super::events::emit(
                            &self.ctx.events,
                            &super::events::pod_ref(&self.pod),
                            super::events::Kind::Warning,
                            "FailedMount",
                            format!("MountVolume failed: {msg}"),
                        )
                        .await;
                        last_mount_error = Some(msg);
                    }
                    self.waiting_all("ContainerCreating", Some(format!("MountVolume: {e}")));
                    self.patch().await;
                }
            }
            if self.pause(Duration::from_secs(2)).await {
                return None;
            }
        }
    }

    /// The hosts file and resolv.conf of the pod.
    fn pod_files(&mut self, ip: Ipv4Addr) -> anyhow::Result<()> {
        let dir = self.ctx.pod_dir(&self.shared.uid);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("hosts");
        let target = HostsTarget {
            path: path.clone(),
            hostname: hostname(&self.pod),
            subdomain: self.pod.spec.as_ref().and_then(|s| s.subdomain.clone()),
            ip,
            written: String::new(),
        };
        let content = super::hostsfile::render_for(&self.ctx, &self.shared, &target);
        hosts::write_in_place(&path, &content)?;
        std::fs::write(dir.join("resolv.conf"), RESOLV_CONF)?;
        *lock(&self.shared.hosts) = Some(HostsTarget {
            written: content,
            ..target
        });
        Ok(())
    }

    /// Identity, mounts and image of one container.
    fn container_spec(
        &self,
        c: &Container,
        state: Arc<Mutex<CState>>,
        vols: &PodVolumes,
        policy: Policy,
        stop: watch::Receiver<Stop>,
        probes: bool,
    ) -> container::Spec {
        let cfg = &self.ctx.cfg;
        let image = images::lookup(c.image.as_deref().unwrap_or(""), cfg);
        let psc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref());
        let identity = match &image {
            Some(img) => identity::resolve(psc, c, img, &cfg.run_as, &HostAccounts),
            None => Identity {
                uid: 65534,
                gid: 65534,
                groups: Vec::new(),
                home: "/".into(),
            },
        };
        let dir = self.ctx.pod_dir(&self.shared.uid);
        let files = PodFiles {
            hosts: dir.join("hosts"),
            resolv: dir.join("resolv.conf"),
        };
        let mut private = Vec::new();
        for d in image.iter().flat_map(|i| i.private_dirs.iter()) {
            let host: PathBuf = dir
                .join("private")
                .join(&c.name)
                .join(d.trim_start_matches('/').replace('/', "_"));
            if std::fs::create_dir_all(&host).is_ok() {
                let _ = std::os::unix::fs::chown(&host, Some(identity.uid), Some(identity.gid));
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o2775));
            }
            private.push((d.to_string(), host));
        }
        let mut image = image;
        let mounts = match mounts::container_mounts(c, vols, &files, &private).and_then(|m| {
            mounts::ensure_mount_points(
                &m,
                &self.ctx.cfg.node_dir(&self.ctx.node).join("mountpoints"),
            )
            .map(|()| m)
        }) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(pod = %self.shared.name, container = %c.name, error = %format!("{e:#}"), "mounts");
                lock(&state).state = Run::Waiting {
                    reason: "CreateContainerError".into(),
                    message: Some(format!("{e:#}")),
                };
                // Without its mounts the container cannot start: treat as not runnable.
                image = None;
                Vec::new()
            }
        };
        container::Spec {
            ctx: self.ctx.clone(),
            shared: self.shared.clone(),
            pod: self.pod.clone(),
            container: c.clone(),
            state,
            image,
            pod_ip: self.pod_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            mounts,
            identity,
            policy,
            stop,
            probes,
        }
    }

    async fn run_containers(&mut self, mut vols: PodVolumes) {
        let (stop_tx, stop_rx) = watch::channel(Stop::No);
        let spec = self.pod.spec.clone().unwrap_or_default();
        let init_policy = if self.policy == Policy::Never {
            Policy::Never
        } else {
            Policy::OnFailure
        };
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            let Some(state) = self.shared.init.get(i).cloned() else {
                continue;
            };
            let cs =
                self.container_spec(c, state.clone(), &vols, init_policy, stop_rx.clone(), false);
            let mut task = tokio::spawn(container::run(cs));
            let outcome = loop {
                tokio::select! {
                    r = &mut task => break r.unwrap_or(Outcome::Stopped),
                    _ = self.shared.changed.notified() => self.patch().await,
                    r = self.rx.changed() => {
                        if r.is_err() { self.gone = true; }
                        if r.is_err() || self.absorb() {
                            self.stop_containers(&stop_tx);
                            let _ = tokio::time::timeout(self.grace() + Duration::from_secs(10), &mut task).await;
                            return;
                        }
                    }
                }
            };
            match outcome {
                Outcome::Exited(0) => lock(&state).ready = true,
                Outcome::Exited(_) => {
                    self.init_failed = true;
                    self.patch().await;
                    self.wait_for_stop().await;
                    return;
                }
                Outcome::Stopped => return,
            }
        }
        self.initialized = true;
        self.patch().await;
        let mut tasks = JoinSet::new();
        for (i, c) in spec.containers.iter().enumerate() {
            let Some(state) = self.shared.containers.get(i).cloned() else {
                continue;
            };
            let cs = self.container_spec(c, state, &vols, self.policy, stop_rx.clone(), true);
            tasks.spawn(container::run(cs));
        }
        let mut sync = tokio::time::interval(Duration::from_secs(10));
        sync.tick().await;
        loop {
            tokio::select! {
                _ = self.shared.changed.notified() => {
                    // Coalesce bursts (a container's exit and its back-off state).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.patch().await;
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                    if tasks.is_empty() {
                        self.patch().await;
                    }
                }
                _ = sync.tick() => {
                    if let Err(e) = vols.sync(&self.ctx, &self.pod).await {
                        tracing::warn!(pod = %self.shared.name, error = %e, "volume sync");
                    }
                    // A status patch that failed earlier is retried here.
                    self.patch().await;
                }
                r = self.rx.changed() => {
                    if r.is_err() { self.gone = true; }
                    if r.is_err() || self.absorb() {
                        break;
                    }
                }
            }
        }
        self.stop_containers(&stop_tx);
        let bound = self.grace() + Duration::from_secs(10);
        let drained = tokio::time::timeout(bound, async {
            loop {
                tokio::select! {
                    r = tasks.join_next() => if r.is_none() { break },
                    _ = self.shared.changed.notified() => {
                        if !self.gone { self.patch().await; }
                    }
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(pod = %self.shared.name, "containers did not stop within the grace period");
        }
    }

    async fn wait_for_stop(&mut self) {
        while !self.stop_requested() {
            if self.pause(Duration::from_secs(3600)).await {
                break;
            }
        }
    }

    /// The grace period of the deletion (0 when force-deleted).
    fn grace(&self) -> Duration {
        if self.gone {
            return Duration::ZERO;
        }
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0);
        Duration::from_secs(secs as u64)
    }

    fn stop_containers(&self, tx: &watch::Sender<Stop>) {
        let grace = self.grace();
        tracing::info!(pod = %self.shared.name, grace_seconds = grace.as_secs(), "stopping the pod's containers");
        let _ = tx.send(Stop::Graceful(Instant::now() + grace));
    }

    /// Stopped containers, no sandbox, final status, final delete.
    async fn finish(&mut self) {
        self.teardown().await;
        if self.gone {
            return;
        }
        self.terminated = true;
        self.patch().await;
        self.final_delete().await;
    }

    /// Kill what is left of the pod's processes, remove its sandbox and files.
    async fn teardown(&mut self) {
        let uid = self.uid();
        let pod_cg = cgroup::pod(&self.ctx.node_cgroup(), &uid);
        let _ = cgroup::kill(&pod_cg);
        if !cgroup::wait_empty_async(&pod_cg, Duration::from_secs(10)).await {
            tracing::warn!(pod = %self.shared.name, "processes left in {}", pod_cg.display());
        }
        if let Err(e) = cgroup::remove_tree(&pod_cg) {
            tracing::warn!(pod = %self.shared.name, error = %format!("{e:#}"), "cgroup");
        }
        if let Err(e) = sandbox::teardown(&uid).await {
            tracing::warn!(pod = %self.shared.name, error = %format!("{e:#}"), "sandbox teardown");
        }
        *lock(&self.shared.hosts) = None;
        self.sandbox_ready = false;
        if self.terminated || self.stop_requested() {
            let _ = self.ctx.ipam.release(&uid);
            let dir = self.ctx.pod_dir(&uid);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(pod = %self.shared.name, error = %e, "removing {}", dir.display());
                }
            }
        } else {
            // A restart of the pod: fresh volume files, logs kept.
            let _ = std::fs::remove_dir_all(self.ctx.pod_dir(&uid).join("volumes"));
        }
    }

    /// The kubelet's final delete: grace 0, only this uid.
    async fn final_delete(&mut self) {
        if self.gone {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.shared.namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        for attempt in 0..5u64 {
            match api.delete(&self.shared.name, &dp).await {
                Ok(_) => return,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
                Err(e) => {
                    tracing::warn!(pod = %self.shared.name, error = %e, "final delete");
                    tokio::time::sleep(Duration::from_secs(1 + attempt)).await;
                }
            }
        }
    }

    /// Patch the status subresource when it changed.
    async fn patch(&mut self) {
        if self.gone {
            return;
        }
        let init: Vec<CState> = self.shared.init.iter().map(|c| lock(c).clone()).collect();
        let containers: Vec<CState> = self
            .shared
            .containers
            .iter()
            .map(|c| lock(c).clone())
            .collect();
        let inputs = status::Inputs {
            pod: &self.pod,
            pod_ip: self.pod_ip,
            host_ip: crate::config::GATEWAY,
            start_time: self.start_time,
            sandbox_ready: self.sandbox_ready,
            initialized: self.initialized,
            init: &init,
            containers: &containers,
            init_failed: self.init_failed,
            terminated: self.terminated,
            now: Timestamp::now(),
        };
        let st = status::build(&inputs, self.policy, &mut self.tr);
        let Ok(value) = serde_json::to_value(&st) else {
            return;
        };
        if self.last_patch.as_ref() == Some(&value) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.shared.namespace);
        let body = serde_json::json!({ "status": value });
        match api
            .patch_status(
                &self.shared.name,
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
        {
            Ok(p) => {
                self.last_patch = Some(value);
                self.pod = Arc::new(p);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => self.gone = true,
            Err(e) => tracing::warn!(pod = %self.shared.name, error = %e, "status patch"),
        }
    }
}
