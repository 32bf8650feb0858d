//! The one runner for PostgreSQL's tools: runs them as the run-as user with
//! the password file, logs the command line (never a secret), captures the
//! output, applies a timeout and turns failure into a typed error. Does I/O.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::Error;

/// A PostgreSQL program the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Initdb,
    Postgres,
    PgRewind,
    PgBasebackup,
    PgControldata,
    PgWaldump,
}

impl Tool {
    /// The executable's file name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Initdb => "initdb",
            Tool::Postgres => "postgres",
            Tool::PgRewind => "pg_rewind",
            Tool::PgBasebackup => "pg_basebackup",
            Tool::PgControldata => "pg_controldata",
            Tool::PgWaldump => "pg_waldump",
        }
    }
}

/// The non-root user postgres and its tools run as.
#[derive(Clone, Debug)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// Look a user up by name.
    pub fn lookup(name: &str) -> Result<RunAs, Error> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| Error::User {
                user: name.into(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| Error::User {
                user: name.into(),
                reason: "no such user".into(),
            })?;
        if user.uid.is_root() {
            return Err(Error::User {
                user: name.into(),
                reason: "postgres refuses to run as root".into(),
            });
        }
        Ok(RunAs {
            name: name.into(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

/// Runs PostgreSQL programs; cheap to clone.
#[derive(Clone, Debug)]
pub struct Runner {
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
    passfile: Option<PathBuf>,
}

impl Runner {
    /// A runner for the binaries in `bin_dir`, as `run_as` when set, with `passfile` as PGPASSFILE.
    pub fn new(bin_dir: PathBuf, run_as: Option<RunAs>, passfile: Option<PathBuf>) -> Self {
        Runner {
            bin_dir,
            run_as,
            passfile,
        }
    }

    /// The binary directory.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The password file given to the tools.
    pub fn passfile(&self) -> Option<&Path> {
        self.passfile.as_deref()
    }

    /// A command for `tool`: run-as user, PGPASSFILE, no inherited password,
    /// cwd `/`, killed when the agent dies (PR_SET_PDEATHSIG, which fires when
    /// the forking *thread* exits: fork only from long-lived threads).
    pub fn command(&self, tool: Tool) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.bin_dir.join(tool.name()));
        if let Some(u) = &self.run_as {
            cmd.uid(u.uid).gid(u.gid);
            cmd.env("USER", &u.name).env("LOGNAME", &u.name);
        }
        cmd.env_remove("PGPASSWORD")
            .env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGUSER");
        match &self.passfile {
            Some(p) => cmd.env("PGPASSFILE", p),
            None => cmd.env_remove("PGPASSFILE"),
        };
        cmd.current_dir("/");
        let agent_pid = std::process::id() as i32;
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Runs after the uid/gid switch, which would otherwise clear the
                // death signal: no tool or postgres outlives the agent.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)?;
                if nix::unistd::getppid().as_raw() != agent_pid {
                    nix::libc::_exit(1);
                }
                Ok(())
            });
        }
        cmd
    }

    /// Make `path` belong to the run-as user (when there is one).
    pub fn chown(&self, path: &Path) -> Result<(), Error> {
        if let Some(u) = &self.run_as {
            std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).map_err(Error::io(path))?;
        }
        Ok(())
    }

    /// Run `tool` with `args` and `stdin`; its combined output on success.
    pub async fn run(
        &self,
        tool: Tool,
        args: &[OsString],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<String, Error> {
        let (status, text) = self.run_any(tool, args, stdin, timeout).await?;
        if !status.success() {
            tracing::warn!(tool = tool.name(), output = %text, "failed");
            return Err(Error::ToolFailed {
                tool: tool.name().into(),
                status: status.to_string(),
                output: text,
            });
        }
        tracing::debug!(tool = tool.name(), output = %text, "output");
        Ok(text)
    }

    /// Run `tool` like [`Runner::run`], but hand back its exit status and
    /// output whatever the status: for tools whose failure is an answer
    /// (pg_waldump ends every read of a live WAL stream with an error).
    pub async fn run_any(
        &self,
        tool: Tool,
        args: &[OsString],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<(std::process::ExitStatus, String), Error> {
        let line = redact(&command_line(tool, args));
        tracing::info!(tool = tool.name(), command = %line, "running");
        let mut cmd = self.command(tool);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            tool: tool.name().into(),
            source,
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input).await.map_err(|source| Error::Spawn {
                tool: tool.name().into(),
                source,
            })?;
            drop(pipe);
        }
        let started = std::time::Instant::now();
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(r) => r.map_err(|source| Error::Spawn {
                tool: tool.name().into(),
                source,
            })?,
            Err(_) => {
                tracing::warn!(
                    tool = tool.name(),
                    timeout_s = timeout.as_secs(),
                    "timed out, killed"
                );
                return Err(Error::Timeout {
                    tool: tool.name().into(),
                    seconds: timeout.as_secs(),
                });
            }
        };
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let text = redact(text.trim());
        tracing::info!(
            tool = tool.name(),
            status = %out.status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "finished"
        );
        Ok((out.status, text))
    }
}

