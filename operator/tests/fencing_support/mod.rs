//! Support of the fencing tests (local_fencing.rs) on top of ha_support:
//! instances' addresses from state.json, a client address of the test's own
//! (so packet-filter rules can tell the test's clients apart), freezing and
//! killing processes without the driver (which may itself be frozen), the
//! agent's status read from the client address, and watches that fail as
//! soon as a failover starts. Does I/O (files, signals, HTTP, SQL).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde_json::Value;
use tandem_testkit::{pid_alive, signal, signal_group};

use crate::ha_support::cluster::LocalCluster;
use crate::ha_support::ops::persisted;
use crate::ha_support::writer::{Target, WriteLog, Writer};

/// The manifest's lease TTL.
pub const TTL: Duration = Duration::from_secs(3);
/// The manifest's detection timeout.
pub const DETECTION: Duration = Duration::from_secs(2);
/// Host part of the test's client address in the cluster's block.
const CLIENT_HOST: u8 = 200;

/// A spec (indented by two) with the short fencing timings and `extra` lines.
pub fn spec(instances: u32, detection: Duration, extra: &str) -> String {
    format!(
        "  instances: {instances}\n  failover: {{detectionTimeout: {}ms, leaseTtl: {}ms}}\n{extra}",
        detection.as_millis(),
        TTL.as_millis()
    )
}

/// The engine's lease margin for [`TTL`] with agents that fence early, as
/// this build's do (the bound every lease claim adds).
pub fn margin() -> Duration {
    let ttl = u64::try_from(TTL.as_millis()).unwrap_or(u64::MAX);
    let lead = tandem::engine::fence_lead_ms(tandem::agent::FENCE_LEAD_MS, ttl);
    let margin = tandem::engine::lease_margin_ms(
        i64::try_from(ttl).unwrap_or(i64::MAX),
        i64::try_from(lead).ok(),
    );
    Duration::from_millis(u64::try_from(margin).unwrap_or(0))
}

/// Where an instance listens.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub ip: Ipv4Addr,
    pub pg: SocketAddrV4,
    pub agent: SocketAddrV4,
}

fn v4(text: &str) -> SocketAddrV4 {
    match text.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) => a,
        other => panic!("{text} is not an IPv4 socket address: {other:?}"),
    }
}

/// `name`'s addresses, from state.json.
pub fn addrs(c: &LocalCluster, name: &str) -> Addrs {
    let st = c.state();
    let i = st["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("{name} is not in state.json: {st}"));
    let ip: Ipv4Addr = i["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{name} has no IPv4 address in state.json: {i}"));
    let port = i["pgPort"].as_u64().and_then(|p| u16::try_from(p).ok());
    let agent = i["agent"].as_str().map(v4);
    Addrs {
        ip,
        pg: SocketAddrV4::new(ip, port.expect("pgPort")),
        agent: agent.expect("agent address"),
    }
}

/// The address the test's own clients connect from: host .200 of the cluster's block.
pub fn client_address(c: &LocalCluster) -> Ipv4Addr {
    let block: Ipv4Addr = c.state()["addressBlock"]
        .as_str()
        .and_then(|b| b.parse().ok())
        .expect("state.json has an addressBlock");
    let [a, b, x, _] = block.octets();
    Ipv4Addr::new(a, b, x, CLIENT_HOST)
}

/// A writer target straight at `name`'s postgres, on its own address.
pub fn direct_target(c: &LocalCluster, name: &str) -> Target {
    c.target_at(&addrs(c, name).pg.to_string())
}

/// A writer committing straight to `name`'s postgres from the client address.
pub fn direct_writer(c: &LocalCluster, name: &str, start_after: i64) -> Writer {
    Writer::start_from(
        direct_target(c, name),
        Some(client_address(c)),
        start_after,
        crate::ha_support::ops::WRITE_EVERY,
    )
}

/// Acknowledgements at or after `t`, with how long after `t` each came.
pub fn acks_after(log: &WriteLog, t: Instant) -> Vec<(i64, Duration)> {
    log.acked
        .iter()
        .filter(|(_, at)| *at >= t)
        .map(|(id, at)| (*id, at.duration_since(t)))
        .collect()
}

/// PID of `tandem local up`, from state.json.
pub fn up_pid(c: &LocalCluster) -> i32 {
    c.state()["pid"].as_i64().unwrap_or(0) as i32
}

/// Processes stopped with SIGSTOP, continued when this guard drops (a failing test too).
pub struct Frozen {
    what: String,
    pids: Vec<i32>,
    groups: Vec<i32>,
}

impl Frozen {
    /// Freeze `pids`, and whole process groups led by `groups`.
    pub fn new(what: &str, pids: Vec<i32>, groups: Vec<i32>) -> Self {
        for g in &groups {
            signal_group(*g, Signal::SIGSTOP);
        }
        for p in &pids {
            assert!(signal(*p, Signal::SIGSTOP), "cannot SIGSTOP {what} ({p})");
        }
        Frozen {
            what: what.to_string(),
            pids,
            groups,
        }
    }

    /// Freeze `pids` too, those that still exist (a backend may be ending).
    pub fn also(&mut self, pids: Vec<i32>) {
        for p in pids {
            if signal(p, Signal::SIGSTOP) {
                self.pids.push(p);
            }
        }
    }

