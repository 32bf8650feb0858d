//! The switchover precheck "the demotion candidate can open a replication
//! connection to the promotion candidate": the same replication connection
//! the old primary would open (psql in replication mode, IDENTIFY_SYSTEM),
//! bounded in time. Runs a process; the password goes in its environment only.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Whether `user` can open a physical replication connection to host:port.
pub async fn can_replicate(psql: &Path, host: &str, port: u16, user: &str, password: &str) -> bool {
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
