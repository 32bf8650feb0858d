//! Network partitions between loopback addresses, for tests: TCP between two
//! 127.x addresses (or ports of them), or between one address and every other
//! loopback address, is dropped by iptables rules in a chain of the guard's
//! own (`TANDEM-TEST-<pid>-<n>`, jumped to from INPUT for packets on `lo`, so
//! a sender sees its packets vanish, as on a cut link). The rules go when the
//! guard drops, on a panic too, and a new guard first removes the chains of
//! test processes that died without removing theirs. Every rule names only
//! addresses in 127.0.0.0/8. Runs iptables; needs root.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Prefix of every chain a guard creates.
const CHAIN_PREFIX: &str = "TANDEM-TEST-";
/// The built-in chain the guards' chains are jumped to from.
const HOOK: &str = "INPUT";
/// All of loopback.
const LOOPBACK: &str = "127.0.0.0/8";
/// How long iptables waits for the xtables lock held by another run.
const LOCK_WAIT_SECS: &str = "10";

/// One side of a cut: a loopback address, or one port of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Side {
    /// The address (in 127.0.0.0/8).
    pub addr: Ipv4Addr,
    /// Only this TCP port of it, or every port.
    pub port: Option<u16>,
}

impl From<Ipv4Addr> for Side {
    fn from(addr: Ipv4Addr) -> Self {
        Side { addr, port: None }
    }
}

impl From<SocketAddrV4> for Side {
    fn from(a: SocketAddrV4) -> Self {
        Side {
            addr: *a.ip(),
            port: Some(a.port()),
        }
    }
}

/// Setting up or removing a partition failed.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// Only loopback addresses are ever cut.
    #[error("{0} is not a loopback address: partitions only cut links within 127.0.0.0/8")]
    NotLoopback(IpAddr),
    /// iptables is not installed.
    #[error("iptables not found on PATH nor in /usr/sbin, /sbin (Debian package iptables)")]
    NoIptables,
    /// iptables could not be run.
    #[error("cannot run iptables {args}: {source}")]
    Spawn {
        args: String,
        source: std::io::Error,
    },
    /// iptables refused (not root, no netfilter, …).
    #[error("iptables {args} failed: {stderr}")]
    Iptables { args: String, stderr: String },
    /// A guard holds at most 999 cuts (chain names are bounded).
    #[error("too many cuts in one partition")]
    TooManyCuts,
}

/// A cut made by [`Partition::cut`] or [`Partition::isolate`], to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CutId(u32);

/// What a cut installed: rules in the guard's chain, and the sub-chain of an isolation.
#[derive(Debug)]
struct Installed {
    rules: Vec<Vec<String>>,
    sub_chain: Option<String>,
}

/// A set of cuts, undone when dropped.
#[derive(Debug)]
pub struct Partition {
    iptables: PathBuf,
    chain: String,
    next: u32,
    cuts: BTreeMap<CutId, Installed>,
}

