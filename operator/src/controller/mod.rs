//! The Kubernetes controller (`tandem operator`). Does I/O against the API server.

use clap::Args;

/// Flags of `tandem operator`.
#[derive(Args, Debug, Clone)]
pub struct OperatorArgs {}

/// Run the operator until SIGTERM.
pub async fn run(_args: OperatorArgs) -> anyhow::Result<()> {
    anyhow::bail!("tandem operator is not available in this build yet")
}
