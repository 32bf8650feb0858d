//! Processes the test cluster starts and stops: detached (own session and
//! process group, stdin /dev/null, stdout and stderr to `DIR/logs/<name>.log`,
//! pid in `DIR/pids/<name>.pid`), stopped by SIGTERM with a bounded wait then
//! SIGKILL; short external commands (`ip`, `iptables`, `sysctl`-like writes) run
//! through one runner with a timeout that returns the tool's own message. I/O.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// `DIR/pids/<name>.pid`.
pub fn pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("pids").join(format!("{name}.pid"))
}

/// `DIR/logs/<name>.log`.
pub fn log_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{name}.log"))
}

/// Start `program args` detached from us (a new session, so neither our exit nor
/// a Ctrl-C at the terminal reaches it) and record its pid. The returned
/// `Child` lets `up` notice an early exit; dropping it does not stop the process.
pub fn spawn_detached(dir: &Path, name: &str, program: &Path, args: &[String]) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    for sub in ["logs", "pids"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}/{sub}", dir.display()))?;
    }
    let log_path = log_file(dir, name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_err = log.try_clone().context("duplicating the log file")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // Traffic stays on loopback and the cluster's ranges: no proxy from the environment.
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))?;
    let pid_path = pid_file(dir, name);
    std::fs::write(&pid_path, format!("{}\n", child.id()))
        .with_context(|| format!("writing {}", pid_path.display()))?;
    Ok(child)
}

/// The pid recorded for `name`, if any.
pub fn read_pid(dir: &Path, name: &str) -> Option<i32> {
    std::fs::read_to_string(pid_file(dir, name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Every `<name>` with a pid file in `DIR/pids`, sorted.
pub fn recorded(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("pids"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".pid")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Whether `pid` is a live process (a zombie is not) whose command line
/// mentions `dir`: every process the cluster starts has DIR in its arguments,
/// so a recycled pid of an unrelated process is never signalled.
pub fn alive_in(pid: i32, dir: &Path) -> bool {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(_) => return false,
    };
    // The state follows the parenthesised command name, which may contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = dir.as_os_str().as_encoded_bytes();
    !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Stop the process recorded as `name`: SIGTERM to its process group, up to
/// `grace` for it to go, then SIGKILL; the pid file goes once it is gone.
/// Succeeds when nothing is recorded or the process is already gone.
pub fn stop(dir: &Path, name: &str, grace: Duration) -> Result<()> {
    let Some(pid) = read_pid(dir, name) else {
        let _ = std::fs::remove_file(pid_file(dir, name));
        return Ok(());
    };
    if alive_in(pid, dir) {
        // The pid is its own process group's id (setsid at start).
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        if !wait_gone(pid, dir, grace) {
            eprintln!("  {name} (pid {pid}) ignored SIGTERM for {grace:?}: SIGKILL");
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            if !wait_gone(pid, dir, Duration::from_secs(10)) {
                bail!("{name} (pid {pid}) is still running after SIGKILL");
            }
        }
    }
    let _ = std::fs::remove_file(pid_file(dir, name));
    Ok(())
}

fn wait_gone(pid: i32, dir: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !alive_in(pid, dir) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !alive_in(pid, dir)
}

/// Collect the exit status of any child of ours that has ended (a failed `up`
/// stops the processes it started itself; without this they would linger as
/// zombies until it exits).
pub fn reap_children() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// The last `n` lines of `DIR/logs/<name>.log`, for error messages.
pub fn log_tail(dir: &Path, name: &str, n: usize) -> String {
    let text = std::fs::read_to_string(log_file(dir, name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run a short command to completion within `timeout`; its stdout on success,
/// an error carrying its stderr otherwise.
pub fn run(program: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {line}"))?;
    // Read both pipes on threads so a chatty command cannot block on a full pipe.
    let mut out = child.stdout.take().context("stdout pipe")?;
    let mut err = child.stderr.take().context("stderr pipe")?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {line}"))?
        {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{line}: no answer within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if !status.success() {
        bail!("{line}: {status}: {}", stderr.trim());
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_returns_the_tools_message_on_failure() {
        let err = run(
            "sh",
            &["-c", "echo boom >&2; exit 3"],
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(format!("{err}").contains("boom"), "{err}");
        assert_eq!(
            run("echo", &["hi"], Duration::from_secs(5)).unwrap(),
            "hi\n"
        );
    }

    #[test]
    fn run_gives_up_after_its_timeout() {
        let err = run("sleep", &["5"], Duration::from_millis(200)).unwrap_err();
        assert!(format!("{err}").contains("no answer"), "{err}");
    }

    #[test]
    fn stop_signals_only_processes_of_this_dir() {
        let dir = std::env::temp_dir().join(format!("tc-procs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let arg = format!("sleep 30; : {}", dir.display());
        let mut child =
            spawn_detached(&dir, "sleeper", Path::new("/bin/sh"), &["-c".into(), arg]).unwrap();
        let pid = read_pid(&dir, "sleeper").unwrap();
        assert!(alive_in(pid, &dir));
        assert!(!alive_in(pid, Path::new("/nonexistent-dir")));
        // Reap in the background so the zombie does not linger.
        let reaper = std::thread::spawn(move || child.wait());
        stop(&dir, "sleeper", Duration::from_secs(5)).unwrap();
        let _ = reaper.join();
        assert!(read_pid(&dir, "sleeper").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
