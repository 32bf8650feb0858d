//! A pod's sandbox: its network namespace `tk-<id>`, the veth pair
//! (`tkv<id>` on the bridge, `eth0` inside) and its IP from the node's /24,
//! allocated in `<node dir>/ipam.json` so that a restarted stand-in keeps
//! each pod's address and never hands out a live one. I/O (`ip`, files).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use super::run::{is_gone, run, run_sync};
use crate::config::{BRIDGE, GATEWAY};

/// Prefix of every network namespace the stand-in makes.
pub const NETNS_PREFIX: &str = "tk-";
/// Prefix of the host side of every veth pair.
pub const VETH_PREFIX: &str = "tkv";
/// Prefix of the pod side before it is renamed to eth0.
const PEER_PREFIX: &str = "tkp";

/// The short id of a pod used in names: the first 10 hex digits of its uid.
pub fn short_id(uid: &str) -> String {
    uid.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(10)
        .collect()
}

/// `tk-<id>`.
pub fn netns_name(uid: &str) -> String {
    format!("{NETNS_PREFIX}{}", short_id(uid))
}

/// `/run/netns/tk-<id>`, what a process joins.
pub fn netns_path(uid: &str) -> PathBuf {
    Path::new("/run/netns").join(netns_name(uid))
}

/// `tkv<id>`, the host end.
pub fn veth_name(uid: &str) -> String {
    format!("{VETH_PREFIX}{}", short_id(uid))
}

/// Pod IPs of one node, persisted.
pub struct Ipam {
    path: PathBuf,
    subnet: Ipv4Addr,
    lock: Mutex<()>,
}

/// What `ipam.json` holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct IpamState {
    /// The last address handed out: the next search starts after it.
    last: Option<Ipv4Addr>,
    /// Pod uid → address.
    pods: BTreeMap<String, Ipv4Addr>,
}

impl Ipam {
    /// The allocator of the /24 `subnet`, persisted at `path`.
    pub fn new(path: PathBuf, subnet: Ipv4Addr) -> Ipam {
        Ipam {
            path,
            subnet,
            lock: Mutex::new(()),
        }
    }

    fn load(&self) -> IpamState {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, m: &IpamState) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(m)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// The IP of pod `uid`: the one it had, else the next free one after the
    /// last handed out (round robin from .2, as host-local IPAM: an address
    /// just released is not reused at once, so no neighbour cache still holds
    /// the previous pod's MAC for it).
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = self.load();
        if let Some(ip) = m.pods.get(uid) {
            return Ok(*ip);
        }
        let o = self.subnet.octets();
        let used: std::collections::BTreeSet<Ipv4Addr> = m.pods.values().copied().collect();
        let start = m
            .last
            .filter(|l| l.octets()[..3] == o[..3])
            .map_or(2, |l| l.octets()[3].saturating_add(1));
        let Some(ip) = (0..253u16)
            .map(|k| {
                let h = (u16::from(start.max(2)) - 2 + k) % 253 + 2;
                Ipv4Addr::new(o[0], o[1], o[2], h as u8)
            })
            .find(|ip| !used.contains(ip))
        else {
            bail!("no free pod IP in {}/24", self.subnet);
        };
        m.pods.insert(uid.to_string(), ip);
        m.last = Some(ip);
        self.save(&m)?;
        Ok(ip)
    }

    /// Every pod uid holding an IP.
    pub fn holders(&self) -> Vec<String> {
        self.load().pods.into_keys().collect()
    }

    /// Return pod `uid`'s IP.
    pub fn release(&self, uid: &str) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = self.load();
        if m.pods.remove(uid).is_some() {
            self.save(&m)?;
        }
        Ok(())
    }
}

