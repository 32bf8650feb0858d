//! Container probes: httpGet to the pod IP (named ports through the
//! container's ports), tcpSocket, exec inside the container's namespaces;
//! with the probe's initial delay, period, timeout and thresholds. I/O.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::time::Instant;

use super::launch;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// startupProbe.
    Startup,
    /// livenessProbe.
    Liveness,
    /// readinessProbe.
    Readiness,
}

/// What crossing a threshold means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// successThreshold consecutive successes.
    Passed,
    /// failureThreshold consecutive failures.
    Failed,
}

/// One probe's schedule and counters.
pub struct Prober {
    /// Which.
    pub kind: Kind,
    probe: Probe,
    next: Instant,
    successes: i32,
    failures: i32,
    /// The last verdict reached.
    pub verdict: Option<Verdict>,
}

impl Prober {
    /// A probe of a container started at `started`.
    pub fn new(kind: Kind, probe: Probe, started: Instant) -> Prober {
        let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
        Prober {
            kind,
            probe,
            next: started + Duration::from_secs(delay),
            successes: 0,
            failures: 0,
            verdict: None,
        }
    }

    /// When it runs next.
    pub fn next(&self) -> Instant {
        self.next
    }

    fn period(&self) -> Duration {
        Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64)
    }

    /// The probe's own terminationGracePeriodSeconds (liveness/startup).
    pub fn grace(&self) -> Option<i64> {
        self.probe.termination_grace_period_seconds
    }

    /// Run it once; returns a verdict when a threshold is crossed now.
    pub async fn run(
        &mut self,
        c: &Container,
        pod_ip: Ipv4Addr,
        exec: &ExecCtx,
    ) -> (Option<Verdict>, String) {
        let timeout = Duration::from_secs(self.probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        let res = tokio::time::timeout(timeout, once(&self.probe, c, pod_ip, exec, timeout))
            .await
            .unwrap_or_else(|_| Err(format!("timeout after {timeout:?}")));
        self.next = Instant::now() + self.period();
        let success = self.probe.success_threshold.unwrap_or(1).max(1);
        let failure = self.probe.failure_threshold.unwrap_or(3).max(1);
        let detail = match &res {
            Ok(()) => String::new(),
            Err(e) => e.clone(),
        };
        match res {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                if self.successes >= success && self.verdict != Some(Verdict::Passed) {
                    self.verdict = Some(Verdict::Passed);
                    return (self.verdict, detail);
                }
            }
            Err(_) => {
                self.successes = 0;
                self.failures += 1;
                if self.failures >= failure && self.verdict != Some(Verdict::Failed) {
                    self.verdict = Some(Verdict::Failed);
                    return (self.verdict, detail);
                }
            }
        }
        (None, detail)
    }
}

/// What an exec probe needs to run in the container.
pub struct ExecCtx {
    /// The container's main pid (its namespaces).
    pub pid: u32,
    /// uid, gid, groups.
    pub identity: super::identity::Identity,
    /// The container cgroup.
    pub cgroup: std::path::PathBuf,
    /// The container's env.
    pub env: Vec<(String, String)>,
    /// PATH used to find the program.
    pub path: String,
    /// The cluster config (program table).
    pub cfg: crate::config::ClusterConfig,
}

/// A port number or a named container port.
pub fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("container has no port named {name:?}"))
        }
    }
}

async fn once(
    p: &Probe,
    c: &Container,
    pod_ip: Ipv4Addr,
    exec: &ExecCtx,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(h) = &p.http_get {
        let port = resolve_port(&h.port, c)?;
        let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let url = format!("{scheme}://{host}:{port}{path}");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = client.get(&url).header("User-Agent", "kube-probe/1.37");
        for hd in h.http_headers.iter().flatten() {
            req = req.header(hd.name.as_str(), hd.value.as_str());
        }
        let resp = req.send().await.map_err(|e| format!("Get {url:?}: {e}"))?;
        let code = resp.status().as_u16();
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    } else if let Some(t) = &p.tcp_socket {
        let port = resolve_port(&t.port, c)?;
        let host = t.host.clone().unwrap_or_else(|| pod_ip.to_string());
        tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map(|_| ())
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
    } else if let Some(e) = &p.exec {
        exec_probe(e.command.as_deref().unwrap_or(&[]), exec).await
    } else if p.grpc.is_some() {
        Err("grpc probes are not supported by the test cluster's node".into())
    } else {
        Err("probe has no handler".into())
    }
}

async fn exec_probe(cmd: &[String], x: &ExecCtx) -> Result<(), String> {
    let Some(first) = cmd.first() else {
        return Err("exec probe without a command".into());
    };
    let program = super::images::resolve_program(first, &x.path, &x.cfg)
        .ok_or_else(|| format!("{first}: not found"))?;
    let mut child = launch::spawn(launch::Spec {
        program,
        argv: cmd.to_vec(),
        env: x.env.clone(),
        workdir: "/".into(),
        uid: x.identity.uid,
        gid: x.identity.gid,
        groups: x.identity.groups.clone(),
        cgroup: x.cgroup.clone(),
        ns: launch::Namespaces::Join { pid: x.pid as i32 },
        output: None,
    })
    .map_err(|e| format!("{e:#}"))?;
    // The probe's timeout bounds this (the caller drops the future); kill then.
    let status = child.wait().await.map_err(|e| e.to_string());
    let _ = child.start_kill();
    match status? {
        s if s.success() => Ok(()),
        s => Err(format!("command exited with {s}")),
    }
}
