//! The switchover precheck "the demotion candidate can open a replication
//! connection to the promotion candidate", on the local platform: every
//! instance is on this machine's loopback, so the platform opens the same
//! replication connection the old primary would, to the candidate's address
//! (psql in replication mode, IDENTIFY_SYSTEM). Runs a process.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::process::Command;

static PSQL: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Set the PostgreSQL binary directory used for the check.
pub fn init(bin_dir: Option<PathBuf>) {
    let _ = PSQL.set(bin_dir.map(|d| d.join("psql")));
}

/// Whether `user` can open a physical replication connection to host:port.
pub async fn can_replicate(host: &str, port: u16, user: &str, password: &str) -> bool {
    let psql = PSQL
        .get()
        .cloned()
        .flatten()
        .unwrap_or_else(|| PathBuf::from("psql"));
    let conninfo = format!(
        "host={host} port={port} user={user} dbname=replication replication=true connect_timeout=2"
    );
    let mut cmd = Command::new(psql);
    cmd.arg("-X")
        .arg("-A")
        .arg("-t")
        .arg("-d")
        .arg(conninfo)
        .arg("-c")
        .arg("IDENTIFY_SYSTEM")
        .env("PGPASSWORD", password)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(3), cmd.status()).await {
        Ok(Ok(status)) => status.success(),
        _ => false,
    }
}
