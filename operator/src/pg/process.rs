//! The postgres child process: spawned from one long-lived thread (so that
//! PR_SET_PDEATHSIG, which fires when the forking *thread* exits, only fires
//! when the agent dies), with its stderr forwarded to the log and the last
//! lines kept for error messages. Does I/O.

use std::collections::VecDeque;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::Error;

const LOG_TAIL_LINES: usize = 30;

/// Remove a postgres lock file (`postmaster.pid`, `.s.PGSQL.<port>.lock`)
/// when the process it names is gone or a zombie (a postmaster killed with its
/// agent lingers as a zombie until something reaps it, and postgres would
/// take it for a running server).
pub fn remove_stale_lockfile(file: &std::path::Path) -> bool {
    let Some(pid) = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
    else {
        return false;
    };
    if !runs(pid) && std::fs::remove_file(file).is_ok() {
        tracing::info!(pid, file = %file.display(), "removed the lock file of a postmaster that is gone");
        return true;
    }
    false
}

/// Whether process `pid` exists and is neither a zombie nor dead (from /proc).
fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// The children of process `pid` (from /proc).
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.trim_start().to_string();
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The live (not zombie) processes of the server on `data_dir`: every
/// postgres process works in its data directory. Its postmaster's children
/// each lead a session of their own (setsid), so neither the postmaster's
/// process group nor, once the postmaster is dead, parenthood finds them;
/// their working directory does, orphans included.
pub fn server_processes(data_dir: &std::path::Path) -> Vec<i32> {
    let Ok(dir) = std::fs::canonicalize(data_dir) else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|p| std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|cwd| cwd == dir))
        .filter(|p| runs(*p))
        .collect()
}

/// Send `sig` to postmaster `pid` and all its children: the postmaster first
/// (so it forks nothing new), then each child.
pub fn signal_server(pid: i32, sig: Signal) -> Result<(), Error> {
    let children = children_of(pid);
    match signal::kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => return Err(Error::Signal(e)),
    }
    for c in children {
        let _ = signal::kill(Pid::from_raw(c), sig);
    }
    // The postmaster leads its own process group (see spawn); its children
    // each lead a session of their own, so the group reaches only what runs
    // in it besides (a `postgres --single`, an archive command's shell is
    // the postmaster's child and is signalled above). Orphaned backends are
    // found by their directory: [`server_processes`].
    let _ = signal::killpg(Pid::from_raw(pid), sig);
    Ok(())
}

/// A running (or exited) postmaster that is our child.
#[derive(Clone, Debug)]
pub struct PgChild {
    pid: i32,
    exit: watch::Receiver<Option<String>>,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl PgChild {
    /// The postmaster's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How it exited, once it has.
    pub fn exit_status(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Wait until it exits; its exit description.
    pub async fn wait(&self) -> String {
        let mut rx = self.exit.clone();
        loop {
            if let Some(s) = rx.borrow_and_update().clone() {
                return s;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone().unwrap_or_else(|| "unknown".into());
            }
        }
    }

    /// Wait up to `timeout` for it to exit.
    pub async fn wait_timeout(&self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }

    /// Send a signal to the postmaster.
    pub fn signal(&self, sig: Signal) -> Result<(), Error> {
        if self.exit_status().is_some() {
            return Ok(());
        }
        match signal::kill(Pid::from_raw(self.pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::Signal(e)),
        }
    }

    /// Send a signal to the postmaster and every one of its children (backends
    /// and auxiliary processes, each in a session of its own): a frozen or
    /// fenced server must not leave a backend behind that could still finish a commit.
    pub fn signal_group(&self, sig: Signal) -> Result<(), Error> {
        signal_server(self.pid, sig)
    }

    /// The last lines postgres wrote to stderr.
    pub fn log_tail(&self) -> String {
        match self.log.lock() {
            Ok(l) => l.iter().cloned().collect::<Vec<_>>().join("\n"),
            Err(_) => String::new(),
        }
    }
}

type SpawnReply = std::sync::mpsc::Sender<std::io::Result<std::process::Child>>;

/// The thread that forks every postgres; it lives as long as the process.
fn spawner() -> &'static Mutex<mpsc::Sender<(std::process::Command, SpawnReply)>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<(std::process::Command, SpawnReply)>>> =
        OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(std::process::Command, SpawnReply)>();
        std::thread::Builder::new()
            .name("postgres-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the spawner thread"));
        Mutex::new(tx)
    })
}

/// Start postgres from `cmd` (built by the runner) as a child that dies with the agent.
pub fn spawn_postgres(mut cmd: std::process::Command) -> Result<PgChild, Error> {
    // The death signal itself is set by `Runner::command`.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .process_group(0);
    let spawn_err = |source| Error::Spawn {
        tool: "postgres".into(),
        source,
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| spawn_err(std::io::Error::other("spawner lock poisoned")))?
        .send((cmd, reply_tx))
        .map_err(|_| spawn_err(std::io::Error::other("spawner thread is gone")))?;
    let mut child = reply_rx
        .recv()
        .map_err(|_| spawn_err(std::io::Error::other("spawner thread is gone")))?
        .map_err(spawn_err)?;
    let pid = child.id() as i32;
    let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL_LINES)));
    if let Some(stderr) = child.stderr.take() {
        let log = log.clone();
        let _ = std::thread::Builder::new()
            .name("postgres-log".into())
            .spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    tracing::info!(target: "postgres", pid, "{line}");
                    if let Ok(mut l) = log.lock() {
                        if l.len() == LOG_TAIL_LINES {
                            l.pop_front();
                        }
                        l.push_back(line);
                    }
                }
            });
    }
    let (exit_tx, exit_rx) = watch::channel(None);
    std::thread::Builder::new()
        .name("postgres-wait".into())
        .spawn(move || {
            let status = match child.wait() {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = exit_tx.send(Some(status));
        })
        .map_err(spawn_err)?;
    tracing::info!(pid, "postgres started");
    Ok(PgChild {
        pid,
        exit: exit_rx,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_processes_are_found_by_their_directory_stopped_or_orphaned_and_not_once_killed() {
        let dir = tempfile::tempdir().unwrap();
        // A "server" whose child leads its own session and outlives it.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "setsid sleep 30 & echo $!; exec sleep 30"])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let orphan: i32 = line.trim().parse().unwrap();
        let leader = i32::try_from(child.id()).unwrap();
        let found = |want: &[i32]| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let mut got = server_processes(dir.path());
                got.sort_unstable();
                if got == want || std::time::Instant::now() > deadline {
                    return got;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let mut both = vec![leader, orphan];
        both.sort_unstable();
        assert_eq!(found(&both), both);
        signal::kill(Pid::from_raw(orphan), Signal::SIGSTOP).unwrap();
        signal::kill(Pid::from_raw(leader), Signal::SIGKILL).unwrap();
        // The leader is a zombie until reaped; the stopped orphan still counts.
        assert_eq!(found(&[orphan]), vec![orphan]);
        child.wait().unwrap();
        signal::kill(Pid::from_raw(orphan), Signal::SIGKILL).unwrap();
        assert_eq!(found(&[]), Vec::<i32>::new());
        assert!(server_processes(&dir.path().join("missing")).is_empty());
    }
}