    /// Continue what was frozen (the agents first, as a thawed machine would run them).
    pub fn thaw(mut self) {
        self.cont();
    }

    fn cont(&mut self) {
        for p in self.pids.drain(..) {
            signal(p, Signal::SIGCONT);
        }
        for g in self.groups.drain(..) {
            signal_group(g, Signal::SIGCONT);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.pids.is_empty() || !self.groups.is_empty() {
            eprintln!("continuing {} (still frozen at the end)", self.what);
        }
        self.cont();
    }
}

/// Freeze `tandem local up` (the operator of the local platform).
pub fn freeze_driver(c: &LocalCluster) -> Frozen {
    let pid = up_pid(c);
    assert!(pid_alive(pid), "tandem local up ({pid}) does not run");
    Frozen::new("tandem local up", vec![pid], vec![])
}

/// Freeze `name` as a hung machine: its agent and its whole postgres server.
pub fn freeze_instance(c: &LocalCluster, name: &str) -> Frozen {
    // The agent, the postmaster and each of its children: they lead
    // sessions of their own, so the postmaster's group is the postmaster.
    let agent = c.agent_pid(name);
    let pm = c
        .postgres_pid(name)
        .unwrap_or_else(|| panic!("{name} has no postgres"));
    let mut frozen = Frozen::new(name, vec![agent], vec![pm]);
    frozen.also(crate::ha_support::ops::server_children(c, name, ""));
    frozen
}

/// SIGKILL `name`'s whole postgres server and then its agent, without the
/// driver (which may be frozen): node loss.
pub fn kill_instance(c: &LocalCluster, name: &str) {
    if let Some(pm) = c.postgres_pid(name) {
        signal_group(pm, Signal::SIGKILL);
    }
    let agent = c.agent_pid(name);
    assert!(signal(agent, Signal::SIGKILL), "cannot kill {name}'s agent");
}

/// Whether any of `pids` lives (a zombie does not).
pub fn any_alive(pids: &[i32]) -> bool {
    pids.iter().any(|p| pid_alive(*p))
}

/// The pids of `name`'s agent, postmaster and the postmaster's children.
pub fn instance_pids(c: &LocalCluster, name: &str) -> Vec<i32> {
    let mut pids = vec![c.agent_pid(name)];
    if let Some(pm) = c.postgres_pid(name) {
        pids.push(pm);
        pids.extend(crate::ha_support::ops::server_children(c, name, ""));
    }
    pids
}

/// `name`'s agent `/status`, asked from `source` (None when it does not answer within a second).
pub async fn agent_status_from(c: &LocalCluster, name: &str, source: Ipv4Addr) -> Option<Value> {
    let token = c.state()["token"].as_str().unwrap_or_default().to_string();
    let http = reqwest::Client::builder()
        .local_address(IpAddr::V4(source))
        .timeout(Duration::from_secs(1))
        .build()
        .ok()?;
    let url = format!("http://{}/status", addrs(c, name).agent);
    let resp = http.get(url).bearer_auth(token).send().await.ok()?;
    resp.json::<Value>().await.ok()
}

/// The persisted engine status (`status` of DIR/status.json) and the file's modification time.
pub fn persisted_status(c: &LocalCluster) -> Option<(Value, SystemTime)> {
    let mtime = std::fs::metadata(c.dir.join("status.json"))
        .and_then(|m| m.modified())
        .ok()?;
    let p = persisted(c)?;
    Some((p["status"].clone(), mtime))
}

/// History entries of `kind` in a persisted status.
pub fn persisted_history(status: &Value, kind: &str) -> Vec<Value> {
    status["history"]
        .as_array()
        .map(|h| h.iter().filter(|e| e["kind"] == kind).cloned().collect())
        .unwrap_or_default()
}

/// Panic when the persisted status shows a failover under way or done since
/// `failovers_before`, or another primary than `primary`.
pub fn assert_no_failover(c: &LocalCluster, primary: &str, failovers_before: usize, when: &str) {
    let Some((s, _)) = persisted_status(c) else {
        return;
    };
    let kind = s["transition"]["kind"].as_str().unwrap_or("");
    assert_ne!(
        kind, "Failover",
        "a failover started {when}: {}",
        s["transition"]
    );
    let failovers = persisted_history(&s, "Failover").len();
    assert_eq!(
        failovers,
        failovers_before,
        "a failover ran {when}: {:?}",
        persisted_history(&s, "Failover").last()
    );
    assert_eq!(
        s["currentPrimary"].as_str(),
        Some(primary),
        "the primary changed {when}"
    );
}

/// Failover entries in the persisted history now.
pub fn failover_count(c: &LocalCluster) -> usize {
    persisted_status(c)
        .map(|(s, _)| persisted_history(&s, "Failover").len())
        .unwrap_or(0)
}

/// Watch for `window`: every 50 ms no failover and the same primary
/// (`check` runs every second as well, for the test's own conditions).
pub async fn hold_without_failover(
    c: &LocalCluster,
    primary: &str,
    window: Duration,
    when: &str,
    mut check: impl FnMut(),
) {
    let before = failover_count(c);
    let start = Instant::now();
    let mut last_check = start;
    while start.elapsed() < window {
        assert_no_failover(c, primary, before, when);
        if last_check.elapsed() >= Duration::from_secs(1) {
            check();
            last_check = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_no_failover(c, primary, before, when);
    check();
}
