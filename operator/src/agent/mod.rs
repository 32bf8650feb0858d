//! The instance agent (`tandem agent`): supervises PostgreSQL, probes it and
//! serves the agent HTTP API. Does I/O.

use clap::Args;

/// Flags of `tandem agent`.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {}

/// Run the agent until SIGTERM.
pub async fn run(_args: AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("tandem agent is not available in this build yet")
}
