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
    fn redact_hides_passwords_in_conninfo() {
        assert_eq!(
            redact("host=a password=s3cret user=b"),
            "host=a password=*** user=b"
        );
        assert_eq!(redact("password='a b' x"), "password=*** x");
        assert_eq!(redact("nothing here"), "nothing here");
    }
}