/// How long a watched tool may run, and may go without progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    /// Killed after this long in all; `None`: no limit.
    pub limit: Option<Duration>,
    /// Killed after this long without progress; `None`: never.
    pub stall: Option<Duration>,
}

/// A `--progress` reading: `done/total kB (N%)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub percent: u8,
}

/// Read a pg_basebackup or pg_rewind `--progress` line
/// (`  1234/5678 kB (21%), 0/1 tablespace`, `1234/5678 kB (21%) copied`).
pub fn parse_progress(line: &str) -> Option<Reading> {
    let at = line.find(" kB (")?;
    let figures = line[..at].split_whitespace().last()?;
    let (done, total) = figures.split_once('/')?;
    let rest = &line[at + " kB (".len()..];
    let percent = rest[..rest.find('%')?].trim().parse().ok()?;
    Some(Reading {
        done_bytes: done.parse::<u64>().ok()? * 1024,
        total_bytes: total.parse::<u64>().ok()? * 1024,
        percent,
    })
}

/// What a watched tool has done so far, for whoever reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The newest `--progress` reading.
    pub reading: Option<Reading>,
    /// Since the tool started.
    pub elapsed: Duration,
    /// Since its output last moved.
    pub since_progress: Duration,
}

impl Runner {
    /// Run `tool` like [`Runner::run`], reading its output as it comes:
    /// every change of it (a new line, a new `--progress` figure) counts as
    /// progress and is handed to `report`; killed when it goes without
    /// progress for `watch.stall`, or runs past `watch.limit`.
    pub async fn run_watched(
        &self,
        tool: Tool,
        args: &[OsString],
        watch: Watch,
        report: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<String, Error> {
        let line = redact(&command_line(tool, args));
        tracing::info!(tool = tool.name(), command = %line, limit_s = watch.limit.map(|d| d.as_secs()), stall_s = watch.stall.map(|d| d.as_secs()), "running");
        let mut cmd = self.command(tool);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            tool: tool.name().into(),
            source,
        })?;
        let (status, text) = watch_child(tool.name(), child, watch, report).await?;
        let text = redact(text.trim());
        if !status.success() {
            tracing::warn!(tool = tool.name(), output = %text, "failed");
            return Err(Error::ToolFailed {
                tool: tool.name().into(),
                status: status.to_string(),
                output: text,
            });
        }
        tracing::info!(tool = tool.name(), status = %status, "finished");
        Ok(text)
    }
}

/// How often a watched tool's clocks are looked at.
const WATCH_TICK: Duration = Duration::from_millis(250);
/// Output kept for the error message of a watched tool (its last lines).
const WATCH_KEEP: usize = 16 * 1024;

