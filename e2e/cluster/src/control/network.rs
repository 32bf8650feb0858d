//! The host side of the pods' network: the bridge `tkube0` with the gateway
//! address, IPv4 forwarding, a guard chain that keeps forwarded traffic on
//! the bridge (nothing a pod sends is routed off the machine), and removing
//! all of it again, including the KUBE-* rules kube-proxy wrote. I/O (`ip`,
//! `iptables`, /proc/sys).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::procs::run;
use crate::config::{BRIDGE, GATEWAY};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Our filter chain, jumped to first from FORWARD.
const GUARD_CHAIN: &str = "TANDEM-TESTCLUSTER";
const T: Duration = Duration::from_secs(20);

/// The commands kube-proxy (iptables mode) and the guard need on the host.
pub fn check_tools() -> Result<()> {
    let missing: Vec<&str> = [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "conntrack",
        "ip",
    ]
    .into_iter()
    .filter(|t| which(t).is_none())
    .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found: kube-proxy needs iptables and conntrack (make kube-deps installs them from apt)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn bridge_exists() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

/// The cluster directory recorded on the bridge (its link alias), if any.
fn bridge_owner() -> Option<String> {
    let alias =
        std::fs::read_to_string(Path::new("/sys/class/net").join(BRIDGE).join("ifalias")).ok()?;
    let alias = alias.trim();
    (!alias.is_empty()).then(|| alias.to_string())
}

/// The directory of the running test cluster when it is not `dir`'s.
pub fn bridge_owner_other_than(dir: &Path) -> Option<String> {
    if !bridge_exists() {
        return None;
    }
    let owner = bridge_owner().unwrap_or_else(|| "an unknown directory".into());
    (Path::new(&owner) != dir).then_some(owner)
}

/// Refuse to start when a bridge of another (or a crashed) test cluster is there.
pub fn check_free() -> Result<()> {
    if bridge_exists() {
        let dir = bridge_owner().unwrap_or_else(|| "DIR".into());
        bail!(
            "another test cluster is running (bridge {BRIDGE} exists, made for {dir}): \
             stop it with make kube-down KUBE_DIR={dir}"
        );
    }
    Ok(())
}

/// Create `tkube0` with 198.18.0.1/16, labelled with `dir` so only its own `down` removes it.
pub fn create_bridge(dir: &Path) -> Result<()> {
    let dir = dir.to_string_lossy();
    run("ip", &["link", "add", BRIDGE, "type", "bridge"], T)?;
    run("ip", &["link", "set", BRIDGE, "alias", &dir], T)?;
    run(
        "ip",
        &["addr", "add", &format!("{GATEWAY}/16"), "dev", BRIDGE],
        T,
    )?;
    run("ip", &["link", "set", BRIDGE, "up"], T)?;
    Ok(())
}

/// Delete `tkube0` when it was made for `dir` (the veths of pods go with it).
pub fn delete_bridge(dir: &Path) -> Result<()> {
    if !bridge_exists() {
        return Ok(());
    }
    match bridge_owner() {
        Some(owner) if Path::new(&owner) == dir => {
            run("ip", &["link", "del", BRIDGE], T)?;
            Ok(())
        }
        owner => {
            eprintln!(
                "  bridge {BRIDGE} belongs to the test cluster in {}, not {}: left alone",
                owner.unwrap_or_else(|| "an unknown directory".into()),
                dir.display()
            );
            Ok(())
        }
    }
}

/// Turn on IPv4 forwarding (pod → ClusterIP → pod is routed through the host),
/// remembering the previous value in `DIR/ip_forward.orig` for `down`.
pub fn enable_forwarding(dir: &Path) -> Result<()> {
    let orig = dir.join("ip_forward.orig");
    if !orig.exists() {
        let before =
            std::fs::read_to_string(IP_FORWARD).with_context(|| format!("reading {IP_FORWARD}"))?;
        std::fs::write(&orig, before.trim())
            .with_context(|| format!("writing {}", orig.display()))?;
    }
    std::fs::write(IP_FORWARD, "1").with_context(|| format!("writing 1 to {IP_FORWARD}"))
}

/// Put back the forwarding setting `enable_forwarding` found.
pub fn restore_forwarding(dir: &Path) -> Result<()> {
    let orig = dir.join("ip_forward.orig");
    let Ok(before) = std::fs::read_to_string(&orig) else {
        return Ok(());
    };
    std::fs::write(IP_FORWARD, before.trim()).with_context(|| format!("restoring {IP_FORWARD}"))?;
    let _ = std::fs::remove_file(orig);
    Ok(())
}

/// Forwarded packets that enter or leave through the bridge must do both: a pod
/// can reach other pods and (through DNAT) Services, never another network.
pub fn install_guard() -> Result<()> {
    remove_guard()?;
    run("iptables", &["-w", "-N", GUARD_CHAIN], T)?;
    let rules: [&[&str]; 3] = [
        &["-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN"],
        &["-i", BRIDGE, "-j", "DROP"],
        &["-o", BRIDGE, "-j", "DROP"],
    ];
    for rule in rules {
        let mut args = vec!["-w", "-A", GUARD_CHAIN];
        args.extend_from_slice(rule);
        run("iptables", &args, T)?;
    }
    run(
        "iptables",
        &["-w", "-I", "FORWARD", "1", "-j", GUARD_CHAIN],
        T,
    )?;
    Ok(())
}

fn remove_guard() -> Result<()> {
    if which("iptables").is_none() {
        return Ok(());
    }
    while run("iptables", &["-w", "-D", "FORWARD", "-j", GUARD_CHAIN], T).is_ok() {}
    if run("iptables", &["-w", "-S", GUARD_CHAIN], T).is_ok() {
        run("iptables", &["-w", "-F", GUARD_CHAIN], T)?;
        run("iptables", &["-w", "-X", GUARD_CHAIN], T)?;
    }
    Ok(())
}

/// Remove every rule the cluster made: the guard chain, and kube-proxy's
/// KUBE-* chains (`kube-proxy --cleanup` first, then whatever it left, table by
/// table through iptables-save/-restore, for IPv4 and IPv6).
pub fn remove_rules(kube_proxy: Option<&Path>) -> Result<()> {
    remove_guard()?;
    if let Some(bin) = kube_proxy.filter(|b| b.exists()) {
        if let Err(e) = run(
            &bin.to_string_lossy(),
            &["--cleanup", "--v=0"],
            Duration::from_secs(60),
        ) {
            eprintln!("  kube-proxy --cleanup: {e:#} (removing the KUBE-* chains directly)");
        }
    }
    for family in ["iptables", "ip6tables"] {
        let save = format!("{family}-save");
        let restore = format!("{family}-restore");
        if which(&save).is_none() || which(&restore).is_none() {
            continue;
        }
        for table in ["nat", "filter", "mangle"] {
            let Ok(text) = run(&save, &["-t", table], T) else {
                continue;
            };
            let Some(kept) = without_chains(&text, &["KUBE-", GUARD_CHAIN]) else {
                continue;
            };
            let file =
                std::env::temp_dir().join(format!("tandem-testcluster-{family}-{table}.rules"));
            std::fs::write(&file, kept).with_context(|| format!("writing {}", file.display()))?;
            let result = run(&restore, &["-w", "-T", table, &file.to_string_lossy()], T);
            let _ = std::fs::remove_file(&file);
            result
                .with_context(|| format!("removing the KUBE-* chains of {family} table {table}"))?;
        }
    }
    Ok(())
}

/// An iptables-save dump without any chain declaration or rule that names one
/// of `prefixes`; `None` when there is nothing to remove.
fn without_chains(dump: &str, prefixes: &[&str]) -> Option<String> {
    let named = |l: &str| prefixes.iter().any(|p| l.contains(p));
    let mut changed = false;
    let mut out = String::new();
    for line in dump.lines() {
        let ours = (line.starts_with(':') || line.starts_with("-A ")) && named(line);
        if ours {
            changed = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_chains_keeps_foreign_rules_and_drops_kube_ones() {
        let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
                    -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                    -A PREROUTING -d 10.0.0.1/32 -j ACCEPT\nCOMMIT\n";
        let out = without_chains(dump, &["KUBE-"]).unwrap();
        assert_eq!(
            out,
            "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d 10.0.0.1/32 -j ACCEPT\nCOMMIT\n"
        );
        assert!(without_chains("*nat\nCOMMIT\n", &["KUBE-"]).is_none());
    }
}
