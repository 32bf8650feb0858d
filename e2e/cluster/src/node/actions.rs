//! Fault injection on a node (freeze, thaw, kill, start) through its cgroup,
//! and the cleanup `down` calls: every node cgroup killed, every pod netns
//! and veth, recorded mount point and node directory removed. I/O.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{cgroup, mounts, sandbox};
use crate::config::ClusterConfig;
use crate::NodeAction;

/// Every pid in `dir` and below.
fn all_procs(dir: &Path) -> Vec<i32> {
    let mut out = cgroup::procs(dir);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(all_procs(&e.path()));
            }
        }
    }
    out
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// freeze | thaw | kill | start on `node`.
pub fn action(dir: &Path, node: &str, action: NodeAction) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    cfg.node_index(node)?;
    let ncg = cfg.node_cgroup(node);
    if !ncg.exists() {
        bail!(
            "{node} has no cgroup ({}): is the test cluster in {} up?",
            ncg.display(),
            dir.display()
        );
    }
    let kubelet_cg = cgroup::kubelet(&ncg);
    match action {
        NodeAction::Freeze => {
            let n = all_procs(&ncg).len();
            cgroup::set_frozen(&ncg, true)?;
            if !wait_until(Duration::from_secs(10), || cgroup::frozen(&ncg)) {
                bail!(
                    "{node}: cgroup {} did not report frozen within 10s",
                    ncg.display()
                );
            }
            println!("{node}: frozen ({n} processes stopped: the stand-in and every pod process)");
        }
        NodeAction::Thaw => {
            cgroup::set_frozen(&ncg, false)?;
            if !wait_until(Duration::from_secs(10), || !cgroup::frozen(&ncg)) {
                bail!("{node}: cgroup {} still frozen after 10s", ncg.display());
            }
            println!("{node}: thawed");
        }
        NodeAction::Kill => {
            let n = all_procs(&ncg).len();
            cgroup::kill(&ncg)?;
            // Killed processes of a frozen cgroup die once it is thawed.
            if cgroup::frozen(&ncg) {
                cgroup::set_frozen(&ncg, false)?;
            }
            if !cgroup::wait_empty(&ncg, Duration::from_secs(15)) {
                bail!(
                    "{node}: processes still alive in {} 15s after cgroup.kill",
                    ncg.display()
                );
            }
            println!(
                "{node}: killed ({n} processes); the API still lists its pods, \
                 their network namespaces stay until the node starts again"
            );
        }
        NodeAction::Start => {
            if cgroup::frozen(&ncg) {
                bail!("{node} is frozen: thaw it (ACTION=thaw) instead of starting it");
            }
            if !cgroup::procs(&kubelet_cg).is_empty() {
                bail!(
                    "{node}'s stand-in is already running (pids {:?})",
                    cgroup::procs(&kubelet_cg)
                );
            }
            let name = crate::control::components::kubelet_name(node);
            let args = crate::control::components::kubelet_args(&cfg.dir, node);
            let child =
                crate::control::procs::spawn_detached(&cfg.dir, &name, &cfg.self_bin, &args)?;
            let pid = child.id() as i32;
            let entered = wait_until(Duration::from_secs(10), || {
                cgroup::procs(&kubelet_cg).contains(&pid)
            });
            if !entered {
                bail!(
                    "{node}: the stand-in (pid {pid}) did not start; see {}",
                    crate::control::procs::log_file(&cfg.dir, &name).display()
                );
            }
            println!(
                "{node}: stand-in started (pid {pid}, log {}); it restarts the pods bound to it",
                crate::control::procs::log_file(&cfg.dir, &name).display()
            );
        }
    }
    Ok(())
}

/// Remove everything the node stand-ins made (for `down`); idempotent.
pub fn cleanup(cfg: &ClusterConfig) -> Result<()> {
    let mut problems = Vec::new();
    for node in &cfg.nodes {
        let ncg = cfg.node_cgroup(node);
        if let Err(e) = cgroup::kill_and_remove(&ncg, Duration::from_secs(15)) {
            problems.push(format!("{node}: {e:#}"));
        }
    }
    match sandbox::remove_all_leftovers() {
        Ok(removed) if !removed.is_empty() => {
            println!("  removed {}", removed.join(", "));
        }
        Ok(_) => {}
        Err(e) => problems.push(format!("{e:#}")),
    }
    for node in &cfg.nodes {
        let removed = mounts::remove_recorded(&cfg.node_dir(node).join("mountpoints"));
        if !removed.is_empty() {
            println!("  removed mount points {}", removed.join(", "));
        }
    }
    let nodes_dir = cfg.dir.join("nodes");
    if nodes_dir.exists() {
        std::fs::remove_dir_all(&nodes_dir)
            .with_context(|| format!("removing {}", nodes_dir.display()))?;
    }
    if !problems.is_empty() {
        bail!("node cleanup: {}", problems.join("; "));
    }
    Ok(())
}
