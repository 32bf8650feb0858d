//! The local platform (`tandem local …`): instances as local processes, the
//! engine driving them, TCP endpoints standing in for Services. Does I/O.

use clap::Args;

/// Flags of `tandem local`.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {}

/// Run a `tandem local` verb; returns the process exit code.
pub async fn run(_args: LocalArgs) -> anyhow::Result<i32> {
    anyhow::bail!("tandem local is not available in this build yet")
}
