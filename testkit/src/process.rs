//! Processes by pid: whether one is alive (a zombie is not), whether it is a
//! postgres, and sending it a signal. Reads /proc, sends signals.

use nix::sys::signal::Signal;
use nix::unistd::Pid;

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
    fn this_process_is_alive_and_no_pid_is_not() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
        assert!(!pid_alive(-1));
    }
}
