//! Processes: whether a pid is alive (a zombie is not), whether it is a
//! postgres, the postmaster of a data directory, signalling a process or its
//! whole group, and bounded waits for a child to exit. Reads /proc and
//! postmaster.pid, sends signals.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::wait::poll_until;

/// Whether `pid` names a live process. A zombie (exited, not yet reaped) is
/// dead: it runs nothing and holds no port, so a test must not wait on it.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses and may hold spaces.
    !stat.is_empty()
        && stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            != Some("Z")
}

/// Whether `pid` is a postgres process (by its command name).
pub fn is_postgres(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().starts_with("postgres"))
        .unwrap_or(false)
}

/// Send `sig` to `pid`; whether it was delivered.
pub fn signal(pid: i32, sig: Signal) -> bool {
    pid > 0 && nix::sys::signal::kill(Pid::from_raw(pid), sig).is_ok()
}

/// Send `sig` to the process group `pid` leads (a postmaster leads its
/// server's); whether it was delivered.
pub fn signal_group(pid: i32, sig: Signal) -> bool {
    pid > 0 && nix::sys::signal::killpg(Pid::from_raw(pid), sig).is_ok()
}

/// The processes whose parent is `pid` (from /proc).
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Field 4, after the parenthesised command, is the parent pid.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|pp| pp.parse::<i32>().ok())
                == Some(pid)
        })
        .collect()
}

/// Send `sig` to postmaster `pid` and to every one of its children: each
/// postgres child calls setsid() and leads its own process group, so
/// signalling the postmaster's group reaches the postmaster alone. The
/// postmaster goes first (a stopped one forks nothing new); whether it was
/// delivered to the postmaster.
pub fn signal_server(pid: i32, sig: Signal) -> bool {
    // The children first read, then signalled after the parent: once a
    // killed parent is gone its children are someone else's and no longer listed.
    let children = children_of(pid);
    let delivered = signal(pid, sig);
    for child in children {
        signal(child, sig);
    }
    delivered
}

/// The pid on the first line of `data_dir/postmaster.pid`, alive or not;
/// `None` when the file is absent or unreadable.
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Poll `child` until it exits, at most `timeout`: its status, or `None`
/// while it still runs (the caller decides whether to kill it).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    poll_until(timeout, Duration::from_millis(20), || {
        child.try_wait().ok().flatten()
    })
}

/// SIGTERM `child`, then [`wait_exit`].
pub fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let pid = i32::try_from(child.id()).unwrap_or(0);
    signal(pid, Signal::SIGTERM);
    wait_exit(child, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id() as i32;
        // Not reaped yet: a zombie once it exits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pid_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "true still alive");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_ok(),
            "reaped too early"
        );
        child.wait().expect("reap");
        assert!(!pid_alive(pid));
    }

    #[test]
    fn terminate_stops_a_child_and_reports_its_exit() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let status =
            terminate(&mut child, Duration::from_secs(10)).expect("sleep exits on SIGTERM");
        assert!(!status.success());
        assert_eq!(wait_exit(&mut child, Duration::ZERO), Some(status));
    }

    #[test]
    fn postmaster_pid_reads_the_first_line_only() {
        let dir = crate::TestDir::new("kit-pm");
        assert_eq!(postmaster_pid(dir.path()), None);
        std::fs::write(
            dir.path().join("postmaster.pid"),
            "4242\n/data\n1700000000\n5432\n",
        )
        .expect("write postmaster.pid");
        assert_eq!(postmaster_pid(dir.path()), Some(4242));
    }

    #[test]
    fn signal_server_reaches_the_children_of_a_process() {
        let mut parent = Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .expect("spawn sh");
        let pid = parent.id() as i32;
        let two = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
            let c = children_of(pid);
            (c.len() == 2).then_some(c)
        })
        .expect("two children");
        assert!(signal_server(pid, Signal::SIGKILL));
        for c in two {
            assert!(
                poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
                    (!pid_alive(c)).then_some(())
                })
                .is_some(),
                "child {c} still alive"
            );
        }
        let _ = parent.wait();
    }

    #[test]
    fn this_process_is_alive_and_no_pid_is_not() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
        assert!(!pid_alive(-1));
    }
}