impl Partition {
    /// A guard with no cut yet: removes stale chains of dead test processes,
    /// then creates its own chain and jumps to it for packets on `lo`.
    pub fn new() -> Result<Self, PartitionError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let iptables = find_iptables()?;
        remove_stale_chains(&iptables)?;
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let chain = format!("{CHAIN_PREFIX}{}-{n}", std::process::id());
        run(&iptables, &["-N", &chain])?;
        let p = Partition {
            iptables,
            chain,
            next: 0,
            cuts: BTreeMap::new(),
        };
        run(&p.iptables, &["-I", HOOK, "1", "-i", "lo", "-j", &p.chain])?;
        Ok(p)
    }

    /// The name of this guard's chain (for messages and checks).
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Drop TCP between `a` and `b`, both ways.
    pub fn cut(&mut self, a: impl Into<Side>, b: impl Into<Side>) -> Result<CutId, PartitionError> {
        let (a, b) = (loopback(a.into())?, loopback(b.into())?);
        let rules = vec![drop_rule(&self.chain, a, b), drop_rule(&self.chain, b, a)];
        self.install(rules, None)
    }

    /// Drop TCP between `a` and every other loopback address but those in `except`.
    pub fn isolate(
        &mut self,
        a: impl Into<Side>,
        except: &[Ipv4Addr],
    ) -> Result<CutId, PartitionError> {
        let a = loopback(a.into())?;
        for e in except {
            loopback(Side::from(*e))?;
        }
        let id = self.next_id()?;
        // A sub-chain of its own, so that its exceptions (RETURN) skip only its own DROP.
        let sub = format!("{}-{}", self.chain, id.0);
        run(&self.iptables, &["-N", &sub])?;
        // Entered only by packets from or to `a`: what is from or to an
        // exception returns, as does `a` talking to itself.
        let me = a.addr.to_string();
        let filled = except
            .iter()
            .flat_map(|e| {
                [
                    args(&sub, &["-s", &e.to_string(), "-j", "RETURN"]),
                    args(&sub, &["-d", &e.to_string(), "-j", "RETURN"]),
                ]
            })
            .chain([
                args(&sub, &["-s", &me, "-d", &me, "-j", "RETURN"]),
                args(&sub, &["-j", "DROP"]),
            ])
            .try_for_each(|r| run_owned(&self.iptables, "-A", &r).map(drop));
        if let Err(e) = filled {
            let _ = run(&self.iptables, &["-F", &sub]);
            let _ = run(&self.iptables, &["-X", &sub]);
            return Err(e);
        }
        let jumps = vec![
            jump_rule(&self.chain, a, true, &sub),
            jump_rule(&self.chain, a, false, &sub),
        ];
        self.install_as(id, jumps, Some(sub))
    }

    /// Undo one cut.
    pub fn restore(&mut self, id: CutId) -> Result<(), PartitionError> {
        let Some(cut) = self.cuts.remove(&id) else {
            return Ok(());
        };
        remove(&self.iptables, &cut)
    }

    /// Undo every cut (the guard stays, with its chain empty).
    pub fn heal(&mut self) -> Result<(), PartitionError> {
        let ids: Vec<CutId> = self.cuts.keys().copied().collect();
        ids.into_iter().try_for_each(|id| self.restore(id))
    }

    fn next_id(&mut self) -> Result<CutId, PartitionError> {
        if self.next >= 999 {
            return Err(PartitionError::TooManyCuts);
        }
        self.next += 1;
        Ok(CutId(self.next))
    }

    fn install(
        &mut self,
        rules: Vec<Vec<String>>,
        sub_chain: Option<String>,
    ) -> Result<CutId, PartitionError> {
        let id = self.next_id()?;
        self.install_as(id, rules, sub_chain)
    }

    fn install_as(
        &mut self,
        id: CutId,
        rules: Vec<Vec<String>>,
        sub_chain: Option<String>,
    ) -> Result<CutId, PartitionError> {
        let mut cut = Installed {
            rules: Vec::new(),
            sub_chain,
        };
        for r in rules {
            if let Err(e) = run_owned(&self.iptables, "-A", &r) {
                let _ = remove(&self.iptables, &cut);
                return Err(e);
            }
            cut.rules.push(r);
        }
        self.cuts.insert(id, cut);
        Ok(id)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        // The chain, its rules and every sub-chain of an isolation, whatever state the cuts are in.
        if let Err(e) = remove_chain(&self.iptables, &self.chain) {
            eprintln!("partition {}: removing its rules failed: {e}", self.chain);
        }
    }
}

/// Connect to `dst` from `src` (port chosen by the kernel), giving up after `timeout`.
pub async fn connect_from(
    src: Ipv4Addr,
    dst: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((src, 0)))?;
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting from {src} to {dst} timed out after {timeout:?}"),
        )),
    }
}

/// `side` if its address is a loopback one.
fn loopback(side: Side) -> Result<Side, PartitionError> {
    if side.addr.is_loopback() {
        Ok(side)
    } else {
        Err(PartitionError::NotLoopback(IpAddr::V4(side.addr)))
    }
}

fn args(chain: &str, rest: &[&str]) -> Vec<String> {
    std::iter::once(chain)
        .chain(rest.iter().copied())
        .map(str::to_string)
        .collect()
}

/// Drop TCP from `from` to `to`.
fn drop_rule(chain: &str, from: Side, to: Side) -> Vec<String> {
    let mut r = args(chain, &["-p", "tcp", "-s", &from.addr.to_string()]);
    if let Some(p) = from.port {
        r.extend(["--sport".to_string(), p.to_string()]);
    }
    r.extend(["-d".to_string(), to.addr.to_string()]);
    if let Some(p) = to.port {
        r.extend(["--dport".to_string(), p.to_string()]);
    }
    r.extend(["-j".to_string(), "DROP".to_string()]);
    r
}

/// Send TCP from (`outgoing`) or to `side`, and from or to any loopback address, to `sub`.
fn jump_rule(chain: &str, side: Side, outgoing: bool, sub: &str) -> Vec<String> {
    let (mine, port) = if outgoing {
        ("-s", "--sport")
    } else {
        ("-d", "--dport")
    };
    let other = if outgoing { "-d" } else { "-s" };
    let mut r = args(chain, &["-p", "tcp", mine, &side.addr.to_string()]);
    if let Some(p) = side.port {
        r.extend([port.to_string(), p.to_string()]);
    }
    r.extend([other, LOOPBACK, "-j", sub].map(str::to_string));
    r
}

fn remove(iptables: &PathBuf, cut: &Installed) -> Result<(), PartitionError> {
    for r in &cut.rules {
        run_owned(iptables, "-D", r)?;
    }
    if let Some(sub) = &cut.sub_chain {
        run(iptables, &["-F", sub])?;
        run(iptables, &["-X", sub])?;
    }
    Ok(())
}