/// Drive `child` to its end under `watch`: its exit status and output (the
/// progress lines only as their last one).
pub async fn watch_child(
    tool: &str,
    mut child: tokio::process::Child,
    watch: Watch,
    report: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(std::process::ExitStatus, String), Error> {
    use tokio::io::AsyncReadExt;
    let spawn_err = |source| Error::Spawn {
        tool: tool.into(),
        source,
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let started = std::time::Instant::now();
    let mut moved = started;
    let mut text = String::new();
    let mut partial = String::new();
    let mut last_line = String::new();
    let mut progress = Progress::default();
    let (mut buf_o, mut buf_e) = ([0u8; 4096], [0u8; 4096]);
    let mut tick = tokio::time::interval(WATCH_TICK);
    loop {
        let chunk: Option<Vec<u8>> = tokio::select! {
            n = async { stdout.as_mut().unwrap().read(&mut buf_o).await }, if stdout.is_some() => {
                match n.map_err(spawn_err)? {
                    0 => { stdout = None; None }
                    n => Some(buf_o[..n].to_vec()),
                }
            }
            n = async { stderr.as_mut().unwrap().read(&mut buf_e).await }, if stderr.is_some() => {
                match n.map_err(spawn_err)? {
                    0 => { stderr = None; None }
                    n => Some(buf_e[..n].to_vec()),
                }
            }
            _ = tick.tick() => None,
        };
        if let Some(bytes) = chunk {
            partial.push_str(&String::from_utf8_lossy(&bytes));
            // Progress lines end in `\r` on a terminal, `\n` otherwise.
            while let Some(i) = partial.find(['\r', '\n']) {
                let line: String = partial.drain(..=i).collect();
                let line = line.trim_end_matches(['\r', '\n']).to_string();
                if line.trim().is_empty() || line == last_line {
                    continue;
                }
                moved = std::time::Instant::now();
                match parse_progress(&line) {
                    Some(r) => progress.reading = Some(r),
                    None => {
                        text.push_str(&line);
                        text.push('\n');
                        if text.len() > WATCH_KEEP {
                            let cut = text.len() - WATCH_KEEP;
                            let cut = (cut..text.len())
                                .find(|&i| text.is_char_boundary(i))
                                .unwrap_or(text.len());
                            text.drain(..cut);
                        }
                    }
                }
                last_line = line;
            }
        }
        progress.elapsed = started.elapsed();
        progress.since_progress = moved.elapsed();
        report(progress);
        if stdout.is_none() && stderr.is_none() {
            break;
        }
        let last = || {
            progress.reading.map_or_else(
                || "no progress report yet".to_string(),
                |r| format!("{} of {} kB", r.done_bytes / 1024, r.total_bytes / 1024),
            )
        };
        if let Some(stall) = watch.stall.filter(|s| progress.since_progress >= *s) {
            let _ = child.start_kill();
            let _ = child.wait().await;
            tracing::warn!(tool, stall_s = stall.as_secs(), "no progress, killed");
            return Err(Error::Stalled {
                tool: tool.into(),
                seconds: stall.as_secs(),
                last: last(),
            });
        }
        if let Some(limit) = watch.limit.filter(|l| progress.elapsed >= *l) {
            let _ = child.start_kill();
            let _ = child.wait().await;
            tracing::warn!(tool, timeout_s = limit.as_secs(), "timed out, killed");
            return Err(Error::Timeout {
                tool: tool.into(),
                seconds: limit.as_secs(),
            });
        }
    }
    let status = child.wait().await.map_err(spawn_err)?;
    if let Some(r) = progress.reading {
        text.push_str(&format!(
            "{}/{} kB ({}%)",
            r.done_bytes / 1024,
            r.total_bytes / 1024,
            r.percent
        ));
    }
    Ok((status, text))
}

/// `tool arg arg…` for logs.
pub fn command_line(tool: Tool, args: &[OsString]) -> String {
    let mut s = tool.name().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Replace `password=…` values so a conninfo can never leak into logs.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("password=") {
        let end = i + "password=".len();
        out.push_str(&rest[..end]);
        out.push_str("***");
        rest = &rest[end..];
        let skip = if let Some(quoted) = rest.strip_prefix('\'') {
            quoted.find('\'').map(|j| j + 2).unwrap_or(rest.len())
        } else {
            rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len())
        };
        rest = &rest[skip..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_of_both_tools_read() {
        assert_eq!(
            parse_progress("  1234/5678 kB (21%), 0/1 tablespace (/data/base/1)"),
            Some(Reading {
                done_bytes: 1234 * 1024,
                total_bytes: 5678 * 1024,
                percent: 21
            })
        );
        assert_eq!(
            parse_progress("pg_rewind: 10/20 kB (50%) copied").map(|r| r.percent),
            Some(50)
        );
        assert_eq!(parse_progress("pg_basebackup: checkpoint completed"), None);
    }

    fn sh(script: &str) -> tokio::process::Child {
        let mut c = tokio::process::Command::new("sh");
        c.args(["-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c.spawn().unwrap()
    }

    #[tokio::test]
    async fn a_tool_that_keeps_moving_outlives_the_stall_timeout() {
        let watch = Watch {
            limit: None,
            stall: Some(Duration::from_millis(700)),
        };
        let seen = std::sync::Mutex::new(Vec::new());
        let report = |p: Progress| seen.lock().unwrap().push(p);
        let script = "for i in 1 2 3 4 5 6; do echo \"$i/6 kB ($((i*100/6))%)\" >&2; sleep 0.3; done; echo done";
        let (status, text) = watch_child("sh", sh(script), watch, &report).await.unwrap();
        assert!(status.success());
        assert!(
            text.contains("done") && text.contains("6/6 kB (100%)"),
            "{text}"
        );
        let seen = seen.lock().unwrap();
        assert!(seen
            .iter()
            .any(|p| p.reading.is_some_and(|r| r.percent == 50)));
        assert!(seen.last().unwrap().elapsed >= Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn a_tool_that_stops_moving_is_killed_as_stalled() {
        let watch = Watch {
            limit: None,
            stall: Some(Duration::from_millis(600)),
        };
        let started = std::time::Instant::now();
        let script = "echo '1/10 kB (10%)' >&2; sleep 30";
        let err = watch_child("sh", sh(script), watch, &|_| {})
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        match err {
            Error::Stalled { seconds, last, .. } => {
                assert_eq!(seconds, 0);
                assert_eq!(last, "1 of 10 kB");
            }
            e => panic!("{e}"),
        }
        let watch = Watch {
            limit: Some(Duration::from_millis(800)),
            stall: None,
        };
        let script = "while true; do date +%N >&2; sleep 0.1; done";
        let err = watch_child("sh", sh(script), watch, &|_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }

    #[test]
    fn redact_hides_passwords_in_conninfo() {
        assert_eq!(
            redact("host=a password=s3cret user=b"),
            "host=a password=*** user=b"
        );
        assert_eq!(redact("password='a b' x"), "password=*** x");
        assert_eq!(redact("nothing here"), "nothing here");
    }
}
