//! cgroup v2 helpers: the node's cgroup (`<node>/kubelet` holds the stand-in,
//! `<node>/pods/<uid>/<container>` each container), freeze, kill, wait until
//! empty, remove. I/O on the cgroup filesystem.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// `<node cgroup>/kubelet`: the stand-in itself.
pub fn kubelet(node_cgroup: &Path) -> PathBuf {
    node_cgroup.join("kubelet")
}

/// `<node cgroup>/pods/<uid>`: one pod.
pub fn pod(node_cgroup: &Path, uid: &str) -> PathBuf {
    node_cgroup.join("pods").join(uid)
}

/// `<node cgroup>/pods/<uid>/<container>`: one container's processes (killed
/// whole when its main process exits, as a container's PID namespace is).
pub fn container(node_cgroup: &Path, uid: &str, name: &str) -> PathBuf {
    pod(node_cgroup, uid).join(name)
}

/// Create `dir` and its parents.
pub fn create(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating cgroup {}", dir.display()))
}

/// Move the calling process into `dir`.
pub fn enter(dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("moving into {}", procs.display()))
}

/// Pids directly in `dir` (not in child cgroups).
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether any process is in `dir` or below (cgroup.events `populated 1`).
pub fn populated(dir: &Path) -> bool {
    events_flag(dir, "populated")
}

/// Whether `dir` is frozen (cgroup.events `frozen 1`).
pub fn frozen(dir: &Path) -> bool {
    events_flag(dir, "frozen")
}

fn events_flag(dir: &Path, key: &str) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l.split_once(' ') == Some((key, "1"))))
        .unwrap_or(false)
}

/// Write cgroup.freeze.
pub fn set_frozen(dir: &Path, on: bool) -> Result<()> {
    std::fs::write(dir.join("cgroup.freeze"), if on { "1" } else { "0" })
        .with_context(|| format!("writing {}/cgroup.freeze", dir.display()))
}

/// SIGKILL every process in `dir` and below (cgroup.kill); no-op when `dir` is gone.
pub fn kill(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    std::fs::write(dir.join("cgroup.kill"), "1")
        .with_context(|| format!("writing {}/cgroup.kill", dir.display()))
}

/// Wait (bounded) until nothing runs in `dir`; true when empty.
pub fn wait_empty(dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while populated(dir) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Async variant of [`wait_empty`].
pub async fn wait_empty_async(dir: &Path, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while populated(dir) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Kill everything in `dir`, wait until empty (bounded), remove it and its children.
pub fn kill_and_remove(dir: &Path, timeout: Duration) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // A frozen cgroup keeps its killed processes until thawed.
    let _ = set_frozen(dir, false);
    kill(dir)?;
    if !wait_empty(dir, timeout) {
        anyhow::bail!("processes still in {} after {:?}", dir.display(), timeout);
    }
    remove_tree(dir)
}

/// rmdir `dir` and every cgroup below it, deepest first.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
    }
}
