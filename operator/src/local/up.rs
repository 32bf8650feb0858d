//! `tandem local up`: starts the instances, the endpoints and the control
//! API, and drives the cluster with the HA engine until Ctrl-C. Does I/O.

use super::cli::UpArgs;

/// Run the cluster in the foreground; returns the exit code.
pub async fn run(_args: UpArgs) -> anyhow::Result<i32> {
    eprintln!("tandem local up is not available in this build yet");
    Ok(super::cli::EXIT_FAILED)
}
