//! The one runner for external commands of the stand-in (`ip`): logs the
//! command line, applies a timeout, turns failure into an error carrying the
//! tool's own message. I/O.

use std::process::Stdio;
use std::time::Duration;

/// A failed external command.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The command could not be started or timed out.
    #[error("{cmd}: {reason}")]
    Start {
        /// Command line.
        cmd: String,
        /// Why.
        reason: String,
    },
    /// The command exited non-zero.
    #[error("{cmd}: exit {code}: {stderr}")]
    Failed {
        /// Command line.
        cmd: String,
        /// Exit code (-1 for a signal).
        code: i32,
        /// Its stderr, trimmed.
        stderr: String,
    },
}

impl RunError {
    /// The tool's message (empty for a start failure).
    pub fn stderr(&self) -> &str {
        match self {
            RunError::Failed { stderr, .. } => stderr,
            RunError::Start { .. } => "",
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(20);

/// Run `program args…`, return its stdout.
pub async fn run(program: &str, args: &[&str]) -> Result<String, RunError> {
    let cmd = format!("{program} {}", args.join(" "));
    tracing::debug!(command = %cmd, "running");
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(TIMEOUT, child).await {
        Err(_) => {
            return Err(RunError::Start {
                cmd,
                reason: format!("timed out after {TIMEOUT:?}"),
            })
        }
        Ok(Err(e)) => {
            return Err(RunError::Start {
                cmd,
                reason: e.to_string(),
            })
        }
        Ok(Ok(o)) => o,
    };
    check(cmd, out)
}

/// Blocking variant for the CLI verbs.
pub fn run_sync(program: &str, args: &[&str]) -> Result<String, RunError> {
    let cmd = format!("{program} {}", args.join(" "));
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| RunError::Start {
            cmd: cmd.clone(),
            reason: e.to_string(),
        })?;
    check(cmd, out)
}

fn check(cmd: String, out: std::process::Output) -> Result<String, RunError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(RunError::Failed {
            cmd,
            code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether an `ip` failure only says the thing is already gone.
pub fn is_gone(e: &RunError) -> bool {
    let m = e.stderr();
    m.contains("Cannot find device")
        || m.contains("No such file")
        || m.contains("does not exist")
        || m.contains("Cannot open network namespace")
}