/// Create the netns and veth of pod `uid` with `ip` (any leftover of it first removed).
pub async fn setup(uid: &str, ip: Ipv4Addr) -> Result<()> {
    teardown(uid).await?;
    let ns = netns_name(uid);
    let veth = veth_name(uid);
    let peer = format!("{PEER_PREFIX}{}", short_id(uid));
    let addr = format!("{ip}/16");
    let gw = GATEWAY.to_string();
    let steps: Vec<Vec<&str>> = vec![
        vec!["netns", "add", &ns],
        vec!["link", "add", &veth, "type", "veth", "peer", "name", &peer],
        vec!["link", "set", &peer, "netns", &ns],
        vec!["link", "set", &veth, "master", BRIDGE],
        // Hairpin: a pod reaching its own Service ClusterIP is sent back out the
        // port it came in on (bridge-nf-call-iptables is on here), as the CNI bridge plugin does.
        vec![
            "link",
            "set",
            &veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ],
        vec!["link", "set", &veth, "up"],
        vec!["-n", &ns, "link", "set", "lo", "up"],
        vec!["-n", &ns, "link", "set", &peer, "name", "eth0"],
        vec!["-n", &ns, "addr", "add", &addr, "dev", "eth0"],
        vec!["-n", &ns, "link", "set", "eth0", "up"],
        vec!["-n", &ns, "route", "add", "default", "via", &gw],
    ];
    // The host may still know the MAC of an earlier pod with this address.
    let _ = run(
        "ip",
        &["neigh", "flush", "to", &ip.to_string(), "dev", BRIDGE],
    )
    .await;
    for s in steps {
        if let Err(e) = run("ip", &s).await {
            let _ = teardown(uid).await;
            return Err(e).context(format!("creating the sandbox of pod {uid}"));
        }
    }
    Ok(())
}

/// Remove pod `uid`'s veth and netns; succeeds when they are already gone.
pub async fn teardown(uid: &str) -> Result<()> {
    for args in [
        vec!["link", "del", &veth_name(uid)],
        vec!["netns", "del", &netns_name(uid)],
    ] {
        if let Err(e) = run("ip", &args).await {
            if !is_gone(&e) {
                return Err(e).context(format!("removing the sandbox of pod {uid}"));
            }
        }
    }
    Ok(())
}

/// Remove every netns and veth with the stand-in's prefixes (for `down`).
pub fn remove_all_leftovers() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let links = run_sync("ip", &["-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        // "12: tkv0123456789@if11: <…>"
        let Some(name) = line.split(':').nth(1).map(|n| n.trim()) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with(VETH_PREFIX) || name.starts_with(PEER_PREFIX) {
            match run_sync("ip", &["link", "del", name]) {
                Ok(_) => removed.push(format!("link {name}")),
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let nss = run_sync("ip", &["netns", "list"]).unwrap_or_default();
    for line in nss.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(NETNS_PREFIX) {
            match run_sync("ip", &["netns", "del", name]) {
                Ok(_) => removed.push(format!("netns {name}")),
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_interface_limits() {
        let uid = "3f2a9c1e-77b0-4c1d-9e2f-0123456789ab";
        assert_eq!(short_id(uid), "3f2a9c1e77");
        assert_eq!(netns_name(uid), "tk-3f2a9c1e77");
        assert!(veth_name(uid).len() <= 15);
    }

    #[test]
    fn ipam_keeps_a_pods_address_and_reuses_freed_ones_last() {
        let dir = std::env::temp_dir().join(format!("tk-ipam-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ipam.json");
        let _ = std::fs::remove_file(&path);
        let ipam = Ipam::new(path.clone(), Ipv4Addr::new(198, 18, 2, 0));
        let a = ipam.allocate("a").expect("a");
        let b = ipam.allocate("b").expect("b");
        assert_eq!(a, Ipv4Addr::new(198, 18, 2, 2));
        assert_eq!(b, Ipv4Addr::new(198, 18, 2, 3));
        // A restarted stand-in reads the same file.
        let again = Ipam::new(path, Ipv4Addr::new(198, 18, 2, 0));
        assert_eq!(again.allocate("a").expect("a"), a);
        again.release("a").expect("release");
        // Round robin: a released address comes back only after the others.
        assert_eq!(
            again.allocate("c").expect("c"),
            Ipv4Addr::new(198, 18, 2, 4)
        );
        for i in 0..250 {
            again.allocate(&format!("x{i}")).expect("fill");
        }
        assert_eq!(again.allocate("d").expect("d"), a);
        assert!(again.allocate("full").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