/// Remove the jump to `chain`, then the chain and the sub-chains named after it.
fn remove_chain(iptables: &PathBuf, chain: &str) -> Result<(), PartitionError> {
    let listing = run(iptables, &["-S"])?;
    let jump = format!("-j {chain}");
    for line in listing.lines() {
        if line.starts_with(&format!("-A {HOOK} ")) && line.ends_with(&jump) {
            let spec: Vec<&str> = line.split_whitespace().skip(2).collect();
            let mut a = vec!["-D", HOOK];
            a.extend(spec);
            run(iptables, &a)?;
        }
    }
    let mut chains: Vec<&str> = defined_chains(&listing)
        .filter(|c| *c == chain || c.starts_with(&format!("{chain}-")))
        .collect();
    // The main chain first: its jumps hold the sub-chains.
    chains.sort_by_key(|c| c.len());
    for c in &chains {
        run(iptables, &["-F", c])?;
    }
    for c in &chains {
        run(iptables, &["-X", c])?;
    }
    Ok(())
}

/// Chains of dead test processes: remove them (a SIGKILLed test leaves its rules).
fn remove_stale_chains(iptables: &PathBuf) -> Result<(), PartitionError> {
    let listing = run(iptables, &["-S"])?;
    let stale: Vec<String> = defined_chains(&listing)
        .filter_map(main_chain_pid)
        .filter(|(_, pid)| !crate::pid_alive(*pid))
        .map(|(chain, _)| chain.to_string())
        .collect();
    for chain in stale {
        // Another test process may be removing it at the same time.
        if let Err(e) = remove_chain(iptables, &chain) {
            eprintln!("removing stale chain {chain}: {e}");
        }
    }
    Ok(())
}

/// Chains `-N NAME` of an `iptables -S` listing.
fn defined_chains(listing: &str) -> impl Iterator<Item = &str> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .map(str::trim)
}

/// `(chain, pid)` of a guard's main chain `TANDEM-TEST-<pid>-<n>` (not a sub-chain).
fn main_chain_pid(chain: &str) -> Option<(&str, i32)> {
    let rest = chain.strip_prefix(CHAIN_PREFIX)?;
    let mut parts = rest.split('-');
    let pid = parts.next()?.parse().ok()?;
    let _n: u32 = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((chain, pid))
}

fn find_iptables() -> Result<PathBuf, PartitionError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("iptables"))
        .find(|p| p.is_file())
        .ok_or(PartitionError::NoIptables)
}

fn run_owned(iptables: &PathBuf, op: &str, rule: &[String]) -> Result<String, PartitionError> {
    let mut a = vec![op];
    a.extend(rule.iter().map(String::as_str));
    run(iptables, &a)
}

/// Run `iptables -w SECS <a>`; its stdout.
fn run(iptables: &PathBuf, a: &[&str]) -> Result<String, PartitionError> {
    let shown = a.join(" ");
    let out = Command::new(iptables)
        .args(["-w", LOCK_WAIT_SECS])
        .args(a)
        .output()
        .map_err(|source| PartitionError::Spawn {
            args: shown.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(PartitionError::Iptables {
            args: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_both_sides_and_only_the_ports_given() {
        let a = Side::from(Ipv4Addr::new(127, 1, 0, 1));
        let b = Side::from(SocketAddrV4::new(Ipv4Addr::new(127, 1, 0, 2), 7000));
        assert_eq!(
            drop_rule("C", a, b).join(" "),
            "C -p tcp -s 127.1.0.1 -d 127.1.0.2 --dport 7000 -j DROP"
        );
        assert_eq!(
            drop_rule("C", b, a).join(" "),
            "C -p tcp -s 127.1.0.2 --sport 7000 -d 127.1.0.1 -j DROP"
        );
        assert_eq!(
            jump_rule("C", a, false, "S").join(" "),
            "C -p tcp -d 127.1.0.1 -s 127.0.0.0/8 -j S"
        );
    }

    #[test]
    fn only_main_chains_of_guards_are_read_as_stale_candidates() {
        assert_eq!(
            main_chain_pid("TANDEM-TEST-123-4"),
            Some(("TANDEM-TEST-123-4", 123))
        );
        assert_eq!(main_chain_pid("TANDEM-TEST-123-4-1"), None);
        assert_eq!(main_chain_pid("KUBE-SERVICES"), None);
    }

    #[test]
    fn a_non_loopback_address_is_refused_before_any_rule() {
        assert!(matches!(
            loopback(Side::from(Ipv4Addr::new(10, 0, 0, 1))),
            Err(PartitionError::NotLoopback(_))
        ));
        assert!(loopback(Side::from(Ipv4Addr::new(127, 9, 9, 9))).is_ok());
    }
}
